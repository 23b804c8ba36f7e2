"""Merge run folders made on several machines into one, keeping where every row came from.

The merged folder is an ordinary run folder (``cells.parquet``/``cells.csv``,
``curves.parquet``, ``run.json``, and any ``density/<cell_id>.npz`` and
``models/<cell_id>.safetensors`` — the model file each kept row uses, its own or the one
it shares — copied from the source whose row is kept), so
``report``, ``compare`` and a resumed ``run`` read it like any other. Its
``run.json`` has a ``merged_from`` list with each source's provenance (folder,
creation time, command, versions, machine, git commit, cells contributed).

A cell id found in several sources is kept once: a ``done`` row beats any
other status; between rows of the same kind the newest source wins (the
``created`` time in its ``run.json``, else the later argument). Each such
conflict is reported.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cnfbench.columns import ordered
from cnfbench.families import AXIS_SPEC_COLUMNS
from cnfbench.run_folder import (
    CELLS_CSV,
    CELLS_PARQUET,
    DENSITY_DIR,
    MODELS_DIR,
    RUN_JSON,
    Run,
    RunStore,
    atomic_write,
    density_path,
    load_run,
    model_file_name,
    model_path,
)

PROVENANCE_KEYS = ("created", "command", "cwd", "hostname", "python", "platform", "versions", "machine",
                   "git_commit", "plugins", "config")
"""What ``merged_from`` keeps of each source's ``run.json``."""


@dataclass
class MergeResult:
    """The merged folder, its row count, one line per conflict, and one per damaged input file."""

    out: Path
    cells: int
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _describe(row: pd.Series) -> str:
    parts = [str(row[c]) for c in AXIS_SPEC_COLUMNS if c in row and pd.notna(row[c])]
    seed = f" seed {row['seed']}" if "seed" in row and pd.notna(row["seed"]) else ""
    return f"{row['cell_id']} ({' | '.join(parts)}{seed})"


def _created(run: Run) -> str:
    created = run.provenance.get("created")
    return created if isinstance(created, str) else ""


def _consensus(values: list[Any]) -> Any:
    """The common value, or ``{"mixed": [...]}`` when the sources disagree."""
    distinct = []
    for value in values:
        if value not in distinct:
            distinct.append(value)
    return distinct[0] if len(distinct) == 1 else {"mixed": distinct}


def _copy_files(runs: list[Run], wanted: Iterable[tuple[int, str]], target: Path,
                where: Callable[[Path, str], Path]) -> set[str]:
    """Copy the file at ``where(run folder, cell id)`` of each ``(source run index, cell id)`` in ``wanted``
    (the first source named for an id); return the cell ids copied."""
    copied: set[str] = set()
    for index, cell_id in wanted:
        if cell_id in copied:
            continue
        try:
            source = where(runs[index].path, cell_id)
        except ValueError:  # not a cell id a file can be named by
            continue
        if source.exists():
            atomic_write(where(target, cell_id), lambda tmp, source=source: shutil.copyfile(source, tmp))
            copied.add(cell_id)
    return copied


def _trainer(row: dict[str, Any] | pd.Series) -> str:
    """The id of the cell that trained ``row``'s model (``trained_in``; the row's own id before models were shared)."""
    trainer = row.get("trained_in")
    return str(trainer) if isinstance(trainer, str) and trainer else str(row["cell_id"])


def check_merge(out: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str] | Run]) -> list[Run]:
    """The source runs of a merge into ``out``, read; writes nothing.

    Raises :class:`ValueError` when there is none, one is given twice, ``out`` already holds results or is one
    of the sources, and :class:`~cnfbench.run_folder.ResultsError` when a source cannot be read at all.
    """
    target = Path(out)
    if not sources:
        raise ValueError("no run folders to merge")
    runs = [source if isinstance(source, Run) else load_run(source) for source in sources]
    seen: set[Path] = set()
    for run in runs:
        if run.path.resolve() in seen:
            raise ValueError(f"{run.path} is given twice")
        seen.add(run.path.resolve())
    resolved = target.resolve()
    for run in runs:
        if run.path.resolve() == resolved:
            raise ValueError(f"the output folder {target} is also a source; merge into a new folder")
    for name in (CELLS_PARQUET, CELLS_CSV, RUN_JSON):
        if (target / name).exists():
            raise ValueError(f"{target} already holds a run ({name}); merge into a new folder")
    return runs


