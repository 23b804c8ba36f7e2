"""Cells: fully resolved points of the benchmark grid, as plain data with a stable id.

A :class:`Cell` holds one component of every grid axis of the families
table (:data:`cnfbench.families.GRID_AXES`), the evaluation protocol (its
slots, :data:`cnfbench.families.EVAL_SLOTS`), the seed, the budget and the
device, each with every parameter filled in. It converts to and from plain
JSON so that it can run in another process or machine, and its id is a hash
of that JSON. This module loads no plugin and imports no torch.

A cell's JSON only ever grows by keys that are left out at their old
meaning (an axis's ``implicit`` component, an unset time budget, no
validation, no separate training components, no ``--compile``), so every cell of an earlier
release keeps its id.

A cell's **model key** hashes what its training depends on: the axes its
objective uses (with the training components when they differ from the
evaluation ones), the seed, the budget and the device, never the evaluation
protocol. Cells with one model key share one trained model.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cnfbench.families import AXIS_KEYS, EVAL_SLOTS, GRID_AXES
from cnfbench.specs import ResolvedComponent

CELL_SCHEMA = 1

METRICS_KEY = "metrics"
"""The key of the chosen metrics in a cell's ``evaluation`` JSON: present only when chosen, and no part of the id."""


SELECT_LAST, SELECT_BEST, SELECT_BEST_LOSS = "last", "best", "best_loss"
SELECTS_BEST = (SELECT_BEST, SELECT_BEST_LOSS)
"""The selections that keep the parameters of the best validation pass: by NLL, or by the objective's loss."""


@dataclass(frozen=True)
class Budget:
    """How a cell is trained: ``iterations`` steps of its optimizer on minibatches of ``batch_size`` at learning
    rate ``lr``. ``epochs`` (when the budget was given in epochs) says how many passes over the training split
    ``iterations`` makes (each pass ``n_train // batch_size`` minibatches, the short rest dropped).

    ``seconds`` (when set) trains for that much wall-clock of training iterations instead, with
    ``iterations`` as a cap. ``val_every`` > 0 records the validation NLL every that many iterations
    (with ``val_solver`` for an objective that trains without solving); ``select`` ``"best"`` keeps the
    parameters of the best validation NLL instead of the last ones. ``compile`` trains the field compiled by
    ``torch.compile`` (``--compile``, see :mod:`cnfbench.compiling`): it changes the trained weights slightly,
    so it is part of the cell and of its model key (and, unset, absent from both).
    """

    iterations: int
    batch_size: int
    lr: float
    max_nfe: int | None = None  # dynamics evaluations allowed per solve; None = unlimited
    seconds: float | None = None
    val_every: int = 0
    select: str = SELECT_LAST
    val_solver: ResolvedComponent | None = None
    compile: bool = False
    epochs: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"iterations": self.iterations, "batch_size": self.batch_size, "lr": self.lr,
                                "max_nfe": self.max_nfe}
        if self.seconds is not None:
            data["seconds"] = self.seconds
        if self.val_every:
            data["validation"] = {"every": self.val_every, "select": self.select,
                                  "solver": self.val_solver.to_json() if self.val_solver else None}
        if self.compile:
            data["compile"] = True
        if self.epochs is not None:
            data["epochs"] = self.epochs
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Budget:
        validation = data.get("validation") or {}
        solver = validation.get("solver")
        return cls(data["iterations"], data["batch_size"], data["lr"], data.get("max_nfe"), data.get("seconds"),
                   int(validation.get("every", 0)), str(validation.get("select", SELECT_LAST)),
                   ResolvedComponent.from_json(solver) if solver else None, bool(data.get("compile", False)),
                   data.get("epochs"))


@dataclass(frozen=True)
class EvalProtocol:
    """How a trained cell is evaluated on the test split: a component per evaluation slot, and settings.

    ``slots`` maps each slot key of :data:`cnfbench.families.EVAL_SLOTS` (``eval_trace``, ``ref_solver``)
    to its component. ``metrics`` are the metrics chosen (``--metrics``), ``None`` for the default set: they
    travel with the cell to its worker but are no part of its id (:attr:`Cell.cell_id`), so a metric added
    later (``cnfbench evaluate --metrics``) lands in the same row.
    """

    slots: Mapping[str, ResolvedComponent]
    ref_dtype: str  # "float64" or "float32"
    batch_size: int  # test samples per evaluation solve (bounds memory)
    mass_grid: int = 80  # points per axis of the 2D mass check; 0 turns it off
    metrics: tuple[ResolvedComponent, ...] | None = None

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
        data = {**{slot.json_key: self.slots[slot.key].to_json() for slot in EVAL_SLOTS},
                "ref_dtype": self.ref_dtype, "batch_size": self.batch_size, "mass_grid": self.mass_grid}
        if self.metrics is not None:
            data[METRICS_KEY] = [metric.to_json() for metric in self.metrics]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalProtocol:
        metrics = data.get(METRICS_KEY)
        return cls({slot.key: ResolvedComponent.from_json(data[slot.json_key]) for slot in EVAL_SLOTS},
                   data["ref_dtype"], int(data["batch_size"]), int(data.get("mass_grid", 0)),
                   None if metrics is None else tuple(ResolvedComponent.from_json(item) for item in metrics))


