"""How many torch threads a worker uses: what this process may really run on, shared fairly, never more.

torch counts the machine's cores; a job often may use fewer — its CPU affinity (``taskset``, a SLURM
binding), its cgroup's CPU quota (a container's ``--cpus``, SLURM's cgroup: ``cpu.max``, or
``cpu.cfs_quota_us`` on cgroup v1) or SLURM's ``SLURM_CPUS_PER_TASK`` — and other jobs may already keep
those CPUs busy. Threads that wait for one another at every parallel region on an oversubscribed machine
make a cell many times slower than one thread would (see ``benchmarks/bench_threads.py``), so the default
policy (:func:`decide_threads`) gives each worker its share of the usable CPUs (:func:`usable_cpus`) and
fewer when the one-minute load average says other processes hold some of them. An explicit thread count
(``process[threads=T]``) is used as given.

The load average counts this run's own workers too; :class:`OwnLoad` estimates their part (the kernel's
one-minute average is an exponential average with a 60 s time constant, fed by the threads that run), so
that two runs started side by side each see the other's load, and a run never backs off from itself.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cnfbench.messages import plural

LOAD_TIME_CONSTANT_S = 60.0
"""Time constant of the kernel's one-minute load average (Linux samples it every 5 s with weight
exp(-5/60))."""

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class UsableCPUs:
    """The CPUs this process may run on: ``count``, what limited it (``source``), and the machine's ``host``
    count (``os.cpu_count()``)."""

    count: int
    source: str
    host: int


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """``/proc/self/cgroup`` as ``{controllers: path}`` (``""`` is the unified cgroup v2 hierarchy)."""
    text = _read(proc_cgroup) or ""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2]
    return paths


def _ancestors(root: Path, relative: str) -> list[Path]:
    """The folders of ``root/relative`` and each of its parents up to ``root`` (a parent's limit binds too);
    ``root`` alone when the path is not visible (inside a container the process's cgroup is the root)."""
    inner = Path(root, relative.lstrip("/"))
    if not inner.is_dir():
        return [root]
    found = [inner]
    while inner != root and root in inner.parents:
        inner = inner.parent
        found.append(inner)
    return found


def _quota_v2(root: Path, relative: str) -> float | None:
    limits = []
    for folder in _ancestors(root, relative):
        text = _read(folder / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota != "max" and period:
                try:
                    limits.append(int(quota) / int(period))
                except (ValueError, ZeroDivisionError):
                    continue
    return min(limits) if limits else None


def _quota_v1(root: Path, paths: dict[str, str]) -> float | None:
    for controllers, relative in paths.items():
        if "cpu" not in controllers.split(","):
            continue
        mount = next((root / name for name in (controllers, "cpu,cpuacct", "cpu") if (root / name).is_dir()), None)
        if mount is None:
            continue
        limits = []
        for folder in _ancestors(mount, relative):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            try:
                if quota is not None and period is not None and int(quota) > 0:
                    limits.append(int(quota) / int(period))
            except (ValueError, ZeroDivisionError):
                continue
        if limits:
            return min(limits)
    return None


def usable_cpus(environ: Mapping[str, str] | None = None, cgroup_root: Path = CGROUP_ROOT,
                proc_cgroup: Path = PROC_SELF_CGROUP) -> UsableCPUs:
    """The CPUs this process may really use: the fewest of its affinity, its cgroup CPU quota (rounded down: a
    thread throttled by the quota holds up every other at the next barrier) and ``SLURM_CPUS_PER_TASK``;
    at least 1."""
    environ = os.environ if environ is None else environ
    host = os.cpu_count() or 1
    limits: list[tuple[float, str]] = [(host, "os.cpu_count")]
    if hasattr(os, "sched_getaffinity"):
        try:
            limits.append((len(os.sched_getaffinity(0)), "CPU affinity"))
        except OSError:
            pass
    paths = _cgroup_paths(proc_cgroup)
    quota = _quota_v2(cgroup_root, paths[""]) if "" in paths else None
    if quota is not None:
        limits.append((quota, "cgroup cpu.max"))
    else:
        quota = _quota_v1(cgroup_root, paths)
        if quota is not None:
            limits.append((quota, "cgroup cpu.cfs_quota_us"))
    slurm = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        limits.append((int(slurm), "SLURM_CPUS_PER_TASK"))
    count, source = min(reversed(limits), key=lambda item: item[0])  # a tie names the most specific limit
    return UsableCPUs(max(1, math.floor(count + 1e-9)), source, host)


def load_average() -> float | None:
    """The one-minute load average of the machine (runnable threads, averaged); None where there is none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def thread_cap(environ: Mapping[str, str] | None = None) -> int:
    """The user's own ``OMP_NUM_THREADS`` (a whole number ≥ 1), which the default policy never exceeds; 0: none."""
    text = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else 0


class OwnLoad:
    """This process's estimated part of the one-minute load average: ``threads`` while a cell runs, decaying
    while it idles, as the kernel's exponential average would count it."""

    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock
        self._value = 0.0
        self._running = 0
        self._since = float(clock())  # type: ignore[operator]

    def _advance(self) -> float:
        now = float(self._clock())  # type: ignore[operator]
        decay = math.exp(-max(0.0, now - self._since) / LOAD_TIME_CONSTANT_S)
        self._value = self._running + (self._value - self._running) * decay
        self._since = now
        return self._value

    def estimate(self) -> float:
        """The estimate now."""
        return self._advance()

    def running(self, threads: int) -> None:
        """From now on this process keeps ``threads`` threads busy (0: it idles)."""
        self._advance()
        self._running = threads


@dataclass(frozen=True)
class ThreadDecision:
    """The torch threads of one cell and why: ``reason`` (one line, for the row) and, when the machine's load
    made the worker take fewer than its share, ``note`` (one line for the user)."""

    threads: int
    reason: str
    note: str = ""


def decide_threads(requested: int, workers: int, cpus: UsableCPUs, load: float | None, own: float,
                   default: int, cap: int = 0) -> ThreadDecision:
    """The torch threads for a worker's next cell.

    ``requested`` > 0 is used as given. Otherwise each worker's share is the usable CPUs divided among the
    ``workers`` that run cells at once on this machine (0: unknown, e.g. a remote engine: torch's ``default``
    there, never more than the usable CPUs), never more than ``cap`` (the user's ``OMP_NUM_THREADS``); and when
    the one-minute ``load`` less this run's ``own`` part (its workers' :class:`OwnLoad` estimate, per worker)
    leaves fewer CPUs free than the workers' shares, each worker takes the free CPUs' share (rounded, at least
    one thread).
    """
    if requested > 0:
        over = f"; more than the {plural(cpus.count, 'usable CPU')} ({cpus.source})" if requested > cpus.count else ""
        return ThreadDecision(requested, f"explicit: {plural(requested, 'thread')} per worker{over}")
    sharing = max(workers, 1)
    if workers > 0:
        share = max(1, cpus.count // sharing)
        basis = f"{plural(cpus.count, 'usable CPU')} ({cpus.source}) / {plural(sharing, 'worker')}"
    else:
        share = max(1, min(default, cpus.count))
        basis = f"the engine's default of {default}, at most {plural(cpus.count, 'usable CPU')} ({cpus.source})"
    if cap:
        share, basis = min(share, cap), f"{basis}, at most OMP_NUM_THREADS={cap}"
    if load is None:
        return ThreadDecision(share, f"auto: {share} from {basis}")
    others = max(0.0, load - own * sharing)
    if cpus.count < cpus.host:  # the load average counts the whole machine; this process sees its part of it
        others *= cpus.count / cpus.host
    free = max(0.0, cpus.count - others)
    fitting = max(1, min(share, math.floor(free / sharing + 0.5)))
    measured = f"1-min load {load:.1f} runnable threads, about {others:.1f} of them from other processes"
    if fitting >= share:
        return ThreadDecision(share, f"auto: {share} from {basis}; {measured}")
    return ThreadDecision(fitting, f"auto: {fitting} instead of {share} from {basis}: busy machine, {measured}",
                          f"the machine is busy ({measured}, on {plural(cpus.count, 'usable CPU')}): "
                          f"{plural(fitting, 'torch thread')} per worker instead of {share}; process[threads=N] "
                          "chooses")
