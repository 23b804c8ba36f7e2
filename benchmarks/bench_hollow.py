#!/usr/bin/env python
"""What an exact divergence costs with the ``hollow`` field, against 1-probe Hutchinson, at each dimension.

For each D in ``--dims`` and ``--batch`` states (float32, ``--threads`` torch threads): one *training
evaluation* — the field, the divergence with ``create_graph=True`` and the backward pass of their sum to the
parameters, as one function evaluation of a training step — for

* ``concatsquash`` (3x64 tanh) with ``exact`` (its fused Jacobian pass), with ``exact`` given the field as a
  plain function (D vector-Jacobian products), and with ``hutchinson`` (1 Gaussian probe);
* ``hollow`` (transformer 64-64, embedding 32) with ``exact`` (its fused tangent pass) and with ``hutchinson``.

The pairs are timed interleaved in one process, in a fresh random order each repeat, after a warm-up; the
table gives the median milliseconds per evaluation and the ratios, each the median over repeats of the ratio
measured within the repeat. Ratios, not absolute times, are what carries to another machine.

    python benchmarks/bench_hollow.py [--dims 2,16,64,128] [--batch 256] [--repeats 9] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import time
from collections.abc import Callable

import torch

from cnfbench.params import parse_selection
from cnfbench.registry import load_registry


def _evaluation(registry, field_spec: str, trace_spec: str, dim: int, batch: int, plain: bool,
                device: torch.device) -> Callable[[], None]:
    torch.manual_seed(0)
    field_selection, trace_selection = parse_selection(field_spec), parse_selection(trace_spec)
    field = registry.build("field", registry.resolve("field", field_selection), dim).to(device)
    trace = registry.build("trace", registry.resolve("trace", trace_selection))
    z0 = torch.randn(batch, dim, device=device)
    t = torch.tensor(0.5, device=device)
    function = (lambda t_, z_: field(t_, z_)) if plain else field

    def run() -> None:
        z = z0.clone().requires_grad_(True)
        trace.begin_solve(z, torch.Generator().manual_seed(1))
        dz, div = trace(function, t, z, True)
        (dz.sum() + div.sum()).backward()
        field.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the time of the work, not of queueing it

    return run


CASES = (
    ("concatsquash exact (fused)", "concatsquash", "exact", False),
    ("concatsquash exact (D VJPs)", "concatsquash", "exact", True),
    ("concatsquash hutchinson[1]", "concatsquash", "hutchinson", False),
    ("hollow exact (fused)", "hollow", "exact", False),
    ("hollow hutchinson[1]", "hollow", "hutchinson", False),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--dims", default="2,16,64,128")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    registry = load_registry([])
    dims = [int(d) for d in args.dims.split(",")]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# {where}, torch {torch.__version__}, {args.threads} thread(s), "
          f"batch {args.batch}, median of {args.repeats} interleaved repeats")
    print("| D | " + " | ".join(f"{name} [ms]" for name, *_ in CASES)
          + " | hollow exact / concatsquash hutchinson | hollow exact / hollow hutchinson"
          " | concatsquash exact (D VJPs) / hollow exact |")
    print("|" + "---|" * (len(CASES) + 4))
    for dim in dims:
        runs = {name: _evaluation(registry, field, trace, dim, args.batch, plain, device)
                for name, field, trace, plain in CASES}
        for run in runs.values():
            run()
        times: dict[str, list[float]] = {name: [] for name in runs}
        order = list(runs)
        rng = random.Random(dim)
        for _ in range(args.repeats):
            rng.shuffle(order)
            for name in order:
                gc.disable()
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
                gc.enable()

        def ratio(a: str, b: str, times: dict[str, list[float]] = times) -> float:
            return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

        medians = [statistics.median(times[name]) * 1e3 for name, *_ in CASES]
        print(f"| {dim} | " + " | ".join(f"{m:.2f}" for m in medians)
              + f" | {ratio('hollow exact (fused)', 'concatsquash hutchinson[1]'):.2f}"
              + f" | {ratio('hollow exact (fused)', 'hollow hutchinson[1]'):.2f}"
              + f" | {ratio('concatsquash exact (D VJPs)', 'hollow exact (fused)'):.1f} |")


if __name__ == "__main__":
    main()
