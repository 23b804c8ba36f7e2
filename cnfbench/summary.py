"""The summary table printed at the end of a run: one line per configuration, units in every header.

Rows that differ only by seed are aggregated: a metric shows ``mean ± std``
over the seeds that finished, and ``n`` says how many that was (``done/all``
when some did not finish; their reasons follow the table). The table names
the dataset and only the axes that vary, shows only the parameters that vary
within the run, and only the catalogue's summary metrics under their short
headers, so that it fits a 100-column terminal (rich folds what does not);
every other column is in ``cnfbench report``.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from cnfbench.columns import COLUMNS_BY_NAME, SUMMARY, Column, default_metrics
from cnfbench.families import GRID_AXES, SLOTS_BY_KEY, family
from cnfbench.text_tables import TEXT_WIDTH, fold_table, wrap_text
from cnfbench.validity import grid_resolution_note

AXIS_NAMES = (*(row.key for row in GRID_AXES), "trained with")
"""The label columns of :func:`summary_table` (left-aligned; the rest are numbers)."""

SUMMARY_METRICS: tuple[Column, ...] = tuple(COLUMNS_BY_NAME[name] for name in default_metrics(SUMMARY))
"""The catalogue's summary metrics, in row order; each is shown under its header, scaled, with its decimals."""

# The notes below are about particular roles, not enumerations: the training solver is what a flag blames, the
# dataset is where, and the reference solver is what --allow-loose-ref loosened.
_DATASET = family("dataset")
_SOLVER = family("solver")
_OBJECTIVE = family("objective")
_REF_SOLVER = SLOTS_BY_KEY["ref_solver"]

_SPEC = re.compile(r"^(?P<name>[^\[]+)(?:\[(?P<params>.*)\])?$")


def _split_spec(spec: str) -> tuple[str, list[str]]:
    match = _SPEC.match(spec)
    if not match:
        return spec, []
    params = match.group("params")
    return match.group("name"), params.split(",") if params else []


def compact_labels(specs: pd.Series) -> pd.Series:
    """Drop from each ``name[k=v,...]`` the parameters whose value is the same in every row."""
    parsed = [_split_spec(spec) for spec in specs]
    seen: dict[str, set[str]] = {}
    for _, params in parsed:
        for pair in params:
            key, _, value = pair.partition("=")
            seen.setdefault(key, set()).add(value)
    varying = {key for key, values in seen.items() if len(values) > 1}
    labels = []
    for name, params in parsed:
        kept = [pair for pair in params if pair.partition("=")[0] in varying]
        labels.append(f"{name}[{','.join(kept)}]" if kept else name)
    return pd.Series(labels, index=specs.index)


def _format(values: pd.Series, scale: float, decimals: int) -> str:
    finite = [float(v) * scale for v in values if v is not None and not pd.isna(v) and math.isfinite(float(v))]
    if not finite:
        return "—"
    mean = sum(finite) / len(finite)
    if len(finite) == 1:
        return f"{mean:.{decimals}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
    return f"{mean:.{decimals}f}±{std:.{decimals}f}"


