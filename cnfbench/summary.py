"""The summary table printed at the end of a run: one line per configuration, units in every header.

Rows that differ only by seed are aggregated: a metric shows ``mean ± std`` over the seeds that finished, and
``n`` says how many that was (``done/planned`` when some did not finish or never started; their reasons follow
the table). The table names the dataset and only the axes that vary, in the labelling rule of
:mod:`cnfbench.labels`, rows in grid order, and only the catalogue's summary metrics under their short headers.
Where the whole table does not fit the width even with its headers folded, it shows the columns that matter
first (the labels, ``valid``, ``n``, NLL ref, excess NLL or bits/dim, NFE, train time) and the rest in a second
table below; no entry is cut inside a token (:mod:`cnfbench.text_tables`). Every other column is in
``cnfbench report``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from cnfbench.columns import COLUMNS_BY_NAME, SUMMARY, Column, default_metrics, parse_notes
from cnfbench.families import GRID_AXES, SLOTS_BY_KEY, family
from cnfbench.labels import SEPARATOR, row_labels, short_specs
from cnfbench.messages import one_line, plural
from cnfbench.text_tables import TEXT_WIDTH, column_groups, fold_table, wrap_text
from cnfbench.validity import grid_resolution_note

AXIS_NAMES = (*(row.key for row in GRID_AXES), "trained with")
"""The label columns of :func:`summary_table` (left-aligned; the rest are numbers)."""

SUMMARY_METRICS: tuple[Column, ...] = tuple(COLUMNS_BY_NAME[name] for name in default_metrics(SUMMARY))
"""The catalogue's summary metrics, in row order; each is shown under its header, scaled, with its decimals."""

FIRST_METRICS = ("nll_ref", "excess_nll", "nfe_eval", "train_time_s")
"""The metrics a table too wide for the terminal shows first (bits/dim instead of excess NLL where a row has no
excess NLL); the other summary metrics go to a second table below."""

NOT_STARTED = "not started"
"""The status the summary gives a planned cell that has no row (an interrupted run never started it)."""

REASON_WIDTH = 120
"""Characters of a reason the summary keeps (cut at a word boundary)."""

# The notes below are about particular roles, not enumerations: the training solver is what a flag blames, the
# dataset is where, and the reference solver is what --allow-loose-ref loosened.
_DATASET = family("dataset")
_SOLVER = family("solver")
_OBJECTIVE = family("objective")
_REF_SOLVER = SLOTS_BY_KEY["ref_solver"]


def compact_labels(specs: pd.Series) -> pd.Series:
    """Drop from each ``name[k=v,...]`` the parameters whose value is the same in every row
    (:func:`cnfbench.labels.short_specs`)."""
    return pd.Series(short_specs([str(spec) for spec in specs]), index=specs.index, dtype=object)


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
    """One row per configuration (seeds aggregated), in the order of ``cells``, with unit-carrying headers: the
    dataset and the axes that vary, ``n``, ``valid`` and the summary metrics; ``reason`` (the first failure's)
    where a cell did not finish. Rows with status :data:`NOT_STARTED` count as planned, never as run."""
    if cells.empty:
        return pd.DataFrame()
    frame = cells.copy()
    axes = [row.key for row in GRID_AXES]
    for row in GRID_AXES:
        source = frame[row.spec_column] if row.spec_column in frame \
            else frame.get(row.column, pd.Series(row.implicit or "—", index=frame.index))
        frame[f"_{row.key}"] = compact_labels(source.fillna(row.implicit or "—").astype(str))
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
            row["reason"] = _reasons(failed)
        rows.append(row)
    table = pd.DataFrame(rows)
    present = [metric.short_header for metric in SUMMARY_METRICS if metric.short_header in table]
    shown = [axis for axis in axes if axis == _DATASET.key or table[axis].nunique() > 1]
    ordered = [*shown, *(["valid"] if "valid" in table else []), "n", *present]
    if "reason" in table:
        ordered.append("reason")
    return table[ordered].fillna("—")


def _reasons(failed: pd.DataFrame) -> str:
    """Why the cells of one configuration did not finish: each distinct reason once, with how many cells it was,
    never cut inside a word."""
    counts = failed["reason"].fillna("").astype(str).map(lambda text: one_line(text, REASON_WIDTH)).value_counts()
    return "; ".join(reason if count == 1 else f"{reason} ({plural(int(count), 'cell')})"
                     for reason, count in counts.items() if reason)


def validity_notes(cells: pd.DataFrame) -> list[str]:
    """One line per flagged cell (why its likelihood cannot be a normalized density), then warnings."""
    return flag_notes(cells) + grid_notes(cells) + loose_reference_notes(cells)


