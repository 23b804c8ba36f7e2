#!/usr/bin/env python
"""Variance of every stochastic trace estimator, measured on a trained field and checked against theory.

One field (concatsquash 3x64 tanh by default) is trained with cnfbench's own
machinery: a ``RunConfig`` (dopri5, exact trace), ``resolve_cells``, the
registry's dataset/field/solver/trace and ``cnfbench.training.train``. Then,
on ``--points`` test points, in float64:

* **Divergence.** At each time ``t`` in ``--times`` the exact divergence comes
  from the registry's ``exact`` trace, and the full Jacobian ``J = dv/dz``
  from one vector-Jacobian product per dimension. Every stochastic trace of
  the registry (``stochastic = True``), with every value of its ``noise``
  choices when it declares one, draws ``--probes`` independent probes per
  point (``begin_solve`` with its own seeded ``torch.Generator`` before each
  draw). Per point the mean estimate is compared with the exact divergence
  (z-score = (mean - exact) / standard error; unbiasedness) and the sample
  variance with theory: ``Var = 2 ||J_sym||_F^2`` for Gaussian probes and
  ``Var = 2 (||J_sym||_F^2 - sum_i J_ii^2)`` for Rademacher probes, with
  ``J_sym = (J + J^T) / 2``.
* **log p(x).** On the first ``--logp-points`` points, ``--logp-reps``
  independent whole solves per estimator with ``cnfbench.dynamics.log_likelihood``
  and the cell's reference solver (dopri5 at rtol=atol=1e-7), against the
  exact-trace ``log p(x)`` of the same solve. The probe is drawn once per
  solve and the trajectory ``z(t)`` does not depend on it, so
  ``log p_hat(x) - log p(x) = -(e^T A e - tr A)`` with ``A = int_0^1 J(t, z(t)) dt``;
  the same formulas with ``A`` in place of ``J`` give the theoretical
  variance, and ``A`` is integrated along the trajectory with the same solver.

    python benchmarks/bench_trace_variance.py [--dataset 8gaussians] [--iterations 300] [--batch-size 256]
        [--points 512] [--probes 200] [--seed 0] [--times 0,0.5,1] [--logp-points 64] [--logp-reps 32]
        [--threads 1] [--strict]

The checks: a row's unbiasedness passes when its largest per-point |z| (gap
over the theoretical standard error) is below the two-sided Bonferroni bound
for a 1% family-wise error over its points and the z-score of the gap summed
over all points is below 4; its theory check passes when the measured/theoretical variance
ratio is within 4 standard errors of 1 (the standard error is taken from the
per-point differences). Exit status: 0 normally; 1 with ``--strict`` when a
check fails; 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnfbench.config import RunConfig, resolve_cells
from cnfbench.contracts import Solver, TraceEstimator, VectorField, split_generator
from cnfbench.dynamics import CNFDynamics, NFECounter, log_likelihood, standard_normal_log_prob
from cnfbench.params import ParamError, parse_selection
from cnfbench.provenance import cpu_model
from cnfbench.registry import Registry, load_registry
from cnfbench.training import Diverged, TrainingRecord, seeded_field, train

FIELD = "concatsquash[hidden=3x64,activation=tanh]"
SOLVER = "dopri5"
TRACE = "exact"
FAMILY_WISE_ALPHA = 0.01  # unbiasedness: family-wise error rate over the points of one row
POOLED_Z = 4.0  # unbiasedness: bound on the z-score of the gap summed over all points
AGREEMENT_Z = 4.0  # theory check: measured/theory ratio within this many standard errors of 1
NOISE_PARAM = "noise"
EXIT_CHECK_FAILED = 1


# --------------------------------------------------------------------------------------------------
# Building and training the field with cnfbench's machinery (the sequence of cnfbench.execute.train_and_evaluate).
# --------------------------------------------------------------------------------------------------


@dataclass
class Trained:
    cell_label: str
    field: VectorField  # float64 copy of the trained field, in eval mode
    test: Tensor  # float64 test points [points, D]
    true_log_prob: Tensor | None  # the dataset's exact log-density at the test points, when it knows it
    record: TrainingRecord
    ref_solver_label: str
    ref_solver: Solver
    exact: TraceEstimator
    budget: str


def train_field(args: argparse.Namespace, registry: Registry) -> Trained:
    config = RunConfig(dataset=(args.dataset,), field=(FIELD,), solver=(SOLVER,), trace=(TRACE,), seeds=1,
                       first_seed=args.seed, iterations=args.iterations, batch_size=args.batch_size, device="cpu")
    (cell,) = resolve_cells(config, registry)
    device = torch.device(cell.device)
    dataset = registry.build("dataset", cell.dataset)
    splits = dataset.splits(cell.seed)
    train_data, test = splits.train.to(device), splits.test.to(device)
    if args.points > test.shape[0]:
        raise ParamError(f"--points {args.points} exceeds the {test.shape[0]} test samples of {args.dataset!r}")
    field_module = seeded_field(lambda: registry.build("field", cell.field, dataset.dim), cell.seed, device)
    solver = registry.build("solver", cell.solver)
    trace = registry.build("trace", cell.trace)
    record = TrainingRecord()
    every = max(1, cell.budget.iterations // 6)

    def progress(iteration: int, loss: float, _nfe: int) -> None:
        if iteration % every == 0 or iteration == cell.budget.iterations:
            print(f"  iteration {iteration:4d}/{cell.budget.iterations}  train loss {loss:.4f} nats  "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)

    print(f"training {cell.describe()}", flush=True)
    began = time.perf_counter()
    train(cell, field_module, registry.build("objective", cell.objective), solver, trace,
          registry.build("optimizer", cell.optimizer), train_data, record, progress)
    points = test[: args.points]
    true_log_prob = dataset.log_prob(points.to("cpu")).to(torch.float64) if dataset.has_density else None
    field64 = copy.deepcopy(field_module).to(torch.float64).eval()
    budget = (f"{cell.budget.iterations} Adam iterations, batch {cell.budget.batch_size}, lr {cell.budget.lr:g}, "
              f"{cell.solver.label()} with the {cell.trace.label()} trace, seed {cell.seed}: "
              f"{record.total_seconds:.0f} s, {statistics.fmean(record.nfe_forward):.0f} forward NFE/iteration")
    return Trained(cell.describe(), field64, points.to(torch.float64), true_log_prob, record,
                   cell.evaluation.ref_solver.label(), registry.build("solver", cell.evaluation.ref_solver),
                   registry.build("trace", cell.evaluation.trace), budget)


@dataclass
class Variant:
    label: str  # e.g. hutchinson[noise=gaussian]
    trace: TraceEstimator
    noise: str | None  # the value of its `noise` parameter, which selects the theoretical formula


def _single_quadratic_form(params: tuple) -> bool:
    """Whether an estimator is one probe's ``e^T J e``: the closed-form variances below apply only then.

    That is assumed of an estimator with a ``noise`` parameter whose ``probes`` (if declared) default to 1;
    estimators that combine several probes differently (Hutch++) are shown without a theory column.
    """
    probes = next((p for p in params if p.name == "probes"), None)
    return probes is None or probes.default == 1


def stochastic_variants(registry: Registry) -> list[Variant]:
    """Every stochastic trace of the registry, once per value of its ``noise`` choices when it has them."""
    variants = []
    for entry in registry.entries("trace"):
        if not entry.cls.stochastic:
            continue
        noise = next((p for p in entry.cls.params if p.name == NOISE_PARAM and p.choices), None)
        values: tuple[str | None, ...] = noise.choices if noise is not None else (None,)
        formula = _single_quadratic_form(entry.cls.params)
        for value in values:
            selector = entry.name if value is None else f"{entry.name}[{NOISE_PARAM}={value}]"
            resolved = registry.resolve("trace", parse_selection(selector))
            variants.append(Variant(resolved.label(), registry.build("trace", resolved), value if formula else None))
    return variants


# --------------------------------------------------------------------------------------------------
# Jacobians and the theoretical variances.
# --------------------------------------------------------------------------------------------------


def jacobian(field: VectorField, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """``(v, J)`` with ``J[n, i, j] = d v_i / d z_j`` at every row (rows are independent), one VJP per dimension."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        v = field(t, z)
        rows = [torch.autograd.grad(v[:, i].sum(), z, retain_graph=True)[0] for i in range(z.shape[1])]
    return v.detach(), torch.stack(rows, dim=1).detach()


