"""Tests for the CNF dynamics, the NFE counter, the phase tracker and the log-likelihood (cnfbench/dynamics.py)."""

from __future__ import annotations

import math
import multiprocessing

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

from cnfbench.config import RunConfig, resolve_cells
from cnfbench.contracts import TraceEstimator, VectorField
from cnfbench.dynamics import (
    CELL_PHASES,
    PHASES,
    CNFDynamics,
    ContractViolation,
    NFEBudgetExceeded,
    NFECounter,
    PhaseTracker,
    log_likelihood,
    pack_phase,
    standard_normal_log_prob,
    unpack_phase,
)
from cnfbench.params import parse_selection
from cnfbench.registry import load_registry
from cnfbench.testing.reference import MatrixField, linear_flow_log_prob
from cnfbench.training import TrainingRecord, seeded_field, train

F64 = torch.float64
REGISTRY = load_registry()
A2 = torch.tensor([[0.4, 0.9], [-0.6, 0.2]], dtype=F64)  # trace 0.6, non-symmetric
A3 = torch.tensor([[0.3, -0.5, 0.2], [0.4, -0.1, 0.0], [0.1, 0.6, 0.5]], dtype=F64)


def build(family: str, selector: str, *args: object):
    return REGISTRY.build(family, REGISTRY.resolve(family, parse_selection(selector)), *args)


class WideField(VectorField):
    """Breaks the contract: returns ``[B, D + 1]``."""

    name = "wide-test"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.linear = nn.Linear(dim, dim + 1).to(F64)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.linear(z)


class Float32Field(VectorField):
    """Breaks the contract: returns float32 for a float64 state."""

    name = "float32-test"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.linear = nn.Linear(dim, dim).to(F64)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.linear(z).float()


