"""Training of one cell's CNF on its objective's loss with its optimizer, measured per iteration.

Randomness comes only from generators derived from the cell's seed: the
field's initialisation, the minibatch order, the trace estimator's noise and
the objective's own stream. Each iteration records its loss (in the
objective's unit) and named loss terms, forward and backward NFE of the
training solve (for an objective that solves), field evaluations (for one
that does not) and wall-clock. The budget is a number of iterations or a
wall-clock of training iterations; every ``val_every`` iterations the
validation NLL (or, with ``select="best_loss"``, the objective's loss on the validation split) is recorded,
and ``select="best"``/``"best_loss"`` keeps the parameters of the best one. An optimizer that averages the
weights (an EMA) has its averaged weights validated and kept. With ``--compile`` the iterations call the
field compiled by
``torch.compile`` (:mod:`cnfbench.compiling`: probed first; a failure there or
in a later iteration trains the eager field instead, with a warning).
"""

from __future__ import annotations

import copy
import math
import statistics
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cnfbench.cells import SELECT_BEST_LOSS, SELECTS_BEST, Cell
from cnfbench.compiling import CompileFallbackWarning, compile_for_training, fallback_note, raised_by_compiler
from cnfbench.contracts import (
    Integrand,
    Objective,
    ObjectiveLoss,
    Optimizer,
    Solver,
    TraceEstimator,
    VectorField,
    split_generator,
)
from cnfbench.dynamics import (
    CNFDynamics,
    ContractViolation,
    NFECounter,
    PhaseTracker,
    field_at_row_times,
    log_likelihood_and_integrals,
)
from cnfbench.measure import now

IterationCallback = Callable[[int, float, int], None]
"""Called after every iteration with ``(iterations done, loss in the objective's unit, dynamics evaluations of
the iteration: forward and backward)``."""

Validator = Callable[[VectorField], float]
"""Returns the validation score of the field as it is now: its NLL (nats/sample), or with ``select="best_loss"``
the objective's loss on the validation split (in the objective's unit)."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss or state."""


def exploded_above(first_loss: float) -> float:
    """The loss beyond which training counts as diverged: far above where it started."""
    return max(1e3, 100.0 * abs(first_loss))


def seeded_field(build: Callable[[], VectorField], seed: int, device: torch.device) -> VectorField:
    """Build a field with its initialisation drawn from the cell's seed, leaving the global RNG untouched."""
    init = split_generator(seed, "field/init").initial_seed()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init)
        built = build()
    return built.to(device)


