"""The run's experiment trackers (``--tracker``): built once, told of every finished cell, never failing or
holding up one.

:func:`resolve_trackers` resolves the ``--tracker`` selectors against the registry (a bad name or parameter is the
usual one-line error). :class:`Trackers` gives each tracker a :class:`TrackerWorker` — a daemon thread of its
own that runs the tracker's calls one at a time, in order — and waits at most the tracker's ``timeout``
(:data:`cnfbench.contracts.Tracker.TIMEOUT`) for each: ``start``, each finished cell's replay (its training
curve iteration by iteration, then its row), ``close``, and its construction (at least the default 10 s, see
:func:`build_timeout`; a missing extra is a one-line error). A call that raises, or does not return in time,
is one warning naming the tracker, what it was doing and why; that tracker is never called again and the
sweep goes on at once. An abandoned call goes on in its thread, which never keeps the process from exiting.

A tracker names a cell by its configuration label (:func:`cnfbench.labels.cell_labels` over the run's cells: the
axes that vary, in short form, and the seed), and places its points in time: the cell's ``started`` and ``ended``
wall-clock times (seconds since the epoch) come with it, ``ended`` being when its outcome reached the main process
and ``started`` that less the row's ``cell_time_s``, so that an iteration's wall time is ``started`` plus its
curve's ``elapsed_s`` (the training time before it, as the report's loss-by-time plot draws it).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from cnfbench.cells import Cell
from cnfbench.contracts import Tracker
from cnfbench.labels import cell_labels, shorten
from cnfbench.messages import describe_exception
from cnfbench.params import parse_selector_list
from cnfbench.registry import Registry

CURVE_KEYS_SKIPPED = ("cell_id", "iteration")
"""Curve columns that are not values to log."""

LABEL_WIDTH = 200
"""Longest label a tracker is given (MLflow's run names take 250 characters, a folder name 255 bytes); a longer
one is shortened at a token boundary."""

T = TypeVar("T")


def resolve_trackers(registry: Registry, selectors: Sequence[str]) -> list[tuple[type[Tracker], dict[str, Any]]]:
    """Each ``--tracker`` selector's class and resolved parameters (``timeout`` included); :class:`~cnfbench.params.
    ParamError` for a bad one."""
    if not selectors:
        return []
    resolved = []
    for selection in parse_selector_list(list(selectors), "--tracker"):
        spec = registry.resolve("tracker", selection)
        resolved.append((registry.get("tracker", spec.name).cls, dict(spec.params)))
    return resolved


def build_timeout(timeout: float) -> float:
    """How long a tracker's constructor may take: its ``timeout``, but never less than the default, because a
    constructor imports the tracker's library (MLflow: about 2 s) and talks to no store; a short ``timeout``
    is for the store's calls."""
    return max(timeout, float(Tracker.TIMEOUT.default))


class TrackerCallError(Exception):
    """A call to a tracker failed: it raised (the exception is the ``__cause__``) or did not return in time."""


class TrackerTimeout(TrackerCallError):
    """A call to a tracker did not return within its timeout; it goes on, abandoned, in the tracker's thread."""


@dataclass(eq=False)
class _Call(Generic[T]):
    """One call handed to a :class:`TrackerWorker` and, once it has run, its result or exception."""

    function: Callable[[], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: T | None = None
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.function()
        except BaseException as exc:  # noqa: BLE001 - even SystemExit from a tracker is the tracker's failure
            self.error = exc
        finally:
            self.done.set()


class TrackerWorker:
    """A daemon thread that runs one tracker's calls one at a time, in the order given; :meth:`call` waits at
    most ``timeout`` seconds for each."""

    def __init__(self, label: str, timeout: float) -> None:
        self.label = label
        self.timeout = timeout
        self._calls: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"cnfbench-tracker-{label}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            call.run()

    def call(self, function: Callable[[], T], timeout: float | None = None) -> T:
        """``function()`` run on the thread, after the calls before it; :class:`TrackerTimeout` when it has not
        returned within ``timeout`` (default: the worker's; the call is then abandoned), :class:`TrackerCallError`
        from what it raised."""
        limit = self.timeout if timeout is None else timeout
        pending: _Call[T] = _Call(function)
        self._calls.put(pending)
        if not pending.done.wait(limit):
            raise TrackerTimeout(f"did not answer within {limit:g} s")
        if pending.error is not None:
            raise TrackerCallError(describe_exception(pending.error, 300)) from pending.error
        return cast(T, pending.result)

    def stop(self) -> None:
        """End the thread once the calls already given have run (at once if it is idle)."""
        self._calls.put(None)


@dataclass
class _Active:
    """A tracker that is still being called, with its worker."""

    tracker: Tracker
    worker: TrackerWorker


class Trackers:
    """The run's trackers, each behind its own :class:`TrackerWorker`: what one raises, or a call that does not
    return within its timeout, is a warning (through ``warn``), and that tracker is left out."""

    def __init__(self, chosen: Sequence[tuple[type[Tracker], dict[str, Any]]], run_dir: str,
                 warn: Callable[[str], None]) -> None:
        """Build each ``(class, resolved parameters)`` of ``chosen`` in its own thread; a ``ValueError`` from a
        constructor (a missing extra, a bad setting) is raised for the caller's one-line error."""
        self.warn = warn
        self.active: list[_Active] = []
        self.labels: dict[str, str] = {}
        for cls, params in chosen:
            timeout, arguments = cls.split_params(params)
            worker = TrackerWorker(cls.name, timeout)

            def build(cls: type[Tracker] = cls, arguments: dict[str, Any] = arguments,
                      timeout: float = timeout) -> Tracker:
                tracker = cls(run_dir, **arguments)
                tracker.call_timeout = timeout
                return tracker

            try:
                self.active.append(_Active(worker.call(build, build_timeout(timeout)), worker))
            except TrackerCallError as exc:
                worker.stop()
                if isinstance(exc.__cause__, ValueError):
                    raise exc.__cause__ from None
                self._left_out(cls.name, "construction", exc)

    def _left_out(self, name: str, what: str, exc: TrackerCallError) -> None:
        hint = f" ({name}[timeout=SECONDS] waits longer)" if isinstance(exc, TrackerTimeout) else ""
        self.warn(f"warning: tracker {name!r} failed in {what} and is left out for the rest of the run: "
                  f"{exc}{hint}")

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for entry in list(self.active):
            try:
                entry.worker.call(lambda tracker=entry.tracker: call(tracker))
            except TrackerCallError as exc:
                self.active.remove(entry)
                entry.worker.stop()
                self._left_out(entry.tracker.name, what, exc)

    def start(self, run: dict[str, Any], cells: Sequence[Cell] = ()) -> None:
        """Open every tracker's store for the run (``name``, ``command``, ``config``); ``cells``, the run's cells
        (those already done included), give each cell its configuration label."""
        if self.active and cells:
            self.labels = {cell_id: shorten(label, LABEL_WIDTH) for cell_id, label in cell_labels(cells).items()}
        self._each("start", lambda tracker: tracker.start(run))

    def cell_info(self, cell: Cell, curve: list[dict[str, Any]], row: dict[str, Any],
                  ended: float | None = None) -> dict[str, Any]:
        """What a tracker is told of ``cell``: ``cell_id``, ``label`` (its configuration label; its full
        description when the run did not give its cells), ``description``, ``spec``, and ``started`` and ``ended``
        (seconds since the epoch; ``ended`` now unless given)."""
        ended = time.time() if ended is None else ended
        elapsed = [float(point["elapsed_s"]) for point in curve if _finite(point.get("elapsed_s"))]
        seconds = float(row["cell_time_s"]) if _finite(row.get("cell_time_s")) else math.nan
        # a cell took at least its training time: a row without its wall-clock ends with its last point
        took = max(seconds if seconds >= 0 else 0.0, max(elapsed, default=0.0))
        return {"cell_id": cell.cell_id, "label": self.labels.get(cell.cell_id) or cell.describe(),
                "description": cell.describe(), "spec": cell.to_json(), "started": ended - took, "ended": ended}

    def cell_finished(self, cell: Cell, curve: list[dict[str, Any]], row: dict[str, Any]) -> None:
        """Replay ``cell``'s training ``curve`` (its rows, in iteration order), then its ``row``: one call per
        tracker, bounded by its timeout."""
        if not self.active:
            return
        info = self.cell_info(cell, curve, row)
        steps = []
        for point in sorted(curve, key=lambda p: p.get("iteration", 0)):
            values = {key: float(value) for key, value in point.items()
                      if key not in CURVE_KEYS_SKIPPED and _finite(value)}
            steps.append((int(point.get("iteration", 0)), values))

        def replay(tracker: Tracker) -> None:
            for step, values in steps:
                tracker.log_iteration(info, step, values)
            tracker.log_cell(info, row)

        self._each(f"the cell {cell.cell_id}", replay)

    def close(self) -> None:
        """Close every tracker still in use and end the threads; no tracker is called after this."""
        self._each("close", lambda tracker: tracker.close())
        for entry in self.active:
            entry.worker.stop()
        self.active.clear()


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (not a flag)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
