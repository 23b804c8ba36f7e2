"""Executors: where a cell runs. ``process`` isolates cells in a worker process; ``inline`` runs them here.

The process executor keeps one spawned worker (torch is imported once) and
hands it one cell at a time as plain JSON over a pipe; the worker answers
with progress messages and finally the row and curves, also as JSON. A
finished cell's model file (safetensors bytes) follows the result as one
binary message of the length the result announces (``model_bytes``), rather
than inflated by a third as base64 inside the JSON; a model shared from
another cell reaches the worker the same way, after the cell's JSON. When a cell outlives
``--timeout``, or the worker dies (a segfault, the OOM killer), the worker is
killed, the cell gets status ``timeout``/``error``, and a fresh worker takes
the next cell. The worker ignores SIGINT: Ctrl-C is the parent's to handle.

The worker writes the phase of its cell (and the training iteration) into
one shared integer at every phase transition, so that the parent can say
where a cell was when it had to kill or lost its worker, without a message
per iteration.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import multiprocessing.connection
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cnfbench.cells import Cell
from cnfbench.dynamics import PhaseTracker, SharedInt, pack_phase, unpack_phase
from cnfbench.execute import train_and_evaluate
from cnfbench.registry import Registry, load_registry
from cnfbench.rows import INTERRUPTED, CellInterrupted, CellOutcome, SharedModel, failed_outcome

ProgressHook = Callable[[str, Any], None]
"""``hook(kind, value)``: ``("iteration", (done, loss))`` or ``("phase", name)``."""


class Executor(Protocol):
    """Runs one cell and returns its outcome; never raises for a failing cell.

    ``slots`` is how many cells it runs at once: the sweep calls :meth:`run_cell` from that many threads.
    """

    slots: int

    def run_cell(self, cell: Cell, progress: ProgressHook, shared: SharedModel | None = None) -> CellOutcome: ...

    def close(self) -> None: ...


class InlineExecutor:
    """Runs cells in this process: no isolation, no hard timeout (for debugging and profiling)."""

    slots = 1

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def run_cell(self, cell: Cell, progress: ProgressHook, shared: SharedModel | None = None) -> CellOutcome:
        return train_and_evaluate(cell, self.registry, lambda done, loss: progress("iteration", (done, loss)),
                                  lambda name: progress("phase", name), shared=shared)

    def close(self) -> None:
        pass


def _send(connection: multiprocessing.connection.Connection, message: dict[str, Any]) -> None:
    connection.send_bytes(json.dumps(message, allow_nan=True).encode())


def _receive(connection: multiprocessing.connection.Connection) -> dict[str, Any]:
    return json.loads(connection.recv_bytes().decode())


def _worker_main(connection: multiprocessing.connection.Connection, plugins: list[str], autoload: bool | None,
                 where: SharedInt | None = None, workers: int = 1, threads: int = 0) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_torch_threads(workers, threads)
    registry = load_registry(plugins, autoload)
    tracker = PhaseTracker(where)
    _send(connection, {"kind": "ready"})
    last_sent = 0.0
    while True:
        try:
            request = _receive(connection)
        except EOFError:
            return
        if request.get("kind") == "stop":
            return
        cell = Cell.from_json(request["cell"])
        shared = None
        if request.get("shared"):
            model = connection.recv_bytes()
            shared = SharedModel(request["shared"]["trainer_id"], model, request["shared"]["training"])

        def on_iteration(done: int, loss: float, total: int = cell.budget.iterations) -> None:
            nonlocal last_sent
            now = time.monotonic()
            if now - last_sent >= 0.1 or done == total:
                last_sent = now
                _send(connection, {"kind": "iteration", "value": [done, loss]})

        def on_phase(name: str) -> None:
            _send(connection, {"kind": "phase", "value": name})

        outcome = train_and_evaluate(cell, registry, on_iteration, on_phase, tracker, shared)
        tracker.enter("result")
        _send(connection, {"kind": "result", "row": outcome.row, "curves": outcome.curves,
                           "density": outcome.density, "model_bytes": len(outcome.model or b"")})
        if outcome.model:
            connection.send_bytes(outcome.model)


def set_torch_threads(workers: int, threads: int) -> None:
    """Limit torch's threads in a worker: ``threads`` when given, else torch's default shared by ``workers``
    (untouched for one worker, so a default run computes exactly as it always did)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    elif workers > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


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


