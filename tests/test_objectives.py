"""Closed-form tests of the built-in training objectives (``mle``, ``rnode``, ``cfm``, ``otcfm``), each with a
negative control.

* ``cfm`` at the exact optimum of a Gaussian problem reaches the analytic irreducible loss; perturbed fields pay
  exactly the analytic excess.
* ``rnode``'s integrands along the solve of a linear field match their closed forms (matrix exponentials and
  quadrature in float64); the Hutchinson Frobenius estimate is exact for a fixed probe and unbiased over probes.
* ``rnode[kinetic=0,jacobian=0]`` is ``mle`` bit for bit on a fixed grid; with weights it adds exactly its terms.
* ``optimal_transport_pairs`` is the brute-force optimum over all permutations.
* Negative weights and noise levels are refused by the CLI before anything runs.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cnfbench_plugins.objectives import (
    ConditionalFlowMatching,
    MaximumLikelihood,
    OptimalTransportFlowMatching,
    RegularizedLikelihood,
    frobenius_estimate,
    kinetic_energy,
    optimal_transport_pairs,
)
from cnfbench_plugins.torchdiffeq_solvers import SOLVER_CLASSES
from cnfbench_plugins.traces import HutchinsonTrace
from scipy import integrate, linalg
from torch import Tensor, nn

from cnfbench.contracts import ObjectiveLoss, VectorField, split_generator
from cnfbench.dynamics import CNFDynamics, NFECounter, log_likelihood_and_integrals
from cnfbench.testing.reference import RK4, ExactLoopTrace, MatrixField, MLPField, linear_flow_log_prob
from cnfbench.training import HarnessContext

F64 = torch.float64
SOLVERS = {cls.name: cls for cls in SOLVER_CLASSES}


def dopri5(tol: float, adjoint: bool = False):
    return SOLVERS["dopri5"](rtol=tol, atol=tol, max_steps=100000, adjoint=adjoint)


def fixed_grid(method: str, steps: int):
    return SOLVERS[method](steps=steps, adjoint=False)


def flow_context(field: VectorField, objective_seed: int = 0) -> HarnessContext:
    """The context of an objective that never solves (flow matching), with its own seeded stream."""
    return HarnessContext(field, field.dim, torch.Generator().manual_seed(objective_seed), None, "'test'")


def solving_context(field: VectorField, solver, trace=None, seed: int = 0, differentiable: bool = True
                    ) -> HarnessContext:
    """The context the harness builds for a solving objective: the cell's objective and trace streams."""
    dynamics = CNFDynamics(field, trace or ExactLoopTrace(), NFECounter(), differentiable=differentiable)
    return HarnessContext(field, field.dim, split_generator(seed, "objective"),
                          (dynamics, solver, split_generator(seed, "trace/train")), "'test'")


# ============================================================================ cfm: the Gaussian optimum
#
# x0 ~ N(0, I), x1 ~ N(μ, s² I), x_t = (1−t) x0 + t x1 + σ ε, u = x1 − x0. Per dimension x_t has mean tμ and
# variance V(t) = (1−t)² + t² s² + σ², u has variance 1 + s² and Cov(u, x_t) = t s² − (1−t), so
# v*(t, x) = E[u | x_t = x] = μ + c(t) (x − tμ) with c = Cov/V, and the loss it leaves is
# D · E_t[(1 + s²) − Cov² / V]. A field with gain k·c(t) pays D · (k−1)² E_t[Cov² / V] more; a constant shift δ
# (a vector) pays ‖δ‖² more.

MU = (1.5, -0.5, 0.25)
SCALE = 0.5  # s
SIGMAS = (0.0, 0.3)


def covariance(t: float, s: float) -> float:
    return t * s**2 - (1 - t)


def path_variance(t: float, s: float, sigma: float) -> float:
    return (1 - t) ** 2 + t**2 * s**2 + sigma**2


def quad(function, tol: float = 1e-13) -> float:
    value, error = integrate.quad(function, 0.0, 1.0, epsabs=tol, epsrel=tol, limit=200)
    assert error < 1e-9
    return value


def irreducible_cfm_loss(dim: int, s: float, sigma: float) -> float:
    return dim * quad(lambda t: (1 + s**2) - covariance(t, s) ** 2 / path_variance(t, s, sigma))


