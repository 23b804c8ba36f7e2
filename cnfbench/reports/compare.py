"""Compare two runs cell by cell: NEW against BASE per configuration, with a verdict each.

Cells are matched by what they are, not by row order or cell id: every grid
axis's spec (every parameter) and the training budget (:data:`MATCH_COLUMNS`);
seeds are aggregated on each side. A matched pair is

- ``newly failing`` — a seed that finished in BASE did not finish in NEW;
- ``fixed`` — a seed that failed in BASE finished in NEW (and none newly fails);
- ``not comparable`` — the evaluation protocol or device differs
  (:data:`PROTOCOL_COLUMNS`), the torch/cnfbench releases and those of the libraries the components declared in
  ``run.json`` differ (a local build tag such as ``+cpu`` is ignored), the
  configuration is in one run only, or no seed
  finished on either side;
- else ``worse``, ``better`` or ``unchanged`` from the chosen metrics. How a
  metric is compared is its comparison kind in the column catalogue
  (:mod:`cnfbench.columns`), and which way is better its goal (for a
  closest-to-1 goal such as ``mass``, what moves is ``|value - 1|``). A
  *ratio* metric (times, NFE, memory) has changed when its mean moved by more
  than ``factor - 1`` of BASE's mean; a *difference* metric (log-likelihoods in
  nats, mass) when its mean moved by more than ``factor - 1`` times BASE's
  mean, and at least ``factor - 1`` in its own unit, so that a value near 0
  does not turn noise into a change (:func:`change_threshold`). In both cases,
  when both sides have at least two seeds, Welch's t-test must also reject
  equal means at level ``alpha``. Any worse metric makes the row worse.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cnfbench.columns import BUDGET, CLOSEST_TO_ONE, COMPARE, DIFFERENCE, PROTOCOL, RATIO, columns_in
from cnfbench.families import AXIS_SPEC_COLUMNS, GRID_AXES
from cnfbench.reports.aggregate import format_value
from cnfbench.reports.metrics import Metric, ReportError, check_metrics, default_metrics, metric_info
from cnfbench.reports.render import text_table
from cnfbench.reports.statistics import welch_t_test
from cnfbench.run_folder import Run, load_run
from cnfbench.summary import compact_labels

VERDICTS = ("better", "worse", "unchanged", "newly failing", "fixed", "not comparable")
REGRESSIONS = ("worse", "newly failing")
"""Verdicts that make ``cnfbench compare --fail-on-regression`` exit 1."""

BUDGET_COLUMNS: tuple[str, ...] = columns_in(BUDGET)

MATCH_COLUMNS: tuple[str, ...] = (*AXIS_SPEC_COLUMNS, "trained_with", *BUDGET_COLUMNS)
"""What a configuration is: cells equal on these (any seed) are compared (``trained_with``: a model evaluated by
``cnfbench evaluate`` with a solver it was not trained with is another configuration)."""

PROTOCOL_COLUMNS: tuple[str, ...] = columns_in(PROTOCOL)
"""How a configuration was evaluated; when these differ the numbers are not comparable."""

VERSION_PACKAGES = ("cnfbench", "torch")
"""Packages whose versions (from ``run.json``) must always agree for two runs to be comparable; the libraries
the runs' components declare (``Component.libraries``, e.g. torchdiffeq for the built-in solvers) are added."""


def compared_packages(*runs: Run) -> tuple[str, ...]:
    """The packages whose releases must agree: cnfbench, torch, and every library the runs' components declared."""
    return (*VERSION_PACKAGES, *sorted({name for run in runs for name in run.libraries} - set(VERSION_PACKAGES)))


