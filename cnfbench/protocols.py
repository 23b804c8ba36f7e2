"""Published protocols: a paper's grid, budgets and evaluation as TOML data, and the paper's numbers beside a run's.

A protocol is a :class:`~cnfbench.contracts.Protocol` (the built-ins ship as TOML files in
``cnfbench_plugins/protocols/``; a plugin adds its own through ``cnfbench_protocols``). Its document has:

* ``name``, ``title``, ``kind`` (``numbers``, or ``visual`` for a protocol of figures), ``sources`` (the papers,
  tables and code it follows), ``notes`` (what one must know to compare), ``deviations`` (where cnfbench's run
  differs from the paper's, and why), ``not_expressible`` (rows of the paper cnfbench cannot run, and why);
* ``[settings]``: run-configuration keys (those of a ``--config`` file: ``objective``, ``field``, ``optimizer``,
  ``lr``, ``batch_size``, ``seeds``, ``epochs``, ``metrics``, ...) shared by every group and scale;
* ``[scales.full]`` (the paper's budgets) and ``[scales.quick]`` (the same grid at a budget a CPU runs in
  minutes): more keys, and ``comparable = false`` with ``why`` where a scale's numbers cannot be held against the
  paper's, ``measured`` for the wall-clock it took and where;
* ``[[groups]]``: ``name`` and the keys of one part of the grid (a dataset with its own architecture and budget);
* ``[[published]]``: one published number each: ``group``, ``objective`` (a component name; optional), ``column``
  (the row column it compares with), ``value``, ``pm`` (its ± where given) and ``pm_meaning``, ``unit``, ``paper``,
  ``year``, ``table``, ``row``, ``notes``, an optional ``tolerance`` (in ``unit``), and ``comparable = false`` with
  ``why`` where the run cannot be compared with it.

:func:`protocol_configs` turns a protocol, a scale and the options a user gave into one run configuration per
group: a grid option whose components the protocol already has *narrows* the grid (``--dataset moons`` keeps
the moons group), any other option *overrides* the protocol, and each row records the override
(``protocol_deviation``). :func:`published_table` holds a run's rows against the paper's numbers.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from cnfbench.families import GRID_AXES
from cnfbench.messages import did_you_mean
from cnfbench.params import ParamError, parse_selector_list

if TYPE_CHECKING:
    import pandas as pd

    from cnfbench.config import RunConfig
    from cnfbench.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCALES = ("full", "quick")
"""Every protocol has both: ``full`` is the paper's budget, ``quick`` the same grid in CPU minutes."""

DEFAULT_SCALE = "full"
KINDS = ("numbers", "visual")

NOT_DEVIATING = frozenset({"executor", "tracker", "out", "name", "plugin", "timeout", "data_dir", "retry_failed",
                           "isolation", "device", "eval_batch_size", "metrics", "protocol", "scale"})
"""Run settings a user may change without deviating from a protocol: where and how the cells run, not what they
compute (``metrics`` adds to the protocol's own)."""


WITHIN_PM, WITHIN_TOLERANCE, OFF = "within ±", "within tolerance", "off"
"""The verdicts: within the paper's ± (|ours − paper| <= the paper's ±), within the protocol's stated tolerance,
off."""


@dataclass(frozen=True)
class Published:
    """One published number a protocol reproduces."""

    group: str
    column: str
    value: float
    unit: str
    paper: str
    table: str
    row: str
    objective: str = ""
    year: int = 0
    pm: float | None = None
    pm_meaning: str = ""
    notes: str = ""
    tolerance: float | None = None
    comparable: bool = True
    why: str = ""

    @property
    def configuration(self) -> str:
        return self.objective or "all"


@dataclass(frozen=True)
class Scale:
    settings: dict[str, Any]
    comparable: bool = True
    why: str = ""
    measured: str = ""


@dataclass(frozen=True)
class ProtocolSpec:
    """A parsed protocol document (see the module docstring for its keys)."""

    name: str
    title: str
    kind: str
    sources: tuple[str, ...]
    notes: tuple[str, ...]
    deviations: tuple[str, ...]
    not_expressible: tuple[str, ...]
    settings: dict[str, Any]
    scales: dict[str, Scale]
    groups: tuple[tuple[str, dict[str, Any]], ...]
    published: tuple[Published, ...]

    def group_names(self) -> list[str]:
        return [name for name, _ in self.groups]


