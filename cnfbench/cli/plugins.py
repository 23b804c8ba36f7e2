"""``cnfbench plugins``: every plugin, the hooks it implements, and the components of every family it provides.

``--family solver`` lists one family (or a comma list of them); ``--json`` writes the same, machine-readable:
every component with its family, plugin, description and parameters (type, default, choices, bounds, help).
The plain listing is folded to the terminal's width (``COLUMNS`` when set, else 100) at spaces only, so no
name, default or example is cut.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import click

from cnfbench.cli import fail, fold_words, load_registry_or_fail, main
from cnfbench.families import FAMILY_TABLE, FamilyRow
from cnfbench.messages import did_you_mean

if TYPE_CHECKING:
    from cnfbench.params import Param
    from cnfbench.registry import ComponentEntry, Registry

NAME_WIDTH = 16
"""The column of component names; a longer name pushes its description one space further."""

PARAM_INDENT = 6
"""Where a component's parameter lines start; their folded lines start two further."""


def _plugin_hooks(registry: Registry) -> dict[str, list[str]]:
    """The hooks each registered plugin implements, by plugin name."""
    hooks: dict[str, list[str]] = {}
    for name, plugin in registry.pm.list_name_plugin():
        hooks[name] = sorted(caller.name for caller in registry.pm.get_hookcallers(plugin) or [])
    return hooks


def chosen_families(given: tuple[str, ...]) -> list[FamilyRow]:
    """The families ``--family`` names (a key or its plural, comma lists allowed), in table order; every family
    when none is given. An unknown one is one ``Error:`` line naming the valid ones (exit 2)."""
    names = [name.strip() for value in given for name in value.split(",") if name.strip()]
    if not names:
        return list(FAMILY_TABLE)
    by_name = {row.key: row for row in FAMILY_TABLE} | {row.plural: row for row in FAMILY_TABLE}
    for name in names:
        if name not in by_name:
            raise fail(f"unknown family {name!r} for --family; families: "
                       f"{', '.join(row.key for row in FAMILY_TABLE)}{did_you_mean(name, by_name)}")
    wanted = {by_name[name].key for name in names}
    return [row for row in FAMILY_TABLE if row.key in wanted]


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def param_json(param: Param) -> dict[str, Any]:
    """One parameter as JSON: name, type, default, help, choices, bounds (inclusive, ``null`` when open), and the
    fields a :class:`~cnfbench.params.Param` subclass adds (e.g. a trace's ``multiple_of``) under their names."""
    values = {field.name: _json_value(getattr(param, field.name)) for field in dataclasses.fields(param)}
    kind = values.pop("kind")
    return {"name": values.pop("name"), "type": kind} | values


def component_json(entry: ComponentEntry) -> dict[str, Any]:
    """One component as JSON: its family, name, plugin, description and parameters."""
    return {"family": entry.family, "name": entry.name, "plugin": entry.plugin,
            "description": entry.cls.description, "params": [param_json(p) for p in entry.cls.params],
            **({"facts": entry.cls.facts()} if entry.cls.facts() else {})}


def listing_json(registry: Registry, families: list[FamilyRow]) -> dict[str, Any]:
    """``{"plugins": [...], "components": {plural: [...]}}`` for ``families`` (every plugin is listed, broken ones
    with their ``error``)."""
    hooks = _plugin_hooks(registry)
    return {"plugins": [vars(info) | {"hooks": hooks.get(info.name, [])} for info in registry.plugins],
            "components": {row.plural: [component_json(entry) for entry in registry.entries(row.key)]
                           for row in families}}


def _bounds(param: Param) -> str:
    """`` [1 to 100]``, `` [>= 1]``, `` [<= 5]`` or ``""``: the valid range of a numeric parameter."""
    low, high = param.minimum, param.maximum
    if low is not None and high is not None:
        return f" [{low:g} to {high:g}]"
    if low is not None:
        return f" [>= {low:g}]"
    return f" [<= {high:g}]" if high is not None else ""


def component_lines(entry: ComponentEntry, width: int) -> list[str]:
    """A component's description and parameters, folded to ``width`` at spaces only."""
    head = f"  {entry.name:<{NAME_WIDTH}} "
    text = f"{entry.cls.description} [plugin {entry.plugin}]"
    folded = fold_words(text, max(width - len(head), 20))
    lines = [head + folded[0], *(" " * len(head) + line for line in folded[1:])]
    facts = entry.cls.facts()
    if facts:
        folded = fold_words(" · ".join(f"{name} {value}" for name, value in facts.items()), width - PARAM_INDENT)
        lines.extend(" " * PARAM_INDENT + line for line in folded)
    for param in entry.cls.params:
        help_text = f" — {param.help}" if param.help else ""
        folded = fold_words(f"{param.describe()}{_bounds(param)}{help_text}", width - PARAM_INDENT - 2)
        lines.append(" " * PARAM_INDENT + folded[0])
        lines.extend(" " * (PARAM_INDENT + 2) + line for line in folded[1:])
    return lines


def plugin_lines(registry: Registry, width: int) -> list[str]:
    """Every plugin with its version and origin, then its hooks or why it is broken."""
    hooks = _plugin_hooks(registry)
    lines = ["Plugins:"]
    for info in registry.plugins:
        version = f" {info.version}" if info.version else ""
        lines.extend(fold_words(f"{info.name}{version} ({info.source}: {info.origin})", width, "  "))
        detail = f"BROKEN: {info.error}" if info.error else f"hooks: {', '.join(hooks.get(info.name, [])) or 'none'}"
        lines.extend(fold_words(detail, width, " " * PARAM_INDENT))
    return lines


@main.command()
@click.option("--family", "families", multiple=True, metavar="FAMILY",
              help=f"list only this family's components: {', '.join(row.key for row in FAMILY_TABLE)} "
                   "(comma list or repeatable) [default: every family, and the plugins]")
@click.option("--plugin", "plugins", multiple=True,
              help="extra plugin: a module name or a .py file (repeatable) [default: none beyond the installed "
                   "plugins and $CNFBENCH_PLUGINS]")
@click.option("--json", "as_json", is_flag=True,
              help="machine-readable output: every plugin, and every component with its family, plugin and "
                   "parameters (type, default, choices, minimum, maximum, help) [default: off]")
def plugins(families: tuple[str, ...], plugins: tuple[str, ...], as_json: bool) -> None:
    """List every plugin and the components it provides, with parameters and defaults.

    \b
    cnfbench plugins --family solver
    cnfbench plugins --json
    """
    from cnfbench.text_tables import TEXT_WIDTH, terminal_width

    rows = chosen_families(families)
    registry = load_registry_or_fail(plugins)
    if as_json:
        click.echo(json.dumps(listing_json(registry, rows), indent=2))
        return
    width = terminal_width() or TEXT_WIDTH
    lines: list[str] = []
    if families:
        for info in registry.plugins:
            if info.error:
                click.echo(f"warning: plugin {info.name} ({info.source}: {info.origin}) is broken and was skipped: "
                           f"{info.error}", err=True)
    else:
        lines.extend([*plugin_lines(registry, width), ""])
    for row in rows:
        lines.append(f"{row.plural.capitalize()}:")
        for entry in registry.entries(row.key):
            lines.extend(component_lines(entry, width))
        lines.append("")
    if not families:
        lines.extend(fold_words("One family: cnfbench plugins --family solver (families: "
                                f"{', '.join(row.key for row in FAMILY_TABLE)}); machine-readable: --json", width))
    click.echo("\n".join(lines).rstrip("\n"))
