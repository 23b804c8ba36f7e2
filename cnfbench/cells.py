"""Cells: fully resolved points of the benchmark grid, as plain data with a stable id.

A :class:`Cell` names its dataset, field, training solver, training trace,
evaluation protocol, seed, budget and device, each with every parameter
filled in. It converts to and from plain JSON so that it can run in another
process or machine, and its id is a hash of that JSON.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from cnfbench.registry import ResolvedComponent

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
    """How a trained cell is evaluated on the test split."""

    trace: ResolvedComponent  # the (exact) trace used for every reported NLL
    ref_solver: ResolvedComponent  # the tight reference solve behind nll_ref
    ref_dtype: str  # "float64" or "float32"
    batch_size: int  # test samples per evaluation solve (bounds memory)
    mass_grid: int = 80  # points per axis of the 2D mass check; 0 turns it off


def _component_from_json(data: dict[str, Any]) -> ResolvedComponent:
    params = tuple((key, tuple(value) if isinstance(value, list) else value) for key, value in data["params"].items())
    return ResolvedComponent(data["name"], params)


@dataclass(frozen=True)
class Cell:
    """One fully resolved grid point."""

    dataset: ResolvedComponent
    field: ResolvedComponent
    solver: ResolvedComponent
    trace: ResolvedComponent
    seed: int
    budget: Budget
    evaluation: EvalProtocol
    device: str

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": CELL_SCHEMA,
            "dataset": self.dataset.to_json(),
            "field": self.field.to_json(),
            "solver": self.solver.to_json(),
            "trace": self.trace.to_json(),
            "seed": self.seed,
            "budget": {
                "iterations": self.budget.iterations,
                "batch_size": self.budget.batch_size,
                "lr": self.budget.lr,
                "max_nfe": self.budget.max_nfe,
            },
            "evaluation": {
                "trace": self.evaluation.trace.to_json(),
                "ref_solver": self.evaluation.ref_solver.to_json(),
                "ref_dtype": self.evaluation.ref_dtype,
                "batch_size": self.evaluation.batch_size,
                "mass_grid": self.evaluation.mass_grid,
            },
            "device": self.device,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cell:
        evaluation = data["evaluation"]
        return cls(
            dataset=_component_from_json(data["dataset"]),
            field=_component_from_json(data["field"]),
            solver=_component_from_json(data["solver"]),
            trace=_component_from_json(data["trace"]),
            seed=int(data["seed"]),
            budget=Budget(**data["budget"]),
            evaluation=EvalProtocol(
                trace=_component_from_json(evaluation["trace"]),
                ref_solver=_component_from_json(evaluation["ref_solver"]),
                ref_dtype=evaluation["ref_dtype"],
                batch_size=int(evaluation["batch_size"]),
                mass_grid=int(evaluation.get("mass_grid", 0)),
            ),
            device=data["device"],
        )

    @property
    def cell_id(self) -> str:
        """A 16-hex-digit hash of the resolved spec: equal specs, equal ids."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def describe(self) -> str:
        return (
            f"{self.dataset.label()} | {self.field.label()} | {self.solver.label()} | "
            f"{self.trace.label()} | seed {self.seed}"
        )


def expand_grid(
    datasets: list[ResolvedComponent],
    fields: list[ResolvedComponent],
    solvers: list[ResolvedComponent],
    traces: list[ResolvedComponent],
    seeds: list[int],
    budget: Budget,
    evaluation: EvalProtocol,
    device: str,
) -> list[Cell]:
    """Every combination, in dataset-major order, without duplicates."""
    cells: dict[str, Cell] = {}
    for dataset, field, solver, trace, seed in itertools.product(datasets, fields, solvers, traces, seeds):
        cell = Cell(dataset, field, solver, trace, seed, budget, evaluation, device)
        cells.setdefault(cell.cell_id, cell)
    return list(cells.values())
