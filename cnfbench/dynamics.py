"""CNF dynamics on the state ``(z, a)`` and the log-likelihood they define, with harness-side NFE counting.

The dynamics are ``dz/dt = v(t, z)`` and ``da/dt = -div v(t, z)``. Solving
from ``t=1`` (``z = x``, ``a = 0``) back to ``t=0`` gives ``z0`` and
``a(0) = ∫_0^1 div v dt``, so ``log p(x) = log N(z0; 0, I) - a(0)``.
Extra integrands ``g(t, z, dz)`` (an objective's regularizers) ride along as
further state ``dr/dt = -g``, so ``r(0) = ∫_0^1 g dt`` comes out of the same
solve; solvers see only a longer tuple of tensors (an adaptive solver's error
control then covers them too, as in RNODE's own code).

Drawing samples needs none of that: :class:`FieldDynamics` is the state ``(z,)``
alone, ``dz/dt = v(t, z)``, so a solve that only moves samples pays for the
field's forward pass and nothing else, and an adaptive solver's error control
watches the samples only.

Every evaluation of the dynamics ticks an :class:`NFECounter`, which keeps
forward, backward (adjoint) and evaluation counts apart and can stop a solve
that exceeds a budget. Solvers therefore never count anything themselves.

A :class:`PhaseTracker` says which phase of a cell is running (building,
the training forward solve or backward pass of iteration k, an evaluation
pass, sampling, ...), so that a failure, a timeout or a dead worker can be
reported where it happened. It is written at phase transitions only, never
per dynamics evaluation.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from cnfbench.contracts import FieldFunction, Integrand, Solver, TraceEstimator, VectorField


class NFEBudgetExceeded(RuntimeError):
    """One solve needed more dynamics evaluations than the cell allows."""


class ContractViolation(RuntimeError):
    """A component returned something its contract forbids; the message names it."""


PHASES = ("forward", "backward", "eval", "ref", "sample")

COMPUTING_METRIC: ContextVar[str | None] = ContextVar("cnfbench_computing_metric", default=None)
"""The metric whose ``compute`` is running (set by the evaluation plan), else None: while set, a dynamics
evaluation is a metric computing an input itself, which the contract forbids (:func:`check_not_in_metric`)."""


def check_not_in_metric(what: str) -> None:
    """Raise :class:`ContractViolation` when a metric's ``compute`` is running: it must declare ``what``."""
    metric = COMPUTING_METRIC.get()
    if metric is not None:
        raise ContractViolation(f"metric {metric} solved the model itself ({what}); declare the input it needs "
                                "(eval, ref, sample, ref_sample, paths, grid, ...) or push points of a declared "
                                "input forward with model.push_forward")


@dataclass
class NFECounter:
    """Counts dynamics evaluations per phase and per solve.

    ``phase`` is set by the harness: ``forward`` during a training solve,
    ``backward`` during its backward pass (non-zero only with an adjoint),
    ``eval``/``ref`` during evaluation with the training/reference solver,
    ``sample`` while drawing samples of the model (t=0 to t=1).
    """

    max_per_solve: int | None = None
    phase: str = "forward"
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    current: int = 0

    def start(self, phase: str) -> None:
        """Begin counting a new solve (or backward pass) in ``phase``."""
        if phase not in PHASES:
            raise ValueError(f"unknown NFE phase {phase!r}")
        self.phase = phase
        self.current = 0

    def tick(self) -> None:
        self.current += 1
        self.totals[self.phase] += 1
        if self.max_per_solve is not None and self.current > self.max_per_solve:
            raise NFEBudgetExceeded(
                f"{self.phase} solve exceeded the NFE budget of {self.max_per_solve} evaluations"
            )


CELL_PHASES = (
    "start", "data", "build_field", "build_objective", "build_solver", "build_trace", "build_eval", "build_optimizer",
    "load_model", "compile", "train_forward", "train_backward", "validate", "eval", "ref", "mass", "mass_ref",
    "sampling", "sample_quality", "model_density", "mass_is", "roundtrip", "entropy", "paths", "metric", "metrics",
    "keep_model", "result",
)
"""The phases of a cell, in the order they run; ``start`` is a cell sent to a worker that has not begun it."""

