"""The interactive HTML report in a real browser (Debian's chromium through playwright): it loads offline with no
console error (its Content-Security-Policy refuses nothing it needs) and no network request, its selectors redraw
the chart, its legend and log axis toggle, it downloads the chart as PNG and offers no upload to Plotly's cloud; a
screenshot is kept under the test's ``results/`` folder. It reads right: every axis option carries its unit from the
column catalogue, ``±`` and error bars only where two or more seeds have a value, no "best" on a flagged row, a
note where timings mix thread counts, and on a 600 px screen the page never scrolls sideways, the table does in its
own box."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_report import cell, frame, write_run

from cnfbench.cli import main


def chromium() -> str:
    """Debian's chromium for playwright; skip (or fail, under ``CNFBENCH_REQUIRE_BROWSER``) when there is none."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CNFBENCH_REQUIRE_BROWSER"):
            pytest.fail("CNFBENCH_REQUIRE_BROWSER is set but no chromium is on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH (CI installs Debian's chromium and sets CNFBENCH_REQUIRE_BROWSER)")
    return path


def _cells():
    rows = []
    for dataset, shift in (("8gaussians", 0.0), ("moons", -1.5)):
        for solver, nll, nfe, seconds in (("euler4", 3.2, 4.0, 2.0), ("euler10", 3.05, 10.0, 4.0),
                                          ("dopri5", 3.0, 38.0, 20.0)):
            for seed in (0, 1):
                rows.append(cell(solver, seed, dataset=dataset, nll_ref=nll + shift + 0.01 * seed,
                                 nll=nll + shift - 0.02 * seed, nfe_eval=nfe, nfe_forward_mean=nfe * 0.75,
                                 train_time_s=seconds + seed))
    return frame(*rows)