@dataclass(frozen=True)
class Cell:
    """One fully resolved grid point: ``axes`` maps every grid axis's key to its component.

    ``cell.solver`` (any axis key) is a shorthand for ``cell.axes["solver"]``. ``trained_with`` maps an
    axis to the component the model was trained with when that differs from the one it is evaluated
    with (``cnfbench evaluate`` of a likelihood-trained model with another solver); it is empty otherwise.
    """

    axes: Mapping[str, ResolvedComponent]
    seed: int
    budget: Budget
    evaluation: EvalProtocol
    device: str
    trained_with: Mapping[str, ResolvedComponent] = field(default_factory=dict)

    def __post_init__(self) -> None:
        implicit = {row.key: ResolvedComponent(row.implicit, ()) for row in GRID_AXES
                    if row.implicit and row.key not in self.axes}
        if implicit:  # an axis added later reads as the component cells used before it existed
            object.__setattr__(self, "axes", {**self.axes, **implicit})
        if set(self.axes) != set(AXIS_KEYS):
            raise ValueError(f"a cell needs one component per grid axis ({', '.join(AXIS_KEYS)}), "
                             f"got {', '.join(self.axes)}")
        unknown = set(self.trained_with) - set(AXIS_KEYS)
        if unknown:
            raise ValueError(f"trained_with names {', '.join(sorted(unknown))}, which are not grid axes")
        object.__setattr__(self, "axes", MappingProxyType({key: self.axes[key] for key in AXIS_KEYS}))
        object.__setattr__(self, "trained_with", MappingProxyType(
            {key: spec for key, spec in self.trained_with.items() if spec != self.axes[key]}))

    @property
    def training_axes(self) -> Mapping[str, ResolvedComponent]:
        """The components the model was trained with: the axes, with ``trained_with`` in place."""
        return MappingProxyType({**self.axes, **self.trained_with})

    def __getattr__(self, name: str) -> ResolvedComponent:
        axes = self.__dict__.get("axes", {})
        if name in axes:
            return axes[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_json(self) -> dict[str, Any]:
        data = {
            "schema": CELL_SCHEMA,
            **_axes_json(self.axes),
            "seed": self.seed,
            "budget": self.budget.to_json(),
            "evaluation": self.evaluation.to_json(),
            "device": self.device,
        }
        if self.trained_with:
            data["trained_with"] = {key: spec.to_json() for key, spec in self.trained_with.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cell:
        return cls(
            axes={row.key: (ResolvedComponent.from_json(data[row.key]) if row.key in data or not row.implicit
                            else ResolvedComponent(row.implicit, ())) for row in GRID_AXES},
            seed=int(data["seed"]),
            budget=Budget.from_json(data["budget"]),
            evaluation=EvalProtocol.from_json(data["evaluation"]),
            device=data["device"],
            trained_with={key: ResolvedComponent.from_json(spec)
                          for key, spec in (data.get("trained_with") or {}).items()},
        )

    @property
    def cell_id(self) -> str:
        """A 16-hex-digit hash of the resolved spec, the chosen metrics left out: equal specs, equal ids."""
        data = self.to_json()
        data["evaluation"] = {key: value for key, value in data["evaluation"].items() if key != METRICS_KEY}
        return _hash(data)

    def model_key(self, ignored: Sequence[str] = ()) -> str:
        """A 16-hex-digit hash of what training depends on; ``ignored`` names the axes the objective does
        not train with (their components then do not matter)."""
        training = {key: spec for key, spec in self.training_axes.items() if key not in ignored}
        return _hash({"schema": CELL_SCHEMA, "model": _axes_json(training), "seed": self.seed,
                      "budget": self.budget.to_json(), "device": self.device})

    def components(self) -> list[tuple[str, ResolvedComponent]]:
        """Every component the cell uses, with its family: the grid axes, then the evaluation slots."""
        return [*self.axes.items(), *((slot.family, self.evaluation.slots[slot.key]) for slot in EVAL_SLOTS)]

    def describe(self) -> str:
        return " | ".join([*(spec.label() for spec in self.axes.values()), f"seed {self.seed}"])


def _axes_json(axes: Mapping[str, ResolvedComponent]) -> dict[str, Any]:
    """The axes as JSON, leaving out an axis at its ``implicit`` component (see :class:`FamilyRow`)."""
    implicit = {row.key: row.implicit for row in GRID_AXES}
    return {key: spec.to_json() for key, spec in axes.items()
            if not (implicit[key] and spec == ResolvedComponent(implicit[key], ()))}


def _hash(data: Mapping[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


EARLIER_MEANING: dict[str, Any] = {
    **{column: row.implicit for row in GRID_AXES if row.implicit for column in (row.column, row.spec_column)},
    "val_every": 0, "select": SELECT_LAST, "val_solver_spec": "", "trained_with": "", "compile": False,
    "epochs": 0,
}
"""Identity columns of a row added after cnfbench 0.1.0, with what a row written before them means."""


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
