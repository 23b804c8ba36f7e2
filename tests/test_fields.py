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
ACTIVATIONS = {"tanh": torch.tanh, "softplus": F.softplus, "elu": F.elu, "swish": F.silu, "selu": F.selu}
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


# --- selu and mlp's time=input: the VelocityNet of Tong et al.'s conditional flow matching code --------------
# Reference: atong01/conditional-flow-matching @cacd4dc, runner/src/models/components/simple_mlp.py (VelocityNet,
# SimpleDenseNet) with runner/configs/model/cfm.yaml (hidden_dims [64, 64, 64], batch_norm False, selu).

FROZEN_MLP_HEAD = [[-0.057069867849349976, -0.13213178515434265], [-0.005408197641372681, -0.1478552520275116]]
"""``mlp`` at dim 2 built under ``torch.manual_seed(0)``, at t=0.3 on ``linspace(-1, 1, 10).reshape(5, 2)``: its first
two rows, computed before the ``time`` parameter existed."""


def test_mlp_time_stays_out_of_the_spec_and_the_default_field_is_unchanged() -> None:
    assert REGISTRY.resolve("field", parse_selection("mlp[time=every_layer]")).kwargs == {
        "hidden": (64, 64, 64), "activation": "tanh"}
    assert REGISTRY.resolve("field", parse_selection("mlp[time=input]")).kwargs == {
        "hidden": (64, 64, 64), "activation": "tanh", "time": "input"}
    torch.manual_seed(0)
    field = build_field("mlp", 2)
    assert field.config == {"hidden": (64, 64, 64), "activation": "tanh", "time": "every_layer"}
    shapes = {name: tuple(p.shape) for name, p in field.state_dict().items()}
    assert shapes == {"layers.0.weight": (64, 3), "layers.0.bias": (64,), "layers.1.weight": (64, 65),
                      "layers.1.bias": (64,), "layers.2.weight": (64, 65), "layers.2.bias": (64,),
                      "layers.3.weight": (2, 65), "layers.3.bias": (2,)}
    z, t = torch.linspace(-1, 1, 10).reshape(5, 2), torch.tensor(0.3)
    with torch.no_grad():
        out = field(t, z)
    torch.testing.assert_close(out[:2], torch.tensor(FROZEN_MLP_HEAD), rtol=0, atol=1e-6)
    torch.manual_seed(0)
    explicit = build_field("mlp[time=every_layer]", 2)
    with torch.no_grad():
        assert torch.equal(explicit(t, z), out)


def velocity_net(dim: int, hidden: tuple[int, ...]) -> torch.nn.Sequential:
    """simple_mlp.py's ``VelocityNet(dim, hidden_dims=hidden, activation="selu", batch_norm=False).model``: it maps
    ``[t, x]`` (time first)."""
    dims = [dim + 1, *hidden, dim]
    layers: list[torch.nn.Module] = []
    for i in range(len(dims) - 2):
        layers += [torch.nn.Linear(dims[i], dims[i + 1]), torch.nn.SELU()]
    layers.append(torch.nn.Linear(dims[-2], dims[-1]))
    return torch.nn.Sequential(*layers)