@dataclass(frozen=True)
class MetricChange:
    """One metric of one compared configuration (means over the finished seeds, in the column's unit)."""

    metric: Metric
    base_mean: float
    base_std: float
    base_n: int
    new_mean: float
    new_std: float
    new_n: int
    ratio: float  # new_mean / base_mean; nan when base_mean is 0 or the signs differ
    difference: float  # new_mean - base_mean, in the column's unit
    p_value: float | None  # Welch's test when both sides have >= 2 seeds
    change: str  # better, worse, unchanged, changed (metric without a goal), n/a (no value on a side)
    beyond_factor: bool = False  # the mean moved by more than the threshold (whatever the test said)


@dataclass
class RowComparison:
    """The verdict for one configuration."""

    labels: dict[str, str]
    verdict: str
    reason: str
    base_seeds: str
    new_seeds: str
    changes: list[MetricChange] = field(default_factory=list)


@dataclass
class Comparison:
    """Everything ``cnfbench compare`` prints."""

    base: Run
    new: Run
    metrics: list[Metric]
    factor: float
    alpha: float
    rows: list[RowComparison]
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {verdict: sum(r.verdict == verdict for r in self.rows) for verdict in VERDICTS}

    @property
    def regressions(self) -> list[RowComparison]:
        return [r for r in self.rows if r.verdict in REGRESSIONS]


def change_threshold(metric: Metric, base: float, factor: float) -> float:
    """How far a mean must move from ``base`` (BASE's mean, of ``|value - 1|`` for a closest-to-1 goal) to change.

    A ratio metric: ``factor - 1`` of ``|base|``. A difference metric: the same, but at least ``factor - 1`` in
    the column's unit (nats for a log-likelihood; for ``mass``, whose ``|mass - 1|`` is near 0, that is the rule).
    """
    slack = factor - 1.0
    if metric.comparison == DIFFERENCE:
        return slack * max(abs(base), 1.0)
    return slack * abs(base)


def metric_change(metric: Metric, base: Sequence[float], new: Sequence[float], factor: float,
                  alpha: float) -> MetricChange:
    """Compare one metric's finished-seed values; see the module docstring for the rule."""
    b = np.asarray([v for v in base if v is not None and math.isfinite(v)], dtype=float)
    n = np.asarray([v for v in new if v is not None and math.isfinite(v)], dtype=float)

    def stats(values: np.ndarray) -> tuple[float, float]:
        if not len(values):
            return math.nan, math.nan
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan

    (bm, bs), (nm, ns) = stats(b), stats(n)
    if not len(b) or not len(n):
        return MetricChange(metric, bm, bs, len(b), nm, ns, len(n), math.nan, math.nan, None, "n/a")
    ratio = nm / bm if bm != 0 and (nm / bm) >= 0 else math.nan
    bad_b = np.array([metric.badness(v) for v in b]) if metric.goal else b
    bad_n = np.array([metric.badness(v) for v in n]) if metric.goal else n
    moved = float(bad_n.mean() - bad_b.mean())
    p = welch_t_test(bad_b, bad_n).p if len(b) > 1 and len(n) > 1 else None
    beyond = abs(moved) > change_threshold(metric, float(bad_b.mean()), factor)
    if beyond and (p is None or p < alpha):
        change = ("worse" if moved > 0 else "better") if metric.goal else "changed"
    else:
        change = "unchanged"
    return MetricChange(metric, bm, bs, len(b), nm, ns, len(n), ratio, nm - bm, p, change, beyond)


