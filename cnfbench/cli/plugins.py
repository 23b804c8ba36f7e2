"""``cnfbench plugins``: every plugin, the hooks it implements, and the components of every family it provides."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from cnfbench.cli import load_registry_or_fail, main
from cnfbench.families import FAMILY_TABLE

if TYPE_CHECKING:
    from cnfbench.registry import Registry


def _plugin_hooks(registry: Registry) -> dict[str, list[str]]:
    """The hooks each registered plugin implements, by plugin name."""
    hooks: dict[str, list[str]] = {}
    for name, plugin in registry.pm.list_name_plugin():
        hooks[name] = sorted(caller.name for caller in registry.pm.get_hookcallers(plugin) or [])
    return hooks


def _component_json(registry: Registry) -> dict[str, Any]:
    families: dict[str, Any] = {}
    for row in FAMILY_TABLE:
        families[row.plural] = [
            {
                "name": entry.name,
                "plugin": entry.plugin,
                "description": entry.cls.description,
                "params": [{"name": p.name, "type": p.kind, "default": list(p.default) if isinstance(p.default, tuple)
                            else p.default, "help": p.help, "choices": list(p.choices) if p.choices else None}
                           for p in entry.cls.params],
            }
            for entry in registry.entries(row.key)
        ]
    return families


@main.command()
@click.option("--plugin", "plugins", multiple=True, help="extra plugin: a module name or a .py file (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def plugins(plugins: tuple[str, ...], as_json: bool) -> None:
    """List every plugin and the components it provides, with parameters and defaults."""
    registry = load_registry_or_fail(plugins)
    hooks = _plugin_hooks(registry)
    if as_json:
        data = {"plugins": [vars(info) | {"hooks": hooks.get(info.name, [])} for info in registry.plugins],
                "components": _component_json(registry)}
        click.echo(json.dumps(data, indent=2))
        return
    click.echo("Plugins:")
    for info in registry.plugins:
        version = f" {info.version}" if info.version else ""
        click.echo(f"  {info.name}{version} ({info.source}: {info.origin})")
        if info.error:
            click.echo(f"      BROKEN: {info.error}")
        else:
            click.echo(f"      hooks: {', '.join(hooks.get(info.name, [])) or 'none'}")
    for row in FAMILY_TABLE:
        click.echo(f"\n{row.plural.capitalize()}:")
        for entry in registry.entries(row.key):
            click.echo(f"  {entry.name:<16} {entry.cls.description}  [plugin {entry.plugin}]")
            for param in entry.cls.params:
                help_text = f"  — {param.help}" if param.help else ""
                click.echo(f"      {param.describe()}{help_text}")
