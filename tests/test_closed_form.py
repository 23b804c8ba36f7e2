"""Closed-form checks of the CNF log-likelihood on a linear field (issue "Numbers you can trust").

The field ``v(z, t) = A z`` transports ``z0 ~ N(0, I)`` at t=0 to ``x = e^A z0 ~ N(0, e^A e^{A^T})`` at t=1, so
``log p(x)`` is known exactly and every number the harness reports for it can be checked:

* ``nll_ref`` (the default reference solve, built and run the way the harness runs it) to 1e-4;
* every adaptive solver to a small multiple of its tolerance, and more accurately when the tolerance tightens;
* every fixed-grid Runge-Kutta solver at its textbook order of convergence, at ``steps x stages`` NFE;
* Hutchinson's estimator: unbiased, with the closed-form variance of its single-probe estimate.

The negative controls at the end break the code on purpose (the sign of the divergence, the Euler step, the
``steps`` grid, the tolerance hand-off) and assert that the same checks then report a wrong answer, so these
tests are known to be able to fail. Everything is evaluated in float64 on CPU (the reference test also hands the
pass float32 data and a float32 field, as a trained cell does, and checks that it evaluates them in float64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
import torchdiffeq
from torch import Tensor
from torchdiffeq._impl.odeint import SOLVERS as TORCHDIFFEQ_SOLVERS

from cnfbench.config import RunConfig
from cnfbench.contracts import VectorField
from cnfbench.dynamics import CNFDynamics, NFECounter, log_likelihood
from cnfbench.evaluation import EvaluationPass, evaluate_log_prob
from cnfbench.params import parse_selection
from cnfbench.registry import load_registry
from cnfbench.testing.reference import MatrixField, linear_flow_log_prob

F64 = torch.float64
REGISTRY = load_registry()

# Non-symmetric, non-normal matrices with a non-zero trace: the log-det term tr(A) is part of every log-density.
A2 = torch.tensor([[0.3, -0.8], [0.5, -0.1]], dtype=F64)  # tr 0.2
A3 = torch.tensor([[0.3, -0.8, 0.2], [0.5, -0.1, 0.4], [-0.3, 0.6, 0.5]], dtype=F64)  # tr 0.7
MATRICES = {"D2": A2, "D3": A3}
N_POINTS = 128

# Textbook order and dynamics evaluations per step of each fixed-grid Runge-Kutta method (not read from the plugin).
FIXED_GRID = {"euler": (1, 1), "midpoint": (2, 2), "heun2": (2, 2), "heun3": (3, 3), "rk4": (4, 4)}
ORDER_STEPS = (4, 8, 16)
ORDER_SLACK = 0.35  # measured orders at steps 4 -> 8 -> 16 are within 0.12 of the textbook order (D=2 and D=3)

# Adaptive solvers: (loose tol, tight tol, C) with rtol = atol = tol; the check is max_i |log p_i - exact_i| <= C * tol.
# C is 2-10x the worst per-sample error / tol measured on N_POINTS points from the true distribution at tol 1e-3
# to 1e-6 (1e-10 for dopri5/dopri8), D=2 and D=3: dopri5 <= 3.6, dopri8 <= 0.12, bosh3 <= 18.2, adaptive_heun
# <= 7.5. fehlberg2 (Fehlberg's RK1(2)) is measured at <= 781: its error estimate has weights +-1/512, so it is
# ~500x smaller than the error of the order-2 solution it propagates (~100 x tol already on y' = -y in torchdiffeq).
# dopri8 meets 1e-9 with its minimum two steps anywhere in 1e-3..1e-6, so its pair is (1e-6, 1e-10) instead.
ADAPTIVE = {
    "dopri5": (1e-4, 1e-6, 10.0),
    "dopri8": (1e-6, 1e-10, 1.0),
    "bosh3": (1e-4, 1e-6, 40.0),
    "fehlberg2": (1e-4, 1e-6, 2000.0),
    "adaptive_heun": (1e-4, 1e-6, 20.0),
}
MIN_GAIN = 8.0  # the 100x (dopri8: 1e4x) tighter tolerance must shrink the error this much; measured 18-760


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """Every tensor here is tiny (<= 2000 x 3); on a busy 2-core machine torch's intra-op thread pool makes each
    op 10-50x slower than one thread does (measured), so this module runs single-threaded and restores the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(family: str, selector: str, *args: object):
    """Build a component exactly as the harness does: parse, resolve against the registry, instantiate."""
    return REGISTRY.build(family, REGISTRY.resolve(family, parse_selection(selector)), *args)