def explained_cfm_variance(dim: int, s: float, sigma: float) -> float:
    """``D · E_t[Cov² / V]``: the excess loss of a field with gain 0 (``(k−1)² = 1``)."""
    return dim * quad(lambda t: covariance(t, s) ** 2 / path_variance(t, s, sigma))


class GaussianFlowMatchingOptimum(VectorField):
    """``v(t, x) = μ + k c(t) (x − tμ) + δ`` for the Gaussian problem above; ``k = 1, δ = 0`` is the optimum.

    ``field_sigma`` is the σ the field believes in (the optimum uses the objective's σ).
    """

    name = "test-cfm-optimum"
    description = "the exact flow-matching optimum for Gaussian data"
    per_row_time = True

    def __init__(self, mu: tuple[float, ...], s: float, field_sigma: float, gain: float = 1.0,
                 shift: tuple[float, ...] | None = None) -> None:
        super().__init__(len(mu))
        self.register_buffer("mu", torch.tensor(mu, dtype=F64))
        self.register_buffer("shift", torch.tensor(shift or (0.0,) * len(mu), dtype=F64))
        self.s, self.field_sigma, self.gain = s, field_sigma, gain
        self.dummy = nn.Parameter(torch.zeros((), dtype=F64))  # a parameter, as a trainable field has

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        t = t.to(z.dtype).reshape(-1, 1)  # [1, 1] for a 0-dim time, [B, 1] for one time per row
        s2, sigma2 = self.s**2, self.field_sigma**2
        c = (t * s2 - (1 - t)) / ((1 - t) ** 2 + t**2 * s2 + sigma2)
        return self.mu + self.gain * c * (z - t * self.mu) + self.shift + 0 * self.dummy


class SharedTimeOptimum(GaussianFlowMatchingOptimum):
    """The same field without ``per_row_time``: the harness calls it once per distinct time."""

    per_row_time = False

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        assert t.dim() == 0
        return super().forward(t, z)


