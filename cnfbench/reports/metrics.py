"""What a report may ask for: the column catalogue's metrics and axes as display information, and request checks.

:func:`metric_info` turns a column of the catalogue (:mod:`cnfbench.columns`),
or a column a loaded plugin declares through ``cnfbench_columns``, into a
:class:`Metric`: its header with the unit, scale, decimals, goal and
comparison kind. A plugin column nobody declares is shown by its name, with
no unit and no goal. A metric whose unit differs row by row (``final_train_loss``, in its objective's unit, which
``train_loss_unit`` records) is headed by the unit the rows shown share, else in words, never by a column name.
The axes a table can be split by, and the configuration axes that must never be averaged together, derive from
the families table.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from cnfbench.columns import (
    BUDGET,
    COLUMNS,
    COLUMNS_BY_NAME,
    GOALS,
    IDENTITY,
    METRIC,
    PROTOCOL,
    RATIO,
    REPORT,
    Column,
    ColumnError,
    badness,
    columns_in,
    plugin_columns,
)
from cnfbench.columns import default_metrics as catalogue_defaults
from cnfbench.families import GRID_AXES, FamilyRow, family
from cnfbench.messages import did_you_mean


class ReportError(ValueError):
    """A bad request (unknown metric or column, empty selection); the message is one line naming what is valid."""


DATASET: FamilyRow = family("dataset")
"""Reports mark the best entry, and plots draw one figure, per dataset."""

METRIC_GOALS: dict[str, str] = {c.name: c.goal for c in COLUMNS if c.goal}
"""What "better" means for each of cnfbench's metrics (from the catalogue): ``min`` lowest, ``one`` closest to 1."""

GOAL_TEXT = GOALS

DEFAULT_METRICS: tuple[str, ...] = catalogue_defaults(REPORT)
"""The metrics of a report when none are asked for (those present in the runs)."""

IDENTITY_COLUMNS: tuple[str, ...] = columns_in(IDENTITY, BUDGET, PROTOCOL)
"""The columns that say which cell a row is (``cell_id`` … ``device``), as written by the runner."""

RUN = "run"
"""The column :func:`~cnfbench.reports.aggregate.combine` adds: the run folder a row comes from."""

AXIS_SPECS: dict[str, str] = {row.key: row.spec_column for row in GRID_AXES}
"""A grid axis (``solver``) is labelled by its spec with only the parameters that vary (``euler[steps=4]``)."""

AXES: tuple[str, ...] = (*[c for c in IDENTITY_COLUMNS if c != "cell_id"], RUN)
"""Every column a table can be split by (``--rows``/``--cols``)."""

CONFIG_AXES: tuple[tuple[str, ...], ...] = (
    *((row.key, row.spec_column) for row in GRID_AXES),
    ("trained_with",),
    *((name,) for name in columns_in(BUDGET, PROTOCOL)),
    (RUN,),
)
"""Axes that tell configurations apart; one that varies but is not asked for is added to the rows
(``trained_with``: models that ``cnfbench evaluate`` evaluated with another solver are not seeds of one)."""

_NOT_METRICS = {c.name for c in COLUMNS if c.group != METRIC} | {RUN}


@dataclass(frozen=True)
class Metric:
    """How a metric is shown and compared: header (with unit), the displayed unit, scale, decimals, goal, etc."""

    name: str
    header: str
    unit: str
    scale: float
    decimals: int
    goal: str | None
    comparison: str = RATIO
    machine: bool = False
    flag_sensitive: bool = False

    @classmethod
    def of(cls, column: Column) -> Metric:
        return cls(column.name, column.header, column.shown_unit, float(column.scale), column.decimals, column.goal,
                   column.comparison or RATIO, column.machine, column.flag_sensitive)

    def badness(self, value: float) -> float:
        """A number that is smaller when ``value`` is better (``nan`` for metrics without a goal)."""
        return badness(self.goal, value)


def declared_columns() -> dict[str, Column]:
    """The columns that loaded plugins declare through ``cnfbench_columns``, by name.

    The plugins are those ``cnfbench run`` loads without ``--plugin``: installed entry points and
    ``CNFBENCH_PLUGINS``. They are loaded on first use, once per setting of those variables.
    """
    from cnfbench.plugin_manager import AUTOLOAD_ENV, PLUGINS_ENV

    return _declared_columns(os.environ.get(PLUGINS_ENV, ""), os.environ.get(AUTOLOAD_ENV, ""))


@functools.lru_cache(maxsize=4)
def _declared_columns(plugins: str, autoload: str) -> dict[str, Column]:
    del plugins, autoload  # the cache key: create_plugin_manager reads them from the environment
    from cnfbench.plugin_manager import PluginLoadError, create_plugin_manager

    try:
        pm, _ = create_plugin_manager()
        return plugin_columns(pm)
    except (PluginLoadError, ColumnError) as exc:
        raise ReportError(f"cannot read the plugins' column declarations: {exc}") from None


