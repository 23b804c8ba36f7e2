"""``cnfbench.run(...)`` from Python: the command's options and checks, its rows back as a frame."""

from __future__ import annotations

from pathlib import Path

import pytest

import cnfbench

TINY = {"dataset": "8gaussians[n_train=256,n_val=32,n_test=96]", "field": "concatsquash[hidden=8]",
        "iterations": 3, "batch_size": 64, "ref_solver": "dopri5[rtol=1e-6,atol=1e-6]", "mass_grid": 12,
        "executor": "inline", "quiet": True}


def test_run_from_python_returns_the_rows_of_its_cells(tmp_path: Path) -> None:
    rows = cnfbench.run(**TINY, solver=["euler[steps=2]", "rk4[steps=2]"], seeds=2, out=str(tmp_path), name="nb")
    assert len(rows) == 4 and set(rows["status"]) == {"done"}
    assert sorted(rows["solver"].unique()) == ["euler", "rk4"] and sorted(rows["seed"].unique()) == [0, 1]
    again = cnfbench.run(**TINY, solver="euler[steps=2]", out=str(tmp_path), name="nb")  # resumes, one cell asked
    assert len(again) == 1 and again.loc[0, "cell_id"] in set(rows["cell_id"])


@pytest.mark.parametrize(("options", "says"), [
    ({"solver": "eulr"}, "unknown solver 'eulr'; known solvers: "),
    ({"solvr": "euler"}, "unknown option 'solvr' of cnfbench.run; options: "),
    ({"seeds": 0}, "seeds"),
])
def test_bad_options_raise_one_line_and_write_nothing(tmp_path: Path, options: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        cnfbench.run(**{**TINY, **options}, out=str(tmp_path), name="bad")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "bad").exists()
