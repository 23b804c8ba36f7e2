"""Experiment trackers for real: a tiny sweep logged to an MLflow store and to TensorBoard event files, read back
through mlflow's client and tensorboard's event reader and checked against the run's own curves and rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import read_cells

GRID = ["--solver", "euler[steps=2],rk4[steps=1]", "--iterations", "6", "--val-every", "3"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame, str]:
    from click.testing import CliRunner
    from conftest import TINY

    from cnfbench.cli import main

    out = tmp_path_factory.mktemp("tracked")
    result = CliRunner().invoke(main, ["run", *TINY, "--out", str(out), *GRID, "--name", "trk",
                                       "--tracker", "mlflow,tensorboard"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = out / "trk"
    return run_dir, pd.read_parquet(run_dir / "cells.parquet"), pd.read_parquet(run_dir / "curves.parquet"), \
        result.stderr


def test_mlflow_holds_every_iteration_of_every_cell(tracked) -> None:
    from mlflow.tracking import MlflowClient

    run_dir, cells, curves, stderr = tracked
    assert "warning" not in stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("trk")
    runs = {run.data.tags["cnfbench.cell_id"]: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(cells["cell_id"])
    for row in cells.to_dict("records"):
        run = runs[row["cell_id"]]
        curve = curves[curves["cell_id"] == row["cell_id"]].sort_values("iteration")
        for metric in ("loss_nats", "nfe_forward", "val_nll"):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
            expected = [(int(i), float(v)) for i, v in zip(curve["iteration"], curve[metric], strict=True)
                        if pd.notna(v)]
            assert history == expected, metric
        assert run.data.metrics["final/nll_ref"] == row["nll_ref"]
        assert run.data.params["solver.name"] == row["solver"] and run.data.tags["cnfbench.status"] == "done"
        assert run.info.status == "FINISHED"


def test_tensorboard_event_files_hold_the_same_curves(tracked) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, cells, curves, _ = tracked
    for row in cells.to_dict("records"):
        events = EventAccumulator(str(run_dir / "tensorboard" / row["cell_id"]))
        events.Reload()
        curve = curves[curves["cell_id"] == row["cell_id"]].sort_values("iteration")
        logged = [(event.step, event.value) for event in events.Scalars("train/loss_nats")]
        assert [step for step, _ in logged] == list(curve["iteration"])
        assert [value for _, value in logged] == pytest.approx(list(curve["loss_nats"]), rel=1e-6)  # float32
        (final,) = events.Scalars("final/nll_ref")
        assert final.value == pytest.approx(row["nll_ref"], rel=1e-6)


def test_a_tracker_that_cannot_reach_its_store_is_a_warning(cli, tmp_path: Path) -> None:
    result = cli("run", *GRID, "--name", "unreachable", "--tracker", "mlflow[uri=http://127.0.0.1:9],tensorboard")
    assert result.exit_code == 0, result.output
    assert "warning: tracker 'mlflow' failed in start and is left out for the rest of the run: " in result.stderr
    cells = read_cells(tmp_path, "unreachable")
    assert set(cells["status"]) == {"done"}
    assert len(list((tmp_path / "results" / "unreachable" / "tensorboard").iterdir())) == 2  # the other one works


@pytest.mark.parametrize(("tracker", "says"), [
    ("mlfow", "unknown tracker 'mlfow'; known trackers: mlflow, tensorboard; did you mean 'mlflow'?"),
    ("mlflow[url=x]", "unknown parameter 'url' for tracker 'mlflow'"),
])
def test_a_bad_tracker_is_one_line_and_writes_nothing(cli, tmp_path: Path, tracker: str, says: str) -> None:
    result = cli("run", "--tracker", tracker, "--name", "bad")
    assert result.exit_code == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results" / "bad").exists()


def test_a_tracker_without_its_extra_names_it(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = cli("run", "--tracker", "mlflow", "--name", "noextra")
    assert result.exit_code == 2 and "needs the optional extra: pip install cnfbench[mlflow]" in result.stderr
    assert not (tmp_path / "results" / "noextra").exists()


@pytest.mark.parametrize("name", ["mlflow", "tensorboard"])
def test_built_in_trackers_pass_the_conformance_kit(name: str) -> None:
    from cnfbench.registry import load_registry
    from cnfbench.testing import check_tracker

    check_tracker(load_registry([]).get("tracker", name).cls)


PRINTING_PLUGIN = """
from cnfbench.contracts import Tracker
from cnfbench.hookspecs import hookimpl


class Broken(Tracker):
    name = "broken"
    description = "fails at its second iteration"

    def log_iteration(self, cell, step, values):
        if step == 2:
            raise RuntimeError("the store went away")


@hookimpl
def cnfbench_trackers():
    return [Broken]
"""


def test_a_tracker_that_fails_mid_run_never_fails_a_cell(cli, tmp_path: Path) -> None:
    plugin = tmp_path / "broken.py"
    plugin.write_text(PRINTING_PLUGIN)
    result = cli("run", *GRID, "--plugin", str(plugin), "--tracker", "broken", "--name", "broken")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning: tracker 'broken' failed in the cell ") == 1  # then left out
    assert "RuntimeError: the store went away" in result.stderr
    assert set(read_cells(tmp_path, "broken")["status"]) == {"done"}
