#!/usr/bin/env python
"""Throughput of parallel workers: the same grid of small cells on ``process[workers=1]`` and ``process[workers=2]``.

Runs ``cnfbench run`` (as a user would, through the command line) on one grid of 8 small cells — 8gaussians,
a small concatsquash field, four fixed-step solvers x two seeds, a short budget — once per executor, into fresh
run folders, alternating the executors over ``--repeats`` rounds (ABBA order) so that load changes on a shared
machine fall on both. It reports each executor's cells per hour (wall-clock of the whole command, worker start-up
included) and the speed-up of 2 workers over 1 as the median ratio over the rounds: a ratio measured in one run,
not absolute times. It also checks that both executors wrote the same NLLs.

    python benchmarks/bench_workers.py [--repeats R] [--iterations N] [--threads T]

Cells that do not saturate both cores are the case for 2 workers: with ``--threads 1`` each worker uses one
torch thread. Expect at least 1.5x on a 2-core machine; less means the cells saturate the cores, or start-up
(spawning a worker, importing torch) dominates.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

GRID = ["--dataset", "8gaussians[n_train=2048,n_val=64,n_test=256]", "--field", "concatsquash[hidden=32-32]",
        "--solver", "euler[steps=4],midpoint[steps=4],rk4[steps=2],heun3[steps=3]", "--seeds", "2",
        "--batch-size", "128", "--mass-grid", "24", "--ref-solver", "dopri5[rtol=1e-6,atol=1e-6]", "--quiet"]


def run(executor: str, iterations: int, out: Path, name: str) -> tuple[float, pd.DataFrame]:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnfbench", "run", *GRID, "--iterations", str(iterations),
                    "--executor", executor, "--out", str(out), "--name", name], check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return seconds, pd.read_parquet(out / name / "cells.parquet").set_index("cell_id").sort_index()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (1 worker, 2 workers), ABBA order")
    parser.add_argument("--iterations", type=int, default=400, help="training iterations per cell")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = parser.parse_args()
    executors = {1: f"process[workers=1,threads={args.threads}]", 2: f"process[workers=2,threads={args.threads}]"}
    seconds: dict[int, list[float]] = {1: [], 2: []}
    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.repeats):
            order = (1, 2) if round_ % 2 == 0 else (2, 1)
            measured = {}
            frames = {}
            for workers in order:
                measured[workers], frames[workers] = run(executors[workers], args.iterations, Path(folder),
                                                         f"r{round_}-w{workers}")
                seconds[workers].append(measured[workers])
            if frames[1]["nll"].tolist() != frames[2]["nll"].tolist():
                print("warning: the two executors wrote different NLLs", file=sys.stderr)
            ratios.append(measured[1] / measured[2])
    cells = 8
    print(f"| executor | wall-clock per grid of {cells} cells [s] (median) | cells per hour |")
    print("| --- | --- | --- |")
    for workers, label in executors.items():
        median = statistics.median(seconds[workers])
        print(f"| `{label}` | {median:.1f} | {cells * 3600 / median:.0f} |")
    print(f"\nspeed-up of 2 workers over 1 (median of {len(ratios)} paired rounds): {statistics.median(ratios):.2f}x "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
