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
- else ``worse``, ``better``, ``inconclusive`` or ``unchanged`` from the chosen metrics.

How a metric is compared is its comparison kind in the column catalogue (:mod:`cnfbench.columns`), and
which way is better its goal (for a closest-to-1 goal such as ``mass``, what moves is ``|value - 1|``). A
*difference* metric (log-likelihoods in nats, bits/dim, mass) is judged by the move of its mean against a threshold
in its own unit (default ``+0.02``: 0.02 nats, whatever the NLL's size or sign); a *ratio* metric (times, NFE,
memory) by NEW/BASE of the geometric means against a factor (default ``x1.05``; the tests run on the logs, where
a factor is a difference and a skewed timing is nearly normal). Per-metric thresholds
(``nll_ref:+0.05,train_time_s:x1.10``) replace the defaults. When both sides have the same seeds (two or more),
they are paired (the paired t-test), otherwise Welch's t-test compares the two sides
(:mod:`~cnfbench.reports.statistics`). Each metric is

- ``worse`` / ``better`` — past its threshold the wrong / right way, and the two-sided test gives ``p < alpha``
  (the effect size and the test both decide; ``changed`` for a metric without a goal);
- ``unchanged`` — shown within its threshold: the ``1 - 2·alpha`` confidence interval of the move lies inside
  ``±threshold`` (TOST, two one-sided tests at ``alpha``; the threshold is the stated equivalence margin), so a
  significant but tiny move is unchanged and a large untested one never is;
- ``inconclusive`` — neither: fewer than two seeds a side (no test can reach ``p < alpha``), ``p >= alpha``
  for a move past the threshold, or an interval too wide to show it within.

A row is worse when any metric is worse, else better when any is better, else inconclusive when any is
inconclusive (or changed), else unchanged; its ``why`` (``RowComparison.reason``) says what decided it in a few
words (``nll_ref +0.500 nats, p=0.003``, ``train_time_s 24.1× slower, p=0.31 ≥ 0.05, 2 vs 2 seeds``,
``1 seed per side: no test``). Rows are sorted worst first, then by the size of their largest change.
Time and memory metrics are left out, with a note, when a configuration's cells ran with different torch thread
counts or concurrency (:mod:`~cnfbench.reports.sharing`), unless ``ignore_concurrency`` says to compare them anyway.
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
from cnfbench.labels import row_specs, short_specs
from cnfbench.messages import did_you_mean, one_line, plural
from cnfbench.reports.aggregate import format_value
from cnfbench.reports.escape import html_escape, markdown_escape, terminal_escape
from cnfbench.reports.metrics import Metric, ReportError, check_metrics, default_metrics, metric_info
from cnfbench.reports.render import text_table
from cnfbench.reports.sharing import differing, differing_text, merge_values, sharing_values
from cnfbench.reports.statistics import MIN_VALUES, MoveTest, move_test, p_text
from cnfbench.run_folder import Run, load_run
from cnfbench.text_tables import wrap_text

VERDICTS = ("newly failing", "worse", "inconclusive", "better", "fixed", "unchanged", "not comparable")
"""Every verdict, worst first (the order rows are sorted in; an undecided move may hide a regression)."""
REGRESSIONS = ("newly failing", "worse")
"""Verdicts that make ``cnfbench compare --fail-on-regression`` exit 1."""

DEFAULT_DIFFERENCE = 0.02
"""How far (in its own unit) a difference metric's mean must move to have changed, by default."""

LOW_POWER_SEEDS = 3
"""Fewer finished seeds than this on a side, and ``compare`` warns that its verdict has little power."""

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
class Threshold:
    """When a metric has changed: its mean moved by more than ``value`` in its unit (``kind`` difference) or
    NEW/BASE moved past the factor ``value`` either way (``kind`` ratio)."""

    kind: str
    value: float

    def text(self) -> str:
        return f"+{self.value:g}" if self.kind == DIFFERENCE else f"x{self.value:g}"


def default_threshold(metric: Metric, factor: float = 1.05, difference: float = DEFAULT_DIFFERENCE) -> Threshold:
    """The threshold of a metric nobody set one for: by its comparison kind in the catalogue."""
    return Threshold(DIFFERENCE, difference) if metric.comparison == DIFFERENCE else Threshold(RATIO, factor)


