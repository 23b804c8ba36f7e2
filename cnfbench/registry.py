"""The component registry: what every plugin provides, by family and name.

It asks each registered plugin's hooks for its component classes, rejects
duplicates, resolves user selections (``euler[steps=10]``) into fully
parameterised specs and builds component instances from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from cnfbench.contracts import FAMILIES, Component
from cnfbench.messages import describe_exception, did_you_mean
from cnfbench.params import ParamError, Selection, resolve_params, spec_params
from cnfbench.plugin_manager import PluginInfo, create_plugin_manager
from cnfbench.specs import ResolvedComponent

__all__ = ["ComponentBuildError", "ComponentEntry", "Registry", "RegistryError", "ResolvedComponent", "load_registry"]


@dataclass(frozen=True)
class ComponentEntry:
    """One registered component class and the plugin that provides it."""

    family: str
    name: str
    cls: type[Component]
    plugin: str


class RegistryError(Exception):
    """A plugin broke the registration rules (bad class, duplicate name)."""


class ComponentBuildError(RuntimeError):
    """A component's constructor failed; the message names the component and its plugin."""


class Registry:
    """All components known to a plugin manager, per family."""

    def __init__(self, pm: pluggy.PluginManager, plugins: Sequence[PluginInfo] = ()) -> None:
        self.pm = pm
        self.plugins = list(plugins)
        self._components: dict[str, dict[str, ComponentEntry]] = {key: {} for key in FAMILIES}
        for family in FAMILIES.values():
            hook = getattr(pm.hook, family.hook)
            for impl in hook.get_hookimpls():  # registration order
                plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
                for cls in impl.function() or ():
                    self._add(family.key, cls, plugin_name)

    def _add(self, family: str, cls: Any, plugin_name: str) -> None:
        base = FAMILIES[family].base
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise RegistryError(
                f"plugin {plugin_name!r} returned {cls!r} from {FAMILIES[family].hook}, "
                f"which is not a subclass of {base.__module__}.{base.__qualname__}"
            )
        name = getattr(cls, "name", "")
        if not isinstance(name, str) or not name or any(ch in name for ch in "[],= "):
            raise RegistryError(
                f"plugin {plugin_name!r}: {family} class {cls.__qualname__} needs a plain string `name`"
            )
        existing = self._components[family].get(name)
        if existing is not None and existing.cls is not cls:
            raise RegistryError(
                f"{family} {name!r} is provided twice: by plugin {existing.plugin!r} and by plugin {plugin_name!r}"
            )
        self._components[family][name] = ComponentEntry(family, name, cls, plugin_name)

    def implementations(self, hook: str) -> list[tuple[str, Callable[..., Any]]]:
        """``(plugin name, call)`` for every implementation of an observer ``hook``, in registration order.

        ``call(**arguments)`` passes each implementation only the arguments it declares.
        """
        found = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            def call(_impl: Any = impl, **arguments: Any) -> Any:
                return _impl.function(*[arguments[name] for name in _impl.argnames])

            found.append((self.pm.get_name(impl.plugin) or repr(impl.plugin), call))
        return found

    def names(self, family: str) -> list[str]:
        return sorted(self._components[family])

    def entries(self, family: str) -> list[ComponentEntry]:
        return [self._components[family][name] for name in self.names(family)]

    def get(self, family: str, name: str) -> ComponentEntry:
        entry = self._components[family].get(name)
        if entry is None:
            known = ", ".join(self.names(family)) or "none"
            raise ParamError(f"unknown {family} {name!r}; known {FAMILIES[family].plural}: {known}"
                             f"{did_you_mean(name, self.names(family))}")
        return entry

    def resolve(self, family: str, selection: Selection) -> ResolvedComponent:
        """Validate ``selection`` against the declared parameters; raise :class:`ParamError`."""
        entry = self.get(family, selection.name)
        values = resolve_params(f"{family} {selection.name!r}", entry.cls.params, selection.raw_params)
        return ResolvedComponent(selection.name, tuple(spec_params(entry.cls.params, values).items()))

    def describe(self, family: str, name: str) -> str:
        """``'name' (plugin 'x')``: how messages name a component."""
        return f"{name!r} (plugin {self.get(family, name).plugin!r})"

    def build(self, family: str, resolved: ResolvedComponent, *args: Any) -> Any:
        """Instantiate a resolved component (``args`` are positional, e.g. a field's ``dim``).

        Any failure inside the component's constructor (an undeclared or
        unaccepted parameter, a bug) becomes a :class:`ComponentBuildError`
        naming the component and its plugin.
        """
        entry = self.get(family, resolved.name)
        try:
            return entry.cls(*args, **resolved.kwargs)
        except Exception as exc:  # noqa: BLE001 - attribute the failure to the plugin
            raise ComponentBuildError(
                f"{family} {self.describe(family, resolved.name)} could not be built with "
                f"{resolved.label()}: {describe_exception(exc)}"
            ) from exc


def load_registry(extra_plugins: Sequence[str] = (), autoload: bool | None = None) -> Registry:
    """Create the plugin manager, load every plugin and collect their components."""
    pm, infos = create_plugin_manager(extra_plugins, autoload)
    return Registry(pm, infos)
