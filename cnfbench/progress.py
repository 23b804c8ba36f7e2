"""Progress reporting: a live bar on a terminal, plain log lines otherwise (CI, files, pipes)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from cnfbench.cells import Cell


class Progress:
    """Shows which cell is running and how far its training has got."""

    def __init__(self, total_cells: int, stream: TextIO | None = None, interactive: bool | None = None,
                 quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.quiet = quiet
        self.total_cells = total_cells
        self.index = 0
        self.done_cells = 0
        self.iterations = 0
        self.label = ""
        self.loss_unit = "nats/sample"
        self.seconds: float | None = None
        self._last_draw = 0.0
        self._started = time.monotonic()
        self._last_logged_tenth = -1

    def _write(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text)
            self.stream.flush()

    def start_cell(self, index: int, cell: Cell, loss_unit: str = "nats/sample", shared: bool = False) -> None:
        """A cell begins; ``loss_unit`` is its objective's, ``shared`` says it loads a model another cell trained."""
        self.index, self.iterations, self.seconds = index, cell.budget.iterations, cell.budget.seconds
        self.loss_unit = loss_unit
        self.label = f"{cell.describe()}" + (" (shared model: no training)" if shared else "")
        self._started = time.monotonic()
        self._last_logged_tenth = -1
        if not self.interactive:
            self._write(f"[cell {index}/{self.total_cells}] start {self.label}\n")

    def _count(self, done: int) -> str:
        if self.seconds is not None:
            return f"iter {done} ({self.seconds:g} s budget)"
        return f"iter {done}/{self.iterations}"

    def iteration(self, done: int, loss: float) -> None:
        if self.interactive:
            now = time.monotonic()
            if now - self._last_draw < 0.1 and done != self.iterations:
                return
            self._last_draw = now
            width = 24
            filled = int(width * done / max(self.iterations, 1))
            bar = "#" * filled + "-" * (width - filled)
            self._write(f"\r[cell {self.index}/{self.total_cells}] [{bar}] {self._count(done)} "
                        f"loss {loss:.3f} {self.loss_unit}  {self.label[:60]}\033[K")
            return
        if self.seconds is not None:  # a wall-clock budget: a line per tenth of it
            tenth = min(int(10 * (time.monotonic() - self._started) / self.seconds), 9)
        else:
            tenth = (10 * done) // max(self.iterations, 1)
        if tenth > self._last_logged_tenth:
            self._last_logged_tenth = tenth
            self._write(f"[cell {self.index}/{self.total_cells}] {self._count(done)} "
                        f"train loss {loss:.3f} {self.loss_unit}\n")

    def phase(self, name: str) -> None:
        what = {"eval": "test NLL with the row's solver", "ref": "test NLL with the reference solve",
                "mass": "the density's mass on a 2D grid"}.get(name)
        if what:
            if self.interactive:
                self._write(f"\r[cell {self.index}/{self.total_cells}] evaluating {what}…\033[K")
            else:
                self._write(f"[cell {self.index}/{self.total_cells}] evaluating {what}\n")

    def end_cell(self, row: dict[str, Any]) -> None:
        self._ended(f"[cell {self.index}/{self.total_cells}]", self.label, row)

    def finished(self, cell: Cell, row: dict[str, Any]) -> None:
        """A cell ended while others run (parallel executors): one line naming it, whatever ran last."""
        self.done_cells += 1
        self._ended(f"[{self.done_cells}/{self.total_cells} finished]", cell.describe(), row)

    def _ended(self, lead: str, label: str, row: dict[str, Any]) -> None:
        status = row.get("status", "?")
        detail = f"nll={row.get('nll', float('nan')):.3f} nll_ref={row.get('nll_ref', float('nan')):.3f} nats"
        if status != "done":
            detail = str(row.get("reason", ""))[:120]
        prefix = "\r" if self.interactive else ""
        self._write(f"{prefix}{lead} {status}: {label} — {detail}{chr(27) + '[K' if self.interactive else ''}\n")

    def message(self, text: str) -> None:
        """A line that matters even with ``--quiet`` (resume counts, warnings)."""
        prefix = "\r" if self.interactive else ""
        self.stream.write(f"{prefix}{text}\n")
        self.stream.flush()
