"""The report reads right in every renderer: units from the column catalogue (a per-row unit resolved, never its
column's name), ``±`` and spread only with two or more seeds, "best" never on a flagged row (text, Markdown, LaTeX,
HTML, CSV, JSON), the explorer on the tables' axes, provenance with every command of the run folder, and a page that
inlines the vendored partial plotly.js bundle. The browser checks are in ``test_html_browser.py``."""

from __future__ import annotations

import json
import shlex
import sys
from importlib import resources
from pathlib import Path

from click.testing import CliRunner
from test_report import cell, frame, write_run

from cnfbench.cli import main
from cnfbench.reports import metric_info, pivot, to_csv, to_json, to_latex, to_markdown, to_text
from cnfbench.reports.explorer import PLOTLY_JS, explorer, explorer_data
from cnfbench.reports.html import command_history, render_html, table_html
from cnfbench.run_folder import load_run

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def losses(units: tuple[str, ...]) -> object:
    """Two objectives' cells (two seeds each), each recording its training loss in the unit given."""
    rows = []
    for objective, unit in zip(("mle", "fm"), units, strict=True):
        for seed in (0, 1):
            row = cell("dopri5", seed, nll_ref=3.0 + seed, final_train_loss=1.23456 + seed, train_loss_unit=unit)
            row.update(objective=objective, objective_spec=objective)
            rows.append(row)
    return frame(*rows)


def test_a_per_row_unit_is_resolved_or_said_in_words_never_a_placeholder():
    same = losses(("nats/sample", "nats/sample"))
    assert metric_info("final_train_loss", same).header == "final_train_loss [nats/sample]"
    mixed = losses(("nats/sample", "1"))
    assert metric_info("final_train_loss", mixed).header == "final_train_loss [objective's unit]"
    assert metric_info("final_train_loss").header == "final_train_loss [objective's unit]"  # no rows to read
    table = pivot(mixed, rows=["objective"], metrics=["final_train_loss"])
    assert table.metrics[0].header == "final_train_loss [objective's unit]"
    assert "final_train_loss is in each row's objective's unit (mle: nats/sample; fm: 1): compare it only within " \
           "an objective" in table.notes
    assert not [n for n in pivot(same, rows=["objective"], metrics=["final_train_loss"]).notes if "unit (" in n]
    data = explorer_data(mixed)
    assert data["metrics"]["final_train_loss"]["label"] == "final_train_loss [objective's unit]"
    assert data["metrics"]["final_train_loss"]["unit"] == ""  # each point says its own
    assert [p["units"] for p in data["points"]] == [{"final_train_loss": "nats/sample"}, {"final_train_loss": "1"}]
    page = render_html("t", [], [("Results", table)], [], cells=mixed)
    assert "train_loss_unit]" not in page and "[train_loss_unit" not in page


def flagged_fewest_nfe() -> object:
    """Euler with 4 steps is flagged and has the fewest NFE; Euler with 10 steps beats dopri5 on NFE; 2 seeds."""
    rows = []
    for solver, nfe, valid in (("euler4", 4.0, False), ("euler10", 10.0, True), ("dopri5", 26.0, True)):
        for seed in (0, 1):
            rows.append(cell(solver, seed, nll=2.5 + nfe / 100 + 0.01 * seed, nll_ref=3.0 + 0.01 * seed,
                             nfe_forward_mean=nfe, valid=valid,
                             validity_reason="" if valid else "the solver's density integrates to 1.2, not 1"))
    return frame(*rows)


def test_best_is_never_on_a_flagged_row_in_any_renderer():
    table = pivot(flagged_fewest_nfe(), rows=["solver"], metrics=["nll", "nfe_forward_mean"])
    euler4 = table.entries[(("euler[steps=4]",), (), "nfe_forward_mean")]
    assert euler4.invalid and not euler4.flagged and not euler4.best and not euler4.marked  # NFE: no (!) but no best
    euler10 = table.entries[(("euler[steps=10]",), (), "nfe_forward_mean")]
    assert euler10.marked  # the fewest NFE among the unflagged rows, and fewer than dopri5's every seed
    assert table.entries[(("euler[steps=10]",), (), "nll")].marked  # tested against dopri5 only, not the flagged one

    text = to_text(table, width=160).splitlines()
    flagged_line = next(line for line in text if line.startswith("euler[steps=4]"))
    assert "*" not in flagged_line and "(!)" in flagged_line
    assert "10.0 ± 0.0 *" in next(line for line in text if line.startswith("euler[steps=10]"))
    markdown = to_markdown(table).splitlines()
    assert "**" not in next(line for line in markdown if line.startswith("| euler\\[steps=4\\]"))
    assert "**10.0 ± 0.0**" in next(line for line in markdown if line.startswith("| euler\\[steps=10\\]"))
    latex = to_latex(table).splitlines()
    assert "mathbf" not in next(line for line in latex if line.startswith("euler{[}steps=4{]}"))
    assert r"$\mathbf{10.0 \pm 0.0}$" in next(line for line in latex if line.startswith("euler{[}steps=10{]}"))
    html = table_html(table).splitlines()
    assert "best" not in next(line for line in html if "<td>euler[steps=4]</td>" in line)
    assert 'class="num best">10.0 ± 0.0<' in next(line for line in html if "<td>euler[steps=10]</td>" in line)
    assert 'class="num flagged">' in next(line for line in html if "<td>euler[steps=4]</td>" in line)
    csv_rows = to_csv(table).splitlines()
    assert next(line for line in csv_rows if line.startswith("euler[steps=4]")).split(",")[-1] == "False"
    entries = json.loads(to_json(table))["entries"]
    assert not [e for e in entries if e["row"]["solver"] == "euler[steps=4]" and e["best"]]
    assert any("no entry of its configuration is marked best (in any column)" in note for note in table.notes)


