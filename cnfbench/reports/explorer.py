"""The interactive part of the HTML report: one plotly chart with selectors, working offline.

:func:`explorer_data` turns cell rows into configurations (seeds aggregated: mean and standard deviation of
each metric, the number of seeds, and every component's full spec for the hover), and :func:`explorer_html`
writes the chart: selectors for the dataset, the metric on each axis and a log/linear x axis; one trace per
configuration label (the axes that vary), so that the legend toggles them; error bars of one standard
deviation over the seeds. plotly.js is inlined, so the page loads nothing from the network.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import pandas as pd

from cnfbench.families import GRID_AXES
from cnfbench.reports.aggregate import axis_labels, format_value
from cnfbench.reports.metrics import metric_info

Y_METRICS = ("nll_ref", "nll", "excess_nll", "bits_per_dim", "nll_ref_per_dim", "mass", "mass_is",
             "energy_distance", "sliced_w2", "reverse_kl", "final_train_loss")
"""Metrics the chart offers on its y axis (those present in the cells), in this order."""

X_METRICS = ("nfe_eval", "nfe_forward_mean", "nfe_sample", "train_time_s", "eval_time_s", "iter_time_median_s",
             "peak_memory_mib", "n_params")
"""Metrics the chart offers on its x axis (cost), in this order."""

HOVER_COLUMNS = (*(row.spec_column for row in GRID_AXES), "trained_with", "iterations", "batch_size")


def explorer_data(cells: pd.DataFrame) -> dict[str, Any]:
    """The chart's data: datasets, metrics (label and unit) and one point per configuration and dataset."""
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
        spec = "<br>".join(f"{column}: {html.escape(format_value(first[column]))}" for column in keys
                           if format_value(first[column]) not in ("—", ""))
        points.append({"dataset": str(dataset), "label": str(label), "n": len(group), "spec": spec,
                       "values": values})
    return {"datasets": list(dict.fromkeys(frame["_dataset"])),
            "metrics": {m: {"label": metric_info(m).header, "y": m in Y_METRICS} for m in metrics},
            "points": points}


_SCRIPT = """
(function () {
  const DATA = JSON.parse(document.getElementById('explorer-data').textContent);
  const pick = (id) => document.getElementById(id);
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
        type: 'scatter', mode: 'markers', name: label, marker: {size: 10},
        x: mine.map((p) => p.values[x][0]), y: mine.map((p) => p.values[y][0]),
        error_x: {type: 'data', array: mine.map((p) => p.values[x][1]), visible: true, thickness: 1},
        error_y: {type: 'data', array: mine.map((p) => p.values[y][1]), visible: true, thickness: 1},
        text: mine.map((p) => p.spec + '<br>seeds: ' + p.n),
        hovertemplate: '%{text}<br>' + DATA.metrics[x].label + ': %{x}<br>' + DATA.metrics[y].label +
                       ': %{y}<extra>' + label + '</extra>'
      };
    });
    const layout = {
      title: {text: dataset + ': mean ± 1 std over seeds'}, hovermode: 'closest', height: 520,
      xaxis: {title: {text: DATA.metrics[x].label}, type: pick('explorer-logx').checked ? 'log' : 'linear'},
      yaxis: {title: {text: DATA.metrics[y].label}}, legend: {title: {text: 'configuration (click to toggle)'}}
    };
    Plotly.react('explorer-plot', traces, layout, {displaylogo: false, responsive: true});
  }
  for (const id of ['explorer-dataset', 'explorer-y', 'explorer-x', 'explorer-logx']) {
    pick(id).addEventListener('change', draw);
  }
  draw();
})();
"""


def explorer_html(cells: pd.DataFrame) -> str:
    """The chart and its selectors, with plotly.js and the data inlined (empty when no cell finished)."""
    from plotly.offline import get_plotlyjs

    data = explorer_data(cells)
    if not data["points"]:
        return "<p>No finished cell to plot.</p>"
    payload = json.dumps(data).replace("</", "<\\/")
    return "\n".join([
        '<div class="explorer">',
        '<label>dataset <select id="explorer-dataset"></select></label>',
        '<label>y <select id="explorer-y"></select></label>',
        '<label>x <select id="explorer-x"></select></label>',
        '<label><input type="checkbox" id="explorer-logx"> log x</label>',
        '<div id="explorer-plot"></div>',
        "</div>",
        f'<script type="application/json" id="explorer-data">{payload}</script>',
        f"<script>{get_plotlyjs()}</script>",
        f"<script>{_SCRIPT}</script>",
    ])
