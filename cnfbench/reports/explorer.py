"""The interactive part of the HTML report: one plotly chart with selectors, working offline.

:func:`explorer_data` turns cell rows into configurations (seeds aggregated: mean and standard deviation of
each metric, the number of seeds, and every component's full spec for the hover), and :func:`explorer` gives
the chart: selectors for the dataset, the metric on each axis and a log/linear x axis; one trace per
configuration label (the axes that vary), so that the legend toggles them; error bars of one standard
deviation over the seeds. plotly.js is inlined, so the page loads nothing from the network.

The data stay raw (they are the selectors' values and the keys the script filters by) and travel as JSON escaped
for a ``<script>`` element (:func:`~cnfbench.reports.escape.script_json`). Plotly reads a subset of HTML in trace
names, titles, axis titles and hover text (``<span style=...>``, ``<a href=...>``), so the script passes every
string it hands to Plotly through ``shown``, which writes ``& < > " ' $ %`` as numeric character references: Plotly
decodes them to the literal characters, and no ``$`` pair turns to math nor ``%{...}`` to a hover substitution.
The selectors' options are set as text, never parsed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cnfbench.families import GRID_AXES
from cnfbench.reports.aggregate import axis_labels, format_value
from cnfbench.reports.escape import html_escape, script_json
from cnfbench.reports.metrics import metric_info
from cnfbench.reports.sharing import sharing_note

Y_METRICS = ("nll_ref", "nll", "excess_nll", "bits_per_dim", "nll_ref_per_dim", "mass", "mass_is",
             "energy_distance", "sliced_w2", "reverse_kl", "final_train_loss")
"""Metrics the chart offers on its y axis (those present in the cells), in this order."""

X_METRICS = ("nfe_eval", "nfe_forward_mean", "nfe_sample", "train_time_s", "eval_time_s", "iter_time_median_s",
             "peak_memory_mib", "n_params")
"""Metrics the chart offers on its x axis (cost), in this order."""

HOVER_COLUMNS = (*(row.spec_column for row in GRID_AXES), "trained_with", "iterations", "batch_size")


def explorer_data(cells: pd.DataFrame) -> dict[str, Any]:
    """The chart's data: datasets, metrics (label and unit) and one point per configuration and dataset, with its
    spec as ``[column, value]`` pairs; every string raw."""
    done = cells[cells["status"] == "done"] if "status" in cells else cells
    if done.empty:
        return {"datasets": [], "metrics": {}, "points": []}
    axes = [row.key for row in GRID_AXES if row.key != "dataset" and row.key in done
            and axis_labels(done, row.key).nunique() > 1]
    frame = done.copy()
    frame["_dataset"] = axis_labels(done, "dataset")
    frame["_label"] = [" · ".join(parts) or "all cells" for parts in
                       zip(*(axis_labels(done, axis) for axis in axes), strict=True)] if axes else "all cells"
    keys = [c for c in HOVER_COLUMNS if c in frame]
    metrics = [m for m in (*Y_METRICS, *X_METRICS)
               if m in frame and pd.to_numeric(frame[m], errors="coerce").notna().any()]
    points = []
    for (dataset, label, *_), group in frame.groupby(["_dataset", "_label", *keys], sort=False, dropna=False):
        first = group.iloc[0]
        values = {}
        for metric in metrics:
            numbers = pd.to_numeric(group[metric], errors="coerce").dropna()
            numbers = numbers[numbers.map(math.isfinite)]
            if len(numbers):
                scale = metric_info(metric).scale
                std = float(numbers.std(ddof=1)) * scale if len(numbers) > 1 else 0.0
                values[metric] = [float(numbers.mean()) * scale, std]
        spec = [[column, format_value(first[column])] for column in keys
                if format_value(first[column]) not in ("—", "")]
        points.append({"dataset": str(dataset), "label": str(label), "n": len(group), "spec": spec,
                       "values": values})
    return {"datasets": list(dict.fromkeys(frame["_dataset"])),
            "metrics": {m: {"label": metric_info(m).header, "y": m in Y_METRICS} for m in metrics},
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
  fill(pick('explorer-y'), ys, ys[0]);
  fill(pick('explorer-x'), xs, xs.includes('nfe_eval') ? 'nfe_eval' : xs[0]);
  function draw() {
    const dataset = pick('explorer-dataset').value, y = pick('explorer-y').value, x = pick('explorer-x').value;
    const points = DATA.points.filter((p) => p.dataset === dataset && p.values[x] && p.values[y]);
    const labels = [...new Set(points.map((p) => p.label))];
    const traces = labels.map((label) => {
      const mine = points.filter((p) => p.label === label);
      return {
        type: 'scatter', mode: 'markers', name: shown(label), marker: {size: 10},
        x: mine.map((p) => p.values[x][0]), y: mine.map((p) => p.values[y][0]),
        error_x: {type: 'data', array: mine.map((p) => p.values[x][1]), visible: true, thickness: 1},
        error_y: {type: 'data', array: mine.map((p) => p.values[y][1]), visible: true, thickness: 1},
        text: mine.map((p) => [...p.spec.map(([column, value]) => shown(column) + ': ' + shown(value)),
                               'seeds: ' + p.n].join('<br>')),
        hovertemplate: '%{text}<br>' + shown(DATA.metrics[x].label) + ': %{x}<br>' + shown(DATA.metrics[y].label) +
                       ': %{y}<extra>' + shown(label) + '</extra>'
      };
    });
    const layout = {
      title: {text: shown(dataset) + ': mean ± 1 std over seeds'}, hovermode: 'closest', height: 520,
      xaxis: {title: {text: shown(DATA.metrics[x].label)}, type: pick('explorer-logx').checked ? 'log' : 'linear'},
      yaxis: {title: {text: shown(DATA.metrics[y].label)}}, legend: {title: {text: 'configuration (click to toggle)'}}
    };
    Plotly.react('explorer-plot', traces, layout, CONFIG);
  }
  for (const id of ['explorer-dataset', 'explorer-y', 'explorer-x', 'explorer-logx']) {
    pick(id).addEventListener('change', draw);
  }
  draw();
})();
"""


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
    from plotly.offline import get_plotlyjs

    data = explorer_data(cells)
    if not data["points"]:
        return Explorer("<p>No finished cell to plot.</p>")
    costs = [name for name in data["metrics"] if metric_info(name).machine]
    note = sharing_note(cells, costs)
    return Explorer("\n".join([
        '<div class="explorer">',
        *([f'<p class="warnings">{html_escape(note)}</p>'] if note else []),
        '<label>dataset <select id="explorer-dataset"></select></label>',
        '<label>y <select id="explorer-y"></select></label>',
        '<label>x <select id="explorer-x"></select></label>',
        '<label><input type="checkbox" id="explorer-logx"> log x</label>',
        '<div id="explorer-plot"></div>',
        "</div>",
        f'<script type="application/json" id="explorer-data">{script_json(data)}</script>',
    ]), (get_plotlyjs(), _SCRIPT))
