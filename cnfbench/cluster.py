"""Cluster executors: cells on a Dask cluster (``dask``) or as submitit jobs (``submitit``: SLURM, or local).

Every engine hands its worker the same plain payload and calls the same
worker function, :func:`run_cell_payload`, which answers with plain data
(the row, the curves, the density picture and the model file's bytes). The
payload carries the cell as JSON, the names and versions of the plugins the
main process loaded, the source text of every ``.py`` plugin (so that a
remote node needs no shared path: the worker writes them to a private
folder and loads them from there) and, for a cell that loads another cell's
trained model, that model's bytes; and ``$CNFBENCH_DATA`` (``--data-dir``),
which must name a folder the workers can read. A worker whose plugins or
plugin versions differ from the main process's refuses the cell: the row is
an ``error`` whose reason says which plugin differs. Plugins named as
modules, and cnfbench itself, must be installed on the workers; only ``.py``
plugin files travel.

While a cell runs, the worker reports its phase (and training iteration) at
most every half second from a background thread: through Dask's event
stream, or a small JSON file in the submitit job folder. So a cell killed at
its timeout, or lost with its worker, still gets a reason that says where it
was, as with the ``process`` executor.

Timeouts: a Dask cell that outlives ``--timeout`` (counted from when a worker
began it) is cancelled and its worker process killed (its nanny starts a
fresh one); a worker that dies makes an ``error`` row. A submitit job gets
the time limit ``timeout_min`` (on SLURM that is the only limit: the time a
job waits in the queue never counts); on the local backend the main process
also cancels a job that outlives ``--timeout``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnfbench.cells import Cell
from cnfbench.config import CLUSTER_EXECUTOR_PARAMS
from cnfbench.contracts import DATA_ROOT_VARIABLE
from cnfbench.dynamics import PhaseTracker, unpack_phase
from cnfbench.execute import train_and_evaluate
from cnfbench.executor import ProgressHook, set_torch_threads
from cnfbench.messages import describe_exception, one_line
from cnfbench.plugin_manager import AUTOLOAD_ENV, PLUGINS_ENV, create_plugin_manager
from cnfbench.registry import Registry, load_registry
from cnfbench.rows import INTERRUPTED, CellInterrupted, CellOutcome, SharedModel, failed_outcome, failure_reason

__all__ = ["CLUSTER_EXECUTOR_PARAMS", "DaskExecutor", "PluginShipment", "SubmititExecutor", "make_cluster_executor",
           "plugin_shipment", "run_cell_payload", "submitit_parameters"]

STARTUP_GRACE_S = 60.0
"""Seconds a worker may take to begin a cell (start a process, import torch) on top of ``--timeout``."""

REPORT_INTERVAL_S = 0.5
"""Seconds between a worker's progress reports (only when something changed)."""

DEFAULT_JOB_MINUTES = 60
"""A submitit job's time limit without ``timeout_min`` or ``--timeout``."""



# --------------------------------------------------------------------------------------------------------------
# What the main process ships: its plugins, their versions and the sources of its .py plugins.


@dataclass(frozen=True)
class PluginShipment:
    """The main process's plugins as a worker needs them: the user plugins in load order (``CNFBENCH_PLUGINS``
    then ``--plugin``), the source text of each ``.py`` one, every loaded plugin's version, and whether
    third-party entry points are loaded."""

    plugins: tuple[str, ...]
    sources: dict[str, str]
    versions: dict[str, str]
    autoload: bool

    def payload(self) -> dict[str, Any]:
        return {"plugins": list(self.plugins), "plugin_sources": dict(self.sources),
                "versions": dict(self.versions), "autoload": self.autoload}


def plugin_shipment(plugins: Sequence[str], registry: Registry | None = None) -> PluginShipment:
    """What a worker needs to load the plugins of ``registry`` (loaded from ``plugins`` when None)."""
    registry = registry if registry is not None else load_registry(plugins)
    user = [info for info in registry.plugins if info.source in ("file", "module")]
    sources = {info.name: Path(info.origin).read_text(encoding="utf-8") for info in user if info.source == "file"}
    versions = {info.name: info.version for info in registry.plugins if info.error is None}
    autoload = os.environ.get(AUTOLOAD_ENV, "") in ("", "0")
    return PluginShipment(tuple(info.name for info in user), sources, versions, autoload)


