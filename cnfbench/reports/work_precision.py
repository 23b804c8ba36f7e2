"""Work-precision: a solver's error against what it cost, over a sweep of its tolerances or step counts.

``cnfbench report RUN... --work-precision [--wp-metric METRIC]`` draws the diagram SciML's DiffEq benchmarks
compare ODE solvers by, from the rows of a sweep such as
``cnfbench evaluate RUN --solver "dopri5[rtol=1e-3..1e-7:5,atol=rtol],euler[steps=2..64:x2]"``:

- **Error.** By default ``logp_error_mean``: the mean over the test samples of ``|log p_solver(x) - log p_ref(x)|``
  (nats), the row's solver against the reference solve on the same samples; ``logp_error_max`` its maximum. A
  sample metric (``energy_distance``, ``sliced_w2``: model samples drawn with the row's solver against the test
  split) may be chosen instead; it is a distance to the data, so it levels off at the model's own error, not at 0.
- **Cost.** Each error is set against the cost of the solve it came from (:data:`WP_METRICS`): the NFE of the test
  pass with the row's solver (``nfe_eval``, all chunks) and its wall-clock (``eval_time_s``) for a log-density
  error; ``nfe_sample`` and ``sample_time_s`` (the solve of the samples alone) for a sample metric.
- **Lines.** Per dataset, one line per solver *family* (the solver's name: ``dopri5``, ``euler``, …) and per
  configuration of everything else (field, objective, trace, budget, protocol, any that vary); the points of a line
  are its solver specs, ordered by cost. A model that ``cnfbench evaluate`` re-solved is one model, whichever spec
  evaluates it: its rows share the line of their family, the training row among them; where the runs hold models
  trained with different solvers (``trained_with``), each such model keeps its own line (``trained with …``). Seeds
  are aggregated per point: the mean of the finished seeds' values, their minimum to maximum drawn as a band (error)
  and whiskers (cost). The run folder is not a configuration axis; a cell found in two runs counts once.
- **Slopes.** Each line's least-squares slope of log error on log cost: about ``-p`` for a fixed-step method of
  order ``p`` in its asymptotic range (error ∝ h^p ∝ NFE^-p).
- **Flagged rows** (``valid`` false: the solver's density is not normalized) are kept, since the error this view
  measures is the very reason for the flag, and marked: ``(!)`` in the table, open markers in the figure.

The figure (``work_precision_<metric>_<dataset>``, PNG/PDF/SVG, the full width of 7 in) has two panels, error
against NFE and against seconds, log-log, the legend below; it is drawn like :mod:`~cnfbench.reports.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cnfbench.families import GRID_AXES
from cnfbench.labels import SEPARATOR, row_specs, short_specs, split_spec
from cnfbench.messages import did_you_mean, plural
from cnfbench.reports.aggregate import axis_labels, flagged, format_value, varying_axes
from cnfbench.reports.escape import terminal_escape
from cnfbench.reports.metrics import DATASET, RUN, Metric, ReportError, metric_info
from cnfbench.reports.sharing import sharing_note
from cnfbench.summary import compact_labels
from cnfbench.text_tables import fold_table, wrap_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnfbench.reports.plots import PlotResult

WP_METRICS: dict[str, tuple[str, str]] = {
    "logp_error_mean": ("nfe_eval", "eval_time_s"),
    "logp_error_max": ("nfe_eval", "eval_time_s"),
    "energy_distance": ("nfe_sample", "sample_time_s"),
    "sliced_w2": ("nfe_sample", "sample_time_s"),
}
"""The errors a work-precision diagram can plot, each with the NFE and seconds columns of the solve it came from."""
DEFAULT_METRIC = "logp_error_mean"
SAMPLE_METRICS = ("energy_distance", "sliced_w2")
"""Distances to the test data (not to a reference solve): they level off at the model's own error."""
MIN_POINTS = 2
"""A line needs this many points (solver specs with a finished seed) to show how error falls with cost."""

_SOLVER = "solver"
_TRAINED_WITH = "trained_with"


@dataclass(frozen=True)
class Point:
    """One solver spec of a line: the finished seeds' mean and range of error and cost (stored units)."""

    spec: str  # the full solver spec
    label: str  # the spec with only the parameters that vary along its line
    error: float
    error_range: tuple[float, float]
    nfe: float
    nfe_range: tuple[float, float]
    seconds: float
    seconds_range: tuple[float, float]
    seeds: int  # finished seeds with a finite error
    cells: int  # cells of the point, failed ones included
    flagged: bool  # a finished seed has valid = false

    def drawable(self, cost: str) -> bool:
        """Whether the point has a place on log-log axes of error against ``cost`` (``nfe`` or ``seconds``)."""
        x = self.nfe if cost == "nfe" else self.seconds
        return all(math.isfinite(v) and v > 0 for v in (self.error, x))


