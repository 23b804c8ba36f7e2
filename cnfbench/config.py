"""Run configuration: defaults and valid ranges, ``--config FILE.toml`` loading, and resolution into cells.

It imports nothing heavy at the top (torch and the registry only inside the
functions that resolve), so that the command line can build its options and
``--help`` from :data:`RANGES` and :class:`RunConfig` instantly.

The TOML keys are the long CLI option names with ``_`` for ``-`` (``solver``,
``batch_size``, ``ref_solver``, ...); options given on the command line win
over the file. :func:`resolve_cells` validates every selector and parameter
against the registry before anything runs; a grid axis's items may carry
number ranges (``dopri5[rtol=1e-3..1e-8:6]``), expanded by :func:`resolve_axis`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields, make_dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnfbench.cells import (
    SELECT_BEST,
    SELECT_BEST_LOSS,
    SELECT_LAST,
    SELECTS_BEST,
    Budget,
    Cell,
    EvalProtocol,
    expand_grid,
)
from cnfbench.families import EVAL_SLOTS, GRID_AXES
from cnfbench.messages import did_you_mean
from cnfbench.params import ParamError, Selection, parse_selector_list
from cnfbench.ranges import expand_selection
from cnfbench.specs import ResolvedComponent

if TYPE_CHECKING:
    from cnfbench.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class RunSettings:
    """Every run setting that is not a component selection (those come from the families table)."""

    seeds: int = 1
    first_seed: int = 0
    iterations: int = 400
    epochs: int | None = None
    batch_size: int = 512
    lr: float = 3e-3
    max_nfe: int | None = None
    time_budget: float | None = None
    val_every: int = 0
    select: str = "last"
    val_solver: str = "rk4[steps=16]"
    compile: bool = False
    ref_dtype: str = "float64"
    eval_batch_size: int = 4096
    mass_grid: int = 80
    device: str = "auto"
    data_dir: str | None = None
    timeout: float | None = None
    isolation: str | None = None
    executor: str = "process"
    tracker: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    protocol: str | None = None
    scale: str = "full"
    retry_failed: bool = True
    allow_loose_ref: bool = False
    out: str = "results"
    name: str | None = None
    plugin: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


RunConfig = make_dataclass(
    "RunConfig",
    [*((row.config_key, tuple[str, ...], dataclass_field(default=row.default)) for row in GRID_AXES),
     *((slot.config_key, str, dataclass_field(default=slot.default)) for slot in EVAL_SLOTS)],
    bases=(RunSettings,), frozen=True,
)
RunConfig.__module__ = __name__
RunConfig.__doc__ = """Everything a run needs, as the user wrote it (selectors still unparsed): the run settings, a
comma list of selectors per grid axis (``dataset``, ``field``, ...) and one selector per evaluation slot
(``eval_trace``, ``ref_solver``), as the families table lists them."""


_LIST_KEYS = {*(row.config_key for row in GRID_AXES), "plugin", "tracker", "metrics"}
_BOOL_KEYS = {"retry_failed", "allow_loose_ref", "compile"}


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric setting (inclusive bounds; ``lower_open`` excludes ``low``)."""

    low: float
    high: float
    integer: bool
    why_high: str
    lower_open: bool = False

    def bounds(self) -> tuple[str, str]:
        """The bounds as a user would type them."""
        return tuple(str(int(b)) if self.integer else f"{b:g}" for b in (self.low, self.high))  # type: ignore[return-value]

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low, high = self.bounds()
        return f"{kind} {'>' if self.lower_open else '>='} {low} and <= {high}"


MAX_MASS_GRID = 2048
"""Points per axis of the mass check at most: 2048² = 4.2 million points, a few seconds of exact trace per solve."""

RANGES: dict[str, Range] = {
    "seeds": Range(1, 10_000, True, "seeds per configuration"),
    "first_seed": Range(0, 2**31 - 1, True, "seeds are 32-bit"),
    "iterations": Range(1, 10**8, True, "a hundred million iterations"),
    "epochs": Range(1, 10**6, True, "a million passes over the training split"),
    "batch_size": Range(1, 2**24, True, "16.7 million samples per batch"),
    "eval_batch_size": Range(1, 2**24, True, "16.7 million samples per evaluation solve"),
    "max_nfe": Range(1, 10**9, True, "evaluations per solve"),
    "mass_grid": Range(0, MAX_MASS_GRID, True, "points per axis; the grid has its square"),
    "lr": Range(0, 10, False, "Adam's step size", lower_open=True),
    "timeout": Range(0, 10**7, False, "seconds (about 115 days)", lower_open=True),
    "time_budget": Range(0, 10**7, False, "seconds of training per cell (about 115 days)", lower_open=True),
    "val_every": Range(0, 10**8, True, "iterations between validation passes (0: none)"),
}
"""Every numeric setting's valid range, checked before anything runs (the README lists them)."""

