"""The torch-thread policy: the CPUs a process may use (affinity, cgroup v1/v2 quota, SLURM), its share per
worker, fewer on a busy machine, its own load not counted against it; and what a real worker records."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnfbench.threads import OwnLoad, UsableCPUs, decide_threads, thread_cap, usable_cpus


def _cgroup_v2(tmp_path: Path, limits: dict[str, str]) -> tuple[Path, Path]:
    """A fake cgroup v2 tree: ``limits`` maps a folder (relative to the root) to its ``cpu.max``."""
    root = tmp_path / "cgroup"
    for folder, text in limits.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(text + "\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/job.slice/cell\n")
    (root / "job.slice" / "cell").mkdir(parents=True, exist_ok=True)
    return root, proc


def test_a_cgroup_v2_quota_limits_the_cpus_and_a_parent_limit_binds_too(tmp_path: Path) -> None:
    root, proc = _cgroup_v2(tmp_path, {"job.slice": "150000 100000", "job.slice/cell": "max 100000"})
    cpus = usable_cpus({}, root, proc)
    assert (cpus.count, cpus.source) == (1, "cgroup cpu.max")  # 1.5 CPUs: one thread, never a throttled second
    root, proc = _cgroup_v2(tmp_path / "b", {"job.slice/cell": "max 100000"})
    assert usable_cpus({}, root, proc).source != "cgroup cpu.max"


def test_a_cgroup_v1_quota_and_slurm_limit_the_cpus(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    folder = root / "cpu,cpuacct" / "slurm" / "job"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("100000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:cpu,cpuacct:/slurm/job\n3:memory:/slurm/job\n")
    cpus = usable_cpus({}, root, proc)
    assert (cpus.count, cpus.source) == (1, "cgroup cpu.cfs_quota_us")
    (folder / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    empty = tmp_path / "none"
    empty.write_text("")
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "1"}, root, empty) == UsableCPUs(1, "SLURM_CPUS_PER_TASK",
                                                                                  usable_cpus({}, root, empty).host)


def test_the_affinity_bounds_the_usable_cpus() -> None:
    import os

    cpus = usable_cpus({}, Path("/nonexistent"), Path("/nonexistent"))
    if hasattr(os, "sched_getaffinity"):
        assert cpus.count <= len(os.sched_getaffinity(0))
    assert 1 <= cpus.count <= cpus.host


TWO = UsableCPUs(2, "CPU affinity", 2)


def test_an_explicit_thread_count_is_used_as_given() -> None:
    decision = decide_threads(3, 1, TWO, 9.0, 0.0, 2)
    assert decision.threads == 3 and "explicit" in decision.reason and "more than the 2 usable" in decision.reason
    assert decision.note == ""


def test_an_idle_machine_gives_each_worker_its_share() -> None:
    assert decide_threads(0, 1, TWO, 0.3, 0.0, 2).threads == 2
    assert decide_threads(0, 2, TWO, 0.3, 0.0, 2).threads == 1
    assert decide_threads(0, 1, TWO, None, 0.0, 2).threads == 2  # no load average on this system
    assert decide_threads(0, 1, TWO, 0.3, 0.0, 2, cap=1).threads == 1  # the user's OMP_NUM_THREADS


def test_a_busy_machine_gives_one_thread_and_says_so() -> None:
    beside_a_run = decide_threads(0, 1, TWO, 2.1, 0.0, 2)  # another 2-thread job keeps both CPUs busy
    assert beside_a_run.threads == 1
    assert "busy" in beside_a_run.note and "2 usable CPUs" in beside_a_run.note
    assert "1-min load 2.1" in beside_a_run.reason


def test_a_run_does_not_back_off_from_its_own_load() -> None:
    # Its worker kept 2 threads busy long enough to show as 2.0 in the load: nothing else runs.
    assert decide_threads(0, 1, TWO, 2.0, 2.0, 2).threads == 2
    # ... and with another 2-thread job beside it, the load is 4: it takes one.
    assert decide_threads(0, 1, TWO, 4.0, 2.0, 2).threads == 1


def test_a_remote_worker_keeps_its_engine_default_at_most_its_cpus() -> None:
    assert decide_threads(0, 0, TWO, 0.0, 0.0, 1).threads == 1
    assert decide_threads(0, 0, TWO, 0.0, 0.0, 8).threads == 2


@given(requested=st.integers(0, 64), workers=st.integers(0, 16), count=st.integers(1, 64),
       load=st.one_of(st.none(), st.floats(0, 500)), own=st.floats(0, 64), default=st.integers(1, 64),
       cap=st.integers(0, 64))
def test_the_policy_never_exceeds_the_usable_cpus(requested: int, workers: int, count: int, load: float | None,
                                                  own: float, default: int, cap: int) -> None:
    cpus = UsableCPUs(count, "CPU affinity", max(count, 64))
    decision = decide_threads(requested, workers, cpus, load, own, default, cap)
    assert decision.threads >= 1
    if requested:
        assert decision.threads == requested
    else:
        assert decision.threads <= max(1, count // max(workers, 1))
        assert not cap or decision.threads <= cap
        assert decision.reason.startswith("auto")
        assert bool(decision.note) == ("instead of" in decision.reason)


def test_own_load_follows_the_kernel_average() -> None:
    clock = [0.0]
    own = OwnLoad(lambda: clock[0])
    own.running(2)
    clock[0] = 60.0
    assert own.estimate() == pytest.approx(2 * (1 - math.exp(-1)))
    own.running(0)
    clock[0] = 600.0
    assert own.estimate() < 0.001


def test_thread_cap_reads_omp_num_threads() -> None:
    assert thread_cap({"OMP_NUM_THREADS": "3"}) == 3
    assert thread_cap({"OMP_NUM_THREADS": "zero"}) == 0
    assert thread_cap({}) == 0


def test_a_worker_applies_the_policy_and_the_row_says_how(tmp_path: Path) -> None:
    import torch

    from cnfbench.worker import apply_thread_policy

    before = torch.get_num_threads()
    try:
        decision = apply_thread_policy(1, 1)
        assert torch.get_num_threads() == 1 and decision.reason.startswith("explicit")
        decision = apply_thread_policy(1, 0, cap=1)
        assert torch.get_num_threads() == 1 and decision.reason.startswith("auto")
    finally:
        torch.set_num_threads(before)
