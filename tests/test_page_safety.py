"""A run folder is data, never code: strings from someone else's run folder — column names, component specs and their
parameters, dataset names, provenance, plugin names, failure reasons — are shown literally in the HTML page (checked
in Chromium: nothing runs, nothing is fetched, Plotly draws them as text), in the Markdown and LaTeX tables and in the
plots; and the page's Content-Security-Policy stops a script that escaping would have missed."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_html_browser import _cells, chromium
from test_report import cell, frame, write_run

from cnfbench.cli import main
from cnfbench.reports.html import source_hash
from cnfbench.reports.plots import write_plots

COMMENT = "<!--<script>"
CLOSE = "</script><script>window.__pwned=1</script>"
IMAGE = '<img src=x onerror="window.__pwned=2">'
SPOOF = '<span style="fill:url(http://127.0.0.1:9/x.svg#a)">spoof</span>'
PAYLOADS = (COMMENT, CLOSE, IMAGE, SPOOF)
"""What a hostile run folder holds: a comment that swallows the rest of a script, a script that ends the data block,
an event handler, and Plotly markup that fetches a URL when drawn and changes the label."""

LABELS = [f"euler[steps=4,tag={COMMENT}]", f"euler[steps=10,tag={CLOSE}]", f"dopri5[tag={SPOOF}]"]
"""The legend entries the hostile run's three solver configurations get: their varying parameters, verbatim."""
DATASET = f"moons{IMAGE}$x$ %{{y}}"
"""A dataset whose name is markup, with a pair of dollars (Plotly's math) and a hover-template field."""


def hostile_run(path: Path) -> Path:
    """Three solver configurations of two seeds each (and one diverged cell) whose dataset, field and solver specs,
    a metric column, a text column, the failure reason and every provenance field hold the payloads."""
    rows = []
    for k, (solver, nll, nfe) in enumerate((("euler4", 3.2, 4.0), ("euler10", 3.05, 10.0), ("dopri5", 3.0, 38.0))):
        for seed in (0, 1):
            row = cell(solver, seed, dataset=f"moons[note={IMAGE}]", field=f"mlp[act={SPOOF}]",
                       nll_ref=nll + 0.01 * seed, nfe_eval=nfe, train_time_s=2.0 + k)
            row["solver_spec"] = row["solver_spec"].replace("adjoint=false", f"tag={(COMMENT, CLOSE, SPOOF)[k]}")
            row["dataset"] = row["dataset_spec"] = DATASET
            row[COMMENT] = 1.5 + seed  # a metric column named by a payload
            row[CLOSE] = IMAGE  # and a text column
            rows.append(row)
    failed = cell("dopri5", 2, status="diverged", field=f"mlp[act={SPOOF}]")
    failed.update(solver_spec=rows[-1]["solver_spec"], dataset=DATASET, dataset_spec=DATASET, reason=SPOOF)
    provenance = {"created": COMMENT, "command": ["cnfbench", "run", "--solver", CLOSE], "hostname": IMAGE,
                  "git_commit": SPOOF, "python": CLOSE, "machine": {"device": "cpu", "cpu": SPOOF},
                  "versions": {"cnfbench": "0.1.0", "torch": "2.13.0", CLOSE: IMAGE},
                  "plugins": [{"name": IMAGE, "source": "file", "origin": CLOSE, "version": COMMENT, "error": ""}]}
    return write_run(path, frame(*rows, failed), provenance=provenance)


@dataclass
class Visit:
    """A page open in Chromium, with its console errors, the URLs it asked for and those that were refused (and
    why)."""

    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


@contextmanager
def opened(page_path: Path) -> Iterator[Visit]:
    """The page in Chromium once its chart is drawn."""
    playwright = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            visit = Visit(browser.new_page(viewport={"width": 1280, "height": 900}))
            visit.page.on("console", lambda message: visit.errors.append(message.text)
                          if message.type == "error" else None)
            visit.page.on("pageerror", lambda error: visit.errors.append(str(error)))
            visit.page.on("request", lambda request: visit.requests.append(request.url))
            visit.page.on("requestfailed", lambda request: visit.refused.update({request.url: request.failure}))
            visit.page.goto(page_path.as_uri())
            visit.page.wait_for_function("() => document.getElementById('explorer-plot').data !== undefined")
            visit.page.wait_for_timeout(300)  # anything the page would still load or run
            yield visit
        finally:
            browser.close()