def gaussian_data(n: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(10_000 + seed)
    return torch.tensor(MU, dtype=F64) + SCALE * torch.randn(n, len(MU), generator=generator, dtype=F64)


BATCHES, BATCH = 20, 10_000  # 200k samples in all


def batch_losses(objective, field: VectorField, seed: int = 0) -> np.ndarray:
    """The loss of ``BATCHES`` minibatches of Gaussian data, one context stream continuing between them (as in
    training); the same ``seed`` gives the same data, times, base draws and noise for any field."""
    context = flow_context(field, seed)
    return np.array([objective.loss(context, gaussian_data(BATCH, 100 * seed + k)).loss.item()
                     for k in range(BATCHES)])


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


@pytest.mark.parametrize("sigma", SIGMAS)
def test_cfm_at_the_gaussian_optimum_reaches_the_irreducible_loss(sigma: float) -> None:
    objective = ConditionalFlowMatching(sigma=sigma)
    expected = irreducible_cfm_loss(len(MU), SCALE, sigma)
    if sigma == 0:  # the brief's closed form of the σ=0 integrand: D s² / ((1−t)² + t² s²)
        assert expected == pytest.approx(len(MU) * quad(lambda t: SCALE**2 / path_variance(t, SCALE, 0.0)),
                                         rel=1e-12)
    value, stderr = mean_and_stderr(batch_losses(objective, GaussianFlowMatchingOptimum(MU, SCALE, sigma)))
    assert abs(value - expected) < 4 * stderr, (value, expected, stderr)
    assert stderr < 0.01 * expected  # the check has teeth: 1% resolution or better
    # negative control: the optimum of the other σ is measurably worse
    other = SIGMAS[1] if sigma == SIGMAS[0] else SIGMAS[0]
    wrong_sigma = batch_losses(objective, GaussianFlowMatchingOptimum(MU, SCALE, other))
    excess = len(MU) * quad(lambda t: path_variance(t, SCALE, sigma) * covariance(t, SCALE) ** 2 * (
        1 / path_variance(t, SCALE, sigma) - 1 / path_variance(t, SCALE, other)) ** 2)
    gap, gap_stderr = mean_and_stderr(wrong_sigma - batch_losses(objective, GaussianFlowMatchingOptimum(
        MU, SCALE, sigma)))
    assert gap > 0 and abs(gap - excess) < 4 * gap_stderr + 1e-3 * excess, (gap, excess, gap_stderr)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_cfm_pays_exactly_the_squared_shift_for_a_shifted_optimum(sigma: float) -> None:
    objective = ConditionalFlowMatching(sigma=sigma)
    optimum = batch_losses(objective, GaussianFlowMatchingOptimum(MU, SCALE, sigma))
    for shift in ((0.1, 0.0, 0.0), (0.2, -0.3, 0.1), (-0.05, -0.05, -0.05)):
        shifted = batch_losses(objective, GaussianFlowMatchingOptimum(MU, SCALE, sigma, shift=shift))
        # same draws: the difference is ‖δ‖² + 2 δ·mean(v* − u), whose second term has mean 0
        gap, stderr = mean_and_stderr(shifted - optimum)
        expected = sum(d * d for d in shift)
        assert (shifted > optimum).all()
        assert abs(gap - expected) < 4 * stderr, (shift, gap, expected, stderr)
        assert stderr < 0.1 * expected


@pytest.mark.parametrize("sigma", SIGMAS)
def test_cfm_pays_the_analytic_excess_for_a_scaled_gain(sigma: float) -> None:
    objective = ConditionalFlowMatching(sigma=sigma)
    optimum = batch_losses(objective, GaussianFlowMatchingOptimum(MU, SCALE, sigma))
    explained = explained_cfm_variance(len(MU), SCALE, sigma)
    for gain in (0.0, 0.8, 1.25):
        scaled = batch_losses(objective, GaussianFlowMatchingOptimum(MU, SCALE, sigma, gain=gain))
        gap, stderr = mean_and_stderr(scaled - optimum)
        expected = (gain - 1) ** 2 * explained
        assert (scaled > optimum).all()
        assert abs(gap - expected) < 4 * stderr + 1e-3 * expected, (gain, gap, expected, stderr)


def test_cfm_evaluates_a_shared_time_field_once_per_time_with_the_same_loss() -> None:
    data = gaussian_data(64, 7)
    per_row, shared = flow_context(GaussianFlowMatchingOptimum(MU, SCALE, 0.3), 3), flow_context(
        SharedTimeOptimum(MU, SCALE, 0.3), 3)
    objective = ConditionalFlowMatching(sigma=0.3)
    first, second = objective.loss(per_row, data), objective.loss(shared, data)
    assert first.loss.item() == pytest.approx(second.loss.item(), rel=1e-13)
    assert first.terms == {"flow_matching": first.loss.item()}
    assert per_row.evaluations == 1 and shared.evaluations == 64
    first.loss.backward()  # differentiable in the field's parameters
    assert per_row.field.dummy.grad is not None


# ============================================================================ rnode: integrands of a linear field
#
# v(t, z) = A z solved backward from z(1) = x: z(t) = e^{A(t−1)} x, so ∫_0^1 ‖v‖² dt = xᵀ G x with
# G = ∫_0^1 e^{Aᵀ(t−1)} AᵀA e^{A(t−1)} dt. The Jacobian is A everywhere: ‖εᵀA‖² for a fixed probe ε, and
# E_ε ‖εᵀA‖² = ‖A‖²_F over Gaussian probes.


def random_matrix(dim: int, seed: int, scale: float = 0.7) -> Tensor:
    return scale * torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def kinetic_gram(matrix: Tensor) -> np.ndarray:
    a = matrix.numpy()

    def integrand(t: float) -> np.ndarray:
        flow = linalg.expm(a * (t - 1))
        return flow.T @ a.T @ a @ flow

    gram, error = integrate.quad_vec(integrand, 0.0, 1.0, epsabs=1e-14, epsrel=1e-13)
    assert error < 1e-10
    return gram


def closed_form_kinetic(matrix: Tensor, x: Tensor) -> Tensor:
    gram = torch.from_numpy(kinetic_gram(matrix))
    return torch.einsum("bi,ij,bj->b", x, gram, x)


def integrals(field: VectorField, solver, x: Tensor, integrands) -> tuple[Tensor, tuple[Tensor, ...]]:
    dynamics = CNFDynamics(field, ExactLoopTrace(), NFECounter(), differentiable=False)
    return log_likelihood_and_integrals(dynamics, solver, x, "eval", None, tuple(integrands))


@pytest.mark.parametrize("solver", [RK4(steps=100), dopri5(1e-11)], ids=["reference-rk4", "dopri5"])
def test_kinetic_energy_of_a_linear_field_matches_its_closed_form(solver) -> None:
    matrix = random_matrix(3, 1)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    log_p, (energy,) = integrals(MatrixField(matrix), solver, x, (kinetic_energy,))
    expected = closed_form_kinetic(matrix, x)
    assert torch.allclose(energy, expected, rtol=1e-8, atol=0), (energy, expected)
    assert torch.allclose(log_p, linear_flow_log_prob(matrix, x), rtol=1e-8, atol=1e-8)
    # negative control: the energy is integrated along the path, not taken at the data point (t=1) or base (t=0)
    at_data = (x @ matrix.T).pow(2).sum(dim=1)
    base = x @ torch.linalg.matrix_exp(-matrix).T
    at_base = (base @ matrix.T).pow(2).sum(dim=1)
    assert ((energy - at_data).abs() > 0.05 * energy).all() and ((energy - at_base).abs() > 0.05 * energy).all()


def test_kinetic_energy_scales_with_the_square_of_a_rotation_rate_but_not_of_a_general_matrix() -> None:
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64)
    solver = RK4(steps=100)
    for rate in (0.5, 1.0, 2.0):
        # a rotation keeps ‖z‖, so ‖A z(t)‖² = rate² ‖x‖² all along: exactly quadratic in the rate
        (energy,) = integrals(MatrixField(rate * rotation), solver, x, (kinetic_energy,))[1]
        assert torch.allclose(energy, rate**2 * x.pow(2).sum(dim=1), rtol=1e-7, atol=0)
    # a general A changes the path as it scales: 2A has its own closed form, which is not 4 × that of A
    matrix = random_matrix(2, 4)
    (once,) = integrals(MatrixField(matrix), solver, x, (kinetic_energy,))[1]
    (twice,) = integrals(MatrixField(2 * matrix), solver, x, (kinetic_energy,))[1]
    assert torch.allclose(twice, closed_form_kinetic(2 * matrix, x), rtol=1e-7, atol=0)
    assert ((twice - 4 * once).abs() > 0.05 * twice).all()


