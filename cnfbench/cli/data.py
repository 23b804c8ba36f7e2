"""``cnfbench data``: fetch the files that file-based datasets read into the data folder.

``cnfbench data download maf`` downloads the MAF benchmark archive (zenodo record 1161203, about 800 MB) and
unpacks its POWER, GAS, HEPMASS, MINIBOONE and BSDS300 folders; ``cnfbench data download gas`` fetches the UCI
gas sensor recordings that the ``gas`` dataset reads (the archive holds them only as a pandas pickle, which
cnfbench does not unpickle). A download goes into a ``.part`` file and an interrupted one resumes with an HTTP
``Range`` request when the command is run again. Without a network the command fails within seconds with one
``Error:`` line (exit code 2).
"""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

import click

from cnfbench import __version__
from cnfbench.cli import fail, main

if TYPE_CHECKING:
    import tarfile

MAF_URL = "https://zenodo.org/record/1161203/files/data.tar.gz"
"""The MAF archive (Papamakarios et al., 2017) on zenodo."""

MAF_ARCHIVE = "maf-data.tar.gz"
MAF_FOLDERS = ("power", "gas", "hepmass", "miniboone", "BSDS300")
"""The archive's folders that cnfbench's datasets read (it also holds mnist and cifar10, left packed)."""

MAF_PREFIX = "data"
"""The archive's top folder, stripped when unpacking (``data/power/data.npy`` lands in ``power/data.npy``)."""

GAS_URL = "https://archive.ics.uci.edu/static/public/322/gas+sensor+array+under+dynamic+gas+mixtures.zip"
"""UCI's 'Gas sensor array under dynamic gas mixtures' (dataset 322): ``ethylene_CO.txt`` and
``ethylene_methane.txt``."""

GAS_ARCHIVE = "uci-gas.zip"
GAS_FILES = ("ethylene_methane.txt", "ethylene_CO.txt")

TIMEOUT_S = 10.0
"""Seconds to wait for a connection, and for each read of the answer, before giving up."""

CHUNK = 1 << 20


class DownloadError(Exception):
    """A download or an unpacking failed; the message is one line."""


def _reason(exc: BaseException) -> str:
    import urllib.error

    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else Exception(str(exc.reason))
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _total_from_content_range(value: str | None) -> int | None:
    """The full size in ``Content-Range: bytes a-b/total`` (or ``bytes */total``), if it says."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _start_from_content_range(value: str | None) -> int | None:
    if not value:
        return None
    unit, _, span = value.strip().partition(" ")
    first = span.split("-", 1)[0].strip()
    return int(first) if unit == "bytes" and first.isdigit() else None


def download(url: str, target: Path, timeout: float = TIMEOUT_S) -> None:
    """Download ``url`` to ``target`` through ``target.part``, resuming a ``.part`` left by an earlier attempt.

    Raises :class:`DownloadError` (one line) when the server cannot be reached, answers an error or the
    transfer stops early; what arrived stays in the ``.part`` file for the next attempt.
    """
    import contextlib
    import http.client
    import urllib.error
    import urllib.request

    part = target.with_name(target.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": f"cnfbench/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    resume_hint = "run the command again to resume" if start or part.exists() else "run the command again"
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # nothing after `start`: the part file may already be whole
            if _total_from_content_range(exc.headers.get("Content-Range")) == start:
                part.replace(target)
                return
            part.unlink()
            raise DownloadError(f"{url} refused to resume {part.name} (HTTP 416); the partial file was removed: "
                                "run the command again to start over") from None
        raise DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise DownloadError(f"cannot reach {url}: {_reason(exc)} (no network? {resume_hint})") from None
    with response:
        status = getattr(response, "status", 200)
        content_range = response.headers.get("Content-Range")
        if status == 206 and _start_from_content_range(content_range) == start:
            mode, done = "ab", start
            total = _total_from_content_range(content_range)
        else:  # a full answer (the server ignored the range): start over
            mode, done = "wb", 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        target.parent.mkdir(parents=True, exist_ok=True)
        label = f"Downloading {target.name}" + (f" (resuming at {done / 2**20:.0f} MiB)" if done else "")
        progress: Any = (click.progressbar(length=total, label=label, file=sys.stderr, width=30) if total
                         else contextlib.nullcontext())
        try:
            with part.open(mode) as out, progress as bar:
                if bar is not None:
                    bar.update(done)
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"download of {url} stopped after {done / 2**20:.1f} MiB: {_reason(exc)} (the data "
                                f"so far is in {part}; run the command again to resume)") from None
    if total is not None and done != total:
        raise DownloadError(f"download of {url} stopped after {done} of {total} bytes (the data so far is in {part}; "
                            "run the command again to resume)")
    part.replace(target)


def _safe_member_path(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    """The member's path; an absolute path, a drive, a ``..`` part or a link is refused (``DownloadError``)."""
    name = member.name
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or ".." in path.parts or "\\" in name:
        raise DownloadError(f"{archive} holds an unsafe member {name!r} (an absolute path or '..'): not unpacked")
    if not (member.isfile() or member.isdir()):
        raise DownloadError(f"{archive} holds {name!r}, which is a link or a special file: not unpacked")
    return path


