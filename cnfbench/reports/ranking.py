"""Rankings across datasets: average ranks, Friedman's test, Nemenyi's critical difference, performance profiles.

``cnfbench report RUN... --rank METRIC`` answers "which configuration is best" across a suite of datasets the way
benchmark papers do (Demšar, "Statistical comparisons of classifiers over multiple data sets", JMLR 2006):

- **Entries.** A dataset's entry for a configuration is the *mean over its finished seeds* of the metric (in the
  column's stored unit). The datasets are the blocks of the test; seeds are repeated measurements of one block,
  not blocks of their own, so they are averaged first (Demšar §3.2.2), which also keeps N the number of
  datasets. A configuration is every configuration axis but the dataset (field, objective, solver, trace, budget,
  protocol, ``trained_with``); the run folder is not one, so runs holding different datasets of the same grid
  rank together (a cell found in two runs counts once).
- **Ranks.** On each dataset the configurations are ranked by the metric's goal from the column catalogue
  (lowest, or closest to 1 for a mass): 1 is best, ties share the average of the ranks they span. An entry of a
  configuration with a flagged cell (its solver's density is not normalized, ``valid`` false) or without a
  finished seed (every cell failed) is ranked *last* on that dataset — behind every trustworthy entry, tied with
  the other such entries — as :mod:`~cnfbench.reports.pivot` never marks one best; the notes name them.
- **Complete blocks.** Friedman's test needs every configuration on every dataset: a configuration with no cell
  on some dataset is left out, with a note naming the dataset.
- **Friedman's test** on the k configurations over N datasets, ties corrected as
  :func:`scipy.stats.friedmanchisquare` does (computed here from the rank matrix, so that k = 2 works too), and
  Iman and Davenport's F form of it, which Demšar recommends as less conservative.
- **Nemenyi's critical difference** ``CD = q_alpha * sqrt(k (k + 1) / (6 N))`` with ``q_alpha`` the studentized
  range's upper alpha quantile (infinite degrees of freedom) over sqrt(2) (k = 4, alpha = 0.05: 2.569, Demšar's
  Table 5a). Two configurations whose average ranks differ by less than CD are not significantly different;
  :attr:`Ranking.groups` are the maximal runs of such configurations (the bars of the critical-difference diagram).
- **Performance profiles** (Dolan and Moré, "Benchmarking optimization software with performance profiles",
  Math. Program. 2002), for a cost metric only (ratio comparison, lowest best, positive: times, NFE, memory): per
  dataset each configuration's ratio to the best entry; a configuration's profile at tau is the fraction of the
  datasets on which its ratio is at most tau. A flagged or failed entry has an infinite ratio (never within any
  tau), as Dolan and Moré count a failure.

The figures are drawn by :mod:`~cnfbench.reports.rank_plots`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cnfbench.columns import LOWEST, RATIO
from cnfbench.families import GRID_AXES
from cnfbench.labels import SEPARATOR, row_labels
from cnfbench.messages import did_you_mean, plural
from cnfbench.reports.aggregate import axis_labels, flagged, format_value, varying_axes
from cnfbench.reports.escape import terminal_escape
from cnfbench.reports.metrics import DATASET, GOAL_TEXT, RUN, Metric, ReportError, available_metrics, metric_info
from cnfbench.reports.sharing import sharing_note
from cnfbench.reports.statistics import p_text
from cnfbench.text_tables import fold_table, wrap_text

MIN_DATASETS = 3
"""Friedman's test over fewer datasets says nothing (and the chi-square approximation needs more)."""
MIN_CONFIGURATIONS = 2
"""A ranking needs something to rank."""
ALPHA = 0.05
"""The significance level of Friedman's test and Nemenyi's critical difference."""
PROFILE_TAUS = (1.0, 1.5, 2.0, 4.0, 10.0)
"""The ratios to the best at which the text table reads each performance profile."""


