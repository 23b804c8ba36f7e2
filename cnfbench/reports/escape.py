"""Escaping of user-controlled text, one function per place it lands: HTML, JSON inside a page, Markdown, LaTeX,
matplotlib text and the terminal.

A run folder is data that may come from someone else (a colleague, a paper's download), so every string read from
it — column names, component specs and their parameters, dataset names, labels, provenance, plugin names, notes,
warnings — goes through the function of the context it is written into, and only that one. The labels the
interactive chart hands to Plotly are escaped by the page's own script (:mod:`cnfbench.reports.explorer`), where
the raw values are still the data's keys.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from typing import Any

_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Characters that reorder the text around them (a "Trojan source" spoof), shown escaped in the terminal."""


def single_line(text: object) -> str:
    """``text`` on one line: control characters dropped (a form feed is a paragraph break to LaTeX, a newline ends a
    Markdown table row) and every run of whitespace folded to one space."""
    flat = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in str(text))
    return " ".join(flat.split())


def html_escape(text: object) -> str:
    """``text`` for HTML element content or a quoted attribute value: ``& < > " '`` as character references, and
    control characters other than whitespace (invisible in a page, an escape sequence if the text is copied to a
    terminal) and bidirectional overrides shown as ``\x1b``/``\u202e``, as :func:`terminal_escape` shows them."""
    shown = "".join(ch if ch in "\t\n\r" else terminal_escape(ch) for ch in str(text))
    return html.escape(shown, quote=True)


_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(data: Any) -> str:
    """``data`` as JSON that is safe inside an HTML ``<script>`` element.

    ``<``, ``>`` and ``&`` (which can only occur inside JSON strings) become ``\\u003c``, ``\\u003e`` and
    ``\\u0026``, so that neither ``</script>`` nor ``<!--`` nor ``<script`` can end or change the element, and the
    line separators U+2028/U+2029 are escaped too; ``JSON.parse`` gives back the same value. A non-finite number,
    which ``JSON.parse`` rejects, raises :class:`ValueError` instead of writing a page that does not load.
    """
    text = json.dumps(data, allow_nan=False)
    return re.sub("[<>&\u2028\u2029]", lambda match: _SCRIPT_UNSAFE[match.group()], text)


_MARKDOWN_ACTIVE = re.compile(r"([\\`*_\[\]#~|$])")
_MARKDOWN_LINE_START = re.compile(r"^(?:[-+]|\d{1,9}[.)])(?=[ \t]|$)|^-(?=-)")
"""A list marker (``-``, ``+``, ``1.``, ``1)`` then a space or the end) or the start of a ``---`` rule."""


def markdown_escape(text: object) -> str:
    """``text`` for a Markdown table cell, caption or list item (GitHub-flavoured, CommonMark), shown literally.

    On one line (:func:`single_line`); ``& < >`` as entities (no inline HTML, no autolink); a backslash before
    ``\\ ` * _ [ ] # ~ | $`` (emphasis, code, links and images, headings, strikethrough, table cells, GitHub's math);
    a leading list marker (``- ``, ``+ ``, ``1. ``) or ``--`` is escaped so that a list item cannot start a nested
    list or a rule (``-5.2`` is left alone).
    ``( ) !`` stay as they are: they act only next to a ``[``, which is always escaped.
    """
    flat = single_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    escaped = _MARKDOWN_ACTIVE.sub(r"\\\1", flat)
    return _MARKDOWN_LINE_START.sub(lambda match: match.group()[:-1] + "\\" + match.group()[-1], escaped)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "[": "{[}", "]": "{]}", "*": "{*}",
                  "±": r"$\pm$", "–": "--", "—": "---", "|": r"$|$", "<": r"$<$", ">": r"$>$"}
"""LaTeX's ten special characters; ``[``, ``]`` and ``*`` braced, since after ``\\\\`` or a booktabs rule they would
be read as an optional argument or a star; characters the default fonts lack or set otherwise."""


def latex_escape(text: object) -> str:
    """``text`` for LaTeX text mode (a table cell, a caption), shown literally: on one line (:func:`single_line`), every
    special character escaped."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in single_line(text))


_LABEL_CHARS = "A-Za-z0-9:._-"
LATEX_LABEL = re.compile(f"[{_LABEL_CHARS}]+")
"""What a ``\\label`` may hold: letters, digits and ``: . _ -`` (anything else could end the command)."""
LATEX_LABEL_TEXT = "letters, digits and : . _ -"


def is_latex_label(text: str) -> bool:
    """Whether ``text`` is a safe ``\\label`` key (:data:`LATEX_LABEL`)."""
    return LATEX_LABEL.fullmatch(text) is not None


def latex_label(text: str) -> str:
    """``text`` made a safe ``\\label`` key: every run of other characters replaced by ``-``."""
    return re.sub(f"[^{_LABEL_CHARS}]+", "-", text)


def mathtext_escape(text: object) -> str:
    """``text`` for a matplotlib label, title or legend entry, shown literally: every ``$`` escaped, so that no pair
    of them starts mathtext (which would render ``a$x$`` as math and raise on ``$\\foo$``)."""
    return str(text).replace("$", r"\$")


def terminal_escape(text: object) -> str:
    """``text`` for the terminal: control characters (an escape sequence could clear the screen or retitle the
    window) and bidirectional overrides shown as ``\\x1b``/``\\u202e``, tabs and newlines as one space."""
    def shown(ch: str) -> str:
        if ch in "\t\n\r":
            return " "
        if unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS:
            return ch.encode("unicode_escape").decode("ascii")
        return ch

    return "".join(shown(ch) for ch in str(text))
