"""Run one cell end to end — build, train, evaluate — and turn the outcome into a result row.

A cell never raises: divergence, a blown NFE budget, a contract violation or
any exception in a plugin become a status and a one-line reason in the row,
with whatever was measured before the failure. Every reason says in which
phase of the cell it happened and which components were running there; the
rows of cells that end outside :func:`train_and_evaluate` (a timeout, a dead worker,
Ctrl-C) are built here too, so they read the same.
"""

from __future__ import annotations

import math
import socket
import statistics
import traceback
from collections.abc import Callable
from typing import Any

import torch

from cnfbench.cells import Cell
from cnfbench.columns import COLUMN_NAMES, ordered
from cnfbench.contracts import (
    INTERRUPTED,
    CellInterrupted,
    CellOutcome,
    SharedModel,
    StepCapReached,
    StepSizeUnderflow,
    split_generator,
)
from cnfbench.dynamics import ContractViolation, NFEBudgetExceeded, NFECounter, PhaseTracker
from cnfbench.evaluation import (
    EvaluationPass,
    evaluate_log_prob,
    roundtrip_error,
    sample_model,
    sample_with_log_prob,
    step_columns,
)
from cnfbench.measure import PeakMemory, now
from cnfbench.messages import describe_exception, one_line
from cnfbench.model_file import decode_model, encode_model
from cnfbench.registry import ComponentBuildError, Registry
from cnfbench.rows import REASON_LIMIT, failure_reason, identity_columns
from cnfbench.sample_quality import energy_distance, sliced_wasserstein2
from cnfbench.training import Diverged, IterationCallback, TrainingRecord, seeded_field, train
from cnfbench.validity import integrate_mass, loose_reference, mass_grid, validity

DENSITY_SAMPLES = 500
"""Model samples kept per 2D cell for the density plots."""

QUALITY_MAX_SAMPLES = 2000
"""Most model samples (and test points) the sample distances use: energy distance is O(n²) in time and memory."""

PER_DIMENSION_COLUMNS = ("dim", "nll_per_dim", "nll_ref_per_dim", "bits_per_dim", "bits_per_dim_solver")

MODEL_DENSITY_SAMPLES = 1000
"""Model samples (drawn with the reference solve) the importance-sampling mass and the reverse KL average over."""

QUALITY_PROJECTIONS = 128
"""Random unit directions of the sliced Wasserstein-2 distance."""

QUALITY_COLUMNS = ("energy_distance", "energy_distance_stderr", "sliced_w2", "sliced_w2_stderr",
                   "reverse_kl", "reverse_kl_stderr", "mass_is", "mass_is_stderr", "mass_is_ess", "mass_is_time_s",
                   "roundtrip_error", "nfe_sample", "sample_time_s")


def _plugin_frame(exc: BaseException, registry: Registry, cell: Cell) -> str | None:
    """Name the component that raised ``exc``: the innermost frame of one of its methods, else of its module."""
    classes: dict[type, str] = {}
    modules: dict[str, str] = {}
    for family, spec in cell.axes.items():
        entry = registry.get(family, spec.name)
        classes[entry.cls] = modules[entry.cls.__module__] = f"{family} {spec.name!r} (plugin {entry.plugin!r})"
    frames = [frame for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__)))]
    for frame in frames:  # one plugin module may hold several components: the method's owner tells them apart
        owner = frame.f_locals.get("self")
        for cls, name in classes.items():
            if isinstance(owner, cls):
                return name
    for frame in frames:
        module = frame.f_globals.get("__name__", "")
        if module in modules:
            return modules[module]
    return None


def classify_failure(exc: BaseException, registry: Registry, cell: Cell, tracker: PhaseTracker | None = None
                     ) -> tuple[str, str]:
    """Map an exception raised while running ``cell`` to ``(status, reason)``.

    With ``tracker``, the reason says in which phase (and training iteration)
    it happened and which components were running; without, it is the bare message.
    """
    status, detail = _classify(exc, registry, cell)
    if tracker is None:
        return status, detail
    lead = {"diverged": "diverged", "budget": "over budget"}.get(status, "error")
    return status, failure_reason(lead, cell, tracker.phase, tracker.iteration, detail, registry)


