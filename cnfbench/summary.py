"""The summary table printed at the end of a run: one line per configuration, units in every header.

Rows that differ only by seed are aggregated: a metric shows ``mean ± std``
over the seeds that finished, and ``n`` says how many that was. Component
labels show only the parameters that vary within the run, so the table stays
narrow while still telling configurations apart.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from cnfbench.validity import grid_resolution_note

FAMILY_SPECS = ("dataset_spec", "field_spec", "solver_spec", "trace_spec")

# (column in cells.parquet, header printed, scale factor, decimals)
SUMMARY_METRICS: tuple[tuple[str, str, float, int], ...] = (
    ("nll", "test NLL, train solver [nats]", 1.0, 3),
    ("nll_ref", "test NLL, ref solve [nats]", 1.0, 3),
    ("entropy", "true entropy [nats]", 1.0, 3),
    ("excess_nll", "excess NLL = ref - entropy [nats]", 1.0, 3),
    ("mass", "mass, train solver [1]", 1.0, 3),
    ("mass_ref", "mass, ref solve [1]", 1.0, 3),
    ("nfe_forward_mean", "NFE fwd/iter [evals]", 1.0, 1),
    ("nfe_backward_mean", "NFE bwd/iter [evals]", 1.0, 1),
    ("nfe_eval", "NFE test pass [evals]", 1.0, 0),
    ("train_time_s", "train time [s]", 1.0, 1),
    ("iter_time_median_s", "median iter [ms]", 1000.0, 1),
    ("eval_time_s", "eval time [s]", 1.0, 2),
    ("peak_memory_mib", "peak mem [MiB]", 1.0, 0),
)

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
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def summary_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (seeds aggregated) with unit-carrying headers."""
    if cells.empty:
        return pd.DataFrame()
    frame = cells.copy()
    labels = {family: compact_labels(frame[family].astype(str)) for family in FAMILY_SPECS}
    for family, series in labels.items():
        frame[f"_{family}"] = series
    keys = [f"_{family}" for family in FAMILY_SPECS]
    rows = []
    for key_values, group in frame.groupby(keys, sort=False, dropna=False):
        done = group[group["status"] == "done"]
        row = dict(zip(["dataset", "field", "solver", "trace"], key_values, strict=True))
        statuses = group["status"].value_counts()
        row["status"] = ", ".join(f"{count} {status}" for status, count in statuses.items())
        row["n"] = len(done)
        for column, header, scale, decimals in SUMMARY_METRICS:
            if column in done and done[column].notna().any():
                row[header] = _format(done[column], scale, decimals)
        if "valid" in done and len(done):
            row["valid"] = "yes" if done["valid"].astype(bool).all() else "NO (!)"
        failed = group[group["status"] != "done"]
        if not failed.empty:
            row["reason"] = str(failed["reason"].iloc[0])[:80]
        rows.append(row)
    table = pd.DataFrame(rows)
    present = [header for _, header, _, _ in SUMMARY_METRICS if header in table]
    ordered = ["dataset", "field", "solver", "trace", "status", "n", *(["valid"] if "valid" in table else []), *present]
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
            for spec in loose["ref_solver_spec"].drop_duplicates()]


def flag_notes(cells: pd.DataFrame) -> list[str]:
    """One line per flagged cell: why its reported likelihood cannot be a normalized density."""
    if cells.empty or "valid" not in cells:
        return []
    done = cells[cells["status"] == "done"]
    flagged = done[~done["valid"].fillna(True).astype(bool)]
    return [f"(!) {row.solver_spec} seed {row.seed} on {row.dataset}: {row.validity_reason}"
            for row in flagged.itertuples()]


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
            dataset = str(row.get("dataset_spec", row.get("dataset")))
            if off > worst.get(dataset, (-1.0, ""))[0]:
                worst[dataset] = (off, f"warning: {dataset}: {note}")
    return [note for _, note in worst.values()]


def render(table: pd.DataFrame, notes: list[str] | None = None) -> str:
    """Plain-text rendering of :func:`summary_table` (and flagged-cell notes) for the terminal."""
    if table.empty:
        return "(no cells)"
    with pd.option_context("display.max_columns", None, "display.width", 250, "display.max_colwidth", 60):
        text = table.to_string(index=False)
    return "\n".join([text, *(notes or [])])