def parse_thresholds(text: str, known: Sequence[str] | None = None) -> dict[str, Threshold]:
    """``nll_ref:+0.02,train_time_s:x1.10`` as thresholds by metric; :class:`ReportError` (one line) when a part
    is malformed or names no known metric."""
    thresholds: dict[str, Threshold] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition(":")
        name, value = name.strip(), value.strip().replace("×", "x")
        if known is not None and name not in known:
            raise ReportError(f"unknown metric {name!r} in threshold {part!r}{did_you_mean(name, known)}")
        try:
            if value.startswith("+"):
                threshold = Threshold(DIFFERENCE, float(value[1:]))
                ok = threshold.value >= 0
            elif value.lower().startswith("x"):
                threshold = Threshold(RATIO, float(value[1:]))
                ok = threshold.value >= 1
            else:
                ok = False
        except ValueError:
            ok = False
        if not ok or not math.isfinite(threshold.value):
            raise ReportError(f"threshold {part!r} must be METRIC:+D (a move of D in the metric's unit, D >= 0) "
                              "or METRIC:xF (NEW/BASE past the factor F >= 1), e.g. nll_ref:+0.02,train_time_s:x1.10")
        thresholds[name] = threshold
    return thresholds


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
    ratio: float  # NEW/BASE (of geometric means when every value is positive); nan for a difference metric
    difference: float  # new_mean - base_mean, in the column's unit
    p_value: float | None  # the two-sided test's, when one was possible
    change: str  # better, worse, unchanged, inconclusive, changed (significant, metric without a goal), n/a
    beyond_factor: bool = False  # the move is past the threshold (whatever the test said)
    threshold: Threshold | None = None
    test: str = ""  # "paired t-test", "Welch's t-test", or "" (too few seeds: no test)
    size: float = 0.0  # the move over the threshold (1 = at the threshold), for sorting
    equivalence_p: float | None = None  # TOST's: the move lies within the threshold when < alpha
    why: str = ""  # what decided ``change``, in a few words: "+0.500 nats, p=0.003", "1 seed per side: no test"
    seeds: str = ""  # what the test rests on: "3 paired seeds", "2 vs 4 seeds"
    direction: str = ""  # where the mean moved past the threshold (worse, better, changed), whether or not shown

    @property
    def tested(self) -> bool:
        return bool(self.test)


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
    thresholds: dict[str, Threshold] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {verdict: sum(r.verdict == verdict for r in self.rows) for verdict in VERDICTS}

    @property
    def regressions(self) -> list[RowComparison]:
        return [r for r in self.rows if r.verdict in REGRESSIONS]

    def to_frame(self) -> pd.DataFrame:
        """One row per configuration, for a notebook: its labels, seeds, verdict and reason, and per metric
        ``M_base``, ``M_new`` (means, in the column's unit), ``M_difference``, ``M_ratio``, ``M_p`` (two-sided),
        ``M_equivalence_p`` (TOST), ``M_change`` and ``M_why``."""
        records = []
        for row in self.rows:
            record: dict[str, Any] = {**row.labels, "seeds_base": row.base_seeds, "seeds_new": row.new_seeds,
                                      "verdict": row.verdict, "reason": row.reason}
            for change in row.changes:
                name = change.metric.name
                record.update({f"{name}_base": change.base_mean, f"{name}_new": change.new_mean,
                               f"{name}_difference": change.difference, f"{name}_ratio": change.ratio,
                               f"{name}_p": change.p_value if change.p_value is not None else math.nan,
                               f"{name}_equivalence_p": change.equivalence_p
                               if change.equivalence_p is not None else math.nan,
                               f"{name}_change": change.change, f"{name}_why": change.why})
            records.append(record)
        return pd.DataFrame(records)

    def _repr_html_(self) -> str:
        """The comparison as a notebook shows it: the headline, the table as ``compare`` prints it, the notes."""
        headers, body, _ = _table(self)
        notes = "".join(f"<br>note: {html_escape(note)}" for note in self.notes)
        return (f"<p><b>{html_escape(headline(self))}</b><br>{html_escape(rule_line(self))}</p>"
                f"{pd.DataFrame(body, columns=headers).to_html(index=False)}<p>{html_escape(summary_line(self))}"
                f"{notes}</p>")


