"""Trained models of a run folder: a finished cell's field, rebuilt from its spec and loaded from its model file.

Every ``done`` cell that trained keeps its field as ``models/<cell_id>.safetensors``, and cells that share
its model (``trained_in``) load that file (see
:mod:`cnfbench.model_file`). :func:`load_model` rebuilds the field from the
spec recorded in that file through the plugin registry — with the plugins the
run recorded in ``run.json`` (its config's ``plugin`` list), or those given —
and loads the tensors with ``strict=True`` after checking their dtypes, so
the field integrates exactly as it did when the cell was evaluated.
Everything that can be wrong — a cell id the run does not have, a run
without model files, a cell that did not finish, a damaged file, a file whose
tensors do not fit its spec — is a one-line :class:`ResultsError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cnfbench.cells import Cell
from cnfbench.contracts import VectorField
from cnfbench.families import GRID_AXES
from cnfbench.messages import describe_exception, one_line
from cnfbench.params import ParamError, parse_selection
from cnfbench.plugin_manager import PluginLoadError
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


def model_cells(run: Run) -> list[str]:
    """The ids of the cells of ``run`` whose model file (their own, or the one they share) is there, in row order."""
    folder = run.path / MODELS_DIR
    if not folder.is_dir() or "cell_id" not in run.cells:
        return []
    stored = {path.name[: -len(MODEL_SUFFIX)] for path in folder.glob(f"*{MODEL_SUFFIX}")}
    return [cell_id for cell_id in run.cells["cell_id"].astype(str) if trainer_of(run, cell_id) in stored]


def _listing(ids: list[str]) -> str:
    shown = ", ".join(ids[:_LISTED_IDS])
    return shown + (f" and {len(ids) - _LISTED_IDS} more" if len(ids) > _LISTED_IDS else "")


def recorded_plugins(run: Run) -> list[str]:
    """The ``--plugin`` list the run recorded; a relative ``.py`` path missing here is looked up from the run's
    working directory (``cwd`` in ``run.json``)."""
    config = run.provenance.get("config")
    plugins = config.get("plugin", []) if isinstance(config, dict) else []
    if not isinstance(plugins, list):
        return []
    cwd = run.provenance.get("cwd")
    found = []
    for plugin in map(str, plugins):
        there = Path(cwd) / plugin if isinstance(cwd, str) else None
        if plugin.endswith(".py") and not Path(plugin).is_absolute() and not Path(plugin).exists() \
                and there is not None and there.is_file():
            plugin = str(there)
        found.append(plugin)
    return found


def _registry(run: Run, plugins: Sequence[str] | None) -> Registry:
    chosen = recorded_plugins(run) if plugins is None else list(plugins)
    try:
        return load_registry(chosen)
    except (PluginLoadError, RegistryError) as exc:
        given = "the given plugins" if plugins is not None else f"the plugins {run.path} recorded"
        raise ResultsError(f"cannot load {given}: {one_line(exc)}", run.path) from None


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
                axes[axis.key] = registry.resolve(axis.key, parse_selection(label))
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
                 plugins: Sequence[str] | None = None, registry: Registry | None = None) -> TrainedModel:
    """The trained field of cell ``cell_id`` of the run folder ``run``, with its cell and dimension.

    ``plugins`` replaces the ``--plugin`` list the run recorded (``None``: use it); ``registry`` an
    already loaded registry. Raises :class:`ResultsError` (one line naming the run or file and what is
    wrong), or :class:`ValueError` for an unknown ``device``.
    """
    loaded = run if isinstance(run, Run) else load_run(run)
    try:
        target = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"unknown device {str(device)!r}: {describe_exception(exc, 120)}") from None
    stored = _stored(loaded, str(cell_id))
    registry = registry or _registry(loaded, plugins)
    _check_dimension(stored, registry)
    field = _rebuild(stored, registry).to(target).eval()
    cell = _row_cell(loaded, str(cell_id), stored.spec.cell, registry)
    return TrainedModel(field, cell, stored.spec.dim, stored.path, registry)


def load_model(run: str | os.PathLike[str] | Run, cell_id: str, *, device: str | torch.device = "cpu",
               plugins: Sequence[str] | None = None) -> VectorField:
    """The trained field of cell ``cell_id`` of the run folder ``run``, in eval mode on ``device``, ready to integrate.

    It is rebuilt from the spec in ``models/<cell_id>.safetensors`` with the plugins the run recorded (or
    ``plugins``) and loaded with ``strict=True``. Raises :class:`~cnfbench.run_folder.ResultsError` with one
    line naming what is wrong: a cell the run does not have, a run without model files, a cell that did not
    finish, a damaged file, or tensors that do not match the spec.
    """
    return load_trained(run, cell_id, device=device, plugins=plugins).field

