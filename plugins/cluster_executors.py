"""Built-in cluster executors: ``dask[...]`` (a Dask distributed cluster) and ``submitit[...]`` (SLURM job
arrays through submitit, or its local backend).

Both engines run :func:`cnfbench.worker.run_cell_payload` on the payload the harness builds, so their cells
compute exactly as with the ``process`` executor. While a cell runs, its worker reports its phase (and
training iteration) through Dask's event stream, or a small JSON file in the submitit job folder, so that a
cell killed at its timeout, or lost with its worker, still gets a reason that says where it was.

Timeouts: a Dask cell that outlives ``--timeout`` (counted from when a worker began it) is cancelled and its
worker process killed (its nanny starts a fresh one); a worker that dies makes an ``error`` row. A submitit
job gets the time limit ``timeout_min`` (on SLURM that is the only limit: the time a job waits in the queue
never counts); on the local backend the main process also cancels a job that outlives ``--timeout``.

The engines are optional extras: ``pip install cnfbench[dask]`` and ``cnfbench[slurm]``; choosing one that is
not installed is a one-line error naming the extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from cnfbench_plugins.executors import Flight, FlightExecutor

from cnfbench.contracts import INTERRUPTED, CellOutcome, Executor, ExecutorContext, optional_import
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param

DEFAULT_JOB_MINUTES = 60
"""A submitit job's time limit without ``timeout_min`` or ``--timeout``."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _dask_job(payload: dict[str, Any], topic: str, token: str) -> dict[str, Any]:
    """:func:`run_cell_payload` on a Dask worker, reporting progress as events under ``topic``."""
    from distributed import get_worker

    worker = get_worker()
    from cnfbench.worker import run_cell_payload

    return run_cell_payload(payload, lambda message: worker.log_event(
        topic, {**message, "token": token, "worker": worker.address}), scratch=worker.local_directory)


def _write_json(path: Path, message: dict[str, Any]) -> None:
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps(message, allow_nan=True), encoding="utf-8")
    os.replace(scratch, path)


