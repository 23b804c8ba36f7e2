"""``cnfbench run``: train and evaluate a grid, resuming a run folder; its options come from the families table.

The grid options (one per grid axis) and the evaluation-slot options are
generated from :mod:`cnfbench.families`; the numeric options carry their
valid ranges from :data:`cnfbench.config.RANGES`.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cnfbench.cli import INTERRUPTED, fail, load_registry_or_fail, main
from cnfbench.config import OPTION_SOURCE, RANGES, RunConfig, load_toml, merge
from cnfbench.families import EVAL_SLOTS, GRID_AXES
from cnfbench.messages import plural
from cnfbench.params import ParamError

if TYPE_CHECKING:
    import pandas as pd

    from cnfbench.cells import Cell
    from cnfbench.contracts import Executor
    from cnfbench.progress import Progress
    from cnfbench.registry import Registry
    from cnfbench.runner import RunResult

LIST_HELP = "comma list; items may carry parameters, e.g. {example}; a number may be a range A..B:N, A..B:xF, A..B:+S"


@dataclass
class PythonCall:
    """Set by ``cnfbench.run`` (:data:`FROM_PYTHON`) around the command: progress is compact, and the summary is
    handed back here (``rows``, ``notes``) for the caller to show once, instead of printed."""

    rows: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    interrupted: str = ""
    results: str = ""


FROM_PYTHON: contextvars.ContextVar[PythonCall | None] = contextvars.ContextVar("cnfbench_from_python", default=None)


def _valid(key: str) -> str:
    """The valid range of a numeric option, for its help text."""
    low, high = RANGES[key].bounds()
    return f"{'>' if RANGES[key].lower_open else ''}{low} to {high}"


def _component_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per grid axis (a comma list) and per evaluation slot (one component), from the families table."""
    for slot in reversed(EVAL_SLOTS):
        command = click.option(slot.option, slot.config_key,
                               help=f"{slot.meaning} [default: {slot.default}]")(command)
    for row in reversed(GRID_AXES):
        command = click.option(row.option, row.config_key, multiple=True,
                               help=f"{row.plural_meaning}: {LIST_HELP.format(example=repr(row.example))} "
                                    f"[default: {','.join(row.default)}]")(command)
    return command


METRICS_HELP = ("what to measure on each trained cell: comma list of metrics (with parameters, e.g. "
                "'c2st[folds=3]') and groups (likelihood, density, validity, samples, flow, inverse, plots), 'all', "
                "or 'default' plus more, e.g. 'default,w2,mmd'; `cnfbench plugins --family metric` lists them "
                "[default: what the summary and the validity flag read: nll, nll_ref, logp_error, entropy, "
                "reverse_kl, mass, mass_is]")


@main.command()
@_component_options
@click.option("--seeds", type=int, help=f"number of seeds per configuration [default: 1; valid: {_valid('seeds')}]")
@click.option("--first-seed", type=int,
              help=f"first seed; seeds are first-seed .. first-seed+seeds-1 "
                   f"[default: 0; valid: {_valid('first_seed')}]")
@click.option("--iterations", type=int,
              help=f"training iterations per cell [default: 400; valid: {_valid('iterations')}]")
@click.option("--batch-size", type=int, help=f"training batch size [default: 512; valid: {_valid('batch_size')}]")
@click.option("--epochs", type=int,
              help=f"train each cell for this many passes over its training split instead of --iterations "
                   f"(n_train // batch-size minibatches a pass) [default: none; valid: {_valid('epochs')}]")
@click.option("--lr", type=float,
              help=f"the optimizer's base learning rate [default: 3e-3; valid: {_valid('lr')}]")
@click.option("--max-nfe", type=int,
              help=f"dynamics evaluations allowed per solve before a cell fails "
                   f"[default: none; valid: {_valid('max_nfe')}]")
@click.option("--time-budget", type=float,
              help=f"train each cell for this many seconds of training iterations instead (--iterations caps "
                   f"them; the row records how many ran) [default: none, train --iterations; "
                   f"valid: {_valid('time_budget')}]")
@click.option("--val-every", type=int,
              help=f"record the validation NLL every K iterations in curves.parquet [default: 0 = never; "
                   f"valid: {_valid('val_every')}]")
@click.option("--select", type=click.Choice(["last", "best", "best_loss"]),
              help="keep the last parameters, those of the best validation NLL (best) or of the best validation "
                   "loss of the objective (best_loss, as flow-matching papers select; needs --val-every) "
                   "[default: last]")
@click.option("--val-solver",
              help="solver of the validation NLL of an objective that trains without solving (flow matching); "
                   "others validate with their training solver [default: rk4[steps=16]]")