OPTION_SOURCE = "option"
"""The ``source`` of :func:`merge` for values given as command-line options."""

MAX_CELLS = 100_000
"""Cells one run may expand to."""


def _named(key: str, source: str) -> str:
    """How an error names a setting: ``--batch-size`` on the command line, ``FILE: 'batch_size'`` in a config."""
    return f"--{key.replace('_', '-')}" if source == OPTION_SOURCE else f"{source}: {key!r}"


def _check_number(key: str, value: Any, source: str) -> int | float:
    bounds = RANGES[key]
    wrong_type = isinstance(value, bool) or not isinstance(value, int if bounds.integer else (int, float))
    if wrong_type or not (math.isfinite(value) if isinstance(value, float) else True):
        raise ParamError(f"{_named(key, source)} must be {bounds.describe()}, got {value!r}")
    too_low = value <= bounds.low if bounds.lower_open else value < bounds.low
    if too_low or value > bounds.high:
        raise ParamError(f"{_named(key, source)} must be {bounds.describe()} ({bounds.why_high}), got {value!r}")
    return value if bounds.integer else float(value)


def _check_value(key: str, value: Any, source: str) -> Any:
    if key in _LIST_KEYS:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
            raise ParamError(f"{_named(key, source)} must be a string or a list of strings")
        return tuple(items)
    if key in RANGES:
        return _check_number(key, value, source)
    if key == "isolation":
        if value not in ("process", "inline"):
            raise ParamError(f"{_named(key, source)} must be process or inline")
        return value
    if key == "executor":
        if not isinstance(value, str) or not value.strip():
            raise ParamError(f"{_named(key, source)} must be a string such as process[workers=2]")
        parse_selector_list(value, "--executor")  # the name and parameters are checked against the plugins
        return value
    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise ParamError(f"{_named(key, source)} must be true or false")
        return value
    if key == "select":
        if value not in (SELECT_LAST, SELECT_BEST, SELECT_BEST_LOSS):
            raise ParamError(f"{_named(key, source)} must be {SELECT_LAST}, {SELECT_BEST} or {SELECT_BEST_LOSS}, "
                             f"got {value!r}{did_you_mean(str(value), (SELECT_LAST, SELECT_BEST, SELECT_BEST_LOSS))}")
        return value
    if key == "ref_dtype":
        if value not in ("float32", "float64"):
            raise ParamError(f"{_named(key, source)} must be float32 or float64")
        return value
    if not isinstance(value, str) or not value.strip():
        raise ParamError(f"{_named(key, source)} must be a non-empty string")
    return value


def merge(base: RunConfig, overrides: dict[str, Any], source: str) -> RunConfig:
    """Return ``base`` with ``overrides`` applied after checking keys and types."""
    valid = {f.name for f in fields(RunConfig)}
    checked: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in valid:
            raise ParamError(f"{source}: unknown key {key!r}; valid keys: {', '.join(sorted(valid))}")
        checked[key] = _check_value(key, value, source)
    return replace(base, **checked)


def load_toml(path: Path) -> dict[str, Any]:
    """Read a config file; any problem becomes a one-line :class:`ParamError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamError(f"cannot read config file {str(path)!r}: {exc.__class__.__name__}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ParamError(f"config file {str(path)!r} is not valid TOML: {' '.join(str(exc).split())}") from None
    section = data.get("run", data)
    if not isinstance(section, dict):
        raise ParamError(f"config file {str(path)!r}: [run] must be a table")
    return section


def resolve_device(requested: str) -> str:
    """``auto`` picks CUDA when available; an unavailable device is a one-line error."""
    import torch  # here, not at the top: ``cnfbench --help`` reads this module's ranges without torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise ParamError(f"unknown device {requested!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParamError(f"device {requested!r} requested but CUDA is not available; valid here: auto, cpu")
    if device.type not in ("cpu", "cuda"):
        raise ParamError(f"unsupported device {requested!r}; valid: auto, cpu, cuda, cuda:N")
    return str(device)


RESOLVING_MASS_GRID = 10
"""Points per axis below which a grid is too coarse to resolve a density's mass (the default is 80)."""

@dataclass(frozen=True)
class Grid:
    """The cells a configuration expands to, and notes for the user about how it was read."""

    cells: list[Cell]
    notes: list[str]


