"""Plots of finished runs for a paper: PNG, PDF and SVG, on matplotlib's Agg canvas (no display, no global
backend change), sized for a single column (3.4 in wide, 8 pt text) or a full width (7 in).

:func:`write_plots` writes, per dataset, into ``<out>/plots/`` (each as ``.png``, ``.pdf`` and ``.svg``):

- ``pareto_nfe_<dataset>`` — test NLL (reference solve) against forward NFE per training solve, one point per
  *configuration* (seeds aggregated: the mean, with error bars of one standard deviation over the seeds),
  the Pareto front over configurations (lower cost and lower NLL) drawn through their means;
- ``pareto_time_<dataset>`` — the same against the training wall-clock;
- ``curves_<dataset>`` — per configuration the mean training loss (in nats) over its seeds with a band of
  one standard deviation, against iterations and against seconds, the validation NLL when recorded, and
  the forward NFE per iteration; integer iteration ticks;
- ``density_<dataset>`` — for 2D data: the test data, then per cell the density the field defines (reference
  solve), the density its own solver reports (when the run recorded it) and samples from the model, all with
  axes, the same extent and a colour bar — drawn from ``<run>/density/<cell_id>.npz`` files (see
  :func:`write_density_artifacts`); a cell without that file is left out with a note.

Labels and titles come from the run folder, so they are drawn through
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

from cnfbench.families import AXIS_KEYS
from cnfbench.reports.aggregate import axis_labels, format_value, varying_axes
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

_DPI = 200
FORMATS = ("png", "pdf", "svg")
"""Every plot is written in these formats; the PNG is what the HTML report embeds."""
COLUMN_WIDTH = 3.4
"""Inches: one column of a two-column paper."""
FULL_WIDTH = 7.0
_STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 6.5, "xtick.labelsize": 7,
          "ytick.labelsize": 7, "lines.linewidth": 1.0, "savefig.bbox": "tight", "pdf.fonttype": 42,
          "svg.fonttype": "none"}
"""Sizes readable at single-column width; TrueType fonts in PDFs and text kept as text in SVGs."""


# --------------------------------------------------------------------------------------------------- helpers

@dataclass
class PlotResult:
    """The PNG files written, with a title each, and notes on what was skipped."""

    files: list[tuple[str, Path]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def file_label(text: str) -> str:
    """``text`` made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "data"