@dataclass(frozen=True)
class RankEntry:
    """One configuration on one dataset: the seed mean of the metric (stored unit) and its rank there."""

    value: float  # mean over finished seeds with a finite value; nan when there is none
    rank: float  # 1 = best; ties share the average rank
    seeds: int  # finished seeds with a finite value
    cells: int  # cells of the configuration on the dataset
    flagged: bool  # a finished cell has valid = false

    @property
    def last(self) -> bool:
        """Ranked last on its dataset: flagged, or no finished seed."""
        return self.flagged or not math.isfinite(self.value)


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman's chi-square (ties corrected) with k - 1 degrees of freedom, and Iman–Davenport's F."""

    statistic: float
    dof: int
    p: float
    f_statistic: float
    f_dof: tuple[int, int]
    f_p: float


@dataclass(frozen=True)
class Profile:
    """A Dolan–Moré performance profile: each entry's ratio to its dataset's best (``inf``: flagged or failed)."""

    ratios: dict[tuple[str, str], float]  # (configuration, dataset) -> ratio >= 1

    def fraction(self, configuration: str, tau: float, datasets: Sequence[str]) -> float:
        """The fraction of ``datasets`` on which ``configuration`` is within ``tau`` of the best."""
        within = sum(self.ratios[(configuration, d)] <= tau * (1 + 1e-12) for d in datasets)
        return within / len(datasets)


@dataclass
class Ranking:
    """A metric's ranking of configurations over datasets; see the module docstring."""

    metric: Metric
    datasets: list[str]
    configurations: list[str]  # best average rank first
    entries: dict[tuple[str, str], RankEntry]
    average_ranks: dict[str, float]
    friedman: FriedmanResult
    alpha: float
    q_alpha: float
    critical_difference: float
    groups: list[list[str]]  # maximal runs (in rank order) whose average ranks differ by less than the CD
    profile: Profile | None
    notes: list[str] = field(default_factory=list)

    @property
    def significant(self) -> bool:
        """Whether Friedman's test rejects "all configurations perform alike" at :attr:`alpha`."""
        return self.friedman.p < self.alpha


# --------------------------------------------------------------------------------------------------- statistics

def friedman_test(ranks: np.ndarray) -> FriedmanResult:
    """Friedman's test on an N x k matrix of within-dataset ranks (rows: datasets, average ranks for ties).

    ``chi2 = 12 N / (k (k + 1)) * sum_j (R_j - (k + 1) / 2)^2``, divided by the tie correction
    ``1 - sum (t^3 - t) / (N k (k^2 - 1))`` over each dataset's groups of t tied entries, as scipy's
    ``friedmanchisquare`` computes it; Iman–Davenport's ``F = (N - 1) chi2 / (N (k - 1) - chi2)`` with
    (k - 1, (k - 1)(N - 1)) degrees of freedom. Every dataset tied throughout gives chi2 = 0, p = 1.
    """
    from scipy import stats

    n, k = ranks.shape
    mean_ranks = ranks.mean(axis=0)
    chi2 = 12 * n / (k * (k + 1)) * float(((mean_ranks - (k + 1) / 2) ** 2).sum())
    ties = sum(float(t**3 - t) for row in ranks for t in np.unique(row, return_counts=True)[1])
    correction = 1 - ties / (n * k * (k * k - 1))
    chi2 = chi2 / correction if correction > 0 else 0.0
    dof = k - 1
    p = float(stats.chi2.sf(chi2, dof)) if chi2 > 0 else 1.0
    f_dof = (k - 1, (k - 1) * (n - 1))
    denominator = n * (k - 1) - chi2
    if chi2 <= 0:
        f_stat, f_p = 0.0, 1.0
    elif denominator <= 1e-12 * n * k:  # every dataset ranks the configurations alike: F is infinite
        f_stat, f_p = math.inf, 0.0
    else:
        f_stat = (n - 1) * chi2 / denominator
        f_p = float(stats.f.sf(f_stat, *f_dof))
    return FriedmanResult(chi2, dof, p, f_stat, f_dof, f_p)


def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """Nemenyi's ``q_alpha`` for k configurations: the studentized range's upper-alpha quantile with infinite
    degrees of freedom, over sqrt(2) (Demšar 2006, Table 5a: 2.569 for k = 4 at alpha = 0.05)."""
    from scipy import stats

    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of average ranks, ``q_alpha * sqrt(k (k + 1) / (6 n))``."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n))