class BadDivTrace(TraceEstimator):
    """Breaks the contract: returns a divergence of shape ``[B, 1]``."""

    name = "bad-div-test"

    def __call__(self, field, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        dz = field(t, z)
        return dz, torch.zeros(z.shape[0], 1, dtype=z.dtype)


def linear_field(matrix: Tensor) -> MatrixField:
    """``v(t, z) = A z`` with a learnable ``A``."""
    return MatrixField(matrix, learnable=True)


def points(batch: int, dim: int, seed: int = 0) -> Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_standard_normal_log_prob() -> None:
    x = points(7, 3)
    expected = MultivariateNormal(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)).log_prob(x)
    torch.testing.assert_close(standard_normal_log_prob(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
@pytest.mark.parametrize("solver", ["rk4[steps=4]", "dopri5"])
def test_zero_field_gives_the_standard_normal(trace: str, solver: str) -> None:
    x = points(6, 2)
    counter = NFECounter()
    zero = MatrixField(torch.zeros(2, 2, dtype=F64))  # v = 0, but in z's graph (test_traces has a z-free field)
    dynamics = CNFDynamics(zero, build("trace", trace), counter, differentiable=False)
    logp = log_likelihood(dynamics, build("solver", solver), x, "eval", torch.Generator().manual_seed(0))
    expected = MultivariateNormal(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)).log_prob(x)
    assert logp.shape == (6,) and logp.dtype == F64
    torch.testing.assert_close(logp, expected, rtol=0, atol=1e-12)
    assert counter.totals["eval"] == counter.current > 0
    assert all(counter.totals[phase] == 0 for phase in PHASES if phase != "eval")


@pytest.mark.parametrize("matrix", [A2, A3], ids=["D2", "D3"])
def test_linear_field_log_likelihood_matches_closed_form(matrix: Tensor) -> None:
    """Proves the sign conventions: integrate 1 -> 0, z0 = expm(-A) x, log p = log N(z0) - tr A."""
    x = points(5, matrix.shape[0], seed=3) * 1.5
    dynamics = CNFDynamics(linear_field(matrix), build("trace", "exact"), NFECounter(), differentiable=False)
    solver = build("solver", "dopri5[rtol=1e-10,atol=1e-10]")
    logp = log_likelihood(dynamics, solver, x, "eval", None)
    expected = linear_flow_log_prob(matrix, x)
    # The trace term alone is large enough that a sign error would be caught.
    assert abs(torch.trace(matrix).item()) > 0.5
    torch.testing.assert_close(logp, expected, rtol=0, atol=1e-6)


def test_linear_field_log_likelihood_with_hutchinson_is_unbiased() -> None:
    draws = 2000
    x = points(1, 2, seed=9)
    dynamics = CNFDynamics(linear_field(A2), build("trace", "hutchinson"), NFECounter(), differentiable=False)
    batch = x.expand(draws, 2).clone()
    logp = log_likelihood(dynamics, build("solver", "rk4[steps=5]"), batch, "eval", torch.Generator().manual_seed(5))
    expected = linear_flow_log_prob(A2, x)[0]
    standard_error = logp.std() / math.sqrt(draws)
    assert logp.std() > 1e-3
    assert abs(logp.mean() - expected) < 4 * standard_error


def test_hutchinson_log_likelihood_is_reproducible_from_the_seed() -> None:
    x = points(8, 2)
    results = []
    for seed in (7, 7, 8):
        dynamics = CNFDynamics(linear_field(A2), build("trace", "hutchinson"), NFECounter(), differentiable=False)
        results.append(
            log_likelihood(dynamics, build("solver", "rk4[steps=5]"), x, "eval", torch.Generator().manual_seed(seed))
        )
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_log_likelihood_gradient_matches_closed_form(adjoint: bool) -> None:
    x = points(4, 2, seed=2)
    field = linear_field(A2)
    counter = NFECounter()
    dynamics = CNFDynamics(field, build("trace", "exact"), counter, differentiable=True)
    solver = build("solver", f"dopri5[rtol=1e-10,atol=1e-10,adjoint={str(adjoint).lower()}]")
    logp = log_likelihood(dynamics, solver, x, "forward", None)
    assert logp.requires_grad
    forward_nfe = counter.totals["forward"]
    counter.start("backward")
    (-logp.mean()).backward()
    assert counter.totals["forward"] == forward_nfe > 0
    if adjoint:
        assert counter.totals["backward"] > 0
    else:
        assert counter.totals["backward"] == 0

    matrix = A2.clone().requires_grad_(True)
    (-linear_flow_log_prob(matrix, x).mean()).backward()
    assert matrix.grad.abs().max() > 1e-2
    torch.testing.assert_close(field.matrix.grad, matrix.grad, rtol=1e-5, atol=1e-7)


def test_non_differentiable_dynamics_detach_their_output() -> None:
    x = points(3, 2)
    for differentiable in (False, True):
        dynamics = CNFDynamics(linear_field(A2), build("trace", "exact"), NFECounter(), differentiable)
        logp = log_likelihood(dynamics, build("solver", "rk4[steps=3]"), x, "eval", None)
        assert logp.requires_grad == differentiable


def test_dynamics_return_velocity_and_negative_divergence() -> None:
    counter = NFECounter()
    dynamics = CNFDynamics(linear_field(A3), build("trace", "exact"), counter, differentiable=False)
    z = points(4, 3)
    dz, minus_div = dynamics(torch.tensor(0.5, dtype=F64), (z, torch.zeros(4, dtype=F64)))
    torch.testing.assert_close(dz, z @ A3.T)
    torch.testing.assert_close(minus_div, torch.full((4,), -torch.trace(A3).item(), dtype=F64))
    assert counter.current == 1 and counter.totals["forward"] == 1


def test_counter_counts_per_phase_and_start_resets_current_only() -> None:
    counter = NFECounter()
    assert counter.phase == "forward" and counter.current == 0
    assert counter.totals == dict.fromkeys(PHASES, 0)
    for _ in range(3):
        counter.tick()
    counter.start("backward")
    assert counter.current == 0 and counter.phase == "backward"
    for _ in range(2):
        counter.tick()
    counter.start("eval")
    counter.tick()
    counter.start("forward")
    counter.tick()
    assert counter.current == 1
    counter.start("sample")
    counter.tick()
    assert counter.current == 1
    assert counter.totals == {"forward": 4, "backward": 2, "eval": 1, "ref": 0, "sample": 1}
    with pytest.raises(ValueError, match="phase"):
        counter.start("training")


def test_counter_budget_is_per_solve() -> None:
    counter = NFECounter(max_per_solve=3)
    counter.start("eval")
    for _ in range(3):
        counter.tick()
    with pytest.raises(NFEBudgetExceeded, match="3"):
        counter.tick()
    counter.start("eval")  # a new solve gets the whole budget again
    for _ in range(3):
        counter.tick()
    assert counter.current == 3
    assert counter.totals["eval"] >= 6


def test_log_likelihood_counts_one_solve_and_enforces_the_budget() -> None:
    x = points(3, 2)
    solver = build("solver", "euler")  # 10 steps, 1 evaluation each
    counter = NFECounter(max_per_solve=10)
    dynamics = CNFDynamics(linear_field(A2), build("trace", "exact"), counter, differentiable=False)
    log_likelihood(dynamics, solver, x, "ref", None)
    log_likelihood(dynamics, solver, x, "ref", None)
    assert counter.current == 10 == solver.expected_nfe()
    assert counter.totals["ref"] == 20 and counter.totals["eval"] == 0

    tight = NFECounter(max_per_solve=5)
    dynamics = CNFDynamics(linear_field(A2), build("trace", "exact"), tight, differentiable=False)
    with pytest.raises(NFEBudgetExceeded, match="eval"):
        log_likelihood(dynamics, solver, x, "eval", None)


@pytest.mark.parametrize(
    "trace",
    ["exact", "hutchinson"],
)
def test_wrong_field_shape_is_a_contract_violation_naming_the_field(trace: str) -> None:
    x = points(4, 2)
    dynamics = CNFDynamics(WideField(2), build("trace", trace), NFECounter(), False, field_label="wide[k=1]")
    with pytest.raises(ContractViolation, match=r"field wide\[k=1\].*\(4, 3\)"):
        log_likelihood(dynamics, build("solver", "euler[steps=2]"), x, "eval", torch.Generator().manual_seed(0))


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_wrong_field_dtype_is_a_contract_violation_naming_the_field(trace: str) -> None:
    x = points(4, 2)
    dynamics = CNFDynamics(Float32Field(2), build("trace", trace), NFECounter(), False, field_label="f32-field")
    with pytest.raises(ContractViolation, match=r"field f32-field.*float32"):
        log_likelihood(dynamics, build("solver", "euler[steps=2]"), x, "eval", torch.Generator().manual_seed(0))


def test_wrong_divergence_shape_is_a_contract_violation_naming_the_trace() -> None:
    x = points(4, 2)
    dynamics = CNFDynamics(linear_field(A2), BadDivTrace(), NFECounter(), False, trace_label="bad-div")
    with pytest.raises(ContractViolation, match=r"trace bad-div.*\(4, 1\)"):
        log_likelihood(dynamics, build("solver", "euler[steps=2]"), x, "eval", None)


def test_phase_tracker_writes_phase_and_iteration_as_one_shared_integer() -> None:
    shared = multiprocessing.get_context("spawn").RawValue("q", 0)
    tracker = PhaseTracker(shared)
    assert (tracker.phase, tracker.iteration) == ("start", 0)
    for phase in CELL_PHASES:
        for iteration in (0, 1, 7, 10**9):
            tracker.enter(phase, iteration)
            assert unpack_phase(shared.value) == (phase, iteration) == (tracker.phase, tracker.iteration)
    assert unpack_phase(pack_phase("eval")) == ("eval", 0)
    assert unpack_phase(255) == ("start", 0)  # an unknown code reads as "not begun", never raises


class _RecordingTracker(PhaseTracker):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int]] = []

    def enter(self, phase: str, iteration: int = 0) -> None:
        super().enter(phase, iteration)
        self.seen.append((phase, iteration))


def test_training_tells_the_tracker_each_forward_solve_and_backward_pass() -> None:
    config = RunConfig(dataset=("8gaussians[n_train=128,n_val=16,n_test=16]",), field=("concatsquash[hidden=8]",),
                       solver=("euler[steps=2]",), iterations=2, batch_size=32, device="cpu")
    cell = resolve_cells(config, REGISTRY)[0]
    data = REGISTRY.build("dataset", cell.dataset).splits(0).train
    field = seeded_field(lambda: REGISTRY.build("field", cell.field, 2), 0, torch.device("cpu"))
    tracker = _RecordingTracker()
    train(cell, field, REGISTRY.build("objective", cell.objective), REGISTRY.build("solver", cell.solver),
          REGISTRY.build("trace", cell.trace), REGISTRY.build("optimizer", cell.optimizer), data, TrainingRecord(),
          tracker=tracker)
    assert tracker.seen == [("train_forward", 1), ("train_backward", 1), ("train_forward", 2), ("train_backward", 2)]
