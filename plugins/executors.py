"""Built-in executors on this machine: ``inline`` (in the main process) and ``process[workers=N,threads=T]``.

* ``inline`` runs each cell in the main process, one at a time: no isolation and no hard timeout (for
  debugging and profiling).
* ``process`` keeps ``workers`` spawned worker processes (torch is imported once per worker) and hands each
  one cell at a time over a pipe, as plain JSON; the worker runs
  :func:`cnfbench.worker.run_cell_payload` and answers with its progress reports and, last, the result (the
  model file follows as one binary message rather than inflated as base64 inside the JSON). A cell that
  outlives ``--timeout`` has its worker killed (status ``timeout``); a worker that dies (a segfault, the OOM
  killer) makes an ``error`` row; either way a fresh worker takes the next cell. Workers ignore SIGINT:
  Ctrl-C is the main process's to handle.

:class:`FlightExecutor` is what every engine here and in :mod:`cnfbench_plugins.cluster_executors` shares —
the wait for a cell with its timeout and progress, the rows of cells that did not finish, cancelling —
and a base for an engine a third-party plugin brings: it provides ``_submit``, ``_poll`` and ``_stop``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cnfbench.contracts import (
    INTERRUPTED,
    ORPHANED_EXIT,
    CellInterrupted,
    CellJob,
    CellOutcome,
    Executor,
    ExecutorContext,
    ProgressHook,
)
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param

STARTUP_GRACE_S = 60.0
"""Seconds a worker may take to begin a cell (start a process, import torch) on top of ``--timeout``."""


class _Told:
    """Turns a worker's reports into progress calls, each only when its value changed."""

    def __init__(self, progress: ProgressHook) -> None:
        self.progress = progress
        self.shown: Any = None
        self.iteration: Any = None
        self.note: Any = None

    def tell(self, shown: Any, iteration: Any, note: Any = None) -> None:
        if note and note != self.note:
            self.progress("note", note)
            self.note = note
        if iteration is not None and iteration != self.iteration:  # the last iterations before a new phase
            self.progress("iteration", tuple(iteration))
        if shown is not None and shown != self.shown:
            self.progress("phase", shown)
        self.shown, self.iteration = shown, iteration


class InlineExecutor(Executor):
    name = "inline"
    description = "in this process, one cell at a time: no isolation, no hard timeout (debugging, profiling)"

    def run_cell(self, job: CellJob, progress: ProgressHook) -> CellOutcome:
        told = _Told(progress)
        result = self.context.run_here(job, lambda message: told.tell(message.get("shown"), message.get("iteration"),
                                                                      message.get("note")))
        outcome = self.context.outcome(job, result)
        if outcome.row.get("status") == "interrupted":
            raise CellInterrupted(outcome)
        return outcome


@dataclass
class Flight:
    """A cell handed to an engine: its handle there and what its worker last reported."""

    job: CellJob
    submitted: float
    handle: Any = None
    started: float | None = None
    where: int = 0
    iteration: list[float] | None = None
    shown: str | None = None
    note: str | None = None
    worker: str | None = None
    pid: int | None = None
    cancelled: bool = False
    report: Any = None
    changed: threading.Event = field(default_factory=threading.Event)

    def update(self, message: dict[str, Any]) -> None:
        """Take a report of :func:`cnfbench.worker.run_cell_payload` (the first one says the cell began)."""
        if self.started is None:
            self.started = time.monotonic()
        self.where = int(message.get("where") or 0)
        self.iteration = message.get("iteration")
        self.shown = message.get("shown")
        self.note = message.get("note") or self.note
        self.worker = message.get("worker") or self.worker
        self.pid = message.get("pid") or self.pid
        self.changed.set()

    def seconds(self) -> float:
        return time.monotonic() - (self.started if self.started is not None else self.submitted)