def _values(values: Sequence[float] | dict[str, float]) -> dict[str, float]:
    """Finite values by seed (a plain sequence: by position, never paired)."""
    items = values.items() if isinstance(values, dict) else ((f"#{i}", v) for i, v in enumerate(values))
    return {str(k): float(v) for k, v in items if v is not None and math.isfinite(float(v))}


def _move_test(base: dict[str, float], new: dict[str, float], paired: bool, margin: float,
               alpha: float) -> MoveTest | None:
    """:func:`~cnfbench.reports.statistics.move_test` paired when both sides have the same seeds (two or more),
    else Welch's over every value; None with fewer than two seeds a side. Pairing only the seeds in common would
    test other numbers than the means shown and judged against the threshold."""
    if paired and len(base) >= MIN_VALUES and set(base) == set(new):
        return move_test(list(base.values()), [new[s] for s in base], True, margin, alpha)
    return move_test(list(base.values()), list(new.values()), False, margin, alpha)


def _seeds_phrase(base_n: int, new_n: int) -> str:
    """``1 seed per side``, ``1 seed in BASE``: why no test was possible."""
    if base_n < MIN_VALUES and new_n < MIN_VALUES:
        return f"{plural(base_n, 'seed')} per side" if base_n == new_n else f"{base_n} vs {new_n} seeds"
    return f"{plural(base_n, 'seed')} in BASE" if base_n < MIN_VALUES else f"{plural(new_n, 'seed')} in NEW"


_TIME_UNITS = ("s", "ms", "min", "h")


def _factor_text(ratio: float, unit: str) -> str:
    """``24.1× slower``, ``2.00× lower``: a ratio as a reader says it."""
    if ratio == 1.0:
        return "×1 (identical)"
    up = ratio > 1.0
    factor = ratio if up else 1.0 / ratio
    number = f"{factor:.2f}" if factor < 10 else f"{factor:.1f}" if factor < 100 else f"{factor:,.0f}"
    if unit in _TIME_UNITS:
        return f"{number}× {'slower' if up else 'faster'}"
    return f"{number}× {'higher' if up else 'lower'}"


def _effect_text(metric: Metric, effect: float, log_scale: bool) -> str:
    """The move on the scale it was judged on: ``+0.500 nats``, ``|mass - 1| -0.030``, ``24.1× slower``."""
    if log_scale:
        return _factor_text(math.exp(effect), metric.unit)
    d = metric.decimals
    value = effect * metric.scale
    value = 0.0 if abs(value) < 0.5 * 10.0 ** -d else value  # no "-0.000"
    unit = f" {metric.unit}" if metric.unit and metric.unit not in ("1", "—") else ""
    if metric.goal == CLOSEST_TO_ONE:
        return f"|{metric.name} - 1| {value:+.{d}f}{unit}"
    return f"{value:+.{d}f}{unit}"


def _margin_text(metric: Metric, threshold: Threshold) -> str:
    if threshold.kind == RATIO:
        return f"×{threshold.value:g}"
    unit = f" {metric.unit}" if metric.unit and metric.unit not in ("1", "—") else ""
    return f"±{threshold.value:g}{unit}"


