"""The column catalogue: identity columns from the families table, the README's table, default metrics, and
plugin columns declared through ``cnfbench_columns`` (units, best marker, direction in ``compare``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_compare import run
from test_report import cell, frame, write_run

from cnfbench.cli import main
from cnfbench.columns import (
    COLUMNS,
    COLUMNS_BY_NAME,
    COMPARE,
    DEFAULT_USES,
    DIFFERENCE,
    IDENTITY,
    RATIO,
    REPORT,
    SUMMARY,
    Column,
    default_metrics,
)
from cnfbench.families import AXIS_SPEC_COLUMNS, EVAL_SLOTS, GRID_AXES
from cnfbench.reports import ReportError, compare_runs, metric_info, pivot, to_text
from cnfbench.summary import SUMMARY_METRICS

README = Path(__file__).resolve().parents[1] / "README.md"

DECLARING_PLUGIN = '''
from cnfbench.columns import Column
from cnfbench.hookspecs import hookimpl


@hookimpl
def cnfbench_columns():
    return [Column("sharpness", "1/nat", "how peaked the learned density is", goal="min", comparison="ratio",
                   label="sharpness", decimals=2)]
'''

CLASHING_PLUGIN = '''
from cnfbench.columns import Column
from cnfbench.hookspecs import hookimpl


@hookimpl
def cnfbench_columns():
    return [Column("nll", "nats/sample", "a second nll")]
'''


def test_identity_columns_come_from_the_families_table_in_row_order() -> None:
    names = [c.name for c in COLUMNS]
    axes = [row.column for row in GRID_AXES]
    assert names[: len(axes) + 2] == ["cell_id", *axes, "seed"]
    spec_start = len(axes) + 2
    assert names[spec_start: spec_start + len(axes)] == list(AXIS_SPEC_COLUMNS)
    for slot in EVAL_SLOTS:
        assert COLUMNS_BY_NAME[slot.spec_column].meaning == slot.meaning
    assert all(COLUMNS_BY_NAME[row.column].group == IDENTITY for row in GRID_AXES)


def test_readme_column_table_is_the_catalogue() -> None:
    text = README.read_text()
    table = text[text.index("Every column of `cells.parquet` / `cells.csv`:"):]
    rows = re.findall(r"^\| `([^`]+)` \| (.*?) \| (.*) \|$", table.split("\n\n", 2)[1], flags=re.MULTILINE)
    assert [(name, unit.replace("\\|", "|"), meaning.replace("\\|", "|")) for name, unit, meaning in rows] == \
        [(c.name, c.unit, c.meaning) for c in COLUMNS]


def test_catalogue_says_how_each_metric_is_shown_and_compared() -> None:
    assert COLUMNS_BY_NAME["nll_ref"].comparison == DIFFERENCE and COLUMNS_BY_NAME["nll_ref"].goal == "min"
    assert COLUMNS_BY_NAME["train_time_s"].comparison == RATIO and COLUMNS_BY_NAME["train_time_s"].machine
    assert COLUMNS_BY_NAME["mass"].goal == "one"
    assert COLUMNS_BY_NAME["iter_time_median_s"].header == "median iter [ms]"
    assert metric_info("iter_time_median_s").scale == 1000.0
    assert default_metrics(REPORT) == ("nll", "nll_ref", "excess_nll", "mass", "mass_is", "nfe_forward_mean",
                                       "train_time_s")
    assert default_metrics(COMPARE) == ("nll", "nll_ref", "nfe_forward_mean")
    assert not any(COLUMNS_BY_NAME[name].machine for name in default_metrics(COMPARE))
    assert [m.name for m in SUMMARY_METRICS] == list(default_metrics(SUMMARY))
    assert all(set(c.defaults) <= set(DEFAULT_USES) for c in COLUMNS)
    with pytest.raises(ValueError, match="unknown table"):
        default_metrics("plots")


def sharp_cells(values: dict[str, tuple[float, ...]]) -> list[dict]:
    return [cell(solver, seed, nll_ref=3.0, sharpness=v) for solver, vs in values.items() for seed, v in enumerate(vs)]


def test_an_undeclared_plugin_column_has_its_name_no_unit_and_no_goal(monkeypatch) -> None:
    monkeypatch.delenv("CNFBENCH_PLUGINS", raising=False)
    info = metric_info("sharpness")
    assert (info.header, info.unit, info.goal) == ("sharpness", "", None)
    table = pivot(frame(*sharp_cells({"euler4": (2.0, 2.0), "dopri5": (1.0, 1.0)})), rows=["solver"],
                  metrics=["sharpness"])
    assert not any(e.best for e in table.entries.values())


def test_a_declared_plugin_column_gets_its_unit_best_marker_and_direction(tmp_path, monkeypatch) -> None:
    plugin = tmp_path / "sharp.py"
    plugin.write_text(DECLARING_PLUGIN)
    monkeypatch.setenv("CNFBENCH_PLUGINS", str(plugin))
    info = metric_info("sharpness")
    assert (info.header, info.unit, info.goal, info.decimals) == ("sharpness [1/nat]", "1/nat", "min", 2)

    cells = frame(*sharp_cells({"euler4": (2.0, 2.0), "dopri5": (1.0, 1.02)}))
    table = pivot(cells, rows=["solver"], metrics=["sharpness"])
    assert [r[0] for (r, _, _), e in table.entries.items() if e.best] == ["dopri5"]
    assert "1.01 ± 0.01 *" in to_text(table) and "lowest" in table.caption()
    result = CliRunner().invoke(main, ["report", str(write_run(tmp_path / "r", cells)), "--rows", "solver",
                                       "--metric", "sharpness"], catch_exceptions=False)
    assert result.exit_code == 0 and "sharpness [1/nat]" in result.output and "1.01 ± 0.01 *" in result.output

    base = frame(*sharp_cells({"euler4": (2.0, 2.0), "dopri5": (1.0, 1.0)}))
    new = frame(*sharp_cells({"euler4": (3.0, 3.0), "dopri5": (0.5, 0.5)}))
    comparison = compare_runs(run(base), run(new), metrics=["sharpness"])
    verdicts = {r.labels["solver"]: r.verdict for r in comparison.rows}
    assert verdicts == {"euler": "worse", "dopri5": "better"}
    change = comparison.rows[0].changes[0]
    assert change.ratio == pytest.approx(1.5) and math.isclose(change.difference, 1.0)

    monkeypatch.delenv("CNFBENCH_PLUGINS")  # without the plugin: no direction, so nothing is worse or better
    comparison = compare_runs(run(base), run(new), metrics=["sharpness"])
    assert {r.verdict for r in comparison.rows} == {"inconclusive"}  # a significant move is never unchanged
    assert comparison.rows[0].reason.endswith(", p<0.001 (no goal says which way is better)")
    assert {c.change for r in comparison.rows for c in r.changes} == {"changed"}


def test_a_plugin_column_may_not_redeclare_a_cnfbench_column(tmp_path, monkeypatch) -> None:
    plugin = tmp_path / "clash.py"
    plugin.write_text(CLASHING_PLUGIN)
    monkeypatch.setenv("CNFBENCH_PLUGINS", str(plugin))
    with pytest.raises(ReportError, match=r"declares column 'nll', which is one of cnfbench's own"):
        metric_info("sharpness")
    assert Column("x", "1", "x").comparison == RATIO  # an undeclared kind compares as today: a ratio
