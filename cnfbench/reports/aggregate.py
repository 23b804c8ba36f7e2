"""Cell rows to groups: combine runs into one frame, label rows on an axis, aggregate the seeds of each group.

:func:`aggregate` turns cell rows into one row per group (seeds aggregated:
mean, standard deviation and count by default; median and quartiles with
``stat="median"``). Only cells with status ``done`` enter an aggregate;
failed cells are counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cnfbench.reports.metrics import AXIS_SPECS, CONFIG_AXES, RUN, ReportError, check_axes, check_metrics
from cnfbench.run_folder import Run
from cnfbench.summary import compact_labels


def combine(runs: Sequence[Run]) -> pd.DataFrame:
    """The cells of several runs in one frame, with a ``run`` column naming each row's run folder."""
    names = _unique_names(runs)
    frames = [run.cells.assign(**{RUN: name}) for run, name in zip(runs, names, strict=True)]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["cell_id", "status", RUN])
    return pd.concat(frames, ignore_index=True)


def combine_curves(runs: Sequence[Run]) -> pd.DataFrame:
    """The training curves of several runs in one frame, with the same ``run`` column as :func:`combine`."""
    frames = [run.curves.assign(**{RUN: name}) for run, name in zip(runs, _unique_names(runs), strict=True)
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


def format_value(value: Any) -> str:
    """A label for an identity value: ``—`` for missing, integers without ``.0``."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "—"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def axis_labels(cells: pd.DataFrame, axis: str) -> pd.Series:
    """The label of every row on ``axis``: grid axes show only their varying parameters."""
    if axis in AXIS_SPECS and AXIS_SPECS[axis] in cells:
        return compact_labels(cells[AXIS_SPECS[axis]].astype(str))
    if axis == "trained_with" and axis in cells:  # axis=spec, as the run's summary shows it
        return compact_labels(cells[axis].fillna("").astype(str).replace("", "—"))
    if axis == RUN and axis not in cells:
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


def flagged(cells: pd.DataFrame) -> pd.Series:
    """True for rows whose ``valid`` is false (also when read back from CSV as text)."""
    if "valid" not in cells:
        return pd.Series(False, index=cells.index)
    return cells["valid"].map(lambda v: str(v).strip().lower() in ("false", "0", "0.0"))


def aggregate(cells: pd.DataFrame, by: Sequence[str], metrics: Sequence[str], stat: str = "mean",
              pool: Sequence[str] | bool = ()) -> pd.DataFrame:
    """One row per distinct combination of ``by`` (labels as in :func:`axis_labels`), seeds aggregated.

    Configurations are never averaged together by accident: every configuration axis that varies in
    ``cells`` (dataset, field, objective, solver, trace, budget, protocol, run) and is not in ``by`` is added
    to it, after ``by``, unless ``pool`` names it (those are averaged over); ``pool=True`` averages over
    every axis not in ``by``, as an earlier release did.

    Columns: the ``by`` axes; ``cells`` (rows in the group), ``done`` (rows with status done),
    ``failed`` (e.g. ``"1 diverged"``, empty when none), ``flagged`` (done rows with ``valid``
    false: the solver's density is not normalized); then per metric ``M``, over the done rows
    with a finite value, in the column's own unit: ``M_mean``, ``M_std`` (sample standard
    deviation, ``nan`` for one value) and ``M_n`` with ``stat="mean"``, or ``M_median``, ``M_q1``,
    ``M_q3`` (quartiles, linear interpolation) and ``M_n`` with ``stat="median"``. Groups keep the
    order in which they first appear.
    """
    if stat not in ("mean", "median"):
        raise ReportError(f"unknown statistic {stat!r}; valid: mean, median")
    by = check_axes(cells, by)
    if pool is not True:
        pooled = set(check_axes(cells, list(pool))) if pool else set()
        by = [*by, *(axis for axis in varying_axes(cells, by) if axis not in pooled)]
    metrics = check_metrics(cells, metrics)
    frame = cells.copy()
    for axis in by:
        frame[f"_by_{axis}"] = axis_labels(cells, axis)
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
                   flagged=int(flagged(done).sum()))
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
