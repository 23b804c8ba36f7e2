#!/usr/bin/env python
"""Per-iteration training time with and without ``--compile``, side by side in one process.

Each configuration is one cell trained by cnfbench's own machinery (``RunConfig`` -> ``resolve_grid`` ->
registry -> ``cnfbench.training.train``), once as ``cnfbench run`` trains it and once as ``cnfbench run
--compile`` does (:mod:`cnfbench.compiling`), from the same seed (same data, initialisation and batches), in
alternating order over ``--rounds`` rounds. Likelihood objectives solve with ``euler[steps=10]``, a fixed
grid, so that every iteration costs the same NFE in both runs and the times compare the field's cost alone.
With ``mle + exact`` the compiled run uses the field's fused ``forward_with_divergence`` in every dimension;
the eager run uses the exact trace's own choice (the loop of vector-Jacobian products at D = 2, the fused pass
at D = 16).

* ``eager`` / ``compiled`` [ms/iter]: median wall-clock of a training iteration (loss, backward, Adam step)
  after the first ``--warmup`` iterations of each run, pooled over the rounds; ``compiled / eager`` their
  ratio (below 1: compiling pays).
* ``compile`` [s]: wall-clock of compiling and of the probe iteration (the row's ``compile_time_s``, part
  of its ``train_time_s`` and of no iteration), in the first round / median of the later ones. The run
  starts with empty inductor caches (a fresh ``TORCHINDUCTOR_CACHE_DIR``, removed afterwards; ``--warm-cache``
  keeps the user's), so the first round compiles cold; from the second round on, inductor's on-disk caches
  serve the same graphs, as they do for a second cell of the same architecture. The compiler's one-time
  start-up in a fresh process (which the first compiled cell of a worker pays on top) is measured first,
  on a trivial function, and reported apart.
* ``compiled?``: ``yes``, or ``fell back: <reason>`` (the row's ``compile_note``) when ``--compile`` trained
  the eager field; then the compiled column times that eager training.

    python benchmarks/bench_compile.py [--device cpu] [--threads 1] [--rounds 3] [--iterations 40] [--warm-cache]
                                       [--out FILE]
    python benchmarks/bench_compile.py --quick          # tiny smoke test: the figures then mean nothing

``--device cuda`` without CUDA refuses at once: one line, exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cnfbench.compiling import CompileFallbackWarning
from cnfbench.config import RunConfig, resolve_grid
from cnfbench.messages import one_line
from cnfbench.registry import Registry, load_registry
from cnfbench.training import TrainingRecord, seeded_field, train

NOTE_LIMIT = 200
"""Characters of a fallback reason the table quotes."""


@dataclass(frozen=True)
class Case:
    """One configuration: what the table calls it, its dataset, objective, trace and solver."""

    label: str
    dataset: str
    objective: str
    trace: str = "exact"
    solver: str = "euler[steps=10]"

    @property
    def dim(self) -> int:
        return 2 if self.dataset.startswith("8gaussians") else int(self.dataset.split("dim=")[1].split("]")[0])


CASES = (
    Case("cfm (flow matching)", "8gaussians", "cfm"),
    Case("cfm (flow matching)", "gaussian_mixture[dim=16]", "cfm"),
    Case("mle + exact, euler 10", "8gaussians", "mle"),
    Case("mle + exact, euler 10", "gaussian_mixture[dim=16]", "mle"),
    Case("mle + hutchinson, euler 10", "8gaussians", "mle", "hutchinson"),
)
QUICK_CASES = (CASES[0], CASES[4])


@dataclass
class Measured:
    """Iteration times (seconds, after the warm-up) and compile times of one case, eager and compiled."""

    eager: list[float]
    compiled: list[float]
    compile_seconds: list[float]
    nfe: float
    note: str = ""


def train_once(registry: Registry, config: RunConfig, device: torch.device) -> TrainingRecord:
    """Train the one cell ``config`` resolves to, as the harness does, and return its record."""
    cell = resolve_grid(config, registry).cells[0]
    dataset = registry.build("dataset", cell.dataset)
    train_data = dataset.splits(cell.seed).train.to(device)
    field = seeded_field(lambda: registry.build("field", cell.field, dataset.dim), cell.seed, device)
    record = TrainingRecord()
    labels = (registry.describe("field", cell.field.name), registry.describe("trace", cell.trace.name),
              registry.describe("objective", cell.objective.name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompileFallbackWarning)  # the table says it
        train(cell, field, registry.build("objective", cell.objective), registry.build("solver", cell.solver),
              registry.build("trace", cell.trace), registry.build("optimizer", cell.optimizer), train_data, record,
              labels=labels)
    return record


def measure(registry: Registry, case: Case, base: RunConfig, rounds: int, warmup: int,
            device: torch.device) -> Measured:
    config = replace(base, dataset=(case.dataset,), objective=(case.objective,), trace=(case.trace,),
                     solver=(case.solver,))
    measured = Measured([], [], [], math.nan)
    for index in range(rounds):
        for compiled in ((False, True) if index % 2 == 0 else (True, False)):
            record = train_once(registry, replace(config, compile=compiled), device)
            times = record.iteration_seconds[warmup:]
            (measured.compiled if compiled else measured.eager).extend(times)
            if compiled:
                measured.compile_seconds.append(record.compile_seconds)
                measured.note = record.compile_note
            else:
                nfe = record.nfe_forward if case.objective == "mle" else record.field_evaluations
                measured.nfe = statistics.fmean(nfe)
    return measured


def machine(device: torch.device, threads: int) -> str:
    """CPU model (or GPU name), torch threads and versions, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = f"CPU {cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch thread(s) ({threads} asked)"
    if device.type == "cuda":
        where = f"GPU {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}; host {where}"
    return f"{where}; torch {torch.__version__}, Python {platform.python_version()}"