def resolve_axis(registry: Registry, family: str, selectors: tuple[str, ...] | list[str], option: str,
                 notes: list[str]) -> list[ResolvedComponent]:
    """Every item of a grid axis, its ranges expanded (:mod:`cnfbench.ranges`) and each value resolved; items
    that resolve to the same component are kept once, with a note (``notes`` gains it)."""
    kept: dict[ResolvedComponent, str] = {}
    for item in parse_selector_list(list(selectors), option):
        range_notes: list[str] = []
        expanded = expand_selection(item, registry.get(family, item.name).cls.params, f"{family} {item.name!r}",
                                    range_notes)
        notes.extend(f"{option}: {note}" for note in range_notes)
        for selection in expanded:
            resolved = registry.resolve(family, selection)
            shown = str(selection) if selection is item else f"{selection} (from {item})"
            if resolved in kept:
                notes.append(f"{option}: {kept[resolved]} and {shown} are the same {family} "
                             f"({resolved.label()}); kept once")
                continue
            kept[resolved] = shown
    return list(kept)


ALL_METRICS, DEFAULT_METRICS = "all", "default"


def metric_groups(registry: Registry) -> dict[str, list[str]]:
    """Every metric group (``--metrics`` accepts its name for all its metrics), with ``all`` and ``default``."""
    groups: dict[str, list[str]] = {ALL_METRICS: [], DEFAULT_METRICS: []}
    for entry in registry.entries("metric"):
        groups[ALL_METRICS].append(entry.name)
        if entry.cls.default:
            groups[DEFAULT_METRICS].append(entry.name)
        if entry.cls.group:
            groups.setdefault(entry.cls.group, []).append(entry.name)
    return groups


def resolve_metrics(registry: Registry, selectors: tuple[str, ...] | list[str] | str
                    ) -> tuple[ResolvedComponent, ...] | None:
    """The metrics ``--metrics`` chooses (a comma list of metrics, with parameters, and groups), in registry
    order; ``None`` for the default set (no selector, or ``default`` alone). An unknown name is one
    :class:`ParamError` listing the metrics and groups, with a did-you-mean."""
    items = parse_selector_list(list(selectors) if not isinstance(selectors, str) else selectors, "--metrics") \
        if selectors else []
    if not items or [str(item) for item in items] == [DEFAULT_METRICS]:
        return None
    groups = metric_groups(registry)
    names = set(groups[ALL_METRICS])
    chosen: dict[str, ResolvedComponent] = {}
    for item in items:
        if item.name in groups and item.name not in names:
            if item.raw_params:
                raise ParamError(f"--metrics: the group {item.name!r} takes no parameters; give them to one of its "
                                 f"metrics ({', '.join(groups[item.name])})")
            for name in groups[item.name]:
                chosen.setdefault(name, registry.resolve("metric", Selection(name)))
            continue
        if item.name not in names:
            known = sorted(names | set(groups))
            raise ParamError(f"--metrics: unknown metric {item.name!r}; metrics: {', '.join(sorted(names))}; "
                             f"groups: {', '.join(sorted(set(groups) - names))}{did_you_mean(item.name, known)}")
        chosen[item.name] = registry.resolve("metric", item)
    return tuple(chosen[name] for name in groups[ALL_METRICS] if name in chosen)


def resolve_one(registry: Registry, family: str, selector: str, option: str) -> ResolvedComponent:
    selections = parse_selector_list(selector, option)
    if len(selections) != 1:
        raise ParamError(f"{option} takes exactly one {family}, got {len(selections)}")
    return registry.resolve(family, selections[0])


def check_reference(registry: Registry, ref_solver: ResolvedComponent, allowed: bool, notes: list[str]) -> None:
    """Refuse a fixed-step or loose reference solve, whose ``nll_ref`` would not be the field's density."""
    from cnfbench.validity import REFERENCE_TOLERANCE, loose_reference

    tolerance = registry.build("solver", ref_solver).error_tolerance()
    if not loose_reference(tolerance):
        return
    what = ("is a fixed-step solver" if tolerance is None
            else f"has an error tolerance of {tolerance:g}, looser than {REFERENCE_TOLERANCE:g}")
    if not allowed:
        raise ParamError(f"--ref-solver {ref_solver.label()} {what}: nll_ref would not be the density the field "
                         f"defines; use an adaptive solver with rtol and atol <= {REFERENCE_TOLERANCE:g} (default "
                         f"{RunConfig.ref_solver}) or pass --allow-loose-ref")
    notes.append(f"--ref-solver {ref_solver.label()} {what} (--allow-loose-ref): every row says ref_loose = true, "
                 "and its nll_ref is only as exact as that solve")


