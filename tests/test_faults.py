"""Fault injection: every way a cell can fail is recorded with its status and where it happened.

A test plugin supplies broken components (a field that turns NaN after k
evaluations, one that raises, one that sleeps inside the solve, one that
kills its own process, one that refuses some evaluation passes, a solver
that never finishes, one that blows the NFE budget, one whose backward pass
raises or hangs); they run in sweeps with healthy cells. Every reason must
name the phase and the components running there, and every row its
``cell_time_s``. Other tests kill a sweep with SIGKILL or SIGINT and resume it.

No test asserts how long anything took: only what must hold on any machine.
The timeout tests only need a tiny cell to reach its hanging component
within the timeout.
"""

from __future__ import annotations

import _thread
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, read_cells
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnfbench.cells import Cell
from cnfbench.config import RunConfig, resolve_cells
from cnfbench.contracts import INTERRUPTED, CellInterrupted
from cnfbench.dynamics import CELL_PHASES, unpack_phase
from cnfbench.executor import job_for, make_executor
from cnfbench.messages import plural
from cnfbench.registry import Registry, load_registry
from cnfbench.rows import PHASE_WHERE, interrupted_outcome
from cnfbench.run_folder import remove_stale_temporaries

FAULTS_PLUGIN = '''
import os
import signal
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


class Suicide(_Counting):
    name = "suicide"
    description = "kills its own process with SIGKILL after k evaluations"

    def fault(self, out):
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(3600)


class Picky(VectorField):
    name = "picky"
    description = "refuses evaluation (not training) batches of a given size and dtype"
    params = (Param("rows", "int", 0, "batch size it refuses (0: any)", minimum=0),
              Param("dtype", "str", "any", "dtype it refuses", choices=("any", "float32", "float64")))

    def __init__(self, dim, rows=0, dtype="any"):
        super().__init__(dim, rows=rows, dtype=dtype)
        self.linear = torch.nn.Linear(dim, dim)

    def forward(self, t, z):
        rows, dtype = self.config["rows"], self.config["dtype"]
        if not self.training and rows in (0, z.shape[0]) and dtype in ("any", str(z.dtype).split(".")[-1]):
            raise ValueError(f"picky field refused {z.shape[0]} rows of {z.dtype}")
        return self.linear(z)


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


class _BackwardFault(torch.autograd.Function):
    """Identity forward; its backward raises or hangs. The trace never differentiates through it."""

    hang = False

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        if _BackwardFault.hang:
            time.sleep(3600)
        raise ValueError("backward bomb went off")


class Bomb(Solver):
    name = "bomb"
    description = "one Euler step whose result raises (or hangs) in the backward pass"
    params = (Param("hang", "bool", False, "hang instead of raising"),)

    def integrate(self, dynamics, state, t0, t1):
        _BackwardFault.hang = self.config["hang"]
        derivative = dynamics(torch.tensor(t0, dtype=state[0].dtype), state)
        z, a = (s + (t1 - t0) * d for s, d in zip(state, derivative))
        return _BackwardFault.apply(z), a


@hookimpl
def cnfbench_fields():
    return [NaNAfter, Raiser, Sleeper, Suicide, Picky]


@hookimpl
def cnfbench_solvers():
    return [Spin, NFEHog, Bomb]
'''

_FIELD_AT = TINY.index("--field")
NO_FIELD = TINY[:_FIELD_AT] + TINY[_FIELD_AT + 2:]
"""The tiny options without their field, so that a grid holds only the fields a test names."""


@pytest.fixture
def faults_plugin(tmp_path: Path) -> Path:
    path = tmp_path / "faults.py"
    path.write_text(FAULTS_PLUGIN)
    return path


def _components(*parts: str) -> list[str]:
    """``solver 'euler' (plugin '...`` fragments: a component named with its plugin."""
    return [f"{part} (plugin '" for part in parts]


def _assert_names(reason: str, lead: str, where: str, *components: str) -> None:
    """``reason`` begins with ``lead`` and ``where`` and names every component with its plugin, on one line."""
    assert reason.startswith(f"{lead} {where}" if where else lead), reason
    for component in _components(*components):
        assert component in reason, (component, reason)
    assert "\n" not in reason