def _translated(exc: BaseException, registry: Registry, cell: Cell) -> BaseException:
    """``exc`` as the contract exception one of the cell's solvers says it means (an adjoint's backward
    solve raises its library's own exception outside ``integrate``), else ``exc`` itself."""
    if isinstance(exc, (StepSizeUnderflow, StepCapReached)):
        return exc
    for spec in (cell.solver, cell.evaluation.ref_solver):
        try:
            solver_class = registry.get("solver", spec.name).cls
        except ValueError:  # not registered here: it cannot have raised
            continue
        translated = solver_class.translate_failure(exc)  # type: ignore[attr-defined]
        if translated is not None:
            return translated
    return exc


def _classify(exc: BaseException, registry: Registry, cell: Cell) -> tuple[str, str]:
    exc = _translated(exc, registry, cell)
    message = one_line(exc, REASON_LIMIT)
    if isinstance(exc, (Diverged, StepSizeUnderflow)):
        return "diverged", message
    if isinstance(exc, (NFEBudgetExceeded, StepCapReached)):
        return "budget", message
    if isinstance(exc, ContractViolation):
        return "error", f"contract violation: {message}"
    if isinstance(exc, (PluginFailure, ComponentBuildError)):
        return "error", message
    if isinstance(exc, torch.OutOfMemoryError):
        return "error", f"out of memory: {message}"
    culprit = _plugin_frame(exc, registry, cell)
    where = f" in {culprit}" if culprit else ""
    return "error", one_line(f"{type(exc).__name__}{where}: {message}", REASON_LIMIT)


class PluginFailure(RuntimeError):
    """An observer plugin failed; the message names it."""


def plugin_metrics(registry: Registry, cell: Cell, field_module: Any, dataset: Any, test: torch.Tensor
                   ) -> dict[str, Any]:
    """Extra columns from every ``cnfbench_cell_metrics`` implementation, each checked and attributed."""
    arguments = {"cell": cell.to_json(), "field": field_module, "dataset": dataset, "test": test}
    extra: dict[str, Any] = {}
    for name, call in registry.implementations("cnfbench_cell_metrics"):
        try:
            with torch.no_grad():
                result = call(**arguments)
        except Exception as exc:  # noqa: BLE001 - attribute any failure to its plugin
            raise PluginFailure(f"metrics plugin {name!r} failed: {describe_exception(exc, REASON_LIMIT)}") from exc
        for key, value in dict(result or {}).items():
            if key in COLUMN_NAMES or key in extra:
                raise PluginFailure(f"metrics plugin {name!r} returned column {key!r}, which already exists")
            if not isinstance(value, (int, float, str, bool)):
                raise PluginFailure(f"metrics plugin {name!r} returned {type(value).__name__} for {key!r}; "
                                    "use a number or a string")
            extra[key] = value
    return extra


