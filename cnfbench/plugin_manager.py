"""Load plugins into a pluggy manager: entry points (built-ins included) and ``--plugin`` modules.

The built-in plugins are declared as entry points of the ``cnfbench``
distribution itself, so they travel exactly the path a third-party package
takes. ``CNFBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` keeps only cnfbench's own entry
points. Extra plugins come from ``--plugin`` (a module name or a ``.py``
file) and the ``CNFBENCH_PLUGINS`` environment variable (comma separated).
A ``.py`` file is executed from the very bytes whose SHA-256 its
:class:`PluginInfo` records, so a run's provenance names the code that ran.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pluggy

from cnfbench import hookspecs
from cnfbench.messages import describe_exception, one_line

ENTRY_POINT_GROUP = "cnfbench"
OWN_DISTRIBUTION = "cnfbench"
AUTOLOAD_ENV = "CNFBENCH_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "CNFBENCH_PLUGINS"


class PluginLoadError(Exception):
    """A plugin named by the user could not be loaded; the message is one line."""


@dataclass
class PluginInfo:
    """Where a registered (or broken) plugin came from."""

    name: str
    source: str  # "built-in", "entry point", "file" or "module"
    origin: str  # distribution, file path or module name
    version: str
    error: str | None = None
    sha256: str = ""  # of a ``.py`` file plugin's bytes, as imported; "" for the other sources


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, pluggy.PluginValidationError):
        return _validation_message(exc)
    return describe_exception(exc)


def _validation_message(exc: pluggy.PluginValidationError) -> str:
    text = one_line(exc)
    if "unknown hook" in text:
        hooks = ", ".join(sorted(hookspecs.HOOK_NAMES))
        return f"{text}; known hooks: {hooks}"
    return text


def looks_like_file(spec: str) -> bool:
    """Whether a ``--plugin`` value names a ``.py`` file (else it is a module name)."""
    text = spec.strip()
    return text.endswith(".py") or os.sep in text or "/" in text


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of the file at ``path``; raises :class:`OSError`."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def user_plugin_specs(extra_plugins: Sequence[str] = ()) -> list[str]:
    """The user's plugins in load order: ``CNFBENCH_PLUGINS`` (comma separated), then ``extra_plugins``."""
    env_plugins = [item for item in os.environ.get(PLUGINS_ENV, "").split(",") if item.strip()]
    return [*env_plugins, *extra_plugins]


def _import_file(path: Path) -> tuple[ModuleType, str]:
    """The module of the ``.py`` file at ``path``, executed from the bytes read here, and their SHA-256."""
    source = path.read_bytes()
    sha256 = hashlib.sha256(source).hexdigest()
    # The name depends on the content too: a file edited within one process is imported afresh, not served stale.
    digest = hashlib.sha1(f"{path.resolve()}\0{sha256}".encode()).hexdigest()[:10]
    module_name = f"cnfbench_user_plugin_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name], sha256
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # the hashed bytes, not a second read
    except BaseException:
        del sys.modules[module_name]
        raise
    return module, sha256


def _register(pm: pluggy.PluginManager, module: object, name: str) -> None:
    """Register ``module``; a hook with no spec or with wrong argument names unregisters it and raises."""
    if pm.get_plugin(name) is not None or pm.is_registered(module):
        return
    pm.register(module, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        pm.unregister(module)
        raise
    if not pm.get_hookcallers(module):
        pm.unregister(module)
        raise PluginLoadError(f"plugin {name!r} implements no cnfbench hook (did you forget @hookimpl?)")


def load_user_plugin(pm: pluggy.PluginManager, spec: str) -> PluginInfo:
    """Import and register one ``--plugin`` value; raise :class:`PluginLoadError` on failure."""
    text = spec.strip()
    try:
        if looks_like_file(text):
            path = Path(text).expanduser()
            if not path.is_file():
                raise PluginLoadError(f"plugin file {text!r} does not exist")
            module, sha256 = _import_file(path)
            info = PluginInfo(str(path), "file", str(path.resolve()), "", sha256=sha256)
        else:
            module = importlib.import_module(text)
            info = PluginInfo(text, "module", text, str(getattr(module, "__version__", "")))
        _register(pm, module, info.name)
    except PluginLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure in user code becomes one clear line
        raise PluginLoadError(f"plugin {text!r} failed to load: {_one_line(exc)}") from exc
    return info


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return sorted(found, key=lambda ep: (ep.dist.name if ep.dist else "", ep.name))


def create_plugin_manager(
    extra_plugins: Sequence[str] = (), autoload: bool | None = None
) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Build the plugin manager and return it with the info of every plugin tried.

    Broken entry-point plugins are recorded (``PluginInfo.error``) and skipped;
    a broken ``--plugin`` raises :class:`PluginLoadError`, since the user asked for it.
    """
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "") in ("", "0")
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    for ep in _entry_points():
        dist_name = ep.dist.name if ep.dist else "?"
        own = dist_name.lower() == OWN_DISTRIBUTION
        if not own and not autoload:
            continue
        info = PluginInfo(
            name=f"{dist_name}:{ep.name}",
            source="built-in" if own else "entry point",
            origin=ep.value,
            version=ep.dist.version if ep.dist else "",
        )
        try:
            _register(pm, ep.load(), info.name)
        except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not stop the rest
            info.error = _one_line(exc)
        infos.append(info)
    if not any(info.source == "built-in" for info in infos):
        raise PluginLoadError(
            "cnfbench's built-in plugins were not found: install the project with `pip install -e .`"
        )
    for spec in user_plugin_specs(extra_plugins):
        infos.append(load_user_plugin(pm, spec))
    return pm, infos
