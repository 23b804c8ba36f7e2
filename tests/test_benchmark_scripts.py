"""Every benchmark script still runs against the current harness: each, tiny, to its table (they are run by hand,
so an API change that breaks one would otherwise go unnoticed until someone needs its numbers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

TINY_RUNS = {
    "bench_evaluation.py": ["--repeats", "1", "--cell", "--dataset 8gaussians[n_train=256,n_val=32,n_test=96] "
                            "--field concatsquash[hidden=16-16] --solver euler[steps=2] --iterations 3 "
                            "--batch-size 64 --mass-grid 12"],
    "bench_trace_variance.py": ["--iterations", "2", "--batch-size", "32", "--points", "16", "--probes", "4",
                                "--logp-points", "8", "--logp-reps", "2"],
    "bench_trace_cost.py": ["--dims", "2", "--batch", "16", "--repeats", "1", "--train-iterations", "2", "--points",
                            "8", "--draws", "4", "--budgets", "6"],
    "bench_harness_overhead.py": ["--iterations", "3", "--repeats", "1", "--solver", "euler[steps=2]",
                                  "--batch-size", "64"],
    "bench_eval_throughput.py": ["--points", "64", "--chunks", "32,64", "--solvers", "euler[steps=2]", "--repeats",
                                 "1"],
    "bench_threads.py": ["--situations", "run", "--warmup", "0", "--iterations", "2", "--max-threads", "1", "--cell",
                         "--dataset 8gaussians[n_train=256,n_val=32,n_test=96] --field concatsquash[hidden=16-16] "
                         "--solver euler[steps=2] --batch-size 64 --mass-grid 0"],
}

TABLE_HEADS = {
    "bench_evaluation.py": "| phase | before [s] | × training | after [s] | × training |",
    "bench_trace_variance.py": "| t | estimator |",
    "bench_trace_cost.py": "| hutchpp[probes=6] |",
    "bench_harness_overhead.py": "| solver         | iters/block |",
    "bench_eval_throughput.py": "throughput [samples/s]",
    "bench_threads.py": "| beside a second cnfbench run |",
}


@pytest.mark.parametrize("script", sorted(TINY_RUNS))
def test_the_benchmark_runs_to_its_table(script: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *TINY_RUNS[script]], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert TABLE_HEADS[script] in done.stdout, done.stdout[-3000:]


def test_every_script_is_covered() -> None:
    """A new benchmark gets a tiny run here or in its own test file."""
    tested_elsewhere = {"bench_hollow.py", "gpu_check.py", "bench_torchode.py", "bench_compile.py",
                        "bench_workers.py"}
    scripts = {path.name for path in BENCHMARKS.glob("*.py")}
    assert scripts - tested_elsewhere == set(TINY_RUNS)
