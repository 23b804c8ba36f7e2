"""How cells shared their machine — the torch threads and the concurrency every row records — and the note when rows
put side by side differ in them, so that timings are compared only like for like.

``torch_threads`` is the thread count of the process that ran the cell, ``concurrency`` the number of cells its
executor ran at once. A time or memory figure measured with 1 thread is not comparable with one measured with 4,
nor one measured alone with one measured beside three other cells. Rows written before a column existed lack it
(or hold no value): unknown, never a difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from cnfbench.reports.aggregate import format_value
from cnfbench.reports.metrics import metric_info

SHARING_COLUMNS: dict[str, tuple[str, str]] = {"torch_threads": ("torch thread counts", ""),
                                               "concurrency": ("concurrency", " cells at a time")}
"""The columns that say how a cell shared its machine: what the note calls them, and the unit after the values."""

UNITS: dict[str, str] = {"torch_threads": " threads", "concurrency": " cells at a time"}
"""The unit after the values of each sharing column, where a note says every figure's unit."""


def _finished(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[cells["status"] == "done"] if "status" in cells else cells


def sharing_values(cells: pd.DataFrame) -> dict[str, list[str]]:
    """The distinct recorded values of each sharing column among the finished ``cells`` (in numeric order); a
    column that is missing or empty is left out."""
    done = _finished(cells)
    values: dict[str, list[str]] = {}
    for column in SHARING_COLUMNS:
        if column not in done:
            continue
        known = {format_value(value) for value in done[column]
                 if not pd.api.types.is_scalar(value) or not pd.isna(value)}  # a hand-edited list is a value too
        if known:
            values[column] = sorted(known, key=_order)
    return values


def _order(value: str) -> tuple[int, float, str]:
    """Numbers first, in numeric order, then any other text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def merge_values(*groups: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The union of several :func:`sharing_values`, per column, in numeric order."""
    merged: dict[str, list[str]] = {}
    for group in groups:
        for column, values in group.items():
            merged[column] = sorted(set(merged.get(column, [])) | set(values), key=_order)
    return merged


def differing(values: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The sharing columns of ``values`` that hold more than one value."""
    return {column: list(found) for column, found in values.items() if len(found) > 1}


def differing_text(values: Mapping[str, Sequence[str]], units: bool = False) -> str:
    """``torch thread counts (1, 2) and concurrency (1, 4 cells at a time)`` for the columns of ``values`` that hold
    several values (``""`` when none does); with ``units``, every figure says its unit (``(1, 2 threads)``)."""
    parts = []
    for column, found in differing(values).items():
        name, unit = SHARING_COLUMNS[column]
        parts.append(f"{name} ({', '.join(found)}{UNITS[column] if units else unit})")
    return " and ".join(parts)


def sharing_note(cells: pd.DataFrame, metrics: Sequence[str]) -> str:
    """A note when the finished ``cells`` ran with different torch thread counts or concurrency and ``metrics``
    (the machine-dependent ones shown: times, memory) compare them, each named by its header; ``""`` otherwise."""
    text = differing_text(sharing_values(cells), units=True)
    if not text or not metrics:
        return ""
    shown = "; ".join(metric_info(name).header for name in metrics)
    return f"timings ({shown}) compare cells run with different {text}: not like for like"
