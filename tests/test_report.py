"""cnfbench report: loading (and damaged input), aggregation, pivoting and every output format, on hand-built frames."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import cnfbench
from cnfbench.cli import main
from cnfbench.reports import (
    METRIC_GOALS,
    ReportError,
    aggregate,
    combine,
    metric_info,
    pivot,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
    to_text,
)
from cnfbench.run_folder import ResultsError, RunStore, load_run

SPECS = {
    "euler4": ("euler", "euler[steps=4,adjoint=false]"),
    "euler10": ("euler", "euler[steps=10,adjoint=false]"),
    "dopri5": ("dopri5", "dopri5[rtol=1e-05,atol=1e-05,max_steps=10000,adjoint=false]"),
}


def cell(solver: str = "dopri5", seed: int = 0, dataset: str = "8gaussians", trace: str = "exact",
         field: str = "concatsquash[hidden=64-64-64,activation=tanh]", status: str = "done", **metrics: float) -> dict:
    """One hand-built row with every identity column (cell ids are made up but unique per spec)."""
    solver_name, solver_spec = SPECS[solver]
    row = {
        "cell_id": f"{abs(hash((dataset, field, solver_spec, trace, seed))) % 16**16:016x}",
        "dataset": dataset.split("[")[0], "field": field.split("[")[0], "solver": solver_name, "trace": trace,
        "seed": seed, "dataset_spec": f"{dataset}[n_train=1000]" if "[" not in dataset else dataset,
        "field_spec": field, "solver_spec": solver_spec, "trace_spec": trace,
        "iterations": 100, "batch_size": 256, "lr": 0.003, "max_nfe": None, "eval_trace_spec": "exact",
        "ref_solver_spec": "dopri5[rtol=1e-07,atol=1e-07,max_steps=10000,adjoint=false]", "ref_dtype": "float64",
        "eval_batch_size": 4096, "mass_grid": 24, "device": "cpu", "status": status,
        "reason": "" if status == "done" else "NaN loss at iteration 3",
    }
    defaults = {"nll": math.nan, "nll_ref": math.nan, "mass": math.nan, "nfe_forward_mean": math.nan,
                "train_time_s": math.nan}
    row.update(defaults | metrics)
    return row


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def write_run(path: Path, cells: pd.DataFrame, curves: pd.DataFrame | None = None,
              provenance: dict | None = None) -> Path:
    store = RunStore(path)
    store.write_cells(cells)
    if curves is not None:
        store.write_curves(curves)
    store.write_run_json(provenance if provenance is not None else {
        "created": "2025-01-01T00:00:00+00:00", "versions": {"cnfbench": "0.1.0", "torch": "2.13.0",
                                                             "torchdiffeq": "0.2.5"},
        "machine": {"device": "cpu", "cpu": "Test CPU"}})
    return path


# --------------------------------------------------------------------------------------------------- aggregation

def test_aggregate_mean_std_n_over_done_seeds_only():
    cells = frame(cell("dopri5", 0, nll_ref=3.0), cell("dopri5", 1, nll_ref=3.2),
                  cell("dopri5", 2, status="diverged"), cell("euler4", 0, nll_ref=4.0))
    table = aggregate(cells, ["solver"], ["nll_ref"])
    assert list(table["solver"]) == ["dopri5", "euler"]  # steps is the same in every euler row
    dopri = table.iloc[0]
    assert dopri["nll_ref_mean"] == pytest.approx(3.1, abs=1e-12)
    assert dopri["nll_ref_std"] == pytest.approx(math.sqrt(0.02), abs=1e-12)
    assert (dopri["nll_ref_n"], dopri["cells"], dopri["done"], dopri["failed"]) == (2, 3, 2, "1 diverged")
    euler = table.iloc[1]
    assert euler["nll_ref_mean"] == 4.0 and math.isnan(euler["nll_ref_std"]) and euler["nll_ref_n"] == 1


def test_models_trained_with_other_solvers_are_not_pooled_as_seeds():
    """``cnfbench evaluate --solver``: one solver evaluating models trained with different ones gives one row
    per training solver, never one entry whose "seeds" are different models."""
    cells = frame(cell("dopri5", 0, nll_ref=3.0, trained_with="solver=euler[steps=4]"),
                  cell("dopri5", 0, nll_ref=2.9, trained_with="solver=dopri5"),
                  cell("dopri5", 1, nll_ref=2.8, trained_with="solver=dopri5"))
    table = aggregate(cells, ["solver"], ["nll_ref"])
    assert list(table["trained_with"]) == ["solver=euler", "solver=dopri5"]  # only what varies, as in the summary
    assert list(table["nll_ref_n"]) == [1, 2]


def test_aggregate_median_and_quartiles():
    cells = frame(*(cell("dopri5", s, nll_ref=v) for s, v in enumerate([4.0, 1.0, 3.0, 2.0])))
    row = aggregate(cells, ["solver"], ["nll_ref"], stat="median").iloc[0]
    assert (row["nll_ref_median"], row["nll_ref_q1"], row["nll_ref_q3"], row["nll_ref_n"]) == (2.5, 1.75, 3.25, 4)


def test_family_axes_show_only_varying_parameters():
    cells = frame(cell("euler4", nll_ref=4.0), cell("euler10", nll_ref=3.5), cell("dopri5", nll_ref=3.0))
    table = aggregate(cells, ["solver"], ["nll_ref"])
    assert list(table["solver"]) == ["euler[steps=4]", "euler[steps=10]", "dopri5"]


def test_metric_goals_are_defined_once_and_used_for_best():
    assert METRIC_GOALS["nll_ref"] == "min" and METRIC_GOALS["mass"] == "one"
    assert metric_info("mass").badness(0.97) == pytest.approx(0.03)
    assert metric_info("train_time_s").badness(2.0) == 2.0
    assert metric_info("entropy").goal is None


# --------------------------------------------------------------------------------------------------- pivot

def grid() -> pd.DataFrame:
    rows = []
    values = {("8gaussians", "euler4", "exact"): (3.5, 3.7), ("8gaussians", "dopri5", "exact"): (2.9, 3.1),
              ("8gaussians", "euler4", "hutchinson"): (3.6, 3.6), ("8gaussians", "dopri5", "hutchinson"): (3.0, 3.2),
              ("moons", "euler4", "exact"): (1.3, 1.5), ("moons", "dopri5", "exact"): (1.5, 1.5),
              ("moons", "euler4", "hutchinson"): (1.3, 1.3), ("moons", "dopri5", "hutchinson"): (1.6, 1.8)}
    for (dataset, solver, trace), pair in values.items():
        for seed, value in enumerate(pair):
            rows.append(cell(solver, seed, dataset=dataset, trace=trace, nll_ref=value,
                             mass=1.0 + 0.01 * seed if solver == "dopri5" else 1.1))
    return frame(*rows)


def test_pivot_rows_cols_entries_and_best_per_dataset():
    table = pivot(grid(), rows=["dataset"], cols=["solver", "trace"], metrics=["nll_ref"])
    assert table.row_keys == [("8gaussians",), ("moons",)]
    assert table.col_keys == [("euler", "exact"), ("dopri5", "exact"), ("euler", "hutchinson"),
                              ("dopri5", "hutchinson")]
    entry = table.entries[(("8gaussians",), ("dopri5", "exact"), "nll_ref")]
    assert (entry.center, entry.low, entry.n, entry.best) == (pytest.approx(3.0), pytest.approx(math.sqrt(0.02)), 2,
                                                              True)
    best = {(r[0], c) for (r, c, _), e in table.entries.items() if e.best}
    assert best == {("8gaussians", ("dopri5", "exact")), ("moons", ("euler", "hutchinson"))}
    assert table.header(("dopri5", "exact"), table.metrics[0]) == "dopri5, exact [nats]"


def test_best_mass_is_closest_to_one_and_ties_are_all_bold():
    cells = frame(cell("euler4", 0, mass=0.97), cell("euler10", 0, mass=1.02), cell("dopri5", 0, mass=1.02))
    table = pivot(cells, rows=["solver"], metrics=["mass"])
    best = [r[0] for (r, _, _), e in table.entries.items() if e.best]
    assert best == ["euler[steps=10]", "dopri5"]


def test_flagged_training_solver_nll_is_marked_and_never_best():
    cells = frame(cell("euler4", 0, nll=2.6, nll_ref=3.2, valid=False,
                       validity_reason="nll 2.600 is below the true entropy 2.840"),
                  cell("dopri5", 0, nll=3.0, nll_ref=3.0, valid=True, validity_reason=""))
    table = pivot(cells, rows=["solver"], metrics=["nll", "nll_ref"])
    euler, dopri = table.entries[(("euler",), (), "nll")], table.entries[(("dopri5",), (), "nll")]
    assert (euler.flagged, euler.best, dopri.best) == (True, False, True)
    assert not table.entries[(("euler",), (), "nll_ref")].flagged  # the reference solve is not concerned
    text = to_text(table)
    assert "2.600 (!)" in text and "3.000 *" not in text  # one seed: best, but untested, so not marked
    assert any(n.startswith("(!) euler") and "on 8gaussians: nll 2.600 is below" in n for n in table.notes)


def test_varying_axes_not_asked_for_are_added_to_the_rows():
    cells = frame(cell("dopri5", field="mlp[hidden=8]", nll_ref=1.0), cell("dopri5", field="mlp[hidden=16]",
                                                                               nll_ref=2.0))
    table = pivot(cells, cols=["solver"], rows=["dataset"], metrics=["nll_ref"])
    assert table.rows == ["dataset", "field"]
    assert table.row_keys == [("8gaussians", "mlp[hidden=8]"), ("8gaussians", "mlp[hidden=16]")]
    assert any("field" in note for note in table.notes)


def test_default_table_has_one_row_per_configuration_and_metric_columns():
    table = pivot(grid())
    assert table.rows == ["dataset", "solver", "trace"]
    assert [m.name for m in table.metrics] == ["nll_ref", "mass"]
    assert table.header((), table.metrics[0]) == "test NLL, ref solve [nats]"


def test_failed_cells_are_counted_and_named():
    cells = frame(cell("dopri5", 0, nll_ref=3.0), cell("dopri5", 1, status="diverged"),
                  cell("euler4", 0, status="error"))
    table = pivot(cells, rows=["solver"], metrics=["nll_ref"])
    assert table.entries[(("euler",), (), "nll_ref")].failed == "1 error"
    text = to_text(table)
    assert "1 error" in text and "3.000 (n=1)" in text
    assert any("dopri5 · seed 1: diverged (NaN loss at iteration 3)" in n for n in table.notes)


def small_table() -> pd.DataFrame:
    return frame(cell("euler4", 0, nll_ref=3.55), cell("euler4", 1, nll_ref=3.65),
                 cell("dopri5", 0, nll_ref=2.95), cell("dopri5", 1, nll_ref=3.05))


def test_markdown_output_exact():
    text = to_markdown(pivot(small_table(), rows=["dataset"], cols=["solver"], metrics=["nll_ref"]))
    assert text == (
        "*test NLL, ref solve \\[nats\\]: mean ± std over seeds, n = 2 seeds per entry; best per dataset in bold "
        "(lowest) where it is better than every other entry by Welch's t-test over the seeds (p &lt; 0.05; with "
        "fewer than 2 seeds, untested: not marked)*\n\n"
        "| dataset | euler \\[nats\\] | dopri5 \\[nats\\] |\n"
        "| --- | ---: | ---: |\n"
        "| 8gaussians | 3.600 ± 0.071 | **3.000 ± 0.071** |\n")


def test_latex_output_exact_booktabs_and_bold():
    text = to_latex(pivot(small_table(), rows=["dataset"], cols=["solver"], metrics=["nll_ref"]))
    assert text == (
        "% generated by cnfbench report; needs \\usepackage{booktabs}\n"
        "\\begin{table}[t]\n"
        "\\centering\n"
        "\\caption{test NLL, ref solve {[}nats{]}: mean $\\pm$ std over seeds, n = 2 seeds per entry; best per dataset "
        "in bold (lowest) where it is better than every other entry by Welch's t-test over the seeds (p $<$ 0.05; "
        "with fewer than 2 seeds, untested: not marked)}\n"
        "\\label{tab:cnfbench}\n"
        "\\begin{tabular}{lrr}\n"
        "\\toprule\n"
        " & \\multicolumn{2}{c}{test NLL, ref solve {[}nats{]}} \\\\\n"
        "\\cmidrule(lr){2-3}\n"
        "dataset & euler & dopri5 \\\\\n"
        "\\midrule\n"
        "8gaussians & $3.600 \\pm 0.071$ & $\\mathbf{3.000 \\pm 0.071}$ \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\end{table}\n")


def test_latex_escapes_special_characters():
    cells = frame(cell("dopri5", 0, dataset="my_data[n_train=5]", nll_ref=1.0),
                  cell("euler4", 0, dataset="my_data[n_train=5]", nll_ref=2.0))
    text = to_latex(pivot(cells, rows=["dataset"], cols=["solver"], metrics=["nll_ref"]))
    assert "my\\_data & " in text


def test_csv_output_has_numbers_and_units():
    rows = list(csv.reader(io.StringIO(to_csv(pivot(small_table(), rows=["dataset"], cols=["solver"],
                                                     metrics=["nll_ref"])))))
    assert rows[0] == ["dataset", "euler mean [nats]", "euler std [nats]", "euler n", "euler best",
                       "dopri5 mean [nats]", "dopri5 std [nats]", "dopri5 n", "dopri5 best"]
    assert rows[1][0] == "8gaussians"
    assert float(rows[1][1]) == pytest.approx(3.6) and float(rows[1][2]) == pytest.approx(math.sqrt(0.005))
    assert rows[1][3:5] == ["2", "False"] and rows[1][7:9] == ["2", "True"]


def test_json_output():
    data = json.loads(to_json(pivot(small_table(), rows=["dataset"], cols=["solver"], metrics=["nll_ref"],
                                    stat="median")))
    assert data["stat"] == "median" and data["metrics"][0]["unit"] == "nats" and data["metrics"][0]["goal"] == "min"
    entry = next(e for e in data["entries"] if e["col"] == {"solver": "dopri5"})
    assert entry == {"row": {"dataset": "8gaussians"}, "col": {"solver": "dopri5"}, "metric": "nll_ref",
                     "median": pytest.approx(3.0), "q1": pytest.approx(2.975), "q3": pytest.approx(3.025), "n": 2,
                     "cells": 2, "failed": "", "best": True, "significant": True, "flagged": False}


def test_median_text_shows_the_interquartile_range():
    text = to_text(pivot(small_table(), rows=["solver"], metrics=["nll_ref"], stat="median"))
    assert "3.000 [2.975–3.025] *" in text and "median [first–third quartile]" in text


def test_bad_names_raise_one_line_listing_valid_ones():
    with pytest.raises(ReportError, match=r"^unknown metric 'nll_rf'; valid metrics: nll, nll_ref, mass"):
        pivot(small_table(), metrics=["nll_rf"])
    with pytest.raises(ReportError, match=r"^unknown column 'solvr'; valid columns: dataset, field, solver, trace, "
                                          r"seed"):
        pivot(small_table(), rows=["solvr"])


# --------------------------------------------------------------------------------------------------- loading

def test_load_results_is_exported_and_reads_a_run(tmp_path):
    write_run(tmp_path / "r", small_table())
    loaded = cnfbench.load_results(tmp_path / "r")
    assert len(loaded) == 4 and cnfbench.pivot is pivot


def test_damaged_parquet_falls_back_to_csv_with_a_warning(tmp_path):
    run_dir = write_run(tmp_path / "r", small_table())
    data = (run_dir / "cells.parquet").read_bytes()
    (run_dir / "cells.parquet").write_bytes(data[: len(data) // 2])
    run = load_run(run_dir)
    assert len(run.cells) == 4
    assert len(run.warnings) == 1 and "cells.parquet is unreadable" in run.warnings[0]
    assert "using" in run.warnings[0] and "cells.csv" in run.warnings[0]


def test_missing_and_unreadable_inputs_name_the_file(tmp_path):
    with pytest.raises(ResultsError, match="no run folder at .*nowhere"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="holds no cells.parquet or cells.csv"):
        load_run(tmp_path / "empty")
    run_dir = write_run(tmp_path / "r", small_table())
    (run_dir / "cells.parquet").write_bytes(b"PAR1 garbage")
    (run_dir / "cells.csv").write_text("")
    with pytest.raises(ResultsError, match="cells.csv is unreadable"):
        load_run(run_dir)


def test_hand_edited_run_json_gives_a_warning_and_the_cells_are_used(tmp_path):
    run_dir = write_run(tmp_path / "r", small_table())
    (run_dir / "run.json").write_text('{"versions": "torch 2", ')
    run = load_run(run_dir)
    assert run.provenance == {} and len(run.cells) == 4 and "run.json is unreadable" in run.warnings[0]
    (run_dir / "run.json").write_text('{"versions": "torch 2"}')
    run = load_run(run_dir)
    assert run.versions == {} and "'versions' is not an object" in run.warnings[0]


def test_combine_names_the_run_of_each_row(tmp_path):
    a = load_run(write_run(tmp_path / "a", small_table()))
    b = load_run(write_run(tmp_path / "b", small_table()))
    cells = combine([a, b])
    assert list(cells["run"].unique()) == ["a", "b"]
    table = pivot(cells, rows=["solver"], metrics=["nll_ref"])
    assert table.rows == ["solver", "run"]


# --------------------------------------------------------------------------------------------------- command line

def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_report_writes_every_format(tmp_path):
    run_dir = write_run(tmp_path / "r", grid())
    out = tmp_path / "out"
    result = invoke("report", str(run_dir), "--rows", "dataset", "--cols", "solver,trace", "--metric", "nll_ref",
                    "--markdown", str(out / "t.md"), "--csv", str(out / "t.csv"), "--latex", str(out / "t.tex"),
                    "--json", str(out / "t.json"), "--caption", "Solvers & traces", "--label", "tab:solvers")
    assert result.exit_code == 0, result.output
    assert "dopri5, exact \\[nats\\]" in (out / "t.md").read_text() and "2.900" not in result.output
    assert "dopri5, exact" in result.output and "[nats]" in result.output  # the terminal may fold the header
    assert (out / "t.md").read_text().count("**") == 0  # no best value beats the runner-up significantly here
    tex = (out / "t.tex").read_text()
    assert "\\toprule" in tex and "\\caption{Solvers \\& traces}" in tex and "\\label{tab:solvers}" in tex
    assert "\\label{tab:r}" in invoke("report", str(run_dir), "--latex", "-").output  # default: the run's name
    assert json.loads((out / "t.json").read_text())["rows"] == ["dataset"]
    assert (out / "t.csv").read_text().startswith("dataset,")


def test_cli_report_markdown_to_stdout(tmp_path):
    run_dir = write_run(tmp_path / "r", small_table())
    result = invoke("report", str(run_dir), "--cols", "solver", "--markdown", "-")
    assert result.exit_code == 0
    assert result.output.startswith("*test NLL, ref solve \\[nats\\]")  # brackets escaped: never a link


@pytest.mark.parametrize(("args", "message"), [
    (["--metric", "nll_rf"], "Error: unknown metric 'nll_rf'; valid metrics: nll, nll_ref, mass"),
    (["--rows", "solvr"], "Error: unknown column 'solvr'; valid columns: dataset, field, objective, solver"),
])
def test_cli_report_bad_names_exit_2_with_one_line(tmp_path, args, message):
    run_dir = write_run(tmp_path / "r", small_table())
    result = invoke("report", str(run_dir), *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)


def test_cli_report_missing_folder_and_damaged_parquet(tmp_path):
    result = invoke("report", str(tmp_path / "missing"))
    assert result.exit_code == 2 and result.output.strip() == f"Error: no run folder at {tmp_path / 'missing'}"
    run_dir = write_run(tmp_path / "r", small_table())
    (run_dir / "cells.parquet").write_bytes(b"not parquet")
    result = invoke("report", str(run_dir))
    assert result.exit_code == 0
    assert "warning: " in result.output and "cells.parquet is unreadable" in result.output
    assert "3.000 ± 0.071" in result.output


def test_aggregate_never_averages_datasets_together_unless_told():
    cells = frame(cell("dopri5", 0, nll_ref=3.0), cell("dopri5", 0, dataset="moons", nll_ref=1.0),
                  cell("euler4", 0, nll_ref=4.0), cell("euler4", 0, dataset="moons", nll_ref=2.0))
    kept = aggregate(cells, ["solver"], ["nll_ref"])
    assert list(kept.columns[:2]) == ["solver", "dataset"] and len(kept) == 4
    assert sorted(kept["nll_ref_mean"]) == [1.0, 2.0, 3.0, 4.0]
    pooled = aggregate(cells, ["solver"], ["nll_ref"], pool=["dataset"])
    assert list(pooled["nll_ref_mean"]) == [2.0, 3.0] and "dataset" not in pooled
    assert list(aggregate(cells, ["solver"], ["nll_ref"], pool=True)["nll_ref_mean"]) == [2.0, 3.0]


def test_pivot_tables_give_a_frame_and_a_notebook_view():
    cells = frame(cell("dopri5", 0, nll_ref=3.0), cell("dopri5", 1, nll_ref=3.2), cell("euler4", 0, nll_ref=4.0),
                  cell("euler4", 1, nll_ref=4.4))
    table = pivot(cells, rows=["solver"], metrics=["nll_ref"])
    numbers = table.to_frame()
    assert list(numbers.index) == ["dopri5", "euler"] and numbers.index.name == "solver"
    assert numbers.loc["dopri5", ("nll_ref", "mean")] == pytest.approx(3.1)
    assert numbers.loc["euler", ("nll_ref", "n")] == 2
    across = pivot(cells, rows=["dataset"], cols=["solver"], metrics=["nll_ref"]).to_frame()
    assert across.loc["8gaussians", ("euler", "nll_ref", "mean")] == pytest.approx(4.2)
    page = table._repr_html_()
    assert "<table" in page and "3.100 ± 0.141" in page and "test NLL, ref solve [nats]" in page


# --------------------------------------------------------------------------------------------------- thread counts

def shared(threads: tuple, concurrency: tuple) -> pd.DataFrame:
    """Two solvers of two seeds each, the cells' torch threads and concurrency as given (None: not recorded)."""
    rows = [cell(solver, seed, nll_ref=3.0 + seed, train_time_s=1.0 + seed) for solver in ("euler4", "dopri5")
            for seed in (0, 1)]
    for row, thread, at_once in zip(rows, threads, concurrency, strict=True):
        row.update(torch_threads=thread, concurrency=at_once)
    return frame(*rows)


