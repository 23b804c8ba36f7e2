"""Tests for the built-in vector fields (plugins/fields.py) built through the registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import read_cells
from torch import Tensor

from cnfbench.contracts import VectorField
from cnfbench.params import ParamError, parse_selection
from cnfbench.registry import load_registry

F64 = torch.float64
REGISTRY = load_registry()
FIELDS = ["concatsquash", "mlp"]
ACTIVATIONS = {"tanh": torch.tanh, "softplus": F.softplus, "elu": F.elu, "swish": F.silu}
HIDDEN = {"64-64": (64, 64), "3x16": (16, 16, 16)}


def build_field(selector: str, dim: int) -> VectorField:
    resolved = REGISTRY.resolve("field", parse_selection(selector))
    return REGISTRY.build("field", resolved, dim)


def expected_parameter_count(name: str, dim: int, hidden: tuple[int, ...]) -> int:
    widths = [dim, *hidden, dim]
    total = 0
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        if name == "concatsquash":
            total += (a * b + b) + (b + b) + b  # linear, hyper_gate, hyper_bias (no bias)
        else:
            total += (a + 1) * b + b  # Linear(a + 1, b) on [h, t]
    return total


def reference_forward(field: VectorField, name: str, activation: str, t: Tensor, z: Tensor) -> Tensor:
    """The documented formula, recomputed from the field's weights."""
    act = ACTIVATIONS[activation]
    h = z
    layers = list(field.layers)
    for index, layer in enumerate(layers):
        if name == "concatsquash":
            gate = torch.sigmoid(t * layer.hyper_gate.weight[:, 0] + layer.hyper_gate.bias)
            h = (h @ layer.linear.weight.T + layer.linear.bias) * gate + t * layer.hyper_bias.weight[:, 0]
        else:
            h = torch.cat([h, t.expand(h.shape[0], 1)], dim=1) @ layer.weight.T + layer.bias
        if index < len(layers) - 1:
            h = act(h)
    return h


def test_registered_fields_and_defaults() -> None:
    assert REGISTRY.names("field") == sorted([*FIELDS, "hollow"])
    assert REGISTRY.resolve("field", parse_selection("hollow")).kwargs == {"hidden": (64, 64), "embed": 32,
                                                                          "activation": "tanh"}
    for name in FIELDS:
        resolved = REGISTRY.resolve("field", parse_selection(name))
        assert resolved.kwargs == {"hidden": (64, 64, 64), "activation": "tanh"}


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("dim", [1, 2, 7])
@pytest.mark.parametrize("hidden", sorted(HIDDEN))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_shape_time_dependence_and_gradients(name: str, dim: int, hidden: str, activation: str) -> None:
    torch.manual_seed(0)
    field = build_field(f"{name}[hidden={hidden},activation={activation}]", dim)
    assert isinstance(field, VectorField) and field.dim == dim
    z = torch.randn(5, dim)
    t0, t1, tm = torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.3)
    out = field(tm, z)
    assert out.shape == (5, dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(field(t0, z), field(t1, z))
    n_params = sum(p.numel() for p in field.parameters())
    assert n_params == expected_parameter_count(name, dim, HIDDEN[hidden])
    (out * torch.linspace(0.5, 1.5, dim)).sum().backward()
    for param_name, param in field.named_parameters():
        assert param.grad is not None, param_name
        assert param.grad.abs().max() > 0, param_name


def test_concatsquash_parameter_count_by_hand() -> None:
    # Layer 2->8: Linear(2,8)=24, gate Linear(1,8)=16, shift Linear(1,8,bias=False)=8 -> 48
    # Layer 8->2: Linear(8,2)=18, gate Linear(1,2)=4,  shift Linear(1,2,bias=False)=2 -> 24
    field = build_field("concatsquash[hidden=8]", 2)
    assert sum(p.numel() for p in field.parameters()) == 72
    # mlp: Linear(3,8)=32, Linear(9,2)=20
    assert sum(p.numel() for p in build_field("mlp[hidden=8]", 2).parameters()) == 52


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_forward_matches_documented_formula(name: str, activation: str) -> None:
    torch.manual_seed(1)
    field = build_field(f"{name}[hidden=6-5,activation={activation}]", 3).to(F64)
    z = torch.randn(4, 3, dtype=F64)
    t = torch.tensor(0.7, dtype=F64)
    with torch.no_grad():
        expected = reference_forward(field, name, activation, t, z)
        torch.testing.assert_close(field(t, z), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FIELDS)
def test_rows_are_independent_and_time_dtype_is_converted(name: str) -> None:
    torch.manual_seed(2)
    field = build_field(f"{name}[hidden=8-8]", 3).to(F64)
    z = torch.randn(6, 3, dtype=F64)
    t = torch.tensor(0.25, dtype=torch.float32)  # float32 time, float64 field and state
    out = field(t, z)
    assert out.dtype == F64
    for row in range(6):
        torch.testing.assert_close(out[row : row + 1], field(t, z[row : row + 1]), rtol=1e-12, atol=1e-12)


def test_bad_activation_lists_choices() -> None:
    with pytest.raises(ParamError) as info:
        REGISTRY.resolve("field", parse_selection("mlp[activation=relu]"))
    message = str(info.value)
    assert "activation" in message
    for choice in ACTIVATIONS:
        assert choice in message


@pytest.mark.parametrize("hidden", ["0", "abc", "64-0", "0x64", "x"])
def test_bad_hidden_is_rejected(hidden: str) -> None:
    with pytest.raises(ParamError, match="hidden"):
        REGISTRY.resolve("field", parse_selection(f"concatsquash[hidden={hidden}]"))


def test_negative_hidden_width_is_rejected() -> None:
    with pytest.raises(ParamError, match="hidden"):
        REGISTRY.resolve("field", parse_selection("mlp[hidden=-5]"))


def test_unknown_field_parameter_is_rejected() -> None:
    with pytest.raises(ParamError, match="valid parameters: activation, hidden"):
        REGISTRY.resolve("field", parse_selection("mlp[width=5]"))


def test_the_hollow_field_passes_the_kit_and_its_divergence_is_the_jacobians_trace():
    from cnfbench_plugins.hollow_field import HollowField

    from cnfbench.testing import check_field

    check_field(HollowField, {"hidden": (16, 16), "embed": 8})
    field = HollowField(6, hidden=(16, 16), embed=8).double()
    z = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.3, dtype=torch.float64)
    dz, div = field.forward_with_divergence(t, z)
    jacobian = torch.autograd.functional.jacobian(lambda x: field(t, x).sum(0), z)  # [D, B, D]
    trace = torch.stack([jacobian[:, row, :].diagonal().sum() for row in range(5)])
    assert torch.allclose(div, trace, atol=1e-12) and torch.equal(dz, field(t, z))
    per_row = field.forward_with_divergence(torch.rand(5, dtype=torch.float64), z)  # one time per row
    assert per_row is not None and per_row[1].shape == (5,)


def test_a_hollow_cell_trains_and_evaluates(cli, tmp_path):
    result = cli("run", "--field", "hollow[hidden=16-16,embed=8]", "--solver", "euler[steps=2]", "--name", "hollow")
    assert result.exit_code == 0, result.output
    rows = read_cells(tmp_path, "hollow")
    hollow = rows[rows["field"] == "hollow"].iloc[0]
    assert hollow["status"] == "done" and hollow["nll"] == hollow["nll"]
