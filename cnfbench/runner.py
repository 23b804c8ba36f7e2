"""The runner: executes a run's cells one after another and keeps the run folder current.

It holds the run folder's write lock (:mod:`cnfbench.folder_lock`) throughout. Before the first cell it writes
``run.json``; after every cell it writes the cell's model file (``models/<cell_id>.safetensors``, for a
``done`` cell that trained) and then rewrites ``cells.parquet``/``cells.csv`` and ``curves.parquet``, each
atomically, so a row never names a model file that is not there; a cell whose model file cannot be written
ends ``error`` (a rerun retries it), and a full device ends the run (:class:`~cnfbench.run_folder.DiskFull`)
with every row written so far intact. Cells
already ``done`` in the folder (same cell id) are skipped, and their model
files kept, so rerunning a command resumes it; failed cells are retried
unless ``retry_failed`` is off.
A failing cell becomes a row; it never stops the sweep. On Ctrl-C the cell in
flight is recorded as ``interrupted`` and the run returns what it has.

Cells with one model key (:func:`cnfbench.execute.model_key_of`: the same
training, e.g. flow matching evaluated with several solvers) share one
trained model: the first to finish trains it, every other loads its model
file and takes its training columns, and its row names the trainer
(``trained_in``) and that model file.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cnfbench.cells import Cell
from cnfbench.columns import PROTOCOL_COLUMNS, ordered
from cnfbench.contracts import CellOutcome, Executor, SharedModel
from cnfbench.execute import model_key_of
from cnfbench.executor import job_for
from cnfbench.folder_lock import run_folder_lock
from cnfbench.messages import plural
from cnfbench.metric_plan import merged_row
from cnfbench.model_file import ModelFileError, check_model
from cnfbench.progress import Progress
from cnfbench.registry import Registry
from cnfbench.rows import TRAINING_COLUMNS, failed_outcome, interrupted_outcome
from cnfbench.run_folder import (
    CELLS_CSV,
    CELLS_PARQUET,
    RUN_JSON,
    DiskFull,
    ResultsError,
    RunStore,
    check_run_name,
    model_file_name,
    remove_stale_temporaries,
    write_density_artifacts,
    write_model,
)
from cnfbench.tracking import Trackers
from cnfbench.validity import validity


@dataclass
class RunResult:
    """What a run produced: every row in the folder, and how many cells ran or were skipped."""

    run_dir: Path
    cells: pd.DataFrame
    ran: int
    skipped: int
    interrupted: bool = False
    stopped: int = 0
    """Cells in flight when the run was interrupted (their rows say ``interrupted``)."""
    never_started: int = 0
    """Cells of this sweep that an interrupt left unstarted (no row)."""

    def counts(self) -> str:
        """``2 cells run, 1 interrupted, 3 never started, 4 skipped as already done`` (zero parts left out, but the
        run and skipped counts)."""
        parts = [f"{plural(self.ran, 'cell')} run"]
        if self.stopped:
            parts.append(f"{self.stopped} interrupted")
        if self.never_started:
            parts.append(f"{self.never_started} never started")
        parts.append(f"{self.skipped} skipped as already done")
        return ", ".join(parts)


def default_run_name() -> str:
    return dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")


def run_directory(out: str | Path, name: str) -> Path:
    """``out/name``, refusing names that would leave ``out``."""
    check_run_name(name)
    if "\x00" in str(out) or not str(out).strip():
        raise ValueError(f"invalid output folder {str(out)!r}: give a folder name without NUL characters")
    root = Path(out).expanduser().resolve()
    run_dir = (root / name).resolve()
    if run_dir.parent != root:
        raise ValueError(f"run name {name!r} escapes the output folder {str(root)!r}")
    return run_dir


def _upsert(frame: pd.DataFrame, row: dict[str, Any]) -> pd.DataFrame:
    new = pd.DataFrame([row])
    if frame.empty:
        return new
    kept = frame[frame["cell_id"] != row["cell_id"]]
    return pd.concat([kept, new], ignore_index=True)


def _plain_row(frame: pd.DataFrame, cell_id: str) -> dict[str, Any]:
    """The row of ``cell_id`` in ``frame`` as plain Python values."""
    record = frame[frame["cell_id"] == cell_id].iloc[0].to_dict()
    return {key: _plain(value) for key, value in record.items()}


def _read_existing_cells(store: RunStore, progress: Progress) -> pd.DataFrame:
    """The rows already in the folder; damaged copies are set aside (never overwritten), as the README says."""
    try:
        frame, warnings = store.read_cells()
    except ResultsError as exc:
        aside = [store.set_aside(store.run_dir / name) for name in (CELLS_PARQUET, CELLS_CSV)]
        kept = ", ".join(path.name for path in aside if path is not None)
        progress.message(f"warning: {exc}; no copy of the rows is readable; kept as {kept}; starting the table anew")
        return pd.DataFrame()
    for warning in warnings:
        progress.message(f"warning: {warning}")
    return frame


def _read_existing_curves(store: RunStore, progress: Progress) -> pd.DataFrame:
    """The training curves already in the folder; a damaged file is set aside and the curves start anew."""
    try:
        return store.read_curves()
    except ResultsError as exc:
        damaged = store.set_aside(exc.path) if exc.path else None
        where = f"; kept as {damaged.name}" if damaged else ""
        progress.message(f"warning: {exc}{where}")
        return pd.DataFrame()


def _write_cells(store: RunStore, frame: pd.DataFrame, progress: Progress) -> None:
    for warning in store.write_cells(frame):
        progress.message(f"warning: {warning}")


def _plain(value: Any) -> Any:
    """A pandas/numpy scalar as the Python value JSON can carry."""
    return value.item() if hasattr(value, "item") else value


class _NoModel(Exception):
    """A cell that may not train (``cnfbench evaluate``) has no model in the folder to load."""

    def __init__(self, cell: Cell) -> None:
        super().__init__(cell.cell_id)
        self.outcome = failed_outcome(cell, "error", "no readable trained model in the run folder for this cell "
                                      "(evaluate never trains)", 0.0, "load_model")


@dataclass(frozen=True)
class _ModelSource:
    """A trained model a later cell of the same model key can load: its trainer, file and training columns."""

    trainer_id: str
    model_file: str
    training: dict[str, Any]


def _sources_in(frame: pd.DataFrame, run_dir: Path, registry: Registry) -> dict[str, _ModelSource]:
    """The models the rows already in the folder offer, by model key: cells done, trained here, file present.

    A row written before models were shared (no ``model_key``/``trained_in``) trained its own model; its key
    comes from the cell its model file records."""
    if frame.empty or not {"model_file", "status", "cell_id"} <= set(frame.columns):
        return {}
    sources: dict[str, _ModelSource] = {}
    for row in frame.to_dict("records"):
        trainer = row.get("trained_in")
        trainer = trainer if isinstance(trainer, str) and trainer else row["cell_id"]
        model_file = row["model_file"]
        if row["status"] != "done" or trainer != row["cell_id"] or not isinstance(model_file, str) or not model_file \
                or not (run_dir / model_file).is_file():
            continue
        key = row.get("model_key")
        if not isinstance(key, str) or not key:
            try:
                key = model_key_of(check_model((run_dir / model_file).read_bytes(), str(row["cell_id"])).cell, registry)
            except (ModelFileError, OSError):
                continue  # a damaged file offers nothing; the cell trains (or, in evaluate, is reported)
        training = {column: _plain(row.get(column)) for column in TRAINING_COLUMNS}
        sources.setdefault(key, _ModelSource(str(row["cell_id"]), model_file, training))
    return sources


def _shared_model(run_dir: Path, source: _ModelSource | None, progress: Progress) -> SharedModel | None:
    """The bytes of ``source``'s model file for the worker; ``None`` (the cell trains) when unreadable."""
    if source is None:
        return None
    try:
        data = (run_dir / source.model_file).read_bytes()
    except OSError as exc:
        progress.message(f"warning: cannot read {source.model_file} ({exc.strerror or exc}); training anew")
        return None
    return SharedModel(source.trainer_id, data, source.training)


