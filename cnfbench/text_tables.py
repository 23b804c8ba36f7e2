"""Plain-text tables that fit a terminal: rich folds the cells that do not fit ``width`` columns.

Every table cnfbench prints (the end-of-run summary, ``report``, ``compare``) goes through :func:`fold_table`,
so that at a 100-column terminal nothing wraps: a cell too wide for its share folds onto more lines of its
own column instead. Off a terminal the width is :data:`TEXT_WIDTH`.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from typing import Any

TEXT_WIDTH = 100
"""Columns a table fits when it is not printed to a terminal (a terminal's own width otherwise)."""


LABEL_MIN_WIDTH = 24
"""A column gets at least its longest entry's width, up to this many columns (a long label may fold)."""


LABEL_FLOOR = 10
"""The narrowest a label column is made to fit a table (rich alone may fold it further)."""


def terminal_width() -> int | None:
    """The width of the terminal standard output is, or None when it is not one."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def fold_table(headers: Sequence[str], body: Sequence[Sequence[Any]], left: int, width: int | None = None,
               row_styles: Sequence[str | None] | None = None, color: bool = False) -> str:
    """``headers`` over ``body``: the first ``left`` columns left-aligned, the others right-aligned, at most
    ``width`` columns wide (default :data:`TEXT_WIDTH`), trailing spaces removed. ``row_styles`` (rich styles,
    e.g. ``"red"``) apply with ``color`` only, and never under ``NO_COLOR``."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    def render(widths: Sequence[int] | None, colored: bool = color) -> str:
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False,
                      header_style="bold")
        for index, header in enumerate(headers):
            table.add_column(Text(str(header)), justify="left" if index < left else "right", overflow="fold",
                             width=widths[index] if widths else None)
        for index, row in enumerate(body):
            style = row_styles[index] if row_styles is not None else None
            table.add_row(*(Text(str(value)) for value in row), style=style)
        buffer = io.StringIO()
        console = Console(file=buffer, width=width or TEXT_WIDTH, force_terminal=colored,
                          no_color=not colored or bool(os.environ.get("NO_COLOR")), highlight=False)
        console.print(table)
        return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())

    # rich's own layout, unless it folds a label that could stay whole (a component's name cut in two)
    labels = {str(row[index]) for row in body for index in range(left) if len(str(row[index])) <= LABEL_MIN_WIDTH}
    plain = render(None, colored=False)
    widths = None if all(label in plain for label in labels) else column_widths(headers, body, left,
                                                                               width or TEXT_WIDTH)
    return plain if widths is None and not color else render(widths)


def column_widths(headers: Sequence[str], body: Sequence[Sequence[Any]], left: int, width: int) -> list[int] | None:
    """Widths that keep every label on one line (up to :data:`LABEL_MIN_WIDTH`) and fold headers at spaces
    instead (the other entries too, when they cannot all stay whole; the widest labels, down to
    :data:`LABEL_FLOOR`, when even that is too wide), the room left shared out evenly among the folded columns;
    ``None`` when the table fits as it is or cannot fit that way (rich then lays it out, folding what it must)."""
    gaps = 2 * (len(headers) - 1)  # a column's right padding and the box's divider

    def longest(index: int) -> int:
        return max((len(str(row[index])) for row in body), default=0)

    natural = [max(len(str(header)), longest(index)) for index, header in enumerate(headers)]
    if sum(natural) + gaps <= width:
        return None

    def longest_word(texts: Iterable[Any]) -> int:
        return max((len(word) for text in texts for word in str(text).split()), default=0)

    least = [max(longest_word([header]), min(longest(index), LABEL_MIN_WIDTH) if index < left else longest(index))
             for index, header in enumerate(headers)]
    if sum(least) + gaps > width:  # entries too wide to stay whole: fold them at spaces too, labels excepted
        least = [width_ if index < left else max(longest_word([headers[index]]),
                                                  longest_word(row[index] for row in body))
                 for index, width_ in enumerate(least)]
    room = width - gaps - sum(least)
    while room < 0:  # too narrow for every label whole: the widest label folds, down to LABEL_FLOOR columns
        widest = max(range(left), key=lambda index: least[index], default=None)
        if widest is None or least[widest] <= max(LABEL_FLOOR, longest_word([headers[widest]])):
            return None
        least[widest] -= 1
        room += 1
    widths = list(least)
    while room > 0 and any(have < want for have, want in zip(widths, natural, strict=True)):
        for index in range(len(headers)):  # one column of room at a time to each header still folded
            if room > 0 and widths[index] < natural[index]:
                widths[index] += 1
                room -= 1
    return widths


def wrap_text(line: str, width: int | None = None) -> str:
    """A prose ``line`` (a caption, a note) broken at spaces to fit ``width`` columns (default :data:`TEXT_WIDTH`)."""
    import textwrap

    return "\n".join(textwrap.wrap(line, width or TEXT_WIDTH, break_long_words=True, break_on_hyphens=False)) or line