def unpack_tar(archive: Path, root: Path, keep: tuple[str, ...], prefix: str = "") -> list[Path]:
    """Unpack the members of ``archive`` under the folders ``keep`` (after dropping a top folder ``prefix``) into
    ``root``; every member is checked first (no absolute path, no ``..``, no link), and one unsafe member stops
    the unpacking before anything is written. Returns the files written."""
    import tarfile

    extra: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            chosen = []
            for member in members:
                parts = _safe_member_path(member, archive).parts
                if prefix and parts and parts[0] == prefix:
                    parts = parts[1:]
                if parts and parts[0] in keep:
                    chosen.append((member, PurePosixPath(*parts)))
            if not any(member.isfile() for member, _ in chosen):
                raise DownloadError(f"{archive} holds none of the folders {', '.join(keep)}: not the expected archive")
            written = []
            for member, relative in chosen:
                member.name = str(relative)
                tar.extract(member, root, **extra)
                if member.isfile():
                    written.append(root / relative)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DownloadError(f"cannot unpack {archive}: {_reason(exc)} (delete it to download it again)") from None
    return written


def extract_zip_files(archive: Path, names: tuple[str, ...], folder: Path) -> list[Path]:
    """Copy the members of the zip ``archive`` whose file name is one of ``names`` (at any depth, also inside a
    zip within it) to ``folder``/name. Only those fixed names are written, so member paths cannot escape."""
    import io
    import shutil
    import zipfile

    written: dict[str, Path] = {}

    def scan(source: zipfile.ZipFile, depth: int) -> None:
        for info in source.infolist():
            base = PurePosixPath(info.filename.replace("\\", "/")).name
            if base in names and base not in written and not info.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / base
                with source.open(info) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                written[base] = target
            elif base.lower().endswith(".zip") and depth < 2:
                with source.open(info) as inner:
                    scan(zipfile.ZipFile(io.BytesIO(inner.read())), depth + 1)

    try:
        with zipfile.ZipFile(archive) as outer:
            scan(outer, 0)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DownloadError(f"cannot unpack {archive}: {_reason(exc)} (delete it to download it again)") from None
    if not written:
        raise DownloadError(f"{archive} holds none of {', '.join(names)}: not the expected archive")
    return list(written.values())


def _data_folder(data_dir: str | None) -> Path:
    from cnfbench.contracts import data_root

    root = Path(data_dir).expanduser().resolve() if data_dir else data_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the data folder {root}: {_reason(exc)}") from None
    return root


DATA_DIR_OPTION = click.option("--data-dir", help="the data folder to fill [default: $CNFBENCH_DATA, else "
                                                  "~/.cache/cnfbench/data]")
KEEP_OPTION = click.option("--keep-archive", is_flag=True,
                           help="keep the downloaded archive after unpacking it [default: off]")


@main.group()
def data() -> None:
    """Fetch the files that file-based datasets (power, gas, hepmass, miniboone, bsds300) read."""


@data.group(name="download")
def download_group() -> None:
    """Download a dataset archive into the data folder (resumes an interrupted download)."""


@download_group.command(name="maf")
@DATA_DIR_OPTION
@KEEP_OPTION
def download_maf(data_dir: str | None, keep_archive: bool) -> None:
    """The MAF benchmark archive (zenodo 1161203, ~800 MB) for power, hepmass, miniboone and bsds300."""
    try:
        root = _data_folder(data_dir)
        archive = root / MAF_ARCHIVE
        if not archive.is_file():
            download(MAF_URL, archive)
        click.echo(f"Unpacking {archive.name} into {root} ...", err=True)
        written = unpack_tar(archive, root, MAF_FOLDERS, MAF_PREFIX)
    except DownloadError as exc:
        raise fail(str(exc)) from None
    if not keep_archive:
        archive.unlink(missing_ok=True)
    click.echo(f"MAF data ready in {root} ({len(written)} files): datasets power, hepmass, miniboone, bsds300 "
               "(gas reads the UCI text file: cnfbench data download gas)")


@download_group.command(name="gas")
@DATA_DIR_OPTION
@KEEP_OPTION
def download_gas(data_dir: str | None, keep_archive: bool) -> None:
    """The UCI gas sensor recordings (ethylene_methane.txt, ethylene_CO.txt) that dataset gas reads."""
    try:
        root = _data_folder(data_dir)
        archive = root / GAS_ARCHIVE
        if not archive.is_file():
            download(GAS_URL, archive)
        written = extract_zip_files(archive, GAS_FILES, root / "gas")
    except DownloadError as exc:
        raise fail(str(exc)) from None
    if not keep_archive:
        archive.unlink(missing_ok=True)
    click.echo(f"UCI gas data ready in {root / 'gas'}: {', '.join(path.name for path in written)}")
