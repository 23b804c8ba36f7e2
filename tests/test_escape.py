"""Escaping by context (:mod:`cnfbench.reports.escape`): whatever the text, it comes back literally — JSON inside a
``<script>`` parses to the same value and holds no markup, Markdown renders (markdown-it, CommonMark + tables) to
exactly the text, LaTeX holds no special character but escaped ones, matplotlib never reads mathtext; and the page's
Content-Security-Policy lists exactly the scripts it inlines."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from cnfbench.reports import ReportError, latex_escape, pivot, to_latex
from cnfbench.reports.escape import (
    is_latex_label,
    latex_label,
    markdown_escape,
    mathtext_escape,
    script_json,
    single_line,
    terminal_escape,
)
from cnfbench.reports.html import CSP_DIRECTIVES, content_security_policy, inline_element, source_hash

PIECES = ("<!--", "<script>", "</script>", "</SCRIPT ", "<!", "-->", "&", "&amp;", "&#60;", "\u2028", "\u2029", "$",
          "\\", "|", "*", "_", "`", "[", "](", "!", "#", "~", "{", "}", "%", "^", "- ", "+ ", "1. ", "> ", "\n", "\t",
          "\x0c", "\x00", "\x1b[2J", "\u202e", "<b>", "%{x}", "---", "    ")
"""Characters and sequences that mean something in one of the contexts."""

hostile_text = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=12).map("".join)
"""Arbitrary text, dense in the pieces above."""

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), hostile_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=12)


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_inline_json_parses_back_and_holds_no_markup(value: object) -> None:
    text = script_json(value)
    assert json.loads(text) == value
    assert not set(text) & set("<>&\u2028\u2029")


def test_inline_json_refuses_what_json_parse_cannot_read() -> None:
    with pytest.raises(ValueError):
        script_json({"x": float("nan")})


_MARKDOWN = MarkdownIt("commonmark").enable("table")


def _html_text(text: str) -> str:
    """How markdown-it writes ``text`` as HTML text."""
    return html.escape(text, quote=False).replace('"', "&quot;")


@given(hostile_text)
@settings(max_examples=400, deadline=None)
def test_markdown_renders_exactly_the_text_in_a_list_item_a_table_cell_and_a_caption(text: str) -> None:
    flat = single_line(text)
    if not flat:
        return
    escaped = markdown_escape(text)
    assert _MARKDOWN.render(f"- {escaped}") == f"<ul>\n<li>{_html_text(flat)}</li>\n</ul>\n"
    assert _MARKDOWN.render(f"*{escaped}*\n") == f"<p><em>{_html_text(flat)}</em></p>\n"
    table = _MARKDOWN.render(f"| h | {escaped} |\n| --- | ---: |\n| {escaped} | x |\n")
    assert f"<th style=\"text-align:right\">{_html_text(flat)}</th>" in table
    assert f"<td>{_html_text(flat)}</td>" in table


def test_markdown_leaves_plain_text_and_numbers_readable() -> None:
    assert markdown_escape("3.000 ± 0.071 (n=2) (!)") == "3.000 ± 0.071 (n=2) (!)"
    assert markdown_escape("-5.25") == "-5.25" and markdown_escape("- 5") == "\\- 5"
    assert markdown_escape("euler[steps=4] <b>") == "euler\\[steps=4\\] &lt;b&gt;"


_LATEX_TOKENS = sorted({*(latex_escape(ch) for ch in "\\&%$#_{}~^[]*±|<>"), "--", "---"}, key=len, reverse=True)
_LATEX_SPECIAL = set("\\&%$#_{}~^[]*")


@given(hostile_text)
@settings(max_examples=300, deadline=None)
def test_latex_text_holds_no_special_character_unescaped(text: str) -> None:
    escaped = latex_escape(text)
    position = 0
    while position < len(escaped):
        token = next((t for t in _LATEX_TOKENS if escaped.startswith(t, position)), None)
        if token is None:
            assert escaped[position] not in _LATEX_SPECIAL, (text, escaped, position)
            assert unicodedata.category(escaped[position]) != "Cc" and escaped[position] != "\n"
        position += len(token) if token else 1


def test_latex_escape_is_exported_and_brackets_cannot_become_an_optional_argument() -> None:
    assert latex_escape("[2pt] *x") == "{[}2pt{]} {*}x"  # after \\ or \midrule, "[" would be read as an option
    assert latex_escape("a\x0cb\nc") == "a b c"  # a form feed is \par to LaTeX


def test_latex_labels_are_checked_and_made() -> None:
    assert is_latex_label("tab:solvers_2.b-c") and not is_latex_label("tab}\\input{x") and not is_latex_label("")
    assert latex_label("tab:my run+other}") == "tab:my-run-other-"
    from test_report import small_table

    with pytest.raises(ReportError, match=r"^LaTeX label 'x}' may hold only letters, digits and : \. _ -"):
        to_latex(pivot(small_table(), rows=["solver"], metrics=["nll_ref"]), label="x}")


@given(hostile_text)
@settings(max_examples=200, deadline=None)
def test_matplotlib_never_reads_mathtext_and_shows_the_text(text: str) -> None:
    from matplotlib import cbook

    escaped = mathtext_escape(text)
    assert not cbook.is_math_text(escaped)
    assert escaped.replace("\\$", "$") == text  # what matplotlib draws for non-math text


@given(hostile_text)
@settings(max_examples=200, deadline=None)
def test_the_terminal_gets_no_control_character(text: str) -> None:
    shown = terminal_escape(text)
    assert all(unicodedata.category(ch) != "Cc" and ch not in "\u202a\u202b\u202c\u202d\u202e" for ch in shown)
    assert terminal_escape("a\x1b[2Jb\u202ec") == "a\\x1b[2Jb\\u202ec"


# --------------------------------------------------------------------------------------------------- the policy

def test_the_policy_lists_exactly_the_inline_scripts_and_forbids_the_network() -> None:
    scripts = ["console.log(1)", "const x = '</b>';"]
    policy = content_security_policy(scripts)
    digests = [base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in scripts]
    assert policy.endswith(f"script-src 'sha256-{digests[0]}' 'sha256-{digests[1]}'")
    assert source_hash(scripts[0]) == f"'sha256-{digests[0]}'"
    for directive in ("default-src 'none'", "connect-src 'none'", "font-src 'none'", "frame-src 'none'",
                      "form-action 'none'", "base-uri 'none'", "img-src data: blob:"):
        assert directive in CSP_DIRECTIVES
    assert "unsafe-eval" not in policy and "script-src 'unsafe-inline'" not in policy
    assert content_security_policy([]).endswith("script-src 'none'")


def test_an_inline_element_cannot_end_early() -> None:
    assert inline_element("script", "let a = 1 < 2;") == "<script>let a = 1 < 2;</script>"
    for bad in ("x</script>", "x</SCRIPT >", "a\rb"):
        with pytest.raises(ValueError):
            inline_element("script", bad)


def test_html_shows_control_characters_and_bidi_overrides_visibly() -> None:
    from cnfbench.reports.escape import html_escape

    assert html_escape("run \x1b[31mred\x1b[0m <b>\u202e") == "run \\x1b[31mred\\x1b[0m &lt;b&gt;\\u202e"
    assert html_escape("two\nlines\tand a tab") == "two\nlines\tand a tab"  # whitespace stays for <pre> and CSS
