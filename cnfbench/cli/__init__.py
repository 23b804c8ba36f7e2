"""The ``cnfbench`` command line: the command group, one module per command group beside it.

``run`` (:mod:`cnfbench.cli.run`), ``plugins`` (:mod:`cnfbench.cli.plugins`),
``report``/``compare``/``merge``, ``sample`` and ``new-plugin`` register themselves on
:data:`main` when imported. Every module here imports torch, pandas and
matplotlib only inside its commands, so ``cnfbench --help`` and
``cnfbench <command> --help`` start at once.

Every user error is one ``Error:`` line on stderr with exit code 2, before
anything is written.

Help pages are folded by :class:`WholeWordFormatter` at spaces only, never
inside a word, so an example such as ``euler[steps=10],dopri5[rtol=1e-5]``
stays one piece that can be copied; an option whose help holds a word wider
than the help column gets its help on the lines below it. Every option's
help ends with ``[default: …]`` (flags: ``[default: off]``).
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

from cnfbench import __version__

if TYPE_CHECKING:
    from cnfbench.registry import Registry
    from cnfbench.run_folder import Run

USAGE_ERROR = 2
INTERRUPTED = 130

HELP_MAX_WIDTH = 120
"""Help pages use the terminal's width (``COLUMNS`` when set) up to this many columns."""

BELOW_INDENT = 4
"""How much further than its option an option's help is indented when it goes on the lines below it."""


_KEEP = "\x00"
"""Stands for a space no line may break at while :func:`fold_words` folds."""


def _bracket_end(words: list[str], start: int) -> int:
    """The index of the word that closes the bracketed note opening at ``words[start]`` (``start`` itself when
    that word opens none, or the note never closes)."""
    depth = words[start].count("[") - words[start].count("]")
    if not words[start].startswith("[") or depth <= 0:
        return start
    for end in range(start + 1, len(words)):
        depth += words[end].count("[") - words[end].count("]")
        if depth <= 0:
            return end
    return start


def _clauses(words: list[str], room: int, line: int) -> list[str]:
    """A bracketed note too wide for ``room``, in pieces: each clause (up to a ``;``) whole where it fits
    ``room``, else a label such as ``[default:`` kept with the word after it where that fits ``line``."""
    clauses: list[list[str]] = [[]]
    for word in words:
        clauses[-1].append(word)
        if word.endswith(";"):
            clauses.append([])
    pieces: list[str] = []
    for clause in filter(None, clauses):
        if len(" ".join(clause)) <= room:
            pieces.append(_KEEP.join(clause))
            continue
        index = 0
        while index < len(clause):
            word = clause[index]
            if word.endswith(":") and index + 1 < len(clause) and len(word) + 1 + len(clause[index + 1]) <= line:
                pieces.append(word + _KEEP + clause[index + 1])
                index += 2
            else:
                pieces.append(word)
                index += 1
    return pieces


def _kept_together(words: list[str], room: int, line: int) -> list[str]:
    """``words`` with the spaces no line should break at held by :data:`_KEEP`: inside a bracketed note such as
    ``[default: 1; valid: 1 to 10000]`` when it fits ``room``, else inside its clauses (:func:`_clauses`)."""
    pieces: list[str] = []
    index = 0
    while index < len(words):
        end = _bracket_end(words, index)
        note = words[index:end + 1]
        pieces.extend([_KEEP.join(note)] if len(" ".join(note)) <= room else _clauses(note, room, line))
        index = end + 1
    return pieces


