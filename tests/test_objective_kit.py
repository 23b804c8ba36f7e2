"""The conformance kit's objective check: every built-in objective passes, and broken ones fail by name."""

from __future__ import annotations

import types
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from cnfbench.contracts import Objective, ObjectiveLoss, TrainingContext
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param
from cnfbench.registry import load_registry
from cnfbench.testing import CHECKS, ConformanceError, check_component, check_objective, check_plugin

REGISTRY = load_registry()
BUILTINS = [pytest.param(entry.name, id=entry.name) for entry in REGISTRY.entries("objective")
            if entry.plugin.startswith("cnfbench:")]


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_objective_passes_the_kit(name: str) -> None:
    check_objective(REGISTRY.get("objective", name).cls)


def test_the_builtins_under_test_are_the_four_objectives() -> None:
    assert sorted(case.values[0] for case in BUILTINS) == ["cfm", "mle", "otcfm", "rnode"]


def test_builtins_pass_with_other_parameters_and_sizes() -> None:
    check_objective(REGISTRY.get("objective", "rnode").cls, {"kinetic": 0.5, "jacobian": 0.0}, dim=3, batch=5)
    check_objective(REGISTRY.get("objective", "otcfm").cls, {"sigma": 0.1}, dim=1, batch=9, seed=3)


def test_objective_is_dispatched_like_the_other_families() -> None:
    assert CHECKS["objective"] is check_objective
    check_component("objective", REGISTRY.get("objective", "cfm").cls, {"sigma": 0.05})


# --------------------------------------------------------------------------- a correct objective and broken ones


class FlowMatching(Objective):
    """Straight-path flow matching, drawing from ``context.generator`` only: passes the kit."""

    name = "kit-fm"
    description = "straight-path flow matching (conformance-kit test)"
    params = (Param("sigma", "float", 0.0, "noise around the path", minimum=0.0),)
    uses_solver = False
    uses_trace = False
    loss_unit = "(data unit/time)²/sample"

    def draws(self, context: TrainingContext, x: Tensor) -> tuple[Tensor, Tensor]:
        x0 = torch.randn(x.shape, generator=context.generator, dtype=x.dtype)
        t = torch.rand(x.shape[0], generator=context.generator, dtype=x.dtype)
        return x0, t

    def residual(self, context: TrainingContext, x: Tensor) -> Tensor:
        x0, t = self.draws(context, x)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x
        return (context.velocity(t, x_t) - (x - x0)).pow(2).sum(dim=1)

    def loss(self, context: TrainingContext, x: Tensor) -> ObjectiveLoss:
        loss = self.residual(context, x).mean()
        return ObjectiveLoss(loss, {"flow_matching": loss.item()})


class SolvingFlowMatching(FlowMatching):
    """Declares it needs the solver and trace but does not use them: allowed (it may solve, need not)."""

    name = "kit-fm-solving"
    uses_solver = True
    uses_trace = True


class LikelihoodOnly(Objective):
    """Maximum likelihood through context.log_likelihood: passes (uses_solver = True, the default, allows it)."""

    name = "kit-mle"
    description = "negative log-likelihood (conformance-kit test)"

    def loss(self, context: TrainingContext, x: Tensor) -> ObjectiveLoss:
        log_p, _ = context.log_likelihood(x)
        return ObjectiveLoss(-log_p.mean(), {"nll": -log_p.mean().item()})


class NonScalar(FlowMatching):
    name = "kit-non-scalar"

    def loss(self, context: TrainingContext, x: Tensor) -> ObjectiveLoss:
        return ObjectiveLoss(self.residual(context, x), {})  # one loss per row: never reduced


class NotFinite(FlowMatching):
    name = "kit-nan"

    def loss(self, context: TrainingContext, x: Tensor) -> ObjectiveLoss:
        return ObjectiveLoss(self.residual(context, x).mean() * float("nan"), {})


class Detached(FlowMatching):
    name = "kit-detached"

    def loss(self, context: TrainingContext, x: Tensor) -> ObjectiveLoss:
        value = self.residual(context, x).mean().item()
        return ObjectiveLoss(torch.tensor(value), {"flow_matching": value})  # rebuilt from .item(): no graph


