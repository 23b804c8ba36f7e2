"""Typed component parameters and the `name[key=value,...]` selector syntax.

Every component declares its parameters as a tuple of :class:`Param`; this
module parses selector strings such as ``"euler[steps=10],dopri5[rtol=1e-5]"``
into :class:`Selection` objects and coerces/validates each value against the
declaration, so that bad input is rejected before any training starts.

A number parameter may follow another of the same component: ``atol=rtol``
takes rtol's value, ``atol=rtol*0.01`` a hundredth of it (resolved after every
other value, so it follows each value of a range; see :mod:`cnfbench.ranges`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cnfbench.messages import did_you_mean


class ParamError(ValueError):
    """A selector or parameter value is invalid; the message is one line for the user."""


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected a boolean (true/false)")


INT64_MAX = 2**63 - 1
"""Largest integer a result column can store (parquet int64): no parameter may exceed it in size."""


def _coerce_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("expected an integer")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float):
        if not raw.is_integer():
            raise ValueError("expected an integer")
        value = int(raw)
    else:
        value = int(str(raw).strip())
    if abs(value) > INT64_MAX:
        raise ValueError(f"expected an integer of at most {INT64_MAX} in size")
    return value


def _coerce_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a number")
    value = float(raw) if isinstance(raw, (int, float)) else float(str(raw).strip())
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _coerce_str(raw: Any) -> str:
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
        raise ValueError("expected a string")
    return str(raw).strip()


MAX_LIST_ITEMS = 1000
"""Most integers an ``ints`` parameter may hold (``3x64`` counts 3)."""


def _coerce_int_list(raw: Any) -> tuple[int, ...]:
    """Accept ``64-64-64``, ``3x64`` or a sequence of integers."""
    if isinstance(raw, (list, tuple)):
        items = [_coerce_int(item) for item in raw]
    else:
        text = str(raw).strip()
        if "x" in text and "-" not in text:
            count, width = text.split("x", 1)
            repeat = _coerce_int(count)
            if repeat > MAX_LIST_ITEMS:
                raise ValueError(f"expected at most {MAX_LIST_ITEMS} integers")
            items = [_coerce_int(width)] * repeat
        else:
            parts = text.split("-")
            if any(part.strip() == "" for part in parts):
                raise ValueError("expected integers such as 64-64-64 or 3x64")
            items = [_coerce_int(part) for part in parts]
    if not items:
        raise ValueError("expected integers such as 64-64-64 or 3x64")
    if len(items) > MAX_LIST_ITEMS:
        raise ValueError(f"expected at most {MAX_LIST_ITEMS} integers")
    return tuple(items)


_COERCERS = {
    "bool": _coerce_bool,
    "int": _coerce_int,
    "float": _coerce_float,
    "str": _coerce_str,
    "ints": _coerce_int_list,
}

_TYPE_WORDS = {
    "bool": "boolean",
    "int": "integer",
    "float": "number",
    "str": "string",
    "ints": "integer list like 64-64-64",
}


@dataclass(frozen=True)
class Param:
    """One declared parameter of a component.

    ``kind`` is one of ``bool``, ``int``, ``float``, ``str`` or ``ints`` (a
    tuple of integers written ``64-64-64``). ``minimum``/``maximum`` bound
    numbers (inclusive) and ``choices`` restricts strings.

    ``added`` marks a parameter a component gained after cells were made with it: at its default it is left out
    of the resolved spec (so those cells keep their ids, labels and model files, and the component's constructor
    gets its default), and it enters the spec only when a value other than the default is chosen.
    """

    name: str
    kind: str
    default: Any
    help: str = ""
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    added: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _COERCERS:
            raise ValueError(f"Param {self.name!r}: kind must be one of {sorted(_COERCERS)}")

    def coerce(self, raw: Any) -> Any:
        """Return ``raw`` converted to this parameter's type, or raise ``ValueError``."""
        try:
            value = _COERCERS[self.kind](raw)
        except (TypeError, ValueError) as exc:
            reason = str(exc) if str(exc).startswith("expected") else f"expected {_TYPE_WORDS[self.kind]}"
            raise ValueError(reason) from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}")
        numbers = value if isinstance(value, tuple) else (value,)
        for number in numbers:
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                if self.minimum is not None and number < self.minimum:
                    raise ValueError(f"must be >= {self.minimum:g}")
                if self.maximum is not None and number > self.maximum:
                    raise ValueError(f"must be <= {self.maximum:g}")
        return value

    def describe(self) -> str:
        """``name: type = default`` as shown by ``cnfbench plugins``."""
        default = format_value(self.default)
        extra = f" ({'|'.join(self.choices)})" if self.choices else ""
        return f"{self.name}: {_TYPE_WORDS[self.kind]}{extra} = {default}"


