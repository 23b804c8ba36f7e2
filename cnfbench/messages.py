"""One-line messages: how cnfbench flattens any text or exception for a status reason or an ``Error:`` line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` with all whitespace runs folded to one space, cut to ``limit`` characters with an ellipsis — at a
    space, never inside a word or number (a first word longer than ``limit`` alone is cut), and never after a
    dangling dash or colon."""
    flat = " ".join(str(text).split())
    if limit is None or len(flat) <= limit:
        return flat
    head = flat[: limit]
    cut = head.rfind(" ")
    kept = head[:cut] if cut > 0 else flat[: limit - 1]
    return kept.rstrip(" -—–:;,") + "…"


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 cell``, ``2 cells``, ``0 cells``; ``plural_form`` where adding an ``s`` is wrong (``2 entries``)."""
    return f"{count} {noun if count == 1 else (plural_form or noun + 's')}"


def describe_exception(exc: BaseException, limit: int | None = None) -> str:
    """``Type: message`` on one line (just ``Type`` when the message is empty)."""
    text = one_line(exc, limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'dopri5'?"`` when a known name is close to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
