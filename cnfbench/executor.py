"""The harness side of the executor family: the context every executor gets, and the executor a run chose.

:class:`HarnessContext` implements :class:`~cnfbench.contracts.ExecutorContext`: it turns a
:class:`~cnfbench.cells.Cell` into the plain job an executor sees, builds the payload of
:func:`cnfbench.worker.run_cell_payload` (the cell, the plugins shipped by content, their versions), reads
what a worker returned, and writes the rows of cells that did not finish. :func:`make_executor` resolves
``--executor NAME[params]`` against the registry, like any component, and builds it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from cnfbench.cells import Cell
from cnfbench.contracts import DATA_ROOT_VARIABLE, CellJob, CellOutcome, Executor, SharedModel
from cnfbench.dynamics import unpack_phase
from cnfbench.messages import one_line
from cnfbench.params import ParamError, parse_selector_list
from cnfbench.registry import Registry
from cnfbench.rows import failed_outcome
from cnfbench.threads import thread_cap
from cnfbench.worker import HARD_TIMEOUT_GRACE_S, PluginShipment, plugin_shipment, run_cell_payload

__all__ = ["HarnessContext", "executor_label", "job_for", "make_executor", "resolve_executor_spec"]


def job_for(cell: Cell, shared: SharedModel | None = None) -> CellJob:
    """The plain job an executor runs for ``cell`` (loading ``shared`` instead of training, when given)."""
    return CellJob(cell.cell_id, cell.to_json(), cell.describe(), shared)


class HarnessContext:
    """What the harness gives the run's executor (see :class:`~cnfbench.contracts.ExecutorContext`)."""

    def __init__(self, registry: Registry, plugins: Sequence[str] = (), timeout: float | None = None) -> None:
        self.registry = registry
        self.plugins = tuple(plugins)
        self.timeout = timeout
        self._shipment: PluginShipment | None = None

    @property
    def shipment(self) -> PluginShipment:
        if self._shipment is None:
            self._shipment = plugin_shipment(self.plugins, self.registry)
        return self._shipment

    def payload(self, job: CellJob, workers: int = 1, threads: int = 0) -> dict[str, Any]:
        shared = job.shared
        return {"cell": job.cell, **self.shipment.payload(), "workers": workers, "threads": threads,
                "thread_cap": thread_cap(),
                "hard_timeout_s": self.timeout + HARD_TIMEOUT_GRACE_S if self.timeout is not None else None,
                "main": {"host": socket.gethostname(), "pid": os.getpid()},
                "data_root": os.environ.get(DATA_ROOT_VARIABLE) or None,
                "shared": shared and {"trainer_id": shared.trainer_id, "training": shared.training,
                                      "model": shared.model}}

    def outcome(self, job: CellJob, result: dict[str, Any]) -> CellOutcome:
        if result.get("row") is None:
            return self.failed(job, "error", one_line(result.get("error") or "the worker returned no row"), 0.0)
        return CellOutcome(result["row"], result.get("curves") or [], result.get("density"), result.get("model"))

    def failed(self, job: CellJob, status: str, lead: str, seconds: float, where: int | None = None
               ) -> CellOutcome:
        phase, iteration = unpack_phase(where) if where is not None else ("start", 0)
        return failed_outcome(Cell.from_json(job.cell), status, lead, seconds, phase, iteration, self.registry)

    def run_here(self, job: CellJob, report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        payload = {**self.payload(job), "hard_timeout_s": None}  # this is the main process: never ended from inside
        return run_cell_payload(payload, report, registry=self.registry)


def resolve_executor_spec(registry: Registry, text: str) -> tuple[type[Executor], dict[str, Any]]:
    """The executor class and resolved parameters of ``--executor`` ``text``; :class:`ParamError` (one line,
    with the known executors and a "did you mean") when the name or a parameter is wrong."""
    selections = parse_selector_list(text, "--executor")
    if len(selections) != 1:
        raise ParamError(f"--executor takes exactly one executor, got {len(selections)}")
    resolved = registry.resolve("executor", selections[0])
    return registry.get("executor", resolved.name).cls, dict(resolved.params)


def executor_label(name: str, params: dict[str, Any]) -> str:
    """``name[key=value,...]`` as the rows' ``executor`` column records it."""
    return f"{name}[{','.join(f'{key}={value}' for key, value in params.items())}]" if params else name


def make_executor(registry: Registry, text: str, plugins: Sequence[str] = (), timeout: float | None = None
                  ) -> tuple[Executor, HarnessContext, str]:
    """The executor ``text`` chooses, built with its context, and its label; :class:`ParamError` for a bad
    name or parameter, ``ValueError`` (one line) when its engine is missing or unreachable."""
    cls, params = resolve_executor_spec(registry, text)
    context = HarnessContext(registry, plugins, timeout)
    return cls(context, **params), context, executor_label(cls.name, params)
