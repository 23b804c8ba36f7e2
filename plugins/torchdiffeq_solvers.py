"""Built-in solvers: every method of the installed torchdiffeq, with or without its adjoint.

Fixed-grid methods take ``steps`` equal steps over the interval (never one
silent step over [0, 1]); adaptive methods take ``rtol``/``atol`` and a
``max_steps`` cap so that a runaway solve fails its cell instead of hanging.
``adjoint=true`` uses torchdiffeq's adjoint method for the backward pass.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torchdiffeq
from torch import Tensor
from torchdiffeq._impl.fixed_adams import AdamsBashforth, AdamsBashforthMoulton
from torchdiffeq._impl.odeint import SOLVERS as TORCHDIFFEQ_METHODS
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver
from torchdiffeq._impl.solvers import FixedGridODESolver

from cnfbench.contracts import Dynamics, Solver, StepCapReached, StepSizeUnderflow
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param

# Dynamics evaluations per step of each fixed-grid Runge-Kutta method.
RK_STAGES = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}

# The max_order cnfbench runs torchdiffeq's Adams-Bashforth(-Moulton) methods at.
ADAMS_ORDER = 4

# The global order they really reach with it (the conformance kit measures 2.99 and 4.0 on 8..64 steps). torchdiffeq
# takes the first ADAMS_ORDER - 1 steps with RK4, then keeps ADAMS_ORDER - 1 = 3 past derivatives: the explicit method
# is the 3-step Adams-Bashforth formula (order 3, not 4), the implicit one uses it to predict the 4th-order
# Adams-Moulton corrector (order 4).
ADAMS_METHOD_ORDER = {"explicit": 3, "implicit": 4}

# Methods that cannot train a CNF: scipy_solver leaves torch's autograd.
UNSUPPORTED = {"scipy_solver"}

ADJOINT = Param("adjoint", "bool", False, "backpropagate with torchdiffeq's adjoint (O(1) memory)")


class TorchdiffeqSolver(Solver):
    """Shared integration through ``torchdiffeq.odeint`` / ``odeint_adjoint``."""

    method: ClassVar[str] = ""
    libraries = ("torchdiffeq",)

    @classmethod
    def translate_failure(cls, exc: BaseException) -> BaseException | None:
        """torchdiffeq signals a collapsing step and its step cap with ``AssertionError`` messages."""
        if not isinstance(exc, AssertionError):
            return None
        message = " ".join(str(exc).split())
        if "underflow in dt" in message:
            return StepSizeUnderflow(f"step size underflow ({message})")
        if "max_num_steps exceeded" in message:
            return StepCapReached(f"solver step cap reached ({message})")
        return None

    def _options(self, t1: float) -> tuple[dict[str, Any], float, float]:
        """torchdiffeq ``options``, ``rtol`` and ``atol`` for a solve ending at ``t1``."""
        raise NotImplementedError

    def integrate(
        self, dynamics: Dynamics, state: tuple[Tensor, ...], t0: float, t1: float
    ) -> tuple[Tensor, ...]:
        reference = state[0]
        times = torch.tensor([t0, t1], dtype=reference.dtype, device=reference.device)
        options, rtol, atol = self._options(t1)
        if "step_t" in options:  # torchdiffeq flips step_t for reverse-time solves only when it is a tensor
            options["step_t"] = torch.as_tensor(options["step_t"], dtype=reference.dtype, device=reference.device)
        try:
            if self.config.get("adjoint", False):
                trajectory = torchdiffeq.odeint_adjoint(
                    dynamics, state, times, rtol=rtol, atol=atol, method=self.method, options=options,
                    adjoint_params=tuple(dynamics.parameters()),
                )
            else:
                trajectory = torchdiffeq.odeint(
                    dynamics, state, times, rtol=rtol, atol=atol, method=self.method, options=options
                )
        except AssertionError as exc:
            translated = self.translate_failure(exc)
            if translated is None:
                raise
            raise translated from exc
        return tuple(component[-1] for component in trajectory)


class FixedGridSolver(TorchdiffeqSolver):
    """A fixed-grid torchdiffeq method on ``steps`` equal steps."""

    adaptive = False
    multistep: ClassVar[bool] = False
    params = (
        Param("steps", "int", 10, "equal steps over the integration interval", minimum=1, maximum=100000),
        ADJOINT,
    )

    def _options(self, t1: float) -> tuple[dict[str, Any], float, float]:
        steps = int(self.config["steps"])

        def grid(_func: Any, _y0: Any, t: Tensor) -> Tensor:
            return torch.linspace(float(t[0]), float(t[-1]), steps + 1, dtype=t.dtype, device=t.device)

        options: dict[str, Any] = {"grid_constructor": grid}
        if self.multistep:
            # torchdiffeq's Adams methods default to order 12, which is unstable on coarse grids.
            options["max_order"] = ADAMS_ORDER
        # rtol/atol only matter for the implicit Adams corrector iterations.
        return options, 1e-3, 1e-4

    def expected_nfe(self) -> int | None:
        if self.nfe_per_step is None:
            return None
        return int(self.config["steps"]) * self.nfe_per_step


class AdaptiveSolver(TorchdiffeqSolver):
    """An adaptive Runge-Kutta torchdiffeq method with error control."""

    adaptive = True
    params = (
        Param("rtol", "float", 1e-5, "relative tolerance", minimum=0.0),
        Param("atol", "float", 1e-5, "absolute tolerance", minimum=0.0),
        Param("max_steps", "int", 10000, "accepted+rejected steps allowed per solve before the cell fails", minimum=1),
        ADJOINT,
    )

    def _options(self, t1: float) -> tuple[dict[str, Any], float, float]:
        # step_t makes the last step land on t1 instead of interpolating past it (lower-order for bosh3/dopri8).
        options = {"max_num_steps": int(self.config["max_steps"]), "step_t": [t1]}
        return options, float(self.config["rtol"]), float(self.config["atol"])

    def error_tolerance(self) -> float | None:
        return max(float(self.config["rtol"]), float(self.config["atol"]))


def _solver_class(method: str, implementation: type) -> type[Solver] | None:
    if method in UNSUPPORTED:
        return None
    order = getattr(implementation, "order", None)
    multistep = issubclass(implementation, AdamsBashforthMoulton)
    if multistep:
        order = ADAMS_METHOD_ORDER["explicit" if issubclass(implementation, AdamsBashforth) else "implicit"]
    if issubclass(implementation, RKAdaptiveStepsizeODESolver):
        base: type[TorchdiffeqSolver] = AdaptiveSolver
        kind = "adaptive"
        stages = None
    elif issubclass(implementation, FixedGridODESolver):
        base = FixedGridSolver
        kind = "fixed-grid"
        stages = RK_STAGES.get(method)
    else:
        return None
    detail = f"{stages} evaluations/step" if stages else "multistep after an RK4 start: evaluations/step vary"
    if kind == "adaptive":
        detail = "error-controlled steps"
    description = f"torchdiffeq {method}: {kind}, order {order}, {detail}"
    return type(
        f"Torchdiffeq_{method}",
        (base,),
        {"name": method, "method": method, "description": description, "nfe_per_step": stages, "order": order,
         "multistep": multistep, "__module__": __name__, "__doc__": description},
    )


def _all_solver_classes() -> list[type[Solver]]:
    classes = [_solver_class(method, implementation) for method, implementation in sorted(TORCHDIFFEQ_METHODS.items())]
    return [cls for cls in classes if cls is not None]


SOLVER_CLASSES = _all_solver_classes()


@hookimpl
def cnfbench_solvers() -> list[type[Solver]]:
    return list(SOLVER_CLASSES)