class ProtocolError(ValueError):
    """A protocol document that cannot be used: one line naming the protocol and the key."""


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProtocolError(f"{where} must be a string or a list of strings")
    return tuple(value)


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a table")
    return dict(value)


def parse(text: str, source: str) -> ProtocolSpec:
    """The protocol in TOML ``text``; :class:`ProtocolError` (one line, naming ``source`` and the key) otherwise."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"protocol {source}: not valid TOML ({exc})") from None
    where = f"protocol {data.get('name', source)!r}"
    known = {"name", "title", "kind", "sources", "notes", "deviations", "not_expressible", "settings", "scales",
             "groups", "published"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProtocolError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}"
                            f"{did_you_mean(unknown[0], known)}")
    name, title = data.get("name"), data.get("title")
    if not isinstance(name, str) or not name or not isinstance(title, str) or not title:
        raise ProtocolError(f"{where}: needs a `name` and a `title` (strings)")
    kind = data.get("kind", "numbers")
    if kind not in KINDS:
        raise ProtocolError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    scales: dict[str, Scale] = {}
    raw_scales = _table(f"{where}: scales", data.get("scales", {}))
    for scale in raw_scales:
        if scale not in SCALES:
            raise ProtocolError(f"{where}: unknown scale {scale!r}; scales: {', '.join(SCALES)}"
                                f"{did_you_mean(scale, SCALES)}")
    for scale in SCALES:
        if scale not in raw_scales:
            raise ProtocolError(f"{where}: needs [scales.{scale}] (scales: {', '.join(SCALES)})")
    for scale, raw in raw_scales.items():
        settings = _table(f"{where}: scales.{scale}", raw)
        comparable = settings.pop("comparable", True)
        why, measured = settings.pop("why", ""), settings.pop("measured", "")
        if not isinstance(comparable, bool) or not isinstance(why, str) or not isinstance(measured, str):
            raise ProtocolError(f"{where}: scales.{scale}: comparable must be true or false, why and measured strings")
        if not comparable and not why:
            raise ProtocolError(f"{where}: scales.{scale} is not comparable: say why (`why = \"...\"`)")
        scales[scale] = Scale(settings, comparable, why, measured)
    groups = []
    for index, raw in enumerate(data.get("groups", [{}]) or [{}]):
        group = _table(f"{where}: groups[{index}]", raw)
        group_name = group.pop("name", "all")
        if not isinstance(group_name, str) or not group_name:
            raise ProtocolError(f"{where}: groups[{index}].name must be a non-empty string")
        groups.append((group_name, group))
    names = [group_name for group_name, _ in groups]
    if len(set(names)) != len(names):
        raise ProtocolError(f"{where}: group names must differ, got {', '.join(names)}")
    published = tuple(_published(where, index, raw, names) for index, raw in enumerate(data.get("published", [])))
    return ProtocolSpec(name, title, kind, _strings(f"{where}: sources", data.get("sources", [])),
                        _strings(f"{where}: notes", data.get("notes", [])),
                        _strings(f"{where}: deviations", data.get("deviations", [])),
                        _strings(f"{where}: not_expressible", data.get("not_expressible", [])),
                        _table(f"{where}: settings", data.get("settings", {})), scales, tuple(groups), published)


def _published(where: str, index: int, raw: Any, groups: list[str]) -> Published:
    entry = _table(f"{where}: published[{index}]", raw)
    valid = {f.name for f in fields(Published)}
    unknown = sorted(set(entry) - valid)
    if unknown:
        raise ProtocolError(f"{where}: published[{index}]: unknown key {unknown[0]!r}; valid keys: "
                            f"{', '.join(sorted(valid))}")
    missing = [key for key in ("group", "column", "value", "unit", "paper", "table", "row") if key not in entry]
    if missing:
        raise ProtocolError(f"{where}: published[{index}] needs {', '.join(missing)}")
    if entry["group"] not in groups:
        raise ProtocolError(f"{where}: published[{index}] names group {entry['group']!r}; groups: {', '.join(groups)}"
                            f"{did_you_mean(str(entry['group']), groups)}")
    for key in ("value", "pm", "tolerance"):
        if key in entry and (isinstance(entry[key], bool) or not isinstance(entry[key], (int, float))):
            raise ProtocolError(f"{where}: published[{index}].{key} must be a number")
    if "year" in entry and (isinstance(entry["year"], bool) or not isinstance(entry["year"], int)):
        raise ProtocolError(f"{where}: published[{index}].year must be an integer")
    if entry.get("comparable", True) is False and not entry.get("why"):
        raise ProtocolError(f"{where}: published[{index}] is not comparable: say why")
    return Published(**{key: float(value) if key in ("value", "pm", "tolerance") else value
                        for key, value in entry.items()})


def load(cls: type) -> ProtocolSpec:
    """The parsed document of protocol class ``cls``; its ``name`` must be the class's."""
    spec = parse(cls.document(), f"{cls.__module__}.{cls.__qualname__}")
    if spec.name != cls.name:
        raise ProtocolError(f"protocol {cls.name!r}: its document is named {spec.name!r}; they must agree")
    return spec


