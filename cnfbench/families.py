"""The families table: every component family, its role, hook, option and columns, as plain data.

Everything that enumerates families derives from :data:`FAMILY_TABLE` and
:data:`EVAL_SLOTS`: a cell's JSON and id, a row's identity columns, the run
configuration's keys and the CLI's options, the axes of reports, compare and
the summary, progress labels, merge descriptions, the conformance kit's
dispatch and the plugin scaffold. The contract classes live in
:mod:`cnfbench.contracts`; this module names them only, so that it imports
nothing heavy and commands start fast.

A family has one of three roles:

* a **grid axis** (dataset, field, objective, solver, trace, optimizer): each cell picks one of
  its components, with every parameter, and the grid is their product;
* an **evaluation slot** is not a family but a component of an existing
  family in another role (the eval trace is a trace, the reference solver a
  solver), listed in :data:`EVAL_SLOTS`;
* **run-level** (executors, trackers, protocols): chosen once per run (one executor, ``--executor
  process[workers=2]``; any number of trackers, ``--tracker mlflow,tensorboard``; at most one published protocol,
  ``--protocol cfm-2d``, which sets the grid), never part of a cell, its id or its identity columns;
* **evaluation** (metrics): chosen once per run as a list (``--metrics likelihood,samples``), carried by each
  cell to its worker but never part of its id, so that ``cnfbench evaluate --metrics`` adds a metric to the
  rows a run already has.

Adding a family is: its contract in :mod:`cnfbench.contracts`, its row
here, its built-in plugin module, its conformance checks, its docs.
"""

from __future__ import annotations

from dataclasses import dataclass

GRID_AXIS = "grid axis"
RUN_LEVEL = "run-level"
EVALUATION = "evaluation"


@dataclass(frozen=True)
class FamilyRow:
    """One component family.

    ``contract`` names the class in :mod:`cnfbench.contracts`; ``hook`` the
    pluggy hook that returns the family's classes; ``option`` the ``run``
    option that selects its components (a comma list for a grid axis);
    ``default`` what ``run`` uses without that option; ``meaning`` the
    column's description, ``plural_meaning`` the same for several components
    (``ODE solvers (…)``, where ``meaning`` + ``s`` would pluralize the
    parenthesis) as ``run --help`` lists them. A grid axis writes two identity columns: the
    component's name (``column``) and its full spec (``spec_column``).

    ``implicit`` (an axis added after cnfbench 0.1.0) names the parameterless component that cells made
    before the axis existed used: a cell with it leaves the axis out of its JSON, so its id, its rows and
    its model files stay those of the earlier release, and a row or cell without the axis reads as it.
    """

    key: str
    plural: str
    contract: str
    hook: str
    role: str
    option: str
    default: tuple[str, ...]
    meaning: str
    example: str = ""
    implicit: str = ""
    plural_meaning: str = ""

    @property
    def column(self) -> str:
        return self.key

    @property
    def spec_column(self) -> str:
        return f"{self.key}_spec"

    @property
    def config_key(self) -> str:
        """The key of the run configuration (and of a TOML config file)."""
        return self.key


@dataclass(frozen=True)
class EvalSlot:
    """A component of an existing family in an evaluation role (same for every cell of a run).

    ``json_key`` is its key in the cell's ``evaluation`` JSON (part of the cell id, so it never changes);
    ``config_key`` its run-configuration key; ``spec_column`` its row column.
    """

    key: str
    family: str
    json_key: str
    option: str
    default: str
    meaning: str
    noun: str

    @property
    def config_key(self) -> str:
        return self.key

    @property
    def spec_column(self) -> str:
        return f"{self.key}_spec"


