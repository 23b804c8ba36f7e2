"""The evaluation plan: from the metrics chosen for a cell, the inputs they need, each computed once, then the metrics.

A metric (:class:`~cnfbench.contracts.Metric`) declares the inputs it reads from the fixed vocabulary
:data:`~cnfbench.contracts.METRIC_INPUTS`. :func:`plan` keeps the chosen metrics the dataset allows (a metric
that needs 2-D data or a known density is skipped with a note), and the inputs they need, with the inputs
those need (``ref_sample_eval`` scores the ``ref_sample`` points), in :data:`INPUT_ORDER`: cheap inputs
first, so that a metric is computed as soon as its last input is ready and an expensive solve that fails
late has not held up the others. :func:`evaluate` runs the plan: each input in its own cell phase (the one a
failure's reason names), with its seconds and NFE written to its own columns (:class:`InputSpec`); each
metric right after its last input, with a guard that stops it from solving the model itself
(:data:`cnfbench.dynamics.COMPUTING_METRIC`). An input that fails fails the cell as any solve does (the
status says how: diverged, over budget, error); a metric that fails leaves its columns empty, with its reason
in ``metrics_note``, and the cell stays ``done``.

Every input draws its random numbers from its own seeded stream (:func:`~cnfbench.contracts.split_generator`),
so choosing more or fewer metrics never changes another metric's number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from cnfbench.cells import Cell
from cnfbench.columns import NOTE_SEPARATOR, notes_text, parse_notes
from cnfbench.contracts import (
    METRIC_INPUTS,
    METRIC_REQUIREMENTS,
    NEEDS_2D,
    NEEDS_DENSITY,
    Dataset,
    Metric,
    Solver,
    TraceEstimator,
    VectorField,
    split_generator,
)
from cnfbench.dynamics import (
    COMPUTING_METRIC,
    CNFDynamics,
    FieldDynamics,
    NFECounter,
    PhaseTracker,
)
from cnfbench.evaluation import EvaluationPass, evaluate_log_prob, sample_model, sample_with_log_prob, step_columns
from cnfbench.measure import now
from cnfbench.messages import one_line
from cnfbench.params import Selection
from cnfbench.registry import Registry
from cnfbench.validity import integrate_mass, mass_grid

QUALITY_MAX_SAMPLES = 2000
"""Most model samples the ``sample`` input draws (``min(n_test, this)``): the sample distances are O(n²)."""

MODEL_DENSITY_SAMPLES = 1000
"""Model samples (drawn with the reference solve) of the ``ref_sample`` input."""

DENSITY_SAMPLES = 500
"""Model samples (and test points) kept per 2-D cell for the density plots."""



@dataclass
class GridPass:
    """The log-density at the cell centres of the mass grid (``points`` ``[r², 2]``, "ij" order), and its cost."""

    points: Tensor
    cell_area: float
    resolution: int
    log_prob: Tensor  # float64 on CPU, nats
    seconds: float
    nfe: int = 0  # dynamics evaluations over all chunks

    def mass(self) -> float:
        """The midpoint-rule integral of ``exp(log_prob)`` over the grid: 1 for a normalized density it resolves."""
        return integrate_mass(self.log_prob, self.cell_area)


@dataclass
class SamplePass:
    """Model samples ``x`` and what drawing them cost (a solve of the samples alone)."""

    x: Tensor
    nfe: int
    seconds: float


@dataclass
class ReferenceSamples:
    """Model samples ``x`` drawn with the reference solve, with their log-density ``log_q`` from the same solve."""

    x: Tensor
    log_q: Tensor  # float64 on CPU, nats
    nfe: int
    seconds: float


@dataclass
class PathPass:
    """The kinetic energy ``∫₀¹ ‖v(t, x_t)‖² dt`` of each sample path from ``base`` to ``x``, and its cost."""

    energy: Tensor  # float64 on CPU, data units²
    base: Tensor
    x: Tensor
    nfe: int
    seconds: float


class TrainedModel:
    """The ``model`` input: the trained field, and a forward solve with the row's solver for points of an input.

    :meth:`push_forward` is the one way a metric may solve the model: from points it got from another input
    (the test points' base images ``eval.base``, say), never from draws of its own (declare ``sample``).
    """

    def __init__(self, field_module: VectorField, solver: Solver, trace: TraceEstimator, batch_size: int,
                 max_nfe: int | None, labels: tuple[str, str]) -> None:
        self.field = field_module
        self.dim = field_module.dim
        self._solver, self._trace, self._batch_size, self._max_nfe, self._labels = \
            solver, trace, batch_size, max_nfe, labels
        self.pushed: list[Tensor] = []  # what was pushed forward (the conformance kit checks where it came from)

    def push_forward(self, z0: Tensor, with_log_density: bool = False) -> tuple[Tensor, Tensor | None]:
        """Solve ``z0`` from t=0 to t=1 with the row's solver, in chunks of the evaluation batch size.

        With ``with_log_density`` the full CNF dynamics (state and divergence integral, the exact evaluation
        trace) are solved, as the log-density passes do; the second value is then ``-∫ div v dt`` per row
        (float64 on CPU). The cell's NFE budget bounds each solve.
        """
        self.pushed.append(z0)
        counter = NFECounter(max_per_solve=self._max_nfe)
        model = self.field.eval()
        outputs: list[Tensor] = []
        changes: list[Tensor] = []
        token = COMPUTING_METRIC.set(None)
        try:
            with torch.no_grad():
                for chunk in torch.split(z0, self._batch_size):
                    counter.start("sample")
                    if with_log_density:
                        dynamics = CNFDynamics(model, self._trace, counter, differentiable=False,
                                               field_label=self._labels[0], trace_label=self._labels[1])
                        zeros = torch.zeros(chunk.shape[0], dtype=chunk.dtype, device=chunk.device)
                        self._trace.begin_solve(chunk, None)
                        x1, change = self._solver.integrate(dynamics, (chunk.detach(), zeros), 0.0, 1.0)
                        changes.append(change.detach().to("cpu", torch.float64))
                    else:
                        (x1,) = self._solver.integrate(FieldDynamics(model, counter, self._labels[0]),
                                                       (chunk.detach(),), 0.0, 1.0)
                    outputs.append(x1.detach())
        finally:
            COMPUTING_METRIC.reset(token)
        return torch.cat(outputs), (torch.cat(changes) if with_log_density else None)


@dataclass
class EvaluationSetup:
    """Everything the plan needs about a trained cell: its components, data and evaluation protocol."""

    field: VectorField
    solver: Solver
    ref_solver: Solver
    trace: TraceEstimator  # the exact evaluation trace
    dataset: Dataset
    test: Tensor
    seed: int
    batch_size: int
    max_nfe: int | None
    ref_dtype: torch.dtype
    mass_grid: int
    labels: tuple[str, str]
    device: torch.device
    samples: int = QUALITY_MAX_SAMPLES  # model samples of the `sample` and `paths` inputs (test split if smaller)


@dataclass(frozen=True)
class InputSpec:
    """How the harness produces one input: the phase it runs in, what it needs first, its columns."""

    name: str
    phase: str
    produce: Callable[[EvaluationSetup, Mapping[str, Any]], Any]
    needs: tuple[str, ...] = ()
    columns: Callable[[Any], dict[str, float]] = lambda _: {}
    requires: tuple[str, ...] = ()


def _log_density(setup: EvaluationSetup, data: Tensor, reference: bool, keep_base: bool = False) -> EvaluationPass:
    if reference:
        return evaluate_log_prob(setup.field, setup.ref_solver, setup.trace, data, setup.batch_size, "ref",
                                 dtype=setup.ref_dtype, labels=setup.labels)
    return evaluate_log_prob(setup.field, setup.solver, setup.trace, data, setup.batch_size, "eval",
                             max_nfe=setup.max_nfe, labels=setup.labels, keep_base=keep_base)


def _grid(setup: EvaluationSetup, reference: bool) -> GridPass:
    points, cell_area = mass_grid(setup.test, setup.mass_grid)
    passed = _log_density(setup, points, reference)
    return GridPass(points, cell_area, setup.mass_grid, passed.log_prob, passed.seconds, passed.nfe)


def _sample(setup: EvaluationSetup, _: Mapping[str, Any]) -> SamplePass:
    n = min(setup.test.shape[0], setup.samples)
    counter = NFECounter(max_per_solve=setup.max_nfe)
    started = now(setup.device)
    x = sample_model(setup.field, setup.solver, n, split_generator(setup.seed, "model/quality_samples"),
                     setup.device, dtype=setup.test.dtype, counter=counter, field_label=setup.labels[0])
    return SamplePass(x, counter.totals["sample"], now(setup.device) - started)


def _reference_samples(setup: EvaluationSetup, _: Mapping[str, Any]) -> ReferenceSamples:
    counter = NFECounter()
    started = now(setup.device)
    x, log_q = sample_with_log_prob(setup.field, setup.ref_solver, setup.trace, MODEL_DENSITY_SAMPLES,
                                    split_generator(setup.seed, "model/reverse_kl_samples"), setup.device,
                                    setup.ref_dtype, counter=counter)
    return ReferenceSamples(x, log_q, counter.totals["sample"], now(setup.device) - started)


def _reference_samples_scored(setup: EvaluationSetup, got: Mapping[str, Any]) -> EvaluationPass:
    model_dtype = next(iter(setup.field.parameters()), torch.empty(0)).dtype
    return _log_density(setup, got["ref_sample"].x.to(setup.device, model_dtype), reference=False)


class _KineticDynamics(torch.nn.Module):
    """``(z, e) -> (v(t, z), ‖v(t, z)‖²)``: the samples and their paths' kinetic energy, for the ``paths`` input."""

    def __init__(self, field_dynamics: FieldDynamics) -> None:
        super().__init__()
        self.samples = field_dynamics

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        (dz,) = self.samples(t, (state[0],))
        return dz, dz.pow(2).sum(dim=1)


def _paths(setup: EvaluationSetup, _: Mapping[str, Any]) -> PathPass:
    n = min(setup.test.shape[0], setup.samples)
    dtype = setup.test.dtype
    base = torch.randn(n, setup.field.dim, generator=split_generator(setup.seed, "model/quality_samples"),
                       dtype=dtype).to(setup.device)  # the base draws of the `sample` input
    counter = NFECounter(max_per_solve=setup.max_nfe)
    counter.start("sample")
    dynamics = _KineticDynamics(FieldDynamics(setup.field.eval(), counter, setup.labels[0]))
    started = now(setup.device)
    with torch.no_grad():
        x, energy = setup.solver.integrate(dynamics, (base, torch.zeros(n, dtype=dtype, device=setup.device)),
                                           0.0, 1.0)
    seconds = now(setup.device) - started
    return PathPass(energy.detach().to("cpu", torch.float64), base, x.detach(), counter.totals["sample"], seconds)


def _eval_columns(passed: EvaluationPass) -> dict[str, float]:
    return {"nfe_eval": passed.nfe, "nfe_eval_max_chunk": passed.nfe_max_chunk,
            "eval_time_s": passed.seconds, **step_columns(passed)}


INPUTS: tuple[InputSpec, ...] = (
    InputSpec("test", "eval", lambda setup, _: setup.test),
    InputSpec("data_density", "entropy", lambda setup, _: setup.dataset.log_prob, requires=(NEEDS_DENSITY,)),
    InputSpec("model", "eval", lambda setup, _: TrainedModel(setup.field, setup.solver, setup.trace,
                                                             setup.batch_size, setup.max_nfe, setup.labels)),
    InputSpec("eval", "eval", lambda setup, _: _log_density(setup, setup.test, reference=False, keep_base=True),
              columns=_eval_columns),
    InputSpec("sample", "sample_quality", _sample,
              columns=lambda s: {"nfe_sample": float(s.nfe), "sample_time_s": s.seconds}),
    InputSpec("paths", "paths", _paths, columns=lambda p: {"nfe_paths": float(p.nfe), "paths_time_s": p.seconds}),
    InputSpec("grid", "mass", lambda setup, _: _grid(setup, reference=False),
              columns=lambda g: {"nfe_mass": g.nfe, "mass_time_s": g.seconds}, requires=(NEEDS_2D,)),
    InputSpec("ref_sample", "model_density", _reference_samples,
              columns=lambda r: {"nfe_ref_sample": float(r.nfe), "ref_sample_time_s": r.seconds}),
    InputSpec("ref_sample_eval", "mass_is", _reference_samples_scored, needs=("ref_sample",),
              columns=lambda p: {"nfe_mass_is": p.nfe, "mass_is_time_s": p.seconds}),
    InputSpec("ref", "ref", lambda setup, _: _log_density(setup, setup.test, reference=True),
              columns=lambda p: {"nfe_ref": p.nfe, "ref_time_s": p.seconds}),
    InputSpec("grid_ref", "mass_ref", lambda setup, _: _grid(setup, reference=True),
              columns=lambda g: {"nfe_mass_ref": g.nfe, "mass_ref_time_s": g.seconds}, requires=(NEEDS_2D,)),
)
"""Every input of :data:`~cnfbench.contracts.METRIC_INPUTS`, in the order a plan computes them (cheapest
first: the reference solves last)."""

INPUTS_BY_NAME: dict[str, InputSpec] = {spec.name: spec for spec in INPUTS}
INPUT_ORDER: tuple[str, ...] = tuple(spec.name for spec in INPUTS)
assert set(INPUT_ORDER) == set(METRIC_INPUTS), "every input of the vocabulary has a producer"

INPUT_COLUMNS: tuple[str, ...] = (
    "nfe_eval", "nfe_eval_max_chunk", "eval_time_s", *step_columns(None), "nfe_sample", "sample_time_s",
    "nfe_paths", "paths_time_s", "nfe_mass", "mass_time_s", "nfe_ref_sample", "ref_sample_time_s", "nfe_mass_is",
    "mass_is_time_s", "nfe_ref", "ref_time_s", "nfe_mass_ref", "mass_ref_time_s",
)
"""The columns the inputs write (their NFE and seconds): empty in a row whose metrics did not need them."""


def unmet(metric: type[Metric], dim: int, has_density: bool, mass_grid_points: int) -> str:
    """Why ``metric`` cannot run on this cell's dataset (empty when it can)."""
    missing = [METRIC_REQUIREMENTS[need] for need in metric.requires
               if (need == NEEDS_2D and dim != 2) or (need == NEEDS_DENSITY and not has_density)]
    if NEEDS_2D in metric.requires and dim == 2 and mass_grid_points <= 0 and \
            any(name in ("grid", "grid_ref") for name in metric.needs):
        missing.append("the mass grid (--mass-grid 0 turned it off)")
    return f"needs {' and '.join(missing)}" if missing else ""


@dataclass
class Plan:
    """The metrics a cell computes, those it skips (with why), and the inputs to compute, in order."""

    metrics: list[tuple[str, Metric]]
    skipped: dict[str, str] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)

    @property
    def samples(self) -> int:
        """Model samples the `sample` and `paths` inputs draw: the most any chosen metric asks for, at least
        ``QUALITY_MAX_SAMPLES`` (each input then takes the test split's size if that is smaller)."""
        return max([QUALITY_MAX_SAMPLES, *(metric.samples_wanted() for _, metric in self.metrics)])


