"""Run configuration: defaults, ``--config FILE.toml`` loading, and resolution into cells.

The TOML keys are the long CLI option names with ``_`` for ``-`` (``solver``,
``batch_size``, ``ref_solver``, ...); options given on the command line win
over the file. :func:`resolve_cells` validates every selector and parameter
against the registry before anything runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from cnfbench.cells import Budget, Cell, EvalProtocol, expand_grid
from cnfbench.params import ParamError, parse_selector_list
from cnfbench.registry import Registry, ResolvedComponent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, as the user wrote it (selectors still unparsed)."""

    dataset: tuple[str, ...] = ("8gaussians",)
    field: tuple[str, ...] = ("concatsquash",)
    solver: tuple[str, ...] = ("dopri5",)
    trace: tuple[str, ...] = ("exact",)
    seeds: int = 1
    first_seed: int = 0
    iterations: int = 400
    batch_size: int = 512
    lr: float = 3e-3
    max_nfe: int | None = None
    eval_trace: str = "exact"
    ref_solver: str = "dopri5[rtol=1e-7,atol=1e-7]"
    ref_dtype: str = "float64"
    eval_batch_size: int = 4096
    mass_grid: int = 80
    device: str = "auto"
    timeout: float | None = None
    isolation: str = "process"
    retry_failed: bool = True
    out: str = "results"
    name: str | None = None
    plugin: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


_LIST_KEYS = {"dataset", "field", "solver", "trace", "plugin"}
_INT_KEYS = {"seeds": 1, "first_seed": 0, "iterations": 1, "batch_size": 1, "eval_batch_size": 1, "max_nfe": 1,
             "mass_grid": 0}


def _check_value(key: str, value: Any, source: str) -> Any:
    if key in _LIST_KEYS:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
            raise ParamError(f"{source}: {key!r} must be a string or a list of strings")
        return tuple(items)
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int) or value < _INT_KEYS[key]:
            raise ParamError(f"{source}: {key!r} must be an integer >= {_INT_KEYS[key]}")
        return value
    if key == "lr":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ParamError(f"{source}: 'lr' must be a positive number")
        return float(value)
    if key == "timeout":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ParamError(f"{source}: 'timeout' must be a positive number of seconds")
        return float(value)
    if key == "isolation":
        if value not in ("process", "inline"):
            raise ParamError(f"{source}: 'isolation' must be process or inline")
        return value
    if key == "retry_failed":
        if not isinstance(value, bool):
            raise ParamError(f"{source}: 'retry_failed' must be true or false")
        return value
    if key == "ref_dtype":
        if value not in ("float32", "float64"):
            raise ParamError(f"{source}: 'ref_dtype' must be float32 or float64")
        return value
    if not isinstance(value, str) or not value.strip():
        raise ParamError(f"{source}: {key!r} must be a non-empty string")
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


def _resolve_all(registry: Registry, family: str, selectors: tuple[str, ...]) -> list[ResolvedComponent]:
    return [registry.resolve(family, selection) for selection in parse_selector_list(list(selectors))]


def _resolve_one(registry: Registry, family: str, selector: str, option: str) -> ResolvedComponent:
    selections = parse_selector_list(selector)
    if len(selections) != 1:
        raise ParamError(f"{option} takes exactly one {family}, got {len(selections)}")
    return registry.resolve(family, selections[0])


def resolve_cells(config: RunConfig, registry: Registry) -> list[Cell]:
    """Validate the whole configuration and expand it into cells; raise :class:`ParamError`."""
    datasets = _resolve_all(registry, "dataset", config.dataset)
    field_specs = _resolve_all(registry, "field", config.field)
    solvers = _resolve_all(registry, "solver", config.solver)
    traces = _resolve_all(registry, "trace", config.trace)
    evaluation = EvalProtocol(
        trace=_resolve_one(registry, "trace", config.eval_trace, "--eval-trace"),
        ref_solver=_resolve_one(registry, "solver", config.ref_solver, "--ref-solver"),
        ref_dtype=config.ref_dtype,
        batch_size=config.eval_batch_size,
        mass_grid=config.mass_grid,
    )
    if registry.get("trace", evaluation.trace.name).cls.stochastic:
        raise ParamError(f"--eval-trace must be an exact (deterministic) estimator, not {evaluation.trace.name!r}")
    budget = Budget(config.iterations, config.batch_size, config.lr, config.max_nfe)
    seeds = list(range(config.first_seed, config.first_seed + config.seeds))
    device = resolve_device(config.device)
    return expand_grid(datasets, field_specs, solvers, traces, seeds, budget, evaluation, device)
