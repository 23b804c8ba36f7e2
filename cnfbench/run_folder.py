"""The run folder: every file a run writes and reads, in one place, written atomically, never with pickle.

A run folder holds ``cells.parquet`` and ``cells.csv`` (one row per cell),
``curves.parquet`` (training curves), ``run.json`` (provenance, with the
folder's format version), ``density/<cell_id>.npz`` (2D density pictures) and
``models/<cell_id>.safetensors`` (the trained field of every finished cell).
Every file is written to a temporary name and renamed into place, so a reader
never sees a half-written file. Only the main process writes here (workers
return outcomes as JSON, and a finished cell's model as safetensors bytes).
:func:`load_run` reads a folder back, using what is intact; it reads every
format since cnfbench 0.1.0 (format 1, whose ``run.json`` carries no
``format`` key).

Density artifact format (:data:`DENSITY_FORMAT_VERSION` 1), an ``.npz`` archive read with
``allow_pickle=False``: ``format_version`` (int64 scalar), ``grid_x`` ``[nx]`` and ``grid_y``
``[ny]`` (float32, increasing cell centres), ``log_prob`` ``[nx, ny]`` (float32, the model's
log-density at ``(grid_x[i], grid_y[j])`` — "ij" indexing, as :func:`cnfbench.validity.mass_grid`
lays out its points), ``samples`` ``[n, 2]`` (float32, samples drawn from the trained model) and
``data`` ``[m, 2]`` (float32, test data the model is compared with).

Model files (``models/<cell_id>.safetensors``) are in the format of :mod:`cnfbench.model_file`:
safetensors, the field's ``state_dict()`` with the cell spec, the data's dimension and the versions in
its metadata. :func:`write_model` and :func:`read_model` check that a file is sound and is its cell's.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cnfbench.cells import EARLIER_MEANING
from cnfbench.folder_lock import describe_holder, try_lock
from cnfbench.messages import describe_exception, one_line
from cnfbench.model_file import ModelFileError, ModelSpec, check_model, decode_model

CELLS_PARQUET = "cells.parquet"
CELLS_CSV = "cells.csv"
CURVES_PARQUET = "curves.parquet"
RUN_JSON = "run.json"
RUN_FORMAT = 2
"""The run folder's format version, written to ``run.json`` as ``format`` (0.1.0's folders, without it, are 1)."""
DENSITY_DIR = "density"
DENSITY_SUFFIX = ".npz"
DENSITY_FORMAT_VERSION = 1
DENSITY_ARRAYS = ("format_version", "grid_x", "grid_y", "log_prob", "samples", "data")
"""The arrays of a density artifact, in the order they are written."""
MODELS_DIR = "models"
MODEL_SUFFIX = ".safetensors"

_UMASK = os.umask(0)
os.umask(_UMASK)

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ResultsError(Exception):
    """A results folder or file is missing or unreadable; the message names it."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class DiskFull(ResultsError):
    """A file could not be written for want of space (``ENOSPC``, or ``EDQUOT``: over quota); nothing half-written
    was left in its place. The message names the file."""


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the device is full or the user's quota is spent."""
    return isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT)
                                         or "no space left on device" in str(exc).lower())


def check_run_name(name: str) -> str:
    """Reject names that could escape the output root or surprise a shell."""
    if not _NAME_PATTERN.match(name) or name in (".", ".."):
        raise ValueError(
            f"invalid run name {name!r}: use letters, digits, '.', '_' or '-' (no '/', at most 128 characters)"
        )
    return name


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    Raises :class:`DiskFull` (naming ``path``) when the device is full: ``path`` is then as it was before."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        tmp = Path(tmp_name)
        write(tmp)
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    except OSError as exc:
        if no_space(exc):
            raise DiskFull(f"no space left on device writing {path}", path) from None
        raise
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"))


