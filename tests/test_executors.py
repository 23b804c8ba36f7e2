"""Executors: the same numbers in this process and on parallel workers; timeouts, dead workers and shared
models with several cells in flight; where each row ran."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import read_cells
from test_faults import FAULTS_PLUGIN, NO_FIELD

GRID = ["--solver", "euler[steps=2],rk4[steps=2],midpoint[steps=3]"]
NUMBERS = ["nll", "nll_ref", "mass", "mass_is", "nfe_forward_mean", "nfe_eval", "reverse_kl", "final_train_loss"]


def test_parallel_workers_give_the_numbers_of_one_process(cli, tmp_path: Path) -> None:
    assert cli("run", *GRID, "--executor", "inline", "--name", "one").exit_code == 0
    assert cli("run", *GRID, "--executor", "process[workers=2,threads=1]", "--name", "two").exit_code == 0
    one = read_cells(tmp_path, "one").set_index("cell_id").sort_index()
    two = read_cells(tmp_path, "two").set_index("cell_id").sort_index()
    assert list(one.index) == list(two.index) and len(one) == 3
    for column in NUMBERS:
        assert one[column].tolist() == two[column].tolist(), column
    assert set(one["executor"]) == {"inline"} and set(one["concurrency"]) == {1}
    assert set(two["executor"]) == {"process[workers=2,threads=1]"} and set(two["concurrency"]) == {2}
    assert set(two["torch_threads"]) == {1} and two["host"].notna().all()


def test_parallel_workers_survive_a_hanging_and_a_dying_cell(cli, tmp_path: Path) -> None:
    plugin = tmp_path / "faults.py"
    plugin.write_text(FAULTS_PLUGIN)
    result = cli("run", *NO_FIELD, "--plugin", str(plugin), "--timeout", "10", "--executor", "process[workers=2]",
                 "--field", "concatsquash[hidden=8],sleeper[after=2],suicide[after=0]", "--solver", "euler[steps=2]",
                 "--name", "rough", tiny=False)
    assert result.exit_code == 0, result.output
    rows = read_cells(tmp_path, "rough").set_index("field")
    assert rows.loc["concatsquash", "status"] == "done"
    assert rows.loc["sleeper", "status"] == "timeout" and "timeout after" in rows.loc["sleeper", "reason"]
    assert rows.loc["suicide", "status"] == "error" and "killed by signal 9" in rows.loc["suicide", "reason"]
    again = cli("run", *NO_FIELD, "--plugin", str(plugin), "--timeout", "10", "--executor", "process[workers=2]",
                "--field", "concatsquash[hidden=8]", "--solver", "euler[steps=2]", "--name", "rough", tiny=False)
    assert "skipping 1 cell already done, running 0" in again.output  # resume: nothing recomputed


def test_a_shared_model_is_trained_once_with_cells_in_flight(cli, tmp_path: Path) -> None:
    result = cli("run", "--objective", "cfm", "--solver", "euler[steps=2],rk4[steps=2],midpoint[steps=2]",
                 "--seeds", "2", "--executor", "process[workers=2]", "--name", "fmpar")
    assert result.exit_code == 0
    cells = read_cells(tmp_path, "fmpar")
    assert len(cells) == 6 and set(cells["status"]) == {"done"}
    assert len(list((tmp_path / "results" / "fmpar" / "models").glob("*.safetensors"))) == 2
    assert cells.groupby("seed")["trained_in"].nunique().eq(1).all()


@pytest.mark.parametrize(("executor", "says"), [
    ("nosuch", "unknown executor 'nosuch'; known executors: dask, inline, process, submitit"),
    ("process[workers=0]", "workers"),
    ("process[cores=2]", "unknown parameter 'cores'"),
])
def test_a_bad_executor_is_one_line(cli, tmp_path: Path, executor: str, says: str) -> None:
    result = cli("run", "--executor", executor, "--name", "bad")
    assert result.exit_code == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results" / "bad").exists()


def test_isolation_still_works_with_a_note(cli, tmp_path: Path) -> None:
    result = cli("run", "--solver", "euler[steps=2]", "--isolation", "inline", "--name", "old")
    assert result.exit_code == 0 and "--isolation is deprecated; use --executor inline" in result.stderr
    assert set(read_cells(tmp_path, "old")["executor"]) == {"inline"}


def test_compare_keeps_times_from_different_concurrency_apart(cli, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cnfbench.cli import main

    assert cli("run", *GRID, "--executor", "inline", "--name", "a").exit_code == 0
    assert cli("run", *GRID, "--executor", "process[workers=2,threads=1]", "--name", "b").exit_code == 0
    runs = [str(tmp_path / "results" / name) for name in ("a", "b")]
    plain = CliRunner().invoke(main, ["compare", *runs, "--metric", "nll_ref,train_time_s"])
    assert plain.exit_code == 0, plain.output
    flat = " ".join(plain.output.split())  # notes fold to the width
    assert "train_time_s left out as not comparable" in flat and "BASE ran 1 cell at a time" in flat
    assert "unchanged" in plain.output  # the NLLs are equal whatever the executor
    forced = CliRunner().invoke(main, ["compare", *runs, "--metric", "train_time_s", "--ignore-concurrency"])
    assert forced.exit_code == 0 and "compared anyway (--ignore-concurrency)" in forced.output
    only_times = CliRunner().invoke(main, ["compare", *runs, "--metric", "train_time_s"])
    assert only_times.exit_code == 2 and "not comparable" in only_times.stderr


def test_ctrl_c_stops_every_cell_in_flight_at_its_phase(tmp_path: Path) -> None:
    import threading
    import time

    from test_faults import _one_cell

    from cnfbench.dynamics import unpack_phase
    from cnfbench.executor import job_for, make_executor
    from cnfbench.registry import load_registry

    plugin = tmp_path / "faults.py"
    plugin.write_text(FAULTS_PLUGIN)
    _, first = _one_cell("sleeper[after=2]", 50, [str(plugin)])
    _, second = _one_cell("sleeper[after=4]", 50, [str(plugin)])
    pool = make_executor(load_registry([str(plugin)]), "process[workers=2,threads=1]", [str(plugin)])[0]
    try:
        threads = [threading.Thread(target=pool.run_cell, args=(job_for(cell), lambda kind, value: None),
                                    daemon=True) for cell in (first, second)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # both workers hang in their sleeper's forward pass
            phases = [unpack_phase(flight.where) for flight in pool.in_flight()]
            if sorted(phase for phase, _ in phases) == ["train_forward", "train_forward"]:
                break
            time.sleep(0.05)
        outcomes = pool.cancel()
    finally:
        pool.close()
    assert sorted(outcome.row["cell_id"] for outcome in outcomes) == sorted([first.cell_id, second.cell_id])
    for outcome in outcomes:
        assert outcome.row["status"] == "interrupted"
        assert "in the training forward pass at iteration" in outcome.row["reason"]


@pytest.mark.parametrize(("name", "params"), [("inline", {}), ("process", {"workers": 2, "threads": 1})])
def test_built_in_local_executors_pass_the_conformance_kit(name: str, params: dict) -> None:
    """Same cells, same numbers as in this process; a shared model is loaded, not retrained."""
    from cnfbench.registry import load_registry
    from cnfbench.testing import check_executor

    check_executor(load_registry([]).get("executor", name).cls, params)


GATED_PLUGIN = '''
import time
from pathlib import Path

import torch
from cnfbench.contracts import VectorField
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param


class Gated(VectorField):
    name = "gated"
    description = "waits, at its first evaluation, until a file exists"
    params = (Param("gate", "str", "", "the file it waits for"),)

    def __init__(self, dim, gate=""):
        super().__init__(dim, gate=gate)
        self.linear = torch.nn.Linear(dim, dim)

    def forward(self, t, z):
        while not Path(self.config["gate"]).exists():
            time.sleep(0.05)
        return self.linear(z)


@hookimpl
def cnfbench_fields():
    return [Gated]
'''


def test_a_killed_main_process_resumes_with_nothing_recomputed(tmp_path: Path) -> None:
    """SIGKILL the main process while two cells are done and two hang in its workers; the same command then
    runs just those two, keeps the finished rows and model files as they were, and leaves no stale file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd
    from conftest import TINY

    plugin, gate = tmp_path / "gated.py", tmp_path / "gate"
    plugin.write_text(GATED_PLUGIN)
    run_dir = tmp_path / "results" / "killed"
    tiny = [arg for index, arg in enumerate(TINY) if "--field" not in TINY[max(index - 1, 0):index + 1]]
    command = [sys.executable, "-m", "cnfbench", "run", *tiny, "--out", str(tmp_path / "results"), "--name", "killed",
               "--plugin", str(plugin), "--field", f"concatsquash[hidden=8],gated[gate={gate}]", "--seeds", "2",
               "--executor", "process[workers=2,threads=1]"]
    main = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def done_rows() -> pd.DataFrame:
        try:
            cells = pd.read_parquet(run_dir / "cells.parquet")
        except (OSError, ValueError):
            return pd.DataFrame()
        return cells[cells["status"] == "done"]

    deadline = time.monotonic() + 300
    while len(done_rows()) < 2 and main.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert main.poll() is None, main.stderr.read().decode() if main.stderr else ""
    os.kill(main.pid, signal.SIGKILL)  # the gated cells are waiting in the workers: they cannot have finished
    main.wait(30)
    before = done_rows().set_index("cell_id").sort_index()
    assert set(before["field"]) == {"concatsquash"} and len(before) == 2
    models = {path.name: path.stat().st_mtime_ns for path in (run_dir / "models").glob("*.safetensors")}
    assert len(models) == 2

    gate.write_text("open")  # the orphaned workers finish their cell, find no parent and exit
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming killed: skipping 2 cells already done, running 2" in again.stderr
    after = pd.read_parquet(run_dir / "cells.parquet").set_index("cell_id").sort_index()
    assert len(after) == 4 and set(after["status"]) == {"done"}
    pd.testing.assert_frame_equal(after.loc[before.index, before.columns], before, check_dtype=False)
    assert {name: mtime for name, mtime in ((p.name, p.stat().st_mtime_ns)
                                            for p in (run_dir / "models").glob("*.safetensors"))
            if name in models} == models
    assert not list(run_dir.rglob(".*.tmp"))


TAGGED_PLUGIN = '''
from cnfbench.hookspecs import hookimpl
from cnfbench_plugins.executors import ProcessExecutor


class Tagged(ProcessExecutor):
    name = "tagged"
    description = "the process executor under another name (a third-party engine)"


@hookimpl
def cnfbench_executors():
    return [Tagged]
'''


def test_a_plugin_brings_its_own_executor(cli, tmp_path: Path) -> None:
    plugin = tmp_path / "tagged.py"
    plugin.write_text(TAGGED_PLUGIN)
    listing = cli("plugins", "--plugin", str(plugin))
    assert listing.exit_code == 0 and "tagged" in listing.output
    result = cli("run", "--plugin", str(plugin), "--executor", "tagged[workers=2]", *GRID, "--name", "tag")
    assert result.exit_code == 0, result.output
    rows = read_cells(tmp_path, "tag")
    assert set(rows["status"]) == {"done"} and set(rows["executor"]) == {"tagged[workers=2,threads=0]"}
    typo = cli("run", "--plugin", str(plugin), "--executor", "taged", "--name", "typo")
    assert typo.exit_code == 2 and "did you mean 'tagged'?" in typo.stderr
    assert not (tmp_path / "results" / "typo").exists()
