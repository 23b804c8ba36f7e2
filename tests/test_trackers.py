"""Experiment trackers for real: a tiny sweep logged to an MLflow store and to TensorBoard event files, read back
through mlflow's client and tensorboard's event reader and checked against the run's own curves and rows."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import read_cells

GRID = ["--solver", "euler[steps=2],rk4[steps=1]", "--iterations", "6", "--val-every", "3"]
QUICK = ["--solver", "euler[steps=2],rk4[steps=1]", "--iterations", "2", "--batch-size", "64", "--executor", "inline"]
"""Two cells in this process (the trackers live in the main process whichever the executor): tests of failures."""


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
    result = cli("run", *QUICK, "--name", "unreachable", "--tracker", "mlflow[uri=http://127.0.0.1:9],tensorboard")
    assert result.exit_code == 0, result.output
    assert "warning: tracker 'mlflow' failed in start and is left out for the rest of the run: " in result.stderr
    cells = read_cells(tmp_path, "unreachable")
    assert set(cells["status"]) == {"done"}
    assert len(list((tmp_path / "results" / "unreachable" / "tensorboard").iterdir())) == 2  # the other one works


@pytest.mark.parametrize(("tracker", "says"), [
    ("mlfow", "unknown tracker 'mlfow'; known trackers: mlflow, tensorboard; did you mean 'mlflow'?"),
    ("mlflow[url=x]", "unknown parameter 'url' for tracker 'mlflow'"),
    ("tensorboard[timeout=0]", "bad value '0' for tracker 'tensorboard' parameter 'timeout': must be >= 0.1"),
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
    result = cli("run", *QUICK, "--plugin", str(plugin), "--tracker", "broken", "--name", "broken")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning: tracker 'broken' failed in the cell ") == 1  # then left out
    assert "RuntimeError: the store went away" in result.stderr
    assert set(read_cells(tmp_path, "broken")["status"]) == {"done"}


# A slow tracker never holds up the sweep: each call has the tracker's `timeout` (every tracker has it).


HANGING_PLUGIN = """
import time
from pathlib import Path

from cnfbench.contracts import Tracker
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param


class Hang(Tracker):
    name = "hang"
    description = "a store that never answers once `block` is called (until the file `release` beside `log` exists)"
    params = (Param("block", "str", "log_cell"), Param("log", "str", "calls.txt"))

    def __init__(self, run_dir, block="log_cell", log="calls.txt"):
        super().__init__(run_dir, block=block, log=log)
        self.block, self.log = block, Path(log)
        self._called("__init__")

    def _called(self, what):
        with self.log.open("a") as stream:
            stream.write(what + "\\n")
        if what == self.block:
            while not self.log.with_name("release").exists():
                time.sleep(0.02)
            with self.log.open("a") as stream:
                stream.write("returned\\n")

    def start(self, run):
        self._called("start")

    def log_iteration(self, cell, step, values):
        self._called("log_iteration")

    def log_cell(self, cell, row):
        self._called("log_cell")

    def close(self):
        self._called("close")


@hookimpl
def cnfbench_trackers():
    return [Hang]