def format_value(value: Any) -> str:
    """Render a parameter value the way a user would type it in a selector."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "-".join(str(item) for item in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class Selection:
    """A component name with the parameters the user wrote (still raw strings)."""

    name: str
    raw_params: tuple[tuple[str, Any], ...] = field(default=())

    def __str__(self) -> str:
        if not self.raw_params:
            return self.name
        inner = ",".join(f"{key}={format_value(value)}" for key, value in self.raw_params)
        return f"{self.name}[{inner}]"


def split_top_level(text: str) -> list[str]:
    """Split ``text`` on commas that are not inside square brackets."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ParamError(f"unbalanced ']' in {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ParamError(f"unbalanced '[' in {text!r}")
    parts.append("".join(current))
    return parts


def parse_selection(item: str) -> Selection:
    """Parse one ``name[key=value,...]`` item."""
    text = item.strip()
    if not text:
        raise ParamError("empty item")
    if "[" not in text:
        if "]" in text or "=" in text:
            raise ParamError(f"malformed item {text!r}: write name[key=value,...]")
        return Selection(text)
    name, _, rest = text.partition("[")
    name = name.strip()
    if not name or not rest.endswith("]") or "[" in rest:
        raise ParamError(f"malformed item {text!r}: write name[key=value,...]")
    body = rest[:-1].strip()
    pairs: list[tuple[str, str]] = []
    if body:
        for chunk in body.split(","):
            key, sep, value = chunk.partition("=")
            key = key.strip()
            if not sep or not key or not value.strip():
                raise ParamError(f"malformed parameter {chunk.strip()!r} in {text!r}: write key=value")
            pairs.append((key, value.strip()))
    seen = [key for key, _ in pairs]
    duplicated = sorted({key for key in seen if seen.count(key) > 1})
    if duplicated:
        raise ParamError(f"parameter {duplicated[0]!r} given twice in {text!r}")
    return Selection(name, tuple(pairs))


def parse_selector_list(text: str | Sequence[str], option: str = "") -> list[Selection]:
    """Parse a comma list (or a list of such lists) into selections, keeping order.

    ``option`` (e.g. ``--solver``) prefixes every error, which also names the item's position.
    """
    prefix = f"{option}: " if option else ""
    chunks = [text] if isinstance(text, str) else list(text)
    selections: list[Selection] = []
    for chunk in chunks:
        if not isinstance(chunk, str):
            raise ParamError(f"{prefix}expected a string selector, got {chunk!r}")
        try:
            parts = split_top_level(chunk)
        except ParamError as exc:
            raise ParamError(f"{prefix}{exc}") from None
        for position, part in enumerate(parts, start=1):
            try:
                selections.append(parse_selection(part))
            except ParamError as exc:
                where = f"item {position} of {chunk!r}" if len(parts) > 1 else repr(chunk)
                raise ParamError(f"{prefix}{exc} ({where})") from None
    if not selections:
        raise ParamError(f"{prefix}empty selector")
    return selections


def resolve_params(
    owner: str, declared: Iterable[Param], given: Mapping[str, Any] | Iterable[tuple[str, Any]]
) -> dict[str, Any]:
    """Fill defaults and coerce ``given`` values; raise a one-line :class:`ParamError`.

    ``owner`` names the component in messages, e.g. ``solver 'euler'``.
    """
    declared_by_name = {param.name: param for param in declared}
    given_items = list(given.items()) if isinstance(given, Mapping) else list(given)
    resolved = {name: param.default for name, param in declared_by_name.items()}
    links: dict[str, tuple[str, float]] = {}
    for key, raw in given_items:
        param = declared_by_name.get(key)
        if param is None:
            valid = ", ".join(sorted(declared_by_name)) or "none"
            raise ParamError(f"unknown parameter {key!r} for {owner}; valid parameters: {valid}"
                             f"{did_you_mean(key, declared_by_name)}")
        link = _link(owner, raw, param, declared_by_name)
        if link is not None:
            links[key] = link
            continue
        try:
            resolved[key] = param.coerce(raw)
        except ValueError as exc:
            raise ParamError(f"bad value {format_value(raw)!r} for {owner} parameter {key!r}: {exc}"
                             f"{_hint(raw, param, declared_by_name)}") from None
    for key, (source, factor) in links.items():
        resolved[key] = _follow(owner, declared_by_name[key], dict(given_items)[key], source, factor, resolved, links)
    return resolved


def spec_params(declared: Iterable[Param], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a resolved spec records: ``resolved`` without the ``added`` ones at their default."""
    added_defaults = {param.name: param.default for param in declared if param.added}
    return {name: value for name, value in resolved.items()
            if not (name in added_defaults and value == added_defaults[name])}


LINK_DIGITS = 12
"""Significant digits a linked value keeps (``rtol*0.01`` of 1e-3 is 1e-05, not 1.0000000000000002e-05)."""

_LINK = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\*\s*([^\s*]+))?\s*$")


def _link(owner: str, raw: Any, param: Param, declared: Mapping[str, Param]) -> tuple[str, float] | None:
    """``(source, factor)`` when ``raw`` links a number parameter to another of the same component (``atol=rtol``,
    ``atol=rtol*0.01``), else ``None``."""
    if param.kind not in ("int", "float") or not isinstance(raw, str):
        return None
    match = _LINK.match(raw)
    if match is None or match.group(1) not in declared:
        return None
    try:
        factor = _coerce_float(match.group(2)) if match.group(2) is not None else 1.0
    except ValueError:
        raise ParamError(f"bad value {raw.strip()!r} for {owner} parameter {param.name!r}: the factor of a link "
                         f"must be a finite number, e.g. {param.name}={match.group(1)}*0.01") from None
    return match.group(1), factor


def _follow(owner: str, param: Param, raw: Any, source: str, factor: float, resolved: Mapping[str, Any],
            links: Mapping[str, tuple[str, float]]) -> Any:
    """The value of ``param`` linked to ``source`` (times ``factor``), checked like a typed value."""
    bad = f"bad value {str(raw).strip()!r} for {owner} parameter {param.name!r}"
    if source == param.name:
        raise ParamError(f"{bad}: a parameter cannot follow itself; write a number")
    if source in links:
        raise ParamError(f"{bad}: {source!r} itself follows {links[source][0]!r}; link to a parameter with a value")
    value = resolved[source]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(f"{bad}: {source!r} is not a number; a link names a number parameter, e.g. atol=rtol")
    linked = value * factor if factor != 1 else value
    if param.kind == "float":
        linked = float(f"{float(linked):.{LINK_DIGITS}g}")
    try:
        return param.coerce(linked)
    except ValueError as exc:
        raise ParamError(f"{bad}: {source} is {format_value(value)}, so {param.name} would be "
                         f"{format_value(linked)}: {exc}") from None


def _hint(raw: Any, param: Param, declared: Mapping[str, Param]) -> str:
    """What a rejected number may have meant: a range where none expands, or a misspelt link."""
    if not isinstance(raw, str) or param.kind not in ("int", "float"):
        return ""
    if ".." in raw:
        return ("; a range (A..B:N, A..B:xF, A..B:+S) expands only in the items of a grid axis (run's component "
                "options and config file, evaluate's --solver), not here")
    numbers = [name for name, other in declared.items() if other.kind in ("int", "float") and name != param.name]
    return did_you_mean(raw.strip().partition("*")[0].strip(), numbers)
