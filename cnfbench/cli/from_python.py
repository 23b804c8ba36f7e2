"""``cnfbench.run(...)``: the ``run`` command from Python (a notebook, a script), returning its rows as a frame.

The keyword arguments are the command's options with underscores (``solver="euler,dopri5"`` or a list,
``seeds=2``, ``executor="process[workers=2]"``, ``retry_failed=False``, ``plugin=["my.py"]``); they go through
the same parsing and checks as on the command line, so a bad one raises :class:`ValueError` with the same one
line (raised, never also printed), and nothing is written. Progress is compact: in a notebook one output area
updated in place, elsewhere a line per finished cell on ``sys.stderr`` (``quiet=True`` silences it). The summary is
shown once when the run ends — as an HTML table in a notebook (:class:`RunSummary` has ``_repr_html_``), as the
command's text table elsewhere — and the rows come back as a frame.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import click

_ALIASES = {"plugin": "plugins", "config": "config_file"}


class _Tee(io.TextIOBase):
    """Writes to ``stream`` and keeps a copy; holds back ``Error:`` lines (they become the exception's message)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        shown = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("Error: "))
        if shown:
            self.stream.write(shown)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def _arguments(options: dict[str, Any]) -> list[str]:
    """``options`` as the ``run`` command's command line."""
    from cnfbench.cli.run import run as command

    params = {param.name: param for param in command.params if isinstance(param, click.Option)}
    argv: list[str] = []
    for key, value in options.items():
        name = _ALIASES.get(key, key)
        param = params.get(name)
        if param is None:
            from cnfbench.messages import did_you_mean

            known = sorted({*params, *_ALIASES} - {"plugins", "config_file"})
            raise ValueError(f"unknown option {key!r} of cnfbench.run; options: {', '.join(known)}"
                             f"{did_you_mean(key, known)}")
        if value is None:
            continue
        if param.is_flag:
            if param.secondary_opts:  # --retry-failed/--no-retry-failed
                argv.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                argv.append(param.opts[0])
            continue
        values: Iterable[Any] = value if isinstance(value, (list, tuple)) else [value]
        if not param.multiple:
            values = [",".join(map(str, values))]
        for item in values:
            argv += [param.opts[0], str(item)]
    return argv


def run(**options: Any) -> Any:
    """Train and evaluate a grid as ``cnfbench run`` does, and return its cells' rows (a pandas DataFrame).

    ``cnfbench.run(solver="euler,dopri5", seeds=2, iterations=100, name="nb1")``; without ``name`` the run
    gets the command's default name. A run interrupted by Ctrl-C returns the rows finished so far.
    """
    from cnfbench.cli.run import FROM_PYTHON, PythonCall
    from cnfbench.run_folder import load_results
    from cnfbench.runner import default_run_name

    if options.get("dry_run"):
        raise ValueError("cnfbench.run does not take dry_run; use the command line's --dry-run")
    options = {"name": options.pop("name", None) or default_run_name(), **options}
    argv = ["run", *_arguments(options)]
    from cnfbench.cli import main

    tee = _Tee(sys.stderr)
    saved = sys.stderr
    sys.stderr = tee
    call = PythonCall()
    token = FROM_PYTHON.set(call)
    try:
        code = main.main(args=argv, prog_name="cnfbench", standalone_mode=False)
    except SystemExit as exc:  # a usage error, said on one line (held back: it is the exception's message)
        code = exc.code
    finally:
        FROM_PYTHON.reset(token)
        sys.stderr = saved
    if code not in (0, 130, None):
        errors = [line for line in tee.copy.getvalue().splitlines() if line.startswith("Error: ")]
        raise ValueError(errors[-1][len("Error: "):] if errors else f"cnfbench run exited with {code}")
    if call.rows is not None and not options.get("quiet"):
        _show(RunSummary(call.rows, call.notes, call.interrupted, call.results))
    run_dir = Path(options.get("out") or "results") / options["name"]
    cells = load_results(run_dir)
    try:
        ids = {cell["cell_id"] for cell in json.loads((run_dir / "run.json").read_text())["cells"]}
    except (OSError, ValueError, KeyError, TypeError):
        return cells
    return cells[cells["cell_id"].isin(ids)].reset_index(drop=True)


class RunSummary:
    """The end-of-run summary of :func:`run`: the command's text table (``str``) and an HTML table for notebooks
    (``_repr_html_``), with the flagged-cell notes."""

    def __init__(self, rows: Any, notes: list[str], interrupted: str = "", results: str = "") -> None:
        from cnfbench.summary import summary_table

        self.table = summary_table(rows)
        self.notes = notes
        self.interrupted = interrupted
        self.results = results

    def __str__(self) -> str:
        from cnfbench.summary import render
        from cnfbench.text_tables import terminal_width

        lead = [self.interrupted] if self.interrupted else []
        tail = [self.results] if self.results else []
        return "\n".join([*lead, f"{HEADING}:", render(self.table, self.notes, width=terminal_width()), *tail])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from html import escape

        from cnfbench.summary import AXIS_NAMES

        if self.table.empty:
            return "<p>(no cells)</p>"
        shown = self.table.drop(columns=["reason"]) if "reason" in self.table else self.table
        head = "".join(f"<th>{escape(str(column))}</th>" for column in shown.columns)
        body = []
        for record in shown.to_dict("records"):
            style = ' style="color:#b00"' if record.get("valid") == "NO (!)" else ""
            cells = "".join(f'<td style="text-align:{"left" if column in (*AXIS_NAMES, "valid") else "right"}">'
                            f"{escape(str(value))}</td>" for column, value in record.items())
            body.append(f"<tr{style}>{cells}</tr>")
        reasons = [f"not done: {escape(str(r))}" for r in self.table.get("reason", []) if str(r) not in ("", "—")]
        notes = "".join(f"<p>{line}</p>" for line in [*(escape(n) for n in [self.interrupted] if n), *reasons,
                                                      *(escape(note) for note in self.notes),
                                                      *(escape(n) for n in [self.results] if n)])
        return (f"<p><b>{escape(HEADING)}</b></p><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>{notes}")


HEADING = "Summary (test NLL in nats per sample; NFE = dynamics evaluations per solve, counted by the harness)"
"""What the summary's figures are, said above it."""


def _show(summary: RunSummary) -> None:
    """``summary`` once: rendered by the notebook when there is one, printed to standard output elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None  # type: ignore[assignment]
    if get_ipython is not None and type(get_ipython()).__name__ == "ZMQInteractiveShell":
        display(summary)
    else:
        print(summary)  # noqa: T201 - the run's summary is this function's output
