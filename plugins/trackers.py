"""Built-in experiment trackers: ``mlflow[uri=...,experiment=...]`` and ``tensorboard[logdir=...]``.

* ``mlflow`` logs each cell as one MLflow run of the experiment ``experiment`` (default: the run folder's
  name), named by the cell's configuration label: the cell's components as parameters (a setting without a
  value left out), its id as the tag ``cnfbench.cell_id``, every training iteration's curve values as metrics
  at that step, and the row's final numbers (``final/nll_ref``, ``final/mass``, ...) once. Its validity is the
  tags ``valid`` (``true``/``false``) and ``validity_reason`` (when flagged) and the metric ``final/valid``
  (1/0), beside the figures the flag reads (``final/nll``, ``final/entropy``, ``final/mass``,
  ``final/mass_ref``, ``final/mass_is``, ...). Without a ``uri`` the store is ``mlflow.db`` (SQLite) in the
  run folder: MLflow 3 refuses its plain-file store unless told otherwise, and a SQLite file is as local and
  as portable. ``pip install cnfbench[mlflow]`` (the full ``mlflow`` package: ``mlflow ui`` needs it).
* ``tensorboard`` writes one event folder per cell under ``tensorboard/<label>/`` in the run folder
  (``logdir``: elsewhere), named by the cell's configuration label (with its id after it when another cell
  has the folder): the curve values as scalars ``train/<name>`` at each iteration, the row's final numbers
  and ``final/valid`` as ``final/<name>``, and the cell's spec, id, status and validity as text.
  ``tensorboard --logdir results/RUN/tensorboard`` shows them. ``pip install cnfbench[tensorboard]``.

Both give each point its wall time: the cell's ``started`` time plus the iteration's ``elapsed_s``, and the
final numbers the cell's ``ended`` time, so that a time axis shows when training happened, not when the
curve was replayed.

Both open their store in ``start``, so that a store that cannot be reached is a warning and the run goes on. Like
every tracker they take ``timeout`` (seconds, default 10; the harness's): ``mlflow`` also bounds each of MLflow's HTTP
requests by it, without retries, and checks that a SQLite store can be written before MLflow's own ~100 s
of retries.
"""

from __future__ import annotations

import importlib
import json
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


def _wall_time(cell: dict[str, Any], values: dict[str, float] | None = None, at: str = "ended") -> float:
    """When a point happened, in seconds since the epoch: the cell's ``started`` time plus the point's
    ``elapsed_s``; with no ``values``, the cell's time ``at`` (``started``, ``ended``); now when the harness did
    not say."""
    base, offset = (cell.get("started"), values.get("elapsed_s")) if values is not None else (cell.get(at), 0.0)
    return float(base) + float(offset) if _finite(base) and _finite(offset) else time.time()


def _milliseconds(seconds: float) -> int:
    return int(round(seconds * 1000))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _flag(value: Any) -> bool | None:
    """A row's ``valid`` as a bool (numpy's included); ``None`` when the row has none."""
    return bool(value) if isinstance(value, bool) or type(value).__name__ == "bool_" else None


def _text(value: Any) -> str:
    """A setting as a parameter value: ``true``/``false`` and lists as in JSON, the rest as written."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _validity(row: dict[str, Any]) -> tuple[bool | None, str]:
    """The row's ``(valid, validity_reason)``; ``(None, "")`` for a row without the flag."""
    reason = row.get("validity_reason")
    return _flag(row.get("valid")), reason if isinstance(reason, str) else ""


class MLflowTracker(Tracker):
    name = "mlflow"
    description = "one MLflow run per cell, named by its configuration: parameters, curve metrics, validity"
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
            run = self._client.create_run(self._experiment_id, run_name=cell["label"][:250],
                                          start_time=_milliseconds(_wall_time(cell, at="started")),
                                          tags={"cnfbench.cell_id": cell["cell_id"]})
            entities = self._mlflow.entities
            params = [entities.Param(axis, _text(value)[:6000]) for axis, value in _flat(cell["spec"]).items()
                      if value is not None and value != ""]
            for start in range(0, len(params), 100):
                self._client.log_batch(run.info.run_id, params=params[start:start + 100])
            self._runs[cell["cell_id"]] = run.info.run_id
        return self._runs[cell["cell_id"]]

    def log_iteration(self, cell: dict[str, Any], step: int, values: dict[str, float]) -> None:
        run_id = self._run_id(cell)
        metric = self._mlflow.entities.Metric
        pending = self._pending.setdefault(run_id, [])
        when = _milliseconds(_wall_time(cell, values))
        pending += [metric(name, value, when, step) for name, value in values.items()]
        if len(pending) >= BATCH:
            self._flush(run_id)

    def _flush(self, run_id: str) -> None:
        pending = self._pending.pop(run_id, [])
        for start in range(0, len(pending), BATCH):
            self._client.log_batch(run_id, metrics=pending[start:start + BATCH])

    def log_cell(self, cell: dict[str, Any], row: dict[str, Any]) -> None:
        run_id = self._run_id(cell)
        self._flush(run_id)
        entities = self._mlflow.entities
        step = int(row["iterations_done"]) if _finite(row.get("iterations_done")) else 0
        ended = _milliseconds(_wall_time(cell))
        valid, reason = _validity(row)
        numbers = _final_numbers(row) | ({"valid": float(valid)} if valid is not None else {})
        finals = [entities.Metric(f"final/{name}", value, ended, step) for name, value in numbers.items()]
        tags = {"cnfbench.status": str(row.get("status") or ""), "cnfbench.reason": str(row.get("reason") or ""),
                "valid": "" if valid is None else str(valid).lower(), "validity_reason": reason}
        self._client.log_batch(run_id, tags=[entities.RunTag(key, value[:5000]) for key, value in tags.items()
                                             if value])
        for start in range(0, len(finals), BATCH):
            self._client.log_batch(run_id, metrics=finals[start:start + BATCH])
        self._client.set_terminated(run_id, "FINISHED" if row.get("status") == "done" else "FAILED", end_time=ended)


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


