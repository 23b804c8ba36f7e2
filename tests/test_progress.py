"""The sweep's progress: plain attributable lines off a terminal, a live display that fits the terminal on one."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from cnfbench.cells import Cell
from cnfbench.config import RunConfig, resolve_cells
from cnfbench.contracts import INTERRUPTED
from cnfbench.progress import Progress, duration, short_labels
from cnfbench.registry import load_registry


@pytest.fixture(scope="module")
def cells() -> list[Cell]:
    config = RunConfig(dataset=("8gaussians[n_train=256,n_val=32,n_test=96]",),
                       field=("concatsquash[hidden=64-64-64,activation=tanh]",),
                       solver=("euler[steps=10]", "dopri5[rtol=1e-5,atol=1e-5]"), seeds=2, iterations=10,
                       device="cpu")
    return resolve_cells(config, load_registry([]))


def _ansi_free(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_labels_name_only_what_varies(cells: list[Cell]) -> None:
    labels = short_labels(cells)  # the summary's short form: parameters with one value in the grid left out
    assert sorted(labels.values()) == sorted(f"{solver} · seed {seed}" for seed in (0, 1)
                                             for solver in ("euler", "dopri5"))
    (one,) = short_labels(cells[:1]).values()
    assert one == "8gaussians · concatsquash · mle · euler · exact · adam · seed 0"


def test_lines_off_a_terminal_say_which_cell_they_are_about(cells: list[Cell]) -> None:
    stream = io.StringIO()
    progress = Progress(cells[:2], stream=stream, interactive=False, run_dir="results/x")
    progress.header("2 cells = 2 seeds")
    progress.begin(2, "process[workers=2]", 2)
    first, second = cells[:2]
    progress.start_cell(1, first)
    progress.start_cell(2, second)
    progress.update(second.cell_id, "iteration", (10, 3.25, 20))
    progress.update(first.cell_id, "phase", "ref")
    progress.end_cell({"cell_id": first.cell_id, "status": "done", "nll": 2.5, "nll_ref": 2.75}, first)
    progress.end_cell({"cell_id": second.cell_id, "status": "timeout", "reason": "timeout after 9.0 s"}, second)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "cnfbench: 2 cells = 2 seeds → results/x"
    assert lines[1] == "running 2 cells on process[workers=2], 2 at a time"
    assert lines[2] == f"[cell 1/2] start seed 0 (cell {first.cell_id})"
    assert lines[3] == f"[cell 2/2] start seed 1 (cell {second.cell_id})"
    assert "[cell 2/2] iter 10/10 train loss 3.250 nats/sample, 20 NFE/iter" in lines
    assert "[cell 1/2] evaluating test NLL, reference solve" in lines
    assert any(line.startswith("[cell 1/2] done in ") and ", 1/2 finished: NLL 2.500, NLL ref 2.750 nats — seed 0"
               in line for line in lines)
    assert "[cell 2/2] timeout, 2/2 finished — seed 1: timeout after 9.0 s" in lines
    assert lines[-1].startswith("2 cells finished (1 not done) in ")


def test_an_interrupted_sweep_counts_finished_interrupted_and_never_started(cells: list[Cell]) -> None:
    stream = io.StringIO()
    progress = Progress(cells, stream=stream, interactive=False)
    progress.begin(4, "process[workers=2]", 2)
    first, second, third, _ = cells
    progress.start_cell(2, second)
    progress.start_cell(3, third)
    progress.update(second.cell_id, "iteration", (4, 3.0, 10))
    progress.update(third.cell_id, "phase", "ref")
    progress.end_cell({"cell_id": second.cell_id, "status": "interrupted", "reason": "interrupted"}, second)
    progress.end_cell({"cell_id": third.cell_id, "status": "interrupted",  # the worker says where, in its row
                       "reason": f"{INTERRUPTED} in the reference solve (test pass) — dopri5"}, third)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "[cell 2/4] interrupted (training, iteration 4/10) — dopri5 · seed 0" in lines \
        or "[cell 2/4] interrupted (training, iteration 4/10) — euler · seed 1" in lines
    assert any(line.startswith("[cell 3/4] interrupted (in the reference solve (test pass)) — ") for line in lines)
    assert not any("finished" in line and "[cell" in line for line in lines)  # no cell counted as finished
    assert lines[-1].startswith("0 cells finished, 2 interrupted (in the reference solve (test pass); training, "
                                "iteration 4/10), 2 never started in ")


@pytest.mark.parametrize("width", [80, 100, 160])
def test_the_live_display_fits_the_terminal(cells: list[Cell], width: int) -> None:
    stream = io.StringIO()
    progress = Progress(cells, stream=stream, interactive=True, run_dir="results/x", width=width)
    progress.header("4 cells = 2 solvers × 2 seeds")
    progress.begin(4, "process[workers=2]", 2)
    progress._live.stop()  # drawn below by hand, to read one frame
    first, second, third = cells[:3]
    for index, cell in enumerate((first, second), start=1):
        progress.start_cell(index, cell)
    progress.update(first.cell_id, "phase", "train")
    progress.update(first.cell_id, "iteration", (2, 3.5, 20))
    progress.update(first.cell_id, "iteration", (3, 3.4, 20))
    progress.update(second.cell_id, "phase", "ref")
    progress.end_cell({"cell_id": second.cell_id, "status": "done", "nll": 2.5, "nll_ref": 2.75}, second)
    progress.start_cell(3, third)
    frame = io.StringIO()
    Console(file=frame, width=width, force_terminal=True).print(progress._render())
    text = _ansi_free(frame.getvalue())
    assert max(len(line) for line in text.splitlines()) <= width, text
    assert "1/4 finished · 2 running" in text and "ETA" in text
    labels = short_labels(cells)
    for cell, index in ((first, 1), (third, 3)):  # every running cell's label whole, its number the cell's place
        assert re.search(rf"\[cell {index}/4\] +{re.escape(labels[cell.cell_id])} ", text), text
    assert "3/10 it · loss 3.400 nats/sample" in text
    assert "20 NFE/it" in text or width < 100  # on a narrow terminal the rate, then the NFE, give way
    assert "it/s" in text or width < 160
    assert "…" not in text
    assert "waiting for a worker" in text  # the third cell has not reported yet
    assert progress.eta_seconds() >= 0
    progress.close()
    printed = _ansi_free(stream.getvalue())
    assert "cnfbench: 4 cells = 2 solvers × 2 seeds → results/x" in printed
    assert "[cell 2/4] done in" in printed and "1/4 finished: NLL 2.500" in printed
    assert max(len(line) for line in printed.splitlines()) <= width


def test_long_labels_shorten_at_a_boundary_and_stay_apart() -> None:
    config = RunConfig(dataset=("8gaussians[n_train=256,n_val=32,n_test=96]",),
                       solver=("euler[steps=10]", "euler[steps=20]", "rk4[steps=4]", "rk4[steps=8]"),
                       trace=("exact", "hutchinson[noise=gaussian]", "hutchinson[noise=rademacher]"),
                       iterations=10, device="cpu")
    grid = resolve_cells(config, load_registry([]))
    progress = Progress(grid, stream=io.StringIO(), interactive=True, width=80)
    progress.begin(len(grid), "process[workers=4]", 4)
    progress._live.stop()
    for index, cell in enumerate(grid[:4], start=1):
        progress.start_cell(index, cell)
        progress.update(cell.cell_id, "iteration", (5, 3.0, 10))
    frame = io.StringIO()
    Console(file=frame, width=80, force_terminal=True).print(progress._render())
    rows = [line for line in _ansi_free(frame.getvalue()).splitlines() if line.startswith("[cell")]
    assert len(rows) == 4 and all(len(line) <= 80 for line in rows)
    shown = [line.split("]", 1)[1].split("  ")[0].strip() for line in rows]
    assert len(set(shown)) == 4, shown  # running cells can be told apart
    assert not any(re.search(r"[\w=]…", line) for line in rows)  # nothing cut inside a token
    progress.close()


def test_quiet_prints_only_what_matters(cells: list[Cell]) -> None:
    stream = io.StringIO()
    progress = Progress(cells[:1], stream=stream, quiet=True)
    progress.begin(1, "process", 1)
    progress.start_cell(1, cells[0])
    progress.update(cells[0].cell_id, "iteration", (10, 1.0, 10))
    progress.message("warning: something")
    progress.end_cell({"cell_id": cells[0].cell_id, "status": "done", "nll": 1.0, "nll_ref": 1.0}, cells[0])
    progress.close()
    assert stream.getvalue() == "warning: something\n"


def test_durations_read_as_people_say_them() -> None:
    assert [duration(s) for s in (4.4, 65, 3725, float("nan"))] == ["4 s", "1 min 05 s", "1 h 02 min", "—"]
