"""Cells: fully resolved points of the benchmark grid, as plain data with a stable id.

A :class:`Cell` holds one component of every grid axis of the families
table (:data:`cnfbench.families.GRID_AXES`), the evaluation protocol (its
slots, :data:`cnfbench.families.EVAL_SLOTS`), the seed, the budget and the
device, each with every parameter filled in. It converts to and from plain
JSON so that it can run in another process or machine, and its id is a hash
of that JSON. This module loads no plugin and imports no torch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cnfbench.families import AXIS_KEYS, EVAL_SLOTS
from cnfbench.specs import ResolvedComponent

CELL_SCHEMA = 1


@dataclass(frozen=True)
class Budget:
    """How a cell is trained: Adam for ``iterations`` steps of ``batch_size`` at learning rate ``lr``."""

    iterations: int
    batch_size: int
    lr: float
    max_nfe: int | None = None  # dynamics evaluations allowed per solve; None = unlimited


@dataclass(frozen=True)
class EvalProtocol:
    """How a trained cell is evaluated on the test split: a component per evaluation slot, and settings.

    ``slots`` maps each slot key of :data:`cnfbench.families.EVAL_SLOTS` (``eval_trace``, ``ref_solver``)
    to its component.
    """

    slots: Mapping[str, ResolvedComponent]
    ref_dtype: str  # "float64" or "float32"
    batch_size: int  # test samples per evaluation solve (bounds memory)
    mass_grid: int = 80  # points per axis of the 2D mass check; 0 turns it off

    def __post_init__(self) -> None:
        missing = [slot.key for slot in EVAL_SLOTS if slot.key not in self.slots]
        if missing:
            raise ValueError(f"evaluation protocol without {', '.join(missing)}")
        object.__setattr__(self, "slots", MappingProxyType(dict(self.slots)))

    @property
    def trace(self) -> ResolvedComponent:
        """The (exact) trace estimator of every reported NLL."""
        return self.slots["eval_trace"]

    @property
    def ref_solver(self) -> ResolvedComponent:
        """The tight reference solve behind ``nll_ref``."""
        return self.slots["ref_solver"]

    def to_json(self) -> dict[str, Any]:
        return {**{slot.json_key: self.slots[slot.key].to_json() for slot in EVAL_SLOTS},
                "ref_dtype": self.ref_dtype, "batch_size": self.batch_size, "mass_grid": self.mass_grid}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalProtocol:
        return cls({slot.key: ResolvedComponent.from_json(data[slot.json_key]) for slot in EVAL_SLOTS},
                   data["ref_dtype"], int(data["batch_size"]), int(data.get("mass_grid", 0)))


@dataclass(frozen=True)
class Cell:
    """One fully resolved grid point: ``axes`` maps every grid axis's key to its component.

    ``cell.solver`` (any axis key) is a shorthand for ``cell.axes["solver"]``.
    """

    axes: Mapping[str, ResolvedComponent]
    seed: int
    budget: Budget
    evaluation: EvalProtocol
    device: str

    def __post_init__(self) -> None:
        if set(self.axes) != set(AXIS_KEYS):
            raise ValueError(f"a cell needs one component per grid axis ({', '.join(AXIS_KEYS)}), "
                             f"got {', '.join(self.axes)}")
        object.__setattr__(self, "axes", MappingProxyType({key: self.axes[key] for key in AXIS_KEYS}))

    def __getattr__(self, name: str) -> ResolvedComponent:
        axes = self.__dict__.get("axes", {})
        if name in axes:
            return axes[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": CELL_SCHEMA,
            **{key: spec.to_json() for key, spec in self.axes.items()},
            "seed": self.seed,
            "budget": {
                "iterations": self.budget.iterations,
                "batch_size": self.budget.batch_size,
                "lr": self.budget.lr,
                "max_nfe": self.budget.max_nfe,
            },
            "evaluation": self.evaluation.to_json(),
            "device": self.device,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cell:
        return cls(
            axes={key: ResolvedComponent.from_json(data[key]) for key in AXIS_KEYS},
            seed=int(data["seed"]),
            budget=Budget(**data["budget"]),
            evaluation=EvalProtocol.from_json(data["evaluation"]),
            device=data["device"],
        )

    @property
    def cell_id(self) -> str:
        """A 16-hex-digit hash of the resolved spec: equal specs, equal ids."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def components(self) -> list[tuple[str, ResolvedComponent]]:
        """Every component the cell uses, with its family: the grid axes, then the evaluation slots."""
        return [*self.axes.items(), *((slot.family, self.evaluation.slots[slot.key]) for slot in EVAL_SLOTS)]

    def describe(self) -> str:
        return " | ".join([*(spec.label() for spec in self.axes.values()), f"seed {self.seed}"])


def expand_grid(
    axes: Mapping[str, Sequence[ResolvedComponent]],
    seeds: Sequence[int],
    budget: Budget,
    evaluation: EvalProtocol,
    device: str,
) -> list[Cell]:
    """Every combination of the axes' components and the seeds, in axis-major order, without duplicates."""
    keys = list(AXIS_KEYS)
    cells: dict[str, Cell] = {}
    for *chosen, seed in itertools.product(*(axes[key] for key in keys), seeds):
        cell = Cell(dict(zip(keys, chosen, strict=True)), seed, budget, evaluation, device)
        cells.setdefault(cell.cell_id, cell)
    return list(cells.values())
