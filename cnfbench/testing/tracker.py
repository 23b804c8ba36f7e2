"""The conformance check of an experiment tracker (:func:`check_tracker`): it writes nothing until started, then
takes a cell's curve and row, each call within the tracker's timeout."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cnfbench.testing._checker import Checker, component_label, one_line, resolve_component

CHECK_CELL = {"cell_id": "0123456789abcdef", "label": "euler[steps=10] · seed 0",
              "description": "8gaussians | concatsquash | mle | euler[steps=10] | exact | seed 0",
              "spec": {"dataset": {"name": "8gaussians", "params": {}}, "seed": 0},
              "started": 1_700_000_000.0, "ended": 1_700_000_001.5}
"""The cell the check logs, as the harness describes one (:meth:`cnfbench.tracking.Trackers.cell_info`; its spec
shortened: a tracker must not depend on its keys)."""


def check_tracker(cls: type, params: Mapping[str, Any] | None = None, *, run_dir: str | Path | None = None) -> None:
    """Check a :class:`~cnfbench.contracts.Tracker` class built as ``cls(run_dir, **params)``.

    * metadata: ``name``, ``description``, ``params`` (``timeout``, the harness's, among them);
    * the constructor writes nothing (the run folder, which does not exist yet, is not created): a run whose
      other options are wrong must leave no trace;
    * after ``start``, a cell's curve (``log_iteration`` for three iterations, with a validation value at the
      last, a non-finite value left out as the runner does) and its ``done`` row, flagged invalid (``log_cell``),
      then a failed cell with no curve, and ``close``, all return without raising;
    * each call — ``start``, a cell's replay, ``close`` — returns within the tracker's ``timeout``
      (``params["timeout"]``, default 10 s; the constructor: at least 10 s), in a thread of its own as in a run:
      a call that takes longer would leave the tracker out of a run, and the check does not wait for it.
    """
    from cnfbench.contracts import Tracker
    from cnfbench.tracking import TrackerCallError, TrackerTimeout, TrackerWorker, build_timeout

    check = Checker(component_label("tracker", cls))
    values = resolve_component("tracker", cls, params, check)
    check.require(any(param.name == Tracker.TIMEOUT.name for param in cls.params),
                  "lost the parameter `timeout` every tracker has: keep the params the base class gives")
    timeout, arguments = cls.split_params(values)
    worker = TrackerWorker(cls.name, timeout)

    def call(what: str, function: Callable[[], Any]) -> Any:
        try:
            return worker.call(function)
        except TrackerTimeout:
            worker.stop()
            raise check.fail(f"{what} did not return within its timeout of {timeout:g} s: a run would leave the "
                             "tracker out (a slower store needs a larger timeout default)") from None
        except TrackerCallError as exc:
            worker.stop()
            raise check.fail(f"{what} raised {one_line(exc.__cause__ or exc)}") from exc

    with tempfile.TemporaryDirectory(prefix="cnfbench-tracker-check-") as scratch:
        folder = Path(run_dir) if run_dir is not None else Path(scratch) / "run"
        try:
            tracker = worker.call(lambda: cls(str(folder), **arguments), build_timeout(timeout))
        except TrackerTimeout as exc:
            worker.stop()
            raise check.fail(f"its constructor {exc}: a run would leave the tracker out") from None
        except TrackerCallError as exc:
            worker.stop()
            raise check.fail(f"could not be built with {dict(arguments)}: {one_line(exc.__cause__ or exc)}") \
                from None
        check.require(isinstance(tracker, Tracker), f"built an object that is not a Tracker: {tracker!r}")
        check.require(not folder.exists(), f"its constructor created the run folder {folder}; open the store in "
                                           "start(), so that a run rejected for another option writes nothing")
        tracker.call_timeout = timeout
        folder.mkdir(parents=True)
        steps = [{"loss": 3.0, "loss_nats": 3.0, "nfe_forward": 10.0, "iteration_s": 0.01, "elapsed_s": 0.01},
                 {"loss": 2.5, "loss_nats": 2.5, "nfe_forward": 10.0, "iteration_s": 0.01, "elapsed_s": 0.02},
                 {"loss": 2.0, "loss_nats": 2.0, "nfe_forward": 12.0, "iteration_s": 0.01, "elapsed_s": 0.03,
                  "val_nll": 2.2}]
        row = {"cell_id": CHECK_CELL["cell_id"], "status": "done", "reason": "", "nll": 2.1, "nll_ref": 2.15,
               "iterations_done": 3, "valid": False, "validity_reason": "the solver's density integrates to 1.210, "
               "not 1 (tolerance 0.03)", "mass": 1.21, "cell_time_s": 1.5}
        failed = {**CHECK_CELL, "cell_id": "fedcba9876543210", "label": "euler[steps=10] · seed 1"}

        def replay() -> None:
            for step, point in enumerate(steps, start=1):
                tracker.log_iteration(CHECK_CELL, step, point)
            tracker.log_cell(CHECK_CELL, row)

        call("start", lambda: tracker.start({"name": folder.name, "command": "cnfbench run", "config": {}}))
        call("logging a cell", replay)
        call("logging a failed cell", lambda: tracker.log_cell(failed, {
            "cell_id": failed["cell_id"], "status": "timeout", "reason": "timeout after 9.0 s",
            "iterations_done": math.nan, "valid": False, "validity_reason": ""}))
        call("close", tracker.close)
        worker.stop()
