"""The plugins a run folder recorded: names and SHA-256s to show and to check against, never code to import.

A run folder is data (DESIGN principle 8): ``cnfbench sample``, ``cnfbench evaluate`` and
:func:`cnfbench.load_model` load the installed plugins and those the user names (``--plugin``,
``CNFBENCH_PLUGINS``), never a path or module that a run's ``run.json`` names. This module reads those records
(:func:`recorded_plugins`), compares the user's ``.py`` plugin files with them before any is imported
(:func:`check_user_plugins`: a file with a recorded file's name but another SHA-256 is refused unless allowed),
and words the one-line error when a cell needs a component no loaded plugin provides
(:func:`require_components`), naming the plugins the run recorded and how to pass one deliberately.
Everything read from ``run.json`` is untrusted text: it is flattened, cut and escaped before it is shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnfbench.contracts import FAMILIES
from cnfbench.messages import did_you_mean, one_line
from cnfbench.plugin_manager import file_sha256, looks_like_file, user_plugin_specs
from cnfbench.run_folder import ResultsError, Run

if TYPE_CHECKING:
    from cnfbench.registry import Registry

USER_SOURCES = ("file", "module")
"""Where a user's plugin comes from (``--plugin``, ``CNFBENCH_PLUGINS``), as :class:`PluginInfo.source` says."""
ENTRY_POINT = "entry point"
SHORT_HASH = 12
"""Hex digits of a SHA-256 shown, more when two shown hashes would look alike."""
_LISTED = 4
"""Plugins or components a message lists at most."""
_NAME_LIMIT = 160
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PASS_IT = "--plugin PATH (plugins=[PATH] in Python)"
ALLOW_IT = "--allow-changed-plugin (allow_changed_plugin=True in Python)"
_PLACEHOLDER = {frozenset({"file"}): "PATH", frozenset({"module"}): "MODULE"}


class ChangedPluginError(ResultsError):
    """A plugin file the user named has a recorded plugin's file name but not its SHA-256; one line."""


class MissingComponentError(ResultsError):
    """A cell needs components that no loaded plugin provides; one line naming them and the run's plugins."""

    def __init__(self, message: str, path: Path | None, missing: Sequence[tuple[str, str]]) -> None:
        super().__init__(message, path)
        self.missing = tuple(missing)


class ChangedPluginWarning(UserWarning):
    """A plugin file that differs from the one the run recorded was used, as the caller allowed."""


@dataclass(frozen=True)
class RecordedPlugin:
    """One non-built-in plugin a run recorded: as the user named it, where it came from, and its file's SHA-256
    (``""`` for modules, entry points and files recorded before cnfbench kept hashes)."""

    name: str
    source: str  # "file", "module" or "entry point"
    sha256: str = ""
    version: str = ""

    @property
    def file_name(self) -> str:
        """The last component of a file plugin's path, which a moved copy keeps."""
        return file_name(self.name)


def file_name(path: str) -> str:
    """The last component of a plugin file's path as recorded (either separator: the run may come from Windows)."""
    return re.split(r"[\\/]", path)[-1]


@dataclass
class PluginCheck:
    """What :func:`check_user_plugins` has to say when it lets the user's plugins load."""

    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _shown(text: str) -> str:
    """Untrusted text as a message shows it: one line, cut, quoted and with control characters escaped."""
    return repr(one_line(text, _NAME_LIMIT))


