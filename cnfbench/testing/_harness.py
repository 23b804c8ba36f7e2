"""Run a component inside the harness as training does: NFE-counted CNF dynamics, log-likelihood, backward."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnfbench.testing._checker import Checker, describe, torch_module

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def harness_run(check: Checker, field: Any, trace: Any, solver: Any, x: Tensor, expected: int | None,
                generator: torch.Generator | None, what: str) -> None:
    """One training step of ``field`` with ``trace`` and ``solver`` through :mod:`cnfbench.dynamics`.

    Requires a finite ``[B]`` log-likelihood, ``expected`` evaluations (when
    not ``None``) counted by the harness, and a finite gradient on every
    trainable parameter of ``field``.
    """
    torch = torch_module()
    from cnfbench.dynamics import CNFDynamics, NFECounter, log_likelihood

    counter = NFECounter()
    dynamics = CNFDynamics(field, trace, counter, differentiable=True, field_label=repr(getattr(field, "name", "")),
                           trace_label=repr(getattr(trace, "name", "")))
    with check.calling(f"{what}: log_likelihood through the harness (CNFDynamics)"):
        logp = log_likelihood(dynamics, solver, x, "forward", generator)
    check.require(torch.is_tensor(logp) and logp.shape == x.shape[:1],
                  f"{what}: log_likelihood through the harness gave {describe(logp)}, expected ({x.shape[0]},)")
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