def metric_change(metric: Metric, base: Sequence[float] | dict[str, float], new: Sequence[float] | dict[str, float],
                  threshold: Threshold | float, alpha: float) -> MetricChange:
    """Compare one metric's finished-seed values (by seed when given as dicts, so that seeds pair); see the module
    docstring for the rule. A float ``threshold`` is a factor for a ratio metric's default."""
    if not isinstance(threshold, Threshold):
        threshold = default_threshold(metric, factor=threshold)
    b, n = _values(base), _values(new)

    def stats(values: dict[str, float]) -> tuple[float, float]:
        array = np.asarray(list(values.values()), dtype=float)
        if not len(array):
            return math.nan, math.nan
        return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else math.nan

    (bm, bs), (nm, ns) = stats(b), stats(n)
    if not b or not n:
        side = "BASE" if not b else "NEW"
        return MetricChange(metric, bm, bs, len(b), nm, ns, len(n), math.nan, math.nan, None, "n/a",
                            threshold=threshold, why=f"no value in {side}")
    positive = all(v > 0 for v in (*b.values(), *n.values()))
    ratio = math.nan
    if metric.comparison == RATIO:
        if positive:
            ratio = math.exp(np.mean(np.log(list(n.values()))) - np.mean(np.log(list(b.values()))))
        elif bm != 0 and nm / bm >= 0:
            ratio = nm / bm
    bad_b = {k: metric.badness(v) for k, v in b.items()} if metric.goal else b
    bad_n = {k: metric.badness(v) for k, v in n.items()} if metric.goal else n
    # a factor threshold judges the move on the log scale (times, NFE and memory are multiplicative and skewed);
    # a difference threshold in the metric's unit
    log_scale = threshold.kind == RATIO and all(v > 0 for v in (*bad_b.values(), *bad_n.values()))
    if log_scale:
        bad_b = {k: math.log(v) for k, v in bad_b.items()}
        bad_n = {k: math.log(v) for k, v in bad_n.items()}
    if threshold.kind == RATIO:  # a factor means nothing across zero: there only identical values are within it
        margin = math.log(threshold.value) if log_scale else 0.0
    else:
        margin = threshold.value
    effect = float(np.mean(list(bad_n.values())) - np.mean(list(bad_b.values())))
    if margin > 0:
        size = abs(effect) / margin
    else:
        size = math.inf if effect != 0 else 0.0
    beyond = size > 1.0
    direction = (("worse" if effect > 0 else "better") if metric.goal else "changed") if beyond else ""
    moved = _effect_text(metric, effect, log_scale)
    move = _move_test(bad_b, bad_n, isinstance(base, dict) and isinstance(new, dict), margin, alpha)
    if move is None:
        change, why, seeds = "inconclusive", f"{_seeds_phrase(len(b), len(n))}: no test", ""
    else:
        seeds = move.seeds_text()
        if beyond and move.p < alpha:
            change, why = direction, f"{moved}, {p_text(move.p, alpha)}"
        elif move.equivalence_p < alpha:
            change = "unchanged"
            identical = effect == 0 and move.low == move.high
            why = "identical values" if identical else \
                f"within {_margin_text(metric, threshold)}, TOST {p_text(move.equivalence_p, alpha)}"
        elif beyond:
            change, why = "inconclusive", f"{moved}, {p_text(move.p, alpha)} ≥ {alpha:g}"
        else:
            change = "inconclusive"
            why = f"{moved}, not shown within {_margin_text(metric, threshold)} (TOST " \
                  f"{p_text(move.equivalence_p, alpha)})"
    return MetricChange(metric, bm, bs, len(b), nm, ns, len(n), ratio, nm - bm, move.p if move else None, change,
                        beyond, threshold, move.test if move else "", size if beyond else 0.0,
                        move.equivalence_p if move else None, why, seeds, direction)


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
    return f"{status}: {one_line(reason, 100)}" if reason else status


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
    for column, noun, after in (("concurrency", "cell", " at a time"), ("torch_threads", "torch thread", "")):
        if column in run.cells:
            values = sorted({format_value(v) for v in run.cells[column] if not pd.isna(v)})
            if values:
                parts.append(f"{'/'.join(values)} {noun if values == ['1'] else noun + 's'}{after}")
    return ", ".join(parts)


def _sharing_problem(base: Run, new: Run, combined: pd.DataFrame) -> str:
    """A sentence when the finished cells of a configuration in both runs (the rows put side by side) ran with
    different torch thread counts or concurrency, else ``""``; a value a row does not record is unknown, never a
    difference."""
    mixed, configurations = [], 0
    for match_key in dict.fromkeys(combined["_match"]):
        same = combined[combined["_match"] == match_key]
        if set(same["_side"]) != {"base", "new"}:
            continue
        configurations += 1
        values = differing(sharing_values(same))
        if values:
            mixed.append(values)
    if not mixed:
        return ""
    where = "" if len(mixed) == configurations else f" in {len(mixed)} of {configurations} configurations"
    return (f"BASE ran {_sharing(base) or 'unrecorded'}, NEW {_sharing(new) or 'unrecorded'} (timings compare cells "
            f"run with different {differing_text(merge_values(*mixed))}{where})")


