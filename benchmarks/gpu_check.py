#!/usr/bin/env python
"""The GPU check: one command that proves cnfbench on a CUDA device and writes one Markdown report.

    python benchmarks/gpu_check.py [--out gpu_check.md] [--device cuda]      # on a machine with a GPU
    python benchmarks/gpu_check.py --device cpu --quick --out check.md       # the same steps, tiny, on a CPU

Steps, each timed, each a section of the report (a failing step is reported, and the next runs):

1. the tests marked ``cuda`` (device placement, CUDA peak memory), which are skipped without CUDA;
2. a small ``cnfbench run --device <device>`` grid (euler and dopri5, exact and Hutchinson, 2 seeds), its
   summary table;
3. the trace-cost benchmark at D = 2…128 (``bench_trace_cost.py --skip-variance``: exact, exact_loop,
   Hutchinson, training and evaluation, synchronized timing), and the ``hollow`` field's
   (``bench_hollow.py``);
4. per-iteration time and peak memory of backpropagation through the solver against the adjoint, for
   euler with 8, 32 and 128 steps (one ``cnfbench run`` each, read back from its rows);
5. the float64 reference solve's cost: the test pass with the reference solve against the row's solver;
6. torchode's per-sample ``dopri5`` against torchdiffeq's on trained fields (``bench_torchode.py``);
7. per-iteration training time with and without ``--compile`` (``bench_compile.py``).

Without CUDA, ``--device cuda`` refuses at once: one line, exit 2, nothing written. ``--quick`` shrinks every
step (for a CPU smoke test; the figures then mean nothing). The report names the device, torch, CUDA and
cnfbench versions; paste it into ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 8 * 60
"""The whole check should take less than this on a data-centre GPU (each step has its own timeout)."""


def _run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Run ``command`` from the repository root: exit code, output (stdout then stderr) and seconds."""
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        return done.returncode, done.stdout + done.stderr, time.monotonic() - started
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, output + f"\n(timed out after {timeout:g} s)", time.monotonic() - started


def _section(title: str, code: int, output: str, seconds: float, keep: int = 60) -> str:
    status = "ok" if code == 0 else f"FAILED (exit {code})"
    lines = output.strip().splitlines()[-keep:]
    return f"## {title} — {status}, {seconds:.0f} s\n\n```\n" + "\n".join(lines) + "\n```\n"


def _rows(run_dir: Path) -> list[dict]:
    import pandas as pd

    return pd.read_parquet(run_dir / "cells.parquet").to_dict("records")