def test_frobenius_estimate_with_a_fixed_probe_is_exact_and_quadratic_in_the_matrix() -> None:
    matrix = random_matrix(3, 5)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    probe = torch.randn(8, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    for scale in (1.0, -0.5, 3.0):
        (estimate,) = integrals(MatrixField(scale * matrix), RK4(steps=3), x, (frobenius_estimate(probe),))[1]
        expected = (probe @ (scale * matrix)).pow(2).sum(dim=1)  # ‖εᵀ A‖² per row, constant in t
        assert torch.allclose(estimate, expected, rtol=1e-12, atol=0), (scale, estimate, expected)
    # negative control: εᵀA, not Aε (they differ for a non-symmetric A)
    assert not torch.allclose(estimate, (probe @ (3.0 * matrix).T).pow(2).sum(dim=1), rtol=1e-3)


def test_frobenius_estimate_averages_to_the_squared_frobenius_norm() -> None:
    matrix = random_matrix(3, 8)
    n = 20_000
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(9), dtype=F64)
    probe = torch.randn(n, 3, generator=torch.Generator().manual_seed(10), dtype=F64)
    (estimate,) = integrals(MatrixField(matrix), RK4(steps=2), x, (frobenius_estimate(probe),))[1]
    mean, stderr = estimate.mean().item(), estimate.std().item() / math.sqrt(n)
    frobenius = matrix.pow(2).sum().item()
    assert abs(mean - frobenius) < 4 * stderr, (mean, frobenius, stderr)
    # the estimator's variance 2‖AAᵀ‖²_F (Gaussian probes), and a control it is not the trace² or spectral norm²
    outer = matrix @ matrix.T
    assert estimate.var().item() == pytest.approx(2 * outer.pow(2).sum().item(), rel=0.05)
    for wrong in (torch.trace(matrix).item() ** 2, torch.linalg.matrix_norm(matrix, 2).item() ** 2):
        assert abs(mean - wrong) > 10 * stderr


def test_frobenius_estimate_is_zero_for_a_field_that_ignores_z() -> None:
    class Drift(VectorField):
        name = "test-drift"
        description = "v = b"

        def __init__(self) -> None:
            super().__init__(2)
            self.bias = nn.Parameter(torch.tensor([0.5, -1.0], dtype=F64))

        def forward(self, t: Tensor, z: Tensor) -> Tensor:
            return self.bias.expand(z.shape[0], -1)

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    probe = torch.ones(4, 2, dtype=F64)
    _, (energy, estimate) = integrals(Drift(), RK4(steps=2), x, (kinetic_energy, frobenius_estimate(probe)))
    assert torch.equal(estimate, torch.zeros(4, dtype=F64))
    assert torch.allclose(energy, torch.full((4,), 1.25, dtype=F64), rtol=1e-14)


