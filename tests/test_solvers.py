"""Tests for the built-in torchdiffeq solvers (plugins/torchdiffeq_solvers.py) through the registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from cnfbench.contracts import StepCapReached
from cnfbench.params import ParamError, parse_selection
from cnfbench.registry import load_registry
from cnfbench.testing.reference import LearnableLinearODE, LinearODE

F64 = torch.float64
REGISTRY = load_registry()
SOLVER_ENTRIES = [entry for entry in REGISTRY.entries("solver") if "torchdiffeq" in entry.cls.libraries]
SOLVER_NAMES = [entry.name for entry in SOLVER_ENTRIES]
ADAPTIVE_NAMES = [entry.name for entry in SOLVER_ENTRIES if entry.cls.adaptive]
FIXED_NAMES = [entry.name for entry in SOLVER_ENTRIES if not entry.cls.adaptive]

# Textbook stages (evaluations per step) and orders of the fixed-grid Runge-Kutta methods.
RK_STAGES = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
RK_ORDER = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
ADAMS = ("explicit_adams", "implicit_adams", "fixed_adams")
# At max_order=4, after an RK4 start: the 3-step Adams-Bashforth formula alone (order 3) or predicting the
# 4th-order Adams-Moulton corrector (order 4).
ADAMS_ORDER = {"explicit_adams": 3, "implicit_adams": 4, "fixed_adams": 4}
# The order of the solution each adaptive pair propagates.
ADAPTIVE_ORDER = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}

A_MILD = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=F64)
Z0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.0, -1.0]], dtype=F64)



def make_solver(selector: str):
    resolved = REGISTRY.resolve("solver", parse_selection(selector))
    return REGISTRY.build("solver", resolved)


def learnable_ode() -> LearnableLinearODE:
    """``dz/dt = W z + b`` with learnable ``W, b``, counting its calls."""
    return LearnableLinearODE(torch.tensor([[-0.3, 0.9], [-0.7, 0.2]], dtype=F64), torch.tensor([0.1, -0.2], dtype=F64))


def exact_linear(z0: Tensor, matrix: Tensor, t0: float, t1: float) -> Tensor:
    return LinearODE(matrix).solution((z0,), t0, t1)[0]


def linear_error(selector: str, t0: float, t1: float, matrix: Tensor = A_MILD) -> tuple[float, int]:
    solver = make_solver(selector)
    dynamics = LinearODE(matrix)
    result = solver.integrate(dynamics, (Z0.clone(),), t0, t1)
    assert isinstance(result, tuple) and len(result) == 1
    assert result[0].shape == Z0.shape and result[0].dtype == F64
    error = (result[0] - exact_linear(Z0, matrix, t0, t1)).abs().max().item()
    return error, dynamics.calls


# Selector and bound on the max abs error of one solve of dz/dt = A z over [0, 1] (either direction).
ACCURACY_CASES = {
    "euler": ("euler[steps=200]", 2e-2),  # first order: ~h * |A^2 z| / 2 * e^{0.5}
    "midpoint": ("midpoint[steps=200]", 1e-4),
    "heun2": ("heun2[steps=200]", 1e-4),
    "heun3": ("heun3[steps=200]", 1e-7),
    "rk4": ("rk4[steps=200]", 1e-10),
    # The explicit Adams method runs at order 3 (see ADAMS_ORDER).
    "explicit_adams": ("explicit_adams[steps=200]", 1e-6),
    "implicit_adams": ("implicit_adams[steps=200]", 1e-8),
    "fixed_adams": ("fixed_adams[steps=200]", 1e-8),
    "dopri5": ("dopri5[rtol=1e-8,atol=1e-8]", 1e-7),
    "dopri8": ("dopri8[rtol=1e-8,atol=1e-8]", 1e-6),
    "bosh3": ("bosh3[rtol=1e-8,atol=1e-8]", 1e-6),
    # Second-order methods accumulate local errors over many steps; keep their tolerances cheap.
    "fehlberg2": ("fehlberg2[rtol=1e-8,atol=1e-8]", 1e-5),
    "adaptive_heun": ("adaptive_heun[rtol=1e-6,atol=1e-6]", 1e-5),
}


def _accuracy_params() -> list:
    cases = []
    for name in SOLVER_NAMES:
        for t0, t1 in ((1.0, 0.0), (0.0, 1.0)):
            cases.append(pytest.param(name, t0, t1, id=f"{name}-{t0:g}to{t1:g}"))
    return cases


def test_registered_solvers_are_the_expected_torchdiffeq_methods() -> None:
    assert set(SOLVER_NAMES) == set(ACCURACY_CASES)
    assert "scipy_solver" not in SOLVER_NAMES
    assert set(ADAPTIVE_NAMES) == {"adaptive_heun", "bosh3", "dopri5", "dopri8", "fehlberg2"}
    assert set(ADAMS) <= set(FIXED_NAMES)


@pytest.mark.parametrize(("name", "t0", "t1"), _accuracy_params())
def test_integrates_linear_ode_against_matrix_exponential(name: str, t0: float, t1: float) -> None:
    selector, bound = ACCURACY_CASES[name]
    error, _ = linear_error(selector, t0, t1)
    assert error < bound, f"{selector} from {t0} to {t1}: error {error:.3e} >= {bound:.1e}"


@pytest.mark.parametrize("name", ["bosh3", "dopri8"])
def test_high_order_adaptive_reaches_requested_accuracy(name: str) -> None:
    error, _ = linear_error(f"{name}[rtol=1e-8,atol=1e-8]", 1.0, 0.0)
    assert error < 1e-6


def test_integrates_a_tuple_state_of_different_shapes() -> None:
    class Augmented(nn.Module):
        def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            z, a = state
            return z @ A_MILD.T, -torch.ones_like(a) * t

    for selector, bound in (("rk4[steps=20]", 1e-6), ("dopri5[rtol=1e-9,atol=1e-9]", 1e-7)):
        a0 = torch.full((Z0.shape[0],), 2.0, dtype=F64)
        z1, a1 = make_solver(selector).integrate(Augmented(), (Z0.clone(), a0), 1.0, 0.0)
        assert z1.shape == Z0.shape and a1.shape == a0.shape
        torch.testing.assert_close(z1, exact_linear(Z0, A_MILD, 1.0, 0.0), rtol=0, atol=bound)
        # a(0) = a(1) - int_1^0 t dt = 2 + 1/2
        torch.testing.assert_close(a1, torch.full_like(a0, 2.5), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", sorted(RK_STAGES))
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_fixed_grid_nfe_is_steps_times_stages(name: str, steps: int) -> None:
    solver = make_solver(f"{name}[steps={steps}]")
    dynamics = LinearODE(A_MILD)
    solver.integrate(dynamics, (Z0.clone(),), 1.0, 0.0)
    assert type(solver).nfe_per_step == RK_STAGES[name]
    assert dynamics.calls == steps * RK_STAGES[name]
    assert solver.expected_nfe() == dynamics.calls


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_expected_nfe_unknown_for_adaptive_and_multistep(name: str) -> None:
    solver = make_solver(name)
    if name in RK_STAGES:
        assert solver.expected_nfe() == 10 * RK_STAGES[name]
    else:
        assert type(solver).nfe_per_step is None
        assert solver.expected_nfe() is None
    assert type(solver).adaptive == (name in ADAPTIVE_NAMES)


def test_default_euler_takes_ten_steps_not_one() -> None:
    class Growth(nn.Module):
        calls = 0

        def forward(self, t: Tensor, state: tuple[Tensor]) -> tuple[Tensor]:
            self.calls += 1
            return (state[0],)

    dynamics = Growth()
    (z1,) = make_solver("euler").integrate(dynamics, (torch.ones(2, 1, dtype=F64),), 0.0, 1.0)
    assert dynamics.calls == 10
    torch.testing.assert_close(z1, torch.full((2, 1), 1.1**10, dtype=F64), rtol=0, atol=1e-12)


def test_every_solver_declares_its_order() -> None:
    declared = {entry.name: entry.cls.order for entry in SOLVER_ENTRIES}
    assert declared == {**RK_ORDER, **ADAMS_ORDER, **ADAPTIVE_ORDER}
    for entry in SOLVER_ENTRIES:
        assert f"order {entry.cls.order}," in entry.cls.description


@pytest.mark.parametrize("name", FIXED_NAMES)
def test_observed_order_of_convergence_is_the_declared_order(name: str) -> None:
    errors = [linear_error(f"{name}[steps={steps}]", 0.0, 1.0)[0] for steps in (16, 32, 64)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    order = REGISTRY.get("solver", name).cls.order
    for observed in orders:
        assert abs(observed - order) < 0.3, f"{name}: errors {errors}, observed orders {orders}, declared {order}"


# (loose, tight) tolerances per adaptive method, chosen so the tight solve stays cheap.
ADAPTIVE_TOLERANCES = {
    "adaptive_heun": (1e-3, 1e-6),
    "fehlberg2": (1e-3, 1e-6),
    "bosh3": (1e-4, 1e-8),
    "dopri5": (1e-4, 1e-8),
    "dopri8": (1e-4, 1e-8),
}


@pytest.mark.parametrize("name", ADAPTIVE_NAMES)
def test_tighter_tolerance_gives_smaller_error_and_more_nfe(name: str) -> None:
    loose, tight = ADAPTIVE_TOLERANCES[name]
    loose_error, loose_nfe = linear_error(f"{name}[rtol={loose},atol={loose}]", 1.0, 0.0)
    tight_error, tight_nfe = linear_error(f"{name}[rtol={tight},atol={tight}]", 1.0, 0.0)
    assert tight_error < loose_error
    assert tight_nfe > loose_nfe


@pytest.mark.parametrize("name", ADAPTIVE_NAMES)
def test_max_steps_exceeded_raises_the_contracts_step_cap_exception(name: str) -> None:
    stiff = torch.tensor([[-30.0, 1.0], [0.0, -1.0]], dtype=F64)
    solver = make_solver(f"{name}[rtol=1e-10,atol=1e-10,max_steps=2]")
    with pytest.raises(StepCapReached, match="solver step cap reached .*max_num_steps exceeded"):
        solver.integrate(LinearODE(stiff), (Z0.clone(),), 0.0, 1.0)


def _gradients(selector: str) -> tuple[list[Tensor], int, int]:
    """Gradients of a loss of z(0) w.r.t. (W, b, z(1)), forward calls and backward calls."""
    dynamics = learnable_ode()
    z1 = Z0.clone().requires_grad_(True)
    (z0,) = make_solver(selector).integrate(dynamics, (z1,), 1.0, 0.0)
    loss = (z0**2).sum() + z0[:, 0].sum()
    forward_calls = dynamics.calls
    loss.backward()
    backward_calls = dynamics.calls - forward_calls
    grads = [dynamics.weight.grad, dynamics.bias.grad, z1.grad]
    assert all(grad is not None for grad in grads)
    return [grad.clone() for grad in grads], forward_calls, backward_calls


@pytest.mark.parametrize("base", ["dopri5[rtol=1e-10,atol=1e-10", "rk4[steps=100"], ids=["dopri5", "rk4"])
def test_adjoint_gradients_match_backpropagation(base: str) -> None:
    direct, _, direct_backward_calls = _gradients(base + "]")
    adjoint, adjoint_forward_calls, adjoint_backward_calls = _gradients(base + ",adjoint=true]")
    assert adjoint_forward_calls > 0
    assert direct_backward_calls == 0
    assert adjoint_backward_calls > 0
    for got, expected in zip(adjoint, direct, strict=True):
        assert expected.abs().max() > 1e-3  # the comparison is not vacuous
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_adjoint_gradient_matches_closed_form() -> None:
    """d/dW of sum(z(0)) for z(0) = expm(-W) z(1) with b = 0, differentiated through matrix_exp."""
    dynamics = learnable_ode()
    with torch.no_grad():
        dynamics.bias.zero_()
    (z0,) = make_solver("dopri5[rtol=1e-10,atol=1e-10,adjoint=true]").integrate(dynamics, (Z0.clone(),), 1.0, 0.0)
    z0.sum().backward()
    weight = dynamics.weight.detach().clone().requires_grad_(True)
    (Z0 @ torch.linalg.matrix_exp(-weight).T).sum().backward()
    torch.testing.assert_close(dynamics.weight.grad, weight.grad, rtol=1e-6, atol=1e-8)


def test_steps_zero_is_rejected() -> None:
    with pytest.raises(ParamError, match="steps"):
        REGISTRY.resolve("solver", parse_selection("euler[steps=0]"))


def test_adaptive_solver_rejects_steps_and_lists_valid_parameters() -> None:
    with pytest.raises(ParamError) as info:
        REGISTRY.resolve("solver", parse_selection("dopri5[steps=5]"))
    message = str(info.value)
    assert "steps" in message
    for valid in ("adjoint", "atol", "max_steps", "rtol"):
        assert valid in message


def test_adjoint_must_be_boolean() -> None:
    with pytest.raises(ParamError, match="adjoint"):
        REGISTRY.resolve("solver", parse_selection("euler[adjoint=maybe]"))


def test_unknown_solver_lists_known_ones() -> None:
    with pytest.raises(ParamError, match="dopri5"):
        REGISTRY.resolve("solver", parse_selection("rk45"))


def test_resolve_fills_and_coerces_parameters() -> None:
    resolved = REGISTRY.resolve("solver", parse_selection("dopri5[rtol=1e-3,adjoint=yes]"))
    params = resolved.kwargs
    assert params == {"rtol": 1e-3, "atol": 1e-5, "max_steps": 10000, "adjoint": True}
    assert isinstance(params["rtol"], float)
    steps = REGISTRY.resolve("solver", parse_selection("rk4[steps=3]")).kwargs["steps"]
    assert steps == 3 and isinstance(steps, int)
