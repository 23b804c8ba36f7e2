"""``cnfbench evaluate``: evaluate a run's trained models again, with other solvers or another protocol, no training.

Every finished cell that trained a model (``trained_in`` is its own id) is a
source. For each source and each ``--solver`` (default: the solver it was
evaluated with) a cell is built: the source's cell with that solver, the
evaluation slots ``--eval-trace``/``--ref-solver`` when given, and — for an
objective that trains with its solver — ``trained_with`` naming the solver
it was trained with, so its id and row say both. The cells run through the
same sweep as ``cnfbench run`` (same executor, timeouts and rows), each
loading its source's model file instead of training, and their rows are
added to the run folder or replace the same cells' rows. A cell whose
evaluation fails keeps the row it had. A model that cannot be evaluated is
named in one ``warning:`` line — its file is missing or damaged, never loaded —
and the cells that did not finish (so kept no model) are counted in one note.
Components come from the installed plugins and those the user names
(``--plugin``, ``CNFBENCH_PLUGINS``), never from a plugin the run folder
names (see :mod:`cnfbench.recorded_plugins`). ``run.json`` keeps the run's
provenance and gains an ``evaluations`` entry (when, the command, the plugins
with each ``.py`` file's SHA-256, and versions).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cnfbench.cli import INTERRUPTED, fail, load_runs_or_fail, main
from cnfbench.cli.run import run_cells, use_data_dir, writing
from cnfbench.config import RANGES
from cnfbench.messages import plural

if TYPE_CHECKING:
    from cnfbench.cells import Cell
    from cnfbench.registry import Registry
    from cnfbench.run_folder import Run


def _no_model_reason(run: Run, cell_id: str) -> str:
    """Why the row ``cell_id`` of ``run`` offers no model to evaluate."""
    from cnfbench.models import missing_models, trainer_of

    status = str(run.cells.loc[run.cells["cell_id"].astype(str) == cell_id, "status"].iloc[0])
    if status != "done":
        return f"it ended {status!r}, not 'done': only finished cells keep a model"
    trainer = trainer_of(run, cell_id)
    reason = next((missing.reason for missing in missing_models(run) if missing.cell_id == trainer), "")
    return reason or "its model file is missing"


def _report_unavailable(run: Run) -> None:
    """One ``warning:`` line per model of a finished cell that is gone, one ``note:`` counting the cells that
    did not finish (they never had a model, and a run with many failures should not flood the terminal)."""
    from cnfbench.models import missing_models, unfinished

    for missing in missing_models(run):
        shares = "shares" if missing.shared_by == 1 else "share"
        shared = f" (and the {plural(missing.shared_by, 'other cell')} that {shares} its model)" \
            if missing.shared_by else ""
        click.echo(f"warning: skipping cell {missing.cell_id} ({missing.label}){shared}: {missing.reason}", err=True)
    counts = unfinished(run)
    if counts:
        ended = ", ".join(f"{count} {status!r}" for status, count in counts.items())
        have = "has" if sum(counts.values()) == 1 else "have"
        click.echo(f"note: {plural(sum(counts.values()), 'cell')} did not finish ({ended}) and {have} no model to "
                   "evaluate", err=True)


def _sources(run: Run, cell_ids: tuple[str, ...], registry: Registry) -> list[Cell]:
    """The cells that trained the run's models (those of ``cell_ids`` when given), each model file checked by
    loading it; one that cannot be loaded is named in a warning and skipped. A component that no loaded plugin
    provides is one error naming the plugins the run recorded."""
    from cnfbench.models import load_trained, model_cells, row_label, trainer_of
    from cnfbench.recorded_plugins import MissingComponentError, missing_component_message
    from cnfbench.run_folder import ResultsError

    with_models = model_cells(run)
    if not with_models:
        raise fail(f"{run.path} holds no model files (models/ is missing or empty: the run was made before cnfbench "
                   "kept trained models, or no cell finished)")
    known = set(run.cells["cell_id"].astype(str))
    for cell_id in cell_ids:
        if cell_id not in known:
            raise fail(f"no cell {cell_id!r} in {run.path}; cells with a model: {', '.join(with_models[:5])}")
        if cell_id not in with_models:
            raise fail(f"cell {cell_id} of {run.path} has no model to evaluate: {_no_model_reason(run, cell_id)}")
    if not cell_ids:
        _report_unavailable(run)
    chosen = list(cell_ids) if cell_ids else with_models
    trainers = list(dict.fromkeys(trainer_of(run, cell_id) for cell_id in chosen))
    cells: list[Cell] = []
    missing: dict[tuple[str, str], None] = {}
    needing: list[str] = []
    for trainer in trainers:
        try:  # rebuilt and loaded here, so that a damaged or mismatched file is named before anything runs
            cells.append(load_trained(run, trainer, registry=registry, require_all=True).cell)
        except MissingComponentError as exc:
            missing.update(dict.fromkeys(exc.missing))
            needing.append(trainer)
        except (ResultsError, ValueError) as exc:
            rows = run.cells[run.cells["cell_id"].astype(str) == trainer].to_dict("records")
            label = f" ({row_label(rows[0])})" if rows else ""
            click.echo(f"warning: skipping cell {trainer}{label}: {exc}", err=True)
    if missing:
        who = f"cell {needing[0]}" if len(needing) == 1 else \
            f"{len(needing)} models ({', '.join(needing[:3])}{' …' if len(needing) > 3 else ''})"
        raise fail(missing_component_message(run, registry, list(missing), who))
    if not cells:
        raise fail(f"no model file of {run.path} is readable; nothing to evaluate")
    return cells


def _evaluation_cells(sources: list[Cell], solvers: tuple[str, ...], eval_trace: str | None, ref_solver: str | None,
                      allow_loose_ref: bool, registry: Registry, metrics: tuple[str, ...] = ()
                      ) -> tuple[list[Cell], list[str]]:
    """The cells to evaluate: each source with each solver, the given evaluation slots and metrics."""
    from dataclasses import replace

    from cnfbench.cells import EvalProtocol
    from cnfbench.config import check_reference, resolve_axis, resolve_metrics, resolve_one

    notes: list[str] = []
    chosen = resolve_axis(registry, "solver", solvers, "--solver", notes) if solvers else []
    slots: dict[str, Any] = {}
    if eval_trace is not None:
        slots["eval_trace"] = resolve_one(registry, "trace", eval_trace, "--eval-trace")
        if registry.get("trace", slots["eval_trace"].name).cls.stochastic:
            raise ValueError(f"--eval-trace must be an exact (deterministic) estimator, not "
                             f"{slots['eval_trace'].name!r}")
    if ref_solver is not None:
        slots["ref_solver"] = resolve_one(registry, "solver", ref_solver, "--ref-solver")
        check_reference(registry, slots["ref_solver"], allow_loose_ref, notes)
    chosen_metrics = resolve_metrics(registry, metrics)
    cells: dict[str, Cell] = {}
    for source in sources:
        ignored = registry.get("objective", source.objective.name).cls.ignored_axes()
        evaluation = EvalProtocol({**source.evaluation.slots, **slots}, source.evaluation.ref_dtype,
                                  source.evaluation.batch_size, source.evaluation.mass_grid, chosen_metrics)
        for solver in chosen or [source.solver]:
            trained_with = {} if "solver" in ignored else {"solver": source.solver}
            cell = replace(source, axes={**source.axes, "solver": solver}, evaluation=evaluation,
                           trained_with={**source.trained_with, **trained_with})
            cells.setdefault(cell.cell_id, cell)
    return list(cells.values()), notes


@main.command()
@click.argument("run_dir", metavar="RUN")
@click.option("--solver", "solvers", multiple=True,
              help="solvers to evaluate and sample each model with: comma list, e.g. 'euler[steps=8],dopri5'; "
                   "a number parameter may be a range, e.g. 'dopri5[rtol=1e-3..1e-8:6,atol=rtol]' "
                   "[default: the solver each model was evaluated with]")
@click.option("--eval-trace", "--trace", "eval_trace",
              help="exact trace estimator of the reported NLLs [default: the run's]")
@click.option("--ref-solver", help="reference solve behind nll_ref [default: the run's]")
@click.option("--allow-loose-ref", is_flag=True, help="accept a fixed-step or loose --ref-solver [default: off]")
@click.option("--metrics", multiple=True,
              help="metrics to compute: comma list of metrics and groups, 'all', or 'default' plus more; an evaluated "
                   "cell that has a row keeps the columns it does not compute again, so '--metrics w2' adds W2 to "
                   "the rows and recomputes nothing else; `cnfbench plugins --family metric` lists them "
                   "[default: the default metrics of cnfbench run]")
@click.option("--cell", "cell_ids", multiple=True, help="evaluate only the model of this cell (repeatable) "
                                                        "[default: every model of the run]")
@click.option("--plugin", "plugins", multiple=True,
              help="plugin to load: a .py file or module you trust, e.g. the one providing the run's field or one "
                   "with new metrics (repeatable); a run folder's own plugins are never imported "
                   "[default: the installed plugins]")
@click.option("--allow-changed-plugin", is_flag=True,
              help="use a --plugin file even though its SHA-256 differs from the one the run recorded for that "
                   "file name [default: off]")
@click.option("--timeout", type=float, help=f"seconds a cell may run before it is stopped [default: none; valid: "
                                             f">{RANGES['timeout'].bounds()[0]} to {RANGES['timeout'].bounds()[1]}]")
@click.option("--executor", default="process",
              help="where cells run: process[workers=N,threads=T], inline, dask[...] or submitit[...]; "
                   "`cnfbench plugins --family executor` lists every executor and its parameters "
                   "[default: process, i.e. one worker]")
@click.option("--isolation", type=click.Choice(["process", "inline"]), help="deprecated: --executor [default: none]")
@click.option("--data-dir", help="folder that dataset files are read from [default: $CNFBENCH_DATA, else "
                                 "~/.cache/cnfbench/data]")
@click.option("--wait", is_flag=True, help="when another cnfbench command is writing the run folder, wait for it to "
                                           "end instead of stopping with an error [default: off]")
@click.option("--quiet", is_flag=True, help="no progress output [default: off]")
def evaluate(run_dir: str, solvers: tuple[str, ...], eval_trace: str | None, ref_solver: str | None,
             allow_loose_ref: bool, metrics: tuple[str, ...], cell_ids: tuple[str, ...], plugins: tuple[str, ...],
             allow_changed_plugin: bool,
             timeout: float | None, executor: str, isolation: str | None, data_dir: str | None, wait: bool,
             quiet: bool) -> int:
    """Evaluate the trained models of RUN again (the default metrics, or --metrics), without training.

    \b
    cnfbench evaluate results/grid1 --solver 'euler[steps=4],euler[steps=16],dopri5'
    cnfbench evaluate results/grid1 --metrics w2,mmd
    cnfbench evaluate results/grid1 --ref-solver 'dopri5[rtol=1e-9,atol=1e-9]' --cell 3f2a9c0d1e4b5a6f
    """
    from cnfbench.config import OPTION_SOURCE, RunConfig, merge
    from cnfbench.models import registry_for
    from cnfbench.output_paths import OutputPathError, check_free_space
    from cnfbench.params import ParamError
    from cnfbench.progress import Progress
    from cnfbench.provenance import collect
    from cnfbench.recorded_plugins import describe_plugins, unloaded_plugins
    from cnfbench.run_folder import ResultsError
    from cnfbench.runner import sweep

    if isolation is not None:
        click.echo(f"note: --isolation is deprecated; use --executor {isolation}", err=True)
        executor = isolation
    try:  # the run's own checks of --timeout and --executor
        merge(RunConfig(), {"executor": executor, **({"timeout": timeout} if timeout is not None else {})},
              OPTION_SOURCE)
    except ParamError as exc:
        raise fail(str(exc)) from None
    use_data_dir(data_dir)
    target = Path(run_dir)
    folder = target.parent if target.is_file() else target
    if not folder.is_dir():
        load_runs_or_fail((run_dir,))  # its one-line error
    try:
        check_free_space(folder, "the evaluation")
    except OutputPathError as exc:
        raise fail(str(exc)) from None
    with writing(folder, wait):
        (run,) = load_runs_or_fail((run_dir,))
        try:
            registry, check = registry_for(run, plugins, allow_changed_plugin=allow_changed_plugin)
        except ResultsError as exc:
            raise fail(str(exc)) from None
        for line in [*(f"note: {note}" for note in check.notes),
                     *(f"warning: {warning}" for warning in check.warnings)]:
            click.echo(line, err=True)
        try:
            sources = _sources(run, cell_ids, registry)
            cells, notes = _evaluation_cells(sources, solvers, eval_trace, ref_solver, allow_loose_ref, registry,
                                             metrics)
        except (ParamError, ValueError) as exc:
            raise fail(str(exc)) from None
        unloaded = [plugin for plugin in unloaded_plugins(run, registry) if plugin.source in ("file", "module")]
        if unloaded:  # their metrics columns and observers would silently be missing from the new rows
            noun = "plugins" if len(unloaded) > 1 else "plugin"
            notes.append(f"{run.path} recorded {noun} {describe_plugins(unloaded)}, not loaded: a run folder's "
                         "plugins are never imported; pass --plugin PATH to evaluate with one you trust")
        for note in notes:
            click.echo(f"note: {note}", err=True)
        entry = collect(sys.argv, {"solver": list(solvers), "eval_trace": eval_trace, "ref_solver": ref_solver,
                                   "metrics": list(metrics), "cell": list(cell_ids), "plugin": list(plugins),
                                   **({"allow_changed_plugin": True} if allow_changed_plugin else {})},
                        registry.plugins, cells[0].device,
                        sorted({library for cell in cells for family, spec in cell.components()
                                for library in registry.get(family, spec.name).cls.libraries}))
        entry["cells"] = [cell.cell_id for cell in cells]

        def record(previous: dict[str, Any]) -> dict[str, Any]:
            known = {item.get("cell_id") for item in previous.get("cells", []) if isinstance(item, dict)}
            added = [cell.to_json() | {"cell_id": cell.cell_id} for cell in cells if cell.cell_id not in known]
            return {**previous, "cells": [*previous.get("cells", []), *added],
                    "evaluations": [*previous.get("evaluations", []), entry]}

        progress = Progress(cells, quiet=quiet, run_dir=run.path)
        progress.header(f"evaluating {plural(len(cells), 'cell')} from {plural(len(sources), 'model')}")
        result = run_cells(cells, registry, executor, plugins, timeout, progress,
                           lambda engine, label: sweep(cells, registry, engine, run.path, {}, progress, rerun=True,
                                                       record=record, executor_name=label, may_train=False),
                           "Summary of the evaluated cells", "rerun the same command to evaluate the rest")
        click.echo(f"\nresults: {run.path} ({plural(result.ran, 'cell')} evaluated from "
                   f"{plural(len(sources), 'model')}; no training)")
        return INTERRUPTED if result.interrupted else 0