def rank_groups(average_ranks: Sequence[float], cd: float) -> list[list[int]]:
    """Indices (into ``average_ranks``, sorted ascending) of the maximal runs of two or more whose ranks differ by
    less than ``cd``: the configurations a critical-difference diagram joins with one bar."""
    order = sorted(range(len(average_ranks)), key=lambda i: average_ranks[i])
    groups: list[list[int]] = []
    reach = -1
    for start, first in enumerate(order):
        end = start
        while end + 1 < len(order) and average_ranks[order[end + 1]] - average_ranks[first] < cd:
            end += 1
        if end > start and end > reach:
            groups.append(order[start:end + 1])
            reach = end
    return groups


# --------------------------------------------------------------------------------------------------- ranking

def is_cost(metric: Metric) -> bool:
    """A metric a performance profile can compare: a ratio kind (times, NFE, memory) where lowest is best."""
    return metric.comparison == RATIO and metric.goal == LOWEST


def configuration_names(cells: pd.DataFrame) -> pd.Series:
    """A label per row naming its configuration across datasets: the grid axes that vary, short form, the dataset
    left out (:func:`cnfbench.labels.row_labels`), then any other configuration axis that varies
    (``iterations=100``, ``trained_with=…``); the run folder is not a configuration axis."""
    labels = row_labels(cells, leave_out=(DATASET.key,))
    grid_keys = {row.key for row in GRID_AXES}
    others = [axis for axis in varying_axes(cells, [DATASET.key, RUN]) if axis not in grid_keys]
    for axis in others:
        labels = labels + SEPARATOR + axis + "=" + axis_labels(cells, axis).astype(str)
    return labels


def rank(cells: pd.DataFrame, metric: str, alpha: float = ALPHA) -> Ranking:
    """Rank the configurations of ``cells`` by ``metric`` over its datasets; see the module docstring.

    :class:`ReportError` (one line) for an unknown metric, one without a goal, fewer than :data:`MIN_DATASETS`
    datasets, or fewer than :data:`MIN_CONFIGURATIONS` configurations found on every dataset.
    """
    rankable = [name for name in available_metrics(cells) if metric_info(name, cells).goal is not None]
    if metric not in rankable:
        why = ("has no better direction to rank by" if metric in available_metrics(cells)
               else "is not a metric of these runs")
        raise ReportError(f"--rank {metric!r} {why}; metrics with a goal: {', '.join(rankable)}"
                          f"{did_you_mean(metric, rankable)}")
    info = metric_info(metric, cells)
    notes: list[str] = []
    if "cell_id" in cells and cells["cell_id"].duplicated().any():
        done_first = cells.assign(_done=cells["status"] != "done").sort_values("_done", kind="stable")
        repeated = int(cells["cell_id"].duplicated().sum())
        cells = done_first.drop_duplicates("cell_id").drop(columns="_done").sort_index()
        notes.append(f"{plural(repeated, 'cell')} found in more than one run counted once (a finished row first)")
    frame = cells.reset_index(drop=True)
    datasets_col = axis_labels(frame, DATASET.key).astype(str)
    configs_col = configuration_names(frame)
    datasets = list(dict.fromkeys(datasets_col))
    if len(datasets) < MIN_DATASETS:
        raise ReportError(f"a ranking needs at least {MIN_DATASETS} datasets; "
                          f"found {plural(len(datasets), 'dataset')} ({', '.join(datasets)})")
    present = {(c, d) for c, d in zip(configs_col, datasets_col, strict=True)}
    all_configs = list(dict.fromkeys(configs_col))
    configs = [c for c in all_configs if all((c, d) in present for d in datasets)]
    for left_out in (c for c in all_configs if c not in configs):
        missing = [d for d in datasets if (left_out, d) not in present]
        notes.append(f"{left_out} left out: no cell on {', '.join(missing)} (Friedman's test needs every "
                     "configuration on every dataset)")
    if len(configs) < MIN_CONFIGURATIONS:
        raise ReportError(f"a ranking needs at least {MIN_CONFIGURATIONS} configurations found on every dataset; "
                          f"found {plural(len(configs), 'configuration')} of {len(all_configs)} on all "
                          f"{len(datasets)} datasets ({', '.join(datasets)})")
    status = frame["status"] if "status" in frame else pd.Series("done", index=frame.index)
    values = pd.to_numeric(frame[metric], errors="coerce")
    is_flagged = flagged(frame)
    entries: dict[tuple[str, str], RankEntry] = {}
    badness = np.empty((len(datasets), len(configs)))
    for j, config in enumerate(configs):
        for i, dataset in enumerate(datasets):
            rows = (configs_col == config) & (datasets_col == dataset)
            done = rows & (status == "done")
            finite = values[done][np.isfinite(values[done])]
            value = float(finite.mean()) if len(finite) else math.nan
            entry = RankEntry(value, math.nan, len(finite), int(rows.sum()), bool(is_flagged[done].any()))
            entries[(config, dataset)] = entry
            badness[i, j] = math.inf if entry.last else info.badness(value)
    from scipy import stats

    ranks = stats.rankdata(badness, axis=1)  # inf ties with inf: the last entries share the last ranks
    for j, config in enumerate(configs):
        for i, dataset in enumerate(datasets):
            old = entries[(config, dataset)]
            entries[(config, dataset)] = RankEntry(old.value, float(ranks[i, j]), old.seeds, old.cells, old.flagged)
    average = {config: float(ranks[:, j].mean()) for j, config in enumerate(configs)}
    order = sorted(configs, key=lambda c: (average[c], configs.index(c)))
    notes.extend(_entry_notes(entries, order, datasets, info.scale, info.decimals))
    k, n = len(configs), len(datasets)
    cd = critical_difference(k, n, alpha)
    groups = [[order[i] for i in group] for group in rank_groups([average[c] for c in order], cd)]
    profile, why = performance_profile(info, entries, order, datasets)
    if why:
        notes.append(why)
    sharing = sharing_note(frame[status == "done"], [metric] if info.machine else [])
    if sharing:
        notes.append(sharing)
    return Ranking(info, datasets, order, entries, average, friedman_test(ranks), alpha, nemenyi_q(k, alpha), cd,
                   groups, profile, notes)