def column_of(name: str) -> Column | None:
    """The catalogue's column ``name``, or a loaded plugin's declaration of it; ``None`` when nobody declares it.

    Plugins are loaded only for a name that is not one of cnfbench's own columns.
    """
    if name in COLUMNS_BY_NAME:
        return COLUMNS_BY_NAME[name]
    return declared_columns().get(name)


ROW_UNIT_WORDS: dict[str, str] = {"train_loss_unit": "objective's unit"}
"""Columns that hold another column's unit row by row (the catalogue gives that column's ``unit`` as their name),
and how a header says the unit where the rows shown differ in it."""


def unit_column(name: str) -> str | None:
    """The column that holds metric ``name``'s unit row by row (``train_loss_unit`` for ``final_train_loss``, whose
    unit is its objective's), or ``None`` when the catalogue gives the unit itself."""
    column = column_of(name)
    if column is None or column.unit not in COLUMNS_BY_NAME:
        return None
    return column.unit


def row_units(cells: pd.DataFrame, name: str) -> list[str]:
    """The distinct units metric ``name`` has in the finished ``cells`` (its unit column's values, in order of first
    appearance; empty when the unit is the catalogue's or no row records it)."""
    holder = unit_column(name)
    if holder is None or holder not in cells:
        return []
    done = cells[cells["status"] == "done"] if "status" in cells else cells
    shown = done[pd.to_numeric(done[name], errors="coerce").notna()] if name in done else done
    return list(dict.fromkeys(str(unit) for unit in shown[holder] if isinstance(unit, str) and unit))


def metric_info(name: str, cells: pd.DataFrame | None = None) -> Metric:
    """Display information for a metric column (an undeclared plugin column gets its name and no unit).

    A metric whose unit differs row by row (:func:`unit_column`) is headed by the one unit of ``cells`` when they
    share it, else in words (:data:`ROW_UNIT_WORDS`: ``final_train_loss [objective's unit]``), never by the name of
    the column that holds it."""
    column = column_of(name)
    if column is None:
        return Metric(name, name, "", 1.0, 3, None)
    holder = unit_column(name)
    if holder is not None:
        units = row_units(cells, name) if cells is not None else []
        shown = units[0] if len(units) == 1 else ROW_UNIT_WORDS.get(holder, f"unit in {holder}")
        column = dataclasses.replace(column, display_unit=shown)
    return Metric.of(column)


def available_metrics(cells: pd.DataFrame) -> list[str]:
    """Numeric, non-identity columns of ``cells``: documented ones in documented order, then plugin columns."""
    numeric = [c for c in cells.columns if c not in _NOT_METRICS and not c.startswith("_")
               and (pd.api.types.is_numeric_dtype(cells[c]) or cells[c].isna().all())
               and not pd.api.types.is_bool_dtype(cells[c])]
    order = {c.name: i for i, c in enumerate(COLUMNS)}
    return sorted(numeric, key=lambda c: (order.get(c, len(order)), c))


def check_metrics(cells: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """``metrics`` unchanged, or :class:`ReportError` naming the first unknown one and listing the valid ones."""
    valid = available_metrics(cells)
    if not metrics:
        raise ReportError("no metric given; valid metrics: " + ", ".join(valid))
    for name in metrics:
        if name not in valid:
            raise ReportError(f"unknown metric {name!r}; valid metrics: {', '.join(valid)}"
                              f"{did_you_mean(name, valid)}")
    return list(metrics)


def default_metrics(cells: pd.DataFrame, use: str = REPORT) -> list[str]:
    """The catalogue's default metrics of table ``use`` (and loaded plugins' declared ones) with a value in ``cells``.

    ``use`` is one of :data:`cnfbench.columns.DEFAULT_USES`; a report falls back to ``nll``.
    """
    valid = available_metrics(cells)
    extra = [name for name in valid if name not in COLUMNS_BY_NAME]
    declared = [c for c in (declared_columns() if extra else {}).values() if c.name in extra]
    names = [*catalogue_defaults(use), *catalogue_defaults(use, declared)]
    found = [m for m in names if m in valid and cells[m].notna().any()]
    return found or (["nll"] if use == REPORT else [])


def check_axes(cells: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """``axes`` unchanged, or :class:`ReportError` naming the first unknown one and listing the valid ones."""
    valid = [a for a in AXES if a in cells.columns or (a in AXIS_SPECS and AXIS_SPECS[a] in cells.columns)]
    for axis in axes:
        if axis not in valid:
            raise ReportError(f"unknown column {axis!r}; valid columns: {', '.join(valid)}"
                              f"{did_you_mean(axis, valid)}")
    if len(set(axes)) != len(axes):
        raise ReportError(f"a column appears twice in {', '.join(axes)}")
    return list(axes)


def split_list(values: Iterable[str]) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (for repeatable comma-list options)."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]
