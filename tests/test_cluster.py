"""Cluster executors on real engines: a Dask local cluster and submitit's local backend run healthy cells with
the numbers of the inline executor, end a hanging cell at its timeout and a dying one with an ``error`` row;
a worker whose plugins differ from the main process's refuses its cell; SLURM's parameters map to sbatch's.

Only SLURM is faked (an ``sbatch`` and an ``srun`` on PATH that are never called). No test asserts how long
anything took.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cnfbench_plugins.cluster_executors import DaskExecutor, SubmititExecutor, _submitit_job
from test_faults import FAULTS_PLUGIN

from cnfbench.cells import Cell
from cnfbench.config import RunConfig, resolve_cells
from cnfbench.contracts import INTERRUPTED, CellInterrupted, CellOutcome, Executor, SharedModel
from cnfbench.dynamics import unpack_phase
from cnfbench.executor import job_for, make_executor
from cnfbench.registry import Registry, load_registry
from cnfbench.rows import TRAINING_COLUMNS
from cnfbench.worker import plugin_shipment, run_cell_payload

HANG_TIMEOUT = 15.0
"""Generous: a tiny cell reaches its hanging field within a second or two of its worker beginning it."""


def _cells(registry: Registry, plugin: Path, fields: tuple[str, ...]) -> list[Cell]:
    config = RunConfig(dataset=("8gaussians[n_train=256,n_val=32,n_test=96]",), field=fields,
                       solver=("euler[steps=2]",), iterations=3, batch_size=64, mass_grid=12,
                       metrics=("default", "plots"),
                       ref_solver="dopri5[rtol=1e-6,atol=1e-6]", device="cpu", plugin=(str(plugin),))
    return resolve_cells(config, registry)


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Registry, dict[str, Cell]]]:
    """The faults plugin (written to a folder of its own, shipped to workers by content), its registry and one
    cell per field: ``healthy``, ``sleeper`` (hangs at iteration 2), ``suicide`` (SIGKILLs its process)."""
    plugin = tmp_path_factory.mktemp("plugins") / "faults.py"
    plugin.write_text(FAULTS_PLUGIN)
    registry = load_registry([str(plugin)])
    cells = {cell.field.name: cell for cell in
             _cells(registry, plugin, ("concatsquash[hidden=8]", "sleeper[after=2]", "suicide[after=0]"))}
    yield plugin, registry, {**cells, "healthy": cells["concatsquash"]}


def _executor(registry: Registry, spec: str, plugin: Path, timeout: float | None = None) -> Executor:
    """The executor ``spec`` as ``cnfbench run --executor spec --plugin plugin --timeout timeout`` builds it."""
    return make_executor(registry, spec, [str(plugin)], timeout)[0]


@pytest.fixture(scope="module")
def inline_outcome(faults: tuple[Path, Registry, dict[str, Cell]]) -> CellOutcome:
    plugin, registry, cells = faults
    return _executor(registry, "inline", plugin).run_cell(job_for(cells["healthy"]), lambda kind, value: None)


def _sweep(executor: Executor, cells: list[Cell],
           heard: dict[str, list[tuple[str, Any]]] | None = None) -> list[CellOutcome]:
    """Run ``cells`` as the parallel sweep does: ``slots`` threads, each handing the executor one cell at a time;
    ``heard`` collects each cell's progress messages by cell id."""
    heard = {} if heard is None else heard

    def run(cell: Cell) -> CellOutcome:
        return executor.run_cell(job_for(cell),
                                 lambda kind, value: heard.setdefault(cell.cell_id, []).append((kind, value)))

    with ThreadPoolExecutor(executor.slots) as pool:
        return list(pool.map(run, cells))


def _assert_fault_rows(outcomes: dict[str, CellOutcome], inline: CellOutcome, died: str) -> None:
    healthy = outcomes["concatsquash"].row
    assert healthy["status"] == "done", healthy["reason"]
    assert healthy["nll"] == inline.row["nll"] and healthy["nll_ref"] == inline.row["nll_ref"]
    assert healthy["torch_threads"] == 1
    assert outcomes["concatsquash"].model and outcomes["concatsquash"].density
    hung = outcomes["sleeper"].row
    assert hung["status"] == "timeout", hung["reason"]
    assert hung["reason"].startswith("timeout after ") and f"(--timeout {HANG_TIMEOUT:g} s)" in hung["reason"]
    assert "in the training forward pass at iteration 2" in hung["reason"]  # where the worker last reported
    assert "field 'sleeper' (plugin '" in hung["reason"] and "\n" not in hung["reason"]
    dead = outcomes["suicide"].row
    assert dead["status"] == "error", dead["reason"]
    assert dead["reason"].startswith(f"the worker process died: {died}") and "\n" not in dead["reason"]


def _interrupt_a_hanging_cell(executor: Executor, cell: Cell) -> list[CellOutcome]:
    """Start ``cell`` (which hangs at iteration 2) in a thread, wait until its worker reports the hang, interrupt."""
    returned: list[CellOutcome] = []
    thread = threading.Thread(
        target=lambda: returned.append(executor.run_cell(job_for(cell), lambda kind, value: None)))
    thread.start()
    for _ in range(1200):
        flights = executor.in_flight()
        if flights and unpack_phase(flights[0].where) == ("train_forward", 2):
            break
        time.sleep(0.1)
    stopped = executor.cancel()
    thread.join(60)
    assert not thread.is_alive() and returned and returned[0].row["status"] == "interrupted"
    return stopped


