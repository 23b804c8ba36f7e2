"""Plot layout, measured through matplotlib's renderer and the written PDFs: the density figure for 1–9 models
(no two texts overlap, all inside the page, no model under the data column), rasters that are one image each,
page widths that match the README's column widths, the training-loss caveat, and where ``--plots --out`` writes."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.text import Text
from test_report import cell, frame, write_run

from cnfbench.cli import main
from cnfbench.reports.plots import (
    COLUMN_WIDTH,
    FULL_WIDTH,
    MAX_DENSITY_COLUMNS,
    curves_figure,
    density_figure,
    density_grid,
    loss_caveat,
    pareto_figure,
    write_plots,
)
from cnfbench.run_folder import write_density_artifacts

FIELDS = ("concatsquash[hidden=64-64-64,activation=tanh]", "concatsquash[hidden=128-128,activation=softplus]")
TRACES = ("exact", "hutchinson[noise=gaussian,probes=1]", "hutchinson[noise=rademacher,probes=4]")


def models(count: int, seeds: int = 1, **metrics: float) -> pd.DataFrame:
    """``count`` configurations whose labels are long (solver, trace and field all vary), ``seeds`` each."""
    rows = []
    for k in range(count):
        for seed in range(seeds):
            row = cell("euler4", seed, trace=TRACES[k % 3], field=FIELDS[(k // 3) % 2], nll_ref=3.0 + 0.1 * k,
                       nfe_forward_mean=4.0 + 3 * k, train_time_s=1.0 + k, mass=1.0, **metrics)
            row["solver_spec"] = f"euler[steps={4 + k},adjoint=false]"
            row["cell_id"] = f"{k:08x}{seed:08x}"
            rows.append(row)
    return frame(*rows)


def with_artifacts(run_dir: Path, cells: pd.DataFrame, solver_density: bool = True) -> None:
    grid = np.linspace(-4.0, 4.0, 24)
    xs, ys = np.meshgrid(grid, grid, indexing="ij")
    rng = np.random.default_rng(0)
    log_prob = -(xs**2 + 2 * ys**2) / 2 - 2.0
    for cell_id in cells["cell_id"]:
        write_density_artifacts(run_dir, cell_id, grid, grid, log_prob, rng.normal(size=(50, 2)),
                                rng.normal(size=(60, 2)), log_prob + 0.1 if solver_density else None)


def drawn_texts(figure) -> list[Text]:
    """Every text the renderer draws: titles, suptitles, axis labels, legend entries and the tick labels inside
    their axis' view (matplotlib keeps labels of ticks outside it, undrawn)."""
    figure.canvas.draw()
    undrawn = set()
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            low, high = sorted(axis.get_view_interval())
            span = high - low
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low - 1e-9 * span <= tick.get_loc() <= high + 1e-9 * span:
                    undrawn.update((tick.label1, tick.label2))
    return [text for text in figure.findobj(Text)
            if text.get_visible() and text.get_text().strip() and text not in undrawn]


def assert_laid_out(figure) -> None:
    """No two drawn texts overlap and every one lies inside the page."""
    renderer = figure.canvas.get_renderer()
    boxes = [(text.get_text(), text.get_window_extent(renderer)) for text in drawn_texts(figure)]
    page = figure.bbox
    for text, box in boxes:
        assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1, \
            f"{text!r} leaves the page: {box} not in {page}"
    for i, (first, a) in enumerate(boxes):
        for second, b in boxes[i + 1:]:
            overlap = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
            assert not (overlap[0] > 1 and overlap[1] > 1), f"{first!r} overlaps {second!r}"


def pdf_width(path: Path) -> float:
    """Inches: the first page's MediaBox width (points / 72)."""
    box = re.search(rb"/MediaBox\s*\[\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", path.read_bytes())
    assert box is not None
    return (float(box.group(3)) - float(box.group(1))) / 72


