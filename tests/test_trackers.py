"""Experiment trackers for real: a tiny sweep logged to an MLflow store and to TensorBoard event files, read back
through mlflow's client, the README's ``mlflow ui`` server and tensorboard's event reader, and checked against the
run's own curves, rows and configuration labels (names, validity, the wall time of every point)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import read_cells

GRID = ["--solver", "euler[steps=2],rk4[steps=1]", "--iterations", "6", "--val-every", "3"]
QUICK = ["--solver", "euler[steps=2],rk4[steps=1]", "--iterations", "2", "--batch-size", "64", "--executor", "inline"]
"""Two cells in this process (the trackers live in the main process whichever the executor): tests of failures."""


@dataclass(frozen=True)
class Tracked:
    """A tiny sweep logged to both trackers: its folder, rows, curves, stderr, labels and when it ran."""

    run_dir: Path
    cells: pd.DataFrame
    curves: pd.DataFrame
    stderr: str
    labels: dict[str, str]
    began: float
    ended: float

    def curve(self, cell_id: str) -> pd.DataFrame:
        return self.curves[self.curves["cell_id"] == cell_id].sort_values("iteration")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    from click.testing import CliRunner
    from conftest import TINY

    from cnfbench.cells import Cell
    from cnfbench.cli import main
    from cnfbench.labels import cell_labels

    out = tmp_path_factory.mktemp("tracked")
    began = time.time()
    result = CliRunner().invoke(main, ["run", *TINY, "--out", str(out), *GRID, "--name", "trk", "--metrics",
                                       "default,mass_ref",
                                       # a loaded machine may take over the default 10 s to create the store
                                       "--tracker", "mlflow[timeout=120],tensorboard[timeout=120]"],
                                 catch_exceptions=False)
    ended = time.time()
    assert result.exit_code == 0, result.output
    run_dir = out / "trk"
    grid = [Cell.from_json(cell) for cell in json.loads((run_dir / "run.json").read_text())["cells"]]
    return Tracked(run_dir, pd.read_parquet(run_dir / "cells.parquet"), pd.read_parquet(run_dir / "curves.parquet"),
                   result.stderr, cell_labels(grid), began, ended)


def _mlflow_runs(tracked: Tracked) -> tuple[Any, dict[str, Any]]:
    """The MLflow client of the sweep's store and its runs by cell id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tracked.run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("trk")
    return client, {run.data.tags["cnfbench.cell_id"]: run for run in client.search_runs([experiment.experiment_id])}


def test_mlflow_holds_every_iteration_of_every_cell(tracked: Tracked) -> None:
    assert "warning" not in tracked.stderr
    client, runs = _mlflow_runs(tracked)
    assert set(runs) == set(tracked.cells["cell_id"])
    for row in tracked.cells.to_dict("records"):
        run = runs[row["cell_id"]]
        curve = tracked.curve(row["cell_id"])
        for metric in ("loss_nats", "nfe_forward", "val_nll"):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
            expected = [(int(i), float(v)) for i, v in zip(curve["iteration"], curve[metric], strict=True)
                        if pd.notna(v)]
            assert history == expected, metric
        assert run.data.metrics["final/nll_ref"] == row["nll_ref"]
        assert run.data.params["solver.name"] == row["solver"] and run.data.tags["cnfbench.status"] == "done"
        assert run.info.status == "FINISHED"


def test_mlflow_runs_are_named_by_their_configuration_and_carry_their_validity(tracked: Tracked) -> None:
    _, runs = _mlflow_runs(tracked)
    names = {cell_id: run.info.run_name for cell_id, run in runs.items()}
    assert names == tracked.labels and sorted(names.values()) == ["euler[steps=2]", "rk4[steps=1]"]
    for row in tracked.cells.to_dict("records"):
        run = runs[row["cell_id"]]
        assert run.data.tags["valid"] == ("true" if row["valid"] else "false")
        assert run.data.metrics["final/valid"] == float(row["valid"])
        assert run.data.tags.get("validity_reason", "") == row["validity_reason"]  # left out when valid
        for figure in ("nll", "entropy", "mass", "mass_ref"):  # what the flag reads (a 2D cell, a 12x12 grid)
            assert run.data.metrics[f"final/{figure}"] == row[figure], figure
        assert "cnfbench.reason" not in run.data.tags  # done: no reason, not an empty one
        assert "None" not in {*run.data.params.values(), *run.data.tags.values()}
        assert "budget.max_nfe" not in run.data.params  # a setting without a value is left out