def theory_variance(matrix: Tensor, noise: str | None) -> Tensor | None:
    """Var(e^T M e) per row for the probe distribution named ``noise`` (None when there is no formula)."""
    symmetric = 0.5 * (matrix + matrix.transpose(1, 2))
    frobenius = symmetric.pow(2).sum(dim=(1, 2))
    if noise == "gaussian":
        return 2.0 * frobenius
    if noise == "rademacher":
        return 2.0 * (frobenius - torch.diagonal(matrix, dim1=1, dim2=2).pow(2).sum(dim=1))
    return None


class JacobianDynamics(nn.Module):
    """``(z, M) -> (v(t, z), J(t, z))``: integrates the Jacobian along the flow's trajectory."""

    def __init__(self, field: VectorField) -> None:
        super().__init__()
        self.field = field

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return jacobian(self.field, t, state[0])


# --------------------------------------------------------------------------------------------------
# Measurement.
# --------------------------------------------------------------------------------------------------


@dataclass
class Row:
    where: str  # "t=0.5" or "log p"
    estimator: str
    scale: float  # mean |exact div| (nats / unit time) or mean |log p| (nats)
    variance: float  # mean per-point sample variance
    theory: float  # mean per-point theoretical variance (nan when unknown)
    agreement_z: float  # (mean(measured - theory)) / its standard error
    max_z: float  # largest per-point |mean - exact| / stderr (theoretical stderr when known)
    z_bound: float  # Bonferroni bound for max_z
    pooled_z: float  # sum(mean - exact) / sqrt(sum(var) / draws)
    draws: int
    points: int
    seconds: float

    @property
    def rel_sd(self) -> float:
        return math.sqrt(self.variance) / self.scale if self.scale > 0 else math.nan

    @property
    def ratio(self) -> float:
        return self.variance / self.theory if self.theory > 0 else math.nan

    @property
    def unbiased_ok(self) -> bool:
        return self.max_z < self.z_bound and abs(self.pooled_z) < POOLED_Z

    @property
    def theory_ok(self) -> bool:
        return math.isnan(self.theory) or abs(self.agreement_z) < AGREEMENT_Z


