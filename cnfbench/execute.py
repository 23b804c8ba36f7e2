"""Run one cell end to end — build, train, evaluate — and turn the outcome into a result row.

A cell never raises: divergence, a blown NFE budget, a contract violation or
any exception in a plugin become a status and a one-line reason in the row,
with whatever was measured before the failure. Every reason says in which
phase of the cell it happened and which components were running there; the
rows of cells that end outside :func:`train_and_evaluate` (a timeout, a dead worker,
Ctrl-C) are built here too, so they read the same.
"""

from __future__ import annotations

import math
import socket
import statistics
import traceback
from collections.abc import Callable
from typing import Any

import torch

from cnfbench.cells import SELECT_BEST_LOSS, Cell
from cnfbench.columns import COLUMN_NAMES, notes_text, ordered
from cnfbench.contracts import (
    INTERRUPTED,
    CellInterrupted,
    CellOutcome,
    SharedModel,
    StepCapReached,
    StepSizeUnderflow,
)
from cnfbench.dynamics import ContractViolation, NFEBudgetExceeded, PhaseTracker
from cnfbench.evaluation import evaluate_log_prob
from cnfbench.measure import PeakMemory, now
from cnfbench.messages import describe_exception, one_line
from cnfbench.metric_plan import (
    Evaluation,
    EvaluationSetup,
    chosen_metrics,
    density_artifact,
    evaluate,
    metric_columns,
    plan,
)
from cnfbench.model_file import decode_model, encode_model
from cnfbench.registry import ComponentBuildError, Registry
from cnfbench.rows import REASON_LIMIT, failure_reason, identity_columns
from cnfbench.training import Diverged, IterationCallback, TrainingRecord, seeded_field, train, validation_loss
from cnfbench.validity import loose_reference, validity


def _plugin_frame(exc: BaseException, registry: Registry, cell: Cell) -> str | None:
    """Name the component that raised ``exc``: the innermost frame of one of its methods, else of its module."""
    classes: dict[type, str] = {}
    modules: dict[str, str] = {}
    for family, spec in cell.axes.items():
        entry = registry.get(family, spec.name)
        classes[entry.cls] = modules[entry.cls.__module__] = f"{family} {spec.name!r} (plugin {entry.plugin!r})"
    frames = [frame for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__)))]
    for frame in frames:  # one plugin module may hold several components: the method's owner tells them apart
        owner = frame.f_locals.get("self")
        for cls, name in classes.items():
            if isinstance(owner, cls):
                return name
    for frame in frames:
        module = frame.f_globals.get("__name__", "")
        if module in modules:
            return modules[module]
    return None


def classify_failure(exc: BaseException, registry: Registry, cell: Cell, tracker: PhaseTracker | None = None
                     ) -> tuple[str, str]:
    """Map an exception raised while running ``cell`` to ``(status, reason)``.

    With ``tracker``, the reason says in which phase (and training iteration)
    it happened and which components were running; without, it is the bare message.
    """
    status, detail = _classify(exc, registry, cell)
    if tracker is None:
        return status, detail
    lead = {"diverged": "diverged", "budget": "over budget"}.get(status, "error")
    return status, failure_reason(lead, cell, tracker.phase, tracker.iteration, detail, registry)


def _translated(exc: BaseException, registry: Registry, cell: Cell) -> BaseException:
    """``exc`` as the contract exception one of the cell's solvers says it means (an adjoint's backward
    solve raises its library's own exception outside ``integrate``), else ``exc`` itself."""
    if isinstance(exc, (StepSizeUnderflow, StepCapReached)):
        return exc
    for spec in (cell.solver, cell.evaluation.ref_solver):
        try:
            solver_class = registry.get("solver", spec.name).cls
        except ValueError:  # not registered here: it cannot have raised
            continue
        translated = solver_class.translate_failure(exc)  # type: ignore[attr-defined]
        if translated is not None:
            return translated
    return exc


def _classify(exc: BaseException, registry: Registry, cell: Cell) -> tuple[str, str]:
    exc = _translated(exc, registry, cell)
    message = one_line(exc, REASON_LIMIT)
    if isinstance(exc, (Diverged, StepSizeUnderflow)):
        return "diverged", message
    if isinstance(exc, (NFEBudgetExceeded, StepCapReached)):
        return "budget", message
    if isinstance(exc, ContractViolation):
        return "error", f"contract violation: {message}"
    if isinstance(exc, (PluginFailure, ComponentBuildError)):
        return "error", message
    if isinstance(exc, torch.OutOfMemoryError):
        return "error", f"out of memory: {message}"
    culprit = _plugin_frame(exc, registry, cell)
    where = f" in {culprit}" if culprit else ""
    return "error", one_line(f"{type(exc).__name__}{where}: {message}", REASON_LIMIT)


class PluginFailure(RuntimeError):
    """An observer plugin failed; the message names it."""