def _entries(provenance: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``plugins`` entries of a ``run.json`` (or of one of its ``evaluations``) that are mappings."""
    plugins = provenance.get("plugins")
    return [entry for entry in plugins if isinstance(entry, dict)] if isinstance(plugins, list) else []


def _configured(provenance: dict[str, Any]) -> list[str]:
    """The ``--plugin`` strings a ``run.json`` (or one of its ``evaluations``) recorded in its ``config``."""
    config = provenance.get("config")
    plugins = config.get("plugin") if isinstance(config, dict) else None
    return [item for item in plugins if isinstance(item, str) and item.strip()] if isinstance(plugins, list) else []


def recorded_plugins(run: Run) -> list[RecordedPlugin]:
    """The non-built-in plugins ``run`` recorded — by the run and by each ``cnfbench evaluate`` of it — in order,
    once each. Only names and hashes are read: nothing here is imported."""
    evaluations = run.provenance.get("evaluations")
    records = [run.provenance, *(entry for entry in evaluations if isinstance(entry, dict))] \
        if isinstance(evaluations, list) else [run.provenance]
    found: dict[tuple[str, str, str], RecordedPlugin] = {}
    for record in records:
        for entry in _entries(record):
            name, source = entry.get("name"), entry.get("source")
            if not isinstance(name, str) or source not in (*USER_SOURCES, ENTRY_POINT):
                continue
            sha256 = entry.get("sha256")
            sha256 = sha256 if source == "file" and isinstance(sha256, str) and _SHA256.match(sha256) else ""
            version = entry.get("version")
            plugin = RecordedPlugin(name, source, sha256, version if isinstance(version, str) else "")
            found.setdefault(("file", "", sha256) if sha256 else (source, name, ""), plugin)  # a file is its bytes
    named = {plugin.file_name if plugin.source == "file" else plugin.name for plugin in found.values()}
    for record in records:  # a --plugin its config names but no plugin entry does (an older or edited run.json)
        for text in _configured(record):
            source = "file" if looks_like_file(text) else "module"
            plugin = RecordedPlugin(text.strip(), source)
            if (plugin.file_name if source == "file" else plugin.name) not in named:
                found.setdefault((source, plugin.name, ""), plugin)
                named.add(plugin.file_name if source == "file" else plugin.name)
    return list(found.values())


def short_hashes(hashes: Iterable[str]) -> dict[str, str]:
    """Each SHA-256 cut to :data:`SHORT_HASH` digits, or to as many as keep them all apart."""
    unique = sorted({sha for sha in hashes if sha})
    length = next((n for n in range(SHORT_HASH, 65) if len({sha[:n] for sha in unique}) == len(unique)), 64)
    return {sha: sha[:length] for sha in unique}


def describe_plugins(plugins: Sequence[RecordedPlugin], short: dict[str, str] | None = None) -> str:
    """``'affine.py' (sha256 3f2a9c0d1e4b), 'pkg:fields' 1.2``: recorded plugins as a message lists them."""
    short = short if short is not None else short_hashes(plugin.sha256 for plugin in plugins)
    parts = []
    for plugin in plugins[:_LISTED]:
        if plugin.sha256:
            detail = f" (sha256 {short.get(plugin.sha256, plugin.sha256)})"
        elif plugin.source == "file":
            detail = " (no SHA-256 recorded)"
        else:
            detail = f" {repr(one_line(plugin.version, 40))[1:-1]}" if plugin.version else ""
        parts.append(f"{_shown(plugin.name)}{detail}")
    more = len(plugins) - _LISTED
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def check_user_plugins(run: Run, plugins: Sequence[str], allow_changed: bool = False) -> PluginCheck:
    """Compare the user's ``.py`` plugin files (``CNFBENCH_PLUGINS``, then ``plugins``) with those ``run``
    recorded, before any is imported.

    A file whose SHA-256 is one the run recorded is that plugin, whatever its name or folder. A file with the
    name of a recorded file but none of its hashes is not the code behind the run's numbers: it raises
    :class:`ChangedPluginError`, or with ``allow_changed`` gives a warning. Any other file is a plugin the run
    did not use (a new metric, say) and loads unchecked; so do module plugins, which are installed code.
    """
    recorded = [plugin for plugin in recorded_plugins(run) if plugin.source == "file"]
    known = {plugin.sha256 for plugin in recorded if plugin.sha256}
    from_env = set(user_plugin_specs(()))
    check = PluginCheck()
    for spec in user_plugin_specs(plugins):
        text = spec.strip()
        if not looks_like_file(text):
            continue
        path = Path(text).expanduser()
        try:
            sha256 = file_sha256(path)
        except OSError:
            continue  # loading it says why, in its own words
        if sha256 in known:
            continue
        namesakes = [plugin for plugin in recorded if plugin.file_name == path.name]
        hashed = [plugin for plugin in namesakes if plugin.sha256]
        where = " (from CNFBENCH_PLUGINS)" if spec in from_env and spec not in plugins else ""
        if hashed:
            short = short_hashes([sha256, *(plugin.sha256 for plugin in hashed)])
            given = f"plugin file {_shown(text)}{where} (sha256 {short[sha256]}) is " \
                f"{'not the' if len(hashed) == 1 else 'none of the'} {describe_plugins(hashed, short)} that " \
                f"{run.path} recorded"
            if not allow_changed:
                raise ChangedPluginError(f"{given}: the run's numbers came from other code; to use it anyway, pass "
                                         f"{ALLOW_IT}", run.path)
            check.warnings.append(f"{given}; using it anyway, as allowed: numbers may differ from the run's")
        elif namesakes:
            check.notes.append(f"{run.path} recorded plugin file {describe_plugins(namesakes)} without a SHA-256 "
                               f"(made before cnfbench kept them): {_shown(text)} cannot be checked against it")
    return check


def unloaded_plugins(run: Run, registry: Registry) -> list[RecordedPlugin]:
    """The plugins ``run`` recorded that ``registry`` did not load: a file neither by SHA-256 nor by file name (a
    file of its name was loaded: the user chose that version, and :func:`check_user_plugins` has said so), a
    module or entry point by name."""
    loaded = [info for info in registry.plugins if info.error is None]
    hashes = {info.sha256 for info in loaded if info.sha256}
    files = {file_name(info.name) for info in loaded if info.source == "file"}
    names = {info.name for info in loaded}
    missing = []
    for plugin in recorded_plugins(run):
        if plugin.source == "file":
            here = plugin.sha256 in hashes or plugin.file_name in files
        else:
            here = plugin.name in names
        if not here:
            missing.append(plugin)
    return missing


def missing_components(registry: Registry, needed: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``(family, name)`` pairs of ``needed`` that no loaded plugin provides, once each, in order."""
    known: dict[str, set[str]] = {}
    missing: list[tuple[str, str]] = []
    for family, name in needed:
        names = known.setdefault(family, set(registry.names(family)) if family in FAMILIES else set())
        if name not in names and (family, name) not in missing:
            missing.append((family, name))
    return missing


def missing_component_message(run: Run, registry: Registry, missing: Sequence[tuple[str, str]],
                              needed_by: str) -> str:
    """One line: what ``needed_by`` needs that no loaded plugin provides, the plugins ``run`` recorded that are
    not loaded here (with their SHA-256), and how to pass one deliberately."""
    shown = " and ".join(f"{family} {_shown(name)}" for family, name in missing[:_LISTED])
    if len(missing) > _LISTED:
        shown += f" and {len(missing) - _LISTED} more"
    absent = unloaded_plugins(run, registry)
    user = [plugin for plugin in absent if plugin.source in USER_SOURCES]
    installed = [plugin for plugin in absent if plugin.source == ENTRY_POINT]
    advice = []
    if user:
        kinds = frozenset(plugin.source for plugin in user)
        how = PASS_IT.replace("PATH", _PLACEHOLDER.get(kinds, "PATH_OR_MODULE"))
        advice.append(f"{run.path} recorded plugin{'s' if len(user) > 1 else ''} {describe_plugins(user)}, which "
                      f"cnfbench never imports from a run folder: if you trust {'one' if len(user) > 1 else 'it'}, "
                      f"pass it yourself with {how}")
    if installed:
        advice.append(f"it recorded installed plugin{'s' if len(installed) > 1 else ''} "
                      f"{describe_plugins(installed)}, not installed here: install its package")
    if not advice:
        family, name = missing[0]
        names = registry.names(family) if family in FAMILIES else []
        plural = FAMILIES[family].plural if family in FAMILIES else family
        advice.append(f"{run.path} recorded no plugin that is not loaded here; known {plural}: "
                      f"{', '.join(names) or 'none'}{did_you_mean(name, names)}; pass the plugin that provides it "
                      f"with {PASS_IT}")
    return f"{needed_by} needs {shown}, which no loaded plugin provides; {'; '.join(advice)}"


def require_components(run: Run, registry: Registry, needed: Iterable[tuple[str, str]], needed_by: str) -> None:
    """Raise :class:`MissingComponentError` (see :func:`missing_component_message`) when ``registry`` lacks any
    ``(family, name)`` of ``needed``."""
    missing = missing_components(registry, needed)
    if missing:
        raise MissingComponentError(missing_component_message(run, registry, missing, needed_by), run.path, missing)