def summary_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (seeds aggregated) with unit-carrying headers: the dataset and the axes that
    vary, ``n``, ``valid`` and the summary metrics; ``reason`` (the first failure's) where a cell did not finish."""
    if cells.empty:
        return pd.DataFrame()
    frame = cells.copy()
    axes = [row.key for row in GRID_AXES]
    for row in GRID_AXES:
        source = frame[row.spec_column] if row.spec_column in frame \
            else frame.get(row.column, pd.Series(row.implicit or "—", index=frame.index))
        frame[f"_{row.key}"] = compact_labels(source.astype(str))
    if "trained_with" in frame and frame["trained_with"].fillna("").astype(str).ne("").any():
        axes.append("trained with")  # cnfbench evaluate: models evaluated with a solver they were not trained with
        frame["_trained with"] = compact_labels(frame["trained_with"].fillna("").astype(str).replace("", "—"))
    rows = []
    for key_values, group in frame.groupby([f"_{axis}" for axis in axes], sort=False, dropna=False):
        done = group[group["status"] == "done"]
        row = dict(zip(axes, key_values, strict=True))
        statuses = group["status"].value_counts()
        row["status"] = ", ".join(f"{count} {status}" for status, count in statuses.items())
        row["n"] = str(len(done)) if len(done) == len(group) else f"{len(done)}/{len(group)}"
        for metric in SUMMARY_METRICS:
            if metric.name in done and done[metric.name].notna().any():
                row[metric.short_header] = _format(done[metric.name], metric.scale, metric.decimals)
        if "valid" in done and len(done):
            row["valid"] = "yes" if done["valid"].astype(bool).all() else "NO (!)"
        failed = group[group["status"] != "done"]
        if not failed.empty:
            row["reason"] = str(failed["reason"].iloc[0])[:80]
        rows.append(row)
    table = pd.DataFrame(rows)
    present = [metric.short_header for metric in SUMMARY_METRICS if metric.short_header in table]
    shown = [axis for axis in axes if axis == _DATASET.key or table[axis].nunique() > 1]
    ordered = [*shown, *(["valid"] if "valid" in table else []), "n", *present]
    if "reason" in table:
        ordered.append("reason")
    return table[ordered].fillna("—")


def validity_notes(cells: pd.DataFrame) -> list[str]:
    """One line per flagged cell (why its likelihood cannot be a normalized density), then warnings."""
    return flag_notes(cells) + grid_notes(cells) + loose_reference_notes(cells)


def loose_reference_notes(cells: pd.DataFrame) -> list[str]:
    """A warning naming the reference solves that were accepted although fixed-step or loose."""
    if cells.empty or "ref_loose" not in cells:
        return []
    loose = cells[cells["ref_loose"].astype("boolean").fillna(False).astype(bool)]
    return [f"warning: nll_ref of {len(loose)} cell(s) comes from the loose reference solve {spec} "
            "(--allow-loose-ref): it is only as exact as that solve"
            for spec in loose[_REF_SOLVER.spec_column].drop_duplicates()]


def flag_notes(cells: pd.DataFrame) -> list[str]:
    """One line per flagged cell: why its reported likelihood cannot be a normalized density."""
    if cells.empty or "valid" not in cells:
        return []
    done = cells[cells["status"] == "done"]
    flagged = done[~done["valid"].fillna(True).astype(bool)]
    return [f"(!) {_trained_by(row)}{row[_SOLVER.spec_column]} seed {row['seed']} on {row[_DATASET.column]}: "
            f"{row['validity_reason']}" for row in flagged.to_dict("records")]


def _trained_by(row: dict[str, object]) -> str:
    """``cfm[sigma=0.0] model, `` when the row's objective is not the default one (else nothing), with the
    solver it was trained with when that is not the row's."""
    objective = row.get(_OBJECTIVE.spec_column)
    trained_with = row.get("trained_with")
    parts = [str(objective)] if isinstance(objective, str) and objective != _OBJECTIVE.implicit else []
    if isinstance(trained_with, str) and trained_with:
        parts.append(f"trained with {trained_with}")
    return f"{' '.join(parts)} model, " if parts else ""


def grid_notes(cells: pd.DataFrame) -> list[str]:
    """One warning per dataset whose mass grid was too coarse to resolve the reference density."""
    if cells.empty or "mass_ref" not in cells or "status" not in cells:
        return []
    done = cells[cells["status"] == "done"]
    worst: dict[str, tuple[float, str]] = {}  # one grid warning per dataset: its least resolved cell's
    for row in done.to_dict("records"):
        note = grid_resolution_note(row)
        if note:
            off = abs(float(row["mass_ref"]) - 1.0)
            dataset = str(row.get(_DATASET.spec_column, row.get(_DATASET.column)))
            if off > worst.get(dataset, (-1.0, ""))[0]:
                worst[dataset] = (off, f"warning: {dataset}: {note}")
    return [note for _, note in worst.values()]


SUMMARY_WIDTH = TEXT_WIDTH
"""Columns the summary fits when it is not printed to a terminal (a terminal's own width otherwise)."""


def render(table: pd.DataFrame, notes: list[str] | None = None, width: int | None = None,
           color: bool = False) -> str:
    """:func:`summary_table` as text at most ``width`` columns wide (default :data:`SUMMARY_WIDTH`; rich folds
    cells that do not fit), then the reasons of cells that did not finish and the flagged-cell ``notes``.
    ``color``: ANSI styles (a terminal; ``NO_COLOR`` still wins)."""
    if table.empty:
        return "(no cells)"
    shown = table.drop(columns=["reason"]) if "reason" in table else table
    records = shown.to_dict("records")
    left = sum(column in (*AXIS_NAMES, "valid") for column in shown.columns)  # labels lead, numbers follow
    text = fold_table([str(c) for c in shown.columns], [[str(v) for v in r.values()] for r in records], left,
                      width, ["red" if r.get("valid") == "NO (!)" else None for r in records], color)
    reasons = [f"not done: {record.get('reason')}" for record in table.to_dict("records")
               if isinstance(record.get("reason"), str) and record.get("reason") not in ("", "—")]
    return "\n".join([text, *(wrap_text(line, width) for line in [*reasons, *(notes or [])])])
