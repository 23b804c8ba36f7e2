"""A vector field whose exact divergence costs about one extra forward pass: ``hollow``.

After "Neural Networks with Cheap Differential Operators" (Chen & Duvenaud, 2019): every output
``v_i(t, z) = τ([z_i, h_i, t])`` is one shared transformer MLP ``τ`` applied to its own coordinate ``z_i`` and a
*hollow* conditioner ``h_i`` that does not depend on ``z_i``. Here ``h_i = c([s − φ(z_i), e_i, t])``: ``φ`` embeds
each coordinate (``tanh`` of an affine map), ``s = Σ_j φ(z_j)`` sums them, so ``s − φ(z_i)`` sees every coordinate
but ``z_i``; ``e_i`` is a learned embedding of the dimension, and ``c`` a small MLP. Because ``∂h_i/∂z_i = 0``, the
Jacobian's diagonal is ``∂τ/∂z_i`` at fixed ``h_i``, and the exact divergence ``Σ_i ∂τ/∂z_i`` comes from propagating
one tangent (the ``z_i`` input column) forward through ``τ``'s layers alongside its values: the fused
``forward_with_divergence`` of the ``exact`` trace costs about two forward passes whatever the dimension,
against ``D`` vector-Jacobian products for a dense field. The price is expressiveness: each ``v_i`` sees the
other coordinates only through the summed embedding.
"""

from __future__ import annotations

import torch
from cnfbench_plugins.fields import ACTIVATIONS, activation_derivative
from torch import Tensor, nn

from cnfbench.contracts import VectorField
from cnfbench.params import Param


class HollowField(VectorField):
    name = "hollow"
    description = "hollow conditioner + dimension-wise transformer: exact divergence in ~2 forward passes (any D)"
    params = (
        Param("hidden", "ints", (64, 64), "hidden widths of the transformer MLP τ, e.g. 64-64", minimum=1,
              maximum=65536),
        Param("embed", "int", 32, "width of the coordinate embedding φ and of the conditioner output h", minimum=1,
              maximum=4096),
        Param("activation", "str", "tanh", "activation of both MLPs", choices=tuple(ACTIVATIONS)),
    )
    per_row_time = True

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 64), embed: int = 32,
                 activation: str = "tanh") -> None:
        super().__init__(dim, hidden=hidden, embed=embed, activation=activation)
        self.embed = embed
        # with one dimension there is nothing for the conditioner to see: no embedding (and no dead parameters)
        self.embed_scale = nn.Parameter(torch.randn(embed) * 0.5) if dim > 1 else None
        self.embed_shift = nn.Parameter(torch.randn(embed) * 0.1) if dim > 1 else None
        self.dimension = nn.Parameter(torch.randn(dim, 8) * 0.1)
        self.conditioner = nn.Sequential(nn.Linear(embed + 8 + 1, embed), ACTIVATIONS[activation](),
                                         nn.Linear(embed, embed))
        widths = [1 + embed + 1, *hidden, 1]
        self.transformer = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.activation = ACTIVATIONS[activation]()

    def _inputs(self, t: Tensor, z: Tensor) -> Tensor:
        """``[z_i, h_i, t]`` per row and dimension, ``[B, D, 1 + embed + 1]``."""
        batch, dim = z.shape
        if self.embed_scale is None or self.embed_shift is None:
            hollow = z.new_zeros(batch, dim, self.embed)
        else:
            features = torch.tanh(z.unsqueeze(-1) * self.embed_scale + self.embed_shift)  # φ(z_j): [B, D, E]
            hollow = features.sum(dim=1, keepdim=True) - features  # Σ_{j≠i} φ(z_j)
        time = t.to(z.dtype).reshape(-1, 1, 1).expand(batch, dim, 1)
        dimension = self.dimension.to(z.dtype).unsqueeze(0).expand(batch, dim, -1)
        h = self.conditioner(torch.cat([hollow, dimension, time], dim=-1))
        return torch.cat([z.unsqueeze(-1), h, time], dim=-1)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        x = self._inputs(t, z)
        last = len(self.transformer) - 1
        for index, layer in enumerate(self.transformer):
            x = layer(x)
            if index < last:
                x = self.activation(x)
        return x.squeeze(-1)

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(forward(t, z), Σ_i ∂v_i/∂z_i)``: the tangent of the ``z_i`` input pushed through ``τ``."""
        if type(self).forward is not HollowField.forward:
            return None
        x = self._inputs(t, z)
        tangent = None  # d x / d z_i, [B, D, width]; the input's is the unit vector of its first column
        last = len(self.transformer) - 1
        for index, layer in enumerate(self.transformer):
            pre = layer(x)
            tangent = layer.weight[:, 0] if tangent is None else tangent @ layer.weight.T
            if index < last:
                x = self.activation(pre)
                slope = activation_derivative(self.activation, pre, x)
                if slope is None:
                    return None
                tangent = tangent * slope
            else:
                x = pre
        return x.squeeze(-1), tangent.squeeze(-1).sum(dim=1)