def _key(frame: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    parts = [frame[c].map(format_value) if c in frame else pd.Series("—", index=frame.index) for c in columns]
    if not parts:
        return pd.Series([()] * len(frame), index=frame.index, dtype=object)
    return pd.Series(list(zip(*parts, strict=True)), index=frame.index, dtype=object)


def _seed_states(group: pd.DataFrame) -> dict[str, bool]:
    """seed -> finished (done), for one side of a configuration."""
    states: dict[str, bool] = {}
    for seed, status in zip(group["seed"].map(format_value) if "seed" in group else group.index.map(str),
                            group["status"], strict=True):
        states[seed] = states.get(seed, False) or status == "done"
    return states


def _seeds_text(group: pd.DataFrame | None) -> str:
    if group is None or group.empty:
        return "—"
    done = int((group["status"] == "done").sum())
    failed = group.loc[group["status"] != "done", "status"].value_counts()
    extra = "".join(f", {count} {status}" for status, count in failed.items())
    return f"{done}/{len(group)} done{extra}"


def _first_reason(group: pd.DataFrame) -> str:
    failed = group[group["status"] != "done"]
    if failed.empty:
        return ""
    reason = str(failed["reason"].iloc[0]) if "reason" in failed and isinstance(failed["reason"].iloc[0], str) else ""
    status = str(failed["status"].iloc[0])
    return f"{status}: {' '.join(reason.split())[:100]}" if reason else status


def _version_problem(base: Run, new: Run, notes: list[str]) -> str:
    unknown = [run for run in (base, new) if not run.versions]
    for run in unknown:
        notes.append(f"versions of {run.path} unknown (no readable run.json): not checked")
    if unknown:
        return ""
    def release(version: object) -> str:  # "2.13.0+cpu" and "2.13.0+cu121" are the same release
        return str(version).split("+", 1)[0]

    differing = [f"{p} {base.versions.get(p)} vs {new.versions.get(p)}" for p in compared_packages(base, new)
                 if release(base.versions.get(p)) != release(new.versions.get(p))]
    return "versions differ: " + ", ".join(differing) if differing else ""


def _machine(run: Run) -> str:
    machine = run.provenance.get("machine")
    if not isinstance(machine, dict):
        return ""
    return " ".join(str(machine[k]) for k in ("gpu", "cpu") if machine.get(k))


def _sharing(run: Run) -> str:
    """How the run's cells shared their machine: ``2 cells at a time, 1 torch thread`` (``""`` when unrecorded)."""
    parts = []
    for column, unit in (("concurrency", "cells at a time"), ("torch_threads", "torch threads")):
        if column in run.cells:
            values = sorted({format_value(v) for v in run.cells[column] if not pd.isna(v)})
            if values:
                parts.append(f"{'/'.join(values)} {unit}")
    return ", ".join(parts)


def _sharing_problem(base: Run, new: Run) -> str:
    """A sentence when BASE's and NEW's cells ran under different concurrency or threads, else ``""``."""
    before, after = _sharing(base), _sharing(new)
    if not before or not after or before == after:
        return ""
    return f"BASE ran {before}, NEW {after}"


def compare_runs(base: Run | str | os.PathLike[str], new: Run | str | os.PathLike[str],
                 metrics: Sequence[str] | None = None, factor: float = 1.05, alpha: float = 0.05,
                 ignore_versions: bool = False, ignore_concurrency: bool = False) -> Comparison:
    """Match NEW's configurations to BASE's and give each a verdict (see the module docstring).

    ``base``/``new`` are :class:`~cnfbench.run_folder.Run` objects or run folders; ``metrics`` default to
    the column catalogue's compare metrics (machine-independent; those with a value). ``factor`` 1.05 means a 5% change;
    ``ignore_versions`` compares runs made with different torch/torchdiffeq/cnfbench versions;
    ``ignore_concurrency`` compares wall-clock and memory metrics of runs whose cells ran with different
    concurrency or torch threads (otherwise those metrics are left out, with a note saying why).
    """
    base = base if isinstance(base, Run) else load_run(base)
    new = new if isinstance(new, Run) else load_run(new)
    if not factor >= 1.0:
        raise ReportError(f"factor must be at least 1 (1.05 = a 5% change), got {factor}")
    if not 0.0 < alpha < 1.0:
        raise ReportError(f"alpha must be between 0 and 1, got {alpha}")
    combined = pd.concat([base.cells.assign(_side="base"), new.cells.assign(_side="new")], ignore_index=True)
    metrics = check_metrics(combined, metrics) if metrics else default_metrics(combined, COMPARE)
    infos = [metric_info(m) for m in metrics]
    notes: list[str] = []
    sharing = _sharing_problem(base, new)
    if sharing and any(m.machine for m in infos):
        if ignore_concurrency:
            notes.append(f"{sharing}; time and memory compared anyway (--ignore-concurrency)")
        else:
            left_out = [m.name for m in infos if m.machine]
            metrics = [name for name, info in zip(metrics, infos, strict=True) if not info.machine]
            infos = [info for info in infos if not info.machine]
            if not metrics:
                raise ReportError(f"{sharing}: {', '.join(left_out)} are not comparable (use --ignore-concurrency to "
                                  "compare them anyway)")
            notes.append(f"{sharing}: {', '.join(left_out)} left out as not comparable (--ignore-concurrency "
                         "compares them anyway)")
    version_problem = _version_problem(base, new, notes)
    if version_problem and ignore_versions:
        notes.append(f"{version_problem}; compared anyway (--ignore-versions)")
        version_problem = ""
    if any(m.machine for m in infos) and _machine(base) != _machine(new):
        where = [_machine(run) or "an unknown machine" for run in (base, new)]
        notes.append(f"BASE ran on {where[0]}, NEW on {where[1]}: time and memory ratios compare the machines too")

    labels = pd.DataFrame(index=combined.index)
    for axis in GRID_AXES:
        source = combined[axis.spec_column] if axis.spec_column in combined \
            else combined.get(axis.column, pd.Series("—", index=combined.index))
        labels[axis.key] = compact_labels(source.astype(str))
    for column in BUDGET_COLUMNS:
        if column in combined and combined[column].map(format_value).nunique() > 1:
            labels[column] = combined[column].map(format_value)
    combined["_match"] = _key(combined, MATCH_COLUMNS)
    combined["_protocol"] = _key(combined, [c for c in PROTOCOL_COLUMNS if c in combined])
    protocol_columns = [c for c in PROTOCOL_COLUMNS if c in combined]

    rows: list[RowComparison] = []
    for match_key in dict.fromkeys(combined["_match"]):
        same = combined[combined["_match"] == match_key]
        label = labels.loc[same.index[0]].to_dict()
        base_groups = {k: g for k, g in same[same["_side"] == "base"].groupby("_protocol", sort=False)}
        new_groups = {k: g for k, g in same[same["_side"] == "new"].groupby("_protocol", sort=False)}
        pairs: list[tuple[pd.DataFrame | None, pd.DataFrame | None]] = []
        used: set[Any] = set()
        for key, group in base_groups.items():
            partner = key if key in new_groups else next((k for k in new_groups if k not in base_groups), None)
            if partner is None and new_groups:
                partner = next(iter(new_groups))
            pairs.append((group, new_groups.get(partner) if partner is not None else None))
            used.add(partner)
        for key, group in new_groups.items():
            if key not in used:
                pairs.append((next(iter(base_groups.values()), None), group))
        for base_group, new_group in pairs:
            rows.append(_compare_pair(label, base_group, new_group, protocol_columns, infos, factor, alpha,
                                      version_problem))
    return Comparison(base, new, infos, factor, alpha, rows, notes)


def _compare_pair(labels: dict[str, str], base: pd.DataFrame | None, new: pd.DataFrame | None,
                  protocol_columns: list[str], metrics: list[Metric], factor: float, alpha: float,
                  version_problem: str) -> RowComparison:
    row = RowComparison(labels, "not comparable", "", _seeds_text(base), _seeds_text(new))
    if base is None or new is None:
        row.reason = "only in NEW" if base is None else "only in BASE"
        return row
    differing = [f"{c} {format_value(base[c].iloc[0])} vs {format_value(new[c].iloc[0])}" for c in protocol_columns
                 if format_value(base[c].iloc[0]) != format_value(new[c].iloc[0])]
    if differing:
        row.reason = "evaluated differently: " + "; ".join(differing)
        return row
    if version_problem:
        row.reason = version_problem
        return row
    base_states, new_states = _seed_states(base), _seed_states(new)
    newly_failing = [s for s, ok in new_states.items() if not ok and base_states.get(s)]
    fixed = [s for s, ok in new_states.items() if ok and base_states.get(s) is False]
    if newly_failing:
        row.verdict = "newly failing"
        row.reason = f"seed {', '.join(newly_failing)} " + _first_reason(new[new["status"] != "done"])
        return row
    base_done, new_done = base[base["status"] == "done"], new[new["status"] == "done"]
    if base_done.empty or new_done.empty:
        if fixed:
            row.verdict, row.reason = "fixed", f"seed {', '.join(fixed)} now done (BASE {_first_reason(base)})"
        else:
            side, group = ("BASE", base) if base_done.empty else ("NEW", new)
            row.reason = f"no finished seed in {side} ({_first_reason(group)})"
        return row
    row.changes = [metric_change(m, pd.to_numeric(base_done[m.name], errors="coerce").tolist() if m.name in base_done
                                 else [], pd.to_numeric(new_done[m.name], errors="coerce").tolist()
                                 if m.name in new_done else [], factor, alpha) for m in metrics]
    if fixed:
        row.verdict, row.reason = "fixed", f"seed {', '.join(fixed)} now done (BASE {_first_reason(base)})"
        return row
    changes = {c.change for c in row.changes}
    if changes <= {"n/a"}:
        row.reason = "no value of the chosen metrics on both sides"
    elif "worse" in changes:
        row.verdict = "worse"
        row.reason = ", ".join(c.metric.name for c in row.changes if c.change == "worse") + " worse"
    elif "better" in changes:
        row.verdict = "better"
        row.reason = ", ".join(c.metric.name for c in row.changes if c.change == "better") + " better"
    else:
        row.verdict = "unchanged"
    if row.verdict in ("better", "worse", "unchanged") and min(len(base_done), len(new_done)) < 2:
        row.reason = (row.reason + "; " if row.reason else "") + "1 seed: no significance test"
    return row


# --------------------------------------------------------------------------------------------------- rendering

def change_text(change: MetricChange) -> str:
    """``BASE → NEW (×ratio)``, the change and Welch's p when it moved, and ``Δ NEW - BASE`` for a difference metric."""
    d = change.metric.decimals
    scale = change.metric.scale
    if change.change == "n/a":
        if not change.base_n and not change.new_n:
            return "—"
        side = "BASE" if not change.base_n else "NEW"
        return f"no value in {side}"
    text = f"{change.base_mean * scale:.{d}f} → {change.new_mean * scale:.{d}f}"
    text += f" (×{change.ratio:.3f})" if math.isfinite(change.ratio) else ""
    if change.change != "unchanged":
        text += f" {change.change}"
    elif change.beyond_factor:
        text += " not significant"
    if change.p_value is not None and change.beyond_factor:
        text += f" p={change.p_value:.2g}"
    if change.metric.comparison == DIFFERENCE:
        unit = f" {change.metric.unit}" if change.metric.unit not in ("", "1") else ""
        text += f", Δ {change.difference * scale:+.{d}f}{unit}"
    return text


def _table(comparison: Comparison) -> tuple[list[str], list[list[str]], int]:
    label_columns = list(dict.fromkeys(k for r in comparison.rows for k in r.labels))
    headers = [*label_columns, "seeds BASE", "seeds NEW", *(m.header for m in comparison.metrics), "verdict", "why"]
    body = []
    for row in comparison.rows:
        changes = {c.metric.name: change_text(c) for c in row.changes}
        body.append([*(row.labels.get(c, "—") for c in label_columns), row.base_seeds, row.new_seeds,
                     *(changes.get(m.name, "") for m in comparison.metrics), row.verdict, row.reason])
    return headers, body, len(label_columns)


def _run_line(role: str, run: Run) -> str:
    versions = ", ".join(f"{p} {run.versions[p]}" for p in compared_packages(run) if run.versions.get(p))
    versions = versions or "versions unknown"
    created = run.provenance.get("created", "date unknown")
    machine = _machine(run) or "machine unknown"
    return f"{role} {run.path}: {len(run.cells)} cells, {created}, {versions}, {machine}"


def summary_line(comparison: Comparison) -> str:
    counts = comparison.counts()
    return f"{len(comparison.rows)} configurations: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)


def rule_line(comparison: Comparison) -> str:
    """How ``changed`` was decided, for the compared metrics' comparison kinds (see :func:`change_threshold`)."""
    slack = comparison.factor - 1.0
    by_kind = {kind: [m.name for m in comparison.metrics if m.comparison == kind] for kind in (RATIO, DIFFERENCE)}
    rules = []
    if by_kind[RATIO]:
        rules.append(f"{', '.join(by_kind[RATIO])}: the mean moved by more than {slack * 100:g}%")
    if by_kind[DIFFERENCE]:
        rules.append(f"{', '.join(by_kind[DIFFERENCE])}: the mean moved by more than {slack * 100:g}% and at least "
                     f"{slack:g} in its unit")
    ones = [m.name for m in comparison.metrics if m.goal == CLOSEST_TO_ONE]
    if ones:
        rules.append(f"for {', '.join(ones)} the value's distance to 1 moves")
    return (f"changed (--factor {comparison.factor:g}) = {'; '.join(rules) or 'no metric'}; and, with 2+ seeds on "
            f"both sides, Welch's t-test p < {comparison.alpha:g}")


def to_text(comparison: Comparison) -> str:
    """What ``cnfbench compare`` prints."""
    headers, body, left = _table(comparison)
    lines = [_run_line("BASE", comparison.base), _run_line("NEW ", comparison.new), rule_line(comparison), "",
             text_table(headers, body, left), "", summary_line(comparison)]
    return "\n".join([*lines, *(f"note: {n}" for n in comparison.notes)])


def to_markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown table (for a pull request or CI summary)."""
    headers, body, _ = _table(comparison)

    def esc(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = [f"- {esc(_run_line('BASE', comparison.base))}", f"- {esc(_run_line('NEW', comparison.new))}",
             f"- {esc(rule_line(comparison))}", "",
             "| " + " | ".join(esc(h) for h in headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for row in body:
        cells = [esc(v) for v in row]
        cells[-2] = f"**{cells[-2]}**" if row[-2] in REGRESSIONS else cells[-2]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", summary_line(comparison), *(f"- note: {esc(n)}" for n in comparison.notes)]
    return "\n".join(lines) + "\n"


def to_json(comparison: Comparison) -> str:
    """The comparison as JSON: runs, rule, and per configuration its verdict and metric changes."""
    def number(value: float | None) -> float | None:
        return float(value) if value is not None and math.isfinite(value) else None

    data: dict[str, Any] = {
        "base": str(comparison.base.path), "new": str(comparison.new.path),
        "factor": comparison.factor, "alpha": comparison.alpha,
        "counts": comparison.counts(), "notes": comparison.notes,
        "rows": [{"labels": r.labels, "verdict": r.verdict, "reason": r.reason, "base_seeds": r.base_seeds,
                  "new_seeds": r.new_seeds,
                  "metrics": {c.metric.name: {"unit": c.metric.unit, "comparison": c.metric.comparison,
                                              "base_mean": number(c.base_mean),
                                              "base_std": number(c.base_std), "base_n": c.base_n,
                                              "new_mean": number(c.new_mean), "new_std": number(c.new_std),
                                              "new_n": c.new_n, "ratio": number(c.ratio),
                                              "difference": number(c.difference),
                                              "p_value": number(c.p_value), "change": c.change}
                              for c in r.changes}}
                 for r in comparison.rows],
    }
    return json.dumps(data, indent=2) + "\n"
