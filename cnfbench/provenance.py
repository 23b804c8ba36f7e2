"""Provenance of a run: versions, machine, git commit, command line and resolved configuration."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cnfbench.plugin_manager import PluginInfo

PACKAGES = ("cnfbench", "torch", "numpy", "pandas", "pyarrow", "pluggy", "click")
"""The harness's own dependencies; the libraries components declare are added to them."""


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(directory: Path) -> str | None:
    """The commit of the git checkout holding ``directory`` (with ``-dirty`` if modified), else ``None``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def device_description(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def plugin_entry(plugin: PluginInfo) -> dict[str, Any]:
    """How ``run.json`` records one plugin: name (as the user gave it), source, origin, version, error, and for a
    ``.py`` file the SHA-256 of the bytes that ran — what a later reader checks its own ``--plugin`` file against."""
    entry: dict[str, Any] = {"name": plugin.name, "source": plugin.source, "origin": plugin.origin,
                             "version": plugin.version, "error": plugin.error}
    if plugin.sha256:
        entry["sha256"] = plugin.sha256
    return entry


def collect(argv: list[str], config: dict[str, Any], plugins: list[PluginInfo], device: str,
            libraries: Sequence[str] = ()) -> dict[str, Any]:
    """Everything needed to know where a run's numbers came from.

    ``libraries`` are the distributions the run's components declared their numbers depend on
    (``Component.libraries``); their versions are recorded beside the harness's own. ``plugins`` are recorded
    with :func:`plugin_entry` (a ``.py`` file with its SHA-256): names to show, never files to import.
    """
    source_dir = Path(__file__).resolve().parent
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": argv,
        "cwd": os.getcwd(),
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {package: _version(package) for package in (*PACKAGES, *sorted(set(libraries) - set(PACKAGES)))},
        "libraries": sorted(set(libraries)),
        "plugins": [plugin_entry(p) for p in plugins],
        "machine": device_description(device),
        "git_commit": git_commit(source_dir) or git_commit(Path.cwd()),
        "config": config,
    }