def test_one_seed_shows_no_spread_and_marks_nothing():
    cells = frame(cell("euler4", 0, nll_ref=3.2, nfe_forward_mean=4.0), cell("dopri5", 0, nll_ref=3.0,
                                                                            nfe_forward_mean=26.0))
    table = pivot(cells, rows=["solver"], metrics=["nll_ref", "nfe_forward_mean"])
    text = to_text(table, width=160)
    assert "±" not in text and "*" not in text.split("\n", 2)[2]
    assert table.caption().endswith("one seed per entry, no spread; no entry marked best (that takes Welch's t-test "
                                    "over 2 or more seeds)")
    data = explorer_data(cells)
    assert [p["values"]["nll_ref"] for p in data["points"]] == [[3.2, None, 1], [3.0, None, 1]]
    assert data["defaults"] == {"x": "nfe_forward_mean", "y": "nll_ref"}  # the tables' and static plots' axes
    assert data["metrics"]["nfe_forward_mean"] == {"label": "NFE fwd/iter [evals]", "unit": "evals", "decimals": 1,
                                                   "y": False}


def test_timings_with_different_threads_are_noted_in_the_text_and_over_the_chart():
    rows = [cell(solver, seed, nll_ref=3.0, train_time_s=1.0 + seed, torch_threads=1 + seed, concurrency=1)
            for solver in ("euler4", "dopri5") for seed in (0, 1)]
    note = ("timings (train time [s]) compare cells run with different torch thread counts (1, 2 threads): not like "
            "for like")
    assert f"note: {note}" in to_text(pivot(frame(*rows), rows=["solver"], metrics=["train_time_s"]), width=1000)
    assert note in explorer(frame(*rows)).markup


def test_provenance_lists_every_command_of_the_run_folder(tmp_path: Path):
    first = ["cnfbench", "run", "--solver", "euler[steps=2],rk4", "--seeds", "1"]
    resumed = ["cnfbench", "run", "--solver", "euler[steps=2],rk4", "--seeds", "2"]
    evaluated = ["cnfbench", "evaluate", "r", "--solver", "dopri5"]
    provenance = {"created": "2025-01-02T00:00:00+00:00", "command": resumed,
                  "history": [{"created": "2025-01-01T00:00:00+00:00", "command": first, "plugins": []},
                              {"created": "2025-01-01T12:00:00+00:00"}, "hand-edited"],
                  "evaluations": [{"created": "2025-01-03T00:00:00+00:00", "command": evaluated}]}
    history = command_history(provenance)
    assert history == [("2025-01-01T00:00:00+00:00", "run", shlex.join(first)),
                       ("2025-01-02T00:00:00+00:00", "run", shlex.join(resumed)),
                       ("2025-01-03T00:00:00+00:00", "evaluate", shlex.join(evaluated))]
    assert "'euler[steps=2],rk4'" in history[0][2]  # quoted as a shell takes it back
    run_dir = write_run(tmp_path / "r", frame(cell("dopri5", 0, nll_ref=3.0)), provenance=provenance)
    page = render_html("t", [load_run(run_dir)], [], [])
    listed = page.split("<dt>commands (3)</dt>", 1)[1].split("</ol>", 1)[0]
    assert listed.count("<li>") == 3
    assert listed.index("--seeds 1") < listed.index("--seeds 2") < listed.index("cnfbench evaluate")


def test_the_page_inlines_the_vendored_partial_plotly_bundle(tmp_path: Path):
    assets = resources.files("cnfbench.reports")
    bundle = assets.joinpath(PLOTLY_JS).read_text(encoding="utf-8")
    assert bundle.startswith("/**\n* plotly.js (basic - minified) v")
    assert "MIT License" in assets.joinpath("assets/plotly-basic.LICENSE").read_text(encoding="utf-8")
    with open(Path(__file__).parents[1] / "pyproject.toml", "rb") as handle:
        shipped = tomllib.load(handle)["tool"]["setuptools"]["package-data"]["cnfbench.reports"]
    assert {"assets/*.js", "assets/*.LICENSE"} <= set(shipped)  # in the wheel, beside the module
    run_dir = write_run(tmp_path / "r", frame(*(cell(s, seed, nll_ref=3.0 + seed, nfe_forward_mean=4.0)
                                                for s in ("euler4", "dopri5") for seed in (0, 1))))
    result = CliRunner().invoke(main, ["report", str(run_dir), "--html"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert bundle in page and page.count("plotly.js (") == 1
    without_plots = len(page.encode("utf-8")) - sum(len(part.split('"', 1)[0]) for part in
                                                    page.split('src="data:image/png;base64,')[1:])
    assert without_plots < 1.4e6  # bytes; the full bundle alone is 4.8 MB
