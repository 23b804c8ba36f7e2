"""The ``cnfbench`` command line: ``run`` a benchmark grid, list ``plugins``.

Every user error (unknown component, bad parameter, unreadable config, bad
run name) is reported as one ``Error:`` line on stderr with exit code 2,
before anything is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cnfbench import __version__
from cnfbench.config import OPTION_SOURCE, RANGES, RunConfig, load_toml, merge, resolve_grid
from cnfbench.contracts import FAMILIES
from cnfbench.executor import Executor, InlineExecutor, ProcessExecutor
from cnfbench.output_paths import OutputPathError, check_output_dir
from cnfbench.params import ParamError
from cnfbench.plugin_manager import PluginLoadError
from cnfbench.progress import Progress
from cnfbench.provenance import collect
from cnfbench.registry import Registry, RegistryError, load_registry
from cnfbench.runner import default_run_name, execute_run, run_directory
from cnfbench.summary import render, summary_table, validity_notes

USAGE_ERROR = 2
INTERRUPTED = 130


class OneLineErrors(click.Group):
    """A group whose usage errors are one ``Error:`` line (no usage block, no traceback)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(INTERRUPTED)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def fail(message: str) -> click.exceptions.Exit:
    click.echo(f"Error: {message}", err=True)
    return click.exceptions.Exit(USAGE_ERROR)


def _load_registry(plugins: tuple[str, ...]) -> Registry:
    try:
        return load_registry(plugins)
    except (PluginLoadError, RegistryError) as exc:
        raise fail(str(exc)) from None


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnfbench")
def main() -> None:
    """Benchmark continuous normalizing flows: fields x solvers x trace estimators x datasets."""


LIST_HELP = "comma list; items may carry parameters, e.g. {example}"


def _valid(key: str) -> str:
    """The valid range of a numeric option, for its help text."""
    low, high = RANGES[key].bounds()
    return f"{'>' if RANGES[key].lower_open else ''}{low} to {high}"


@main.command()
@click.option("--dataset", multiple=True, help=LIST_HELP.format(example="'8gaussians,moons[n_train=5000]'"))
@click.option("--field", multiple=True, help=LIST_HELP.format(example="'concatsquash[hidden=64-64,activation=elu]'"))
@click.option("--solver", multiple=True, help=LIST_HELP.format(example="'euler[steps=10],dopri5[rtol=1e-5,atol=1e-5]'"))
@click.option("--trace", multiple=True, help=LIST_HELP.format(example="'exact,hutchinson[noise=rademacher]'"))
@click.option("--seeds", type=int, help=f"number of seeds per configuration [default: 1; valid: {_valid('seeds')}]")
@click.option("--first-seed", type=int,
              help=f"first seed; seeds are first-seed .. first-seed+seeds-1 "
                   f"[default: 0; valid: {_valid('first_seed')}]")
@click.option("--iterations", type=int,
              help=f"training iterations per cell [default: 400; valid: {_valid('iterations')}]")
@click.option("--batch-size", type=int, help=f"training batch size [default: 512; valid: {_valid('batch_size')}]")
@click.option("--lr", type=float, help=f"Adam learning rate [default: 3e-3; valid: {_valid('lr')}]")
@click.option("--max-nfe", type=int,
              help=f"dynamics evaluations allowed per solve before a cell fails "
                   f"[default: none; valid: {_valid('max_nfe')}]")
@click.option("--eval-trace", help="exact trace used for every reported NLL [default: exact]")
@click.option("--ref-solver", help="reference solve behind nll_ref [default: 'dopri5[rtol=1e-7,atol=1e-7]']")
@click.option("--ref-dtype", type=click.Choice(["float64", "float32"]), help="dtype of the reference solve")
@click.option("--eval-batch-size", type=int,
              help=f"test samples per evaluation solve [default: 4096; valid: {_valid('eval_batch_size')}]")
@click.option("--mass-grid", type=int,
              help=f"points per axis of the 2D mass check, 0 = off [default: 80; valid: {_valid('mass_grid')}]")
@click.option("--device", help="auto, cpu, cuda or cuda:N [default: auto]")
@click.option("--timeout", type=float,
              help=f"seconds a cell may run before it is stopped (status timeout) [valid: {_valid('timeout')}]")
@click.option("--isolation", type=click.Choice(["process", "inline"]),
              help="run cells in a worker process (hard timeouts) or in this one [default: process]")
@click.option("--retry-failed/--no-retry-failed", default=None,
              help="on resume, rerun cells that failed before [default: retry]")
@click.option("--allow-loose-ref", is_flag=True, default=None,
              help="accept a fixed-step or loose --ref-solver (every row then says ref_loose = true)")
