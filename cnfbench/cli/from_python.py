"""``cnfbench.run(...)``: the ``run`` command from Python (a notebook, a script), returning its rows as a frame.

The keyword arguments are the command's options with underscores (``solver="euler,dopri5"`` or a list,
``seeds=2``, ``executor="process[workers=2]"``, ``retry_failed=False``, ``plugin=["my.py"]``); they go through
the same parsing and checks as on the command line, so a bad one raises :class:`ValueError` with the same one
line, and nothing is written. Progress goes to ``sys.stderr`` as on the command line (``quiet=True`` silences
it).
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
    """Writes to ``stream`` and keeps a copy (the last error line is the exception's message)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

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
    try:
        code = main.main(args=argv, prog_name="cnfbench", standalone_mode=False)
    except SystemExit as exc:  # a usage error, already said on one line
        code = exc.code
    finally:
        sys.stderr = saved
    if code not in (0, 130, None):
        errors = [line for line in tee.copy.getvalue().splitlines() if line.startswith("Error: ")]
        raise ValueError(errors[-1][len("Error: "):] if errors else f"cnfbench run exited with {code}")
    run_dir = Path(options.get("out") or "results") / options["name"]
    cells = load_results(run_dir)
    try:
        ids = {cell["cell_id"] for cell in json.loads((run_dir / "run.json").read_text())["cells"]}
    except (OSError, ValueError, KeyError, TypeError):
        return cells
    return cells[cells["cell_id"].isin(ids)].reset_index(drop=True)