def metric_notes(cells: pd.DataFrame, known: Sequence[str]) -> list[str]:
    """What was not measured: the metrics of ``known`` no row computed (one note), then each metric that was
    skipped or failed, with why and where (one note per metric and reason)."""
    if cells.empty or "metrics" not in cells:
        return []
    computed = {name for text in cells["metrics"].dropna().astype(str) for name in text.split(",") if name}
    notes = []
    left_out = [name for name in known if name not in computed]
    if computed and left_out:
        notes.append(f"note: metrics not computed: {', '.join(left_out)} (--metrics all computes every one; "
                     "cnfbench evaluate RUN --metrics NAME adds one to these rows)")
    where: dict[tuple[str, str], list[str]] = {}
    for _, row in cells.iterrows():
        for name, note in parse_notes(row.get("metrics_note")).items():
            where.setdefault((name, note), []).append(str(row.get("dataset", "")))
    alike: dict[tuple[str, str], list[str]] = {}  # metrics with the same note on the same cells: one line
    for (name, note), datasets in where.items():
        places = f"{plural(len(datasets), 'cell')}: {', '.join(dict.fromkeys(datasets))}"
        alike.setdefault((note, places), []).append(name)
    for (note, places), names in alike.items():
        notes.append(f"note: metric{'s' if len(names) > 1 else ''} {', '.join(names)} {note} ({places})")
    return notes


def loose_reference_notes(cells: pd.DataFrame) -> list[str]:
    """A warning naming the reference solves that were accepted although fixed-step or loose."""
    if cells.empty or "ref_loose" not in cells:
        return []
    loose = cells[cells["ref_loose"].astype("boolean").fillna(False).astype(bool)]
    return [f"warning: nll_ref of {plural(len(loose), 'cell')} comes from the loose reference solve {spec} "
            "(--allow-loose-ref): it is only as exact as that solve"
            for spec in loose[_REF_SOLVER.spec_column].drop_duplicates()]


def flag_notes(cells: pd.DataFrame) -> list[str]:
    """One line per flagged cell: why its reported likelihood cannot be a normalized density. The cell is named
    by the labelling rule over ``cells`` (the axes that vary, the solver always, the seed when seeds vary), so
    that two notes never read alike unless their cells do."""
    if cells.empty or "valid" not in cells:
        return []
    done = cells[cells["status"] == "done"]
    if done.empty:
        return []
    labels = row_labels(done, seeds=True, keep=(_SOLVER.key,))
    flagged = done[~done["valid"].fillna(True).astype(bool)]
    dataset_named = _DATASET.column in done and done[_DATASET.column].nunique() > 1  # then the label has it
    notes = []
    for index, row in zip(flagged.index, flagged.to_dict("records"), strict=True):
        label = str(labels.loc[index])
        if not dataset_named:
            label += f" on {row.get(_DATASET.column, '—')}"
        notes.append(f"(!) {_trained_by(row)}{label}: {row['validity_reason']}")
    return notes


def _trained_by(row: dict[str, object]) -> str:
    """``trained with euler[steps=8]: `` when the model was trained with another solver than the row's."""
    trained_with = row.get("trained_with")
    return f"model trained with {trained_with}, evaluated as " if isinstance(trained_with, str) and trained_with \
        else ""


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
"""Columns the summary fits when neither ``COLUMNS`` nor a terminal says otherwise."""


def render(table: pd.DataFrame, notes: list[str] | None = None, width: int | None = None,
           color: bool = False) -> str:
    """:func:`summary_table` as text at most ``width`` columns wide (default :data:`SUMMARY_WIDTH`; see the module
    docstring for what a narrow terminal gets), then the reasons of configurations that did not finish and the
    flagged-cell ``notes``. ``color``: ANSI styles (a terminal; ``NO_COLOR`` still wins)."""
    if table.empty:
        return "(no cells)"
    width = width or SUMMARY_WIDTH
    shown = table.drop(columns=["reason"]) if "reason" in table else table
    records = shown.to_dict("records")
    labels = [column for column in shown.columns if column in (*AXIS_NAMES, "valid", "n")]
    headers = [str(column) for column in shown.columns]
    body = [[str(value) for value in record.values()] for record in records]
    styles = ["red" if record.get("valid") == "NO (!)" else None for record in records]
    if len(column_groups(headers, body, len(labels), width)) == 1:  # fits, its headers folded if need be
        text = fold_table(headers, body, len(labels), width, styles, color)
    else:
        first, rest = _first_columns(list(shown.columns), labels)
        parts = [fold_table(columns, [[str(record[c]) for c in columns] for record in records], len(labels), width,
                            styles, color) for columns in (first, rest) if len(columns) > len(labels)]
        text = "\n\n".join(parts)
    reasons = []
    for record in table.to_dict("records"):
        reason = record.get("reason")
        if isinstance(reason, str) and reason not in ("", "—"):
            name = SEPARATOR.join(str(record[column]) for column in labels if column not in ("valid", "n"))
            reasons.append(f"not done: {name} ({record['n']} seeds done): {reason}")
    return "\n".join([text, *(wrap_text(line, width) for line in [*reasons, *(notes or [])])])


def _first_columns(columns: list[str], labels: list[str]) -> tuple[list[str], list[str]]:
    """The label columns with :data:`FIRST_METRICS` (bits/dim for excess NLL where there is no excess NLL), and
    the label columns with every other metric."""
    headers = {COLUMNS_BY_NAME[name].short_header for name in FIRST_METRICS}
    excess, bits = COLUMNS_BY_NAME["excess_nll"].short_header, COLUMNS_BY_NAME["bits_per_dim"].short_header
    if excess not in columns:
        headers.add(bits)
    metrics = [column for column in columns if column not in labels]
    return ([*labels, *(c for c in metrics if c in headers)], [*labels, *(c for c in metrics if c not in headers)])
