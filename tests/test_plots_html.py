"""Plots (each PNG opened and checked not blank), density artifacts, and the self-contained HTML report."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.image import imread
from test_report import cell, frame, write_run

from cnfbench.cli import main
from cnfbench.reports.plots import pareto_front, write_plots
from cnfbench.run_folder import (
    DENSITY_ARRAYS,
    ResultsError,
    density_path,
    read_density_artifacts,
    write_density_artifacts,
)


def tiny_run() -> tuple[pd.DataFrame, pd.DataFrame]:
    cells = frame(
        *(cell("euler4", s, nll_ref=3.5 + 0.1 * s, nfe_forward_mean=4.0, train_time_s=1.0 + s, mass=1.1,
               entropy=2.83) for s in range(2)),
        *(cell("dopri5", s, nll_ref=3.0 + 0.1 * s, nfe_forward_mean=26.0 + s, train_time_s=5.0 + s, mass=1.0,
               entropy=2.83) for s in range(2)),
        cell("euler10", 0, status="diverged"),
    )
    curves = pd.DataFrame([{"cell_id": c, "iteration": i, "loss_nats": 6.0 - 0.5 * i + 0.1 * k, "nfe_forward": 4 + k}
                           for k, c in enumerate(cells["cell_id"][:4]) for i in range(1, 6)])
    return cells, curves


def artifacts(run_dir: Path, cell_id: str) -> Path:
    grid = np.linspace(-3.0, 3.0, 16)
    xs, ys = np.meshgrid(grid, grid, indexing="ij")
    rng = np.random.default_rng(0)
    return write_density_artifacts(run_dir, cell_id, grid, grid, -(xs**2 + 2 * ys**2) / 2 - 2.0,
                                   rng.normal(size=(60, 2)), rng.normal(size=(80, 2)) * [1.0, 0.5])


def assert_not_blank(png: bytes | Path) -> None:
    image = imread(io.BytesIO(png) if isinstance(png, bytes) else png, format="png")
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    pixels = image.reshape(-1, image.shape[-1])
    assert float(pixels.var()) > 0
    assert len(np.unique(pixels[:: max(1, len(pixels) // 20000)], axis=0)) > 1


def test_pareto_front_lowest_cost_and_nll():
    x = [4, 4, 8, 26, 27, 30]
    y = [3.6, 3.5, 3.55, 3.0, 3.1, 2.9]
    assert pareto_front(x, y) == [1, 3, 5]


def test_density_artifacts_round_trip_and_validation(tmp_path):
    path = artifacts(tmp_path, "abcdef0123456789")
    assert path == density_path(tmp_path, "abcdef0123456789") == tmp_path / "density" / "abcdef0123456789.npz"
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(DENSITY_ARRAYS)
        assert archive["log_prob"].dtype == np.float32 and archive["log_prob"].shape == (16, 16)
    loaded = read_density_artifacts(tmp_path, "abcdef0123456789")
    assert loaded.samples.shape == (60, 2) and loaded.data.shape == (80, 2)
    assert loaded.log_prob[8, 8] == pytest.approx(-(0.2**2 + 2 * 0.2**2) / 2 - 2.0, abs=1e-5)
    flat = write_density_artifacts(tmp_path, "flat", [0, 1], [0, 1, 2], np.arange(6), [[0, 0]], [[1, 1]])
    assert read_density_artifacts(tmp_path, "flat").log_prob.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert flat.exists()
    with pytest.raises(ValueError, match="log_prob_grid must have shape"):
        write_density_artifacts(tmp_path, "bad", [0, 1], [0, 1], np.zeros((3, 3)), [[0, 0]], [[0, 0]])
    with pytest.raises(ValueError, match="samples must have shape"):
        write_density_artifacts(tmp_path, "bad", [0, 1], [0, 1], np.zeros((2, 2)), [[0, 0, 0]], [[0, 0]])
    assert read_density_artifacts(tmp_path, "missing") is None
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ResultsError, match="abcdef0123456789.npz is unreadable"):
        read_density_artifacts(tmp_path, "abcdef0123456789")


def test_write_plots_draws_every_plot_and_notes_missing_density(tmp_path):
    cells, curves = tiny_run()
    artifacts(tmp_path, cells["cell_id"][0])
    artifacts(tmp_path, cells["cell_id"][2])
    result = write_plots(tmp_path, cells, curves)
    names = sorted(path.name for _, path in result.files)
    assert names == ["curves_8gaussians.png", "density_8gaussians.png",
                     "pareto_nfe_8gaussians.png", "pareto_time_8gaussians.png"]
    for _, path in result.files:
        assert path.parent == tmp_path / "plots"
        assert_not_blank(path)
    assert any("2 2D cells have no density/<cell_id>.npz" in note for note in result.notes)


def test_write_plots_without_curves_or_density(tmp_path):
    cells, _ = tiny_run()
    result = write_plots(tmp_path, cells.drop(columns=["mass"]))
    assert sorted(p.name.split("_")[1] for _, p in result.files) == ["nfe", "time"]
    assert any("no training curves" in note for note in result.notes)


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables = 0
        self.images: list[str] = []
        self.bold_cells = 0
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "table":
            self.tables += 1
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag == "td" and "best" in (values.get("class") or ""):
            self.bold_cells += 1
        for key in ("src", "href"):
            if (values.get(key) or "").startswith(("http:", "https:", "//")):
                self.external.append(values[key])
        if tag == "link" or (tag == "script" and values.get("src")):  # inline scripts are the page's own
            self.external.append(f"{tag} {values.get('src') or values.get('href')}")


def test_cli_report_html_is_self_contained(tmp_path):
    cells, curves = tiny_run()
    run_dir = write_run(tmp_path / "run", cells, curves)
    artifacts(run_dir, cells["cell_id"][0])
    result = CliRunner().invoke(main, ["report", str(run_dir), "--html", "--cols", "solver"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(page)
    assert parser.tables == 2  # the asked-for table and the overview of default metrics
    assert parser.bold_cells >= 1 and parser.external == []
    assert 'id="explorer-plot"' in page and "Plotly.react" in page  # the interactive chart, plotly.js inlined
    assert "plotly.js (basic - minified) v" in page  # the vendored partial bundle, not the full 4.8 MB one
    assert len(parser.images) == 4
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert_not_blank(png)
    assert "[nats]" in page and "Provenance" in page and "Test CPU" in page
    assert (run_dir / "plots" / "pareto_nfe_8gaussians.png").exists()


def test_cli_report_html_with_several_runs_needs_out(tmp_path):
    cells, _ = tiny_run()
    a, b = write_run(tmp_path / "a", cells), write_run(tmp_path / "b", cells)
    result = CliRunner().invoke(main, ["report", str(a), str(b), "--html"], catch_exceptions=False)
    assert result.exit_code == 2 and "need --out DIR" in result.output


def test_paper_plots_aggregate_seeds_and_come_in_three_formats(tmp_path):
    from cnfbench.reports.plots import FORMATS, _configurations

    rows = [cell(solver, seed, nll_ref=value, nfe_forward_mean=nfe, train_time_s=1.0 + seed)
            for solver, nfe, values in (("euler4", 4.0, (3.2, 3.4)), ("dopri5", 30.0, (3.0, 3.1)))
            for seed, value in enumerate(values)]
    cells = frame(*rows)
    table = _configurations(cells, ["nll_ref"])
    assert list(table["n"]) == [2, 2] and table["nll_ref_mean"].tolist() == pytest.approx([3.3, 3.05])
    assert table["nll_ref_std"].tolist() == pytest.approx([0.1414213, 0.0707107], rel=1e-5)
    result = write_plots(tmp_path, cells)
    for name in ("pareto_nfe_8gaussians", "pareto_time_8gaussians"):
        for kind in FORMATS:
            assert (tmp_path / "plots" / f"{name}.{kind}").stat().st_size > 1000, (name, kind)
        assert (tmp_path / "plots" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        assert "<svg" in (tmp_path / "plots" / f"{name}.svg").read_text()[:1000]
    assert [path.suffix for _, path in result.files] == [".png", ".png"]  # what the HTML report embeds
