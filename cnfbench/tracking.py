"""The run's experiment trackers (``--tracker``): built once, told of every finished cell, never failing one.

:class:`Trackers` resolves the ``--tracker`` selectors against the registry (a bad name or parameter is the
usual one-line error), builds each tracker (a missing extra is a one-line error too; any other failure to
start — a store that cannot be reached — is a warning, and the run goes on without that tracker), and, when
a cell's outcome reaches the main process, replays its training curve iteration by iteration, then its
row. A tracker that raises is warned about once and left out for the rest of the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from cnfbench.cells import Cell
from cnfbench.contracts import Tracker
from cnfbench.messages import describe_exception
from cnfbench.params import parse_selector_list
from cnfbench.registry import Registry

CURVE_KEYS_SKIPPED = ("cell_id", "iteration")
"""Curve columns that are not values to log."""


def resolve_trackers(registry: Registry, selectors: Sequence[str]) -> list[tuple[type[Tracker], dict[str, Any]]]:
    """Each ``--tracker`` selector's class and resolved parameters; :class:`~cnfbench.params.ParamError` for a
    bad one."""
    if not selectors:
        return []
    resolved = []
    for selection in parse_selector_list(list(selectors), "--tracker"):
        spec = registry.resolve("tracker", selection)
        resolved.append((registry.get("tracker", spec.name).cls, dict(spec.params)))
    return resolved


class Trackers:
    """The run's trackers, each guarded: what one raises is a warning (through ``warn``), then it is left out."""

    def __init__(self, chosen: Sequence[tuple[type[Tracker], dict[str, Any]]], run_dir: str,
                 warn: Callable[[str], None]) -> None:
        self.warn = warn
        self.active: list[Tracker] = []
        for cls, params in chosen:
            try:
                self.active.append(cls(run_dir, **params))
            except ValueError:
                raise  # a missing extra or a bad setting: the caller's one-line error
            except Exception as exc:  # noqa: BLE001 - a tracker that cannot start is a warning, not a failed run
                warn(f"warning: tracker {cls.name!r} could not start and is left out: {describe_exception(exc)}")

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.active):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - a tracker never fails a cell or the sweep
                self.active.remove(tracker)
                self.warn(f"warning: tracker {tracker.name!r} failed in {what} and is left out for the rest of "
                          f"the run: {describe_exception(exc, 300)}")

    def start(self, run: dict[str, Any]) -> None:
        self._each("start", lambda tracker: tracker.start(run))

    def cell_finished(self, cell: Cell, curve: list[dict[str, Any]], row: dict[str, Any]) -> None:
        """Replay ``cell``'s training ``curve`` (its rows, in iteration order), then its ``row``."""
        if not self.active:
            return
        info = {"cell_id": cell.cell_id, "label": cell.describe(), "spec": cell.to_json()}
        steps = []
        for point in sorted(curve, key=lambda p: p.get("iteration", 0)):
            values = {key: float(value) for key, value in point.items() if key not in CURVE_KEYS_SKIPPED
                      and isinstance(value, (int, float)) and not isinstance(value, bool)
                      and math.isfinite(float(value))}
            steps.append((int(point.get("iteration", 0)), values))

        def replay(tracker: Tracker) -> None:
            for step, values in steps:
                tracker.log_iteration(info, step, values)
            tracker.log_cell(info, row)

        self._each(f"the cell {cell.cell_id}", replay)

    def close(self) -> None:
        self._each("close", lambda tracker: tracker.close())