def merge_runs(out: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str] | Run],
               command: list[str] | None = None) -> MergeResult:
    """Combine the run folders ``sources`` (paths, or runs :func:`check_merge` read) into the new run folder
    ``out``; see the module docstring. Raises what :func:`check_merge` raises."""
    target = Path(out)
    runs = check_merge(out, sources)
    notes: list[str] = []

    # newest last: a later "created" (or, without one, a later argument) wins a tie
    order = sorted(range(len(runs)), key=lambda i: (_created(runs[i]), i))
    rank = {index: position for position, index in enumerate(order)}
    kept: dict[str, tuple[int, pd.Series]] = {}
    for index, run in enumerate(runs):
        for _, row in run.cells.iterrows():
            cell_id = str(row["cell_id"])
            if cell_id not in kept:
                kept[cell_id] = (index, row)
                continue
            other_index, other = kept[cell_id]
            row_done, other_done = row["status"] == "done", other["status"] == "done"
            new_wins = row_done and not other_done or (row_done == other_done and rank[index] > rank[other_index])
            winner, loser = ((index, row), (other_index, other)) if new_wins else ((other_index, other), (index, row))
            kept[cell_id] = winner
            why = "the done one" if row_done != other_done else "the newest"
            notes.append(f"cell {_describe(winner[1])} is in {runs[winner[0]].path} ({winner[1]['status']}) and "
                         f"{runs[loser[0]].path} ({loser[1]['status']}): kept {why}, from {runs[winner[0]].path}")

    rows = [ordered(row.to_dict()) for _, row in kept.values()]
    store = RunStore(target)
    curves = []
    for cell_id, (index, _) in kept.items():
        source_curves = runs[index].curves
        if not source_curves.empty and "cell_id" in source_curves:
            curves.append(source_curves[source_curves["cell_id"] == cell_id])
    copied = _copy_files(runs, [(index, cell_id) for cell_id, (index, _) in kept.items()], target, density_path)
    models = _copy_files(runs, [(index, _trainer(row)) for index, row in kept.values()], target, model_path)
    if models or any("model_file" in run.cells for run in runs):
        for row in rows:  # a row names its model file (its own, or the one it shares) only when the merge has it
            trainer = _trainer(row)
            row["model_file"] = model_file_name(trainer) if trainer in models else ""
    frame = pd.DataFrame([ordered(row) for row in rows])

    contributed = {index: 0 for index in range(len(runs))}
    for index, _ in kept.values():
        contributed[index] += 1
    merged_from = []
    for index, run in enumerate(runs):
        entry: dict[str, Any] = {"path": str(run.path.resolve()), "name": run.name}
        entry.update({key: run.provenance[key] for key in PROVENANCE_KEYS if key in run.provenance})
        entry.update(cells_in_source=len(run.cells), cells_kept=contributed[index])
        if run.warnings:
            entry["warnings"] = run.warnings
        merged_from.append(entry)
    specs: dict[str, Any] = {}
    for index, run in enumerate(runs):
        for spec in run.provenance.get("cells", []) if isinstance(run.provenance.get("cells"), list) else []:
            if isinstance(spec, dict) and kept.get(str(spec.get("cell_id")), (None,))[0] == index:
                specs[str(spec["cell_id"])] = spec
    provenance = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(command if command is not None else sys.argv),
        "cwd": os.getcwd(),
        "hostname": socket.gethostname(),
        "versions": _consensus([run.versions for run in runs if run.versions]) if any(r.versions for r in runs)
        else {},
        "machine": _consensus([run.provenance.get("machine") for run in runs if run.provenance.get("machine")]),
        "merged_from": merged_from,
        "cells": list(specs.values()),
        "history": [],
    }
    if isinstance(provenance["versions"], dict) and "mixed" in provenance["versions"]:
        mixed = provenance["versions"]["mixed"]
        packages = sorted({key for versions in mixed for key in versions})
        provenance["versions"] = {p: _consensus([v.get(p) for v in mixed]) for p in packages}
        provenance["versions"] = {p: v if not isinstance(v, dict) else "mixed: " + ", ".join(map(str, v["mixed"]))
                                  for p, v in provenance["versions"].items()}
        notes.append("the sources ran different package versions; run.json 'versions' says 'mixed' for those")
    store.write_run_json(provenance)
    if curves:
        store.write_curves(pd.concat(curves, ignore_index=True))
    stored_as_text = store.write_cells(frame)
    if copied:
        notes.append(f"copied {len(copied)} density artifact(s) into {target / DENSITY_DIR}")
    if models:
        notes.append(f"copied {len(models)} model file(s) into {target / MODELS_DIR}")
    return MergeResult(target, len(frame), notes, [*(warning for run in runs for warning in run.warnings),
                                                   *stored_as_text])