@click.option("--compile", is_flag=True, default=None,
              help="train the field compiled by torch.compile where that can work (its forward for flow matching, "
                   "its fused forward_with_divergence for likelihood objectives); a field that cannot be compiled "
                   "trains eager, with a warning (row: compiled = false). Evaluation always runs the eager field "
                   "[default: off]")
@click.option("--ref-dtype", type=click.Choice(["float64", "float32"]),
              help="dtype of the reference solve [default: float64]")
@click.option("--eval-batch-size", type=int,
              help=f"test samples per evaluation solve [default: 4096; valid: {_valid('eval_batch_size')}]")
@click.option("--mass-grid", type=int,
              help=f"points per axis of the 2D mass check, 0 = off [default: 80; valid: {_valid('mass_grid')}]")
@click.option("--metrics", multiple=True, help=METRICS_HELP)
@click.option("--protocol", help="run a published protocol: its grid, budgets and evaluation (`cnfbench protocols` "
                                 "lists them); a grid option naming components the protocol has narrows it, any other "
                                 "option overrides it and each row records that [default: none]")
@click.option("--scale", type=click.Choice(["full", "quick"]),
              help="with --protocol: full (the paper's budgets) or quick (the same grid in CPU minutes) "
                   "[default: full]")
@click.option("--device", help="auto, cpu, cuda or cuda:N [default: auto]")
@click.option("--data-dir", help="folder that dataset files (table[path=...], the MAF archive) are read from "
                                 "[default: $CNFBENCH_DATA, else ~/.cache/cnfbench/data]")
@click.option("--timeout", type=float,
              help=f"seconds a cell may run before it is stopped (status timeout) [default: none; "
                   f"valid: {_valid('timeout')}]")
@click.option("--executor",
              help="where cells run: process[workers=N,threads=T] (N worker processes with hard timeouts, T torch "
                   "threads each), inline (in this process), dask[address=...,workers=N] or "
                   "submitit[cluster=slurm|local,...]; `cnfbench plugins --family executor` lists every executor and "
                   "its parameters "
                   "[default: process, i.e. one worker]")
@click.option("--tracker", multiple=True,
              help="experiment trackers every cell is logged to: comma list, e.g. 'mlflow,tensorboard' or "
                   "'mlflow[uri=http://host:5000]' (extras cnfbench[mlflow], cnfbench[tensorboard]) [default: none]")
@click.option("--isolation", type=click.Choice(["process", "inline"]),
              help="deprecated: --executor process or --executor inline [default: none]")
@click.option("--retry-failed/--no-retry-failed", default=None,
              help="on resume, rerun cells that failed before [default: retry]")
@click.option("--allow-loose-ref", is_flag=True, default=None,
              help="accept a fixed-step or loose --ref-solver (every row then says ref_loose = true) "
                   "[default: off]")
@click.option("--out", help="output root; the run goes to OUT/NAME [default: results]")
@click.option("--name", help="run name (a rerun with the same name resumes) [default: run-DATE-TIME]")
@click.option("--plugin", "plugins", multiple=True,
              help="extra plugin: a module name or a .py file (repeatable) [default: none beyond the installed "
                   "plugins and $CNFBENCH_PLUGINS]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file with the same keys as these options (CLI options win) [default: none]")
@click.option("--dry-run", is_flag=True,
              help="print the cells that would run; train nothing, write nothing [default: off]")
@click.option("--wait", is_flag=True, help="when another cnfbench command is writing the run folder, wait for it to "
                                           "end instead of stopping with an error [default: off]")
