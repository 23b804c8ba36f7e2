"""Built-in trace estimators: the exact divergence and Hutchinson's stochastic estimate.

``exact`` differentiates each output dimension once (D vector-Jacobian
products). ``hutchinson`` uses one probe ``e`` per solve, drawn in
:meth:`begin_solve` and reused at every step as FFJORD does, and returns
``e^T (dv/dz) e``, an unbiased estimate of the trace.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cnfbench.contracts import FieldFunction, TraceEstimator
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param


class ExactTrace(TraceEstimator):
    name = "exact"
    description = "exact divergence: one vector-Jacobian product per dimension"

    def __call__(self, field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        dz = field(t, z)
        div = torch.zeros(z.shape[0], dtype=dz.dtype, device=dz.device)
        if not dz.requires_grad:  # a field that does not depend on z (or on anything) has zero divergence
            return dz, div
        for i in range(z.shape[1]):
            (grad_i,) = torch.autograd.grad(dz[:, i].sum(), z, create_graph=create_graph, retain_graph=True,
                                            allow_unused=True)
            if grad_i is not None:
                div = div + grad_i[:, i]
        return dz, div


class HutchinsonTrace(TraceEstimator):
    name = "hutchinson"
    description = "Hutchinson estimator e^T J e, one probe per solve (unbiased)"
    stochastic = True
    params = (Param("noise", "str", "gaussian", "probe distribution", choices=("gaussian", "rademacher")),)

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self._probe: Tensor | None = None

    def begin_solve(self, z: Tensor, generator: torch.Generator | None) -> None:
        probe = torch.randn(z.shape, generator=generator, dtype=z.dtype, device="cpu")
        if self.config["noise"] == "rademacher":
            probe = torch.sign(probe) + (probe == 0).to(probe.dtype)
        self._probe = probe.to(z.device)

    def __call__(self, field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        if self._probe is None or self._probe.shape != z.shape:
            raise RuntimeError("hutchinson: begin_solve() must be called with the solve's initial state first")
        dz = field(t, z)
        if not dz.requires_grad:
            return dz, torch.zeros(z.shape[0], dtype=dz.dtype, device=dz.device)
        (vjp,) = torch.autograd.grad(dz, z, grad_outputs=self._probe, create_graph=create_graph, allow_unused=True)
        if vjp is None:
            return dz, torch.zeros(z.shape[0], dtype=dz.dtype, device=dz.device)
        return dz, (vjp * self._probe).sum(dim=1)


@hookimpl
def cnfbench_traces() -> list[type[TraceEstimator]]:
    return [ExactTrace, HutchinsonTrace]
