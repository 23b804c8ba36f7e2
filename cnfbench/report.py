"""Reports from finished runs: load run folders, aggregate seeds, pivot metrics, render tables.

The pipeline a notebook user and ``cnfbench report`` share::

    cells = cnfbench.load_results("results/grid1")          # one row per cell
    table = cnfbench.pivot(cells, rows=["dataset"], cols=["solver", "trace"], metrics=["nll_ref"])
    print(cnfbench.to_markdown(table))                      # or to_latex / to_csv / to_json / to_text

:func:`aggregate` turns cell rows into one row per group (seeds aggregated:
mean, standard deviation and count by default; median and quartiles with
``stat="median"``). :func:`pivot` arranges those groups as a table and marks
the best entry of each dataset. What "best" means for a metric is defined
once, in :data:`METRIC_GOALS`. Only cells with status ``done`` enter an
aggregate; failed cells are counted and named in the notes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cnfbench.columns import COLUMNS
from cnfbench.messages import one_line
from cnfbench.results import CELLS_CSV, CELLS_PARQUET, RUN_JSON, ResultsError, RunStore
from cnfbench.summary import SUMMARY_METRICS, compact_labels, flag_notes, grid_notes


class ReportError(ValueError):
    """A bad request (unknown metric or column, empty selection); the message is one line naming what is valid."""


# --------------------------------------------------------------------------------------------------- metrics

METRIC_GOALS: dict[str, str] = {
    # "min": the lowest value is best; "one": the value closest to 1 (smallest |value - 1|) is best.
    # Metrics not listed here (entropy, parameter counts, plugin columns) have no best.
    "final_train_loss": "min",
    "nll": "min",
    "nll_ref": "min",
    "excess_nll": "min",
    "mass": "one",
    "mass_ref": "one",
    "nfe_expected_per_solve": "min",
    "nfe_forward_mean": "min",
    "nfe_forward_max": "min",
    "nfe_backward_mean": "min",
    "nfe_backward_max": "min",
    "nfe_eval": "min",
    "nfe_eval_max_chunk": "min",
    "nfe_ref": "min",
    "train_time_s": "min",
    "iter_time_median_s": "min",
    "eval_time_s": "min",
    "ref_time_s": "min",
    "mass_time_s": "min",
    "mass_ref_time_s": "min",
    "cell_time_s": "min",
    "peak_memory_mib": "min",
}
"""What "better" means for each metric, in one place (used for bold entries and by ``compare``)."""

GOAL_TEXT = {"min": "lowest", "one": "closest to 1"}

FLAG_SENSITIVE = ("nll", "mass")
"""Metrics of the training solver's density, which the ``valid`` flag declares untrustworthy: an entry with a
flagged cell is marked ``(!)`` and never "best" (Euler's ``nll`` can even fall below the data's entropy)."""

DEFAULT_METRICS = ("nll", "nll_ref", "excess_nll", "mass", "nfe_forward_mean", "train_time_s")
"""The metrics of a report when none are asked for (those present in the runs)."""

IDENTITY_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS[: [c.name for c in COLUMNS].index("device") + 1])
"""The columns that say which cell a row is (``cell_id`` … ``device``), as written by the runner."""

_NOT_METRICS = set(IDENTITY_COLUMNS) | {"status", "reason", "valid", "validity_reason", "memory_kind", "run"}

FAMILY_AXES = {"dataset": "dataset_spec", "field": "field_spec", "solver": "solver_spec", "trace": "trace_spec"}
"""A family axis (``solver``) is labelled by its spec with only the parameters that vary (``euler[steps=4]``)."""

AXES: tuple[str, ...] = (*[c for c in IDENTITY_COLUMNS if c != "cell_id"], "run")
"""Every column a table can be split by (``--rows``/``--cols``)."""

CONFIG_AXES: tuple[tuple[str, ...], ...] = (
    ("dataset", "dataset_spec"), ("field", "field_spec"), ("solver", "solver_spec"), ("trace", "trace_spec"),
    ("iterations",), ("batch_size",), ("lr",), ("max_nfe",), ("eval_trace_spec",), ("ref_solver_spec",),
    ("ref_dtype",), ("eval_batch_size",), ("mass_grid",), ("device",), ("run",),
)
"""Axes that tell configurations apart; one that varies but is not asked for is added to the rows."""

_UNITS = {c.name: c.unit for c in COLUMNS}
_SUMMARY = {name: (header, scale, decimals) for name, header, scale, decimals in SUMMARY_METRICS}


@dataclass(frozen=True)
class Metric:
    """How a metric is shown: header (with unit), the unit alone, display scale, decimals, and its goal."""

    name: str
    header: str
    unit: str
    scale: float
    decimals: int
    goal: str | None

    def badness(self, value: float) -> float:
        """A number that is smaller when ``value`` is better (``nan`` for metrics without a goal)."""
        if self.goal == "min":
            return value
        if self.goal == "one":
            return abs(value - 1.0)
        return math.nan


def metric_info(name: str) -> Metric:
    """Display information for a metric column (plugin columns get their name and no unit)."""
    goal = METRIC_GOALS.get(name)
    if name in _SUMMARY:
        header, scale, decimals = _SUMMARY[name]
        unit = header[header.rfind("[") + 1: -1] if header.endswith("]") else _UNITS.get(name, "")
        if not header.endswith("]"):
            header = f"{header} [{unit}]"
        return Metric(name, header, unit, scale, decimals, goal)
    unit = _UNITS.get(name, "")
    unit = "" if unit == "—" else unit
    decimals = 1 if unit in ("evaluations", "MiB") else 0 if unit == "parameters" else 3
    return Metric(name, f"{name} [{unit}]" if unit else name, unit, 1.0, decimals, goal)


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
            raise ReportError(f"unknown metric {name!r}; valid metrics: {', '.join(valid)}")
    return list(metrics)


def default_metrics(cells: pd.DataFrame) -> list[str]:
    """:data:`DEFAULT_METRICS` that have at least one value in ``cells``."""
    valid = set(available_metrics(cells))
    return [m for m in DEFAULT_METRICS if m in valid and cells[m].notna().any()] or ["nll"]


def check_axes(cells: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """``axes`` unchanged, or :class:`ReportError` naming the first unknown one and listing the valid ones."""
    valid = [a for a in AXES if a in cells.columns or (a in FAMILY_AXES and FAMILY_AXES[a] in cells.columns)]
    for axis in axes:
        if axis not in valid:
            raise ReportError(f"unknown column {axis!r}; valid columns: {', '.join(valid)}")
    if len(set(axes)) != len(axes):
        raise ReportError(f"a column appears twice in {', '.join(axes)}")
    return list(axes)


# --------------------------------------------------------------------------------------------------- loading

@dataclass
class Run:
    """One run folder as read: its cells, curves and provenance, and what was damaged or missing."""

    path: Path
    name: str
    cells: pd.DataFrame
    curves: pd.DataFrame
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def versions(self) -> dict[str, Any]:
        versions = self.provenance.get("versions")
        return versions if isinstance(versions, dict) else {}


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read a run folder, using what is intact.

    Raises :class:`~cnfbench.results.ResultsError` (one line naming the path) when there is no run
    folder or neither ``cells.parquet`` nor ``cells.csv`` can be read. A damaged ``cells.parquet``
    with an intact ``cells.csv``, a damaged ``curves.parquet`` or an unreadable or hand-edited
    ``run.json`` give a warning in :attr:`Run.warnings` instead.
    """
    run_dir = Path(path)
    if not run_dir.exists():
        raise ResultsError(f"no run folder at {run_dir}", run_dir)
    if run_dir.is_file():
        if run_dir.name not in (CELLS_PARQUET, CELLS_CSV):
            raise ResultsError(f"{run_dir} is a file, not a run folder", run_dir)
        run_dir = run_dir.parent
    parquet, csv_path = run_dir / CELLS_PARQUET, run_dir / CELLS_CSV
    if not parquet.exists() and not csv_path.exists():
        raise ResultsError(f"{run_dir} holds no {CELLS_PARQUET} or {CELLS_CSV}: not a run folder", run_dir)
    store = RunStore(run_dir)
    cells, warnings = store.read_cells()
    missing = [c for c in ("cell_id", "status") if c not in cells.columns]
    if missing:
        source = parquet if not warnings else csv_path
        raise ResultsError(f"{source} has no {' or '.join(missing)} column: not a cnfbench results file", source)
    try:
        curves = store.read_curves()
    except ResultsError as exc:
        warnings.append(f"{exc}; no training curves")
        curves = pd.DataFrame()
    try:
        provenance = store.read_run_json()
        if not provenance:
            warnings.append(f"{run_dir / RUN_JSON} is missing: versions and machine unknown")
    except ResultsError as exc:
        warnings.append(f"{exc}; versions and machine unknown")
        provenance = {}
    versions = provenance.get("versions")
    if provenance and not (isinstance(versions, dict) and all(isinstance(v, (str, type(None)))
                                                               for v in versions.values())):
        warnings.append(f"{run_dir / RUN_JSON}: 'versions' is not an object of version strings; versions unknown")
        provenance = {**provenance, "versions": {}}
    return Run(run_dir, run_dir.resolve().name, cells, curves, provenance, warnings)


