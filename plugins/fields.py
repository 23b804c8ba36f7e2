"""Built-in vector fields: FFJORD's concat-squash MLP and a time-concatenated MLP.

``concatsquash`` follows FFJORD's ConcatSquashLinear: every layer computes
``(W x + b) * sigmoid(a t + c) + d t``. ``mlp`` feeds ``[z, t]`` to every layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from cnfbench.contracts import VectorField
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "swish": nn.SiLU,
}

FIELD_PARAMS = (
    Param("hidden", "ints", (64, 64, 64), "hidden widths, e.g. 64-64-64 or 3x64", minimum=1),
    Param("activation", "str", "tanh", "nonlinearity between layers", choices=tuple(ACTIVATIONS)),
)


class ConcatSquashLinear(nn.Module):
    """FFJORD's time-conditioned linear layer ``(W x + b) * sigmoid(a t + c) + d t``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)
        self.hyper_bias = nn.Linear(1, dim_out, bias=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        t_column = t.reshape(1, 1).to(x.dtype)
        return self.linear(x) * torch.sigmoid(self.hyper_gate(t_column)) + self.hyper_bias(t_column)


class ConcatSquashMLP(VectorField):
    name = "concatsquash"
    description = "FFJORD's concat-squash MLP (time gates and shifts every layer)"
    params = FIELD_PARAMS

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 64, 64), activation: str = "tanh") -> None:
        super().__init__(dim, hidden=hidden, activation=activation)
        widths = [dim, *hidden, dim]
        self.layers = nn.ModuleList(ConcatSquashLinear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = z
        for index, layer in enumerate(self.layers):
            h = layer(t, h)
            if index < len(self.layers) - 1:
                h = self.activation(h)
        return h


class TimeConcatMLP(VectorField):
    name = "mlp"
    description = "MLP whose every layer sees [h, t] (time concatenated)"
    params = FIELD_PARAMS

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 64, 64), activation: str = "tanh") -> None:
        super().__init__(dim, hidden=hidden, activation=activation)
        widths = [dim, *hidden, dim]
        self.layers = nn.ModuleList(nn.Linear(a + 1, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = z
        t_column = t.reshape(1, 1).to(z.dtype).expand(z.shape[0], 1)
        for index, layer in enumerate(self.layers):
            h = layer(torch.cat([h, t_column], dim=1))
            if index < len(self.layers) - 1:
                h = self.activation(h)
        return h


@hookimpl
def cnfbench_fields() -> list[type[VectorField]]:
    return [ConcatSquashMLP, TimeConcatMLP]
