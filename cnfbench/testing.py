"""The conformance kit: check that a component class keeps its family's contract.

Plain functions, usable from any test runner or script::

    from cnfbench.testing import check_field, check_plugin
    check_field(MyField, {"hidden": 32})   # raises ConformanceError naming the problem
    check_plugin(my_package.plugin)        # every component the plugin's hooks return

* :func:`check_field` — output ``[B, D]`` in the input's dtype and device for
  several ``D``, rows independent, depends on ``t``, deterministic under a
  seed, gradients reach every parameter, works after ``.to(torch.float64)``
  and inside the harness (CNF dynamics, exact trace, backward pass).
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
* :func:`check_dataset` — seeded splits (same seed same, other seed
  different), disjoint splits, float32 ``[N, dim]``, no global RNG use, and a
  finite ``[N]`` ``log_prob`` on samples when ``has_density``.

Every failure raises :class:`ConformanceError` (an ``AssertionError``) whose
message names the component and what is wrong. ``params`` are the
component's declared parameters (defaults fill the rest); checks that need
particular values (a solver's ``steps``/``rtol``/``atol``, a dataset's split
sizes) set them themselves.

As a pytest plugin (registered through the ``pytest11`` entry point) it adds
one fixture, ``cnfbench_check`` (this module's :func:`check_component`), and
:func:`conformance_tests` turns a plugin module into one parametrized test
per component::

    test_conformance = conformance_tests(my_package.plugin)

Importing this module is cheap: torch is imported only when a check runs.
The checks run torch single-threaded (restoring the thread count), since
their tensors are tiny.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import math
import random
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = [
    "ConformanceError",
    "check_component",
    "check_dataset",
    "check_field",
    "check_plugin",
    "check_solver",
    "check_trace",
    "conformance_tests",
    "plugin_components",
]


class ConformanceError(AssertionError):
    """A component breaks its family's contract; the message names the component and the problem."""


DATASET_CHECK_SIZES = {"n_train": 256, "n_val": 64, "n_test": 128}
"""Split sizes used by :func:`check_dataset` when the dataset declares them and ``params`` does not set them."""


# --------------------------------------------------------------------------- helpers


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _label(family: str, cls: Any) -> str:
    name = getattr(cls, "name", "")
    qualname = getattr(cls, "__qualname__", repr(cls))
    return f"{family} {name!r} ({qualname})" if name else f"{family} class {qualname}"


class _Checker:
    """Carries the component's label into every failure message."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, problem: str) -> ConformanceError:
        return ConformanceError(f"{self.label}: {problem}")

    def require(self, condition: Any, problem: str | Callable[[], str]) -> None:
        if not condition:
            raise self.fail(problem() if callable(problem) else problem)

    @contextlib.contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """Turn an exception raised by the component into a failure that says what was being done."""
        try:
            yield
        except ConformanceError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the component raises becomes one clear line
            raise self.fail(f"{what} raised {_one_line(exc)}") from exc


def _same(a: Tensor, b: Tensor) -> bool:
    """Equal up to the last bits (GPU reductions need not be bitwise reproducible)."""
    torch = _torch()
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-6, atol=1e-9)


def _describe(x: Any) -> str:
    if not _torch().is_tensor(x):
        return type(x).__name__
    return f"{tuple(x.shape)} {x.dtype} on {x.device}"


def _torch() -> Any:
    import torch

    return torch


def _resolve(family: str, cls: Any, params: Mapping[str, Any] | None, check: _Checker) -> dict[str, Any]:
    """Check the class's metadata and return its declared parameters filled and coerced."""
    from cnfbench.contracts import FAMILIES
    from cnfbench.params import Param, ParamError, resolve_params

    base = FAMILIES[family].base
    check.require(isinstance(cls, type) and issubclass(cls, base),
                  f"is not a subclass of {base.__module__}.{base.__qualname__}")
    name = getattr(cls, "name", "")
    check.require(isinstance(name, str) and name and not any(ch in name for ch in "[],= "),
                  f"needs a class attribute `name`: a non-empty string without '[', ']', ',', '=' or spaces "
                  f"(got {name!r})")
    check.require(isinstance(getattr(cls, "description", None), str) and cls.description.strip(),
                  "needs a one-line `description` string (cnfbench plugins shows it)")
    declared = getattr(cls, "params", ())
    check.require(isinstance(declared, (tuple, list)) and all(isinstance(p, Param) for p in declared),
                  "`params` must be a tuple of cnfbench.params.Param")
    names = [p.name for p in declared]
    check.require(len(set(names)) == len(names), f"declares a parameter twice: {names}")
    for param in declared:
        try:
            param.coerce(param.default)
        except ValueError as exc:
            raise check.fail(f"the default {param.default!r} of parameter {param.name!r} is invalid: {exc}") from None
    try:
        return resolve_params(f"{family} {name!r}", declared, dict(params or {}))
    except ParamError as exc:
        raise check.fail(str(exc)) from None


def _declared(cls: Any) -> dict[str, Any]:
    return {param.name: param for param in getattr(cls, "params", ())}


