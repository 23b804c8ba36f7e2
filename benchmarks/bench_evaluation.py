#!/usr/bin/env python
"""Evaluation against training: where a cell's wall-clock goes after its model is trained, phase by phase.

Runs one cell R times with the real command (``cnfbench run``, default executor, a fresh run folder each time)
and reads the phase timings every row records: the test pass with the row's solver (``eval_time_s``), the
reference test pass (``ref_time_s``), the two mass-grid passes (``mass_time_s``, ``mass_ref_time_s``), the
importance-sampled mass (``mass_is_time_s``), the sampling solve (``sample_time_s``), and the rest of the cell
(``cell_time_s`` less training and those: building, the true entropy, reverse KL, the round trip, the density
artifacts, saving the model). Each figure is the median over the repeats, in seconds and as a fraction of the
cell's training time, so that an evaluation plan (issue #24: ≤ 0.3× training for the default Euler cell) can be
measured against this table before and after.

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

PHASES = (
    ("eval_time_s", "test pass, row's solver"),
    ("ref_time_s", "test pass, reference solve"),
    ("mass_time_s", "mass grid, row's solver"),
    ("mass_ref_time_s", "mass grid, reference solve"),
    ("mass_is_time_s", "importance-sampled mass"),
    ("sample_time_s", "sampling solve"),
)
"""The evaluation phases a row times itself, with what each is."""


def run_once(cell: list[str], out: Path, name: str, threads: int | None) -> dict[str, float]:
    """One run of the cell into ``out/name``; its row's timings."""
    command = [sys.executable, "-m", "cnfbench", "run", *cell, "--out", str(out), "--name", name, "--quiet"]
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
            ("train_time_s", "cell_time_s", *(phase for phase, _ in PHASES))}


def table(runs: list[dict[str, float]]) -> str:
    """The Markdown table of the medians: each phase in seconds and as a fraction of training."""
    def median(key: str) -> float:
        values = [run[key] for run in runs if run[key] == run[key]]
        return statistics.median(values) if values else float("nan")

    train = median("train_time_s")
    rows = [(what, median(key)) for key, what in PHASES]
    others = [run["cell_time_s"] - run["train_time_s"] - sum(run[key] for key, _ in PHASES if run[key] == run[key])
              for run in runs]
    rows.append(("the rest (build, entropy, reverse KL, round trip, artifacts, saving)", statistics.median(others)))
    evaluation = sum(seconds for _, seconds in rows if seconds == seconds)
    lines = ["| phase | seconds [s] | × training |", "| --- | ---: | ---: |",
             f"| training | {train:.2f} | 1.00 |"]
    lines += [f"| {what} | {seconds:.2f} | {seconds / train:.2f} |" for what, seconds in rows]
    lines.append(f"| **evaluation, all of it** | **{evaluation:.2f}** | **{evaluation / train:.2f}** |")
    return "\n".join(lines)


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
        runs = [run_once(cell, Path(folder), f"r{index}", args.threads) for index in range(args.repeats)]
    print(f"cell: cnfbench run {args.cell}; medians over {args.repeats} run(s) of the real command")
    print(table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