def test_mlflow_points_carry_the_wall_time_they_were_trained_at(tracked: Tracked) -> None:
    client, runs = _mlflow_runs(tracked)
    for row in tracked.cells.to_dict("records"):
        run = runs[row["cell_id"]]
        curve = tracked.curve(row["cell_id"])
        history = sorted(client.get_metric_history(run.info.run_id, "loss_nats"), key=lambda m: m.step)
        stamps = [m.timestamp for m in history]  # milliseconds since the epoch
        elapsed = [1000 * seconds for seconds in curve["elapsed_s"]]
        # the run's start plus each point's training time, not the moment the curve was replayed
        assert [stamp - stamps[0] for stamp in stamps] == pytest.approx([e - elapsed[0] for e in elapsed], abs=1)
        assert stamps == sorted(stamps) and len(set(stamps)) > 1
        (final,) = client.get_metric_history(run.info.run_id, "final/nll_ref")
        assert final.timestamp == run.info.end_time >= stamps[-1]
        assert run.info.end_time - run.info.start_time == pytest.approx(1000 * row["cell_time_s"], abs=1)
        assert stamps[0] - run.info.start_time == pytest.approx(elapsed[0], abs=1)
        assert 1000 * tracked.began <= run.info.start_time and run.info.end_time <= 1000 * tracked.ended


def _tensorboard_events(tracked: Tracked, cell_id: str) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked.run_dir / "tensorboard" / tracked.labels[cell_id]))
    events.Reload()
    return events


def test_tensorboard_event_files_hold_the_same_curves(tracked: Tracked) -> None:
    assert sorted(path.name for path in (tracked.run_dir / "tensorboard").iterdir()) == \
        ["euler[steps=2]", "rk4[steps=1]"]  # one folder per cell, named by its configuration
    for row in tracked.cells.to_dict("records"):
        events = _tensorboard_events(tracked, row["cell_id"])
        curve = tracked.curve(row["cell_id"])
        logged = [(event.step, event.value) for event in events.Scalars("train/loss_nats")]
        assert [step for step, _ in logged] == list(curve["iteration"])
        assert [value for _, value in logged] == pytest.approx(list(curve["loss_nats"]), rel=1e-6)  # float32
        (final,) = events.Scalars("final/nll_ref")
        assert final.value == pytest.approx(row["nll_ref"], rel=1e-6)
        (valid,) = events.Scalars("final/valid")
        assert valid.value == float(row["valid"])
        cell_file = tracked.run_dir / "tensorboard" / tracked.labels[row["cell_id"]] / "cnfbench-cell-id.txt"
        assert cell_file.read_text().strip() == row["cell_id"]


def test_tensorboard_points_carry_the_wall_time_they_were_trained_at(tracked: Tracked) -> None:
    for row in tracked.cells.to_dict("records"):
        events = _tensorboard_events(tracked, row["cell_id"])
        curve = tracked.curve(row["cell_id"])
        times = [event.wall_time for event in events.Scalars("train/loss_nats")]
        elapsed = list(curve["elapsed_s"])
        assert all(later > earlier for earlier, later in zip(times[:-1], times[1:], strict=True)), times
        assert [t - times[0] for t in times] == pytest.approx([e - elapsed[0] for e in elapsed], abs=1e-4)
        (final,) = events.Scalars("final/nll_ref")
        # the cell ended cell_time_s after it started, and its first point came elapsed_s[0] after its start
        assert final.wall_time - times[0] == pytest.approx(row["cell_time_s"] - elapsed[0], abs=1e-4)
        assert tracked.began <= times[0] and final.wall_time <= tracked.ended