def fold_words(text: str, width: int, indent: str = "") -> list[str]:
    """``text`` (one paragraph) folded onto lines of at most ``width`` columns at spaces only: a word — an
    example such as ``dopri5[rtol=1e-5,atol=1e-5]``, a hyphenated name — is never split; one wider than the
    line stands alone on its line. A short bracketed note stays on one line, and a label such as ``[default:``
    stays with the word after it."""
    line = width - len(indent)
    wrapper = textwrap.TextWrapper(width, initial_indent=indent, subsequent_indent=indent, break_long_words=False,
                                   break_on_hyphens=False)
    pieces = _kept_together(text.split(), line * 2 // 3, line)
    return [folded.replace(_KEEP, " ") for folded in wrapper.wrap(" ".join(pieces))]


def fold_command(line: str, width: int, indent: str = "") -> list[str]:
    """A shell command line in at most ``width`` columns: folded at spaces, each folded line ending in `` \\``
    (the shell's line continuation, so the lines still paste as one command) and the rest indented 4 more."""
    if len(indent) + len(line) <= width:
        return [indent + line]
    wrapper = textwrap.TextWrapper(width - 2, initial_indent=indent, subsequent_indent=indent + " " * 4,
                                   break_long_words=False, break_on_hyphens=False)
    folded = wrapper.wrap(line)
    return [*(part + " \\" for part in folded[:-1]), folded[-1]]


def fold_paragraphs(text: str, width: int, indent: str = "") -> list[str]:
    """:func:`fold_words` per paragraph (blank-line separated, the blank lines kept). A paragraph that opens with
    a ``\\b`` line keeps its lines, as in click; they hold example commands, so one too wide for ``width`` is
    folded by :func:`fold_command`."""
    lines: list[str] = []
    for paragraph in textwrap.dedent(text).strip("\n").split("\n\n"):
        if lines:
            lines.append("")
        if paragraph.startswith("\b\n"):
            for line in paragraph.splitlines()[1:]:
                stripped = line.lstrip(" ")
                lines.extend(fold_command(stripped, width, indent + " " * (len(line) - len(stripped))))
        else:
            extra = " " * (len(paragraph) - len(paragraph.lstrip(" ")))
            lines.extend(fold_words(paragraph, width, indent + extra) or [""])
    return lines


def longest_word(text: str) -> int:
    """The width of the widest space-free piece of ``text``."""
    return max((len(word) for word in text.split()), default=0)


class WholeWordFormatter(click.HelpFormatter):
    """click's help formatter, folding at spaces only (see :func:`fold_words`): an option's help whose widest
    word does not fit beside the option goes on the lines below it, indented by :data:`BELOW_INDENT`."""

    def write_text(self, text: str) -> None:
        self.write("\n".join(fold_paragraphs(text, self.width, " " * self.current_indent)) + "\n")

    def write_dl(self, rows: Iterable[tuple[str, str]], col_max: int = 30, col_spacing: int = 2) -> None:
        rows = list(rows)
        first_col = min(max((len(first) for first, _ in rows), default=0), col_max) + col_spacing
        beside = self.width - self.current_indent - first_col
        below = " " * (self.current_indent + BELOW_INDENT)
        for first, second in rows:
            self.write(f"{'':>{self.current_indent}}{first}")
            if not second:
                self.write("\n")
                continue
            if longest_word(second) > beside:
                self.write("\n" + "\n".join(fold_paragraphs(second, self.width, below)) + "\n")
                continue
            if len(first) <= first_col - col_spacing:
                self.write(" " * (first_col - len(first)))
            else:
                self.write("\n" + " " * (first_col + self.current_indent))
            lines = fold_paragraphs(second, beside)
            pad = " " * (first_col + self.current_indent)
            self.write("\n".join([lines[0], *(pad + line if line else "" for line in lines[1:])]) + "\n")


class HelpContext(click.Context):
    """A context whose help pages fold with :class:`WholeWordFormatter`."""

    formatter_class = WholeWordFormatter


class Command(click.Command):
    """A command whose help folds at spaces only."""

    context_class = HelpContext


class Group(click.Group):
    """A group whose help, and its commands' and subgroups', fold at spaces only."""

    context_class = HelpContext
    command_class = Command
    group_class = type


class OneLineErrors(Group):
    """A group whose usage errors are one ``Error:`` line (no usage block, no traceback)."""

    group_class = Group

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(INTERRUPTED)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def fail(message: str) -> click.exceptions.Exit:
    """Print ``Error: message`` and return the exception that exits with code 2 (``raise fail(...)``)."""
    click.echo(f"Error: {message}", err=True)
    return click.exceptions.Exit(USAGE_ERROR)


def load_registry_or_fail(plugins: tuple[str, ...]) -> Registry:
    """The registry with ``plugins`` added; a plugin that cannot load is one ``Error:`` line."""
    from cnfbench.plugin_manager import PluginLoadError
    from cnfbench.registry import RegistryError, load_registry

    try:
        return load_registry(plugins)
    except (PluginLoadError, RegistryError) as exc:
        raise fail(str(exc)) from None


def load_runs_or_fail(paths: tuple[str, ...]) -> list[Run]:
    """The run folders at ``paths``, their warnings printed; an unreadable one is one ``Error:`` line."""
    from cnfbench.run_folder import ResultsError, load_run

    runs = []
    for path in paths:
        try:
            run = load_run(path)
        except ResultsError as exc:
            raise fail(str(exc)) from None
        for warning in run.warnings:
            click.echo(f"warning: {warning}", err=True)
        runs.append(run)
    return runs


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"],
                                                  "max_content_width": HELP_MAX_WIDTH})
@click.version_option(__version__, prog_name="cnfbench")
def main() -> None:
    """Benchmark continuous normalizing flows: fields x solvers x trace estimators x datasets."""


COMMAND_MODULES = ("cnfbench.cli.run", "cnfbench.cli.evaluate", "cnfbench.cli.plugins", "cnfbench.cli.reports",
                   "cnfbench.cli.sample", "cnfbench.cli.scaffold", "cnfbench.cli.data", "cnfbench.cli.protocols")
"""Each registers its commands on :data:`main` when imported."""

for _module in COMMAND_MODULES:
    importlib.import_module(_module)
