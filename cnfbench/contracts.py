"""The contracts every component family implements.

A component is a class with a unique ``name``, a ``description`` and a tuple
of declared :class:`~cnfbench.params.Param`. Five families exist:

* :class:`VectorField` — ``Field(dim, **params)``, an ``nn.Module`` with
  ``forward(t, z) -> dz/dt`` (``t`` a 0-dim tensor, ``z`` of shape ``[B, D]``;
  a field that declares ``per_row_time`` also takes ``t`` of shape ``[B]``).
* :class:`Objective` — ``Objective(**params)``; the training loss of a
  minibatch, from the field through a :class:`TrainingContext` (which
  solves the CNF only for an objective that declares it needs a solver).
* :class:`Solver` — ``Solver(**params)``; integrates a dynamics module over a
  tuple of tensors from ``t0`` to ``t1`` and returns the final state.
* :class:`TraceEstimator` — ``Trace(**params)``; draws its noise once per
  solve in :meth:`TraceEstimator.begin_solve`, then returns ``(dz, div)``.
* :class:`Dataset` — ``Dataset(**params)``; dimension, seeded splits and
  optionally its exact log-density.

And two run-level families, chosen once per run and never part of a cell:

* :class:`Executor` — ``Executor(context, **params)``; runs cells handed to it
  as plain JSON (:class:`CellJob`) and returns their outcomes, ``slots`` at a
  time, and cancels those in flight.
* :class:`Tracker` — ``Tracker(run_dir, **params)``; an experiment tracker
  (MLflow, TensorBoard) that hears every finished cell's training curve,
  iteration by iteration, and its row.

And one evaluation family, chosen once per run as a list (``--metrics``) and never part of a cell's id:

* :class:`Metric` — ``Metric(**params)``; one measurement of a trained cell from the inputs it declares
  (:data:`METRIC_INPUTS`), which the harness computes once per cell and shares.

The harness never looks at a concrete component: it only uses these methods.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from cnfbench.families import FAMILY_TABLE
from cnfbench.params import Param

FieldFunction = Callable[[Tensor, Tensor], Tensor]
"""``f(t, z) -> dz/dt``: what a trace estimator differentiates."""


class Component:
    """Mixin carrying the metadata shared by every component family.

    ``libraries`` names the distributions (as ``pip`` knows them) whose versions this component's numbers
    depend on, e.g. ``("torchdiffeq",)``: a run records their versions and ``compare`` only compares runs
    made with the same releases.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    libraries: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def facts(cls) -> dict[str, str]:
        """What ``cnfbench plugins`` shows of the class beyond its description and parameters: its family's own
        declarations (a metric's group, inputs and columns), by name; none by default."""
        return {}


class StepSizeUnderflow(RuntimeError):
    """An adaptive solver's step size shrank below what it can take: the solve is diverging (status ``diverged``)."""


class StepCapReached(RuntimeError):
    """A solver took as many steps as it is allowed for one solve (status ``budget``)."""


