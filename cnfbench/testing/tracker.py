"""The conformance check of an experiment tracker (:func:`check_tracker`): it writes nothing until started, then
takes a cell's curve and row."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cnfbench.testing._checker import Checker, component_label, one_line, resolve_component

CHECK_CELL = {"cell_id": "0123456789abcdef", "label": "8gaussians | concatsquash | mle | euler | exact | seed 0",
              "spec": {"dataset": {"name": "8gaussians", "params": {}}, "seed": 0}}
"""The cell the check logs (its spec shortened: a tracker must not depend on its keys)."""


def check_tracker(cls: type, params: Mapping[str, Any] | None = None, *, run_dir: str | Path | None = None) -> None:
    """Check a :class:`~cnfbench.contracts.Tracker` class built as ``cls(run_dir, **params)``.

    * metadata: ``name``, ``description``, ``params``;
    * the constructor writes nothing (the run folder, which does not exist yet, is not created): a run whose
      other options are wrong must leave no trace;
    * after ``start``, a cell's curve (``log_iteration`` for three iterations, with a validation value at the
      last, a non-finite value left out as the runner does) and its ``done`` row (``log_cell``), then a
      failed cell with no curve, and ``close``, all return without raising.
    """
    from cnfbench.contracts import Tracker

    check = Checker(component_label("tracker", cls))
    values = resolve_component("tracker", cls, params, check)
    with tempfile.TemporaryDirectory(prefix="cnfbench-tracker-check-") as scratch:
        folder = Path(run_dir) if run_dir is not None else Path(scratch) / "run"
        try:
            tracker = cls(str(folder), **values)
        except ValueError as exc:
            raise check.fail(f"could not be built with {dict(values)}: {one_line(exc)}") from None
        check.require(isinstance(tracker, Tracker), f"built an object that is not a Tracker: {tracker!r}")
        check.require(not folder.exists(), f"its constructor created the run folder {folder}; open the store in "
                                           "start(), so that a run rejected for another option writes nothing")
        folder.mkdir(parents=True)
        steps = [{"loss": 3.0, "loss_nats": 3.0, "nfe_forward": 10.0, "iteration_s": 0.01},
                 {"loss": 2.5, "loss_nats": 2.5, "nfe_forward": 10.0, "iteration_s": 0.01},
                 {"loss": 2.0, "loss_nats": 2.0, "nfe_forward": 12.0, "iteration_s": 0.01, "val_nll": 2.2}]
        row = {"cell_id": CHECK_CELL["cell_id"], "status": "done", "reason": "", "nll": 2.1, "nll_ref": 2.15,
               "iterations_done": 3, "valid": True, "mass": math.nan}
        failed = {**CHECK_CELL, "cell_id": "fedcba9876543210"}
        try:
            tracker.start({"name": folder.name, "command": "cnfbench run", "config": {}})
            for step, point in enumerate(steps, start=1):
                tracker.log_iteration(CHECK_CELL, step, point)
            tracker.log_cell(CHECK_CELL, row)
            tracker.log_cell(failed, {"cell_id": failed["cell_id"], "status": "timeout",
                                      "reason": "timeout after 9.0 s", "iterations_done": math.nan})
            tracker.close()
        except Exception as exc:  # noqa: BLE001 - the check's failure names what raised
            raise check.fail(f"raised while logging a cell: {one_line(exc)}") from exc