def texts(page: Any, selector: str) -> list[str]:
    return page.evaluate(f"() => [...document.querySelectorAll({json.dumps(selector)})].map((e) => e.textContent)")


def test_a_hostile_run_folder_is_shown_literally_and_runs_nothing(tmp_path: Path) -> None:
    run_dir = hostile_run(tmp_path / "hostile")
    result = CliRunner().invoke(main, ["report", str(run_dir), "--html", "--plots", "--metric",
                                       f"nll_ref,train_time_s,{COMMENT}"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page_path = run_dir / "report.html"
    source = page_path.read_text(encoding="utf-8")
    data = source.split('id="explorer-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and ">" not in data  # the inline JSON holds no markup at all
    with opened(page_path) as visit:
        page = visit.page
        state = page.evaluate("() => [typeof Plotly, typeof window.__pwned, "
                              "document.getElementById('explorer-plot').data.length]")
        assert state == ["object", "undefined", 3]  # plotly.js ran, no payload did, one trace per configuration
        assert texts(page, ".legendtext") == LABELS  # Plotly drew the labels as text, entities decoded
        assert texts(page, ".gtitle") == [f"{DATASET}: mean ± 1 std over seeds"]
        page.locator("#explorer-plot").scroll_into_view_if_needed()  # the mouse reaches only what is in view
        point = page.locator("#explorer-plot .scatterlayer .point").first.bounding_box()
        page.mouse.move(point["x"] + point["width"] / 2, point["y"] + point["height"] / 2)
        page.wait_for_function("() => document.querySelectorAll('.hovertext').length > 0")
        hover = "".join(texts(page, ".hovertext"))
        assert f"dataset_spec: {DATASET}" in hover and f"field_spec: mlp[act={SPOOF}]" in hover
        assert texts(page, "h2") == ["Results", "All default metrics", "Explore", "Plots", "Provenance", "Notes"]
        provenance = "".join(texts(page, "dl.prov"))
        for payload in PAYLOADS:
            assert payload in provenance
        assert f"{IMAGE} {COMMENT} (file: {CLOSE})" in provenance  # the plugin: name, version, where from
        table = "".join(texts(page, "table"))
        assert COMMENT in table and LABELS[1] in table and SPOOF in "".join(texts(page, "ul.notes"))
        injected = page.evaluate("() => [document.querySelectorAll('img[src=\"x\"], span[style]').length, "
                                 "[...document.querySelectorAll('[style]')].filter((e) => "
                                 "e.getAttribute('style').includes('url(')).length]")
        assert injected == [0, 0]
        assert page.evaluate("() => typeof window.__pwned") == "undefined"  # not after the hover either
    assert visit.errors == []  # a blocked fetch or script would be a CSP error here
    assert visit.requests == [page_path.as_uri()]  # nothing else was even asked for


def test_the_policy_stops_what_escaping_would_have_missed(tmp_path: Path) -> None:
    """A page whose escaping failed (markup injected into its body by hand): the policy runs only the page's own
    scripts, so the chart is drawn but the injected script, event handler and fetches are refused."""
    run_dir = write_run(tmp_path / "r", _cells())
    assert CliRunner().invoke(main, ["report", str(run_dir), "--html"], catch_exceptions=False).exit_code == 0
    page_path = run_dir / "report.html"
    source = page_path.read_text(encoding="utf-8")
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', source).group(1)
    policy = policy.replace("&#x27;", "'")
    scripts = re.findall(r"<script>(.*?)</script>", source, re.S)
    assert len(scripts) == 2 and "unsafe-eval" not in policy and "default-src 'none'" in policy
    assert f"script-src {' '.join(source_hash(s) for s in scripts)}" in policy  # exactly the page's own
    injected = ('<script>window.__pwned=3</script><img src="x" onerror="window.__pwned=4">'
                '<img src="http://127.0.0.1:9/y.png"><iframe src="http://127.0.0.1:9/"></iframe>'
                '<link rel="stylesheet" href="http://127.0.0.1:9/z.css"><a id="go" href="javascript:window.__pwned=5">'
                "go</a></body>")
    page_path.write_text(source.replace("</body>", injected), encoding="utf-8")
    with opened(page_path) as visit:
        visit.page.click("#go")
        assert visit.page.evaluate("() => [typeof window.__pwned, "
                                   "document.getElementById('explorer-plot').data.length]") == ["undefined", 3]
    outside = [url for url in visit.requests if url != page_path.as_uri()]
    assert {"http://127.0.0.1:9/y.png", "http://127.0.0.1:9/z.css"} <= set(outside) == set(visit.refused)
    assert all("csp" in (why or "").lower() for why in visit.refused.values())
    assert visit.errors and all("Content Security Policy" in e for e in visit.errors)


# --------------------------------------------------------------------------------------------------- other formats

def test_markdown_and_latex_of_a_hostile_run_show_it_literally(tmp_path: Path) -> None:
    from markdown_it import MarkdownIt

    run_dir = hostile_run(tmp_path / "hostile")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", str(run_dir), "--metric", f"nll_ref,{COMMENT}", "--markdown",
                                       str(out / "t.md"), "--latex", str(out / "t.tex"), "--caption", SPOOF + "}{"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rendered = MarkdownIt("commonmark").enable("table").render((out / "t.md").read_text(encoding="utf-8"))
    tags = set(re.findall(r"</?([a-z0-9]+)", rendered))
    assert tags <= {"p", "em", "strong", "table", "thead", "tbody", "tr", "th", "td", "ul", "li"}
    for payload in (COMMENT, CLOSE, SPOOF):  # as text: the HTML escaping of the literal string
        assert payload.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;") \
            in rendered
    tex = (out / "t.tex").read_text(encoding="utf-8")
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert "<" not in body.replace("$<$", "") and "\\input" not in body
    assert '\\caption{$<$span style="fill:url(http://127.0.0.1:9/x.svg\\#a)"$>$spoof$<$/span$>$\\}\\{}' in tex
    assert body.count("{") == body.count("}") + body.count(r"\}") - body.count(r"\{")  # every brace is ours


def test_a_latex_label_outside_the_safe_characters_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "r", _cells())
    target = tmp_path / "t.tex"
    result = CliRunner().invoke(main, ["report", str(run_dir), "--latex", str(target), "--label", "tab}\\input{x"])
    assert result.exit_code == 2 and not target.exists()
    assert result.output.strip().splitlines() == [
        "Error: --label 'tab}\\\\input{x' may hold only letters, digits and : . _ -, e.g. tab:solvers"]
    good = CliRunner().invoke(main, ["report", str(run_dir), "--latex", "-", "--label", "tab:solvers_2.b-c"])
    assert good.exit_code == 0 and "\\label{tab:solvers_2.b-c}" in good.output


@pytest.mark.parametrize("tag", ["a$b", "$\\foo$", "$x^2$ & <b>", CLOSE])
def test_plot_labels_are_literal_text_in_the_svg(tmp_path: Path, tag: str) -> None:
    """A ``$`` pair would be mathtext (``$\\foo$`` raises); markup must stay text in the SVG, well-formed."""
    rows = [cell(solver, seed, dataset="moons$x$", nll_ref=3.0 + seed, nfe_forward_mean=4.0 * (k + 1),
                 train_time_s=1.0 + k) for k, solver in enumerate(("euler4", "euler10")) for seed in (0, 1)]
    for row in rows:  # the tag varies, so that the legend shows it
        mine = tag if "steps=4," in row["solver_spec"] else "plain"
        row["solver_spec"] = row["solver_spec"].replace("adjoint=false", f"tag={mine}")
    result = write_plots(tmp_path, frame(*rows))
    assert len(result.files) == 2
    svg = ET.parse(tmp_path / "plots" / "pareto_nfe_moons_x.svg")  # raises if the markup broke the XML
    shown = ["".join(e.itertext()) for e in svg.iter("{http://www.w3.org/2000/svg}text")]
    def compact(text: str) -> str:  # a long label or title may wrap onto several text elements, at a token boundary
        return "".join(text.split())

    assert compact(f"euler[steps=4,tag={tag}] (n=2)") in compact("".join(shown))
    assert compact("moons$x$: test NLL (reference solve) vs NFE per training solve") in compact("".join(shown))
    assert not [e for e in svg.iter() if e.tag.rsplit("}", 1)[-1] in ("script", "img", "foreignObject")]
