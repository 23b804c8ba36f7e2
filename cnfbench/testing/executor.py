"""The conformance check of an executor (:func:`check_executor`): cells run anywhere give the numbers they give here."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from cnfbench.testing._checker import Checker, component_label, one_line, resolve_component

CHECK_CELL = {"dataset": "8gaussians[n_train=256,n_val=32,n_test=64]", "field": "concatsquash[hidden=8]",
              "solver": "euler[steps=2]", "iterations": 3, "batch_size": 32, "mass_grid": 8,
              "ref_solver": "dopri5[rtol=1e-6,atol=1e-6]"}
"""The tiny cells the check runs (two seeds), with the built-in components."""


def check_executor(cls: type, params: Mapping[str, Any] | None = None, *, timeout: float = 600.0) -> None:
    """Check an :class:`~cnfbench.contracts.Executor` class built as ``cls(context, **params)``.

    The executor gets the harness's own context (:class:`cnfbench.executor.HarnessContext`, with the
    built-in plugins and ``--timeout`` ``timeout``) and two tiny cells (two seeds of ``CHECK_CELL``):

    * metadata: ``name``, ``description``, ``params``; ``slots`` a positive int after construction;
    * ``run_cell`` returns a :class:`~cnfbench.contracts.CellOutcome` per cell, from ``slots`` threads at
      once: status ``done``, the cell's own id, and the NLLs and NFE of the same cell run in this process,
      exactly (where a cell runs never changes its numbers), with its model file and training curves;
    * a cell given another cell's model (:class:`~cnfbench.contracts.SharedModel`) loads it: its row says
      which cell trained it, it returns no model of its own, and its NLL is the trainer's;
    * progress messages, if any, are ``("phase", str)`` or ``("iteration", (done, loss, nfe))``;
    * ``cancel()`` with nothing in flight returns an empty list; ``close()`` returns.
    """
    from cnfbench.config import RunConfig, resolve_cells
    from cnfbench.contracts import CellOutcome, Executor, SharedModel
    from cnfbench.executor import HarnessContext, job_for
    from cnfbench.registry import load_registry
    from cnfbench.rows import TRAINING_COLUMNS

    check = Checker(component_label("executor", cls))
    values = resolve_component("executor", cls, params, check)
    registry = load_registry([])
    config = RunConfig(**{key: (value,) if key in ("dataset", "field", "solver") else value
                          for key, value in CHECK_CELL.items()}, seeds=2, device="cpu")
    cells = resolve_cells(config, registry)
    context = HarnessContext(registry, (), timeout)
    here = [context.outcome(job_for(cell), context.run_here(job_for(cell))) for cell in cells]
    for outcome in here:
        check.require(outcome.row["status"] == "done", lambda o=outcome: f"(the check's own cell failed here: "
                                                                         f"{o.row.get('reason')})")
    try:
        executor = cls(context, **values)
    except ValueError as exc:
        raise check.fail(f"could not be built with {dict(values)}: {one_line(exc)}") from None
    check.require(isinstance(executor, Executor), f"built an object that is not an Executor: {executor!r}")
    try:
        slots = executor.slots
        check.require(isinstance(slots, int) and slots >= 1, f"slots must be a positive int, got {slots!r}")
        heard: list[tuple[str, Any]] = []
        outcomes: dict[str, Any] = {}

        def run(cell: Any) -> None:
            try:
                outcomes[cell.cell_id] = executor.run_cell(job_for(cell), lambda kind, value: heard.append(
                    (kind, value)))
            except BaseException as exc:  # noqa: BLE001 - reported below as the check's failure
                outcomes[cell.cell_id] = exc

        threads = [threading.Thread(target=run, args=(cell,), daemon=True) for cell in cells[:slots]]
        threads += [threading.Thread(target=run, args=(cell,), daemon=True) for cell in cells[slots:]]
        for batch in (threads[:slots], threads[slots:]):
            for thread in batch:
                thread.start()
            for thread in batch:
                thread.join(timeout + 120)
        for cell, expected in zip(cells, here, strict=True):
            outcome = outcomes.get(cell.cell_id)
            check.require(isinstance(outcome, CellOutcome),
                          lambda o=outcome: f"run_cell returned or raised {o!r}; expected a CellOutcome")
            row = outcome.row
            check.require(row.get("cell_id") == cell.cell_id and row.get("status") == "done",
                          lambda r=row, c=cell: f"a healthy cell ended {r.get('status')!r} ({r.get('reason')}), id "
                                        f"{r.get('cell_id')!r}; expected done, {c.cell_id!r}")
            for column in ("nll", "nll_ref", "nfe_test", "nfe_forward"):
                check.require(row.get(column) == expected.row.get(column),
                              lambda c=column, r=row, e=expected: f"{c} is {r.get(c)!r} but the same cell gives "
                                                                  f"{e.row.get(c)!r} in this process")
            check.require(bool(outcome.model) and bool(outcome.curves),
                          "a finished cell came back without its model file or its training curves")
        for kind, value in heard:
            check.require((kind == "phase" and isinstance(value, str))
                          or (kind == "iteration" and len(value) in (2, 3)),
                          f"reported the progress message {(kind, value)!r}; expected ('phase', name) or "
                          "('iteration', (done, loss, nfe))")
        trainer = outcomes[cells[0].cell_id]
        shared = SharedModel(cells[0].cell_id, trainer.model,
                             {column: trainer.row.get(column) for column in TRAINING_COLUMNS})
        loaded = executor.run_cell(job_for(cells[0], shared), lambda kind, value: None)
        check.require(loaded.row.get("status") == "done" and loaded.row.get("trained_in") == cells[0].cell_id
                      and loaded.model is None and loaded.row.get("nll") == trainer.row.get("nll"),
                      lambda: f"a cell given another cell's model did not evaluate it: status "
                              f"{loaded.row.get('status')!r}, trained_in {loaded.row.get('trained_in')!r}, "
                              f"nll {loaded.row.get('nll')!r} (trainer's {trainer.row.get('nll')!r})")
        stopped = executor.cancel()
        check.require(stopped == [], f"cancel() with nothing in flight returned {stopped!r}; expected []")
    finally:
        executor.close()
