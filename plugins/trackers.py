"""Built-in experiment trackers: ``mlflow[uri=...,experiment=...]`` and ``tensorboard[logdir=...]``.

* ``mlflow`` logs each cell as one MLflow run of the experiment ``experiment`` (default: the run folder's
  name): the cell's components as parameters, its id and label as tags, every training iteration's curve
  values as metrics at that step, and the row's final numbers (``final/nll_ref``, ...) once. Without a
  ``uri`` the store is ``mlflow.db`` (SQLite) in the run folder: MLflow 3 refuses its plain-file store
  unless told otherwise, and a SQLite file is as local and as portable. ``pip install cnfbench[mlflow]``.
* ``tensorboard`` writes one event file per cell under ``tensorboard/<cell_id>/`` in the run folder
  (``logdir``: elsewhere): the curve values as scalars ``train/<name>`` at each iteration, the row's final
  numbers as ``final/<name>``, and the cell's spec as text. ``tensorboard --logdir results/RUN/tensorboard``
  shows them. ``pip install cnfbench[tensorboard]``.

Both open their store in ``start``, so that a store that cannot be reached is a warning and the run goes on. Like
every tracker they take ``timeout`` (seconds, default 10; the harness's): ``mlflow`` also bounds each of MLflow's HTTP
requests by it, without retries, and checks that a SQLite store can be written before MLflow's own ~100 s
of retries.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from cnfbench.contracts import Tracker, optional_import
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param

BATCH = 900
"""Metrics per MLflow ``log_batch`` call (its limit is 1,000)."""


def _final_numbers(row: dict[str, Any]) -> dict[str, float]:
    """The row's finite numbers (not its identity or budget integers), by column name."""
    skipped = {"seed", "iterations", "batch_size", "lr", "max_nfe", "time_budget_s", "val_every", "eval_batch_size",
               "mass_grid", "concurrency", "torch_threads"}
    return {key: float(value) for key, value in row.items() if key not in skipped
            and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))}


_HTTP_SETTINGS: dict[str, str] = {}
"""The MLflow HTTP settings this module put in the environment, by variable."""