def compare_runs(base: Run | str | os.PathLike[str], new: Run | str | os.PathLike[str],
                 metrics: Sequence[str] | None = None, factor: float = 1.05, alpha: float = 0.05,
                 ignore_versions: bool = False, ignore_concurrency: bool = False,
                 thresholds: dict[str, Threshold] | None = None, difference: float = DEFAULT_DIFFERENCE
                 ) -> Comparison:
    """Match NEW's configurations to BASE's and give each a verdict (see the module docstring).

    ``base``/``new`` are :class:`~cnfbench.run_folder.Run` objects or run folders; ``metrics`` default to
    the column catalogue's compare metrics (machine-independent; those with a value), plus any metric ``thresholds``
    names. ``factor`` (1.05 = a 5% change) is the default threshold of ratio metrics and ``difference`` (0.02) that
    of difference metrics, in their unit; ``thresholds`` set a metric's own;
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
    if not difference >= 0.0:
        raise ReportError(f"the difference threshold must be at least 0, got {difference}")
    combined = pd.concat([base.cells.assign(_side="base"), new.cells.assign(_side="new")], ignore_index=True)
    metrics = check_metrics(combined, metrics) if metrics else default_metrics(combined, COMPARE)
    if thresholds:
        metrics = [*metrics, *(name for name in check_metrics(combined, list(thresholds)) if name not in metrics)]
    infos = [metric_info(m) for m in metrics]
    chosen = {info.name: (thresholds or {}).get(info.name) or default_threshold(info, factor, difference)
              for info in infos}
    notes: list[str] = []
    combined["_match"] = _key(combined, MATCH_COLUMNS)
    sharing = _sharing_problem(base, new, combined)
    if sharing and any(m.machine for m in infos):
        if ignore_concurrency:
            notes.append(f"time and memory compared anyway (--ignore-concurrency): {sharing}")
        else:
            left_out = [m.name for m in infos if m.machine]
            metrics = [name for name, info in zip(metrics, infos, strict=True) if not info.machine]
            infos = [info for info in infos if not info.machine]
            if not metrics:
                raise ReportError(f"{sharing}: {', '.join(left_out)} are not comparable (use --ignore-concurrency to "
                                  "compare them anyway)")
            notes.append(f"{', '.join(left_out)} left out as not comparable: {sharing}; --ignore-concurrency "
                         "compares them anyway")
    version_problem = _version_problem(base, new, notes)
    if version_problem and ignore_versions:
        notes.append(f"{version_problem}; compared anyway (--ignore-versions)")
        version_problem = ""
    if any(m.machine for m in infos) and _machine(base) != _machine(new):
        where = [_machine(run) or "an unknown machine" for run in (base, new)]
        notes.append(f"BASE ran on {where[0]}, NEW on {where[1]}: time and memory ratios compare the machines too")

    labels = pd.DataFrame(index=combined.index)
    for axis in GRID_AXES:
        labels[axis.key] = short_specs(row_specs(combined, axis.key))
    for column in BUDGET_COLUMNS:
        if column in combined and combined[column].map(format_value).nunique() > 1:
            labels[column] = combined[column].map(format_value)
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
            rows.append(_compare_pair(label, base_group, new_group, protocol_columns, infos, chosen, alpha,
                                      version_problem))
    rows.sort(key=lambda r: (VERDICTS.index(r.verdict), -max((c.size for c in r.changes), default=0.0)))
    low = [r for r in rows if r.changes and min(c.base_n for c in r.changes if c.change != "n/a") < LOW_POWER_SEEDS
           or r.changes and min(c.new_n for c in r.changes if c.change != "n/a") < LOW_POWER_SEEDS] \
        if any(c.change != "n/a" for r in rows for c in r.changes) else []
    if low:
        notes.append(f"low power: fewer than {LOW_POWER_SEEDS} seeds a side in {len(low)} of "
                     f"{plural(len(rows), 'configuration')}; run more seeds (--seeds) before trusting a verdict")
    return Comparison(base, new, infos, factor, alpha, rows, notes, chosen)


def _compare_pair(labels: dict[str, str], base: pd.DataFrame | None, new: pd.DataFrame | None,
                  protocol_columns: list[str], metrics: list[Metric], thresholds: dict[str, Threshold], alpha: float,
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
        row.reason = f"{_seed_list(newly_failing)} " + _first_reason(new[new["status"] != "done"])
        return row
    base_done, new_done = base[base["status"] == "done"], new[new["status"] == "done"]
    if base_done.empty or new_done.empty:
        if fixed:
            row.verdict, row.reason = "fixed", f"{_seed_list(fixed)} now done (BASE {_first_reason(base)})"
        else:
            side, group = ("BASE", base) if base_done.empty else ("NEW", new)
            row.reason = f"no finished seed in {side} ({_first_reason(group)})"
        return row
    def by_seed(done: pd.DataFrame, name: str) -> dict[str, float]:
        if name not in done:
            return {}
        seeds = done["seed"].map(format_value) if "seed" in done else done.index.map(str)
        return dict(zip(seeds, pd.to_numeric(done[name], errors="coerce"), strict=True))

    row.changes = [metric_change(m, by_seed(base_done, m.name), by_seed(new_done, m.name), thresholds[m.name], alpha)
                   for m in metrics]
    if fixed:
        row.verdict, row.reason = "fixed", f"{_seed_list(fixed)} now done (BASE {_first_reason(base)})"
        return row
    row.verdict, row.reason = row_verdict(row.changes)
    return row


def _lead(changes: Sequence[MetricChange]) -> str:
    """The why of the largest of ``changes`` (the metric's name, its move and ``p``; the seeds the test rests on),
    and how many more metrics decided the same way."""
    lead = max(changes, key=lambda c: (c.size, c.tested))
    text = f"{lead.metric.name} {lead.why}"
    if lead.change == "changed":
        text += " (no goal says which way is better)"
    if lead.change == "inconclusive" and lead.seeds:
        text += f", {lead.seeds}"
    return text + (f" (+{plural(len(changes) - 1, 'more metric')})" if len(changes) > 1 else "")


def _seed_list(seeds: Sequence[str]) -> str:
    """``seed 1``, ``seeds 0, 3``."""
    return f"{'seed' if len(seeds) == 1 else 'seeds'} {', '.join(seeds)}"


def row_verdict(changes: Sequence[MetricChange]) -> tuple[str, str]:
    """A configuration's verdict from its metrics' changes, and what decided it: ``worse`` when any metric got
    worse, else ``better`` when any got better, else ``inconclusive`` when any could not be decided (or changed
    without a goal to judge it by), else ``unchanged`` (every metric shown within its threshold);
    ``not comparable`` when no metric has a value on both sides."""
    judged = [c for c in changes if c.change != "n/a"]
    if not judged:
        return "not comparable", "no value of the chosen metrics on both sides"
    for direction in ("worse", "better"):
        moved = [c for c in judged if c.change == direction]
        if moved:
            return direction, _lead(moved)
    undecided = [c for c in judged if c.change in ("inconclusive", "changed")]
    if undecided:
        untested = [c for c in undecided if not c.tested]
        if len(untested) == len(undecided):  # "1 seed per side: no test", once for the metrics it holds for
            whys = {c.why: c.metric.name for c in reversed(untested)}
            return "inconclusive", "; ".join(why if len(whys) == 1 else f"{name} {why}" for why, name in whys.items())
        return "inconclusive", _lead(undecided)
    if all(c.why == "identical values" for c in judged):
        return "unchanged", "identical values"
    if len(judged) == 1:
        return "unchanged", f"{judged[0].metric.name} {judged[0].why}"
    worst = max((c.equivalence_p for c in judged if c.equivalence_p is not None), default=0.0)
    bound = "0.001" if worst < 0.001 else f"{worst:.2g}"
    return "unchanged", f"all within their thresholds, TOST p≤{bound}"


# --------------------------------------------------------------------------------------------------- rendering

def change_text(change: MetricChange, alpha: float = 0.05) -> str:
    """``BASE → NEW`` with ``NEW - BASE`` in the column's unit (difference metrics) or ``×NEW/BASE`` (ratio
    metrics, of geometric means), the change, and the two-sided test's ``p`` where a test decided or left it open:
    ``worse (p=0.003)``, ``inconclusive (p=0.31)``, ``inconclusive`` (no test), ``unchanged``."""
    d = change.metric.decimals
    scale = change.metric.scale
    if change.change == "n/a":
        if not change.base_n and not change.new_n:
            return "—"
        return change.why
    text = f"{change.base_mean * scale:.{d}f} → {change.new_mean * scale:.{d}f}"
    if change.metric.comparison == DIFFERENCE or not math.isfinite(change.ratio):
        delta = change.difference * scale
        delta = 0.0 if abs(delta) < 0.5 * 10.0 ** -d else delta  # no "-0.000"
        text += f" ({delta:+.{d}f})"  # in the column's unit, which its header says
    else:
        text += f" (×{change.ratio:.3f})"
    text += f" {change.change}"
    if change.tested and change.p_value is not None and change.change != "unchanged":
        text += f" ({p_text(change.p_value, alpha)})"
    return text


def _table(comparison: Comparison) -> tuple[list[str], list[list[str]], int]:
    label_columns = list(dict.fromkeys(k for r in comparison.rows for k in r.labels))
    headers = [*label_columns, "seeds BASE", "seeds NEW", *(m.header for m in comparison.metrics), "verdict", "why"]
    body = []
    for row in comparison.rows:
        changes = {c.metric.name: change_text(c, comparison.alpha) for c in row.changes}
        body.append([*(row.labels.get(c, "—") for c in label_columns), row.base_seeds, row.new_seeds,
                     *(changes.get(m.name, "") for m in comparison.metrics), row.verdict, row.reason])
    return headers, body, len(label_columns)


def _run_line(role: str, run: Run) -> str:
    versions = ", ".join(f"{p} {run.versions[p]}" for p in compared_packages(run) if run.versions.get(p))
    versions = versions or "versions unknown"
    created = run.provenance.get("created", "date unknown")
    machine = _machine(run) or "machine unknown"
    return f"{role} {run.path}: {plural(len(run.cells), 'cell')}, {created}, {versions}, {machine}"


def summary_line(comparison: Comparison) -> str:
    """``12 configurations: 1 worse, 11 unchanged``, in :data:`VERDICTS` order."""
    counts = comparison.counts()
    return f"{plural(len(comparison.rows), 'configuration')}: " + ", ".join(f"{n} {v}" for v, n in counts.items()
                                                                             if n)


def headline(comparison: Comparison) -> str:
    """One line to read first, as asv's: whether anything got worse, got better, could not be decided, is shown
    unchanged, or could not be compared."""
    total = len(comparison.rows)
    counts = comparison.counts()
    worse = len(comparison.regressions)
    of = f"of {plural(total, 'configuration')}"
    undecided = f"; {counts['inconclusive']} inconclusive" if counts["inconclusive"] else ""
    if worse:
        return f"REGRESSED: {worse} {of} worse or newly failing{undecided}"
    if counts["better"]:
        return f"IMPROVED: {counts['better']} {of} better, none worse{undecided}"
    if counts["inconclusive"]:
        return f"INCONCLUSIVE: {counts['inconclusive']} {of} undecided (too few seeds or p ≥ {comparison.alpha:g})"
    if counts["fixed"]:
        return f"FIXED: {counts['fixed']} {of} now finish, none worse"
    if counts["unchanged"]:
        return f"UNCHANGED: {counts['unchanged']} {of} shown within their thresholds, none worse"
    return f"NOT COMPARED: none {of} could be compared"


def rule_line(comparison: Comparison) -> str:
    """How the verdicts were decided: each metric's threshold, the tests, and ``alpha``."""
    parts = []
    for metric in comparison.metrics:
        threshold = comparison.thresholds.get(metric.name) or default_threshold(metric, comparison.factor)
        if threshold.kind == DIFFERENCE:
            unit = metric.unit if metric.unit not in ("", "1", "—") else "its unit"
            what = f"|value - 1| ±{threshold.value:g}" if metric.goal == CLOSEST_TO_ONE else \
                f"±{threshold.value:g} {unit}"
        else:
            what = f"×{threshold.value:g}"
        parts.append(f"{metric.name} {what}")
    alpha = comparison.alpha
    geometric = " (×: NEW/BASE of geometric means)" if any("×" in part for part in parts) else ""
    return (f"thresholds: {'; '.join(parts) or 'none'}{geometric}. worse/better: past it and "
            f"p < {alpha:g} (paired t-test when both runs have the same seeds, else Welch's; {MIN_VALUES}+ seeds "
            "a side); "
            f"unchanged: the {1 - 2 * alpha:.0%} confidence interval within it (TOST); else inconclusive")


