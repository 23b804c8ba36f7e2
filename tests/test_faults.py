"""Fault injection: every way a cell can fail is recorded with its status, and the sweep survives.

A test plugin supplies broken components (a field that turns NaN after k
evaluations, one that raises, one that sleeps inside the solve, a solver
that never finishes, one that blows the NFE budget); they run in one sweep
with healthy cells. Other tests kill a sweep with SIGKILL or SIGINT and
resume it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, read_cells
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAULTS_PLUGIN = '''
import time

import torch
from cnfbench.contracts import Solver, VectorField
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param


class _Counting(VectorField):
    params = (Param("after", "int", 3, "evaluations before the fault", minimum=0),)

    def __init__(self, dim, after=3):
        super().__init__(dim, after=after)
        self.linear = torch.nn.Linear(dim, dim)
        self.calls = 0

    def forward(self, t, z):
        self.calls += 1
        out = self.linear(z)
        if self.calls > self.config["after"]:
            return self.fault(out)
        return out


class NaNAfter(_Counting):
    name = "nan_after"
    description = "turns NaN after k evaluations"

    def fault(self, out):
        return out * float("nan")


class Raiser(_Counting):
    name = "raiser"
    description = "raises after k evaluations"

    def fault(self, out):
        raise ValueError("raiser field gave up")


class Sleeper(_Counting):
    name = "sleeper"
    description = "sleeps inside the solve after k evaluations"

    def fault(self, out):
        time.sleep(3600)
        return out


class Spin(Solver):
    name = "spin"
    description = "never finishes"

    def integrate(self, dynamics, state, t0, t1):
        while True:
            time.sleep(0.05)


class NFEHog(Solver):
    name = "nfe_hog"
    description = "calls the dynamics 1000 times per solve"

    def integrate(self, dynamics, state, t0, t1):
        t = torch.tensor(t0, dtype=state[0].dtype)
        for _ in range(1000):
            derivative = dynamics(t, state)
        h = (t1 - t0)
        return tuple(s + h * d for s, d in zip(state, derivative))


@hookimpl
def cnfbench_fields():
    return [NaNAfter, Raiser, Sleeper]


@hookimpl
def cnfbench_solvers():
    return [Spin, NFEHog]
'''


@pytest.fixture
def faults_plugin(tmp_path: Path) -> Path:
    path = tmp_path / "faults.py"
    path.write_text(FAULTS_PLUGIN)
    return path


def test_one_sweep_records_every_fault_and_finishes_healthy_cells(cli, tmp_path: Path, faults_plugin: Path) -> None:
    timeout = 6.0
    started = time.monotonic()
    result = cli("run", "--plugin", str(faults_plugin), "--name", "faults", "--timeout", str(timeout),
                 "--max-nfe", "200",
                 "--field", "nan_after[after=5],raiser[after=2],sleeper[after=2]",
                 "--solver", "euler[steps=2],spin,nfe_hog")
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "faults")
    status = {(row.field, row.solver): (row.status, row.reason) for row in cells.itertuples()}
    assert len(status) == 4 * 3  # the tiny default field is in the grid too
    assert status[("concatsquash", "euler")][0] == "done"
    assert status[("nan_after", "euler")][0] == "diverged"
    assert "non-finite" in status[("nan_after", "euler")][1]
    assert status[("raiser", "euler")][0] == "error"
    assert "ValueError" in status[("raiser", "euler")][1] and "raiser field gave up" in status[("raiser", "euler")][1]
    assert "field 'raiser'" in status[("raiser", "euler")][1]  # the failing plugin is named
    for field in ("concatsquash", "nan_after", "raiser", "sleeper"):
        assert status[(field, "spin")][0] == "timeout", (field, status[(field, "spin")])
        assert "--timeout 6 s" in status[(field, "spin")][1]
    assert status[("sleeper", "euler")][0] == "timeout"
    assert status[("concatsquash", "nfe_hog")][0] == "budget"
    assert "NFE budget of 200" in status[("concatsquash", "nfe_hog")][1]
    # every timeout stopped within a few seconds of the limit (5 timeouts, each plus a worker restart)
    assert elapsed < 5 * (timeout + 12) + 60
    for reason in cells["reason"].dropna():
        assert "\n" not in reason


def test_timeout_ends_a_stuck_cell_within_seconds_of_the_limit(cli, tmp_path: Path, faults_plugin: Path) -> None:
    started = time.monotonic()
    result = cli("run", "--plugin", str(faults_plugin), "--name", "stuck", "--timeout", "3", "--solver", "spin")
    elapsed = time.monotonic() - started
    assert result.exit_code == 0
    row = read_cells(tmp_path, "stuck").iloc[0]
    assert row["status"] == "timeout"
    stopped_after = float(row["reason"].split("stopped after ")[1].split(" s")[0])
    assert 3.0 <= stopped_after < 3.0 + 3.0
    assert elapsed < 60  # worker start-up included


def _run_command(out: Path, name: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "cnfbench", "run", *TINY, "--out", str(out), "--name", name, *extra]


def _wait_for_rows(path: Path, count: int, process: subprocess.Popen, limit: float = 240.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the sweep ended early with exit code {process.returncode}")
        try:
            if path.exists() and len(pd.read_parquet(path)) >= count:
                return
        except Exception:  # noqa: BLE001 - the file is renamed into place atomically; keep polling
            pass
        time.sleep(0.2)
    pytest.fail(f"{path} never reached {count} rows")


def test_sigkill_loses_no_finished_cell_and_resume_recomputes_none(tmp_path: Path) -> None:
    extra = ["--solver", "euler[steps=2]", "--seeds", "5", "--iterations", "30"]
    command = _run_command(tmp_path, "killed", extra)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cells_file = tmp_path / "killed" / "cells.parquet"
    try:
        _wait_for_rows(cells_file, 2, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the worker process too
        process.wait()
    before = pd.read_parquet(cells_file)
    assert (before["status"] == "done").all() and len(before) >= 2
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["cells"]
    assert not list((tmp_path / "killed").glob(".*.tmp"))  # no torn temporary files left to read

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipping {len(before)} cell(s) already done" in resumed.stderr
    after = pd.read_parquet(cells_file)
    assert len(after) == 5 and (after["status"] == "done").all()
    kept = after.set_index("cell_id").loc[before["cell_id"], "train_time_s"]
    assert list(kept) == list(before["train_time_s"])  # finished cells were not recomputed


def test_ctrl_c_marks_the_cell_in_flight_interrupted_and_exits_130(tmp_path: Path) -> None:
    command = _run_command(tmp_path, "ctrlc", ["--solver", "euler[steps=2]", "--seeds", "4", "--iterations", "400"])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    cells_file = tmp_path / "ctrlc" / "cells.parquet"
    _wait_for_rows(cells_file, 1, process)
    os.killpg(process.pid, signal.SIGINT)  # like a terminal's Ctrl-C: the whole process group
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Interrupted" in stdout and "Summary" in stdout
    cells = pd.read_parquet(cells_file)
    assert "interrupted" in set(cells["status"])
    assert (cells["status"] == "done").sum() >= 1


def test_damaged_results_file_is_set_aside_and_the_run_goes_on(cli, tmp_path: Path) -> None:
    run_dir = tmp_path / "results" / "damaged"
    assert cli("run", "--solver", "euler[steps=2]", "--name", "damaged", "--isolation", "inline").exit_code == 0
    (run_dir / "cells.parquet").write_bytes(b"PAR1 truncated")
    (run_dir / "cells.csv").write_text("garbage\n")
    result = cli("run", "--solver", "euler[steps=2]", "--name", "damaged", "--isolation", "inline")
    assert result.exit_code == 0
    assert "cells.parquet is unreadable" in result.stderr
    assert list(run_dir.glob("cells.parquet.damaged-*"))
    assert read_cells(tmp_path, "damaged")["status"].tolist() == ["done"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=30))
def test_random_dataset_selectors_run_or_exit_2(cli, text: str) -> None:
    result = cli("run", "--dataset", text, "--dry-run")
    assert result.exit_code in (0, 2)
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("Error: ")


_toml_values = st.one_of(st.text(max_size=12), st.integers(-5, 5), st.floats(allow_nan=False), st.booleans(),
                         st.lists(st.text(max_size=8), max_size=3))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.text(max_size=60),
    st.dictionaries(st.sampled_from(["solver", "dataset", "trace", "seeds", "lr", "iterations", "timeout", "nope"]),
                    _toml_values, max_size=3).map(lambda d: "\n".join(f"{k} = {json.dumps(v)}" for k, v in d.items())),
))
def test_random_config_files_run_or_exit_2(cli, tmp_path: Path, text: str) -> None:
    path = tmp_path / "random.toml"
    path.write_text(text)
    result = cli("run", "--config", str(path), "--dry-run", tiny=False)
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