def _bound_http_requests(timeout: float) -> None:
    """Make each MLflow HTTP request one attempt of at most ``timeout`` seconds (MLflow's defaults: 7 retries
    with a doubling back-off, 120 s each), so that a request to a server that does not answer ends about when
    cnfbench stops waiting for it. MLflow reads them from the environment only; a value the user set there
    is left alone."""
    for variable, value in (("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(timeout)))),
                            ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")):
        if os.environ.get(variable) in (None, _HTTP_SETTINGS.get(variable)):
            os.environ[variable] = _HTTP_SETTINGS[variable] = value


def _check_sqlite_store(uri: str, timeout: float) -> None:
    """Raise at once, naming the file, when the SQLite store at ``uri`` cannot be opened, read and written.

    MLflow tries to open a store ten times with a doubling back-off (0.1 s to 51 s, 101 s in all) before it gives
    up: a store in a read-only folder, or a file that is no database, would otherwise fail only after that.
    """
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        return
    path = Path(database).expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does
        connection = sqlite3.connect(f"{path.as_uri()}?mode=rwc", uri=True, timeout=timeout)
        try:
            connection.execute("PRAGMA schema_version").fetchall()  # opens and reads the file
        finally:
            connection.close()
    except (OSError, sqlite3.Error) as exc:
        raise RuntimeError(f"cannot open the SQLite store {path}: {type(exc).__name__}: {exc}") from None
    # SQLite opens a file it may not write read-only, without a word; its journal goes beside it
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise RuntimeError(f"cannot write the SQLite store {path}: it or its folder is read-only")


class MLflowTracker(Tracker):
    name = "mlflow"
    description = "one MLflow run per cell: parameters, curve metrics per iteration, final numbers"
    params = (
        Param("uri", "str", "", "tracking URI, e.g. http://host:5000 (empty: sqlite:///<run folder>/mlflow.db)"),
        Param("experiment", "str", "", "experiment name (empty: the run folder's name)"),
    )

    def __init__(self, run_dir: str, uri: str = "", experiment: str = "") -> None:
        super().__init__(run_dir, uri=uri, experiment=experiment)
        self._mlflow = optional_import("mlflow", "the mlflow tracker", "mlflow")
        self.uri = uri or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"
        self.experiment = experiment or Path(run_dir).name
        self._client: Any = None
        self._experiment_id = ""
        self._runs: dict[str, str] = {}
        self._pending: dict[str, list[Any]] = {}

    def start(self, run: dict[str, Any]) -> None:
        # cnfbench's one warning line says why the tracker is left out: not MLflow's own retry warnings and
        # error tracebacks beside it
        logging.getLogger("mlflow").setLevel(logging.CRITICAL)
        _bound_http_requests(self.call_timeout)
        if self.uri.startswith("sqlite:"):
            _check_sqlite_store(self.uri, self.call_timeout)
        tracking = importlib.import_module("mlflow.tracking")
        self._client = tracking.MlflowClient(tracking_uri=self.uri)
        existing = self._client.get_experiment_by_name(self.experiment)
        self._experiment_id = existing.experiment_id if existing is not None else self._client.create_experiment(
            self.experiment, artifact_location=str(Path(self.run_dir).resolve() / "mlflow-artifacts")
            if self.uri.startswith("sqlite:") else None)

    def _run_id(self, cell: dict[str, Any]) -> str:
        if cell["cell_id"] not in self._runs:
            spec = cell["spec"]
            run = self._client.create_run(self._experiment_id, run_name=cell["label"][:250],
                                          tags={"cnfbench.cell_id": cell["cell_id"]})
            entities = self._mlflow.entities
            params = [entities.Param(axis, str(value)[:6000]) for axis, value in _flat(spec).items()]
            for start in range(0, len(params), 100):
                self._client.log_batch(run.info.run_id, params=params[start:start + 100])
            self._runs[cell["cell_id"]] = run.info.run_id
        return self._runs[cell["cell_id"]]

    def log_iteration(self, cell: dict[str, Any], step: int, values: dict[str, float]) -> None:
        run_id = self._run_id(cell)
        metric = self._mlflow.entities.Metric
        pending = self._pending.setdefault(run_id, [])
        now = int(time.time() * 1000)
        pending += [metric(name, value, now, step) for name, value in values.items()]
        if len(pending) >= BATCH:
            self._flush(run_id)

    def _flush(self, run_id: str) -> None:
        pending = self._pending.pop(run_id, [])
        for start in range(0, len(pending), BATCH):
            self._client.log_batch(run_id, metrics=pending[start:start + BATCH])

    def log_cell(self, cell: dict[str, Any], row: dict[str, Any]) -> None:
        run_id = self._run_id(cell)
        self._flush(run_id)
        metric = self._mlflow.entities.Metric
        step = int(row.get("iterations_done") or 0) if isinstance(row.get("iterations_done"), (int, float)) \
            and math.isfinite(float(row.get("iterations_done") or 0)) else 0
        now = int(time.time() * 1000)
        finals = [metric(f"final/{name}", value, now, step) for name, value in _final_numbers(row).items()]
        for start in range(0, len(finals), BATCH):
            self._client.log_batch(run_id, metrics=finals[start:start + BATCH])
        self._client.set_tag(run_id, "cnfbench.status", str(row.get("status", "")))
        if row.get("reason"):
            self._client.set_tag(run_id, "cnfbench.reason", str(row["reason"])[:5000])
        self._client.set_terminated(run_id, "FINISHED" if row.get("status") == "done" else "FAILED")


def _flat(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A cell's JSON as ``dataset.name``, ``dataset.params.n_train``, ... (MLflow parameters are flat)."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class TensorBoardTracker(Tracker):
    name = "tensorboard"
    description = "TensorBoard event files, one folder per cell: curve scalars per iteration, final numbers"
    params = (Param("logdir", "str", "", "folder of the event files (empty: <run folder>/tensorboard)"),)

    def __init__(self, run_dir: str, logdir: str = "") -> None:
        super().__init__(run_dir, logdir=logdir)
        optional_import("tensorboard", "the tensorboard tracker", "tensorboard")
        self.logdir = Path(logdir).expanduser() if logdir else Path(run_dir) / "tensorboard"
        self._writers: dict[str, Any] = {}

    def start(self, run: dict[str, Any]) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)

    def _writer(self, cell: dict[str, Any]) -> Any:
        if cell["cell_id"] not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.logdir / cell["cell_id"]))
            writer.add_text("cell", cell["label"])
            self._writers[cell["cell_id"]] = writer
        return self._writers[cell["cell_id"]]

    def log_iteration(self, cell: dict[str, Any], step: int, values: dict[str, float]) -> None:
        writer = self._writer(cell)
        for name, value in values.items():
            writer.add_scalar(f"train/{name}", value, step)

    def log_cell(self, cell: dict[str, Any], row: dict[str, Any]) -> None:
        writer = self._writer(cell)
        del self._writers[cell["cell_id"]]
        step = row.get("iterations_done")
        step = int(step) if isinstance(step, (int, float)) and math.isfinite(float(step)) else 0
        for name, value in _final_numbers(row).items():
            writer.add_scalar(f"final/{name}", value, step)
        writer.add_text("status", f"{row.get('status')}: {row.get('reason') or ''}")
        writer.close()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


@hookimpl
def cnfbench_trackers() -> list[type[Tracker]]:
    return [MLflowTracker, TensorBoardTracker]
