"""Tests for the built-in trace estimators (plugins/traces.py): exact divergence and Hutchinson."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cnfbench.params import ParamError, parse_selection
from cnfbench.registry import load_registry
from cnfbench.testing.reference import ConstantField, MatrixField, MLPField, jacobian_trace

F64 = torch.float64
REGISTRY = load_registry()
T = torch.tensor(0.37, dtype=F64)


def make_trace(selector: str):
    return REGISTRY.build("trace", REGISTRY.resolve("trace", parse_selection(selector)))


def random_z(batch: int, dim: int, seed: int = 1) -> Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=F64).requires_grad_(True)


def test_registered_traces() -> None:
    assert REGISTRY.names("trace") == ["exact", "exact_loop", "hutchinson", "hutchpp"]
    assert make_trace("exact").stochastic is False
    assert make_trace("hutchinson").stochastic is True
    assert make_trace("hutchinson").config["noise"] == "gaussian"


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_exact_trace_equals_jacobian_trace(dim: int) -> None:
    field = MLPField(dim, seed=dim)
    z = random_z(6, dim)
    dz, div = make_trace("exact")(field, T, z, False)
    assert div.shape == (6,) and div.dtype == F64
    torch.testing.assert_close(dz, field(T, z), rtol=0, atol=0)
    expected = jacobian_trace(field, T, z)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(div, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_returns_field_and_reuses_probe_within_a_solve(noise: str) -> None:
    field = MLPField(3)
    z = random_z(5, 3)
    trace = make_trace(f"hutchinson[noise={noise}]")
    trace.begin_solve(z, torch.Generator().manual_seed(0))
    dz, first = trace(field, T, z, False)
    torch.testing.assert_close(dz, field(T, z), rtol=0, atol=0)
    assert first.shape == (5,) and first.dtype == F64
    _, second = trace(field, T, z, False)
    assert torch.equal(first, second)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_probe_is_independent_of_time_and_state_within_a_solve(noise: str) -> None:
    matrix = torch.tensor([[0.5, 2.0, -1.0], [0.3, -0.7, 0.2], [1.5, 0.4, 0.9]], dtype=F64)
    field = MatrixField(matrix)
    z = random_z(8, 3)
    trace = make_trace(f"hutchinson[noise={noise}]")
    trace.begin_solve(z, torch.Generator().manual_seed(3))
    _, at_start = trace(field, T, z, False)
    moved = (z.detach() * 3.0 + 1.0).requires_grad_(True)
    _, later = trace(field, torch.tensor(0.9, dtype=F64), moved, False)
    torch.testing.assert_close(later, at_start, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_probe_changes_with_a_new_solve(noise: str) -> None:
    field = MLPField(3)
    z = random_z(16, 3)
    trace = make_trace(f"hutchinson[noise={noise}]")
    gen = torch.Generator().manual_seed(0)
    trace.begin_solve(z, gen)
    _, first = trace(field, T, z, False)
    trace.begin_solve(z, gen)  # the generator has advanced
    _, second = trace(field, T, z, False)
    assert not torch.allclose(first, second)


def test_rademacher_probe_entries_are_plus_minus_one() -> None:
    weights = torch.tensor([1.0, 10.0, 100.0], dtype=F64)
    field = MatrixField(torch.diag(weights))  # div estimate = sum_i w_i e_i^2
    z = random_z(500, 3)
    trace = make_trace("hutchinson[noise=rademacher]")
    trace.begin_solve(z, torch.Generator().manual_seed(0))
    _, div = trace(field, T, z, False)
    torch.testing.assert_close(div, torch.full((500,), 111.0, dtype=F64), rtol=0, atol=1e-12)
    # The same check distinguishes Gaussian probes, so it is not vacuous.
    gaussian = make_trace("hutchinson[noise=gaussian]")
    gaussian.begin_solve(z, torch.Generator().manual_seed(0))
    _, gaussian_div = gaussian(field, T, z, False)
    assert (gaussian_div - 111.0).abs().max() > 1.0


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased(noise: str) -> None:
    dim, draws = 4, 4000
    field = MLPField(dim, seed=5)
    point = random_z(1, dim, seed=7).detach()
    exact = jacobian_trace(field, T, point)[0]
    z = point.expand(draws, dim).clone().requires_grad_(True)  # one independent probe per row
    trace = make_trace(f"hutchinson[noise={noise}]")
    trace.begin_solve(z, torch.Generator().manual_seed(11))
    _, div = trace(field, T, z, False)
    standard_error = div.std() / draws**0.5
    assert div.std() > 1e-3  # the estimate is genuinely stochastic
    assert abs(div.mean() - exact) < 4 * standard_error, (div.mean().item(), exact.item(), standard_error.item())


def test_hutchinson_without_begin_solve_raises() -> None:
    field = MLPField(2)
    z = random_z(4, 2)
    with pytest.raises(RuntimeError, match="begin_solve"):
        make_trace("hutchinson")(field, T, z, False)


def test_hutchinson_with_probe_of_another_shape_raises() -> None:
    field = MLPField(2)
    trace = make_trace("hutchinson")
    trace.begin_solve(random_z(4, 2), torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="begin_solve"):
        trace(field, T, random_z(3, 2), False)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_is_deterministic_given_the_seed(noise: str) -> None:
    field = MLPField(3)
    z = random_z(10, 3)
    results = []
    for _ in range(2):
        trace = make_trace(f"hutchinson[noise={noise}]")
        trace.begin_solve(z, torch.Generator().manual_seed(1234))
        results.append(trace(field, T, z, False)[1])
    assert torch.equal(results[0], results[1])
    other = make_trace(f"hutchinson[noise={noise}]")
    other.begin_solve(z, torch.Generator().manual_seed(4321))
    assert not torch.equal(other(field, T, z, False)[1], results[0])


@pytest.mark.parametrize("selector", ["exact", "hutchinson[noise=gaussian]", "hutchinson[noise=rademacher]"])
def test_create_graph_keeps_divergence_differentiable(selector: str) -> None:
    field = MLPField(3)
    z = random_z(6, 3)
    trace = make_trace(selector)
    trace.begin_solve(z, torch.Generator().manual_seed(0))
    dz, div = trace(field, T, z, True)
    assert div.requires_grad
    div.sum().backward()
    for name, param in field.named_parameters():
        if name == "b2":  # the output bias does not change the Jacobian
            assert param.grad is None or not param.grad.any()
            continue
        assert param.grad is not None, name
        assert param.grad.abs().max() > 0, name


def test_exact_divergence_gradient_matches_jacobian_gradient() -> None:
    field = MLPField(3)
    z = random_z(6, 3)
    _, div = make_trace("exact")(field, T, z, True)
    weights = torch.linspace(0.5, 1.5, 6, dtype=F64)
    params = [field.w1, field.b1, field.w2]  # b2 does not change the Jacobian
    got = torch.autograd.grad((div * weights).sum(), params)
    reference = jacobian_trace(field, T, z, create_graph=True)
    expected = torch.autograd.grad((reference * weights).sum(), params)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("selector", ["exact", "hutchinson"])
def test_without_create_graph_the_divergence_is_not_differentiable(selector: str) -> None:
    field = MLPField(2)
    z = random_z(4, 2)
    trace = make_trace(selector)
    trace.begin_solve(z, torch.Generator().manual_seed(0))
    dz, div = trace(field, T, z, False)
    assert dz.requires_grad  # dz itself is the field's output
    assert not div.requires_grad


def test_bad_noise_is_rejected_with_the_choices() -> None:
    with pytest.raises(ParamError, match="rademacher"):
        REGISTRY.resolve("trace", parse_selection("hutchinson[noise=uniform]"))
    with pytest.raises(ParamError, match="valid parameters: none"):
        REGISTRY.resolve("trace", parse_selection("exact[noise=gaussian]"))


@pytest.mark.parametrize("selector", ["exact", "hutchinson"])
@pytest.mark.parametrize("learnable", [False, True], ids=["frozen-drift", "learnable-drift"])
def test_divergence_of_a_z_independent_field_is_zero(selector: str, learnable: bool) -> None:
    field = ConstantField(2, learnable=learnable)
    z = random_z(4, 2)
    trace = make_trace(selector)
    trace.begin_solve(z, torch.Generator().manual_seed(0))
    dz, div = trace(field, T, z, False)
    torch.testing.assert_close(dz, field(T, z))
    torch.testing.assert_close(div, torch.zeros(4, dtype=F64))
