"""The conformance check of a published protocol (:func:`check_protocol`): its document parses, every scale
resolves to cells against the installed plugins, and every published number names a group and a column."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnfbench.testing._checker import Checker, component_label, one_line, resolve_component


def check_protocol(cls: type, params: Mapping[str, Any] | None = None, *, registry: Any = None) -> None:
    """Check a :class:`~cnfbench.contracts.Protocol` class.

    * metadata: ``name``, ``description``, no ``params`` (a protocol is chosen with its scale only);
    * ``document()`` is a TOML document :func:`cnfbench.protocols.parse` accepts, named as the class;
    * both scales resolve, group by group, to at least one cell with the plugins installed (``registry``, default:
      all of them) — every component, parameter and setting valid — without reading any dataset's files;
    * every published number compares with a column the catalogue (or a metric the registry offers) declares, and
      one that is comparable has a configuration the grid runs;
    * a ``numbers`` protocol publishes at least one number; a ``visual`` one asks for a plot metric.
    """
    from cnfbench.columns import COLUMNS_BY_NAME
    from cnfbench.config import RunConfig, resolve_grid
    from cnfbench.params import ParamError
    from cnfbench.protocols import SCALES, ProtocolError, load, protocol_configs
    from cnfbench.registry import load_registry

    check = Checker(component_label("protocol", cls))
    resolve_component("protocol", cls, params, check)
    check.require(not cls.params, "declares parameters; a protocol takes none (choose its scale with --scale)")
    try:
        spec = load(cls)
    except ProtocolError as exc:
        raise check.fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - whatever document() raises becomes one clear line
        raise check.fail(f"document() raised {one_line(exc)}") from exc
    registry = registry or load_registry()
    metric_columns = {column.name for entry in registry.entries("metric") for column in entry.cls.columns}
    known_columns = set(COLUMNS_BY_NAME) | metric_columns
    for scale in SCALES:
        try:
            run = protocol_configs(spec, scale, RunConfig(), {}, "check")
        except ParamError as exc:
            raise check.fail(f"scale {scale}: {exc}") from None
        objectives_by_group: dict[str, set[str]] = {}
        for group, config in run.configs:
            try:
                grid = resolve_grid(config, registry, pin=False)
            except ParamError as exc:
                raise check.fail(f"scale {scale}, group {group!r}: {exc}") from None
            check.require(grid.cells, f"scale {scale}, group {group!r} resolves to no cell")
            objectives_by_group[group] = {cell.objective.name for cell in grid.cells}
        for entry in spec.published:
            check.require(entry.column in known_columns,
                          f"published number {entry.row!r} compares with column {entry.column!r}, which no "
                          "catalogue entry or metric declares")
            if entry.comparable and entry.objective:
                check.require(entry.objective in objectives_by_group.get(entry.group, set()),
                              f"published number {entry.row!r} needs objective {entry.objective!r} in group "
                              f"{entry.group!r}, which scale {scale} does not run")
    if spec.kind == "numbers":
        check.require(spec.published, "is a `numbers` protocol without any [[published]] number")
    else:
        metrics = " ".join(str(item) for item in spec.settings.get("metrics", []))
        check.require("plot" in metrics, "is a visual protocol whose metrics draw no plot (add density_plot)")