class FlightExecutor(Executor):
    """An engine that runs cells elsewhere: the wait for each cell with its timeout and progress, the rows of
    cells that did not finish, :meth:`cancel`. A subclass provides ``_submit``, ``_poll`` and ``_stop``."""

    start_grace: float | None = STARTUP_GRACE_S
    """Seconds on top of ``--timeout`` a cell may wait for a worker to begin it; None: no limit (a queue)."""
    enforce_timeout = True
    """Whether the main process ends a cell at ``--timeout`` (the engine may enforce its own limit instead)."""
    poll_s = 0.25
    """Seconds between looks at a cell in flight (sooner when the engine says it changed)."""

    def __init__(self, context: ExecutorContext, **params: Any) -> None:
        super().__init__(context, **params)
        self.workers, self.threads = 1, 0
        self._flights: dict[str, Flight] = {}
        self._lock = threading.Lock()

    # the engine's part
    def _submit(self, token: str, flight: Flight, payload: dict[str, Any]) -> None:
        """Hand ``payload`` to the engine; keep its handle in ``flight.handle``."""
        raise NotImplementedError

    def _poll(self, flight: Flight) -> CellOutcome | None:
        """The cell's outcome once it ended (through :meth:`_failed` when its worker did not finish it)."""
        raise NotImplementedError

    def _stop(self, flights: list[Flight]) -> None:
        """Stop these cells wherever they run (their rows are written by the caller)."""
        raise NotImplementedError

    def _forget(self, token: str) -> None:
        """Drop what the engine keeps about the cell ``token`` once it is over."""

    # shared
    def _failed(self, flight: Flight, status: str, lead: str) -> CellOutcome:
        """The row of a cell its worker did not finish, at the phase the worker last reported."""
        return self.context.failed(flight.job, status, lead, flight.seconds(),
                                   flight.where if flight.started is not None else None)

    def _deadline(self, flight: Flight) -> float:
        timeout = self.context.timeout
        if timeout is None or not self.enforce_timeout:
            return math.inf
        if flight.started is not None:
            return flight.started + timeout
        return math.inf if self.start_grace is None else flight.submitted + timeout + self.start_grace

    def _timed_out(self, flight: Flight) -> CellOutcome:
        timeout = self.context.timeout
        if flight.started is None:
            lead = (f"timeout: no {self.name} worker began the cell within {flight.seconds():.1f} s "
                    f"(--timeout {timeout:g} s plus {self.start_grace:g} s to start)")
        else:
            lead = f"timeout after {flight.seconds():.1f} s (--timeout {timeout:g} s)"
        outcome = self._failed(flight, "timeout", lead)
        self._stop([flight])
        return outcome

    def run_cell(self, job: CellJob, progress: ProgressHook) -> CellOutcome:
        token = uuid.uuid4().hex
        flight = Flight(job, time.monotonic())
        with self._lock:
            self._flights[token] = flight
        try:
            try:
                self._submit(token, flight, self.context.payload(job, self.workers, self.threads))
            except Exception as exc:  # noqa: BLE001 - the engine refused the submission: this cell's row says so
                return self._failed(flight, "error", f"the {self.name} executor could not submit the cell: "
                                                     f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            if flight.cancelled:  # cancelled while submitting
                self._stop([flight])
            told = _Told(progress)
            while True:
                if flight.cancelled:
                    return self._failed(flight, "interrupted", INTERRUPTED)
                outcome = self._poll(flight)
                if outcome is not None:
                    return outcome
                told.tell(flight.shown, flight.iteration, flight.note)
                if time.monotonic() >= self._deadline(flight):
                    return self._timed_out(flight)
                flight.changed.wait(self.poll_s)
                flight.changed.clear()
        except KeyboardInterrupt:
            flight.cancelled = True
            outcome = self._failed(flight, "interrupted", INTERRUPTED)
            with contextlib.suppress(Exception):
                self._stop([flight])
            raise CellInterrupted(outcome) from None
        finally:
            with self._lock:
                self._flights.pop(token, None)
            self._forget(token)

    def in_flight(self) -> list[Flight]:
        """The cells running now."""
        with self._lock:
            return list(self._flights.values())

    def cancel(self) -> list[CellOutcome]:
        with self._lock:
            flights = list(self._flights.values())
            self._flights.clear()
        for flight in flights:
            flight.cancelled = True
        outcomes = [self._failed(flight, "interrupted", INTERRUPTED) for flight in flights]
        with contextlib.suppress(Exception):
            self._stop(flights)
        for flight in flights:
            flight.changed.set()
        return outcomes


# --------------------------------------------------------------------------------------------------------------
# process: worker processes on this machine.


def _send(connection: multiprocessing.connection.Connection, message: dict[str, Any]) -> None:
    connection.send_bytes(json.dumps(message, allow_nan=True).encode())


def _receive(connection: multiprocessing.connection.Connection) -> dict[str, Any]:
    return json.loads(connection.recv_bytes().decode())


PR_SET_PDEATHSIG = 1
"""Linux's ``prctl`` option: the signal a process gets when the thread that started it ends."""


def _die_with_parent(parent_pid: int) -> None:
    """End this worker the moment the main process dies, even by ``kill -9``: on Linux the kernel sends it SIGKILL
    (``PR_SET_PDEATHSIG``; the executor starts workers from one long-lived thread, since the signal follows the
    starting thread); everywhere, a watchdog thread waits on the pipe the parent holds open (its sentinel) and
    exits when it closes. A worker orphaned before either was armed exits at once."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    parent = multiprocessing.parent_process()  # a spawned worker always has one
    if parent is None or os.getppid() != parent_pid:
        os._exit(ORPHANED_EXIT)

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, name="cnfbench-parent-watchdog", daemon=True).start()


def _worker_main(connection: multiprocessing.connection.Connection, parent_pid: int) -> None:
    """A worker process: run each cell it is sent, answering with reports, then the result and model bytes."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from cnfbench.worker import run_cell_payload  # imports torch: in the worker, once

    sending = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with sending:
            _send(connection, message)

    send({"kind": "ready"})
    while True:
        try:
            request = _receive(connection)
        except EOFError:
            return
        if request.get("kind") != "run":
            return
        payload = request["payload"]
        if payload.get("shared"):
            payload["shared"]["model"] = connection.recv_bytes()
        result = run_cell_payload(payload, lambda message: send({"kind": "report", **message}))
        model = result.pop("model", None) or b""
        send({"kind": "result", **result, "model_bytes": len(model)})
        if model:
            connection.send_bytes(model)


def _exit_description(process: multiprocessing.process.BaseProcess) -> str:
    """How a worker process ended: ``killed by signal 9 (SIGKILL)`` or ``exited with code 1``."""
    process.join(5)  # the exit code is only known once the dead process is reaped
    code = process.exitcode
    if code is None:
        return "it stopped answering (its connection broke) and was killed"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exited with code {code}"


class _Worker:
    """One spawned worker process and the pipe to it."""

    def __init__(self, context: multiprocessing.context.SpawnContext) -> None:
        self._context = context
        self.process: multiprocessing.process.BaseProcess | None = None
        self.connection: multiprocessing.connection.Connection | None = None

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(child, os.getpid()), name="cnfbench-worker",
                                        daemon=True)
        process.start()
        child.close()
        self.process, self.connection = process, parent
        if not parent.poll(300):
            self.kill()
            raise RuntimeError("the cnfbench worker process did not start within 300 s")
        _receive(parent)

    def kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(10)
        if self.connection is not None:
            self.connection.close()
        self.process = self.connection = None

    def stop(self) -> None:
        if self.connection is not None and self.alive():
            with contextlib.suppress(OSError, ValueError):
                _send(self.connection, {"kind": "stop"})
                assert self.process is not None
                self.process.join(5)
        self.kill()


