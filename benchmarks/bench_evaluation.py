#!/usr/bin/env python
"""Evaluation against training: where a cell's wall-clock goes after its model is trained, by input and by metric.

Runs one cell R times with the real command (``cnfbench run``, default executor, a fresh run folder each time)
twice per repeat: once with the default metrics (**after** #24: what the summary and the validity flag read,
each input computed once) and once with ``--metrics`` set to what every cell computed **before** #24 (the same
numbers as the old fixed sequence: the default metrics plus the reference mass grid, the two sample distances,
the round trip and the density plots). It reads the phase timings every row records — each input's seconds
(``eval_time_s``, ``ref_time_s``, ``mass_time_s``, ``mass_ref_time_s``, ``sample_time_s``,
``ref_sample_time_s``, ``mass_is_time_s``) and the rest of the cell (``cell_time_s`` less training and the
inputs: building, the metrics themselves, the density artifacts, saving the model) — as medians over the repeats,
in seconds and as a fraction of the cell's training time, side by side.

Then, in this process and on the last repeat's trained model, it times every built-in metric's own computation
(its inputs computed once beforehand, as the plan does), so that the cost of a metric beyond its inputs is
visible too: ``c2st`` trains classifiers, ``w2`` solves an exact transport problem.

    python benchmarks/bench_evaluation.py [--repeats R] [--cell "RUN OPTIONS"] [--threads T]

The default cell is the README's Euler cell (``--solver euler``, every other option at its default).
Exit status: 0, or 2 for a bad command line; a cell that does not finish is reported and ends the run with 1.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

INPUTS = (
    ("eval_time_s", "test pass, row's solver (eval)"),
    ("ref_time_s", "test pass, reference solve (ref)"),
    ("mass_time_s", "mass grid, row's solver (grid)"),
    ("mass_ref_time_s", "mass grid, reference solve (grid_ref)"),
    ("sample_time_s", "sampling solve (sample)"),
    ("ref_sample_time_s", "reference samples and their density (ref_sample)"),
    ("mass_is_time_s", "row's solver on the reference samples (ref_sample_eval)"),
)
"""The inputs a row times, with what each is."""

BEFORE = "nll,nll_ref,logp_error,entropy,reverse_kl,mass,mass_ref,mass_is,energy_distance,sliced_w2,roundtrip," \
         "density_plot"
"""What every cell computed up to #24, as metrics."""


def run_once(cell: list[str], out: Path, name: str, threads: int | None, metrics: str | None) -> dict[str, float]:
    """One run of the cell into ``out/name``; its row's timings."""
    command = [sys.executable, "-m", "cnfbench", "run", *cell, "--out", str(out), "--name", name, "--quiet"]
    if metrics:
        command += ["--metrics", metrics]
    if threads:
        command += ["--executor", f"process[threads={threads}]"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the cell failed (exit {done.returncode}): {done.stderr.strip()[-400:]}")
    row = pd.read_parquet(out / name / "cells.parquet").iloc[0]
    if row["status"] != "done":
        print(f"the cell ended {row['status']}: {row['reason']}", file=sys.stderr)
        raise SystemExit(1)
    return {key: float(row.get(key, float("nan"))) for key in
            ("train_time_s", "cell_time_s", *(phase for phase, _ in INPUTS))}


def _median(runs: list[dict[str, float]], key: str) -> float:
    values = [run[key] for run in runs if run[key] == run[key]]
    return statistics.median(values) if values else float("nan")


def _phases(runs: list[dict[str, float]]) -> list[tuple[str, float]]:
    rows = [(what, _median(runs, key)) for key, what in INPUTS]
    rest = [run["cell_time_s"] - run["train_time_s"] - sum(run[key] for key, _ in INPUTS if run[key] == run[key])
            for run in runs]
    rows.append(("the rest (build, the metrics themselves, artifacts, saving)", statistics.median(rest)))
    return rows


def table(before: list[dict[str, float]], after: list[dict[str, float]]) -> str:
    """The Markdown table of the medians, before and after: each phase in seconds and as a fraction of training."""
    def cell(seconds: float, train: float) -> str:
        return "—" if seconds != seconds else f"{seconds:.2f} | {seconds / train:.2f}"

    train_before, train_after = _median(before, "train_time_s"), _median(after, "train_time_s")
    lines = ["| phase | before [s] | × training | after [s] | × training |", "| --- | ---: | ---: | ---: | ---: |",
             f"| training | {train_before:.2f} | 1.00 | {train_after:.2f} | 1.00 |"]
    old, new = _phases(before), _phases(after)
    for (what, seconds_before), (_, seconds_after) in zip(old, new, strict=True):
        lines.append(f"| {what} | {cell(seconds_before, train_before)} | {cell(seconds_after, train_after)} |")
    total_before = sum(seconds for _, seconds in old if seconds == seconds)
    total_after = sum(seconds for _, seconds in new if seconds == seconds)
    lines.append(f"| **evaluation, all of it** | **{total_before:.2f}** | **{total_before / train_before:.2f}** | "
                 f"**{total_after:.2f}** | **{total_after / train_after:.2f}** |")
    return "\n".join(lines)


def metric_table(run_dir: Path) -> str:
    """Every built-in metric's own seconds (beyond its inputs) and every input's, on the run's trained model."""
    import torch

    from cnfbench.metric_plan import EvaluationSetup, measure
    from cnfbench.models import load_trained
    from cnfbench.params import Selection

    cells = pd.read_parquet(run_dir / "cells.parquet")
    model = load_trained(run_dir, str(cells["cell_id"].iloc[0]), require_all=True)
    registry, cell = model.registry, model.cell
    dataset = registry.build("dataset", cell.dataset)
    setup = EvaluationSetup(model.field, registry.build("solver", cell.solver),
                            registry.build("solver", cell.evaluation.ref_solver),
                            registry.build("trace", cell.evaluation.trace), dataset, dataset.splits(cell.seed).test,
                            cell.seed, cell.evaluation.batch_size, cell.budget.max_nfe,
                            getattr(torch, cell.evaluation.ref_dtype), cell.evaluation.mass_grid,
                            ("field", "trace"), torch.device("cpu"))
    metrics = [(entry.name, registry.build("metric", registry.resolve("metric", Selection(entry.name))))
               for entry in registry.entries("metric")]
    measured = measure(setup, metrics)
    lines = ["| step | seconds [s] |", "| --- | ---: |"]
    lines += [f"| {what} | {seconds:.3f} |" for what, seconds in measured.seconds.items()]
    failed = [f"{name}: {note}" for name, note in measured.notes.items()]
    return "\n".join(lines + ([""] + [f"note: {line}" for line in failed] if failed else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of the cell (medians over them) [default: 3]")
    parser.add_argument("--cell", default="--solver euler", help="the cell's `cnfbench run` options "
                        "[default: '--solver euler', the README's Euler cell]")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the worker [default: cnfbench's own choice]")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    cell = shlex.split(args.cell)
    with tempfile.TemporaryDirectory(prefix="bench-evaluation-") as folder:
        before, after = [], []
        for index in range(args.repeats):
            before.append(run_once(cell, Path(folder), f"before{index}", args.threads, BEFORE))
            after.append(run_once(cell, Path(folder), f"after{index}", args.threads, None))
        metrics = metric_table(Path(folder) / f"after{args.repeats - 1}")
    print(f"cell: cnfbench run {args.cell}; medians over {args.repeats} run(s) of the real command; before: "
          f"--metrics {BEFORE}; after: the default metrics")
    print(table(before, after))
    print("\nEvery built-in metric on the last run's model, in this process (inputs once, then each metric):")
    print(metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