def combine(runs: Sequence[Run]) -> pd.DataFrame:
    """The cells of several runs in one frame, with a ``run`` column naming each row's run folder."""
    names = _unique_names(runs)
    frames = [run.cells.assign(run=name) for run, name in zip(runs, names, strict=True)]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["cell_id", "status", "run"])
    return pd.concat(frames, ignore_index=True)


def combine_curves(runs: Sequence[Run]) -> pd.DataFrame:
    """The training curves of several runs in one frame, with the same ``run`` column as :func:`combine`."""
    frames = [run.curves.assign(run=name) for run, name in zip(runs, _unique_names(runs), strict=True)
              if not run.curves.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _unique_names(runs: Sequence[Run]) -> list[str]:
    names = [run.name for run in runs]
    for index, run in enumerate(runs):
        if names.count(run.name) > 1:
            names[index] = f"{run.path.resolve().parent.name}/{run.name}"
    for index, name in enumerate(names):
        if names.count(name) > 1:
            names[index] = f"{name}#{index + 1}"
    return names


# --------------------------------------------------------------------------------------------------- aggregation

def format_value(value: Any) -> str:
    """A label for an identity value: ``—`` for missing, integers without ``.0``."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "—"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def axis_labels(cells: pd.DataFrame, axis: str) -> pd.Series:
    """The label of every row on ``axis``: family axes show only their varying parameters."""
    if axis in FAMILY_AXES and FAMILY_AXES[axis] in cells:
        return compact_labels(cells[FAMILY_AXES[axis]].astype(str))
    if axis == "run" and axis not in cells:
        return pd.Series(["—"] * len(cells), index=cells.index, dtype=object)
    return cells[axis].map(format_value).astype(object)


def varying_axes(cells: pd.DataFrame, asked: Sequence[str]) -> list[str]:
    """Configuration axes with more than one value in ``cells`` that ``asked`` does not cover."""
    added = []
    for names in CONFIG_AXES:
        if any(name in asked for name in names):
            continue
        column = names[-1]
        if column in cells and cells[column].map(format_value).nunique() > 1:
            added.append(names[0])
    return added


def _labelled(cells: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    frame = cells.copy()
    for axis in by:
        frame[f"_by_{axis}"] = axis_labels(cells, axis)
    return frame


def aggregate(cells: pd.DataFrame, by: Sequence[str], metrics: Sequence[str], stat: str = "mean") -> pd.DataFrame:
    """One row per distinct combination of ``by`` (labels as in :func:`axis_labels`), seeds aggregated.

    Columns: the ``by`` axes; ``cells`` (rows in the group), ``done`` (rows with status done),
    ``failed`` (e.g. ``"1 diverged"``, empty when none), ``flagged`` (done rows with ``valid``
    false: the training solver's density is not normalized); then per metric ``M``, over the done rows
    with a finite value, in the column's own unit: ``M_mean``, ``M_std`` (sample standard
    deviation, ``nan`` for one value) and ``M_n`` with ``stat="mean"``, or ``M_median``, ``M_q1``,
    ``M_q3`` (quartiles, linear interpolation) and ``M_n`` with ``stat="median"``. Groups keep the
    order in which they first appear.
    """
    if stat not in ("mean", "median"):
        raise ReportError(f"unknown statistic {stat!r}; valid: mean, median")
    by = check_axes(cells, by)
    metrics = check_metrics(cells, metrics)
    frame = _labelled(cells, by)
    keys = [f"_by_{axis}" for axis in by]
    rows = []
    groups = frame.groupby(keys, sort=False, dropna=False) if keys else [((), frame)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        done = group[group["status"] == "done"]
        failed = group.loc[group["status"] != "done", "status"].value_counts()
        row.update(cells=len(group), done=len(done),
                   failed=", ".join(f"{count} {status}" for status, count in failed.items()),
                   flagged=int(_flagged(done).sum()))
        for metric in metrics:
            values = pd.to_numeric(done[metric], errors="coerce").to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            n = len(values)
            if stat == "mean":
                row[f"{metric}_mean"] = float(values.mean()) if n else math.nan
                row[f"{metric}_std"] = float(values.std(ddof=1)) if n > 1 else math.nan
            else:
                row[f"{metric}_median"] = float(np.median(values)) if n else math.nan
                row[f"{metric}_q1"] = float(np.percentile(values, 25)) if n else math.nan
                row[f"{metric}_q3"] = float(np.percentile(values, 75)) if n else math.nan
            row[f"{metric}_n"] = n
        rows.append(row)
    return pd.DataFrame(rows)


def _flagged(cells: pd.DataFrame) -> pd.Series:
    """True for rows whose ``valid`` is false (also when read back from CSV as text)."""
    if "valid" not in cells:
        return pd.Series(False, index=cells.index)
    return cells["valid"].map(lambda v: str(v).strip().lower() in ("false", "0", "0.0"))


# --------------------------------------------------------------------------------------------------- pivot

@dataclass(frozen=True)
class Entry:
    """One aggregated value of a pivot table, in the metric's display unit."""

    center: float  # mean or median
    low: float  # std (mean) or first quartile (median)
    high: float  # nan (mean) or third quartile (median)
    n: int  # done cells with a finite value
    cells: int  # cells in the group
    failed: str  # e.g. "1 diverged"
    best: bool = False
    flagged: bool = False  # a metric of FLAG_SENSITIVE with a cell whose density is flagged invalid


@dataclass
class PivotTable:
    """A metric (or several) arranged by row and column axes; what the renderers draw."""

    metrics: list[Metric]
    stat: str
    rows: list[str]
    cols: list[str]
    row_keys: list[tuple[str, ...]]
    col_keys: list[tuple[str, ...]]
    entries: dict[tuple[tuple[str, ...], tuple[str, ...], str], Entry]
    notes: list[str] = field(default_factory=list)

    @property
    def common_n(self) -> int | None:
        """The number of seeds behind every entry, when it is the same for all of them."""
        counts = {e.n for e in self.entries.values() if e.n}
        return counts.pop() if len(counts) == 1 else None

    def value_columns(self) -> list[tuple[tuple[str, ...], Metric]]:
        return [(col_key, metric) for col_key in self.col_keys for metric in self.metrics]

    def header(self, col_key: tuple[str, ...], metric: Metric) -> str:
        """The header of a value column; it always carries the unit."""
        if not self.cols:
            return metric.header
        label = ", ".join(col_key)
        if len(self.metrics) == 1:
            return f"{label} [{metric.unit}]" if metric.unit else label
        return f"{label}: {metric.header}"

    def caption(self, marked: str = "in bold") -> str:
        what = "; ".join(m.header for m in self.metrics)
        how = "mean ± std" if self.stat == "mean" else "median [first–third quartile]"
        n = self.common_n
        seeds = f"n = {n} seed{'s' if n != 1 else ''} per entry" if n else "n seeds per entry in parentheses"
        goals = sorted({GOAL_TEXT[m.goal] for m in self.metrics if m.goal})
        best = f"; best per dataset {marked} ({' / '.join(goals)})" if goals else ""
        return f"{what}: {how} over seeds, {seeds}{best}"


def pivot(cells: pd.DataFrame, rows: Sequence[str] = (), cols: Sequence[str] = (),
          metrics: Sequence[str] | None = None, stat: str = "mean") -> PivotTable:
    """Arrange the aggregated ``metrics`` with ``rows`` down and ``cols`` across.

    Configuration axes that vary in ``cells`` but are in neither ``rows`` nor ``cols`` are added to
    the rows (with a note), so that different configurations are never averaged together. With no
    ``rows`` and no ``cols`` the rows are every varying configuration axis (dataset, field, solver,
    trace, …) and the columns are the metrics. The best entry (see :data:`METRIC_GOALS`) among those
    of the same metric and dataset is marked ``best`` when there are at least two.
    """
    rows, cols = list(rows), list(cols)
    asked_rows = bool(rows)
    check_axes(cells, rows + cols)
    metrics = check_metrics(cells, list(metrics) if metrics else default_metrics(cells))
    if cells.empty:
        raise ReportError("no cells to report")
    added = varying_axes(cells, rows + cols)
    if not rows and not cols:
        rows = added or ["dataset"]
    else:
        rows = rows + added
    if not rows:
        rows = ["dataset"] if "dataset" not in cols else []
    notes = []
    if added and (asked_rows or cols):
        verb = "varies" if len(added) == 1 else "vary"
        notes.append(f"rows also split by {', '.join(added)}, which {verb} in these cells")
    table = aggregate(cells, rows + cols, metrics, stat)
    infos = [metric_info(m) for m in metrics]
    row_keys = list(dict.fromkeys(tuple(r) for r in table[rows].itertuples(index=False, name=None)))
    col_keys = list(dict.fromkeys(tuple(r) for r in table[cols].itertuples(index=False, name=None))) if cols \
        else [()]
    entries: dict[tuple[tuple[str, ...], tuple[str, ...], str], Entry] = {}
    for record in table.to_dict("records"):
        row_key = tuple(record[a] for a in rows)
        col_key = tuple(record[a] for a in cols)
        for info in infos:
            m = info.name
            if stat == "mean":
                center, low, high = record[f"{m}_mean"], record[f"{m}_std"], math.nan
                low = low * info.scale
            else:
                center, low, high = record[f"{m}_median"], record[f"{m}_q1"] * info.scale, \
                    record[f"{m}_q3"] * info.scale
            entries[(row_key, col_key, m)] = Entry(center * info.scale, low, high, int(record[f"{m}_n"]),
                                                   int(record["cells"]), record["failed"],
                                                   flagged=m in FLAG_SENSITIVE and record["flagged"] > 0)
    result = PivotTable(infos, stat, rows, cols, row_keys, col_keys, entries, notes)
    _mark_best(result)
    result.notes.extend(failure_notes(cells, rows + cols))
    if any(e.flagged for e in entries.values()):
        result.notes.append("(!) = a cell of this entry is flagged: its training solver's density is not normalized "
                            "(nll below the true entropy or mass off 1), so it is never marked best:")
        result.notes.extend(dict.fromkeys(flag_notes(cells)))
    result.notes.extend(grid_notes(cells))
    return result


def _dataset_of(table: PivotTable, row_key: tuple[str, ...], col_key: tuple[str, ...]) -> str:
    for axes, key in ((table.rows, row_key), (table.cols, col_key)):
        for axis in ("dataset", "dataset_spec"):
            if axis in axes:
                return key[axes.index(axis)]
    return ""


def _mark_best(table: PivotTable) -> None:
    """Mark the best entry per (metric, dataset) when at least two entries have a value; flagged ones never win."""
    groups: dict[tuple[str, str], list[tuple[Any, float, bool]]] = {}
    for (row_key, col_key, name), entry in table.entries.items():
        info = next(m for m in table.metrics if m.name == name)
        if not info.goal or not entry.n or not math.isfinite(entry.center):
            continue
        rounded = round(entry.center, info.decimals)
        groups.setdefault((name, _dataset_of(table, row_key, col_key)), []).append(
            ((row_key, col_key, name), info.badness(rounded), not entry.flagged))
    for candidates in groups.values():
        eligible = [(key, score) for key, score, ok in candidates if ok]
        if len(candidates) < 2 or not eligible:
            continue
        best = min(score for _, score in eligible)
        for key, score in eligible:
            if math.isclose(score, best, rel_tol=1e-12, abs_tol=1e-12):
                table.entries[key] = dataclasses.replace(table.entries[key], best=True)


def failure_notes(cells: pd.DataFrame, by: Sequence[str] = ()) -> list[str]:
    """One line per cell that did not finish: where, which seed, status and reason."""
    failed = cells[cells["status"] != "done"]
    if failed.empty:
        return []
    labels = {axis: axis_labels(cells, axis) for axis in by if axis != "seed"}
    notes = []
    for index, row in failed.iterrows():
        where = ", ".join(labels[axis].loc[index] for axis in labels) or str(row["cell_id"])
        reason = one_line(row.get("reason", "") if isinstance(row.get("reason", ""), str) else "", 120)
        seed = f" seed {format_value(row['seed'])}" if "seed" in row else ""
        notes.append(f"{where}{seed}: {row['status']}" + (f" ({reason})" if reason else ""))
    return notes


# --------------------------------------------------------------------------------------------------- rendering

def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if math.isfinite(value) else "—"


def entry_text(table: PivotTable, entry: Entry | None, metric: Metric, pm: str = "±",
               interval: tuple[str, str, str] = ("[", "–", "]")) -> str:
    """``mean ± std`` or ``median [q1–q3]`` with the metric's decimals, ``(n=k)`` when seeds differ."""
    if entry is None:
        return ""
    if not entry.n:
        return entry.failed or "—"
    d = metric.decimals
    text = _number(entry.center, d)
    if table.stat == "mean" and math.isfinite(entry.low):
        text += f" {pm} {_number(entry.low, d)}"
    elif table.stat == "median" and entry.n > 1:
        text += f" {interval[0]}{_number(entry.low, d)}{interval[1]}{_number(entry.high, d)}{interval[2]}"
    if table.common_n is None or entry.n != entry.cells:
        text += f" (n={entry.n})"
    return text + (" (!)" if entry.flagged else "")


def _grid(table: PivotTable, cell: Any) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of display cells; ``cell(entry, metric)`` renders one value."""
    headers = [*table.rows, *(table.header(k, m) for k, m in table.value_columns())]
    body = []
    for row_key in table.row_keys:
        values = [cell(table.entries.get((row_key, col_key, m.name)), m) for col_key, m in table.value_columns()]
        body.append([*row_key, *values])
    return headers, body


def to_text(table: PivotTable) -> str:
    """A plain-text table for the terminal; the best entries end in ``*``."""
    def cell(entry: Entry | None, metric: Metric) -> str:
        return entry_text(table, entry, metric) + (" *" if entry is not None and entry.best else "")

    headers, body = _grid(table, cell)
    lines = [table.caption(marked="marked *"), text_table(headers, body, len(table.rows))]
    return "\n".join([*lines, *(f"note: {n}" for n in table.notes)])


def text_table(headers: Sequence[str], body: Sequence[Sequence[Any]], left: int) -> str:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in body)) for i, h in enumerate(headers)]

    def line(values: Sequence[Any]) -> str:
        return "  ".join(str(v).ljust(w) if i < left else str(v).rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in body)])


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def to_markdown(table: PivotTable) -> str:
    """A GitHub-flavoured Markdown table with an italic caption; best entries in ``**bold**``."""
    def cell(entry: Entry | None, metric: Metric) -> str:
        text = entry_text(table, entry, metric)
        return f"**{text}**" if entry is not None and entry.best else text

    headers, body = _grid(table, cell)
    align = ["---"] * len(table.rows) + ["---:"] * (len(headers) - len(table.rows))
    lines = [f"*{table.caption()}*", "", "| " + " | ".join(_md_escape(h) for h in headers) + " |",
             "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in body]
    if table.notes:
        lines += ["", *(f"- {_md_escape(n)}" for n in table.notes)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "–": "--", "—": "---", "|": r"$|$", "<": r"$<$", ">": r"$>$"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: PivotTable, label: str = "tab:cnfbench") -> str:
    """A ``table`` environment with a booktabs ``tabular``; best entries in bold. Needs ``\\usepackage{booktabs}``."""
    def cell(entry: Entry | None, metric: Metric) -> str:
        if entry is None:
            return ""
        if not entry.n:
            return latex_escape(entry.failed or "—")
        d = metric.decimals
        math_text = _number(entry.center, d)
        if table.stat == "mean" and math.isfinite(entry.low):
            math_text += rf" \pm {_number(entry.low, d)}"
        elif table.stat == "median" and entry.n > 1:
            math_text += rf"\ [{_number(entry.low, d)}, {_number(entry.high, d)}]"
        text = rf"$\mathbf{{{math_text}}}$" if entry.best else f"${math_text}$"
        if table.common_n is None or entry.n != entry.cells:
            text += f" ($n={entry.n}$)"
        return text + (" (!)" if entry.flagged else "")

    headers, body = _grid(table, cell)
    left = len(table.rows)
    spec = "l" * left + "r" * (len(headers) - left)
    lines = [
        r"% generated by cnfbench report; needs \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(table.caption())}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in headers) + r" \\",
        r"\midrule",
    ]
    for row in body:
        lines.append(" & ".join([*(latex_escape(v) for v in row[:left]), *row[left:]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _stat_names(stat: str) -> tuple[str, str, str]:
    return ("mean", "std", "") if stat == "mean" else ("median", "q1", "q3")


def to_csv(table: PivotTable) -> str:
    """The pivot as CSV with numbers, not text.

    Per value column: ``mean``, ``std``, ``n`` and ``best`` (or ``median``, ``q1``, ``q3``, ``n``, ``best``).
    """
    names = _stat_names(table.stat)
    headers = list(table.rows)
    for col_key, metric in table.value_columns():
        base = table.header(col_key, metric)
        unit = f" [{metric.unit}]" if metric.unit else ""
        label = base[: -len(unit)] if unit and base.endswith(unit) else base
        headers += [f"{label} {s}{unit}" for s in names if s] + [f"{label} n", f"{label} best"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    for row_key in table.row_keys:
        values: list[Any] = list(row_key)
        for col_key, metric in table.value_columns():
            entry = table.entries.get((row_key, col_key, metric.name))
            if entry is None:
                values += [""] * (len([s for s in names if s]) + 2)
                continue
            numbers = [entry.center, entry.low] + ([entry.high] if table.stat == "median" else [])
            values += [repr(float(v)) if math.isfinite(v) else "" for v in numbers] + [entry.n, entry.best]
        writer.writerow(values)
    return out.getvalue()


def to_json(table: PivotTable) -> str:
    """The pivot as JSON: caption, axes, metrics (with unit and goal) and one object per entry."""
    def number(value: float) -> float | None:
        return float(value) if math.isfinite(value) else None

    names = _stat_names(table.stat)
    entries = []
    for (row_key, col_key, metric), entry in table.entries.items():
        item: dict[str, Any] = {"row": dict(zip(table.rows, row_key, strict=True)),
                                "col": dict(zip(table.cols, col_key, strict=True)), "metric": metric,
                                names[0]: number(entry.center), names[1]: number(entry.low)}
        if names[2]:
            item[names[2]] = number(entry.high)
        item.update(n=entry.n, cells=entry.cells, failed=entry.failed, best=entry.best, flagged=entry.flagged)
        entries.append(item)
    data = {"caption": table.caption(), "stat": table.stat, "rows": table.rows, "cols": table.cols,
            "metrics": [{"name": m.name, "header": m.header, "unit": m.unit, "scale": m.scale, "goal": m.goal}
                        for m in table.metrics],
            "entries": entries, "notes": table.notes}
    return json.dumps(data, indent=2) + "\n"


def split_list(values: Iterable[str]) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (for repeatable comma-list options)."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]