def closed_form_entropy(matrix: Tensor) -> float:
    """Differential entropy of ``N(0, e^A e^{A^T})``: ``D/2 (1 + log 2 pi) + tr A`` (log det e^A = tr A)."""
    dim = matrix.shape[0]
    return 0.5 * dim * (1.0 + math.log(2 * math.pi)) + float(torch.trace(matrix))


def true_samples(matrix: Tensor, n: int, seed: int) -> Tensor:
    """``n`` draws of ``x = e^A z0``, ``z0 ~ N(0, I)``: the distribution the linear flow defines."""
    z0 = torch.randn(n, matrix.shape[0], generator=torch.Generator().manual_seed(seed), dtype=F64)
    return z0 @ torch.linalg.matrix_exp(matrix).T


def evaluate(selector: str, matrix: Tensor, x: Tensor, batch_size: int = N_POINTS) -> tuple[float, EvaluationPass]:
    """Evaluate the linear field with ``selector`` and the exact trace; return (max per-sample error, pass)."""
    result = evaluate_log_prob(MatrixField(matrix), build("solver", selector), build("trace", "exact"), x,
                               batch_size, "eval")
    return float((result.log_prob - linear_flow_log_prob(matrix, x)).abs().max()), result


def observed_orders(errors: Sequence[float]) -> list[float]:
    """``log2(e_n / e_2n)`` for consecutive step counts that double."""
    return [math.log2(coarse / fine) for coarse, fine in zip(errors[:-1], errors[1:], strict=True)]


