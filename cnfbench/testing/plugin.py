"""Whole plugins and dispatch: check any component by family, every component a plugin registers, one test each."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from cnfbench.testing._checker import ConformanceError, one_line
from cnfbench.testing.dataset import check_dataset
from cnfbench.testing.executor import check_executor
from cnfbench.testing.field import check_field
from cnfbench.testing.metric import check_metric
from cnfbench.testing.objective import check_objective
from cnfbench.testing.optimizer import check_optimizer
from cnfbench.testing.protocol import check_protocol
from cnfbench.testing.solver import check_solver
from cnfbench.testing.trace import check_trace
from cnfbench.testing.tracker import check_tracker

CHECKS: dict[str, Callable[..., None]] = {
    "dataset": check_dataset,
    "field": check_field,
    "objective": check_objective,
    "solver": check_solver,
    "trace": check_trace,
    "executor": check_executor,
    "tracker": check_tracker,
    "metric": check_metric,
    "optimizer": check_optimizer,
    "protocol": check_protocol,
}
"""The check of each component family, by family key."""


def check_component(family: str, cls: type, params: Mapping[str, Any] | None = None, **options: Any) -> None:
    """Run the check of ``family`` (``dataset``, ``field``, ``objective``, ``solver``, ``trace``, ``optimizer``,
    ``executor``, ``tracker``, ``metric`` or ``protocol``) on ``cls``."""
    if family not in CHECKS:
        raise ValueError(f"unknown component family {family!r}; known: {', '.join(sorted(CHECKS))}")
    CHECKS[family](cls, params, **options)


def _as_plugin(plugin: Any) -> Any:
    """The module ``plugin`` names, or ``plugin`` itself."""
    return importlib.import_module(plugin) if isinstance(plugin, str) else plugin


def plugin_components(plugin: Any) -> list[tuple[str, type]]:
    """``(family, class)`` for every component ``plugin``'s hooks return, as cnfbench would register them.

    ``plugin`` is a module (or any object with hook implementations) or a
    module name. Raises :class:`ConformanceError` when the hooks are broken:
    a hook function without ``@hookimpl``, a misspelt hook, a class of the
    wrong family, a missing or duplicate ``name``, or no components at all.
    """
    import pluggy

    from cnfbench import hookspecs
    from cnfbench.contracts import FAMILIES
    from cnfbench.registry import Registry, RegistryError

    module = _as_plugin(plugin)
    label = f"plugin {getattr(module, '__name__', repr(module))}"
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(module, name=label)
        pm.check_pending()
    except Exception as exc:  # noqa: BLE001 - pluggy's validation errors, reported as one line
        raise ConformanceError(f"{label}: its hooks do not match cnfbench's hook specifications: "
                               f"{one_line(exc)}") from exc
    hook_names = [name for name in dir(hookspecs) if name.startswith("cnfbench_")]
    for name in hook_names:
        if callable(getattr(module, name, None)) and pm.parse_hookimpl_opts(module, name) is None:
            raise ConformanceError(f"{label}: {name} is not decorated with @hookimpl "
                                   f"(from cnfbench.hookspecs import hookimpl), so cnfbench never calls it")
    try:
        registry = Registry(pm)
    except RegistryError as exc:
        raise ConformanceError(f"{label}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a hook that raises
        raise ConformanceError(f"{label}: calling its hooks raised {one_line(exc)}") from exc
    components = [(family, entry.cls) for family in FAMILIES for entry in registry.entries(family)]
    if not components and not any(pm.parse_hookimpl_opts(module, name) for name in hook_names):
        raise ConformanceError(f"{label}: implements none of cnfbench's hooks")
    return components


def check_plugin(plugin: Any, params: Mapping[str, Mapping[str, Any]] | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Check every component that ``plugin``'s hooks return; return ``["field 'name'", ...]``, those checked.

    ``params`` maps a component name to the parameters to check it with, and
    ``options`` to keyword options of its check (``{"linear":
    {"time_dependent": False}}``). All components are checked; one
    :class:`ConformanceError` lists every failure.
    """
    checked, failures = [], []
    for family, cls in plugin_components(plugin):
        try:
            check_component(family, cls, (params or {}).get(cls.name), **(options or {}).get(cls.name, {}))
        except ConformanceError as exc:
            failures.append(str(exc))
        checked.append(f"{family} {cls.name!r}")
    if failures:
        raise ConformanceError(f"{len(failures)} of {len(checked)} component(s) failed the conformance checks:\n"
                               + "\n".join(f"- {failure}" for failure in failures))
    return checked


def conformance_tests(plugin: Any, params: Mapping[str, Mapping[str, Any]] | None = None,
                      options: Mapping[str, Mapping[str, Any]] | None = None) -> Callable[..., None]:
    """A pytest test function parametrized over every component of ``plugin`` (one test each).

    In a test module: ``test_conformance = conformance_tests(my_package.plugin)``;
    ``params`` and ``options`` are as for :func:`check_plugin`.
    """
    import pytest

    cases = [pytest.param(family, cls, id=f"{family}-{cls.name}") for family, cls in plugin_components(plugin)]

    @pytest.mark.parametrize(("family", "cls"), cases)
    def test_component_conformance(family: str, cls: type) -> None:
        check_component(family, cls, (params or {}).get(cls.name), **(options or {}).get(cls.name, {}))

    return test_component_conformance

