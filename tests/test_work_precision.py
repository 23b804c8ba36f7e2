"""Work-precision (``cnfbench report --work-precision``): slopes of known power laws, points by cost, seeds as ranges,
rows that ``cnfbench evaluate`` re-solved grouped by model and solver family, flagged points kept and marked, the
figure's layout, the refusals through the CLI, and one real evaluate sweep of a tiny flow-matching model."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import read_cells
from test_plot_layout import assert_laid_out, drawn_texts
from test_report import cell, frame, write_run

from cnfbench.cli import main
from cnfbench.reports import ReportError
from cnfbench.reports.plots import FULL_WIDTH
from cnfbench.reports.work_precision import loglog_slope, to_text, work_precision, wp_figure

EULER = "euler[steps={},adjoint=false]"
RK4 = "rk4[steps={},adjoint=false]"
DOPRI = "dopri5[rtol={0},atol={0},max_steps=10000,adjoint=false]"


def row(spec: str, seed: int = 0, model: str = "", trained_with: str = "", **metrics: object) -> dict:
    """A finished row evaluated with solver ``spec`` (its own cell id), of model ``model`` when given."""
    base = cell("dopri5", seed, **metrics)
    base.update(solver=spec.split("[")[0], solver_spec=spec, trained_with=trained_with,
                cell_id=f"{abs(hash((spec, seed, model, trained_with))) % 16**16:016x}")
    if model:
        base.update(model_key=f"{model}-{seed}", trained_in=f"{model}-{seed}")
    return base


def power_law(steps: list[int], template: str, stages: int, order: int, constant: float, seeds: int = 2
              ) -> list[dict]:
    """Rows whose error is ``constant * NFE^-order`` on average over the seeds (the seeds at x0.9 and x1.1)."""
    rows = []
    for s in steps:
        nfe = stages * s
        for seed in range(seeds):
            factor = 1.0 if seeds == 1 else (0.9, 1.1)[seed % 2]
            rows.append(row(template.format(s), seed, logp_error_mean=constant * nfe**-order * factor,
                            logp_error_max=3 * constant * nfe**-order, nfe_eval=float(nfe),
                            eval_time_s=0.01 * nfe * factor, valid=True))
    return rows


def sweep() -> pd.DataFrame:
    return frame(*power_law([2, 4, 8, 16], EULER, 1, 1, 2.0), *power_law([2, 4, 8], RK4, 4, 4, 500.0))


def test_loglog_slope_of_power_laws_and_too_few_points():
    assert loglog_slope([1, 10, 100], [3.0, 0.3, 0.03]) == pytest.approx(-1.0)
    assert loglog_slope([2, 4, 8], [1 / 16, 1 / 256, 1 / 4096]) == pytest.approx(-4.0)
    assert math.isnan(loglog_slope([4, 4], [1.0, 2.0]))  # one cost only
    assert math.isnan(loglog_slope([1, 2], [0.0, -1.0]))  # nothing positive to take a log of


def test_lines_per_family_points_by_cost_and_known_slopes():
    view = work_precision(sweep())
    euler, rk4 = view.lines
    assert (euler.label, rk4.label) == ("euler", "rk4") and view.datasets == ["8gaussians"]
    assert [p.label for p in euler.points] == [f"euler[steps={s}]" for s in (2, 4, 8, 16)]
    assert [p.nfe for p in rk4.points] == [8.0, 16.0, 32.0]  # ordered by cost
    assert euler.slope("nfe") == pytest.approx(-1.0) and rk4.slope("nfe") == pytest.approx(-4.0)
    # seconds are 0.01 * NFE on average: the same slopes against time
    assert euler.slope("seconds") == pytest.approx(-1.0) and rk4.slope("seconds") == pytest.approx(-4.0)
    first = euler.points[0]
    assert first.seeds == 2 and first.error == pytest.approx(1.0)  # mean of 0.9 and 1.1 times 2 / 2
    assert first.error_range == pytest.approx((0.9, 1.1)) and first.nfe_range == (2.0, 2.0)
    assert work_precision(sweep(), "logp_error_max").lines[0].slope("nfe") == pytest.approx(-1.0)


def test_text_table_has_units_ranges_and_slopes():
    text = to_text(work_precision(sweep()), 100)
    assert "Work-precision on 8gaussians: log p error, mean [nats] against NFE test pass [evals] and eval time [s]" \
        in " ".join(text.split())
    assert "1.00e+00 [9.00e-01–1.10e+00]" in text  # euler[steps=2]: mean [minimum–maximum] over the seeds
    assert "against the reference solve dopri5[rtol=1e-07,atol=1e-07,max_steps=10000,adjoint=false] in float64" \
        in " ".join(text.split())
    slopes = text[text.index("Log-log slopes"):]
    assert "-1.00" in slopes and "-4.00" in slopes
    assert all(len(line) <= 100 for line in text.splitlines())
    narrow = to_text(work_precision(sweep()), 60)
    assert all(len(line) <= 60 for line in narrow.splitlines())


def test_an_evaluated_model_is_one_line_with_its_training_row():
    """A tolerance sweep by ``cnfbench evaluate`` over one model trained with dopri5: the training row (no
    ``trained_with``) and the re-solved rows (``trained_with solver=dopri5…``) are one dopri5 line."""
    trained = DOPRI.format("1e-05")
    rows = [row(trained, model="m1", logp_error_mean=1e-4, nfe_eval=60.0, eval_time_s=0.6)]
    for tol, error, nfe in (("0.001", 1e-2, 20.0), ("1e-07", 1e-6, 140.0)):
        rows.append(row(DOPRI.format(tol), model="m1", trained_with=f"solver={trained}", logp_error_mean=error,
                        nfe_eval=nfe, eval_time_s=nfe / 100))
    view = work_precision(frame(*rows))
    (line,) = view.lines
    assert line.label == "dopri5" and [p.nfe for p in line.points] == [20.0, 60.0, 140.0]
    assert line.slope("nfe") < 0


def test_models_trained_with_different_solvers_keep_their_own_lines():
    rows = []
    for model, trained in (("m1", DOPRI.format("1e-05")), ("m2", EULER.format(8))):
        rows.append(row(trained, model=model, logp_error_mean=0.01, nfe_eval=40.0, eval_time_s=0.4))
        for tol, error, nfe in (("0.001", 1e-2, 20.0), ("1e-07", 1e-6, 140.0)):
            rows.append(row(DOPRI.format(tol), model=model, trained_with=f"solver={trained}",
                            logp_error_mean=error, nfe_eval=nfe, eval_time_s=nfe / 100))
    view = work_precision(frame(*rows))
    labels = [line.label for line in view.lines]
    assert labels == ["dopri5 · trained with solver=dopri5", "euler · trained with solver=euler",
                      "dopri5 · trained with solver=euler"]
    assert [len(line.points) for line in view.lines] == [3, 1, 2]  # no model's rows pooled with another's
    assert any("one point only" in note and "euler · trained with solver=euler" in note for note in view.notes)


def test_flagged_points_are_kept_marked_and_noted():
    rows = power_law([2, 4, 8], EULER, 1, 1, 2.0, seeds=1)
    rows[0]["valid"] = False
    view = work_precision(frame(*rows))
    assert len(view.lines[0].points) == 3 and view.lines[0].points[0].flagged
    text = to_text(view)
    assert "1.00e+00 (!)" in text and "flagged, kept and marked" in text and "euler[steps=2] on 8gaussians" in text
    figure = wp_figure(view, "8gaussians", "8gaussians: work-precision")
    hollow = [artist for axes in figure.axes for artist in axes.get_lines()
              if artist.get_marker() == "o" and artist.get_markerfacecolor() == "white"]
    assert len(hollow) == 2  # the flagged point in each panel
    assert any("open marker: flagged" in t.get_text() for t in drawn_texts(figure))


def test_failed_points_are_left_out_with_a_note_and_seeds_counted():
    rows = power_law([2, 4, 8], EULER, 1, 1, 2.0)
    rows.append(row(EULER.format(32), 0, status="budget"))
    rows[0]["status"] = "diverged"
    view = work_precision(frame(*rows))
    assert [p.label for p in view.lines[0].points] == ["euler[steps=2]", "euler[steps=4]", "euler[steps=8]"]
    assert view.lines[0].points[0].seeds == 1 and view.lines[0].points[0].cells == 2
    notes = " ".join(view.notes)
    assert "no finished seed with a value, not shown: euler[steps=32] on 8gaussians (1 budget)" in notes
    assert "euler[steps=2] on 8gaussians (1 of 2)" in notes


def test_a_sample_metric_uses_the_sampling_cost():
    rows = [row(EULER.format(s), energy_distance=0.5 / s + 0.01, nfe_sample=float(s), sample_time_s=0.1 * s,
                nfe_eval=1000.0, eval_time_s=9.0, logp_error_mean=1.0) for s in (2, 4, 8)]
    view = work_precision(frame(*rows), "energy_distance")
    assert [p.nfe for p in view.lines[0].points] == [2.0, 4.0, 8.0]
    assert view.nfe.name == "nfe_sample" and view.seconds.name == "sample_time_s"
    assert any("levels off at the model's own error" in note for note in view.notes)


@pytest.mark.parametrize("count", [1, 2, 5])
def test_figure_is_full_width_log_log_and_keeps_text_apart(count):
    families = [(EULER, 1, 1, 2.0), (RK4, 4, 4, 500.0), ("heun2[steps={},adjoint=false]", 2, 2, 20.0),
                ("midpoint[steps={},adjoint=false]", 2, 2, 10.0), ("heun3[steps={},adjoint=false]", 3, 3, 60.0)]
    rows = [r for template, stages, order, c in families[:count] for r in power_law([2, 4, 8], template, stages,
                                                                                   order, c)]
    view = work_precision(frame(*rows))
    figure = wp_figure(view, "8gaussians", "8gaussians: work-precision of log p error, mean [nats]")
    assert figure.get_figwidth() == FULL_WIDTH and len(figure.axes) == 2
    assert all(axes.get_xscale() == axes.get_yscale() == "log" for axes in figure.axes)
    assert "NFE test pass [evals]" in figure.axes[0].get_xlabel() and "[s]" in figure.axes[1].get_xlabel()
    assert_laid_out(figure)
    legend = " ".join(text.get_text() for text in figure.legends[0].get_texts())
    assert "euler (slope -1.00 vs NFE)" in legend


# --------------------------------------------------------------------------------------------------- CLI

def test_report_work_precision_prints_the_table_and_writes_the_figure(tmp_path):
    run = write_run(tmp_path / "wp", sweep())
    result = CliRunner().invoke(main, ["report", str(run), "--work-precision", "--plots"])
    assert result.exit_code == 0, result.output
    assert "Work-precision on 8gaussians" in result.output and "-4.00" in result.output
    for kind in ("png", "pdf", "svg"):
        assert (run / "plots" / f"work_precision_logp_error_mean_8gaussians.{kind}").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--work-precision"], "needs a solver family with at least 2 points"),
    (["--work-precision", "--wp-metric", "logp_eror_mean"], "did you mean 'logp_error_mean'?"),
    (["--work-precision", "--wp-metric", "sliced_w2"], "--wp-metric sliced_w2: these runs hold no value of it"),
    (["--wp-metric", "logp_error_max"], "add --work-precision or drop --wp-metric"),
    (["--work-precision", "--rows", "dataset"], "--work-precision prints its own tables"),
    (["--work-precision", "--rank", "nll_ref"], "ask for one at a time"),
])
def test_report_work_precision_refuses_in_one_line_and_writes_nothing(tmp_path, args, message):
    one_each = frame(*power_law([2], EULER, 1, 1, 2.0), *power_law([2], RK4, 4, 4, 500.0))
    run = write_run(tmp_path / "wp", one_each.assign(sliced_w2=math.nan))
    result = CliRunner().invoke(main, ["report", str(run), *args, "--plots"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not (run / "plots").exists()


def test_rows_written_before_the_error_columns_are_refused_with_the_way_out():
    old = sweep().drop(columns=["logp_error_mean", "logp_error_max"])
    with pytest.raises(ReportError, match="evaluate the models again"):
        work_precision(old)


# --------------------------------------------------------------------------------------------------- real run

def test_a_real_evaluate_sweep_falls_with_nfe_and_groups_by_family(cli, tmp_path: Path) -> None:
    assert cli("run", "--objective", "cfm", "--solver", "euler[steps=4]", "--iterations", "20",
               "--mass-grid", "0", "--name", "wp").exit_code == 0
    run = tmp_path / "results" / "wp"
    result = CliRunner().invoke(main, ["evaluate", str(run), "--solver", "euler[steps=2..16:x2],rk4[steps=2..8:x2]",
                                       "--quiet", "--executor", "inline"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "wp")
    assert len(cells) == 7 and set(cells["status"]) == {"done"}  # euler[steps=4] is the training row itself
    assert (cells["logp_error_max"] >= cells["logp_error_mean"]).all() and (cells["logp_error_mean"] > 0).all()
    view = work_precision(cells.assign(run="wp"))
    euler, rk4 = view.lines
    assert (euler.label, len(euler.points), rk4.label, len(rk4.points)) == ("euler", 4, "rk4", 3)
    errors = [p.error for p in euler.points]
    assert [p.nfe for p in euler.points] == sorted(p.nfe for p in euler.points)
    assert errors == sorted(errors, reverse=True)  # more steps, smaller error
    assert euler.slope("nfe") < 0
    report = CliRunner().invoke(main, ["report", str(run), "--work-precision"])
    assert report.exit_code == 0 and "steps=16" in report.output and "Log-log slopes" in report.output


def test_report_work_precision_html_is_a_page_of_the_table_and_the_figure(tmp_path):
    run = write_run(tmp_path / "wp", sweep())
    result = CliRunner().invoke(main, ["report", str(run), "--work-precision", "--html"])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert "<h2>Work-precision: logp_error_mean</h2>" in page and "Work-precision on 8gaussians" in page
    assert "-4.00" in page and page.count('src="data:image/png;base64,') == 1  # the figure, embedded
    assert (run / "plots" / "work_precision_logp_error_mean_8gaussians.png").is_file()
    assert "<h2>Provenance</h2>" in page and '<div class="table-box"><pre>' in page
