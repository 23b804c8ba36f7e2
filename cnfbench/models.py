"""Trained models of a run folder: a finished cell's field, rebuilt from its spec and loaded from its model file.

Every ``done`` cell that trained keeps its field as ``models/<cell_id>.safetensors``, and cells that share
its model (``trained_in``) load that file (see
:mod:`cnfbench.model_file`). :func:`load_model` rebuilds the field from the
spec recorded in that file through the plugin registry — the installed plugins and those the caller names
(``plugins``, ``CNFBENCH_PLUGINS``), never the ones the run recorded (a run folder is data, not code: see
:mod:`cnfbench.recorded_plugins`) — and loads the tensors with ``strict=True`` after checking their dtypes, so
the field integrates exactly as it did when the cell was evaluated.
Everything that can be wrong — a cell id the run does not have, a run
without model files, a cell that did not finish, a damaged file, a file whose
tensors do not fit its spec, a component no loaded plugin provides, a plugin file that is not the one the run
recorded — is a one-line :class:`ResultsError`.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cnfbench.cells import Cell
from cnfbench.contracts import VectorField
from cnfbench.families import GRID_AXES
from cnfbench.messages import describe_exception, one_line
from cnfbench.params import ParamError, parse_selection
from cnfbench.plugin_manager import PluginLoadError
from cnfbench.recorded_plugins import ChangedPluginWarning, PluginCheck, check_user_plugins, require_components
from cnfbench.registry import Registry, RegistryError, load_registry
from cnfbench.run_folder import MODEL_SUFFIX, MODELS_DIR, ResultsError, Run, StoredModel, load_run, read_model

_LISTED_IDS = 5
"""Cell ids an error message lists at most."""


@dataclass(frozen=True)
class TrainedModel:
    """A loaded model: the field (eval mode, on the requested device), the cell that trained it, the data's
    dimension, the file it came from and the registry that rebuilt it (to build the cell's other components)."""

    field: VectorField
    cell: Cell
    dim: int
    path: Path
    registry: Registry


def trainer_of(run: Run, cell_id: str) -> str:
    """The id of the cell that trained ``cell_id``'s model (``trained_in``; the cell itself in runs before
    models were shared)."""
    if "trained_in" not in run.cells:
        return cell_id
    rows = run.cells[run.cells["cell_id"].astype(str) == cell_id]
    trainer = rows["trained_in"].iloc[0] if len(rows) else None
    return str(trainer) if isinstance(trainer, str) and trainer else cell_id


def _stored_ids(run: Run) -> set[str]:
    """The cell ids of the model files in ``run``'s ``models/`` (read from the folder, never built from a row)."""
    folder = run.path / MODELS_DIR
    return {path.name[: -len(MODEL_SUFFIX)] for path in folder.glob(f"*{MODEL_SUFFIX}")} if folder.is_dir() else set()


def model_cells(run: Run) -> list[str]:
    """The ids of the cells of ``run`` whose model file (their own, or the one they share) is there, in row order."""
    if "cell_id" not in run.cells:
        return []
    stored = _stored_ids(run)
    return [cell_id for cell_id in run.cells["cell_id"].astype(str) if trainer_of(run, cell_id) in stored]


@dataclass(frozen=True)
class MissingModel:
    """A model a finished cell trained that its run no longer offers: the cell that trained it, how it reads
    (its components and seed), why it is not there, and how many other rows share it."""

    cell_id: str
    label: str
    reason: str
    shared_by: int


def row_label(row: Mapping[str, Any]) -> str:
    """``concatsquash | 8gaussians | mle | euler | exact | seed 0``: a row's components by name, and its seed."""
    parts = [one_line(row.get(axis.column), 60) for axis in GRID_AXES if isinstance(row.get(axis.column), str)]
    seed = row.get("seed")
    if seed is not None and not pd.isna(seed):
        parts.append(f"seed {one_line(seed, 20)}")
    return repr(" | ".join(parts))[1:-1]  # a hand-edited row could hold control characters


def missing_models(run: Run) -> list[MissingModel]:
    """The models of ``run``'s ``done`` rows whose file is gone, one per model (rows that share a model are
    counted in it, not listed), in row order."""
    if not {"cell_id", "status"} <= set(run.cells.columns):
        return []
    stored = _stored_ids(run)
    rows = run.cells[run.cells["status"].astype(str) == "done"]
    users: Counter[str] = Counter()
    first: dict[str, Mapping[str, Any]] = {}
    for row in rows.to_dict("records"):
        trainer = trainer_of(run, str(row["cell_id"]))
        if trainer not in stored:
            users[trainer] += 1
            if trainer not in first or str(row["cell_id"]) == trainer:
                first[trainer] = row
    missing = []
    for trainer, row in first.items():
        kept = isinstance(row.get("model_file"), str) and bool(row.get("model_file"))
        reason = (f"its model file {MODELS_DIR}/{trainer}{MODEL_SUFFIX} is missing" if kept else
                  "the run kept no model file for it (made before cnfbench kept trained models, or merged without "
                  "it)")
        missing.append(MissingModel(trainer, row_label(row), repr(reason)[1:-1], users[trainer] - 1))
    return missing


def unfinished(run: Run) -> dict[str, int]:
    """How many rows of ``run`` ended each status other than ``done`` and have no model to load (by status)."""
    if not {"cell_id", "status"} <= set(run.cells.columns):
        return {}
    stored = _stored_ids(run)
    rows = run.cells[run.cells["status"].astype(str) != "done"]
    counts = Counter(str(row["status"]) for row in rows.to_dict("records")
                     if trainer_of(run, str(row["cell_id"])) not in stored)
    return dict(sorted(counts.items()))


def _listing(ids: list[str]) -> str:
    shown = ", ".join(ids[:_LISTED_IDS])
    return shown + (f" and {len(ids) - _LISTED_IDS} more" if len(ids) > _LISTED_IDS else "")


def registry_for(run: Run, plugins: Sequence[str] = (), *, allow_changed_plugin: bool = False
                 ) -> tuple[Registry, PluginCheck]:
    """The registry to read ``run`` with: the installed plugins, ``CNFBENCH_PLUGINS`` and ``plugins`` — never
    those the run recorded — with what checking the user's plugin files against the run's records had to say.

    A ``.py`` file named like one the run recorded but with another SHA-256 is refused before it is imported
    (unless ``allow_changed_plugin``); raises :class:`ResultsError` with one line.
    """
    check = check_user_plugins(run, plugins, allow_changed_plugin)
    try:
        return load_registry(plugins), check
    except (PluginLoadError, RegistryError) as exc:
        raise ResultsError(f"cannot load the plugins: {one_line(exc)}", run.path) from None


def _with_models(run: Run) -> list[str]:
    """:func:`model_cells` of ``run``; :class:`ResultsError` when it has none."""
    with_models = model_cells(run)
    if not with_models:
        raise ResultsError(f"{run.path} holds no model files ({MODELS_DIR}/ is missing or empty: the run was made "
                           "before cnfbench kept trained models, or no cell finished)", run.path)
    return with_models


def only_model(run: Run) -> str:
    """The id of the one cell of ``run`` with a model file; :class:`ResultsError` when it has none or several."""
    with_models = _with_models(run)
    if len(with_models) > 1:
        raise ResultsError(f"{run.path} holds {len(with_models)} models ({_listing(with_models)}): say which cell "
                           "(a cell_id of its cells.csv)", run.path)
    return with_models[0]


def _stored(run: Run, cell_id: str) -> StoredModel:
    """The checked model file of ``cell_id`` in ``run``; :class:`ResultsError` saying why there is none."""
    with_models = _with_models(run)
    ids = run.cells["cell_id"].astype(str)
    if cell_id not in set(ids):
        raise ResultsError(f"no cell {one_line(repr(cell_id), 80)} in {run.path}; cells with a model: "
                           f"{_listing(with_models)}", run.path)
    status = str(run.cells.loc[ids == cell_id, "status"].iloc[0])
    if status != "done":
        raise ResultsError(f"cell {cell_id} of {run.path} ended {status!r}, not 'done': only finished cells keep a "
                           "model", run.path)
    trainer = trainer_of(run, cell_id)
    try:
        stored = read_model(run.path, trainer)
    except ValueError as exc:  # a hand-edited row whose id cannot name a file
        raise ResultsError(f"{run.path}: {exc}", run.path) from None
    if stored is None:
        raise ResultsError(f"{run.path / MODELS_DIR / (trainer + MODEL_SUFFIX)} is missing", run.path)
    return stored


def _row_cell(run: Run, cell_id: str, trainer_cell: Cell, registry: Registry) -> Cell:
    """The cell of row ``cell_id``: the trainer's cell with the grid axes the row names differently (the solver
    and trace a shared model is evaluated with) resolved from the row's spec columns."""
    if trainer_cell.cell_id == cell_id:
        return trainer_cell
    row = run.cells[run.cells["cell_id"].astype(str) == cell_id].iloc[0]
    axes = dict(trainer_cell.axes)
    for axis in GRID_AXES:
        label = row.get(axis.spec_column)
        if isinstance(label, str) and label != axes[axis.key].label():
            try:
                selection = parse_selection(label)
                require_components(run, registry, [(axis.key, selection.name)], f"cell {cell_id}")
                axes[axis.key] = registry.resolve(axis.key, selection)
            except (ParamError, ValueError) as exc:
                raise ResultsError(f"{run.path}: cell {cell_id} names {axis.key} {label!r}, which cannot be "
                                   f"resolved here: {one_line(exc, 200)}", run.path) from None
    return replace(trainer_cell, axes=axes)


def _check_dimension(stored: StoredModel, registry: Registry) -> None:
    """Refuse a file whose dimension is not its dataset's (when the dataset can be built here)."""
    cell = stored.spec.cell
    try:
        with torch.random.fork_rng(devices=[]):
            dim = registry.build("dataset", cell.dataset).dim
    except Exception:  # noqa: BLE001 - without its dataset the field still loads; its shapes are checked below
        return
    if dim != stored.spec.dim:
        raise ResultsError(f"{stored.path} does not match its spec: it records dimension {stored.spec.dim}, dataset "
                           f"{cell.dataset.label()} has dimension {dim}", stored.path)


def _rebuild(stored: StoredModel, registry: Registry) -> VectorField:
    """The field of ``stored``'s spec with its tensors loaded (``strict=True``, dtypes checked)."""
    spec, path = stored.spec, stored.path
    try:
        with torch.random.fork_rng(devices=[]):  # building draws an initialisation the tensors replace
            field = registry.build("field", spec.cell.field, spec.dim)
    except Exception as exc:  # noqa: BLE001 - an unknown field or a failing constructor, said in one line
        raise ResultsError(f"{path}: cannot rebuild field {spec.cell.field.label()}: {one_line(exc, 300)}",
                           path) from None
    expected = field.state_dict()
    wrong = [f"{name} is {tensor.dtype}, the field's is {expected[name].dtype}"
             for name, tensor in stored.tensors.items() if name in expected and tensor.dtype != expected[name].dtype]
    if wrong:  # load_state_dict would convert silently, and the field would no longer be the one evaluated
        raise ResultsError(f"{path} does not match its spec: {'; '.join(wrong[:3])}", path)
    try:
        field.load_state_dict(stored.tensors, strict=True)
    except RuntimeError as exc:
        raise ResultsError(f"{path} does not match its spec (field {spec.cell.field.label()}, dimension {spec.dim}): "
                           f"{one_line(exc, 300)}", path) from None
    return field


def load_trained(run: str | os.PathLike[str] | Run, cell_id: str, *, device: str | torch.device = "cpu",
                 plugins: Sequence[str] | None = None, registry: Registry | None = None,
                 allow_changed_plugin: bool = False, require_all: bool = False) -> TrainedModel:
    """The trained field of cell ``cell_id`` of the run folder ``run``, with its cell and dimension.

    The field is rebuilt with the installed plugins, ``CNFBENCH_PLUGINS`` and ``plugins`` (``.py`` files or
    module names) — never with the plugins the run recorded — or with ``registry``, an already loaded one. A
    ``plugins`` file with the name of one the run recorded but another SHA-256 is refused, unless
    ``allow_changed_plugin`` (then a :class:`~cnfbench.recorded_plugins.ChangedPluginWarning` says so).
    ``require_all`` requires every component of the cell (to evaluate it), not only its field. Raises
    :class:`ResultsError` (one line naming the run or file and what is wrong; a
    :class:`~cnfbench.recorded_plugins.MissingComponentError` when no loaded plugin provides a component, naming
    the plugins the run recorded), or :class:`ValueError` for an unknown ``device``.
    """
    loaded = run if isinstance(run, Run) else load_run(run)
    try:
        target = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"unknown device {str(device)!r}: {describe_exception(exc, 120)}") from None
    stored = _stored(loaded, str(cell_id))
    if registry is None:
        registry, check = registry_for(loaded, plugins or (), allow_changed_plugin=allow_changed_plugin)
        for warning in check.warnings:
            warnings.warn(warning, ChangedPluginWarning, stacklevel=3)
    trained = stored.spec.cell
    needed = [(family, spec.name) for family, spec in trained.components()] if require_all else \
        [("field", trained.field.name)]
    require_components(loaded, registry, needed, f"cell {cell_id}")
    _check_dimension(stored, registry)
    field = _rebuild(stored, registry).to(target).eval()
    cell = _row_cell(loaded, str(cell_id), trained, registry)
    return TrainedModel(field, cell, stored.spec.dim, stored.path, registry)


