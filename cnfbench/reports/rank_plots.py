"""Figures of a ranking across datasets: the critical-difference diagram and the Dolan–Moré performance profile.

Both are written like the other plots (:mod:`cnfbench.reports.plots`): PNG, PDF and SVG, 8 pt text, exactly one
column (3.4 in) or the full text width (7 in) wide, every text folded at token boundaries to the width the
renderer measures; into the plots folder of ``cnfbench report --rank METRIC --plots``:

- ``rank_cd_<metric>`` — Demšar's critical-difference diagram: the average-rank axis (1 = best, at the left), one
  line from each configuration's average rank to its label (the better half on the left, the worse on the right),
  a bar of Nemenyi's critical difference above the axis and a thick bar under it joining each group of
  configurations whose average ranks differ by less (:attr:`~cnfbench.reports.ranking.Ranking.groups`); the
  heading names the metric with its unit, the datasets and Friedman's p. One column wide where the labels fit a
  third of it, else the full width.
- ``rank_profile_<metric>`` — for a cost metric, the performance profile: per configuration the fraction of the
  datasets (0–1) on which it is within tau times the best entry, a step in tau (a ratio, log scale), one column
  wide, the legend below.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnfbench.messages import plural
from cnfbench.reports.escape import mathtext_escape
from cnfbench.reports.metrics import GOAL_TEXT
from cnfbench.reports.plots import (
    COLUMN_WIDTH,
    FULL_WIDTH,
    PlotResult,
    config_colors,
    file_label,
    fit,
    fold,
    legend_below,
    line_count,
    new_figure,
    paper_style,
    save_figure,
    text_width,
)
from cnfbench.reports.ranking import Ranking
from cnfbench.reports.statistics import p_text

LABEL_SIZE = 7.0
"""Points: the configurations' labels and the rank axis' numbers."""
_MARGIN = 0.08
"""Inches between the page's edge and any text."""
_GAP = 0.06
"""Inches between a label and the end of its line."""


def _line_height(size: float) -> float:
    """Inches a line of text at ``size`` points takes (matplotlib's line spacing, 1.2)."""
    return 1.2 * size / 72


def _tick_step(k: int, inches_per_rank: float, figure: Figure) -> int:
    """The smallest step of 1, 2, 5, 10, … between numbered ranks whose labels keep apart."""
    widest = text_width(figure, str(k), LABEL_SIZE) + 0.04
    for step in (m * 10**e for e in itertools.count() for m in (1, 2, 5)):
        if step * inches_per_rank >= widest or step >= k:
            return step
    raise AssertionError("unreachable")


@paper_style
def cd_figure(ranking: Ranking, title: str = "") -> Figure:
    """The critical-difference diagram of ``ranking`` (see the module docstring)."""
    configs = ranking.configurations
    k, n = len(configs), len(ranking.datasets)
    labels = [f"{config} ({ranking.average_ranks[config]:.2f})" for config in configs]
    probe = Figure(figsize=(FULL_WIDTH, 1.0))
    FigureCanvasAgg(probe)
    widest = max(text_width(probe, mathtext_escape(label), LABEL_SIZE) for label in labels)
    width = COLUMN_WIDTH if widest <= COLUMN_WIDTH / 3 - _MARGIN - _GAP and k <= 8 else FULL_WIDTH
    side = min(widest, width / 3) + _MARGIN + _GAP  # the room of one side's labels, to the axis' end
    figure = Figure(figsize=(width, 2.0))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_axis_off()
    start, end = side + 0.1, width - side - 0.1

    def x_of(rank: float) -> float:
        return start + (rank - 1) * (end - start) / max(k - 1, 1)

    y = _MARGIN
    heading = fold(figure, title, width - 2 * _MARGIN, 8) if title else ""
    goal = GOAL_TEXT.get(ranking.metric.goal or "", "")
    what = (f"average rank over {plural(n, 'dataset')} (a rank, no unit; 1 = best: {goal})\n"
            f"Friedman {p_text(ranking.friedman.p, ranking.alpha)}; Nemenyi CD at alpha = {ranking.alpha:g}")
    subtitle, sub_size = fit(figure, what, width - 2 * _MARGIN, LABEL_SIZE)
    texts: list[tuple[float, float, str, float, str]] = []  # x, y (top), text, size, alignment
    if heading:
        texts.append((width / 2, y, heading, 8.0, "center"))
        y += line_count(heading) * _line_height(8.0) + 0.03
    texts.append((width / 2, y, subtitle, sub_size, "center"))
    y += line_count(subtitle) * _line_height(sub_size) + 0.1
    # the critical difference: a bar from rank 1, its length in ranks, named above it
    cd = ranking.critical_difference
    cd_text = f"CD = {cd:.2f}"
    texts.append((start, y, cd_text, LABEL_SIZE, "left"))
    y += _line_height(LABEL_SIZE) + 0.04
    cd_end = min(x_of(1 + cd), width - _MARGIN)
    axes.plot([start, cd_end], [y, y], color="black", linewidth=1.0)
    for x in (start, cd_end):
        axes.plot([x, x], [y - 0.03, y + 0.03], color="black", linewidth=1.0)
    y += 0.08
    # the rank axis: numbers above, ticks down from it
    step = _tick_step(k, (end - start) / max(k - 1, 1), figure)
    ticks = [r for r in range(1, k + 1) if (r - 1) % step == 0]
    for r in ticks:
        texts.append((x_of(r), y, str(r), LABEL_SIZE, "center"))
    y += _line_height(LABEL_SIZE) + 0.03
    axis_y = y
    axes.plot([start, end], [axis_y, axis_y], color="black", linewidth=1.0)
    for r in range(1, k + 1):
        axes.plot([x_of(r), x_of(r)], [axis_y, axis_y + (0.05 if r in ticks else 0.03)], color="black",
                  linewidth=0.8)
    y = axis_y + 0.1
    for group in ranking.groups:
        low, high = (ranking.average_ranks[group[0]], ranking.average_ranks[group[-1]])
        axes.plot([x_of(low) - 0.03, x_of(high) + 0.03], [y, y], color="black", linewidth=2.5,
                  solid_capstyle="butt")
        y += 0.07
    y += 0.08
    half = math.ceil(k / 2)
    bottoms = []
    # the better half on the left, best on top; the worse half on the right, worst on top: no line crosses another
    for side_configs, left in ((list(range(half)), True), (list(range(k - 1, half - 1, -1)), False)):
        row_y = y
        for index in side_configs:
            text, size = fit(figure, labels[index], side - _MARGIN - _GAP, LABEL_SIZE)
            line_y = row_y + _line_height(size) / 2  # level with the label's first line
            x_rank = x_of(ranking.average_ranks[configs[index]])
            edge = start if left else end
            axes.plot([x_rank, x_rank, edge], [axis_y, line_y, line_y], color="black", linewidth=0.7)
            texts.append((edge - _GAP if left else edge + _GAP, row_y, text, size, "right" if left else "left"))
            row_y += line_count(text) * _line_height(size) + 0.04
        bottoms.append(row_y)
    height_needed = max(bottoms) + _MARGIN
    figure.set_figheight(height_needed)
    axes.set_xlim(0, width)
    axes.set_ylim(height_needed, 0)
    for x, top, text, size, align in texts:
        axes.text(x, top, text, fontsize=size, ha=align, va="top", multialignment=align)
    return figure


