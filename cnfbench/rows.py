"""Result rows: every row a cell can end with, built in one place.

A cell ends ``done`` or failed inside the worker (:mod:`cnfbench.execute`
builds those rows from its measurements), or it ends outside it — killed at
its timeout, lost with a dead worker, interrupted by Ctrl-C. Either way its
identity columns (derived from the families table) and its failure columns
(a status, and a one-line reason naming the phase and the components that
were running there, with their plugins) are written by this module.
"""

from __future__ import annotations

import math
from typing import Any

from cnfbench.cells import Cell
from cnfbench.columns import ordered
from cnfbench.contracts import INTERRUPTED, CellInterrupted, CellOutcome
from cnfbench.dynamics import CELL_PHASES
from cnfbench.families import EVAL_SLOTS, GRID_AXES, SLOTS_BY_KEY
from cnfbench.messages import one_line
from cnfbench.registry import Registry

REASON_LIMIT = 300
"""Longest failure message a reason quotes, in characters (the phase and the components come on top)."""

STATUSES = ("done", "diverged", "budget", "timeout", "error", "interrupted", "skipped")

"""How an ``interrupted`` reason begins."""



_TRAINING_PHASES = ("train_forward", "train_backward")

PHASE_WHERE: dict[str, tuple[str, tuple[str, ...]]] = {
    "start": ("before the worker began the cell", ()),
    "data": ("while building the dataset and its splits", ("dataset",)),
    "build_field": ("while building the field", ("field",)),
    "build_objective": ("while building the objective", ("objective",)),
    "build_solver": ("while building the solver", ("solver",)),
    "build_trace": ("while building the trace estimator", ("trace",)),
    "build_eval": ("while building the evaluation trace and the reference solver", ("eval_trace", "ref_solver")),
    "build_optimizer": ("while building the optimizer", ("optimizer",)),
    "load_model": ("while loading the shared trained model", ("field",)),
    "compile": ("while compiling the field for training (--compile, its probe iteration)",
                ("objective", "solver", "field", "trace")),
    "train_forward": ("in the training forward pass", ("objective", "solver", "field", "trace")),
    "train_backward": ("in the training backward pass", ("objective", "solver", "field", "trace")),
    "validate": ("in the validation pass", ("field", "eval_trace")),
    "eval": ("in the evaluation (test pass with the cell's solver)", ("solver", "field", "eval_trace")),
    "ref": ("in the reference solve (test pass)", ("ref_solver", "field", "eval_trace")),
    "mass": ("in the mass check (the cell's solver on the grid)", ("solver", "field", "eval_trace")),
    "mass_ref": ("in the mass check (reference solve on the grid)", ("ref_solver", "field", "eval_trace")),
    "sampling": ("while sampling the model (the cell's solver)", ("solver", "field", "eval_trace")),
    "sample_quality": ("while sampling the model for the sample distances (the cell's solver)",
                       ("solver", "field", "eval_trace")),
    "model_density": ("while sampling the model and its log-density with the reference solve (mass by "
                      "importance sampling, reverse KL)", ("ref_solver", "field", "eval_trace")),
    "mass_is": ("in the mass check by importance sampling (the cell's solver on model samples)",
                ("solver", "field", "eval_trace")),
    "roundtrip": ("in the round-trip check (the cell's solver, data to base and back)",
                  ("solver", "field", "eval_trace")),
    "entropy": ("while computing the data's true log-density on the test split", ("dataset",)),
    "paths": ("while solving the sample paths' kinetic energy (the cell's solver)", ("solver", "field")),
    "metric": ("while computing a metric from its inputs", ()),
    "metrics": ("in the plugin metrics (cnfbench_cell_metrics)", ("metrics",)),
    "keep_model": ("while serializing the trained field for the run folder", ("field",)),
    "result": ("while returning the result", ()),
}
"""For every phase of :data:`~cnfbench.dynamics.CELL_PHASES`: how a reason says where, and which components ran."""


TRAINING_COLUMNS = (
    "iterations_done", "final_train_loss", "train_loss_unit", "selected_iteration", "best_val_nll", "best_val_loss",
    "nfe_forward_mean", "nfe_forward_max", "nfe_backward_mean", "nfe_backward_max", "field_evals_per_iter",
    "train_time_s", "iter_time_median_s", "compiled", "compile_note", "compile_time_s",
)
"""The columns a row takes from the training of its model: copied from the trainer's row by the cells that
share its model."""