TIMING_NOTE = ("timings (train time [s]) compare cells run with different torch thread counts (1, 2 threads) and "
               "concurrency (1, 4 cells at a time): not like for like")


def test_a_table_of_timings_says_when_its_cells_ran_with_different_threads_or_concurrency():
    cells = shared((1, 2, 1, 1), (1, 1, 1, 4))
    table = pivot(cells, rows=["solver"], metrics=["nll_ref", "train_time_s"])
    assert TIMING_NOTE in table.notes
    assert f"note: {TIMING_NOTE}" in to_text(table, width=1000)
    assert "torch thread counts (1, 2 threads) and concurrency (1, 4 cells at a time)" in to_markdown(table)
    assert f"% note: {TIMING_NOTE}" in to_latex(table)
    only = pivot(shared((1, 2, 1, 1), (1, 1, 1, 1)), rows=["solver"], metrics=["train_time_s"]).notes
    assert only == ["timings (train time [s]) compare cells run with different torch thread counts (1, 2 threads): "
                    "not like for like"]
    assert not any("timings" in n for n in pivot(cells, rows=["solver"], metrics=["nll_ref"]).notes)  # no time shown


def test_rows_that_do_not_record_threads_are_unknown_never_a_difference():
    older = shared((None, None, 2, 2), (None, None, 4, 4))  # rows written before the columns existed, beside new ones
    assert not any("timings" in n for n in pivot(older, rows=["solver"], metrics=["train_time_s"]).notes)
    missing = shared((1,) * 4, (1,) * 4).drop(columns=["torch_threads", "concurrency"])
    assert not any("timings" in n for n in pivot(missing, rows=["solver"], metrics=["train_time_s"]).notes)
    failed = shared((1, 1, 1, 8), (1, 1, 1, 1))
    failed.loc[3, "status"] = "diverged"  # a cell that did not finish has no timing in the table
    assert not any("timings" in n for n in pivot(failed, rows=["solver"], metrics=["train_time_s"]).notes)


def test_cli_report_warns_in_every_format_and_on_the_page(tmp_path):
    run_dir = write_run(tmp_path / "r", shared((1, 2, 1, 1), (1, 1, 1, 4)))
    result = invoke("report", str(run_dir), "--metric", "nll_ref,train_time_s", "--html")
    assert result.exit_code == 0, result.output
    assert "note: timings (train time [s]) compare cells run with different torch thread counts (1, 2 threads)" \
        in result.output
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert f"<li>{TIMING_NOTE}</li>" in page  # under the table
    assert '<p class="warnings">timings (train time [s]) compare cells run with different torch thread counts (1, 2 ' \
           "threads) and concurrency (1, 4 cells at a time): not like for like</p>" in page  # over the chart
