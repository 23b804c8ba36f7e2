"""Progress of a sweep: a live, width-aware display on a terminal (rich), plain log lines otherwise.

On a terminal the display shows, from the first moment, the grid's size, the executor and the run folder;
then an overall bar of the cells (finished, running, elapsed time and an estimate of the time left); one
line per running cell — its iteration, training loss (in its objective's unit), dynamics evaluations per
iteration and iterations per second, or a spinner with the phase and its elapsed time while it is evaluated;
and, above the live area, one line per finished cell with its status. Labels name only the axes that vary
in the grid, cut to the terminal's width. Colours only on a terminal; ``NO_COLOR`` is respected (rich).

Anywhere else (CI, files, pipes) every event is a plain line: a cell's start, a line per tenth of its
training, its evaluation phases and its end, each prefixed by ``[cell i/N]``, so that lines of cells that
run at once stay attributable. Every method may be called from any thread.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from cnfbench.cells import Cell
from cnfbench.families import GRID_AXES

PHASE_TEXT = {"start": "waiting for a worker", "train": "training", "validate": "validation NLL",
              "eval": "test NLL, row's solver", "ref": "test NLL, reference solve", "mass": "mass on a 2D grid",
              "samples": "sample quality", "entropy": "true entropy", "keep_model": "saving the model"}
"""What the display says a cell is doing in each phase its worker reports."""


def short_labels(cells: list[Cell]) -> dict[str, str]:
    """A label per cell naming only the grid axes (and seed) that vary among ``cells``; the components'
    names when nothing varies."""
    varying = [row.key for row in GRID_AXES if len({cell.axes[row.key].label() for cell in cells}) > 1]
    seeds = len({cell.seed for cell in cells}) > 1
    labels = {}
    for cell in cells:
        parts = [cell.axes[key].label() for key in varying]
        if seeds:
            parts.append(f"seed {cell.seed}")
        if not parts:
            parts = [cell.axes[row.key].name for row in GRID_AXES] + [f"seed {cell.seed}"]
        labels[cell.cell_id] = " · ".join(parts)
    return labels


def _cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, an ellipsis marking a cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    if not math.isfinite(seconds):
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class _Running:
    index: int
    label: str
    iterations: int
    seconds_budget: float | None
    loss_unit: str
    shared: bool
    started: float = field(default_factory=time.monotonic)
    phase: str = "start"
    phase_started: float = field(default_factory=time.monotonic)
    done: int = 0
    loss: float = math.nan
    nfe: float = math.nan
    rate: float = math.nan
    logged_tenth: int = -1
    first_iteration: tuple[float, int] | None = None
    spinner: Any = None


class Progress:
    """Reports a sweep as it runs (see the module docstring)."""

    def __init__(self, cells: list[Cell] | int, stream: TextIO | None = None, interactive: bool | None = None,
                 quiet: bool = False, run_dir: Any = None, width: int | None = None) -> None:
        self.stream = stream or sys.stderr
        self.interactive = (self.stream.isatty() if interactive is None else interactive) and not quiet
        self.quiet = quiet
        self.cells = cells if isinstance(cells, list) else []
        self.total_cells = len(cells) if isinstance(cells, list) else int(cells)
        self.labels = short_labels(self.cells) if self.cells else {}
        self.run_dir = run_dir
        self.executor = ""
        self.slots = 1
        self.finished_count = 0
        self.failed_count = 0
        self.cell_seconds: list[float] = []
        self._running: dict[str, _Running] = {}
        self._notes: set[str] = set()
        self._lock = threading.RLock()
        self._began = time.monotonic()
        self._live: Any = None
        self._console: Any = None
        if self.interactive:
            from rich.console import Console

            self._console = Console(file=self.stream, force_terminal=True, width=width, highlight=False,
                                    soft_wrap=False)

    # ---------------------------------------------------------------------------------------------- output
    def _line(self, text: str, style: str = "") -> None:
        """One finished line: above the live area on a terminal, a plain line elsewhere."""
        if self.quiet:
            return
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(text, style=style, overflow="ellipsis", no_wrap=True))
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line that matters even with ``--quiet`` (resume counts, warnings)."""
        if self._console is not None:
            self._console.print(text, markup=False, highlight=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def header(self, what: str = "") -> None:
        """Say at once what will run and where the results go."""
        where = f" → {self.run_dir}" if self.run_dir is not None else ""
        self._line(f"cnfbench: {what or f'{self.total_cells} cell(s)'}{where}", "bold")

    def begin(self, todo: int, executor: str = "", slots: int = 1) -> None:
        """The sweep starts: ``todo`` cells to run on ``executor`` (``slots`` at a time)."""
        with self._lock:
            self.total_cells, self.executor, self.slots = todo, executor, slots
            self._began = time.monotonic()
            if executor and not self.quiet:
                self._line(f"running {todo} cell(s) on {executor}, {slots} at a time")
            if self.interactive and todo and self._live is None:
                from rich.live import Live

                self._live = Live(console=self._console, get_renderable=self._render, refresh_per_second=8,
                                  transient=True, redirect_stdout=False, redirect_stderr=False)
                self._live.start()

    def close(self) -> None:
        """The sweep ended: stop the live display and say how long it took."""
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None
        if self.finished_count and not self.quiet:
            failed = f", {self.failed_count} not done" if self.failed_count else ""
            self._line(f"{self.finished_count} cell(s) finished{failed} in "
                       f"{duration(time.monotonic() - self._began)} (wall-clock)")

    # ---------------------------------------------------------------------------------------------- events
    def _label(self, cell: Cell, shared: bool = False) -> str:
        label = self.labels.get(cell.cell_id) or cell.describe()
        return label + (" (shared model: no training)" if shared else "")

    def start_cell(self, index: int, cell: Cell, loss_unit: str = "nats/sample", shared: bool = False) -> None:
        """A cell begins; ``loss_unit`` is its objective's, ``shared`` says it loads a model another cell trained."""
        with self._lock:
            self._running[cell.cell_id] = _Running(index, self._label(cell, shared), cell.budget.iterations,
                                                   cell.budget.seconds, loss_unit, shared)
        if not self.interactive and not self.quiet:
            self._line(f"[cell {index}/{self.total_cells}] start {cell.describe()}"
                       + (" (shared model: no training)" if shared else ""))

    def update(self, cell_id: str, kind: str, value: Any) -> None:
        """What a cell's executor reported: ``("iteration", (done, loss[, nfe]))``, ``("phase", name)`` or
        ``("note", line)`` (said once per run for each kind of note: the words before its figures)."""
        with self._lock:
            if kind == "note":
                kind_of_note = str(value).split("(", 1)[0]
                if kind_of_note not in self._notes:
                    self._notes.add(kind_of_note)
                    self.message(f"note: {value}")
                return
            running = self._running.get(cell_id)
            if running is None:
                return
            if kind == "iteration":
                self._iteration(running, *value)
            elif kind == "phase":
                self._phase(running, str(value))

    def _iteration(self, running: _Running, done: int, loss: float, nfe: float = math.nan) -> None:
        now = time.monotonic()
        if running.phase != "train":
            running.phase, running.phase_started = "train", now
        if running.first_iteration is None:
            running.first_iteration = (now, int(done))
        elif done > running.first_iteration[1]:
            running.rate = (done - running.first_iteration[1]) / max(now - running.first_iteration[0], 1e-9)
        running.done, running.loss, running.nfe = int(done), float(loss), float(nfe)
        if self.interactive or self.quiet:
            return
        if running.seconds_budget is not None:  # a wall-clock budget: a line per tenth of it
            tenth = min(int(10 * (now - running.phase_started) / running.seconds_budget), 9)
        else:
            tenth = (10 * running.done) // max(running.iterations, 1)
        if tenth > running.logged_tenth:
            running.logged_tenth = tenth
            nfe_text = f", {nfe:.0f} NFE/iter" if math.isfinite(nfe) else ""
            self._line(f"[cell {running.index}/{self.total_cells}] {self._count(running)} train loss "
                       f"{loss:.3f} {running.loss_unit}{nfe_text}")

    def _phase(self, running: _Running, name: str) -> None:
        if name == running.phase:
            return
        running.phase, running.phase_started = name, time.monotonic()
        if self.interactive or self.quiet or name not in ("eval", "ref", "mass"):
            return
        self._line(f"[cell {running.index}/{self.total_cells}] evaluating {PHASE_TEXT[name]}")

    def end_cell(self, row: dict[str, Any], cell: Cell | None = None) -> None:
        """A cell ended with ``row`` (``cell``: which one, when several run at once)."""
        with self._lock:
            cell_id = cell.cell_id if cell is not None else row.get("cell_id")
            running = self._running.pop(str(cell_id), None)
            self.finished_count += 1
            status = row.get("status", "?")
            if status != "done":
                self.failed_count += 1
            seconds = time.monotonic() - running.started if running else math.nan
            if math.isfinite(seconds):
                self.cell_seconds.append(seconds)
        if self.quiet:
            return
        index = running.index if running else self.finished_count
        label = running.label if running and self.interactive else (cell.describe() if cell is not None else
                                                                     (running.label if running else ""))
        lead = f"[{self.finished_count}/{self.total_cells} finished]" if self.slots > 1 else \
            f"[cell {index}/{self.total_cells}]"
        style = {"done": "green", "interrupted": "yellow"}.get(status, "red")
        if status == "done":  # the numbers first: on a terminal a long label is what gets cut
            self._line(f"{lead} done in {duration(seconds)}: nll={row.get('nll', math.nan):.3f} "
                       f"nll_ref={row.get('nll_ref', math.nan):.3f} nats — {label}", style)
        else:
            self._line(f"{lead} {status}: {label} — {str(row.get('reason', ''))[:160]}", style)

    # ---------------------------------------------------------------------------------------------- rendering
    @staticmethod
    def _count(running: _Running) -> str:
        if running.seconds_budget is not None:
            return f"iter {running.done} ({running.seconds_budget:g} s budget)"
        return f"iter {running.done}/{running.iterations}"

    def eta_seconds(self) -> float:
        """Seconds left: the mean time of a finished cell times the cells not finished, over the slots."""
        with self._lock:
            if not self.cell_seconds:
                return math.nan
            left = self.total_cells - self.finished_count
            mean = sum(self.cell_seconds) / len(self.cell_seconds)
            in_flight = sum(min(time.monotonic() - r.started, mean) for r in self._running.values())
            return max(0.0, (left * mean - in_flight) / max(self.slots, 1))

    def _render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            now = time.monotonic()
            overall = Table.grid(padding=(0, 1))
            overall.add_column(no_wrap=True)
            overall.add_column(width=24, no_wrap=True)
            overall.add_column(no_wrap=True, overflow="ellipsis")
            overall.add_row(Text("cells", style="bold"),
                            ProgressBar(total=max(self.total_cells, 1), completed=self.finished_count, width=24),
                            Text(f"{self.finished_count}/{self.total_cells} finished, {len(self._running)} running"
                                 f" · {duration(now - self._began)} elapsed · ETA {duration(self.eta_seconds())}"))
            width = self._console.width if self._console is not None else 100
            rows = []
            for running in sorted(self._running.values(), key=lambda r: r.index):
                lead = f"[{running.index}/{self.total_cells}]"
                if running.phase == "train" and running.iterations and running.done:
                    bar: Any = ProgressBar(total=running.iterations, completed=running.done, width=16)
                    rate = f" · {running.rate:.1f} it/s" if math.isfinite(running.rate) else ""
                    nfe = f" · {running.nfe:.0f} NFE/it" if math.isfinite(running.nfe) else ""
                    status = (f"{running.done}/{running.iterations} it · loss {running.loss:.3f} "
                              f"{running.loss_unit}{nfe}{rate}")
                else:
                    if running.spinner is None:
                        running.spinner = Spinner("dots")
                    running.spinner.text = Text(duration(now - running.phase_started), style="dim")
                    bar = running.spinner
                    status = PHASE_TEXT.get(running.phase, running.phase)
                rows.append((lead, running.label, bar, status))
            # The numbers keep their room; the labels share what is left (at least 12 columns), cut at their end.
            room = width - max((len(lead) for lead, *_ in rows), default=0) - 16 - 3
            label_width = max(12, room - max((len(status) for *_, status in rows), default=0))
            cells = Table.grid(padding=(0, 1))
            for lead, label, bar, status in rows:
                cells.add_row(Text(lead, style="dim"), Text(_cut(label, label_width)), bar,
                              Text(_cut(status, max(8, room - label_width))))
            return Group(overall, cells)
