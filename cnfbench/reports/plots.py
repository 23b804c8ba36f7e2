"""Plots of finished runs for a paper: PNG, PDF and SVG, on matplotlib's Agg canvas (no display, no global
backend change), exactly a single column (3.4 in wide, 8 pt text) or the full width (7 in) of a two-column paper.

:func:`write_plots` writes, per dataset, into ``<out>/plots/`` (or the folder given as ``into``), each as
``.png``, ``.pdf`` and ``.svg``:

- ``pareto_nfe_<dataset>`` — test NLL (reference solve) against forward NFE per training solve, one point per
  *configuration* (seeds aggregated: the mean, with error bars of one standard deviation over the seeds),
  the Pareto front over configurations (lower cost and lower NLL) drawn through their means; one column wide;
- ``pareto_time_<dataset>`` — the same against the training wall-clock;
- ``curves_<dataset>`` — per configuration the mean training loss (in nats) over its seeds with a band of
  one standard deviation, against iterations and against seconds, the validation NLL when recorded, and
  the forward NFE per iteration; integer iteration ticks. Where the losses shown are not comparable (the
  objectives differ, or each is under its own training solver — a fixed-step solver's loss is that solver's
  density, not the model's) a caveat above the loss panels says so (:func:`loss_caveat`);
- ``density_<dataset>`` — for 2D data: the test data (a histogram in the density's unit), then per cell the
  density the field defines (reference solve), the density its own solver reports (when the run recorded it)
  and samples from the model, all with axes, the same extent and one colour bar — drawn from
  ``<run>/density/<cell_id>.npz`` files (see :func:`write_density_artifacts`); a cell without that file is left
  out with a note. The grid has the data column, then at most :data:`MAX_DENSITY_COLUMNS` model columns; more
  models take further rows of blocks, balanced, never under the data column.

The figure helpers (:func:`new_figure`, :func:`paper_style`, :func:`save_figure`, :func:`legend_below`,
:func:`config_colors`, :func:`fold`, :func:`fit`) are public: the rank and work-precision figures
(:mod:`~cnfbench.reports.rank_plots`, :mod:`~cnfbench.reports.work_precision`) are drawn with the same ones.

Every figure is exactly its stated width (no tight bounding box), so each text is folded at token boundaries
(:func:`cnfbench.labels.break_label`) to the width measured by the renderer, and legends sit below the panels.
Densities and the data histogram are one image each (a colour bar's solids rasterized too), so a PDF viewer
shows no hairline seams between patches.

Configurations are named by :func:`cnfbench.labels.row_labels` (the axes that vary, short form), as the tables
name them; labels and titles come from the run folder, so they are drawn through
:func:`~cnfbench.reports.escape.mathtext_escape`: a ``$`` in a dataset or component spec is drawn as a dollar, never
as mathtext (which would raise on ``$\\foo$``); the SVG backend writes every text XML-escaped.

Plain matplotlib rather than seaborn: every figure here is a few scatter, line and image calls, and the
error bars, Pareto steps and colour bars need matplotlib's API anyway.

The density artifacts are written and read by :mod:`cnfbench.run_folder`.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnfbench.labels import break_label, row_labels, row_specs, short_specs
from cnfbench.messages import plural
from cnfbench.reports.aggregate import axis_labels
from cnfbench.reports.escape import mathtext_escape
from cnfbench.reports.metrics import DATASET, metric_info
from cnfbench.run_folder import (
    DENSITY_DIR,
    DENSITY_SUFFIX,
    DensityArtifacts,
    ResultsError,
    atomic_write,
    read_density_artifacts,
)

PLOTS_DIR = "plots"

MAX_DENSITY_PANELS = 24
"""At most this many cells per dataset get a density panel (the first ones, in row order)."""
MAX_DENSITY_COLUMNS = 4
"""Model columns beside the data column of the density figure; more models take further rows (balanced)."""

_DPI = 200
FORMATS = ("png", "pdf", "svg")
"""Every plot is written in these formats; the PNG is what the HTML report embeds."""
COLUMN_WIDTH = 3.4
"""Inches: one column of a two-column paper (the Pareto plots)."""
FULL_WIDTH = 7.0
"""Inches: the full text width (training curves, densities)."""
_STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 6.5, "xtick.labelsize": 7,
          "ytick.labelsize": 7, "lines.linewidth": 1.0, "savefig.bbox": "standard", "pdf.fonttype": 42,
          "svg.fonttype": "none"}
"""Sizes readable at single-column width; the page exactly the figure's size (no tight bounding box, which would
widen it); TrueType fonts in PDFs and text kept as text in SVGs."""
_PANEL_TITLE = 7.0
_NOTE_SIZE = 6.5
_SMALLEST = 5.0
"""Points: a text whose single token is wider than its room shrinks down to this size, never further."""
_CAVEAT_COLOR = "#a00000"
NATS = "nats/sample"
"""The loss unit whose curves are drawn (``loss_nats``): a likelihood objective's."""