CELL_FILE = "cnfbench-cell-id.txt"
"""In each TensorBoard folder, the id of the cell it holds (TensorBoard reads only ``*tfevents*`` files)."""


_NOT_IN_NAMES = str.maketrans({"/": "∕", "\\": "∖", **dict.fromkeys('<>:"|?*', "_"),
                               **dict.fromkeys(map(chr, range(32)), " ")})
"""What a folder name cannot hold on some system: path separators look alike, the rest become ``_``."""


def _folder_name(label: str) -> str:
    """``label`` as one folder name on any system; ``""`` when nothing is left of it."""
    name = label.translate(_NOT_IN_NAMES).strip().rstrip(".")
    return "" if name in ("", ".", "..") else name


class TensorBoardTracker(Tracker):
    name = "tensorboard"
    description = "TensorBoard event files, one folder per cell named by its configuration: curves, final numbers"
    params = (Param("logdir", "str", "", "folder of the event files (empty: <run folder>/tensorboard)"),)

    def __init__(self, run_dir: str, logdir: str = "") -> None:
        super().__init__(run_dir, logdir=logdir)
        optional_import("tensorboard", "the tensorboard tracker", "tensorboard")
        self.logdir = Path(logdir).expanduser() if logdir else Path(run_dir) / "tensorboard"
        self._writers: dict[str, Any] = {}
        self._folders: dict[str, str] = {}  # the folder name of each cell logged in this run, by cell id

    def start(self, run: dict[str, Any]) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)

    def _folder(self, cell: dict[str, Any]) -> Path:
        """The cell's folder: its label, or label and id when that folder holds another cell (its label may
        have been shortened, or an earlier run into the same folder named another cell so)."""
        cell_id = cell["cell_id"]
        if cell_id not in self._folders:
            name = _folder_name(str(cell.get("label") or ""))
            marker = self.logdir / name / CELL_FILE
            taken = name in self._folders.values() or (marker.exists() and marker.read_text().strip() != cell_id)
            self._folders[cell_id] = f"{name} · {cell_id}" if name and taken else name or cell_id
        folder = self.logdir / self._folders[cell_id]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CELL_FILE).write_text(cell_id + "\n")
        return folder

    def _writer(self, cell: dict[str, Any]) -> Any:
        if cell["cell_id"] not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self._folder(cell)))
            started = _wall_time(cell, at="started")
            writer.add_text("cell", str(cell.get("description") or cell.get("label")), walltime=started)
            writer.add_text("cell_id", cell["cell_id"], walltime=started)
            self._writers[cell["cell_id"]] = writer
        return self._writers[cell["cell_id"]]

    def log_iteration(self, cell: dict[str, Any], step: int, values: dict[str, float]) -> None:
        writer = self._writer(cell)
        when = _wall_time(cell, values)
        for name, value in values.items():
            writer.add_scalar(f"train/{name}", value, step, walltime=when)

    def log_cell(self, cell: dict[str, Any], row: dict[str, Any]) -> None:
        writer = self._writer(cell)
        del self._writers[cell["cell_id"]]
        step = int(row["iterations_done"]) if _finite(row.get("iterations_done")) else 0
        ended = _wall_time(cell)
        valid, reason = _validity(row)
        numbers = _final_numbers(row) | ({"valid": float(valid)} if valid is not None else {})
        for name, value in numbers.items():
            writer.add_scalar(f"final/{name}", value, step, walltime=ended)
        status, why = str(row.get("status") or ""), str(row.get("reason") or "")
        writer.add_text("status", f"{status}: {why}" if why else status, step, walltime=ended)
        if valid is not None:
            flagged = f"flagged: {reason}" if reason else "flagged"
            writer.add_text("validity", "valid" if valid else flagged, step, walltime=ended)
        writer.close()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


@hookimpl
def cnfbench_trackers() -> list[type[Tracker]]:
    return [MLflowTracker, TensorBoardTracker]