def plan(metrics: Sequence[tuple[str, Metric]], dim: int, has_density: bool, mass_grid_points: int) -> Plan:
    """The plan of a cell: the metrics its dataset allows and the inputs they need, each once, in order."""
    chosen: list[tuple[str, Metric]] = []
    skipped: dict[str, str] = {}
    for name, metric in metrics:
        why = unmet(type(metric), dim, has_density, mass_grid_points)
        if why:
            skipped[name] = why
        else:
            chosen.append((name, metric))
    wanted: set[str] = set()
    pending = [need for _, metric in chosen for need in type(metric).needs]
    while pending:
        need = pending.pop()
        if need not in wanted:
            wanted.add(need)
            pending.extend(INPUTS_BY_NAME[need].needs)
    return Plan(chosen, skipped, [name for name in INPUT_ORDER if name in wanted])


class _Inputs:
    """What one metric's ``compute`` sees: only the inputs it declared (:class:`~cnfbench.contracts.MetricInputs`)."""

    def __init__(self, values: Mapping[str, Any], declared: Iterable[str], metric: str, setup: EvaluationSetup
                 ) -> None:
        self._values = {name: values[name] for name in declared}
        self._metric = metric
        self.dim = setup.field.dim
        self.seed = setup.seed
        self.discrete_nll_offset = setup.dataset.discrete_nll_offset

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            raise KeyError(f"metric {self._metric} reads input {name!r}, which it does not declare in `needs` "
                           f"(it declares: {', '.join(self._values) or 'nothing'})")
        return self._values[name]

    def generator(self, stream: str) -> torch.Generator:
        return split_generator(self.seed, f"metric/{self._metric}/{stream}")