def _entry_notes(entries: dict[tuple[str, str], RankEntry], configs: Sequence[str], datasets: Sequence[str],
                 scale: float, decimals: int) -> list[str]:
    notes = []
    marked = [f"{c} on {d}" for c in configs for d in datasets if entries[(c, d)].flagged]
    if marked:
        notes.append(f"ranked last, flagged (the solver's density is not normalized): {'; '.join(marked)}")
    failed = [f"{c} on {d}" for c in configs for d in datasets
              if not entries[(c, d)].flagged and not math.isfinite(entries[(c, d)].value)]
    if failed:
        notes.append(f"ranked last, no finished seed with a value: {'; '.join(failed)}")
    shown_equal = []
    for d in datasets:
        shown: dict[str, list[str]] = {}
        for c in configs:
            if not entries[(c, d)].last:
                shown.setdefault(f"{entries[(c, d)].value * scale:.{decimals}f}", []).append(c)
        shown_equal += [f"{' and '.join(names)} on {d}" for names in shown.values()
                        if len({entries[(c, d)].rank for c in names}) > 1]
    if shown_equal:
        notes.append(f"shown equal but ranked apart by their unrounded values: {'; '.join(shown_equal)}")
    fewer = [f"{c} on {d} ({e.seeds} of {e.cells})" for c in configs for d in datasets
             if (e := entries[(c, d)]).seeds and e.seeds < e.cells]
    if fewer:
        notes.append(f"entries averaging fewer seeds than their cells (failed or without a value): {'; '.join(fewer)}")
    return notes


def performance_profile(metric: Metric, entries: dict[tuple[str, str], RankEntry], configs: Sequence[str],
                        datasets: Sequence[str]) -> tuple[Profile | None, str]:
    """The Dolan–Moré profile of a cost metric, or ``None`` with a note saying why there is none."""
    if not is_cost(metric):
        return None, (f"no performance profile for {metric.name}: a profile divides by the best entry, which needs a "
                      "cost metric (time, NFE, memory; lowest best), e.g. --rank train_time_s")
    ratios: dict[tuple[str, str], float] = {}
    for dataset in datasets:
        valid = [entries[(c, dataset)].value for c in configs if not entries[(c, dataset)].last]
        if any(value <= 0 for value in valid):
            return None, f"no performance profile for {metric.name}: an entry on {dataset} is not positive"
        best = min(valid, default=math.nan)
        for config in configs:
            entry = entries[(config, dataset)]
            ratios[(config, dataset)] = math.inf if entry.last else entry.value / best
    return Profile(ratios), ""