def pdf_fills(data: bytes) -> int:
    """Fill operators in the PDF's content streams (images and fonts skipped): one per patch of a mesh."""
    fills = 0
    for match in re.finditer(rb"(?<!end)stream\r?\n(.*?)endstream", data, re.S):
        header = data[data.rfind(b" obj", 0, match.start()):match.start()]
        if b"/Image" in header or b"/Length1" in header:  # pixels or an embedded font, not drawing operators
            continue
        # a deflated stream ends by itself: the end-of-line before endstream is left over, unused
        content = zlib.decompressobj().decompress(match.group(1)) if b"/FlateDecode" in header else match.group(1)
        fills += len(re.findall(rb"(?m)(?:^|\s)f\*?(?=\s|$)", content))
    return fills


@pytest.mark.parametrize("count", range(1, 10))
def test_density_figure_text_never_overlaps_for_1_to_9_models(tmp_path, count):
    cells = models(count)
    with_artifacts(tmp_path, cells, solver_density=count % 2 == 1)
    figure, notes = density_figure(cells, {"": tmp_path}, title="8gaussians: learned densities and samples")
    assert figure is not None and notes == []
    assert figure.get_figwidth() == FULL_WIDTH
    assert_laid_out(figure)
    columns, blocks = density_grid(count)
    assert columns <= MAX_DENSITY_COLUMNS and columns * blocks >= count > columns * (blocks - 1)
    renderer = figure.canvas.get_renderer()
    data = [axes for axes in figure.axes if axes.get_title().startswith("test data")]
    models_ = [axes for axes in figure.axes if axes not in data and axes.get_title()]
    assert len(data) == 2 and len(models_) == count * (3 if count % 2 else 2)
    data_right = max(axes.get_window_extent(renderer).x1 for axes in data)
    assert all(axes.get_window_extent(renderer).x0 > data_right for axes in models_)  # none under the data column
    titles = re.sub(r"\s", "", "".join(axes.get_title() for axes in models_))  # folded at token boundaries
    # the tables' labels: the axes that vary in short form; the components' names when nothing varies
    assert ("euler[steps=4]·exact" if count > 1 else "concatsquash·mle·euler·exact") in titles


def test_density_pdf_draws_each_raster_as_one_image(tmp_path):
    cells = models(3)
    with_artifacts(tmp_path, cells)
    result = write_plots(tmp_path, cells)
    pdf = (tmp_path / "plots" / "density_8gaussians.pdf").read_bytes()
    # the data histogram, each model's two densities, the colour bar: one image each
    assert pdf.count(b"/Subtype /Image") == 1 + 2 * 3 + 1
    assert pdf_fills(pdf) < 100  # a 30x30 histogram mesh alone would be 900 patches
    assert any(path.name == "density_8gaussians.png" for _, path in result.files)


def test_pdf_widths_are_the_readme_column_widths(tmp_path):
    cells = models(4)
    curves = pd.DataFrame([{"cell_id": c, "iteration": i, "loss_nats": 5.0 - 0.3 * i, "nfe_forward": 4.0}
                           for c in cells["cell_id"] for i in range(1, 4)])
    with_artifacts(tmp_path, cells)
    write_plots(tmp_path, cells, curves)
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8").split())
    assert f"({COLUMN_WIDTH:g} in, 8 pt text" in readme  # the width the README states for one column
    folder = tmp_path / "plots"
    for name in ("pareto_nfe_8gaussians", "pareto_time_8gaussians"):
        assert pdf_width(folder / f"{name}.pdf") == pytest.approx(COLUMN_WIDTH, abs=0.005)
    for name in ("curves_8gaussians", "density_8gaussians"):
        assert pdf_width(folder / f"{name}.pdf") == pytest.approx(FULL_WIDTH, abs=0.005)


@pytest.mark.parametrize("count", [1, 4, 9])
def test_pareto_figure_fits_one_column(count):
    figure = pareto_figure(models(count, entropy=2.8), "nfe_forward_mean",
                           title="8gaussians: test NLL (reference solve) vs NFE per training solve")
    assert figure is not None and figure.get_figwidth() == COLUMN_WIDTH
    assert_laid_out(figure)
    legend = " ".join(text.get_text() for text in figure.legends[0].get_texts())
    assert "true entropy 2.800 nats" in legend and "(n=1)" in legend