def _single_threaded(check: Callable[..., None]) -> Callable[..., None]:
    """Run a check with one torch thread (restored afterwards).

    Its tensors are tiny, and on a busy machine an op that goes multi-threaded
    can wait milliseconds for a second core.
    """

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> None:
        torch = _torch()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            check(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return run


@functools.cache
def _support() -> SimpleNamespace:
    """Reference pieces the checks run components against (built on first use, so importing stays cheap)."""
    import torch
    from torch import nn

    class MLPField(nn.Module):
        """A seeded tanh MLP on ``[z, t]``: a generic smooth field with a non-trivial Jacobian."""

        def __init__(self, dim: int, seed: int = 0, hidden: int = 16, dtype: torch.dtype = torch.float64) -> None:
            super().__init__()
            gen = torch.Generator().manual_seed(seed)
            self.w1 = nn.Parameter(torch.randn(hidden, dim + 1, generator=gen, dtype=dtype) / (dim + 1) ** 0.5)
            self.b1 = nn.Parameter(0.1 * torch.randn(hidden, generator=gen, dtype=dtype))
            self.w2 = nn.Parameter(torch.randn(dim, hidden, generator=gen, dtype=dtype) / hidden**0.5)
            self.b2 = nn.Parameter(0.1 * torch.randn(dim, generator=gen, dtype=dtype))

        def forward(self, t: Tensor, z: Tensor) -> Tensor:
            h = torch.cat([z, t.reshape(1, 1).to(z.dtype).expand(z.shape[0], 1)], dim=1)
            return torch.tanh(h @ self.w1.T + self.b1) @ self.w2.T + self.b2

    class MatrixField(nn.Module):
        """``v(z) = z M^T``: divergence ``tr M``, and ``e^T M e`` for any fixed probe ``e``."""

        def __init__(self, matrix: Tensor) -> None:
            super().__init__()
            self.register_buffer("matrix", matrix)

        def forward(self, t: Tensor, z: Tensor) -> Tensor:
            return z @ self.matrix.T

    class DriftField(nn.Module):
        """A learnable drift that ignores ``z``: its divergence is 0."""

        def __init__(self, dim: int, dtype: torch.dtype) -> None:
            super().__init__()
            self.drift = nn.Parameter(torch.linspace(-1.0, 1.0, dim, dtype=dtype))

        def forward(self, t: Tensor, z: Tensor) -> Tensor:
            return self.drift.expand(z.shape[0], -1) * (1.0 + t.to(z.dtype))

    class LinearODE(nn.Module):
        """``dz/dt = z A^T`` and ``da/dt = -tr A`` on the state ``(z, a)``, counting its evaluations."""

        def __init__(self, matrix: Tensor) -> None:
            super().__init__()
            self.register_buffer("matrix", matrix)
            self.calls = 0

        def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            self.calls += 1
            z, a = state
            return z @ self.matrix.T, torch.full_like(a, -float(torch.trace(self.matrix)))

    class LearnableODE(nn.Module):
        """``dz/dt = z W^T + b`` with learnable ``W`` and ``b``, counting its evaluations."""

        def __init__(self, matrix: Tensor) -> None:
            super().__init__()
            self.weight = nn.Parameter(matrix.clone())
            self.bias = nn.Parameter(torch.tensor([0.1, -0.2], dtype=matrix.dtype, device=matrix.device))
            self.calls = 0

        def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            self.calls += 1
            return (state[0] @ self.weight.T + self.bias,)

    class ExactTrace:
        """The exact divergence by one vector-Jacobian product per dimension (the kit's reference)."""

        name = "conformance-exact"
        stochastic = False

        def begin_solve(self, z: Tensor, generator: torch.Generator | None) -> None:
            pass

        def __call__(self, field: Any, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
            dz = field(t, z)
            div = torch.zeros(z.shape[0], dtype=dz.dtype, device=dz.device)
            if not dz.requires_grad:
                return dz, div
            for i in range(z.shape[1]):
                (grad,) = torch.autograd.grad(dz[:, i].sum(), z, create_graph=create_graph, retain_graph=True,
                                              allow_unused=True)
                if grad is not None:
                    div = div + grad[:, i]
            return dz, div

    class RK4:
        """Classic fixed-step Runge-Kutta 4 over a tuple state (the kit's reference solver)."""

        name = "conformance-rk4"
        adaptive = False

        def __init__(self, steps: int) -> None:
            self.steps = steps

        def expected_nfe(self) -> int:
            return 4 * self.steps

        def integrate(self, dynamics: Any, state: tuple[Tensor, ...], t0: float, t1: float) -> tuple[Tensor, ...]:
            h = (t1 - t0) / self.steps
            ref = state[0]

            def at(time: float) -> Tensor:
                return torch.tensor(time, dtype=ref.dtype, device=ref.device)

            def shift(y: tuple[Tensor, ...], k: tuple[Tensor, ...], scale: float) -> tuple[Tensor, ...]:
                return tuple(a + scale * b for a, b in zip(y, k, strict=True))

            y = tuple(state)
            for step in range(self.steps):
                t = t0 + step * h
                k1 = dynamics(at(t), y)
                k2 = dynamics(at(t + h / 2), shift(y, k1, h / 2))
                k3 = dynamics(at(t + h / 2), shift(y, k2, h / 2))
                k4 = dynamics(at(t + h), shift(y, k3, h))
                y = tuple(a + h / 6 * (b1 + 2 * b2 + 2 * b3 + b4)
                          for a, b1, b2, b3, b4 in zip(y, k1, k2, k3, k4, strict=True))
            return y

    class ClosedFormODE(nn.Module):
        """``dz/dt = (cos(3t)/2 + (1+t) J) z``, ``dc/dt = 1`` and ``ds/dt = t`` on the state ``(z, c, s)``."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            self.calls += 1
            z, c, s = state
            turned = torch.stack((-z[:, 1], z[:, 0]), dim=1)
            return torch.cos(3 * t) / 2 * z + (1 + t) * turned, torch.ones_like(c), t * torch.ones_like(s)

    def time_dependent_solution(z0: Tensor, t0: float, t1: float) -> Tensor:
        """``z(t1)`` of :class:`ClosedFormODE`: grown by ``exp(∫cos(3t)/2)``, turned by ``∫(1+t)``."""
        growth = math.exp((math.sin(3 * t1) - math.sin(3 * t0)) / 6)
        angle = (t1 - t0) + (t1**2 - t0**2) / 2
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=z0.dtype, device=z0.device)
        return growth * z0 @ rotation.T

    def jacobian_trace(field: Any, t: Tensor, z: Tensor) -> Tensor:
        jac = torch.autograd.functional.jacobian(lambda zz: field(t, zz), z.detach())
        return torch.einsum("bibi->b", jac)

    return SimpleNamespace(MLPField=MLPField, MatrixField=MatrixField, DriftField=DriftField, LinearODE=LinearODE,
                           LearnableODE=LearnableODE, ClosedFormODE=ClosedFormODE, ExactTrace=ExactTrace, RK4=RK4,
                           time_dependent_solution=time_dependent_solution, jacobian_trace=jacobian_trace)


def _global_rng_states() -> dict[str, Any]:
    """The state of every global RNG a component might use instead of its generator."""
    torch = _torch()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if "numpy" in sys.modules:
        states["numpy"] = sys.modules["numpy"].random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def _changed_rngs(before: dict[str, Any]) -> list[str]:
    torch = _torch()
    after = _global_rng_states()
    changed = []
    for key, old in before.items():
        new = after.get(key)
        if key == "torch":
            same = torch.equal(old, new)
        elif key == "torch.cuda":
            same = len(old) == len(new) and all(torch.equal(a, b) for a, b in zip(old, new, strict=True))
        elif key == "numpy":
            same = old[0] == new[0] and (old[1] == new[1]).all() and old[2:] == new[2:]
        else:
            same = old == new
        if not same:
            changed.append({"torch": "torch.manual_seed/torch.rand*", "random": "Python's random",
                            "numpy": "numpy.random", "torch.cuda": "torch.cuda"}[key])
    return changed


def _harness_run(check: _Checker, field: Any, trace: Any, solver: Any, x: Tensor, expected: int | None,
                 generator: torch.Generator | None, what: str) -> None:
    """One training step as the harness runs it: NFE-counted CNF dynamics, log-likelihood, backward."""
    torch = _torch()
    from cnfbench.dynamics import CNFDynamics, NFECounter, log_likelihood

    counter = NFECounter()
    dynamics = CNFDynamics(field, trace, counter, differentiable=True, field_label=repr(getattr(field, "name", "")),
                           trace_label=repr(getattr(trace, "name", "")))
    with check.calling(f"{what}: log_likelihood through the harness (CNFDynamics)"):
        logp = log_likelihood(dynamics, solver, x, "forward", generator)
    check.require(torch.is_tensor(logp) and logp.shape == x.shape[:1],
                  f"{what}: log_likelihood through the harness gave {_describe(logp)}, expected ({x.shape[0]},)")
    check.require(torch.isfinite(logp).all(), f"{what}: log_likelihood through the harness is not finite: {logp}")
    forward = counter.current
    check.require(forward > 0, f"{what}: the harness counted no dynamics evaluations")
    if expected is not None:
        check.require(forward == expected,
                      f"{what}: expected_nfe() is {expected} but the harness counted {forward} evaluations "
                      f"in one solve")
    counter.start("backward")
    with check.calling(f"{what}: backward pass of the log-likelihood"):
        (-logp.mean()).backward()
    params = [(name, p) for name, p in field.named_parameters() if p.requires_grad]
    missing = [name for name, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
    check.require(not missing, f"{what}: after backward through the harness these field parameters have no "
                               f"(finite) gradient: {', '.join(missing)}")


# --------------------------------------------------------------------------- fields


@_single_threaded
def check_field(cls: type, params: Mapping[str, Any] | None = None, *, dims: Sequence[int] = (1, 2, 5),
                batch: int = 7, seed: int = 0, device: str = "cpu", time_dependent: bool = True) -> None:
    """Check a :class:`~cnfbench.contracts.VectorField` class built as ``cls(dim, **params)``.

    ``time_dependent=False`` skips the check that the output changes with ``t``
    (for a deliberately autonomous field).
    """
    torch = _torch()
    from cnfbench.contracts import VectorField

    check = _Checker(_label("field", cls))
    kwargs = _resolve("field", cls, params, check)
    support = _support()

    def build(dim: int, build_seed: int) -> Any:
        with torch.random.fork_rng(devices=[]), check.calling(f"building it with dim={dim} and {kwargs}"):
            torch.manual_seed(build_seed)
            field = cls(dim, **kwargs)
        check.require(isinstance(field, VectorField), f"cls({dim}, ...) did not return a VectorField")
        check.require(getattr(field, "dim", None) == dim,
                      f"built with dim={dim} it has .dim == {getattr(field, 'dim', None)!r}: call "
                      f"super().__init__(dim, **params)")
        with check.calling(f".to({device!r})"):
            return field.to(device)

    def call(field: Any, t: Tensor, z: Tensor, what: str) -> Tensor:
        with check.calling(f"forward(t, z) {what}"):
            out = field(t, z)
        check.require(torch.is_tensor(out) and out.shape == z.shape and out.dtype == z.dtype
                      and out.device == z.device,
                      lambda: f"forward(t, z) {what} returned {_describe(out)}; expected {_describe(z)} "
                              f"(dz/dt has the shape, dtype and device of z)")
        check.require(torch.isfinite(out).all(), f"forward(t, z) {what} returned non-finite values")
        return out

    for dim in dims:
        field = build(dim, seed)
        trainable = [(name, p) for name, p in field.named_parameters() if p.requires_grad]
        check.require(trainable, "has no trainable parameters (the harness trains the field with Adam)")
        gen = torch.Generator().manual_seed(1000 + dim)
        z = torch.randn(batch, dim, generator=gen).to(device)
        t = torch.tensor(0.3, device=device)
        where = f"with z {tuple(z.shape)} float32"
        out = call(field, t, z, where)
        again = call(field, t, z, where)
        check.require(_same(out, again), f"two calls of forward(t, z) {where} gave different results "
                                         f"(a field must be deterministic: no dropout or noise)")
        twin = build(dim, seed)
        check.require(_same(call(twin, t, z, where), out),
                      f"two fields built under the same torch.manual_seed({seed}) give different outputs "
                      f"(draw the initialisation from torch's global RNG, which the harness seeds)")
        scale = 1.0 + out.abs().max().item()
        for row in (0, batch - 1):
            single = call(field, t, z[row : row + 1], f"with one row z[{row}:{row + 1}]")
            check.require(torch.allclose(single, out[row : row + 1], rtol=0, atol=1e-5 * scale),
                          f"output row {row} changes with the other rows of the batch (rows must be independent, "
                          f"or the trace of the batch Jacobian is not each sample's divergence)")
        if time_dependent:
            at0 = call(field, torch.tensor(0.0, device=device), z, f"{where} at t=0")
            at1 = call(field, torch.tensor(1.0, device=device), z, f"{where} at t=1")
            check.require((at0 - at1).abs().max().item() > 1e-7 * scale,
                          "ignores t: forward(t, z) is the same at t=0 and t=1 (pass time_dependent=False "
                          "if the field is autonomous on purpose)")
        field.zero_grad(set_to_none=True)
        weights = torch.linspace(0.5, 1.5, dim, device=device) * torch.linspace(1.0, 2.0, batch, device=device)[:, None]
        with check.calling(f"backward through forward(t, z) {where}"):
            (out * weights).sum().backward()
        dead = [name for name, p in trainable if p.grad is None or not bool(p.grad.abs().max() > 0)]
        check.require(not dead, f"these parameters receive no gradient from forward(t, z) (dim={dim}): "
                                f"{', '.join(dead)}")
        with check.calling("copy.deepcopy(field) (the evaluation copies the trained field)"):
            copied = copy.deepcopy(field)
        check.require(_same(call(copied, t, z, f"{where} after copy.deepcopy"), out),
                      "a copy.deepcopy of the field gives a different output")
        with check.calling(".to(torch.float64) (the reference solve runs in float64)"):
            field64 = copy.deepcopy(field).to(torch.float64)
        z64, t64 = z.to(torch.float64), t.to(torch.float64)
        out64 = call(field64, t64, z64, f"with z {tuple(z.shape)} float64 after .to(torch.float64)")
        check.require(torch.allclose(out64.float(), out, rtol=0, atol=1e-4 * scale),
                      "in float64 the output differs from float32 by more than rounding "
                      f"({(out64.float() - out).abs().max().item():.3g})")

    field = build(2, seed)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(7)).to(device)
    _harness_run(check, field, support.ExactTrace(), support.RK4(steps=3), x, expected=12, generator=None,
                 what="training step with the exact trace and RK4")


# --------------------------------------------------------------------------- solvers

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

``J = [[0, -1], [1, 0]]``, so ``z(t1) = exp(∫cos(3t)/2 dt) R(∫(1+t) dt) z(t0)`` with ``R`` a rotation."""

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


@_single_threaded
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
    torch = _torch()
    check = _Checker(_label("solver", cls))
    kwargs = _resolve("solver", cls, params, check)
    support = _support()
    adaptive = getattr(cls, "adaptive", None)
    check.require(isinstance(adaptive, bool), f"`adaptive` must be a bool (got {adaptive!r})")
    per_step = getattr(cls, "nfe_per_step", None)
    check.require(per_step is None or (isinstance(per_step, int) and per_step >= 1),
                  f"`nfe_per_step` must be None or a positive int (got {per_step!r})")
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
                          lambda got=got, like=like, part=part: f"{where}: final {part} is {_describe(got)}, "
                                                                f"expected {_describe(like)}")
        check.require(all(torch.equal(a, b) for a, b in zip(inputs, state, strict=True)),
                      f"{where} modified its input state in place")
        check.require(dynamics.calls > 0, f"{where} never evaluated the dynamics")
        expected = expected_of(solver, values)
        check.require(expected is None or expected == dynamics.calls,
                      f"expected_nfe() is {expected} but {where} evaluated the dynamics {dynamics.calls} times")
        return where, result

    def solve(values: Mapping[str, Any], t0: float, t1: float,
              dtype: torch.dtype = f64) -> tuple[float, int, tuple[Tensor, ...]]:
        """Integrate the linear ODE; return the max error relative to the solution's size, evaluations, result."""
        dynamics = support.LinearODE(matrix.to(dtype))
        z0, a0 = z_start.to(dtype), a_start.to(dtype)
        where, result = run(values, dynamics, (z0, a0), ("z", "a"), t0, t1, "dz/dt = A z")
        exact_z = z0 @ torch.linalg.matrix_exp(matrix.to(dtype) * (t1 - t0)).T
        exact_a = a0 - float(torch.trace(matrix)) * (t1 - t0)
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
            outputs.append(solver.integrate(support.LinearODE(matrix), (z_start.clone(), a_start.clone()), 1.0, 0.0))
    check.require(all(_same(a, b) for a, b in zip(*outputs, strict=True)),
                  "two identical solves gave different results (a solver must be deterministic)")

    # Gradients reach the initial state and the dynamics' parameters.
    dynamics = support.LearnableODE(matrix)
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
    declared = _declared(cls)
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
        dynamics = support.ClosedFormODE()
        zeros = torch.zeros(3, dtype=f64, device=device)
        where, (z, constant, linear) = run(values, dynamics, (z_start, zeros, zeros), ("z", "c", "s"), t0, t1,
                                           f"dz/dt = 1, dz/dt = t and {TIME_DEPENDENT_ODE}")
        exact = support.time_dependent_solution(z_start, t0, t1)
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
    field = support.MLPField(2, seed=3, dtype=torch.float32).to(device)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(5)).to(device)
    solver = build(kwargs)
    _harness_run(check, field, support.ExactTrace(), solver, x, expected_of(solver, kwargs), generator=None,
                 what=f"training step with {kwargs}")