def fixed_grid_problems(method: str, matrix: Tensor, x: Tensor, steps: Sequence[int] = ORDER_STEPS) -> list[str]:
    """Run ``method`` at each step count and list every way it misses its textbook order or NFE (empty: all good)."""
    order, stages = FIXED_GRID[method]
    problems: list[str] = []
    errors: list[float] = []
    for n in steps:
        error, result = evaluate(f"{method}[steps={n}]", matrix, x, batch_size=x.shape[0] // 2)  # two chunks
        errors.append(error)
        if result.nfe_max_chunk != n * stages or result.nfe != 2 * n * stages:
            problems.append(f"steps={n}: NFE {result.nfe_max_chunk}/chunk, {result.nfe} in all; "
                            f"expected {n * stages}/chunk, {2 * n * stages} in all")
    for n, rate in zip(steps[:-1], observed_orders(errors), strict=True):
        if not abs(rate - order) <= ORDER_SLACK:
            problems.append(f"steps {n}->{2 * n}: observed order {rate:.2f}, expected {order} (errors {errors})")
    return problems


def adaptive_problems(method: str, matrix: Tensor, x: Tensor) -> list[str]:
    """Run ``method`` at its loose and tight tolerance; list every way it misses its tolerance (empty: all good)."""
    loose, tight, constant = ADAPTIVE[method]
    errors, nfes = [], []
    problems: list[str] = []
    for tol in (loose, tight):
        error, result = evaluate(f"{method}[rtol={tol:g},atol={tol:g}]", matrix, x)
        errors.append(error)
        nfes.append(result.nfe)
        if not error <= constant * tol:
            problems.append(f"tol={tol:g}: max error {error:.3g} > {constant:g} * tol")
    if not errors[1] * MIN_GAIN <= errors[0]:
        problems.append(f"tightening tol {loose:g} -> {tight:g} only took the error {errors[0]:.3g} -> {errors[1]:.3g}")
    if not nfes[1] > nfes[0]:
        problems.append(f"tightening tol {loose:g} -> {tight:g} did not add steps (NFE {nfes[0]} -> {nfes[1]})")
    return problems


def reference_pass(field: VectorField, x: Tensor) -> EvaluationPass:
    """The ``nll_ref`` pass exactly as cnfbench/execute.py runs it with the default protocol."""
    defaults = RunConfig()
    ref_solver = REGISTRY.build("solver", REGISTRY.resolve("solver", parse_selection(defaults.ref_solver)))
    eval_trace = REGISTRY.build("trace", REGISTRY.resolve("trace", parse_selection(defaults.eval_trace)))
    return evaluate_log_prob(field, ref_solver, eval_trace, x, 50, "ref", dtype=getattr(torch, defaults.ref_dtype),
                             labels=("'linear'", repr(defaults.eval_trace)))


def hutchinson_estimates(noise: str, draws: int = 2000) -> tuple[Tensor, float]:
    """``draws`` single-probe estimates of ``log p(x)`` at one point (one probe per row), and the exact value."""
    x = true_samples(A2, 1, seed=11)
    dynamics = CNFDynamics(MatrixField(A2), build("trace", f"hutchinson[noise={noise}]"), NFECounter(), False)
    # The z-trajectory does not depend on the probe and the divergence e^T A e is constant in time, so the solver's
    # error is the same ~1e-6 on every row: far below the ~0.01 standard error of the mean.
    solver = build("solver", "rk4[steps=8]")
    logp = log_likelihood(dynamics, solver, x.expand(draws, 2).clone(), "eval", torch.Generator().manual_seed(0))
    return logp, float(linear_flow_log_prob(A2, x)[0])


# ---------------------------------------------------------------------------------------------------------------
# The closed form itself


@pytest.mark.parametrize("matrix", MATRICES.values(), ids=MATRICES.keys())
def test_closed_form_is_the_change_of_variables_formula(matrix: Tensor) -> None:
    """``log N(x; 0, e^A e^{A^T}) = log N(e^{-A} x; 0, I) - tr A``: the formula the flow must reproduce."""
    x = true_samples(matrix, 16, seed=1)
    z0 = x @ torch.linalg.matrix_exp(-matrix).T
    change_of_variables = -0.5 * (z0.pow(2).sum(1) + matrix.shape[0] * math.log(2 * math.pi)) - torch.trace(matrix)
    torch.testing.assert_close(linear_flow_log_prob(matrix, x), change_of_variables, rtol=0, atol=1e-12)
    assert abs(float(torch.trace(matrix))) > 0.1  # the log-det term is far above every tolerance used below


# ---------------------------------------------------------------------------------------------------------------
# nll_ref: the reference pass of the harness


@pytest.mark.parametrize("learnable", [False, True], ids=["buffer", "parameter"])
@pytest.mark.parametrize("data_dtype", [F64, torch.float32], ids=["float64-data", "float32-data"])
@pytest.mark.parametrize("matrix", MATRICES.values(), ids=MATRICES.keys())
def test_nll_ref_matches_the_closed_form(matrix: Tensor, data_dtype: torch.dtype, learnable: bool) -> None:
    """float32 data and field are what a trained cell hands the reference pass; it must evaluate them in float64."""
    field = MatrixField(matrix, learnable=learnable).to(data_dtype)
    x = true_samples(matrix, 200, seed=2).to(data_dtype)
    result = reference_pass(field, x)
    # The exact answer for the field and points as stored (float32 rounding of A and x included).
    expected = linear_flow_log_prob(field.matrix.detach(), x)
    assert result.log_prob.dtype == F64 and result.log_prob.shape == (200,)
    assert (result.log_prob - expected).abs().max() <= 1e-4
    assert abs(result.nll - float(-expected.mean())) <= 1e-4
    # What the float64 solve at 1e-7 really achieves (measured <= 5e-7); a pass left in float32 measures ~2e-5, which
    # the 1e-4 bound alone would not notice.
    assert (result.log_prob - expected).abs().max() <= 3e-6
    # The points come from the true distribution: their mean NLL estimates its entropy.
    assert abs(result.nll - closed_form_entropy(matrix)) <= 4 * result.nll_stderr
    assert result.nfe > 0 and result.nfe_max_chunk > 0
    assert field.matrix.dtype == data_dtype  # the pass evaluated a float64 copy, not the field itself


# ---------------------------------------------------------------------------------------------------------------
# Adaptive solvers honour their tolerance


@pytest.mark.parametrize(
    ("method", "dim"),
    [(method, "D2") for method in ADAPTIVE] + [("dopri5", "D3"), ("bosh3", "D3")],
)
def test_adaptive_solver_meets_its_tolerance(method: str, dim: str) -> None:
    matrix = MATRICES[dim]
    assert REGISTRY.get("solver", method).cls.adaptive
    assert adaptive_problems(method, matrix, true_samples(matrix, N_POINTS, seed=4)) == []


# ---------------------------------------------------------------------------------------------------------------
# Fixed-grid solvers converge at their textbook order, at steps x stages NFE


@pytest.mark.parametrize(
    ("method", "dim"),
    [(method, "D2") for method in FIXED_GRID] + [("euler", "D3"), ("rk4", "D3")],
)
def test_fixed_grid_solver_converges_at_its_textbook_order(method: str, dim: str) -> None:
    matrix = MATRICES[dim]
    order, stages = FIXED_GRID[method]
    cls = REGISTRY.get("solver", method).cls
    assert not cls.adaptive and cls.nfe_per_step == stages
    assert f"order {order}," in cls.description  # what `cnfbench plugins` advertises is what is measured here
    assert fixed_grid_problems(method, matrix, true_samples(matrix, N_POINTS, seed=5)) == []


@pytest.mark.parametrize("method", FIXED_GRID)
def test_fixed_grid_training_solve_costs_steps_times_stages(method: str) -> None:
    """The forward (training) phase of the counter sees exactly steps x stages evaluations per solve."""
    steps, stages = 3, FIXED_GRID[method][1]
    counter = NFECounter()
    dynamics = CNFDynamics(MatrixField(A2, learnable=True), build("trace", "exact"), counter, differentiable=True)
    solver = build("solver", f"{method}[steps={steps}]")
    x = true_samples(A2, 8, seed=6)
    for _ in range(2):
        logp = log_likelihood(dynamics, solver, x, "forward", None)
        assert counter.current == steps * stages == solver.expected_nfe()
    assert counter.totals == {"forward": 2 * steps * stages, "backward": 0, "eval": 0, "ref": 0, "sample": 0}
    (-logp.mean()).backward()
    assert counter.totals["backward"] == 0  # no adjoint: backpropagation does not evaluate the dynamics


# ---------------------------------------------------------------------------------------------------------------
# Hutchinson's estimator


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased_with_the_closed_form_variance(noise: str) -> None:
    """One probe ``e`` per row gives ``log p - (e^T A e - tr A)``: mean exact, variance known in closed form."""
    logp, exact = hutchinson_estimates(noise)
    draws = logp.numel()
    standard_error = float(logp.std()) / math.sqrt(draws)
    assert abs(float(logp.mean()) - exact) <= 4 * standard_error
    # Var(e^T A e) = Var(e^T S e) with S the symmetric part: 2 ||S||_F^2 for gaussian probes, and the same without
    # the diagonal for rademacher probes (e_i^2 = 1). Both are far from 0: a single probe is not exact.
    sym = 0.5 * (A2 + A2.T)
    off_diagonal = float(sym.pow(2).sum() - sym.diag().pow(2).sum())
    variance = 2 * float(sym.pow(2).sum()) if noise == "gaussian" else 2 * off_diagonal
    assert variance > 0.05
    assert float(logp.var()) == pytest.approx(variance, rel=0.3)  # ~4 standard errors of a sample variance
    assert float((logp - exact).abs().min()) > 0 and float((logp - exact).abs().max()) > 0.1


# ---------------------------------------------------------------------------------------------------------------
# Negative controls: break the code and watch the checks above report it


def test_wrong_sign_of_the_divergence_breaks_the_reference_check(monkeypatch: pytest.MonkeyPatch) -> None:
    exact_trace = REGISTRY.get("trace", "exact").cls
    honest = exact_trace.__call__

    def flipped(self, field, t, z, create_graph):
        dz, div = honest(self, field, t, z, create_graph)
        return dz, -div

    monkeypatch.setattr(exact_trace, "__call__", flipped)
    x = true_samples(A2, 200, seed=2)
    result = reference_pass(MatrixField(A2), x)
    errors = result.log_prob - linear_flow_log_prob(A2, x)
    assert errors.abs().max() > 0.1 and abs(result.nll - float(-linear_flow_log_prob(A2, x).mean())) > 0.1
    # The flipped log-det term is off by exactly 2 tr A on every point.
    torch.testing.assert_close(errors, torch.full_like(errors, 2 * float(torch.trace(A2))), rtol=0, atol=1e-5)


def test_a_halved_euler_step_breaks_the_order_check(monkeypatch: pytest.MonkeyPatch) -> None:
    euler = TORCHDIFFEQ_SOLVERS["euler"]
    honest = euler._step_func

    def half_step(self, func, t0, dt, t1, y0):
        dy, f0 = honest(self, func, t0, dt, t1, y0)
        return 0.5 * dy, f0

    x = true_samples(A2, N_POINTS, seed=5)
    honest_errors = [evaluate(f"euler[steps={n}]", A2, x)[0] for n in ORDER_STEPS]
    monkeypatch.setattr(euler, "_step_func", half_step)
    broken_errors = [evaluate(f"euler[steps={n}]", A2, x)[0] for n in ORDER_STEPS]
    assert fixed_grid_problems("euler", A2, x) != []
    assert all(abs(rate) < 0.5 for rate in observed_orders(broken_errors))  # the error no longer decreases
    assert min(broken_errors) > 0.1 > honest_errors[-1]


def test_ignoring_the_steps_parameter_breaks_the_order_and_nfe_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug the solver plugin warns about: one silent step over [0, 1] whatever ``steps`` says."""
    euler_cls = REGISTRY.get("solver", "euler").cls
    honest = euler_cls._options

    def one_step(self, t1):
        options, rtol, atol = honest(self, t1)
        return {key: value for key, value in options.items() if key != "grid_constructor"}, rtol, atol

    monkeypatch.setattr(euler_cls, "_options", one_step)
    x = true_samples(A2, N_POINTS, seed=5)
    problems = fixed_grid_problems("euler", A2, x)
    assert any("NFE" in problem for problem in problems)
    assert any("observed order" in problem for problem in problems)
    errors = [evaluate(f"euler[steps={n}]", A2, x)[0] for n in ORDER_STEPS]
    assert errors[0] == errors[-1]


@pytest.mark.parametrize("method", ["dopri5", "dopri8"])
def test_a_tolerance_that_never_reaches_torchdiffeq_breaks_the_tolerance_check(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If rtol/atol were dropped on the way to ``odeint``, torchdiffeq's defaults (1e-7, 1e-9) would apply instead."""
    honest = torchdiffeq.odeint

    def without_tolerances(func, y0, t, *, rtol, atol, **kwargs):
        return honest(func, y0, t, **kwargs)

    monkeypatch.setattr(torchdiffeq, "odeint", without_tolerances)
    problems = adaptive_problems(method, A2, true_samples(A2, N_POINTS, seed=4))
    assert any("tightening" in problem for problem in problems)


@pytest.mark.parametrize("method", ["bosh3", "fehlberg2"])
def test_a_selector_tolerance_that_never_reaches_the_solver_breaks_the_tolerance_check(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the solver ran at its declared default (1e-5) whatever the selector says, both checks must object."""
    solver_cls = REGISTRY.get("solver", method).cls
    honest = solver_cls._options

    def default_tolerances(self, t1):
        options, _rtol, _atol = honest(self, t1)
        return options, 1e-5, 1e-5

    monkeypatch.setattr(solver_cls, "_options", default_tolerances)
    problems = adaptive_problems(method, A2, true_samples(A2, N_POINTS, seed=4))
    assert any("> " in problem for problem in problems)  # misses the tight tolerance
    assert any("tightening" in problem for problem in problems)