class RunStore:
    """Reads and writes the files of one run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def write_cells(self, frame: pd.DataFrame) -> list[str]:
        """Write the rows to ``cells.parquet`` and ``cells.csv``; return warnings (one per column stored as text).

        A row is never dropped: a column whose values parquet cannot store as they are (an integer beyond
        64 bits, numbers and strings mixed across cells) is stored as text instead, with a warning.
        """
        storable, converted = storable_frame(frame)
        atomic_write(self.run_dir / CELLS_PARQUET, lambda tmp: storable.to_parquet(tmp, index=False))
        atomic_write(self.run_dir / CELLS_CSV, lambda tmp: frame.to_csv(tmp, index=False))
        return [f"column {name!r} of {self.run_dir / CELLS_PARQUET} holds values parquet cannot store as they are "
                f"({why}); stored as text" for name, why in converted.items()]

    def write_curves(self, frame: pd.DataFrame) -> None:
        atomic_write(self.run_dir / CURVES_PARQUET, lambda tmp: frame.to_parquet(tmp, index=False))

    def write_run_json(self, data: dict[str, Any]) -> None:
        write_json(self.run_dir / RUN_JSON, {"format": RUN_FORMAT, **data})

    def read_cells(self) -> tuple[pd.DataFrame, list[str]]:
        """The cell rows and warnings about what was damaged; an empty frame when the folder has no rows yet.

        A damaged ``cells.parquet`` next to an intact ``cells.csv`` is set aside as
        ``cells.parquet.damaged-TIME`` (so that no later write overwrites it), the CSV's rows are used and a new
        ``cells.parquet`` is written from them — unless another process is writing the folder (its lock).
        Raises :class:`ResultsError` naming the file when no copy can be read.
        """
        frame, problems = self._read_cell_files()
        return with_earlier_meanings(frame), problems

    def _read_cell_files(self) -> tuple[pd.DataFrame, list[str]]:
        parquet, csv = self.run_dir / CELLS_PARQUET, self.run_dir / CELLS_CSV
        if not parquet.exists():
            if not csv.exists():
                return pd.DataFrame(), []
            fallback = _read_csv(csv)
            return fallback, [f"{parquet} is missing; using {csv}{self._rewrite_parquet(fallback, damaged=False)}"]
        try:
            return _read_parquet(parquet), []
        except ResultsError as damaged:
            if not csv.exists():
                raise damaged from None
            try:
                fallback = _read_csv(csv)
            except ResultsError as also:
                raise ResultsError(f"{also}; {damaged}", csv) from None
            return fallback, [f"{damaged}; using {csv}{self._rewrite_parquet(fallback, damaged=True)}"]

    def _rewrite_parquet(self, rows: pd.DataFrame, damaged: bool) -> str:
        """Set a damaged ``cells.parquet`` aside and write a fresh one from ``rows`` (those of the intact CSV);
        only when no other process is writing the folder. Return what was done, as the end of a warning."""
        parquet = self.run_dir / CELLS_PARQUET
        with try_lock(self.run_dir) as locked:
            if not locked:
                return f"; left as it is while {describe_holder(self.run_dir)} writes the folder"
            done = ""
            try:
                if damaged:
                    done = f"; set aside as {self.set_aside(parquet).name}"  # type: ignore[union-attr]
                storable, _ = storable_frame(rows)
                atomic_write(parquet, lambda tmp: storable.to_parquet(tmp, index=False))
            except (OSError, ResultsError) as exc:
                return f"{done}; could not write a new {CELLS_PARQUET} ({getattr(exc, 'strerror', None) or exc})"
            return f"{done}; a new {CELLS_PARQUET} was written from it"

    def set_aside(self, path: Path) -> Path | None:
        """Rename a damaged file to ``NAME.damaged-TIMESTAMP`` so that nothing is overwritten; return the new path."""
        if not path.exists():
            return None
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = path.with_name(f"{path.name}.damaged-{stamp}")
        counter = 1
        while target.exists():  # a second damaged copy in the same second must not replace the first
            counter += 1
            target = path.with_name(f"{path.name}.damaged-{stamp}-{counter}")
        os.replace(path, target)
        return target

    def read_curves(self) -> pd.DataFrame:
        return _read_parquet(self.run_dir / CURVES_PARQUET)

    def read_run_json(self) -> dict[str, Any]:
        path = self.run_dir / RUN_JSON
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{path} is unreadable: {one_line(exc)}", path) from None
        if not isinstance(data, dict):
            raise ResultsError(f"{path} does not hold a JSON object", path)
        return data


def with_earlier_meanings(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the identity columns added since cnfbench 0.1.0 filled where a row predates them
    (:data:`cnfbench.cells.EARLIER_MEANING`: e.g. ``objective`` = ``mle``), so old and new rows compare."""
    if frame.empty or "cell_id" not in frame:
        return frame
    frame = frame.copy()
    for column, value in EARLIER_MEANING.items():
        if column not in frame:
            frame[column] = value
        elif frame[column].isna().any():
            frame[column] = frame[column].astype(object).where(frame[column].notna(), value)
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds for a damaged file
        raise ResultsError(f"{path} is unreadable: {describe_exception(exc, 200)}", path) from None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds for a damaged file
        raise ResultsError(f"{path} is unreadable: {describe_exception(exc, 200)}", path) from None
    if "cell_id" not in frame:
        raise ResultsError(f"{path} has no cell_id column: not a cnfbench results file", path)
    return frame