def test_tensorboard_gives_a_cell_whose_label_names_another_cell_s_folder_its_id_too(tmp_path: Path) -> None:
    """A shortened label, or an earlier run into the same folder, can give two cells one label: each cell keeps
    a folder of its own (a label's ``/`` is no path separator)."""
    from cnfbench_plugins.trackers import TensorBoardTracker
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def log(cell_id: str, label: str, loss: float) -> None:
        tracker = TensorBoardTracker(str(tmp_path))  # a new run into the same folder each time
        tracker.start({"name": "run"})
        cell = {"cell_id": cell_id, "label": label, "spec": {}, "started": 1_700_000_000.0, "ended": 1_700_000_002.0}
        tracker.log_iteration(cell, 1, {"loss": loss, "elapsed_s": 0.5})
        tracker.log_cell(cell, {"status": "done", "iterations_done": 1, "valid": True})
        tracker.close()

    log("a" * 16, "table[path=data/x.csv] · euler", 1.0)
    log("b" * 16, "table[path=data/x.csv] · euler", 2.0)  # another cell, the same label
    log("a" * 16, "table[path=data/x.csv] · euler", 3.0)  # the first cell again (a retried cell)
    folders = sorted(path.name for path in (tmp_path / "tensorboard").iterdir())
    assert folders == ["table[path=data∕x.csv] · euler", f"table[path=data∕x.csv] · euler · {'b' * 16}"]
    for folder, losses in zip(folders, ([1.0, 3.0], [2.0]), strict=True):
        events = EventAccumulator(str(tmp_path / "tensorboard" / folder))
        events.Reload()
        assert sorted(event.value for event in events.Scalars("train/loss")) == losses
        assert {event.wall_time for event in events.Scalars("train/loss")} == {1_700_000_000.5}
        assert {event.wall_time for event in events.Scalars("final/valid")} == {1_700_000_002.0}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_readme_s_mlflow_ui_command_serves_the_runs_and_their_validity(tracked: Tracked, tmp_path: Path) -> None:
    """The README's ``mlflow ui`` line, as written there (the run's name put in), from the folder that holds the
    output root, on a free local port; the runs read back through its REST API."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    assert mlflow, "the mlflow command is missing: pip install cnfbench[mlflow]"
    port = _free_port()
    address = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    documented = next(line for line in readme.splitlines() if line.startswith("mlflow ui "))
    arguments = [argument.replace("results/tracked", f"{tracked.run_dir.parent.name}/{tracked.run_dir.name}")
                 for argument in shlex.split(documented.split("#")[0])[1:]]
    assert "--backend-store-uri" in arguments, documented
    with log.open("w") as output:
        server = subprocess.Popen([mlflow, *arguments, "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=tracked.run_dir.parent.parent, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 180  # a cold start imports Flask, FastAPI and runs the store's migrations
        while True:
            assert server.poll() is None, f"mlflow ui exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            try:
                if urllib.request.urlopen(f"{address}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow ui did not answer within 180 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.25)
        experiment = _get(f"{address}/api/2.0/mlflow/experiments/get-by-name?experiment_name=trk")["experiment"]
        found = _get(f"{address}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})
        runs = {tags["cnfbench.cell_id"]: (run["info"]["run_name"], tags) for run in found["runs"]
                for tags in [{tag["key"]: tag["value"] for tag in run["data"]["tags"]}]}
        assert {cell_id: name for cell_id, (name, _) in runs.items()} == tracked.labels
        valid = {row["cell_id"]: row["valid"] for row in tracked.cells.to_dict("records")}
        assert {cell_id: tags["valid"] for cell_id, (_, tags) in runs.items()} == \
            {cell_id: "true" if flag else "false" for cell_id, flag in valid.items()}
        # what the issue asked for: the runs ranked by final/nll, the flagged ones filtered out
        ranked = _get(f"{address}/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment["experiment_id"]], "filter": "tags.valid = 'true'",
            "order_by": ["metrics.`final/nll` ASC"]}).get("runs", [])
        kept = [next(tag["value"] for tag in run["data"]["tags"] if tag["key"] == "cnfbench.cell_id") for run in ranked]
        rows = tracked.cells[tracked.cells["valid"]].sort_values("nll")
        assert kept == list(rows["cell_id"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own group: its workers go with it
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)


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
    flat = " ".join(trackers.split())  # the listing folds to the terminal's width
    # hang, mlflow, tensorboard
    assert flat.count("timeout: number = 10.0 [0.1 to 86400] — seconds the run waits for each call") == 3
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