def _loss_unit(registry: Registry, cell: Cell) -> str:
    try:
        return registry.get("objective", cell.objective.name).cls.loss_unit
    except ValueError:  # not registered here: the cell will fail to build and say so
        return "?"


def _keep_model(run_dir: Path, cell: Cell, model: bytes | None) -> str:
    """Write a finished cell's model file; return what its row's ``model_file`` says (empty when none). Raises
    :class:`DiskFull`, :class:`ResultsError` or :class:`OSError` when it cannot be written."""
    if model is None:
        return ""
    write_model(run_dir, cell.cell_id, model)
    return model_file_name(cell.cell_id)


def _not_kept(outcome: CellOutcome, why: str) -> CellOutcome:
    """``outcome`` ended ``error``: its numbers stay, but without its model it is not done."""
    row = {**outcome.row, "status": "error", "valid": False, "validity_reason": "",
           "reason": f"the trained field was not kept: {why}; rerun the same command to retry the cell"}
    return CellOutcome(row, outcome.curves, outcome.density, None)


def _notify_finished(registry: Registry, row: dict[str, Any], run_dir: Path, progress: Progress) -> None:
    for name, call in registry.implementations("cnfbench_cell_finished"):
        try:
            call(row=row, run_dir=str(run_dir))
        except Exception as exc:  # noqa: BLE001 - an observer must never stop the sweep
            progress.message(f"warning: plugin {name!r} failed in cnfbench_cell_finished: "
                             f"{type(exc).__name__}: {exc}")