def _nfe_stats(values: list[int]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return float(statistics.fmean(values)), float(max(values))


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else math.nan


def _density_columns(dataset: Any, test: torch.Tensor, passes: dict[str, EvaluationPass]) -> dict[str, Any]:
    """True entropy on the test split, and the NLLs' paired gaps to it, when the dataset knows its density.

    Computing the entropy on the very samples the NLLs average over makes
    ``nll - entropy`` and ``excess_nll = nll_ref - entropy`` paired estimates
    of a KL divergence, with far smaller standard errors than either alone.
    """
    names = ("entropy", "entropy_stderr", "excess_nll", "excess_nll_stderr", "nll_minus_entropy_stderr")
    columns: dict[str, Any] = dict.fromkeys(names, math.nan)
    if not dataset.has_density:
        return columns
    true_log_prob = dataset.log_prob(test.to("cpu")).to(torch.float64)
    columns["entropy"], columns["entropy_stderr"] = _mean_and_stderr(-true_log_prob)
    if "ref" in passes:
        columns["excess_nll"], columns["excess_nll_stderr"] = _mean_and_stderr(true_log_prob - passes["ref"].log_prob)
    if "eval" in passes:
        columns["nll_minus_entropy_stderr"] = _mean_and_stderr(true_log_prob - passes["eval"].log_prob)[1]
    return columns


def _sample_quality_columns(cell: Cell, field_module: Any, solver: Any, test: torch.Tensor, device: torch.device,
                            field_label: str) -> dict[str, float]:
    """Distances from model samples (the cell's solver) to the test split, and what drawing them cost.

    ``n = min(len(test), QUALITY_MAX_SAMPLES)`` samples, seeded by their own stream (no other number
    changes), against the first ``n`` test points. They are drawn by a solve of the samples alone (the
    distances need no log-density), and ``nfe_sample`` and ``sample_time_s`` are that solve's NFE, counted
    by the harness, and wall-clock: what sampling the model costs.
    """
    n = min(test.shape[0], QUALITY_MAX_SAMPLES)
    counter = NFECounter(max_per_solve=cell.budget.max_nfe)
    started = now(device)
    samples = sample_model(field_module, solver, n, split_generator(cell.seed, "model/quality_samples"),
                           device, dtype=test.dtype, counter=counter, field_label=field_label)
    seconds = now(device) - started
    data = test[:n]
    energy, energy_stderr = energy_distance(samples, data)
    sliced, sliced_stderr = sliced_wasserstein2(samples, data, QUALITY_PROJECTIONS,
                                                split_generator(cell.seed, "model/quality_projections"))
    return {"energy_distance": energy, "energy_distance_stderr": energy_stderr, "sliced_w2": sliced,
            "sliced_w2_stderr": sliced_stderr, "nfe_sample": float(counter.totals["sample"]), "sample_time_s": seconds}


def model_key_of(cell: Cell, registry: Registry) -> str:
    """The cell's model key (:meth:`Cell.model_key`) with the axes its objective ignores left out."""
    try:
        ignored = registry.get("objective", cell.objective.name).cls.ignored_axes()
    except ValueError:  # an objective not registered here: its cell fails to build and shares nothing
        ignored = ()
    return cell.model_key(ignored)


def _model_density_columns(cell: Cell, dataset: Any, field_module: Any, solver: Any, ref_solver: Any, trace: Any,
                           n: int, device: torch.device, labels: tuple[str, str]) -> dict[str, float]:
    """The mass of the cell's solver's density by importance sampling, in any dimension, and KL(model || data).

    ``n`` model samples x are drawn with the reference solve together with their reference log-density
    ``log q(x)`` (one joint solve, its own samples from its own seed stream: the weights need the density of
    exactly these samples; it is not the row's sampling cost and counts into no column); the cell's solver
    then scores them, ``log p(x)``. With weights
    ``w = exp(log p - log q)``, ``mass_is = mean(w)`` estimates ``∫ p`` (1 for a normalized density), with
    the standard error of the mean and Kish's effective sample size ``(Σw)² / Σw²``. Where the dataset knows its
    density, ``reverse_kl`` is the mean of ``log q - log p_data`` over the same samples.
    """
    samples, log_q = sample_with_log_prob(field_module, ref_solver, trace, n,
                                          split_generator(cell.seed, "model/reverse_kl_samples"), device,
                                          getattr(torch, cell.evaluation.ref_dtype))
    columns = {"reverse_kl": math.nan, "reverse_kl_stderr": math.nan}
    if dataset.has_density:
        log_data = dataset.log_prob(samples.to("cpu", torch.float32)).to(torch.float64)
        columns["reverse_kl"], columns["reverse_kl_stderr"] = _mean_and_stderr(log_q - log_data)
    model_dtype = next(iter(field_module.parameters()), torch.empty(0)).dtype
    own = evaluate_log_prob(field_module, solver, trace, samples.to(device, model_dtype),
                            cell.evaluation.batch_size, "eval", max_nfe=cell.budget.max_nfe, labels=labels)
    weights = torch.exp(own.log_prob - log_q)
    columns["mass_is"], columns["mass_is_stderr"] = _mean_and_stderr(weights)
    total, squares = float(weights.sum()), float(weights.pow(2).sum())
    columns["mass_is_ess"] = total**2 / squares if squares > 0 and math.isfinite(squares) else math.nan
    columns["mass_is_time_s"] = own.seconds
    return columns


def _per_dimension_columns(dataset: Any, nll: float, nll_ref: float) -> dict[str, float]:
    """NLLs per dimension, and bits per dimension for a dataset that declares itself discrete."""
    dim = dataset.dim
    offset = dataset.discrete_nll_offset
    columns = {"nll_per_dim": nll / dim, "nll_ref_per_dim": nll_ref / dim,
               "bits_per_dim": math.nan, "bits_per_dim_solver": math.nan}
    if offset is not None:
        columns["bits_per_dim"] = (nll_ref + offset) / (dim * math.log(2))
        columns["bits_per_dim_solver"] = (nll + offset) / (dim * math.log(2))
    return columns


def _load_shared(field_module: Any, shared: SharedModel) -> None:
    """Load the tensors of another cell's model file into ``field_module`` (checked, strict)."""
    _, tensors = decode_model(shared.model, shared.trainer_id)
    field_module.load_state_dict({name: tensor.to(field_module.state_dict()[name].device)
                                  for name, tensor in tensors.items()}, strict=True)


def train_and_evaluate(cell: Cell, registry: Registry, on_iteration: IterationCallback | None = None,
                       on_phase: Callable[[str], None] | None = None, tracker: PhaseTracker | None = None,
                       shared: SharedModel | None = None) -> CellOutcome:
    """Train and evaluate ``cell``; always return a row with a status.

    ``on_phase`` hears the progress display's phases (train, eval, ref, mass);
    ``tracker`` (a fresh one when None) is told every phase of the cell as it
    begins. With ``shared``, the model another cell of the same model key
    trained is loaded instead of training, and the row takes that training's
    columns. A ``done`` outcome of a cell that trained carries the trained field
    as model-file bytes. Ctrl-C raises :class:`CellInterrupted` carrying the
    ``interrupted`` row.
    """
    tracker = tracker or PhaseTracker()

    def enter(phase: str, shown: str | None = None) -> None:
        tracker.enter(phase)
        if shown and on_phase:
            on_phase(shown)

    device = torch.device(cell.device)
    row: dict[str, Any] = identity_columns(cell)
    row.update(status="error", reason="", n_params=math.nan, nfe_expected_per_solve=math.nan,
               mass=math.nan, mass_ref=math.nan, mass_time_s=math.nan, mass_ref_time_s=math.nan,
               model_key=model_key_of(cell, registry), trained_in=shared.trainer_id if shared else cell.cell_id)
    row.update(dict.fromkeys(QUALITY_COLUMNS, math.nan))
    row.update(dict.fromkeys(PER_DIMENSION_COLUMNS, math.nan))
    record = TrainingRecord()
    memory = PeakMemory(device)
    memory.reset()
    evaluation: dict[str, EvaluationPass] = {}
    density: dict[str, Any] | None = None
    model: bytes | None = None
    interrupted = False
    solves = True
    started = now(device)
    try:
        enter("data")
        dataset = registry.build("dataset", cell.dataset)
        row["dim"] = dataset.dim
        row["torch_threads"] = torch.get_num_threads()
        row["host"] = socket.gethostname()
        splits = dataset.splits(cell.seed)
        train_data, test = splits.train.to(device), splits.test.to(device)
        enter("build_field")
        field_module = seeded_field(lambda: registry.build("field", cell.field, dataset.dim), cell.seed, device)
        row["n_params"] = sum(p.numel() for p in field_module.parameters() if p.requires_grad)
        enter("build_objective")
        objective = registry.build("objective", cell.objective)
        solves = objective.uses_solver
        enter("build_solver")
        solver = registry.build("solver", cell.solver)
        expected = solver.expected_nfe()
        row["nfe_expected_per_solve"] = math.nan if expected is None else expected
        enter("build_trace")
        trace = registry.build("trace", cell.trace)
        enter("build_eval")
        eval_trace = registry.build("trace", cell.evaluation.trace)
        ref_solver = registry.build("solver", cell.evaluation.ref_solver)
        row["ref_loose"] = loose_reference(ref_solver.error_tolerance())
        ref_dtype = getattr(torch, cell.evaluation.ref_dtype)
        labels = (registry.describe("field", cell.field.name), registry.describe("trace", cell.evaluation.trace.name))
        if shared is not None:
            enter("load_model")
            _load_shared(field_module, shared)
            row.update(shared.training)
        else:
            training = cell.training_axes
            train_solver = solver if training["solver"] == cell.solver else registry.build("solver", training["solver"])
            train_trace = trace if training["trace"] == cell.trace else registry.build("trace", training["trace"])
            validate = None
            if cell.budget.val_every:
                val_solver = train_solver if objective.uses_solver or cell.budget.val_solver is None \
                    else registry.build("solver", cell.budget.val_solver)
                val_data = splits.val.to(device)

                def validate(field: Any) -> float:
                    return evaluate_log_prob(field, val_solver, eval_trace, val_data, cell.evaluation.batch_size,
                                             "eval", max_nfe=cell.budget.max_nfe, labels=labels).nll

            if on_phase:
                on_phase("train")
            train(cell, field_module, objective, train_solver, train_trace, train_data, record, on_iteration,
                  (registry.describe("field", cell.field.name), registry.describe("trace", training["trace"].name),
                   registry.describe("objective", cell.objective.name)), tracker, validate)
        enter("eval", "eval")
        evaluation["eval"] = evaluate_log_prob(field_module, solver, eval_trace, test, cell.evaluation.batch_size,
                                               "eval", max_nfe=cell.budget.max_nfe, labels=labels)
        enter("ref", "ref")
        evaluation["ref"] = evaluate_log_prob(field_module, ref_solver, eval_trace, test, cell.evaluation.batch_size,
                                              "ref", dtype=ref_dtype, labels=labels)
        row.update(_per_dimension_columns(dataset, evaluation["eval"].nll, evaluation["ref"].nll))
        if dataset.dim == 2 and cell.evaluation.mass_grid > 0:
            enter("mass", "mass")
            resolution = cell.evaluation.mass_grid
            grid, cell_area = mass_grid(test, resolution)
            own_grid = evaluate_log_prob(field_module, solver, eval_trace, grid, cell.evaluation.batch_size, "eval",
                                         max_nfe=cell.budget.max_nfe, labels=labels)
            enter("mass_ref")
            ref_grid = evaluate_log_prob(field_module, ref_solver, eval_trace, grid, cell.evaluation.batch_size, "ref",
                                         dtype=ref_dtype, labels=labels)
            row.update(mass=integrate_mass(own_grid.log_prob, cell_area), mass_time_s=own_grid.seconds,
                       mass_ref=integrate_mass(ref_grid.log_prob, cell_area), mass_ref_time_s=ref_grid.seconds)
            enter("sampling")
            samples = sample_model(field_module, solver, DENSITY_SAMPLES, split_generator(cell.seed, "model/samples"),
                                   device, field_label=labels[0])
            density = {"grid_x": grid[::resolution, 0].tolist(), "grid_y": grid[:resolution, 1].tolist(),
                       "log_prob_grid": ref_grid.log_prob.tolist(), "samples": samples.cpu().tolist(),
                       "log_prob_solver_grid": own_grid.log_prob.tolist(),
                       "data": test[:DENSITY_SAMPLES].cpu().tolist()}
        enter("sample_quality")
        row.update(_sample_quality_columns(cell, field_module, solver, test, device, labels[0]))
        enter("model_density")
        row.update(_model_density_columns(cell, dataset, field_module, solver, ref_solver, eval_trace,
                                          MODEL_DENSITY_SAMPLES, device, labels))
        enter("roundtrip")
        row["roundtrip_error"] = float(roundtrip_error(field_module, solver, eval_trace, test,
                                                       cell.evaluation.batch_size, cell.budget.max_nfe, labels).mean())
        enter("entropy")
        row.update(_density_columns(dataset, test, evaluation))
        enter("metrics")
        field_module.eval()
        row.update(plugin_metrics(registry, cell, field_module, dataset, test))
        if shared is None:
            enter("keep_model")
            model = encode_model(field_module.state_dict(), cell, dataset.dim)
        row["status"] = "done"
    except KeyboardInterrupt:
        interrupted = True
        row.update(status="interrupted", reason=failure_reason(INTERRUPTED, cell, tracker.phase, tracker.iteration,
                                                               registry=registry))
    except Exception as exc:  # noqa: BLE001 - a failing cell must never kill the sweep
        row["status"], row["reason"] = classify_failure(exc, registry, cell, tracker)
    finally:
        if shared is None:
            row.update(_training_columns(record, solves))
        row.update(_measured_columns(evaluation, memory, now(device) - started))
        row["valid"], row["validity_reason"] = validity(row) if row["status"] == "done" else (False, "")
    curves = [{"cell_id": cell.cell_id, **point} for point in record.curves()]
    done = row["status"] == "done"
    outcome = CellOutcome(ordered(row), curves, density if done else None, model if done else None)
    if interrupted:
        raise CellInterrupted(outcome)
    return outcome


def _training_columns(record: TrainingRecord, solves: bool) -> dict[str, Any]:
    """The :data:`~cnfbench.rows.TRAINING_COLUMNS` of a training run (NFE for an objective that ``solves``,
    field evaluations per iteration for one that does not)."""
    forward_mean, forward_max = _nfe_stats(record.nfe_forward) if solves else (math.nan, math.nan)
    backward_mean, backward_max = _nfe_stats(record.nfe_backward) if solves else (math.nan, math.nan)
    evaluations = _nfe_stats(record.field_evaluations)[0] if not solves else math.nan
    selected, best = record.best_validation() if record.validation else (0, math.nan)
    return {
        "iterations_done": record.iterations,
        "final_train_loss": record.losses[-1] if record.losses else math.nan,
        "train_loss_unit": record.loss_unit,
        "selected_iteration": record.selected_iteration if record.validation else record.iterations,
        "best_val_nll": best,
        "nfe_forward_mean": forward_mean,
        "nfe_forward_max": forward_max,
        "nfe_backward_mean": backward_mean,
        "nfe_backward_max": backward_max,
        "field_evals_per_iter": evaluations,
        "train_time_s": record.total_seconds,
        "iter_time_median_s": record.median_iteration_seconds(),
        "compiled": record.compiled,
        "compile_note": record.compile_note,
        "compile_time_s": record.compile_seconds,
    }


def _logp_error_columns(own: EvaluationPass | None, ref: EvaluationPass | None) -> dict[str, float]:
    """``logp_error_mean`` and ``logp_error_max``: the row's solver's per-sample error on the test log-density
    against the reference solve, from the two test passes' own per-sample values (both float64, same samples in
    the same order: no extra solve); NaN unless both passes ran."""
    if own is None or ref is None:
        return {"logp_error_mean": math.nan, "logp_error_max": math.nan}
    error = (own.log_prob - ref.log_prob).abs()
    return {"logp_error_mean": float(error.mean()), "logp_error_max": float(error.max())}


def _measured_columns(evaluation: dict[str, EvaluationPass], memory: PeakMemory, wall: float) -> dict[str, Any]:
    own, ref = evaluation.get("eval"), evaluation.get("ref")
    return {
        "nll": own.nll if own else math.nan,
        "nll_stderr": own.nll_stderr if own else math.nan,
        "nll_ref": ref.nll if ref else math.nan,
        "nll_ref_stderr": ref.nll_stderr if ref else math.nan,
        **_logp_error_columns(own, ref),
        "nfe_eval": own.nfe if own else math.nan,
        "nfe_eval_max_chunk": own.nfe_max_chunk if own else math.nan,
        "nfe_ref": ref.nfe if ref else math.nan,
        **step_columns(own),
        "eval_time_s": own.seconds if own else math.nan,
        "ref_time_s": ref.seconds if ref else math.nan,
        "cell_time_s": wall,
        "peak_memory_mib": memory.peak_mib(),
        "memory_kind": memory.kind,
    }
