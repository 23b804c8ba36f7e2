"""Number ranges in grid items (``dopri5[rtol=1e-3..1e-8:6]``) and linked parameters (``atol=rtol``).

The forms give the values they promise (log-spaced, times a factor, plus a step), integers stay integers, floats
print clean and round-trip through a selector, every value passes the declared bounds, bad input is one line
(exit 2, nothing written), an item without a range keeps its cell id, and ``run``'s grid options, its config
file and ``evaluate --solver`` all expand the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cnfbench.config import RunConfig, load_toml, merge, resolve_grid
from cnfbench.params import Param, ParamError, Selection, format_value, parse_selection, resolve_params
from cnfbench.ranges import MAX_POINTS, expand_selection, parse_range, range_values
from cnfbench.registry import load_registry

REGISTRY = load_registry()

STEPS = Param("steps", "int", 10, minimum=1, maximum=100_000)
RTOL = Param("rtol", "float", 1e-5, minimum=0.0)
ATOL = Param("atol", "float", 1e-5, minimum=0.0)
DECLARED = (
    STEPS, RTOL, ATOL,
    Param("adjoint", "bool", False),
    Param("noise", "str", "gaussian", choices=("gaussian", "rademacher")),
    Param("hidden", "ints", (64, 64), minimum=1),
    Param("path", "str", ""),
)


def _expand(text: str, notes: list[str] | None = None) -> list[Selection]:
    return expand_selection(parse_selection(text), DECLARED, "solver 'x'", notes)


def _values(text: str, key: str) -> list[object]:
    return [resolve_params("solver 'x'", DECLARED, item.raw_params)[key] for item in _expand(text)]


def test_log_spaced_tolerances_are_the_decades_and_print_clean() -> None:
    values = _values("x[rtol=1e-3..1e-8:6]", "rtol")
    assert values == [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
    assert [format_value(v) for v in values] == ["0.001", "0.0001", "1e-05", "1e-06", "1e-07", "1e-08"]
    assert _values("x[rtol=1e-3..1e-5:5]", "rtol") == [1e-3, 3.162e-4, 1e-4, 3.162e-5, 1e-5]


def test_factor_and_step_forms() -> None:
    assert _values("x[steps=2..64:x2]", "steps") == [2, 4, 8, 16, 32, 64]
    assert _values("x[steps=2..10:+2]", "steps") == [2, 4, 6, 8, 10]
    assert _values("x[steps=10..2:-4]", "steps") == [10, 6, 2]
    assert _values("x[steps=81..1:x0.333333333333333333]", "steps") == [81, 27, 9, 3, 1]
    assert _values("x[rtol=1e-3..1e-8:x0.1]", "rtol") == [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
    assert _values("x[rtol=0.1..0.5:+0.1]", "rtol") == [0.1, 0.2, 0.3, 0.4, 0.5]  # not 0.30000000000000004
    assert all(isinstance(v, int) for v in _values("x[steps=2..64:6]", "steps"))


def test_several_ranges_make_their_product_first_written_slowest() -> None:
    items = _expand("x[steps=2..4:+2,rtol=1e-3..1e-5:3,adjoint=true]")
    assert [str(item) for item in items] == [
        "x[steps=2,rtol=0.001,adjoint=true]", "x[steps=2,rtol=0.0001,adjoint=true]",
        "x[steps=2,rtol=1e-05,adjoint=true]", "x[steps=4,rtol=0.001,adjoint=true]",
        "x[steps=4,rtol=0.0001,adjoint=true]", "x[steps=4,rtol=1e-05,adjoint=true]",
    ]


def test_a_linked_parameter_follows_each_value() -> None:
    items = _expand("x[rtol=1e-3..1e-6:4,atol=rtol*0.001]")
    resolved = [resolve_params("solver 'x'", DECLARED, item.raw_params) for item in items]
    assert [(r["rtol"], r["atol"]) for r in resolved] == [(1e-3, 1e-6), (1e-4, 1e-7), (1e-5, 1e-8), (1e-6, 1e-9)]
    assert resolve_params("solver 'x'", DECLARED, [("atol", "rtol")])["atol"] == RTOL.default  # rtol's default
    assert resolve_params("solver 'x'", DECLARED, [("atol", "rtol"), ("rtol", "1e-4")])["atol"] == 1e-4


@pytest.mark.parametrize(("given_params", "message"), [
    ([("atol", "atol")], "cannot follow itself"),
    ([("atol", "rtol"), ("rtol", "atol")], "'rtol' itself follows 'atol'"),
    ([("atol", "rtol*x")], "the factor of a link must be a finite number"),
    ([("atol", "rtol*-1"), ("rtol", "0.1")], "rtol is 0.1, so atol would be -0.1: must be >= 0"),
    ([("atol", "rtl")], "did you mean 'rtol'?"),
    ([("steps", "rtol")], "rtol is 1e-05, so steps would be 1e-05: expected an integer"),
])
def test_bad_links_are_one_line(given_params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(ParamError) as caught:
        resolve_params("solver 'x'", DECLARED, given_params)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_integer_values_that_round_alike_are_kept_once_with_a_note() -> None:
    notes: list[str] = []
    items = _expand("x[steps=1..10:10]", notes)
    assert [dict(item.raw_params)["steps"] for item in items] == [1, 2, 3, 4, 5, 6, 8, 10]
    (note,) = notes
    assert "steps=1, 2 came more than once after rounding to integers" in note and "8 of 10 values" in note


def test_an_item_without_a_range_comes_back_unchanged() -> None:
    for text in ["x", "x[steps=3,rtol=1e-4]", "x[path=../data/file.csv]", "x[path=a..b]", "x[atol=rtol]"]:
        selection = parse_selection(text)
        assert expand_selection(selection, DECLARED, "solver 'x'") == [selection]


@pytest.mark.parametrize(("text", "message"), [
    ("x[rtol=1e-3..1e-8:65]", f"it asks for 65 values; a range gives 2 to {MAX_POINTS}"),
    ("x[steps=1..200:+1]", "it gives 200 values; a range gives at most 64"),
    ("x[rtol=0..1e-8:6]", "a log-spaced range needs positive ends, not 0"),
    ("x[rtol=-1..1:x2]", "a factor range needs positive ends, not -1"),
    ("x[steps=2..64:x0.5]", "x0.5 from 2 never reaches 64 (it falls)"),
    ("x[steps=2..64:x1]", "never reaches 64 (it stays there)"),
    ("x[steps=2..10:-2]", "-2 from 2 never reaches 10 (it falls)"),
    ("x[steps=2..10:+0]", "never reaches 10 (it stays there)"),
    ("x[steps=2..60:x2]", "x2 from 2 passes 60 without landing on it (32, 64): end at 32 or 64"),
    ("x[steps=2..10:+3]", "passes 10 without landing on it (8, 11)"),
    ("x[steps=2.5..8:+2]", "an integer parameter needs integer ends"),
    ("x[steps=2..8:+0.5]", "an integer parameter needs an integer step"),
    ("x[steps=3..3:+1]", "both ends are 3: write the one value"),
    ("x[steps=0..8:+2]", "range '0..8:+2' for solver 'x' parameter 'steps' includes 0: must be >= 1"),
    ("x[rtol=1e-3..1e-8]", "not a range; write A..B:N (N log-spaced values), A..B:xF (times F)"),
    ("x[rtol=1e-3...1e-8:5]", "not a range"),
    ("x[rtol=a..b:3]", "not a range"),
    ("x[rtol=1..2:y3]", "not a range"),
    ("x[adjoint=true..false:2]", "a range applies only to integer and number parameters; 'adjoint' is a boolean"),
    ("x[hidden=64..128:x2]", "'hidden' is a list of integers"),
    ("x[noise=gaussian..rademacher:2]",
     "'noise' takes one of gaussian, rademacher: list the ones you want as items, e.g. x[noise=gaussian],"),
    ("x[path=1..4:+1]", "'path' is a string"),
    ("x[steps=1..64:+1,rtol=1e-1..1e-9:64,atol=1e-1..1e-9:2]", "expands to 8192 items; one item may give at most"),
])
def test_bad_ranges_are_one_line_naming_the_valid_forms(text: str, message: str) -> None:
    with pytest.raises(ParamError) as caught:
        _expand(text)
    assert message in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_range_where_none_expands_says_where_ranges_go() -> None:
    with pytest.raises(ParamError, match="expands only in the items of a grid axis"):
        resolve_params("solver 'x'", DECLARED, [("rtol", "1e-3..1e-8:6")])


# Properties of the parser.

DECIMALS = st.builds(lambda mantissa, exponent: float(f"{mantissa}e{exponent}"),
                     st.integers(1, 99), st.integers(-12, 3))


@settings(max_examples=200, deadline=None)
@given(DECIMALS, DECIMALS, st.integers(2, MAX_POINTS))
def test_log_ranges_keep_count_ends_order_and_round_trip(start: float, end: float, count: int) -> None:
    assume(start != end)
    values = range_values(parse_range(f"{start!r}..{end!r}:{count}"), integer=False)
    assert len(values) == count and values[0] == start and values[-1] == end
    pairs = zip(values, values[1:], strict=False)
    assert all(a >= b for a, b in pairs) if end < start else all(a <= b for a, b in pairs)
    for item in _expand(f"x[rtol={start!r}..{end!r}:{count}]"):  # a printed value is the value used
        value = dict(item.raw_params)["rtol"]
        assert float(format_value(value)) == value
        assert dict(parse_selection(str(item)).raw_params)["rtol"] == format_value(value)
        assert resolve_params("solver 'x'", DECLARED, parse_selection(str(item)).raw_params)["rtol"] == value


@settings(max_examples=200, deadline=None)
@given(st.integers(-1000, 1000), st.integers(1, 50).flatmap(lambda s: st.sampled_from([s, -s])),
       st.integers(2, MAX_POINTS))
def test_integer_step_ranges_are_pythons_range(start: int, step: int, count: int) -> None:
    end = start + step * (count - 1)
    values = range_values(parse_range(f"{start}..{end}:{'+' if step > 0 else ''}{step}"), integer=True)
    assert values == list(range(start, end + (1 if step > 0 else -1), step))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 1000), st.integers(2, 5), st.integers(2, 12))
def test_integer_factor_ranges_are_powers(start: int, factor: int, count: int) -> None:
    end = start * factor ** (count - 1)
    assert range_values(parse_range(f"{start}..{end}:x{factor}"), integer=True) == \
        [start * factor ** k for k in range(count)]


@settings(max_examples=200, deadline=None)
@given(st.integers(-500, 500), st.integers(1, 99), st.integers(2, MAX_POINTS), st.sampled_from([1, 2, 3]))
def test_decimal_step_ranges_give_the_decimals_typed(start: int, step: int, count: int, places: int) -> None:
    scale = 10 ** places
    text = f"{start / scale!r}..{(start + step * (count - 1)) / scale!r}:+{step / scale!r}"
    values = range_values(parse_range(text), integer=False)
    assert values == [(start + step * k) / scale for k in range(count)]


@settings(max_examples=200, deadline=None)
@given(st.integers(-5, 200), st.integers(-5, 200), st.sampled_from(["+1", "+3", "-2", "x2", "x3", "5", "2", "70"]))
def test_values_pass_the_declared_bounds_or_the_range_is_refused(start: int, end: int, spec: str) -> None:
    bounded = Param("steps", "int", 10, minimum=1, maximum=100)
    try:
        items = expand_selection(parse_selection(f"x[steps={start}..{end}:{spec}]"), (bounded,), "solver 'x'")
    except ParamError as exc:
        assert "\n" not in str(exc)
        return
    values = [dict(item.raw_params)["steps"] for item in items]
    assert 2 <= len(values) <= MAX_POINTS and len(set(values)) == len(values)
    assert all(isinstance(v, int) and 1 <= v <= 100 for v in values)
    assert {values[0], values[-1]} == {start, end}


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789.:+-xe ", max_size=16))
def test_any_text_with_dots_expands_or_is_one_line(text: str) -> None:
    raw = f"{text}..{text[::-1]}"
    try:
        items = expand_selection(Selection("x", (("rtol", raw),)), DECLARED, "solver 'x'")
    except ParamError as exc:
        assert "\n" not in str(exc)
        return
    assert all(math.isfinite(dict(item.raw_params)["rtol"]) for item in items)


# Where ranges apply: run's grid options, its config file, evaluate --solver; cell ids of plain items kept.

def _config(**axes: tuple[str, ...]) -> RunConfig:
    return merge(RunConfig(), {"device": "cpu", **{key: list(value) for key, value in axes.items()}}, "test")


def test_a_ranged_item_gives_the_cells_of_the_values_written_out() -> None:
    ranged = resolve_grid(_config(solver=("euler[steps=2..8:x2],dopri5[rtol=1e-3..1e-5:3,atol=rtol]",)), REGISTRY)
    written = resolve_grid(_config(solver=("euler[steps=2],euler[steps=4],euler[steps=8],dopri5[rtol=1e-3,"
                                           "atol=1e-3],dopri5[rtol=1e-4,atol=1e-4],dopri5[rtol=1e-5,atol=1e-5]",)),
                           REGISTRY)
    assert [cell.cell_id for cell in ranged.cells] == [cell.cell_id for cell in written.cells]
    assert len(ranged.cells) == 6 and not ranged.notes


def test_a_range_repeating_a_written_item_is_kept_once_with_a_note() -> None:
    grid = resolve_grid(_config(solver=("euler[steps=4],euler[steps=2..8:x2]",)), REGISTRY)
    assert len(grid.cells) == 3
    assert grid.notes == ["--solver: euler[steps=4] and euler[steps=4] (from euler[steps=2..8:x2]) are the same "
                          "solver (euler[steps=4,adjoint=false]); kept once"]


def test_the_config_file_expands_ranges(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text('[run]\nsolver = ["rk4[steps=2..10:+4]"]\nobjective = "cfm[sigma=0..0.2:+0.1]"\n')
    config = merge(merge(RunConfig(), load_toml(path), "sweep.toml"), {"device": "cpu"}, "test")
    cells = resolve_grid(config, REGISTRY).cells
    assert sorted((cell.solver.kwargs["steps"], cell.objective.kwargs["sigma"]) for cell in cells) == \
        [(steps, sigma) for steps in (2, 6, 10) for sigma in (0.0, 0.1, 0.2)]


def test_dry_run_lists_the_expanded_cells(cli, tmp_path: Path) -> None:
    result = cli("run", "--solver", "dopri5[rtol=1e-3..1e-8:6,atol=rtol]", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("6 cells would run")
    for rtol in ["0.001", "0.0001", "1e-05", "1e-06", "1e-07", "1e-08"]:
        assert f"dopri5[rtol={rtol},atol={rtol}," in result.output
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("option", "text", "message"), [
    ("--solver", "dopri5[rtol=1e-3..1e-8:100]", "it asks for 100 values; a range gives 2 to 64"),
    ("--solver", "dopri5[rtol=-1e-3..1e-8:6]", "a log-spaced range needs positive ends"),
    ("--trace", "hutchinson[noise=gaussian..rademacher:2]", "a range applies only to integer and number parameters"),
    ("--dataset", "8gaussians[n_train=100..1000:x3]", "x3 from 100 passes 1000 without landing on it"),
    ("--ref-solver", "dopri5[rtol=1e-7..1e-9:3]", "expands only in the items of a grid axis"),
])
def test_bad_ranges_on_the_command_line_are_one_line_exit_2(cli, tmp_path: Path, option: str, text: str,
                                                            message: str) -> None:
    result = cli("run", option, text)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and message in line
    assert not (tmp_path / "results").exists()


def test_evaluate_expands_its_solver_ranges() -> None:
    from cnfbench.cli.evaluate import _evaluation_cells

    (source,) = resolve_grid(_config(objective=("cfm",), solver=("euler[steps=8]",)), REGISTRY).cells
    cells, notes = _evaluation_cells([source], ("rk4[steps=2..8:x2],euler[steps=8]",), None, None, False, REGISTRY)
    assert [cell.solver.kwargs["steps"] for cell in cells] == [2, 4, 8, 8]
    assert [cell.solver.name for cell in cells] == ["rk4", "rk4", "rk4", "euler"]
    assert notes == []