def test_dask_local_cluster_runs_hangs_and_loses_workers(faults, inline_outcome) -> None:
    plugin, registry, cells = faults
    executor = _executor(registry, "dask[workers=2]", plugin, HANG_TIMEOUT)
    try:
        assert executor.slots == 2 and executor.workers == 2 and executor.threads == 0  # threads: the workers decide
        heard: dict[str, list[tuple[str, Any]]] = {}
        outcomes = _sweep(executor, [cells["sleeper"], cells["concatsquash"], cells["suicide"]], heard)
        _assert_fault_rows({"sleeper": outcomes[0], "concatsquash": outcomes[1], "suicide": outcomes[2]},
                           inline_outcome, "dask lost worker tcp://")
        hung = heard[cells["sleeper"].cell_id]  # reported during the hang: training began, iteration 1 finished
        assert ("phase", "train") in hung and any(kind == "iteration" and value[0] == 1 for kind, value in hung)

        # The restarted workers take the next cells; one of them loads the model another cell trained.
        trained = outcomes[1]
        shared = SharedModel(cells["healthy"].cell_id, trained.model,
                             {key: trained.row[key] for key in TRAINING_COLUMNS})
        again = executor.run_cell(job_for(cells["healthy"]), lambda kind, value: None)
        loaded = executor.run_cell(job_for(cells["healthy"], shared), lambda kind, value: None)
        assert again.row["status"] == "done" and again.row["nll"] == inline_outcome.row["nll"]
        assert loaded.row["status"] == "done" and loaded.row["trained_in"] == cells["healthy"].cell_id
        assert loaded.row["nll"] == inline_outcome.row["nll"] and loaded.model is None

        stopped = _interrupt_a_hanging_cell(executor, cells["sleeper"])
        assert [outcome.row["status"] for outcome in stopped] == ["interrupted"]
        assert stopped[0].row["reason"].startswith(f"{INTERRUPTED} in the training forward pass at iteration 2")

        def ctrl_c(kind: str, value: Any) -> None:  # Ctrl-C while a one-slot sweep waits for its cell
            if kind == "iteration":
                raise KeyboardInterrupt

        with pytest.raises(CellInterrupted) as interrupted:
            executor.run_cell(job_for(cells["sleeper"]), ctrl_c)
        assert interrupted.value.outcome.row["status"] == "interrupted"
        assert interrupted.value.outcome.row["reason"].startswith(f"{INTERRUPTED} in the training")
    finally:
        executor.close()


def test_dask_executor_on_a_scheduler_address(faults, inline_outcome) -> None:
    distributed = pytest.importorskip("distributed")
    plugin, registry, cells = faults
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        executor = _executor(registry, f"dask[address={cluster.scheduler_address}]", plugin)
        try:
            assert isinstance(executor, DaskExecutor) and executor.slots == 1
            outcome = executor.run_cell(job_for(cells["healthy"]), lambda kind, value: None)
            assert outcome.row["status"] == "done" and outcome.row["nll"] == inline_outcome.row["nll"]
        finally:
            executor.close()


def test_an_unreachable_scheduler_is_one_line(faults) -> None:
    plugin, registry, _ = faults
    with pytest.raises(ValueError, match=r"^cannot reach the dask scheduler at tcp://127\.0\.0\.1:9 within 1 s") as e:
        _executor(registry, "dask[address=tcp://127.0.0.1:9,connect_timeout=1]", plugin)
    assert "\n" not in str(e.value)


def test_submitit_local_runs_hangs_and_loses_jobs(faults, inline_outcome, tmp_path: Path) -> None:
    plugin, registry, cells = faults
    executor = _executor(registry, f"submitit[cluster=local,array_parallelism=2,folder={tmp_path / 'jobs'}]", plugin,
                         HANG_TIMEOUT)
    assert isinstance(executor, SubmititExecutor)
    try:
        assert executor.slots == 2 and executor.timeout_min == 3  # --timeout rounded up to minutes, plus 2
        assert executor.parameters["timeout_min"] == 3
        outcomes = _sweep(executor, [cells["sleeper"], cells["concatsquash"], cells["suicide"]])
        _assert_fault_rows({"sleeper": outcomes[0], "concatsquash": outcomes[1], "suicide": outcomes[2]},
                           inline_outcome, "the submitit job ")
        stopped = _interrupt_a_hanging_cell(executor, cells["sleeper"])
        assert [outcome.row["status"] for outcome in stopped] == ["interrupted"]
        assert stopped[0].row["reason"].startswith(f"{INTERRUPTED} in the training forward pass at iteration 2")
    finally:
        executor.close()


def _payload(registry: Registry, plugin: Path, cell: Cell) -> dict:
    return {"cell": cell.to_json(), **plugin_shipment([str(plugin)], registry).payload(), "shared": None}


