"""Checks that a command can write where it was told to, before it computes or writes anything.

Every command that writes (``run``, ``report``, ``compare``, ``merge``,
``sample``, ``new-plugin``) checks its output folders and files first, so that a file
where a folder is expected, a read-only location or a path through a file is
one ``Error:`` line instead of a traceback after minutes of work. The probe
creates nothing that stays: missing folders are not created here, and the
nearest existing ancestor is tested by creating and removing one temporary
file (``os.access`` would say yes to root on a read-only file system).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class OutputPathError(ValueError):
    """An output location cannot be written; the message is one line naming it."""


def _as_path(path: str | os.PathLike[str], what: str) -> Path:
    text = os.fspath(path)
    if not str(text).strip():
        raise OutputPathError(f"the path for {what} is empty")
    if "\x00" in str(text):
        raise OutputPathError(f"the path for {what} contains a NUL character")
    return Path(text).expanduser()


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def _probe(folder: Path, shown: Path, what: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".cnfbench-probe-"):
            pass
    except OSError as exc:
        raise OutputPathError(f"cannot write {what} to {str(shown)!r}: {folder} is not writable "
                              f"({exc.strerror or type(exc).__name__})") from None


def _check_folder(folder: Path, shown: Path, what: str) -> None:
    try:
        existing = _nearest_existing(folder.absolute())
    except (OSError, ValueError) as exc:
        raise OutputPathError(f"cannot write {what} to {str(shown)!r}: {getattr(exc, 'strerror', None) or exc}"
                              ) from None
    if existing.is_symlink() and not existing.exists():
        raise OutputPathError(f"cannot write {what} to {str(shown)!r}: {existing} is a broken link")
    if not existing.is_dir():
        if existing == shown.absolute():
            raise OutputPathError(f"cannot write {what} to {str(shown)!r}: it is a file, not a folder")
        raise OutputPathError(f"cannot write {what} to {str(shown)!r}: {existing} is a file, not a folder")
    _probe(existing, shown, what)


def check_output_dir(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a folder that exists and is writable, or can be created; raise :class:`OutputPathError`.

    ``what`` names the output in the message, e.g. ``"the run"`` or ``"plots"``.
    """
    target = _as_path(path, what)
    _check_folder(target, target, what)
    return target


def check_output_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a file that can be written (its folder exists or can be created); raise :class:`OutputPathError`."""
    target = _as_path(path, what)
    try:
        is_folder = target.is_dir()
    except OSError as exc:
        raise OutputPathError(f"cannot write {what} to {str(target)!r}: {exc.strerror or exc}") from None
    if is_folder:
        raise OutputPathError(f"cannot write {what} to {str(target)!r}: it is a folder, not a file")
    _check_folder(target.absolute().parent, target, what)
    return target


MIN_FREE_MIB = 32
"""Free space a run needs on its output device before it starts, in MiB (``$CNFBENCH_MIN_FREE_MIB`` overrides):
room for its rows, curves and model files — a default cell's model file is about 50 KB, one of FFJORD's tabular
fields a few MB, and each table is rewritten beside its old copy."""
MIN_FREE_ENV = "CNFBENCH_MIN_FREE_MIB"


def min_free_mib() -> float:
    """:data:`MIN_FREE_MIB`, or ``$CNFBENCH_MIN_FREE_MIB`` when it holds a number ≥ 0."""
    text = os.environ.get(MIN_FREE_ENV, "").strip()
    try:
        value = float(text)
    except ValueError:
        return float(MIN_FREE_MIB)
    return value if value >= 0 else float(MIN_FREE_MIB)


def check_free_space(path: str | os.PathLike[str], what: str) -> float:
    """The free MiB on the device that holds (or will hold) ``path``; raise :class:`OutputPathError` when it has
    less than :func:`min_free_mib`."""
    target = _as_path(path, what)
    try:
        existing = _nearest_existing(target.absolute())
        free = shutil.disk_usage(existing if existing.is_dir() else existing.parent).free / 2**20
    except OSError:
        return float("nan")  # no answer from the file system: the writes will say
    needed = min_free_mib()
    if free < needed:
        raise OutputPathError(f"cannot write {what} to {str(target)!r}: only {free:.1f} MiB free on its device, "
                              f"below the {needed:g} MiB a run needs (${MIN_FREE_ENV} sets it)")
    return free
