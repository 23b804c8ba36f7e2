"""Configuration labels: one naming rule for every surface that shows a cell or a row.

The live display, the summary and its notes, ``report``, ``compare``, the plots, the page and the trackers all
name a configuration the same way: by the grid axes that vary among what is shown, each in short form (a
component's parameters that have the same value in every shown spec left out), joined by :data:`SEPARATOR`;
``seed N`` when seeds vary too; the components' names when nothing varies.

Where a label must be shorter or must fold, it is cut or broken only at a token boundary — after a space,
a ``[`` or a ``,`` — never inside a component's name, a ``key=value`` pair or a number
(:func:`tokens`, :func:`break_label`, :func:`shorten`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cnfbench.families import GRID_AXES

if TYPE_CHECKING:
    import pandas as pd

    from cnfbench.cells import Cell

SEPARATOR = " · "
"""Between the axes of a label."""

ELLIPSIS = "…"
"""Ends a label that was cut (always at a token boundary)."""

_SPEC = re.compile(r"^(?P<name>[^\[]+)(?:\[(?P<params>.*)\])?$")
_TOKEN = re.compile(r"[^\s\[,]*(?:\[|,|\s+(?:·\s+)?|$)")


def split_spec(spec: str) -> tuple[str, list[str]]:
    """``("euler", ["steps=10", "adjoint=false"])`` from ``euler[steps=10,adjoint=false]``."""
    match = _SPEC.match(spec)
    if not match:
        return spec, []
    params = match.group("params")
    return match.group("name"), _split_params(params) if params else []


def _split_params(params: str) -> list[str]:
    """``k=v`` pairs split at top-level commas (a value may hold brackets, e.g. a list)."""
    pairs, depth, current = [], 0, ""
    for char in params:
        if char == "," and depth == 0:
            pairs.append(current)
            current = ""
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        current += char
    pairs.append(current)
    return pairs


def short_specs(specs: Sequence[str]) -> list[str]:
    """Each ``name[k=v,...]`` without the parameters whose value is the same in every spec that has them."""
    parsed = [split_spec(str(spec)) for spec in specs]
    seen: dict[str, set[str]] = {}
    for _, params in parsed:
        for pair in params:
            key, _, value = pair.partition("=")
            seen.setdefault(key, set()).add(value)
    varying = {key for key, values in seen.items() if len(values) > 1}
    labels = []
    for name, params in parsed:
        kept = [pair for pair in params if pair.partition("=")[0] in varying]
        labels.append(f"{name}[{','.join(kept)}]" if kept else name)
    return labels


def configuration_labels(axes: Mapping[str, Sequence[str]], seeds: Sequence[Any] | None = None,
                         keep: Sequence[str] = ()) -> list[str]:
    """One label per row from the full specs of each axis (``axes[key][i]`` is row i's spec on axis ``key``, in
    the grid's axis order): the axes that vary (and those in ``keep``) in short form, then ``seed N`` when
    ``seeds`` vary; every axis' component name (and the seed, when given) when nothing varies."""
    rows = len(next(iter(axes.values()), ()))
    short = {key: short_specs(list(specs)) for key, specs in axes.items()}
    shown = [key for key, specs in axes.items() if key in keep or len(set(map(str, specs))) > 1]
    vary_seed = seeds is not None and len({str(seed) for seed in seeds}) > 1
    labels = []
    for index in range(rows):
        parts = [short[key][index] for key in shown]
        if vary_seed and seeds is not None:
            parts.append(f"seed {seeds[index]}")
        if not parts:
            parts = [split_spec(str(specs[index]))[0] for specs in axes.values()]
            if seeds is not None:
                parts.append(f"seed {seeds[index]}")
        labels.append(SEPARATOR.join(parts))
    return labels


def cell_labels(cells: Sequence[Cell], seeds: bool = True) -> dict[str, str]:
    """A label per cell id (:func:`configuration_labels` over ``cells``; with the seed when ``seeds``)."""
    axes = {row.key: [cell.axes[row.key].label() for cell in cells] for row in GRID_AXES}
    labels = configuration_labels(axes, [cell.seed for cell in cells] if seeds else None)
    return {cell.cell_id: label for cell, label in zip(cells, labels, strict=True)}


def row_specs(frame: pd.DataFrame, key: str) -> list[str]:
    """The full spec of every row of ``frame`` on grid axis ``key`` (its name where the spec is missing; the axis'
    implicit component where the row predates the axis)."""
    row = next(axis for axis in GRID_AXES if axis.key == key)
    if row.spec_column in frame:
        values = frame[row.spec_column]
    elif row.column in frame:
        values = frame[row.column]
    else:
        return [row.implicit or "—"] * len(frame)
    fallback = frame[row.column] if row.column in frame else None
    specs = []
    for position, value in enumerate(values):
        if isinstance(value, str) and value:
            specs.append(value)
        elif fallback is not None and isinstance(fallback.iloc[position], str):
            specs.append(str(fallback.iloc[position]))
        else:
            specs.append(row.implicit or "—")
    return specs


def row_labels(frame: pd.DataFrame, seeds: bool = False, leave_out: Sequence[str] = (),
               keep: Sequence[str] = ()) -> pd.Series:
    """A label per row of ``frame`` (a results table), indexed like it: :func:`configuration_labels` over its
    grid axes except ``leave_out`` (e.g. the dataset, when a figure is per dataset); with the seed when
    ``seeds``."""
    import pandas as pd

    axes = {row.key: row_specs(frame, row.key) for row in GRID_AXES if row.key not in leave_out}
    seed_values = list(frame["seed"]) if seeds and "seed" in frame else None
    return pd.Series(configuration_labels(axes, seed_values, keep), index=frame.index, dtype=object)


def tokens(text: str) -> list[str]:
    """``text`` in the pieces a line may end after: ``euler[``, ``steps=10,``, ``adjoint=false]``; a run of
    spaces stays with the piece before it. Joined, they are ``text``."""
    pieces = [piece for piece in _TOKEN.findall(text) if piece]
    return pieces or [text]


def longest_token(text: str) -> int:
    """The width of ``text``'s widest unbreakable piece (trailing spaces left out)."""
    return max((len(piece.rstrip()) for line in str(text).splitlines() or [""] for piece in tokens(line)),
               default=0)


def break_label(text: str, width: int) -> str:
    """``text`` folded onto lines of at most ``width`` columns, each break at a token boundary; a piece wider
    than ``width`` keeps a line of its own (it is never cut)."""
    out: list[str] = []
    for source in str(text).splitlines() or [""]:
        line = ""
        for piece in tokens(source):
            if line and len((line + piece).rstrip()) > width:
                out.append(line.rstrip())
                line = piece.lstrip()
            else:
                line += piece
        out.append(line.rstrip())
    return "\n".join(out)


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` columns: whole pieces from its start, then :data:`ELLIPSIS`; the first piece
    alone (cut only when it is wider than ``width`` by itself, the sole case a token is cut) when nothing fits."""
    if len(text) <= width:
        return text
    kept = ""
    for piece in tokens(text):
        if len((kept + piece).rstrip()) + 1 > width:
            break
        kept += piece
    kept = kept.rstrip()
    if kept.endswith(SEPARATOR.strip()):
        kept = kept[: -len(SEPARATOR.strip())].rstrip()
    if not kept:
        first = tokens(text)[0].rstrip()
        return first if len(first) <= width else first[: max(width - 1, 0)] + ELLIPSIS
    return kept + ELLIPSIS


def shorten_all(labels: Sequence[str], width: int) -> list[str]:
    """``labels`` each in at most ``width`` columns, keeping what tells them apart: parts (between
    :data:`SEPARATOR`) that every label shares are dropped first, one at a time from the left, until all fit;
    then each is cut at a token boundary."""
    split = [label.split(SEPARATOR) for label in labels]
    if len(split) > 1 and len({len(parts) for parts in split}) == 1:
        shared = [index for index in range(len(split[0])) if len({parts[index] for parts in split}) == 1]
        dropped: set[int] = set()
        for index in shared:
            if all(len(SEPARATOR.join(p for i, p in enumerate(parts) if i not in dropped)) <= width
                   for parts in split) or len(dropped) == len(split[0]) - 1:
                break
            dropped.add(index)
        split = [[part for index, part in enumerate(parts) if index not in dropped] for parts in split]
    return [shorten(SEPARATOR.join(parts), width) for parts in split]
