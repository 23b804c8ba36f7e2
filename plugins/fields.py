"""Built-in vector fields: FFJORD's concat-squash MLP and a time-concatenated MLP.

``concatsquash`` follows FFJORD's ConcatSquashLinear: every layer computes
``(W x + b) * sigmoid(a t + c) + d t``. ``mlp`` feeds ``[h, t]`` to every layer
(``time=every_layer``), or ``[z, t]`` to the first layer only (``time=input``:
with ``hidden=3x64,activation=selu`` that is the ``VelocityNet`` of Tong et al.'s
conditional flow matching code, ``runner/src/models/components/simple_mlp.py``).
Both take one time per row (``per_row_time``), as flow-matching objectives use.

Both also implement the optional ``forward_with_divergence(t, z)`` protocol of
the ``exact`` trace estimator (see ``plugins/traces.py``): one pass returns
``dz/dt`` (bit-identical to ``forward``) and the exact divergence, by
propagating the transposed Jacobian ``d h / d z`` ``[B, D, width]`` forward
through the layers as batched matrix products, a chunk of columns at a time,
and keeping only the trace of the last one; with one time per row (a
per-sample solver) each row's time gates scale its own Jacobian. It declines (returns ``None``)
when a subclass overrides ``forward`` or the activation's derivative is
unknown, so the trace falls back to its generic method.
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
    "selu": nn.SELU,
}

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
"""The constants of :class:`torch.nn.SELU` (``selu(x) = scale * (max(0, x) + min(0, alpha * (exp(x) - 1)))``)."""


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
    if kind is nn.SELU:  # autograd's elu_backward: scale for x > 0, scale * alpha * exp(x) for x <= 0
        return torch.where(pre > 0, torch.full_like(pre, SELU_SCALE), (SELU_SCALE * SELU_ALPHA) * pre.exp())
    return None


TANGENT_ELEMENTS = 1 << 17
"""Elements per propagated Jacobian block: the D columns are processed in chunks of at most this size.