def storable_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """``frame`` with every column parquet cannot store as it is turned into text, and why, by column name."""
    import pyarrow as pa

    converted: dict[str, str] = {}
    columns = {}
    for name in frame.columns:
        column = frame[name]
        try:
            pa.array(column, from_pandas=True)
            columns[name] = column
        except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
            converted[str(name)] = one_line(exc, 120)
            columns[name] = column.map(lambda value: None if _missing(value) else str(value)).astype(object)
    return (pd.DataFrame(columns, index=frame.index) if converted else frame), converted


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The cell rows of a run folder (or of its ``cells.parquet`` or ``cells.csv``) as a DataFrame.

    A damaged or missing ``cells.parquet`` beside an intact ``cells.csv`` is read from the CSV (and replaced
    from it, the damaged file set aside), with a :class:`RuntimeWarning` saying so."""
    target = Path(path)
    run_dir = target if target.is_dir() else target.parent
    if not (run_dir / CELLS_PARQUET).exists() and not (run_dir / CELLS_CSV).exists():
        raise ResultsError(f"no results at {target if not target.is_dir() else target / CELLS_PARQUET}")
    frame, problems = RunStore(run_dir)._read_cell_files()  # the rows as stored
    for problem in problems:
        warnings.warn(problem, RuntimeWarning, stacklevel=2)
    return frame


_TEMPORARY_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # what atomic_write's mkstemp names look like


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``run_dir`` (and its subfolders); return them.

    Only :func:`atomic_write`'s own names (``.NAME.XXXXXXXX.tmp``) are touched.
    Call it before a run writes anything: the run folder has one writer, so
    any temporary file there at that moment belongs to a writer that is gone.
    """
    removed: list[Path] = []
    if not run_dir.is_dir():
        return removed
    for path in sorted(run_dir.rglob(".*.tmp")):
        if _TEMPORARY_PATTERN.match(path.name) and path.is_file() and not path.is_symlink():
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


def _checked_cell_id(cell_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(cell_id)):
        raise ValueError(f"invalid cell id {cell_id!r}")
    return str(cell_id)


def density_path(run_dir: str | Path, cell_id: str) -> Path:
    """Where a cell's density artifact lives: ``<run_dir>/density/<cell_id>.npz``."""
    return Path(run_dir) / DENSITY_DIR / f"{_checked_cell_id(cell_id)}{DENSITY_SUFFIX}"


def _array(value: Any, name: str, ndim: int | None = None) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float32)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {array.shape}")
    return array


@dataclass(frozen=True)
class DensityArtifacts:
    """A cell's learned log-density on a grid, model samples and the data, as written by the runner."""

    grid_x: np.ndarray
    grid_y: np.ndarray
    log_prob: np.ndarray
    samples: np.ndarray
    data: np.ndarray
    log_prob_solver: np.ndarray | None = None
    """The log-density the row's own solver reports on the same grid (files written before it existed: None)."""