def sweep(
    cells: list[Cell],
    registry: Registry,
    executor: Executor,
    run_dir: Path,
    provenance: dict[str, Any],
    progress: Progress,
    retry_failed: bool = True,
    rerun: bool = False,
    record: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    executor_name: str = "",
    may_train: bool = True,
    trackers: Trackers | None = None,
    stamps: Mapping[str, Mapping[str, Any]] | None = None,
) -> RunResult:
    """Run every cell not already done in ``run_dir`` and return all rows of the folder.

    ``rerun`` runs every cell even when done (``cnfbench evaluate``); a rerun that fails then keeps the
    row that was done. ``record`` builds ``run.json`` from the one in the folder (default: this run's
    ``provenance`` and cells, with the earlier commands in ``history``). With ``may_train`` off
    (``cnfbench evaluate``) a cell whose model the folder does not offer ends ``error`` instead of training.
    ``trackers`` hear each finished cell's curve and row (and are closed at the end). ``stamps`` adds
    run-level columns to a cell's row, by cell id (a protocol run's ``protocol``, ``protocol_group``, ...).
    """
    try:
        with run_folder_lock(run_dir):
            return _sweep(cells, registry, executor, run_dir, provenance, progress, retry_failed, rerun, record,
                          executor_name, may_train,
                          trackers if trackers is not None else Trackers([], str(run_dir), progress.message),
                          stamps or {})
    finally:
        if trackers is not None:
            trackers.close()


