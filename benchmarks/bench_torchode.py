"""torchdiffeq's dopri5 (one step size for the batch) against torchode's (one per sample), on the same trained fields.

Trains one field per dataset with cnfbench itself (``cnfbench.run``: conditional flow matching, concatsquash
3x64, so training needs no solver), loads each trained field from its run folder, and evaluates the test
log-likelihood with the harness's own evaluation (``cnfbench.evaluation.evaluate_log_prob``: exact trace,
NFE counted by the harness) with ``dopri5`` and ``torchode_dopri5`` at equal tolerances, the two solvers
alternating, ``--repeats`` times each, in one process. Reported per dataset and tolerance: NFE of the test
pass (calls of the batched dynamics), torchode's accepted and rejected steps per test point (mean and max),
median wall-clock, the NLL each gives and its error against a float64 ``dopri5`` solve at rtol=atol=1e-9.

    python benchmarks/bench_torchode.py                # 8gaussians, checkerboard, gaussian_mixture[dim=16]
    python benchmarks/bench_torchode.py --quick        # a smoke run (tiny training, 128 test points)

The table goes to standard output (Markdown) with the machine described.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

import cnfbench
from cnfbench.evaluation import EvaluationPass, evaluate_log_prob, step_columns
from cnfbench.models import load_trained
from cnfbench.params import parse_selection
from cnfbench.provenance import cpu_model
from cnfbench.registry import Registry, load_registry
from cnfbench.run_folder import load_results

DATASETS = ("8gaussians", "checkerboard", "gaussian_mixture[dim=16]")
SOLVERS = ("dopri5", "torchode_dopri5")
REFERENCE = "dopri5[rtol=1e-9,atol=1e-9]"


@dataclass
class Measured:
    nll: float
    nfe: int
    seconds: list[float]
    steps: dict[str, float]


def train_fields(args: argparse.Namespace, out: Path) -> Path:
    """One trained field per dataset in the run folder ``out/bench-torchode``, trained by ``cnfbench.run``."""
    sizes = f"n_train={args.train_points},n_val=64,n_test={args.points}"
    datasets = [f"{name[:-1]},{sizes}]" if name.endswith("]") else f"{name}[{sizes}]" for name in args.datasets]
    cnfbench.run(dataset=datasets, objective="cfm", field=args.field, solver="dopri5", iterations=args.iterations,
                 batch_size=args.batch_size, mass_grid=0, out=str(out), name="bench-torchode", quiet=True,
                 executor="inline", first_seed=args.seed, device=args.device)
    return out / "bench-torchode"


def measure(registry: Registry, field: torch.nn.Module, test: torch.Tensor, selector: str, batch_size: int,
            dtype: torch.dtype | None = None) -> tuple[EvaluationPass, float]:
    solver = registry.build("solver", registry.resolve("solver", parse_selection(selector)))
    trace = registry.build("trace", registry.resolve("trace", parse_selection("exact")))
    evaluated = evaluate_log_prob(field, solver, trace, test, batch_size, "eval", dtype=dtype)
    return evaluated, evaluated.seconds


def fmt(value: float, digits: int = 4) -> str:
    return "—" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=";".join(DATASETS), help="dataset selectors, separated by ';'")
    parser.add_argument("--field", default="concatsquash[hidden=64-64-64]")
    parser.add_argument("--iterations", type=int, default=3000, help="flow-matching training iterations")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-points", type=int, default=20000)
    parser.add_argument("--points", type=int, default=2000, help="test points, evaluated in one batch")
    parser.add_argument("--tolerances", default="1e-5,1e-7", help="rtol = atol values, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed evaluations per solver (alternating)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny training and test set")
    args = parser.parse_args(argv)
    args.datasets = [name.strip() for name in args.datasets.split(";") if name.strip()]
    if args.quick:
        args.iterations, args.train_points, args.points, args.repeats = 20, 512, 128, 1
        args.field = "concatsquash[hidden=16-16]"
    tolerances = [float(value) for value in args.tolerances.split(",")]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"Error: --device {args.device} needs CUDA, and torch {torch.__version__} sees no CUDA device here",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    registry = load_registry()
    with tempfile.TemporaryDirectory() as folder:
        run_dir = train_fields(args, Path(folder))
        cells = load_results(run_dir)
        rows = []
        for _, cell in cells.iterrows():
            trained = load_trained(run_dir, cell["cell_id"], registry=registry, device=args.device)
            dataset = registry.build("dataset", trained.cell.dataset)
            test = dataset.splits(trained.cell.seed).test[: args.points].to(args.device)
            reference, _ = measure(registry, trained.field, test, REFERENCE, args.points, dtype=torch.float64)
            for tolerance in tolerances:
                measured: dict[str, Measured] = {}
                for _ in range(args.repeats):
                    for name in SOLVERS:
                        evaluated, seconds = measure(registry, trained.field, test,
                                                     f"{name}[rtol={tolerance:g},atol={tolerance:g}]", args.points)
                        entry = measured.setdefault(name, Measured(evaluated.nll, evaluated.nfe, [],
                                                                   step_columns(evaluated)))
                        entry.seconds.append(seconds)
                rows.append((f"{cell['dataset']} (D={dataset.dim})", tolerance, reference.nll, measured))
    print(table(rows, args))
    return 0


def table(rows: list, args: argparse.Namespace) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    lines = [
        f"Machine: {device}, CPU {cpu_model()} ({cores} cores usable), torch {torch.__version__} with {args.threads} "
        f"intra-op thread(s), Python {platform.python_version()}. Fields: {args.field}, trained by conditional flow "
        f"matching for {args.iterations} iterations (batch {args.batch_size}, seed {args.seed}); test pass: "
        f"{args.points} points in one batch, exact trace, float32; median of {args.repeats} timed passes per solver, "
        "alternating. NFE = calls of the batched dynamics counted by the harness; steps/point = torchode's accepted "
        "(rejected) steps per test point; NLL error = |NLL − NLL of float64 dopri5 at 1e-9| [nats].",
        "",
        "| dataset | rtol = atol | NFE dopri5 | NFE torchode | NFE ratio (torchode/dopri5) | torchode accepted "
        "steps/point mean (max) | rejected mean (max) | time dopri5 [s] | time torchode [s] | time ratio "
        "(torchode/dopri5) | NLL dopri5 [nats] | NLL torchode [nats] | NLL difference torchode − dopri5 [nats] | "
        "NLL error dopri5 / torchode [nats] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dataset, tolerance, reference, measured in rows:
        ours, theirs = measured["torchode_dopri5"], measured["dopri5"]
        time_ours, time_theirs = statistics.median(ours.seconds), statistics.median(theirs.seconds)
        steps = ours.steps
        lines.append(
            f"| {dataset} | {tolerance:g} | {theirs.nfe} | {ours.nfe} | {ours.nfe / theirs.nfe:.2f} | "
            f"{fmt(steps['steps_accepted_mean'], 3)} ({fmt(steps['steps_accepted_max'], 3)}) | "
            f"{fmt(steps['steps_rejected_mean'], 3)} ({fmt(steps['steps_rejected_max'], 3)}) | "
            f"{time_theirs:.3f} | {time_ours:.3f} | {time_ours / time_theirs:.2f} | {theirs.nll:.5f} | "
            f"{ours.nll:.5f} | {ours.nll - theirs.nll:+.1e} | {abs(theirs.nll - reference):.1e} / "
            f"{abs(ours.nll - reference):.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