@click.option("--out", help="output root; the run goes to OUT/NAME [default: results]")
@click.option("--name", help="run name (a rerun with the same name resumes) [default: run-DATE-TIME]")
@click.option("--plugin", "plugins", multiple=True, help="extra plugin: a module name or a .py file (repeatable)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file with the same keys as these options (CLI options win)")
@click.option("--dry-run", is_flag=True, help="print the cells that would run; train nothing, write nothing")
@click.option("--quiet", is_flag=True, help="no progress output")
def run(config_file: Path | None, dry_run: bool, quiet: bool, plugins: tuple[str, ...], **options: Any) -> int:
    """Train and evaluate every cell of the grid datasets x fields x solvers x traces x seeds."""
    try:
        config = RunConfig()
        if config_file is not None:
            config = merge(config, load_toml(config_file), f"config file {str(config_file)!r}")
        given = {key: value for key, value in options.items() if value not in (None, ())}
        if plugins:
            given["plugin"] = (*config.plugin, *plugins)
        config = merge(config, {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()},
                       OPTION_SOURCE)
    except ParamError as exc:
        raise fail(str(exc)) from None
    registry = _load_registry(config.plugin)
    for info in registry.plugins:
        if info.error:
            click.echo(f"warning: plugin {info.name} ({info.source}: {info.origin}) is broken and was skipped: "
                       f"{info.error}", err=True)
    try:
        grid = resolve_grid(config, registry)
        name = config.name or default_run_name()
        run_dir = run_directory(config.out, name)
        if not dry_run:
            check_output_dir(run_dir, "the run")
    except (ParamError, OutputPathError, ValueError) as exc:
        raise fail(str(exc)) from None
    cells = grid.cells
    for note in grid.notes:
        click.echo(f"note: {note}", err=True)
    if dry_run:
        click.echo(f"{len(cells)} cell(s) would run into {run_dir}:")
        for cell in cells:
            click.echo(f"  {cell.cell_id}  {cell.describe()}")
        return 0
    progress = Progress(len(cells), quiet=quiet)
    provenance = collect(sys.argv, config.to_json() | {"name": name}, registry.plugins, cells[0].device)
    executor: Executor = (ProcessExecutor(config.plugin, config.timeout, registry=registry)
                          if config.isolation == "process"
                          else InlineExecutor(registry))
    try:
        result = execute_run(cells, registry, executor, run_dir, provenance, progress, config.retry_failed)
    finally:
        executor.close()
    ids = {cell.cell_id for cell in cells}
    rows = result.cells[result.cells["cell_id"].isin(ids)]
    click.echo("")
    if result.interrupted:
        click.echo("Interrupted: the table shows the cells finished so far; rerun the same command to resume.")
    click.echo("Summary (test NLL in nats per sample; NFE = dynamics evaluations per solve, counted by the harness):")
    click.echo(render(summary_table(rows), validity_notes(rows)))
    click.echo(f"\nresults: {run_dir} ({result.ran} cell(s) run, {result.skipped} skipped as already done)")
    return INTERRUPTED if result.interrupted else 0


def _plugin_hooks(registry: Registry) -> dict[str, list[str]]:
    """The hooks each registered plugin implements, by plugin name."""
    hooks: dict[str, list[str]] = {}
    for name, plugin in registry.pm.list_name_plugin():
        hooks[name] = sorted(caller.name for caller in registry.pm.get_hookcallers(plugin) or [])
    return hooks


def _component_json(registry: Registry) -> dict[str, Any]:
    families: dict[str, Any] = {}
    for key, family in FAMILIES.items():
        families[family.plural] = [
            {
                "name": entry.name,
                "plugin": entry.plugin,
                "description": entry.cls.description,
                "params": [{"name": p.name, "type": p.kind, "default": list(p.default) if isinstance(p.default, tuple)
                            else p.default, "help": p.help, "choices": list(p.choices) if p.choices else None}
                           for p in entry.cls.params],
            }
            for entry in registry.entries(key)
        ]
    return families


@main.command()
@click.option("--plugin", "plugins", multiple=True, help="extra plugin: a module name or a .py file (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def plugins(plugins: tuple[str, ...], as_json: bool) -> None:
    """List every plugin and the components it provides, with parameters and defaults."""
    registry = _load_registry(plugins)
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
    for key, family in FAMILIES.items():
        click.echo(f"\n{family.plural.capitalize()}:")
        for entry in registry.entries(key):
            click.echo(f"  {entry.name:<16} {entry.cls.description}  [plugin {entry.plugin}]")
            for param in entry.cls.params:
                help_text = f"  — {param.help}" if param.help else ""
                click.echo(f"      {param.describe()}{help_text}")





# Commands defined in their own modules register themselves on `main` when imported.
from cnfbench import report_cli, scaffold_cli  # noqa: E402, F401