def to_text(comparison: Comparison, width: int | None = None) -> str:
    """What ``cnfbench compare`` prints, folded to ``width`` columns (default 100): the runs and the rule, a table
    of the seeds and metrics per configuration, a table of each configuration's verdict and why (left-aligned
    prose), the headline, the counts and the notes."""
    headers, body, left = _table(comparison)
    headers, body = [terminal_escape(h) for h in headers], [[terminal_escape(v) for v in row] for row in body]
    constant = [i for i in range(left) if len({row[i] for row in body}) == 1 and len(body) > 1]
    same = ", ".join(f"{headers[i]} {body[0][i]}" for i in constant)
    keep = [i for i in range(len(headers)) if i not in constant]
    headers, body, left = [headers[i] for i in keep], [[row[i] for i in keep] for row in body], left - len(constant)
    labels = list(range(left))
    numbers = [*labels, *range(left, len(headers) - 2)]
    verdicts = [*labels, len(headers) - 2, len(headers) - 1]
    tables = [text_table([headers[i] for i in columns], [[row[i] for i in columns] for row in body], lead, width)
              for columns, lead in ((numbers, left), (verdicts, len(verdicts)))]
    prose = [_run_line("BASE", comparison.base), _run_line("NEW ", comparison.new), rule_line(comparison),
             *([f"in every row: {same}"] if same else [])]
    lines = [*(wrap_text(terminal_escape(line), width) for line in prose), "", tables[0], "", tables[1], "",
             wrap_text(headline(comparison), width), wrap_text(summary_line(comparison), width)]
    return "\n".join([*lines, *(wrap_text(f"note: {terminal_escape(n)}", width) for n in comparison.notes)])