def test_the_report_page_works_offline_in_chromium(tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    run_dir = write_run(tmp_path / "r", _cells())
    result = CliRunner().invoke(main, ["report", str(run_dir), "--html"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page_path = run_dir / "report.html"
    shots = tmp_path / "results"
    shots.mkdir()
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_path.as_uri())
            page.wait_for_function("() => document.getElementById('explorer-plot').data !== undefined")

            def plotted(expression: str):
                return page.evaluate(f"document.getElementById('explorer-plot').{expression}")

            assert plotted("data.map(t => t.name)") == ["euler[steps=4]", "euler[steps=10]", "dopri5"]
            first = plotted("data.map(t => t.y[0])")
            assert first == pytest.approx([3.205, 3.055, 3.005])  # 8gaussians, nll_ref, mean over the seeds
            assert plotted("data.map(t => t.x[0])") == [3.0, 7.5, 28.5]  # NFE per training solve, as the tables
            page.select_option("#explorer-x", "nfe_eval")
            assert plotted("data.map(t => t.x[0])") == [4.0, 10.0, 38.0]  # NFE of the test pass

            page.select_option("#explorer-dataset", "moons")
            assert plotted("data.map(t => t.y[0])") == pytest.approx([1.705, 1.555, 1.505])
            page.select_option("#explorer-y", "nll")
            assert plotted("data.map(t => t.y[0])") == pytest.approx([1.69, 1.54, 1.49])
            page.select_option("#explorer-x", "train_time_s")
            assert plotted("data.map(t => t.x[0])") == [2.5, 4.5, 20.5]
            page.check("#explorer-logx")
            assert plotted("layout.xaxis.type") == "log"
            assert "solver_spec: dopri5[rtol=1e-05" in plotted("data[2].text[0]")  # the hover names the full spec

            page.locator(".legendtoggle").nth(2).click()  # a click on its legend entry hides dopri5
            page.wait_for_function("() => document.getElementById('explorer-plot').data[2].visible === 'legendonly'")
            buttons = page.evaluate("() => [...document.querySelectorAll('.modebar-btn')].map((b) => b.dataset.title)")
            assert buttons and not [b for b in buttons if "share" in b.lower() or "cloud" in b.lower()]  # no upload
            page.hover("#explorer-plot")
            with page.expect_download() as download:  # drawn through a blob: image, which the policy allows
                page.click('.modebar-btn[data-title^="Download plot"]')
            assert download.value.suggested_filename.endswith(".png")
            page.screenshot(path=str(shots / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []  # a script, style or fetch the Content-Security-Policy refused would be an error here
    assert [url for url in requests if not url.startswith(("file:", "blob:"))] == []
    assert (shots / "report.png").stat().st_size > 10_000


# --------------------------------------------------------------------------------------------------- reading right

@contextmanager
def browsed(page_path: Path, width: int, chart: bool = True) -> Iterator[tuple[Any, list[str]]]:
    """The page in Chromium at ``width`` CSS pixels once its chart is drawn (``chart``; else once it loaded), with
    the console errors it gives."""
    playwright = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_path.as_uri())
            if chart:
                page.wait_for_function("() => document.getElementById('explorer-plot').data !== undefined")
            else:
                page.wait_for_load_state("load")
            yield page, errors
        finally:
            browser.close()


def reading_run(path: Path) -> Path:
    """8gaussians: Euler with 4 steps (flagged, 2 seeds, the fewest NFE and the lowest solver NLL), Euler with 10
    steps and dopri5 (2 seeds each); moons: the same three with one seed each. Seed 1 ran with 2 torch threads,
    seed 0 with 1; every row records its training loss in nats/sample."""
    rows = []
    for dataset, seeds in (("8gaussians", (0, 1)), ("moons", (0,))):
        for solver, nll, nfe in (("euler4", 2.6, 4.0), ("euler10", 3.05, 10.0), ("dopri5", 3.0, 26.0)):
            for seed in seeds:
                flagged = solver == "euler4" and dataset == "8gaussians"
                rows.append(cell(solver, seed, dataset=dataset, nll=nll + 0.013 * seed, nll_ref=3.1 + 0.0123456 * seed,
                                 mass=1.2 if flagged else 1.0 + 0.001 * seed, nfe_forward_mean=nfe, nfe_eval=nfe * 3,
                                 train_time_s=1.0 + nfe / 10 + seed, final_train_loss=3.123456789 + seed,
                                 train_loss_unit="nats/sample", torch_threads=1 + seed, concurrency=1,
                                 excess_nll=0.3 + 0.01 * seed, valid=not flagged,
                                 validity_reason="the solver's density integrates to 1.2, not 1" if flagged else ""))
    return write_run(path, frame(*rows))


def test_the_page_reads_right_in_chromium(tmp_path: Path) -> None:
    run_dir = reading_run(tmp_path / "r")
    result = CliRunner().invoke(main, ["report", str(run_dir), "--html"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with browsed(run_dir / "report.html", 1280) as (page, errors):
        def options(select: str) -> list[str]:
            return page.evaluate(f"[...document.querySelectorAll('{select} option')].map((o) => o.textContent)")

        axes = options("#explorer-x") + options("#explorer-y")
        assert all(re.search(r" \[[^\]_]+\]$", option) for option in axes), axes  # a unit, never a placeholder
        assert "final_train_loss [nats/sample]" in axes and not [a for a in axes if "_unit" in a]
        assert page.input_value("#explorer-x") == "nfe_forward_mean" and page.input_value("#explorer-y") == "nll_ref"
        assert page.evaluate("document.getElementById('explorer-plot').layout.xaxis.title.text") == \
            "NFE fwd/iter [evals]"

        def plotted(expression: str) -> Any:
            return page.evaluate(f"document.getElementById('explorer-plot').{expression}")

        hover = plotted("data[1].text[0]")  # 8gaussians, Euler with 10 steps, two seeds
        assert "test NLL, ref solve: 3.106 ± 0.009 nats" in hover and "NFE fwd/iter: 10.0 ± 0.0 evals" in hover
        assert plotted("data.map((t) => t.error_y.visible)") == [True, True, True]
        assert "flagged: 2 of 2 seeds: the solver" in plotted("data[0].text[0]")
        assert plotted("data.map((t) => t.marker.symbol[0])") == ["circle-open", "circle", "circle"]
        page.select_option("#explorer-y", "final_train_loss")
        assert "final_train_loss: 3.623 ± 0.707 nats/sample" in plotted("data[0].text[0]")  # 3 decimals, not 10

        page.select_option("#explorer-dataset", "moons")  # one seed each: no spread anywhere
        moons = plotted("data.map((t) => t.text[0])")
        assert len(moons) == 3 and not [text for text in moons if "±" in text]
        assert "final_train_loss: 3.123 nats/sample" in moons[0] and "seeds: 1" in moons[0]
        assert plotted("data.map((t) => [t.error_x.visible, t.error_y.visible])") == [[False, False]] * 3
        assert plotted("layout.title.text") == "moons: one seed per configuration"

        rows = page.evaluate("""[...document.querySelectorAll('table')[0].querySelectorAll('tbody tr')].map((tr) =>
            [...tr.querySelectorAll('td')].map((td) => [td.textContent, td.className]))""")
        flagged = [row for row in rows if row[0][0] == "8gaussians" and "(!)" in " ".join(t for t, _ in row)]
        assert len(flagged) == 1 and not [t for t, klass in flagged[0] if "best" in klass]  # fewest NFE, not best
        best = [(row[1][0], text) for row in rows for text, klass in row if "best" in klass]
        assert ("euler[steps=10]", "10.0 ± 0.0 (n=2)") in best  # the fewest NFE among the unflagged rows
        one_seed = [text for row in rows if row[0][0] == "moons" for text, _ in row[2:]]
        assert one_seed and not [text for text in one_seed if "±" in text]
        body = page.inner_text("body")
        assert "compare cells run with different torch thread counts (1, 2 threads)" in body
    assert errors == []


def test_the_page_fits_a_narrow_screen(tmp_path: Path) -> None:
    run_dir = reading_run(tmp_path / "r")
    result = CliRunner().invoke(main, ["report", str(run_dir), "--html"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with browsed(run_dir / "report.html", 600) as (page, errors):
        widths = page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]")
        assert widths[0] == widths[2] == 600 and widths[1] <= 600  # nothing widens the page
        box = page.evaluate("""(() => { const box = document.querySelector('.table-box'); box.scrollLeft = 80;
            return [box.scrollWidth > box.clientWidth, box.scrollLeft, box.getBoundingClientRect().right,
                    getComputedStyle(box).overflowX]; })()""")
        assert box[0] and box[1] > 0 and box[2] <= 600 and box[3] == "auto"  # the table scrolls in its own box
        caption = page.evaluate("document.querySelector('figure.table figcaption').getBoundingClientRect().right")
        assert caption <= 600  # the caption wraps in view, outside the scrolling box
        assert page.evaluate("document.getElementById('explorer-plot').layout.legend.orientation") == "h"
        page.screenshot(path=str(tmp_path / "narrow.png"), full_page=True)
    assert errors == []


def test_the_work_precision_page_reads_in_chromium_at_any_width(tmp_path: Path) -> None:
    from test_work_precision import sweep

    run_dir = write_run(tmp_path / "wp", sweep())
    result = CliRunner().invoke(main, ["report", str(run_dir), "--work-precision", "--html"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for width in (1280, 390):
        with browsed(run_dir / "report.html", width) as (page, errors):
            assert page.evaluate("document.querySelector('pre').textContent").count("Work-precision on") == 1
            assert page.evaluate("[...document.images].every((image) => image.complete && image.naturalWidth > 0)")
            assert page.evaluate("document.documentElement.scrollWidth") <= width  # the text scrolls in its box
        assert errors == []


def test_the_published_page_reads_in_chromium_at_any_width(tmp_path: Path) -> None:
    rows = [cell("euler4", seed, dataset="8gaussians", objective="cfm", w2=0.30 + 0.01 * seed,
                 path_energy_normalized=0.2, protocol="cfm-2d", protocol_scale="full", protocol_group="8gaussians",
                 protocol_deviation="") for seed in range(5)]
    run_dir = write_run(tmp_path / "published", frame(*rows))
    result = CliRunner().invoke(main, ["report", str(run_dir), "--published", "--html"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for width in (1280, 390):
        with browsed(run_dir / "report.html", width, chart=False) as (page, errors):
            text = page.evaluate("document.querySelector('pre').textContent")
            assert "Protocol cfm-2d" in text and "within ±" in text and "not run" in text
            assert "0.320" in text  # the mean over the five seeds of the 8gaussians W2, beside the paper's 0.373
            assert page.evaluate("document.documentElement.scrollWidth") <= width
        assert errors == []