def compute_metric(name: str, metric: Metric, values: Mapping[str, Any], setup: EvaluationSetup
                   ) -> tuple[dict[str, Any], str]:
    """``(columns, reason)`` of one metric from the computed input ``values``; a failure is a reason, never raised
    (Ctrl-C is). Columns the metric does not declare, or values that are not numbers or strings, are a failure."""
    declared = type(metric).column_names()
    inputs = _Inputs(values, type(metric).needs, name, setup)
    token = COMPUTING_METRIC.set(repr(name))
    try:
        with torch.no_grad():
            result = dict(metric.compute(inputs) or {})
    except Exception as exc:  # noqa: BLE001 - a metric that fails leaves its columns empty; the cell goes on
        return {}, one_line(f"{type(exc).__name__}: {exc}", 200).replace(NOTE_SEPARATOR, ", ")
    finally:
        COMPUTING_METRIC.reset(token)
    stray = sorted(set(result) - set(declared))
    if stray:
        return {}, f"returned column{'s' if len(stray) > 1 else ''} {', '.join(stray)}, not among its declared " \
                   f"columns ({', '.join(declared)})"
    wrong = [key for key, value in result.items() if not isinstance(value, (int, float, str, bool))]
    if wrong:
        return {}, f"returned {type(result[wrong[0]]).__name__} for {wrong[0]!r}; use a number or a string"
    return {key: float(value) if isinstance(value, int) and not isinstance(value, bool) else value
            for key, value in result.items()}, ""