# --------------------------------------------------------------------------------------------------------------
# The worker side: one function every engine calls.


_LOCK = threading.Lock()
_REGISTRIES: dict[tuple[Any, ...], tuple[Registry, dict[str, str], dict[str, str]]] = {}
_THREADS: dict[str, Any] = {}


@contextlib.contextmanager
def _without_env(name: str) -> Iterator[None]:
    """``name`` unset while the block runs (the shipped plugin list replaces the worker's own)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def _worker_registry(payload: dict[str, Any], scratch: str | None = None,
                     ) -> tuple[Registry, dict[str, str], dict[str, str]]:
    """The registry of the payload's plugin set (cached per set within this process), the version of every
    plugin it loaded and the error of every plugin that failed, named as the main process names them.

    Shipped plugin files are written to a new folder in ``scratch`` (the system's temporary folder when None),
    removed when the process exits normally."""
    sources: dict[str, str] = payload.get("plugin_sources") or {}
    specs = list(payload.get("plugins") or ())
    autoload = bool(payload.get("autoload", True))
    key = (tuple(specs), tuple(sorted(sources.items())), autoload)
    with _LOCK:
        if key in _REGISTRIES:
            return _REGISTRIES[key]
        local: list[str] = []
        original: dict[str, str] = {}
        directory = None
        for index, spec in enumerate(specs):
            if spec not in sources:
                local.append(spec)
                continue
            if directory is None:
                directory = tempfile.mkdtemp(prefix="cnfbench-plugins-", dir=scratch)
                atexit.register(shutil.rmtree, directory, True)
            path = Path(directory, str(index), Path(spec).name or f"plugin{index}.py")
            path.parent.mkdir()
            path.write_text(sources[spec], encoding="utf-8")
            local.append(str(path))
            original[str(path)] = spec
        with _without_env(PLUGINS_ENV):
            pm, infos = create_plugin_manager(local, autoload)
        if original:
            # Rename the shipped plugins back to the main process's names, so that reasons and provenance name
            # them as the user did; every user plugin is re-registered, in order, to keep the registration order.
            user = [(info, pm.get_plugin(info.name)) for info in infos if info.source in ("file", "module")]
            user = [(info, module) for info, module in user if module is not None]
            for info, _ in user:
                pm.unregister(name=info.name)
            for info, module in user:
                info.name = original.get(info.name, info.name)
                pm.register(module, name=info.name)
        registry = Registry(pm, infos)
        versions = {info.name: info.version for info in infos if info.error is None}
        errors = {info.name: info.error for info in infos if info.error is not None}
        _REGISTRIES[key] = (registry, versions, errors)
        return _REGISTRIES[key]


def _plugin_differences(expected: dict[str, str], found: dict[str, str], errors: dict[str, str]) -> str:
    """One line naming every plugin whose presence or version differs between the main process and here."""
    problems = []
    for name, version in expected.items():
        if name not in found:
            why = f" (it failed to load here: {errors[name]})" if name in errors else ""
            problems.append(f"plugin {name!r} is missing here{why}")
        elif found[name] != version:
            problems.append(f"plugin {name!r} is version {found[name] or '(none)'} here but "
                            f"{version or '(none)'} in the main process")
    problems += [f"plugin {name!r}{' ' + found[name] if found[name] else ''} is loaded here but not in the main process"
                 for name in sorted(found.keys() - expected.keys())]
    return one_line("; ".join(problems))


def _apply_threads(workers: int, threads: int) -> None:
    """:func:`~cnfbench.executor.set_torch_threads` once per setting in this process, from torch's default
    (applying it twice would divide twice)."""
    import torch

    with _LOCK:
        default = _THREADS.setdefault("default", torch.get_num_threads())
        if _THREADS.get("applied") == (workers, threads):
            return
        torch.set_num_threads(default)
        set_torch_threads(workers, threads)
        _THREADS["applied"] = (workers, threads)


_TRAINING = ("train_forward", "train_backward")


class _Reporter:
    """The progress of the cell this worker runs, handed to ``send``: at once when the cell enters a phase
    (training only at its first iteration), otherwise by a background thread at most every
    :data:`REPORT_INTERVAL_S`, so that a hang still tells where it was without a message per iteration.

    ``value`` is the packed phase a :class:`~cnfbench.dynamics.PhaseTracker` writes.
    """

    def __init__(self, send: Callable[[dict[str, Any]], None], extra: dict[str, Any]) -> None:
        self._value = 0
        self.iteration: list[float] | None = None
        self.shown: str | None = None
        self._send, self._extra = send, extra
        self._last: dict[str, Any] | None = None
        self._sending = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cnfbench-reporter", daemon=True)

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, packed: int) -> None:
        self._value = packed
        phase, iteration = unpack_phase(packed)
        if phase not in _TRAINING or iteration <= 1:
            self.flush()

    def start(self) -> None:
        self.flush()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(REPORT_INTERVAL_S):
            self.flush()

    def flush(self) -> None:
        with self._sending:
            message = {"where": self._value, "iteration": self.iteration, "shown": self.shown}
            if message == self._last:
                return
            self._last = message
            try:
                self._send({**self._extra, **message})
            except Exception:  # noqa: BLE001 - progress is best effort; the cell goes on
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


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


def _shared_model(data: dict[str, Any] | None) -> SharedModel | None:
    if not data:
        return None
    model = data.get("model")
    if model is None:
        model = bytes.fromhex(data["model_hex"])
    return SharedModel(data["trainer_id"], bytes(model), dict(data["training"]))


def _plain(outcome: CellOutcome) -> dict[str, Any]:
    """An outcome as plain data (row, curves and density through JSON, exactly as the process executor sends them)."""
    row, curves, density = json.loads(json.dumps([outcome.row, outcome.curves, outcome.density], allow_nan=True))
    return {"row": row, "curves": curves, "density": density, "model": outcome.model, "host": socket.gethostname()}


def run_cell_payload(payload: dict[str, Any], report: Callable[[dict[str, Any]], None] | None = None,
                     time_limit: _TimeLimit | None = None, scratch: str | None = None) -> dict[str, Any]:
    """Run one cell on a worker of any engine; never raises for a failing cell.

    ``payload``: ``cell`` (:meth:`Cell.to_json`), ``plugins`` (the main process's user plugins in load order),
    ``plugin_sources`` (``{plugin: source text}`` of its ``.py`` plugins, written to a private folder here),
    ``versions`` (``{plugin: version}`` of every plugin the main process loaded), ``autoload``, ``shared``
    (``{"trainer_id", "training", "model"}`` bytes, or ``"model_hex"``; or None), and the torch-thread
    policy ``workers``/``threads`` of :func:`~cnfbench.executor.set_torch_threads`, and ``data_root`` (the main
    process's ``$CNFBENCH_DATA``, set here too: the folder must exist on the worker's machine).

    Returns ``{"row", "curves", "density", "model", "host"}`` (plain, picklable data); a worker whose plugins
    or plugin versions differ from the main process's refuses the cell with an ``error`` row. Only a payload
    whose cell cannot be read returns ``{"row": None, "error": reason}``. ``report`` hears progress messages
    (``where``: the packed phase, ``iteration``: ``[done, loss]``, ``shown``: the display's phase);
    ``scratch`` is a folder for the shipped plugin files (an engine's own scratch space, which it cleans up even
    after a worker was killed; the system's temporary folder when None).
    """
    host = socket.gethostname()
    try:
        cell = Cell.from_json(payload["cell"])
    except Exception as exc:  # noqa: BLE001 - a cnfbench of another version: said in one line
        return {"row": None, "error": f"the worker on {host} could not read the cell: {describe_exception(exc)}",
                "host": host}
    reporter = _Reporter(report, {"host": host, "pid": os.getpid()}) if report is not None else None
    if reporter is not None:
        reporter.start()
    try:
        _apply_threads(int(payload.get("workers") or 1), int(payload.get("threads") or 0))
        if payload.get("data_root"):
            os.environ[DATA_ROOT_VARIABLE] = payload["data_root"]
        try:
            registry, versions, errors = _worker_registry(payload, scratch)
        except Exception as exc:  # noqa: BLE001 - a plugin that does not load here
            return _plain(failed_outcome(cell, "error", f"the worker on {host} could not load the plugins: "
                                         f"{describe_exception(exc)}", 0.0, "start"))
        expected = payload.get("versions")
        differences = "" if expected is None else _plugin_differences(expected, versions, errors)
        if differences:
            return _plain(failed_outcome(cell, "error", f"the worker on {host} refused the cell: {differences}",
                                         0.0, "start", registry=registry))
        tracker = PhaseTracker(reporter)

        def on_iteration(done: int, loss: float) -> None:
            if reporter is not None:
                reporter.iteration = [done, loss]

        def on_phase(name: str) -> None:
            if reporter is not None:
                reporter.shown = name

        try:
            outcome = train_and_evaluate(cell, registry, on_iteration, on_phase, tracker,
                                         _shared_model(payload.get("shared")))
        except CellInterrupted as stop:
            outcome = stop.outcome
            if time_limit is not None and time_limit.reached:
                row = dict(outcome.row)
                lead = f"timeout after {row.get('cell_time_s', math.nan):.1f} s (the job's time limit of " \
                       f"{time_limit.minutes:g} min)"
                row.update(status="timeout", valid=False, validity_reason="",
                           reason=failure_reason(lead, cell, tracker.phase, tracker.iteration, registry=registry))
                outcome = CellOutcome(row, outcome.curves)
        tracker.enter("result")
        return _plain(outcome)
    finally:
        if reporter is not None:
            reporter.stop()
            reporter.flush()


def _dask_job(payload: dict[str, Any], topic: str, token: str) -> dict[str, Any]:
    """:func:`run_cell_payload` on a Dask worker, reporting progress as events under ``topic``."""
    from distributed import get_worker

    worker = get_worker()
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
    limit = _TimeLimit(timeout_min)
    return run_cell_payload(payload, lambda message: _write_json(path, message), limit, scratch=str(path.parent))


# --------------------------------------------------------------------------------------------------------------
# The main side.


def _optional(module: str, executor: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"the {executor} executor needs the optional extra: pip install cnfbench[{extra}] "
                         f"({describe_exception(exc)})") from None


@dataclass
class _Flight:
    """A cell handed to the engine: its handle there and what its worker last reported."""

    cell: Cell
    submitted: float
    handle: Any = None
    started: float | None = None
    where: int = 0
    iteration: list[float] | None = None
    shown: str | None = None
    worker: str | None = None
    pid: int | None = None
    cancelled: bool = False
    report: Any = None
    changed: threading.Event = field(default_factory=threading.Event)

    def update(self, message: dict[str, Any]) -> None:
        if self.started is None:
            self.started = time.monotonic()
        self.where = int(message.get("where") or 0)
        self.iteration = message.get("iteration")
        self.shown = message.get("shown")
        self.worker = message.get("worker") or self.worker
        self.pid = message.get("pid") or self.pid
        self.changed.set()

    def seconds(self) -> float:
        return time.monotonic() - (self.started if self.started is not None else self.submitted)


class _ClusterExecutor:
    """What both engines share: the payload, the wait for a cell with its timeout and progress, the rows of
    cells that did not finish, :meth:`interrupt`. An engine provides ``_submit``, ``_poll`` and ``_stop``."""

    slots: int = 1
    engine = "cluster"
    start_grace: float | None = STARTUP_GRACE_S
    """Seconds on top of ``timeout`` a cell may wait for a worker to begin it; None: no limit (a queue)."""
    enforce_timeout = True
    """Whether the main process ends a cell at ``timeout`` (the engine may enforce its own limit instead)."""
    poll_s = 0.25
    """Seconds between looks at a cell in flight (sooner when the engine says it changed)."""

    def __init__(self, plugins: Sequence[str], timeout: float | None, registry: Registry | None) -> None:
        self.plugins = list(plugins)
        self.timeout = timeout
        self._registry = registry if registry is not None else load_registry(self.plugins)
        self.shipment = plugin_shipment(self.plugins, self._registry)
        self.workers, self.threads = 1, 0
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()

    # the engine's part
    def _submit(self, token: str, flight: _Flight, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    def _poll(self, flight: _Flight) -> CellOutcome | None:
        raise NotImplementedError

    def _stop(self, flights: list[_Flight]) -> None:
        raise NotImplementedError

    def _forget(self, token: str) -> None:
        """Drop what the engine keeps about the cell ``token`` once it is over."""

    # shared
    def payload(self, cell: Cell, shared: SharedModel | None = None) -> dict[str, Any]:
        """The payload of :func:`run_cell_payload` for ``cell``."""
        return {"cell": cell.to_json(), **self.shipment.payload(), "workers": self.workers, "threads": self.threads,
                "data_root": os.environ.get(DATA_ROOT_VARIABLE) or None,
                "shared": shared and {"trainer_id": shared.trainer_id, "training": shared.training,
                                      "model": shared.model}}

    def _failed(self, flight: _Flight, status: str, lead: str) -> CellOutcome:
        """The row of a cell its worker did not finish, at the phase the worker last reported."""
        phase, iteration = unpack_phase(flight.where) if flight.started is not None else ("start", 0)
        return failed_outcome(flight.cell, status, lead, flight.seconds(), phase, iteration, self._registry)

    def _outcome(self, flight: _Flight, result: dict[str, Any]) -> CellOutcome:
        if result.get("row") is None:
            return self._failed(flight, "error", one_line(result.get("error") or "the worker returned no row"))
        return CellOutcome(result["row"], result.get("curves") or [], result.get("density"), result.get("model"))

    def _deadline(self, flight: _Flight) -> float:
        if self.timeout is None or not self.enforce_timeout:
            return math.inf
        if flight.started is not None:
            return flight.started + self.timeout
        return math.inf if self.start_grace is None else flight.submitted + self.timeout + self.start_grace

    def _timed_out(self, flight: _Flight) -> CellOutcome:
        if flight.started is None:
            lead = (f"timeout: no {self.engine} worker began the cell within {flight.seconds():.1f} s "
                    f"(--timeout {self.timeout:g} s plus {self.start_grace:g} s to start)")
        else:
            lead = f"timeout after {flight.seconds():.1f} s (--timeout {self.timeout:g} s)"
        outcome = self._failed(flight, "timeout", lead)
        self._stop([flight])
        return outcome

    def run_cell(self, cell: Cell, progress: ProgressHook, shared: SharedModel | None = None) -> CellOutcome:
        token = uuid.uuid4().hex
        flight = _Flight(cell, time.monotonic())
        with self._lock:
            self._flights[token] = flight
        try:
            try:
                self._submit(token, flight, self.payload(cell, shared))
            except Exception as exc:  # noqa: BLE001 - the engine refused the submission: this cell's row says so
                return self._failed(flight, "error", f"the {self.engine} executor could not submit the cell: "
                                                     f"{describe_exception(exc)}")
            if flight.cancelled:  # interrupted while submitting
                self._stop([flight])
            told: tuple[Any, Any] = (None, None)
            while True:
                if flight.cancelled:
                    return self._failed(flight, "interrupted", INTERRUPTED)
                outcome = self._poll(flight)
                if outcome is not None:
                    return outcome
                if (flight.shown, flight.iteration) != told:
                    if flight.shown is not None and flight.shown != told[0]:
                        progress("phase", flight.shown)
                    if flight.iteration is not None and flight.iteration != told[1]:
                        progress("iteration", tuple(flight.iteration))
                    told = (flight.shown, flight.iteration)
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

    def interrupt(self) -> list[CellOutcome]:
        """Stop every cell in flight (Ctrl-C): their ``interrupted`` rows, each at the phase its worker reported."""
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


class DaskExecutor(_ClusterExecutor):
    """Runs cells on a Dask cluster: the scheduler at ``address``, or a local cluster of ``workers`` processes
    (one thread each) that it starts and closes. ``slots`` is the number of workers (start remote workers with
    ``--nthreads 1``: a timeout kills the whole worker process).

    A cell that outlives ``timeout`` (from when a worker began it) is cancelled and its worker process killed
    (the nanny starts a fresh one); a worker that dies makes an ``error`` row. The local cluster gives up on a
    cell at its first dead worker; a remote scheduler retries it on other workers as its ``allowed-failures``
    setting says (3 by default).
    """

    engine = "dask"

    def __init__(self, address: str | None = None, workers: int = 2, plugins: Sequence[str] = (),
                 timeout: float | None = None, registry: Registry | None = None, threads: int = 0,
                 connect_timeout: float = 10.0) -> None:
        distributed = _optional("distributed", "dask", "dask")
        super().__init__(plugins, timeout, registry)
        self.address = address or None
        self._cluster = None
        if self.address:
            try:
                self._client = distributed.Client(self.address, timeout=connect_timeout, set_as_default=False)
            except Exception as exc:  # noqa: BLE001 - any failure to connect is one line for the user
                raise ValueError(f"cannot reach the dask scheduler at {self.address} within {connect_timeout:g} s: "
                                 f"{describe_exception(exc)}") from None
            try:
                self._client.wait_for_workers(1, timeout=connect_timeout)
            except Exception:  # noqa: BLE001
                self._client.close()
                raise ValueError(f"the dask scheduler at {self.address} has no workers (waited "
                                 f"{connect_timeout:g} s)") from None
            self.slots = max(1, len(self._client.nthreads()))
            self.threads = threads  # 0: each worker keeps its own default (dask's nanny sets OMP_NUM_THREADS=1)
        else:
            import torch

            # The nanny starts workers with OMP_NUM_THREADS=1, so the policy of set_torch_threads is applied here,
            # from this process's torch default, and the workers get the resulting count.
            default = torch.get_num_threads()
            self.threads = threads or (max(1, default // workers) if workers > 1 else default)
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
                                 f"{describe_exception(exc)}") from None
            self.slots = workers
        self._topic = f"cnfbench-progress-{uuid.uuid4().hex}"
        self._client.subscribe_topic(self._topic, self._on_event)
        self._tokens: dict[str, _Flight] = {}

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        flight = self._tokens.get(message.get("token", ""))
        if flight is not None:
            flight.update(message)

    def _submit(self, token: str, flight: _Flight, payload: dict[str, Any]) -> None:
        self._tokens[token] = flight
        key = f"cnfbench-{flight.cell.cell_id}-{token[:8]}"
        future = self._client.submit(_dask_job, payload, self._topic, token, pure=False, key=key)
        future.add_done_callback(lambda _: flight.changed.set())
        flight.handle = future

    def _poll(self, flight: _Flight) -> CellOutcome | None:
        future = flight.handle
        status = future.status
        if status == "finished":
            try:
                return self._outcome(flight, future.result(timeout=30))
            except (TimeoutError, asyncio.TimeoutError):  # the result is being fetched or recomputed: ask again
                return None
            except Exception as exc:  # noqa: BLE001 - the connection to the scheduler broke
                return self._failed(flight, "error", f"the dask result could not be fetched: "
                                                     f"{describe_exception(exc)}")
        if status == "error":
            exc = future.exception()
            distributed = importlib.import_module("distributed")
            if isinstance(exc, distributed.KilledWorker):
                died = exc.allowed_failures + 1
                lost = f"{died} workers running the cell, the last" if died > 1 else "worker"
                lead = f"the worker process died: dask lost {lost} {exc.last_worker.address}"
                return self._failed(flight, "error", lead)
            return self._failed(flight, "error", f"the dask task failed: {describe_exception(exc)}")
        if status == "cancelled":
            return self._failed(flight, "interrupted" if flight.cancelled else "error",
                                INTERRUPTED if flight.cancelled else "the dask task was cancelled on the cluster")
        if self._client.status in ("closing", "closed"):
            return self._failed(flight, "error", f"the connection to the dask scheduler was lost "
                                                 f"(client {self._client.status})")
        return None

    def _stop(self, flights: list[_Flight]) -> None:
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
            self.interrupt()  # no cell outlives the executor on a remote cluster (ours closes with its workers)
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
    return one_line(lines[rules[1] - 1] if len(rules) >= 2 and rules[1] > rules[0] + 1 else str(exc), 300)


class SubmititExecutor(_ClusterExecutor):
    """Runs each cell as a submitit job: on SLURM (``cluster="slurm"``, through ``sbatch``) or as a local
    process (``cluster="local"``, for machines without SLURM). ``slots`` (``array_parallelism``) jobs run at
    once. A job's time limit is ``timeout_min``; on the local backend a cell that outlives ``timeout`` (from
    when its job began it) is also cancelled. The job folder must be visible to the nodes.
    """

    engine = "submitit"

    def __init__(self, cluster: str = "local", partition: str = "", gpus_per_task: int = 0, cpus_per_task: int = 0,
                 timeout_min: int = 0, array_parallelism: int = 0, mem_gb: float = 0.0, folder: str = "",
                 plugins: Sequence[str] = (), timeout: float | None = None,
                 registry: Registry | None = None) -> None:
        submitit = _optional("submitit", "submitit", "slurm")
        if cluster not in ("local", "slurm"):
            raise ValueError(f"submitit cluster must be local or slurm, got {cluster!r}")
        missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
        if cluster == "slurm" and missing:
            raise ValueError(f"submitit[cluster=slurm] needs SLURM's {' and '.join(missing)}, which "
                             f"{'is' if len(missing) == 1 else 'are'} not on PATH: run on a SLURM login node, "
                             "or use submitit[cluster=local]")
        super().__init__(plugins, timeout, registry)
        self.cluster = cluster
        self.enforce_timeout = cluster == "local"  # on SLURM the job's time limit is the only one
        self.poll_s = 0.25 if cluster == "local" else 2.0  # on SLURM each look reads files on a shared filesystem
        self.slots = array_parallelism or (2 if cluster == "local" else 16)
        self.timeout_min = timeout_min or (math.ceil(timeout / 60) + 2 if timeout else DEFAULT_JOB_MINUTES)
        if cpus_per_task:
            self.threads = cpus_per_task
        elif cluster == "local":
            import torch

            default = torch.get_num_threads()
            self.threads = max(1, default // self.slots) if self.slots > 1 else default
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

    def _submit(self, token: str, flight: _Flight, payload: dict[str, Any]) -> None:
        path = self._progress_path(token)
        with self._submitting:
            flight.handle = (self._executor.submit(_submitit_job, payload, str(path), self.timeout_min), path)

    def _poll(self, flight: _Flight) -> CellOutcome | None:
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
                return self._outcome(flight, job.result())
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

    def _stop(self, flights: list[_Flight]) -> None:
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
        self.interrupt()  # no job outlives the executor
        if self._owned is not None:
            shutil.rmtree(self._owned, ignore_errors=True)


def make_cluster_executor(name: str, params: dict[str, Any], plugins: Sequence[str], timeout: float | None,
                          registry: Registry) -> DaskExecutor | SubmititExecutor:
    """The cluster executor ``name`` with ``params`` (resolved against :data:`CLUSTER_EXECUTOR_PARAMS`);
    ``ValueError`` (one line) when its engine is not installed or cannot be reached."""
    if name == "dask":
        return DaskExecutor(params["address"] or None, params["workers"], plugins, timeout, registry,
                            threads=params["threads"], connect_timeout=params["connect_timeout"])
    if name == "submitit":
        return SubmititExecutor(**params, plugins=plugins, timeout=timeout, registry=registry)
    raise ValueError(f"unknown cluster executor {name!r}; known: {', '.join(CLUSTER_EXECUTOR_PARAMS)}")
