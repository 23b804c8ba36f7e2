"""The run folder's format: what cnfbench 0.1.0 wrote (``results/reference/``) still loads, reports, compares,
merges and resumes without recomputing a cell; new folders carry their format version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cnfbench.cli import main
from cnfbench.run_folder import RUN_FORMAT, RUN_JSON, RunStore, load_run

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"

REFERENCE_COMMAND = ["run", "--dataset", "8gaussians[n_train=2000,n_test=500]", "--solver", "euler[steps=4],dopri5",
                     "--trace", "exact", "--seeds", "2", "--iterations", "150", "--batch-size", "256",
                     "--mass-grid", "24", "--device", "cpu", "--quiet"]
"""The command ``results/reference/README.md`` says made the reference run."""


@pytest.fixture
def reference_copy(tmp_path: Path) -> Path:
    target = tmp_path / "results" / "reference"
    shutil.copytree(REFERENCE, target, ignore=shutil.ignore_patterns("plots", "report.html"))
    return target


def test_the_reference_run_is_format_1_and_loads_without_warnings() -> None:
    run = load_run(REFERENCE)
    assert "format" not in json.loads((REFERENCE / RUN_JSON).read_text())
    assert run.warnings == [] and len(run.cells) == 4 and set(run.cells["status"]) == {"done"}
    assert run.libraries == ("torchdiffeq",)  # what 0.1.0's built-in solvers depended on


def test_a_0_1_0_run_resumes_with_no_cell_recomputed(reference_copy: Path) -> None:
    before = pd.read_parquet(reference_copy / "cells.parquet")
    result = CliRunner().invoke(main, [*REFERENCE_COMMAND, "--out", str(reference_copy.parent), "--name", "reference"])
    assert result.exit_code == 0, result.output
    assert "skipping 4 cells already done, running 0" in result.stderr
    assert "(0 cells run, 4 skipped as already done)" in result.output
    after = pd.read_parquet(reference_copy / "cells.parquet")
    pd.testing.assert_frame_equal(before.sort_values("cell_id", ignore_index=True),
                                  after.sort_values("cell_id", ignore_index=True))
    provenance = RunStore(reference_copy).read_run_json()
    assert provenance["format"] == RUN_FORMAT and provenance["libraries"] == ["torchdiffeq"]
    assert provenance["history"][-1]["created"] == json.loads((REFERENCE / RUN_JSON).read_text())["created"]


def test_the_reference_run_reports_compares_and_merges(reference_copy: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    report = runner.invoke(main, ["report", str(reference_copy), "--rows", "dataset", "--cols", "solver",
                                  "--metric", "nll_ref,nll"])
    assert report.exit_code == 0 and "3.244 ± 0.020" in report.output and "3.063 ± 0.107" in report.output \
        and "3.063 ± 0.107 *" not in report.output  # two seeds, p > 0.05: best but not significantly
    compare = runner.invoke(main, ["compare", str(REFERENCE), str(reference_copy)])
    assert compare.exit_code == 0 and "2 configurations: 2 unchanged" in compare.output
    assert "torchdiffeq 0.2.5" in compare.output
    merged = runner.invoke(main, ["merge", str(tmp_path / "merged"), str(reference_copy)])
    assert merged.exit_code == 0 and "merged 4 cells" in merged.output
    assert RunStore(tmp_path / "merged").read_run_json()["format"] == RUN_FORMAT
    assert len(load_run(tmp_path / "merged").cells) == 4


def test_a_newer_format_is_read_with_a_warning(reference_copy: Path) -> None:
    provenance = json.loads((reference_copy / RUN_JSON).read_text())
    (reference_copy / RUN_JSON).write_text(json.dumps({**provenance, "format": RUN_FORMAT + 1}))
    run = load_run(reference_copy)
    assert len(run.cells) == 4
    assert run.warnings == [f"{reference_copy / RUN_JSON} has format {RUN_FORMAT + 1}, newer than this cnfbench's "
                            f"{RUN_FORMAT}: reading what this version knows"]