def main() -> int:
    parser = argparse.ArgumentParser(description="cnfbench's GPU check (see the module docstring)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke test")
    parser.add_argument("--out", default="gpu_check.md", help="the Markdown report (default gpu_check.md)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes everywhere (a smoke test of the script)")
    args = parser.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"Error: --device {args.device} needs CUDA, and torch {torch.__version__} sees no CUDA device "
              "here; run it on a GPU machine, or use --device cpu --quick to test the script", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and out.is_dir():
        print(f"Error: --out {out} is a folder; give a file name", file=sys.stderr)
        return 2
    quick = args.quick
    device = args.device
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else \
        (platform.processor() or platform.machine())
    python = sys.executable
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    caveat = " (quick: sizes too small to mean anything)" if quick else ""
    sections = [f"# cnfbench GPU check on {name}\n",
                f"torch {torch.__version__}, CUDA {torch.version.cuda or '—'}, device `{device}`, {stamp}{caveat}\n"]
    started = time.monotonic()

    code, output, seconds = _run([python, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"],
                                 300, {"CNFBENCH_TEST_DEVICE": device})
    sections.append(_section("1. tests marked cuda", code if code != 5 else 0, output, seconds, 15))

    work = Path(tempfile.mkdtemp(prefix="cnfbench-gpu-check-"))
    iterations = "3" if quick else "200"
    grid = ["run", "--device", device, "--solver", "euler[steps=8],dopri5", "--trace", "exact,hutchinson",
            "--seeds", "2", "--iterations", iterations, "--out", str(work), "--name", "grid", "--quiet"]
    if quick:
        grid += ["--dataset", "8gaussians[n_train=256,n_val=32,n_test=96]", "--mass-grid", "12",
                 "--field", "concatsquash[hidden=16-16]", "--batch-size", "64"]
    code, output, seconds = _run([python, "-m", "cnfbench", *grid], 240)
    sections.append(_section("2. a small grid on the device", code, output, seconds, 30))

    dims = "2,8" if quick else "2,8,16,32,64,128"
    repeats = "2" if quick else "7"
    code, output, seconds = _run([python, "benchmarks/bench_trace_cost.py", "--device", device, "--dims", dims,
                                  "--repeats", repeats, "--skip-variance", *(["--batch", "32"] if quick else [])],
                                 240)
    sections.append(_section("3a. trace cost against dimension", code, output, seconds, 40))
    code, output, seconds = _run([python, "benchmarks/bench_hollow.py", "--device", device, "--dims", dims,
                                  "--repeats", repeats, *(["--batch", "32"] if quick else [])], 180)
    sections.append(_section("3b. the hollow field's exact divergence", code, output, seconds, 12))

    lines = ["| solver | gradient | iteration [ms] | peak memory [MiB] | NFE fwd/iter | NFE bwd/iter |",
             "|---|---|---|---|---|---|"]
    step_counts = (4, 8) if quick else (8, 32, 128)
    began = time.monotonic()
    failures = []
    for steps in step_counts:
        for adjoint in ("false", "true"):
            label = f"euler{steps}-{adjoint}"
            command = [python, "-m", "cnfbench", "run", "--device", device, "--solver",
                       f"euler[steps={steps},adjoint={adjoint}]", "--iterations", "3" if quick else "30",
                       "--out", str(work), "--name", label, "--quiet", "--mass-grid", "0"]
            if quick:
                command += ["--dataset", "8gaussians[n_train=256,n_val=32,n_test=96]", "--batch-size", "64",
                            "--field", "concatsquash[hidden=16-16]"]
            code, output, _ = _run(command, 180)
            if code != 0:
                failures.append(f"{label}: exit {code}: {output.strip().splitlines()[-1:]}")
                continue
            (row,) = _rows(work / label)
            lines.append(f"| euler, {steps} steps | {'adjoint' if adjoint == 'true' else 'backprop'} | "
                         f"{row['iter_time_median_s'] * 1e3:.1f} | {row['peak_memory_mib']:.0f} | "
                         f"{row['nfe_forward_mean']:.0f} | {row['nfe_backward_mean']:.0f} |")
    sections.append(f"## 4. backprop against the adjoint — {'ok' if not failures else 'FAILED'}, "
                    f"{time.monotonic() - began:.0f} s\n\n" + "\n".join([*lines, *failures]) + "\n")

    try:
        rows = _rows(work / "grid")
        lines = ["| solver | trace | test pass, row's solver [s] | reference solve, float64 [s] | ratio |",
                 "|---|---|---|---|---|"]
        for row in rows:
            if row.get("status") == "done" and row.get("eval_time_s"):
                lines.append(f"| {row['solver_spec']} | {row['trace_spec']} | {row['eval_time_s']:.3f} | "
                             f"{row['ref_time_s']:.3f} | {row['ref_time_s'] / row['eval_time_s']:.1f} |")
        sections.append("## 5. the float64 reference solve's cost\n\n" + "\n".join(lines) + "\n")
    except (OSError, ValueError, KeyError) as exc:
        sections.append(f"## 5. the float64 reference solve's cost — FAILED\n\n{type(exc).__name__}: {exc}\n")

    torchode = ["--quick", "--datasets", "8gaussians"] if quick else ["--iterations", "1000", "--repeats", "3"]
    code, output, seconds = _run([python, "benchmarks/bench_torchode.py", "--device", device, *torchode], 240)
    sections.append(_section("6. per-sample step control: torchode against torchdiffeq", code, output, seconds, 12))

    compiled = ["--quick"] if quick else []
    code, output, seconds = _run([python, "benchmarks/bench_compile.py", "--device", device, *compiled], 300)
    sections.append(_section("7. compiled fields: --compile against eager", code, output, seconds, 14))

    total = time.monotonic() - started
    sections.append(f"Total: {total:.0f} s (budget {BUDGET_S} s on a GPU).\n")
    out.write_text("\n".join(sections), encoding="utf-8")
    print(json.dumps({"report": str(out), "seconds": round(total, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
