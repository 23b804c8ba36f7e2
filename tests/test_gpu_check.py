"""benchmarks/gpu_check.py: it refuses cleanly without CUDA, and its whole pipeline works (tiny, on the CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_refuses_in_one_line(tmp_path: Path) -> None:
    report = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(report)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and not report.exists()
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("Error: --device cuda needs CUDA") and "--device cpu --quick" in line


def test_the_check_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    report = tmp_path / "check.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(report)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    text = report.read_text()
    for heading in ("## 1. tests marked cuda — ok", "## 2. a small grid on the device — ok",
                    "## 3a. trace cost against dimension — ok", "## 3b. the hollow field's exact divergence — ok",
                    "## 4. backprop against the adjoint — ok", "## 5. the float64 reference solve's cost",
                    "## 6. per-sample step control: torchode against torchdiffeq — ok",
                    "## 7. compiled fields: --compile against eager — ok"):
        assert heading in text, text
    assert "| euler, 8 steps | adjoint |" in text and "| euler, 4 steps | backprop |" in text
    assert "hollow exact (fused)" in text and "exact_loop" in text
