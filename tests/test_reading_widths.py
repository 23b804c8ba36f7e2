"""What a run prints reads right at 80, 100 and 160 columns: the summary, its notes and the live lines.

The summary and notes are compared with stored snapshots (``tests/snapshots``; ``CNFBENCH_UPDATE_SNAPSHOTS=1``
rewrites them) and checked for what must hold at any width: no line wider than the terminal, no token cut, the
column set the width calls for, rows in grid order, notes that tell their cells apart.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from cnfbench.config import RunConfig, resolve_cells
from cnfbench.labels import tokens
from cnfbench.progress import Progress, short_labels
from cnfbench.registry import load_registry
from cnfbench.rows import identity_columns
from cnfbench.summary import NOT_STARTED, render, summary_table, validity_notes

SNAPSHOTS = Path(__file__).parent / "snapshots"
WIDTHS = (80, 100, 160)
LABELS = ["dataset", "solver", "trace", "valid", "n"]
FIRST = ["NLL ref [nats]", "excess NLL [nats]", "NFE test [evals]", "train [s]"]


@pytest.fixture(scope="module")
def grid() -> list:
    config = RunConfig(dataset=("8gaussians[n_train=256,n_val=32,n_test=96]",),
                       solver=("euler[steps=10]", "rk4[steps=4]"),
                       trace=("exact", "hutchinson[noise=gaussian,probes=1]"), seeds=2, iterations=40, device="cpu")
    return resolve_cells(config, load_registry([]))


def _rows(grid: list) -> pd.DataFrame:
    """The rows a run of ``grid`` leaves after Ctrl-C: finished in another order than the grid's, the Euler cells
    flagged, one cell interrupted and one never started."""
    rows = []
    for position, cell in enumerate(grid):
        row = {**identity_columns(cell), "status": "done", "reason": "", "valid": True, "validity_reason": "",
               "nll": 3.6 + 0.01 * position, "nll_ref": 3.7 + 0.01 * position, "excess_nll": 0.9,
               "nfe_eval": 10.0 if cell.axes["solver"].name == "euler" else 16.0, "train_time_s": 1.5 + position}
        if cell.axes["solver"].name == "euler":
            row.update(valid=False, validity_reason="the solver's density integrates to 1.084, not 1 "
                                                    "(tolerance 0.03)")
        if position == 6:
            row.update(status="interrupted", reason="interrupted by the user (Ctrl-C) in the training forward "
                       "pass at iteration 12 — rk4[steps=4,adjoint=false], concatsquash[hidden=64-64-64]")
        if position == 7:
            row = {**identity_columns(cell), "status": NOT_STARTED,
                   "reason": "never started (the run was interrupted first)"}
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame


def _snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("CNFBENCH_UPDATE_SNAPSHOTS"):
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text + "\n")
    assert path.exists(), f"no snapshot {path}; CNFBENCH_UPDATE_SNAPSHOTS=1 writes it"
    assert text + "\n" == path.read_text(), f"{name} changed; CNFBENCH_UPDATE_SNAPSHOTS=1 rewrites it"


def _tables(text: str) -> list[list[str]]:
    """The header lines of each table in ``text`` (the lines above each ──── rule)."""
    lines = text.splitlines()
    tables = []
    for index, line in enumerate(lines):
        if line.startswith("─"):
            head = []
            for above in reversed(lines[:index]):
                if not above.strip():
                    break
                head.insert(0, above)
            tables.append(head)
    return tables


@pytest.mark.parametrize("width", WIDTHS)
def test_the_summary_and_its_notes(grid: list, width: int) -> None:
    rows = _rows(grid)
    table = summary_table(rows)
    notes = validity_notes(rows)
    text = render(table, notes, width=width)
    _snapshot(f"summary-{width}.txt", text)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), text
    for label in {*table["solver"], *table["trace"]}:  # every label token printed whole
        for piece in tokens(label):
            assert any(piece.strip() in line for line in lines), (piece, text)
    assert list(table["solver"]) == ["euler[steps=10]"] * 2 + ["rk4[steps=4]"] * 2  # grid order; steps varies
    assert list(table["trace"]) == ["exact", "hutchinson", "exact", "hutchinson"]
    assert list(table["n"]) == ["2", "2", "2", "0/2"]  # done/planned: interrupted and never-started count
    heads = [" ".join(" ".join(head).split()) for head in _tables(text)]
    if width == 160:
        assert len(heads) == 1 and "NLL solver [nats]" in heads[0]
    else:  # the columns that matter first (in as many tables as they need), the rest below, under the same labels
        assert len(heads) >= 2
        first = " ".join(heads[:-1])
        for header in FIRST:
            assert all(word in first for word in header.split())
        assert "solver [nats]" not in first and heads[-1].endswith("n NLL solver [nats]")
        assert all(head.endswith(" ".join(LABELS)) or " ".join(LABELS) in head for head in heads)
    assert len(notes) == len(set(notes)) == 4  # each flagged cell once, and no two alike
    assert all(re.search(r"\(!\) euler\[steps=10\] · (exact|hutchinson) · seed [01] on 8gaussians: ", note)
               for note in notes)
    flat = " ".join(text.split())
    assert "not done: 8gaussians · rk4[steps=4] · hutchinson (0/2 seeds done): interrupted by the user (Ctrl-C) " \
           "in the training forward pass at iteration 12" in flat
    assert "never started (the run was interrupted first)" in flat
    assert not re.search(r"[-—:]…", flat)  # a reason is never cut after a dangling dash


@pytest.mark.parametrize("width", WIDTHS)
def test_live_lines_fit_and_tell_running_cells_apart(grid: list, width: int) -> None:
    stream = io.StringIO()
    progress = Progress(grid, stream=stream, interactive=True, width=width)
    progress.begin(len(grid), "process[workers=4]", 4)
    progress._live.stop()
    for index in (1, 3, 5, 7):  # both Euler and both rk4 cells of seed 0 at once
        cell = grid[index - 1]
        progress.start_cell(index, cell)
        progress.update(cell.cell_id, "iteration", (12, 3.25, 10))
    frame = io.StringIO()
    Console(file=frame, width=width, force_terminal=True, no_color=True).print(progress._render())
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", frame.getvalue())
    assert all(len(line) <= width for line in text.splitlines()), text
    labels = short_labels(grid)
    shown = []
    for index in (1, 3, 5, 7):
        whole = labels[grid[index - 1].cell_id]
        line = next(line for line in text.splitlines() if line.startswith(f"[cell {index}/8] "))
        # whole, or at 80 columns without the part every running cell shares (all four run seed 0)
        label = whole if line.startswith(f"[cell {index}/8] {whole} ") else whole.replace(" · seed 0", "")
        assert line.startswith(f"[cell {index}/8] {label} ") and (label == whole or width == 80), (whole, text)
        shown.append(label)
    assert len(set(shown)) == 4  # running cells can be told apart
    assert "…" not in text and "12/40 it · loss 3.250 nats/sample" in text  # the loss stays; rate, NFE give way
    first = grid[0]
    progress.end_cell({"cell_id": first.cell_id, "status": "done", "nll": 3.5, "nll_ref": 3.6}, first)
    progress.close()
    printed = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue()).splitlines()
    assert all(len(line) <= width for line in printed), printed
    assert any(line.endswith(f"— {labels[first.cell_id]}") for line in printed), printed  # the label whole


@pytest.mark.parametrize("width", WIDTHS)
def test_the_report_table_and_its_notes(grid: list, width: int) -> None:
    from cnfbench import reports

    rows = _rows(grid).assign(nfe_forward_mean=lambda frame: frame["nfe_eval"])
    table = reports.pivot(rows)
    text = reports.to_text(table, width)
    _snapshot(f"report-{width}.txt", text)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), text
    for label in ("euler[steps=10]", "rk4[steps=4]", "hutchinson", "exact"):
        assert any(label in line for line in lines), (label, text)  # labels fit whole at every width here
    flat = " ".join(text.split())
    assert "rk4[steps=4] · hutchinson · seed 0: interrupted" in flat
    assert "rk4[steps=4] · hutchinson · seed 1: not started" in flat
    assert flat.count("(!) euler[steps=10] · ") == 4