def write_density_artifacts(run_dir: str | Path, cell_id: str, grid_x: Any, grid_y: Any, log_prob_grid: Any,
                            samples: Any, data: Any, log_prob_solver_grid: Any = None) -> Path:
    """Write ``<run_dir>/density/<cell_id>.npz`` atomically (float32 arrays, no pickle); return its path.

    ``grid_x`` ``[nx]`` and ``grid_y`` ``[ny]`` are the grid's cell centres; ``log_prob_grid`` is the
    model's log-density there, shape ``[nx, ny]`` (or flat ``[nx*ny]`` in the "ij" order of
    :func:`cnfbench.validity.mass_grid`, which is reshaped); ``samples`` ``[n, 2]`` are drawn from
    the model and ``data`` ``[m, 2]`` are test samples; ``log_prob_solver_grid`` (optional, same shape as
    ``log_prob_grid``) is the log-density the row's own solver reports there. Arrays may be numpy arrays or
    torch tensors.
    A few hundred samples and points and an 80x80 grid make a file of about 30 KB.
    """
    gx, gy = _array(grid_x, "grid_x", 1), _array(grid_y, "grid_y", 1)
    log_prob = _array(log_prob_grid, "log_prob_grid")
    if log_prob.ndim == 1 and log_prob.size == gx.size * gy.size:
        log_prob = log_prob.reshape(gx.size, gy.size)
    if log_prob.shape != (gx.size, gy.size):
        raise ValueError(f"log_prob_grid must have shape ({gx.size}, {gy.size}), got {log_prob.shape}")
    arrays = {"format_version": np.int64(DENSITY_FORMAT_VERSION), "grid_x": gx, "grid_y": gy, "log_prob": log_prob,
              "samples": _array(samples, "samples", 2), "data": _array(data, "data", 2)}
    if log_prob_solver_grid is not None:
        own = _array(log_prob_solver_grid, "log_prob_solver_grid")
        arrays["log_prob_solver"] = own.reshape(log_prob.shape) if own.size == log_prob.size else own
        if arrays["log_prob_solver"].shape != log_prob.shape:
            raise ValueError(f"log_prob_solver_grid must have the shape of log_prob_grid, got {own.shape}")
    for name in ("samples", "data"):
        if arrays[name].shape[1] != 2:
            raise ValueError(f"{name} must have shape [n, 2], got {arrays[name].shape}")
    path = density_path(run_dir, cell_id)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream:  # a file object: numpy adds no ".npz" to the temporary name
            np.savez_compressed(stream, **arrays)

    atomic_write(path, write)
    return path


def read_density_artifacts(run_dir: str | Path, cell_id: str) -> DensityArtifacts | None:
    """A cell's density artifact, ``None`` when the run has none; :class:`ResultsError` when it is damaged."""
    path = density_path(run_dir, cell_id)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: np.asarray(archive[name]) for name in DENSITY_ARRAYS}
            own = np.asarray(archive["log_prob_solver"]) if "log_prob_solver" in archive.files else None
    except Exception as exc:  # noqa: BLE001 - zipfile/numpy raise many kinds for a damaged file
        raise ResultsError(f"{path} is unreadable: {type(exc).__name__}: {' '.join(str(exc).split())[:150]}",
                           path) from None
    if int(arrays["format_version"]) != DENSITY_FORMAT_VERSION:
        raise ResultsError(f"{path} has format version {int(arrays['format_version'])}; "
                           f"this cnfbench reads version {DENSITY_FORMAT_VERSION}", path)
    nx, ny = arrays["grid_x"].size, arrays["grid_y"].size
    if arrays["log_prob"].shape != (nx, ny) or arrays["samples"].ndim != 2 or arrays["data"].ndim != 2:
        raise ResultsError(f"{path} has arrays of inconsistent shapes", path)
    if own is not None and own.shape != (nx, ny):
        raise ResultsError(f"{path} has arrays of inconsistent shapes", path)
    return DensityArtifacts(arrays["grid_x"], arrays["grid_y"], arrays["log_prob"], arrays["samples"],
                            arrays["data"], own)



def model_path(run_dir: str | Path, cell_id: str) -> Path:
    """Where a cell's trained field lives: ``<run_dir>/models/<cell_id>.safetensors``."""
    return Path(run_dir) / MODELS_DIR / f"{_checked_cell_id(cell_id)}{MODEL_SUFFIX}"


def model_file_name(cell_id: str) -> str:
    """The model file's path relative to the run folder, as the ``model_file`` column records it."""
    return f"{MODELS_DIR}/{_checked_cell_id(cell_id)}{MODEL_SUFFIX}"


def write_model(run_dir: str | Path, cell_id: str, data: bytes) -> Path:
    """Write a cell's model file (bytes from :func:`cnfbench.model_file.encode_model`) atomically; return its path.

    The bytes must be a sound model file of this very cell: anything else raises
    :class:`ResultsError` naming the file and what is wrong, and nothing is written.
    """
    path = model_path(run_dir, cell_id)
    try:
        check_model(data, cell_id)
    except ModelFileError as exc:
        raise ResultsError(f"{path} {exc}", path) from None
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


