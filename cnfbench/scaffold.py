"""Write a ready-to-install cnfbench plugin package from templates (``cnfbench new-plugin``).

``write_plugin("my-flows", ("field", "solver"))`` creates::

    my-flows/
      pyproject.toml            setuptools project; entry point  my_flows = "my_flows.plugin"  in group cnfbench
      README.md                 install, list, run, test
      src/my_flows/__init__.py
      src/my_flows/plugin.py    one documented, working example component and hook per family
      tests/test_plugin.py      cnfbench's conformance kit on every component

Component names are prefixed with the package name (``my_flows_mlp``,
``my_flows_heun``, ``my_flows_exact``, ``my_flows_gaussian``,
``my_flows_cfm``) so that two scaffolded plugins never collide.
"""

from __future__ import annotations

import keyword
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from string import Template

from cnfbench.families import FAMILIES_BY_KEY

FAMILY_ORDER = ("field", "solver", "trace", "dataset", "objective", "optimizer", "executor", "tracker", "metric",
                "protocol")
"""The families a template exists for, in the order they appear in ``plugin.py`` (every family of the families
table needs one: a test checks it)."""

DEFAULT_FAMILIES = ("field",)

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)*")

_RESERVED = {"cnfbench", "cnfbench_plugins", "torch", "torchdiffeq", "pluggy", "numpy", "pandas", "pyarrow",
             "click", "matplotlib", "pytest", "setuptools", "pip", "test", "tests", "src"}


MAX_NAME_LENGTH = 64
"""Longest plugin name: it becomes folder and file names, which file systems limit to 255 bytes."""


class ScaffoldError(ValueError):
    """The plugin cannot be written; the message is one line for the user."""


