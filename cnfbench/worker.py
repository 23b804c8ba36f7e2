"""The worker side of every executor: one public function, :func:`run_cell_payload`, that runs a cell from
plain data and answers with plain data, so that any engine (a local process, a Dask worker, a SLURM job, an
engine a plugin brings) runs cells the same way.

The payload (built by the harness: :meth:`cnfbench.contracts.ExecutorContext.payload`) carries the cell as
JSON, the names and versions of the plugins the main process loaded, the source text of every ``.py`` plugin
(so that a remote node needs no shared path: the worker writes them to a private folder and loads them from
there), the torch-thread policy, ``$CNFBENCH_DATA`` (``--data-dir``, which must name a folder the workers can
read) and, for a cell that loads another cell's trained model, that model's bytes. A worker whose plugins or
plugin versions differ from the main process's refuses the cell: the row is an ``error`` whose reason says
which plugin differs. Plugins named as modules, and cnfbench itself, must be installed on the workers; only
``.py`` plugin files travel.

While a cell runs, the worker reports its phase (and training iteration): at once when the cell enters a
phase, otherwise from a background thread at most every :data:`REPORT_INTERVAL_S`, so that a cell killed
at its timeout, or lost with its worker, still gets a reason that says where it was.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cnfbench.cells import Cell
from cnfbench.compiling import CompileFallbackWarning
from cnfbench.contracts import DATA_ROOT_VARIABLE, ORPHANED_EXIT, CellInterrupted, CellOutcome, SharedModel
from cnfbench.dynamics import PhaseTracker, unpack_phase
from cnfbench.execute import train_and_evaluate
from cnfbench.messages import describe_exception, one_line
from cnfbench.plugin_manager import AUTOLOAD_ENV, PLUGINS_ENV, create_plugin_manager
from cnfbench.registry import Registry, load_registry
from cnfbench.rows import failed_outcome, failure_reason
from cnfbench.threads import OwnLoad, ThreadDecision, decide_threads, load_average, usable_cpus

__all__ = ["HARD_TIMEOUT_EXIT", "HARD_TIMEOUT_GRACE_S", "REPORT_INTERVAL_S", "PluginShipment", "TimeLimit",
           "apply_thread_policy", "plugin_shipment", "run_cell_payload"]

REPORT_INTERVAL_S = 0.5
"""Seconds between a worker's progress reports (only when something changed)."""

HARD_TIMEOUT_GRACE_S = 30.0
"""Seconds past ``--timeout`` after which a worker ends its own process (exit code :data:`HARD_TIMEOUT_EXIT`),
should the main process that enforces the timeout be gone."""
HARD_TIMEOUT_EXIT = 124


class TimeLimit(Protocol):
    """An engine's own time limit on a job (SLURM's ``--time``): when its signal stopped the cell
    (:class:`~cnfbench.contracts.CellInterrupted` raised inside it), ``reached`` is true and the row becomes
    ``timeout`` after ``minutes``."""

    reached: bool
    minutes: float


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


_LOCK = threading.Lock()
_REGISTRIES: dict[tuple[Any, ...], tuple[Registry, dict[str, str], dict[str, str]]] = {}
_THREADS: dict[str, Any] = {}
_OWN_LOAD = OwnLoad()


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


def apply_thread_policy(workers: int, threads: int, cap: int = 0) -> ThreadDecision:
    """Set this process's torch threads for its next cell (:func:`cnfbench.threads.decide_threads`: ``threads``
    when given, else this worker's share of the CPUs it may use among ``workers`` cells at once on the machine,
    fewer on a busy machine, at most ``cap``) and return the decision. The inter-op pool is sized once, at
    the first cell (torch allows it only before any inter-op work)."""
    import torch

    with _LOCK:
        default = _THREADS.setdefault("default", torch.get_num_threads())
        decision = decide_threads(threads, workers, usable_cpus(), load_average(), _OWN_LOAD.estimate(), default,
                                  cap)
        torch.set_num_threads(decision.threads)
        if "interop" not in _THREADS:
            _THREADS["interop"] = decision.threads
            with contextlib.suppress(RuntimeError):  # this process already ran inter-op work (inline executor)
                torch.set_num_interop_threads(decision.threads)
        _OWN_LOAD.running(decision.threads)
    return decision


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


def _shared_model(data: dict[str, Any] | None) -> SharedModel | None:
    if not data:
        return None
    model = data.get("model")
    if model is None:
        model = bytes.fromhex(data["model_hex"])
    return SharedModel(data["trainer_id"], bytes(model), dict(data["training"]))


MAIN_WATCH_INTERVAL_S = 1.0
"""Seconds between a worker's looks at its main process (when both run on one machine)."""
_WATCHED: set[int] = set()
"""The main processes this worker process watches (one thread each)."""


def _process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # it exists, owned by someone else
            return True
        return True


def _watch_main(main: Any) -> None:
    """End this worker's process when the run's main process dies, where both run on one machine and the engine
    did not make this worker its child (submitit's local jobs, a Dask worker beside its client): a thread looks
    every :data:`MAIN_WATCH_INTERVAL_S`. Once per process; never in the main process itself."""
    if not isinstance(main, dict) or main.get("host") != socket.gethostname():
        return
    pid = main.get("pid")
    with _LOCK:
        if not isinstance(pid, int) or pid == os.getpid() or pid in _WATCHED:
            return
        _WATCHED.add(pid)

    def watch() -> None:
        while _process_alive(pid):
            time.sleep(MAIN_WATCH_INTERVAL_S)
        with contextlib.suppress(Exception):
            print(f"cnfbench worker {os.getpid()}: its main process {pid} is gone; ending", file=sys.stderr,
                  flush=True)
        os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, name="cnfbench-main-watchdog", daemon=True).start()


