"""The runner: executes a run's cells one after another and keeps the run folder current.

Before the first cell it writes ``run.json``; after every cell it rewrites
``cells.parquet``/``cells.csv`` and ``curves.parquet`` atomically. Cells
already ``done`` in the folder (same cell id) are skipped, so rerunning a
command resumes it; failed cells are retried unless ``retry_failed`` is off.
A failing cell becomes a row; it never stops the sweep. On Ctrl-C the cell in
flight is recorded as ``interrupted`` and the run returns what it has.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cnfbench.cells import Cell
from cnfbench.columns import ordered
from cnfbench.execute import identity_columns
from cnfbench.executor import Executor
from cnfbench.plots import write_density_artifacts
from cnfbench.progress import Progress
from cnfbench.registry import Registry
from cnfbench.results import ResultsError, RunStore, check_run_name


@dataclass
class RunResult:
    """What a run produced: every row in the folder, and how many cells ran or were skipped."""

    run_dir: Path
    cells: pd.DataFrame
    ran: int
    skipped: int
    interrupted: bool = False


def default_run_name() -> str:
    return dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")


def run_directory(out: str | Path, name: str) -> Path:
    """``out/name``, refusing names that would leave ``out``."""
    check_run_name(name)
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


def _read_or_set_aside(store: RunStore, read: str, progress: Progress) -> pd.DataFrame:
    """Read a results table; a damaged one is renamed aside (never overwritten) and the run starts it anew."""
    try:
        return getattr(store, read)()
    except ResultsError as exc:
        damaged = store.set_aside(exc.path) if exc.path else None
        where = f"; kept as {damaged.name}" if damaged else ""
        progress.message(f"warning: {exc}{where}")
        return pd.DataFrame()


def _notify_finished(registry: Registry, row: dict[str, Any], run_dir: Path, progress: Progress) -> None:
    for name, call in registry.implementations("cnfbench_cell_finished"):
        try:
            call(row=row, run_dir=str(run_dir))
        except Exception as exc:  # noqa: BLE001 - an observer must never stop the sweep
            progress.message(f"warning: plugin {name!r} failed in cnfbench_cell_finished: "
                             f"{type(exc).__name__}: {exc}")


def execute_run(
    cells: list[Cell],
    registry: Registry,
    executor: Executor,
    run_dir: Path,
    provenance: dict[str, Any],
    progress: Progress,
    retry_failed: bool = True,
) -> RunResult:
    """Run every cell not already done in ``run_dir`` and return all rows of the folder."""
    store = RunStore(run_dir)
    existing = _read_or_set_aside(store, "read_cells", progress)
    curves = _read_or_set_aside(store, "read_curves", progress)
    try:
        previous = store.read_run_json()
    except ResultsError as exc:
        progress.message(f"warning: {exc}; writing a new one")
        previous = {}
    history = list(previous.get("history", []))
    if previous:
        history.append({"created": previous.get("created"), "command": previous.get("command")})
    store.write_run_json({**provenance, "cells": [cell.to_json() | {"cell_id": cell.cell_id} for cell in cells],
                          "history": history})
    finished: set[str] = set()
    if not existing.empty and "cell_id" in existing and "status" in existing:
        keep = {"done"} if retry_failed else set(existing["status"].dropna().unique()) - {"interrupted"}
        finished = set(existing.loc[existing["status"].isin(keep), "cell_id"])
    todo = [cell for cell in cells if cell.cell_id not in finished]
    skipped = len(cells) - len(todo)
    if skipped:
        progress.message(f"resuming {run_dir.name}: skipping {skipped} cell(s) already done, running {len(todo)}")
    progress.total_cells = len(todo)
    frame = existing
    ran = 0

    def on_progress(kind: str, value: Any) -> None:
        if kind == "iteration":
            progress.iteration(*value)
        elif kind == "phase":
            progress.phase(value)

    for index, cell in enumerate(todo, start=1):
        progress.start_cell(index, cell)
        try:
            outcome = executor.run(cell, on_progress)
        except KeyboardInterrupt:
            row = ordered({**identity_columns(cell), "status": "interrupted",
                           "reason": "interrupted by the user (Ctrl-C)"})
            frame = _upsert(frame, row)
            store.write_cells(frame)
            progress.end_cell(row)
            return RunResult(run_dir, frame, ran, skipped, interrupted=True)
        frame = _upsert(frame, outcome.row)
        if outcome.curves:
            new_curves = pd.DataFrame(outcome.curves)
            if not curves.empty:
                curves = curves[curves["cell_id"] != cell.cell_id]
            curves = pd.concat([curves, new_curves], ignore_index=True) if not curves.empty else new_curves
            store.write_curves(curves)
        if outcome.density is not None:
            write_density_artifacts(run_dir, cell.cell_id, **outcome.density)
        store.write_cells(frame)
        ran += 1
        progress.end_cell(outcome.row)
        _notify_finished(registry, outcome.row, run_dir, progress)
    return RunResult(run_dir, frame, ran, skipped)