def bonferroni_bound(points: int) -> float:
    return statistics.NormalDist().inv_cdf(1.0 - FAMILY_WISE_ALPHA / (2.0 * points))


def summarise(where: str, label: str, estimates: Tensor, exact: Tensor, theory: Tensor | None, scale: float,
              seconds: float) -> Row:
    """``estimates`` [draws, points] against ``exact`` [points] and ``theory`` [points].

    The per-point z-scores divide by the theoretical standard error when there is a formula: the sample
    variance of a few draws of a skewed (Gaussian quadratic form) or two-valued (Rademacher in 2D) estimate
    is too noisy for a t-statistic. The pooled z sums the gaps over all points, where the CLT holds well.
    """
    draws, points = estimates.shape
    mean = estimates.mean(dim=0)
    variance = estimates.var(dim=0, unbiased=True)
    stderr = ((variance if theory is None else theory.clamp(min=0.0)) / draws).sqrt()
    informative = stderr > 1e-9 * (1.0 + exact.abs())  # a zero-variance point has nothing to test
    gap = mean - exact
    max_z = float((gap[informative].abs() / stderr[informative]).max()) if bool(informative.any()) else 0.0
    pooled = float(variance.sum()) / draws
    pooled_z = float(gap.sum()) / math.sqrt(pooled) if pooled > 0 else 0.0
    if theory is None:
        theory_mean, agreement_z = math.nan, math.nan
    else:
        difference = variance - theory
        spread = float(difference.std(unbiased=True)) / math.sqrt(points) if points > 1 else math.nan
        theory_mean = float(theory.mean())
        agreement_z = float(difference.mean()) / spread if spread > 0 else 0.0
    return Row(where, label, scale, float(variance.mean()), theory_mean, agreement_z, max_z,
               bonferroni_bound(int(informative.sum()) or 1), pooled_z, draws, points, seconds)