def load_model(run: str | os.PathLike[str] | Run, cell_id: str, *, device: str | torch.device = "cpu",
               plugins: Sequence[str] | None = None, allow_changed_plugin: bool = False) -> VectorField:
    """The trained field of cell ``cell_id`` of the run folder ``run``, in eval mode on ``device``, ready to integrate.

    It is rebuilt from the spec in ``models/<cell_id>.safetensors`` and loaded with ``strict=True``. The field's
    class comes from the installed plugins, ``CNFBENCH_PLUGINS`` and ``plugins`` (``.py`` files or module
    names you trust): never from a plugin the run folder names, so reading a folder someone else wrote runs no
    code of theirs. A ``plugins`` file with the name of one the run recorded but another SHA-256 is refused
    unless ``allow_changed_plugin=True`` (then a warning says so). Raises
    :class:`~cnfbench.run_folder.ResultsError` with one line naming what is wrong: a cell the run does not
    have, a run without model files, a cell that did not finish, a damaged file, tensors that do not match the
    spec, a changed plugin file, or a field no loaded plugin provides (naming the plugin files the run
    recorded, with their SHA-256, to pass as ``plugins=[PATH]``).
    """
    return load_trained(run, cell_id, device=device, plugins=plugins,
                        allow_changed_plugin=allow_changed_plugin).field
