"""Help pages and the plugin listing read right at 80, 100 and 160 columns.

Every command's ``--help`` fits the width, never splits a word (an example such as
``'euler[steps=10],dopri5[rtol=1e-5,atol=1e-5]'`` stays one piece), states every option's default in one style
and pluralizes the grid axes' meanings right; ``cnfbench plugins`` filters by family and writes JSON that
round-trips to the declared parameters.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cnfbench.cli import fold_command, fold_paragraphs, main
from cnfbench.families import FAMILY_TABLE, GRID_AXES
from cnfbench.registry import load_registry

WIDTHS = (80, 100, 160)


def _commands(command: click.Command = main, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                         click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands())
PATHS = list(COMMANDS)


def _ids(path: tuple[str, ...]) -> str:
    return " ".join(path) or "cnfbench"


def _help(path: tuple[str, ...], width: int) -> str:
    result = CliRunner().invoke(main, [*path, "--help"], terminal_width=width, env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    return result.output


def _options(command: click.Command) -> list[click.Option]:
    """The command's own options (not --help or --version, which click writes)."""
    return [param for param in command.params if isinstance(param, click.Option) and param.expose_value]


def _sources(command: click.Command) -> str:
    """Everything the help page folds: the command's text (less click's ``\\b`` no-rewrap marks) and its
    options' help."""
    return "\n".join([(command.help or "").replace("\b", ""), *(option.help or "" for option in _options(command))])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path", PATHS, ids=_ids)
def test_help_fits_the_width_and_never_splits_a_word(path: tuple[str, ...], width: int) -> None:
    text = _help(path, width)
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert not too_wide, too_wide
    shown = Counter(text.split())
    source_words = Counter(_sources(COMMANDS[path]).split())
    split = {word: count for word, count in source_words.items() if shown[word] < count}
    assert not split, f"words split across lines (or lost): {sorted(split)}"


@pytest.mark.parametrize("width", WIDTHS)
def test_every_example_stays_on_one_line(width: int) -> None:
    """The examples of ``run --help`` (``name[...]`` specs and ``k=v`` pairs), each whole on one line."""
    text = _help(("run",), width)
    examples = set(re.findall(r"'[^' ]*[\[=][^' ]*'", _sources(COMMANDS[("run",)])))
    assert "'euler[steps=10],dopri5[rtol=1e-5,atol=1e-5]'" in examples
    for example in examples:
        assert any(example in line for line in text.splitlines()), example


@pytest.mark.parametrize("path", PATHS, ids=_ids)
def test_every_option_states_its_default_in_one_style(path: tuple[str, ...]) -> None:
    options = _options(COMMANDS[path])
    for option in options:
        assert not option.show_default, f"{option.opts}: click's own default style; write [default: …] instead"
        if option.required:
            continue
        assert "[default:" in (option.help or ""), f"{option.opts} states no default"
        if option.is_flag and not option.secondary_opts:
            assert (option.help or "").endswith("[default: off]"), option.opts
    stated = sum(not option.required for option in options)
    assert _help(path, 80).count("[default:") >= stated


def test_ref_dtype_and_the_plural_meanings_in_run_help() -> None:
    text = " ".join(_help(("run",), 80).split())
    assert "dtype of the reference solve [default: float64]" in text
    assert ")s" not in text
    for row in GRID_AXES:
        assert f"{row.plural_meaning}: comma list" in text
    assert "ODE solvers (training when the objective solves, evaluation, sampling)" in text


def test_a_long_example_command_folds_with_shell_continuations() -> None:
    command = "cnfbench compare results/main results/branch --fail-on nll_ref:+0.02,train_time_s:x1.10"
    lines = fold_command(command, 60, "  ")
    assert len(lines) > 1 and all(len(line) <= 60 for line in lines)
    assert all(line.endswith(" \\") for line in lines[:-1])
    assert " ".join(line.removesuffix(" \\").strip() for line in lines) == command
    assert fold_paragraphs(f"Intro text.\n\n\b\n{command}", 60)[:2] == ["Intro text.", ""]


def _plugins(*args: str, width: int = 80) -> click.testing.Result:
    return CliRunner().invoke(main, ["plugins", *args], env={"COLUMNS": str(width)})


@pytest.mark.parametrize("width", WIDTHS)
def test_plugin_listing_fits_the_width_and_names_every_component(width: int) -> None:
    result = _plugins(width=width)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= width
    registry = load_registry()
    for row in FAMILY_TABLE:
        assert f"{row.plural.capitalize()}:" in lines
        listed = {line.split()[0] for line in lines if re.match(r"^  \S", line)}
        assert set(registry.names(row.key)) <= listed
    assert "cnfbench plugins --family solver" in " ".join(result.output.split())


def test_plugins_family_lists_only_that_family() -> None:
    result = _plugins("--family", "solver")
    assert result.exit_code == 0, result.output
    registry = load_registry()
    components = [line.split()[0] for line in result.output.splitlines() if re.match(r"^  \S", line)]
    assert components == registry.names("solver")
    headers = [line for line in result.output.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headers == ["Solvers:"]
    assert "steps: integer = 10 [1 to 100000]" in result.output
    both = _plugins("--family", "solvers,trace")  # a plural and a comma list
    assert both.exit_code == 0
    assert [line for line in both.output.splitlines() if line in ("Solvers:", "Traces:", "Datasets:")] == [
        "Solvers:", "Traces:"]


def test_plugins_json_round_trips_to_the_declared_parameters() -> None:
    result = _plugins("--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert json.dumps(data, indent=2) == result.output.strip()
    registry = load_registry()
    assert set(data["components"]) == {row.plural for row in FAMILY_TABLE}
    for row in FAMILY_TABLE:
        listed = data["components"][row.plural]
        assert [item["name"] for item in listed] == registry.names(row.key)
        for item in listed:
            entry = registry.get(row.key, item["name"])
            assert (item["family"], item["plugin"], item["description"]) == (row.key, entry.plugin,
                                                                              entry.cls.description)
            for shown, param in zip(item["params"], entry.cls.params, strict=True):
                fields = {field.name: getattr(param, field.name) for field in dataclasses.fields(param)}
                rest = {key: value for key, value in shown.items() if key != "type"}
                assert {"kind": shown["type"], **rest} == {key: list(value) if isinstance(value, tuple)
                                                               else value for key, value in fields.items()}
                assert {"minimum", "maximum", "choices", "default", "help"} <= set(shown)
    solvers = json.loads(_plugins("--json", "--family", "solver").output)
    assert set(solvers["components"]) == {"solvers"}
    assert solvers["components"]["solvers"] == data["components"]["solvers"]


def test_plugins_family_shows_a_users_plugin(tmp_path: Path) -> None:
    plugin = tmp_path / "heun_plugin.py"
    plugin.write_text(
        "from cnfbench_plugins.torchdiffeq_solvers import SOLVER_CLASSES\n"
        "from cnfbench.hookspecs import hookimpl\n"
        "class Mine(next(cls for cls in SOLVER_CLASSES if cls.name == 'euler')):\n"
        "    name = 'my_heun'\n"
        "    description = 'a solver of mine'\n"
        "@hookimpl\n"
        "def cnfbench_solvers():\n"
        "    return [Mine]\n")
    result = _plugins("--family", "solver", "--plugin", str(plugin))
    assert result.exit_code == 0, result.output
    assert re.search(r"^  my_heun +a solver of mine", result.output, re.MULTILINE)
    assert f"[plugin {plugin}]" in " ".join(result.output.split())
