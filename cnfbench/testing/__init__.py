"""The conformance kit: check that a component class keeps its family's contract.

Plain functions, usable from any test runner or script::

    from cnfbench.testing import check_field, check_plugin
    check_field(MyField, {"hidden": 32})   # raises ConformanceError naming the problem
    check_plugin(my_package.plugin)        # every component the plugin's hooks return

* :func:`check_field` — output ``[B, D]`` in the input's dtype and device for
  several ``D``, rows independent, depends on ``t``, deterministic under a
  seed, gradients reach every parameter, works after ``.to(torch.float64)``
  and inside the harness (CNF dynamics, exact trace, backward pass); a field
  offering the fused divergence (:class:`~cnfbench.contracts.FusedDivergence`)
  returns ``forward``'s output and the Jacobian's trace, both differentiable.
* :func:`check_solver` — tuple states of mixed shapes in both time
  directions, float32 and float64, determinism, gradients, accuracy on
  ``dz/dt = A z`` against ``matrix_exp`` (fixed-grid: error shrinks as
  ``steps`` grows; adaptive: small error at tight ``rtol``/``atol``), the
  closed forms of ``dz/dt = 1``, ``dz/dt = t`` and a time-dependent linear
  ODE (a solver that stops short of ``t1`` or ignores ``t`` fails), the
  declared ``order`` of a fixed-grid solver measured on a step-halving
  sequence (adaptive: error shrinks as the tolerance tightens), and
  ``expected_nfe()`` equal to the evaluations the harness counts.
* :func:`check_trace` — ``(dz, div)`` shapes and dtypes; deterministic
  estimators equal the Jacobian's trace to 1e-6; stochastic ones are
  unbiased within a few standard errors over many probes, reuse one probe per
  solve, and draw it from the generator given to ``begin_solve``.
* :func:`check_objective` — metadata (``uses_solver``/``uses_trace`` bools,
  a ``loss_unit``), ``loss(context, x)`` an ``ObjectiveLoss`` with a finite
  0-dim loss and plain-float terms, differentiable in the field's
  parameters, seeded (same generator seed, same loss bit for bit; no global
  RNG), no ``context.log_likelihood`` when ``uses_solver`` is false, every
  field evaluation counted by the context, and float64 in, float64 out.
* :func:`check_executor` — built with the harness's context, it runs two tiny
  cells from ``slots`` threads with exactly the NLLs and NFE they give in this
  process, returns their model files and curves, evaluates a cell given
  another's model instead of training, and ``cancel()``/``close()`` behave.
* :func:`check_tracker` — writes nothing until started, then takes a cell's
  curve iteration by iteration, its row, a failed cell and ``close``.
* :func:`check_metric` — declarations (a group, valid :class:`~cnfbench.columns.Column` columns, inputs from
  the vocabulary), run through the harness's evaluation plan on a 2-D Gaussian scenario: a value for every
  column, no input computed by the metric itself (no solve of its own, points pushed forward only from a
  declared input), deterministic, and units that scale with the data as they say (``data units`` as ``s``,
  ``data units²`` as ``s²``, ``1`` not at all).
* :func:`check_dataset` — seeded splits (same seed same, other seed
  different), disjoint splits, float32 ``[N, dim]``, no global RNG use, and a
  finite ``[N]`` ``log_prob`` on samples when ``has_density``.

Every failure raises :class:`ConformanceError` (an ``AssertionError``) whose
message names the component and what is wrong. ``params`` are the
component's declared parameters (defaults fill the rest); checks that need
particular values (a solver's ``steps``/``rtol``/``atol``, a dataset's split
sizes) set them themselves.

As a pytest plugin (registered through the ``pytest11`` entry point) it adds
one fixture, ``cnfbench_check`` (:func:`check_component`), and
:func:`conformance_tests` turns a plugin module into one parametrized test
per component::

    test_conformance = conformance_tests(my_package.plugin)

:mod:`cnfbench.testing.reference` is the reference kit the checks run
components against (a seeded MLP field, a linear field, the exact trace by a
loop and by the full Jacobian, RK4, linear and time-dependent ODEs with their
closed forms), public for tests to reuse.

The kit is one module per family (``field``, ``objective``, ``solver``, ``trace``, ``dataset``,
``optimizer``, ``executor``, ``tracker``, ``metric``, ``protocol``) plus ``plugin`` (dispatch and whole
plugins). Importing it is cheap: torch is imported only when a check runs (or ``reference`` is
imported). The checks run torch single-threaded (restoring the thread
count), since their tensors are tiny.
"""

from __future__ import annotations

import sys

from cnfbench.testing._checker import ConformanceError
from cnfbench.testing.dataset import DATASET_CHECK_SIZES, check_dataset
from cnfbench.testing.executor import check_executor
from cnfbench.testing.field import FUSED_DIV_TOLERANCE, FUSED_DZ_TOLERANCE, FUSED_GRADIENT_TOLERANCE, check_field
from cnfbench.testing.metric import check_metric
from cnfbench.testing.objective import OBJECTIVE_SOLVER_STEPS, check_objective
from cnfbench.testing.optimizer import OPTIMIZER_CHECK_STEPS, check_optimizer
from cnfbench.testing.plugin import CHECKS, check_component, check_plugin, conformance_tests, plugin_components
from cnfbench.testing.protocol import check_protocol
from cnfbench.testing.solver import (
    ADAPTIVE_MAX_ERROR,
    ADAPTIVE_TOLERANCES,
    FIXED_GRID_MAX_ERROR,
    FIXED_GRID_STEPS,
    LINEAR_ODE_MATRIX,
    ORDER_EXCESS,
    ORDER_NOISE_FLOOR,
    ORDER_SLACK,
    ORDER_STEPS,
    ROUNDOFF_PER_STEP,
    TIME_DEPENDENT_MAX_ERROR,
    TIME_DEPENDENT_ODE,
    check_solver,
)
from cnfbench.testing.trace import UNBIASED_ROWS, UNBIASED_SOLVES, check_trace
from cnfbench.testing.tracker import check_tracker

__all__ = [
    "ADAPTIVE_MAX_ERROR",
    "ADAPTIVE_TOLERANCES",
    "CHECKS",
    "DATASET_CHECK_SIZES",
    "FIXED_GRID_MAX_ERROR",
    "FIXED_GRID_STEPS",
    "FUSED_DIV_TOLERANCE",
    "FUSED_DZ_TOLERANCE",
    "FUSED_GRADIENT_TOLERANCE",
    "LINEAR_ODE_MATRIX",
    "OBJECTIVE_SOLVER_STEPS",
    "OPTIMIZER_CHECK_STEPS",
    "ORDER_EXCESS",
    "ORDER_NOISE_FLOOR",
    "ORDER_SLACK",
    "ORDER_STEPS",
    "ROUNDOFF_PER_STEP",
    "TIME_DEPENDENT_MAX_ERROR",
    "TIME_DEPENDENT_ODE",
    "UNBIASED_ROWS",
    "UNBIASED_SOLVES",
    "ConformanceError",
    "check_component",
    "check_dataset",
    "check_field",
    "check_metric",
    "check_executor",
    "check_objective",
    "check_optimizer",
    "check_plugin",
    "check_protocol",
    "check_solver",
    "check_trace",
    "check_tracker",
    "conformance_tests",
    "plugin_components",
]

# Only under pytest (which imports this package through its pytest11 entry point): plain imports stay cheap.
if "pytest" in sys.modules:
    from cnfbench.testing.pytest_plugin import cnfbench_check  # noqa: F401 - pytest collects it from this module
