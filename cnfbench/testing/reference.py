"""The reference kit: small, exact components that cnfbench components are tested against.

The conformance kit runs every component against these, and cnfbench's own
tests import them rather than writing them again. Each is typed and seeded;
fields and trace estimators are real contract classes, the ODEs are dynamics
modules (``forward(t, state)`` on a tuple) with their closed forms:

* :class:`MLPField` — a seeded tanh MLP on ``[z, t]``: a generic smooth field
  with a non-trivial Jacobian (offers no fused divergence).
* :class:`MatrixField` — ``v(t, z) = z A^T``, divergence ``tr A``
  (:meth:`MatrixField.exact_divergence`); a fixed probe ``e`` gives
  ``e^T A e``; :func:`linear_flow_log_prob` is the log-density its flow defines.
* :class:`ConstantField` — a drift that ignores ``z``: divergence 0.
* :func:`exact_trace_loop` and :class:`ExactLoopTrace` — the exact divergence
  by one backward pass per dimension; :func:`jacobian_trace` — the trace of
  the full Jacobian, an independent second way.
* :class:`RK4` — classic fixed-step Runge-Kutta 4 with ``steps`` and
  ``expected_nfe()``.
* :class:`LinearODE` — ``dz/dt = A z`` with its closed form by ``matrix_exp``;
  :class:`LearnableLinearODE` — ``dz/dt = W z + b`` with learnable ``W, b``;
  :class:`TimeDependentODE` — a linear ODE whose rate depends on ``t``, with
  its closed form.

Importing this module imports torch (``import cnfbench.testing`` does not).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from cnfbench.contracts import Dynamics, FieldFunction, Solver, TraceEstimator, VectorField, exact_divergence_loop
from cnfbench.params import Param

__all__ = [
    "RK4",
    "ConstantField",
    "CountingODE",
    "ExactLoopTrace",
    "LearnableLinearODE",
    "LinearODE",
    "MLPField",
    "MatrixField",
    "TimeDependentODE",
    "exact_trace_loop",
    "jacobian_trace",
    "linear_flow_log_prob",
]

# --------------------------------------------------------------------------- fields


class MLPField(VectorField):
    """``v(t, z) = tanh([z, t] W1^T + b1) W2^T + b2``, drawn from ``seed``.

    The weights are drawn in float64 and then cast to ``dtype``, so the same
    ``seed`` gives the same field in any dtype. Every parameter reaches
    ``dz``; ``b2`` does not reach the divergence.
    """

    name = "reference-mlp"
    description = "seeded tanh MLP on [z, t] (cnfbench.testing.reference)"

    def __init__(self, dim: int, seed: int = 0, hidden: int = 16, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(dim, seed=seed, hidden=hidden)
        gen = torch.Generator().manual_seed(seed)

        def draw(*shape: int, scale: float) -> nn.Parameter:
            return nn.Parameter((scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype))

        self.w1 = draw(hidden, dim + 1, scale=(dim + 1) ** -0.5)
        self.b1 = draw(hidden, scale=0.1)
        self.w2 = draw(dim, hidden, scale=hidden**-0.5)
        self.b2 = draw(dim, scale=0.1)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = torch.cat([z, t.reshape(1, 1).to(z.dtype).expand(z.shape[0], 1)], dim=1)
        return torch.tanh(h @ self.w1.T + self.b1) @ self.w2.T + self.b2


class MatrixField(VectorField):
    """``v(t, z) = z A^T`` (``A z`` per row): autonomous, linear, divergence ``tr A`` everywhere.

    ``A`` is a copy of ``matrix``, kept as a buffer or, with
    ``learnable=True``, as the parameter ``matrix``.
    """

    name = "reference-matrix"
    description = "v(t, z) = A z (cnfbench.testing.reference)"
    matrix: Tensor

    def __init__(self, matrix: Tensor, learnable: bool = False) -> None:
        super().__init__(matrix.shape[0])
        if learnable:
            self.matrix = nn.Parameter(matrix.clone())
        else:
            self.register_buffer("matrix", matrix.clone())

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return z @ self.matrix.T

    def exact_divergence(self, z: Tensor) -> Tensor:
        """``tr A`` for every row of ``z``, ``[B]``."""
        return torch.trace(self.matrix).to(z.dtype).expand(z.shape[0])


def linear_flow_log_prob(matrix: Tensor, x: Tensor) -> Tensor:
    """``log p(x)`` per row, in float64, of the CNF ``v(t, z) = A z`` carrying ``N(0, I)`` at t=0 to t=1.

    ``x = e^A z0``, so ``x ~ N(0, e^A e^{A^T})``: the closed form every
    log-likelihood of a :class:`MatrixField` can be checked against. It is
    differentiable in ``matrix``.
    """
    from torch.distributions import MultivariateNormal

    expm = torch.linalg.matrix_exp(matrix.to(torch.float64))
    zeros = torch.zeros(matrix.shape[0], dtype=torch.float64, device=matrix.device)
    return MultivariateNormal(zeros, covariance_matrix=expm @ expm.T).log_prob(x.to(torch.float64))


class ConstantField(VectorField):
    """``v(t, z) = c (1 + t)`` with ``c = linspace(-1, 1, dim)``: ignores ``z``, so its divergence is 0.

    With ``learnable=False`` ``c`` is frozen and the output has no autograd
    graph at all; with ``learnable=True`` it depends on a parameter but
    still not on ``z``.
    """

    name = "reference-constant"
    description = "a drift that ignores z (cnfbench.testing.reference)"

    def __init__(self, dim: int, learnable: bool = True, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(dim, learnable=learnable)
        self.drift = nn.Parameter(torch.linspace(-1.0, 1.0, dim, dtype=dtype), requires_grad=learnable)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.drift.expand(z.shape[0], -1) * (1.0 + t.to(z.dtype))


# --------------------------------------------------------------------------- exact divergence


exact_trace_loop = exact_divergence_loop
"""``(field(t, z), exact divergence [B])`` by one vector-Jacobian product per dimension (the contract's
definition, :func:`cnfbench.contracts.exact_divergence_loop`)."""


def jacobian_trace(field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool = False) -> Tensor:
    """The trace of each row's Jacobian ``d field(t, z)_b / d z_b``, ``[B]``, from the full batch Jacobian.

    Independent of :func:`exact_trace_loop`; costs ``B x D`` backward passes,
    so keep ``z`` small. With ``create_graph`` the result is differentiable in
    the field's parameters (and in ``z`` when ``z`` requires grad).
    """
    jac = torch.autograd.functional.jacobian(lambda zz: field(t, zz), z, create_graph=create_graph)
    return torch.einsum("bibi->b", jac)


class ExactLoopTrace(TraceEstimator):
    """The exact divergence by :func:`exact_trace_loop`: the conformance kit's reference trace estimator."""

    name = "reference-exact-loop"
    description = "exact divergence, one backward pass per dimension (cnfbench.testing.reference)"
    stochastic = False

    def __call__(self, field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        return exact_trace_loop(field, t, z, create_graph)


# --------------------------------------------------------------------------- solver


class RK4(Solver):
    """Classic Runge-Kutta 4 with ``steps`` equal steps over a tuple state: four evaluations a step."""

    name = "reference-rk4"
    description = "classic fixed-step Runge-Kutta 4, order 4 (cnfbench.testing.reference)"
    params = (Param("steps", "int", 10, "equal steps from t0 to t1", minimum=1),)
    nfe_per_step = 4
    order = 4

    def __init__(self, steps: int = 10) -> None:
        super().__init__(steps=steps)
        self.steps = steps

    def expected_nfe(self) -> int:
        return 4 * self.steps

    def integrate(self, dynamics: Dynamics, state: tuple[Tensor, ...], t0: float, t1: float) -> tuple[Tensor, ...]:
        h = (t1 - t0) / self.steps
        like = state[0]

        def at(time: float) -> Tensor:
            return torch.tensor(time, dtype=like.dtype, device=like.device)

        def shift(y: tuple[Tensor, ...], k: tuple[Tensor, ...], scale: float) -> tuple[Tensor, ...]:
            return tuple(a + scale * b for a, b in zip(y, k, strict=True))

        y = tuple(state)
        for step in range(self.steps):
            t = t0 + step * h
            k1 = dynamics(at(t), y)
            k2 = dynamics(at(t + h / 2), shift(y, k1, h / 2))
            k3 = dynamics(at(t + h / 2), shift(y, k2, h / 2))
            k4 = dynamics(at(t + h), shift(y, k3, h))
            y = tuple(a + h / 6 * (b1 + 2 * b2 + 2 * b3 + b4)
                      for a, b1, b2, b3, b4 in zip(y, k1, k2, k3, k4, strict=True))
        return y


# --------------------------------------------------------------------------- ODEs with closed forms


class CountingODE(nn.Module):
    """An ODE module that counts its evaluations (``calls``) and those whose ``t`` was ``[B]`` (``row_time_calls``:
    one time per row, which only a per-sample solver may pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.row_time_calls = 0

    def count(self, t: Tensor) -> None:
        """Count one evaluation at ``t``."""
        self.calls += 1
        self.row_time_calls += t.dim() != 0


class LinearODE(CountingODE):
    """``dz/dt = z A^T`` on the state ``(z,)``, or ``(z, a)`` with also ``da/dt = -tr A``.

    ``a`` is what a CNF integrates for the log-density of ``v = A z``.
    ``calls`` counts the evaluations; :meth:`solution` is the closed form.
    """

    matrix: Tensor

    def __init__(self, matrix: Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix.clone())

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.count(t)
        z, *rest = state
        rate = -float(torch.trace(self.matrix))
        return (z @ self.matrix.T, *(torch.full_like(a, rate) for a in rest))

    def solution(self, state: tuple[Tensor, ...], t0: float, t1: float) -> tuple[Tensor, ...]:
        """The exact state at ``t1`` from ``state`` at ``t0``: ``z e^{A (t1 - t0)}^T`` and ``a - tr A (t1 - t0)``."""
        z, *rest = state
        elapsed = t1 - t0
        shift = float(torch.trace(self.matrix)) * elapsed
        return (z @ torch.linalg.matrix_exp(self.matrix * elapsed).T, *(a - shift for a in rest))


class LearnableLinearODE(CountingODE):
    """``dz/dt = z W^T + b`` on the state ``(z,)``, with learnable ``weight`` (W) and ``bias`` (b); counts ``calls``."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.count(t)
        return (state[0] @ self.weight.T + self.bias,)


class TimeDependentODE(CountingODE):
    """``dz/dt = (cos(3t)/2 + (1+t) J) z``, ``dc/dt = 1``, ``ds/dt = t`` on the state ``(z, c, s)``, ``z`` ``[B, 2]``.

    ``J = [[0, -1], [1, 0]]``: ``z`` grows at ``cos(3t)/2`` and turns at
    ``1 + t`` radians per unit time, so a solver that evaluates the dynamics
    at the wrong times or stops short of ``t1`` misses :meth:`solution`.
    ``calls`` counts the evaluations; ``t`` may be 0-dim or ``[B]`` (a per-sample solver).
    """

    formula: ClassVar[str] = "dz/dt = (cos(3t)/2 + (1+t) J) z"

    def __init__(self) -> None:
        super().__init__()

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.count(t)
        z, c, s = state
        turned = torch.stack((-z[:, 1], z[:, 0]), dim=1)
        column = t.reshape(-1, 1)  # t is 0-dim, or [B] under a per-sample solver
        return torch.cos(3 * column) / 2 * z + (1 + column) * turned, torch.ones_like(c), t * torch.ones_like(s)

    def solution(self, state: tuple[Tensor, ...], t0: float, t1: float) -> tuple[Tensor, ...]:
        """The exact state at ``t1``: ``z`` grown by ``exp(∫cos(3t)/2)`` and turned by ``∫(1+t)``; ``c`` and ``s``
        integrated."""
        z, c, s = state
        growth = math.exp((math.sin(3 * t1) - math.sin(3 * t0)) / 6)
        angle = (t1 - t0) + (t1**2 - t0**2) / 2
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=z.dtype, device=z.device)
        return growth * z @ rotation.T, c + (t1 - t0), s + (t1**2 - t0**2) / 2
