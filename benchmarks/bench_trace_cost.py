#!/usr/bin/env python
"""Cost of every trace estimator against dimension, and Hutch++ vs Hutchinson variance at equal budget.

**Cost.** For each D in ``--dims``: a concat-squash 3x64 tanh field
(``--hidden``, the same width at every D), ``--batch`` states, float32. One
*evaluation* is what a training step does per function evaluation: the field,
the divergence with ``create_graph=True``, and the backward pass of the summed
divergence to the field's parameters. Every trace estimator registered in
the registry's trace family (default parameters) is timed, plus:

* ``exact (generic)``: the ``exact`` estimator given the field as a plain
  function, which hides the field's ``forward_with_divergence``, so it shows
  what ``exact`` costs for a field without the fused protocol;
* ``hutchinson[probes=k]`` and ``hutchpp[probes=k]`` for each k of
  ``--budgets`` (equal matrix-vector budgets for the variance comparison).

Estimators are interleaved within each repeat (one repeat = every estimator
once, in a fresh seeded random order, so that no estimator has a fixed
position or predecessor), after one untimed warm-up repeat, with Python's
garbage collector paused during each timed evaluation; the table gives the median
wall-clock milliseconds per evaluation over ``--repeats`` repeats. The ratio
table ``exact_loop / exact`` gives the median over repeats of the ratio of
the two times measured in the same repeat, from wall-clock and from the
thread's CPU time, and the ratio of the two fastest CPU times (the least
disturbed by other jobs on a shared machine; with one torch thread CPU time
excludes the time the thread waits for a core). A
second table does the same for evaluation (``create_graph=False``, no
backward pass), as in the test-NLL pass.

**Variance.** A concat-squash 3x64 field is trained briefly with
``cnfbench.training.train`` (``--train-iterations`` Adam iterations on
``gaussian_mixture[dim=16]``, rk4 with 4 steps, exact trace), then, in
float64 on ``--points`` test points at t = 0, 0.5 and 1, each of
``hutchinson[probes=k]`` and ``hutchpp[probes=k]`` (k in ``--budgets``,
Gaussian and Rademacher noise) draws ``--draws`` independent probe sets per
point. Reported: the mean per-point variance of the divergence estimate, the
bias z-score, Hutchinson's theoretical variance from the full Jacobian, the
measured cost per evaluation at D=16, and variance x cost (the variance one
would reach for a fixed compute budget by averaging repeats; lower is better).

    python benchmarks/bench_trace_cost.py [--dims 2,8,16,32,64,128] [--batch 256] [--repeats 11]
        [--device cpu] [--threads 1] [--hidden 3x64] [--budgets 6,12] [--train-iterations 150]
        [--points 128] [--draws 64] [--skip-variance]
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cnfbench.config import RunConfig, resolve_cells
from cnfbench.contracts import TraceEstimator, VectorField
from cnfbench.params import ParamError, parse_selection
from cnfbench.provenance import cpu_model
from cnfbench.registry import Registry, load_registry
from cnfbench.training import TrainingRecord, seeded_field, train

VARIANCE_DATASET = "gaussian_mixture[dim=16]"
VARIANCE_SOLVER = "rk4[steps=4]"
VARIANCE_TIMES = (0.0, 0.5, 1.0)
GENERIC = "exact (generic)"


def parse_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def positive(text: str) -> int:
    (value,) = parse_ints(text)
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=parse_ints, default=[2, 8, 16, 32, 64, 128], help="dimensions D")
    parser.add_argument("--batch", type=positive, default=256, help="states per evaluation (default 256)")
    parser.add_argument("--repeats", type=positive, default=11,
                        help="timed repeats per estimator and D (default 11)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=positive, default=1,
                        help="torch intra-op threads (default 1: a small shared machine is oversubscribed by more)")
    parser.add_argument("--hidden", default="3x64", help="concatsquash hidden widths (default 3x64)")
    parser.add_argument("--budgets", type=parse_ints, default=[6, 12],
                        help="matrix-vector budgets k compared for hutchinson[probes=k] vs hutchpp[probes=k]")
    parser.add_argument("--train-iterations", type=positive, default=150, help="training iterations (default 150)")
    parser.add_argument("--points", type=positive, default=128, help="test points for the variance (default 128)")
    parser.add_argument("--draws", type=positive, default=64, help="probe sets per point and time (default 64)")
    parser.add_argument("--skip-variance", action="store_true", help="only measure the cost")
    args = parser.parse_args(argv)
    if any(k % 3 for k in args.budgets):
        parser.error("--budgets must be multiples of 3 (Hutch++ splits its budget in thirds)")
    if args.draws < 2:
        parser.error("--draws must be at least 2")
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------
# Cost.
# --------------------------------------------------------------------------------------------------


@dataclass
class Timed:
    label: str
    trace: TraceEstimator
    plain_function: bool = False  # hand the field over as a plain function (hides forward_with_divergence)


def cost_estimators(registry: Registry, budgets: list[int]) -> list[Timed]:
    """Every registered trace (defaults), the generic exact path, and the equal-budget stochastic variants."""
    def build(selector: str) -> TraceEstimator:
        return registry.build("trace", registry.resolve("trace", parse_selection(selector)))

    timed = [Timed(entry.name, build(entry.name)) for entry in registry.entries("trace")]
    if "exact" in registry.names("trace"):
        timed.insert(1, Timed(GENERIC, build("exact"), plain_function=True))
    labels = {item.label for item in timed}
    for k in budgets:
        for name in ("hutchinson", "hutchpp"):
            label = f"{name}[probes={k}]"
            if name in registry.names("trace") and label not in labels:
                timed.append(Timed(label, build(label)))
                labels.add(label)
    return timed


def build_field(registry: Registry, hidden: str, dim: int, device: torch.device, seed: int = 0) -> VectorField:
    resolved = registry.resolve("field", parse_selection(f"concatsquash[hidden={hidden},activation=tanh]"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return registry.build("field", resolved, dim).to(device)


def one_evaluation(item: Timed, field: VectorField, t: Tensor, z: Tensor, training: bool,
                   device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds of one evaluation (the probe draw and the gradient reset are not timed)."""
    item.trace.begin_solve(z, torch.Generator().manual_seed(0))
    field.zero_grad(set_to_none=True)
    function: Callable[[Tensor, Tensor], Tensor] = (lambda tt, zz: field(tt, zz)) if item.plain_function else field
    gc.collect()
    gc.disable()  # a collection triggered inside one estimator's timing would be charged to it
    try:
        synchronize(device)
        wall, cpu = time.perf_counter(), time.thread_time()
        if training:
            _, div = item.trace(function, t, z, True)
            div.sum().backward()
        else:
            _, div = item.trace(function, t, z, False)
        synchronize(device)
        return time.perf_counter() - wall, time.thread_time() - cpu
    finally:
        gc.enable()


