"""Load plugins into a pluggy manager: entry points (built-ins included) and ``--plugin`` modules.

The built-in plugins are declared as entry points of the ``cnfbench``
distribution itself, so they travel exactly the path a third-party package
takes. ``CNFBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` keeps only cnfbench's own entry
points. Extra plugins come from ``--plugin`` (a module name or a ``.py``
file) and the ``CNFBENCH_PLUGINS`` environment variable (comma separated).
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


def _import_file(path: Path) -> ModuleType:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"cnfbench_user_plugin_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


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
    looks_like_file = text.endswith(".py") or os.sep in text or "/" in text
    try:
        if looks_like_file:
            path = Path(text).expanduser()
            if not path.is_file():
                raise PluginLoadError(f"plugin file {text!r} does not exist")
            module = _import_file(path)
            info = PluginInfo(str(path), "file", str(path.resolve()), "")
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
    env_plugins = [item for item in os.environ.get(PLUGINS_ENV, "").split(",") if item.strip()]
    for spec in [*env_plugins, *extra_plugins]:
        infos.append(load_user_plugin(pm, spec))
    return pm, infos
