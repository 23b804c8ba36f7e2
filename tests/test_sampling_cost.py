"""Sampling costs what drawing samples costs: a solve of the samples alone, no log-density riding along.

``nfe_sample`` and ``sample_time_s`` measure the solve that draws the sample distances' model samples. It carries
the samples alone, so for dopri5 its NFE is that of ``torchdiffeq.odeint`` on the bare field (counted here by
wrapping the field) with the same tolerances and base draws, and its samples are that odeint's output; a
fixed-grid solver takes the very steps the old joint solve took, so its samples and every number computed from
them are bit for bit what they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torchdiffeq
from click.testing import CliRunner
from conftest import TINY
from torch import Tensor

from cnfbench.cli import main
from cnfbench.contracts import VectorField, split_generator
from cnfbench.dynamics import ContractViolation, FieldDynamics, NFEBudgetExceeded, NFECounter
from cnfbench.evaluation import sample_model, sample_with_log_prob
from cnfbench.metric_plan import QUALITY_MAX_SAMPLES
from cnfbench.models import TrainedModel, load_trained
from cnfbench.params import parse_selection
from cnfbench.registry import Registry, load_registry
from cnfbench.sample_quality import energy_distance

# At this tolerance the old joint solve of the quality samples took 20 NFE (measured on CPU), the samples alone
# 14: the nfe_sample assertion tells the two apart.
RTOL, ATOL = 1e-3, 1e-3
DOPRI5 = f"dopri5[rtol={RTOL},atol={ATOL}]"
EULER = "euler[steps=4]"
DENSITY_SAMPLES = 500  # what a 2-D cell keeps for its density plot (metric_plan.DENSITY_SAMPLES)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One flow-matching model, trained briefly, evaluated and sampled with dopri5 and with Euler."""
    out = tmp_path_factory.mktemp("sampling_cost")
    result = CliRunner().invoke(main, ["run", *TINY, "--out", str(out), "--name", "cost", "--objective", "cfm",
                                       "--iterations", "150", "--lr", "0.01", "--solver", f"{DOPRI5},{EULER}",
                                       "--isolation", "inline", "--metrics", "default,samples,plots"],
                                 catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out / "cost"


def _row(run_dir: Path, solver: str) -> dict[str, Any]:
    cells = pd.read_parquet(run_dir / "cells.parquet")
    (row,) = cells[cells["solver"] == solver].to_dict("records")
    assert row["status"] == "done", row["reason"]
    return row


def _build(registry: Registry, family: str, spec: str) -> Any:
    return registry.build(family, registry.resolve(family, parse_selection(spec)))


def _base(seed: int, stream: str, n: int, dim: int) -> Tensor:
    """The base draws the harness takes for ``stream`` (float32 on the CPU)."""
    return torch.randn(n, dim, generator=split_generator(seed, stream), dtype=torch.float32)


def _odeint_on_the_field(field: VectorField, base: Tensor) -> tuple[Tensor, int]:
    """The samples of ``torchdiffeq.odeint`` on the bare field with dopri5 at RTOL/ATOL, and how often it called it.

    The options are those the built-in dopri5 passes: the last step lands on t=1 (``step_t``).
    """
    calls = 0

    def counted(t: Tensor, z: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return field(t, z)

    with torch.no_grad():
        path = torchdiffeq.odeint(counted, base, torch.tensor([0.0, 1.0]), rtol=RTOL, atol=ATOL, method="dopri5",
                                  options={"step_t": torch.tensor([1.0])})
    return path[-1], calls


def _model(run_dir: Path, row: dict[str, Any]) -> TrainedModel:
    return load_trained(run_dir, row["cell_id"])


def _density_samples(run_dir: Path, row: dict[str, Any]) -> Tensor:
    with np.load(run_dir / "density" / f"{row['cell_id']}.npz", allow_pickle=False) as density:
        return torch.from_numpy(density["samples"])


def test_nfe_sample_is_odeint_on_the_field_alone(run_dir: Path) -> None:
    row = _row(run_dir, "dopri5")
    model = _model(run_dir, row)
    n = min(96, QUALITY_MAX_SAMPLES)  # TINY's n_test
    drawn, calls = _odeint_on_the_field(model.field, _base(row["seed"], "model/quality_samples", n, model.dim))
    assert row["nfe_sample"] == calls
    assert row["sample_time_s"] > 0

    # the density plot shows the first of those samples (one sampling solve serves every metric and the plot)
    shown = _density_samples(run_dir, row)
    assert torch.equal(shown, drawn[:DENSITY_SAMPLES])
    expected, _ = _odeint_on_the_field(model.field, _base(row["seed"], "model/samples", DENSITY_SAMPLES, model.dim))

    # the solve that also carries the log-density is another solve: its samples are not the sampler's
    joint, _ = sample_with_log_prob(model.field, _build(model.registry, "solver", DOPRI5),
                                    _build(model.registry, "trace", "exact"), DENSITY_SAMPLES,
                                    split_generator(row["seed"], "model/samples"), torch.device("cpu"), torch.float32)
    assert not torch.equal(joint, expected)
    assert torch.allclose(joint, expected, atol=0.05)


def test_cnfbench_sample_counts_the_solve_of_the_samples_alone(run_dir: Path, tmp_path: Path) -> None:
    row = _row(run_dir, "dopri5")
    model = _model(run_dir, row)
    out = tmp_path / "s.npy"
    result = CliRunner().invoke(main, ["sample", str(run_dir), "--cell", row["cell_id"], "-n", "300", "--seed", "3",
                                       "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    expected, calls = _odeint_on_the_field(model.field, _base(3, "model/quality_samples", 300, model.dim))
    assert f"NFE {calls} evaluations of the field alone (counted by the harness)" in result.output
    assert torch.equal(torch.from_numpy(np.load(out, allow_pickle=False)), expected)


def test_a_fixed_grid_solver_draws_the_very_samples_of_the_joint_solve(run_dir: Path) -> None:
    row = _row(run_dir, "euler")
    model = _model(run_dir, row)
    registry, seed = model.registry, row["seed"]
    euler, exact = _build(registry, "solver", EULER), _build(registry, "trace", "exact")

    def joint(n: int, stream: str) -> Tensor:  # how the samples were drawn before: with the log-density
        return sample_with_log_prob(model.field, euler, exact, n, split_generator(seed, stream), torch.device("cpu"),
                                    torch.float32)[0]

    counter = NFECounter()
    alone = sample_model(model.field, euler, DENSITY_SAMPLES, split_generator(seed, "model/samples"),
                         torch.device("cpu"), counter=counter)
    assert torch.equal(alone, joint(DENSITY_SAMPLES, "model/samples")) and counter.current == 4
    drawn = sample_model(model.field, euler, 96, split_generator(seed, "model/quality_samples"), torch.device("cpu"))
    assert torch.equal(_density_samples(run_dir, row), drawn)  # the plot shows the sampling solve's samples

    # the row's sample distance is the one computed from the joint solve's samples, bit for bit
    test = _build(registry, "dataset", "8gaussians[n_train=256,n_val=32,n_test=96]").splits(seed).test
    assert energy_distance(joint(96, "model/quality_samples"), test)[0] == row["energy_distance"]
    assert row["nfe_sample"] == 4


class _Turning(VectorField):
    """``dz/dt = z @ R`` for a fixed rotation-like matrix, taking only a 0-dim ``t`` (no ``per_row_time``)."""

    def __init__(self, dim: int, wrong_shape: bool = False) -> None:
        super().__init__(dim)
        self.matrix = torch.nn.Parameter(torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
        self.wrong_shape = wrong_shape
        self.calls = 0

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        assert t.dim() == 0, "this field takes one time per call"
        self.calls += 1
        dz = z @ self.matrix
        return dz[:, :1] if self.wrong_shape else dz


def test_a_per_sample_solver_integrates_the_samples_alone() -> None:
    registry = load_registry(())
    field = _Turning(2)
    counter = NFECounter()
    samples = sample_model(field, _build(registry, "solver", "torchode_dopri5[rtol=1e-7,atol=1e-7]"), 64,
                           torch.Generator().manual_seed(0), torch.device("cpu"), counter=counter)
    base = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    exact = base @ torch.linalg.matrix_exp(field.matrix.detach())  # z(1) = z(0) exp(R) for dz/dt = z R
    assert torch.allclose(samples, exact, atol=1e-5)
    assert counter.totals["sample"] == counter.current > 0
    assert field.calls >= counter.current  # one call per distinct row time: at least one per evaluation


def test_a_field_that_breaks_the_contract_is_named() -> None:
    dynamics = FieldDynamics(_Turning(2, wrong_shape=True), NFECounter(), "'turning' (plugin 'tests')")
    with pytest.raises(ContractViolation, match=r"field 'turning' \(plugin 'tests'\) returned dz/dt \(3, 1\)"):
        dynamics(torch.tensor(0.0), (torch.zeros(3, 2),))


def test_the_sampling_solve_is_held_to_the_nfe_budget() -> None:
    rk4 = _build(load_registry(()), "solver", "rk4[steps=2]")  # 8 evaluations
    for budget, fits in ((8, True), (7, False)):
        counter = NFECounter(max_per_solve=budget)
        if fits:
            sample_model(_Turning(2), rk4, 8, torch.Generator().manual_seed(0), torch.device("cpu"), counter=counter)
            assert counter.current == 8
            continue
        with pytest.raises(NFEBudgetExceeded, match="sample solve exceeded the NFE budget of 7"):
            sample_model(_Turning(2), rk4, 8, torch.Generator().manual_seed(0), torch.device("cpu"), counter=counter)