# ============================================================================ rnode against mle

FIXED_GRIDS = [lambda: RK4(steps=6), lambda: fixed_grid("rk4", 6), lambda: fixed_grid("euler", 10)]
TRACES = [ExactLoopTrace, HutchinsonTrace]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("trace", TRACES, ids=["exact", "hutchinson"])
@pytest.mark.parametrize("solver", FIXED_GRIDS, ids=["reference-rk4", "rk4", "euler"])
def test_rnode_with_zero_weights_is_mle_bit_for_bit_on_a_fixed_grid(solver, trace, dtype) -> None:
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=dtype)
    results = []
    for objective in (MaximumLikelihood(), RegularizedLikelihood(kinetic=0.0, jacobian=0.0)):
        field = MLPField(2, seed=3, dtype=dtype)
        result = objective.loss(solving_context(field, solver(), trace(), seed=4), x)
        result.loss.backward()
        results.append((result, [parameter.grad for parameter in field.parameters()]))
    (mle, mle_grads), (rnode, rnode_grads) = results
    assert rnode.loss.item() == mle.loss.item() == rnode.terms["nll"] == mle.terms["nll"]
    assert rnode.loss.dtype == dtype
    assert all(torch.equal(a, b) for a, b in zip(mle_grads, rnode_grads, strict=True))
    assert rnode.terms["kinetic"] > 0 and rnode.terms["jacobian"] > 0  # still measured, just not weighted


def test_rnode_with_zero_weights_matches_mle_within_tolerance_on_an_adaptive_solver() -> None:
    # The regularizers ride along in the solve's state, so an adaptive solver's error control sees them and may
    # take other steps: the two agree to the tolerance, not bit for bit.
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    mle = MaximumLikelihood().loss(solving_context(MLPField(2, seed=3), dopri5(1e-8)), x)
    rnode = RegularizedLikelihood(kinetic=0.0, jacobian=0.0).loss(solving_context(MLPField(2, seed=3), dopri5(1e-8)),
                                                                  x)
    assert rnode.loss.item() == pytest.approx(mle.loss.item(), abs=1e-6)


def test_rnode_adds_exactly_its_weighted_terms_and_they_match_the_closed_forms() -> None:
    matrix, n = random_matrix(2, 11, scale=0.6), 4000
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(12), dtype=F64)
    weights = {"kinetic": 0.3, "jacobian": 0.05}
    rnode = RegularizedLikelihood(**weights).loss(solving_context(MatrixField(matrix), RK4(steps=40)), x)
    mle = MaximumLikelihood().loss(solving_context(MatrixField(matrix), RK4(steps=40)), x)
    terms = rnode.terms
    assert terms["nll"] == mle.loss.item()
    assert rnode.loss.item() == pytest.approx(
        terms["nll"] + weights["kinetic"] * terms["kinetic"] + weights["jacobian"] * terms["jacobian"], rel=1e-14)
    assert rnode.loss.item() > mle.loss.item()
    assert terms["nll"] == pytest.approx(-linear_flow_log_prob(matrix, x).mean().item(), rel=1e-9)
    assert terms["kinetic"] == pytest.approx(closed_form_kinetic(matrix, x).mean().item(), rel=1e-8)
    # one Gaussian probe per row: mean ‖εᵀA‖² ≈ ‖A‖²_F within its standard error sqrt(2‖AAᵀ‖²_F / n)
    stderr = math.sqrt(2 * (matrix @ matrix.T).pow(2).sum().item() / n)
    assert abs(terms["jacobian"] - matrix.pow(2).sum().item()) < 4 * stderr
    # the objective's stream continues: the next minibatch gets a fresh probe
    context = solving_context(MatrixField(matrix), RK4(steps=2))
    objective = RegularizedLikelihood(**weights)
    assert objective.loss(context, x[:8]).terms["jacobian"] != objective.loss(context, x[:8]).terms["jacobian"]


