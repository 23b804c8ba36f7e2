"""Number ranges in grid items: ``dopri5[rtol=1e-3..1e-8:6]`` is six solvers, one per log-spaced tolerance.

An item of a grid axis whose integer or number parameter is written as a range expands, before it is
resolved, into one item per value; several ranged parameters in one item give their product (the first
written varies slowest). Each value then passes the same checks as one typed by hand, and an item without
a range comes back unchanged (so does its cell id). The forms (:data:`FORMS`):

* ``A..B:N`` — N log-spaced values from A to B, both ends included (A, B > 0): ``rtol=1e-3..1e-8:6`` is
  1e-3, 1e-4, …, 1e-8. Values between the ends are rounded to :data:`LOG_DIGITS` significant digits
  (``1e-3..1e-5:5`` gives 3.162e-4), so that labels stay readable and a printed value is the value used.
* ``A..B:xF`` — A, A·F, A·F², … which must land on B (A, B, F > 0): ``steps=2..64:x2`` is 2, 4, …, 64 and
  ``rtol=1e-3..1e-8:x0.1`` falls by decades.
* ``A..B:+S`` or ``A..B:-S`` — A, A+S, A+2S, … which must land on B: ``steps=2..10:+2`` is 2, 4, 6, 8, 10.

An integer parameter takes integer ends (and an integer step); log-spaced and factor values are rounded
to the nearest integer, and values that rounding makes equal are kept once, with a note. Float values of
the factor and step forms are cleaned to 12 significant digits (0.1 + 0.2 is 0.3). A range gives at most
:data:`MAX_POINTS` values and an item at most :data:`MAX_ITEM_VALUES`. A parameter linked to another
(``atol=rtol``) follows each value: :func:`cnfbench.params.resolve_params` resolves the link per item.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cnfbench.params import Param, ParamError, Selection, format_value

MAX_POINTS = 64
"""Values one range may give."""

MAX_ITEM_VALUES = 4096
"""Items one selector item may expand to (64 values on each of two parameters)."""

LOG_DIGITS = 4
"""Significant digits of the log-spaced values between a range's ends."""

EXACT_DIGITS = 12
"""Significant digits that factor and step values keep: enough to drop float noise, never a typed digit."""

FORMS = ("A..B:N (N log-spaced values), A..B:xF (times F) or A..B:+S / A..B:-S (plus or minus S), "
         "e.g. rtol=1e-3..1e-8:6, steps=2..64:x2, steps=2..10:+2")
"""The valid range forms, as error messages list them."""

LOG, TIMES, PLUS = "log", "times", "plus"

_NUMERIC = ("int", "float")


@dataclass(frozen=True)
class NumberRange:
    """A parsed range: from ``start`` to ``end`` by ``form`` (:data:`LOG` with ``amount`` values,
    :data:`TIMES` by the factor ``amount``, :data:`PLUS` by the step ``amount``)."""

    start: float
    end: float
    form: str
    amount: float