_PHASE_CODES = {name: code for code, name in enumerate(CELL_PHASES)}
_PHASE_BITS = 8


class SharedInt(Protocol):
    """A machine integer another process can read, such as ``multiprocessing.RawValue("q")``."""

    value: int


class PhaseTracker:
    """The phase of a cell that is running and, while training, its iteration.

    With ``shared`` set, every transition is also written there as one packed
    integer (a single store, so a reader never sees half of a transition):
    the parent of a worker process reads it when it kills or loses the worker.
    """

    __slots__ = ("iteration", "phase", "shared")

    def __init__(self, shared: SharedInt | None = None) -> None:
        self.phase = "start"
        self.iteration = 0
        self.shared = shared

    def enter(self, phase: str, iteration: int = 0) -> None:
        """Record that ``phase`` began (``iteration``: the training iteration it belongs to, else 0)."""
        self.phase = phase
        self.iteration = iteration
        if self.shared is not None:
            self.shared.value = pack_phase(phase, iteration)


def pack_phase(phase: str, iteration: int = 0) -> int:
    """``phase`` and ``iteration`` as one integer, for :class:`PhaseTracker`'s shared value."""
    return iteration << _PHASE_BITS | _PHASE_CODES[phase]


def unpack_phase(packed: int) -> tuple[str, int]:
    """The ``(phase, iteration)`` that :func:`pack_phase` packed (``start`` for an unknown code)."""
    code = packed & ((1 << _PHASE_BITS) - 1)
    return (CELL_PHASES[code] if code < len(CELL_PHASES) else "start"), packed >> _PHASE_BITS


class CNFDynamics(nn.Module):
    """The augmented dynamics ``(z, a, *r) -> (v, -div v, *(-g))`` for one field, trace estimator and the
    integrands ``g`` set for the current solve."""

    def __init__(
        self, field: VectorField, trace: TraceEstimator, counter: NFECounter, differentiable: bool,
        field_label: str = "field", trace_label: str = "trace",
    ) -> None:
        super().__init__()
        self.field = field
        self.trace = trace
        self.counter = counter
        self.differentiable = differentiable
        self.field_label = field_label
        self.trace_label = trace_label
        self._checked = False
        self.integrands: tuple[Integrand, ...] = ()

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if COMPUTING_METRIC.get() is not None:
            check_not_in_metric("a CNF dynamics evaluation")
        self.counter.tick()
        z = state[0]
        field: FieldFunction = self.field
        if t.dim() != 0 and not getattr(self.field, "per_row_time", False):  # a per-sample solver, a 0-dim-t field
            field = self._field_at_row_times
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            # The first evaluation goes through a checking wrapper, so a bad field is named before a trace trips on it.
            dz, div = self.trace(field if self._checked else self._checking(field), t, z, self.differentiable)
        if not self._checked:
            self._check_divergence(z, div)
            self._checked = True
        extra = tuple(-integrand(t, z, dz) for integrand in self.integrands)
        if not self.differentiable:
            dz, div = dz.detach(), div.detach()
            extra = tuple(value.detach() for value in extra)
        return (dz, -div, *extra)

    def _field_at_row_times(self, t: Tensor, z: Tensor) -> Tensor:
        return field_at_row_times(self.field, t, z)[0]

    def _checking(self, field: FieldFunction) -> FieldFunction:
        def checked_field(t: Tensor, z: Tensor) -> Tensor:
            return check_field_output(field(t, z), z, self.field_label)

        return checked_field

    def _check_divergence(self, z: Tensor, div: Tensor) -> None:
        if not isinstance(div, Tensor) or div.shape != z.shape[:1] or div.dtype != z.dtype:
            got = f"{tuple(div.shape)} {div.dtype}" if isinstance(div, Tensor) else type(div).__name__
            raise ContractViolation(
                f"trace {self.trace_label} returned a divergence of {got}; expected ({z.shape[0]},) {z.dtype}"
            )


def check_field_output(dz: object, z: Tensor, field_label: str) -> Tensor:
    """``dz`` when it is a tensor shaped like ``z`` (same dtype and device); else a :class:`ContractViolation`
    naming the field."""
    if not isinstance(dz, Tensor) or dz.shape != z.shape or dz.dtype != z.dtype or dz.device != z.device:
        got = f"{tuple(dz.shape)} {dz.dtype} on {dz.device}" if isinstance(dz, Tensor) else type(dz).__name__
        raise ContractViolation(f"field {field_label} returned dz/dt {got}; expected {tuple(z.shape)} "
                                f"{z.dtype} on {z.device}")
    return dz


