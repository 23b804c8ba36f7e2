"""Built-in per-sample adaptive solvers: torchode's ``dopri5`` and ``tsit5`` (``torchode_dopri5``, ``torchode_tsit5``).

torchdiffeq's adaptive methods step the whole batch together, so the hardest row sets every row's step size.
torchode (Lienen & Günnemann, "torchode: A Parallel ODE Solver for PyTorch", 2022) keeps a step size, an error
estimate and an accept/reject decision per row: every row advances on its own clock. The dynamics are still
evaluated for the whole batch at once, with ``t`` of shape ``[B]`` (these solvers declare ``per_sample_time``);
a row that has reached ``t1`` is evaluated with the batch but no longer moves. So the harness's NFE — calls of
the batched dynamics — is set by the row that needs the most steps, while :meth:`step_statistics` reports each
row's accepted and rejected steps.

The state tuple is flattened into torchode's ``[B, features]`` (error control covers every component, as
torchdiffeq's does, with torchode's RMS norm), the integral step-size controller holds it to ``rtol``/``atol``,
and gradients flow by backpropagation through the steps (``AutoDiffAdjoint``), not through the step-size
controller (the steps' sizes are constants of the backward pass, so ``t`` never carries a gradient). A row that reaches
``max_steps`` steps fails the solve (status ``budget``); one whose step size or error estimate breaks down
fails it as diverged.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from cnfbench.contracts import Dynamics, Solver, StepCapReached, StepSizeUnderflow, optional_import
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param

TOLERANCE_PARAMS = (
    Param("rtol", "float", 1e-5, "relative tolerance, per row", minimum=0.0),
    Param("atol", "float", 1e-5, "absolute tolerance, per row", minimum=0.0),
    Param("max_steps", "int", 10000, "accepted+rejected steps any row may take per solve before the cell fails",
          minimum=1),
)

# torchode's status codes (torchode.status_codes): SUCCESS 0, GENERAL_ERROR 1, REACHED_DT_MIN 2,
# REACHED_MAX_STEPS 3, INFINITE_NORM 4.
SUCCESS, REACHED_DT_MIN, REACHED_MAX_STEPS, INFINITE_NORM = 0, 2, 3, 4


class TorchodeSolver(Solver):
    """A torchode Runge-Kutta method with per-row error control."""

    method: ClassVar[str] = ""
    adaptive = True
    per_sample_time = True
    order = 5
    libraries = ("torchode",)
    params = TOLERANCE_PARAMS

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._torchode = optional_import("torchode", f"the {self.name} solver", "torchode")
        self._statistics: dict[str, Tensor] | None = None

    def integrate(self, dynamics: Dynamics, state: tuple[Tensor, ...], t0: float, t1: float) -> tuple[Tensor, ...]:
        torchode = self._torchode
        reference = state[0]
        batch = reference.shape[0]
        widths = [component[0].numel() for component in state]

        def flat_dynamics(t: Tensor, y: Tensor) -> Tensor:
            parts = torch.split(y, widths, dim=1)
            derivatives = dynamics(t, tuple(part.reshape(like.shape) for part, like in zip(parts, state, strict=True)))
            return torch.cat([derivative.reshape(batch, -1) for derivative in derivatives], dim=1)

        term = torchode.ODETerm(flat_dynamics)
        step_method = getattr(torchode, self.method)(term=term)
        controller = torchode.IntegralController(atol=float(self.config["atol"]), rtol=float(self.config["rtol"]),
                                                 term=term)
        # The gradient of the solution, not of where the controller put the steps: no graph through the step sizes.
        solver = torchode.AutoDiffAdjoint(step_method, controller, max_steps=int(self.config["max_steps"]),
                                          backprop_through_step_size_control=False)
        start = torch.full((batch,), t0, dtype=reference.dtype, device=reference.device)
        end = torch.full((batch,), t1, dtype=reference.dtype, device=reference.device)
        y0 = torch.cat([component.reshape(batch, -1) for component in state], dim=1)
        solution = solver.solve(torchode.InitialValueProblem(y0=y0, t_start=start, t_end=end))
        steps, accepted = solution.stats["n_steps"], solution.stats["n_accepted"]
        self._statistics = {"accepted": accepted.detach().cpu(), "rejected": (steps - accepted).detach().cpu()}
        self._raise_for(solution.status, steps)
        parts = torch.split(solution.ys[:, -1], widths, dim=1)
        return tuple(part.reshape(like.shape) for part, like in zip(parts, state, strict=True))

    def _raise_for(self, status: Tensor, steps: Tensor) -> None:
        """The contract exception for rows that did not reach ``t1``; nothing when all succeeded."""
        codes = status.detach().cpu().reshape(-1).expand(steps.shape[0])
        if bool((codes == SUCCESS).all()):
            return
        failed = int((codes != SUCCESS).sum())
        if bool((codes == REACHED_MAX_STEPS).any()):
            raise StepCapReached(f"{self.name}: {int((codes == REACHED_MAX_STEPS).sum())} of {codes.numel()} rows "
                                 f"took max_steps={self.config['max_steps']} steps without reaching t1")
        if bool((codes == REACHED_DT_MIN).any() | (codes == INFINITE_NORM).any()):
            raise StepSizeUnderflow(f"{self.name}: the solve diverged in {failed} of {codes.numel()} rows (step "
                                    f"size underflow or a non-finite error estimate)")
        raise RuntimeError(f"{self.name}: torchode failed in {failed} of {codes.numel()} rows (status codes "
                           f"{sorted(set(codes.tolist()) - {SUCCESS})})")

    def step_statistics(self) -> dict[str, Tensor] | None:
        return self._statistics

    def error_tolerance(self) -> float | None:
        return max(float(self.config["rtol"]), float(self.config["atol"]))


class TorchodeDopri5(TorchodeSolver):
    name = "torchode_dopri5"
    method = "Dopri5"
    description = "torchode dopri5: adaptive, order 5, per-sample step sizes (each row on its own clock)"


class TorchodeTsit5(TorchodeSolver):
    name = "torchode_tsit5"
    method = "Tsit5"
    description = "torchode tsit5 (Tsitouras 5(4)): adaptive, order 5, per-sample step sizes"


@hookimpl
def cnfbench_solvers() -> list[type[Solver]]:
    return [TorchodeDopri5, TorchodeTsit5]