# --------------------------------------------------------------------------------------------------- helpers

@dataclass
class PlotResult:
    """The PNG files written, with a title each, and notes on what was skipped."""

    files: list[tuple[str, Path]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def file_label(text: str) -> str:
    """``text`` made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "data"


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure on its own Agg canvas (what text is measured with)."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def paper_style(plot: Callable[..., Any]) -> Callable[..., Any]:
    """Draw (and save) inside the paper style (:data:`_STYLE`), leaving matplotlib's global settings alone."""
    @functools.wraps(plot)
    def styled(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return plot(*args, **kwargs)

    return styled


@paper_style
def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as ``path`` (``.png``) and beside it in every other of :data:`FORMATS`; return the PNG."""
    for kind in FORMATS:
        target = path.with_suffix(f".{kind}")
        atomic_write(target, lambda tmp, kind=kind: figure.savefig(tmp, format=kind, dpi=_DPI))
    return path.with_suffix(".png")


def text_width(figure: Figure, text: str, size: float) -> float:
    """Inches the widest line of ``text`` (as matplotlib is to draw it: escaped) takes at ``size`` points."""
    artist = figure.text(0, 0, text, fontsize=size)
    try:
        return float(artist.get_window_extent(figure.canvas.get_renderer()).width) / figure.dpi
    finally:
        artist.remove()


def fold(figure: Figure, text: str, width: float, size: float) -> str:
    """``text`` escaped for matplotlib and folded at token boundaries (:func:`~cnfbench.labels.break_label`) onto
    the fewest lines that each fit ``width`` inches at ``size`` points; a token wider than that keeps a line of its
    own (see :func:`fit`)."""
    escaped = mathtext_escape(text)
    measured = text_width(figure, escaped, size)
    if measured <= width:
        return escaped
    longest = max((len(line) for line in text.splitlines()), default=1)
    start = min(longest - 1, int(longest * width / measured) + 3)  # characters scale with width, nearly
    for chars in range(start, 0, -1):
        folded = break_label(text, chars)
        if text_width(figure, mathtext_escape(folded), size) <= width:
            return mathtext_escape(folded)
    return mathtext_escape(break_label(text, 1))


def fit(figure: Figure, text: str, width: float, size: float) -> tuple[str, float]:
    """``(folded text, size)``: :func:`fold` at ``size``, or at a smaller size (down to 5 pt) where one token
    alone is wider than ``width`` inches."""
    current = size
    while True:
        folded = fold(figure, text, width, current)
        if current <= _SMALLEST or text_width(figure, folded, current) <= width:
            return folded, current
        current = max(_SMALLEST, current - 0.5)


def line_count(text: str) -> int:
    """How many lines ``text`` takes."""
    return text.count("\n") + 1


def legend_below(figure: Figure, entries: Sequence[tuple[Any, str]], width: float) -> float:
    """A legend under the panels, in two columns where every label fits half of ``width`` inches (else one), each
    label folded to its column; returns the inches it adds to the figure's height."""
    if not entries:
        return 0.0
    import matplotlib

    size = float(matplotlib.rcParams["legend.fontsize"])
    room = 0.4  # a column's line or marker sample and the gaps around it, inches
    columns = 1
    if len(entries) > 1 and all(text_width(figure, mathtext_escape(label), size) <= width / 2 - room
                                for _, label in entries):
        columns = 2
    labels = [fold(figure, label, width / columns - room, size) for _, label in entries]
    legend = figure.legend([handle for handle, _ in entries], labels, loc="outside lower center", ncols=columns,
                           frameon=False, fontsize=size)
    return float(legend.get_window_extent(figure.canvas.get_renderer()).height) / figure.dpi + 0.05


def _configurations(cells: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per configuration label: ``label``, ``n`` and each metric's ``<m>_mean``/``<m>_std`` over the
    finished seeds (std 0 for one seed)."""
    done = cells[cells["status"] == "done"] if "status" in cells else cells
    labels = config_labels(done)
    rows = []
    for label in dict.fromkeys(labels):
        group = done[(labels == label).to_numpy()]
        row: dict[str, Any] = {"label": label, "n": len(group)}
        for metric in metrics:
            values = pd.to_numeric(group.get(metric, pd.Series(dtype=float)), errors="coerce")
            values = values[np.isfinite(values)]
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both (lower ``x`` and lower ``y``), by increasing ``x``."""
    order = sorted(range(len(x)), key=lambda i: (x[i], y[i]))
    front, best = [], math.inf
    for i in order:
        if y[i] < best:
            front.append(i)
            best = y[i]
    return front


def config_labels(cells: pd.DataFrame, seeds: bool = False) -> pd.Series:
    """A label per row naming its configuration within one dataset, as the tables name it
    (:func:`cnfbench.labels.row_labels`, the dataset left out; with the seed where ``seeds`` and seeds vary).
    Plain text: drawing escapes it (:func:`fold`)."""
    return row_labels(cells, seeds=seeds, leave_out=(DATASET.key,))


def config_colors(labels: Sequence[str]) -> dict[str, Any]:
    """A colour per distinct label, in first-seen order (the same configuration, the same colour, in every figure)."""
    from matplotlib import colormaps

    unique = list(dict.fromkeys(labels))
    cmap = colormaps["tab10" if len(unique) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(unique)}


def _dataset_groups(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    labels = axis_labels(cells, DATASET.key)
    return [(str(name), cells.loc[labels == name]) for name in dict.fromkeys(labels)]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value))


# --------------------------------------------------------------------------------------------------- pareto

@paper_style
def pareto_figure(cells: pd.DataFrame, x: str, y: str = "nll_ref", title: str = "") -> Figure | None:
    """NLL against a cost (``x``), one point per configuration (mean over its seeds, error bars of one standard
    deviation), the Pareto front over configurations drawn through their means, the legend below; one column
    wide; ``None`` without points."""
    if x not in cells or y not in cells:
        return None
    table = _configurations(cells, [x, y, "entropy"])
    table = table[np.isfinite(table[f"{x}_mean"]) & np.isfinite(table[f"{y}_mean"])]
    if table.empty:
        return None
    xs, ys = table[f"{x}_mean"].to_numpy(float), table[f"{y}_mean"].to_numpy(float)
    colors = config_colors(list(table["label"]))
    height = 2.6
    figure = new_figure(COLUMN_WIDTH, height)
    axes = figure.add_subplot()
    entries: list[tuple[Any, str]] = []
    for (_, row), px, py in zip(table.iterrows(), xs, ys, strict=True):
        handle = axes.errorbar(px, py, xerr=row[f"{x}_std"] or None, yerr=row[f"{y}_std"] or None, fmt="o",
                               markersize=4, color=colors[row["label"]], capsize=2, zorder=3)
        entries.append((handle, f"{row['label']} (n={row['n']})"))
    front = pareto_front(list(xs), list(ys))
    (line,) = axes.step(xs[front], ys[front], where="post", color="black", linewidth=0.8, zorder=2)
    entries.append((line, "Pareto front"))
    entropy = table["entropy_mean"].dropna()
    if len(entropy):
        level = float(entropy.mean())
        entries.append((axes.axhline(level, color="grey", linestyle="--", linewidth=0.8),
                        f"true entropy {level:.3f} nats"))
    if xs.min() > 0 and xs.max() / xs.min() > 5:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        axes.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_formatter(plain if xs.max() / xs.min() < 12 else NullFormatter())
    axes.set_xlabel(metric_info(x).header)
    axes.set_ylabel(metric_info(y).header)
    heading = fold(figure, title, COLUMN_WIDTH - 0.1, 8)
    spread = "mean ± 1 std over seeds" if (table["n"] > 1).any() else "one seed per configuration: no spread"
    figure.suptitle(f"{heading}\n{spread}", fontsize=8)  # centred on the page, not the axes
    axes.grid(True, alpha=0.3)
    figure.set_figheight(height + 0.12 * (line_count(heading) - 1) + legend_below(figure, entries, COLUMN_WIDTH))
    return figure


def plot_pareto(cells: pd.DataFrame, x: str, path: Path, y: str = "nll_ref", title: str = "") -> Path | None:
    """:func:`pareto_figure` written as ``path`` (and its PDF and SVG); ``None`` without points."""
    figure = pareto_figure(cells, x, y, title)
    return save_figure(figure, path) if figure is not None else None


# --------------------------------------------------------------------------------------------------- curves

def validation_solves(rows: pd.DataFrame) -> list[str]:
    """The solve each row's validation NLL was computed with: a likelihood objective's (loss in nats) is its
    training solver's, any other objective's the run's ``--val-solver`` (``val_solver_spec``)."""
    solvers = row_specs(rows, "solver")
    solves = []
    for position, (_, row) in enumerate(rows.iterrows()):
        unit, chosen = row.get("train_loss_unit"), row.get("val_solver_spec")
        own = not isinstance(unit, str) or not unit or unit == NATS or not isinstance(chosen, str) or not chosen
        solves.append(solvers[position] if own else str(chosen))
    return solves


def loss_caveat(shown: pd.DataFrame, validation: pd.DataFrame | None = None) -> str:
    """Why the training losses of the rows ``shown`` (those whose loss curve is in nats) are not comparable —
    the objectives differ, each is under its own training solver, a fixed-step solver's loss is that solver's
    density and not the model's — and what to compare instead (the validation NLL of the rows ``validation``
    when it was computed under one solve, else the test NLL of the reference solve); ``""`` when they are."""
    if shown.empty:
        return ""
    solvers = row_specs(shown, "solver")
    objectives = row_specs(shown, "objective")
    expected = shown.get("nfe_expected_per_solve", pd.Series(math.nan, index=shown.index))
    fixed = [spec for spec, steps in zip(solvers, expected, strict=True) if _finite(steps)]
    named = dict(zip(solvers, short_specs(solvers), strict=True))
    reasons = []
    if len(set(objectives)) > 1:
        reasons.append(f"the objectives differ ({', '.join(dict.fromkeys(short_specs(objectives)))}), so the losses "
                       "hold different terms")
    if len(set(solvers)) > 1:
        reasons.append("each is the NLL under its own training solver")
    if fixed:
        which = ", ".join(dict.fromkeys(named[spec] for spec in fixed))
        reasons.append(f"a fixed-step solver's loss ({which}) is that solver's density, not the model's, and can lie "
                       "below the model's NLL")
    if not reasons:
        return ""
    head = ("Training losses are not comparable: " if len(set(objectives)) > 1 or len(set(solvers)) > 1
            else "Training loss: ")
    solves = set(validation_solves(validation)) if validation is not None and not validation.empty else set()
    if len(solves) == 1:
        advice = f"the validation NLL (dashed) is under one solve, {next(iter(solves))}: compare that"
    else:
        advice = "compare the models by test NLL (reference solve)"
    return f"{head}{'; '.join(reasons)}. {advice[0].upper()}{advice[1:]}."


def _seed_band(axes: Any, x: np.ndarray, values: np.ndarray, color: Any) -> Any:
    """The mean over the seeds (rows of ``values``) as a line, one standard deviation as a band; the line."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # steps no seed recorded: all NaN
        mean = np.nanmean(values, axis=0)
        (line,) = axes.plot(x, mean, color=color)
        if values.shape[0] > 1:
            std = np.nanstd(values, axis=0, ddof=1)
            axes.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    return line


@paper_style
def curves_figure(cells: pd.DataFrame, curves: pd.DataFrame, title: str = "") -> Figure | None:
    """Per configuration, the mean training loss over its seeds (band: one standard deviation) against
    iterations and against seconds, the validation NLL where recorded, and the forward NFE per iteration; a
    caveat above the loss panels where the losses are not comparable (:func:`loss_caveat`); full width."""
    if curves.empty or "cell_id" not in curves or "iteration" not in curves:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    keys = ["run", "cell_id"] if "run" in cells and "run" in curves else ["cell_id"]
    labels = config_labels(cells)
    lookup = {tuple(row): labels.loc[i] for i, row in zip(cells.index, cells[keys].itertuples(index=False,
                                                                                                name=None),
                                                           strict=True)}
    index_of = {tuple(row): i for i, row in zip(cells.index, cells[keys].itertuples(index=False, name=None),
                                                strict=True)}
    curves = curves.assign(_label=[lookup.get(tuple(r)) for r in curves[keys].itertuples(index=False, name=None)])
    rows = curves[curves["_label"].notna()]
    if rows.empty:
        return None
    colors = config_colors(list(labels))
    height = 2.4
    figure = new_figure(FULL_WIDTH, height)
    left, right = figure.subfigures(1, 2, width_ratios=[2, 1])
    by_iteration, by_time = left.subplots(1, 2)
    nfe_axes = right.subplots()
    losses: list[float] = []
    entries: list[tuple[Any, str]] = []
    with_loss: list[Any] = []
    with_validation: list[Any] = []
    for label, group in rows.groupby("_label", sort=False):
        color = colors[label]
        per_cell = [c.sort_values("iteration").set_index("iteration") for _, c in group.groupby(keys, sort=False)]
        members = [index_of[tuple(r)] for r in group[keys].drop_duplicates().itertuples(index=False, name=None)]
        steps = np.asarray(sorted(set().union(*(c.index for c in per_cell))), dtype=float)

        def stack(column: str, per_cell: list[pd.DataFrame] = per_cell, steps: np.ndarray = steps) -> np.ndarray:
            return np.vstack([c[column].reindex(steps).to_numpy(float) if column in c else np.full(len(steps), np.nan)
                              for c in per_cell])

        loss = stack("loss_nats")
        finite = [v for v in loss.ravel() if np.isfinite(v)]
        if finite:
            losses.extend(finite)
            with_loss.extend(members)
            _seed_band(by_iteration, steps, loss, color)
            if "elapsed_s" in group:
                _seed_band(by_time, np.nanmean(stack("elapsed_s"), axis=0), loss, color)
        if "val_nll" in group and group["val_nll"].notna().any():
            with_validation.extend(members)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # iterations without validation: all NaN
                validation = np.nanmean(stack("val_nll"), axis=0)
            shown = np.isfinite(validation)
            by_iteration.plot(steps[shown], validation[shown], "o--", color=color, markersize=3, linewidth=0.7)
        line = _seed_band(nfe_axes, steps, stack("nfe_forward"), color) if "nfe_forward" in group else None
        entries.append((line or Line2D([], [], color=color), f"{label} (n={len(per_cell)})"))
    if with_validation:
        entries.append((Line2D([], [], color="black", marker="o", linestyle="--", markersize=3, linewidth=0.7),
                        "validation NLL [nats/sample] (dashed)"))
    if losses:
        low, high = float(np.min(losses)), float(np.percentile(losses, 98))
        pad = 0.05 * (high - low) if high > low else 0.5
        for axes in (by_iteration, by_time):
            axes.set_ylim(low - pad, high + pad)
    notes = [loss_caveat(cells.loc[list(dict.fromkeys(with_loss))],
                         cells.loc[list(dict.fromkeys(with_validation))])]
    no_loss = [label for label in dict.fromkeys(labels.loc[[i for i in cells.index if i not in with_loss]])
               if label in set(rows["_label"])]
    if no_loss:
        notes.append(f"Losses not in nats, so not drawn: {', '.join(no_loss)}.")
    extra = 0.0
    if any(notes):
        text, size = fit(figure, "\n".join(note for note in notes if note), FULL_WIDTH * 2 / 3 - 0.15, _NOTE_SIZE)
        left.suptitle(text, fontsize=size, color=_CAVEAT_COLOR)
        extra += line_count(text) * size * 1.3 / 72 + 0.04
    by_iteration.set_xlabel("iteration")
    by_iteration.set_ylabel("loss, val NLL [nats/sample]" if with_validation else "training loss [nats/sample]")
    by_time.set_xlabel("training wall-clock [s]")
    nfe_axes.set_xlabel("iteration")
    nfe_axes.set_ylabel("NFE per forward solve [evals]")
    for axes in (by_iteration, nfe_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axes in (by_iteration, by_time, nfe_axes):
        axes.grid(True, alpha=0.3)
    heading = fold(figure, f"{title} (mean ± 1 std over seeds)", FULL_WIDTH - 0.1, 8)
    figure.suptitle(heading, fontsize=8)
    extra += 0.12 * (line_count(heading) - 1) + legend_below(figure, entries, FULL_WIDTH)
    figure.set_figheight(height + extra)
    return figure


def plot_curves(cells: pd.DataFrame, curves: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """:func:`curves_figure` written as ``path`` (and its PDF and SVG); ``None`` without curves."""
    figure = curves_figure(cells, curves, title)
    return save_figure(figure, path) if figure is not None else None


# --------------------------------------------------------------------------------------------------- density

def density_grid(models: int, most: int = MAX_DENSITY_COLUMNS) -> tuple[int, int]:
    """``(model columns, blocks)`` of the density figure for ``models`` models: at most ``most`` columns beside
    the data column, the models spread evenly over the fewest blocks of rows."""
    blocks = max(1, math.ceil(models / most))
    return max(1, math.ceil(models / blocks)), blocks


def _density_panels(cells: pd.DataFrame, run_dirs: Mapping[str, Path], title: str
                    ) -> tuple[list[tuple[str, DensityArtifacts]], list[str]]:
    """Each finished cell's label and density artifacts, and notes on the cells left out."""
    notes: list[str] = []
    panels: list[tuple[str, DensityArtifacts]] = []
    done = cells[cells["status"] == "done"] if "status" in cells else cells
    labels = config_labels(done, seeds=True)
    missing = 0
    for index, row in done.iterrows():
        run_dir = run_dirs.get(str(row.get("run", "")), next(iter(run_dirs.values()), None))
        if run_dir is None:
            continue
        try:
            artifacts = read_density_artifacts(run_dir, str(row["cell_id"]))
        except (ResultsError, ValueError) as exc:
            notes.append(f"density panel skipped: {exc}")
            continue
        if artifacts is None:
            two_d = [row.get(c) for c in ("mass", "mass_ref") if c in row]
            if not two_d or any(_finite(v) for v in two_d):
                missing += 1  # a 2D cell (it has a mass) or a run without mass columns
            continue
        panels.append((str(labels.loc[index]), artifacts))
    if missing:
        notes.append(f"{title or 'density'}: {plural(missing, '2D cell')} have no "
                     f"{DENSITY_DIR}/<cell_id>{DENSITY_SUFFIX} (the run did not compute the density_plot metric): "
                     "no density panel for them; `cnfbench evaluate RUN --metrics density_plot` adds the panels")
    if len(panels) > MAX_DENSITY_PANELS:
        notes.append(f"{title}: density panels for the first {MAX_DENSITY_PANELS} of {len(panels)} cells only")
        panels = panels[:MAX_DENSITY_PANELS]
    return panels, notes


@paper_style
def density_figure(cells: pd.DataFrame, run_dirs: Mapping[str, Path], title: str = ""
                   ) -> tuple[Figure | None, list[str]]:
    """Data, then per cell the density the field defines (reference solve), the density its solver reports
    (when recorded) and model samples, with axes in data units and one colour bar; full width, the grid from
    :func:`density_grid`; notes for missing files."""
    panels, notes = _density_panels(cells, run_dirs, title)
    if not panels:
        return None, notes
    from matplotlib.ticker import MaxNLocator

    layers = 3 if any(art.log_prob_solver is not None for _, art in panels) else 2
    per_row, blocks = density_grid(len(panels))
    columns = 1 + per_row
    bar_room = 0.75  # the colour bar, its ticks and label, inches
    pitch = (FULL_WIDTH - bar_room) / columns
    room = pitch - 0.08
    figure = new_figure(FULL_WIDTH, 1.0)
    grid = figure.add_gridspec(layers * blocks, columns)
    first = panels[0][1]
    extent = (float(first.grid_x[0]), float(first.grid_x[-1]), float(first.grid_y[0]), float(first.grid_y[-1]))
    densities = [np.exp(np.clip(art.log_prob.astype(np.float64), -50, 50)) for _, art in panels]
    top_value = max(float(np.percentile(d, 99.5)) for d in densities) or 1.0  # one colour scale for every panel
    title_lines = [1] * (layers * blocks)

    def axes_at(slot: int, layer: int, heading: str) -> Any:
        """The panel of model ``slot`` (0: the data) in ``layer``, titled ``heading`` folded to its column."""
        block, column = divmod(slot - 1, per_row) if slot else (0, -1)
        axes = figure.add_subplot(grid[layers * block + layer, column + 1])
        axes.set_aspect("equal")
        axes.tick_params(length=2, pad=1, labelsize=6)
        axes.xaxis.set_major_locator(MaxNLocator(nbins=4))
        axes.yaxis.set_major_locator(MaxNLocator(nbins=4, prune="lower"))  # its label would touch the x axis' first
        text, size = fit(figure, heading, room, _PANEL_TITLE)
        axes.set_title(text, fontsize=size)
        row = layers * block + layer
        title_lines[row] = max(title_lines[row], line_count(text))
        return axes

    def raster(axes: Any, values: np.ndarray, box: tuple[float, float, float, float]) -> Any:
        """``values[x, y]`` as one image (no patches, so no seams in a PDF), on the shared colour scale."""
        return axes.imshow(values.T, origin="lower", extent=box, cmap="viridis", aspect="equal",
                           interpolation="nearest", vmin=0.0, vmax=top_value)

    data = first.data
    counts, _, _ = np.histogram2d(data[:, 0], data[:, 1], bins=30, range=[extent[:2], extent[2:]], density=True)
    raster(axes_at(0, 0, "test data (histogram)"), counts, extent)  # the density's unit: one colour scale
    points = axes_at(0, layers - 1, "test data (points)")
    points.scatter(data[:, 0], data[:, 1], s=1, color="black", alpha=0.5)
    points.set_xlim(extent[:2])
    points.set_ylim(extent[2:])
    image = None
    for slot, ((label, art), density) in enumerate(zip(panels, densities, strict=True), start=1):
        box = (float(art.grid_x[0]), float(art.grid_x[-1]), float(art.grid_y[0]), float(art.grid_y[-1]))
        image = raster(axes_at(slot, 0, f"{label}\nreference solve"), density, box)
        if layers == 3 and art.log_prob_solver is not None:
            own = np.exp(np.clip(art.log_prob_solver.astype(np.float64), -50, 50))
            raster(axes_at(slot, 1, "its own solver"), own, box)
        samples = axes_at(slot, layers - 1, "samples (red), data (grey)")
        samples.scatter(art.data[:, 0], art.data[:, 1], s=1, color="lightgrey", alpha=0.6)
        samples.scatter(art.samples[:, 0], art.samples[:, 1], s=1, color="tab:red", alpha=0.7)
        samples.set_xlim(box[:2])
        samples.set_ylim(box[2:])
    first_block = [axes for axes in figure.axes if axes.get_subplotspec().rowspan.start < layers]
    bar = figure.colorbar(image, ax=first_block, shrink=0.9, extend="max")
    bar.solids.set_rasterized(True)  # one image, not a strip of patches with seams
    bar.set_label("density [1/data unit²]")
    heading = fold(figure, f"{title} (axes in data units; one colour scale)", FULL_WIDTH - 0.1, 8)
    figure.suptitle(heading, fontsize=8)
    panel = pitch - 0.25  # the square panel, its y tick labels beside it
    height = sum(panel + 0.22 + lines * _PANEL_TITLE * 1.25 / 72 for lines in title_lines)
    figure.set_figheight(height + 0.12 + line_count(heading) * 0.14)
    return figure, notes


def plot_density(cells: pd.DataFrame, run_dirs: Mapping[str, Path], path: Path, title: str = ""
                 ) -> tuple[Path | None, list[str]]:
    """:func:`density_figure` written as ``path`` (and its PDF and SVG); notes for missing files."""
    figure, notes = density_figure(cells, run_dirs, title)
    return (save_figure(figure, path) if figure is not None else None), notes


def write_plots(out_dir: str | Path, cells: pd.DataFrame, curves: pd.DataFrame | None = None,
                run_dirs: Mapping[str, Path] | None = None, into: str | Path | None = None) -> PlotResult:
    """Write every plot of ``cells`` (and ``curves``) into ``into`` (default ``out_dir/plots/``); see the module
    docstring.

    ``run_dirs`` maps the values of a ``run`` column to the run folders that hold density artifacts;
    without it, the artifacts are looked for in ``out_dir``.
    """
    out = Path(into) if into is not None else Path(out_dir) / PLOTS_DIR
    result = PlotResult()
    if cells.empty:
        result.notes.append("no cells: no plots")
        return result
    dirs = dict(run_dirs) if run_dirs else {"": Path(out_dir)}
    curves = curves if curves is not None else pd.DataFrame()
    for dataset, group in _dataset_groups(cells):
        name = file_label(dataset)
        for x, kind, what in (("nfe_forward_mean", "nfe", "NFE per training solve"),
                              ("train_time_s", "time", "training wall-clock")):
            written = plot_pareto(group, x, out / f"pareto_{kind}_{name}.png",
                                  title=f"{dataset}: test NLL (reference solve) vs {what}")
            if written:
                result.files.append((f"{dataset}: NLL vs {what}", written))
            else:
                result.notes.append(f"{dataset}: no finished cell with nll_ref and {x}: no NLL-vs-{kind} plot")
        written = plot_curves(group, curves, out / f"curves_{name}.png", title=f"{dataset}: training curves")
        if written:
            result.files.append((f"{dataset}: training curves", written))
        else:
            result.notes.append(f"{dataset}: no training curves (curves.parquet missing or without these cells)")
        written, notes = plot_density(group, dirs, out / f"density_{name}.png",
                                      title=f"{dataset}: learned densities and samples")
        result.notes.extend(notes)
        if written:
            result.files.append((f"{dataset}: learned densities and samples", written))
    return result