@paper_style
def profile_figure(ranking: Ranking, title: str = "") -> Figure | None:
    """The performance profile of ``ranking``'s cost metric, one column wide; ``None`` without a profile."""
    profile = ranking.profile
    if profile is None:
        return None
    datasets, configs = ranking.datasets, ranking.configurations
    finite = [r for r in profile.ratios.values() if math.isfinite(r)]
    top = max(2.0, max(finite, default=1.0) * 1.25)
    height = 2.6
    figure = new_figure(COLUMN_WIDTH, height)
    axes = figure.add_subplot()
    colors = config_colors(configs)
    entries: list[tuple[Any, str]] = []
    for config in configs:
        ratios = sorted(profile.ratios[(config, d)] for d in datasets)
        steps = [1.0, *(r for r in ratios if math.isfinite(r) and r > 1.0), top]
        fractions = [profile.fraction(config, tau, datasets) for tau in steps]
        (line,) = axes.step(steps, fractions, where="post", color=colors[config])
        entries.append((line, config))
    axes.set_xscale("log", base=2)
    from matplotlib.ticker import FuncFormatter

    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_xlim(1.0, top)
    axes.set_ylim(-0.03, 1.03)
    axes.set_xlabel("tau: ratio to the dataset's best entry [×, log scale]")
    axes.set_ylabel("fraction of datasets within tau")
    heading = fold(figure, title, COLUMN_WIDTH - 0.1, 8) if title else ""
    what = fold(figure, f"{plural(len(datasets), 'dataset')}; flagged or failed entries never count",
                COLUMN_WIDTH - 0.1, 8)
    figure.suptitle(f"{heading}\n{what}" if heading else what, fontsize=8)
    axes.grid(True, alpha=0.3)
    extra = 0.12 * (line_count(heading) + line_count(what) - 2)
    figure.set_figheight(height + extra + legend_below(figure, entries, COLUMN_WIDTH))
    return figure


def write_rank_plots(rankings: Sequence[Ranking], into: str | Path) -> PlotResult:
    """Write each ranking's critical-difference diagram (and profile, for a cost metric) into ``into``."""
    out = Path(into)
    result = PlotResult()
    for ranking in rankings:
        name = file_label(ranking.metric.name)
        what = f"{ranking.metric.name}: critical-difference diagram"
        result.files.append((what, save_figure(cd_figure(ranking, f"Ranks by {ranking.metric.header}"),
                                         out / f"rank_cd_{name}.png")))
        figure = profile_figure(ranking, f"Performance profile of {ranking.metric.header}")
        if figure is not None:
            result.files.append((f"{ranking.metric.name}: performance profile",
                                 save_figure(figure, out / f"rank_profile_{name}.png")))
    return result