def package_name(name: str) -> str:
    """The import name for the distribution ``name`` (lowercase, ``-`` → ``_``); raise :class:`ScaffoldError`."""
    if not _NAME.fullmatch(name):
        raise ScaffoldError(
            f"invalid plugin name {name!r}: use letters, digits and single '-' or '_' between them, "
            f"starting with a letter (e.g. my-flows)"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise ScaffoldError(f"invalid plugin name {name[:20]}…: at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    package = name.lower().replace("-", "_")
    if keyword.iskeyword(package):
        raise ScaffoldError(f"invalid plugin name {name!r}: {package!r} is a Python keyword")
    if package in _RESERVED or package in sys.stdlib_module_names:
        raise ScaffoldError(f"invalid plugin name {name!r}: the package {package!r} would shadow an existing module")
    return package


def parse_families(items: str | Iterable[str]) -> tuple[str, ...]:
    """``"field,solver"`` (or several such strings; ``all`` for every family) → families in canonical order."""
    chunks = [items] if isinstance(items, str) else list(items)
    wanted = {part.strip().lower() for chunk in chunks for part in chunk.split(",") if part.strip()}
    if "all" in wanted:
        wanted = (wanted - {"all"}) | set(FAMILY_ORDER)
    unknown = sorted(wanted - set(FAMILY_ORDER))
    if unknown:
        raise ScaffoldError(f"unknown family {unknown[0]!r} in --family; choose from {', '.join(FAMILY_ORDER)} or all")
    if not wanted:
        raise ScaffoldError(f"--family is empty; choose from {', '.join(FAMILY_ORDER)} or all")
    return tuple(family for family in FAMILY_ORDER if family in wanted)


def component_names(name: str, families: Iterable[str]) -> dict[str, str]:
    """The registered name of the example component of each family."""
    package = package_name(name)
    suffix = {"field": "mlp", "solver": "heun", "trace": "exact", "dataset": "gaussian", "objective": "cfm",
              "optimizer": "sgd", "executor": "pool", "tracker": "csv", "metric": "mean_shift", "protocol": "toy"}
    return {family: f"{package}_{suffix[family]}" for family in families}


# --------------------------------------------------------------------------- templates

_FIELD = '''

class MLPField(VectorField):
    """A small MLP on ``[z, t]``: ``v(t, z) = W_out tanh(... tanh(W_1 [z, t] + b_1) ...) + b_out``.

    cnfbench builds it as ``Field(dim, **params)`` with the data's dimension.
    ``forward(t, z)`` gets ``t`` as a 0-dim tensor and ``z`` as ``[B, dim]`` and
    returns ``dz/dt`` of shape ``[B, dim]`` in ``z``'s dtype (float32 in
    training, float64 in the reference solve). Rows must not interact (no
    batch norm): the trace of the batch Jacobian must be each sample's
    divergence. The harness seeds torch's global RNG before building the
    field, so ``nn.Linear``'s random initialisation is reproducible.
    """

    name = "${field_name}"
    description = "small tanh MLP on [z, t] (example field of ${dist})"
    params = (
        Param("hidden", "int", 64, "width of each hidden layer", minimum=1),
        Param("depth", "int", 2, "number of hidden layers", minimum=1),
    )

    def __init__(self, dim: int, hidden: int = 64, depth: int = 2) -> None:
        super().__init__(dim, hidden=hidden, depth=depth)
        widths = [dim + 1] + [hidden] * depth
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.output = nn.Linear(hidden, dim)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        time = t.reshape(1, 1).to(z.dtype).expand(z.shape[0], 1)
        h = torch.cat([z, time], dim=1)
        for layer in self.hidden_layers:
            h = torch.tanh(layer(h))
        return self.output(h)
'''

_SOLVER = '''

class HeunSolver(Solver):
    """Heun's method (the explicit trapezoidal rule): second order, ``steps`` equal steps.

    cnfbench builds it as ``Solver(**params)``. ``integrate(dynamics, state,
    t0, t1)`` gets the state as a tuple of tensors and returns the tuple at
    ``t1``; ``t1 < t0`` when cnfbench integrates a density backwards in time.
    Evaluate the dynamics as ``dynamics(t, state)`` with ``t`` a 0-dim tensor
    and never count evaluations yourself: the harness counts them. Keep the
    result differentiable (plain autograd here). ``expected_nfe()`` says what
    one solve costs, and the conformance kit checks that it is true, as it
    checks ``order`` (the error shrinks like ``h**order`` as ``steps`` grows).
    """

    name = "${solver_name}"
    description = "fixed-step Heun (explicit trapezoid), 2 evaluations/step (example solver of ${dist})"
    params = (Param("steps", "int", 10, "equal steps over the integration interval", minimum=1, maximum=100000),)
    adaptive = False
    nfe_per_step = 2
    order = 2

    def __init__(self, steps: int = 10) -> None:
        super().__init__(steps=steps)
        self.steps = steps

    def integrate(
        self, dynamics: Dynamics, state: tuple[Tensor, ...], t0: float, t1: float
    ) -> tuple[Tensor, ...]:
        h = (t1 - t0) / self.steps
        reference = state[0]
        y = tuple(state)
        for step in range(self.steps):
            t = torch.tensor(t0 + step * h, dtype=reference.dtype, device=reference.device)
            k1 = dynamics(t, y)
            predicted = tuple(yi + h * ki for yi, ki in zip(y, k1, strict=True))
            k2 = dynamics(t + h, predicted)
            y = tuple(yi + 0.5 * h * (a + b) for yi, a, b in zip(y, k1, k2, strict=True))
        return y

    def expected_nfe(self) -> int | None:
        return self.nfe_per_step * self.steps
'''

_TRACE = '''

class ExactTrace(TraceEstimator):
    """The exact divergence ``sum_i dv_i/dz_i``, one vector-Jacobian product per dimension.

    cnfbench builds it as ``Trace(**params)``. ``begin_solve(z, generator)``
    is called once per solve: a stochastic estimator (``stochastic = True``)
    draws its probe there, from ``generator`` only, and reuses it at every
    step of that solve. ``__call__`` returns ``(dz, div)``: ``dz = field(t, z)``
    of shape ``[B, D]`` and ``div`` of shape ``[B]``; ``z`` requires grad, and
    ``create_graph`` is True when training will differentiate ``div`` again.
    """

    name = "${trace_name}"
    description = "exact divergence by D backward passes (example trace of ${dist})"
    params = ()  # declare Param(...) entries here, as the other families do
    stochastic = False

    def __call__(self, field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        dz = field(t, z)
        div = torch.zeros(z.shape[0], dtype=dz.dtype, device=dz.device)
        if not dz.requires_grad:  # the field depends neither on z nor on parameters: divergence 0
            return dz, div
        for i in range(z.shape[1]):
            (grad_i,) = torch.autograd.grad(
                dz[:, i].sum(), z, create_graph=create_graph, retain_graph=True, allow_unused=True
            )
            if grad_i is not None:  # None when the field does not depend on z
                div = div + grad_i[:, i]
        return dz, div
'''

_DATASET = '''

class GaussianDataset(SampledDataset):
    """A correlated 2D Gaussian ``N(0, scale^2 [[1, rho], [rho, 1]])`` whose exact log-density is known.

    cnfbench builds it as ``Dataset(**params)``. A ``SampledDataset`` only
    implements ``sample(n, generator)``, drawing with that generator and
    never with the global RNG, and declares the split sizes (``SPLIT_PARAMS``);
    cnfbench draws train, validation and test from separate seeded streams.
    ``has_density``/``log_prob`` give the true density, so cnfbench can report
    how far a model's NLL is from the data's entropy.
    """

    name = "${dataset_name}"
    description = "2D Gaussian with correlation rho, known density (example dataset of ${dist})"
    params = (
        Param("scale", "float", 1.0, "standard deviation of each coordinate", minimum=1e-3),
        Param("rho", "float", 0.8, "correlation of the two coordinates", minimum=-0.99, maximum=0.99),
        *SPLIT_PARAMS,
    )

    def __init__(self, **params: Any) -> None:
        # Fill the declared defaults, so that GaussianDataset() also works outside cnfbench.
        super().__init__(**resolve_params(f"dataset {self.name!r}", self.params, params))
        scale, rho = float(self.config["scale"]), float(self.config["rho"])
        self.cholesky = scale * torch.tensor([[1.0, 0.0], [rho, math.sqrt(1.0 - rho**2)]], dtype=torch.float64)

    @property
    def dim(self) -> int:
        return 2

    @property
    def has_density(self) -> bool:
        return True

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (noise @ self.cholesky.T).to(torch.float32)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density in nats, shape ``[N]``, computed in float64 and returned in ``x``'s dtype."""
        white = torch.linalg.solve_triangular(self.cholesky, x.to(torch.float64).T, upper=False).T
        log_det = torch.log(torch.diagonal(self.cholesky)).sum()
        return (-0.5 * white.pow(2).sum(dim=1) - log_det - math.log(2.0 * math.pi)).to(x.dtype)
'''

_OBJECTIVE = '''

class FlowMatching(Objective):
    """Conditional flow matching on straight paths: regress ``v(t, x_t)`` on ``x1 - x0``, without an ODE solve.

    cnfbench builds it as ``Objective(**params)`` and calls ``loss(context, x)``
    once per training minibatch ``x`` ``[B, D]``: the data, at t=1 (the base
    ``N(0, I)`` is at t=0). It returns an ``ObjectiveLoss``: a differentiable
    0-dim ``loss`` to minimise, in ``loss_unit``, and its named parts as plain
    floats (``terms``, for the training curves). Draw every random number from
    ``context.generator`` (seeded per cell, on the CPU: move the draws to
    ``x``'s device) and evaluate the field through ``context.velocity(t, z)``
    (``t`` 0-dim or one time per row), so runs are reproducible and the harness
    counts the evaluations. An objective that needs the model's log-density
    keeps ``uses_solver = True`` and ``uses_trace = True`` (the defaults) and
    calls ``context.log_likelihood(x)``, which solves the CNF with the cell's
    solver and trace; declaring both False, as here, lets cnfbench train once
    per seed for all the solvers and traces of a grid.
    """

    name = "${objective_name}"
    description = "conditional flow matching on straight paths, no ODE solve (example objective of ${dist})"
    params = (Param("sigma", "float", 0.0, "std of the Gaussian around each straight path", minimum=0.0),)
    uses_solver = False
    uses_trace = False
    loss_unit = "(data unit/time)²/sample"

    def __init__(self, sigma: float = 0.0) -> None:
        super().__init__(sigma=sigma)
        self.sigma = sigma

    def loss(self, context: TrainingContext, x: Tensor) -> ObjectiveLoss:
        batch, dim = x.shape
        generator = context.generator
        x0 = torch.randn(batch, dim, generator=generator, dtype=x.dtype).to(x.device)
        t = torch.rand(batch, generator=generator, dtype=x.dtype).to(x.device)
        noise = torch.randn(batch, dim, generator=generator, dtype=x.dtype).to(x.device)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x + self.sigma * noise
        loss = (context.velocity(t, x_t) - (x - x0)).pow(2).sum(dim=1).mean()
        return ObjectiveLoss(loss, {"flow_matching": loss.item()})
'''

_EXECUTOR = '''

class PoolExecutor(Executor):
    """Runs cells on a ``concurrent.futures`` pool of ``workers`` spawned processes.

    cnfbench builds it once per run as ``Executor(context, **params)`` and calls
    ``run_cell(job, progress)`` from ``slots`` threads at once; it writes each
    outcome to the run folder itself. ``job.cell`` is the cell as plain JSON:
    ship ``context.payload(job)`` (plain data, the plugins by content) to a
    worker, run ``cnfbench.worker.run_cell_payload`` there, and hand what it
    returns to ``context.outcome``. A cell that does not finish is a row from
    ``context.failed``, never an exception. A pool cannot stop a running task,
    so a cell past ``--timeout`` is reported but its worker runs on: the
    built-in ``process`` executor kills it instead.
    """

    name = "${executor_name}"
    description = "cells on a concurrent.futures process pool, no hard timeout (example executor of ${dist})"
    params = (Param("workers", "int", 2, "worker processes", minimum=1, maximum=256),)

    def __init__(self, context: ExecutorContext, workers: int = 2) -> None:
        super().__init__(context, workers=workers)
        self.slots = workers
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def run_cell(self, job: CellJob, progress: ProgressHook) -> CellOutcome:
        started = time.monotonic()
        future = self._pool.submit(run_cell_payload, self.context.payload(job, workers=self.slots))
        try:
            return self.context.outcome(job, future.result(timeout=self.context.timeout))
        except TimeoutError:
            return self.context.failed(job, "timeout", f"timeout after {time.monotonic() - started:.1f} s "
                                                       f"(--timeout {self.context.timeout:g} s)",
                                       time.monotonic() - started)
        except BrokenProcessPool:
            self._pool = ProcessPoolExecutor(self.slots, mp_context=multiprocessing.get_context("spawn"))
            return self.context.failed(job, "error", "the worker process died", time.monotonic() - started)
        except KeyboardInterrupt:
            future.cancel()
            raise CellInterrupted(self.context.failed(job, "interrupted", INTERRUPTED,
                                                      time.monotonic() - started)) from None

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
'''

_TRACKER = '''

class CsvTracker(Tracker):
    \"\"\"Appends every training iteration of every cell to ``<run folder>/${tracker_name}.csv``.

    cnfbench builds it once per run, in the main process, as
    ``Tracker(run_dir, **params)`` — the constructor only checks and writes
    nothing — then calls ``start`` (open the store), for each finished cell
    ``log_iteration(cell, step, values)`` per iteration of its training curve
    and ``log_cell(cell, row)``, and ``close``. ``cell`` is ``{"cell_id",
    "label", "spec"}``. What a tracker raises is a warning; the run goes on.
    \"\"\"

    name = "${tracker_name}"
    description = "every iteration of every cell as CSV lines (example tracker of ${dist})"
    params = (Param("file", "str", "${tracker_name}.csv", "file name in the run folder"),)

    def __init__(self, run_dir: str, file: str = "${tracker_name}.csv") -> None:
        super().__init__(run_dir, file=file)
        self.path = Path(run_dir) / file

    def start(self, run: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as stream:
            csv.writer(stream).writerow(["cell_id", "step", "name", "value"])

    def log_iteration(self, cell: dict[str, Any], step: int, values: dict[str, float]) -> None:
        with self.path.open("a", newline="") as stream:
            csv.writer(stream).writerows([cell["cell_id"], step, name, value] for name, value in values.items())

    def log_cell(self, cell: dict[str, Any], row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as stream:
            csv.writer(stream).writerow([cell["cell_id"], "final", "status", row.get("status")])
'''

_METRIC = '''

class MeanShift(Metric):
    \"\"\"How far the model samples' mean is from the test data's: ``‖mean(samples) - mean(test)‖``.

    cnfbench builds it once per cell as ``Metric(**params)`` and calls ``compute(inputs)`` with the inputs it
    declares in ``needs`` (``cnfbench.contracts.METRIC_INPUTS``): the harness computes each input once per cell
    and shares it between metrics, so a metric never solves the model itself. ``columns`` declares every column
    it returns with its unit, meaning and goal; reports show them, and ``compare`` judges them by the goal.
    ``cnfbench run --metrics default,${metric_name}`` adds it to a run; ``cnfbench evaluate RUN --metrics
    ${metric_name}`` adds it to a finished one.
    \"\"\"

    name = "${metric_name}"
    description = "distance between the model samples' mean and the test data's (example metric of ${dist})"
    group = "samples"
    columns = (Column("${metric_name}", "data units", "‖mean(model samples) - mean(test points)‖", goal="min",
                      comparison="difference"),)
    needs = ("sample", "test")

    def compute(self, inputs: MetricInputs) -> dict[str, float]:
        samples, test = inputs["sample"].x, inputs["test"]
        shift = samples.double().mean(dim=0) - test.double().mean(dim=0)
        return {"${metric_name}": float(shift.norm())}
'''

_OPTIMIZER = '''

class _SgdUpdate:
    """The update of one training run: SGD with momentum, and no averaged weights."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()

    def averaged(self) -> dict[str, Tensor] | None:
        return None  # an EMA would return its weights by state_dict name: those are validated and kept


class MomentumSGD(Optimizer):
    """Stochastic gradient descent with momentum at the budget's learning rate (``--lr``).

    cnfbench builds it as ``Optimizer(**params)`` and calls ``build(module, lr, iterations)`` once per training
    run; the object it returns updates the field after each backward pass. It must draw no random numbers, so
    that a seeded run repeats exactly.
    """

    name = "${optimizer_name}"
    description = "SGD with momentum (example optimizer of ${dist})"
    params = (Param("momentum", "float", 0.9, "momentum factor", minimum=0, maximum=0.999),)

    def build(self, module: torch.nn.Module, lr: float, iterations: int) -> TrainingOptimizer:
        trainable = [p for p in module.parameters() if p.requires_grad]
        return _SgdUpdate(torch.optim.SGD(trainable, lr=lr, momentum=float(self.config["momentum"])))
'''

_PROTOCOL = '''

_TOY_PROTOCOL = """
name = "${protocol_name}"
title = "Flow matching on two 2-D toys, density panels beside the data (example protocol of ${dist})"
kind = "visual"
sources = ["Write the paper, table or figure and the code this protocol follows here."]
notes = ["Compare `cnfbench report RUN --plots` with the figure the sources name."]

[settings]
dataset = ["8gaussians", "moons"]
objective = ["cfm[sigma=0.1]"]
solver = ["euler[steps=50]"]
lr = 1e-3
seeds = 2
metrics = ["default", "density_plot"]

[scales.full]
iterations = 2000

[scales.quick]
iterations = 20
seeds = 1
comparable = false
why = "20 iterations: the panels show the pipeline only"
"""


class ToyProtocol(Protocol):
    """A published protocol as data: its grid, budgets and evaluation, and the numbers it reproduces.

    ``document()`` returns TOML with the keys of ``cnfbench.protocols`` (``[settings]``, ``[scales.full]``,
    ``[scales.quick]``, ``[[groups]]``, ``[[published]]`` with the paper's value, its ± and unit).
    ``cnfbench run --protocol ${protocol_name} --scale quick`` runs it; ``cnfbench report RUN --published`` puts a
    ``numbers`` protocol's published values beside the run's.
    """

    name = "${protocol_name}"
    description = "flow matching on two 2-D toys (example protocol of ${dist})"

    @classmethod
    def document(cls) -> str:
        return _TOY_PROTOCOL
'''

_HOOKS = {
    "optimizer": '''

@hookimpl
def cnfbench_optimizers() -> list[type[Optimizer]]:
    """The optimizers this plugin adds: ``cnfbench run --optimizer "${optimizer_name}[momentum=0.9]"``."""
    return [MomentumSGD]
''',
    "protocol": '''

@hookimpl
def cnfbench_protocols() -> list[type[Protocol]]:
    """The protocols this plugin adds: ``cnfbench run --protocol ${protocol_name} --scale quick``."""
    return [ToyProtocol]
''',
    "metric": '''

@hookimpl
def cnfbench_metrics() -> list[type[Metric]]:
    """The metrics this plugin adds: ``cnfbench run --metrics default,${metric_name}``."""
    return [MeanShift]
''',
    "tracker": '''

@hookimpl
def cnfbench_trackers() -> list[type[Tracker]]:
    \"\"\"The trackers this plugin adds: ``cnfbench run --tracker ${tracker_name}``.\"\"\"
    return [CsvTracker]
''',
    "executor": '''

@hookimpl
def cnfbench_executors() -> list[type[Executor]]:
    """The executors this plugin adds: ``cnfbench run --executor "${executor_name}[workers=2]"``."""
    return [PoolExecutor]
''',
    "field": '''

@hookimpl
def cnfbench_fields() -> list[type[VectorField]]:
    """The vector fields this plugin adds: ``cnfbench run --field ${field_name}``."""
    return [MLPField]
''',
    "solver": '''

@hookimpl
def cnfbench_solvers() -> list[type[Solver]]:
    """The ODE solvers this plugin adds: ``cnfbench run --solver "${solver_name}[steps=20]"``."""
    return [HeunSolver]
''',
    "trace": '''

@hookimpl
def cnfbench_traces() -> list[type[TraceEstimator]]:
    """The trace estimators this plugin adds: ``cnfbench run --trace ${trace_name}``."""
    return [ExactTrace]
''',
    "dataset": '''

@hookimpl
def cnfbench_datasets() -> list[type[SampledDataset]]:
    """The datasets this plugin adds: ``cnfbench run --dataset "${dataset_name}[rho=0.9]"``."""
    return [GaussianDataset]
''',
    "objective": '''

@hookimpl
def cnfbench_objectives() -> list[type[Objective]]:
    """The training objectives this plugin adds: ``cnfbench run --objective "${objective_name}[sigma=0.01]"``."""
    return [FlowMatching]
''',
}

_BODIES = {"field": _FIELD, "solver": _SOLVER, "trace": _TRACE, "dataset": _DATASET, "objective": _OBJECTIVE,
           "executor": _EXECUTOR, "tracker": _TRACKER, "metric": _METRIC, "optimizer": _OPTIMIZER,
           "protocol": _PROTOCOL}

_CONTRACT_NAMES = {
    "field": ["VectorField"],
    "solver": ["Dynamics", "Solver"],
    "trace": ["FieldFunction", "TraceEstimator"],
    "dataset": ["SPLIT_PARAMS", "SampledDataset"],
    "objective": ["Objective", "ObjectiveLoss", "TrainingContext"],
    "executor": ["INTERRUPTED", "CellInterrupted", "CellJob", "CellOutcome", "Executor", "ExecutorContext",
                 "ProgressHook"],
    "tracker": ["Tracker"],
    "metric": ["Metric", "MetricInputs"],
    "optimizer": ["Optimizer", "TrainingOptimizer"],
    "protocol": ["Protocol"],
}

_PLUGIN_DOC = '''"""The cnfbench plugin of ${dist}. It adds:

${doc_list}

cnfbench imports this module through the entry point in pyproject.toml
(group ``cnfbench``) once the package is installed; ``cnfbench plugins``
lists it. Each ``@hookimpl`` function below returns the component classes of
one family. A component class has a unique ``name``, a one-line
``description`` and its ``params``, declared as
``Param(name, kind, default, help, choices=..., minimum=..., maximum=...)``
so that ``cnfbench run`` validates values such as ``name[key=value]`` before
any training starts. The contracts are documented in ``cnfbench.contracts``;
``pytest tests`` checks every component against them with cnfbench's
conformance kit (``cnfbench.testing``).
"""
'''


def _from_import(module: str, names: list[str]) -> str:
    line = f"from {module} import {', '.join(names)}"
    if len(line) <= 88:
        return line
    return f"from {module} import (\n" + "".join(f"    {name},\n" for name in names) + ")"


def _imports(families: tuple[str, ...]) -> str:
    stdlib = []
    if "executor" in families:
        stdlib += ["import multiprocessing", "import time", "from concurrent.futures import ProcessPoolExecutor",
                   "from concurrent.futures.process import BrokenProcessPool"]
    if "tracker" in families:
        stdlib += ["import csv", "from pathlib import Path", "from typing import Any"]
    if "dataset" in families:
        stdlib += ["import math", "from typing import Any"]
    stdlib = list(dict.fromkeys(stdlib))
    stdlib = sorted(stdlib, key=lambda line: (line.startswith("from"), line))
    contracts = sorted({name for family in families for name in _CONTRACT_NAMES[family]},
                       key=lambda name: (0 if name.isupper() else 1, name))
    params = ["Param", "resolve_params"] if "dataset" in families else ["Param"]
    torch_names = ["Tensor", "nn"] if "field" in families else ["Tensor"]
    third_party = [
        "import torch",
        *(["from cnfbench.columns import Column"] if "metric" in families else []),
        _from_import("cnfbench.contracts", contracts),
        "from cnfbench.hookspecs import hookimpl",
        _from_import("cnfbench.params", params),
        _from_import("torch", torch_names),
    ]
    if "executor" in families:
        third_party.insert(third_party.index("from cnfbench.hookspecs import hookimpl") + 2,
                           "from cnfbench.worker import run_cell_payload")
    if set(families) <= {"executor", "tracker", "metric", "protocol"}:
        third_party = [line for line in third_party if "torch" not in line.split(" import ")[0].split()[-1]]
    if families in (("trace",), ("metric",), ("protocol",)) or set(families) <= {"metric", "protocol"}:
        third_party.remove("from cnfbench.params import Param")
    blocks = ["from __future__ import annotations", "\n".join(stdlib), "\n".join(third_party)]
    return "\n\n".join(block for block in blocks if block) + "\n"


def _plugin_module(values: dict[str, str], families: tuple[str, ...]) -> str:
    text = Template(_PLUGIN_DOC).substitute(values) + "\n" + _imports(families)
    for family in families:
        text += Template(_BODIES[family]).substitute(values)
    for family in families:
        text += Template(_HOOKS[family]).substitute(values)
    return text


_PYPROJECT = '''[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "${dist}"
version = "0.1.0"
description = "cnfbench plugin: ${summary}"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["${requirement}"]

[project.optional-dependencies]
test = ["pytest>=7"]

# cnfbench loads every module registered in this entry-point group: no --plugin flag needed.
[project.entry-points.cnfbench]
${package} = "${package}.plugin"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["src"]
'''

_INIT = '''"""${dist}: a cnfbench plugin; its components and hooks are in :mod:`${package}.plugin`."""

__version__ = "0.1.0"
'''

_TEST = '''"""Checks every component of ${dist} with cnfbench's conformance kit: ``pytest tests``.

``conformance_tests(plugin)`` makes one test per component that the plugin's
hooks return, e.g. ``test_conformance[${first_id}]``. Each checks its family's
contract (shapes, dtypes, devices, seeding, gradients, NFE, accuracy, ...) and
fails with a message naming the component and the problem. To check a
component with other parameters::

    from cnfbench.testing import check_component
    check_component("${first_family}", plugin.${first_class}, {...})

or the whole plugin at once: ``check_plugin(plugin)``.
"""

from __future__ import annotations

import importlib.metadata

import pytest
from cnfbench.registry import load_registry
from cnfbench.testing import conformance_tests, plugin_components

from ${package} import plugin

test_conformance = conformance_tests(plugin)


def test_cnfbench_finds_the_installed_plugin() -> None:
    """Once installed (``pip install -e .``), cnfbench loads the plugin through its entry point."""
    try:
        importlib.metadata.distribution("${dist}")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("${dist} is not installed: pip install -e .")
    registry = load_registry(autoload=True)
    for family, cls in plugin_components(plugin):
        assert registry.get(family, cls.name).cls.__qualname__ == cls.__qualname__
'''

_README = '''# ${dist}

A cnfbench plugin (scaffolded by `cnfbench new-plugin`). It adds:

${component_list}

## Install, list, run, test

From the folder that contains `${dist}/`:

```bash
# install it (editable: your edits apply at once); offline, add --no-build-isolation
pip install -e ./${dist}
# cnfbench finds it through its entry point: listed as ${dist}:${package}, source "entry point"
cnfbench plugins
# use its components like the built-ins, with parameters if you like
${run_command}
# cnfbench's conformance kit checks every component against its contract
pytest ${dist}/tests
```

No `--plugin` flag is needed: `pyproject.toml` registers `${package}.plugin` in
the `cnfbench` entry-point group, which cnfbench loads at start-up.

## Where things are

- `src/${package}/plugin.py` — the components and the `@hookimpl` functions
  that return them. Each class has a unique `name` (what you type after
  `--field` and friends), a `description` and its declared `params`, so
  `cnfbench run` rejects a bad value such as `steps=0` before training.
- `tests/test_plugin.py` — one conformance test per component
  (`cnfbench.testing`): shapes, dtypes, seeding, gradients, NFE counting,
  accuracy. Run it after every change.
- `pyproject.toml` — the package and its entry point.

Rename or add components freely; keep each `name` unique among all installed
plugins, and return the new classes from the matching hook.
'''

_RUN_OPTION = {family: FAMILIES_BY_KEY[family].option for family in FAMILY_ORDER}
_FAMILY_WORD = {"field": "vector field", "solver": "ODE solver", "trace": "trace estimator", "dataset": "dataset",
                "objective": "training objective", "executor": "executor", "tracker": "experiment tracker",
                "metric": "metric", "optimizer": "optimizer", "protocol": "published protocol"}
_CLASS = {"field": "MLPField", "solver": "HeunSolver", "trace": "ExactTrace", "dataset": "GaussianDataset",
          "objective": "FlowMatching", "executor": "PoolExecutor", "tracker": "CsvTracker", "metric": "MeanShift",
          "optimizer": "MomentumSGD", "protocol": "ToyProtocol"}


def render_plugin(name: str, families: Iterable[str] = DEFAULT_FAMILIES) -> dict[str, str]:
    """The files of the plugin package, by path relative to its folder."""
    package = package_name(name)
    chosen = parse_families(list(families))
    names = component_names(name, chosen)
    from cnfbench import __version__

    requirement = "cnfbench" if "unknown" in __version__ else f"cnfbench>={__version__}"
    summary = ", ".join(f"{_FAMILY_WORD[family]} {names[family]}" for family in chosen)
    run_command = "cnfbench run " + " ".join(  # a metric comes on top of the default ones
        f"{_RUN_OPTION[family]} {'default,' if family == 'metric' else ''}{names[family]}"
        + (" --scale quick" if family == "protocol" else "") for family in chosen)
    first = chosen[0]
    values = {
        "dist": name,
        "package": package,
        "summary": summary,
        "requirement": requirement,
        "first_family": first,
        "first_class": _CLASS[first],
        "first_id": f"{first}-{names[first]}",
        "component_list": "\n".join(f"- {_FAMILY_WORD[family]} `{names[family]}` ({_CLASS[family]})"
                                    for family in chosen),
        "doc_list": "\n".join(f"- {_FAMILY_WORD[family]} ``{names[family]}`` ({_CLASS[family]})" for family in chosen),
        "run_command": run_command,
        **{f"{family}_name": component_names(name, FAMILY_ORDER)[family] for family in FAMILY_ORDER},
    }
    return {
        "pyproject.toml": Template(_PYPROJECT).substitute(values),
        "README.md": Template(_README).substitute(values),
        f"src/{package}/__init__.py": Template(_INIT).substitute(values),
        f"src/{package}/plugin.py": _plugin_module(values, chosen),
        "tests/test_plugin.py": Template(_TEST).substitute(values),
    }


def write_plugin(name: str, families: Iterable[str] = DEFAULT_FAMILIES, directory: str | Path = ".") -> Path:
    """Write the plugin package into ``directory/name`` and return that folder.

    Raises :class:`ScaffoldError` for an invalid name or family, or when the
    folder exists and is not empty (nothing is overwritten).
    """
    files = render_plugin(name, families)
    target = Path(directory) / name
    if target.exists() and not target.is_dir():
        raise ScaffoldError(f"{str(target)!r} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        raise ScaffoldError(f"folder {str(target)!r} already exists and is not empty; nothing was written")
    for relative, content in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return target