FAMILY_TABLE: tuple[FamilyRow, ...] = (
    FamilyRow("dataset", "datasets", "Dataset", "cnfbench_datasets", GRID_AXIS, "--dataset", ("8gaussians",),
              "dataset", "8gaussians,moons[n_train=5000]", plural_meaning="datasets"),
    FamilyRow("field", "fields", "VectorField", "cnfbench_fields", GRID_AXIS, "--field", ("concatsquash",),
              "vector field", "concatsquash[hidden=64-64,activation=elu]", plural_meaning="vector fields"),
    FamilyRow("objective", "objectives", "Objective", "cnfbench_objectives", GRID_AXIS, "--objective", ("mle",),
              "training objective", "mle,rnode[kinetic=0.01,jacobian=0.01],cfm[sigma=0.01]", implicit="mle",
              plural_meaning="training objectives"),
    FamilyRow("solver", "solvers", "Solver", "cnfbench_solvers", GRID_AXIS, "--solver", ("dopri5",),
              "ODE solver (training when the objective solves, evaluation, sampling)",
              "euler[steps=10],dopri5[rtol=1e-5,atol=1e-5]",
              plural_meaning="ODE solvers (training when the objective solves, evaluation, sampling)"),
    FamilyRow("trace", "traces", "TraceEstimator", "cnfbench_traces", GRID_AXIS, "--trace", ("exact",),
              "training trace estimator", "exact,hutchinson[noise=rademacher]",
              plural_meaning="training trace estimators"),
    FamilyRow("optimizer", "optimizers", "Optimizer", "cnfbench_optimizers", GRID_AXIS, "--optimizer", ("adam",),
              "optimizer (parameter update of training)", "adam,adamw[weight_decay=1e-5,ema=0.999]", implicit="adam",
              plural_meaning="optimizers (parameter update of training)"),
    FamilyRow("executor", "executors", "Executor", "cnfbench_executors", RUN_LEVEL, "--executor", ("process",),
              "where the cells run", "process[workers=2]", plural_meaning="where the cells run"),
    FamilyRow("tracker", "trackers", "Tracker", "cnfbench_trackers", RUN_LEVEL, "--tracker", (),
              "experiment tracker the run logs every cell to", "mlflow,tensorboard",
              plural_meaning="experiment trackers the run logs every cell to"),
    FamilyRow("protocol", "protocols", "Protocol", "cnfbench_protocols", RUN_LEVEL, "--protocol", (),
              "published protocol the run reproduces", "cfm-2d", plural_meaning="published protocols"),
    FamilyRow("metric", "metrics", "Metric", "cnfbench_metrics", EVALUATION, "--metrics", ("default",),
              "evaluation metric", "likelihood,validity,w2", plural_meaning="evaluation metrics"),
)
"""Every component family, in the order a cell and a row list them."""

EVAL_SLOTS: tuple[EvalSlot, ...] = (
    EvalSlot("eval_trace", "trace", "trace", "--eval-trace", "exact",
             "trace estimator of every reported NLL (exact)", "evaluation trace"),
    EvalSlot("ref_solver", "solver", "ref_solver", "--ref-solver", "dopri5[rtol=1e-7,atol=1e-7]",
             "reference solve behind nll_ref", "reference solver"),
)
"""The evaluation protocol's components: each a component of a family in another role."""

FAMILIES_BY_KEY: dict[str, FamilyRow] = {row.key: row for row in FAMILY_TABLE}
SLOTS_BY_KEY: dict[str, EvalSlot] = {slot.key: slot for slot in EVAL_SLOTS}

GRID_AXES: tuple[FamilyRow, ...] = tuple(row for row in FAMILY_TABLE if row.role == GRID_AXIS)
"""The families whose components span the grid, in cell order."""

AXIS_KEYS: tuple[str, ...] = tuple(row.key for row in GRID_AXES)
AXIS_SPEC_COLUMNS: tuple[str, ...] = tuple(row.spec_column for row in GRID_AXES)
SLOT_SPEC_COLUMNS: tuple[str, ...] = tuple(slot.spec_column for slot in EVAL_SLOTS)

RUN_LEVEL_FAMILIES: tuple[FamilyRow, ...] = tuple(row for row in FAMILY_TABLE if row.role == RUN_LEVEL)
"""The families chosen once per run (one component each), never part of a cell."""


def family(key: str) -> FamilyRow:
    """The row of family ``key``; ``KeyError`` names the valid ones."""
    try:
        return FAMILIES_BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown family {key!r}; families: {', '.join(FAMILIES_BY_KEY)}") from None