def _end_process(cell_id: str, seconds: float) -> None:
    """The cell outlived its hard limit and nobody stopped it (its main process is gone): end this worker."""
    with contextlib.suppress(Exception):
        print(f"cnfbench worker {os.getpid()}: cell {cell_id} ran past its hard limit of {seconds:g} s "
              f"(--timeout plus {HARD_TIMEOUT_GRACE_S:g} s); ending the worker", file=sys.stderr, flush=True)
    os._exit(HARD_TIMEOUT_EXIT)


def _plain(outcome: CellOutcome) -> dict[str, Any]:
    """An outcome as plain data (row, curves and density through JSON, exactly as the process executor sends them)."""
    row, curves, density = json.loads(json.dumps([outcome.row, outcome.curves, outcome.density], allow_nan=True))
    return {"row": row, "curves": curves, "density": density, "model": outcome.model, "host": socket.gethostname()}


def run_cell_payload(payload: dict[str, Any], report: Callable[[dict[str, Any]], None] | None = None,
                     time_limit: TimeLimit | None = None, scratch: str | None = None,
                     registry: Registry | None = None) -> dict[str, Any]:
    """Run one cell on a worker of any engine; never raises for a failing cell.

    ``payload``: ``cell`` (:meth:`Cell.to_json`), ``plugins`` (the main process's user plugins in load order),
    ``plugin_sources`` (``{plugin: source text}`` of its ``.py`` plugins, written to a private folder here),
    ``versions`` (``{plugin: version}`` of every plugin the main process loaded), ``autoload``, ``shared``
    (``{"trainer_id", "training", "model"}`` bytes, or ``"model_hex"``; or None), and the torch-thread
    policy of :func:`apply_thread_policy` (``workers``: cells at once on this machine, 0 when unknown;
    ``threads``: per worker, 0 for the default policy; ``thread_cap``: the user's ``OMP_NUM_THREADS``, 0 for
    none), and ``data_root`` (the main process's ``$CNFBENCH_DATA``, set here too: the folder must exist on the
    worker's machine). The row's ``torch_threads_reason`` says how its thread count was chosen; when a busy
    machine made it fewer than the worker's share, the first progress message carries a ``note`` saying so.

    Returns ``{"row", "curves", "density", "model", "host"}`` (plain, picklable data); a worker whose plugins
    or plugin versions differ from the main process's refuses the cell with an ``error`` row. Only a payload
    whose cell cannot be read returns ``{"row": None, "error": reason}``. ``report`` hears progress messages
    (``where``: the packed phase, ``iteration``: ``[done, loss, nfe]``, ``shown``: the display's phase,
    ``note``: a line for the user, or None); ``hard_timeout_s`` (when given) ends this worker's process should the
    cell outlive it — the engine's main process, which enforces ``--timeout``, may be gone; ``main``
    (``{"host", "pid"}`` of the run's main process): a worker on the same machine ends when it dies;
    ``scratch`` is a folder for the shipped plugin files (an engine's own scratch space, which it cleans up even
    after a worker was killed; the system's temporary folder when None). ``registry``: run with these plugins
    instead of the payload's (a cell run in the main process, which loaded them already). ``time_limit``: the
    engine's own limit, whose signal raised :class:`~cnfbench.contracts.CellInterrupted` inside the cell.
    """
    host = socket.gethostname()
    try:
        cell = Cell.from_json(payload["cell"])
    except Exception as exc:  # noqa: BLE001 - a cnfbench of another version: said in one line
        return {"row": None, "error": f"the worker on {host} could not read the cell: {describe_exception(exc)}",
                "host": host}
    decision = apply_thread_policy(int(payload.get("workers", 1) or 0), int(payload.get("threads") or 0),
                                   int(payload.get("thread_cap") or 0))
    reporter = _Reporter(report, {"host": host, "pid": os.getpid(), "note": decision.note or None}) \
        if report is not None else None
    if reporter is not None:
        reporter.start()

    _watch_main(payload.get("main"))
    hard_limit = payload.get("hard_timeout_s")
    watchdog = threading.Timer(float(hard_limit), _end_process, (cell.cell_id, float(hard_limit))) \
        if hard_limit else None
    if watchdog is not None:
        watchdog.daemon = True
        watchdog.start()

    def plain(outcome: CellOutcome) -> dict[str, Any]:
        outcome.row["torch_threads_reason"] = decision.reason
        return _plain(outcome)

    try:
        if payload.get("data_root"):
            os.environ[DATA_ROOT_VARIABLE] = payload["data_root"]
        if registry is None:
            try:
                registry, versions, errors = _worker_registry(payload, scratch)
            except Exception as exc:  # noqa: BLE001 - a plugin that does not load here
                return plain(failed_outcome(cell, "error", f"the worker on {host} could not load the plugins: "
                                             f"{describe_exception(exc)}", 0.0, "start"))
            expected = payload.get("versions")
            differences = "" if expected is None else _plugin_differences(expected, versions, errors)
        else:
            differences = ""
        if differences:
            return plain(failed_outcome(cell, "error", f"the worker on {host} refused the cell: {differences}",
                                         0.0, "start", registry=registry))
        tracker = PhaseTracker(reporter)

        def on_iteration(done: int, loss: float, nfe: int) -> None:
            if reporter is not None:
                reporter.iteration = [done, loss, nfe]

        def on_phase(name: str) -> None:
            if reporter is not None:
                reporter.shown = name

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CompileFallbackWarning)  # the row's compile_note; the runner says it
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
        return plain(outcome)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        _OWN_LOAD.running(0)
        if reporter is not None:
            reporter.stop()
            reporter.flush()
