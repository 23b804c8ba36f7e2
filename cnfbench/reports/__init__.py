"""Reports from finished runs: aggregate seeds, pivot metrics, render tables, compare and merge runs, plot.

The pipeline a notebook user and ``cnfbench report`` share::

    cells = cnfbench.load_results("results/grid1")          # one row per cell
    table = cnfbench.pivot(cells, rows=["dataset"], cols=["solver", "trace"], metrics=["nll_ref"])
    print(cnfbench.to_markdown(table))                      # or to_latex / to_csv / to_json / to_text

One module per job: :mod:`~cnfbench.reports.metrics` (the column catalogue as
display information, and request checks), :mod:`~cnfbench.reports.aggregate`
(combine runs, label axes, aggregate seeds), :mod:`~cnfbench.reports.pivot`
(pivot tables, best entries, notes), :mod:`~cnfbench.reports.render` (text,
Markdown, LaTeX, CSV, JSON), :mod:`~cnfbench.reports.statistics` (Welch's,
paired and equivalence t-tests), :mod:`~cnfbench.reports.compare` (two runs, a verdict per
configuration), :mod:`~cnfbench.reports.merge` (run folders into one),
:mod:`~cnfbench.reports.plots` (PNG plots; imports matplotlib, so it is loaded
on first use) and :mod:`~cnfbench.reports.html` (one self-contained page).
The run folder itself is read by :mod:`cnfbench.run_folder`.
"""

from __future__ import annotations

from typing import Any

from cnfbench.reports.aggregate import aggregate, axis_labels, combine, combine_curves, format_value, varying_axes
from cnfbench.reports.compare import (
    Comparison,
    MetricChange,
    RowComparison,
    Threshold,
    compare_runs,
    metric_change,
    parse_thresholds,
)
from cnfbench.reports.html import REPORT_HTML, render_html, write_html_report
from cnfbench.reports.merge import MergeResult, merge_runs
from cnfbench.reports.metrics import (
    AXES,
    DEFAULT_METRICS,
    METRIC_GOALS,
    Metric,
    ReportError,
    available_metrics,
    check_axes,
    check_metrics,
    declared_columns,
    default_metrics,
    metric_info,
    split_list,
)
from cnfbench.reports.pivot import Entry, PivotTable, failure_notes, pivot
from cnfbench.reports.render import (
    entry_text,
    latex_escape,
    text_table,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
    to_text,
)
from cnfbench.reports.statistics import TestResult, WelchResult, paired_t_test, t_two_sided_p, welch_t_test

_LAZY = {"write_plots": "cnfbench.reports.plots", "PlotResult": "cnfbench.reports.plots"}

__all__ = [
    "AXES", "DEFAULT_METRICS", "METRIC_GOALS", "REPORT_HTML", "Comparison", "Entry", "MergeResult", "Metric",
    "MetricChange", "PivotTable", "ReportError", "RowComparison", "TestResult", "Threshold", "WelchResult",
    "aggregate", "available_metrics", "axis_labels", "check_axes", "check_metrics", "combine", "combine_curves",
    "compare_runs", "declared_columns", "default_metrics", "entry_text", "failure_notes", "format_value",
    "latex_escape", "merge_runs", "metric_change", "metric_info", "paired_t_test", "parse_thresholds", "pivot",
    "render_html", "split_list", "t_two_sided_p", "text_table", "to_csv", "to_json", "to_latex", "to_markdown",
    "to_text", "varying_axes", "welch_t_test", "write_html_report", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cnfbench.reports' has no attribute {name!r}")