def solver_rows(*solvers: str, **extra: object) -> pd.DataFrame:
    """One seed per solver; ``euler4`` records its fixed grid's expected NFE per solve, ``dopri5`` none."""
    rows = [cell(name, 0, nfe_expected_per_solve=4.0 if name == "euler4" else float("nan")) for name in solvers]
    return frame(*rows).assign(**extra)


def test_loss_caveat_names_a_fixed_step_loss_and_mixed_objectives():
    mixed = loss_caveat(solver_rows("euler4", "dopri5"))
    assert mixed.startswith("Training losses are not comparable: each is the NLL under its own training solver")
    assert "fixed-step solver's loss (euler) is that solver's density, not the model's" in mixed
    assert mixed.endswith("Compare the models by test NLL (reference solve).")
    assert loss_caveat(solver_rows("dopri5")) == ""
    alone = loss_caveat(solver_rows("euler4"))
    assert alone.startswith("Training loss: a fixed-step solver's loss")
    objectives = solver_rows("dopri5", "dopri5")
    objectives["objective_spec"] = ["mle", "rnode[kinetic=0.01,jacobian=0.01]"]
    assert "the objectives differ (mle, rnode), so the losses hold different terms" in loss_caveat(objectives)
    # validation by one solve (objectives that train without solving validate with --val-solver)
    validated = solver_rows("euler4", "dopri5", train_loss_unit="squared velocity", val_solver_spec="rk4[steps=16]")
    assert "The validation NLL (dashed) is under one solve, rk4[steps=16]: compare that" in \
        loss_caveat(solver_rows("euler4", "dopri5"), validated)


def test_curves_figure_shows_the_caveat_and_keeps_text_apart():
    cells = solver_rows("euler4", "dopri5")
    curves = pd.DataFrame([{"cell_id": c, "iteration": i, "loss_nats": 4.0 - 0.2 * i - k, "nfe_forward": 4 + 22 * k,
                            "elapsed_s": 0.1 * i, "val_nll": 4.0 - 0.1 * i if i % 2 == 0 else float("nan")}
                           for k, c in enumerate(cells["cell_id"]) for i in range(1, 6)])
    figure = curves_figure(cells, curves, title="8gaussians: training curves")
    assert figure is not None and figure.get_figwidth() == FULL_WIDTH
    assert_laid_out(figure)
    shown = " ".join(text.get_text().replace("\n", " ") for text in drawn_texts(figure))
    assert "Training losses are not comparable" in shown and "(euler)" in shown
    assert "validation NLL [nats/sample] (dashed)" in shown
    same = solver_rows("dopri5")
    quiet = curves_figure(same, curves[curves["cell_id"] == cells["cell_id"].iloc[1]].assign(
        cell_id=same["cell_id"].iloc[0]))
    assert quiet is not None and "comparable" not in " ".join(t.get_text() for t in drawn_texts(quiet))


def test_report_plots_out_writes_into_the_folder_itself(tmp_path):
    cells = models(1)
    run_dir = write_run(tmp_path / "run", cells)
    with_artifacts(run_dir, cells)
    out = tmp_path / "figures"
    result = CliRunner().invoke(main, ["report", str(run_dir), "--plots", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "pareto_nfe_8gaussians.pdf").exists() and (out / "density_8gaussians.png").exists()
    assert not (out / "plots").exists() and not (run_dir / "plots").exists()
    assert f"into {out}" in result.output
    page = CliRunner().invoke(main, ["report", str(run_dir), "--html", "--out", str(tmp_path / "page")],
                              catch_exceptions=False)
    assert page.exit_code == 0, page.output
    assert (tmp_path / "page" / "report.html").exists() and (tmp_path / "page" / "density_8gaussians.png").exists()
    # without --out the run folder keeps them in plots/ (test_plots_html's report tests)