class ProcessExecutor:
    """Runs each cell in a reusable spawned worker, ending it at ``timeout`` seconds per cell.

    ``registry`` (the parent's, optional) names the plugins of the components
    in the reasons the parent writes; without it one is loaded when first needed.
    """

    slots = 1

    def __init__(self, plugins: Sequence[str] = (), timeout: float | None = None, autoload: bool | None = None,
                 registry: Registry | None = None, workers: int = 1, threads: int = 0) -> None:
        self.workers, self.threads = workers, threads
        self.plugins = list(plugins)
        self.timeout = timeout
        self.autoload = autoload
        self._registry = registry
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: multiprocessing.connection.Connection | None = None
        self._where: SharedInt | None = None

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._where = self._context.RawValue("q", 0)  # lock-free: one writer (the worker), one 8-byte store
        process = self._context.Process(target=_worker_main, args=(child, self.plugins, self.autoload, self._where,
                                                                   self.workers, self.threads),
                                        name="cnfbench-worker", daemon=True)
        process.start()
        child.close()
        self._process, self._connection = process, parent
        if not parent.poll(300):
            self._kill()
            raise RuntimeError("the cnfbench worker process did not start within 300 s")
        _receive(parent)

    def _kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(10)
        if self._connection is not None:
            self._connection.close()
        self._process = self._connection = None

    def _names(self) -> Registry | None:
        if self._registry is None:
            try:
                self._registry = load_registry(self.plugins, self.autoload)
            except Exception:  # noqa: BLE001 - reasons then name components without their plugins
                return None
        return self._registry

    def _failed(self, cell: Cell, status: str, lead: str, seconds: float) -> CellOutcome:
        """The row of a cell its worker did not finish, at the phase the worker last reported."""
        phase, iteration = unpack_phase(self._where.value) if self._where is not None else ("start", 0)
        return failed_outcome(cell, status, lead, seconds, phase, iteration, self._names())

    def _receive_model(self, size: int) -> bytes | None:
        """The model file that follows a result announcing ``size`` bytes (``None`` for 0)."""
        if not size:
            return None
        assert self._connection is not None
        data = self._connection.recv_bytes()
        if len(data) != size:
            raise EOFError  # a torn message: the worker is treated as lost
        return data

    def run_cell(self, cell: Cell, progress: ProgressHook, shared: SharedModel | None = None) -> CellOutcome:
        if self._process is None or not self._process.is_alive():
            self._start()
        process, where = self._process, self._where
        assert self._connection is not None and process is not None and where is not None
        where.value = pack_phase("start")
        started = time.monotonic()
        deadline = math.inf if self.timeout is None else started + self.timeout
        try:
            _send(self._connection, {"kind": "run", "cell": cell.to_json(), "shared": shared and {
                "trainer_id": shared.trainer_id, "training": shared.training}})
            if shared is not None:
                self._connection.send_bytes(shared.model)
            while True:
                wait = min(1.0, max(0.0, deadline - time.monotonic()))
                if self._connection.poll(wait):
                    message = _receive(self._connection)
                    if message["kind"] == "result":
                        return CellOutcome(message["row"], message["curves"], message.get("density"),
                                           self._receive_model(int(message.get("model_bytes") or 0)))
                    progress(message["kind"], message["value"])
                elif time.monotonic() >= deadline:
                    elapsed = time.monotonic() - started
                    self._kill()
                    lead = f"timeout after {elapsed:.1f} s (--timeout {self.timeout:g} s)"
                    return self._failed(cell, "timeout", lead, elapsed)
                elif not process.is_alive():
                    raise EOFError
        except (EOFError, OSError, ConnectionError):
            elapsed = time.monotonic() - started
            how = _exit_description(process)
            self._kill()
            return self._failed(cell, "error", f"the worker process died: {how}", elapsed)
        except KeyboardInterrupt:
            elapsed = time.monotonic() - started
            self._kill()  # the cell in flight is abandoned; its row says where it was
            raise CellInterrupted(self._failed(cell, "interrupted", INTERRUPTED, elapsed)) from None
        except BaseException:
            self._kill()
            raise

    def close(self) -> None:
        if self._connection is not None and self._process is not None and self._process.is_alive():
            try:
                _send(self._connection, {"kind": "stop"})
                self._process.join(5)
            except (OSError, ValueError):
                pass
        self._kill()


class ProcessPool:
    """``workers`` worker processes (each a :class:`ProcessExecutor`, with its own hard timeout), running that
    many cells at once; :meth:`run_cell` may be called from ``workers`` threads."""

    def __init__(self, workers: int, threads: int, plugins: Sequence[str] = (), timeout: float | None = None,
                 registry: Registry | None = None) -> None:
        self.slots = workers
        self._idle: queue.SimpleQueue[ProcessExecutor] = queue.SimpleQueue()
        self._all = [ProcessExecutor(plugins, timeout, registry=registry, workers=workers, threads=threads)
                     for _ in range(workers)]
        for executor in self._all:
            self._idle.put(executor)
        self._running: dict[str, tuple[Cell, ProcessExecutor, float]] = {}
        self._lock = threading.Lock()

    def run_cell(self, cell: Cell, progress: ProgressHook, shared: SharedModel | None = None) -> CellOutcome:
        executor = self._idle.get()
        with self._lock:
            self._running[cell.cell_id] = (cell, executor, time.monotonic())
        try:
            return executor.run_cell(cell, progress, shared)
        finally:
            with self._lock:
                self._running.pop(cell.cell_id, None)
            self._idle.put(executor)

    def interrupt(self) -> list[CellOutcome]:
        """Stop every cell in flight (Ctrl-C): their ``interrupted`` rows, each at the phase its worker was in."""
        with self._lock:
            running = list(self._running.values())
            self._running.clear()
        outcomes = []
        for cell, executor, started in running:
            outcomes.append(executor._failed(cell, "interrupted", INTERRUPTED, time.monotonic() - started))
            executor._kill()
        return outcomes

    def close(self) -> None:
        for executor in self._all:
            executor.close()


def make_executor(name: str, params: dict[str, Any], plugins: Sequence[str], timeout: float | None,
                  registry: Registry) -> Executor:
    """The executor ``name`` with ``params`` (from :func:`resolve_executor`)."""
    if name == "inline":
        return InlineExecutor(registry)
    if params["workers"] == 1:
        return ProcessExecutor(plugins, timeout, registry=registry, threads=params["threads"])
    return ProcessPool(params["workers"], params["threads"], plugins, timeout, registry)
