"""Plots of finished runs as PNG files, on matplotlib's Agg canvas (no display, no global backend change).

:func:`write_plots` writes, per dataset, into ``<out>/plots/``:

- ``pareto_nfe_<dataset>.png`` — test NLL (reference solve) against forward NFE per training
  solve, one point per cell, the Pareto front (lower cost and lower NLL) marked;
- ``pareto_time_<dataset>.png`` — the same against the training wall-clock;
- ``curves_<dataset>.png`` — training loss and forward NFE per iteration (from ``curves.parquet``);
- ``density_<dataset>.png`` — for 2D data: the test data, then per cell the learned density on a
  grid and samples from the model — drawn from ``<run>/density/<cell_id>.npz`` files (see
  :func:`write_density_artifacts`); a cell without that file is left out with a note.

The density artifacts are written and read by :mod:`cnfbench.run_folder`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnfbench.families import AXIS_KEYS
from cnfbench.reports.aggregate import axis_labels, format_value, varying_axes
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

_DPI = 110


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
    FigureCanvasAgg(figure)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight"))
    return path


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
    """A short label per row naming its configuration within one dataset (the axes that vary)."""
    axes = [a for a in varying_axes(cells, [DATASET.key]) if a != DATASET.key] \
        or [a for a in AXIS_KEYS if a != DATASET.key]
    parts = [axis_labels(cells, a) for a in axes]
    return pd.Series([" / ".join(str(p.loc[i]) for p in parts) for i in cells.index], index=cells.index)


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    unique = list(dict.fromkeys(labels))
    cmap = colormaps["tab10" if len(unique) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(unique)}


def _dataset_groups(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    labels = axis_labels(cells, DATASET.key)
    return [(str(name), cells.loc[labels == name]) for name in dict.fromkeys(labels)]


# --------------------------------------------------------------------------------------------------- plots

def plot_pareto(cells: pd.DataFrame, x: str, path: Path, y: str = "nll_ref", title: str = "") -> Path | None:
    """NLL against a cost (``x``), one point per finished cell, Pareto front marked; ``None`` without points."""
    done = cells[(cells["status"] == "done")] if "status" in cells else cells
    if x not in done or y not in done:
        return None
    xs = pd.to_numeric(done[x], errors="coerce")
    ys = pd.to_numeric(done[y], errors="coerce")
    keep = np.isfinite(xs) & np.isfinite(ys)
    done, xs, ys = done[keep], xs[keep].to_numpy(float), ys[keep].to_numpy(float)
    if not len(done):
        return None
    labels = config_labels(done)
    colors = _colors(list(labels))
    figure = Figure(figsize=(6.4, 4.4))
    axes = figure.add_subplot()
    for label in dict.fromkeys(labels):
        mask = (labels == label).to_numpy()
        axes.scatter(xs[mask], ys[mask], color=colors[label], label=label, s=36, alpha=0.85, zorder=3)
    front = pareto_front(list(xs), list(ys))
    fx, fy = xs[front], ys[front]
    axes.step(fx, fy, where="post", color="black", linewidth=1.2, zorder=2, label="Pareto front")
    axes.scatter(fx, fy, s=110, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
    if "entropy" in done and done["entropy"].notna().any():
        entropy = float(pd.to_numeric(done["entropy"], errors="coerce").mean())
        axes.axhline(entropy, color="grey", linestyle="--", linewidth=1, label=f"true entropy {entropy:.3f}")
    if xs.min() > 0 and xs.max() / xs.min() > 5:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        axes.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        axes.xaxis.set_major_formatter(plain)
        # label the minor ticks (2, 3, 5, ...) only when the axis spans less than about a decade
        axes.xaxis.set_minor_formatter(plain if xs.max() / xs.min() < 12 else NullFormatter())
    axes.set_xlabel(metric_info(x).header)
    axes.set_ylabel(metric_info(y).header)
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    return _save(figure, path)


def plot_curves(cells: pd.DataFrame, curves: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Training loss and forward NFE per iteration, one line per cell (seeds share a colour)."""
    if curves.empty or "cell_id" not in curves or "iteration" not in curves:
        return None
    keys = ["run", "cell_id"] if "run" in cells and "run" in curves else ["cell_id"]
    labels = config_labels(cells)
    lookup = {tuple(row): labels.loc[i] for i, row in zip(cells.index, cells[keys].itertuples(index=False,
                                                                                                name=None),
                                                           strict=True)}
    rows = curves[[tuple(r) in lookup for r in curves[keys].itertuples(index=False, name=None)]]
    if rows.empty:
        return None
    colors = _colors(list(labels))
    figure = Figure(figsize=(11, 4.0))
    loss_axes, nfe_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    seen: set[str] = set()
    losses = []
    for key, curve in rows.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        label = lookup[key]
        curve = curve.sort_values("iteration")
        legend = label if label not in seen else None
        seen.add(label)
        if "loss_nats" in curve:
            loss_axes.plot(curve["iteration"], curve["loss_nats"], color=colors[label], linewidth=1, alpha=0.8,
                           label=legend)
            losses.extend(v for v in curve["loss_nats"] if np.isfinite(v))
        if "nfe_forward" in curve:
            nfe_axes.plot(curve["iteration"], curve["nfe_forward"], color=colors[label], linewidth=1, alpha=0.8,
                          label=legend)
    if losses:
        low, high = float(np.min(losses)), float(np.percentile(losses, 98))
        pad = 0.05 * (high - low) if high > low else 0.5
        loss_axes.set_ylim(low - pad, high + pad)
    loss_axes.set_xlabel("iteration")
    loss_axes.set_ylabel("training loss (batch NLL, training trace) [nats]")
    nfe_axes.set_xlabel("iteration")
    nfe_axes.set_ylabel("NFE per forward solve [evaluations]")
    for axes in (loss_axes, nfe_axes):
        axes.grid(True, alpha=0.3)
    loss_axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def plot_density(cells: pd.DataFrame, run_dirs: Mapping[str, Path], path: Path, title: str = ""
                 ) -> tuple[Path | None, list[str]]:
    """Data, then per cell its learned density (top) and model samples (bottom); notes for missing files."""
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
    per_row = min(6, len(panels) + 1)
    blocks = math.ceil((len(panels) + 1) / per_row)
    figure = Figure(figsize=(2.3 * per_row, 4.6 * blocks))
    first = panels[0][1]
    extent = (float(first.grid_x[0]), float(first.grid_x[-1]), float(first.grid_y[0]), float(first.grid_y[-1]))

    def axes_at(slot: int, top: bool) -> Any:
        block, column = divmod(slot, per_row)
        axes = figure.add_subplot(2 * blocks, per_row, (2 * block + (0 if top else 1)) * per_row + column + 1)
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_aspect("equal")
        return axes

    data = first.data
    top = axes_at(0, True)
    top.hist2d(data[:, 0], data[:, 1], bins=60, range=[extent[:2], extent[2:]], cmap="viridis")
    top.set_title("data (test split)", fontsize=8)
    bottom = axes_at(0, False)
    bottom.scatter(data[:, 0], data[:, 1], s=2, color="black", alpha=0.5)
    bottom.set_xlim(extent[:2])
    bottom.set_ylim(extent[2:])
    bottom.set_title("data samples", fontsize=8)
    for slot, (label, art) in enumerate(panels, start=1):
        box = (float(art.grid_x[0]), float(art.grid_x[-1]), float(art.grid_y[0]), float(art.grid_y[-1]))
        density = np.exp(np.clip(art.log_prob.astype(np.float64), -50, 50))
        top = axes_at(slot, True)
        top.imshow(density.T, origin="lower", extent=box, cmap="viridis", aspect="equal", interpolation="nearest")
        top.set_title(f"{label}\nlearned density", fontsize=7)
        bottom = axes_at(slot, False)
        bottom.scatter(art.data[:, 0], art.data[:, 1], s=2, color="lightgrey", alpha=0.6)
        bottom.scatter(art.samples[:, 0], art.samples[:, 1], s=2, color="tab:red", alpha=0.7)
        bottom.set_xlim(box[:2])
        bottom.set_ylim(box[2:])
        bottom.set_title("model samples (red)", fontsize=7)
    figure.suptitle(title, fontsize=10)
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
