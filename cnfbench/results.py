"""The results store: one folder per run, written atomically after every cell.

A run folder holds ``cells.parquet`` and ``cells.csv`` (one row per cell),
``curves.parquet`` (training curves) and ``run.json`` (provenance). Every
file is written to a temporary name and renamed into place, so a reader
never sees a half-written file. Nothing here uses pickle.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from cnfbench.messages import describe_exception, one_line

CELLS_PARQUET = "cells.parquet"
CELLS_CSV = "cells.csv"
CURVES_PARQUET = "curves.parquet"
RUN_JSON = "run.json"

_UMASK = os.umask(0)
os.umask(_UMASK)

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ResultsError(Exception):
    """A results folder or file is missing or unreadable; the message names it."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def check_run_name(name: str) -> str:
    """Reject names that could escape the output root or surprise a shell."""
    if not _NAME_PATTERN.match(name) or name in (".", ".."):
        raise ValueError(
            f"invalid run name {name!r}: use letters, digits, '.', '_' or '-' (no '/', at most 128 characters)"
        )
    return name


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    finally:
        if tmp.exists():
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
        write_json(self.run_dir / RUN_JSON, data)

    def read_cells(self) -> tuple[pd.DataFrame, list[str]]:
        """The cell rows and warnings about what was damaged; an empty frame when the folder has no rows yet.

        A damaged ``cells.parquet`` next to an intact ``cells.csv`` is set aside as
        ``cells.parquet.damaged-TIME`` (so that no later write overwrites it) and the CSV's rows are used.
        Raises :class:`ResultsError` naming the file when no copy can be read.
        """
        parquet, csv = self.run_dir / CELLS_PARQUET, self.run_dir / CELLS_CSV
        if not parquet.exists():
            if not csv.exists():
                return pd.DataFrame(), []
            return _read_csv(csv), [f"{parquet} is missing; using {csv}"]
        try:
            return _read_parquet(parquet), []
        except ResultsError as damaged:
            if not csv.exists():
                raise damaged from None
            try:
                fallback = _read_csv(csv)
            except ResultsError as also:
                raise ResultsError(f"{also}; {damaged}", csv) from None
            try:
                where = f"set aside as {self.set_aside(parquet).name}"  # type: ignore[union-attr]
            except OSError as exc:
                where = f"could not set it aside ({exc.strerror or type(exc).__name__})"
            return fallback, [f"{damaged}; {where}; using {csv}"]

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
    """The cell rows of a run folder (or of a ``cells.parquet`` file) as a DataFrame."""
    target = Path(path)
    if target.is_dir():
        target = target / CELLS_PARQUET
    if not target.exists():
        raise ResultsError(f"no results at {target}")
    return _read_parquet(target)


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
