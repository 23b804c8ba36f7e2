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
from collections.abc import Sequence
from typing import Any

TEXT_WIDTH = 100
"""Columns a table fits when it is not printed to a terminal (a terminal's own width otherwise)."""


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

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False, header_style="bold")
    for index, header in enumerate(headers):
        table.add_column(Text(str(header)), justify="left" if index < left else "right", overflow="fold")
    for index, row in enumerate(body):
        style = row_styles[index] if row_styles is not None else None
        table.add_row(*(Text(str(value)) for value in row), style=style)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width or TEXT_WIDTH, force_terminal=color,
                      no_color=not color or bool(os.environ.get("NO_COLOR")), highlight=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())


def wrap_text(line: str, width: int | None = None) -> str:
    """A prose ``line`` (a caption, a note) broken at spaces to fit ``width`` columns (default :data:`TEXT_WIDTH`)."""
    import textwrap

    return "\n".join(textwrap.wrap(line, width or TEXT_WIDTH, break_long_words=True, break_on_hyphens=False)) or line