"""


def _hanging_plugin(tmp_path: Path) -> Path:
    plugin = tmp_path / "hang.py"
    plugin.write_text(HANGING_PLUGIN)
    return plugin


def _released(log: Path) -> list[str]:
    """Let the blocked call return; the calls the tracker saw, once it has returned."""
    (log.parent / "release").touch()
    deadline = time.monotonic() + 60
    while "returned" not in log.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # time for a call that would wrongly follow it
    return log.read_text().split()


@pytest.mark.parametrize(("block", "calls"), [
    ("__init__", ["__init__"]),
    ("start", ["__init__", "start"]),
    ("log_cell", ["__init__", "start", "log_iteration", "log_iteration", "log_cell"]),
])
def test_a_tracker_that_never_answers_is_abandoned_and_the_sweep_goes_on(cli, tmp_path: Path, block: str,
                                                                         calls: list[str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from cnfbench import tracking

    monkeypatch.setattr(tracking, "build_timeout", lambda timeout: timeout)  # not the constructor's 10 s at least
    log = tmp_path / "calls.txt"
    result = cli("run", *QUICK, "--plugin", str(_hanging_plugin(tmp_path)), "--name", "hang",
                 "--tracker", f"hang[block={block},log={log},timeout=0.5]")
    assert result.exit_code == 0, result.output
    assert set(read_cells(tmp_path, "hang")["status"]) == {"done"}
    what = {"__init__": "construction", "start": "start", "log_cell": "the cell "}[block]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: tracker 'hang' failed in {what}"), warnings
    assert "did not answer within 0.5 s (hang[timeout=SECONDS] waits longer)" in warnings[0]
    assert log.read_text().split() == calls  # the run ended while the call was still blocked, and called no more
    assert _released(log) == [*calls, "returned"]  # not even close() once it answered: it was left out


def test_an_abandoned_call_does_not_keep_the_process_from_exiting(tmp_path: Path) -> None:
    from conftest import TINY

    log = tmp_path / "calls.txt"
    try:  # the call blocks until the test releases it: a process that waited for it would never exit
        done = subprocess.run([sys.executable, "-m", "cnfbench", "run", *TINY, *QUICK, "--out", str(tmp_path),
                               "--plugin", str(_hanging_plugin(tmp_path)), "--name", "exit",
                               "--tracker", f"hang[block=close,log={log},timeout=0.5]"],
                              capture_output=True, text=True, timeout=240)
    finally:
        (tmp_path / "release").touch()
    assert done.returncode == 0, done.stderr
    assert "warning: tracker 'hang' failed in close and is left out" in done.stderr
    assert log.read_text().split()[-1] == "close"  # it exited with the call still blocked in its thread


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An HTTP address whose server accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_mlflow_at_a_server_that_never_answers_is_left_out_within_its_timeout(
        cli, tmp_path: Path, silent_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(variable, raising=False)
    result = cli("run", *QUICK, "--name", "silent", "--tracker", f"mlflow[uri={silent_server},timeout=1],tensorboard")
    assert result.exit_code == 0, result.output
    # MLflow's own requests: one attempt each, bounded by the tracker's timeout (its defaults: 7 retries, 120 s)
    assert (os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"], os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) == ("1", "0")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(
        "warning: tracker 'mlflow' failed in start and is left out for the rest of the run: "), warnings
    assert set(read_cells(tmp_path, "silent")["status"]) == {"done"}
    assert len(list((tmp_path / "results" / "silent" / "tensorboard").iterdir())) == 2  # the other one works


def test_an_sqlite_store_that_cannot_be_opened_fails_at_once_not_after_mlflow_s_retries(cli, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    store.mkdir()  # SQLite cannot open it, as in a read-only folder: MLflow would retry for ~100 s
    result = cli("run", *QUICK, "--name", "rostore", "--tracker", f"mlflow[uri=sqlite:///{store}]")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: tracker 'mlflow' failed in start and is left out for the rest of the run: "
                        f"RuntimeError: cannot open the SQLite store {store}: OperationalError: unable to open "
                        "database file"]  # our check's reason, not the 10 s timeout's
    assert set(read_cells(tmp_path, "rostore")["status"]) == {"done"}


def test_every_tracker_has_the_timeout_parameter_without_declaring_it(cli, tmp_path: Path) -> None:
    from cnfbench.registry import load_registry

    plugin = _hanging_plugin(tmp_path)
    listing = cli("plugins", "--plugin", str(plugin))
    assert listing.exit_code == 0, listing.output
    trackers = listing.output.split("\nTrackers:\n", 1)[1]
    assert trackers.count("timeout: number = 10.0  — seconds the run waits for each call") == 3  # hang, mlflow, tb
    hang = load_registry([str(plugin)]).get("tracker", "hang").cls
    assert [p.name for p in hang.params] == ["block", "log", "timeout"]
    assert hang.split_params({"block": "start", "log": "x", "timeout": 3.0}) == (3.0, {"block": "start", "log": "x"})


def test_the_conformance_kit_fails_a_tracker_slower_than_its_timeout(tmp_path: Path) -> None:
    from cnfbench.registry import load_registry
    from cnfbench.testing import ConformanceError, check_tracker

    hang = load_registry([str(_hanging_plugin(tmp_path))]).get("tracker", "hang").cls
    log = tmp_path / "calls.txt"
    with pytest.raises(ConformanceError, match=r"tracker 'hang' \(Hang\): start did not return within its "
                                               r"timeout of 0.2 s"):
        check_tracker(hang, {"block": "start", "log": str(log), "timeout": 0.2})
    assert _released(log) == ["__init__", "start", "returned"]
