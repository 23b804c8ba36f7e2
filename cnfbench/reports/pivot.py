"""Pivot tables: aggregated metrics arranged by row and column axes, the best entry per dataset marked, with notes.

:func:`pivot` arranges :func:`~cnfbench.reports.aggregate.aggregate`'s groups as
a :class:`PivotTable` (what the renderers draw) and marks the best entry of each
metric within a dataset, by the goal the column catalogue gives the metric. An entry of a configuration with a
flagged cell (its solver's density is not normalized) is never best, in any column, so no renderer can mark it.
Failed cells are counted in their entry and named in the notes; a note also says when a table of time or memory
entries compares cells run with different torch thread counts or concurrency (:mod:`~cnfbench.reports.sharing`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cnfbench.labels import SEPARATOR
from cnfbench.messages import one_line
from cnfbench.reports.aggregate import aggregate, axis_labels, format_value, varying_axes
from cnfbench.reports.escape import html_escape
from cnfbench.reports.metrics import (
    DATASET,
    GOAL_TEXT,
    Metric,
    ReportError,
    check_axes,
    check_metrics,
    default_metrics,
    metric_info,
    row_units,
    unit_column,
)
from cnfbench.reports.sharing import sharing_note
from cnfbench.summary import flag_notes, grid_notes


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
    flagged: bool = False  # a flag-sensitive metric with a cell whose density is flagged invalid
    significant: bool = False  # best, and better than every other unflagged entry of its dataset by Welch's t-test
    invalid: bool = False  # a cell of the entry's configuration is flagged: never best, whatever the metric

    @property
    def marked(self) -> bool:
        """Whether renderers mark the entry (bold, ``*``): the best, significantly, and never on a flagged row."""
        return self.best and self.significant and not self.invalid


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
        goals = sorted({GOAL_TEXT[m.goal] for m in self.metrics if m.goal})
        if n == 1:  # no spread to show, and nothing a test could mark best
            if not goals:
                best = ""
            elif self.stat == "mean":
                best = "; no entry marked best (that takes Welch's t-test over 2 or more seeds)"
            else:
                best = f"; best per {DATASET.key} {marked} ({' / '.join(goals)})"
            return f"{what}: one seed per entry, no spread{best}"
        seeds = f"n = {n} seeds per entry" if n else "n seeds per entry in parentheses"
        tested = (f" where it is better than every other entry by Welch's t-test over the seeds (p < "
                  f"{SIGNIFICANCE:g}; with fewer than 2 seeds, untested: not marked)") if self.stat == "mean" \
            else " (medians: the best value, not tested for significance)"
        best = f"; best per {DATASET.key} {marked} ({' / '.join(goals)}){tested}" if goals else ""
        return f"{what}: {how} over seeds, {seeds}{best}"

    def to_frame(self) -> pd.DataFrame:
        """The numbers, for a notebook: one row per row key (indexed by the row axes), one column per (column
        label, metric, statistic) — ``mean``/``std`` or ``median``/``q1``/``q3``, and ``n`` — in the metric's
        display unit."""
        stats = ("mean", "std", "n") if self.stat == "mean" else ("median", "q1", "q3", "n")
        columns, data = [], []
        for col_key, metric in self.value_columns():
            for stat in stats:
                columns.append((", ".join(col_key), metric.name, stat))
        for row_key in self.row_keys:
            values = []
            for col_key, metric in self.value_columns():
                entry = self.entries.get((row_key, col_key, metric.name))
                numbers = (entry.center, entry.low, entry.high, entry.n) if entry is not None else \
                    (math.nan, math.nan, math.nan, 0)
                values += [numbers[0], numbers[1], numbers[3]] if self.stat == "mean" else list(numbers)
            data.append(values)
        if len(self.rows) == 1:
            index: Any = pd.Index([key[0] for key in self.row_keys], name=self.rows[0])
        else:
            index = pd.MultiIndex.from_tuples(self.row_keys, names=self.rows) if self.rows else None
        frame = pd.DataFrame(data, index=index, columns=pd.MultiIndex.from_tuples(
            columns, names=["column", "metric", "statistic"]))
        return frame.droplevel("column", axis=1) if not self.cols else frame

    def _repr_html_(self) -> str:
        """The table as a notebook shows it: the entries as the text report writes them, caption and notes."""
        def text(row_key: tuple[str, ...], col_key: tuple[str, ...], metric: Metric) -> str:
            entry = self.entries.get((row_key, col_key, metric.name))
            return entry_text(self, entry, metric) + (" *" if entry is not None and entry.marked else "")

        frame = pd.DataFrame([[*row_key, *(text(row_key, k, m) for k, m in self.value_columns())]
                              for row_key in self.row_keys],
                             columns=[*self.rows, *(self.header(k, m) for k, m in self.value_columns())])
        notes = "".join(f"<br>note: {html_escape(note)}" for note in self.notes)
        return f"<p>{html_escape(self.caption(marked='marked *'))}</p>{frame.to_html(index=False)}" + \
            (f"<p>{notes}</p>" if notes else "")


def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if math.isfinite(value) else "—"


def entry_value(table: PivotTable, entry: Entry, metric: Metric, pm: str = " ± ",
                interval: tuple[str, str, str] = (" [", "–", "]")) -> str:
    """The numbers of a finished entry: ``mean ± std`` or ``median [q1–q3]`` with the metric's decimals
    (``pm`` and ``interval`` are the separators, so that LaTeX can ask for its own)."""
    d = metric.decimals
    text = _number(entry.center, d)
    if table.stat == "mean" and math.isfinite(entry.low):
        text += f"{pm}{_number(entry.low, d)}"
    elif table.stat == "median" and entry.n > 1:
        text += f"{interval[0]}{_number(entry.low, d)}{interval[1]}{_number(entry.high, d)}{interval[2]}"
    return text


def seeds_shown(table: PivotTable, entry: Entry) -> bool:
    """Whether an entry says its own seed count (it differs from the table's, or some of its cells failed)."""
    return table.common_n is None or entry.n != entry.cells


def entry_text(table: PivotTable, entry: Entry | None, metric: Metric) -> str:
    """``mean ± std`` or ``median [q1–q3]`` with the metric's decimals, ``(n=k)`` when seeds differ, ``(!)`` when
    a cell of the entry is flagged."""
    if entry is None:
        return ""
    if not entry.n:
        return entry.failed or "—"
    text = entry_value(table, entry, metric) + (f" (n={entry.n})" if seeds_shown(table, entry) else "")
    return text + (" (!)" if entry.flagged else "")


def pivot(cells: pd.DataFrame, rows: Sequence[str] = (), cols: Sequence[str] = (),
          metrics: Sequence[str] | None = None, stat: str = "mean") -> PivotTable:
    """Arrange the aggregated ``metrics`` with ``rows`` down and ``cols`` across.

    Configuration axes that vary in ``cells`` but are in neither ``rows`` nor ``cols`` are added to
    the rows (with a note), so that different configurations are never averaged together. With no
    ``rows`` and no ``cols`` the rows are every varying configuration axis (the grid axes, the budget,
    the evaluation protocol, …) and the columns are the metrics. The best entry (by the metric's goal in
    the column catalogue) among those of the same metric and dataset is marked ``best`` when there are
    at least two.
    """
    rows, cols = list(rows), list(cols)
    asked_rows = bool(rows)
    check_axes(cells, rows + cols)
    metrics = check_metrics(cells, list(metrics) if metrics else default_metrics(cells))
    if cells.empty:
        raise ReportError("no cells to report")
    added = varying_axes(cells, rows + cols)
    if not rows and not cols:
        rows = added or [DATASET.key]
    else:
        rows = rows + added
    if not rows:
        rows = [DATASET.key] if DATASET.key not in cols else []
    notes = []
    if added and (asked_rows or cols):
        verb = "varies" if len(added) == 1 else "vary"
        notes.append(f"rows also split by {', '.join(added)}, which {verb} in these cells")
    table = aggregate(cells, rows + cols, metrics, stat)
    infos = [metric_info(m, cells) for m in metrics]
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
                center, low, high = record[f"{m}_mean"], record[f"{m}_std"] * info.scale, math.nan
            else:
                center, low, high = record[f"{m}_median"], record[f"{m}_q1"] * info.scale, \
                    record[f"{m}_q3"] * info.scale
            entries[(row_key, col_key, m)] = Entry(center * info.scale, low, high, int(record[f"{m}_n"]),
                                                   int(record["cells"]), record["failed"],
                                                   flagged=info.flag_sensitive and record["flagged"] > 0,
                                                   invalid=record["flagged"] > 0)
    result = PivotTable(infos, stat, rows, cols, row_keys, col_keys, entries, notes)
    _mark_best(result)
    result.notes.extend(failure_notes(cells, rows + cols))
    if any(e.invalid for e in entries.values()):
        marker = "(!) = a cell of this entry is flagged" if any(e.flagged for e in entries.values()) else \
            "a cell of some rows is flagged"
        result.notes.append(f"{marker}: its solver's density is not normalized (nll below the true entropy or mass "
                            "off 1), so no entry of its configuration is marked best (in any column) nor is it "
                            "compared against:")
        result.notes.extend(dict.fromkeys(flag_notes(cells)))
    result.notes.extend(unit_notes(cells, infos))
    result.notes.extend(grid_notes(cells))
    sharing = sharing_note(cells, [info.name for info in infos if info.machine])
    if sharing:
        result.notes.append(sharing)
    return result


def _dataset_of(table: PivotTable, row_key: tuple[str, ...], col_key: tuple[str, ...]) -> str:
    for axes, key in ((table.rows, row_key), (table.cols, col_key)):
        for axis in (DATASET.column, DATASET.spec_column):
            if axis in axes:
                return key[axes.index(axis)]
    return ""


def unit_notes(cells: pd.DataFrame, metrics: Sequence[Metric]) -> list[str]:
    """A note per metric whose unit differs between the rows shown (``final_train_loss``, in each objective's
    unit): which unit goes with which objective."""
    notes = []
    for metric in metrics:
        units = row_units(cells, metric.name)
        if len(units) < 2:
            continue
        holder = unit_column(metric.name)
        done = cells[cells["status"] == "done"] if "status" in cells else cells
        if "objective" in done:
            pairs = dict.fromkeys(f"{objective}: {unit}" for objective, unit in zip(
                axis_labels(done, "objective"), done[holder], strict=True) if isinstance(unit, str) and unit)
            where = "; ".join(pairs)
        else:
            where = ", ".join(units)
        notes.append(f"{metric.name} is in each row's {metric.unit} ({where}): compare it only within an objective")
    return notes


def _mark_best(table: PivotTable) -> None:
    """Mark the best entry per (metric, dataset) when at least two entries have a value; an entry of a flagged
    configuration (any metric) never wins, and the winner is tested only against the unflagged entries."""
    groups: dict[tuple[str, str], list[tuple[Any, float, bool]]] = {}
    for (row_key, col_key, name), entry in table.entries.items():
        info = next(m for m in table.metrics if m.name == name)
        if not info.goal or not entry.n or not math.isfinite(entry.center):
            continue
        rounded = round(entry.center, info.decimals)
        groups.setdefault((name, _dataset_of(table, row_key, col_key)), []).append(
            ((row_key, col_key, name), info.badness(rounded), not entry.invalid))
    for candidates in groups.values():
        eligible = [(key, score) for key, score, ok in candidates if ok]
        if len(candidates) < 2 or not eligible:
            continue
        best = min(score for _, score in eligible)
        winners = [key for key, score in eligible if math.isclose(score, best, rel_tol=1e-12, abs_tol=1e-12)]
        others = [key for key, _ in eligible if key not in winners]
        for key in winners:
            significant = table.stat != "mean" or (len(winners) == 1 and bool(others) and all(
                _beats(table, key, other) for other in others))  # beating only flagged entries proves nothing
            table.entries[key] = dataclasses.replace(table.entries[key], best=True, significant=significant)


SIGNIFICANCE = 0.05
"""A best entry is marked only when Welch's t-test against every other entry of its dataset gives p below this."""


def _beats(table: PivotTable, key: tuple[Any, ...], other: tuple[Any, ...]) -> bool:
    """Whether entry ``key`` is better than ``other`` by Welch's t-test from their means, stds and seed counts."""
    from scipy import stats

    info = next(m for m in table.metrics if m.name == key[2])
    a, b = table.entries[key], table.entries[other]
    if a.n < 2 or b.n < 2 or not math.isfinite(a.low) or not math.isfinite(b.low):
        return False
    # for a closest-to-1 goal the test is on the values, which is right when both lie on the same side of 1
    if a.low == 0 and b.low == 0:
        return info.badness(a.center) < info.badness(b.center)
    p = stats.ttest_ind_from_stats(a.center, a.low, a.n, b.center, b.low, b.n, equal_var=False).pvalue
    return bool(p < SIGNIFICANCE)


def failure_notes(cells: pd.DataFrame, by: Sequence[str] = ()) -> list[str]:
    """One line per cell that did not finish: where, which seed, status and reason."""
    failed = cells[cells["status"] != "done"]
    if failed.empty:
        return []
    labels = {axis: axis_labels(cells, axis) for axis in by if axis != "seed"}
    notes = []
    for index, row in failed.iterrows():
        where = SEPARATOR.join(labels[axis].loc[index] for axis in labels) or str(row["cell_id"])
        reason = one_line(row.get("reason", "") if isinstance(row.get("reason", ""), str) else "", 120)
        seed = f"{SEPARATOR}seed {format_value(row['seed'])}" if "seed" in row else ""
        notes.append(f"{where}{seed}: {row['status']}" + (f" ({reason})" if reason else ""))
    return notes
