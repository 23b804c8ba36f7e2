"""``cnfbench sample``: draw samples from a finished cell's trained field and write them to ``.npy`` or parquet.

The base draws ``z0 ~ N(0, I)`` come from the seeded stream of the run's own
model samples (``model/quality_samples`` of the seed: the ``sample`` input every sample metric and the
density plots read; with the row's solver and as many samples, the very samples they measured), pushed from t=0
to t=1 by the cell's solver or ``--solver``, the samples alone (no
log-density rides along), exactly as :func:`cnfbench.evaluation.sample_model`
does in a run; the harness counts the solve's dynamics evaluations (NFE),
each one forward pass of the field. torch,
numpy and pandas are imported inside the command, so ``--help`` starts at once.
The field and solver come from the installed plugins and those the user names (``--plugin``,
``CNFBENCH_PLUGINS``), never from a plugin the run folder names (see :mod:`cnfbench.recorded_plugins`).
Bad input is one ``Error:`` line with exit code 2, before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cnfbench.cli import fail, load_runs_or_fail, main
from cnfbench.config import RANGES, Range

if TYPE_CHECKING:
    from cnfbench.contracts import Solver
    from cnfbench.models import TrainedModel

SUFFIXES = (".npy", ".parquet")
SAMPLES = Range(1, 10**7, True, "samples drawn in one solve, held in memory with the solver's stages")
"""How many samples one command may draw."""


def _check_number(option: str, value: int | None, bounds: Range) -> None:
    if value is not None and not bounds.low <= value <= bounds.high:
        raise fail(f"{option} must be {bounds.describe()} ({bounds.why_high}), got {value}")


@main.command()
@click.argument("run_dir", metavar="RUN")
@click.option("--cell", "cell_id", help="id of the cell whose model to sample (cell_id in cells.csv) [default: the "
                                        "run's only model]")
@click.option("-n", "--samples", "n", type=int, required=True,
              help=f"number of samples [valid: {SAMPLES.bounds()[0]} to {SAMPLES.bounds()[1]}]")
@click.option("--solver", help="solver to integrate with, e.g. 'euler[steps=8]' [default: the cell's solver]")
@click.option("--seed", type=int, help=f"seed of the base draws z0 ~ N(0, I) [default: the cell's seed; valid: "
                                       f"{RANGES['first_seed'].bounds()[0]} to {RANGES['first_seed'].bounds()[1]}]")
@click.option("--device", default="cpu", help="cpu, cuda or cuda:N [default: cpu]")
@click.option("--plugin", "plugins", multiple=True,
              help="plugin providing the field, solver or trace: a .py file or module you trust (repeatable); a "
                   "run folder's own plugins are never imported [default: the installed plugins]")
@click.option("--allow-changed-plugin", is_flag=True,
              help="use a --plugin file even though its SHA-256 differs from the one the run recorded for that "
                   "file name [default: off]")
@click.option("--out", "out_file", required=True, help="FILE.npy (float array [N, D]) or FILE.parquet "
                                                       "(columns x0 .. x{D-1})")
def sample(run_dir: str, cell_id: str | None, n: int, solver: str | None, seed: int | None, device: str,
           plugins: tuple[str, ...], allow_changed_plugin: bool, out_file: str) -> None:
    """Draw N samples from a finished cell's trained model by solving from t=0 to t=1.

    \b
    cnfbench sample results/grid1 --cell 3f2a9c0d1e4b5a6f -n 10000 --out samples.npy
    cnfbench sample results/grid1 --cell 3f2a9c0d1e4b5a6f -n 10000 --solver 'euler[steps=8]' --out s.parquet
    """
    from cnfbench.output_paths import OutputPathError, check_output_file

    _check_number("-n", n, SAMPLES)
    _check_number("--seed", seed, RANGES["first_seed"])
    if Path(out_file).suffix.lower() not in SUFFIXES:
        raise fail(f"--out {out_file!r} must end in {' or '.join(SUFFIXES)} (the format is chosen by the suffix)")
    try:
        target = check_output_file(out_file, "the samples")
    except OutputPathError as exc:
        raise fail(str(exc)) from None
    from cnfbench.config import resolve_device
    from cnfbench.params import ParamError, parse_selector_list
    from cnfbench.registry import ComponentBuildError
    from cnfbench.run_folder import ResultsError

    (run,) = load_runs_or_fail((run_dir,))
    from cnfbench.models import load_trained, only_model, registry_for
    from cnfbench.recorded_plugins import require_components

    try:
        where = resolve_device(device)
        chosen_cell = only_model(run) if cell_id is None else cell_id
        registry, check = registry_for(run, plugins, allow_changed_plugin=allow_changed_plugin)
        model = load_trained(run, chosen_cell, device=where, registry=registry)
        selections = parse_selector_list(solver, "--solver") if solver is not None else []
        if len(selections) > 1:
            raise ParamError(f"--solver takes exactly one solver, got {len(selections)}")
        require_components(run, registry, [] if selections else [("solver", model.cell.solver.name)],
                           f"cell {model.cell.cell_id}")
        chosen = registry.resolve("solver", selections[0]) if selections else model.cell.solver
        built_solver = registry.build("solver", chosen)
    except (ResultsError, ParamError, ComponentBuildError, ValueError) as exc:
        raise fail(str(exc)) from None
    for note in check.notes:
        click.echo(f"note: {note}", err=True)
    for warning in check.warnings:
        click.echo(f"warning: {warning}", err=True)
    _draw_and_write(model, built_solver, chosen.label(), n, model.cell.seed if seed is None else seed, where, target)


def _draw_and_write(model: TrainedModel, solver: Solver, solver_label: str, n: int, seed: int, device: str,
                    target: Path) -> None:
    """Sample ``model`` with ``solver``, write the samples to ``target`` atomically and say what was written."""
    import numpy as np
    import torch

    from cnfbench.contracts import split_generator
    from cnfbench.dynamics import NFECounter
    from cnfbench.evaluation import sample_model
    from cnfbench.measure import now
    from cnfbench.messages import describe_exception
    from cnfbench.run_folder import atomic_write

    field, cell = model.field, model.cell
    counter = NFECounter(max_per_solve=cell.budget.max_nfe)
    dtype = next((p.dtype for p in field.parameters()), torch.float32)
    started = now(torch.device(device))
    try:
        samples = sample_model(field, solver, n, split_generator(seed, "model/quality_samples"), torch.device(device),
                               dtype, counter, model.registry.describe("field", cell.field.name))
    except Exception as exc:  # noqa: BLE001 - a failing solve (NFE budget, step-size underflow, a plugin's bug)
        raise fail(f"sampling cell {cell.cell_id} with {solver_label} failed after {counter.current} evaluations: "
                   f"{describe_exception(exc, 300)}") from None
    seconds = now(torch.device(device)) - started
    array = samples.cpu().numpy()
    if not np.isfinite(array).all():
        raise fail(f"sampling cell {cell.cell_id} with {solver_label} gave non-finite values "
                   f"({int((~np.isfinite(array)).any(axis=1).sum())} of {n} samples); nothing written")
    try:
        if target.suffix.lower() == ".npy":
            def write(tmp: Path) -> None:
                with open(tmp, "wb") as stream:  # a file object: numpy adds no ".npy" to the temporary name
                    np.save(stream, array, allow_pickle=False)
        else:
            import pandas as pd

            frame = pd.DataFrame(array, columns=[f"x{i}" for i in range(array.shape[1])])

            def write(tmp: Path) -> None:
                frame.to_parquet(tmp, index=False)
        atomic_write(target, write)
    except OSError as exc:
        raise fail(f"cannot write the samples to {str(target)!r}: {exc.strerror or exc}") from None
    click.echo(f"wrote {target}: {n} samples x {array.shape[1]} dimensions ({array.dtype}) from cell {cell.cell_id} "
               f"({cell.field.label()} on {cell.dataset.label()}, seed {cell.seed})")
    click.echo(f"sampling solve: {solver_label} from t=0 to t=1, base seed {seed}; NFE {counter.current} "
               f"evaluations of the field alone (counted by the harness); {seconds:.3f} s on {device}")