def to_markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown table (for a pull request or CI summary), every text escaped
    (:func:`~cnfbench.reports.escape.markdown_escape`)."""
    headers, body, _ = _table(comparison)
    esc = markdown_escape
    lines = [f"- {esc(_run_line('BASE', comparison.base))}", f"- {esc(_run_line('NEW', comparison.new))}",
             f"- {esc(rule_line(comparison))}", "",
             "| " + " | ".join(esc(h) for h in headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for row in body:
        cells = [esc(v) for v in row]
        cells[-2] = f"**{cells[-2]}**" if row[-2] in REGRESSIONS else cells[-2]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"**{esc(headline(comparison))}**", "", esc(summary_line(comparison)),
              *(f"- note: {esc(n)}" for n in comparison.notes)]
    return "\n".join(lines) + "\n"


def to_json(comparison: Comparison) -> str:
    """The comparison as JSON: runs, rule, and per configuration its verdict and metric changes."""
    def number(value: float | None) -> float | None:
        return float(value) if value is not None and math.isfinite(value) else None

    data: dict[str, Any] = {
        "base": str(comparison.base.path), "new": str(comparison.new.path),
        "factor": comparison.factor, "alpha": comparison.alpha, "headline": headline(comparison),
        "thresholds": {name: t.text() for name, t in comparison.thresholds.items()},
        "counts": comparison.counts(), "notes": comparison.notes,
        "rows": [{"labels": r.labels, "verdict": r.verdict, "reason": r.reason, "base_seeds": r.base_seeds,
                  "new_seeds": r.new_seeds,
                  "metrics": {c.metric.name: {"unit": c.metric.unit, "comparison": c.metric.comparison,
                                              "base_mean": number(c.base_mean),
                                              "base_std": number(c.base_std), "base_n": c.base_n,
                                              "new_mean": number(c.new_mean), "new_std": number(c.new_std),
                                              "new_n": c.new_n, "ratio": number(c.ratio),
                                              "difference": number(c.difference),
                                              "p_value": number(c.p_value), "test": c.test or None,
                                              "seeds_tested": c.seeds or None,
                                              "equivalence_p": number(c.equivalence_p),
                                              "change": c.change, "direction": c.direction or None,
                                              "why": c.why}
                              for c in r.changes}}
                 for r in comparison.rows],
    }
    return json.dumps(data, indent=2) + "\n"