def test_a_worker_with_other_plugin_versions_refuses_the_cell(faults) -> None:
    plugin, registry, cells = faults
    payload = _payload(registry, plugin, cells["healthy"])
    builtin = next(name for name in payload["versions"] if name.startswith("cnfbench:"))
    older = {**payload, "versions": {**payload["versions"], builtin: "0.0.1"}}
    row = run_cell_payload(older)["row"]
    assert row["status"] == "error" and "\n" not in row["reason"]
    assert f"refused the cell: plugin '{builtin}' is version " in row["reason"]
    assert "here but 0.0.1 in the main process" in row["reason"]

    extra = {**payload, "versions": {**payload["versions"], "thirdparty:fields": "1.2"}}
    assert "plugin 'thirdparty:fields' is missing here" in run_cell_payload(extra)["row"]["reason"]
    fewer = {**payload, "versions": {name: v for name, v in payload["versions"].items() if name != str(plugin)}}
    assert f"plugin '{plugin}' is loaded here but not in the main process" in run_cell_payload(fewer)["row"]["reason"]


def test_plugins_ship_by_content_and_keep_their_names(faults, tmp_path: Path) -> None:
    plugin, registry, cells = faults
    payload = _payload(registry, plugin, cells["healthy"])
    assert payload["plugins"] == [str(plugin)] and payload["plugin_sources"] == {str(plugin): FAULTS_PLUGIN}
    payload["plugins"] = [str(tmp_path / "elsewhere" / "faults.py")]  # a path this machine does not have
    payload["plugin_sources"] = {payload["plugins"][0]: FAULTS_PLUGIN}
    payload["versions"] = {name: version for name, version in payload["versions"].items() if name != str(plugin)}
    payload["versions"][payload["plugins"][0]] = ""
    (raiser,) = _cells(registry, plugin, ("raiser[after=0]",))
    row = run_cell_payload({**payload, "cell": raiser.to_json()})["row"]
    assert row["status"] == "error" and "raiser field gave up" in row["reason"]
    assert f"field 'raiser' (plugin '{payload['plugins'][0]}')" in row["reason"]


def test_a_job_at_its_time_limit_ends_with_a_timeout_row(faults, tmp_path: Path) -> None:
    """The signal submitit's job gets before its time limit ends the cell like Ctrl-C, as a ``timeout`` row that
    says where it was and keeps what was measured (here in this process: the job function is the same)."""
    plugin, registry, cells = faults
    progress = tmp_path / "progress.json"

    def signal_the_hang() -> None:
        for _ in range(1200):
            with contextlib.suppress(OSError, ValueError, KeyError):
                if unpack_phase(json.loads(progress.read_text())["where"]) == ("train_forward", 2):
                    break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.getsignal(signal.SIGUSR2)
    threading.Thread(target=signal_the_hang, daemon=True).start()
    try:
        row = _submitit_job(_payload(registry, plugin, cells["sleeper"]), str(progress), 1)["row"]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert row["status"] == "timeout" and not row["valid"] and row["iterations_done"] == 1
    assert row["reason"].startswith("timeout after ")
    assert "s (the job's time limit of 1 min) in the training forward pass at iteration 2 — " in row["reason"]


def test_slurm_parameters_map_to_sbatch(faults, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin, registry, _ = faults
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in ("sbatch", "srun"):  # present, never called: nothing is submitted
        (bin_dir / command).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}")
    params = (f"cluster=slurm,partition=gpu,gpus_per_task=1,cpus_per_task=4,array_parallelism=8,mem_gb=16,"
              f"folder={tmp_path / 'jobs'}")
    executor = _executor(registry, f"submitit[{params},timeout_min=30]", plugin, 600.0)
    assert isinstance(executor, SubmititExecutor) and executor.slots == 8 and executor.threads == 4
    parameters = executor.parameters
    assert parameters["partition"] == "gpu" and parameters["gpus_per_node"] == 1
    assert parameters["cpus_per_task"] == 4 and parameters["time"] == 30 and parameters["mem"] == "16GB"
    assert parameters["array_parallelism"] == 8 and parameters["nodes"] == 1 and parameters["ntasks_per_node"] == 1
    script = executor._executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --time=30", "#SBATCH --mem=16GB"):
        assert line in script, line
    derived = _executor(registry, f"submitit[{params}]", plugin, 600.0)
    assert isinstance(derived, SubmititExecutor)
    assert derived.parameters["time"] == 12  # --timeout 600 s: 10 minutes, plus 2 for the job's start
    executor.close()
    derived.close()


def test_slurm_without_sbatch_and_engines_without_their_extra(faults, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin, registry, _ = faults
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    with pytest.raises(ValueError, match=r"^submitit\[cluster=slurm\] needs SLURM's sbatch and srun, which are not"):
        _executor(registry, "submitit[cluster=slurm]", plugin)
    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ValueError, match=r"needs the optional extra: pip install cnfbench\[dask\]"):
        _executor(registry, "dask", plugin)
    with pytest.raises(ValueError, match=r"needs the optional extra: pip install cnfbench\[slurm\]"):
        _executor(registry, "submitit", plugin)