Samples = dict[int, dict[str, list[tuple[float, float]]]]
"""``{D: {label: [(wall ms, CPU ms) per repeat]}}``."""


def measure_cost(args: argparse.Namespace, registry: Registry, timed: list[Timed], training: bool,
                 device: torch.device) -> Samples:
    results: Samples = {}
    for dim in args.dims:
        field = build_field(registry, args.hidden, dim, device)
        z = torch.randn(args.batch, dim, generator=torch.Generator().manual_seed(dim)).to(device).requires_grad_(True)
        t = torch.tensor(0.5, device=device)
        samples: dict[str, list[tuple[float, float]]] = {item.label: [] for item in timed}
        shuffler = random.Random(dim)
        for repeat in range(args.repeats + 1):  # repeat 0 warms up
            for item in shuffler.sample(timed, len(timed)):  # a fresh order: no fixed position or predecessor
                wall, cpu = one_evaluation(item, field, t, z, training, device)
                if repeat:
                    samples[item.label].append((1e3 * wall, 1e3 * cpu))
        results[dim] = samples
        fastest = min(samples, key=lambda label: median_ms(samples[label]))
        print(f"  D={dim}: done ({'training' if training else 'evaluation'}; fastest {fastest} "
              f"{median_ms(samples[fastest]):.2f} ms)", flush=True)
    return results


def median_ms(values: list[tuple[float, float]], clock: int = 0) -> float:
    """Median wall (``clock=0``) or CPU (``clock=1``) milliseconds."""
    return statistics.median(value[clock] for value in values)


