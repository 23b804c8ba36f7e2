"""Safe in the field: one writer per run folder, workers that die with their main process, a full disk that
loses no row or model, and damaged files repaired from their intact copy by every command.

Nothing here asserts how long anything took; where a process must end, the test waits for it with a limit far
above what it needs, and asserts that it ended.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import TINY, read_cells

from cnfbench.cli import main
from cnfbench.folder_lock import LOCK_NAME, FolderLocked, holder, run_folder_lock
from cnfbench.run_folder import load_results, load_run

SLEEPER_PLUGIN = '''
import os
import time
from pathlib import Path

import torch
from cnfbench.contracts import VectorField
from cnfbench.hookspecs import hookimpl


class Sleeper(VectorField):
    name = "sleeper"
    description = "writes its process id to $SLEEPER_PID, then sleeps inside the first training solve"

    def __init__(self, dim):
        super().__init__(dim)
        self.linear = torch.nn.Linear(dim, dim)

    def forward(self, t, z):
        if self.training:
            Path(os.environ["SLEEPER_PID"]).write_text(str(os.getpid()))
            time.sleep(3600)
        return self.linear(z)


@hookimpl
def cnfbench_fields():
    return [Sleeper]
'''

FILLER_PLUGIN = '''
import os
from pathlib import Path

from cnfbench.hookspecs import hookimpl


@hookimpl
def cnfbench_cell_finished(row, run_dir):
    """After the first finished cell, fill the device that holds the run folder."""
    target = Path(os.environ["FILLER_PATH"])
    if target.exists():
        return
    with open(target, "wb") as stream:
        try:
            while True:
                stream.write(b"x" * 65536)
                stream.flush()
        except OSError:
            pass
'''


def _command(out: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cnfbench", "run", *TINY, "--solver", "euler[steps=2]", "--out", str(out),
            "--name", name, *extra]


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting to be reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _wait_for(predicate, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} within {limit:g} s")


# ---------------------------------------------------------------------------------------------- one writer


def test_the_lock_is_reentrant_names_its_holder_and_leaves_no_empty_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "new"
    with run_folder_lock(run_dir):
        assert holder(run_dir)["pid"] == os.getpid()
        with run_folder_lock(run_dir):  # the runner inside a command that took it
            pass
        assert (run_dir / LOCK_NAME).exists()
    assert not run_dir.exists()  # nothing was written: the folder it created is gone again
    kept = tmp_path / "kept"
    with run_folder_lock(kept):
        (kept / "run.json").write_text("{}")
    assert sorted(path.name for path in kept.iterdir()) == [LOCK_NAME, "run.json"]


@contextlib.contextmanager
def _held_elsewhere(run_dir: Path) -> Iterator[subprocess.Popen]:
    """``run_dir``'s lock held by another process for the block."""
    script = ("import sys, time; from cnfbench.folder_lock import run_folder_lock\n"
              "with run_folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-c", script, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_second_writer_is_refused_with_one_line_and_touches_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "results" / "busy"
    run_dir.mkdir(parents=True)
    (run_dir / ".cells.parquet.a1b2c3d4.tmp").write_bytes(b"the other writer's temporary file")
    with _held_elsewhere(run_dir) as other:
        before = sorted(path.name for path in run_dir.iterdir())
        result = CliRunner().invoke(main, ["run", *TINY, "--out", str(tmp_path / "results"), "--name", "busy"])
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ")
        assert f"pid {other.pid}" in lines[0] and "--wait" in lines[0]
        assert sorted(path.name for path in run_dir.iterdir()) == before  # its temporary file is still there
        with pytest.raises(FolderLocked):
            with run_folder_lock(run_dir):
                pass


def test_two_runs_started_together_on_one_folder_lose_no_row(tmp_path: Path) -> None:
    extra = ("--seeds", "4", "--wait")
    first = subprocess.Popen(_command(tmp_path, "same", *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    second = subprocess.Popen(_command(tmp_path, "same", *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [err[-800:] for _, err in outputs]
    assert any("note: waiting for" in err for _, err in outputs)
    assert any("skipping 4 cells already done" in err for _, err in outputs)
    cells = pd.read_parquet(tmp_path / "same" / "cells.parquet")
    assert len(cells) == 4 and (cells["status"] == "done").all()
    assert all((tmp_path / "same" / name).is_file() for name in cells["model_file"])
    assert not list((tmp_path / "same").rglob(".*.tmp"))


# ------------------------------------------------------------------------------------------ worker lifetime


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("executor", ["process", "dask[workers=1]", "submitit[cluster=local]"])
def test_kill_9_of_the_main_process_ends_its_worker(tmp_path: Path, executor: str) -> None:
    pytest.importorskip({"process": "cnfbench", "dask": "distributed", "submitit": "submitit"}[executor.split("[")[0]])
    plugin = tmp_path / "sleeper.py"
    plugin.write_text(SLEEPER_PLUGIN)
    pid_file = tmp_path / "worker.pid"
    command = _command(tmp_path, "orphan", "--field", "sleeper", "--plugin", str(plugin), "--executor", executor)
    main_process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env={**os.environ, "SLEEPER_PID": str(pid_file)})
    try:
        _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 300, "the worker never began its cell")
        worker = int(pid_file.read_text())
        assert worker != main_process.pid and _alive(worker)
        main_process.kill()
        main_process.wait()
        _wait_for(lambda: not _alive(worker), 60, "the worker outlived its main process")
    finally:
        main_process.kill()
        with contextlib.suppress(OSError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_worker_ends_its_own_process_past_its_hard_limit(tmp_path: Path) -> None:
    """The hard timeout holds without the main process: the worker side ends a cell that outlives it."""
    plugin = tmp_path / "sleeper.py"
    plugin.write_text(SLEEPER_PLUGIN)
    script = f"""
import sys
from cnfbench.config import RunConfig, resolve_cells
from cnfbench.executor import HarnessContext, job_for
from cnfbench.registry import load_registry
from cnfbench.worker import run_cell_payload

registry = load_registry([{str(plugin)!r}])
config = RunConfig(field=["sleeper"], solver=["euler[steps=2]"], iterations=2, batch_size=16, mass_grid=0)
cell = resolve_cells(config, registry)[0]
payload = HarnessContext(registry, [{str(plugin)!r}], timeout=1.0).payload(job_for(cell))
payload["hard_timeout_s"] = 2.0
run_cell_payload(payload)
print("the cell returned", flush=True)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SLEEPER_PID": str(tmp_path / "pid")})
    assert done.returncode == 124, done.stderr[-1500:]
    assert "ran past its hard limit of 2 s" in done.stderr
    assert "the cell returned" not in done.stdout


# ------------------------------------------------------------------------------------------------ full disk


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[callable]:
    """Mount real tmpfs file systems of a given size (root on Linux only); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root on Linux")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_run_refuses_to_start_on_a_full_disk(tmp_path: Path, tmpfs) -> None:
    disk = tmpfs("1m")
    result = subprocess.run(_command(disk, "full"), capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "CNFBENCH_MIN_FREE_MIB"})
    assert result.returncode == 2, result.stderr[-800:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MiB free" in lines[0] and "CNFBENCH_MIN_FREE_MIB" in lines[0]
    assert list(disk.iterdir()) == []


def test_a_disk_that_fills_during_a_run_keeps_every_row_and_a_rerun_finishes(tmp_path: Path, tmpfs) -> None:
    disk = tmpfs("6m")
    plugin = tmp_path / "filler.py"
    plugin.write_text(FILLER_PLUGIN)
    filler = disk / "filler"
    command = _command(disk, "filling", "--seeds", "3", "--plugin", str(plugin))
    env = {**os.environ, "CNFBENCH_MIN_FREE_MIB": "1", "FILLER_PATH": str(filler)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 2, result.stderr[-1500:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no space left on device" in errors[0] and "Traceback" not in result.stderr
    run_dir = disk / "filling"
    kept = pd.read_parquet(run_dir / "cells.parquet")
    assert (kept["status"] == "done").sum() >= 1  # the cell finished before the disk filled, intact
    for row in kept[kept["status"] == "done"].itertuples():
        assert (run_dir / row.model_file).is_file()
    assert not list(run_dir.rglob(".*.tmp"))  # nothing half-written left in place

    filler.unlink()
    filler.mkdir()  # the plugin fills only once
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-1500:]
    cells = pd.read_parquet(run_dir / "cells.parquet")
    assert len(cells) == 3 and (cells["status"] == "done").all()


def _failing_writes(monkeypatch, when, error: OSError) -> None:
    """Make ``atomic_write`` hit ``error`` while writing a path for which ``when(path)`` holds."""
    import cnfbench.run_folder as run_folder

    original = run_folder.atomic_write

    def atomic_write(path: Path, write) -> None:
        def failing(tmp: Path) -> None:
            raise error

        original(path, failing if when(path) else write)

    monkeypatch.setattr(run_folder, "atomic_write", atomic_write)


def _inline_run(tmp_path: Path, name: str, *extra: str):
    return CliRunner().invoke(main, ["run", *TINY, "--solver", "euler[steps=2]", "--executor", "inline",
                                     "--out", str(tmp_path / "results"), "--name", name, *extra])


def test_a_model_that_cannot_be_written_ends_its_cell_error_and_a_rerun_retries_it(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    no_space = OSError(errno.ENOSPC, "No space left on device")
    with monkeypatch.context() as patch:
        _failing_writes(patch, lambda path: path.parent.name == "models", no_space)
        result = _inline_run(tmp_path, "nospace", "--seeds", "2")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no space left on device writing" in errors[0] and "models" in errors[0]
    cells = read_cells(tmp_path, "nospace")
    assert len(cells) == 1  # the run stopped at the first failed write; the second cell never ran
    row = cells.iloc[0]
    assert row["status"] == "error"
    assert not (isinstance(row["model_file"], str) and row["model_file"])
    assert "the trained field was not kept: no space left on device" in row["reason"]
    assert "models" in row["reason"]

    denied = PermissionError(errno.EACCES, "Permission denied")
    with monkeypatch.context() as patch:
        _failing_writes(patch, lambda path: path.parent.name == "models", denied)
        result = _inline_run(tmp_path, "denied", "--seeds", "2")
    assert result.exit_code == 0  # not a full disk: the cell ends error, the sweep goes on
    cells = read_cells(tmp_path, "denied")
    assert list(cells["status"]) == ["error", "error"]
    assert cells["reason"].str.contains("not kept: Permission denied").all()

    again = _inline_run(tmp_path, "nospace", "--seeds", "2")
    assert again.exit_code == 0, again.output
    cells = read_cells(tmp_path, "nospace")
    assert list(cells["status"]) == ["done", "done"]


def test_a_disk_full_before_the_first_write_leaves_no_folder(tmp_path: Path, monkeypatch) -> None:
    _failing_writes(monkeypatch, lambda path: True, OSError(errno.ENOSPC, "No space left on device"))
    result = _inline_run(tmp_path, "never")
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "run.json" in errors[0]
    assert not (tmp_path / "results" / "never").exists()


# --------------------------------------------------------------------------------------------- damaged files


def _damaged_run(tmp_path: Path) -> Path:
    result = _inline_run(tmp_path, "damaged", "--seeds", "2")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "results" / "damaged"
    (run_dir / "cells.parquet").write_bytes(b"PAR1 torn")
    return run_dir


def _repaired(run_dir: Path, stderr: str = "") -> None:
    assert len(list(run_dir.glob("cells.parquet.damaged-*"))) == 1
    rows = pd.read_parquet(run_dir / "cells.parquet")
    assert sorted(rows["cell_id"]) == sorted(pd.read_csv(run_dir / "cells.csv")["cell_id"])
    if stderr:
        assert "a new cells.parquet was written from it" in stderr


@pytest.mark.parametrize("command", ["run", "report", "compare", "merge", "sample", "load_results", "evaluate"])
def test_a_damaged_cells_parquet_is_rewritten_from_the_csv_by_every_command(tmp_path: Path, command: str) -> None:
    run_dir = _damaged_run(tmp_path)
    if command == "load_results":
        with pytest.warns(RuntimeWarning, match="set aside"):
            frame = load_results(run_dir)
        assert len(frame) == 2
        _repaired(run_dir)
        return
    cell_id = pd.read_csv(run_dir / "cells.csv")["cell_id"].iloc[0]
    argv = {"run": ["run", *TINY, "--solver", "euler[steps=2]", "--executor", "inline", "--seeds", "2",
                    "--out", str(tmp_path / "results"), "--name", "damaged"],
            "report": ["report", str(run_dir)],
            "compare": ["compare", str(run_dir), str(run_dir)],
            "merge": ["merge", str(tmp_path / "merged"), str(run_dir)],
            "sample": ["sample", str(run_dir), "--cell", cell_id, "-n", "5", "--out", str(tmp_path / "s.npy")],
            "evaluate": ["evaluate", str(run_dir), "--executor", "inline", "--quiet"]}[command]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert "cells.parquet is unreadable" in result.stderr
    _repaired(run_dir, result.stderr)
    if command == "run":
        assert "skipping 2 cells already done" in result.stderr


def test_a_reader_leaves_a_damaged_file_alone_while_a_writer_holds_the_folder(tmp_path: Path) -> None:
    run_dir = _damaged_run(tmp_path)
    with _held_elsewhere(run_dir) as other:
        run = load_run(run_dir)
    assert len(run.cells) == 2
    assert any(f"left as it is while pid {other.pid}" in warning for warning in run.warnings)
    assert not list(run_dir.glob("cells.parquet.damaged-*"))


def test_a_damaged_run_json_is_set_aside_by_writers_and_reported_by_readers(tmp_path: Path) -> None:
    result = _inline_run(tmp_path, "prov")
    assert result.exit_code == 0
    run_dir = tmp_path / "results" / "prov"
    (run_dir / "run.json").write_text("{ torn")
    report = CliRunner().invoke(main, ["report", str(run_dir)])
    assert report.exit_code == 0 and "run.json is unreadable" in report.stderr
    assert not list(run_dir.glob("run.json.damaged-*"))  # a reader renames nothing
    evaluate = CliRunner().invoke(main, ["evaluate", str(run_dir), "--executor", "inline", "--quiet"])
    assert evaluate.exit_code == 0, evaluate.output
    assert "set aside as run.json.damaged-" in evaluate.stderr
    (aside,) = run_dir.glob("run.json.damaged-*")
    assert aside.read_text() == "{ torn"
    assert json.loads((run_dir / "run.json").read_text())["evaluations"]