def measure_divergence(trained: Trained, variants: list[Variant], times: list[float], probes: int,
                       seed: int) -> list[Row]:
    rows = []
    z = trained.test.detach().requires_grad_(True)
    for t_value in times:
        t = torch.tensor(t_value, dtype=torch.float64)
        _, jac = jacobian(trained.field, t, z)
        with torch.enable_grad():
            _, exact = trained.exact(trained.field, t, z, False)
        exact = exact.detach()
        gap = float((exact - torch.diagonal(jac, dim1=1, dim2=2).sum(dim=1)).abs().max())
        if gap > 1e-9 * (1.0 + float(exact.abs().max())):
            raise RuntimeError(f"exact trace and Jacobian trace disagree by {gap:.2e} at t={t_value}")
        for variant in variants:
            began = time.perf_counter()
            estimates = torch.empty(probes, z.shape[0], dtype=torch.float64)
            for k in range(probes):
                generator = split_generator(seed, f"variance/div/{variant.label}/t={t_value}/probe={k}")
                variant.trace.begin_solve(z, generator)
                with torch.enable_grad():
                    _, div = variant.trace(trained.field, t, z, False)
                estimates[k] = div.detach()
            rows.append(summarise(f"t={t_value:g}", variant.label, estimates, exact,
                                  theory_variance(jac, variant.noise), float(exact.abs().mean()),
                                  time.perf_counter() - began))
    return rows


def measure_log_prob(trained: Trained, variants: list[Variant], points: int, reps: int,
                     seed: int) -> tuple[list[Row], Tensor, float]:
    """Per-estimator rows, the exact log p of all test points and the NFE of one exact reference solve."""
    solver = trained.ref_solver
    counter = NFECounter()
    exact_dynamics = CNFDynamics(trained.field, trained.exact, counter, differentiable=False)
    with torch.no_grad():
        exact_all = log_likelihood(exact_dynamics, solver, trained.test, "ref", None)
    nfe = counter.current
    x = trained.test[:points]
    with torch.no_grad():  # the same batch as the stochastic solves, so that the adaptive steps are comparable
        exact = log_likelihood(exact_dynamics, solver, x, "ref", None)
    with torch.no_grad():
        z0, integral = solver.integrate(JacobianDynamics(trained.field), (x, torch.zeros(
            points, x.shape[1], x.shape[1], dtype=x.dtype)), 1.0, 0.0)
    # Integrated from t=1 to t=0, so the integral holds -A with A = int_0^1 J dt; the variance ignores the sign.
    rebuilt = standard_normal_log_prob(z0) - torch.diagonal(-integral, dim1=1, dim2=2).sum(dim=1)
    print(f"  check: log N(z0) - tr(int_0^1 J dt) matches the exact-trace log p to "
          f"{float((rebuilt - exact).abs().max()):.1e} nats")
    rows = []
    for variant in variants:
        began = time.perf_counter()
        dynamics = CNFDynamics(trained.field, variant.trace, NFECounter(), differentiable=False)
        estimates = torch.empty(reps, points, dtype=torch.float64)
        with torch.no_grad():
            for r in range(reps):
                generator = split_generator(seed, f"variance/logp/{variant.label}/rep={r}")
                estimates[r] = log_likelihood(dynamics, solver, x, "ref", generator)
        row = summarise("log p", variant.label, estimates, exact, theory_variance(integral, variant.noise),
                        float(exact.abs().mean()), time.perf_counter() - began)
        rows.append(row)
    return rows, exact_all, nfe