# --------------------------------------------------------------------------- trace estimators

UNBIASED_SOLVES = 80
"""Independent solves (probes) averaged by the unbiasedness check of a stochastic trace estimator."""

UNBIASED_ROWS = 50
"""Rows per solve in that check (each row its own probe, unless the estimator shares one per batch).

Kept small: elementwise ops on more than ~1000 float64 values go multi-threaded
in MKL, which is slow on an oversubscribed machine."""


@_single_threaded
def check_trace(cls: type, params: Mapping[str, Any] | None = None, *, dims: Sequence[int] = (1, 2, 5),
                device: str = "cpu") -> None:
    """Check a :class:`~cnfbench.contracts.TraceEstimator` class built as ``cls(**params)``."""
    torch = _torch()
    check = _Checker(_label("trace", cls))
    kwargs = _resolve("trace", cls, params, check)
    support = _support()
    stochastic = getattr(cls, "stochastic", None)
    check.require(isinstance(stochastic, bool), f"`stochastic` must be a bool (got {stochastic!r})")
    f64 = torch.float64

    def build() -> Any:
        with check.calling(f"building it with {kwargs}"):
            return cls(**kwargs)

    def begin(trace: Any, z: Tensor, seed: int | torch.Generator) -> None:
        gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
        with check.calling("begin_solve(z, generator)"):
            trace.begin_solve(z, gen)

    def call(trace: Any, field: Any, t: Tensor, z: Tensor, create_graph: bool, what: str) -> tuple[Tensor, Tensor]:
        where = f"__call__(field, t, z, create_graph={create_graph}) {what}"
        with check.calling(where):
            result = trace(field, t, z, create_graph)
        check.require(isinstance(result, tuple) and len(result) == 2,
                      f"{where} returned {type(result).__name__}; expected the tuple (dz, div)")
        dz, div = result
        check.require(torch.is_tensor(dz) and dz.shape == z.shape and dz.dtype == z.dtype and dz.device == z.device,
                      lambda: f"{where} returned dz {_describe(dz)}; expected {_describe(z)}")
        check.require(torch.is_tensor(div) and div.shape == z.shape[:1] and div.dtype == z.dtype
                      and div.device == z.device,
                      lambda: f"{where} returned div {_describe(div)}; expected ({z.shape[0]},) {z.dtype} on "
                              f"{z.device}")
        check.require(torch.isfinite(div).all(), f"{where} returned a non-finite divergence")
        with torch.no_grad():
            reference = field(t, z)
        check.require(torch.allclose(dz, reference, rtol=1e-10, atol=1e-10),
                      f"{where}: dz is not field(t, z) (max difference {(dz - reference).abs().max().item():.3g})")
        return dz, div

    t = torch.tensor(0.37, dtype=f64, device=device)
    for dim in dims:
        field = support.MLPField(dim, seed=dim).to(device)
        z = torch.randn(6, dim, generator=torch.Generator().manual_seed(dim), dtype=f64).to(device)
        z.requires_grad_(True)
        what = f"on a {dim}-D MLP field"
        trace = build()
        before = _global_rng_states()
        begin(trace, z, 0)
        _, div = call(trace, field, t, z, False, what)
        _, again = call(trace, field, t, z, False, what)
        check.require(_same(div, again),
                      f"two calls within one solve at the same (t, z) {what} gave different divergences "
                      f"({div[0].item():.6g} then {again[0].item():.6g}): draw the noise once in begin_solve "
                      f"and reuse it at every step of the solve")
        changed = _changed_rngs(before)
        check.require(not changed, f"used the global RNG ({', '.join(changed)}) although begin_solve was given a "
                                   f"generator: draw the noise from that generator so runs are reproducible")
        exact = support.jacobian_trace(field, t, z)
        if not stochastic:
            error = (div - exact).abs().max().item()
            sign = " (it has the wrong sign: div must be +tr(dv/dz))" if torch.allclose(div, -exact, atol=1e-6) \
                else ""
            check.require(error <= 1e-6, f"is deterministic (stochastic = False) but its divergence {what} differs "
                                         f"from the exact trace of the Jacobian by {error:.3g}{sign}: got "
                                         f"{div.detach().tolist()}, expected {exact.tolist()}")
        # Differentiable for training.
        trace = build()
        begin(trace, z, 0)
        field.zero_grad(set_to_none=True)
        _, div = call(trace, field, t, z, True, what)
        check.require(div.requires_grad, f"with create_graph=True the divergence {what} is not differentiable "
                                         f"(training could not see it)")
        with check.calling("backward through the divergence"):
            div.sum().backward()
        missing = [name for name in ("w1", "b1", "w2") if getattr(field, name).grad is None]
        check.require(not missing, f"with create_graph=True no gradient of the divergence {what} reaches the "
                                   f"field's parameters {', '.join(missing)}")

    # One probe per solve: on a linear field e^T M e depends neither on t nor on z.
    matrix = torch.tensor([[0.5, 2.0, -1.0], [0.3, -0.7, 0.2], [1.5, 0.4, 0.9]], dtype=f64, device=device)
    linear = support.MatrixField(matrix)
    z = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=f64).to(device).requires_grad_(True)
    trace = build()
    begin(trace, z, 3)
    _, first = call(trace, linear, t, z, False, "on a linear field")
    moved = (z.detach() * 3.0 + 1.0).requires_grad_(True)
    _, later = call(trace, linear, torch.tensor(0.9, dtype=f64, device=device), moved, False,
                    "on a linear field, later in the same solve")
    check.require(torch.allclose(first, later, rtol=1e-10, atol=1e-10),
                  "its estimate on a linear field changed between two steps of one solve (the probe must be drawn "
                  "once in begin_solve and reused at every step, or the ODE's right-hand side is random)")
    if not stochastic:
        check.require(torch.allclose(first, torch.trace(matrix).expand(8), atol=1e-6),
                      f"the divergence of v(z) = M z is {first.tolist()[:3]}..., not tr M = {torch.trace(matrix)}")

    # A field that ignores z has divergence 0 (and must not crash the estimator).
    drift = support.DriftField(2, f64).to(device)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(4), dtype=f64).to(device).requires_grad_(True)
    for create_graph in (False, True):
        trace = build()
        begin(trace, z, 0)
        _, div = call(trace, drift, t, z, create_graph, "on a field that does not depend on z")
        check.require(torch.allclose(div, torch.zeros_like(div)),
                      f"the divergence of a field that does not depend on z is {div.tolist()}, not 0")

    if stochastic:
        # Seeded: the same generator seed gives the same estimate, another seed another.
        field = support.MLPField(3, seed=5).to(device)
        z = torch.randn(10, 3, generator=torch.Generator().manual_seed(6), dtype=f64).to(device).requires_grad_(True)
        estimates = []
        for seed in (1234, 1234, 4321):
            trace = build()
            begin(trace, z, seed)
            estimates.append(call(trace, field, t, z, False, "on a 3-D MLP field")[1])
        check.require(_same(estimates[0], estimates[1]),
                      "two solves with generators seeded alike gave different estimates: draw the noise only from "
                      "the generator given to begin_solve")
        check.require(not _same(estimates[0], estimates[2]),
                      "two solves with generators seeded differently gave the same estimate: draw the noise from "
                      "the generator given to begin_solve")

        # Unbiased: the mean over many probes matches the exact trace within a few standard errors.
        dim = 4
        field = support.MLPField(dim, seed=5).to(device)
        point = torch.randn(1, dim, generator=torch.Generator().manual_seed(7), dtype=f64).to(device)
        exact = support.jacobian_trace(field, t, point)[0].item()
        z = point.expand(UNBIASED_ROWS, dim).clone().requires_grad_(True)
        gen = torch.Generator().manual_seed(11)
        trace = build()
        means = []
        for _ in range(UNBIASED_SOLVES):
            begin(trace, z, gen)
            means.append(call(trace, field, t, z, False, "on a 4-D MLP field")[1].mean().item())
        mean = sum(means) / len(means)
        spread = math.sqrt(sum((m - mean) ** 2 for m in means) / (len(means) - 1))
        standard_error = spread / math.sqrt(len(means))
        off = abs(mean - exact)
        check.require(off <= 4 * standard_error + 1e-6 * (1 + abs(exact)),
                      f"biased: over {UNBIASED_SOLVES} solves x {UNBIASED_ROWS} rows its estimates average "
                      f"{mean:.6g} but the exact trace is {exact:.6g} ("
                      f"{off / standard_error if standard_error > 0 else math.inf:.1f} standard errors off)")

    field = support.MLPField(2, seed=8, dtype=torch.float32).to(device)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(9)).to(device)
    _harness_run(check, field, build(), support.RK4(steps=3), x, expected=12,
                 generator=torch.Generator().manual_seed(0), what="training step with RK4")


