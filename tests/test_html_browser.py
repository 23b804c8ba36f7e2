"""The interactive HTML report in a real browser (Debian's chromium through playwright): it loads offline with no
console error (its Content-Security-Policy refuses nothing it needs) and no network request, its selectors redraw
the chart, its legend and log axis toggle, it downloads the chart as PNG and offers no upload to Plotly's cloud; a
screenshot is kept under the test's ``results/`` folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
                                 nll=nll + shift - 0.02 * seed, nfe_eval=nfe, train_time_s=seconds + seed))
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
