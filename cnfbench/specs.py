"""Resolved component specs: a component's name with every declared parameter, as plain data.

A :class:`ResolvedComponent` is what a cell stores for each of its
components; it converts to and from JSON and prints as the selector a user
would type (``euler[steps=10,adjoint=false]``). It knows nothing of plugins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnfbench.params import format_value


@dataclass(frozen=True)
class ResolvedComponent:
    """A component name with every declared parameter filled and typed."""

    name: str
    params: tuple[tuple[str, Any], ...]

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    def label(self) -> str:
        """``name[k=v,...]`` with every parameter, in declaration order."""
        if not self.params:
            return self.name
        return f"{self.name}[{','.join(f'{k}={format_value(v)}' for k, v in self.params)}]"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": {k: list(v) if isinstance(v, tuple) else v for k, v in self.params}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResolvedComponent:
        params = tuple((key, tuple(value) if isinstance(value, list) else value)
                       for key, value in data["params"].items())
        return cls(data["name"], params)