def test_every_failure_names_its_phase_and_components(cli, tmp_path: Path, faults_plugin: Path) -> None:
    result = cli("run", *NO_FIELD, "--plugin", str(faults_plugin), "--name", "faults", "--max-nfe", "200",
                 "--field", "concatsquash[hidden=8],nan_after[after=5],raiser[after=2],suicide[after=0]",
                 "--solver", "euler[steps=2],nfe_hog", tiny=False)
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "faults")
    rows = {(row.field, row.solver): row for row in cells.itertuples()}
    assert len(rows) == 4 * 2
    assert rows[("concatsquash", "euler")].status == "done" and rows[("concatsquash", "euler")].reason == ""

    nan = rows[("nan_after", "euler")]  # evaluations 1-2 in iteration 1, 3-4 in iteration 2, 6 in iteration 3
    assert nan.status == "diverged" and nan.iterations_done == 2
    _assert_names(nan.reason, "diverged", "in the training forward pass at iteration 3: non-finite training loss",
                  "solver 'euler'", "field 'nan_after'", "trace 'exact'")

    raiser = rows[("raiser", "euler")]
    assert raiser.status == "error"
    _assert_names(raiser.reason, "error", "in the training forward pass at iteration 2: ValueError",
                  "solver 'euler'", "field 'raiser'", "trace 'exact'")
    assert "raiser field gave up" in raiser.reason

    assert rows[("raiser", "nfe_hog")].status == "error"  # it raises before the budget runs out
    for field in ("concatsquash", "nan_after"):
        hog = rows[(field, "nfe_hog")]
        assert hog.status == "budget", (field, hog.reason)
        _assert_names(hog.reason, "over budget", "in the training forward pass at iteration 1:",
                      "solver 'nfe_hog'", f"field '{field}'", "trace 'exact'")
        assert "NFE budget of 200" in hog.reason

    for solver in ("euler", "nfe_hog"):
        died = rows[("suicide", solver)]
        assert died.status == "error"
        _assert_names(died.reason, "the worker process died: killed by signal 9 (SIGKILL)",
                      "in the training forward pass at iteration 1", f"solver '{solver}'", "field 'suicide'",
                      "trace 'exact'")
        assert died.iterations_done == 0

    assert cells["cell_time_s"].map(math.isfinite).all() and (cells["cell_time_s"] >= 0).all()


def test_timeouts_name_the_phase_the_worker_was_in(cli, tmp_path: Path, faults_plugin: Path) -> None:
    timeout = 10.0  # generous: a tiny cell reaches its hanging component in well under a second
    result = cli("run", *NO_FIELD, "--plugin", str(faults_plugin), "--name", "stuck", "--timeout", str(timeout),
                 "--field", "sleeper[after=2]", "--solver", "euler[steps=2],bomb[hang=true]", tiny=False)
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "stuck")
    rows = {row.solver: row for row in cells.itertuples()}
    assert set(cells["status"]) == {"timeout"}
    lead = "timeout after"
    forward, backward = rows["euler"], rows["bomb"]
    _assert_names(forward.reason, lead, "", "solver 'euler'", "field 'sleeper'", "trace 'exact'")
    assert "s (--timeout 10 s) in the training forward pass at iteration 2 — " in forward.reason
    assert forward.iterations_done == 1
    _assert_names(backward.reason, lead, "", "solver 'bomb'", "field 'sleeper'", "trace 'exact'")
    assert "s (--timeout 10 s) in the training backward pass at iteration 1 — " in backward.reason
    assert backward.iterations_done == 0
    assert (cells["cell_time_s"] >= timeout).all()  # the worker is killed at the deadline, never before