@dataclass
class Evaluation:
    """What :func:`evaluate` measured so far: the row's columns, the metrics computed, notes by metric, and the
    computed inputs (kept when an input fails half way, so the row keeps what was measured before)."""

    columns: dict[str, Any] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # each input's and each metric's wall-clock

    def run_metric(self, name: str, metric: Metric, setup: EvaluationSetup) -> None:
        started = now(setup.device)
        result, reason = compute_metric(name, metric, self.values, setup)
        self.seconds[f"metric {name}"] = now(setup.device) - started
        self.columns.update(result)
        self.computed.append(name)
        if reason:
            self.notes[name] = f"failed: {reason}"


def evaluate(setup: EvaluationSetup, the_plan: Plan, tracker: PhaseTracker, into: Evaluation,
             on_phase: Callable[[str], None] | None = None) -> Evaluation:
    """Run ``the_plan`` into ``into``: every input once, in order, each metric right after its last input."""
    into.notes.update({name: f"skipped: {why}" for name, why in the_plan.skipped.items()})
    remaining = list(the_plan.metrics)
    for name in the_plan.inputs:
        spec = INPUTS_BY_NAME[name]
        tracker.enter(spec.phase)
        if on_phase and spec.phase in ("eval", "ref", "mass", "mass_ref"):
            on_phase(spec.phase)
        started = now(setup.device)
        into.values[name] = spec.produce(setup, into.values)
        into.seconds[f"input {name}"] = now(setup.device) - started
        into.columns.update(spec.columns(into.values[name]))
        for metric_name, metric in [(metric_name, metric) for metric_name, metric in remaining
                                    if all(need in into.values for need in type(metric).needs)]:
            remaining.remove((metric_name, metric))
            tracker.enter("metric")
            into.run_metric(metric_name, metric, setup)
    for metric_name, metric in remaining:  # metrics that need no input at all
        tracker.enter("metric")
        into.run_metric(metric_name, metric, setup)
    order = [name for name, _ in the_plan.metrics]
    into.computed.sort(key=order.index)
    return into


