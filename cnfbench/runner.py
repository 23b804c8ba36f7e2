"""The runner: executes a run's cells one after another and keeps the run folder current.

Before the first cell it writes ``run.json``; after every cell it rewrites
``cells.parquet``/``cells.csv`` and ``curves.parquet`` atomically. Cells
already ``done`` in the folder (same cell id) are skipped, so rerunning a
command resumes it. A failing cell becomes a row; it never stops the sweep.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cnfbench.cells import Cell
from cnfbench.execute import identity_columns, run_cell
from cnfbench.progress import Progress
from cnfbench.registry import Registry
from cnfbench.results import RunStore, check_run_name


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


def execute_run(
    cells: list[Cell],
    registry: Registry,
    run_dir: Path,
    provenance: dict[str, Any],
    progress: Progress,
    rerun_failed: bool = True,
) -> RunResult:
    """Run every cell not already done in ``run_dir`` and return all rows of the folder."""
    store = RunStore(run_dir)
    existing = store.read_cells()
    curves = store.read_curves()
    previous = store.read_run_json()
    history = list(previous.get("history", []))
    if previous:
        history.append({"created": previous.get("created"), "command": previous.get("command")})
    store.write_run_json({**provenance, "cells": [cell.to_json() | {"cell_id": cell.cell_id} for cell in cells],
                          "history": history})
    finished = set()
    if not existing.empty:
        keep = {"done"} if rerun_failed else set(existing["status"].unique())
        finished = set(existing.loc[existing["status"].isin(keep), "cell_id"])
    todo = [cell for cell in cells if cell.cell_id not in finished]
    skipped = len(cells) - len(todo)
    if skipped:
        progress.message(f"resuming {run_dir.name}: skipping {skipped} cell(s) already done, running {len(todo)}")
    progress.total_cells = len(todo)
    frame = existing
    ran = 0
    for index, cell in enumerate(todo, start=1):
        progress.start_cell(index, cell)
        try:
            outcome = run_cell(cell, registry, progress.iteration, progress.phase)
        except KeyboardInterrupt:
            row = {"cell_id": cell.cell_id, "status": "interrupted", "reason": "interrupted by the user (Ctrl-C)"}
            frame = _upsert(frame, {**identity_columns(cell), **row})
            store.write_cells(frame)
            return RunResult(run_dir, frame, ran, skipped, interrupted=True)
        frame = _upsert(frame, outcome.row)
        if outcome.curves:
            new_curves = pd.DataFrame(outcome.curves)
            if not curves.empty:
                curves = curves[curves["cell_id"] != cell.cell_id]
            curves = pd.concat([curves, new_curves], ignore_index=True) if not curves.empty else new_curves
            store.write_curves(curves)
        store.write_cells(frame)
        ran += 1
        progress.end_cell(outcome.row)
    return RunResult(run_dir, frame, ran, skipped)