# --------------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------------


def machine_line() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"machine: CPU {cpu_model()} ({cores} cores usable), torch {torch.__version__} "
            f"({torch.get_num_threads()} intra-op threads), Python {platform.python_version()}{load}")


def fmt(value: float, digits: int = 4) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}g}"


def agreement(row: Row) -> str:
    if math.isnan(row.theory):
        return "no formula"
    return f"z {row.agreement_z:+.1f}, {'ok' if row.theory_ok else 'MISMATCH'}"


def divergence_table(rows: list[Row]) -> str:
    lines = [
        "| t | estimator | mean abs(exact div) [nats/unit time] | Var measured [(nats/unit time)^2] "
        "| Var theory [(nats/unit time)^2] | measured/theory (z) | rel. sd | max abs(z) (bound) | pooled z |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.where[2:]} | {row.estimator} | {fmt(row.scale)} | {fmt(row.variance)} | {fmt(row.theory)} "
            f"| {fmt(row.ratio, 3)} ({agreement(row)}) | {fmt(row.rel_sd, 3)} "
            f"| {row.max_z:.2f} ({row.z_bound:.2f}, {'ok' if row.unbiased_ok else 'BIASED?'}) | {row.pooled_z:+.2f} |"
        )
    return "\n".join(lines)


def log_prob_table(rows: list[Row], batch_size: int) -> str:
    lines = [
        "| estimator | mean abs(log p) [nats] | Var log p measured [nats^2] | Var theory [nats^2] "
        f"| measured/theory (z) | sd [nats] | sd of a {batch_size}-point batch-mean loss [nats] "
        "| max abs(z) (bound) | pooled z |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.estimator} | {fmt(row.scale)} | {fmt(row.variance)} | {fmt(row.theory)} "
            f"| {fmt(row.ratio, 3)} ({agreement(row)}) | {fmt(math.sqrt(row.variance), 3)} "
            f"| {fmt(math.sqrt(row.variance / batch_size), 3)} "
            f"| {row.max_z:.2f} ({row.z_bound:.2f}, {'ok' if row.unbiased_ok else 'BIASED?'}) | {row.pooled_z:+.2f} |"
        )
    return "\n".join(lines)