@dataclass
class Line:
    """One solver family in one configuration on one dataset: its points, by increasing cost."""

    dataset: str
    family: str
    configuration: str  # the other axes that vary, short form ("" when none does)
    points: list[Point]

    @property
    def label(self) -> str:
        return SEPARATOR.join(part for part in (self.family, self.configuration) if part)

    def slope(self, cost: str) -> float:
        """The least-squares slope of log error on log ``cost`` over the drawable points (nan below two costs)."""
        drawn = [p for p in self.points if p.drawable(cost)]
        return loglog_slope([p.nfe if cost == "nfe" else p.seconds for p in drawn], [p.error for p in drawn])


@dataclass
class WorkPrecision:
    """A work-precision view of ``metric`` against the ``nfe`` and ``seconds`` columns; see the module docstring."""

    metric: Metric
    nfe: Metric
    seconds: Metric
    datasets: list[str]
    lines: list[Line]
    notes: list[str] = field(default_factory=list)
    references: dict[str, str] = field(default_factory=dict)  # dataset -> its one reference solve, for an error
    # against it ("" where the rows differ in it: their lines are then split by it)

    def lines_of(self, dataset: str) -> list[Line]:
        return [line for line in self.lines if line.dataset == dataset]


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """The least-squares slope of ``log y`` on ``log x`` (positive values only); nan with fewer than two distinct x."""
    pairs = [(math.log(a), math.log(b)) for a, b in zip(x, y, strict=True)
             if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0]
    if len({a for a, _ in pairs}) < 2:
        return math.nan
    lx, ly = np.array(pairs).T
    return float(np.polyfit(lx, ly, 1)[0])


# --------------------------------------------------------------------------------------------------- grouping

def _model_ids(frame: pd.DataFrame) -> pd.Series:
    """Which trained model each row evaluates: ``model_key``, else ``trained_in``, else its own ``cell_id``."""
    ids = pd.Series([f"cell:{c}" for c in frame["cell_id"].astype(str)], index=frame.index, dtype=object) \
        if "cell_id" in frame else pd.Series([f"row:{i}" for i in frame.index], index=frame.index, dtype=object)
    for column in ("trained_in", "model_key"):  # model_key wins where both are recorded
        if column in frame:
            known = frame[column].map(lambda v: isinstance(v, str) and bool(v))
            ids = ids.where(~known, column + ":" + frame[column].astype(str))
    return ids


def _training_parts(frame: pd.DataFrame) -> pd.Series:
    """``trained with solver=…`` for each row whose model was trained with another solver than some of its rows
    evaluate it with (``trained_with``; the model's own training row, which records none, takes its model's), where
    the runs hold models trained with more than one such setting; ``""`` otherwise."""
    if _TRAINED_WITH not in frame:
        return pd.Series("", index=frame.index, dtype=object)
    stated = frame[_TRAINED_WITH].map(lambda v: v if isinstance(v, str) else "")
    models = _model_ids(frame)
    by_model = {model: next((s for s in stated[models == model] if s), "") for model in models.unique()}
    training = models.map(by_model).astype(object)
    if training.nunique() <= 1:
        return pd.Series("", index=frame.index, dtype=object)
    shown = compact_labels(training.replace("", "—"))
    return shown.map(lambda s: f"trained with {s}").astype(object)


def _configurations(frame: pd.DataFrame) -> pd.Series:
    """The configuration of each row apart from its dataset and solver: the grid axes that vary in short form,
    then other configuration axes that vary as ``axis=value``, then the training part (:func:`_training_parts`)."""
    keys = [row.key for row in GRID_AXES if row.key not in (DATASET.key, _SOLVER)]
    specs = {key: row_specs(frame, key) for key in keys}
    varying = [key for key in keys if len(set(specs[key])) > 1]
    short = {key: short_specs(specs[key]) for key in varying}
    others = [axis for axis in varying_axes(frame, [row.key for row in GRID_AXES] + [RUN, _TRAINED_WITH])]
    other_labels = {axis: axis_labels(frame, axis).astype(str).tolist() for axis in others}
    training = _training_parts(frame).tolist()
    labels = []
    for position in range(len(frame)):
        parts = [short[key][position] for key in varying]
        parts += [f"{axis}={other_labels[axis][position]}" for axis in others]
        parts += [training[position]] if training[position] else []
        labels.append(SEPARATOR.join(parts))
    return pd.Series(labels, index=frame.index, dtype=object)