def minibatches(data: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless epochs of shuffled minibatches (the last short batch of an epoch is dropped)."""
    n = data.shape[0]
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator).to(data.device)
        for start in range(0, n - size + 1, size):
            yield data.index_select(0, order[start : start + size])


@dataclass
class TrainingRecord:
    """What training measured, kept even when training stops early."""

    losses: list[float] = field(default_factory=list)
    terms: list[dict[str, float]] = field(default_factory=list)
    nfe_forward: list[int] = field(default_factory=list)
    nfe_backward: list[int] = field(default_factory=list)
    field_evaluations: list[int] = field(default_factory=list)
    iteration_seconds: list[float] = field(default_factory=list)
    validation: dict[int, tuple[float, float]] = field(default_factory=dict)  # iteration -> (score, seconds)
    validation_kind: str = "nll"  # what validation scores: "nll" (nats/sample) or "loss" (the objective's unit)
    selected_iteration: int = 0
    total_seconds: float = 0.0
    loss_unit: str = "nats/sample"
    compiled: bool | None = None  # --compile: whether the iterations ran the compiled field (None: not asked)
    compile_note: str = ""  # why --compile trained the eager field ("" otherwise)
    compile_seconds: float = math.nan  # compiling and its probe iteration: part of total_seconds, of no iteration

    @property
    def iterations(self) -> int:
        return len(self.losses)

    @property
    def training_seconds(self) -> float:
        """Wall-clock of the training iterations alone (validation passes excluded)."""
        return math.fsum(self.iteration_seconds)

    def median_iteration_seconds(self) -> float:
        """Median per-iteration wall-clock, excluding the first (warm-up) iteration when there are others."""
        times = self.iteration_seconds[1:] if len(self.iteration_seconds) > 1 else self.iteration_seconds
        return statistics.median(times) if times else math.nan

    def best_validation(self) -> tuple[int, float]:
        """``(iteration, validation score)`` of the best validation pass; ``(0, nan)`` without one."""
        finite = [(nll, it) for it, (nll, _) in self.validation.items() if math.isfinite(nll)]
        if not finite:
            return 0, math.nan
        nll, iteration = min(finite)
        return iteration, nll

    def curves(self) -> list[dict[str, float]]:
        elapsed = 0.0
        rows = []
        nats = self.loss_unit == "nats/sample"
        for index, loss in enumerate(self.losses):
            elapsed += self.iteration_seconds[index]
            iteration = index + 1
            score, val_seconds = self.validation.get(iteration, (math.nan, math.nan))
            rows.append({
                "iteration": iteration,
                "loss": loss,
                "loss_nats": loss if nats else math.nan,
                **{f"loss_{name}": value for name, value in self.terms[index].items()},
                "nfe_forward": self.nfe_forward[index],
                "nfe_backward": self.nfe_backward[index],
                "field_evaluations": self.field_evaluations[index],
                "iteration_s": self.iteration_seconds[index],
                "elapsed_s": elapsed,
                "val_nll": score if self.validation_kind == "nll" else math.nan,
                "val_loss": score if self.validation_kind == "loss" else math.nan,
                "val_time_s": val_seconds,
            })
        return rows


class HarnessContext:
    """The :class:`~cnfbench.contracts.TrainingContext` the harness gives an objective for a whole training run.

    ``solve`` (``(dynamics, solver, trace noise)``) is ``None`` for an objective that declares it needs no
    solver: its :meth:`log_likelihood` then raises a contract violation naming the objective.
    """

    def __init__(self, field_module: VectorField, dim: int, generator: torch.Generator,
                 solve: tuple[CNFDynamics, Solver, torch.Generator] | None, objective_label: str) -> None:
        self.field = field_module
        self.dim = dim
        self.generator = generator
        self.evaluations = 0
        self._solve = solve
        self._objective_label = objective_label
        self._checked = False

    def velocity(self, t: Tensor, z: Tensor) -> Tensor:
        dz, calls = field_at_row_times(self.field, t, z)
        self.evaluations += calls
        if not self._checked:
            if not isinstance(dz, Tensor) or dz.shape != z.shape or dz.dtype != z.dtype:
                got = f"{tuple(dz.shape)} {dz.dtype}" if isinstance(dz, Tensor) else type(dz).__name__
                raise ContractViolation(f"field returned dz/dt {got} for times of shape {tuple(t.shape)}; "
                                        f"expected {tuple(z.shape)} {z.dtype}")
            self._checked = True
        return dz

    def log_likelihood(self, x: Tensor, integrands: tuple[Integrand, ...] = ()) -> tuple[Tensor, tuple[Tensor, ...]]:
        if self._solve is None:
            raise ContractViolation(f"objective {self._objective_label} solved the CNF in training although it "
                                    "declares uses_solver = False")
        dynamics, solver, noise = self._solve
        return log_likelihood_and_integrals(dynamics, solver, x, "forward", noise, tuple(integrands))


def _checked_loss(result: object, objective_label: str) -> ObjectiveLoss:
    if not isinstance(result, ObjectiveLoss) or not isinstance(result.loss, Tensor) or result.loss.dim() != 0:
        raise ContractViolation(f"objective {objective_label} returned {type(result).__name__}; expected an "
                                "ObjectiveLoss with a 0-dim loss tensor")
    return result


def training_context(cell: Cell, field_module: VectorField, objective: Objective, solver: Solver,
                     trace: TraceEstimator, dim: int, counter: NFECounter, labels: tuple[str, str, str],
                     streams: str = "") -> tuple[HarnessContext, tuple[CNFDynamics, Solver, torch.Generator] | None]:
    """The context an objective trains through, and its solve (``None`` for an objective that needs none).

    ``labels`` name the field, trace and objective; ``streams`` prefixes the names of the random streams (the
    objective's and the trace noise's), so that a throwaway pass draws from streams of its own.
    """
    field_label, trace_label, objective_label = labels
    solve = None
    if objective.uses_solver:
        dynamics = CNFDynamics(field_module, trace, counter, differentiable=True, field_label=field_label,
                               trace_label=trace_label)
        solve = (dynamics, solver, split_generator(cell.seed, f"{streams}trace/train"))
    context = HarnessContext(field_module, dim, split_generator(cell.seed, f"{streams}objective"), solve,
                             objective_label)
    return context, solve


def probe_loss(cell: Cell, training_field: VectorField, objective: Objective, solver: Solver,
               trace: TraceEstimator, train_data: Tensor, labels: tuple[str, str, str]) -> Tensor:
    """One training loss of ``training_field`` (``--compile``'s probe) on a batch of the training batches' shape.

    Its randomness comes from streams of its own and its solve is counted by a counter of its own, so the
    cell's generators and NFE columns see nothing of it.
    """
    x = train_data[: min(cell.budget.batch_size, train_data.shape[0])]
    context, _ = training_context(cell, training_field, objective, solver, trace, train_data.shape[1],
                                  NFECounter(max_per_solve=cell.budget.max_nfe), labels, streams="compile/probe/")
    return _checked_loss(objective.loss(context, x), labels[2]).loss


def validation_loss(cell: Cell, field_module: VectorField, objective: Objective, solver: Solver,
                    trace: TraceEstimator, val_data: Tensor, labels: tuple[str, str, str]) -> float:
    """The objective's loss on the validation split (``select="best_loss"``), in its unit: the mean over
    minibatches of the training batch size (the last may be shorter), weighted by their sizes, as a loss
    defined on minibatches (an optimal-transport pairing) is defined.

    Every pass draws its noise (flow matching's times and source points, a trace's probes) from the same
    streams of its own, so passes differ only by the field: the comparison between them is not noise.
    """
    context, _ = training_context(cell, field_module, objective, solver, trace, val_data.shape[1],
                                  NFECounter(max_per_solve=cell.budget.max_nfe), labels, streams="validation/")
    total, size = 0.0, cell.budget.batch_size
    for start in range(0, val_data.shape[0], size):
        batch = val_data[start : start + size]
        total += float(_checked_loss(objective.loss(context, batch), labels[2]).loss.detach()) * batch.shape[0]
    return total / max(val_data.shape[0], 1)


def train(
    cell: Cell,
    field_module: VectorField,
    objective: Objective,
    solver: Solver,
    trace: TraceEstimator,
    optimizer: Optimizer,
    train_data: Tensor,
    record: TrainingRecord,
    on_iteration: IterationCallback | None = None,
    labels: tuple[str, str, str] | None = None,
    tracker: PhaseTracker | None = None,
    validate: Validator | None = None,
) -> None:
    """Train ``field_module`` in place on ``objective``, filling ``record``; raise :class:`Diverged` on a
    non-finite loss.

    ``labels`` name the field, trace and objective in contract-violation messages; ``tracker`` is told when
    each iteration's forward pass, backward pass and validation begin. ``validate`` (with
    ``cell.budget.val_every`` > 0) is called every that many iterations and after the last one.
    """
    tracker = tracker or PhaseTracker()
    budget = cell.budget
    device = train_data.device
    counter = NFECounter(max_per_solve=budget.max_nfe)
    labels = labels or (repr(cell.field.name), repr(cell.trace.name), repr(cell.objective.name))
    field_label, trace_label, objective_label = labels
    context, solve = training_context(cell, field_module, objective, solver, trace, train_data.shape[1], counter,
                                      labels)
    update = optimizer.build(field_module, budget.lr, budget.iterations)
    batches = minibatches(train_data, budget.batch_size, split_generator(cell.seed, "train/batches"))
    record.loss_unit = objective.loss_unit
    record.validation_kind = "loss" if budget.select == SELECT_BEST_LOSS else "nll"
    best: tuple[float, dict[str, Tensor]] | None = None

    def validation_pass(iteration: int) -> None:
        nonlocal best
        assert validate is not None
        tracker.enter("validate", iteration)
        began = now(device)
        averaged = update.averaged()
        trained = copy.deepcopy(field_module.state_dict()) if averaged is not None else None
        if averaged is not None:
            field_module.load_state_dict(averaged)
        score = validate(field_module)
        record.validation[iteration] = (score, now(device) - began)
        if budget.select in SELECTS_BEST and math.isfinite(score) and (best is None or score < best[0]):
            best = (score, copy.deepcopy(field_module.state_dict()))
        if trained is not None:
            field_module.load_state_dict(trained)
        field_module.train()

    field_module.train()
    generators = [context.generator, *([solve[2]] if solve else [])]

    def use(training_field: VectorField) -> None:
        context.field = training_field
        if solve:
            solve[0].field = training_field

    def step(x: Tensor, iteration: int) -> tuple[ObjectiveLoss, float, int, int, int]:
        """One loss and backward pass: ``(loss, its value, forward NFE, backward NFE, field evaluations)``."""
        update.zero_grad()
        counter.start("forward")
        evaluations_before = context.evaluations
        result = _checked_loss(objective.loss(context, x), objective_label)
        forward_nfe = counter.current
        loss_value = result.loss.item()
        if not math.isfinite(loss_value):
            raise Diverged(f"non-finite training loss ({loss_value})")
        if record.losses and loss_value > exploded_above(record.losses[0]):
            raise Diverged(f"training loss exploded to {loss_value:.4g} {record.loss_unit} "
                           f"(first loss {record.losses[0]:.4g})")
        tracker.enter("train_backward", iteration)
        counter.start("backward")
        result.loss.backward()
        return result, loss_value, forward_nfe, counter.current, context.evaluations - evaluations_before

    start = now(device)
    try:
        if budget.compile:
            tracker.enter("compile")
            compiled = compile_for_training(
                field_module, objective.uses_solver,
                lambda training_field: probe_loss(cell, training_field, objective, solver, trace, train_data, labels),
                field_label, device, trace_label)
            record.compiled, record.compile_note, record.compile_seconds = \
                compiled.compiled, compiled.note, compiled.seconds
            use(compiled.field)
        for iteration in range(1, budget.iterations + 1):
            tracker.enter("train_forward", iteration)
            began = now(device)
            x = next(batches)
            states = [generator.get_state() for generator in generators] if record.compiled else []
            outcome: tuple[ObjectiveLoss, float, int, int, int] | None = None
            try:
                outcome = step(x, iteration)
            except Exception as exc:
                if not (record.compiled and raised_by_compiler(exc)):
                    raise
                record.compiled, record.compile_note = False, f"{fallback_note(field_label, exc)} (at iteration " \
                                                              f"{iteration}, after {iteration - 1} compiled)"
            if outcome is None:  # compiled code failed: this iteration, from the same random state, and the rest eager
                warnings.warn(record.compile_note, CompileFallbackWarning, stacklevel=2)
                use(field_module)
                for generator, state in zip(generators, states, strict=True):
                    generator.set_state(state)
                tracker.enter("train_forward", iteration)
                outcome = step(x, iteration)
            result, loss_value, forward_nfe, backward_nfe, evaluations = outcome
            update.step()
            ended = now(device)
            record.losses.append(loss_value)
            record.terms.append({name: float(value) for name, value in result.terms.items()})
            record.nfe_forward.append(forward_nfe)
            record.nfe_backward.append(backward_nfe)
            record.field_evaluations.append(evaluations)
            record.iteration_seconds.append(ended - began)
            if on_iteration is not None:
                on_iteration(iteration, loss_value, forward_nfe + backward_nfe)
            out_of_time = budget.seconds is not None and record.training_seconds >= budget.seconds
            last = out_of_time or iteration == budget.iterations
            if validate is not None and budget.val_every and (iteration % budget.val_every == 0 or last):
                validation_pass(iteration)
            if out_of_time:
                break
    finally:
        record.total_seconds = now(device) - start
    record.selected_iteration = record.iterations
    averaged = update.averaged()
    if averaged is not None:
        field_module.load_state_dict(averaged)
    if best is not None:
        field_module.load_state_dict(best[1])
        record.selected_iteration = record.best_validation()[0]
