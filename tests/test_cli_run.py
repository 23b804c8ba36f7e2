"""``cnfbench run`` end to end with tiny budgets: results files, NFE, determinism, failures, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import read_cells

from cnfbench.run_folder import read_density_artifacts

NAN_FIELD_PLUGIN = '''
import torch
from cnfbench.contracts import VectorField
from cnfbench.hookspecs import hookimpl


class NaNField(VectorField):
    name = "nanfield"
    description = "returns NaN everywhere"

    def __init__(self, dim):
        super().__init__(dim)
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, t, z):
        return z * self.w + float("nan")


@hookimpl
def cnfbench_fields():
    return [NaNField]
'''


def test_run_writes_every_result_file(cli, tmp_path: Path) -> None:
    result = cli("run", "--solver", "euler[steps=4],dopri5", "--name", "e2e")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "results" / "e2e"
    assert {p.name for p in run_dir.iterdir()} >= {"cells.parquet", "cells.csv", "curves.parquet", "run.json"}

    cells = read_cells(tmp_path, "e2e").set_index("solver")
    assert list(cells.index) == ["euler", "dopri5"]
    assert (cells["status"] == "done").all()
    for column in ("nll", "nll_ref", "train_time_s", "iter_time_median_s", "eval_time_s", "peak_memory_mib"):
        assert cells[column].map(math.isfinite).all(), column
    assert cells.loc["euler", "nfe_forward_mean"] == 4 == cells.loc["euler", "nfe_forward_max"]
    assert cells.loc["euler", "nfe_expected_per_solve"] == 4
    assert cells.loc["euler", "nfe_eval"] == 4
    assert cells.loc["euler", "nfe_backward_mean"] == 0
    assert cells.loc["dopri5", "nfe_forward_mean"] > cells.loc["euler", "nfe_forward_mean"]
    assert cells.loc["dopri5", "nfe_ref"] > 0
    assert cells.loc["dopri5", "n_params"] == cells.loc["euler", "n_params"] > 0
    # the entropy of 8gaussians is known (about 2.83 nats); the test split estimate is close to it
    assert abs(cells.loc["euler", "entropy"] - 2.83) < 0.2
    euler = cells.loc["euler"]
    assert euler["excess_nll"] == pytest.approx(euler["nll_ref"] - euler["entropy"])

    csv = pd.read_csv(run_dir / "cells.csv")
    assert list(csv["cell_id"]) == list(cells["cell_id"])

    curves = pd.read_parquet(run_dir / "curves.parquet")
    assert len(curves) == 2 * 3
    assert set(curves.columns) >= {"cell_id", "iteration", "loss_nats", "nfe_forward", "nfe_backward", "iteration_s"}

    provenance = json.loads((run_dir / "run.json").read_text())
    assert provenance["versions"]["torch"] and provenance["versions"]["torchdiffeq"]
    assert provenance["machine"]["device"] == "cpu" and provenance["machine"]["cpu"]
    assert provenance["config"]["solver"] == ["euler[steps=4],dopri5"]
    assert "git_commit" in provenance and provenance["command"]
    assert len(provenance["cells"]) == 2

    summary = result.output[result.output.index("Summary"):result.output.index("results: ")]
    assert "NLL solver" in summary and "NLL ref" in summary and "[nats]" in summary and "train [s]" in summary
    assert max(len(line) for line in summary.splitlines()) <= 100  # fits a 100-column terminal


def test_same_seed_same_numbers_other_seed_other_numbers(cli, tmp_path: Path) -> None:
    args = ("run", "--solver", "rk4[steps=2]", "--trace", "hutchinson")
    assert cli(*args, "--name", "a").exit_code == 0
    assert cli(*args, "--name", "b").exit_code == 0
    assert cli(*args, "--name", "c", "--first-seed", "1").exit_code == 0
    a, b, c = (read_cells(tmp_path, name).iloc[0] for name in "abc")
    for column in ("nll", "nll_ref", "final_train_loss", "nfe_forward_mean", "cell_id"):
        assert a[column] == b[column], column
    assert a["nll"] != c["nll"] and a["cell_id"] != c["cell_id"]
    curves_a = pd.read_parquet(tmp_path / "results" / "a" / "curves.parquet")
    curves_b = pd.read_parquet(tmp_path / "results" / "b" / "curves.parquet")
    assert curves_a["loss_nats"].tolist() == curves_b["loss_nats"].tolist()


def test_seeds_option_runs_one_cell_per_seed_and_summary_counts_them(cli, tmp_path: Path) -> None:
    result = cli("run", "--solver", "euler[steps=2]", "--seeds", "2", "--name", "seeds")
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "seeds")
    assert sorted(cells["seed"]) == [0, 1]
    assert "±" in result.output


def test_nan_field_is_diverged_and_other_cells_still_run(cli, tmp_path: Path) -> None:
    plugin = tmp_path / "nan_plugin.py"
    plugin.write_text(NAN_FIELD_PLUGIN)
    result = cli("run", "--plugin", str(plugin), "--solver", "euler[steps=2]",
                 "--field", "nanfield,concatsquash[hidden=8]", "--name", "nan", tiny=True)
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "nan")
    nan_row = cells[cells["field"] == "nanfield"].iloc[0]
    assert nan_row["status"] == "diverged"
    assert "non-finite training loss" in nan_row["reason"]
    healthy = cells[cells["field"] == "concatsquash"]
    assert len(healthy) == 2 and (healthy["status"] == "done").all()  # the tiny default field and hidden=8
    assert "diverged" in result.output


def test_dry_run_lists_cells_and_writes_nothing(cli, tmp_path: Path) -> None:
    result = cli("run", "--solver", "euler,rk4", "--trace", "exact,hutchinson", "--dry-run", "--name", "dry")
    assert result.exit_code == 0
    assert result.output.startswith("4 cells would run")
    assert result.output.count("8gaussians") == 4
    assert not (tmp_path / "results").exists()


def test_rerun_skips_done_cells_and_changed_parameter_is_new_cell(cli, tmp_path: Path) -> None:
    assert cli("run", "--solver", "euler[steps=2]", "--name", "resume").exit_code == 0
    before = read_cells(tmp_path, "resume")
    again = cli("run", "--solver", "euler[steps=2],euler[steps=3]", "--name", "resume")
    assert again.exit_code == 0
    assert "1 cell run, 1 skipped" in again.output
    after = read_cells(tmp_path, "resume")
    assert len(after) == 2
    kept = after[after["cell_id"] == before["cell_id"].iloc[0]].iloc[0]
    assert kept["train_time_s"] == before["train_time_s"].iloc[0]  # not recomputed


def test_config_file_sets_options_and_cli_wins(cli, tmp_path: Path) -> None:
    config = tmp_path / "grid.toml"
    config.write_text('solver = ["euler[steps=2]", "midpoint[steps=2]"]\ntrace = "exact"\niterations = 2\n')
    result = cli("run", "--config", str(config), "--iterations", "1", "--name", "cfg", "--dry-run", tiny=False)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("2 cells would run")
    assert "euler[steps=2" in result.output and "midpoint[steps=2" in result.output
    result = cli("run", "--config", str(config), "--name", "cfg2", "--dataset", "8gaussians[n_train=128,n_test=64]",
                 "--field", "mlp[hidden=8]", "--quiet", "--mass-grid", "0", "--ref-solver", "rk4[steps=4]",
                 "--allow-loose-ref", tiny=False)
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "cfg2")
    assert set(cells["iterations"]) == {2} and set(cells["solver"]) == {"euler", "midpoint"}


def test_adjoint_backward_nfe_is_counted_apart_from_forward_and_evaluation(cli, tmp_path: Path) -> None:
    result = cli("run", "--solver", "rk4[steps=3,adjoint=true],rk4[steps=3]", "--name", "adj")
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "adj").set_index("solver_spec")
    adjoint = cells.loc["rk4[steps=3,adjoint=true]"]
    plain = cells.loc["rk4[steps=3,adjoint=false]"]
    assert adjoint["nfe_forward_mean"] == plain["nfe_forward_mean"] == 12
    assert plain["nfe_backward_mean"] == 0
    assert adjoint["nfe_backward_mean"] > 0  # the adjoint solve runs the dynamics backwards in time
    assert adjoint["nfe_eval"] == plain["nfe_eval"] == 12
    curves = pd.read_parquet(tmp_path / "results" / "adj" / "curves.parquet")
    assert (curves[curves["cell_id"] == adjoint["cell_id"]]["nfe_backward"] > 0).all()
    # with the same seed, adjoint and backprop gradients agree: same training losses to float32 precision
    assert adjoint["final_train_loss"] == pytest.approx(plain["final_train_loss"], abs=1e-3)


def test_two_dimensional_runs_report_mass_and_validity(cli, tmp_path: Path) -> None:
    assert cli("run", "--solver", "euler[steps=2]", "--metrics", "validity,plots", "--name", "mass").exit_code == 0
    row = read_cells(tmp_path, "mass").iloc[0]
    assert math.isfinite(row["mass"]) and math.isfinite(row["mass_ref"])
    assert 0.5 < row["mass_ref"] < 1.5  # a coarse 12x12 grid in the tiny test budget
    assert row["valid"] in (True, False)
    assert row["valid"] == (row["validity_reason"] == "")
    density = read_density_artifacts(tmp_path / "results" / "mass", row["cell_id"])
    assert density is not None and density.log_prob.shape == (12, 12)
    assert density.samples.shape == (96, 2) and density.data.shape == (96, 2)  # min(n_test, 2000), at most 500
    area = float((density.grid_x[1] - density.grid_x[0]) * (density.grid_y[1] - density.grid_y[0]))
    assert float(np.exp(density.log_prob.astype("float64")).sum()) * area == pytest.approx(row["mass_ref"], rel=1e-5)