class ProcessExecutor(FlightExecutor):
    name = "process"
    description = "worker processes on this machine, each cell with a hard timeout (the default: one worker)"
    params = (
        Param("workers", "int", 1, "worker processes, each running one cell at a time", minimum=1, maximum=256),
        Param("threads", "int", 0, "torch threads per worker (0: the CPUs this process may use, shared by the "
              "workers, fewer on a busy machine)", minimum=0, maximum=1024),
    )
    start_grace = None  # a worker is started before its cell is sent: the cell begins when it arrives
    poll_s = 0.05

    def __init__(self, context: ExecutorContext, workers: int = 1, threads: int = 0) -> None:
        super().__init__(context, workers=workers, threads=threads)
        self.slots = self.workers = workers
        self.threads = threads
        spawn = multiprocessing.get_context("spawn")
        self._spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cnfbench-spawner")
        self._all = [_Worker(spawn) for _ in range(workers)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._all:
            self._idle.put(worker)

    def _submit(self, token: str, flight: Flight, payload: dict[str, Any]) -> None:
        worker = self._idle.get()  # one is always idle: at most `slots` cells run at once
        try:
            if not worker.alive():
                self._spawner.submit(worker.start).result()  # from one long-lived thread: see _die_with_parent
            assert worker.connection is not None
            shared = payload.get("shared")
            model = shared.pop("model") if shared else None
            _send(worker.connection, {"kind": "run", "payload": payload})
            if model is not None:
                worker.connection.send_bytes(model)
        except BaseException:
            worker.kill()
            self._idle.put(worker)
            raise
        flight.handle = worker
        flight.started = time.monotonic()

    def _release(self, flight: Flight) -> None:
        with self._lock:
            worker, flight.handle = flight.handle, None
        if worker is not None:
            self._idle.put(worker)

    def _poll(self, flight: Flight) -> CellOutcome | None:
        worker: _Worker | None = flight.handle
        if worker is None:  # stopped by another thread (cancel)
            return None
        connection, process = worker.connection, worker.process
        if connection is None or process is None:
            return None
        try:
            while connection.poll(0):
                message = _receive(connection)
                if message.pop("kind") == "report":
                    flight.update(message)
                    continue
                size = int(message.pop("model_bytes", 0) or 0)
                model = connection.recv_bytes() if size else None
                if model is not None and len(model) != size:
                    raise EOFError  # a torn message: the worker is treated as lost
                self._release(flight)
                return self.context.outcome(flight.job, {**message, "model": model})
            if not process.is_alive():
                raise EOFError
        except (EOFError, OSError, ConnectionError, ValueError):
            how = _exit_description(process)
            worker.kill()
            self._release(flight)
            return self._failed(flight, "error", f"the worker process died: {how}")
        return None

    def _stop(self, flights: list[Flight]) -> None:
        for flight in flights:
            if flight.handle is not None:
                flight.handle.kill()
                self._release(flight)

    def close(self) -> None:
        self.cancel()
        for worker in self._all:
            worker.stop()
        self._spawner.shutdown(wait=False)


@hookimpl
def cnfbench_executors() -> list[type[Executor]]:
    return [ProcessExecutor, InlineExecutor]
