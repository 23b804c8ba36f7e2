"""cnfbench/text_tables.py: tables fit the width, lose no character, and keep component names on one line."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cnfbench.text_tables import LABEL_MIN_WIDTH, column_widths, fold_table

WORDS = st.text(alphabet="abcdefghij0123456789.,[]→±Δ()", min_size=1, max_size=12)
CELLS = st.lists(WORDS, min_size=1, max_size=3).map(" ".join)


def printed(text: str) -> str:
    return "".join(character for character in text if not character.isspace())


@settings(max_examples=60, deadline=None)
@given(columns=st.integers(1, 9), rows=st.integers(1, 4), left=st.integers(0, 3), width=st.integers(40, 140),
       data=st.data())
def test_every_table_fits_and_loses_nothing(columns: int, rows: int, left: int, width: int, data) -> None:
    headers = data.draw(st.lists(CELLS, min_size=columns, max_size=columns))
    body = data.draw(st.lists(st.lists(CELLS, min_size=columns, max_size=columns), min_size=rows, max_size=rows))
    text = fold_table(headers, body, min(left, columns), width=width)
    assert all(len(line) <= width for line in text.splitlines())
    expected = "".join(printed(cell) for cell in [*headers, *(cell for row in body for cell in row)])
    assert sorted(printed(text).replace("─", "")) == sorted(expected)


def test_labels_stay_whole_and_headers_fold_instead() -> None:
    headers = ["dataset", "solver", "valid", "NLL solver [nats]", "NLL ref [nats]", "excess NLL [nats]",
               "NFE test [evals]", "train [s]"]
    body = [["gaussian_mixture", "torchode_dopri5", "yes", "14.212", "14.212", "0.631", "80", "4.4"],
            ["8gaussians", "dopri5", "yes", "3.100", "3.200", "0.400", "68", "4.5"]]
    text = fold_table(headers, body, 3, width=100)
    assert "gaussian_mixture  torchode_dopri5" in text and "14.212" in text
    assert all(len(line) <= 100 for line in text.splitlines())


def test_widths_leave_a_table_that_fits_to_rich() -> None:
    assert column_widths(["a", "b"], [["x", "y"]], 1, 100) is None
    labels = ["n" * (LABEL_MIN_WIDTH + 10)]
    widths = column_widths(["name", "value [unit]"], [[labels[0], "1.0"]], 1, 40)
    assert widths == [LABEL_MIN_WIDTH + 4, len("[unit]") + 4]  # the room left is shared out evenly
    # too narrow for the label whole: it folds a little, down to LABEL_FLOOR; narrower still, rich decides
    assert column_widths(["name", "value [unit]"], [[labels[0], "1.0"]], 1, 30) == [LABEL_MIN_WIDTH - 2, 6]
    assert column_widths(["name", "value [unit]"], [[labels[0], "1.0"]], 1, 12) is None