def test_rnode_gradient_matches_finite_differences_including_the_jacobian_term() -> None:
    base = random_matrix(2, 13, scale=0.5)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(14), dtype=F64)

    def loss(matrix: Tensor, weights: dict[str, float]) -> tuple[ObjectiveLoss, MatrixField]:
        field = MatrixField(matrix, learnable=True)
        result = RegularizedLikelihood(**weights).loss(solving_context(field, RK4(steps=8), seed=5), x)
        return result, field

    gradients = []
    for weights in ({"kinetic": 0.0, "jacobian": 1.0}, {"kinetic": 1.0, "jacobian": 0.0},
                    {"kinetic": 0.2, "jacobian": 0.7}):
        result, field = loss(base, weights)
        result.loss.backward()
        gradient = field.matrix.grad.clone()
        numeric = torch.zeros_like(base)
        h = 1e-6
        for i, j in itertools.product(range(2), range(2)):
            step = torch.zeros_like(base)
            step[i, j] = h
            numeric[i, j] = (loss(base + step, weights)[0].loss.item() - loss(base - step, weights)[0].loss.item()) / (
                2 * h)
        assert torch.allclose(gradient, numeric, rtol=1e-6, atol=1e-8), (weights, gradient, numeric)
        gradients.append(gradient)
    # negative control: each regularizer moves the gradient (the Jacobian term is differentiated through its VJP)
    only_nll, field = loss(base, {"kinetic": 0.0, "jacobian": 0.0})
    only_nll.loss.backward()
    for gradient in gradients:
        assert not torch.allclose(field.matrix.grad, gradient, rtol=1e-3)



def test_rnode_trains_with_an_adjoint_solver() -> None:
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    gradients = []
    for adjoint in (False, True):
        field = MLPField(2, seed=3)
        result = RegularizedLikelihood(kinetic=0.5, jacobian=0.5).loss(
            solving_context(field, dopri5(1e-10, adjoint=adjoint)), x)
        result.loss.backward()
        gradients.append([parameter.grad for parameter in field.parameters()])
    for direct, adjoint in zip(*gradients, strict=True):
        assert torch.allclose(direct, adjoint, rtol=1e-6, atol=1e-8)


# ============================================================================ otcfm: the minibatch OT coupling


def pairing_cost(x0: Tensor, x1: Tensor, permutation) -> float:
    return float((x0 - x1[torch.as_tensor(permutation)]).pow(2).sum())


def brute_force_cost(x0: Tensor, x1: Tensor) -> float:
    return min(pairing_cost(x0, x1, list(p)) for p in itertools.permutations(range(len(x0))))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_optimal_transport_pairs_match_brute_force(n: int) -> None:
    for seed, dim in itertools.product(range(4), (1, 2, 3)):
        generator = torch.Generator().manual_seed(1000 * n + 10 * seed + dim)
        x0 = torch.randn(n, dim, generator=generator, dtype=F64)
        x1 = 2.0 + torch.randn(n, dim, generator=generator, dtype=F64)
        permutation = optimal_transport_pairs(x0, x1)
        assert permutation.dtype == torch.long and sorted(permutation.tolist()) == list(range(n))
        cost = pairing_cost(x0, x1, permutation)
        assert cost == pytest.approx(brute_force_cost(x0, x1), rel=1e-12, abs=1e-12)
        assert cost <= pairing_cost(x0, x1, list(range(n))) + 1e-12  # no worse than the identity pairing
        for _ in range(5):  # negative control: random pairings never beat it
            assert pairing_cost(x0, x1, torch.randperm(n, generator=generator)) >= cost - 1e-12


def test_optimal_transport_pairs_undo_a_shuffle_and_sort_in_one_dimension() -> None:
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(40, 3, generator=generator, dtype=F64)
    shuffle = torch.randperm(40, generator=generator)
    permutation = optimal_transport_pairs(x0, x0[shuffle])  # pairs x0[i] with x1[p[i]] = x0[shuffle[p[i]]]
    assert torch.equal(shuffle[permutation], torch.arange(40))
    assert pairing_cost(x0, x0[shuffle], permutation) == 0.0
    # in 1D the optimal pairing under squared cost is monotone: the i-th smallest x0 gets the i-th smallest x1
    a, b = torch.randn(50, 1, generator=generator, dtype=F64), torch.randn(50, 1, generator=generator, dtype=F64)
    paired = b[optimal_transport_pairs(a, b)]
    order = a[:, 0].argsort()
    assert torch.equal(paired[order, 0], b[:, 0].sort().values)
    # and float32 input gives the same pairing
    assert torch.equal(optimal_transport_pairs(a.float(), b.float()), optimal_transport_pairs(a, b))