class FieldDynamics(nn.Module):
    """The dynamics of the samples alone, ``(z,) -> (v(t, z),)``: no log-density, no trace.

    What drawing samples from t=0 to t=1 solves. The state is a one-tensor tuple, as the :class:`Solver`
    contract allows any tuple of tensors, so every solver integrates it without knowing it: an adaptive one's
    error control then watches the samples only, and the counted NFE is the sampler's own cost. A solver that
    declares ``per_sample_time`` gets the field at each row's time (:func:`field_at_row_times`). The field
    runs as the caller leaves autograd (the harness samples under ``torch.no_grad``); its first output is
    checked against the contract.
    """

    def __init__(self, field: VectorField, counter: NFECounter, field_label: str = "field") -> None:
        super().__init__()
        self.field = field
        self.counter = counter
        self.field_label = field_label
        self._checked = False

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor]:
        if COMPUTING_METRIC.get() is not None:
            check_not_in_metric("a sampling dynamics evaluation")
        self.counter.tick()
        (z,) = state
        dz = field_at_row_times(self.field, t, z)[0]  # one call unless a per-sample solver meets a 0-dim-t field
        if not self._checked:
            check_field_output(dz, z, self.field_label)
            self._checked = True
        return (dz,)


def field_at_row_times(field: VectorField, t: Tensor, z: Tensor) -> tuple[Tensor, int]:
    """``field(t, z)`` for ``t`` 0-dim or ``[B]`` (one time per row), and how many calls of the field it took.

    One call when ``t`` is 0-dim or the field declares ``per_row_time``; otherwise one call per distinct time
    (the field only takes a 0-dim ``t``), the rows of each time gathered and put back in place.
    """
    if t.dim() == 0 or getattr(field, "per_row_time", False):
        return field(t, z), 1
    dz = torch.empty_like(z)
    times, groups = torch.unique(t.detach(), return_inverse=True)  # the grouping needs no gradient in t
    for index, time in enumerate(times):
        rows = (groups == index).nonzero(as_tuple=True)[0]
        dz = dz.index_put((rows,), field(time, z.index_select(0, rows)))
    return dz, len(times)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per row, in nats."""
    return -0.5 * (z.pow(2).sum(dim=1) + z.shape[1] * math.log(2 * math.pi))


def log_likelihood(
    dynamics: CNFDynamics, solver: Solver, x: Tensor, phase: str, generator: torch.Generator | None
) -> Tensor:
    """``log p(x)`` in nats per row under the CNF, solving from t=1 back to t=0."""
    return log_likelihood_and_integrals(dynamics, solver, x, phase, generator)[0]


def log_likelihood_and_base(
    dynamics: CNFDynamics, solver: Solver, x: Tensor, phase: str, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """``log p(x)`` per row and each row's image ``z0`` at t=0, from one solve (t=1 to t=0)."""
    dynamics.counter.start(phase)
    dynamics.trace.begin_solve(x, generator)
    zeros = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    dynamics.integrands = ()
    z0, a0 = solver.integrate(dynamics, (x, zeros), 1.0, 0.0)
    return standard_normal_log_prob(z0) - a0, z0


def log_likelihood_and_integrals(
    dynamics: CNFDynamics, solver: Solver, x: Tensor, phase: str, generator: torch.Generator | None,
    integrands: tuple[Integrand, ...] = (),
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``log p(x)`` per row and ``∫_0^1 g dt`` per row for each integrand ``g``, from one solve (t=1 to t=0)."""
    dynamics.counter.start(phase)
    dynamics.trace.begin_solve(x, generator)
    zeros = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    dynamics.integrands = tuple(integrands)  # kept until the next solve: an adjoint's backward solve needs them too
    z0, a0, *integrals = solver.integrate(dynamics, (x, zeros, *(zeros.clone() for _ in integrands)), 1.0, 0.0)
    return standard_normal_log_prob(z0) - a0, tuple(integrals)