def protocol_spec(registry: Registry, name: str) -> ProtocolSpec:
    """The protocol ``name`` of the registry; :class:`ParamError` listing the known ones otherwise."""
    known = registry.names("protocol")
    if name not in known:
        raise ParamError(f"unknown protocol {name!r} (`cnfbench protocols` lists them); protocols: "
                         f"{', '.join(known) or 'none'}{did_you_mean(name, known)}")
    try:
        return load(registry.get("protocol", name).cls)
    except ProtocolError as exc:
        raise ParamError(str(exc)) from None


@dataclass(frozen=True)
class ProtocolRun:
    """What a protocol run resolves to: one run configuration per group, and what the user changed."""

    spec: ProtocolSpec
    scale: str
    configs: tuple[tuple[str, RunConfig], ...]
    deviations: tuple[str, ...]
    narrowed: tuple[str, ...]

    def stamp(self, group: str) -> dict[str, str]:
        """The protocol columns of a row of ``group``."""
        return {"protocol": self.spec.name, "protocol_scale": self.scale, "protocol_group": group,
                "protocol_deviation": "; ".join(self.deviations)}


def _names(selectors: Any) -> set[str]:
    if not selectors:
        return set()
    return {item.name for item in parse_selector_list(_as_list(selectors), "protocol")}


def protocol_configs(spec: ProtocolSpec, scale: str, base: RunConfig, given: dict[str, Any], source: str
                     ) -> ProtocolRun:
    """The configurations of ``spec`` at ``scale`` on top of ``base`` (defaults and a ``--config`` file), with the
    options the user ``given`` on the command line applied: a grid option whose every component the protocol
    already names (without parameters of its own) narrows the groups to those components; any other option
    overrides the protocol and is recorded as a deviation."""
    from cnfbench.config import merge

    if scale not in SCALES:
        raise ParamError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}{did_you_mean(scale, SCALES)}")
    grid_keys = {row.config_key for row in GRID_AXES}
    merged = {group_name: {**spec.settings, **spec.scales[scale].settings,
                           **{key: value for key, value in group.items() if key not in SCALES},
                           **group.get(scale, {})}
              for group_name, group in spec.groups}
    narrowing: dict[str, set[str]] = {}
    deviations: list[str] = []
    overrides: dict[str, Any] = {}
    for key, value in given.items():
        if key in NOT_DEVIATING:
            continue
        items = list(value) if isinstance(value, (list, tuple)) else None
        if key in grid_keys and items is not None:
            offered = set().union(*(_names(settings.get(key, ())) for settings in merged.values()))
            chosen = parse_selector_list(items, f"--{key}")
            if all(item.name in offered and not item.raw_params for item in chosen):
                narrowing[key] = {item.name for item in chosen}
                continue
        overrides[key] = value
        shown = ",".join(items) if items is not None else value
        was = sorted({_show(settings[key]) for settings in merged.values() if key in settings})
        deviations.append(f"{key}={shown}" + (f" (protocol: {' / '.join(was)})" if was else ""))
    configs: list[tuple[str, RunConfig]] = []
    for group_name, settings in merged.items():
        settings = dict(settings)
        for key, names in narrowing.items():
            kept = [item for item in parse_selector_list(_as_list(settings.get(key, ())), f"--{key}")
                    if item.name in names]
            if not kept:
                break
            settings[key] = [str(item) for item in kept]
        else:
            config = merge(base, _as_config(settings), f"protocol {spec.name!r} ({source}), group {group_name!r}")
            config = merge(config, _as_config(overrides), "option")
            extra_metrics = tuple(given.get("metrics", ()))
            if extra_metrics:
                config = replace(config, metrics=tuple(dict.fromkeys((*config.metrics, *extra_metrics))))
            configs.append((group_name, replace(config, protocol=spec.name, scale=scale)))
    if not configs:
        raise ParamError(f"the options leave no group of protocol {spec.name!r} to run (groups: "
                         f"{', '.join(spec.group_names())})")
    narrowed = tuple(f"{key} narrowed to {', '.join(sorted(names))}" for key, names in narrowing.items())
    return ProtocolRun(spec, scale, tuple(configs), tuple(deviations), narrowed)