@runtime_checkable
class FusedDivergence(Protocol):
    """Optional protocol of a :class:`VectorField`: the field and its exact divergence in one pass.

    ``forward_with_divergence(t, z)`` returns ``(dz, div)`` with ``dz`` equal to ``forward(t, z)`` (same
    shape, dtype and values) and ``div`` of shape ``[B]`` equal to the trace of ``∂dz/∂z`` per row, both
    differentiable in the field's parameters and in ``z``; or ``None`` to decline (for this call), in which
    case an exact trace falls back to automatic differentiation. The built-in ``exact`` trace uses it when
    a field offers it; the conformance kit checks it against the Jacobian's trace.
    """

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(dz/dt, div)`` of shapes ``[B, D]`` and ``[B]``, or ``None`` to decline."""


FUSED_METHOD = "forward_with_divergence"
"""The field method of the :class:`FusedDivergence` protocol."""

PREFER_FUSED = "prefers_fused_divergence"
"""An optional field attribute: ``True`` asks an exact trace to use :data:`FUSED_METHOD` in every dimension, even
where it would otherwise take a cheaper generic way (D <= 2). ``--compile``'s training field sets it: its
compiled fused pass is the only one compiled code can differentiate in training."""


class VectorField(nn.Module, Component):
    """A learnable velocity field ``v(t, z)`` on ``R^dim``.

    ``per_row_time`` declares that ``forward`` also accepts ``t`` of shape ``[B]``, one time per row of
    ``z``, with row ``i`` equal to ``forward(t[i], z[i:i+1])`` (the conformance kit checks it). Objectives
    that sample a time per example (flow matching) then evaluate the batch in one call; without it the
    harness calls the field once per distinct time.
    """

    per_row_time: ClassVar[bool] = False

    def __init__(self, dim: int, **params: Any) -> None:
        super().__init__()
        self.dim = dim
        self.config = dict(params)

    @abstractmethod
    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        """Return ``dz/dt`` of shape ``[B, dim]`` for ``t`` 0-dim and ``z`` ``[B, dim]``."""


Dynamics = nn.Module
"""A module whose ``forward(t, state)`` maps a tuple of tensors (each with the batch as its first dimension) to
their derivatives. ``t`` is 0-dim, or ``[B]`` (one time per row) when the solver declares
:attr:`Solver.per_sample_time`."""

STEP_STATISTICS = ("accepted", "rejected")
"""The per-sample step counts a per-sample solver reports from :meth:`Solver.step_statistics`."""


class Solver(Component, ABC):
    """An ODE solver used to integrate the CNF dynamics.

    ``adaptive`` says whether the step size is chosen by error control.
    ``nfe_per_step`` is the number of dynamics evaluations one step costs for
    a fixed-grid Runge-Kutta method (``None`` when it varies).

    ``order`` is the method's global order of accuracy ``p``: on a smooth
    problem the error at ``t1`` shrinks like ``h**p`` as the step ``h``
    shrinks, as it really runs (a multistep method's start-up included).
    ``None`` means unknown. The conformance kit measures it for a fixed-grid
    solver that declares ``steps`` or ``step_size`` (and then requires at
    least first order when it is ``None``); an adaptive solver may declare
    the order of its propagating method as metadata, which the kit only
    type-checks.

    ``per_sample_time`` declares that the solver steps every row of the batch
    on its own clock (its own step sizes and error control, as torchode
    does): it then calls the dynamics with ``t`` of shape ``[B]``, each row at
    its own time. The harness still counts one evaluation per call of the
    batched dynamics. Such a solver reports its per-row step counts through
    :meth:`step_statistics`.
    """

    adaptive: ClassVar[bool] = False
    nfe_per_step: ClassVar[int | None] = None
    order: ClassVar[int | None] = None
    per_sample_time: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.config = dict(params)

    @abstractmethod
    def integrate(
        self, dynamics: Dynamics, state: tuple[Tensor, ...], t0: float, t1: float
    ) -> tuple[Tensor, ...]:
        """Integrate ``dynamics`` from ``t0`` to ``t1`` (either direction); return the final state.

        The result must stay differentiable with respect to ``state`` and the
        parameters of ``dynamics`` (through backpropagation or an adjoint).
        """

    def expected_nfe(self) -> int | None:
        """Evaluations one solve must cost when that is known in advance, else ``None``."""
        return None

    @classmethod
    def translate_failure(cls, exc: BaseException) -> BaseException | None:
        """The contract exception (:class:`StepSizeUnderflow`, :class:`StepCapReached`) that a library
        exception raised by this solver means, or ``None``. Called by the harness for an exception that
        escaped a solve or its backward pass (an adjoint's backward solve runs outside :meth:`integrate`)."""
        return None

    def step_statistics(self) -> dict[str, Tensor] | None:
        """Per-row step counts of the last :meth:`integrate`: ``{"accepted": [B], "rejected": [B]}`` (integer
        tensors, see :data:`STEP_STATISTICS`), or ``None`` for a solver that steps the batch as one (the
        default). The harness reports their mean and maximum over the test set."""
        return None

    def error_tolerance(self) -> float | None:
        """The local error tolerance an adaptive solver is held to (the looser of its relative and absolute
        tolerances), or ``None`` for a solver without error control. Decides whether it may serve as the
        reference solve behind ``nll_ref``."""
        return None


def exact_divergence_loop(field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool = False
                          ) -> tuple[Tensor, Tensor]:
    """``(field(t, z), div)`` with the exact divergence ``[B]`` by one vector-Jacobian product per dimension.

    The definition every exact trace must agree with (FFJORD's way; a trace estimator may use it as it is).
    ``z`` must require grad; a field whose output does not depend on ``z`` has divergence 0. With
    ``create_graph`` the divergence is differentiable in ``z`` and the field's parameters.
    """
    dz = field(t, z)
    div = torch.zeros(z.shape[0], dtype=dz.dtype, device=dz.device)
    if not dz.requires_grad:
        return dz, div
    for i in range(z.shape[1]):
        (grad,) = torch.autograd.grad(dz[:, i].sum(), z, create_graph=create_graph, retain_graph=True,
                                      allow_unused=True)
        if grad is not None:
            div = div + grad[:, i]
    return dz, div


class TraceEstimator(Component, ABC):
    """Computes the field and (an estimate of) its divergence together."""

    stochastic: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.config = dict(params)

    def begin_solve(self, z: Tensor, generator: torch.Generator | None) -> None:  # noqa: B027
        """Draw the noise for one whole solve (shape like ``z``); deterministic estimators ignore it."""

    @abstractmethod
    def __call__(
        self, field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        """Return ``(dz, div)``: ``dz = field(t, z)`` of shape ``[B, D]`` and ``div`` of shape ``[B]``.

        ``z`` requires grad; ``create_graph`` says whether the result will be
        differentiated again (training) or not (evaluation). ``t`` is 0-dim, or ``[B]`` (one time per row,
        under a :attr:`Solver.per_sample_time` solver): pass it on to ``field`` as it is.
        """


Integrand = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``g(t, z, dz) -> [B]``: a quantity integrated along a solve as extra state, beside ``z`` and the log-density.

``t`` is 0-dim, or ``[B]`` under a :attr:`Solver.per_sample_time` solver. ``dz`` is the field at ``(t, z)``
and, during training, differentiable in ``z`` (``z`` requires grad) and the field's parameters, so ``g`` may
take vector-Jacobian products of it. Any noise ``g`` needs is drawn before
the solve (once per solve, as RNODE draws its Hutchinson probe), never inside ``g``.
"""


class TrainingContext(Protocol):
    """What the harness offers an :class:`Objective` for one minibatch.

    ``field`` is the field being trained and ``dim`` the data's dimension; ``generator`` is the objective's
    own seeded random stream (on CPU), continuing from one iteration to the next. :meth:`velocity`
    evaluates the field with the evaluations counted. :meth:`log_likelihood` solves the CNF with the cell's
    training solver and trace (from t=1 back to t=0, NFE counted by the harness); it may only be called by
    an objective whose ``uses_solver`` is true, and raises otherwise.
    """

    field: VectorField
    dim: int
    generator: torch.Generator

    def velocity(self, t: Tensor, z: Tensor) -> Tensor:
        """``v(t, z)`` for ``t`` 0-dim or ``[B]`` (one time per row), counted as field evaluations."""

    def log_likelihood(self, x: Tensor, integrands: tuple[Integrand, ...] = ()) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(log p(x) [B] in nats, (∫_0^1 g dt [B] for each integrand g))``, differentiable."""


@dataclass(frozen=True)
class ObjectiveLoss:
    """One minibatch's loss (a differentiable scalar, in the objective's ``loss_unit``) and its named parts
    (plain floats, e.g. ``{"nll": 2.1, "kinetic": 0.4}``) for the training curves."""

    loss: Tensor
    terms: dict[str, float]


class Objective(Component, ABC):
    """How a CNF is trained: the loss of one minibatch of data.

    ``uses_solver`` / ``uses_trace`` declare whether the loss needs the training solver / trace estimator
    (through :meth:`TrainingContext.log_likelihood`). An objective that needs neither (flow matching) is
    trained once per seed for all the solvers and traces of a grid: its cells then differ only in how the
    model is evaluated and sampled. ``loss_unit`` names the unit of the loss (e.g. ``"nats/sample"``).
    """

    uses_solver: ClassVar[bool] = True
    uses_trace: ClassVar[bool] = True
    loss_unit: ClassVar[str] = "nats/sample"

    def __init__(self, **params: Any) -> None:
        self.config = dict(params)

    @classmethod
    def ignored_axes(cls) -> tuple[str, ...]:
        """The grid axes whose component this objective's training does not depend on."""
        return tuple(axis for axis, used in (("solver", cls.uses_solver), ("trace", cls.uses_trace)) if not used)

    @abstractmethod
    def loss(self, context: TrainingContext, x: Tensor) -> ObjectiveLoss:
        """The loss of minibatch ``x`` ``[B, D]`` (data at t=1) to minimise."""



class TrainingOptimizer(Protocol):
    """The parameter update of one training run, as an :class:`Optimizer` builds it."""

    def zero_grad(self) -> None:
        """Clear the gradients before an iteration's backward pass."""

    def step(self) -> None:
        """Update the parameters from their gradients (and advance any schedule or weight average)."""

    def averaged(self) -> dict[str, Tensor] | None:
        """The weights to validate, evaluate and keep, by ``state_dict`` name, when they are not the trained
        parameters themselves (an exponential moving average); ``None`` otherwise."""


class Optimizer(Component, ABC):
    """How training updates the field's parameters: the optimizer, its learning-rate schedule, gradient clipping
    and a weight average, as the component's parameters.

    :meth:`build` is called once per training run with the field, the budget's learning rate and the number of
    iterations planned (for a schedule); it must draw no random numbers (a seeded run repeats exactly).
    """

    def __init__(self, **params: Any) -> None:
        self.config = dict(params)

    @abstractmethod
    def build(self, module: nn.Module, lr: float, iterations: int) -> TrainingOptimizer:
        """The update of ``module``'s trainable parameters at base learning rate ``lr`` over ``iterations``."""


@dataclass(frozen=True)
class Splits:
    """Train, validation and test samples, each ``[N, D]`` float32."""

    train: Tensor
    val: Tensor
    test: Tensor


def split_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named random stream of a seeded cell."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class Dataset(Component, ABC):
    """A data distribution on ``R^dim`` with seeded, fixed splits."""

    def __init__(self, **params: Any) -> None:
        self.config = dict(params)

    @property
    @abstractmethod
    def dim(self) -> int:
        """Dimension of one sample."""

    @abstractmethod
    def splits(self, seed: int) -> Splits:
        """Return the train/validation/test samples drawn for ``seed``."""

    @property
    def has_density(self) -> bool:
        """Whether :meth:`log_prob` returns the exact log-density."""
        return False

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density in nats of ``x`` ``[N, D]``, shape ``[N]``; only when ``has_density``."""
        raise NotImplementedError(f"dataset {self.name!r} does not know its density")

    @property
    def discrete_nll_offset(self) -> float | None:
        """For data that are discrete at heart (images with a few grey levels) and dequantized into the continuous
        samples the model sees: the nats per sample to add to a continuous NLL to get the dequantization bound
        on the NLL of the discrete data — ``D * ln K`` for ``K`` levels scaled to ``[0, 1)``, plus ``D * ln s``
        for a further scaling by ``1/s`` (as Glow and FFJORD account for it). Bits per dimension are then
        ``(nll + offset) / (D ln 2)``. ``None`` (the default) for continuous data."""
        return None

    @classmethod
    def pin(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The resolved ``params`` with whatever identifies the data filled in, called once in the main process
        when a run resolves its grid (e.g. a file's SHA-256 in a declared parameter, so that two runs on
        different files never compare as equal). It should check what can be checked before training — a
        missing or unreadable file, a non-numeric column, missing values, too few rows — and raise
        ``ValueError`` with one line naming the file or column and what is wrong. Default: unchanged."""
        return params


DATA_ROOT_VARIABLE = "CNFBENCH_DATA"
DEFAULT_DATA_ROOT = "~/.cache/cnfbench/data"


def optional_import(module: str, what: str, extra: str) -> Any:
    """``module`` imported, for a plugin whose library is an optional extra; ``ValueError`` with one line naming
    the extra to install (``what``: the component, e.g. ``"the dask executor"``) when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"{what} needs the optional extra: pip install cnfbench[{extra}] "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None


def data_root() -> Path:
    """Where datasets read their files: ``$CNFBENCH_DATA`` (``cnfbench run --data-dir`` sets it for the run and
    its workers), else ``~/.cache/cnfbench/data``."""
    return Path(os.environ.get(DATA_ROOT_VARIABLE) or DEFAULT_DATA_ROOT).expanduser()


class SampledDataset(Dataset):
    """A dataset defined by a sampler; splits are fresh seeded draws of fixed sizes.

    Subclasses implement :meth:`sample` using only ``generator`` for randomness
    and declare the ``n_train``, ``n_val`` and ``n_test`` parameters (see
    :data:`SPLIT_PARAMS`).
    """

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Draw ``n`` samples ``[n, dim]`` float32 using only ``generator``."""

    def splits(self, seed: int) -> Splits:
        sizes = {split: int(self.config[f"n_{split}"]) for split in ("train", "val", "test")}
        drawn = {split: self.sample(n, split_generator(seed, f"data/{split}")) for split, n in sizes.items()}
        return Splits(**{split: tensor.to(torch.float32).contiguous() for split, tensor in drawn.items()})


SPLIT_PARAMS: tuple[Param, ...] = (
    Param("n_train", "int", 20000, "training samples", minimum=1, maximum=10**8),
    Param("n_val", "int", 2000, "validation samples", minimum=1, maximum=10**8),
    Param("n_test", "int", 2000, "test samples (the NLL is averaged over these)", minimum=1, maximum=10**8),
)
"""The split-size parameters shared by sampled datasets."""


# --------------------------------------------------------------------------------------------------------------
# Executors: where the cells of a run execute (run-level, never part of a cell).

INTERRUPTED = "interrupted by the user (Ctrl-C)"
"""The reason of a cell stopped by Ctrl-C (the harness adds where it was)."""


@dataclass
class CellOutcome:
    """The result row of one cell, its training curve rows, for 2D cells its density picture and, for a
    finished cell, its trained field.

    ``density`` holds plain lists (so the outcome travels as JSON): ``grid_x``, ``grid_y``,
    ``log_prob_grid`` (reference solve), ``samples`` (from the model) and ``data`` (test samples).
    ``model`` is the model file's bytes (safetensors with the cell spec in its metadata), which the runner
    writes to ``models/<cell_id>.safetensors``.
    """

    row: dict[str, Any]
    curves: list[dict[str, Any]] = field(default_factory=list)
    density: dict[str, Any] | None = None
    model: bytes | None = None


@dataclass(frozen=True)
class SharedModel:
    """A model trained by another cell with the same model key: the trainer's id, its model file's bytes
    and its row's training columns."""

    trainer_id: str
    model: bytes
    training: dict[str, Any]


class CellInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a cell; ``outcome`` is its ``interrupted`` row, with the phase and what was measured."""

    def __init__(self, outcome: CellOutcome) -> None:
        super().__init__(outcome.row.get("reason", INTERRUPTED))
        self.outcome = outcome


@dataclass(frozen=True)
class CellJob:
    """One cell handed to an executor: its id, its spec as plain JSON, a label for messages, and the model
    it evaluates instead of training its own (``None``: it trains)."""

    cell_id: str
    cell: dict[str, Any]
    label: str
    shared: SharedModel | None = None


ORPHANED_EXIT = 125
"""The exit code of a worker process that ended because the run's main process died."""

ProgressHook = Callable[[str, Any], None]
"""``progress(kind, value)``: ``("iteration", (done, loss, nfe))``, ``("phase", name)`` or ``("note", line)`` (a
line the worker has for the user, e.g. that a busy machine gave it fewer threads), from any thread."""


class ExecutorContext(Protocol):
    """What the harness gives an executor: the run's plugins and ``--timeout``, and the pieces every engine
    needs, so that an executor never builds a row or a payload itself.

    The worker side is :func:`cnfbench.worker.run_cell_payload`: an engine runs it, wherever it runs cells,
    on :meth:`payload`'s plain data and hands what it returns to :meth:`outcome`. While a cell runs, that
    function reports messages with ``where`` (the cell's packed phase, opaque: keep the last one for
    :meth:`failed`), ``shown`` (the phase to display), ``iteration`` (``[done, loss, nfe]``, ``nfe`` the
    iteration's dynamics evaluations), ``note`` (a line for the user, or None), ``host`` and ``pid``.
    """

    plugins: tuple[str, ...]
    """The user's plugins (``$CNFBENCH_PLUGINS`` then ``--plugin``), in load order."""
    timeout: float | None
    """``--timeout``: seconds a cell may run once it began (None: no limit)."""

    def payload(self, job: CellJob, workers: int = 1, threads: int = 0) -> dict[str, Any]:
        """The plain (picklable, JSON-able but for the model bytes) payload of ``run_cell_payload`` for ``job``:
        the cell, the plugins (``.py`` files by content) and their versions, the data folder, the shared model,
        and the torch-thread policy (:func:`cnfbench.worker.apply_thread_policy`): ``threads`` per worker when
        given (> 0), else each worker's share of the CPUs it may use among the ``workers`` cells that run at once
        on one machine (0: unknown, a remote engine's workers keep their own default), fewer on a busy machine."""
        ...

    def outcome(self, job: CellJob, result: dict[str, Any]) -> CellOutcome:
        """The outcome of what ``run_cell_payload`` returned for ``job``."""
        ...

    def failed(self, job: CellJob, status: str, lead: str, seconds: float, where: int | None = None
               ) -> CellOutcome:
        """The row of a cell its worker did not finish (``timeout``, ``error``, ``interrupted``): ``lead`` says
        what happened (one line), the reason adds the phase ``where`` (the last one its worker reported; None:
        it had not begun) and the components running there."""
        ...

    def run_here(self, job: CellJob, report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """``run_cell_payload`` for ``job`` in this process, with the run's own plugins (no copies loaded)."""
        ...


class Executor(Component, ABC):
    """Run-level family: where the cells of a run execute. Built once per run as ``Executor(context,
    **params)``; a constructor whose engine is missing or unreachable raises ``ValueError`` with one line
    for the user (which extra to install, which address did not answer).

    ``slots`` cells run at once: the runner calls :meth:`run_cell` from that many threads, one cell each,
    and writes every outcome to the run folder (it alone) in completion order. A cell's failures — a
    timeout, a dead worker, an engine that lost it — are rows (:meth:`ExecutorContext.failed`), never
    exceptions; the sweep goes on.
    """

    slots: int = 1

    def __init__(self, context: ExecutorContext, **params: Any) -> None:
        self.context = context
        self.config = dict(params)

    @abstractmethod
    def run_cell(self, job: CellJob, progress: ProgressHook) -> CellOutcome:
        """Run ``job`` to its end and return its outcome, reporting its progress to ``progress``. On Ctrl-C
        raise :class:`CellInterrupted` with the cell's ``interrupted`` row."""

    def cancel(self) -> list[CellOutcome]:
        """Stop every cell in flight (Ctrl-C reached the runner): their ``interrupted`` rows."""
        return []

    def close(self) -> None:
        """Release the workers (called once, after the last cell)."""


# --------------------------------------------------------------------------------------------------------------
# Trackers: experiment trackers a run logs to (run-level, never part of a cell).


class Tracker(Component, ABC):
    """Run-level family: an experiment tracker (MLflow, TensorBoard, ...) the run logs every cell to. Built once
    per run, in the main process (on a thread of its own), as ``Tracker(run_dir, **params)``, before anything is
    written: the constructor only checks (a missing library raises ``ValueError`` with one line naming the extra
    to install) and writes nothing; :meth:`start` opens the store.

    When a cell's outcome reaches the main process (from any executor), the runner calls :meth:`log_iteration`
    for every training iteration of its curve, in order, then :meth:`log_cell`; so remote workers need no
    access to the tracker. ``cell`` is ``{"cell_id", "label", "description", "spec", "started", "ended"}``:
    ``label`` names the configuration by the run's labelling rule (:mod:`cnfbench.labels`; a tracker names its run
    by it), ``description`` every component in full, ``spec`` the cell as JSON, ``started``/``ended`` seconds since
    the epoch (a curve point's wall time is ``started`` + its ``elapsed_s``).

    Every tracker has the parameter ``timeout`` (:data:`TIMEOUT`, seconds, default 10) without declaring it:
    the harness adds it to each subclass's ``params`` and keeps it for itself. All calls to one tracker run in
    order on a thread of its own, and the sweep waits at most ``timeout`` for each — ``start``, a cell's whole
    replay (its iterations and its row), ``close``; the constructor, which imports and checks, at least 10 s.
    A call that raises or does not return in time is one warning naming the tracker, which is then never
    called again: a tracker never fails or holds up a cell. The value is :attr:`call_timeout` on the instance
    from ``start`` on, so that a tracker that talks to a server can bound its own requests by it. A class that
    declares a parameter ``timeout`` itself sets its default and bounds, and receives it in its constructor.
    """

    TIMEOUT: ClassVar[Param] = Param(
        "timeout", "float", 10.0, "seconds the run waits for each call of this tracker (start, a cell's replay, "
        "close) before leaving the tracker out; every tracker has it", minimum=0.1, maximum=86400.0)
    """The ``timeout`` parameter the harness gives every tracker."""

    params: ClassVar[tuple[Param, ...]] = (TIMEOUT,)

    call_timeout: float = 10.0
    """Seconds the harness waits for each call (the ``timeout`` parameter); set before :meth:`start`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.params
        if isinstance(declared, (tuple, list)) and all(isinstance(p, Param) for p in declared) \
                and not any(p.name == Tracker.TIMEOUT.name for p in declared):
            cls.params = (*declared, Tracker.TIMEOUT)  # malformed params are left for the conformance kit to name

    @classmethod
    def split_params(cls, values: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """``(timeout, constructor parameters)`` from this class's resolved ``values``: ``timeout`` is the
        harness's unless the class declares it itself."""
        timeout = float(values.get(Tracker.TIMEOUT.name, Tracker.TIMEOUT.default))
        declares_it = any(p.name == Tracker.TIMEOUT.name and p is not Tracker.TIMEOUT for p in cls.params)
        return timeout, {key: value for key, value in values.items()
                         if declares_it or key != Tracker.TIMEOUT.name}

    def __init__(self, run_dir: str, **params: Any) -> None:
        self.run_dir = run_dir
        self.config = dict(params)

    def start(self, run: dict[str, Any]) -> None:
        """The run begins (its folder exists): open the store. ``run`` has its ``name``, ``command`` and
        ``config``."""

    def log_iteration(self, cell: dict[str, Any], step: int, values: dict[str, float]) -> None:
        """One training iteration (``step``, from 1) of ``cell``: its curve's finite values — ``loss`` (the
        objective's unit), ``loss_nats``, ``nfe_forward``, ``nfe_backward``, ``iteration_s``, ``elapsed_s``, and
        ``val_nll``/``val_time_s`` at validation iterations — by name."""

    def log_cell(self, cell: dict[str, Any], row: dict[str, Any]) -> None:
        """``cell`` ended with ``row`` (its status, reason and every metric, as ``cells.parquet`` stores it)."""

    def close(self) -> None:
        """The run ended (also after Ctrl-C)."""


# Metrics: what a trained cell is measured by (an evaluation family: chosen per run, never part of a cell's id).


METRIC_INPUTS: dict[str, str] = {
    "test": "the test split, [n, dim] on the cell's device",
    "eval": "log-density of the test split with the row's solver and the exact evaluation trace "
            "(an EvaluationPass: log_prob float64 [n] nats, nfe, seconds, per-row steps, and base: the points' "
            "images at t=0)",
    "ref": "the same with the reference solve (float64 by default)",
    "grid": "2-D only: log-density with the row's solver at the cell centres of the mass grid over the test data "
            "(a GridPass: points, cell_area, log_prob, seconds)",
    "grid_ref": "2-D only: the same with the reference solve",
    "sample": "model samples drawn with the row's solver, the samples alone "
              "(min(n_test, 2000) of them; a SamplePass: x, nfe, seconds)",
    "ref_sample": "1,000 model samples drawn with the reference solve together with their log-density "
                  "(x, log_q float64 nats: one joint solve)",
    "ref_sample_eval": "log-density of the ref_sample points with the row's solver (an EvaluationPass)",
    "paths": "the sample paths' kinetic energy: for the base draws of `sample`, ∫₀¹ ‖v(t, x_t)‖² dt per sample "
             "with the row's solver, and the end points (a PathPass: energy float64 [n], base, x, nfe, seconds)",
    "data_density": "the dataset's exact log-density function (x [m, dim] -> [m] nats); datasets with a known "
                    "density only",
    "model": "the trained model (a TrainedModel: field, dim, and push_forward(z0) solving from t=0 to t=1 "
             "with the row's solver, only for points taken from another input)",
}
"""The inputs a metric may declare (:attr:`Metric.needs`): the harness computes each at most once per cell, in
its own phase, with its own NFE and seconds, and hands a metric only those it declared."""

NEEDS_2D, NEEDS_DENSITY = "2d", "density"
METRIC_REQUIREMENTS: dict[str, str] = {NEEDS_2D: "a 2-D dataset", NEEDS_DENSITY: "a dataset with a known density"}
"""What a metric may require of the dataset (:attr:`Metric.requires`); on another dataset it is skipped with a
note, never an error."""


class MetricInputs(Protocol):
    """What :meth:`Metric.compute` receives: the inputs it declared, by name, and the cell's facts."""

    dim: int
    seed: int
    discrete_nll_offset: float | None  # the dataset's (see Dataset.discrete_nll_offset)

    def __getitem__(self, name: str) -> Any:
        """The input ``name`` (one of the metric's :attr:`~Metric.needs`; any other raises ``KeyError``)."""

    def generator(self, stream: str) -> torch.Generator:
        """A generator seeded by the cell's seed and ``stream``: a metric's own randomness, reproducible."""


class Protocol(Component, ABC):
    """Run-level family: a published paper's protocol as data — its grid, budgets, evaluation and the numbers it
    reproduces — in a TOML document (see :mod:`cnfbench.protocols` for the keys). ``cnfbench run --protocol NAME``
    runs it; ``cnfbench report RUN --published`` puts the paper's numbers beside the run's.

    The document's ``name`` must be the class's ``name``; a protocol has no parameters (its scales are chosen
    with ``--scale``).
    """

    @classmethod
    @abstractmethod
    def document(cls) -> str:
        """The protocol's TOML text."""


class Metric(Component, ABC):
    """Evaluation family: one measurement of a trained cell, built as ``Metric(**params)``.

    ``group`` names the family of metrics it belongs to (``likelihood``, ``validity``, ``density``,
    ``samples``, ``inverse``, ``plots``, or a plugin's own), which ``--metrics`` accepts as a whole;
    ``columns`` the row columns it writes, as :class:`cnfbench.columns.Column` declarations (a built-in
    metric's are the catalogue's; a plugin's are added to the catalogue, so reports show their units and goals);
    ``needs`` the inputs of :data:`METRIC_INPUTS` it reads; ``requires`` what it needs of the dataset
    (:data:`METRIC_REQUIREMENTS`); ``default`` whether ``cnfbench run`` computes it without ``--metrics``.

    :meth:`compute` returns a value for each of its columns (a missing one is left empty); it gets the
    inputs from the harness and must not compute one itself (solve the model, draw samples, evaluate a
    log-density): the harness stops a metric that solves the dynamics outside ``model.push_forward``.
    An exception leaves the metric's columns empty with a one-line reason in ``metrics_note``; the cell
    stays ``done``.
    """

    group: ClassVar[str] = ""
    columns: ClassVar[tuple[Any, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    default: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.config = dict(params)

    @classmethod
    def column_names(cls) -> tuple[str, ...]:
        """The names of the metric's columns, in order."""
        return tuple(column.name for column in cls.columns)

    @classmethod
    def facts(cls) -> dict[str, str]:
        facts = {"group": cls.group, "default": "yes" if cls.default else "no", "needs": ", ".join(cls.needs)}
        if cls.requires:
            facts["requires"] = ", ".join(METRIC_REQUIREMENTS.get(need, need) for need in cls.requires)
        facts["columns"] = ", ".join(cls.column_names()) or "none"
        return facts

    def samples_wanted(self) -> int:
        """Model samples (and test points) this metric asks the ``sample`` and ``paths`` inputs for, beyond the
        harness's default (0: the default, ``QUALITY_MAX_SAMPLES`` or the test split if smaller)."""
        return int(self.config.get("samples", 0))

    @abstractmethod
    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        """The metric's columns (numbers, or strings for a column without a unit) from its declared inputs."""


@dataclass(frozen=True)
class Family:
    """One component family: its contract class and the hook that supplies it (from the families table)."""

    key: str
    hook: str
    base: type
    plural: str


FAMILIES: dict[str, Family] = {row.key: Family(row.key, row.hook, globals()[row.contract], row.plural)
                               for row in FAMILY_TABLE}
"""Each family of :data:`cnfbench.families.FAMILY_TABLE` with its contract class."""