@click.option("--quiet", is_flag=True, help="no progress output [default: off]")
def run(config_file: Path | None, dry_run: bool, wait: bool, quiet: bool, plugins: tuple[str, ...],
        **options: Any) -> int:
    """Train and evaluate every cell of the grid datasets x fields x objectives x solvers x traces x optimizers x
    seeds, or of a published protocol (--protocol NAME; `cnfbench protocols` lists them).

    An objective that trains without solving (cfm, otcfm) trains one model per seed, shared by the cells
    that differ only in solver and trace: those then say how the model is evaluated and sampled.
    """
    from cnfbench.config import resolve_grid
    from cnfbench.output_paths import OutputPathError, check_free_space, check_output_dir
    from cnfbench.progress import Progress
    from cnfbench.provenance import collect
    from cnfbench.runner import default_run_name, run_directory, sweep
    from cnfbench.tracking import Trackers, resolve_trackers

    try:
        config = RunConfig()
        from_file: dict[str, Any] = {}
        if config_file is not None:
            from_file = load_toml(config_file)
            config = merge(config, from_file, f"config file {str(config_file)!r}")
        given = {key: value for key, value in options.items() if value not in (None, ())}
        if plugins:
            given["plugin"] = (*config.plugin, *plugins)
        config = merge(config, {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()},
                       OPTION_SOURCE)
    except ParamError as exc:
        raise fail(str(exc)) from None
    if config.isolation is not None:
        click.echo(f"note: --isolation is deprecated; use --executor {config.isolation}", err=True)
        if "executor" not in given:
            config = merge(config, {"executor": config.isolation}, OPTION_SOURCE)
    use_data_dir(config.data_dir)
    registry = load_registry_or_fail(config.plugin)
    for info in registry.plugins:
        if info.error:
            click.echo(f"warning: plugin {info.name} ({info.source}: {info.origin}) is broken and was skipped: "
                       f"{info.error}", err=True)
    stamps: dict[str, dict[str, str]] = {}
    try:
        if config.protocol is None and "scale" in given:
            raise ParamError("--scale chooses a protocol's budget; add --protocol NAME (cnfbench protocols lists them)")
        if config.protocol is not None:
            grid, stamps = _protocol_grid(config, {**from_file, **given}, registry, config_file)
        else:
            grid = resolve_grid(config, registry)
        name = config.name or default_run_name()
        run_dir = run_directory(config.out, name)
        if not dry_run:
            check_output_dir(run_dir, "the run")
            check_free_space(run_dir, "the run")
        trackers = Trackers(resolve_trackers(registry, config.tracker), str(run_dir),
                            lambda text: click.echo(text, err=True))
    except (ParamError, OutputPathError, ValueError) as exc:
        raise fail(str(exc)) from None
    cells = grid.cells
    for note in grid.notes:
        click.echo(f"note: {note}", err=True)
    if dry_run:
        click.echo(f"{plural(len(cells), 'cell')} would run into {run_dir}:")
        for cell in cells:
            click.echo(f"  {cell.cell_id}  {cell.describe()}")
        return 0
    with writing(run_dir, wait):
        progress = Progress(cells, quiet=quiet, run_dir=run_dir, compact=FROM_PYTHON.get() is not None)
        trackers.warn = progress.message
        progress.header(f"{plural(len(cells), 'cell')} = {_grid_size(grid.cells)}")
        libraries = {library for cell in cells for family, spec in cell.components()
                     for library in registry.get(family, spec.name).cls.libraries}
        provenance = collect(sys.argv, config.to_json() | {"name": name}, registry.plugins, cells[0].device,
                             sorted(libraries))
        result = run_cells(cells, registry, config.executor, config.plugin, config.timeout, progress,
                           lambda executor, label: sweep(cells, registry, executor, run_dir, provenance, progress,
                                                         config.retry_failed, executor_name=label,
                                                         trackers=trackers, stamps=stamps),
                           "Summary", "rerun the same command to resume")
    caller = FROM_PYTHON.get()
    if caller is not None:
        caller.results = f"results: {run_dir} ({result.counts()})"
    else:
        click.echo(f"\nresults: {run_dir} ({result.counts()})")
    return INTERRUPTED if result.interrupted else 0


def _protocol_grid(config: RunConfig, given: dict[str, Any], registry: Registry, config_file: Path | None
                   ) -> tuple[Any, dict[str, dict[str, str]]]:
    """The cells of ``--protocol`` (every group's grid, each cell once) and each cell's protocol columns; ``given``
    holds what the user chose (a ``--config`` file's keys, then the options), which narrows or overrides the
    protocol."""
    from cnfbench.config import Grid, resolve_grid
    from cnfbench.protocols import protocol_configs, protocol_spec

    spec = protocol_spec(registry, config.protocol)
    base = replace(config, protocol=None)
    protocol_run = protocol_configs(spec, config.scale, base, given, str(config_file or "options"))
    cells: dict[str, Cell] = {}
    stamps: dict[str, dict[str, str]] = {}
    notes: list[str] = [f"protocol {spec.name} at scale {config.scale}: {spec.title}"]
    if not spec.scales[config.scale].comparable:
        notes.append(f"scale {config.scale} is not comparable with the paper: {spec.scales[config.scale].why}")
    notes.extend(f"protocol {spec.name}: {text}" for text in protocol_run.narrowed)
    notes.extend(f"deviates from protocol {spec.name}: {text} (recorded in protocol_deviation)"
                 for text in protocol_run.deviations)
    for group, group_config in protocol_run.configs:
        grid = resolve_grid(group_config, registry)
        notes.extend(note for note in grid.notes if note not in notes)
        for cell in grid.cells:
            if cell.cell_id not in cells:
                cells[cell.cell_id] = cell
                stamps[cell.cell_id] = protocol_run.stamp(group)
    return Grid(list(cells.values()), notes), stamps