def _save(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as ``path`` (``.png``) and beside it in every other of :data:`FORMATS`; return the PNG."""
    FigureCanvasAgg(figure)
    for kind in FORMATS:
        target = path.with_suffix(f".{kind}")
        atomic_write(target, lambda tmp, kind=kind: figure.savefig(tmp, format=kind, dpi=_DPI))
    return path.with_suffix(".png")


def _styled(plot: Callable[..., Any]) -> Callable[..., Any]:
    """Draw and save inside the paper style (:data:`_STYLE`), leaving matplotlib's global settings alone."""
    @functools.wraps(plot)
    def styled(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return plot(*args, **kwargs)

    return styled


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


def config_labels(cells: pd.DataFrame) -> pd.Series:
    """A short label per row naming its configuration within one dataset (the axes that vary), as matplotlib is to
    draw it (:func:`~cnfbench.reports.escape.mathtext_escape`)."""
    axes = [a for a in varying_axes(cells, [DATASET.key]) if a != DATASET.key] \
        or [a for a in AXIS_KEYS if a != DATASET.key]
    parts = [axis_labels(cells, a) for a in axes]
    return pd.Series([mathtext_escape(" / ".join(str(p.loc[i]) for p in parts)) for i in cells.index],
                     index=cells.index)


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    unique = list(dict.fromkeys(labels))
    cmap = colormaps["tab10" if len(unique) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(unique)}


def _dataset_groups(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    labels = axis_labels(cells, DATASET.key)
    return [(str(name), cells.loc[labels == name]) for name in dict.fromkeys(labels)]


# --------------------------------------------------------------------------------------------------- plots

@_styled
def plot_pareto(cells: pd.DataFrame, x: str, path: Path, y: str = "nll_ref", title: str = "") -> Path | None:
    """NLL against a cost (``x``), one point per configuration (mean over its seeds, error bars of one standard
    deviation), the Pareto front over configurations drawn through their means; ``None`` without points."""
    if x not in cells or y not in cells:
        return None
    table = _configurations(cells, [x, y, "entropy"])
    table = table[np.isfinite(table[f"{x}_mean"]) & np.isfinite(table[f"{y}_mean"])]
    if table.empty:
        return None
    xs, ys = table[f"{x}_mean"].to_numpy(float), table[f"{y}_mean"].to_numpy(float)
    colors = _colors(list(table["label"]))
    figure = Figure(figsize=(COLUMN_WIDTH, 2.8), layout="constrained")
    axes = figure.add_subplot()
    for (_, row), px, py in zip(table.iterrows(), xs, ys, strict=True):
        axes.errorbar(px, py, xerr=row[f"{x}_std"] or None, yerr=row[f"{y}_std"] or None, fmt="o", markersize=4,
                      color=colors[row["label"]], label=f"{row['label']} (n={row['n']})", capsize=2, zorder=3)
    front = pareto_front(list(xs), list(ys))
    axes.step(xs[front], ys[front], where="post", color="black", linewidth=0.8, zorder=2, label="Pareto front")
    entropy = table["entropy_mean"].dropna()
    if len(entropy):
        axes.axhline(float(entropy.mean()), color="grey", linestyle="--", linewidth=0.8,
                     label=f"true entropy {float(entropy.mean()):.3f}")
    if xs.min() > 0 and xs.max() / xs.min() > 5:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        axes.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_formatter(plain if xs.max() / xs.min() < 12 else NullFormatter())
    axes.set_xlabel(metric_info(x).header)
    axes.set_ylabel(metric_info(y).header)
    axes.set_title(f"{mathtext_escape(title)}\nmean ± 1 std over seeds", fontsize=8)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", frameon=False)
    return _save(figure, path)


def _seed_band(axes: Any, x: np.ndarray, values: np.ndarray, color: Any, label: str | None) -> None:
    """The mean over the seeds (rows of ``values``) as a line, one standard deviation as a band."""
    mean = np.nanmean(values, axis=0)
    axes.plot(x, mean, color=color, label=label)
    if values.shape[0] > 1:
        std = np.nanstd(values, axis=0, ddof=1)
        axes.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


@_styled
def plot_curves(cells: pd.DataFrame, curves: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Per configuration, the mean training loss over its seeds (band: one standard deviation) against
    iterations and against seconds, the validation NLL where recorded, and the forward NFE per iteration."""
    if curves.empty or "cell_id" not in curves or "iteration" not in curves:
        return None
    from matplotlib.ticker import MaxNLocator

    keys = ["run", "cell_id"] if "run" in cells and "run" in curves else ["cell_id"]
    labels = config_labels(cells)
    lookup = {tuple(row): labels.loc[i] for i, row in zip(cells.index, cells[keys].itertuples(index=False,
                                                                                                name=None),
                                                           strict=True)}
    curves = curves.assign(_label=[lookup.get(tuple(r)) for r in curves[keys].itertuples(index=False, name=None)])
    rows = curves[curves["_label"].notna()]
    if rows.empty:
        return None
    colors = _colors(list(labels))
    figure = Figure(figsize=(FULL_WIDTH, 2.5), layout="constrained")
    by_iteration, by_time, nfe_axes = (figure.add_subplot(1, 3, i) for i in (1, 2, 3))
    losses: list[float] = []
    for label, group in rows.groupby("_label", sort=False):
        color = colors[label]
        per_cell = [c.sort_values("iteration").set_index("iteration") for _, c in group.groupby(keys, sort=False)]
        steps = np.asarray(sorted(set().union(*(c.index for c in per_cell))), dtype=float)

        def stack(column: str, per_cell: list[pd.DataFrame] = per_cell, steps: np.ndarray = steps) -> np.ndarray:
            return np.vstack([c[column].reindex(steps).to_numpy(float) if column in c else np.full(len(steps), np.nan)
                              for c in per_cell])

        loss = stack("loss_nats")
        losses.extend(v for v in loss.ravel() if np.isfinite(v))
        _seed_band(by_iteration, steps, loss, color, f"{label} (n={len(per_cell)})")
        if "elapsed_s" in group:
            _seed_band(by_time, np.nanmean(stack("elapsed_s"), axis=0), loss, color, None)
        if "val_nll" in group and group["val_nll"].notna().any():
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # iterations without validation: all NaN
                validation = np.nanmean(stack("val_nll"), axis=0)
            shown = np.isfinite(validation)
            by_iteration.plot(steps[shown], validation[shown], "o--", color=color, markersize=3, linewidth=0.7,
                              label=f"{label}: validation NLL")
        if "nfe_forward" in group:
            _seed_band(nfe_axes, steps, stack("nfe_forward"), color, None)
    if losses:
        low, high = float(np.min(losses)), float(np.percentile(losses, 98))
        pad = 0.05 * (high - low) if high > low else 0.5
        for axes in (by_iteration, by_time):
            axes.set_ylim(low - pad, high + pad)
    by_iteration.set_xlabel("iteration")
    by_iteration.set_ylabel("training loss [nats per sample]")
    by_time.set_xlabel("training wall-clock [s]")
    nfe_axes.set_xlabel("iteration")
    nfe_axes.set_ylabel("NFE per forward solve [evaluations]")
    for axes in (by_iteration, nfe_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axes in (by_iteration, by_time, nfe_axes):
        axes.grid(True, alpha=0.3)
    by_iteration.legend(frameon=False)
    figure.suptitle(f"{mathtext_escape(title)} (mean ± 1 std over seeds)", fontsize=8)
    return _save(figure, path)


@_styled
def plot_density(cells: pd.DataFrame, run_dirs: Mapping[str, Path], path: Path, title: str = ""
                 ) -> tuple[Path | None, list[str]]:
    """Data, then per cell the density the field defines (reference solve), the density its solver reports
    (when recorded) and model samples, with axes in data units and one colour bar; notes for missing files."""
    notes: list[str] = []
    panels: list[tuple[str, DensityArtifacts]] = []
    labels = config_labels(cells)
    missing = 0
    for index, row in cells.iterrows():
        if row.get("status") != "done":
            continue
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
            if not two_d or any(isinstance(v, (int, float)) and math.isfinite(v) for v in two_d):
                missing += 1  # a 2D cell (it has a mass) or a run without mass columns
            continue
        panels.append((f"{labels.loc[index]}, seed {format_value(row.get('seed'))}", artifacts))
    if missing:
        notes.append(f"{title or 'density'}: {missing} 2D cell(s) have no {DENSITY_DIR}/<cell_id>{DENSITY_SUFFIX} "
                     "(made before the runner saved density artifacts): no density panel for them")
    if not panels:
        return None, notes
    if len(panels) > MAX_DENSITY_PANELS:
        notes.append(f"{title}: density panels for the first {MAX_DENSITY_PANELS} of {len(panels)} cells only")
        panels = panels[:MAX_DENSITY_PANELS]
    rows_per_block = 3 if any(art.log_prob_solver is not None for _, art in panels) else 2
    per_row = min(4, len(panels) + 1)
    blocks = math.ceil((len(panels) + 1) / per_row)
    figure = Figure(figsize=(FULL_WIDTH, 1.9 * rows_per_block * blocks + 0.3), layout="constrained")
    first = panels[0][1]
    extent = (float(first.grid_x[0]), float(first.grid_x[-1]), float(first.grid_y[0]), float(first.grid_y[-1]))
    densities = [np.exp(np.clip(art.log_prob.astype(np.float64), -50, 50)) for _, art in panels]
    top_value = max(float(np.percentile(d, 99.5)) for d in densities) or 1.0  # one colour scale for every panel

    def axes_at(slot: int, row: int) -> Any:
        block, column = divmod(slot, per_row)
        axes = figure.add_subplot(rows_per_block * blocks, per_row,
                                  (rows_per_block * block + row) * per_row + column + 1)
        axes.set_aspect("equal")
        axes.tick_params(length=2, pad=1)
        return axes

    data = first.data
    top = axes_at(0, 0)
    top.hist2d(data[:, 0], data[:, 1], bins=60, range=[extent[:2], extent[2:]], cmap="viridis")
    top.set_title("data (test split)")
    bottom = axes_at(0, rows_per_block - 1)
    bottom.scatter(data[:, 0], data[:, 1], s=1, color="black", alpha=0.5)
    bottom.set_xlim(extent[:2])
    bottom.set_ylim(extent[2:])
    bottom.set_title("data samples")
    image = None
    for slot, ((label, art), density) in enumerate(zip(panels, densities, strict=True), start=1):
        box = (float(art.grid_x[0]), float(art.grid_x[-1]), float(art.grid_y[0]), float(art.grid_y[-1]))
        top = axes_at(slot, 0)
        image = top.imshow(density.T, origin="lower", extent=box, cmap="viridis", aspect="equal",
                           interpolation="nearest", vmin=0.0, vmax=top_value)
        top.set_title(f"{label}\nreference-solve density", fontsize=7)
        if rows_per_block == 3:
            middle = axes_at(slot, 1)
            if art.log_prob_solver is not None:
                own = np.exp(np.clip(art.log_prob_solver.astype(np.float64), -50, 50))
                middle.imshow(own.T, origin="lower", extent=box, cmap="viridis", aspect="equal",
                              interpolation="nearest", vmin=0.0, vmax=top_value)
                middle.set_title("its solver's density", fontsize=7)
            else:
                middle.set_axis_off()
        bottom = axes_at(slot, rows_per_block - 1)
        bottom.scatter(art.data[:, 0], art.data[:, 1], s=1, color="lightgrey", alpha=0.6)
        bottom.scatter(art.samples[:, 0], art.samples[:, 1], s=1, color="tab:red", alpha=0.7)
        bottom.set_xlim(box[:2])
        bottom.set_ylim(box[2:])
        bottom.set_title("model samples (red)")
    if image is not None:
        bar = figure.colorbar(image, ax=figure.axes, shrink=0.5)
        bar.set_label("density [1/data unit²]")
    figure.suptitle(f"{mathtext_escape(title)} (axes in data units; one colour scale)", fontsize=8)
    return _save(figure, path), notes


def write_plots(out_dir: str | Path, cells: pd.DataFrame, curves: pd.DataFrame | None = None,
                run_dirs: Mapping[str, Path] | None = None) -> PlotResult:
    """Write every plot of ``cells`` (and ``curves``) into ``out_dir/plots/``; see the module docstring.

    ``run_dirs`` maps the values of a ``run`` column to the run folders that hold density artifacts;
    without it, the artifacts are looked for in ``out_dir``.
    """
    out = Path(out_dir) / PLOTS_DIR
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
