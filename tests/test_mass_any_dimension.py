"""The mass of a solver's density in any dimension, by importance sampling with the reference-solved model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import read_cells

from cnfbench.config import RunConfig, resolve_cells
from cnfbench.metric_plan import EvaluationSetup, measure
from cnfbench.params import Selection
from cnfbench.registry import load_registry
from cnfbench.testing.reference import RK4, ExactLoopTrace, MatrixField, linear_flow_log_prob
from cnfbench.validity import validity

REGISTRY = load_registry()


def _model_density_columns(cell, dataset, field, solver, reference, trace) -> dict:
    """mass_is and reverse_kl of ``field`` with ``solver``, through the harness's evaluation plan."""
    test = dataset.splits(cell.seed).test
    setup = EvaluationSetup(field, solver, reference, trace, dataset, test, cell.seed, 4096, None, torch.float64, 0,
                            ("field", "trace"), torch.device("cpu"))
    metrics = [(name, REGISTRY.build("metric", REGISTRY.resolve("metric", Selection(name))))
               for name in ("mass_is", "reverse_kl")]
    measured = measure(setup, metrics)
    assert not measured.notes, measured.notes
    return measured.columns


class WrongLogDensity(RK4):
    """RK4 whose log-density integral is scaled by ``factor``: a deliberately wrong density (negative control)."""

    def __init__(self, steps: int, factor: float) -> None:
        super().__init__(steps)
        self.factor = factor

    def integrate(self, dynamics, state, t0, t1):
        z, change, *rest = super().integrate(dynamics, state, t0, t1)
        return (z, change * self.factor, *rest)


def _cell(dim: int):
    config = RunConfig(dataset=(f"gaussian_mixture[dim={dim},n_train=64,n_val=8,n_test=8]",), iterations=1,
                       device="cpu")
    return resolve_cells(config, REGISTRY)[0]


def _linear_field(dim: int) -> MatrixField:
    generator = torch.Generator().manual_seed(dim)
    matrix = 0.3 * torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return MatrixField(matrix.float())


@pytest.mark.parametrize("dim", [3, 12])
def test_an_exact_solve_has_mass_one_and_a_wrong_log_density_is_flagged(dim: int) -> None:
    cell, field = _cell(dim), _linear_field(dim)
    dataset = REGISTRY.build("dataset", cell.dataset)
    reference = REGISTRY.build("solver", cell.evaluation.ref_solver)
    trace = ExactLoopTrace()
    exact = _model_density_columns(cell, dataset, field, RK4(steps=40), reference, trace)
    assert abs(exact["mass_is"] - 1.0) < 1e-3 and exact["mass_is_ess"] > 990  # p_solver = p_ref: every weight ~1
    assert validity({**exact, "nll": 1.0})[0]
    wrong = _model_density_columns(cell, dataset, field, WrongLogDensity(40, 1.2), reference, trace)
    # log p_wrong - log p = -0.2 tr(A) everywhere: the weights are constant and the mass is exp(-0.2 tr A) exactly
    expected = math.exp(-0.2 * float(torch.trace(field.matrix)))
    assert wrong["mass_is"] == pytest.approx(expected, rel=1e-3)
    valid, reason = validity({**wrong, "nll": 1.0})
    assert valid is (abs(expected - 1.0) <= 0.03) and ("by importance sampling" in reason or valid)


def test_the_reference_samples_carry_the_closed_form_log_density() -> None:
    from cnfbench.contracts import split_generator
    from cnfbench.evaluation import sample_with_log_prob

    field = _linear_field(5)
    reference = REGISTRY.build("solver", _cell(5).evaluation.ref_solver)
    samples, log_q = sample_with_log_prob(field, reference, ExactLoopTrace(), 200, split_generator(0, "x"),
                                          torch.device("cpu"), torch.float64)
    assert torch.allclose(log_q, linear_flow_log_prob(field.matrix.double(), samples), atol=1e-6)


def test_importance_sampling_agrees_with_the_grid_on_2d_cells(cli, tmp_path: Path) -> None:
    result = cli("run", "--solver", "euler[steps=2],euler[steps=6],rk4[steps=4]", "--mass-grid", "120",
                 "--iterations", "20", "--lr", "0.02", "--metrics", "validity", "--name", "agree")
    assert result.exit_code == 0
    cells = read_cells(tmp_path, "agree")
    for row in cells.to_dict("records"):
        assert abs(row["mass_ref"] - 1.0) < 0.03  # the grid resolves the density (its own error is allowed below)
        allowed = 4 * row["mass_is_stderr"] + 0.01 + abs(row["mass_ref"] - 1.0)
        assert abs(row["mass_is"] - row["mass"]) <= allowed, (row["solver_spec"], row["mass"], row["mass_is"])
    assert cells["mass"].sub(1).abs().max() > 0.03  # at least one Euler density is visibly off 1 in both


def test_every_row_reports_dimension_and_per_dimension_nll(cli, tmp_path: Path) -> None:
    assert cli("run", "--solver", "euler[steps=2]", "--dataset", "gaussian_mixture[dim=5,n_train=64,n_val=8,n_test=32]",
               "--name", "dims").exit_code == 0
    cells = read_cells(tmp_path, "dims").set_index("dataset")
    row = cells.loc["gaussian_mixture"]
    assert row["dim"] == 5 and row["nll_per_dim"] == pytest.approx(row["nll"] / 5)
    assert row["nll_ref_per_dim"] == pytest.approx(row["nll_ref"] / 5) and math.isnan(row["bits_per_dim"])
    assert math.isfinite(row["mass_is"]) and math.isnan(row["mass"])  # no grid beyond 2D, the sampled mass is there