def _slot_component(slot: str, cell: Cell, registry: Registry | None) -> str | None:
    """``solver 'euler' (plugin 'x')`` for one component slot of ``cell``; None when nothing fills it."""
    if slot == "metrics":
        names = [name for name, _ in registry.implementations("cnfbench_cell_metrics")] if registry else []
        return f"metrics plugin{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}" if names else None
    if slot in cell.axes:
        family, spec, noun = slot, cell.axes[slot], slot
    else:
        family, spec, noun = SLOTS_BY_KEY[slot].family, cell.evaluation.slots[slot], SLOTS_BY_KEY[slot].noun
    try:
        return f"{noun} {registry.describe(family, spec.name)}" if registry else f"{noun} {spec.name!r}"
    except Exception:  # noqa: BLE001 - an unknown component is still named, without its plugin
        return f"{noun} {spec.name!r}"


def failure_reason(lead: str, cell: Cell, phase: str, iteration: int = 0, detail: str = "",
                   registry: Registry | None = None) -> str:
    """One line: ``lead``, where in the cell it happened, ``detail``, and the components running there.

    ``registry`` (when given) adds each component's plugin; a component the
    detail already names is not repeated.
    """
    where, slots = PHASE_WHERE.get(phase, (f"in phase {phase!r}", ()))
    if phase in _TRAINING_PHASES and iteration:
        where += f" at iteration {iteration}"
    detail = one_line(detail, REASON_LIMIT)
    text = f"{lead} {where}" + (f": {detail}" if detail else "")
    components = [c for c in (_slot_component(slot, cell, registry) for slot in slots) if c and c not in detail]
    return one_line(text + (f" — {', '.join(components)}" if components else ""))


def iterations_done_at(cell: Cell, phase: str, iteration: int) -> float:
    """Training iterations certainly completed when a cell was stopped in ``phase`` (at ``iteration``); ``nan``
    after a wall-clock budget's training, whose count only the worker knew."""
    if phase in _TRAINING_PHASES:
        return max(iteration - 1, 0)
    if phase == "validate":
        return iteration
    if CELL_PHASES.index(phase) <= CELL_PHASES.index("validate"):
        return 0
    return cell.budget.iterations if cell.budget.seconds is None else math.nan


def failed_outcome(cell: Cell, status: str, lead: str, seconds: float, phase: str, iteration: int = 0,
                   registry: Registry | None = None) -> CellOutcome:
    """The row of a cell that ended outside :func:`~cnfbench.execute.train_and_evaluate` — a timeout, a dead
    worker, Ctrl-C — at ``phase``.

    It has the cell's identity, the status, a reason naming the phase and its
    components, ``cell_time_s`` (``seconds``) and the iterations certainly done.
    """
    row = {**identity_columns(cell), "status": status, "reason": failure_reason(lead, cell, phase, iteration,
                                                                                 registry=registry),
           "iterations_done": iterations_done_at(cell, phase, iteration), "cell_time_s": seconds,
           "valid": False, "validity_reason": ""}
    return CellOutcome(ordered(row))


def interrupted_outcome(cell: Cell, exc: BaseException, seconds: float) -> CellOutcome:
    """The ``interrupted`` outcome of ``cell`` for a Ctrl-C that reached the caller of an executor.

    An executor that knows where the cell was raises :class:`CellInterrupted`
    with its row; for any other interrupt the phase is unknown and says so.
    """
    if isinstance(exc, CellInterrupted):
        return exc.outcome
    row = {**identity_columns(cell), "status": "interrupted",
           "reason": f"{INTERRUPTED} (the executor did not say in which phase)", "cell_time_s": seconds,
           "valid": False, "validity_reason": ""}
    return CellOutcome(ordered(row))


def trained_with_label(cell: Cell) -> str:
    """``solver=euler[steps=8]`` for each component the model was trained with instead of the row's; ``""``."""
    return ",".join(f"{key}={spec.label()}" for key, spec in cell.trained_with.items())


def identity_columns(cell: Cell) -> dict[str, Any]:
    """The columns that say which cell a row is: its id and every resolved component and setting."""
    return {
        "cell_id": cell.cell_id,
        **{row.column: cell.axes[row.key].name for row in GRID_AXES},
        "seed": cell.seed,
        **{row.spec_column: cell.axes[row.key].label() for row in GRID_AXES},
        "iterations": cell.budget.iterations,
        "epochs": cell.budget.epochs or 0,
        "batch_size": cell.budget.batch_size,
        "lr": cell.budget.lr,
        "max_nfe": cell.budget.max_nfe,
        "time_budget_s": math.nan if cell.budget.seconds is None else cell.budget.seconds,
        "val_every": cell.budget.val_every,
        "select": cell.budget.select,
        "val_solver_spec": cell.budget.val_solver.label() if cell.budget.val_solver else "",
        "compile": cell.budget.compile,
        "trained_with": trained_with_label(cell),
        **{slot.spec_column: cell.evaluation.slots[slot.key].label() for slot in EVAL_SLOTS},
        "ref_dtype": cell.evaluation.ref_dtype,
        "eval_batch_size": cell.evaluation.batch_size,
        "mass_grid": cell.evaluation.mass_grid,
        "device": cell.device,
    }