def plugin_metrics(registry: Registry, cell: Cell, field_module: Any, dataset: Any, test: torch.Tensor
                   ) -> dict[str, Any]:
    """Extra columns from every ``cnfbench_cell_metrics`` implementation, each checked and attributed."""
    arguments = {"cell": cell.to_json(), "field": field_module, "dataset": dataset, "test": test}
    extra: dict[str, Any] = {}
    for name, call in registry.implementations("cnfbench_cell_metrics"):
        try:
            with torch.no_grad():
                result = call(**arguments)
        except Exception as exc:  # noqa: BLE001 - attribute any failure to its plugin
            raise PluginFailure(f"metrics plugin {name!r} failed: {describe_exception(exc, REASON_LIMIT)}") from exc
        for key, value in dict(result or {}).items():
            if key in COLUMN_NAMES or key in extra:
                raise PluginFailure(f"metrics plugin {name!r} returned column {key!r}, which already exists")
            if not isinstance(value, (int, float, str, bool)):
                raise PluginFailure(f"metrics plugin {name!r} returned {type(value).__name__} for {key!r}; "
                                    "use a number or a string")
            extra[key] = value
    return extra


def _nfe_stats(values: list[int]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return float(statistics.fmean(values)), float(max(values))


def model_key_of(cell: Cell, registry: Registry) -> str:
    """The cell's model key (:meth:`Cell.model_key`) with the axes its objective ignores left out."""
    try:
        ignored = registry.get("objective", cell.objective.name).cls.ignored_axes()
    except ValueError:  # an objective not registered here: its cell fails to build and shares nothing
        ignored = ()
    return cell.model_key(ignored)


def _load_shared(field_module: Any, shared: SharedModel) -> None:
    """Load the tensors of another cell's model file into ``field_module`` (checked, strict)."""
    _, tensors = decode_model(shared.model, shared.trainer_id)
    field_module.load_state_dict({name: tensor.to(field_module.state_dict()[name].device)
                                  for name, tensor in tensors.items()}, strict=True)


def train_and_evaluate(cell: Cell, registry: Registry, on_iteration: IterationCallback | None = None,
                       on_phase: Callable[[str], None] | None = None, tracker: PhaseTracker | None = None,
                       shared: SharedModel | None = None) -> CellOutcome:
    """Train and evaluate ``cell``; always return a row with a status.

    Build, train (or load the shared model), plan the evaluation from the cell's metrics
    (:mod:`cnfbench.metric_plan`), evaluate. ``on_phase`` hears the progress display's phases (train, eval, ref,
    mass);
    ``tracker`` (a fresh one when None) is told every phase of the cell as it
    begins. With ``shared``, the model another cell of the same model key
    trained is loaded instead of training, and the row takes that training's
    columns. A ``done`` outcome of a cell that trained carries the trained field
    as model-file bytes. Ctrl-C raises :class:`CellInterrupted` carrying the
    ``interrupted`` row.
    """
    tracker = tracker or PhaseTracker()

    def enter(phase: str, shown: str | None = None) -> None:
        tracker.enter(phase)
        if shown and on_phase:
            on_phase(shown)

    device = torch.device(cell.device)
    row: dict[str, Any] = identity_columns(cell)
    row.update(status="error", reason="", n_params=math.nan, nfe_expected_per_solve=math.nan,
               mass=math.nan, mass_ref=math.nan, mass_time_s=math.nan, mass_ref_time_s=math.nan,
               model_key=model_key_of(cell, registry), trained_in=shared.trainer_id if shared else cell.cell_id)
    row.update(dict.fromkeys(metric_columns(registry), math.nan), metrics="", metrics_note="")
    record = TrainingRecord()
    memory = PeakMemory(device)
    memory.reset()
    measured = Evaluation()
    density: dict[str, Any] | None = None
    model: bytes | None = None
    interrupted = False
    solves = True
    started = now(device)
    try:
        enter("data")
        dataset = registry.build("dataset", cell.dataset)
        row["dim"] = dataset.dim
        row["torch_threads"] = torch.get_num_threads()
        row["host"] = socket.gethostname()
        splits = dataset.splits(cell.seed)
        train_data, test = splits.train.to(device), splits.test.to(device)
        enter("build_field")
        field_module = seeded_field(lambda: registry.build("field", cell.field, dataset.dim), cell.seed, device)
        row["n_params"] = sum(p.numel() for p in field_module.parameters() if p.requires_grad)
        enter("build_objective")
        objective = registry.build("objective", cell.objective)
        solves = objective.uses_solver
        enter("build_solver")
        solver = registry.build("solver", cell.solver)
        expected = solver.expected_nfe()
        row["nfe_expected_per_solve"] = math.nan if expected is None else expected
        enter("build_trace")
        trace = registry.build("trace", cell.trace)
        enter("build_eval")
        eval_trace = registry.build("trace", cell.evaluation.trace)
        ref_solver = registry.build("solver", cell.evaluation.ref_solver)
        row["ref_loose"] = loose_reference(ref_solver.error_tolerance())
        ref_dtype = getattr(torch, cell.evaluation.ref_dtype)
        labels = (registry.describe("field", cell.field.name), registry.describe("trace", cell.evaluation.trace.name))
        if shared is not None:
            enter("load_model")
            _load_shared(field_module, shared)
            row.update(shared.training)
        else:
            training = cell.training_axes
            train_solver = solver if training["solver"] == cell.solver else registry.build("solver", training["solver"])
            train_trace = trace if training["trace"] == cell.trace else registry.build("trace", training["trace"])
            training_labels = (registry.describe("field", cell.field.name),
                               registry.describe("trace", training["trace"].name),
                               registry.describe("objective", cell.objective.name))
            validate = None
            if cell.budget.val_every:
                val_solver = train_solver if objective.uses_solver or cell.budget.val_solver is None \
                    else registry.build("solver", cell.budget.val_solver)
                val_data = splits.val.to(device)

                def validate(field: Any) -> float:
                    if cell.budget.select == SELECT_BEST_LOSS:
                        return validation_loss(cell, field, objective, train_solver, train_trace, val_data,
                                               training_labels)
                    return evaluate_log_prob(field, val_solver, eval_trace, val_data, cell.evaluation.batch_size,
                                             "eval", max_nfe=cell.budget.max_nfe, labels=labels).nll

            enter("build_optimizer")
            optimizer = registry.build("optimizer", training["optimizer"])
            if on_phase:
                on_phase("train")
            train(cell, field_module, objective, train_solver, train_trace, optimizer, train_data, record,
                  on_iteration, training_labels, tracker, validate)
        the_plan = plan(chosen_metrics(registry, cell), dataset.dim, dataset.has_density, cell.evaluation.mass_grid)
        setup = EvaluationSetup(field_module, solver, ref_solver, eval_trace, dataset, test, cell.seed,
                                cell.evaluation.batch_size, cell.budget.max_nfe, ref_dtype, cell.evaluation.mass_grid,
                                labels, device, the_plan.samples)
        evaluate(setup, the_plan, tracker, measured, on_phase)
        density = density_artifact(measured.values)
        enter("metrics")
        field_module.eval()
        row.update(plugin_metrics(registry, cell, field_module, dataset, test))
        if shared is None:
            enter("keep_model")
            model = encode_model(field_module.state_dict(), cell, dataset.dim)
        row["status"] = "done"
    except KeyboardInterrupt:
        interrupted = True
        row.update(status="interrupted", reason=failure_reason(INTERRUPTED, cell, tracker.phase, tracker.iteration,
                                                               registry=registry))
    except Exception as exc:  # noqa: BLE001 - a failing cell must never kill the sweep
        row["status"], row["reason"] = classify_failure(exc, registry, cell, tracker)
    finally:
        if shared is None:
            row.update(_training_columns(record, solves))
        row.update(measured.columns, metrics=",".join(measured.computed), metrics_note=notes_text(measured.notes),
                   cell_time_s=now(device) - started, peak_memory_mib=memory.peak_mib(), memory_kind=memory.kind)
        row["valid"], row["validity_reason"] = validity(row) if row["status"] == "done" else (False, "")
    curves = [{"cell_id": cell.cell_id, **point} for point in record.curves()]
    done = row["status"] == "done"
    outcome = CellOutcome(ordered(row), curves, density if done else None, model if done else None)
    if interrupted:
        raise CellInterrupted(outcome)
    return outcome


def _training_columns(record: TrainingRecord, solves: bool) -> dict[str, Any]:
    """The :data:`~cnfbench.rows.TRAINING_COLUMNS` of a training run (NFE for an objective that ``solves``,
    field evaluations per iteration for one that does not)."""
    forward_mean, forward_max = _nfe_stats(record.nfe_forward) if solves else (math.nan, math.nan)
    backward_mean, backward_max = _nfe_stats(record.nfe_backward) if solves else (math.nan, math.nan)
    evaluations = _nfe_stats(record.field_evaluations)[0] if not solves else math.nan
    selected, best = record.best_validation() if record.validation else (0, math.nan)
    by_loss = record.validation_kind == "loss"
    return {
        "iterations_done": record.iterations,
        "final_train_loss": record.losses[-1] if record.losses else math.nan,
        "train_loss_unit": record.loss_unit,
        "selected_iteration": record.selected_iteration if record.validation else record.iterations,
        "best_val_nll": math.nan if by_loss else best,
        "best_val_loss": best if by_loss else math.nan,
        "nfe_forward_mean": forward_mean,
        "nfe_forward_max": forward_max,
        "nfe_backward_mean": backward_mean,
        "nfe_backward_max": backward_max,
        "field_evals_per_iter": evaluations,
        "train_time_s": record.total_seconds,
        "iter_time_median_s": record.median_iteration_seconds(),
        "compiled": record.compiled,
        "compile_note": record.compile_note,
        "compile_time_s": record.compile_seconds,
    }
