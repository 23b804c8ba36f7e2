"""The conformance check of an ODE solver (:func:`check_solver`) and the tolerances it holds solvers to."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from cnfbench.testing._checker import (
    Checker,
    component_label,
    declared_params,
    describe,
    resolve_component,
    same,
    single_threaded,
    torch_module,
)
from cnfbench.testing._harness import harness_run

if TYPE_CHECKING:
    import torch
    from torch import Tensor

LINEAR_ODE_MATRIX = ((-0.5, 1.0), (-1.0, -0.5))
"""``A`` of the linear test ODE ``dz/dt = A z`` (a damped rotation)."""

FIXED_GRID_STEPS = (32, 128)
"""``steps`` of the coarse and fine accuracy solves of a fixed-grid solver."""

FIXED_GRID_MAX_ERROR = 2e-2
"""Largest error (relative to the solution's size) allowed at the fine grid: loose enough for Euler."""

ADAPTIVE_TOLERANCES = (1e-3, 1e-6)
"""``rtol = atol`` of the loose and tight accuracy solves of an adaptive solver.

The tight one is also where the closed forms are checked: there
adaptive_heun (order 2) already spends ~700 evaluations on ``dz/dt = t``, and
at 1e-8 it runs past 10000 steps on the time-dependent ODE."""

ADAPTIVE_MAX_ERROR = 1e-3
"""Largest error (relative to the solution's size) allowed at the tight tolerance (second-order methods need it).

fehlberg2 is the loosest built-in: about 150 x its tolerance on the time-dependent ODE."""

TIME_DEPENDENT_ODE = "dz/dt = (cos(3t)/2 + (1+t) J) z"
"""The time-dependent linear test ODE: ``z`` grows at ``cos(3t)/2`` and turns at ``1 + t`` radians per unit time.

``J = [[0, -1], [1, 0]]``, so ``z(t1) = exp(∫cos(3t)/2 dt) R(∫(1+t) dt) z(t0)`` with ``R`` a rotation
(:meth:`cnfbench.testing.reference.TimeDependentODE.solution`)."""

ORDER_STEPS = (8, 16, 32, 64)
"""``steps`` (or ``step_size = 1/n``) of the step-halving sequence that measures a fixed-grid solver's order."""

ORDER_SLACK = 0.5
"""The observed order (fitted over the last two halvings) may fall this far below the declared order."""

ORDER_EXCESS = 1.5
"""The observed order may rise this far above the declared order before the declaration is called wrong."""

ORDER_NOISE_FLOOR = 1e-11
"""Errors (relative) below this are float64 round-off and are left out of the order fit."""

TIME_DEPENDENT_MAX_ERROR = 5e-2
"""Largest error (relative) of a fixed-grid solver on the time-dependent ODE at the finest grid (Euler: 1.8e-2)."""

ROUNDOFF_PER_STEP = 1e-14
"""Relative error allowed per step where a result must be exact (``dz/dt = 1``; ``dz/dt = t`` at order >= 2)."""


@single_threaded
def check_solver(cls: type, params: Mapping[str, Any] | None = None, *, device: str = "cpu") -> None:
    """Check a :class:`~cnfbench.contracts.Solver` class built as ``cls(**params)``.

    The accuracy checks override ``steps`` (or ``step_size``) of a fixed-grid
    solver with :data:`FIXED_GRID_STEPS` and :data:`ORDER_STEPS`, and
    ``rtol``/``atol`` of an adaptive one with :data:`ADAPTIVE_TOLERANCES`,
    when the solver declares them.

    Beyond ``dz/dt = A z`` (autonomous, so blind to time), every solver
    integrates, in float64 and both time directions, ``dz/dt = 1``,
    ``dz/dt = t`` and :data:`TIME_DEPENDENT_ODE`, which have closed forms:

    * fixed-grid: ``dz/dt = 1`` exactly (round-off; a solver that stops short
      of ``t1`` fails), ``dz/dt = t`` within ``h |t1 - t0| / 2`` (any
      consistent method; a solver that ignores ``t`` fails) and exactly when
      ``order >= 2``, the time-dependent ODE within
      :data:`TIME_DEPENDENT_MAX_ERROR` at the finest grid, and the order:
      the error over :data:`ORDER_STEPS` must shrink at the declared
      ``order`` within :data:`ORDER_SLACK` below and :data:`ORDER_EXCESS`
      above (at least order 1 when ``order`` is ``None``: declaring it makes
      the check stricter). When a solver converges on ``dz/dt = A z`` but
      not on the time-dependent ODE, the message says it evaluates the
      dynamics at the wrong times.
    * adaptive: all three within :data:`ADAPTIVE_MAX_ERROR` at the tight
      tolerance, and the time-dependent ODE's error strictly smaller at the
      tight tolerance than at the loose one. Its ``order`` is metadata.
    """
    torch = torch_module()
    check = Checker(component_label("solver", cls))
    kwargs = resolve_component("solver", cls, params, check)
    from cnfbench.testing import reference

    adaptive = getattr(cls, "adaptive", None)
    check.require(isinstance(adaptive, bool), f"`adaptive` must be a bool (got {adaptive!r})")
    per_step = getattr(cls, "nfe_per_step", None)
    check.require(per_step is None or (isinstance(per_step, int) and per_step >= 1),
                  f"`nfe_per_step` must be None or a positive int (got {per_step!r})")
    per_sample = getattr(cls, "per_sample_time", None)
    check.require(isinstance(per_sample, bool), f"`per_sample_time` must be a bool (got {per_sample!r})")
    order = getattr(cls, "order", None)
    check.require(order is None or (isinstance(order, int) and not isinstance(order, bool) and order >= 1),
                  f"`order` must be None or a positive int, the method's global order of accuracy (got {order!r})")
    f64 = torch.float64
    matrix = torch.tensor(LINEAR_ODE_MATRIX, dtype=f64, device=device)
    z_start = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.0, -1.0]], dtype=f64, device=device)
    a_start = torch.tensor([0.5, -1.0, 2.0], dtype=f64, device=device)

    def build(values: Mapping[str, Any]) -> Any:
        with check.calling(f"building it with {dict(values)}"):
            return cls(**values)

    def expected_of(solver: Any, values: Mapping[str, Any]) -> int | None:
        with check.calling("expected_nfe()"):
            expected = solver.expected_nfe()
        check.require(expected is None or (isinstance(expected, int) and expected > 0),
                      f"expected_nfe() must return None or a positive int (got {expected!r} with {dict(values)})")
        return expected

    def check_step_statistics(solver: Any, where: str, batch: int) -> None:
        """``step_statistics()`` after a solve: ``None``, or each row's accepted (at least one) and rejected steps."""
        from cnfbench.contracts import STEP_STATISTICS

        with check.calling(f"step_statistics() after {where}"):
            statistics = solver.step_statistics()
        if statistics is None:
            return
        check.require(isinstance(statistics, dict) and set(statistics) == set(STEP_STATISTICS),
                      f"step_statistics() after {where} must be None or a dict with the keys "
                      f"{', '.join(STEP_STATISTICS)} (got {describe(statistics)})")
        for kind, counts in statistics.items():
            check.require(torch.is_tensor(counts) and counts.shape == (batch,) and not counts.is_floating_point()
                          and bool((counts >= (1 if kind == "accepted" else 0)).all()),
                          lambda kind=kind, counts=counts: f"step_statistics()[{kind!r}] after {where} must be an "
                          f"integer tensor of shape ({batch},), one count per row, at least "
                          f"{1 if kind == 'accepted' else 0} (got {describe(counts)})")

    def run(values: Mapping[str, Any], dynamics: Any, state: tuple[Tensor, ...], parts: tuple[str, ...],
            t0: float, t1: float, ode: str) -> tuple[str, tuple[Tensor, ...]]:
        """One float64/float32 solve of ``ode``; check the result's structure, the input state and the NFE claim."""
        where = f"integrate({ode}, from t={t0:g} to t={t1:g}, {str(state[0].dtype).replace('torch.', '')}) " \
                f"with {dict(values)}"
        inputs = tuple(x.clone() for x in state)
        solver = build(values)
        with check.calling(where):
            result = solver.integrate(dynamics, inputs, t0, t1)
        check.require(isinstance(result, tuple) and len(result) == len(state),
                      f"{where} returned {type(result).__name__} "
                      f"{'of length ' + str(len(result)) if isinstance(result, (tuple, list)) else ''}; "
                      f"expected a tuple ({', '.join(parts)}) like the state")
        for got, like, part in zip(result, state, parts, strict=True):
            check.require(torch.is_tensor(got) and got.shape == like.shape and got.dtype == like.dtype
                          and got.device == like.device,
                          lambda got=got, like=like, part=part: f"{where}: final {part} is {describe(got)}, "
                                                                f"expected {describe(like)}")
        check.require(all(torch.equal(a, b) for a, b in zip(inputs, state, strict=True)),
                      f"{where} modified its input state in place")
        check.require(dynamics.calls > 0, f"{where} never evaluated the dynamics")
        check.require(per_sample or not dynamics.row_time_calls,
                      f"{where} called the dynamics with one time per row (t of shape [B]) but does not declare "
                      f"per_sample_time = True")
        check_step_statistics(solver, where, state[0].shape[0])
        expected = expected_of(solver, values)
        check.require(expected is None or expected == dynamics.calls,
                      f"expected_nfe() is {expected} but {where} evaluated the dynamics {dynamics.calls} times")
        return where, result

    def solve(values: Mapping[str, Any], t0: float, t1: float,
              dtype: torch.dtype = f64) -> tuple[float, int, tuple[Tensor, ...]]:
        """Integrate the linear ODE; return the max error relative to the solution's size, evaluations, result."""
        dynamics = reference.LinearODE(matrix.to(dtype))
        z0, a0 = z_start.to(dtype), a_start.to(dtype)
        where, result = run(values, dynamics, (z0, a0), ("z", "a"), t0, t1, "dz/dt = A z")
        exact_z, exact_a = dynamics.solution((z0, a0), t0, t1)
        size = 1.0 + max(exact_z.abs().max().item(), exact_a.abs().max().item())
        error = max((result[0] - exact_z).abs().max().item(), (result[1] - exact_a).abs().max().item())
        check.require(math.isfinite(error), f"{where} returned non-finite values")
        return error / size, dynamics.calls, result

    # The contract with the given parameters: shapes, both directions, float32, determinism.
    for t0, t1 in ((1.0, 0.0), (0.0, 1.0)):
        solve(kwargs, t0, t1)
    solve(kwargs, 1.0, 0.0, dtype=torch.float32)
    solver = build(kwargs)
    outputs = []
    for _ in range(2):
        with check.calling(f"integrate(...) with {kwargs}"):
            outputs.append(solver.integrate(reference.LinearODE(matrix), (z_start.clone(), a_start.clone()), 1.0,
                                            0.0))
    check.require(all(same(a, b) for a, b in zip(*outputs, strict=True)),
                  "two identical solves gave different results (a solver must be deterministic)")

    # Gradients reach the initial state and the dynamics' parameters.
    dynamics = reference.LearnableLinearODE(matrix, torch.tensor([0.1, -0.2], dtype=f64, device=device))
    z1 = z_start.clone().requires_grad_(True)
    with check.calling(f"integrate(...) of a learnable ODE with {kwargs}"):
        (z_end,) = build(kwargs).integrate(dynamics, (z1,), 1.0, 0.0)
    check.require(torch.is_tensor(z_end) and z_end.requires_grad,
                  f"no gradient reaches the initial state or the dynamics' parameters: the result of "
                  f"integrate(...) with {kwargs} is detached from the autograd graph (it must stay "
                  f"differentiable, by backpropagation or an adjoint)")
    with check.calling("backward through integrate(...)"):
        ((z_end**2).sum() + z_end[:, 0].sum()).backward()
    for name, tensor in (("the initial state", z1), ("the dynamics' weight", dynamics.weight),
                         ("the dynamics' bias", dynamics.bias)):
        grad = tensor.grad
        check.require(grad is not None and torch.isfinite(grad).all() and bool(grad.abs().max() > 0),
                      f"no gradient reaches {name} through integrate(...) with {kwargs} (the result must stay "
                      f"differentiable, by backpropagation or an adjoint)")

    # Accuracy on dz/dt = A z against the matrix exponential.
    declared = declared_params(cls)
    tolerances = adaptive and {"rtol", "atol"} <= set(declared)
    grid_param = None if adaptive else "steps" if "steps" in declared else "step_size" if "step_size" in declared \
        else None

    def grid(n: int) -> tuple[dict[str, Any], str, float]:
        """The parameters, label and step of an ``n``-step grid over a unit interval."""
        if grid_param == "steps":
            low, high = declared["steps"].minimum or 1, declared["steps"].maximum or n
            n = int(min(max(n, low), high))
            return {**kwargs, "steps": n}, f"steps={n}", 1.0 / n
        return {**kwargs, "step_size": 1.0 / n}, f"step_size=1/{n}", 1.0 / n

    for t0, t1 in ((1.0, 0.0), (0.0, 1.0)):
        direction = f"from t={t0:g} to t={t1:g}"
        if tolerances:
            loose, tight = ({**kwargs, "rtol": tol, "atol": tol} for tol in ADAPTIVE_TOLERANCES)
            loose_error, _, loose_result = solve(loose, t0, t1)
            tight_error, _, tight_result = solve(tight, t0, t1)
            check.require(tight_error <= ADAPTIVE_MAX_ERROR,
                          f"inaccurate: on dz/dt = A z {direction} with rtol=atol={ADAPTIVE_TOLERANCES[1]:g} the "
                          f"error is {tight_error:.3g} (relative), more than {ADAPTIVE_MAX_ERROR:g}")
            check.require(not all(torch.equal(a, b) for a, b in zip(loose_result, tight_result, strict=True)),
                          f"ignores its tolerances: on dz/dt = A z {direction} rtol=atol={ADAPTIVE_TOLERANCES[0]:g} "
                          f"and {ADAPTIVE_TOLERANCES[1]:g} give the very same result")
        elif grid_param is not None:
            grids = [grid(n) for n in FIXED_GRID_STEPS]
            (coarse_error, coarse_nfe, _), (fine_error, fine_nfe, _) = (solve(values, t0, t1) for values, _, _ in grids)
            check.require(fine_error < coarse_error / 1.5 or fine_error < 1e-10,
                          f"does not converge as the grid is refined: on dz/dt = A z {direction} the error is "
                          f"{coarse_error:.3g} with {grids[0][1]} ({coarse_nfe} evaluations) and {fine_error:.3g} "
                          f"with {grids[1][1]} ({fine_nfe} evaluations); does it honour {grid_param}?")
            check.require(fine_error <= FIXED_GRID_MAX_ERROR,
                          f"inaccurate: on dz/dt = A z {direction} with {grids[1][1]} the error is "
                          f"{fine_error:.3g} (relative), more than {FIXED_GRID_MAX_ERROR:g}")
        else:
            error, _, _ = solve(kwargs, t0, t1)
            check.require(error <= FIXED_GRID_MAX_ERROR,
                          f"inaccurate: on dz/dt = A z {direction} with {kwargs} the error is {error:.3g} (relative)")

    # Closed forms that depend on t and on where the solve ends, and the order of convergence.
    def closed_form(values: Mapping[str, Any], t0: float, t1: float) -> SimpleNamespace:
        """Solve dz/dt = 1, dz/dt = t and the time-dependent ODE together; return the results and the error."""
        dynamics = reference.TimeDependentODE()
        zeros = torch.zeros(3, dtype=f64, device=device)
        where, (z, constant, linear) = run(values, dynamics, (z_start, zeros, zeros), ("z", "c", "s"), t0, t1,
                                           f"dz/dt = 1, dz/dt = t and {TIME_DEPENDENT_ODE}")
        exact = dynamics.solution((z_start, zeros, zeros), t0, t1)[0]
        z_error = (z - exact).abs().max().item() / (1.0 + exact.abs().max().item())
        check.require(math.isfinite(z_error) and torch.isfinite(constant).all() and torch.isfinite(linear).all(),
                      f"{where} returned non-finite values")

        def worst(got: Tensor, expected: float) -> float:
            return got[(got - expected).abs().argmax()].item()

        return SimpleNamespace(constant=worst(constant, t1 - t0), linear=worst(linear, (t1**2 - t0**2) / 2),
                               z_error=z_error)

    def check_constant(got: float, t0: float, t1: float, label: str, bound: float) -> None:
        expected = t1 - t0
        if abs(got - expected) <= bound * (1.0 + abs(expected)):
            return
        covered = got / expected
        hint = (f"does it stop short of t1? it covers {covered:.1%} of the interval" if 0 < covered < 1
                else f"does it step past t1? it covers {covered:.1%} of the interval" if covered > 1
                else "does it integrate in the wrong direction?")
        raise check.fail(f"on dz/dt = 1 from t={t0:g} to t={t1:g} with {label} the result is {got:.6g}, "
                         f"expected {expected:g} ({hint})")

    def check_linear(got: float, t0: float, t1: float, label: str, bound: float, why: str) -> None:
        expected = (t1**2 - t0**2) / 2
        if abs(got - expected) <= bound:
            return
        close = 1e-9 * (1.0 + abs(expected))
        if abs(got - t0 * (t1 - t0)) <= close:
            hint = f"it passes t={t0:g} to the dynamics at every evaluation: it ignores time"
        elif abs(got - t1 * (t1 - t0)) <= close:
            hint = f"it passes t={t1:g} to the dynamics at every evaluation: it ignores time"
        else:
            hint = "does it pass the dynamics the times of its steps and stages?"
        raise check.fail(f"on dz/dt = t from t={t0:g} to t={t1:g} with {label} the result is {got:.6g}, "
                         f"expected {expected:g}: {why} ({hint})")

    def observed_order(counts: Sequence[int], errors: Sequence[float]) -> float | None:
        """The order fitted over the last two halvings above round-off (None when nothing is above it)."""
        points = [(n, e) for n, e in zip(counts, errors, strict=True) if e > ORDER_NOISE_FLOOR][-3:]
        if len(points) < 2:
            return None
        (coarse_n, coarse_e), (fine_n, fine_e) = points[0], points[-1]
        return math.log(coarse_e / fine_e) / math.log(fine_n / coarse_n)

    def check_order(refinements: Sequence[tuple[dict[str, Any], str, float]], errors: Sequence[float],
                    t0: float, t1: float) -> None:
        counts = [round(1.0 / h) for _, _, h in refinements]
        observed = observed_order(counts, errors)
        if observed is None:
            return  # exact to round-off on every grid: no order to measure, nothing wrong
        needed = order or 1
        listing = ", ".join(f"{e:.2g} ({label})" for e, (_, label, _) in zip(errors, refinements, strict=True))
        on = f"on {TIME_DEPENDENT_ODE} from t={t0:g} to t={t1:g} the errors are {listing}"
        if observed < needed - ORDER_SLACK:
            autonomous = observed_order(counts, [solve(values, t0, t1)[0] for values, _, _ in refinements])
            if autonomous is not None and autonomous >= needed - ORDER_SLACK:
                raise check.fail(f"converges at order {autonomous:.1f} on the autonomous dz/dt = A z but only at "
                                 f"order {observed:.1f} when the field depends on t: {on}; it evaluates the "
                                 f"dynamics at the wrong times (all its stages at the step's start?)")
            if order is None:
                raise check.fail(f"does not converge at first order (observed order {observed:.2f}, the least "
                                 f"a solver declaring no `order` must reach): {on}; does it honour {grid_param}?")
            advice = f"declare order = {round(observed)}" if round(observed) >= 1 else f"does it honour {grid_param}?"
            raise check.fail(f"declares order {order} but converges at order {observed:.1f}: {on}; {advice}")
        if order is not None and observed > order + ORDER_EXCESS:
            raise check.fail(f"declares order {order} but converges at order {observed:.1f}: {on}; declare "
                             f"order = {round(observed)}")

    for t0, t1 in ((1.0, 0.0), (0.0, 1.0)):
        direction = f"from t={t0:g} to t={t1:g}"
        if adaptive:
            if tolerances:
                loose, tight = ({**kwargs, "rtol": tol, "atol": tol} for tol in ADAPTIVE_TOLERANCES)
                label, bound, values = f"rtol=atol={ADAPTIVE_TOLERANCES[1]:g}", ADAPTIVE_MAX_ERROR, tight
            else:
                label, bound, values = f"{kwargs}", TIME_DEPENDENT_MAX_ERROR, kwargs
            result = closed_form(values, t0, t1)
            check_constant(result.constant, t0, t1, label, bound)
            check_linear(result.linear, t0, t1, label, bound * (1.0 + abs(t1**2 - t0**2) / 2),
                         f"off by more than {bound:g} (relative)")
            check.require(result.z_error <= bound,
                          f"inaccurate when the field depends on t: on {TIME_DEPENDENT_ODE} {direction} with "
                          f"{label} the error is {result.z_error:.3g} (relative), more than {bound:g}")
            if tolerances:
                loose_error = closed_form(loose, t0, t1).z_error
                check.require(result.z_error < loose_error,
                              f"its error does not shrink as the tolerance tightens: on {TIME_DEPENDENT_ODE} "
                              f"{direction} it is {loose_error:.3g} with rtol=atol={ADAPTIVE_TOLERANCES[0]:g} and "
                              f"{result.z_error:.3g} with {label}")
            continue

        # Fixed grid: the given grid, then the step-halving sequence (whose last grid is the finest).
        if grid_param is None:
            given: list[tuple[dict[str, Any], str, float | None]] = [(dict(kwargs), f"{kwargs}", None)]
            refinements = []
        else:
            refinements = list({label: (values, label, h) for values, label, h in map(grid, ORDER_STEPS)}.values())
            h = 1.0 / kwargs["steps"] if grid_param == "steps" else float(kwargs["step_size"])
            given = [(dict(kwargs), f"{grid_param}={kwargs[grid_param]:g}", h)]
        solves = [(label, h, math.ceil(1.0 / h) if h else 1, closed_form(values, t0, t1))
                  for values, label, h in given + refinements]
        for label, _, steps, result in solves:
            check_constant(result.constant, t0, t1, label, ROUNDOFF_PER_STEP * (steps + 1))
        for label, h, _, result in solves:
            if h is None:
                bound, why = TIME_DEPENDENT_MAX_ERROR, f"off by more than {TIME_DEPENDENT_MAX_ERROR:g}"
            else:
                bound = h * abs(t1 - t0) / 2 * (1 + 1e-9) + 1e-12
                why = f"off by more than h |t1 - t0| / 2 = {h / 2:.3g}, which no consistent method exceeds"
            check_linear(result.linear, t0, t1, label, bound, why)
        finest_label, _, _, finest = solves[-1]
        check.require(finest.z_error <= TIME_DEPENDENT_MAX_ERROR,
                      f"inaccurate when the field depends on t: on {TIME_DEPENDENT_ODE} {direction} with "
                      f"{finest_label} the error is {finest.z_error:.3g} (relative), more than "
                      f"{TIME_DEPENDENT_MAX_ERROR:g}")
        if refinements:
            check_order(refinements, [result.z_error for *_, result in solves[len(given):]], t0, t1)
        if order is not None and order >= 2:
            for label, _, steps, result in solves:
                check_linear(result.linear, t0, t1, label,
                             ROUNDOFF_PER_STEP * (steps + 1) * (1.0 + abs(t1**2 - t0**2) / 2),
                             f"a method of order {order} integrates it exactly")

    # The same solver inside the harness: CNF dynamics, NFE counted by the harness, backward.
    field = reference.MLPField(2, seed=3, dtype=torch.float32).to(device)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(5)).to(device)
    solver = build(kwargs)
    harness_run(check, field, reference.ExactLoopTrace(), solver, x, expected_of(solver, kwargs), generator=None,
                 what=f"training step with {kwargs}")


