"""Selector parsing and parameter validation: ``name[key=value,...]`` comma lists."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnfbench.params import (
    Param,
    ParamError,
    Selection,
    parse_selector_list,
    resolve_params,
    split_top_level,
)

DECLARED = (
    Param("steps", "int", 10, minimum=1),
    Param("rtol", "float", 1e-5, minimum=0.0),
    Param("adjoint", "bool", False),
    Param("noise", "str", "gaussian", choices=("gaussian", "rademacher")),
    Param("hidden", "ints", (64, 64, 64), minimum=1),
)


def test_split_keeps_bracketed_commas_together() -> None:
    assert split_top_level("euler[steps=10],dopri5[rtol=1e-5,atol=1e-5]") == [
        "euler[steps=10]",
        "dopri5[rtol=1e-5,atol=1e-5]",
    ]


def test_parse_list_with_parameters() -> None:
    selections = parse_selector_list("euler[steps=10], dopri5[rtol=1e-5,atol=1e-6]")
    assert selections == [
        Selection("euler", (("steps", "10"),)),
        Selection("dopri5", (("rtol", "1e-5"), ("atol", "1e-6"))),
    ]


def test_parse_several_option_values_concatenate() -> None:
    assert [s.name for s in parse_selector_list(["euler", "rk4,dopri5"])] == ["euler", "rk4", "dopri5"]


@pytest.mark.parametrize(
    "text",
    ["euler[steps=10", "euler]", "euler[steps]", "euler[=3]", "euler[steps=1,steps=2]", "", "a,,b", "x=1", "a[b=1]c"],
)
def test_malformed_selectors_are_param_errors(text: str) -> None:
    with pytest.raises(ParamError):
        parse_selector_list(text)


def test_resolve_fills_defaults_and_coerces() -> None:
    values = resolve_params("solver 'x'", DECLARED, [("steps", "20"), ("adjoint", "yes"), ("hidden", "3x16")])
    assert values == {"steps": 20, "rtol": 1e-5, "adjoint": True, "noise": "gaussian", "hidden": (16, 16, 16)}
    assert resolve_params("solver 'x'", DECLARED, [("hidden", "32-8")])["hidden"] == (32, 8)


@pytest.mark.parametrize(
    ("pairs", "fragment"),
    [
        ([("stepz", "3")], "unknown parameter 'stepz' for solver 'x'; valid parameters: adjoint, hidden, noise, rtol"),
        ([("steps", "ten")], "bad value 'ten' for solver 'x' parameter 'steps': expected integer"),
        ([("steps", "0")], "must be >= 1"),
        ([("steps", "2.5")], "expected integer"),
        ([("rtol", "nan")], "finite"),
        ([("adjoint", "maybe")], "boolean"),
        ([("noise", "uniform")], "expected one of gaussian, rademacher"),
        ([("hidden", "64-0")], "must be >= 1"),
    ],
)
def test_bad_parameters_name_the_culprit(pairs: list[tuple[str, str]], fragment: str) -> None:
    with pytest.raises(ParamError) as info:
        resolve_params("solver 'x'", DECLARED, pairs)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_describe_shows_type_and_default() -> None:
    assert DECLARED[4].describe() == "hidden: integer list like 64-64-64 = 64-64-64"
    assert DECLARED[3].describe() == "noise: string (gaussian|rademacher) = gaussian"


_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_values = st.from_regex(r"[A-Za-z0-9.+-]{1,8}", fullmatch=True)


@given(st.lists(st.tuples(_names, st.dictionaries(_names, _values, max_size=3)), min_size=1, max_size=4))
def test_rendered_selections_parse_back(items: list[tuple[str, dict[str, str]]]) -> None:
    selections = [Selection(name, tuple(params.items())) for name, params in items]
    text = ",".join(str(selection) for selection in selections)
    assert parse_selector_list(text) == selections


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_param_error(text: str) -> None:
    try:
        selections = parse_selector_list(text)
    except ParamError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(selection.name for selection in selections)