def test_failures_after_training_name_the_evaluation_phase(cli, tmp_path: Path, faults_plugin: Path) -> None:
    # every metric: 96 test rows and a 12 x 12 mass grid in one chunk each; 1,000 reference-solved samples
    # (float64) scored by the row's solver (float32); the reference solve is float64
    result = cli("run", *NO_FIELD, "--plugin", str(faults_plugin), "--name", "phases", "--isolation", "inline",
                 "--field", "picky[rows=96,dtype=float32],picky[rows=96,dtype=float64],picky[rows=144,dtype=float32],"
                            "picky[rows=144,dtype=float64],picky[rows=1000,dtype=float64],"
                            "picky[rows=1000,dtype=float32]",
                 "--solver", "euler[steps=2]", "--metrics", "all", tiny=False)
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "phases")
    reasons = dict(zip(cells["field_spec"], cells["reason"], strict=True))
    assert set(cells["status"]) == {"error"} and (cells["iterations_done"] == 3).all()
    expected = {
        "picky[rows=96,dtype=float32]": ("eval", "solver 'euler'", "evaluation trace 'exact'"),
        "picky[rows=96,dtype=float64]": ("ref", "reference solver 'dopri5'", "evaluation trace 'exact'"),
        "picky[rows=144,dtype=float32]": ("mass", "solver 'euler'", "evaluation trace 'exact'"),
        "picky[rows=144,dtype=float64]": ("mass_ref", "reference solver 'dopri5'", "evaluation trace 'exact'"),
        "picky[rows=1000,dtype=float64]": ("model_density", "reference solver 'dopri5'", "evaluation trace 'exact'"),
        "picky[rows=1000,dtype=float32]": ("mass_is", "solver 'euler'", "evaluation trace 'exact'"),
    }
    for spec, (phase, *components) in expected.items():
        _assert_names(reasons[spec], "error", f"{PHASE_WHERE[phase][0]}: ValueError", *components)
        assert "picky field refused" in reasons[spec] and "field 'picky' (plugin '" in reasons[spec]
    assert cells["cell_time_s"].map(math.isfinite).all()
    # the sampling solve of the sample metrics, when they are all the cell measures
    result = cli("run", *NO_FIELD, "--plugin", str(faults_plugin), "--name", "sampling", "--isolation", "inline",
                 "--field", "picky[rows=96]", "--solver", "euler[steps=2]", "--metrics", "energy_distance",
                 tiny=False)
    assert result.exit_code == 0, result.output
    (reason,) = read_cells(tmp_path, "sampling")["reason"]
    _assert_names(reason, "error", f"{PHASE_WHERE['sample_quality'][0]}: ValueError", "solver 'euler'")


def test_a_failing_backward_pass_is_named(cli, tmp_path: Path, faults_plugin: Path) -> None:
    result = cli("run", "--plugin", str(faults_plugin), "--name", "bomb", "--isolation", "inline", "--solver", "bomb")
    assert result.exit_code == 0, result.output
    row = read_cells(tmp_path, "bomb").iloc[0]
    assert row["status"] == "error" and row["iterations_done"] == 0
    _assert_names(row["reason"], "error", "in the training backward pass at iteration 1: ValueError", "solver 'bomb'",
                  "field 'concatsquash'", "trace 'exact'")
    assert "backward bomb went off" in row["reason"]
    assert math.isfinite(row["cell_time_s"])


def _one_cell(field: str, iterations: int, plugins: list[str]) -> tuple[Registry, Cell]:
    registry = load_registry(plugins)
    config = RunConfig(dataset=("8gaussians[n_train=256,n_val=32,n_test=96]",), field=(field,),
                       solver=("euler[steps=2]",), iterations=iterations, batch_size=64,
                       ref_solver="dopri5[rtol=1e-6,atol=1e-6]", mass_grid=12, device="cpu", plugin=tuple(plugins))
    return registry, resolve_cells(config, registry)[0]


def test_ctrl_c_in_a_cell_names_the_phase_inline() -> None:
    registry, cell = _one_cell("concatsquash[hidden=8]", 5000, [])

    def progress(kind: str, value: object) -> None:  # Ctrl-C reaches the main thread while the cell trains
        if kind == "iteration":
            _thread.interrupt_main()

    with pytest.raises(CellInterrupted) as caught:
        make_executor(registry, "inline")[0].run_cell(job_for(cell), progress)
    row = interrupted_outcome(cell, caught.value, math.nan).row
    assert row["status"] == "interrupted" and 1 <= row["iterations_done"] < 5000
    _assert_names(row["reason"], INTERRUPTED, "in the training ", "solver 'euler'", "field 'concatsquash'",
                  "trace 'exact'")
    assert math.isfinite(row["cell_time_s"])


def test_ctrl_c_in_a_worker_cell_names_the_phase(faults_plugin: Path) -> None:
    registry, cell = _one_cell("sleeper[after=2]", 50, [str(faults_plugin)])
    executor = make_executor(registry, "process", [str(faults_plugin)])[0]

    def ctrl_c_at_the_hang() -> None:
        # the sleeper hangs in iteration 2's first evaluation; Ctrl-C once the worker says it is there
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                unpack_phase(flight.where) == ("train_forward", 2) for flight in executor.in_flight()):
            time.sleep(0.05)
        _thread.interrupt_main()

    threading.Thread(target=ctrl_c_at_the_hang, daemon=True).start()
    try:
        with pytest.raises(CellInterrupted) as caught:
            executor.run_cell(job_for(cell), lambda kind, value: None)
    finally:
        executor.close()
    row = caught.value.outcome.row
    assert row["status"] == "interrupted" and row["iterations_done"] == 1
    _assert_names(row["reason"], INTERRUPTED, "in the training forward pass at iteration 2", "solver 'euler'",
                  "field 'sleeper'", "trace 'exact'")
    assert math.isfinite(row["cell_time_s"])