def pin_dataset(registry: Registry, spec: ResolvedComponent) -> ResolvedComponent:
    """``spec`` with what its dataset's :meth:`~cnfbench.contracts.Dataset.pin` fills in (a file's SHA-256);
    :class:`ParamError` naming the dataset when its data cannot be used."""
    cls = registry.get("dataset", spec.name).cls
    try:
        pinned = cls.pin(dict(spec.params))
    except (ValueError, OSError) as exc:
        raise ParamError(f"--dataset {spec.label()}: {' '.join(str(exc).split())}") from None
    return ResolvedComponent(spec.name, tuple((key, pinned[key]) for key, _ in spec.params))


def resolve_grid(config: RunConfig, registry: Registry, pin: bool = True) -> Grid:
    """Validate the whole configuration and expand it into cells; raise :class:`ParamError`. Without ``pin`` the
    datasets' files are not read (a count of the cells, not cells to run)."""
    notes: list[str] = []
    axes = {row.key: resolve_axis(registry, row.key, getattr(config, row.config_key), row.option, notes)
            for row in GRID_AXES}
    if pin:
        axes["dataset"] = [pin_dataset(registry, spec) for spec in axes["dataset"]]
    evaluation = EvalProtocol(
        slots={slot.key: resolve_one(registry, slot.family, getattr(config, slot.config_key), slot.option)
               for slot in EVAL_SLOTS},
        ref_dtype=config.ref_dtype,
        batch_size=config.eval_batch_size,
        mass_grid=config.mass_grid,
        metrics=resolve_metrics(registry, config.metrics),
    )
    if registry.get("trace", evaluation.trace.name).cls.stochastic:
        raise ParamError(f"--eval-trace must be an exact (deterministic) estimator, not {evaluation.trace.name!r}")
    check_reference(registry, evaluation.ref_solver, config.allow_loose_ref, notes)
    if 0 < config.mass_grid < RESOLVING_MASS_GRID:
        notes.append(f"--mass-grid {config.mass_grid}: a {config.mass_grid}x{config.mass_grid} grid is too coarse to "
                     f"resolve a density's mass (use {RunConfig.mass_grid} or more); where the reference mass is off "
                     "1, the solver's mass is judged against the reference mass instead")
    count = math.prod(len(items) for items in axes.values()) * config.seeds
    if count > MAX_CELLS:
        raise ParamError(f"the grid has {count} cells; at most {MAX_CELLS} fit in one run (fewer seeds or items)")
    if config.select in SELECTS_BEST and not config.val_every:
        raise ParamError(f"--select {config.select} needs --val-every K (K > 0): without validation passes there is "
                         "no best")
    val_solver = None
    if config.val_every:
        val_solver = resolve_one(registry, "solver", config.val_solver, "--val-solver")
        if not any(registry.get("objective", spec.name).cls.uses_solver is False for spec in axes["objective"]):
            val_solver = None  # every objective validates with its training solver: the setting means nothing
    budget = Budget(config.iterations, config.batch_size, config.lr, config.max_nfe, config.time_budget,
                    config.val_every, config.select, val_solver, compile=config.compile)
    seeds = list(range(config.first_seed, config.first_seed + config.seeds))
    device = resolve_device(config.device)
    cells = expand_grid(axes, seeds, budget, evaluation, device)
    if config.epochs is not None:
        cells = [replace(cell, budget=epoch_budget(cell.budget, cell.dataset, config.epochs)) for cell in cells]
    return Grid(cells, notes)


def epoch_budget(budget: Budget, dataset: ResolvedComponent, epochs: int) -> Budget:
    """``budget`` with ``epochs`` passes over ``dataset``'s training split as its iterations (``n_train //
    batch_size`` minibatches a pass, the short rest dropped, as training draws them)."""
    n_train = dict(dataset.params).get("n_train")
    if not isinstance(n_train, int) or n_train <= 0:
        raise ParamError(f"--epochs needs the training split's size, and dataset {dataset.label()} does not declare "
                         "it (an n_train parameter): give its budget in --iterations")
    per_epoch = max(n_train // min(budget.batch_size, n_train), 1)
    iterations = epochs * per_epoch
    if iterations > RANGES["iterations"].high:
        raise ParamError(f"--epochs {epochs} of {dataset.label()} makes {iterations} iterations; at most "
                         f"{int(RANGES['iterations'].high)}")
    return replace(budget, iterations=iterations, epochs=epochs)


def resolve_cells(config: RunConfig, registry: Registry) -> list[Cell]:
    """The cells of :func:`resolve_grid`, without its notes."""
    return resolve_grid(config, registry).cells
