"""``cnfbench protocols``: the published protocols, what each reproduces and what each scale costs."""

from __future__ import annotations

import json

import click

from cnfbench.cli import fail, load_registry_or_fail, main
from cnfbench.messages import plural
from cnfbench.text_tables import terminal_width, wrap_text


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the listing as JSON [default: off]")
@click.option("--plugin", "plugins", multiple=True,
              help="also load this plugin (module or .py file; repeatable) [default: the installed ones]")
def protocols(as_json: bool, plugins: tuple[str, ...]) -> None:
    """List the published protocols: what each reproduces (paper, table, numbers), and at each scale its cells,
    training iterations and measured wall-clock.

    \b
    cnfbench protocols
    cnfbench run --protocol cfm-2d --scale quick
    cnfbench report results/RUN --published
    """
    from cnfbench.protocols import SCALES, ProtocolError, estimate, load

    registry = load_registry_or_fail(plugins)
    listing = []
    for name in registry.names("protocol"):
        try:
            spec = load(registry.get("protocol", name).cls)
        except ProtocolError as exc:
            raise fail(str(exc)) from None
        scales = {}
        for scale in SCALES:
            cells, iterations, note = estimate(spec, scale, registry)
            info = spec.scales[scale]
            scales[scale] = {"cells": cells, "training_iterations": iterations, "comparable": info.comparable,
                             "why": info.why, "measured": info.measured, "note": note}
        reproduces = sorted({f"{entry.paper}, {entry.table}" for entry in spec.published})
        listing.append({"name": spec.name, "title": spec.title, "kind": spec.kind, "reproduces": reproduces,
                        "published_numbers": len(spec.published), "not_expressible": list(spec.not_expressible),
                        "scales": scales, "plugin": registry.get("protocol", name).plugin})
    if as_json:
        click.echo(json.dumps({"protocols": listing}, indent=2))
        return
    width = terminal_width()
    for item in listing:
        click.echo(wrap_text(f"{item['name']} — {item['title']} [plugin {item['plugin']}]", width, "    "))
        what = (f"reproduces {plural(item['published_numbers'], 'published number')}: "
                f"{'; '.join(item['reproduces'])}" if item["reproduces"] else
                "reproduces figures (a visual protocol: density panels, no numbers)")
        click.echo(wrap_text(f"  {what}", width, "    "))
        for text in item["not_expressible"]:
            click.echo(wrap_text(f"  not expressible: {text}", width, "    "))
        for scale, info in item["scales"].items():
            cost = (f"{plural(info['cells'], 'cell')}, {info['training_iterations']:,} training iterations"
                    if not info["note"] else f"cost unknown ({info['note']})")
            extra = "" if info["comparable"] else f"; not comparable: {info['why']}"
            measured = f"; measured: {info['measured']}" if info["measured"] else ""
            click.echo(wrap_text(f"  --scale {scale}: {cost}{extra}{measured}", width, "    "))
        click.echo("")
    click.echo("run one: cnfbench run --protocol NAME [--scale quick|full]; then cnfbench report RUN --published")
