#!/usr/bin/env python
"""Threads on a shared machine: the default cell under the old and the new thread policy, idle and under load.

Runs ``cnfbench run --iterations N`` (the default cell: 8gaussians, concatsquash, dopri5, exact trace, the
default evaluation) through the command line, as a user would, with the executor's thread count set four ways:

* ``1`` and ``2`` (or up to ``--max-threads``): explicit ``process[threads=T]``, to know the best count;
* ``old``: the policy before cnfbench chose threads — torch's default count in the worker (the machine's cores);
* ``new``: the default policy now (``process``): the CPUs the worker may use, fewer on a busy machine.

in three situations, one after another in one run: ``idle`` (nothing else running; each measurement waits for
the one-minute load average to fall below 0.5 first), ``beside a run`` (a second ``cnfbench run`` with the old
policy's thread count trains beside it) and ``beside 4 jobs`` (four torch training loops, each with torch's
default threads); and, asked for (``pair``), two ``cnfbench run`` commands of 3 cells each started together
with the same policy, timed until both end (do they share the machine?). The background starts ``--warmup``
seconds before the first measurement of its situation, so that the one-minute load average has seen it, and
runs throughout. Each figure is the cell's own wall-clock (``cell_time_s``: build, train, evaluate; the
worker's start-up excluded). The table gives each policy's time over the best explicit count's in the same
situation: a ratio measured in one run.

    python benchmarks/bench_threads.py [--iterations 10] [--warmup 75] [--situations idle,run,jobs,pair]
                                       [--cell OPTIONS]

The target: the new default never more than 1.3x the best thread count in any situation.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

JOB = """
import torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256), torch.nn.Tanh(),
                          torch.nn.Linear(256, 64))
optimizer = torch.optim.Adam(net.parameters())
data = torch.randn(512, 64)
while True:
    optimizer.zero_grad()
    net(data).pow(2).mean().backward()
    optimizer.step()
"""
"""A training job of someone else's: a small MLP at torch's default thread count, forever."""


def torch_default_threads() -> int:
    """torch's default thread count in a fresh process (what the old policy gave a single worker)."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def clean_env() -> dict[str, str]:
    """The environment without a thread cap of the caller's (OMP_NUM_THREADS would cap the new policy)."""
    return {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def measure(executor: str, iterations: int, out: Path, name: str, extra: list[str], runs: int = 1
            ) -> tuple[float, int, str]:
    """The default cell's wall-clock [s], its torch threads and why, with ``--executor executor``.

    With ``runs`` > 1, that many ``cnfbench run`` commands start together, each on a grid of ``runs`` + 1 seeds:
    the figure is then the wall-clock until the last of them ended, and the threads those of their last cells."""
    seeds = ["--seeds", str(runs + 1)] if runs > 1 else []
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-m", "cnfbench", "run", "--iterations", str(iterations), *extra,
                                   *seeds, "--executor", executor, "--out", str(out), "--name", f"{name}-{index}",
                                   "--quiet"], stdout=subprocess.DEVNULL, env=clean_env())
                 for index in range(runs)]
    if any(process.wait() != 0 for process in processes):
        raise RuntimeError(f"{name}: a cnfbench run failed")
    elapsed = time.perf_counter() - started
    rows = [pd.read_parquet(out / f"{name}-{index}" / "cells.parquet") for index in range(runs)]
    for frame in rows:
        if (frame["status"] != "done").any():
            raise RuntimeError(f"{name}: a cell did not finish: {frame['reason'].dropna().tolist()}")
    last = rows[0].iloc[-1]
    if runs > 1:
        threads = "/".join(str(int(frame.iloc[-1]["torch_threads"])) for frame in rows)
        return elapsed, int(last["torch_threads"]), f"last cells' threads {threads}"
    return float(last["cell_time_s"]), int(last["torch_threads"]), str(last.get("torch_threads_reason", ""))


def wait_for_quiet(limit: float = 300.0) -> float:
    """Wait until the one-minute load average is below 0.5 (at most ``limit`` s); return it."""
    deadline = time.monotonic() + limit
    while os.getloadavg()[0] >= 0.5 and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def start_background(situation: str, out: Path, old_threads: int) -> list[subprocess.Popen]:
    if situation in ("idle", "pair"):
        return []
    if situation == "run":
        command = [sys.executable, "-m", "cnfbench", "run", "--iterations", "1000000", "--executor",
                   f"process[threads={old_threads}]", "--out", str(out), "--name", "background", "--quiet"]
        return [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env(),
                                 start_new_session=True)]
    return [subprocess.Popen([sys.executable, "-c", JOB], env=clean_env(), start_new_session=True)
            for _ in range(4)]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        try:
            os.killpg(process.pid, 9)
        except OSError:
            pass
        process.wait()


LABELS = {"idle": "idle", "run": "beside a second cnfbench run", "jobs": "beside 4 training jobs",
          "pair": "two runs of 3 cells started together (both with the policy; wall-clock of the pair)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=10, help="training iterations of the default cell")
    parser.add_argument("--warmup", type=float, default=75.0, help="seconds the background runs before measuring")
    parser.add_argument("--situations", default="idle,run,jobs", help="comma list of idle, run, jobs, pair")
    parser.add_argument("--max-threads", type=int, default=0, help="largest explicit count (0: the old default)")
    parser.add_argument("--cell", default="", help="extra options of the measured cell (a smaller one for a try)")
    args = parser.parse_args()
    extra = shlex.split(args.cell)
    old = torch_default_threads()
    explicit = list(range(1, (args.max_threads or old) + 1))
    policies = [*(str(t) for t in explicit), "old", "new"]
    executors = {**{str(t): f"process[threads={t}]" for t in explicit}, "old": f"process[threads={old}]",
                 "new": "process"}
    print(f"# {os.cpu_count()} CPU(s), torch's default {old} thread(s); default cell, --iterations "
          f"{args.iterations}; cell wall-clock [s] (cell_time_s)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for situation in args.situations.split(","):
            background = start_background(situation, out / situation, old)
            try:
                if background:
                    time.sleep(args.warmup)
                times: dict[str, float] = {}
                chosen = ""
                for policy in policies:
                    load = wait_for_quiet() if situation in ("idle", "pair") else os.getloadavg()[0]
                    seconds, threads, why = measure(executors[policy], args.iterations, out / situation, policy,
                                                    extra, 2 if situation == "pair" else 1)
                    times[policy] = seconds
                    if policy == "new":
                        chosen = f"{threads} ({why})"
                    print(f"{situation:5s} {policy:4s} threads={threads} load={load:.1f} {seconds:.1f} s", flush=True)
            finally:
                stop(background)
            best = min(times[str(t)] for t in explicit)
            rows.append((LABELS[situation], *(times[p] for p in policies), times["old"] / best, times["new"] / best,
                         chosen))
    headers = [*(f"threads={t} [s]" for t in explicit), f"old default ({old}) [s]", "new default [s]",
               "old / best", "new / best", "new default chose"]
    print("\n| situation | " + " | ".join(headers) + " |")
    print("|---|" + "---|" * len(headers))
    for label, *values, chosen in rows:
        cells = [f"{v:.1f}" for v in values[:-2]] + [f"{v:.2f}x" for v in values[-2:]] + [chosen]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