# --------------------------------------------------------------------------------------------------- text

def entry_text(ranking: Ranking, entry: RankEntry) -> str:
    """``2.345 (1.5)``: the seed mean in the metric's display unit and the rank; ``(!)`` on a flagged entry,
    ``failed`` where no seed finished."""
    metric = ranking.metric
    if not math.isfinite(entry.value):
        shown = "failed"
    else:
        shown = f"{entry.value * metric.scale:.{metric.decimals}f}" + (" (!)" if entry.flagged else "")
    return f"{shown} ({format_value(entry.rank) if float(entry.rank).is_integer() else f'{entry.rank:.1f}'})"


def friedman_text(ranking: Ranking) -> str:
    """One line: Friedman's statistic, its p-value and what it decides at alpha, with Iman–Davenport's F."""
    result = ranking.friedman
    k, n = len(ranking.configurations), len(ranking.datasets)
    verdict = (f"the configurations differ (p < {ranking.alpha:g})" if ranking.significant
               else f"no significant difference (p >= {ranking.alpha:g})")
    f_text = "inf" if math.isinf(result.f_statistic) else f"{result.f_statistic:.3f}"
    return (f"Friedman's test over {plural(n, 'dataset')} and {plural(k, 'configuration')}: chi2 = "
            f"{result.statistic:.3f} ({result.dof} d.o.f.), {p_text(result.p, ranking.alpha)}: {verdict}; "
            "Iman-Davenport F = "
            f"{f_text} ({result.f_dof[0]}, {result.f_dof[1]} d.o.f.), {p_text(result.f_p, ranking.alpha)}")


def nemenyi_text(ranking: Ranking) -> str:
    """One line: the critical difference, and which configurations it cannot tell apart."""
    k, n = len(ranking.configurations), len(ranking.datasets)
    groups = "; ".join("{" + ", ".join(group) + "}" for group in ranking.groups) or "none"
    caveat = "" if ranking.significant else " (Friedman's test did not reject, so no pair is shown to differ)"
    return (f"Nemenyi's critical difference at alpha = {ranking.alpha:g}: CD = {ranking.critical_difference:.3f} "
            f"ranks (q = {ranking.q_alpha:.3f}, k = {k}, N = {n}); average ranks closer than CD are not "
            f"significantly different: {groups}{caveat}")


def to_text(ranking: Ranking, width: int | None = None) -> str:
    """The ranking for the terminal: a caption, the table of entries and average ranks (best first, folded to
    ``width`` columns), the tests, the performance profile of a cost metric, and the notes."""
    metric = ranking.metric
    goal = GOAL_TEXT.get(metric.goal or "", "")
    caption = (f"Ranks by {metric.header} ({goal} is best) over {plural(len(ranking.datasets), 'dataset')}: each "
               "entry is the mean over the configuration's finished seeds on the dataset, its rank in parentheses "
               "(1 = best; ties share the average rank; flagged (!) or failed entries rank last)")
    headers = ["configuration", "average rank", *ranking.datasets]
    body = [[config, f"{ranking.average_ranks[config]:.2f}",
             *(entry_text(ranking, ranking.entries[(config, d)]) for d in ranking.datasets)]
            for config in ranking.configurations]
    parts = [wrap_text(terminal_escape(caption), width),
             fold_table([terminal_escape(h) for h in headers],
                        [[terminal_escape(v) for v in row] for row in body], 1, width),
             wrap_text(friedman_text(ranking), width),
             wrap_text(terminal_escape(nemenyi_text(ranking)), width)]
    if ranking.profile is not None:
        parts.append(wrap_text(terminal_escape(
            f"Performance profile of {metric.header}: the fraction of the datasets on which a configuration is "
            "within tau times the best entry (tau = 1: best on it)"), width))
        taus = [f"tau = {tau:g}" for tau in PROFILE_TAUS]
        rows = [[config, *(f"{ranking.profile.fraction(config, tau, ranking.datasets):.2f}" for tau in PROFILE_TAUS)]
                for config in ranking.configurations]
        parts.append(fold_table(["configuration", *taus], [[terminal_escape(v) for v in row] for row in rows], 1,
                                width))
    parts.extend(wrap_text(f"note: {terminal_escape(note)}", width) for note in ranking.notes)
    return "\n".join(parts)