def chosen_metrics(registry: Registry, cell: Cell) -> list[tuple[str, Metric]]:
    """The metrics of ``cell`` (its ``--metrics``, else every default metric of ``registry``), built."""
    specs = cell.evaluation.metrics
    if specs is None:
        specs = tuple(registry.resolve("metric", Selection(entry.name)) for entry in registry.entries("metric")
                      if entry.cls.default)
    return [(spec.name, registry.build("metric", spec)) for spec in specs]


def metric_columns(registry: Registry) -> tuple[str, ...]:
    """Every column any metric of ``registry`` writes, and the inputs' columns: a row has them all (empty when
    not computed), so rows of one run line up whatever metrics each computed."""
    names = dict.fromkeys(INPUT_COLUMNS)
    for entry in registry.entries("metric"):
        names.update(dict.fromkeys(column.name for column in entry.cls.columns))
    return tuple(names)


def density_artifact(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """The 2-D density plots' arrays, when the inputs they show were computed (both grids and the samples)."""
    if not all(name in values for name in ("grid", "grid_ref", "sample")):
        return None
    grid, reference, test = values["grid"], values["grid_ref"], values["test"]
    resolution = grid.resolution
    return {"grid_x": grid.points[::resolution, 0].tolist(), "grid_y": grid.points[:resolution, 1].tolist(),
            "log_prob_grid": reference.log_prob.tolist(),
            "samples": values["sample"].x[:DENSITY_SAMPLES].cpu().tolist(),
            "log_prob_solver_grid": grid.log_prob.tolist(), "data": test[:DENSITY_SAMPLES].cpu().tolist()}


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value == ""


def metrics_of(row: Mapping[str, Any], registry: Registry) -> list[str]:
    """The metrics whose columns ``row`` holds: its ``metrics`` column, or, for a row written before metrics
    were chosen, the metrics with a value in any of their columns."""
    listed = row.get("metrics")
    if isinstance(listed, str):
        return [name for name in listed.split(",") if name]
    return [entry.name for entry in registry.entries("metric")
            if any(not _empty(row.get(column.name)) for column in entry.cls.columns)]


def merged_row(old: Mapping[str, Any], new: Mapping[str, Any], registry: Registry) -> dict[str, Any]:
    """The row of a done cell evaluated again (``cnfbench evaluate``), keeping what the new evaluation did not
    measure: the columns of the metrics it computed are its own (empty when one failed), every other column
    the new row left empty keeps the old row's value, and ``metrics``/``metrics_note`` are the union."""
    recomputed = metrics_of(new, registry)
    own = {column.name for entry in registry.entries("metric") if entry.name in recomputed
           for column in entry.cls.columns}
    merged = dict(new)
    for key, value in old.items():
        if key not in own and _empty(merged.get(key)) and not _empty(value):
            merged[key] = value
    held = set(recomputed) | set(metrics_of(old, registry))
    merged["metrics"] = ",".join(entry.name for entry in registry.entries("metric") if entry.name in held)
    notes = {name: note for name, note in parse_notes(old.get("metrics_note")).items() if name not in recomputed}
    notes.update(parse_notes(new.get("metrics_note")))
    merged["metrics_note"] = notes_text(notes)
    return merged


def measure(setup: EvaluationSetup, metrics: Sequence[tuple[str, Metric]]) -> Evaluation:
    """Plan and evaluate ``metrics`` on ``setup`` (a cell's evaluation without the cell: the conformance kit's
    and tests' way in)."""
    the_plan = plan(metrics, setup.field.dim, setup.dataset.has_density, setup.mass_grid)
    return evaluate(setup, the_plan, PhaseTracker(), Evaluation())
