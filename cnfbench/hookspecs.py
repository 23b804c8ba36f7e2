"""Pluggy hook specifications: the only way components enter cnfbench.

Each hook returns the component classes a plugin provides for one family.
Built-in plugins (``cnfbench_plugins``), installed packages (entry-point group
``cnfbench``) and ``--plugin`` modules all implement these same hooks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pluggy
from torch import Tensor

from cnfbench.columns import Column
from cnfbench.contracts import (
    Dataset,
    Executor,
    Metric,
    Objective,
    Optimizer,
    Protocol,
    Solver,
    TraceEstimator,
    Tracker,
    VectorField,
)

PROJECT_NAME = "cnfbench"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def cnfbench_datasets() -> Sequence[type[Dataset]]:
    """Return dataset classes (subclasses of :class:`cnfbench.contracts.Dataset`).

    Each class has a unique ``name`` and declares its ``params``; it is built
    as ``Dataset(**params)``.
    """


@hookspec
def cnfbench_fields() -> Sequence[type[VectorField]]:
    """Return vector-field classes (subclasses of :class:`cnfbench.contracts.VectorField`).

    Each class is built as ``Field(dim, **params)`` and maps ``(t, z)`` to ``dz/dt``.
    """


@hookspec
def cnfbench_objectives() -> Sequence[type[Objective]]:
    """Return training-objective classes (subclasses of :class:`cnfbench.contracts.Objective`).

    Each class is built as ``Objective(**params)`` and returns a minibatch's loss.
    """


@hookspec
def cnfbench_solvers() -> Sequence[type[Solver]]:
    """Return ODE solver classes (subclasses of :class:`cnfbench.contracts.Solver`).

    Each class is built as ``Solver(**params)`` and integrates a dynamics
    module over a tuple of tensors.
    """


@hookspec
def cnfbench_traces() -> Sequence[type[TraceEstimator]]:
    """Return trace-estimator classes (subclasses of :class:`cnfbench.contracts.TraceEstimator`).

    Each class is built as ``Trace(**params)`` and returns ``(dz, div)``.
    """


@hookspec
def cnfbench_optimizers() -> Sequence[type[Optimizer]]:
    """Return optimizer classes (subclasses of :class:`cnfbench.contracts.Optimizer`).

    Each class is built as ``Optimizer(**params)`` and builds each training run's parameter update.
    """


@hookspec
def cnfbench_executors() -> Sequence[type[Executor]]:
    """Return executor classes (subclasses of :class:`cnfbench.contracts.Executor`).

    Each class is built once per run as ``Executor(context, **params)`` and runs the run's cells; the
    worker side of every engine is :func:`cnfbench.worker.run_cell_payload`.
    """


@hookspec
def cnfbench_trackers() -> Sequence[type[Tracker]]:
    """Return experiment-tracker classes (subclasses of :class:`cnfbench.contracts.Tracker`).

    Each class is built once per run, in the main process, as ``Tracker(run_dir, **params)`` and hears every
    finished cell's curve (``log_iteration``) and row (``log_cell``).
    """


@hookspec
def cnfbench_metrics() -> Sequence[type[Metric]]:
    """Return metric classes (subclasses of :class:`cnfbench.contracts.Metric`).

    Each class is built once per cell as ``Metric(**params)``, declares its columns, the inputs it needs
    (:data:`cnfbench.contracts.METRIC_INPUTS`) and what it requires of the dataset, and computes its columns
    from those inputs, which the harness computes once per cell and shares between metrics. ``--metrics``
    chooses them by name or by group.
    """


@hookspec
def cnfbench_protocols() -> Sequence[type[Protocol]]:
    """Return protocol classes (subclasses of :class:`cnfbench.contracts.Protocol`): published protocols as TOML
    documents, run with ``cnfbench run --protocol NAME``."""


@hookspec
def cnfbench_cell_metrics(
    cell: Mapping[str, Any], field: VectorField, dataset: Dataset, test: Tensor
) -> Mapping[str, float] | None:
    """Return extra columns for the row of a cell that trained and evaluated successfully (the earlier, blunter
    way to add a number: it runs on every cell and a failure fails the cell; a :class:`~cnfbench.contracts.Metric`
    from ``cnfbench_metrics`` is chosen with ``--metrics``, shares the harness's inputs and fails alone).

    Called in the process that ran the cell, with the cell's spec as plain
    JSON, the trained ``field`` (in eval mode), the ``dataset`` and its test
    split. Column names must not clash with cnfbench's own (see
    :mod:`cnfbench.columns`); values must be numbers or strings.
    """


@hookspec
def cnfbench_cell_finished(row: Mapping[str, Any], run_dir: str) -> None:
    """Called in the main process once a cell's row has been written to ``run_dir``.

    ``row`` is the row as stored, whatever the status; use it to log to
    MLflow, TensorBoard or a chat channel. An exception here is reported and
    ignored: it never stops the sweep.
    """




@hookspec
def cnfbench_columns() -> Sequence[Column]:
    """Return declarations (:class:`cnfbench.columns.Column`) of the columns this plugin's rows add.

    Typically the columns of its ``cnfbench_cell_metrics``: each with its unit, meaning, goal
    (``"min"``, ``"one"`` or ``None``), comparison (``"difference"`` or ``"ratio"``) and display
    format, as cnfbench declares its own. Reports then show the unit, mark the best entry and let
    ``compare`` judge the direction; an undeclared column is shown by its name, with no goal. A name
    must not be one of cnfbench's own columns.
    """


HOOK_NAMES: tuple[str, ...] = tuple(
    name for name, value in list(globals().items()) if name.startswith("cnfbench_") and callable(value)
)
"""Every hook a plugin may implement."""