@contextlib.contextmanager
def writing(run_dir: Path, wait: bool) -> Iterator[None]:
    """Hold ``run_dir``'s write lock for the block (:mod:`cnfbench.folder_lock`); another writer is one ``Error:``
    line (exit 2), or, with ``wait``, a note and a wait for it to end."""
    from cnfbench.folder_lock import FolderLocked, run_folder_lock

    try:
        with run_folder_lock(run_dir, wait, lambda line: click.echo(f"note: {line}", err=True)):
            yield
    except FolderLocked as exc:
        raise fail(str(exc)) from None


def use_data_dir(data_dir: str | None) -> None:
    """Point this process and the workers it starts at ``data_dir`` for dataset files (``$CNFBENCH_DATA``)."""
    import os

    from cnfbench.contracts import DATA_ROOT_VARIABLE

    if data_dir:
        os.environ[DATA_ROOT_VARIABLE] = str(Path(data_dir).expanduser().resolve())


def _grid_size(cells: list[Cell]) -> str:
    """``2 solvers × 3 seeds``: the axes that vary, with their sizes (``1 configuration`` when none does)."""
    sizes = [(len({cell.axes[row.key].label() for cell in cells}), row.key, row.plural) for row in GRID_AXES]
    parts = [f"{count} {plural}" for count, _, plural in sizes if count > 1]
    seeds = len({cell.seed for cell in cells})
    if seeds > 1:
        parts.append(f"{seeds} seeds")
    return " × ".join(parts) or "1 configuration"


def run_cells(cells: list[Cell], registry: Registry, executor_spec: str, plugins: Sequence[str],
              timeout: float | None, progress: Progress, sweep: Callable[[Executor, str], RunResult], heading: str,
              resume_hint: str) -> RunResult:
    """Run ``sweep`` on the executor ``executor_spec`` names, then print the summary of ``cells``' rows. A full
    device is one ``Error:`` line (exit 2)."""
    from cnfbench.executor import make_executor
    from cnfbench.run_folder import DiskFull
    from cnfbench.summary import metric_notes, render, summary_table, validity_notes
    from cnfbench.text_tables import terminal_width

    try:
        executor, _, label = make_executor(registry, executor_spec, plugins, timeout)
    except (ParamError, ValueError) as exc:
        raise fail(str(exc)) from None
    try:
        result = sweep(executor, label)
    except DiskFull as exc:
        raise fail(f"{exc}: the run stops here; every row written before is intact; free some space and "
                   f"{resume_hint}") from None
    finally:
        progress.close()
        executor.close()
    rows = planned_rows(cells, result.cells)
    known = registry.names("metric")
    interrupted = f"Interrupted: {progress.counts()}. The table shows every planned configuration " \
                  f"(n = seeds done/planned); {resume_hint}." if result.interrupted else ""
    caller = FROM_PYTHON.get()
    if caller is not None:
        caller.rows, caller.notes, caller.interrupted = rows, [*validity_notes(rows), *metric_notes(rows, known)], \
            interrupted
        return result
    click.echo("")
    if interrupted:
        click.echo(interrupted)
    click.echo(f"{heading} (test NLL in nats per sample; NFE = dynamics evaluations per solve, counted by the "
               "harness):")
    notes = [*validity_notes(rows), *metric_notes(rows, known)]
    click.echo(render(summary_table(rows), notes, width=terminal_width(), color=sys.stdout.isatty()))
    return result


def planned_rows(cells: Sequence[Cell], results: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``cells`` in grid order, with a ``not started`` row (identity columns only) for each cell that
    has none, so that the summary counts what was planned."""
    import pandas as pd

    from cnfbench.rows import identity_columns
    from cnfbench.summary import NOT_STARTED

    order = {cell.cell_id: position for position, cell in enumerate(cells)}
    rows = results[results["cell_id"].isin(order)] if "cell_id" in results else results.iloc[0:0]
    missing = [cell for cell in cells if cell.cell_id not in set(rows.get("cell_id", ()))]
    if missing:
        unstarted = pd.DataFrame([{**identity_columns(cell), "status": NOT_STARTED,
                                   "reason": "never started (the run was interrupted first)"} for cell in missing])
        rows = pd.concat([rows, unstarted], ignore_index=True) if not rows.empty else unstarted
    return rows.sort_values("cell_id", key=lambda ids: ids.map(order), kind="stable").reset_index(drop=True)