def parse_times(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated times in [0, 1], got {text!r}") from None
    if not values or not all(0.0 <= value <= 1.0 for value in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated times in [0, 1], got {text!r}")
    return values


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def at_least_two(text: str) -> int:
    value = positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError("a variance needs at least 2 draws")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="8gaussians", help="dataset selector (default 8gaussians)")
    parser.add_argument("--iterations", type=positive, default=300, help="training iterations (default 300)")
    parser.add_argument("--batch-size", type=positive, default=256, help="training batch size (default 256)")
    parser.add_argument("--points", type=positive, default=512, help="test points for the divergence (default 512)")
    parser.add_argument("--probes", type=at_least_two, default=200, help="probes per point and time (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="cell seed (default 0)")
    parser.add_argument("--times", type=parse_times, default=[0.0, 0.5, 1.0], help="times t (default 0,0.5,1)")
    parser.add_argument("--logp-points", type=positive, default=64,
                        help="test points for the log p variance, a prefix of --points (default 64)")
    parser.add_argument("--logp-reps", type=at_least_two, default=32,
                        help="independent whole solves per point and estimator (default 32)")
    parser.add_argument("--threads", type=positive, default=1,
                        help="torch intra-op threads (default 1: on a small shared machine more threads "
                             "oversubscribe the cores and run many times slower)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when an unbiasedness or theory check fails")
    args = parser.parse_args(argv)
    if args.logp_points > args.points:
        parser.error("--logp-points must not exceed --points")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    registry = load_registry()
    try:
        variants = stochastic_variants(registry)
        trained = train_field(args, registry)
    except ParamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Diverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 1
    if not variants:
        print("no stochastic trace estimator is registered; nothing to measure")
        return 0
    losses = trained.record.losses
    tail = losses[-min(20, len(losses)):]
    print(f"final train loss {losses[-1]:.4f} nats (mean of the last {len(tail)} iterations "
          f"{statistics.fmean(tail):.4f} nats)")
    print(f"estimators: {', '.join(v.label for v in variants)} (every stochastic trace in the registry)")

    print(f"\ndivergence: {args.points} test points, {args.probes} probes per point and time ...", flush=True)
    div_rows = measure_divergence(trained, variants, args.times, args.probes, args.seed)
    print(f"log p: {args.logp_points} test points, {args.logp_reps} whole solves per point and estimator, "
          f"{trained.ref_solver_label} in float64 ...", flush=True)
    logp_rows, exact_log_prob, ref_nfe = measure_log_prob(trained, variants, args.logp_points, args.logp_reps,
                                                          args.seed)
    total = time.perf_counter() - started

    print()
    print(machine_line())
    print(f"field: {trained.cell_label}")
    print(f"training budget: {trained.budget}")
    nll = float(-exact_log_prob.mean())
    nll_se = float(exact_log_prob.std() / math.sqrt(exact_log_prob.numel()))
    context = ""
    if trained.true_log_prob is not None:
        entropy = float(-trained.true_log_prob.mean())
        context = f"; the data's true entropy on the same points is {entropy:.4f} nats"
    print(f"trained field: final train loss {losses[-1]:.4f} nats; exact-trace test NLL on the {args.points} points "
          f"{nll:.4f} +- {nll_se:.4f} nats ({trained.ref_solver_label}, float64, {ref_nfe} NFE){context}")
    spread = float(exact_log_prob.var(unbiased=True))
    print(f"data spread: Var of the exact log p across the test points {spread:.4g} nats^2 "
          f"(sd {math.sqrt(spread):.3g}), "
          f"i.e. sd {math.sqrt(spread / args.batch_size):.3g} nats for a {args.batch_size}-point batch-mean loss "
          "from minibatch sampling alone")
    print("measurement in float64; rel. sd = sqrt(mean variance) / mean abs(exact); z = (mean estimate - exact) "
          "/ its theoretical standard error per point, bound = Bonferroni 1% over the points; pooled z = summed "
          f"gap / its sample standard error over all points, bound {POOLED_Z:g}.")
    print("theory: Gaussian probes Var = 2 ||J_sym||_F^2, Rademacher Var = 2 (||J_sym||_F^2 - sum_i J_ii^2), "
          "J_sym = (J + J^T)/2, averaged over points; for log p, J is replaced by A = int_0^1 J(t, z(t)) dt.")
    print(f"\nDivergence estimate: {args.points} points, {args.probes} probes per point")
    print(divergence_table(div_rows))
    print(f"\nlog p(x) estimate along a solve: {args.logp_points} points, {args.logp_reps} solves per point")
    print(log_prob_table(logp_rows, args.batch_size))
    failed = [row for row in div_rows + logp_rows if not (row.unbiased_ok and row.theory_ok)]
    print(f"\nchecks: {'all passed' if not failed else f'{len(failed)} row(s) failed'}; "
          f"total runtime {total:.0f} s (training {trained.record.total_seconds:.0f} s)")
    return EXIT_CHECK_FAILED if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
