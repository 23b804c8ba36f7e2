"""Progress of a sweep: a live, width-aware display on a terminal (rich), plain log lines otherwise.

On a terminal the display shows, from the first moment, the grid's size, the executor and the run folder;
then an overall bar of the cells (finished, running, elapsed time and an estimate of the time left); one
line per running cell — its iteration, training loss (in its objective's unit), dynamics evaluations per
iteration and iterations per second, or a spinner with the phase and its elapsed time while it is evaluated;
and, above the live area, one line per finished cell with its status. Labels follow the one labelling rule
(:mod:`cnfbench.labels`: the axes that vary, short form); where the width is short the numbers give way first
(rate, then NFE, then the bar), and a label is shortened only at a token boundary, keeping the parts that tell
running cells apart. Colours only on a terminal; ``NO_COLOR`` is respected (rich).

Anywhere else (CI, files, pipes) every event is a plain line: a cell's start, a line per tenth of its
training, its evaluation phases and its end, each prefixed by ``[cell i/N]``, so that lines of cells that
run at once stay attributable. ``cell i/N`` is always the cell's place in the sweep; the order cells finish in
is a count (``2/4 finished``). When a sweep is interrupted, :meth:`Progress.close` says how many cells finished,
how many were interrupted and where, and how many never started. Every method may be called from any thread.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from cnfbench.cells import Cell
from cnfbench.labels import break_label, cell_labels, shorten_all
from cnfbench.messages import one_line, plural

PHASE_TEXT = {"start": "waiting for a worker", "train": "training", "validate": "validation NLL",
              "eval": "test NLL, row's solver", "ref": "test NLL, reference solve", "mass": "mass on a 2D grid",
              "samples": "sample quality", "entropy": "true entropy", "keep_model": "saving the model"}
"""What the display says a cell is doing in each phase its worker reports."""


def short_labels(cells: list[Cell]) -> dict[str, str]:
    """A label per cell by the one labelling rule (:func:`cnfbench.labels.cell_labels`, with the seed when it
    varies)."""
    return cell_labels(cells)


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


def _fold_line(text: str, width: int) -> str:
    """A finished line folded to ``width`` at token boundaries; one that names its cell after `` — `` breaks
    there first, so that the label stays whole on a line of its own."""
    head, dash, label = text.partition(" — ")
    if len(text) <= width or not dash or len(label) + 4 > width:
        return break_label(text, width)
    return f"{break_label(head, width)}\n  — {label}"


def _where_stopped(reason: str) -> str:
    """Where an interrupted row's reason says the cell was (``in the training forward pass at iteration 12``):
    the words between :data:`~cnfbench.contracts.INTERRUPTED` and the components; ``""`` when it does not say."""
    from cnfbench.contracts import INTERRUPTED

    if not reason.startswith(INTERRUPTED):
        return ""
    where = reason[len(INTERRUPTED):].split(" — ")[0].split(": ")[0].strip()
    return "" if where.startswith("(") else where


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
                 quiet: bool = False, run_dir: Any = None, width: int | None = None, compact: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.interactive = (self.stream.isatty() if interactive is None else interactive) and not quiet
        self.quiet = quiet
        self.compact = compact and not self.interactive
        """Off a terminal, from Python (``cnfbench.run``): one display updated in place in a notebook, else only
        the lines that matter (a cell's end, notes); never a line per training tenth or phase."""
        self._display: Any = _NotebookDisplay.open() if self.compact and not quiet else None
        self._shown_at = 0.0
        self.cells = cells if isinstance(cells, list) else []
        self.total_cells = len(cells) if isinstance(cells, list) else int(cells)
        self.labels = short_labels(self.cells) if self.cells else {}
        self.run_dir = run_dir
        self.executor = ""
        self.slots = 1
        self.finished_count = 0
        self.failed_count = 0
        self.interrupted: list[str] = []
        """Where each interrupted cell was stopped (``training, iteration 12/40``)."""
        self.cell_seconds: list[float] = []
        self._running: dict[str, _Running] = {}
        self._notes: set[str] = set()
        self._lock = threading.RLock()
        self._began = time.monotonic()
        self._live: Any = None
        self._console: Any = None
        if self.interactive:
            from rich.console import Console

            self._console = Console(file=self.stream, force_terminal=True, force_jupyter=False, width=width,
                                    highlight=False, soft_wrap=False)

    # ---------------------------------------------------------------------------------------------- output
    def _line(self, text: str, style: str = "") -> None:
        """One finished line: above the live area on a terminal, a plain line elsewhere."""
        if self.quiet:
            return
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(_fold_line(text, self._console.width), style=style))
        elif self._display is not None:
            self._display.finished(text)
            self._refresh(force=True)
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
        self._line(f"cnfbench: {what or plural(self.total_cells, 'cell')}{where}", "bold")

    def begin(self, todo: int, executor: str = "", slots: int = 1) -> None:
        """The sweep starts: ``todo`` cells to run on ``executor`` (``slots`` at a time)."""
        with self._lock:
            self.total_cells, self.executor, self.slots = todo, executor, slots
            self._began = time.monotonic()
            if executor and not self.quiet:
                self._line(f"running {plural(todo, 'cell')} on {executor}, {slots} at a time")
            if self.interactive and todo and self._live is None:
                from rich.live import Live

                self._live = Live(console=self._console, get_renderable=self._render, refresh_per_second=8,
                                  transient=True, redirect_stdout=False, redirect_stderr=False)
                self._live.start()

    def close(self) -> None:
        """The sweep ended: stop the live display and say how long it took and how many cells did what."""
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None
        if self.quiet or not (self.finished_count or self.interrupted):
            return
        self._line(f"{self.counts()} in {duration(time.monotonic() - self._began)} (wall-clock)")
        if self._display is not None:
            self._display.close()

    def counts(self) -> str:
        """``3 cells finished (1 not done), 1 interrupted (training, iteration 12/40), 2 never started``: the
        cells of this sweep by how they ended; the parts that are zero left out, except the finished count."""
        with self._lock:
            parts = [plural(self.finished_count, "cell") + " finished"
                     + (f" ({self.failed_count} not done)" if self.failed_count else "")]
            if self.interrupted:
                where = sorted(set(self.interrupted))
                parts.append(f"{len(self.interrupted)} interrupted ({'; '.join(where)})")
            never = self.total_cells - self.finished_count - len(self.interrupted) - len(self._running)
            if self.interrupted and never > 0:
                parts.append(f"{never} never started")
            return ", ".join(parts)

    # ---------------------------------------------------------------------------------------------- events
    def _label(self, cell: Cell, shared: bool = False) -> str:
        label = self.labels.get(cell.cell_id) or cell.describe()
        return label + (" (shared model: no training)" if shared else "")

    def start_cell(self, index: int, cell: Cell, loss_unit: str = "nats/sample", shared: bool = False) -> None:
        """A cell begins; ``loss_unit`` is its objective's, ``shared`` says it loads a model another cell trained."""
        with self._lock:
            self._running[cell.cell_id] = _Running(index, self._label(cell, shared), cell.budget.iterations,
                                                   cell.budget.seconds, loss_unit, shared)
        self._refresh()
        if not self.interactive and not self.quiet and not self.compact:
            self._line(f"[cell {index}/{self.total_cells}] start {self._label(cell, shared)} (cell {cell.cell_id})")

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
        self._refresh()
        if self.interactive or self.quiet or self.compact:
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
        self._refresh()
        if self.interactive or self.quiet or self.compact or name not in ("eval", "ref", "mass"):
            return
        self._line(f"[cell {running.index}/{self.total_cells}] evaluating {PHASE_TEXT[name]}")

    def end_cell(self, row: dict[str, Any], cell: Cell | None = None) -> None:
        """A cell ended with ``row`` (``cell``: which one, when several run at once)."""
        with self._lock:
            cell_id = cell.cell_id if cell is not None else row.get("cell_id")
            running = self._running.pop(str(cell_id), None)
            status = row.get("status", "?")
            if status == "interrupted":
                self.interrupted.append(_where_stopped(str(row.get("reason") or "")) or self._where(running))
            else:
                self.finished_count += 1
                if status != "done":
                    self.failed_count += 1
            seconds = time.monotonic() - running.started if running else math.nan
            if math.isfinite(seconds) and status != "interrupted":
                self.cell_seconds.append(seconds)
            count = f"{self.finished_count}/{self.total_cells} finished"
        if self.quiet:
            return
        label = running.label if running else (self._label(cell) if cell is not None else str(cell_id))
        lead = f"[cell {running.index}/{self.total_cells}]" if running else "[cell ?]"
        style = {"done": "green", "interrupted": "yellow"}.get(status, "red")
        if status == "done":  # the numbers first: on a terminal a long label is what gets cut
            self._line(f"{lead} done in {duration(seconds)}, {count}: NLL {row.get('nll', math.nan):.3f}, "
                       f"NLL ref {row.get('nll_ref', math.nan):.3f} nats — {label}", style)
        elif status == "interrupted":
            self._line(f"{lead} interrupted ({self.interrupted[-1]}) — {label}", style)
        else:
            self._line(f"{lead} {status}, {count} — {label}: {one_line(row.get('reason', ''), 200)}", style)

    @staticmethod
    def _where(running: _Running | None) -> str:
        """Where a running cell was: ``training, iteration 12/40``, ``test NLL, reference solve`` or
        ``waiting for a worker``."""
        if running is None:
            return "phase unknown"
        if running.phase == "train":
            return f"training, iteration {running.done}" + (f"/{running.iterations}" if running.seconds_budget is None
                                                            else "")
        return PHASE_TEXT.get(running.phase, running.phase)

    # ---------------------------------------------------------------------------------------------- rendering
    def _refresh(self, force: bool = False) -> None:
        """Redraw the notebook display (at most twice a second unless ``force``)."""
        if self._display is None:
            return
        now = time.monotonic()
        if not force and now - self._shown_at < 0.5:
            return
        self._shown_at = now
        with self._lock:
            lines = [f"cells: {self.finished_count}/{self.total_cells} finished · {len(self._running)} running · "
                     f"{duration(now - self._began)} elapsed · ETA {duration(self.eta_seconds())}"]
            for running in sorted(self._running.values(), key=lambda r: r.index):
                lines.append(f"[cell {running.index}/{self.total_cells}] {running.label}: "
                             + " · ".join(self._status_parts(running)))
        self._display.show(lines)

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
            width = self._console.width if self._console is not None else 100
            overall = Table.grid(padding=(0, 1))
            words = [f"{self.finished_count}/{self.total_cells} finished", f"{len(self._running)} running",
                     f"{duration(now - self._began)} elapsed", f"ETA {duration(self.eta_seconds())}"]
            text = " · ".join(words)
            bar_width = min(24, width - len("cells") - len(text) - 2)
            if bar_width < 8:  # the elapsed time gives way to the bar first
                text = " · ".join(words[:2] + words[3:])
                bar_width = min(24, width - len("cells") - len(text) - 2)
            parts: list[Any] = [Text("cells", style="bold")]
            if bar_width >= 8:
                parts.append(ProgressBar(total=max(self.total_cells, 1), completed=self.finished_count,
                                         width=bar_width))
            parts.append(Text(text, no_wrap=True, overflow="ellipsis"))
            overall.add_row(*parts)
            running = sorted(self._running.values(), key=lambda r: r.index)
            leads = [f"[cell {r.index}/{self.total_cells}]" for r in running]
            lead_width = max((len(lead) for lead in leads), default=0)
            statuses = [self._status_parts(r) for r in running]
            labels = [r.label for r in running]
            # The richest layout that shows the loss with every label whole, else with the labels kept apart (the
            # parts all running cells share dropped); then the same with the iterations alone; else the leanest,
            # the labels cut at a token boundary. The rate, then the NFE, then the bar give way first.
            tries = [(layout, whole) for layouts in ([(16, 4), (16, 3), (16, 2), (10, 2), (0, 2)], [(0, 1)])
                     for whole in (True, False) for layout in layouts]
            chosen, shown = None, labels
            for (bar, keep), whole in tries:
                status_width = max((len(" · ".join(parts[:keep])) for parts in statuses), default=0)
                room = width - lead_width - 1 - (bar + 1 if bar else 0) - status_width - 1
                if whole and room >= max((len(label) for label in labels), default=0):
                    chosen = (bar, keep)
                    break
                if not whole and room >= 12:
                    apart = shorten_all(labels, room)
                    if len(set(apart)) == len(apart) and not any(label.endswith("…") for label in apart):
                        chosen, shown = (bar, keep), apart
                        break
            if chosen is None:
                chosen = (0, 1)
                status_width = max((len(parts[0]) for parts in statuses), default=0)
                shown = shorten_all(labels, max(width - lead_width - status_width - 3, 12))
            bar, keep = chosen
            cells = Table.grid(padding=(0, 1))
            for lead, label, r, parts in zip(leads, shown, running, statuses, strict=True):
                if r.phase == "train" and r.iterations and r.done:
                    widget: Any = ProgressBar(total=r.iterations, completed=r.done, width=bar) if bar else Text("")
                else:
                    if r.spinner is None:
                        r.spinner = Spinner("dots")
                    r.spinner.text = Text(duration(now - r.phase_started), style="dim")
                    widget = r.spinner
                cells.add_row(Text(lead, style="dim"), Text(label, no_wrap=True), widget,
                              Text(" · ".join(parts[:keep]), no_wrap=True, overflow="ellipsis"))
            return Group(overall, cells)

    @staticmethod
    def _status_parts(running: _Running) -> list[str]:
        """What a running cell's line says, most important first: its iterations, loss (with its unit), NFE per
        iteration and rate while it trains; its phase otherwise."""
        if running.phase == "train" and running.iterations and running.done:
            parts = [f"{running.done}/{running.iterations} it", f"loss {running.loss:.3f} {running.loss_unit}"]
            if math.isfinite(running.nfe):
                parts.append(f"{running.nfe:.0f} NFE/it")
            if math.isfinite(running.rate):
                parts.append(f"{running.rate:.1f} it/s")
            return parts
        return [PHASE_TEXT.get(running.phase, running.phase)]


class _NotebookDisplay:
    """One output area of a Jupyter notebook, updated in place: the sweep's state, then the finished lines."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.lines: list[str] = []
        self.state: list[str] = []

    @classmethod
    def open(cls) -> _NotebookDisplay | None:
        """The display, when this runs in a notebook kernel; ``None`` elsewhere."""
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return None
        shell = get_ipython()
        if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
            return None
        return cls(display(_text(""), display_id=True))

    def show(self, state: list[str]) -> None:
        self.state = state
        self.handle.update(_text("\n".join([*self.lines[-6:], *state])))

    def finished(self, line: str) -> None:
        self.lines.append(line)

    def close(self) -> None:
        self.handle.update(_text("\n".join(self.lines[-6:])))


def _text(text: str) -> Any:
    from IPython.display import Pretty

    return Pretty(text)