def _show(value: Any) -> str:
    return ",".join(value) if isinstance(value, (list, tuple)) else str(value)


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _as_config(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as configuration values (tuples, as options give them, become lists)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}


def estimate(spec: ProtocolSpec, scale: str, registry: Registry) -> tuple[int, int, str]:
    """``(cells, training iterations, note)`` of ``spec`` at ``scale`` (models that cells share train once);
    the note says what could not be counted (a dataset whose files are missing)."""
    from cnfbench.config import RunConfig, resolve_grid
    from cnfbench.runner import model_key_of

    run = protocol_configs(spec, scale, RunConfig(), {}, "estimate")
    cells, iterations, keys = 0, 0, set()
    for _, config in run.configs:
        try:
            grid = resolve_grid(config, registry, pin=False)
        except ParamError as exc:
            return cells, iterations, str(exc)
        for cell in grid.cells:
            cells += 1
            key = model_key_of(cell, registry)
            if key not in keys:
                keys.add(key)
                iterations += cell.budget.iterations
    return cells, iterations, ""


def _mean_std(values: pd.Series) -> tuple[float, float, int]:
    finite = values.astype(float)
    finite = finite[finite.map(math.isfinite)]
    n = len(finite)
    if not n:
        return math.nan, math.nan, 0
    return float(finite.mean()), float(finite.std(ddof=1)) if n > 1 else math.nan, n


def published_table(spec: ProtocolSpec, rows: pd.DataFrame) -> pd.DataFrame:
    """Per published number: the paper's value (± as given), the run's mean ± std over its seeds, the difference
    in the number's unit and a verdict — within the paper's ±, within the stated tolerance, off — or why there is
    none (not comparable, not run, deviated)."""
    import pandas as pd

    records = []
    for entry in spec.published:
        mine = rows[(rows["protocol"] == spec.name) & (rows["protocol_group"] == entry.group)] \
            if "protocol_group" in rows else rows.iloc[0:0]
        if entry.objective:
            mine = mine[mine["objective"] == entry.objective]
        done = mine[mine["status"] == "done"] if "status" in mine else mine
        mean, std, n = _mean_std(done[entry.column]) if entry.column in done else (math.nan, math.nan, 0)
        scales = sorted(set(done.get("protocol_scale", pd.Series(dtype=str)).dropna()))
        deviated = sorted({text for text in done.get("protocol_deviation", pd.Series(dtype=str)).dropna() if text})
        difference = mean - entry.value if n else math.nan
        verdict, why = _verdict(spec, entry, n, difference, scales)
        records.append({
            "group": entry.group, "configuration": entry.configuration, "column": entry.column, "unit": entry.unit,
            "paper": entry.value, "paper_pm": math.nan if entry.pm is None else entry.pm,
            "ours_mean": mean, "ours_std": std, "seeds": n, "difference": difference,
            "tolerance": math.nan if entry.tolerance is None else entry.tolerance,
            "verdict": verdict + (" (deviated)" if deviated and n else ""),
            "why": "; ".join([*([why] if why else []), *(f"deviated: {text}" for text in deviated if n)]),
            "source": f"{entry.paper}, {entry.table}, {entry.row}", "year": entry.year, "notes": entry.notes,
        })
    return pd.DataFrame(records)


def _verdict(spec: ProtocolSpec, entry: Published, n: int, difference: float, scales: list[str]) -> tuple[str, str]:
    """A short verdict, and why when there is none."""
    if not entry.comparable:
        return "not comparable", entry.why
    if not n:
        return "not run", ""
    incomparable = [scale for scale in scales if not spec.scales[scale].comparable]
    if incomparable:
        return f"not comparable ({incomparable[0]})", f"scale {incomparable[0]}: {spec.scales[incomparable[0]].why}"
    if not math.isfinite(difference):
        return OFF, ""
    if entry.pm is not None and abs(difference) <= entry.pm:
        return WITHIN_PM, ""
    if entry.tolerance is not None and abs(difference) <= entry.tolerance:
        return WITHIN_TOLERANCE, ""
    return OFF, ""