# --------------------------------------------------------------------------- datasets


@_single_threaded
def check_dataset(cls: type, params: Mapping[str, Any] | None = None, *, seeds: tuple[int, int] = (0, 1)) -> None:
    """Check a :class:`~cnfbench.contracts.Dataset` class built as ``cls(**params)``.

    Split sizes the dataset declares (``n_train``, ``n_val``, ``n_test``) and
    ``params`` does not set default to :data:`DATASET_CHECK_SIZES`.
    """
    torch = _torch()
    from cnfbench.contracts import Dataset

    check = _Checker(_label("dataset", cls))
    declared = _declared(cls)
    given = {**{k: v for k, v in DATASET_CHECK_SIZES.items() if k in declared}, **dict(params or {})}
    kwargs = _resolve("dataset", cls, given, check)

    def build() -> Any:
        with check.calling(f"building it with {kwargs}"):
            dataset = cls(**kwargs)
        check.require(isinstance(dataset, Dataset), "cls(**params) did not return a Dataset")
        return dataset

    def splits(dataset: Any, seed: int) -> dict[str, Tensor]:
        with check.calling(f"splits({seed})"):
            result = dataset.splits(seed)
        parts = {}
        for split in ("train", "val", "test"):
            x = getattr(result, split, None)
            check.require(torch.is_tensor(x) and x.dim() == 2 and x.shape[0] >= 1 and x.shape[1] == dim
                          and x.dtype == torch.float32,
                          lambda x=x, split=split: f"splits({seed}).{split} is {_describe(x)}; expected "
                                                   f"[N, {dim}] float32 with N >= 1")
            check.require(torch.isfinite(x).all(), f"splits({seed}).{split} has non-finite values")
            if f"n_{split}" in kwargs:
                check.require(x.shape[0] == kwargs[f"n_{split}"],
                              f"splits({seed}).{split} has {x.shape[0]} rows but n_{split}={kwargs[f'n_{split}']}")
            parts[split] = x
        return parts

    before = _global_rng_states()
    dataset = build()
    with check.calling("dim"):
        dim = dataset.dim
    check.require(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1,
                  f"dim must be a positive int (got {dim!r})")
    with check.calling("has_density"):
        has_density = dataset.has_density
    check.require(isinstance(has_density, bool), f"has_density must be a bool (got {has_density!r})")

    first = splits(dataset, seeds[0])
    log_probs = {}
    if has_density:
        for split, x in first.items():
            with check.calling(f"log_prob(splits({seeds[0]}).{split})"):
                log_probs[split] = dataset.log_prob(x)
    changed = _changed_rngs(before)
    check.require(not changed, f"used the global RNG ({', '.join(changed)}) in its constructor, splits() or "
                               f"log_prob(): draw only from a generator derived from the seed "
                               f"(SampledDataset.sample gets one)")

    same = splits(build(), seeds[0])
    repeat = splits(dataset, seeds[0])
    for split in first:
        check.require(torch.equal(first[split], same[split]) and torch.equal(first[split], repeat[split]),
                      f"splits({seeds[0]}).{split} differs between two calls with the same seed")
    other = splits(dataset, seeds[1])
    check.require(any(first[split].shape != other[split].shape or not torch.equal(first[split], other[split])
                      for split in first),
                  f"splits({seeds[0]}) and splits({seeds[1]}) are identical: the seed must change the draw")

    arrays = {split: x.detach().cpu().numpy() for split, x in first.items()}
    rows = {split: {row.tobytes() for row in array} for split, array in arrays.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = rows[a] & rows[b]
        if shared:
            example = next(row for row in arrays[a] if row.tobytes() in shared)
            raise check.fail(f"splits({seeds[0]}): {a} and {b} share {len(shared)} row(s), e.g. "
                             f"{example.tolist()}; the splits must be disjoint")

    for split, log_prob in log_probs.items():
        n = first[split].shape[0]
        check.require(torch.is_tensor(log_prob) and log_prob.shape == (n,) and log_prob.is_floating_point(),
                      lambda log_prob=log_prob, split=split, n=n: f"log_prob(splits({seeds[0]}).{split}) returned "
                                                                  f"{_describe(log_prob)}; expected ({n},) floats")
        bad = (~torch.isfinite(log_prob)).sum().item()
        check.require(bad == 0, f"log_prob is not finite on {bad} of the {n} {split} samples (has_density is True, "
                                f"so samples must have a finite log-density)")


# --------------------------------------------------------------------------- dispatch and plugins

CHECKS: dict[str, Callable[..., None]] = {
    "dataset": check_dataset,
    "field": check_field,
    "solver": check_solver,
    "trace": check_trace,
}
"""The check of each component family, by family key."""


def check_component(family: str, cls: type, params: Mapping[str, Any] | None = None, **options: Any) -> None:
    """Run the check of ``family`` (``dataset``, ``field``, ``solver`` or ``trace``) on ``cls``."""
    if family not in CHECKS:
        raise ValueError(f"unknown component family {family!r}; known: {', '.join(sorted(CHECKS))}")
    CHECKS[family](cls, params, **options)


def _as_plugin(plugin: Any) -> Any:
    return importlib.import_module(plugin) if isinstance(plugin, str) else plugin


def plugin_components(plugin: Any) -> list[tuple[str, type]]:
    """``(family, class)`` for every component ``plugin``'s hooks return, as cnfbench would register them.

    ``plugin`` is a module (or any object with hook implementations) or a
    module name. Raises :class:`ConformanceError` when the hooks are broken:
    a hook function without ``@hookimpl``, a misspelt hook, a class of the
    wrong family, a missing or duplicate ``name``, or no components at all.
    """
    import pluggy

    from cnfbench import hookspecs
    from cnfbench.contracts import FAMILIES
    from cnfbench.registry import Registry, RegistryError

    module = _as_plugin(plugin)
    label = f"plugin {getattr(module, '__name__', repr(module))}"
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(module, name=label)
        pm.check_pending()
    except Exception as exc:  # noqa: BLE001 - pluggy's validation errors, reported as one line
        raise ConformanceError(f"{label}: its hooks do not match cnfbench's hook specifications: "
                               f"{_one_line(exc)}") from exc
    hook_names = [name for name in dir(hookspecs) if name.startswith("cnfbench_")]
    for name in hook_names:
        if callable(getattr(module, name, None)) and pm.parse_hookimpl_opts(module, name) is None:
            raise ConformanceError(f"{label}: {name} is not decorated with @hookimpl "
                                   f"(from cnfbench.hookspecs import hookimpl), so cnfbench never calls it")
    try:
        registry = Registry(pm)
    except RegistryError as exc:
        raise ConformanceError(f"{label}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a hook that raises
        raise ConformanceError(f"{label}: calling its hooks raised {_one_line(exc)}") from exc
    components = [(family, entry.cls) for family in FAMILIES for entry in registry.entries(family)]
    if not components and not any(pm.parse_hookimpl_opts(module, name) for name in hook_names):
        raise ConformanceError(f"{label}: implements none of cnfbench's hooks")
    return components


def check_plugin(plugin: Any, params: Mapping[str, Mapping[str, Any]] | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Check every component that ``plugin``'s hooks return; return ``["field 'name'", ...]``, those checked.

    ``params`` maps a component name to the parameters to check it with, and
    ``options`` to keyword options of its check (``{"linear":
    {"time_dependent": False}}``). All components are checked; one
    :class:`ConformanceError` lists every failure.
    """
    checked, failures = [], []
    for family, cls in plugin_components(plugin):
        try:
            check_component(family, cls, (params or {}).get(cls.name), **(options or {}).get(cls.name, {}))
        except ConformanceError as exc:
            failures.append(str(exc))
        checked.append(f"{family} {cls.name!r}")
    if failures:
        raise ConformanceError(f"{len(failures)} of {len(checked)} component(s) failed the conformance checks:\n"
                               + "\n".join(f"- {failure}" for failure in failures))
    return checked


def conformance_tests(plugin: Any, params: Mapping[str, Mapping[str, Any]] | None = None,
                      options: Mapping[str, Mapping[str, Any]] | None = None) -> Callable[..., None]:
    """A pytest test function parametrized over every component of ``plugin`` (one test each).

    In a test module: ``test_conformance = conformance_tests(my_package.plugin)``;
    ``params`` and ``options`` are as for :func:`check_plugin`.
    """
    import pytest

    cases = [pytest.param(family, cls, id=f"{family}-{cls.name}") for family, cls in plugin_components(plugin)]

    @pytest.mark.parametrize(("family", "cls"), cases)
    def test_component_conformance(family: str, cls: type) -> None:
        check_component(family, cls, (params or {}).get(cls.name), **(options or {}).get(cls.name, {}))

    return test_component_conformance


# --------------------------------------------------------------------------- pytest plugin

# Only under pytest (which imports this module through its pytest11 entry point): plain imports stay cheap.
if "pytest" in sys.modules:
    import pytest as _pytest

    @_pytest.fixture
    def cnfbench_check() -> Callable[..., None]:
        """``check_component(family, cls, params=None)`` from :mod:`cnfbench.testing`."""
        return check_component
