"""The conformance check of a training objective (:func:`check_objective`): a seeded, differentiable, scalar loss."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cnfbench.testing._checker import (
    Checker,
    changed_rngs,
    component_label,
    describe,
    global_rng_states,
    one_line,
    resolve_component,
    single_threaded,
    torch_module,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor

OBJECTIVE_SOLVER_STEPS = 3
"""``steps`` of the RK4 training solve (with the exact trace) behind ``context.log_likelihood`` in the check."""


@single_threaded
def check_objective(cls: type, params: Mapping[str, Any] | None = None, *, dim: int = 2, batch: int = 16,
                    seed: int = 0, device: str = "cpu") -> None:
    """Check an :class:`~cnfbench.contracts.Objective` class built as ``cls(**params)``.

    The objective trains a seeded reference MLP field
    (:class:`~cnfbench.testing.reference.MLPField`) on a ``[batch, dim]``
    minibatch through the harness's own training context
    (:class:`cnfbench.training.HarnessContext`), whose ``log_likelihood``
    solves with :class:`~cnfbench.testing.reference.RK4` and the exact trace
    when the objective declares ``uses_solver`` and raises otherwise.

    * metadata: ``name``, ``description``, ``params``; ``uses_solver`` and
      ``uses_trace`` bools (no trace without the solver); ``loss_unit`` a
      non-empty string;
    * ``loss(context, x)`` returns an :class:`~cnfbench.contracts.ObjectiveLoss`
      whose ``loss`` is a finite 0-dim floating tensor and whose ``terms`` map
      names to finite plain floats;
    * an objective with ``uses_solver = False`` never calls
      ``context.log_likelihood``; every field evaluation goes through the
      context (``velocity`` or ``log_likelihood``), so the harness counts it;
    * the loss is differentiable: every field parameter gets a finite
      gradient, not all of them zero;
    * seeded: no global RNG is touched, and fresh objectives given contexts
      whose generators are seeded alike return the same loss and terms, bit
      for bit; another minibatch gives another loss;
    * float64: on a float64 field and minibatch the loss is a float64 scalar
      with finite gradients.
    """
    torch = torch_module()
    from cnfbench.contracts import Objective, ObjectiveLoss
    from cnfbench.dynamics import CNFDynamics, NFECounter
    from cnfbench.testing import reference
    from cnfbench.training import HarnessContext

    check = Checker(component_label("objective", cls))
    kwargs = resolve_component("objective", cls, params, check)
    flags = {}
    for flag in ("uses_solver", "uses_trace"):
        flags[flag] = getattr(cls, flag, None)
        check.require(isinstance(flags[flag], bool), f"`{flag}` must be a bool (got {flags[flag]!r})")
    uses_solver = flags["uses_solver"]
    check.require(uses_solver or not flags["uses_trace"],
                  "declares uses_trace = True but uses_solver = False: the trace is only used through "
                  "context.log_likelihood, which solves with the solver")
    loss_unit = getattr(cls, "loss_unit", None)
    check.require(isinstance(loss_unit, str) and loss_unit.strip(),
                  f"`loss_unit` must be a non-empty string naming the loss's unit, e.g. 'nats/sample' "
                  f"(got {loss_unit!r})")

    class KitContext(HarnessContext):
        """The harness's context, also counting the calls of ``log_likelihood`` (allowed or not)."""

        solves = 0

        def log_likelihood(self, x: Tensor, integrands: tuple = ()) -> tuple[Tensor, tuple[Tensor, ...]]:
            self.solves += 1
            return super().log_likelihood(x, integrands)

    def build() -> Any:
        with check.calling(f"building it with {kwargs}"):
            objective = cls(**kwargs)
        check.require(isinstance(objective, Objective), "cls(**params) did not return an Objective")
        return objective

    def field_for(dtype: torch.dtype) -> Any:
        return reference.MLPField(dim, seed=seed, hidden=8, dtype=dtype).to(device)

    def minibatch(data_seed: int, dtype: torch.dtype) -> Tensor:
        gen = torch.Generator().manual_seed(data_seed)
        return (0.5 * torch.randn(batch, dim, generator=gen, dtype=torch.float64) + 1.0).to(dtype).to(device)

    def evaluate(objective: Any, field: Any, x: Tensor, what: str) -> ObjectiveLoss:
        """``objective.loss(context, x)`` in a fresh context, its result checked; ``what`` says which call."""
        counter = NFECounter()
        solve = None
        if uses_solver:
            dynamics = CNFDynamics(field, reference.ExactLoopTrace(), counter, differentiable=True,
                                   field_label=repr(field.name), trace_label="'reference-exact-loop'")
            solve = (dynamics, reference.RK4(steps=OBJECTIVE_SOLVER_STEPS), torch.Generator().manual_seed(seed + 1))
        context = KitContext(field, dim, torch.Generator().manual_seed(seed), solve, repr(cls.name))
        calls = [0]

        def count(*_: Any) -> None:
            calls[0] += 1

        hook = field.register_forward_hook(count)
        forbidden = ("declares uses_solver = False but its loss calls context.log_likelihood: declare "
                     "uses_solver = True, or evaluate the field through context.velocity only")
        before = global_rng_states()
        try:
            result = objective.loss(context, x)
        except Exception as exc:  # noqa: BLE001 - whatever the objective raises becomes one clear line
            if context.solves and not uses_solver:
                raise check.fail(forbidden) from exc
            raise check.fail(f"loss(context, x) {what} raised {one_line(exc)}") from exc
        finally:
            hook.remove()
        check.require(not (context.solves and not uses_solver), forbidden)
        changed = changed_rngs(before)
        check.require(not changed, f"loss(context, x) used the global RNG ({', '.join(changed)}): draw all "
                                   f"randomness from context.generator, which the harness seeds")
        counted = context.evaluations + counter.totals["forward"]
        check.require(calls[0] <= counted,
                      f"loss(context, x) {what} evaluated the field {calls[0] - counted} time(s) outside the "
                      f"context (calling context.field directly?): evaluate it through context.velocity(t, z), "
                      f"which the harness counts")
        check.require(isinstance(result, ObjectiveLoss),
                      f"loss(context, x) {what} returned {type(result).__name__}; expected an "
                      f"ObjectiveLoss(loss, terms)")
        loss = result.loss
        check.require(torch.is_tensor(loss) and loss.dim() == 0 and loss.is_floating_point(),
                      lambda: f"loss(context, x) {what} returned a loss of {describe(loss)}; expected a 0-dim "
                              f"floating tensor (reduce the minibatch to one number, e.g. with .mean())")
        check.require(bool(torch.isfinite(loss)), f"loss(context, x) {what} returned a non-finite loss "
                                                  f"({loss.item()})")
        terms = result.terms
        check.require(isinstance(terms, dict), f"loss(context, x) {what} returned terms of type "
                                               f"{type(terms).__name__}; expected a dict of plain floats")
        for key, value in terms.items():
            check.require(isinstance(key, str) and key, f"terms has the key {key!r}; expected non-empty strings")
            check.require(isinstance(value, (int, float)) and not isinstance(value, bool),
                          f"terms[{key!r}] is {describe(value)}; expected a plain float (e.g. tensor.item())")
            check.require(math.isfinite(value),
                          f"terms[{key!r}] {what} is not finite ({value})")
        return result

    def backward(field: Any, result: ObjectiveLoss, what: str) -> list[Tensor]:
        """Backpropagate the loss; require a finite gradient on every field parameter, not all zero."""
        check.require(result.loss.requires_grad,
                      f"the loss {what} is not differentiable in the field's parameters (it has no autograd "
                      f"graph: computed under torch.no_grad(), .detach()ed or rebuilt from .item()?)")
        field.zero_grad(set_to_none=True)
        with check.calling(f"backward through the loss {what}"):
            result.loss.backward()
        trainable = [(name, p) for name, p in field.named_parameters() if p.requires_grad]
        missing = [name for name, p in trainable if p.grad is None]
        check.require(not missing, f"no gradient of the loss {what} reaches these field parameters: "
                                   f"{', '.join(missing)} (a detached term?)")
        bad = [name for name, p in trainable if not torch.isfinite(p.grad).all()]
        check.require(not bad, f"the gradient of the loss {what} is not finite in the field parameters "
                               f"{', '.join(bad)}")
        check.require(any(bool(p.grad.abs().max() > 0) for _, p in trainable),
                      f"the gradient of the loss {what} is zero in every field parameter: the loss does not "
                      f"depend on the field")
        return [p.grad.clone() for _, p in trainable]

    f32, f64 = torch.float32, torch.float64
    x = minibatch(1000 + seed, f32)
    where = f"on a float32 [{batch}, {dim}] minibatch"
    field = field_for(f32)
    first = evaluate(build(), field, x, where)
    backward(field, first, where)

    again = evaluate(build(), field_for(f32), x, f"{where} (again, same seeds)")
    check.require(torch.equal(first.loss.detach(), again.loss.detach()),
                  f"two fresh objectives given contexts whose generators are seeded alike returned different losses "
                  f"on the same minibatch ({first.loss.item()!r} then {again.loss.item()!r}): draw all randomness "
                  f"from context.generator")
    check.require(first.terms == again.terms,
                  f"two fresh objectives given contexts whose generators are seeded alike returned different terms "
                  f"({first.terms} then {again.terms})")

    other = evaluate(build(), field_for(f32), minibatch(2000 + seed, f32), "on another float32 minibatch")
    check.require(not torch.equal(first.loss.detach(), other.loss.detach()),
                  f"returned the same loss ({first.loss.item()!r}) for two different minibatches: the loss must "
                  f"depend on the data x")

    where64 = f"on a float64 field and [{batch}, {dim}] minibatch"
    field64 = field_for(f64)
    result64 = evaluate(build(), field64, minibatch(1000 + seed, f64), where64)
    check.require(result64.loss.dtype == f64,
                  f"the loss {where64} is {result64.loss.dtype}: compute it in the data's dtype (float64 in, "
                  f"float64 out)")
    backward(field64, result64, where64)