def _number(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def parse_range(text: str) -> NumberRange:
    """Parse ``A..B:N``, ``A..B:xF`` or ``A..B:+S``/``A..B:-S``; ``ValueError`` saying the valid forms."""
    malformed = ValueError(f"not a range; write {FORMS}")
    bounds, colon, spec = text.strip().partition(":")
    start_text, dots, end_text = bounds.partition("..")
    spec = spec.strip()
    if not colon or not dots or end_text.startswith(".") or ".." in end_text or not spec:
        raise malformed
    try:
        start, end = _number(start_text), _number(end_text)
        if spec[0] in "xX":
            return NumberRange(start, end, TIMES, _number(spec[1:]))
        if spec[0] in "+-":
            return NumberRange(start, end, PLUS, _number(spec))
        if spec.isdigit():
            return NumberRange(start, end, LOG, int(spec))
    except ValueError:
        raise malformed from None
    raise malformed


def _show(value: float) -> str:
    return f"{value:g}"


def _clean(value: float, digits: int) -> float:
    return float(f"{value:.{digits}g}")


def _clean_at(value: float, magnitude: float) -> float:
    """``value`` rounded to :data:`EXACT_DIGITS` significant digits of ``magnitude`` (the range's size): a step
    range that passes through 0 gives 0.0, not the 4e-16 that adding a decimal step leaves there."""
    decimals = EXACT_DIGITS - 1 - math.floor(math.log10(magnitude))
    return round(value, decimals) + 0.0


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _count_to(steps: float, start: float, end: float, at: Any, what: str) -> int:
    """The number of steps from ``start`` that land on ``end`` (``steps`` of them, near an integer), else a
    ``ValueError`` naming the two values around ``end`` (``at(k)`` is the value after ``k`` steps)."""
    near = round(steps)
    if abs(steps - near) > 1e-9 * max(1.0, abs(steps)):
        below, above = at(math.floor(steps)), at(math.ceil(steps))
        raise ValueError(f"{what} from {_show(start)} passes {_show(end)} without landing on it "
                         f"({_show(below)}, {_show(above)}): end at {_show(below)} or {_show(above)}")
    if near + 1 > MAX_POINTS:
        raise ValueError(f"it gives {near + 1} values; a range gives at most {MAX_POINTS} "
                         "(take a larger step, or A..B:N for N values)")
    return near


def range_values(spec: NumberRange, integer: bool) -> list[int] | list[float]:
    """Every value of ``spec`` in order, ends included (repeats that rounding made are left in);
    ``ValueError`` with a one-line reason when the range is empty, too long or never reaches its end."""
    start, end, amount = spec.start, spec.end, spec.amount
    if start == end:
        raise ValueError(f"both ends are {_show(start)}: write the one value")
    if integer and not (start.is_integer() and end.is_integer()):
        raise ValueError("an integer parameter needs integer ends")
    if spec.form in (LOG, TIMES) and (start <= 0 or end <= 0):
        kind = "log-spaced" if spec.form == LOG else "factor"
        raise ValueError(f"a {kind} range needs positive ends, not {_show(min(start, end))}")
    if spec.form == LOG:
        count = int(amount)
        if count < 2 or count > MAX_POINTS:
            raise ValueError(f"it asks for {count} values; a range gives 2 to {MAX_POINTS}")
        low, high = math.log(start), math.log(end)
        inner = [math.exp(low + (high - low) * i / (count - 1)) for i in range(1, count - 1)]
        if integer:
            return [int(start), *(_round_half_up(v) for v in inner), int(end)]
        return [start, *(_clean(v, LOG_DIGITS) for v in inner), end]
    if spec.form == TIMES:
        if amount <= 0 or amount == 1 or (amount > 1) != (end > start):
            how = "stays there" if amount == 1 else "falls" if amount < 1 else "climbs"
            how = "changes sign" if amount <= 0 else how
            raise ValueError(f"x{_show(amount)} from {_show(start)} never reaches {_show(end)} (it {how})")
        count = _count_to(math.log(end / start) / math.log(amount), start, end,
                          lambda k: start * amount ** k, f"x{_show(amount)}")
        if integer and amount.is_integer():
            return [int(start) * int(amount) ** k for k in range(count)] + [int(end)]
        values = [start * amount ** k for k in range(count)]
        if integer:
            return [_round_half_up(v) for v in values] + [int(end)]
        return [_clean(v, EXACT_DIGITS) for v in values] + [end]
    if amount == 0 or (amount > 0) != (end > start):
        how = "stays there" if amount == 0 else "falls" if amount < 0 else "climbs"
        raise ValueError(f"{'+' if amount >= 0 else ''}{_show(amount)} from {_show(start)} never reaches "
                         f"{_show(end)} (it {how})")
    if integer and not amount.is_integer():
        raise ValueError("an integer parameter needs an integer step")
    count = _count_to((end - start) / amount, start, end, lambda k: start + amount * k,
                      f"{'+' if amount > 0 else ''}{_show(amount)}")
    if integer:
        return [int(start) + int(amount) * k for k in range(count)] + [int(end)]
    magnitude = max(abs(start), abs(end), abs(amount))
    return [_clean_at(start + amount * k, magnitude) for k in range(count)] + [end]


def _is_range_attempt(raw: Any, param: Param) -> bool:
    """Whether ``raw`` is meant as a range for ``param``: any ``..`` in a number, boolean or list value or an
    unknown choice; for a free string (a path such as ``../data.csv``) only a value of a range's form."""
    if not isinstance(raw, str) or ".." not in raw:
        return False
    if param.kind in (*_NUMERIC, "bool", "ints"):
        return True
    if param.choices is not None:
        return raw.strip() not in param.choices
    try:
        parse_range(raw)
    except ValueError:
        return False
    return True


def _not_rangeable(owner: str, name: str, param: Param, raw: str) -> ParamError:
    if param.choices is not None:
        why = (f"{param.name!r} takes one of {', '.join(param.choices)}: list the ones you want as items, "
               f"e.g. {name}[{param.name}={param.choices[0]}],{name}[{param.name}={param.choices[-1]}]")
    else:
        word = {"bool": "a boolean", "ints": "a list of integers", "str": "a string"}.get(param.kind, param.kind)
        why = f"{param.name!r} is {word}; list its values as separate items"
    return ParamError(f"bad value {raw!r} for {owner} parameter {param.name!r}: a range applies only to integer and "
                      f"number parameters; {why}")


def _values(owner: str, param: Param, raw: str, notes: list[str], item: Selection) -> list[Any]:
    """The distinct values of the range ``raw`` for ``param``, each checked against its declared bounds."""
    integer = param.kind == "int"
    try:
        values: list[Any] = list(range_values(parse_range(raw), integer))
    except ValueError as exc:
        raise ParamError(f"bad range {raw.strip()!r} for {owner} parameter {param.name!r}: {exc}") from None
    for value in values:
        try:
            param.coerce(value)
        except ValueError as exc:
            raise ParamError(f"range {raw.strip()!r} for {owner} parameter {param.name!r} includes "
                             f"{format_value(value)}: {exc}") from None
    distinct = list(dict.fromkeys(values))
    if len(distinct) < len(values):
        repeated = [value for value in distinct if values.count(value) > 1]
        rounding = "integers" if integer else f"{LOG_DIGITS} significant digits"
        notes.append(f"{item}: {param.name}={', '.join(format_value(v) for v in repeated)} came more than once "
                     f"after rounding to {rounding}; each kept once ({len(distinct)} of {len(values)} values)")
    return distinct


def expand_selection(selection: Selection, declared: Iterable[Param], owner: str,
                     notes: list[str] | None = None) -> list[Selection]:
    """``selection`` with each ranged parameter expanded: one selection per combination of values, in order.

    A selection without a range is returned as the only item, unchanged. Parameters that ``declared`` does not
    know are left for :func:`cnfbench.params.resolve_params` to reject. ``owner`` names the component in
    errors (``solver 'dopri5'``); notes about values that rounding made repeat are appended to ``notes``.
    """
    found = notes if notes is not None else []
    by_name = {param.name: param for param in declared}
    choices: list[list[tuple[str, Any]]] = []
    for key, raw in selection.raw_params:
        param = by_name.get(key)
        if param is None or not _is_range_attempt(raw, param):
            choices.append([(key, raw)])
        elif param.kind not in _NUMERIC or param.choices is not None:
            raise _not_rangeable(owner, selection.name, param, raw)
        else:
            choices.append([(key, value) for value in _values(owner, param, raw, found, selection)])
    if all(len(values) == 1 for values in choices):  # a range always gives two values or more
        return [selection]
    count = math.prod(len(values) for values in choices)
    if count > MAX_ITEM_VALUES:
        raise ParamError(f"{selection} expands to {count} items; one item may give at most {MAX_ITEM_VALUES} "
                         "(fewer values per range)")
    return [Selection(selection.name, tuple(combination)) for combination in itertools.product(*choices)]