def _submitit_job(payload: dict[str, Any], progress_path: str, timeout_min: float) -> dict[str, Any]:
    """:func:`run_cell_payload` in a submitit job, reporting progress into ``progress_path``; the job's
    time-limit signal ends the cell with a ``timeout`` row that keeps what was measured."""
    path = Path(progress_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from cnfbench.worker import run_cell_payload

    limit = _TimeLimit(timeout_min)
    return run_cell_payload(payload, lambda message: _write_json(path, message), limit, scratch=str(path.parent))


class _TimeLimitReached(KeyboardInterrupt):
    """The engine's time-limit signal arrived: the cell stops like at Ctrl-C, and its row becomes ``timeout``."""


class _TimeLimit:
    """Turns the signal a submitit job gets before its time limit (``USR2``) into :class:`_TimeLimitReached`.

    Signals that do not come near the limit (a preemption) go to submitit's own handler, which requeues the
    job. Without this, submitit's handler would raise inside the cell, which would end as a plain ``error``.
    """

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes
        self.reached = False
        self._started = time.time()
        self._signal = signal.SIGUSR2
        with contextlib.suppress(Exception):
            import submitit

            self._signal = submitit.JobEnvironment._usr_sig()
        self._previous = signal.getsignal(self._signal)
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            signal.signal(self._signal, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        limit = self.minutes * 60
        near = time.time() - self._started >= min(0.8 * limit, limit - 600)  # submitit's own test
        if near or not callable(self._previous):
            self.reached = True
            raise _TimeLimitReached()
        self._previous(signum, frame)


class DaskExecutor(FlightExecutor):
    """Runs cells on a Dask cluster: the scheduler at ``address``, or a local cluster of ``workers`` processes
    (one thread each) that it starts and closes. ``slots`` is the number of workers (start remote workers with
    ``--nthreads 1``: a timeout kills the whole worker process).

    A cell that outlives ``timeout`` (from when a worker began it) is cancelled and its worker process killed
    (the nanny starts a fresh one); a worker that dies makes an ``error`` row. The local cluster gives up on a
    cell at its first dead worker; a remote scheduler retries it on other workers as its ``allowed-failures``
    setting says (3 by default).
    """

    name = "dask"
    description = "a Dask distributed cluster: the scheduler at address, or a local cluster of worker processes"
    params = (
        Param("address", "str", "", "scheduler to connect to, such as tcp://host:8786 (empty: start a local "
              "cluster of `workers` processes)"),
        Param("workers", "int", 2, "worker processes of the local cluster (with an address: the scheduler's)",
              minimum=1, maximum=256),
        Param("threads", "int", 0, "torch threads per worker (0: the CPUs a worker may use, shared by the local "
              "workers, fewer on a busy machine; on a remote cluster, the worker's own default, at most that)",
              minimum=0, maximum=1024),
        Param("connect_timeout", "float", 10.0, "seconds to wait for the scheduler and its first worker",
              minimum=0.1, maximum=3600),
    )

    def __init__(self, context: ExecutorContext, address: str = "", workers: int = 2, threads: int = 0,
                 connect_timeout: float = 10.0) -> None:
        distributed = optional_import("distributed", "the dask executor", "dask")
        super().__init__(context, address=address, workers=workers, threads=threads,
                         connect_timeout=connect_timeout)
        self.address = address or None
        self._cluster = None
        if self.address:
            try:
                self._client = distributed.Client(self.address, timeout=connect_timeout, set_as_default=False)
            except Exception as exc:  # noqa: BLE001 - any failure to connect is one line for the user
                raise ValueError(f"cannot reach the dask scheduler at {self.address} within {connect_timeout:g} s: "
                                 f"{_one_line(exc)}") from None
            try:
                self._client.wait_for_workers(1, timeout=connect_timeout)
            except Exception:  # noqa: BLE001
                self._client.close()
                raise ValueError(f"the dask scheduler at {self.address} has no workers (waited "
                                 f"{connect_timeout:g} s)") from None
            self.slots = max(1, len(self._client.nthreads()))
            # How many workers share a node is the cluster's business: 0 keeps each worker's own default (dask's
            # nanny sets OMP_NUM_THREADS=1), never more than the CPUs it may use, fewer on a busy node.
            self.workers, self.threads = 0, threads
        else:
            self.workers, self.threads = workers, threads
            try:
                # allowed_failures=0: a cell whose worker dies is not retried on the next worker (it would kill it).
                # memory_limit=0: no memory monitor, as with the process executor (the OOM killer decides).
                self._cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                    memory_limit=0, silence_logs=logging.CRITICAL, scheduler_kwargs={"allowed_failures": 0})
                self._client = distributed.Client(self._cluster, set_as_default=False)
            except Exception as exc:  # noqa: BLE001 - one line for the user
                if self._cluster is not None:
                    with contextlib.suppress(Exception):
                        self._cluster.close()
                raise ValueError(f"could not start a local dask cluster of {workers} workers: "
                                 f"{_one_line(exc)}") from None
            self.slots = workers
        self._topic = f"cnfbench-progress-{uuid.uuid4().hex}"
        self._client.subscribe_topic(self._topic, self._on_event)
        self._tokens: dict[str, Flight] = {}

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        flight = self._tokens.get(message.get("token", ""))
        if flight is not None:
            flight.update(message)

    def _submit(self, token: str, flight: Flight, payload: dict[str, Any]) -> None:
        self._tokens[token] = flight
        key = f"cnfbench-{flight.job.cell_id}-{token[:8]}"
        future = self._client.submit(_dask_job, payload, self._topic, token, pure=False, key=key)
        future.add_done_callback(lambda _: flight.changed.set())
        flight.handle = future

    def _poll(self, flight: Flight) -> CellOutcome | None:
        future = flight.handle
        status = future.status
        if status == "finished":
            try:
                return self.context.outcome(flight.job, future.result(timeout=30))
            except (TimeoutError, asyncio.TimeoutError):  # the result is being fetched or recomputed: ask again
                return None
            except Exception as exc:  # noqa: BLE001 - the connection to the scheduler broke
                return self._failed(flight, "error", f"the dask result could not be fetched: "
                                                     f"{_one_line(exc)}")
        if status == "error":
            exc = future.exception()
            distributed = importlib.import_module("distributed")
            if isinstance(exc, distributed.KilledWorker):
                died = exc.allowed_failures + 1
                lost = f"{died} workers running the cell, the last" if died > 1 else "worker"
                lead = f"the worker process died: dask lost {lost} {exc.last_worker.address}"
                return self._failed(flight, "error", lead)
            return self._failed(flight, "error", f"the dask task failed: {_one_line(exc)}")
        if status == "cancelled":
            return self._failed(flight, "interrupted" if flight.cancelled else "error",
                                INTERRUPTED if flight.cancelled else "the dask task was cancelled on the cluster")
        if self._client.status in ("closing", "closed"):
            return self._failed(flight, "error", f"the connection to the dask scheduler was lost "
                                                 f"(client {self._client.status})")
        return None

    def _stop(self, flights: list[Flight]) -> None:
        futures = [flight.handle for flight in flights if flight.handle is not None]
        if not futures:
            return
        workers = {flight.worker for flight in flights if flight.worker}
        if len(workers) < len(futures):  # a cell that has not reported its worker: find it among the tasks running
            keys = {future.key for future in futures}
            with contextlib.suppress(Exception):
                workers |= {worker for worker, running in self._client.processing().items() if keys & set(running)}
        # Dask cannot stop a running task: its worker process is killed (SIGKILL, sent by the worker's nanny, on
        # the worker's machine, to the process id the worker reported) and the nanny starts a fresh one; the other
        # workers' cells go on. A worker that reported no process id, or has no nanny, is restarted through the
        # scheduler instead (gracefully: slower). On our own cluster the worker is killed before the task is
        # cancelled, so that the scheduler, still seeing it busy, hands it no other cell meanwhile; a remote
        # scheduler retries a task a dying worker takes along, so there the task is cancelled first, lest it be
        # retried elsewhere.
        own = self._cluster is not None
        if not own:
            self._client.cancel(futures)
        killed = set()
        for flight in flights:
            if flight.worker and flight.pid:
                with contextlib.suppress(Exception):
                    self._client.run(os.kill, flight.pid, signal.SIGKILL, workers=[flight.worker], nanny=True)
                    killed.add(flight.worker)
        if workers - killed:
            with contextlib.suppress(Exception):
                self._client.restart_workers(sorted(workers - killed), timeout=30, raise_for_error=False)
        if own:
            deadline = time.monotonic() + 10  # until the scheduler has dropped them, it might hand them a cell
            with contextlib.suppress(Exception):
                while killed & set(self._client.nthreads()) and time.monotonic() < deadline:
                    time.sleep(0.05)
            self._client.cancel(futures)

    def _forget(self, token: str) -> None:
        self._tokens.pop(token, None)

    def close(self) -> None:
        if self._cluster is None:
            self.cancel()  # no cell outlives the executor on a remote cluster (ours closes with its workers)
        with contextlib.suppress(Exception):
            self._client.unsubscribe_topic(self._topic)
        with contextlib.suppress(Exception):
            self._client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()


def submitit_parameters(cluster: str, partition: str = "", gpus_per_task: int = 0, cpus_per_task: int = 0,
                        timeout_min: int = DEFAULT_JOB_MINUTES, array_parallelism: int = 2,
                        mem_gb: float = 0.0) -> dict[str, Any]:
    """Our parameters as :meth:`submitit.AutoExecutor.update_parameters` takes them (one task on one node, so
    GPUs per task are GPUs per node; zeros and empty strings leave the cluster's defaults)."""
    parameters: dict[str, Any] = {"name": "cnfbench", "timeout_min": int(timeout_min), "nodes": 1,
                                  "tasks_per_node": 1}
    if gpus_per_task:
        parameters["gpus_per_node"] = int(gpus_per_task)
    if cpus_per_task:
        parameters["cpus_per_task"] = int(cpus_per_task)
    if mem_gb:
        parameters["mem_gb"] = float(mem_gb)
    if cluster == "slurm":
        if partition:
            parameters["slurm_partition"] = partition
        parameters["slurm_array_parallelism"] = int(array_parallelism)
    return parameters


def _job_failure(exc: BaseException) -> str:
    """The last line of the traceback a failed submitit job's error quotes (its whole text when there is none)."""
    lines = str(exc).splitlines()
    rules = [index for index, line in enumerate(lines) if line.strip() and set(line.strip()) == {"-"}]
    text = " ".join((lines[rules[1] - 1] if len(rules) >= 2 and rules[1] > rules[0] + 1 else str(exc)).split())
    return text if len(text) <= 300 else text[:299] + "…"


class SubmititExecutor(FlightExecutor):
    """Runs each cell as a submitit job: on SLURM (``cluster="slurm"``, through ``sbatch``) or as a local
    process (``cluster="local"``, for machines without SLURM). ``slots`` (``array_parallelism``) jobs run at
    once. A job's time limit is ``timeout_min``; on the local backend a cell that outlives ``timeout`` (from
    when its job began it) is also cancelled. The job folder must be visible to the nodes.
    """

    name = "submitit"
    description = "each cell a submitit job: SLURM job arrays (cluster=slurm) or local processes (cluster=local)"
    params = (
        Param("cluster", "str", "local", "slurm: jobs through sbatch; local: jobs as processes on this machine",
              choices=("local", "slurm")),
        Param("partition", "str", "", "SLURM partition (empty: the cluster's default)"),
        Param("gpus_per_task", "int", 0, "GPUs per job (one task per job)", minimum=0, maximum=64),
        Param("cpus_per_task", "int", 0, "CPUs per job, and torch threads per cell (0: the cluster's default)",
              minimum=0, maximum=1024),
        Param("timeout_min", "int", 0, "a job's time limit in minutes (0: --timeout rounded up plus 2, else 60)",
              minimum=0, maximum=10**6),
        Param("array_parallelism", "int", 0, "jobs (cells) at once (0: 2 on local, 16 on slurm)",
              minimum=0, maximum=10_000),
        Param("mem_gb", "float", 0.0, "memory per job in GB (0: the cluster's default)", minimum=0, maximum=10**6),
        Param("folder", "str", "", "folder for the jobs' pickles and logs, which the nodes must see (empty: a "
              "temporary folder on local, ./cnfbench-jobs on slurm)"),
    )

    def __init__(self, context: ExecutorContext, cluster: str = "local", partition: str = "",
                 gpus_per_task: int = 0, cpus_per_task: int = 0, timeout_min: int = 0, array_parallelism: int = 0,
                 mem_gb: float = 0.0, folder: str = "") -> None:
        submitit = optional_import("submitit", "the submitit executor", "slurm")
        if cluster not in ("local", "slurm"):
            raise ValueError(f"submitit cluster must be local or slurm, got {cluster!r}")
        missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
        if cluster == "slurm" and missing:
            raise ValueError(f"submitit[cluster=slurm] needs SLURM's {' and '.join(missing)}, which "
                             f"{'is' if len(missing) == 1 else 'are'} not on PATH: run on a SLURM login node, "
                             "or use submitit[cluster=local]")
        super().__init__(context, cluster=cluster, partition=partition, gpus_per_task=gpus_per_task,
                         cpus_per_task=cpus_per_task, timeout_min=timeout_min, array_parallelism=array_parallelism,
                         mem_gb=mem_gb, folder=folder)
        timeout = context.timeout
        self.cluster = cluster
        self.enforce_timeout = cluster == "local"  # on SLURM the job's time limit is the only one
        self.poll_s = 0.25 if cluster == "local" else 2.0  # on SLURM each look reads files on a shared filesystem
        self.slots = array_parallelism or (2 if cluster == "local" else 16)
        self.timeout_min = timeout_min or (math.ceil(timeout / 60) + 2 if timeout else DEFAULT_JOB_MINUTES)
        # A SLURM job has its own allocation (cpus_per_task, seen in the job as SLURM_CPUS_PER_TASK); local jobs
        # share this machine.
        self.workers = self.slots if cluster == "local" else 1
        self.threads = cpus_per_task
        self._owned: Path | None = None
        if folder:
            base = Path(folder).expanduser()
        elif cluster == "local":
            base = self._owned = Path(tempfile.mkdtemp(prefix="cnfbench-jobs-"))
        else:
            base = Path.cwd() / "cnfbench-jobs"
        # A folder of its own per executor: local job ids are process ids, which repeat across runs.
        self.folder = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self._executor = submitit.AutoExecutor(folder=self.folder, cluster=cluster)
        self._executor.update_parameters(**submitit_parameters(cluster, partition, gpus_per_task, cpus_per_task,
                                                               self.timeout_min, self.slots, mem_gb))
        self._submitting = threading.Lock()

    @property
    def parameters(self) -> dict[str, Any]:
        """The parameters of the cluster's own executor (``partition``, ``time``, ``gpus_per_node``, ...)."""
        return dict(self._executor._executor.parameters)

    def _progress_path(self, token: str) -> Path:
        return self.folder / "progress" / f"{token}.json"

    def _submit(self, token: str, flight: Flight, payload: dict[str, Any]) -> None:
        path = self._progress_path(token)
        with self._submitting:
            flight.handle = (self._executor.submit(_submitit_job, payload, str(path), self.timeout_min), path)

    def _poll(self, flight: Flight) -> CellOutcome | None:
        job, path = flight.handle
        with contextlib.suppress(OSError, ValueError):
            message = json.loads(path.read_text(encoding="utf-8"))
            if message != flight.report:
                flight.report = message
                flight.update(message)
        if not job.done():
            return None
        with contextlib.suppress(OSError):
            path.unlink()
        submitit = importlib.import_module("submitit")
        if job.paths.result_pickle.exists() or self.cluster == "slurm":  # on SLURM the result may lag on NFS
            try:
                return self.context.outcome(flight.job, job.result())
            except submitit.core.utils.FailedJobError as exc:
                return self._failed(flight, "error", f"the submitit job {job.job_id} failed: {_job_failure(exc)}")
            except submitit.core.utils.UncompletedJobError:
                pass
        state = job.state
        if state == "TIMEOUT":
            return self._failed(flight, "timeout", f"timeout: SLURM ended job {job.job_id} at its time limit "
                                                   f"({self.timeout_min} min)")
        how = f"SLURM state {state}" if self.cluster == "slurm" else "its process was killed or crashed"
        return self._failed(flight, "error", f"the worker process died: the submitit job {job.job_id} ended "
                                             f"without a result ({how})")

    def _stop(self, flights: list[Flight]) -> None:
        jobs = [flight.handle[0] for flight in flights if flight.handle is not None]
        for flight in flights:
            if flight.handle is None:
                continue
            if self.cluster == "local" and flight.pid:
                # The job's own process, which reported its id: its controller then ends quietly (submitit's
                # cancel sends the controller SIGINT, which prints a KeyboardInterrupt traceback on our terminal).
                with contextlib.suppress(OSError):
                    os.kill(flight.pid, signal.SIGKILL)
            else:
                with contextlib.suppress(Exception):
                    flight.handle[0].cancel(check=False)
        for job in jobs:  # the local controller stops its task (SIGINT, then SIGKILL after a second): reap it
            process = getattr(job, "_process", None)
            if process is not None:
                try:
                    process.wait(10)
                except Exception:  # noqa: BLE001
                    process.kill()

    def close(self) -> None:
        self.cancel()  # no job outlives the executor
        if self._owned is not None:
            shutil.rmtree(self._owned, ignore_errors=True)


@hookimpl
def cnfbench_executors() -> list[type[Executor]]:
    return [DaskExecutor, SubmititExecutor]
