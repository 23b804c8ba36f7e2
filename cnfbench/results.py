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

    def write_cells(self, frame: pd.DataFrame) -> None:
        atomic_write(self.run_dir / CELLS_PARQUET, lambda tmp: frame.to_parquet(tmp, index=False))
        atomic_write(self.run_dir / CELLS_CSV, lambda tmp: frame.to_csv(tmp, index=False))

    def write_curves(self, frame: pd.DataFrame) -> None:
        atomic_write(self.run_dir / CURVES_PARQUET, lambda tmp: frame.to_parquet(tmp, index=False))

    def write_run_json(self, data: dict[str, Any]) -> None:
        write_json(self.run_dir / RUN_JSON, data)

    def read_cells(self) -> pd.DataFrame:
        """The cell rows; when the parquet file is damaged but the CSV copy is intact, the CSV's rows."""
        try:
            return _read_parquet(self.run_dir / CELLS_PARQUET)
        except ResultsError:
            csv = self.run_dir / CELLS_CSV
            try:
                fallback = pd.read_csv(csv) if csv.exists() else None
            except Exception:  # noqa: BLE001 - both copies damaged: report the parquet one
                fallback = None
            if fallback is None or "cell_id" not in fallback:
                raise
            return fallback

    def set_aside(self, path: Path) -> Path | None:
        """Rename a damaged file to ``NAME.damaged-TIMESTAMP`` so that nothing is overwritten; return the new path."""
        if not path.exists():
            return None
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = path.with_name(f"{path.name}.damaged-{stamp}")
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


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The cell rows of a run folder (or of a ``cells.parquet`` file) as a DataFrame."""
    target = Path(path)
    if target.is_dir():
        target = target / CELLS_PARQUET
    if not target.exists():
        raise ResultsError(f"no results at {target}")
    return _read_parquet(target)
