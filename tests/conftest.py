"""Shared fixtures: tiny budgets so that end-to-end runs take seconds.

Tests run torch on one thread, in this process and in the worker processes
it spawns (through ``OMP_NUM_THREADS``): on a shared 2-core machine, two
busy processes with two threads each can make tiny ops 10-100x slower.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result

from cnfbench.cli import main

torch.set_num_threads(1)

TINY = [
    "--dataset", "8gaussians[n_train=256,n_val=32,n_test=96]",
    "--field", "concatsquash[hidden=16-16]",
    "--iterations", "3",
    "--batch-size", "64",
    "--ref-solver", "dopri5[rtol=1e-6,atol=1e-6]",
    "--mass-grid", "12",
    "--quiet",
]


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., Result]:
    """Invoke ``cnfbench`` in-process with the output root in a temporary folder."""

    def invoke(*args: str, tiny: bool = True, out: bool = True) -> Result:
        argv = list(args)
        if argv and argv[0] == "run":
            defaults = [*(TINY if tiny else []), *(["--out", str(tmp_path / "results")] if out else [])]
            argv = [argv[0], *defaults, *argv[1:]]  # the test's own options come last and win
        return CliRunner().invoke(main, argv, catch_exceptions=False)

    return invoke


def read_cells(tmp_path: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "results" / name / "cells.parquet")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` run only where torch sees a CUDA device (``benchmarks/gpu_check.py`` runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
