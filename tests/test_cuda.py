"""Device placement on a CUDA device (skipped without one; ``benchmarks/gpu_check.py`` runs these on a GPU)."""

from __future__ import annotations

import os

import pytest

from cnfbench.config import RunConfig, resolve_cells
from cnfbench.executor import job_for, make_executor
from cnfbench.registry import load_registry

DEVICE = os.environ.get("CNFBENCH_TEST_DEVICE", "cuda")


def _outcome(field: str, solver: str):
    registry = load_registry([])
    config = RunConfig(dataset=("8gaussians[n_train=256,n_val=32,n_test=96]",), field=(field,), solver=(solver,),
                       iterations=3, batch_size=64, mass_grid=12, device=DEVICE)
    (cell,) = resolve_cells(config, registry)
    return make_executor(registry, "inline")[0].run_cell(job_for(cell), lambda kind, value: None)


@pytest.mark.cuda
@pytest.mark.parametrize("field", ["concatsquash[hidden=16-16]", "hollow[hidden=16-16,embed=8]"])
def test_a_cell_trains_and_evaluates_on_the_device(field: str) -> None:
    row = _outcome(field, "dopri5").row
    assert row["status"] == "done", row.get("reason")
    assert row["device"].startswith("cuda") and row["memory_kind"] == "cuda_max_allocated"
    assert row["peak_memory_mib"] > 0 and row["nll"] == row["nll"]


@pytest.mark.cuda
def test_the_adjoint_runs_on_the_device() -> None:
    row = _outcome("concatsquash[hidden=16-16]", "euler[steps=4,adjoint=true]").row
    assert row["status"] == "done" and row["nfe_backward_mean"] > 0
