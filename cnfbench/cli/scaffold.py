"""The ``cnfbench new-plugin`` command: write a ready-to-install plugin package (see :mod:`cnfbench.scaffold`)."""

from __future__ import annotations

from pathlib import Path

import click

from cnfbench.cli import fail, main
from cnfbench.families import FAMILIES_BY_KEY
from cnfbench.output_paths import OutputPathError, check_output_dir
from cnfbench.scaffold import (
    DEFAULT_FAMILIES,
    FAMILY_ORDER,
    ScaffoldError,
    component_names,
    parse_families,
    write_plugin,
)


@main.command("new-plugin")
@click.argument("name")
@click.option("--family", "families", multiple=True,
              help=f"comma list of families to write an example of: {', '.join(FAMILY_ORDER)} or all "
                   f"[default: {','.join(DEFAULT_FAMILIES)}]")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("."),
              help="folder in which NAME/ is created [default: the current folder]")
def new_plugin(name: str, families: tuple[str, ...], directory: Path) -> None:
    """Write NAME/: a plugin package with one working example component per family, tests and a README.

    NAME is the distribution name (e.g. my-flows); the import package is its
    lowercase form with '-' replaced by '_' (my_flows).
    """
    try:
        chosen = parse_families(families or DEFAULT_FAMILIES)
        check_output_dir(directory, "the plugin")
        target = write_plugin(name, chosen, directory)
    except (ScaffoldError, OutputPathError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write the plugin into {str(directory)!r}: {exc.strerror or exc}") from None
    names = component_names(name, chosen)
    click.echo(f"Wrote plugin {name} in {target}:")
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        click.echo(f"  {path.relative_to(target.parent)}")
    run = " ".join(f"{FAMILIES_BY_KEY[family].option} {names[family]}" for family in chosen)
    click.echo("\nNext:")
    click.echo(f"  pip install -e {target}")
    click.echo("  cnfbench plugins")
    click.echo(f"  cnfbench run {run}")
    click.echo(f"  pytest {target / 'tests'}")