def test_an_interrupt_from_elsewhere_still_gives_a_row() -> None:
    _, cell = _one_cell("concatsquash[hidden=8]", 1, [])
    row = interrupted_outcome(cell, KeyboardInterrupt(), 1.5).row
    assert row["status"] == "interrupted" and row["reason"].startswith(INTERRUPTED) and row["cell_time_s"] == 1.5


def test_every_phase_has_words_and_components() -> None:
    assert tuple(PHASE_WHERE) == CELL_PHASES
    for phase, (where, slots) in PHASE_WHERE.items():
        assert where.split()[0] in ("in", "while", "before"), phase
        if phase.startswith(("train", "eval", "ref", "mass", "sampling")):
            assert "field" in slots and ("solver" in slots or "ref_solver" in slots), phase


def _terminal_sigint() -> None:
    """In the child: Ctrl-C as a terminal delivers it. A shell that starts a job in the background without job
    control (as a CI runner may) makes it ignore SIGINT, and Python keeps an inherited ignore."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
    run_dir = tmp_path / "killed"
    before = pd.read_parquet(cells_file)  # readers never see a torn file: the kill may land mid-write, but only
    assert (before["status"] == "done").all() and len(before) >= 2  # on a temporary name
    assert len(pd.read_csv(run_dir / "cells.csv")) >= 2
    assert json.loads((run_dir / "run.json").read_text())["cells"]
    stale = run_dir / ".cells.parquet.k1lled00.tmp"  # what a kill during a write leaves behind
    stale.write_bytes(b"PAR1 torn")

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipping {plural(len(before), 'cell')} already done" in resumed.stderr
    after = pd.read_parquet(cells_file)
    assert len(after) == 5 and (after["status"] == "done").all()
    kept = after.set_index("cell_id").loc[before["cell_id"], "train_time_s"]
    assert list(kept) == list(before["train_time_s"])  # finished cells were not recomputed
    assert not list(run_dir.rglob(".*.tmp"))  # the resume removed the stale temporaries, and left none of its own


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "density").mkdir(parents=True)
    stale = [run_dir / ".cells.parquet.ab_cd123.tmp", run_dir / "density" / ".0123abcd.npz.x1y2z3w4.tmp"]
    kept = [run_dir / "cells.parquet", run_dir / "notes.tmp", run_dir / ".notes.tmp", run_dir / ".a.TOO-LONG-X.tmp"]
    for path in stale + kept:
        path.write_text("x")
    assert sorted(remove_stale_temporaries(run_dir)) == sorted(stale)
    assert all(path.exists() for path in kept) and not any(path.exists() for path in stale)
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_ctrl_c_marks_the_cell_in_flight_interrupted_and_exits_130(tmp_path: Path) -> None:
    command = _run_command(tmp_path, "ctrlc", ["--solver", "euler[steps=2]", "--seeds", "4", "--iterations", "400"])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=_terminal_sigint)
    cells_file = tmp_path / "ctrlc" / "cells.parquet"
    _wait_for_rows(cells_file, 1, process)
    os.killpg(process.pid, signal.SIGINT)  # like a terminal's Ctrl-C: the whole process group
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, (stdout[-1500:], stderr[-1500:])
    assert "Interrupted" in stdout and "Summary" in stdout
    cells = pd.read_parquet(cells_file)
    assert (cells["status"] == "done").sum() >= 1
    interrupted = cells[cells["status"] == "interrupted"]
    assert len(interrupted) == 1
    reason = interrupted["reason"].iloc[0]  # wherever the cell was, the reason names it
    assert any(reason.startswith(f"{INTERRUPTED} {where}") for where, _ in PHASE_WHERE.values()), reason
    assert math.isfinite(interrupted["cell_time_s"].iloc[0])
    # every count said once, consistently: finished, interrupted (and where), never started, done/planned seeds
    done = int((cells["status"] == "done").sum())
    never = 4 - done - 1
    where = reason[len(INTERRUPTED):].split(" — ")[0].split(": ")[0].strip()
    counts = f"{plural(done, 'cell')} finished, 1 interrupted ({where})" + (f", {never} never started" if never else "")
    flat = " ".join(stdout.split())
    assert f"Interrupted: {counts}." in flat, stdout
    assert re.search(rf"8gaussians (yes |NO \(!\) )?{done}/4 ", flat), stdout  # the entry's seeds: done/planned
    assert f"({plural(done, 'cell')} run, 1 interrupted" in flat and "skipped as already done" in flat
    if never:
        assert f"{never} never started" in flat and "never started (the run was interrupted first)" in flat


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
