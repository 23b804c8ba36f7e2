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


def test_the_summary_shows_once_and_progress_is_compact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = {**TINY, "quiet": False}
    rows = cnfbench.run(**options, solver=["euler[steps=2]", "rk4[steps=2]"], out=str(tmp_path), name="once")
    out, err = capsys.readouterr()
    assert len(rows) == 2
    assert out.count("Summary (test NLL in nats per sample") == 1 and "euler" in out and "rk4" in out
    assert "train loss" not in err and "evaluating" not in err and " start " not in err  # no line per event
    assert err.count("] done in ") == 2 and "2 cells finished in " in err
    with pytest.raises(ValueError, match="unknown solver 'eulr'"):
        cnfbench.run(**options, solver="eulr", out=str(tmp_path), name="bad")
    out, err = capsys.readouterr()
    assert "Error:" not in out + err  # raised, never also printed


def test_in_a_real_notebook_one_display_updates_and_the_summary_renders_as_html(tmp_path: Path) -> None:
    """A real Jupyter kernel (nbclient) runs ``cnfbench.run``: one progress output updated in place, the summary
    once as an HTML table, no line per event, and a bad option is an exception only."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    options = {**TINY, "quiet": False, "solver": "euler[steps=2]", "seeds": 2, "out": str(tmp_path), "name": "nb"}
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f"import cnfbench\nrows = cnfbench.run(**{options!r})\nlen(rows)"),
        nbformat.v4.new_code_cell(f"cnfbench.run(**{{**{options!r}, 'solver': 'eulr', 'name': 'bad'}})"),
    ])
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    run_outputs, error_outputs = (cell["outputs"] for cell in notebook.cells)
    displays = [o for o in run_outputs if o["output_type"] == "display_data"]
    assert len(displays) == 2, run_outputs  # the progress area and the summary: nothing else
    progress, summary = displays
    assert "2 cells finished in " in progress["data"]["text/plain"]  # updated in place to the end
    html = summary["data"]["text/html"]
    assert "<table>" in html and "NLL ref [nats]" in html and "8gaussians" in html
    streams = "".join(o.get("text", "") for o in run_outputs if o["output_type"] == "stream")
    assert "train loss" not in streams and "] done in " not in streams and "Summary" not in streams
    assert [o["data"]["text/plain"] for o in run_outputs if o["output_type"] == "execute_result"] == ["2"]
    assert [o["output_type"] for o in error_outputs] == ["error"]  # the exception, and no printed Error: line
    assert error_outputs[0]["ename"] == "ValueError" and "unknown solver 'eulr'" in error_outputs[0]["evalue"]