class Recorder(VectorField):
    """``v = 0`` (the loss is then the mean ‖x1 − x0‖² of the pairs), keeping the times and points it saw."""

    name = "test-recorder"
    description = "zero field that records its inputs"
    per_row_time = True

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.seen: list[tuple[Tensor, Tensor]] = []

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        self.seen.append((t.detach().clone(), z.detach().clone()))
        return torch.zeros_like(z)


@pytest.mark.parametrize("seed", range(4))
def test_otcfm_regresses_on_the_brute_force_optimal_pairs(seed: int) -> None:
    n, dim = 6, 2
    x1 = 1.0 + torch.randn(n, dim, generator=torch.Generator().manual_seed(50 + seed), dtype=F64)
    independent = Recorder(dim)
    cfm = ConditionalFlowMatching(sigma=0.0).loss(flow_context(independent, seed), x1).loss.item()
    t, x_t = independent.seen[0]
    x0 = (x_t - t[:, None] * x1) / (1 - t[:, None])  # σ=0: the base draws, recovered from the path
    assert cfm == pytest.approx((x1 - x0).pow(2).sum(dim=1).mean().item(), rel=1e-10)
    coupled = Recorder(dim)
    otcfm = OptimalTransportFlowMatching(sigma=0.0).loss(flow_context(coupled, seed), x1).loss.item()
    optimum = brute_force_cost(x0, x1) / n
    assert otcfm == pytest.approx(optimum, rel=1e-10)
    assert otcfm <= cfm + 1e-12
    # its points lie on the straight lines from the same base draws to the OT-permuted data
    t_ot, x_t_ot = coupled.seen[0]
    assert torch.equal(t_ot, t)
    target = x1[optimal_transport_pairs(x0, x1)]
    assert torch.allclose(x_t_ot, (1 - t[:, None]) * x0 + t[:, None] * target, rtol=0, atol=1e-12)


def test_otcfm_pairs_are_closer_than_independent_pairs_on_a_batch() -> None:
    x1 = gaussian_data(256, 3)
    for seed in range(3):
        cfm = ConditionalFlowMatching(sigma=0.1).loss(flow_context(Recorder(3), seed), x1).loss.item()
        otcfm = OptimalTransportFlowMatching(sigma=0.1).loss(flow_context(Recorder(3), seed), x1).loss.item()
        # independent pairs: E‖x1 − x0‖² = ‖μ‖² + D (1 + s²) ≈ 6.3; the OT pairs are far closer
        assert otcfm < 0.6 * cfm, (otcfm, cfm)
        assert cfm == pytest.approx(sum(m * m for m in MU) + len(MU) * (1 + SCALE**2), rel=0.1)


# ============================================================================ parameter validation


@pytest.mark.parametrize(("objective", "message"), [
    ("cfm[sigma=-0.1]", "bad value '-0.1' for objective 'cfm' parameter 'sigma': must be >= 0"),
    ("otcfm[sigma=-1]", "bad value '-1' for objective 'otcfm' parameter 'sigma': must be >= 0"),
    ("rnode[kinetic=-1]", "bad value '-1' for objective 'rnode' parameter 'kinetic': must be >= 0"),
    ("rnode[jacobian=-0.5]", "bad value '-0.5' for objective 'rnode' parameter 'jacobian': must be >= 0"),
    ("cfm[sigma=nan]", "objective 'cfm' parameter 'sigma'"),
    ("rnode[kinetic=2e6]", "objective 'rnode' parameter 'kinetic'"),
    ("mle[kinetic=1]", "unknown parameter 'kinetic' for objective 'mle'"),
])
def test_bad_objective_parameters_are_refused_before_training(cli, tmp_path: Path, objective: str,
                                                              message: str) -> None:
    result = cli("run", "--objective", objective, "--dry-run")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "results").exists()


def test_boundary_objective_parameters_are_accepted(cli) -> None:
    result = cli("run", "--objective", "rnode[kinetic=0,jacobian=0]", "--objective", "cfm[sigma=0]",
                 "--objective", "otcfm[sigma=0.5]", "--dry-run")
    assert result.exit_code == 0, result.output