def compiler_startup(device: torch.device) -> float:
    """Seconds of the first ``torch.compile`` in this process (a trivial function, forward and backward)."""
    started = time.perf_counter()
    x = torch.ones(4, device=device, requires_grad=True)
    torch.compile(lambda v: (v * 2).sin(), fullgraph=True)(x).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    torch.compiler.reset()
    return seconds


def table(rows: list[tuple[Case, Measured]]) -> list[str]:
    lines = ["| configuration | D | NFE or field evals per iter | eager [ms/iter] | compiled [ms/iter] "
             "| compiled / eager | compile [s] first / later | compiled? |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for case, result in rows:
        eager, compiled = statistics.median(result.eager) * 1e3, statistics.median(result.compiled) * 1e3
        first, *later = result.compile_seconds
        compile_text = f"{first:.1f} / {statistics.median(later):.1f}" if later else f"{first:.1f} / —"
        status = "yes" if not result.note else \
            f"fell back: {one_line(result.note.split(' trains eager: ', 1)[-1], NOTE_LIMIT)}"
        lines.append(f"| {case.label} | {case.dim} | {result.nfe:.0f} | {eager:.2f} | {compiled:.2f} "
                     f"| {compiled / eager:.2f} | {compile_text} | {status} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch threads [default: 1]")
    parser.add_argument("--rounds", type=int, default=3, help="eager/compiled pairs per configuration [default: 3]")
    parser.add_argument("--iterations", type=int, default=40, help="training iterations per run [default: 40]")
    parser.add_argument("--warmup", type=int, default=5, help="iterations of each run left out [default: 5]")
    parser.add_argument("--batch-size", type=int, default=512, help="training batch size [default: 512]")
    parser.add_argument("--hidden", default="64-64-64", help="concatsquash hidden widths [default: 64-64-64]")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke test: 2 configurations, hidden 8-8, batch 64, 4 iterations, 1 round")
    parser.add_argument("--warm-cache", action="store_true",
                        help="keep inductor's on-disk cache (default: a fresh, empty one for this run)")
    parser.add_argument("--out", type=Path, help="also write the report (Markdown) to this file")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        print(f"error: unknown device {args.device!r}; valid: cpu, cuda, cuda:N", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device} asked but CUDA is not available here; use --device cpu",
              file=sys.stderr)
        return 2
    if device.type not in ("cpu", "cuda"):
        print(f"error: unsupported device {args.device!r}; valid: cpu, cuda, cuda:N", file=sys.stderr)
        return 2
    cases = CASES
    if args.quick:
        args.rounds, args.iterations, args.warmup, args.batch_size, args.hidden = 1, 4, 1, 64, "8-8"
        cases = QUICK_CASES
    torch.set_num_threads(args.threads)
    cache = None if args.warm_cache else tempfile.mkdtemp(prefix="bench_compile_inductor_")
    if cache is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read when inductor first needs it: before any compile
    try:
        startup = compiler_startup(device)
        registry = load_registry([])
        base = replace(RunConfig(), field=(f"concatsquash[hidden={args.hidden}]",), iterations=args.iterations,
                       batch_size=args.batch_size, device=str(device))
        rows = [(case, measure(registry, case, base, args.rounds, args.warmup, device)) for case in cases]
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
    command = "python benchmarks/bench_compile.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = [
        f"Machine: {machine(device, args.threads)}.",
        f"Command: `{command.strip()}`. concatsquash[hidden={args.hidden}] tanh, batch {args.batch_size}, "
        f"float32, {args.iterations} iterations per run, the first {args.warmup} left out, {args.rounds} "
        "round(s) of eager and compiled in alternating order; medians over the rounds' iterations. Inductor "
        f"caches: {'the user' + chr(39) + 's (--warm-cache)' if args.warm_cache else 'fresh and empty at the start'}"
        f"; the compiler's one-time start-up in this process (a trivial function): {startup:.1f} s.",
        "",
        *table(rows),
    ]
    text = "\n".join(report) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
