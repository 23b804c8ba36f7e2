"""One writer per run folder: an advisory lock held for the whole of a command that writes it.

``run``, ``evaluate`` and ``merge`` hold the lock of their run folder (the file ``.cnfbench.lock`` in it) from
before they write anything until they end; a second writer gets :class:`FolderLocked`, one line naming the
holder's pid, host, command and start, or waits for it (``--wait``). The lock is the operating system's
(``flock`` where there is ``fcntl``; the ``filelock`` package elsewhere), so it goes when its process dies,
even by ``kill -9``: there is never a stale lock to remove by hand. Read commands never need it; they only
repair a damaged file (:func:`try_lock`) when no writer holds the folder.

Within one process the lock is re-entrant: the command takes it, and the runner it calls finds it held.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOCK_NAME = ".cnfbench.lock"
POLL_S = 0.5
"""Seconds between attempts while waiting for another writer."""

_HELD: dict[Path, int] = {}
"""Run folders this process holds: resolved path -> depth (re-entrant)."""
_GUARD = threading.Lock()


class FolderLocked(Exception):
    """Another process writes this run folder; the message is one line naming it."""


def lock_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / LOCK_NAME


def holder(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What the writer holding ``run_dir`` wrote about itself (empty when unknown)."""
    try:
        data = json.loads(lock_path(run_dir).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(run_dir: str | os.PathLike[str]) -> str:
    """``pid 123 on host h (cnfbench run --name x, since 2026-12-07 11:40:02)``, or what is known of it."""
    info = holder(run_dir)
    if not info:
        return "another process (it has not said which yet)"
    command = info.get("command")
    parts = [str(part) for part in (f"`{command}`" if command else "", f"since {info['started']}"
                                    if info.get("started") else "") if part]
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}" + (f" ({', '.join(parts)})" if parts else "")


class _OsLock:
    """An exclusive, non-blocking lock on an open file: ``flock``, or ``filelock`` where there is no ``fcntl``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._fallback: Any = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:  # Windows
            import filelock

            self._fallback = filelock.FileLock(str(self.path) + ".os")
            try:
                self._fallback.acquire(timeout=0)
            except filelock.Timeout:
                return False
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)  # a writer that created the folder removes it empty
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:  # the file was removed as we locked it
                raise OSError("lock file replaced")
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def describe_self(self, info: dict[str, Any]) -> None:
        """Write who holds the lock into the lock file (read by :func:`holder`)."""
        assert self._fd is not None
        data = json.dumps(info).encode()
        with contextlib.suppress(OSError):  # a full disk: the lock holds all the same, its holder goes unnamed
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the file releases flock
            self._fd = None
        if self._fallback is not None:
            self._fallback.release()
            self._fallback = None


def _command_line() -> str:
    words = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    text = " ".join(words)
    return text if len(text) <= 200 else text[:199] + "…"


@contextlib.contextmanager
def run_folder_lock(run_dir: str | os.PathLike[str], wait: bool = False,
                    waiting: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the write lock of ``run_dir`` (created if missing) for the block; yield the folder.

    Raises :class:`FolderLocked` when another process holds it, unless ``wait``: then ``waiting`` hears one line
    saying whom it waits for, and the lock is taken when that writer ends. A folder this call created and
    that holds nothing but the lock when the block ends (the command wrote nothing) is removed again.
    """
    folder = Path(run_dir)
    key = folder.resolve()
    with _GUARD:
        if key in _HELD:
            _HELD[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield folder
        finally:
            with _GUARD:
                _HELD[key] -= 1
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = _OsLock(lock_path(folder))
    told = False
    while not lock.acquire():
        if not wait:
            _remove_if_empty(folder, created)
            raise FolderLocked(f"{folder} is being written by {describe_holder(folder)}; cnfbench lets one command "
                               "write a run folder at a time: wait for it to end, or pass --wait")
        if not told and waiting is not None:
            waiting(f"waiting for {folder}: it is being written by {describe_holder(folder)}")
            told = True
        time.sleep(POLL_S)
    lock.describe_self({"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(),
                        "started": dt.datetime.now().isoformat(sep=" ", timespec="seconds")})
    with _GUARD:
        _HELD[key] = 1
    try:
        yield folder
    finally:
        with _GUARD:
            del _HELD[key]
        lock.release()
        _remove_if_empty(folder, created)


def holds(run_dir: str | os.PathLike[str]) -> bool:
    """Whether this process holds ``run_dir``'s lock."""
    with _GUARD:
        return Path(run_dir).resolve() in _HELD


@contextlib.contextmanager
def try_lock(run_dir: str | os.PathLike[str]) -> Iterator[bool]:
    """The lock of an existing ``run_dir`` if no other process holds it (yields True), else nothing (False).

    Read commands repair a damaged file only under it, so that they never race a writer."""
    folder = Path(run_dir)
    if holds(folder):
        yield True
        return
    if not folder.is_dir():
        yield False
        return
    lock = _OsLock(lock_path(folder))
    try:
        got = lock.acquire()
    except OSError:  # a read-only folder: nothing could be repaired anyway
        got = False
    try:
        yield got
    finally:
        if got:
            lock.release()


def _remove_if_empty(folder: Path, created: bool) -> None:
    """Remove ``folder`` when this command created it and left nothing in it but its lock."""
    if not created:
        return
    with contextlib.suppress(OSError):
        if {path.name for path in folder.iterdir()} <= {LOCK_NAME, LOCK_NAME + ".os"}:
            for name in (LOCK_NAME, LOCK_NAME + ".os"):
                (folder / name).unlink(missing_ok=True)
            folder.rmdir()