def _sweep(cells: list[Cell], registry: Registry, executor: Executor, run_dir: Path, provenance: dict[str, Any],
           progress: Progress, retry_failed: bool, rerun: bool,
           record: Callable[[dict[str, Any]], dict[str, Any]] | None, executor_name: str, may_train: bool,
           trackers: Trackers, stamps: Mapping[str, Mapping[str, Any]]) -> RunResult:
    store = RunStore(run_dir)
    remove_stale_temporaries(run_dir)  # left by a writer killed mid-write: this run is now the folder's one writer
    existing = _read_existing_cells(store, progress)
    curves = _read_existing_curves(store, progress)
    try:
        previous = store.read_run_json()
    except ResultsError as exc:
        damaged = store.set_aside(store.run_dir / RUN_JSON)
        kept = f"set aside as {damaged.name}; " if damaged is not None else ""
        progress.message(f"warning: {exc}; {kept}writing a new one")
        previous = {}
    if record is not None:
        store.write_run_json(record(previous))
    else:
        history = list(previous.get("history", []))
        if previous:
            history.append({key: previous.get(key) for key in ("created", "command", "plugins")})
        store.write_run_json({**provenance, "history": history,
                              "cells": [cell.to_json() | {"cell_id": cell.cell_id} for cell in cells]})
    trackers.start({"name": run_dir.name, **{key: provenance.get(key) for key in ("command", "config")}}, cells)
    finished: set[str] = set()
    done_before: set[str] = set()
    if not existing.empty and "cell_id" in existing and "status" in existing:
        keep = {"done"} if retry_failed else set(existing["status"].dropna().unique()) - {"interrupted"}
        finished = set(existing.loc[existing["status"].isin(keep), "cell_id"])
        done_before = set(existing.loc[existing["status"] == "done", "cell_id"])
    todo = cells if rerun else [cell for cell in cells if cell.cell_id not in finished]
    sources = _sources_in(existing, run_dir, registry)
    skipped = len(cells) - len(todo)
    if skipped:
        progress.message(f"resuming {run_dir.name}: skipping {plural(skipped, 'cell')} already done, "
                         f"running {len(todo)}")
    progress.begin(len(todo), executor_name, executor.slots)
    frame = existing
    ran = 0
    placement = {"executor": executor_name, "concurrency": executor.slots, **dict.fromkeys(PROTOCOL_COLUMNS, "")}

    def prepare(cell: Cell) -> tuple[str, _ModelSource | None, SharedModel | None]:
        key = model_key_of(cell, registry)
        source = sources.get(key)
        shared = _shared_model(run_dir, source, progress) if source and (rerun or source.trainer_id != cell.cell_id) \
            else None
        if shared is None and not may_train:
            raise _NoModel(cell)
        return key, source, shared

    def keep_outcome(cell: Cell, key: str, source: _ModelSource | None, shared: SharedModel | None,
                     outcome: CellOutcome) -> dict[str, Any] | None:
        """Write ``cell``'s outcome to the folder; the row written (``None`` when an earlier row is kept)."""
        nonlocal frame, curves, ran
        full: DiskFull | None = None
        try:  # a done row must never lack the model it trained: without it the cell ends error, and reruns
            model_file = source.model_file if shared is not None and source else \
                _keep_model(run_dir, cell, outcome.model)
        except DiskFull as exc:
            outcome, model_file, full = _not_kept(outcome, f"no space left on device ({exc.path})"), "", exc
        except (ResultsError, OSError) as exc:
            why = f"{exc.strerror} ({exc.filename})" if isinstance(exc, OSError) and exc.strerror else str(exc)
            outcome, model_file = _not_kept(outcome, why), ""
        row = ordered({"host": "", **outcome.row, "model_file": model_file, **placement,
                       **stamps.get(cell.cell_id, {})})
        if rerun and row["status"] != "done" and cell.cell_id in done_before:
            progress.message(f"warning: cell {cell.cell_id} ended {row['status']} ({row.get('reason', '')}); "
                             "its earlier row is kept")
            return None
        if shared is None and row.get("compiled") is False and row.get("compile_note"):
            progress.message(f"warning: cell {cell.cell_id} ({cell.describe()}): {row['compile_note']}")
        if rerun and row["status"] == "done" and cell.cell_id in done_before:
            row = ordered(merged_row(_plain_row(frame, cell.cell_id), row, registry))
            row["valid"], row["validity_reason"] = validity(row)
        if row["status"] == "done" and model_file and shared is None:
            sources[key] = _ModelSource(cell.cell_id, model_file,
                                        {column: _plain(row.get(column)) for column in TRAINING_COLUMNS})
        frame = _upsert(frame, row)
        if outcome.curves:
            new_curves = pd.DataFrame(outcome.curves)
            if not curves.empty:
                curves = curves[curves["cell_id"] != cell.cell_id]
            curves = pd.concat([curves, new_curves], ignore_index=True) if not curves.empty else new_curves
            store.write_curves(curves)
        if outcome.density is not None:
            write_density_artifacts(run_dir, cell.cell_id, **outcome.density)
        _write_cells(store, frame, progress)
        ran += 1
        if full is not None:
            raise full
        _notify_finished(registry, row, run_dir, progress)
        trackers.cell_finished(cell, outcome.curves, row)
        return row

    def record_interrupted(outcomes: list[CellOutcome]) -> RunResult:
        nonlocal frame
        for outcome in outcomes:
            row = ordered({"host": "", **outcome.row, "model_file": "", **placement})
            frame = _upsert(frame, row)
            progress.end_cell(row)
        _write_cells(store, frame, progress)
        return RunResult(run_dir, frame, ran, skipped, interrupted=True, stopped=len(outcomes),
                         never_started=max(len(todo) - ran - len(outcomes), 0))

    if executor.slots > 1:
        return _sweep_in_parallel(todo, executor, prepare, keep_outcome, record_interrupted, progress, registry,
                                  lambda: RunResult(run_dir, frame, ran, skipped))
    for index, cell in enumerate(todo, start=1):
        try:
            key, source, shared = prepare(cell)
        except _NoModel as missing:
            progress.start_cell(index, cell, _loss_unit(registry, cell))
            row = keep_outcome(cell, "", None, None, missing.outcome)
            progress.end_cell(row if row is not None else missing.outcome.row, cell)
            continue
        progress.start_cell(index, cell, _loss_unit(registry, cell), shared is not None)
        started = time.monotonic()
        try:
            outcome = executor.run_cell(job_for(cell, shared),
                                        lambda kind, value, cell_id=cell.cell_id: progress.update(cell_id, kind, value))
        except KeyboardInterrupt as exc:
            return record_interrupted([interrupted_outcome(cell, exc, time.monotonic() - started)])
        row = keep_outcome(cell, key, source, shared, outcome)
        progress.end_cell(row if row is not None else outcome.row, cell)
    return RunResult(run_dir, frame, ran, skipped)


