"""The interactive part of the HTML report: one plotly chart with selectors, working offline.

:func:`explorer_data` turns cell rows into configurations (seeds aggregated: mean, and the standard deviation of
each metric where two or more seeds have a value, the number of seeds, and every component's full spec for the
hover), and :func:`explorer` gives the chart: selectors for the dataset, the metric on each axis (each named with
its unit from the column catalogue, a per-row unit such as the training loss's resolved from the rows) and a
log/linear x axis, starting on the axes the tables and static plots use (test NLL of the reference solve against
NFE per training solve); one trace per configuration label (:func:`cnfbench.labels.row_labels`: the axes that
vary), so that the legend toggles them; error bars of one standard deviation only where a configuration has two or
more seeds; hover figures with the catalogue's decimals and unit, ``±`` only with two or more seeds. A
configuration with a flagged cell is drawn with an open marker and its hover says why.

plotly.js is inlined, so the page loads nothing from the network: the partial bundle ``plotly.js-basic-dist-min``
(scatter, bar and pie traces; the chart needs only scatter with error bars), vendored with its MIT license under
``assets/`` (:data:`PLOTLY_JS`), 1.2 MB where the full bundle of the ``plotly`` package is 4.8 MB.

The data stay raw (they are the selectors' values and the keys the script filters by) and travel as JSON escaped
for a ``<script>`` element (:func:`~cnfbench.reports.escape.script_json`). Plotly reads a subset of HTML in trace
names, titles, axis titles and hover text (``<span style=...>``, ``<a href=...>``), so the script passes every
string it hands to Plotly through ``shown``, which writes ``& < > " ' $ %`` as numeric character references: Plotly
decodes them to the literal characters, and no ``$`` pair turns to math nor ``%{...}`` to a hover substitution.
The selectors' options are set as text, never parsed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pandas as pd

from cnfbench.families import GRID_AXES
from cnfbench.labels import row_labels
from cnfbench.reports.aggregate import axis_labels, flagged, format_value
from cnfbench.reports.escape import html_escape, script_json
from cnfbench.reports.metrics import DATASET, metric_info, row_units
from cnfbench.reports.sharing import sharing_note

PLOTLY_JS = "assets/plotly-basic.min.js"
"""The vendored plotly.js bundle (``plotly.js-basic-dist-min``), relative to this package; its license is
``assets/plotly-basic.LICENSE``."""

Y_METRICS = ("nll_ref", "nll", "excess_nll", "bits_per_dim", "nll_ref_per_dim", "mass", "mass_is",
             "logp_error_mean", "logp_error_max", "energy_distance", "sliced_w2", "w2", "mmd2", "c2st_accuracy",
             "ks_mean", "path_energy_normalized", "roundtrip_error", "reverse_kl", "final_train_loss")
"""Metrics the chart offers on its y axis (those present in the cells), in this order; the first present is
shown first (the test NLL of the reference solve, as in the tables and the static plots)."""

X_METRICS = ("nfe_forward_mean", "train_time_s", "nfe_eval", "nfe_sample", "eval_time_s", "iter_time_median_s",
             "peak_memory_mib", "n_params")
"""Metrics the chart offers on its x axis (cost), in this order; the first present is shown first (NFE per
training solve, the x axis of the tables' NFE column and of the static NLL-vs-NFE plot)."""

HOVER_COLUMNS = (*(row.spec_column for row in GRID_AXES), "trained_with", "iterations", "batch_size")


def _summary(numbers: pd.Series, scale: float) -> list[float | int | None]:
    """``[mean, std, n]`` in the display unit; the std is ``None`` with fewer than two values (no spread)."""
    n = len(numbers)
    std = float(numbers.std(ddof=1)) * scale if n > 1 else None
    return [float(numbers.mean()) * scale, std, n]


def explorer_data(cells: pd.DataFrame) -> dict[str, Any]:
    """The chart's data: datasets, metrics (label with its unit, unit, decimals, axis), the axes shown first and
    one point per configuration and dataset: its spec as ``[column, value]`` pairs, seeds, ``[mean, std, n]`` per
    metric (std ``None`` below two seeds), the unit of a metric whose unit differs by row, and why it is flagged
    (``""`` when valid); every string raw."""
    done = cells[cells["status"] == "done"] if "status" in cells else cells
    if done.empty:
        return {"datasets": [], "metrics": {}, "defaults": {}, "points": []}
    frame = done.copy()
    frame["_dataset"] = axis_labels(done, DATASET.key)
    frame["_label"] = row_labels(done, leave_out=(DATASET.key,))
    if "trained_with" in done:  # models cnfbench evaluate ran with another solver than they were trained with
        trained = axis_labels(done, "trained_with")
        frame["_label"] = [label if other == "—" else f"{label} (trained with {other})"
                           for label, other in zip(frame["_label"], trained, strict=True)]
    frame["_flagged"] = flagged(done)
    keys = [c for c in HOVER_COLUMNS if c in frame]
    metrics = [m for m in (*Y_METRICS, *X_METRICS)
               if m in frame and pd.to_numeric(frame[m], errors="coerce").notna().any()]
    infos = {m: metric_info(m, done) for m in metrics}
    per_row = [m for m in metrics if len(row_units(done, m)) > 1]
    points = []
    for (dataset, label, *_), group in frame.groupby(["_dataset", "_label", *keys], sort=False, dropna=False):
        first = group.iloc[0]
        values = {}
        for metric in metrics:
            numbers = pd.to_numeric(group[metric], errors="coerce").dropna()
            numbers = numbers[numbers.map(math.isfinite)]
            if len(numbers):
                values[metric] = _summary(numbers, infos[metric].scale)
        units = {metric: unit for metric in per_row for unit in row_units(group, metric)[:1]}
        reasons = list(group.loc[group["_flagged"], "validity_reason"]) if "validity_reason" in group else []
        bad = int(group["_flagged"].sum())
        why = next((r for r in reasons if isinstance(r, str) and r), "the solver's density is not normalized")
        spec = [[column, format_value(first[column])] for column in keys
                if format_value(first[column]) not in ("—", "")]
        points.append({"dataset": str(dataset), "label": str(label), "n": len(group), "spec": spec,
                       "values": values, "units": units,
                       "flagged": (f"{bad} of {len(group)} seeds: {why}" if len(group) > 1 else why) if bad else ""})
    ys = [m for m in metrics if m in Y_METRICS]
    xs = [m for m in metrics if m in X_METRICS]
    return {"datasets": list(dict.fromkeys(frame["_dataset"])),
            "metrics": {m: {"label": infos[m].header, "unit": "" if m in per_row else infos[m].unit,
                            "decimals": infos[m].decimals, "y": m in Y_METRICS} for m in metrics},
            "defaults": {"x": xs[0] if xs else "", "y": ys[0] if ys else ""},
            "points": points}


_SCRIPT = """
(function () {
  const DATA = JSON.parse(document.getElementById('explorer-data').textContent);
  const pick = (id) => document.getElementById(id);
  // no "share chart" button (it uploads the chart to Plotly's cloud), no plotly logo link, no math typesetting
  const CONFIG = {displaylogo: false, responsive: true, showSendToCloud: false, typesetMath: false};
  const shown = (text) => String(text).replace(/[&<>"'$%]/g, (c) => '&#' + c.charCodeAt(0) + ';');
  function fill(select, names, chosen) {
    for (const name of names) {
      const option = document.createElement('option');
      option.value = name; option.textContent = DATA.metrics[name] ? DATA.metrics[name].label : name;
      if (name === chosen) option.selected = true;
      select.appendChild(option);
    }
  }
  const names = Object.keys(DATA.metrics);
  const ys = names.filter((n) => DATA.metrics[n].y), xs = names.filter((n) => !DATA.metrics[n].y);
  fill(pick('explorer-dataset'), DATA.datasets, DATA.datasets[0]);
  fill(pick('explorer-y'), ys, DATA.defaults.y);
  fill(pick('explorer-x'), xs, DATA.defaults.x);
  // a figure as the tables write it: the catalogue's decimals, '± std' only with two or more seeds, its unit
  function figure(point, metric) {
    const [mean, std, n] = point.values[metric], decimals = DATA.metrics[metric].decimals;
    const unit = point.units[metric] || DATA.metrics[metric].unit;
    let text = mean.toFixed(decimals) + (std === null ? '' : ' ± ' + std.toFixed(decimals)) + (unit ? ' ' + unit : '');
    if (n !== point.n) text += ' (n=' + n + ')';
    return shown(text);
  }
  const plain = (metric) => shown(DATA.metrics[metric].label.replace(/ \\[[^\\]]*\\]$/, ''));
  function draw() {
    const dataset = pick('explorer-dataset').value, y = pick('explorer-y').value, x = pick('explorer-x').value;
    const points = DATA.points.filter((p) => p.dataset === dataset && p.values[x] && p.values[y]);
    const labels = [...new Set(points.map((p) => p.label))];
    const spread = (metric) => (p) => p.values[metric][1];
    const traces = labels.map((label) => {
      const mine = points.filter((p) => p.label === label);
      const bars = (metric) => ({type: 'data', array: mine.map(spread(metric)), thickness: 1,
                                 visible: mine.some((p) => spread(metric)(p) !== null)});
      return {
        type: 'scatter', mode: 'markers', name: shown(label),
        marker: {size: 10, symbol: mine.map((p) => (p.flagged ? 'circle-open' : 'circle'))},
        x: mine.map((p) => p.values[x][0]), y: mine.map((p) => p.values[y][0]),
        error_x: bars(x), error_y: bars(y),
        text: mine.map((p) => [...p.spec.map(([column, value]) => shown(column) + ': ' + shown(value)),
                               'seeds: ' + p.n, plain(x) + ': ' + figure(p, x), plain(y) + ': ' + figure(p, y),
                               ...(p.flagged ? ['flagged: ' + shown(p.flagged)] : [])].join('<br>')),
        hovertemplate: '%{text}<extra>' + shown(label) + '</extra>'
      };
    });
    const counts = points.map((p) => Math.min(p.values[x][2], p.values[y][2]));
    const spreadText = counts.every((n) => n >= 2) ? 'mean ± 1 std over seeds'
      : counts.every((n) => n < 2) ? 'one seed per configuration'
      : 'mean ± 1 std over seeds where a configuration has 2 or more';
    const layout = {
      title: {text: shown(dataset) + ': ' + spreadText}, hovermode: 'closest', height: 520,
      xaxis: {title: {text: shown(DATA.metrics[x].label)}, type: pick('explorer-logx').checked ? 'log' : 'linear'},
      yaxis: {title: {text: shown(DATA.metrics[y].label)}},
      // below the plot on a narrow screen, where beside it would squeeze the plot
      legend: narrow ? {title: {text: 'configuration (click to toggle)'}, orientation: 'h', y: -0.3, yanchor: 'top'}
                                      : {title: {text: 'configuration (click to toggle)'}}
    };
    Plotly.react('explorer-plot', traces, layout, CONFIG);
  }
  for (const id of ['explorer-dataset', 'explorer-y', 'explorer-x', 'explorer-logx']) {
    pick(id).addEventListener('change', draw);
  }
  let narrow = window.innerWidth < 720;
  window.addEventListener('resize', () => { if ((window.innerWidth < 720) !== narrow) { narrow = !narrow; draw(); } });
  draw();
})();
"""


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """The vendored plotly.js bundle (:data:`PLOTLY_JS`), as the page inlines it."""
    return resources.files("cnfbench.reports").joinpath(PLOTLY_JS).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Explorer:
    """The chart as a page embeds it: its markup (selectors, the plot's element, the data as a JSON data block, a
    note when its cost axes mix thread counts or concurrency) and the inline scripts that draw it, in order, which the
    page writes after the markup and lists by hash in its Content-Security-Policy."""

    markup: str
    scripts: tuple[str, ...] = ()


def explorer(cells: pd.DataFrame) -> Explorer:
    """The chart and its selectors, with plotly.js and the data inlined (a sentence, and no script, when no cell
    finished)."""
    data = explorer_data(cells)
    if not data["points"]:
        return Explorer("<p>No finished cell to plot.</p>")
    if not (data["defaults"]["x"] and data["defaults"]["y"]):
        return Explorer("<p>Nothing to plot: the chart needs a cost (NFE or seconds) and a figure of merit (a test "
                        "NLL, a mass, a solver error or a sample distance) with values.</p>")
    costs = [name for name in data["metrics"] if metric_info(name).machine]
    notes = [note for note in [sharing_note(cells, costs)] if note]
    if any(point["flagged"] for point in data["points"]):
        notes.append("An open marker is a configuration with a flagged cell: its solver's density is not normalized "
                     "(hover for why), so its figures are not to be trusted.")
    return Explorer("\n".join([
        '<div class="explorer">',
        *(f'<p class="warnings">{html_escape(note)}</p>' for note in notes),
        '<div class="controls">',
        '<label>dataset <select id="explorer-dataset"></select></label>',
        '<label>y <select id="explorer-y"></select></label>',
        '<label>x <select id="explorer-x"></select></label>',
        '<label><input type="checkbox" id="explorer-logx"> log x</label>',
        "</div>",
        '<div id="explorer-plot"></div>',
        "</div>",
        f'<script type="application/json" id="explorer-data">{script_json(data)}</script>',
    ]), (plotly_js(), _SCRIPT))
