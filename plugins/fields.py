"""Built-in vector fields: FFJORD's concat-squash MLP and a time-concatenated MLP.

``concatsquash`` follows FFJORD's ConcatSquashLinear: every layer computes
``(W x + b) * sigmoid(a t + c) + d t``. ``mlp`` feeds ``[z, t]`` to every layer.

Both also implement the optional ``forward_with_divergence(t, z)`` protocol of
the ``exact`` trace estimator (see ``plugins/traces.py``): one pass returns
``dz/dt`` (bit-identical to ``forward``) and the exact divergence, by
propagating the transposed Jacobian ``d h / d z`` ``[B, D, width]`` forward
through the layers as batched matrix products and keeping only the trace of
the last one. It declines (returns ``None``) when a subclass overrides
``forward`` or the activation's derivative is unknown, so the trace falls back
to its generic method.
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


def activation_derivative(activation: nn.Module, pre: Tensor, out: Tensor) -> Tensor | None:
    """Elementwise derivative of ``activation`` at ``pre`` (``out = activation(pre)``); ``None`` if unknown.

    Each formula matches the derivative PyTorch's autograd uses for that module.
    """
    kind = type(activation)
    if kind is nn.Tanh:
        return 1 - out * out
    if kind is nn.Softplus:
        scaled = pre * activation.beta
        return torch.where(scaled > activation.threshold, torch.ones_like(pre), torch.sigmoid(scaled))
    if kind is nn.ELU:
        return torch.where(pre > 0, torch.ones_like(pre), out + activation.alpha)
    if kind is nn.SiLU:
        gate = torch.sigmoid(pre)
        return gate * (1 + pre * (1 - gate))
    return None


def tangent_through_linear(tangent: Tensor | None, weight: Tensor) -> Tensor:
    """``d pre / d z`` (transposed, ``[B or 1, D, out]``) for ``pre = h weight^T + ...`` given ``d h / d z``.

    ``tangent`` is ``None`` for ``h = z`` (the identity).
    """
    if tangent is None:
        return weight.T.unsqueeze(0)
    return torch.matmul(tangent, weight.T)


def trace_through_linear(tangent: Tensor | None, weight: Tensor, batch: int) -> Tensor:
    """``tr(d out / d z)`` per row for a square last layer ``out = h weight^T + ...`` given ``d h / d z``."""
    if tangent is None:
        return weight.diagonal().sum().expand(batch)
    flat = tangent.reshape(tangent.shape[0], -1) @ weight.reshape(-1)
    return flat.expand(batch)

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

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(forward(t, z), exact divergence [B])`` in one pass; ``None`` when this class cannot vouch for it."""
        if type(self).forward is not ConcatSquashMLP.forward:
            return None
        h, tangent, last = z, None, len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            pre = layer(t, h)
            gate = torch.sigmoid(layer.hyper_gate(t.reshape(1, 1).to(h.dtype))).reshape(-1, 1)
            weight = layer.linear.weight * gate  # d pre / d h = diag(gate) W
            if index == last:
                return pre, trace_through_linear(tangent, weight, z.shape[0])
            h = self.activation(pre)
            slope = activation_derivative(self.activation, pre, h)
            if slope is None:
                return None
            tangent = tangent_through_linear(tangent, weight) * slope.unsqueeze(1)
        raise AssertionError("unreachable: the last layer returns")


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

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(forward(t, z), exact divergence [B])`` in one pass; ``None`` when this class cannot vouch for it."""
        if type(self).forward is not TimeConcatMLP.forward:
            return None
        h, tangent, last = z, None, len(self.layers) - 1
        t_column = t.reshape(1, 1).to(z.dtype).expand(z.shape[0], 1)
        for index, layer in enumerate(self.layers):
            pre = layer(torch.cat([h, t_column], dim=1))
            weight = layer.weight[:, :-1]  # the time column does not depend on z
            if index == last:
                return pre, trace_through_linear(tangent, weight, z.shape[0])
            h = self.activation(pre)
            slope = activation_derivative(self.activation, pre, h)
            if slope is None:
                return None
            tangent = tangent_through_linear(tangent, weight) * slope.unsqueeze(1)
        raise AssertionError("unreachable: the last layer returns")


@hookimpl
def cnfbench_fields() -> list[type[VectorField]]:
    return [ConcatSquashMLP, TimeConcatMLP]
