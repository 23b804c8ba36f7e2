"""Evaluation throughput: test samples per second of cnfbench's chunked evaluation, by chunk size.

Builds one field the way a cell does (seeded concat-squash 3x64 on
``8gaussians``), then times :func:`cnfbench.evaluation.evaluate_log_prob` on
the same test points with several ``--eval-batch-size`` values, for a
fixed-grid and an adaptive solver, and reports samples/s, the ratio to the
unchunked pass and the process's peak RSS growth. Runs are interleaved over
``--repeats`` rounds and the median is shown.

    python benchmarks/bench_eval_throughput.py [--points 8192] [--chunks 512,2048,8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from cnfbench.config import RunConfig, resolve_cells
from cnfbench.evaluation import evaluate_log_prob
from cnfbench.measure import PeakMemory
from cnfbench.provenance import cpu_model
from cnfbench.registry import load_registry
from cnfbench.training import seeded_field


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=8192, help="test samples evaluated per pass")
    parser.add_argument("--chunks", default="512,2048,8192", help="comma list of evaluation batch sizes")
    parser.add_argument("--solvers", default="euler[steps=10];dopri5", help="';'-separated solver selectors")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chunks = [int(item) for item in args.chunks.split(",")]
    registry = load_registry()
    solvers = args.solvers.split(";")
    cells = resolve_cells(RunConfig(solver=tuple(solvers), dataset=(f"8gaussians[n_test={args.points}]",),
                                    device="cpu"), registry)
    print(f"machine: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"{args.points} test points, concat-squash 3x64 (untrained, seeded), exact trace")
    header = f"{'solver':<18} {'chunk [samples]':>15} {'NFE [evals]':>11} {'throughput [samples/s]':>23} " \
             f"{'vs one chunk':>12} {'peak RSS growth [MiB]':>22}"
    print(header)
    print("-" * len(header))
    for cell in cells:
        dataset = registry.build("dataset", cell.dataset)
        test = dataset.splits(cell.seed).test
        field = seeded_field(lambda spec=cell.field, dim=dataset.dim: registry.build("field", spec, dim), cell.seed,
                             torch.device("cpu"))
        solver = registry.build("solver", cell.solver)
        trace = registry.build("trace", cell.evaluation.trace)
        timings: dict[int, list[float]] = {chunk: [] for chunk in chunks}
        growth: dict[int, float] = {}
        nfe: dict[int, int] = {}
        for _ in range(args.repeats):
            for chunk in chunks:
                memory = PeakMemory(torch.device("cpu"))
                memory.reset()
                before = memory.peak_mib()
                result = evaluate_log_prob(field, solver, trace, test, chunk, "eval")
                growth[chunk] = max(growth.get(chunk, 0.0), memory.peak_mib() - before)
                timings[chunk].append(result.seconds)
                nfe[chunk] = result.nfe
        full = statistics.median(timings[max(chunks)])
        for chunk in chunks:
            seconds = statistics.median(timings[chunk])
            print(f"{cell.solver.name:<18} {chunk:>15} {nfe[chunk]:>11} {args.points / seconds:>23,.0f} "
                  f"{full / seconds:>11.2f}x {growth[chunk]:>22.1f}")


if __name__ == "__main__":
    main()