def cost_table(results: Samples, labels: list[str]) -> str:
    dims = sorted(results)
    lines = ["| estimator | " + " | ".join(f"D={d} [ms]" for d in dims) + " |",
             "|---|" + "---:|" * len(dims)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(f"{median_ms(results[d][label]):.2f}" for d in dims) + " |")
    return "\n".join(lines)


def paired_ratio(results: Samples, dim: int, numerator: str, denominator: str, clock: int) -> float:
    """Median over repeats of numerator time / denominator time measured in the same repeat."""
    pairs = zip(results[dim][numerator], results[dim][denominator], strict=True)
    return statistics.median(top[clock] / bottom[clock] for top, bottom in pairs)


def ratio_table(results: Samples, numerator: str, denominators: list[str]) -> str:
    """Three estimates of each speed ratio: paired medians (wall, CPU) and the ratio of the fastest CPU times."""
    dims = sorted(results)
    lines = ["| ratio | " + " | ".join(f"D={d}" for d in dims) + " |", "|---|" + "---:|" * len(dims)]
    for denominator in denominators:
        for clock, name in ((0, "wall, median of paired"), (1, "CPU, median of paired")):
            cells = [paired_ratio(results, d, numerator, denominator, clock) for d in dims]
            lines.append(f"| {numerator} / {denominator} ({name}) | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
        cells = [min(c for _, c in results[d][numerator]) / min(c for _, c in results[d][denominator]) for d in dims]
        lines.append(f"| {numerator} / {denominator} (CPU, min / min) | " + " | ".join(f"{c:.2f}x" for c in cells)
                     + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Variance at equal matrix-vector budget.
# --------------------------------------------------------------------------------------------------


def train_field(args: argparse.Namespace, registry: Registry) -> tuple[VectorField, Tensor, str, TrainingRecord]:
    config = RunConfig(dataset=(VARIANCE_DATASET,), field=(f"concatsquash[hidden={args.hidden},activation=tanh]",),
                       solver=(VARIANCE_SOLVER,), trace=("exact",), seeds=1, iterations=args.train_iterations,
                       batch_size=256, device="cpu")
    (cell,) = resolve_cells(config, registry)
    dataset = registry.build("dataset", cell.dataset)
    splits = dataset.splits(cell.seed)
    field_module = seeded_field(lambda: registry.build("field", cell.field, dataset.dim), cell.seed,
                                torch.device("cpu"))
    record = TrainingRecord()
    every = max(1, args.train_iterations // 5)
    began = time.perf_counter()

    def progress(iteration: int, loss: float, _nfe: int) -> None:
        if iteration % every == 0 or iteration == args.train_iterations:
            print(f"  iteration {iteration:4d}/{args.train_iterations}  train loss {loss:.4f} nats  "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)

    print(f"training {cell.describe()}", flush=True)
    train(cell, field_module, registry.build("objective", cell.objective), registry.build("solver", cell.solver),
          registry.build("trace", cell.trace), registry.build("optimizer", cell.optimizer), splits.train, record,
          progress)
    field64 = copy.deepcopy(field_module).to(torch.float64).eval()
    return field64, splits.test[: args.points].to(torch.float64), cell.describe(), record


@dataclass
class VarianceRow:
    label: str
    budget: int
    noise: str
    variance: float  # mean over points and times of the per-point variance of the estimate
    theory: float  # Hutchinson's formula (nan for Hutch++)
    max_abs_z: float  # largest |mean - exact| / standard error over points and times
    pooled_z: float  # summed gap over its standard error


def jacobians(field: VectorField, t: Tensor, points: Tensor) -> Tensor:
    """Per-point Jacobians ``[P, D, D]`` by vmap over ``jacrev``."""
    def one(point: Tensor) -> Tensor:
        return field(t, point.unsqueeze(0)).squeeze(0)

    with torch.no_grad():
        return torch.func.vmap(torch.func.jacrev(one))(points)


def hutchinson_theory(jac: Tensor, noise: str, probes: int) -> float:
    symmetric = 0.5 * (jac + jac.transpose(1, 2))
    frobenius = symmetric.pow(2).sum(dim=(1, 2))
    if noise == "rademacher":
        frobenius = frobenius - jac.diagonal(dim1=1, dim2=2).pow(2).sum(dim=1)
    return float((2 * frobenius / probes).mean())


def variant_labels(budgets: list[int]) -> list[tuple[str, str, int, str]]:
    """``(label, name, k, noise)`` for every compared stochastic variant."""
    return [(f"{name}[probes={k},noise={noise}]", name, k, noise)
            for k in budgets for name in ("hutchinson", "hutchpp") for noise in ("gaussian", "rademacher")]


def measure_variance(args: argparse.Namespace, registry: Registry, field: VectorField,
                     points: Tensor) -> tuple[list[VarianceRow], dict[str, float]]:
    exact = registry.build("trace", registry.resolve("trace", parse_selection("exact")))
    n_points = points.shape[0]
    variants = variant_labels(args.budgets)
    variances: dict[str, list[Tensor]] = {label: [] for label, *_ in variants}  # per-point, per time
    gaps: dict[str, list[Tensor]] = {label: [] for label, *_ in variants}  # mean estimate - exact, per point
    theories: dict[str, list[float]] = {label: [] for label, *_ in variants}
    diagnostics: dict[str, float] = {}
    share = 1.0 / len(VARIANCE_TIMES)
    replicated = points.repeat(args.draws, 1).requires_grad_(True)  # row r * P + p is draw r of point p
    for t_index, t_value in enumerate(VARIANCE_TIMES):
        t = torch.tensor(t_value, dtype=torch.float64)
        exact_div = exact(field, t, points.clone().requires_grad_(True), False)[1].detach()
        jac = jacobians(field, t, points)
        energy = torch.linalg.svdvals(jac).pow(2)
        energy = energy / energy.sum(dim=1, keepdim=True)
        for m in sorted({k // 3 for k in args.budgets}):
            key = f"share of ||J||_F^2 in the top {m} singular values"
            diagnostics[key] = diagnostics.get(key, 0.0) + share * float(energy[:, :m].sum(dim=1).mean())
        diagnostics["mean abs(exact div)"] = diagnostics.get("mean abs(exact div)", 0.0) + share * float(
            exact_div.abs().mean())
        for index, (label, name, k, noise) in enumerate(variants):
            trace = registry.build("trace", registry.resolve("trace", parse_selection(label)))
            trace.begin_solve(replicated, torch.Generator().manual_seed(1000 * t_index + index))
            estimates = trace(field, t, replicated, False)[1].detach().reshape(args.draws, n_points)
            variances[label].append(estimates.var(dim=0))
            gaps[label].append(estimates.mean(dim=0) - exact_div)
            theories[label].append(hutchinson_theory(jac, noise, k) if name == "hutchinson" else math.nan)
    rows = []
    for label, name, k, noise in variants:
        variance = torch.cat(variances[label])
        gap = torch.cat(gaps[label])
        standard_error = (variance / args.draws).sqrt()
        rows.append(VarianceRow(
            f"{name}[probes={k}]", k, noise, float(variance.mean()), statistics.fmean(theories[label]),
            float((gap / standard_error).abs().max()), float(gap.sum() / standard_error.pow(2).sum().sqrt())))
    return rows, diagnostics


def variance_table(rows: list[VarianceRow], cost_at_16: dict[str, list[tuple[float, float]]] | None) -> str:
    lines = ["| estimator | noise | matvecs | Var of div estimate [(nats/unit time)^2] | Hutchinson theory "
             "| max abs(z) | pooled z | cost at D=16 [ms/eval] | Var x cost [(nats/unit time)^2 ms] |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        cost = median_ms(cost_at_16[row.label]) if cost_at_16 and row.label in cost_at_16 else None
        cost_text = "n/a" if cost is None else f"{cost:.2f}"
        product = "n/a" if cost is None else f"{row.variance * cost:.4g}"
        theory = "—" if math.isnan(row.theory) else f"{row.theory:.4g}"
        lines.append(f"| {row.label} | {row.noise} | {row.budget} | {row.variance:.4g} | {theory} "
                     f"| {row.max_abs_z:.2f} | {row.pooled_z:+.2f} | {cost_text} | {product} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------------


def machine_line(device: torch.device) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    gpu = f", device {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"machine: CPU {cpu_model()} ({cores} cores usable{load}){gpu}, torch {torch.__version__} "
            f"with {torch.get_num_threads()} intra-op thread(s), Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    registry = load_registry()
    try:
        timed = cost_estimators(registry, args.budgets)
        registry.resolve("field", parse_selection(f"concatsquash[hidden={args.hidden}]"))
    except ParamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = [item.label for item in timed]
    print(machine_line(device))
    print(f"estimators: {', '.join(labels)}", flush=True)
    print("cost, training (forward + divergence with create_graph + backward of the summed divergence) ...")
    training = measure_cost(args, registry, timed, True, device)
    exact_like = [item for item in timed if item.label in ("exact", GENERIC, "exact_loop")]
    print("cost, evaluation (forward + divergence, create_graph=False) ...")
    evaluation = measure_cost(args, registry, exact_like, False, device)

    variance_rows: list[VarianceRow] = []
    diagnostics: dict[str, float] = {}
    field_label = ""
    record = None
    if not args.skip_variance:
        field64, points, field_label, record = train_field(args, registry)
        print(f"variance: {points.shape[0]} points x {len(VARIANCE_TIMES)} times x {args.draws} draws, float64 ...",
              flush=True)
        variance_rows, diagnostics = measure_variance(args, registry, field64, points)
    total = time.perf_counter() - started

    print()
    print(machine_line(device))
    print(f"field: concatsquash[hidden={args.hidden},activation=tanh] (same width at every D), batch {args.batch}, "
          f"float32, {args.device}; median of {args.repeats} interleaved repeats after a warm-up")
    print("\nTraining: ms per evaluation (forward + divergence with create_graph=True + backward of sum(div))")
    print(cost_table(training, labels))
    denominators = [label for label in ("exact", GENERIC) if label in labels]
    if "exact_loop" in labels and denominators:
        print()
        print(ratio_table(training, "exact_loop", denominators))
    print("\nEvaluation: ms per evaluation (forward + divergence, create_graph=False, no backward)")
    print(cost_table(evaluation, [item.label for item in exact_like]))
    if "exact_loop" in labels and denominators:
        print()
        print(ratio_table(evaluation, "exact_loop", denominators))
    if variance_rows:
        assert record is not None
        print(f"\nVariance at equal matrix-vector budget: {field_label}, {record.iterations} iterations "
              f"({record.total_seconds:.0f} s), final train loss {record.losses[-1]:.4f} nats; "
              f"{args.points} test points x t in {{{', '.join(f'{t:g}' for t in VARIANCE_TIMES)}}} x {args.draws} "
              "independent probe sets, float64")
        print("; ".join(f"{key} {value:.3g}" for key, value in diagnostics.items()))
        tests = args.points * len(VARIANCE_TIMES)
        bound = statistics.NormalDist().inv_cdf(1 - 0.01 / (2 * tests))
        print(f"bias: pooled z = summed (mean - exact) over all point-times / its standard error (should be within "
              f"+-4); max abs(z) = largest per point-time |mean - exact| / sample standard error over {tests} "
              f"point-times (normal Bonferroni 1% bound {bound:.2f}; with {args.draws} draws of a heavy-tailed "
              "estimate the sample standard error is itself noisy). Var x cost uses the median wall time.")
        print(variance_table(variance_rows, training.get(16)))
        for k in args.budgets:
            for noise in ("gaussian", "rademacher"):
                pair = {row.label.split("[")[0]: row for row in variance_rows if row.budget == k and row.noise == noise}
                if len(pair) == 2 and 16 in training:
                    h, p = pair["hutchinson"], pair["hutchpp"]
                    cost = paired_ratio(training, 16, f"hutchpp[probes={k}]", f"hutchinson[probes={k}]", 1)
                    print(f"k={k}, {noise}: Var hutchpp / Var hutchinson = {p.variance / h.variance:.3g}; "
                          f"cost hutchpp / hutchinson = {cost:.3g} (CPU, paired); "
                          f"(Var x cost) hutchpp / hutchinson = {p.variance * cost / h.variance:.3g}")
    print(f"\ntotal runtime {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