def _sweep_in_parallel(todo: list[Cell], executor: Executor, prepare: Callable[..., Any], keep: Callable[..., Any],
                       record_interrupted: Callable[[list[CellOutcome]], RunResult], progress: Progress,
                       registry: Registry, result: Callable[[], RunResult]) -> RunResult:
    """Run ``todo`` on ``executor.slots`` threads, each handing one cell at a time to the executor; only this
    (the main) thread writes the run folder, as each outcome arrives. A cell whose model another cell in flight
    is training waits for it, so that it loads that model instead of training its own."""
    pending = list(enumerate(todo, start=1))
    in_flight: dict[str, Cell] = {}
    training: set[str] = set()
    results: queue.SimpleQueue[tuple[Cell, Any, Any]] = queue.SimpleQueue()

    def work(cell: Cell, prepared: tuple[str, Any, Any]) -> None:
        try:
            outcome: Any = executor.run_cell(job_for(cell, prepared[2]),
                                             lambda kind, value: progress.update(cell.cell_id, kind, value))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which decides
            outcome = exc
        results.put((cell, prepared, outcome))

    try:
        while pending or in_flight:
            while len(in_flight) < executor.slots:
                choice = next((position for position, (_, cell) in enumerate(pending)
                               if model_key_of(cell, registry) not in training), None)
                if choice is None:
                    break
                index, cell = pending.pop(choice)
                try:
                    prepared = prepare(cell)
                except _NoModel as missing:
                    row = keep(cell, "", None, None, missing.outcome)
                    progress.end_cell(row if row is not None else missing.outcome.row, cell)
                    continue
                if prepared[2] is None:
                    training.add(prepared[0])
                in_flight[cell.cell_id] = cell
                progress.start_cell(index, cell, _loss_unit(registry, cell), prepared[2] is not None)
                threading.Thread(target=work, args=(cell, prepared), daemon=True).start()
            try:
                cell, prepared, outcome = results.get(timeout=0.5)
            except queue.Empty:
                continue
            del in_flight[cell.cell_id]
            training.discard(prepared[0])
            if isinstance(outcome, BaseException):
                outcome = interrupted_outcome(cell, outcome, 0.0) if isinstance(outcome, KeyboardInterrupt) \
                    else failed_outcome(cell, "error", f"the executor failed: {type(outcome).__name__}: {outcome}",
                                        0.0, "start")
            row = keep(cell, *prepared, outcome)
            progress.end_cell(row if row is not None else outcome.row, cell)
    except KeyboardInterrupt:
        stopped = executor.cancel()
        return record_interrupted(stopped)
    except DiskFull:
        executor.cancel()  # the run ends: the cells in flight are stopped, and rerun later
        raise
    return result()
