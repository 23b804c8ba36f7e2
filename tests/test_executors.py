"""Executors: the same numbers in this process and on parallel workers; timeouts, dead workers and shared
models with several cells in flight; where each row ran."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import read_cells
from test_faults import FAULTS_PLUGIN, NO_FIELD

GRID = ["--solver", "euler[steps=2],rk4[steps=2],midpoint[steps=3]"]
NUMBERS = ["nll", "nll_ref", "mass", "mass_is", "nfe_forward_mean", "nfe_eval", "energy_distance", "final_train_loss"]


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
    assert "skipping 1 cell(s) already done, running 0" in again.output  # resume: nothing recomputed


def test_a_shared_model_is_trained_once_with_cells_in_flight(cli, tmp_path: Path) -> None:
    result = cli("run", "--objective", "cfm", "--solver", "euler[steps=2],rk4[steps=2],midpoint[steps=2]",
                 "--seeds", "2", "--executor", "process[workers=2]", "--name", "fmpar")
    assert result.exit_code == 0
    cells = read_cells(tmp_path, "fmpar")
    assert len(cells) == 6 and set(cells["status"]) == {"done"}
    assert len(list((tmp_path / "results" / "fmpar" / "models").glob("*.safetensors"))) == 2
    assert cells.groupby("seed")["trained_in"].nunique().eq(1).all()


@pytest.mark.parametrize(("executor", "says"), [
    ("nosuch", "unknown executor 'nosuch'; known executors: process, inline, dask, submitit"),
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
    assert "train_time_s left out as not comparable" in plain.output and "BASE ran 1 cells at a time" in plain.output
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
    from cnfbench.executor import ProcessPool

    plugin = tmp_path / "faults.py"
    plugin.write_text(FAULTS_PLUGIN)
    _, first = _one_cell("sleeper[after=2]", 50, [str(plugin)])
    _, second = _one_cell("sleeper[after=4]", 50, [str(plugin)])
    pool = ProcessPool(2, 1, [str(plugin)])
    try:
        threads = [threading.Thread(target=pool.run_cell, args=(cell, lambda kind, value: None), daemon=True)
                   for cell in (first, second)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # both workers hang in their sleeper's forward pass
            phases = [unpack_phase(executor._where.value) if executor._where is not None else ("start", 0)
                      for executor in pool._all]
            if sorted(phase for phase, _ in phases) == ["train_forward", "train_forward"]:
                break
            time.sleep(0.05)
        outcomes = pool.interrupt()
    finally:
        pool.close()
    assert sorted(outcome.row["cell_id"] for outcome in outcomes) == sorted([first.cell_id, second.cell_id])
    for outcome in outcomes:
        assert outcome.row["status"] == "interrupted"
        assert "in the training forward pass at iteration" in outcome.row["reason"]
