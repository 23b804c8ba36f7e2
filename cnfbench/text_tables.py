"""Plain-text tables that fit a terminal without cutting a word: entries fold only at token boundaries.

Every table cnfbench prints (the end-of-run summary, ``report``, ``compare``) goes through :func:`fold_table`.
A table that fits keeps one line per row. One that does not first folds its headers at spaces and its entries
at token boundaries (after a space, a ``[`` or a ``,``: :mod:`cnfbench.labels`), never inside a name, a
``key=value`` pair or a number; when even that is too wide, the columns that do not fit move to a second table
below, under the same leading label columns, so that every row stays attributable. The width is the
terminal's, or ``COLUMNS`` when set (also when the output goes to a file), else :data:`TEXT_WIDTH`.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from cnfbench.labels import break_label, longest_token

TEXT_WIDTH = 100
"""Columns a table fits when neither ``COLUMNS`` nor a terminal says otherwise."""

MIN_WIDTH = 40
"""The narrowest width a table is laid out for (a smaller ``COLUMNS`` is read as this)."""

GAP = 2
"""Columns between two table columns (a column's right padding and the box's divider)."""


def terminal_width() -> int | None:
    """``COLUMNS`` when set to a number (also when standard output is not a terminal), else the terminal's width,
    else ``None`` (then :data:`TEXT_WIDTH`)."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return max(int(columns), MIN_WIDTH)
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def fold_table(headers: Sequence[str], body: Sequence[Sequence[Any]], left: int, width: int | None = None,
               row_styles: Sequence[str | None] | None = None, color: bool = False) -> str:
    """``headers`` over ``body``: the first ``left`` columns left-aligned, the others right-aligned, at most
    ``width`` columns wide (default :data:`TEXT_WIDTH`), trailing spaces removed, no token cut. Columns that do
    not fit even folded go, in their order, to further tables below, each led by the ``left`` label columns.
    ``row_styles`` (rich styles, e.g. ``"red"``) apply with ``color`` only, and never under ``NO_COLOR``."""
    width = width or TEXT_WIDTH
    headers = [str(header) for header in headers]
    rows = [[str(value) for value in row] for row in body]
    parts = []
    for columns in column_groups(headers, rows, left, width):
        sub_headers = [headers[index] for index in columns]
        sub_rows = [[row[index] for index in columns] for row in rows]
        widths = column_widths(sub_headers, sub_rows, min(left, len(columns)), width)
        parts.append(_render(sub_headers, sub_rows, min(left, len(columns)), widths, width, row_styles, color))
    return "\n\n".join(parts)


def _least(header: str, entries: Sequence[str]) -> int:
    """The narrowest a column can be without cutting a word of its header or a token of an entry."""
    return max([_longest_word(header), *(longest_token(entry) for entry in entries)], default=1) or 1


def _longest_word(text: str) -> int:
    """A header folds at spaces only (``[nats]`` stays whole)."""
    return max((len(word) for word in text.split()), default=0)


def _fold_header(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)) or text


def _natural(header: str, entries: Sequence[str]) -> int:
    """A column's width with every entry and the header on their own lines, unfolded."""
    return max(len(line) for text in [header, *entries] for line in text.splitlines() or [""]) or 1


def column_groups(headers: Sequence[str], body: Sequence[Sequence[str]], left: int, width: int) -> list[list[int]]:
    """The column indices of each table to print: all in one when the columns fit folded; otherwise the
    label columns (the first ``left``) lead every group, and the other columns fill groups in order — with the
    labels on one line each where that takes no more tables than folding them."""
    least = [_least(header, [row[index] for row in body]) for index, header in enumerate(headers)]
    labels = list(range(min(left, len(headers))))
    gaps = GAP * max(len(labels) - 1, 0)
    folded = _pack(least, labels, sum(least[index] for index in labels) + gaps, width)
    whole = _pack(least, labels, sum(_natural(headers[i], [row[i] for row in body]) for i in labels) + gaps, width)
    return whole if len(whole) <= len(folded) else folded


def _pack(least: Sequence[int], labels: list[int], used: int, width: int) -> list[list[int]]:
    """Groups of columns (each led by ``labels``, which take ``used`` columns) filled in order up to ``width``."""
    groups: list[list[int]] = []
    current: list[int] = []
    room = used
    for index in range(len(labels), len(least)):
        need = least[index] + (GAP if labels or current else 0)
        if current and room + need > width:
            groups.append(labels + current)
            current, room = [], used
            need = least[index] + (GAP if labels else 0)
        current.append(index)
        room += need
    if current or not groups:
        groups.append(labels + current)
    return groups


def column_widths(headers: Sequence[str], body: Sequence[Sequence[str]], left: int, width: int) -> list[int] | None:
    """Each column's width: ``None`` when the table fits unfolded; else every column at least its widest
    token, the room left going first to the label columns (the first ``left``, so that labels stay on one line)
    and then, one column at a time, to the columns still folded."""
    natural = [_natural(header, [row[index] for row in body]) for index, header in enumerate(headers)]
    gaps = GAP * (len(headers) - 1)
    if sum(natural) + gaps <= width:
        return None
    widths = [_least(header, [row[index] for row in body]) for index, header in enumerate(headers)]
    room = width - gaps - sum(widths)
    labels = sorted(range(min(left, len(headers))), key=lambda index: natural[index] - widths[index])
    for index in labels:  # labels whole first, the cheapest to make whole first
        if natural[index] - widths[index] <= room:
            room -= natural[index] - widths[index]
            widths[index] = natural[index]
    while room > 0 and any(have < want for have, want in zip(widths, natural, strict=True)):
        for index in range(len(headers)):
            if room > 0 and widths[index] < natural[index]:
                widths[index] += 1
                room -= 1
    return widths


def _render(headers: Sequence[str], body: Sequence[Sequence[str]], left: int, widths: Sequence[int] | None,
            width: int, row_styles: Sequence[str | None] | None, color: bool) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    def fold(text: str, index: int) -> str:
        return text if widths is None else break_label(text, widths[index])

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False, header_style="bold")
    for index, header in enumerate(headers):
        title = header if widths is None else _fold_header(header, widths[index])
        table.add_column(Text(title), justify="left" if index < left else "right",
                         overflow="fold", width=widths[index] if widths else None,
                         no_wrap=widths is None)
    for position, row in enumerate(body):
        style = row_styles[position] if row_styles is not None and color else None
        table.add_row(*(Text(fold(value, index)) for index, value in enumerate(row)), style=style)
    total = width if widths is None else max(width, sum(widths) + GAP * (len(headers) - 1))
    buffer = io.StringIO()
    console = Console(file=buffer, width=total, force_terminal=color, force_jupyter=False,
                      no_color=not color or bool(os.environ.get("NO_COLOR")), highlight=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())


def wrap_text(line: str, width: int | None = None, indent: str = "") -> str:
    """A prose ``line`` (a caption, a note) broken at spaces to fit ``width`` columns (default :data:`TEXT_WIDTH`),
    its continuation lines after ``indent``; a word longer than the width keeps a line of its own, whole."""
    import textwrap

    return "\n".join(textwrap.wrap(line, width or TEXT_WIDTH, break_long_words=False, break_on_hyphens=False,
                                   subsequent_indent=indent)) or line
