"""cnfbench/text_tables.py and cnfbench/labels.py: tables fit the width, never cut a token, lose no entry."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnfbench.labels import break_label, shorten, shorten_all, tokens
from cnfbench.text_tables import column_groups, fold_table, terminal_width

NAME = st.text(alphabet="abcdefghij_", min_size=1, max_size=10)
PAIR = st.tuples(NAME, st.text(alphabet="0123456789.e-", min_size=1, max_size=6)).map("=".join)
SPEC = st.tuples(NAME, st.lists(PAIR, max_size=3)).map(lambda t: f"{t[0]}[{','.join(t[1])}]" if t[1] else t[0])
NUMBER = st.floats(-1e4, 1e4, allow_nan=False).map(lambda v: f"{v:.3f}")
HEADER = st.lists(st.text(alphabet="abcdefgh/[]", min_size=1, max_size=8), min_size=1, max_size=3).map(" ".join)


def pieces(text: str) -> list[str]:
    """The unbreakable pieces of ``text`` (what may never be split across lines)."""
    return [piece.strip() for piece in tokens(text) if piece.strip()]


@settings(max_examples=80, deadline=None)
@given(labels=st.integers(1, 3), numbers=st.integers(0, 8), rows=st.integers(1, 4), width=st.integers(40, 160),
       data=st.data())
def test_every_table_fits_cuts_no_token_and_loses_no_entry(labels: int, numbers: int, rows: int, width: int,
                                                           data) -> None:
    headers = data.draw(st.lists(HEADER, min_size=labels + numbers, max_size=labels + numbers))
    body = [data.draw(st.lists(SPEC, min_size=labels, max_size=labels))
            + data.draw(st.lists(NUMBER, min_size=numbers, max_size=numbers)) for _ in range(rows)]
    text = fold_table(headers, body, labels, width=width)
    lines = text.splitlines()
    widest_labels = sum(max(max(len(p) for p in pieces(row[i])) for row in body) for i in range(labels))
    if widest_labels + 2 * labels + max((len(v) for row in body for v in row[labels:]), default=0) <= width:
        assert all(len(line) <= width for line in lines)
    # every token of every entry is printed whole on some line
    for row in body:
        for value in row:
            for piece in pieces(value):
                assert any(piece in line for line in lines), (piece, text)
    # every number column is printed exactly once (label columns lead every table they are split into)
    for position in range(labels, labels + numbers):
        assert sum(1 for row in body for _ in [0] if row[position] in text) == len(body)


def test_a_narrow_table_moves_columns_below_under_the_same_labels() -> None:
    headers = ["dataset", "solver", "trace", "valid", "n", "NLL solver [nats]", "NLL ref [nats]",
               "excess NLL [nats]", "NFE test [evals]", "train [s]"]
    body = [["8gaussians", "euler[steps=10]", "exact", "NO (!)", "1", "3.607", "3.714", "0.879", "10", "1.6"],
            ["8gaussians", "rk4[steps=4]", "hutchinson", "yes", "1", "3.681", "3.681", "0.845", "40", "4.1"]]
    groups = column_groups(headers, body, 5, 60)
    assert len(groups) > 1 and all(group[:5] == [0, 1, 2, 3, 4] for group in groups)
    assert sorted({i for group in groups for i in group}) == list(range(len(headers)))
    text = fold_table(headers, body, 5, 60)
    assert all(len(line) <= 60 for line in text.splitlines())
    assert text.count("8gaussians") == 2 * len(groups)  # the labels lead every table
    assert text.count("steps=10]") == len(groups) and "step\n" not in text  # folded, if at all, at a boundary
    assert "[nats]" in text and "[evals]" in text


@pytest.mark.parametrize("width", [80, 100, 160])
def test_labels_fold_at_parameter_boundaries(width: int) -> None:
    label = "rk4[steps=4,adjoint=false] · hutchinson[noise=gaussian,probes=1] · seed 3"
    for narrow in (12, 20, 30, width):
        folded = break_label(label, narrow)
        assert folded.replace("\n", "").replace(" ", "") == label.replace(" ", "")
        for line in folded.splitlines():
            assert len(line) <= narrow or line.strip() in {piece.strip() for piece in tokens(label)}
            assert not re.search(r"=$|^=", line)  # never between a key and its value
        for piece in pieces(label):
            assert any(piece in line for line in folded.splitlines())


def test_shorten_cuts_at_a_boundary_and_keeps_what_tells_labels_apart() -> None:
    assert shorten("euler[steps=10,adjoint=false]", 20) == "euler[steps=10,…"
    assert shorten("hutchinson[noise=gaussian]", 8) == "hutchin…"  # a single token wider than the room
    labels = ["8gaussians · euler[steps=10] · exact", "8gaussians · euler[steps=10] · hutchinson"]
    assert shorten_all(labels, 30) == ["euler[steps=10] · exact", "euler[steps=10] · hutchinson"]


def test_columns_environment_sets_the_width_also_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert terminal_width() == 80
    monkeypatch.setenv("COLUMNS", "not a number")
    assert terminal_width() is None  # pytest's stdout is not a terminal