Measured (concatsquash 3x64, batch 256, float32, 1 CPU thread, training pass): propagating all D
columns at once makes 1-4 MB temporaries that glibc's allocator trims and re-grows on every call
(about 1,060, 3,900 and 8,100 page faults per evaluation at D=16, 32, 64); chunks of 2^17 elements
(8 columns here) stay in the heap and the cache (290, 0, 0 page faults) and were 1.25x, 1.73x and
1.85x faster than one block.
"""


def trace_by_forward_jacobian(weights: list[Tensor], slopes: list[Tensor], batch: int,
                              last_scale: Tensor | None = None) -> Tensor:
    """``tr(diag(g) W_L diag(s_{L-1}) W_{L-1} ... diag(s_1) W_1)`` per batch row, ``[batch]``.

    ``weights[l]`` is ``d pre_l / d h_{l-1}`` up to a per-row scale of its rows (``[out, in]``, shared by
    the batch; ``h_0 = z``, the last one square), ``slopes[l]`` the activation's derivative at ``pre_l``
    times that layer's per-row scale (``[batch, out]``, one fewer than the weights) and ``last_scale`` the
    last layer's per-row scale ``g`` (``[batch, D]``; ``None``: 1). The transposed Jacobian ``d h_l / d z``
    is propagated forward as batched matrix products, a chunk of its D columns at a time (see
    :data:`TANGENT_ELEMENTS`), and only the trace of the last layer's is formed.
    """
    first, last = weights[0], weights[-1]
    if len(weights) == 1:
        if last_scale is not None:
            return (last_scale * first.diagonal()).sum(dim=1)
        return first.diagonal().sum().expand(batch)
    dim = first.shape[1]
    widest = max(weight.shape[0] for weight in weights[:-1])
    step = max(1, TANGENT_ELEMENTS // (batch * widest))
    total: Tensor | None = None
    for start in range(0, dim, step):
        columns = slice(start, min(dim, start + step))
        tangent = first[:, columns].T.unsqueeze(0) * slopes[0].unsqueeze(1)  # [batch, chunk, width]
        for weight, slope in zip(weights[1:-1], slopes[1:], strict=True):
            tangent = torch.matmul(tangent, weight.T) * slope.unsqueeze(1)
        if last_scale is None:
            part = tangent.reshape(batch, -1) @ last[columns].reshape(-1)
        else:
            part = ((tangent * last[columns]).sum(dim=2) * last_scale[:, columns]).sum(dim=1)
        total = part if total is None else total + part
    assert total is not None
    return total


FIELD_PARAMS = (
    Param("hidden", "ints", (64, 64, 64), "hidden widths, e.g. 64-64-64 or 3x64", minimum=1,
          maximum=65536),
    Param("activation", "str", "tanh", "nonlinearity between layers", choices=tuple(ACTIVATIONS)),
)


class ConcatSquashLinear(nn.Module):
    """FFJORD's time-conditioned linear layer ``(W x + b) * sigmoid(a t + c) + d t``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)
        self.hyper_bias = nn.Linear(1, dim_out, bias=False)

    def gate_and_shift(self, t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``sigmoid(a t + c)`` and ``d t``, each ``[1, out]`` (``[B, out]`` for one time per row)."""
        t_column = t.reshape(-1, 1).to(dtype)
        return torch.sigmoid(self.hyper_gate(t_column)), self.hyper_bias(t_column)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        gate, shift = self.gate_and_shift(t, x.dtype)
        return self.linear(x) * gate + shift


class LayeredMLP(VectorField):
    """The body both built-in fields share: layers with an activation between them.

    A subclass says how one layer maps ``(t, h)`` to its pre-activation and
    what that layer's Jacobian with respect to ``h`` is; ``forward`` and the
    fused ``forward_with_divergence`` are written once, here.
    """

    params = FIELD_PARAMS
    per_row_time = True
    layers: nn.ModuleList

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 64, 64), activation: str = "tanh",
                 **params: object) -> None:
        """``params``: a subclass's own declared parameters, in ``self.config`` before the layers are made."""
        unknown = sorted(set(params) - {param.name for param in self.params})
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected parameters {', '.join(unknown)}")
        super().__init__(dim, hidden=hidden, activation=activation, **params)
        widths = [dim, *hidden, dim]
        self.layers = nn.ModuleList(
            self.make_layer(index, a, b) for index, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))
        )
        self.activation = ACTIVATIONS[activation]()

    def make_layer(self, index: int, dim_in: int, dim_out: int) -> nn.Module:
        """Layer ``index`` (0 first), mapping width ``dim_in`` to ``dim_out``."""
        raise NotImplementedError

    def layer_pre(self, layer: nn.Module, t: Tensor, h: Tensor) -> Tensor:
        """The layer's pre-activation at ``(t, h)``."""
        raise NotImplementedError

    def layer_pre_and_weight(self, layer: nn.Module, t: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The pre-activation, ``W`` (``[out, in]``, shared by the batch) and ``g`` (``[B, out]``, or ``None`` for
        1) with ``d pre / d h = diag(g) W`` in each row (one time per row gives each row its own ``g``)."""
        raise NotImplementedError

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = z
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            h = self.layer_pre(layer, t, h)
            if index < last:
                h = self.activation(h)
        return h

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(forward(t, z), exact divergence [B])`` in one pass; ``None`` when this class cannot vouch for it."""
        if type(self).forward is not LayeredMLP.forward:
            return None  # a subclass's own forward
        h, weights, slopes = z, [], []
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            pre, weight, scale = self.layer_pre_and_weight(layer, t, h)
            weights.append(weight)
            if index < last:
                h = self.activation(pre)
                slope = activation_derivative(self.activation, pre, h)
                if slope is None:
                    return None
                slopes.append(slope if scale is None else slope * scale)
        return pre, trace_by_forward_jacobian(weights, slopes, z.shape[0], scale)


class ConcatSquashMLP(LayeredMLP):
    name = "concatsquash"
    description = "FFJORD's concat-squash MLP (time gates and shifts every layer)"

    def make_layer(self, index: int, dim_in: int, dim_out: int) -> nn.Module:
        return ConcatSquashLinear(dim_in, dim_out)

    def layer_pre(self, layer: nn.Module, t: Tensor, h: Tensor) -> Tensor:
        return layer(t, h)

    def layer_pre_and_weight(self, layer: nn.Module, t: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        gate, shift = layer.gate_and_shift(t, h.dtype)
        pre = layer.linear(h) * gate + shift
        if t.numel() == 1:  # one gate for the batch: folded into the shared weight, diag(gate) W
            return pre, layer.linear.weight * gate.reshape(-1, 1), None
        return pre, layer.linear.weight, gate  # one gate per row


TIME_PLACES = ("every_layer", "input")


class TimeConcatMLP(LayeredMLP):
    """Linear layers on ``[h, t]`` (every layer, ``time=every_layer``) or on ``[z, t]`` then ``h`` (``time=input``).

    ``time=input`` is ``VelocityNet`` of Tong et al.'s conditional flow matching code (``simple_mlp.py``; it
    concatenates ``[t, x]``, time first, which only permutes the first layer's input columns).
    """

    name = "mlp"
    description = "MLP on [h, t] at every layer (time=every_layer) or [z, t] at the first only (time=input)"
    params = (
        *FIELD_PARAMS,
        Param("time", "str", "every_layer", "where t is concatenated: every_layer, or input (the first layer "
              "only, as Tong et al.'s VelocityNet)", choices=TIME_PLACES, added=True),
    )

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 64, 64), activation: str = "tanh",
                 time: str = "every_layer") -> None:
        if time not in TIME_PLACES:
            raise ValueError(f"time must be one of {', '.join(TIME_PLACES)}, not {time!r}")
        super().__init__(dim, hidden, activation, time=time)

    def make_layer(self, index: int, dim_in: int, dim_out: int) -> nn.Module:
        timed = index == 0 or self.config["time"] == "every_layer"
        return nn.Linear(dim_in + 1 if timed else dim_in, dim_out)

    @staticmethod
    def takes_time(layer: nn.Module, h: Tensor) -> bool:
        """Whether ``layer`` reads ``[h, t]`` (one input more than ``h`` has) rather than ``h``."""
        return layer.in_features == h.shape[-1] + 1

    def layer_pre(self, layer: nn.Module, t: Tensor, h: Tensor) -> Tensor:
        if not self.takes_time(layer, h):
            return layer(h)
        return layer(torch.cat([h, t.reshape(-1, 1).to(h.dtype).expand(h.shape[0], 1)], dim=1))

    def layer_pre_and_weight(self, layer: nn.Module, t: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        if not self.takes_time(layer, h):
            return layer(h), layer.weight, None
        return self.layer_pre(layer, t, h), layer.weight[:, :-1], None  # the time column does not depend on z


@hookimpl
def cnfbench_fields() -> list[type[VectorField]]:
    from cnfbench_plugins.hollow_field import HollowField

    return [ConcatSquashMLP, TimeConcatMLP, HollowField]
