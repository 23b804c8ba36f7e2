"""The ``cnfbench`` command line: the command group, one module per command group beside it.

``run`` (:mod:`cnfbench.cli.run`), ``plugins`` (:mod:`cnfbench.cli.plugins`),
``report``/``compare``/``merge``, ``sample`` and ``new-plugin`` register themselves on
:data:`main` when imported. Every module here imports torch, pandas and
matplotlib only inside its commands, so ``cnfbench --help`` and
``cnfbench <command> --help`` start at once.

Every user error is one ``Error:`` line on stderr with exit code 2, before
anything is written.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

import click

from cnfbench import __version__

if TYPE_CHECKING:
    from cnfbench.registry import Registry
    from cnfbench.run_folder import Run

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
    """Print ``Error: message`` and return the exception that exits with code 2 (``raise fail(...)``)."""
    click.echo(f"Error: {message}", err=True)
    return click.exceptions.Exit(USAGE_ERROR)


def load_registry_or_fail(plugins: tuple[str, ...]) -> Registry:
    """The registry with ``plugins`` added; a plugin that cannot load is one ``Error:`` line."""
    from cnfbench.plugin_manager import PluginLoadError
    from cnfbench.registry import RegistryError, load_registry

    try:
        return load_registry(plugins)
    except (PluginLoadError, RegistryError) as exc:
        raise fail(str(exc)) from None


def load_runs_or_fail(paths: tuple[str, ...]) -> list[Run]:
    """The run folders at ``paths``, their warnings printed; an unreadable one is one ``Error:`` line."""
    from cnfbench.run_folder import ResultsError, load_run

    runs = []
    for path in paths:
        try:
            run = load_run(path)
        except ResultsError as exc:
            raise fail(str(exc)) from None
        for warning in run.warnings:
            click.echo(f"warning: {warning}", err=True)
        runs.append(run)
    return runs


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnfbench")
def main() -> None:
    """Benchmark continuous normalizing flows: fields x solvers x trace estimators x datasets."""


COMMAND_MODULES = ("cnfbench.cli.run", "cnfbench.cli.evaluate", "cnfbench.cli.plugins", "cnfbench.cli.reports",
                   "cnfbench.cli.sample", "cnfbench.cli.scaffold", "cnfbench.cli.data")
"""Each registers its commands on :data:`main` when imported."""

for _module in COMMAND_MODULES:
    importlib.import_module(_module)