def _once(cells: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """``cells`` with each ``cell_id`` once (a finished row first), noted when runs repeated one."""
    if "cell_id" not in cells or not cells["cell_id"].duplicated().any():
        return cells.reset_index(drop=True)
    repeated = int(cells["cell_id"].duplicated().sum())
    ordered = cells.assign(_done=cells["status"] != "done").sort_values("_done", kind="stable")
    notes.append(f"{plural(repeated, 'cell')} found in more than one run counted once (a finished row first)")
    return ordered.drop_duplicates("cell_id").drop(columns="_done").sort_index().reset_index(drop=True)


def check_metric(cells: pd.DataFrame, metric: str) -> str:
    """``metric`` unchanged, or :class:`ReportError` (one line) when it is no work-precision error or these runs
    hold no value of it."""
    if metric not in WP_METRICS:
        raise ReportError(f"--wp-metric {metric!r} is not an error a work-precision diagram plots; valid: "
                          f"{', '.join(WP_METRICS)}{did_you_mean(metric, list(WP_METRICS))}")
    if metric not in cells or not pd.to_numeric(cells[metric], errors="coerce").notna().any():
        why = (" (rows written before cnfbench recorded it: evaluate the models again, e.g. cnfbench evaluate RUN "
               "--solver 'euler[steps=2..64:x2]')" if metric.startswith("logp_error") else
               f" (a metric the default set leaves out: cnfbench evaluate RUN --metrics {metric} adds it)")
        raise ReportError(f"--wp-metric {metric}: these runs hold no value of it{why}")
    return metric


def work_precision(cells: pd.DataFrame, metric: str = DEFAULT_METRIC) -> WorkPrecision:
    """The work-precision view of ``metric`` over ``cells``; see the module docstring.

    :class:`ReportError` (one line) for a metric that is not in :data:`WP_METRICS` or has no value here, and when
    no line has :data:`MIN_POINTS` points.
    """
    check_metric(cells, metric)
    nfe_column, seconds_column = WP_METRICS[metric]
    notes: list[str] = []
    frame = _once(cells, notes)
    status = frame["status"] if "status" in frame else pd.Series("done", index=frame.index)
    datasets_col = axis_labels(frame, DATASET.key).astype(str)
    specs = pd.Series(row_specs(frame, _SOLVER), index=frame.index, dtype=object)
    families = specs.map(lambda spec: split_spec(spec)[0])
    configurations = _configurations(frame)
    values = {name: pd.to_numeric(frame[name], errors="coerce") if name in frame
              else pd.Series(math.nan, index=frame.index) for name in (metric, nfe_column, seconds_column)}
    is_flagged = flagged(frame)
    keys = pd.Series(list(zip(datasets_col, families, configurations, strict=True)), index=frame.index)
    lines: list[Line] = []
    failed: list[str] = []
    for key in dict.fromkeys(keys):
        dataset, family, configuration = key
        rows = keys.map(lambda k, key=key: k == key)
        line_specs = list(dict.fromkeys(specs[rows]))
        labels = dict(zip(line_specs, short_specs(line_specs), strict=True))
        points = []
        for spec in line_specs:
            at = rows & (specs == spec)
            done = at & (status == "done") & values[metric].map(math.isfinite)
            name = _where(labels[spec], configuration, dataset)
            if not done.any():
                ended = ", ".join(f"{n} {s}" for s, n in status[at].value_counts().items())
                failed.append(f"{name} ({ended})")
                continue
            points.append(Point(spec, labels[spec], *_mean_range(values[metric][done]),
                                *_mean_range(values[nfe_column][done]), *_mean_range(values[seconds_column][done]),
                                int(done.sum()), int(at.sum()), bool(is_flagged[done].any())))
        if points:
            points.sort(key=lambda p: (_sort_key(p.nfe), _sort_key(p.seconds), p.spec))
            lines.append(Line(dataset, family, configuration, points))
    datasets = list(dict.fromkeys(line.dataset for line in lines))
    if not any(len(line.points) >= MIN_POINTS for line in lines):
        found = "; ".join(f"{_where(line.label, '', line.dataset)}: {plural(len(line.points), 'point')}"
                          for line in lines) or "no finished row"
        raise ReportError(f"a work-precision diagram needs a solver family with at least {MIN_POINTS} points (solver "
                          f"specs with a finished seed) on a dataset; found {found}; sweep one, e.g. cnfbench "
                          "evaluate RUN --solver 'dopri5[rtol=1e-3..1e-7:5,atol=rtol],euler[steps=2..64:x2]'")
    notes.extend(_notes(lines, failed, metric))
    done_rows = frame[status == "done"]
    sharing = sharing_note(done_rows, [seconds_column])
    if sharing:
        notes.append(sharing)
    references = _references(frame[status == "done"], datasets) if metric not in SAMPLE_METRICS else {}
    return WorkPrecision(metric_info(metric, frame), metric_info(nfe_column, frame),
                         metric_info(seconds_column, frame), datasets, lines, notes, references)


def _references(done: pd.DataFrame, datasets: Sequence[str]) -> dict[str, str]:
    """Each dataset's reference solve (``spec in dtype``) where its finished rows share one; ``""`` otherwise."""
    if "ref_solver_spec" not in done:
        return {}
    names = axis_labels(done, DATASET.key).astype(str)
    dtypes = done["ref_dtype"] if "ref_dtype" in done else pd.Series("", index=done.index)
    references = {}
    for dataset in datasets:
        found = {(str(spec), str(dtype)) for spec, dtype in zip(done["ref_solver_spec"][names == dataset],
                                                                dtypes[names == dataset], strict=True)}
        references[dataset] = " in ".join(part for part in found.pop() if part) if len(found) == 1 else ""
    return references


def _reference_text(view: WorkPrecision, dataset: str) -> str:
    reference = view.references.get(dataset, "")
    return f"; the error is against the reference solve {reference}" if reference else ""


def _where(label: str, configuration: str, dataset: str) -> str:
    return SEPARATOR.join(part for part in (label, configuration) if part) + f" on {dataset}"


def _sort_key(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _mean_range(values: pd.Series) -> tuple[float, tuple[float, float]]:
    finite = values[np.isfinite(values)]
    if finite.empty:
        return math.nan, (math.nan, math.nan)
    return float(finite.mean()), (float(finite.min()), float(finite.max()))


def _notes(lines: Sequence[Line], failed: Sequence[str], metric: str) -> list[str]:
    notes = []
    marked = [_where(p.label, line.configuration, line.dataset) for line in lines for p in line.points if p.flagged]
    if marked:
        why = ("it concerns the solver's log-density, not the samples this view measures" if metric in SAMPLE_METRICS
               else "that is the error this view measures")
        notes.append(f"flagged, kept and marked ((!), open markers): {'; '.join(marked)}. The validity flag says the "
                     f"solver's density is not normalized; {why}.")
    if failed:
        notes.append(f"no finished seed with a value, not shown: {'; '.join(failed)}")
    fewer = [f"{_where(p.label, line.configuration, line.dataset)} ({p.seeds} of {p.cells})"
             for line in lines for p in line.points if p.seeds < p.cells]
    if fewer:
        notes.append(f"points averaging fewer seeds than their cells (failed or without a value): {'; '.join(fewer)}")
    undrawn = [_where(p.label, line.configuration, line.dataset) for line in lines for p in line.points
               if not p.drawable("nfe") or not p.drawable("seconds")]
    if undrawn:
        notes.append(f"not drawn on the log-log axes (an error or cost that is not positive): {'; '.join(undrawn)}")
    single = [_where(line.label, "", line.dataset) for line in lines if len(line.points) < MIN_POINTS]
    if single:
        notes.append(f"one point only (a marker, no line, no slope): {'; '.join(single)}")
    if metric in SAMPLE_METRICS:
        notes.append(f"{metric} is a distance from model samples to the test data, not to a reference solve: it "
                     "levels off at the model's own error once the solver's error is smaller")
    return notes


# --------------------------------------------------------------------------------------------------- text

def number_text(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits (errors span decades); ``—`` when it is not finite."""
    return f"{value:.{digits}g}" if math.isfinite(value) else "—"


def error_text(value: float) -> str:
    """An error in scientific form, ``3.39e-03`` (errors span decades; the exponent reads as the decade)."""
    return f"{value:.2e}" if math.isfinite(value) else "—"


def _with_range(value: float, spread: tuple[float, float], seeds: int, show: Any = number_text) -> str:
    text = show(value)
    if seeds > 1 and spread[0] != spread[1]:
        text += f" [{show(spread[0])}–{show(spread[1])}]"
    return text


def _parameters(label: str) -> str:
    """``steps=2`` from ``euler[steps=2]``: the table names the family in its own column; the whole label where no
    parameter varies."""
    name, params = split_spec(label)
    return ",".join(params) if params else name


def to_text(view: WorkPrecision, width: int | None = None) -> str:
    """Per dataset: a caption, the points of each line by cost (folded to ``width``), the lines' log-log slopes;
    then the notes."""
    metric, nfe, seconds = view.metric, view.nfe, view.seconds
    parts = []
    several = any(p.seeds > 1 for line in view.lines for p in line.points)
    spread = " [minimum–maximum over the seeds]" if several else ""
    for dataset in view.datasets:
        lines = view.lines_of(dataset)
        caption = (f"Work-precision on {dataset}: {metric.header} against {nfe.header} and {seconds.header}, one "
                   f"line per solver family, points by cost; each entry the mean over the finished seeds{spread}, "
                   f"costs to 3 significant digits; (!) flagged{_reference_text(view, dataset)}")
        headers = ["solver", "parameters", "seeds", nfe.header, seconds.header, metric.header]
        body = []
        for line in lines:
            for index, point in enumerate(line.points):
                error = _with_range(point.error * metric.scale, (point.error_range[0] * metric.scale,
                                                                 point.error_range[1] * metric.scale), point.seeds,
                                    error_text)
                body.append([line.label if index == 0 else "", _parameters(point.label), format_value(point.seeds),
                             _with_range(point.nfe * nfe.scale, (point.nfe_range[0] * nfe.scale,
                                                                 point.nfe_range[1] * nfe.scale), point.seeds),
                             _with_range(point.seconds * seconds.scale,
                                         (point.seconds_range[0] * seconds.scale,
                                          point.seconds_range[1] * seconds.scale), point.seeds),
                             error + (" (!)" if point.flagged else "")])
        slopes = [[line.label, format_value(len(line.points)), _slope_text(line.slope("nfe")),
                   _slope_text(line.slope("seconds"))] for line in lines]
        parts += [wrap_text(terminal_escape(caption), width),
                  fold_table([terminal_escape(h) for h in headers],
                             [[terminal_escape(v) for v in row] for row in body], 2, width),
                  wrap_text(f"Log-log slopes of {metric.header} on cost (a ratio of logarithms, no unit; about -p "
                            "for a fixed-step method of order p in its asymptotic range):", width),
                  fold_table(["solver", "points", "slope vs NFE", "slope vs seconds"],
                             [[terminal_escape(v) for v in row] for row in slopes], 1, width)]
    parts.extend(wrap_text(f"note: {terminal_escape(note)}", width) for note in view.notes)
    return "\n".join(parts)


def _slope_text(slope: float) -> str:
    return f"{slope:.2f}" if math.isfinite(slope) else "—"


# --------------------------------------------------------------------------------------------------- figure

def wp_figure(view: WorkPrecision, dataset: str, title: str = "") -> Figure | None:
    """The work-precision figure of ``dataset``: error against NFE and against seconds, log-log, one line per solver
    family (band and whiskers: the seeds' range; open markers: flagged points), the legend below; full width.
    ``None`` when no point of the dataset can be drawn."""
    from cnfbench.reports.plots import paper_style

    return paper_style(_draw)(view, dataset, title)


def _draw(view: WorkPrecision, dataset: str, title: str) -> Figure | None:
    from matplotlib.lines import Line2D

    from cnfbench.reports.plots import FULL_WIDTH, config_colors, fold, legend_below, line_count, new_figure

    lines = [line for line in view.lines_of(dataset) if any(p.drawable("nfe") or p.drawable("seconds")
                                                            for p in line.points)]
    if not lines:
        return None
    height = 2.8
    figure = new_figure(FULL_WIDTH, height)
    by_nfe, by_seconds = figure.subplots(1, 2)
    colors = config_colors([line.label for line in lines])
    entries: list[tuple[Any, str]] = []
    for line in lines:
        color = colors[line.label]
        for axes, cost, metric in ((by_nfe, "nfe", view.nfe), (by_seconds, "seconds", view.seconds)):
            _draw_line(axes, line, cost, color, metric.scale, view.metric.scale)
        slope = line.slope("nfe")
        shown = f"{line.label} (slope {slope:.2f} vs NFE)" if math.isfinite(slope) else line.label
        entries.append((Line2D([], [], color=color, marker="o", markersize=3.5), shown))
    if any(p.flagged for line in lines for p in line.points):
        entries.append((Line2D([], [], color="grey", marker="o", markersize=3.5, markerfacecolor="none",
                               linestyle="none"), "open marker: flagged (the solver's density is not normalized)"))
    for axes, metric in ((by_nfe, view.nfe), (by_seconds, view.seconds)):
        axes.set_xscale("log")
        axes.set_yscale("log")
        for axis in (axes.xaxis, axes.yaxis):
            _plain_log_ticks(axis)
        axes.set_xlabel(metric.header)
        axes.set_ylabel(view.metric.header)
        axes.grid(True, which="major", alpha=0.3)
    several = any(p.seeds > 1 for line in lines for p in line.points)
    spread = ("log-log axes; mean over seeds, band and whiskers: minimum to maximum over the seeds" if several
              else "log-log axes; one seed per point: no spread")
    reference = view.references.get(dataset, "")
    if reference:
        spread += f"; error against the reference solve {reference}"
    if view.metric.name in SAMPLE_METRICS:
        spread += "; a distance to the test data: it levels off at the model's own error"
    heading = fold(figure, title, FULL_WIDTH - 0.1, 8) if title else ""
    what = fold(figure, spread, FULL_WIDTH - 0.1, 8)
    figure.suptitle(f"{heading}\n{what}" if heading else what, fontsize=8)
    extra = 0.12 * (line_count(heading) + line_count(what) - 2) if heading else 0.12 * (line_count(what) - 1)
    figure.set_figheight(height + extra + legend_below(figure, entries, FULL_WIDTH))
    return figure


def _plain_log_ticks(axis: Any) -> None:
    """Numbers as ``0.02``/``1e-05`` on a log axis, no minor labels (they collide on a short span); ticks at 1, 2
    and 5 per decade where the data span less than two decades, so that a short axis still has several."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = axis.get_data_interval()
    narrow = low > 0 and math.isfinite(high / low) and math.log10(high / low) < 2
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _draw_line(axes: Any, line: Line, cost: str, color: Any, x_scale: float, y_scale: float) -> None:
    """One line's drawable points on ``axes``: the means joined, the seeds' error range as a band, their cost range
    as whiskers, flagged points as open markers."""
    points = [p for p in line.points if p.drawable(cost)]
    if not points:
        return
    x = np.array([(p.nfe if cost == "nfe" else p.seconds) * x_scale for p in points])
    y = np.array([p.error * y_scale for p in points])
    low = np.array([p.error_range[0] * y_scale for p in points])
    high = np.array([p.error_range[1] * y_scale for p in points])
    axes.plot(x, y, color=color, linewidth=1.0, zorder=2)
    if np.any(high > low) and np.all(low > 0):
        axes.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0, zorder=1)
    spans = [p.nfe_range if cost == "nfe" else p.seconds_range for p in points]
    whiskers = np.array([[x_i - s[0] * x_scale, s[1] * x_scale - x_i] for x_i, s in zip(x, spans, strict=True)]).T
    if np.any(whiskers > 0) and all(s[0] > 0 for s in spans):
        axes.errorbar(x, y, xerr=np.clip(whiskers, 0, None), fmt="none", ecolor=color, elinewidth=0.8, capsize=1.5,
                      zorder=2)
    for filled in (True, False):
        chosen = [i for i, p in enumerate(points) if p.flagged != filled]
        if chosen:
            axes.plot(x[chosen], y[chosen], linestyle="none", marker="o", markersize=3.5, color=color,
                      markerfacecolor=color if filled else "white", zorder=3)


def write_wp_plots(view: WorkPrecision, into: str | Path) -> PlotResult:
    """Write the figure of each dataset of ``view`` into ``into`` as ``work_precision_<metric>_<dataset>``."""
    from cnfbench.reports.plots import PlotResult, file_label, save_figure

    out = Path(into)
    result = PlotResult()
    for dataset in view.datasets:
        figure = wp_figure(view, dataset, f"{dataset}: work-precision of {view.metric.header}")
        if figure is None:
            result.notes.append(f"no figure for {dataset}: no point with a positive error and cost")
            continue
        path = out / f"work_precision_{file_label(view.metric.name)}_{file_label(dataset)}.png"
        result.files.append((f"{dataset}: work-precision of {view.metric.name}", save_figure(figure, path)))
    return result