@dataclass(frozen=True)
class StoredModel:
    """A model file as read and checked: the cell that trained it, the data's dimension, the tensors, the metadata."""

    path: Path
    spec: ModelSpec
    tensors: dict[str, Any]  # name -> torch.Tensor on CPU


def read_model(run_dir: str | Path, cell_id: str) -> StoredModel | None:
    """A cell's model file, ``None`` when the run has none; :class:`ResultsError` naming the file and what is
    wrong when it is unreadable, damaged or not this cell's (nothing is loaded before its header is checked)."""
    path = model_path(run_dir, cell_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ResultsError(f"{path} is unreadable: {exc.strerror or type(exc).__name__}", path) from None
    try:
        spec, tensors = decode_model(data, cell_id)
    except ModelFileError as exc:
        raise ResultsError(f"{path} {exc}", path) from None
    return StoredModel(path, spec, tensors)


LIBRARIES_BEFORE_DECLARATION = ["torchdiffeq"]
"""What a ``run.json`` from cnfbench 0.1.0, made before components declared libraries, depended on."""


@dataclass
class Run:
    """One run folder as read: its cells, curves and provenance, and what was damaged or missing."""

    path: Path
    name: str
    cells: pd.DataFrame
    curves: pd.DataFrame
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def versions(self) -> dict[str, Any]:
        versions = self.provenance.get("versions")
        return versions if isinstance(versions, dict) else {}

    @property
    def libraries(self) -> tuple[str, ...]:
        """The libraries the run's components declared their numbers depend on (see ``Component.libraries``)."""
        declared = self.provenance.get("libraries", LIBRARIES_BEFORE_DECLARATION if self.provenance else [])
        return tuple(str(name) for name in declared) if isinstance(declared, list) else ()


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read a run folder, using what is intact.

    Raises :class:`ResultsError` (one line naming the path) when there is no run
    folder or neither ``cells.parquet`` nor ``cells.csv`` can be read. A damaged ``cells.parquet``
    with an intact ``cells.csv``, a damaged ``curves.parquet`` or an unreadable or hand-edited
    ``run.json`` give a warning in :attr:`Run.warnings` instead.
    """
    run_dir = Path(path)
    if not run_dir.exists():
        raise ResultsError(f"no run folder at {run_dir}", run_dir)
    if run_dir.is_file():
        if run_dir.name not in (CELLS_PARQUET, CELLS_CSV):
            raise ResultsError(f"{run_dir} is a file, not a run folder", run_dir)
        run_dir = run_dir.parent
    parquet, csv_path = run_dir / CELLS_PARQUET, run_dir / CELLS_CSV
    if not parquet.exists() and not csv_path.exists():
        raise ResultsError(f"{run_dir} holds no {CELLS_PARQUET} or {CELLS_CSV}: not a run folder", run_dir)
    store = RunStore(run_dir)
    cells, problems = store.read_cells()
    missing = [c for c in ("cell_id", "status") if c not in cells.columns]
    if missing:
        source = parquet if not problems else csv_path
        raise ResultsError(f"{source} has no {' or '.join(missing)} column: not a cnfbench results file", source)
    try:
        curves = store.read_curves()
    except ResultsError as exc:
        problems.append(f"{exc}; no training curves")
        curves = pd.DataFrame()
    try:
        provenance = store.read_run_json()
        if not provenance:
            problems.append(f"{run_dir / RUN_JSON} is missing: versions and machine unknown")
    except ResultsError as exc:
        problems.append(f"{exc}; versions and machine unknown")
        provenance = {}
    written = provenance.get("format", 1)
    if isinstance(written, int) and written > RUN_FORMAT:
        problems.append(f"{run_dir / RUN_JSON} has format {written}, newer than this cnfbench's {RUN_FORMAT}: "
                        "reading what this version knows")
    versions = provenance.get("versions")
    if provenance and not (isinstance(versions, dict) and all(isinstance(v, (str, type(None)))
                                                               for v in versions.values())):
        problems.append(f"{run_dir / RUN_JSON}: 'versions' is not an object of version strings; versions unknown")
        provenance = {**provenance, "versions": {}}
    return Run(run_dir, run_dir.resolve().name, cells, curves, provenance, problems)
