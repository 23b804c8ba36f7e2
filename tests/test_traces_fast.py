"""Tests for the fast exact trace, ``exact_loop``, multi-probe Hutchinson and Hutch++ (plugins/traces.py).

Every exact estimator in the registry is checked against the trace of
``torch.autograd.functional.jacobian`` on three kinds of field: a generic
module (the reference MLP field: the ``torch.func`` / loop path), the built-in fields (their fused
``forward_with_divergence``) and a built-in field hidden behind a plain
function. Gradients with ``create_graph=True`` are checked against
``exact_loop``, also through a whole solve.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
from cnfbench_plugins.traces import batched_divergence, fused_divergence, loop_divergence
from torch import Tensor, nn

from cnfbench.dynamics import CNFDynamics, NFECounter, log_likelihood
from cnfbench.params import ParamError, parse_selection
from cnfbench.registry import load_registry
from cnfbench.testing.reference import ConstantField, MatrixField, MLPField, jacobian_trace

F32, F64 = torch.float32, torch.float64
REGISTRY = load_registry()
EXACT = [entry.name for entry in REGISTRY.entries("trace") if not entry.cls.stochastic]
DIMS = [1, 2, 3, 17]
DTYPES = [F32, F64]
TOLERANCE = {F32: {"rtol": 1e-5, "atol": 1e-5}, F64: {"rtol": 1e-10, "atol": 1e-10}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: extra intra-op threads only oversubscribe a small shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_trace(selector: str):
    return REGISTRY.build("trace", REGISTRY.resolve("trace", parse_selection(selector)))


def make_field(selector: str, dim: int, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return REGISTRY.build("field", REGISTRY.resolve("field", parse_selection(selector)), dim).to(dtype)


def fields(dim: int, dtype: torch.dtype) -> dict[str, tuple[Callable[[Tensor, Tensor], Tensor], nn.Module]]:
    """``label -> (what the trace is given, the module holding the parameters)``."""
    concatsquash = make_field("concatsquash[hidden=2x12,activation=tanh]", dim, dtype, seed=dim)
    generic = MLPField(dim, seed=dim, dtype=dtype)
    mlp = make_field("mlp[hidden=2x12,activation=swish]", dim, dtype, seed=dim + 1)
    return {
        "generic": (generic, generic),
        "concatsquash-fused": (concatsquash, concatsquash),
        "mlp-fused": (mlp, mlp),
        "concatsquash-as-function": (lambda t, z: concatsquash(t, z), concatsquash),
    }


def state(batch: int, dim: int, dtype: torch.dtype, seed: int = 1) -> Tensor:
    return (1.5 * torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)).to(dtype)


# --------------------------------------------------------------------------------------------------
# Exact estimators.
# --------------------------------------------------------------------------------------------------


def test_exact_estimators_are_registered() -> None:
    assert {"exact", "exact_loop"} <= set(EXACT)
    assert {"hutchinson", "hutchpp"} <= set(REGISTRY.names("trace"))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name", EXACT)
def test_every_exact_estimator_equals_the_jacobian_trace(name: str, dim: int, dtype: torch.dtype) -> None:
    t = torch.tensor(0.37, dtype=dtype)
    for label, (field, _) in fields(dim, dtype).items():
        z = state(5, dim, dtype).requires_grad_(True)
        dz, div = make_trace(name)(field, t, z, False)
        assert div.shape == (5,) and div.dtype == dtype, label
        torch.testing.assert_close(dz, field(t, z), rtol=0, atol=0, msg=label)
        expected = jacobian_trace(field, t, z)
        assert expected.abs().max() > 1e-3, label
        torch.testing.assert_close(div, expected, **TOLERANCE[dtype], msg=label)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("dim", DIMS)
def test_each_exact_method_equals_the_loop(dim: int, dtype: torch.dtype) -> None:
    """The batched and fused methods directly, also at the small D where ``exact`` would loop."""
    t = torch.tensor(0.8, dtype=dtype)
    for label, (field, _) in fields(dim, dtype).items():
        z = state(6, dim, dtype, seed=3).requires_grad_(True)
        _, reference = loop_divergence(field, t, z, False)
        _, batched = batched_divergence(field, t, z, False)
        torch.testing.assert_close(batched, reference, **TOLERANCE[dtype], msg=label)
        fused = fused_divergence(field, t, z, False)
        assert (fused is None) == (label in ("generic", "concatsquash-as-function")), label
        if fused is not None:
            torch.testing.assert_close(fused[1], reference, **TOLERANCE[dtype], msg=label)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("dim", [2, 17])
def test_exact_gradients_equal_exact_loop_gradients(dim: int, dtype: torch.dtype) -> None:
    t = torch.tensor(0.21, dtype=dtype)
    weights = torch.linspace(0.5, 1.5, 7, dtype=dtype)
    for label, (field, module) in fields(dim, dtype).items():
        inputs = list(module.parameters())
        gradients = []
        for name in ("exact", "exact_loop"):
            z = state(7, dim, dtype, seed=4).requires_grad_(True)
            dz, div = make_trace(name)(field, t, z, True)
            assert div.requires_grad, (label, name)
            loss = (div * weights).sum() + 0.1 * dz.pow(2).sum()
            gradients.append(torch.autograd.grad(loss, [*inputs, z], allow_unused=True))
        for got, expected in zip(*gradients, strict=True):
            if expected is None:
                assert got is None or not got.any(), label
                continue
            torch.testing.assert_close(got, expected, **TOLERANCE[dtype], msg=label)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_batched_method_gradients_equal_loop_gradients(dtype: torch.dtype) -> None:
    """``exact`` trains through the batched method on a GPU, so its second derivatives are checked here too."""
    t = torch.tensor(0.21, dtype=dtype)
    for label, (field, module) in fields(9, dtype).items():
        gradients = []
        for method in (batched_divergence, loop_divergence):
            z = state(6, 9, dtype, seed=5).requires_grad_(True)
            dz, div = method(field, t, z, True)
            loss = (div * torch.arange(6, dtype=dtype)).sum() + 0.1 * dz.pow(2).sum()
            gradients.append(torch.autograd.grad(loss, [*module.parameters(), z], allow_unused=True))
        for got, expected in zip(*gradients, strict=True):
            if expected is None:
                assert got is None or not got.any(), label
                continue
            torch.testing.assert_close(got, expected, **TOLERANCE[dtype], msg=label)


@pytest.mark.parametrize("name", EXACT)
def test_without_create_graph_only_dz_is_differentiable(name: str) -> None:
    for label, (field, _) in fields(17, F64).items():
        z = state(4, 17, F64).requires_grad_(True)
        dz, div = make_trace(name)(field, torch.tensor(0.5, dtype=F64), z, False)
        assert dz.requires_grad and not div.requires_grad, label


def test_training_gradient_through_a_whole_solve_matches_exact_loop() -> None:
    solver = REGISTRY.build("solver", REGISTRY.resolve("solver", parse_selection("rk4[steps=3]")))
    x = state(8, 5, F64, seed=9)
    for selector in ("concatsquash[hidden=2x8]", "generic"):
        gradients = []
        for name in ("exact", "exact_loop"):
            field = MLPField(5) if selector == "generic" else make_field(selector, 5, F64, seed=2)
            dynamics = CNFDynamics(field, make_trace(name), NFECounter(), differentiable=True)
            loss = -log_likelihood(dynamics, solver, x, "forward", None).mean()
            gradients.append(torch.autograd.grad(loss, list(field.parameters())))
        for got, expected in zip(*gradients, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


class FusedByHand(nn.Module):
    """A third-party field opting in to the protocol, with a recognisable divergence; ``decline`` opts out."""

    def __init__(self, decline: bool) -> None:
        super().__init__()
        self.decline = decline

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return 2.0 * z

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        if self.decline:
            return None
        return self(t, z), torch.full(z.shape[:1], 123.0, dtype=z.dtype)


def test_the_fused_protocol_is_used_when_offered_and_skipped_when_declined() -> None:
    z = state(3, 6, F64).requires_grad_(True)
    t = torch.tensor(0.0, dtype=F64)
    assert torch.equal(make_trace("exact")(FusedByHand(False), t, z, False)[1], torch.full((3,), 123.0, dtype=F64))
    torch.testing.assert_close(make_trace("exact")(FusedByHand(True), t, z, False)[1], torch.full((3,), 12.0,
                                                                                                   dtype=F64))
    assert torch.equal(make_trace("exact_loop")(FusedByHand(False), t, z, False)[1], torch.full((3,), 12.0,
                                                                                                dtype=F64))


def test_a_subclass_that_overrides_forward_is_not_trusted_with_the_fused_pass() -> None:
    base = type(make_field("concatsquash", 3, F64))

    class Doubled(base):  # type: ignore[misc, valid-type]
        def forward(self, t: Tensor, z: Tensor) -> Tensor:
            return 2.0 * super().forward(t, z)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        field = Doubled(3, hidden=(8,)).to(F64)
    z = state(4, 3, F64).requires_grad_(True)
    t = torch.tensor(0.4, dtype=F64)
    assert field.forward_with_divergence(t, z) is None
    torch.testing.assert_close(make_trace("exact")(field, t, z, False)[1], jacobian_trace(field, t, z))


class _OldStyleSquare(torch.autograd.Function):
    """An autograd.Function without ``setup_context``: torch.func cannot transform it."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_a_field_torch_func_cannot_transform_falls_back_to_the_loop_with_one_warning() -> None:
    def field(t: Tensor, z: Tensor) -> Tensor:
        return _OldStyleSquare.apply(z)

    trace = make_trace("exact")
    z = state(4, 17, F64).requires_grad_(True)  # large enough D for the batched method
    with pytest.warns(RuntimeWarning, match="torch.func"):
        _, div = trace(field, torch.tensor(0.0, dtype=F64), z, False)
    torch.testing.assert_close(div, 2 * z.detach().sum(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(trace(field, torch.tensor(0.0, dtype=F64), z, False)[1], 2 * z.detach().sum(1))


# --------------------------------------------------------------------------------------------------
# Stochastic estimators.
# --------------------------------------------------------------------------------------------------

NONSYMMETRIC = torch.tensor([[1.5, 2.0, -1.0, 0.3, 0.0, 0.2],
                             [0.1, -0.7, 0.4, 1.2, -0.5, 0.0],
                             [1.9, 0.4, 0.9, -0.3, 0.8, 0.6],
                             [-0.6, 0.0, 0.7, 2.5, 0.1, -1.1],
                             [0.3, 1.4, 0.0, -0.2, -1.8, 0.5],
                             [0.0, -0.9, 0.6, 0.4, 1.0, 0.7]], dtype=F64)


def estimates(selector: str, field, z: Tensor, seed: int, t: float = 0.0) -> Tensor:
    trace = make_trace(selector)
    trace.begin_solve(z, torch.Generator().manual_seed(seed))
    return trace(field, torch.tensor(t, dtype=z.dtype), z, False)[1]


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
@pytest.mark.parametrize("selector", ["hutchinson[probes=3]", "hutchpp[probes=3]", "hutchpp[probes=6]",
                                      "hutchpp[probes=12]"])
def test_stochastic_estimators_are_unbiased_on_a_non_symmetric_linear_field(selector: str, noise: str) -> None:
    draws = 6000
    z = state(draws, 6, F64).requires_grad_(True)  # independent probes per row
    div = estimates(f"{selector[:-1]},noise={noise}]", MatrixField(NONSYMMETRIC), z, seed=5)
    exact = torch.trace(NONSYMMETRIC)
    standard_error = div.std() / math.sqrt(draws)
    assert div.std() > 1e-3  # genuinely stochastic (probes/3 < D)
    assert abs(div.mean() - exact) < 4 * standard_error, (div.mean().item(), exact.item(), standard_error.item())


def test_hutchinson_variance_falls_as_one_over_the_probes() -> None:
    draws = 20000
    z = state(draws, 6, F64).requires_grad_(True)
    symmetric = 0.5 * (NONSYMMETRIC + NONSYMMETRIC.T)
    single = 2 * symmetric.pow(2).sum()  # Gaussian probes: Var e^T M e = 2 ||M_sym||_F^2
    for probes in (1, 4):
        div = estimates(f"hutchinson[probes={probes}]", MatrixField(NONSYMMETRIC), z, seed=probes)
        assert abs(div.mean() - torch.trace(NONSYMMETRIC)) < 4 * div.std() / math.sqrt(draws)
        assert div.var() / (single / probes) == pytest.approx(1.0, abs=0.1), probes


def test_one_probe_hutchinson_reproduces_the_single_probe_estimator_bit_for_bit() -> None:
    field = MLPField(3)
    z = state(10, 3, F64).requires_grad_(True)
    t = torch.tensor(0.3, dtype=F64)
    probe = torch.randn(z.shape, generator=torch.Generator().manual_seed(42), dtype=F64)
    (vjp,) = torch.autograd.grad(field(t, z), z, grad_outputs=probe)
    legacy = (vjp * probe).sum(dim=1)
    for selector in ("hutchinson", "hutchinson[probes=1]"):
        assert torch.equal(estimates(selector, field, z, seed=42, t=0.3), legacy)


@pytest.mark.parametrize(("dim", "probes"), [(1, 3), (2, 6), (3, 9), (3, 15)])
def test_hutchpp_is_exact_when_the_sketch_spans_the_space(dim: int, probes: int) -> None:
    field = MLPField(dim, seed=dim)
    z = state(5, dim, F64).requires_grad_(True)
    t = torch.tensor(0.6, dtype=F64)
    for noise in ("gaussian", "rademacher"):
        got = estimates(f"hutchpp[probes={probes},noise={noise}]", field, z, seed=0, t=0.6)
        torch.testing.assert_close(got, jacobian_trace(field, t, z), rtol=1e-10, atol=1e-10)


def test_hutchpp_gradient_is_the_exact_gradient_when_the_sketch_spans_the_space() -> None:
    field = MLPField(3)
    t = torch.tensor(0.6, dtype=F64)
    gradients = []
    for selector in ("hutchpp[probes=9]", "exact_loop"):
        z = state(5, 3, F64).requires_grad_(True)
        trace = make_trace(selector)
        trace.begin_solve(z, torch.Generator().manual_seed(0))
        _, div = trace(field, t, z, True)
        # b2 (the output bias) does not reach the divergence.
        gradients.append(torch.autograd.grad(div.sum(), [field.w1, field.b1, field.w2, z]))
    for got, expected in zip(*gradients, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("selector", ["hutchinson[probes=4]", "hutchpp", "hutchpp[probes=9,noise=rademacher]"])
def test_probes_are_drawn_once_per_solve_and_from_the_seed_only(selector: str) -> None:
    field = MatrixField(NONSYMMETRIC)
    z = state(7, 6, F64).requires_grad_(True)
    trace = make_trace(selector)
    gen = torch.Generator().manual_seed(3)
    trace.begin_solve(z, gen)
    _, first = trace(field, torch.tensor(0.0, dtype=F64), z, False)
    moved = (3.0 * z.detach() + 1.0).requires_grad_(True)  # another step of the same solve: same probes
    _, later = trace(field, torch.tensor(0.9, dtype=F64), moved, False)
    torch.testing.assert_close(later, first, rtol=1e-12, atol=1e-12)
    trace.begin_solve(z, gen)  # a new solve: the generator has advanced
    assert not torch.allclose(trace(field, torch.tensor(0.0, dtype=F64), z, False)[1], first)
    assert torch.equal(estimates(selector, field, z, seed=3), first)  # same seed, same result
    with pytest.raises(RuntimeError, match="begin_solve"):
        trace(field, torch.tensor(0.0, dtype=F64), state(3, 6, F64).requires_grad_(True), False)


@pytest.mark.parametrize(("selector", "message"), [
    ("hutchpp[probes=4]", "multiple of 3"),
    ("hutchpp[probes=0]", ">= 3"),
    ("hutchpp[probes=2]", ">= 3"),
    ("hutchpp[probes=six]", "integer"),
    ("hutchinson[probes=0]", ">= 1"),
    ("exact_loop[probes=3]", "valid parameters: none"),
])
def test_bad_probes_are_rejected_when_resolved(selector: str, message: str) -> None:
    with pytest.raises(ParamError, match=message):
        REGISTRY.resolve("trace", parse_selection(selector))


@pytest.mark.parametrize("selector", [*EXACT, "hutchinson[probes=3]", "hutchpp", "hutchpp[probes=6,noise=rademacher]"])
@pytest.mark.parametrize("learnable", [False, True], ids=["frozen-drift", "learnable-drift"])
def test_divergence_of_a_z_independent_field_is_zero(selector: str, learnable: bool) -> None:
    field = ConstantField(2, learnable=learnable)
    z = state(4, 2, F64).requires_grad_(True)
    trace = make_trace(selector)
    trace.begin_solve(z, torch.Generator().manual_seed(0))
    dz, div = trace(field, torch.tensor(0.5, dtype=F64), z, False)
    torch.testing.assert_close(dz, field(torch.tensor(0.5, dtype=F64), z))
    torch.testing.assert_close(div, torch.zeros(4, dtype=F64))