def test_mlp_time_input_is_velocitynet() -> None:
    field = build_field("mlp[hidden=3x64,activation=selu,time=input]", 2).to(F64)
    reference = velocity_net(2, (64, 64, 64)).to(F64)
    assert sum(p.numel() for p in field.parameters()) == sum(p.numel() for p in reference.parameters()) == 8706
    linears = [module for module in reference if isinstance(module, torch.nn.Linear)]
    with torch.no_grad():
        for index, (ours, theirs) in enumerate(zip(field.layers, linears, strict=True)):
            weight = ours.weight if index else torch.cat([ours.weight[:, -1:], ours.weight[:, :-1]], dim=1)
            theirs.weight.copy_(weight)
            theirs.bias.copy_(ours.bias)
        z, times = torch.randn(6, 2, dtype=F64), torch.rand(6, dtype=F64)
        torch.testing.assert_close(field(times, z), reference(torch.cat([times[:, None], z], dim=1)),
                                   rtol=1e-12, atol=1e-12)
        t = torch.tensor(0.4, dtype=F64)
        torch.testing.assert_close(field(t, z), reference(torch.cat([t.expand(6, 1), z], dim=1)),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hidden", [(8,), (6, 5), (16, 16, 16)])
def test_mlp_time_input_parameter_count(hidden: tuple[int, ...]) -> None:
    for dim in (1, 3):
        widths = [dim, *hidden, dim]
        expected = (dim + 1) * hidden[0] + hidden[0] + sum(a * b + b for a, b in zip(widths[1:-1], widths[2:],
                                                                                      strict=True))
        selector = f"mlp[hidden={'-'.join(map(str, hidden))},time=input]"
        assert sum(p.numel() for p in build_field(selector, dim).parameters()) == expected


def test_selu_derivative_is_autograds() -> None:
    from cnfbench_plugins.fields import activation_derivative

    selu = torch.nn.SELU()
    for dtype, tolerance in ((torch.float32, 1e-6), (F64, 1e-15)):
        pre = torch.cat([torch.linspace(-6, 6, 101, dtype=dtype), torch.zeros(1, dtype=dtype)]).requires_grad_()
        out = selu(pre)
        (grad,) = torch.autograd.grad(out.sum(), pre)
        slope = activation_derivative(selu, pre.detach(), out.detach())
        assert slope is not None
        torch.testing.assert_close(slope, grad, rtol=tolerance, atol=0)


def jacobian_trace(field: VectorField, t: Tensor, z: Tensor) -> Tensor:
    """Each row's exact divergence by autograd (rows are independent, so the batch Jacobian is block diagonal)."""
    jacobian = torch.autograd.functional.jacobian(lambda x: field(t, x).sum(0), z)  # [D, B, D]
    return torch.stack([jacobian[:, row, :].diagonal().sum() for row in range(z.shape[0])])


@pytest.mark.parametrize("selector", ["mlp[hidden=3x16,activation=selu,time=input]", "mlp[hidden=8,time=input]",
                                      "mlp[hidden=6-5,activation=softplus,time=input]",
                                      "concatsquash[hidden=3x16,activation=selu]", "mlp[hidden=3x16,activation=selu]"])
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_fused_divergence_is_the_jacobians_trace(selector: str, dim: int) -> None:
    torch.manual_seed(dim)
    field = build_field(selector, dim).to(F64)
    z = 2.0 * torch.randn(9, dim, dtype=F64)  # both branches of selu
    for t in (torch.tensor(0.35, dtype=F64), torch.rand(9, dtype=F64)):  # one time, and one time per row
        fused = field.forward_with_divergence(t, z)
        assert fused is not None
        dz, div = fused
        assert torch.equal(dz, field(t, z)) and div.shape == (9,)
        torch.testing.assert_close(div, jacobian_trace(field, t, z), rtol=0, atol=1e-6)


def test_mlp_time_input_and_selu_pass_the_conformance_kit() -> None:
    from cnfbench_plugins.fields import ConcatSquashMLP, TimeConcatMLP

    from cnfbench.testing import check_field

    check_field(TimeConcatMLP, {"hidden": (16, 16), "activation": "selu", "time": "input"})
    check_field(ConcatSquashMLP, {"hidden": (16, 16), "activation": "selu"})


def test_bad_time_values_are_rejected() -> None:
    from cnfbench_plugins.fields import ConcatSquashMLP, TimeConcatMLP

    with pytest.raises(ParamError) as info:
        REGISTRY.resolve("field", parse_selection("mlp[time=output]"))
    message = str(info.value)
    assert "\n" not in message and "'time'" in message and "every_layer, input" in message
    with pytest.raises(ParamError, match="unknown parameter 'time'"):
        REGISTRY.resolve("field", parse_selection("concatsquash[time=input]"))
    with pytest.raises(ValueError, match="time must be one of"):
        TimeConcatMLP(2, time="output")
    with pytest.raises(TypeError, match="unexpected parameters time"):
        ConcatSquashMLP(2, time="input")