class GlobalRandomness(FlowMatching):
    name = "kit-global-rng"

    def draws(self, context: TrainingContext, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.randn(x.shape, dtype=x.dtype), torch.rand(x.shape[0], dtype=x.dtype)  # torch's global RNG


_PRIVATE = torch.Generator().manual_seed(0)


class PrivateRandomness(FlowMatching):
    """Never touches the global RNG, yet is not reproducible from the context's seed."""

    name = "kit-private-rng"

    def draws(self, context: TrainingContext, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.randn(x.shape, generator=_PRIVATE, dtype=x.dtype), \
            torch.rand(x.shape[0], generator=_PRIVATE, dtype=x.dtype)


class SolvesSecretly(FlowMatching):
    name = "kit-secret-solve"

    def loss(self, context: TrainingContext, x: Tensor) -> ObjectiveLoss:
        log_p, _ = context.log_likelihood(x)  # declares uses_solver = False
        return ObjectiveLoss(-log_p.mean(), {})


class SolvesAndSwallows(FlowMatching):
    name = "kit-swallowed-solve"

    def loss(self, context: TrainingContext, x: Tensor) -> ObjectiveLoss:
        try:
            context.log_likelihood(x)
        except RuntimeError:
            pass  # hides the harness's refusal: the kit still sees the call
        return super().loss(context, x)


class UncountedEvaluations(FlowMatching):
    name = "kit-uncounted"

    def residual(self, context: TrainingContext, x: Tensor) -> Tensor:
        x0, t = self.draws(context, x)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x
        return (context.field(torch.tensor(0.5, dtype=x.dtype), x_t) - (x - x0)).pow(2).sum(dim=1)


class IgnoresData(FlowMatching):
    name = "kit-no-data"

    def residual(self, context: TrainingContext, x: Tensor) -> Tensor:
        return super().residual(context, torch.zeros_like(x))


class TensorTerms(FlowMatching):
    name = "kit-tensor-terms"

    def loss(self, context: TrainingContext, x: Tensor) -> ObjectiveLoss:
        loss = self.residual(context, x).mean()
        return ObjectiveLoss(loss, {"flow_matching": loss})  # type: ignore[dict-item] - a tensor, not a float


class NotAnObjectiveLoss(FlowMatching):
    name = "kit-bare-tensor"

    def loss(self, context: TrainingContext, x: Tensor) -> Any:
        return self.residual(context, x).mean()


class SinglePrecision(FlowMatching):
    name = "kit-float32"

    def loss(self, context: TrainingContext, x: Tensor) -> ObjectiveLoss:
        loss = self.residual(context, x).mean().float()
        return ObjectiveLoss(loss, {"flow_matching": loss.item()})


class Raises(FlowMatching):
    name = "kit-raises"

    def loss(self, context: TrainingContext, x: Tensor) -> ObjectiveLoss:
        raise ValueError("no minibatch today")


class TraceWithoutSolver(FlowMatching):
    name = "kit-trace-no-solver"
    uses_trace = True


class StringFlag(FlowMatching):
    name = "kit-string-flag"
    uses_solver: ClassVar[Any] = "no"


class NoUnit(FlowMatching):
    name = "kit-no-unit"
    loss_unit = ""


class NoDescription(FlowMatching):
    name = "kit-no-description"
    description = ""


@pytest.mark.parametrize("good", [FlowMatching, SolvingFlowMatching, LikelihoodOnly], ids=lambda c: c.name)
def test_correct_objectives_pass(good: type[Objective]) -> None:
    check_objective(good)
    check_objective(good, dim=1, batch=3)


BROKEN = [
    (NonScalar, "returned a loss of (16,) torch.float32 on cpu; expected a 0-dim floating tensor"),
    (NotFinite, "returned a non-finite loss (nan)"),
    (Detached, "is not differentiable in the field's parameters"),
    (GlobalRandomness, "used the global RNG (torch.manual_seed/torch.rand*): draw all randomness from "
                       "context.generator"),
    (PrivateRandomness, "contexts whose generators are seeded alike returned different losses"),
    (SolvesSecretly, "declares uses_solver = False but its loss calls context.log_likelihood"),
    (SolvesAndSwallows, "declares uses_solver = False but its loss calls context.log_likelihood"),
    (UncountedEvaluations, "outside the context (calling context.field directly?)"),
    (IgnoresData, "returned the same loss"),
    (TensorTerms, "terms['flow_matching'] is () torch.float32 on cpu; expected a plain float"),
    (NotAnObjectiveLoss, "returned Tensor; expected an ObjectiveLoss(loss, terms)"),
    (SinglePrecision, "on a float64 field and [16, 2] minibatch is torch.float32"),
    (Raises, "loss(context, x) on a float32 [16, 2] minibatch raised ValueError: no minibatch today"),
    (TraceWithoutSolver, "declares uses_trace = True but uses_solver = False"),
    (StringFlag, "`uses_solver` must be a bool (got 'no')"),
    (NoUnit, "`loss_unit` must be a non-empty string"),
    (NoDescription, "needs a one-line `description` string"),
]


@pytest.mark.parametrize(("broken", "fragment"), BROKEN, ids=[cls.name for cls, _ in BROKEN])
def test_broken_objectives_fail_with_one_line_naming_the_problem(broken: type[Objective], fragment: str) -> None:
    with pytest.raises(ConformanceError) as caught:
        check_objective(broken)
    message = str(caught.value)
    assert message.startswith(f"objective {broken.name!r} ({broken.__qualname__}): "), message
    assert fragment in message, message
    assert "\n" not in message, message


def test_a_class_of_another_family_is_refused() -> None:
    with pytest.raises(ConformanceError, match=r"is not a subclass of cnfbench\.contracts\.Objective"):
        check_objective(REGISTRY.get("trace", "exact").cls)


def test_check_plugin_checks_the_objectives_a_plugin_registers() -> None:
    @hookimpl
    def cnfbench_objectives() -> list[type[Objective]]:
        return [FlowMatching, SolvesSecretly]

    plugin = types.SimpleNamespace(__name__="objective_plugin", cnfbench_objectives=cnfbench_objectives)
    with pytest.raises(ConformanceError) as caught:
        check_plugin(plugin)
    message = str(caught.value)
    assert message.startswith("1 of 2 component(s) failed the conformance checks:"), message
    assert "objective 'kit-secret-solve'" in message and "kit-fm'" not in message, message
