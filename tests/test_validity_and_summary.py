"""The validity flag, the 2D mass check, the summary table and the results store."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from cnfbench.run_folder import RunStore, check_run_name, load_results
from cnfbench.summary import compact_labels, render, summary_table, validity_notes
from cnfbench.validity import MASS_TOLERANCE, integrate_mass, mass_grid, validity


def test_mass_of_a_gaussian_on_the_grid_is_one() -> None:
    data = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.7 + 1.0
    grid, area = mass_grid(data, 60)
    assert grid.shape == (3600, 2)
    log_prob = torch.distributions.MultivariateNormal(torch.tensor([1.0, 1.0], dtype=torch.float64),
                                                      0.49 * torch.eye(2, dtype=torch.float64)).log_prob(grid)
    assert integrate_mass(log_prob, area) == pytest.approx(1.0, abs=2e-3)
    assert integrate_mass(log_prob + math.log(2.0), area) == pytest.approx(2.0, abs=4e-3)
    assert math.isnan(integrate_mass(torch.full((4,), math.nan), 1.0))


def test_grid_covers_the_data_with_padding() -> None:
    data = torch.tensor([[-1.0, 0.0], [3.0, 2.0]])
    grid, area = mass_grid(data, 10)
    assert grid[:, 0].min() < -1.0 and grid[:, 0].max() > 3.0
    assert grid[:, 1].min() < 0.0 and grid[:, 1].max() > 2.0
    assert area == pytest.approx((6.0 / 10) * (4.0 / 10))


@pytest.mark.parametrize(
    ("row", "valid", "fragment"),
    [
        ({"nll": 2.90, "entropy": 2.83, "nll_minus_entropy_stderr": 0.01, "mass": 1.0}, True, ""),
        ({"nll": 2.76, "entropy": 2.83, "nll_minus_entropy_stderr": 0.01, "mass": 1.0}, False,
         "below the true entropy"),
        # within two paired standard errors of the entropy: not flagged
        ({"nll": 2.82, "entropy": 2.83, "nll_minus_entropy_stderr": 0.01, "mass": 1.0}, True, ""),
        ({"nll": 2.90, "entropy": 2.83, "nll_minus_entropy_stderr": 0.01, "mass": 1.0 + 2 * MASS_TOLERANCE}, False,
         "integrates to 1.060"),
        ({"nll": 2.90, "entropy": math.nan, "mass": math.nan}, True, ""),  # nothing known: nothing to flag
        ({"nll": 2.90, "entropy": math.nan, "mass": math.inf}, False, "integrates to inf"),
    ],
)
def test_validity_flags(row: dict, valid: bool, fragment: str) -> None:
    got_valid, reason = validity(row)
    assert got_valid is valid
    assert fragment in reason
    assert (reason == "") is valid


def _rows() -> pd.DataFrame:
    base = {"dataset": "8gaussians", "field": "concatsquash", "trace": "exact", "status": "done", "reason": "",
            "dataset_spec": "8gaussians[n_train=20000]", "field_spec": "concatsquash[hidden=64-64-64]",
            "trace_spec": "exact", "valid": True, "validity_reason": "", "nfe_forward_mean": 10.0}
    return pd.DataFrame([
        {**base, "solver": "euler", "solver_spec": "euler[steps=10,adjoint=false]", "seed": 0, "nll": 2.0,
         "valid": False, "validity_reason": "nll below entropy"},
        {**base, "solver": "euler", "solver_spec": "euler[steps=10,adjoint=false]", "seed": 1, "nll": 4.0},
        {**base, "solver": "euler", "solver_spec": "euler[steps=20,adjoint=false]", "seed": 0, "nll": 3.0},
        {**base, "solver": "dopri5", "solver_spec": "dopri5[rtol=1e-05]", "seed": 0, "nll": math.nan,
         "status": "diverged", "reason": "step size underflow"},
    ])


def test_summary_aggregates_seeds_and_keeps_units() -> None:
    table = summary_table(_rows())
    assert list(table.columns[:2]) == ["dataset", "solver"]  # the dataset, and the only axis that varies
    assert list(table["solver"]) == ["euler[steps=10]", "euler[steps=20]", "dopri5"]
    first = table.iloc[0]
    assert first["n"] == "2"
    assert first["NLL solver [nats]"] == "3.000±1.414"
    assert first["valid"] == "NO (!)"
    assert table.iloc[1]["NLL solver [nats]"] == "3.000"
    assert table.iloc[2]["n"] == "0/1" and table.iloc[2]["reason"] == "step size underflow"
    assert all("[" in column for column in table.columns if column.startswith("NLL"))
    notes = validity_notes(_rows())
    assert notes == ["(!) euler[steps=10] · seed 0 on 8gaussians: nll below entropy"]


@pytest.mark.parametrize("width", [60, 100, 160])
def test_the_summary_fits_the_terminal(width: int) -> None:
    """Every line at most ``width`` columns (rich folds what does not fit), units kept, no colour codes off a
    terminal; the reason of a cell that did not finish follows the table."""
    rows = pd.concat([_rows(), _rows().assign(dataset="checkerboard", dataset_spec="checkerboard[n_train=20000]",
                                             seed=lambda frame: frame["seed"] + 5)], ignore_index=True)
    text = render(summary_table(rows), validity_notes(rows), width=width)
    assert max(len(line) for line in text.splitlines()) <= width, text
    assert "[nats]" in text and "\x1b[" not in text
    flat = " ".join(text.split())
    assert "not done: 8gaussians · dopri5 (0/1 seeds done): step size underflow" in flat
    assert "(!) 8gaussians · euler[steps=10] · seed 0: nll below entropy" in flat
    assert "(!) checkerboard · euler[steps=10] · seed 5: nll below entropy" in flat


def test_the_summary_is_coloured_only_when_asked_and_never_under_no_color(monkeypatch: pytest.MonkeyPatch
                                                                          ) -> None:
    table = summary_table(_rows())
    assert "\x1b[31m" in render(table, width=100, color=True)  # a flagged row in red
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[31m" not in render(table, width=100, color=True)  # bold headers stay: NO_COLOR is about colour


def test_compact_labels_drop_constant_parameters() -> None:
    labels = compact_labels(pd.Series(["rk4[steps=4,adjoint=false]", "rk4[steps=8,adjoint=false]", "exact"]))
    assert list(labels) == ["rk4[steps=4]", "rk4[steps=8]", "exact"]


def test_store_round_trip_and_no_temporary_files_left(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    frame = pd.DataFrame([{"cell_id": "a", "nll": 1.5}, {"cell_id": "b", "nll": math.nan}])
    store.write_cells(frame)
    store.write_cells(frame)  # overwrite in place
    pd.testing.assert_frame_equal(load_results(tmp_path / "run"), frame)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["cells.csv", "cells.parquet"]


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".", "..", "-rf", "x" * 200, "a b"])
def test_run_names_that_could_escape_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid run name"):
        check_run_name(name)


def test_every_result_column_is_documented_in_code_and_readme(cli, tmp_path: Path) -> None:
    from cnfbench.columns import COLUMN_NAMES

    assert cli("run", "--solver", "euler[steps=2]", "--name", "cols").exit_code == 0
    columns = list(pd.read_parquet(tmp_path / "results" / "cols" / "cells.parquet").columns)
    assert columns == list(COLUMN_NAMES)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name for name in COLUMN_NAMES if f"`{name}`" not in readme]
    assert not missing, f"columns missing from README's 'What the numbers mean': {missing}"
