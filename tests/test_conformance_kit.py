"""The conformance kit (cnfbench.testing): every built-in passes it, and broken components are rejected by name."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from cnfbench.contracts import (
    SPLIT_PARAMS,
    Dataset,
    FusedDivergence,
    SampledDataset,
    Solver,
    Splits,
    TraceEstimator,
    VectorField,
)
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param, resolve_params
from cnfbench.registry import load_registry
from cnfbench.testing import (
    TIME_DEPENDENT_ODE,
    ConformanceError,
    check_component,
    check_dataset,
    check_field,
    check_plugin,
    check_solver,
    check_trace,
    conformance_tests,
    plugin_components,
)
from cnfbench.testing.reference import RK4, ExactLoopTrace, TimeDependentODE

REGISTRY = load_registry()
BUILTINS = [
    pytest.param(family, entry.name, id=f"{family}-{entry.name}")
    for family in ("field", "solver", "trace", "dataset", "objective")
    for entry in REGISTRY.entries(family)
    # the built-ins, whatever else is installed; the file-based datasets read files no machine has by default
    # (tests/test_tabular.py checks them on generated files in the archive's formats)
    if entry.plugin.startswith("cnfbench:") and entry.plugin != "cnfbench:tabular"
]
# Small but real sizes: the kit sets solver steps/tolerances and dataset split sizes itself.
BUILTIN_PARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("field", "concatsquash"): {"hidden": (16, 16)},
    ("field", "mlp"): {"hidden": (16, 16)},
}


@pytest.mark.parametrize(("family", "name"), BUILTINS)
def test_every_builtin_component_passes_the_kit(family: str, name: str) -> None:
    check_component(family, REGISTRY.get(family, name).cls, BUILTIN_PARAMS.get((family, name)))


def test_every_family_has_builtins_under_test() -> None:
    assert {case.values[0] for case in BUILTINS} == {"field", "solver", "trace", "dataset", "objective"}


@pytest.mark.parametrize("selector", [("rk4", {"steps": 4, "adjoint": True}), ("dopri5", {"adjoint": True}),
                                      ("fields", {"activation": "softplus"}),
                                      ("hutchinson", {"noise": "rademacher"})], ids=lambda s: s[0])
def test_builtins_pass_with_other_parameters(selector: tuple[str, dict[str, Any]]) -> None:
    name, params = selector
    if name == "fields":
        for field in ("concatsquash", "mlp"):
            check_field(REGISTRY.get("field", field).cls, {"hidden": (8,), **params}, dims=(3,))
        return
    family = "trace" if name == "hutchinson" else "solver"
    check_component(family, REGISTRY.get(family, name).cls, params)


def test_the_fixture_is_check_component(cnfbench_check: Callable[..., None]) -> None:
    assert cnfbench_check is check_component
    cnfbench_check("trace", REGISTRY.get("trace", "exact").cls)


def test_importing_the_kit_does_not_import_torch() -> None:
    code = "import sys, cnfbench.testing; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_unknown_family_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown component family 'sampler'"):
        check_component("sampler", object)


# --------------------------------------------------------------------------- good components (bases of the broken ones)


class GoodField(VectorField):
    name = "good_field"
    description = "a small tanh MLP on [z, t]"
    params = (Param("hidden", "int", 8, "hidden width", minimum=1),)

    def __init__(self, dim: int, hidden: int = 8) -> None:
        super().__init__(dim, hidden=hidden)
        self.inner = nn.Linear(dim + 1, hidden)
        self.outer = nn.Linear(hidden, dim)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        time = t.reshape(1, 1).to(z.dtype).expand(z.shape[0], 1)
        return self.outer(torch.tanh(self.inner(torch.cat([z, time], dim=1))))


class GoodHeun(Solver):
    name = "good_heun"
    description = "fixed-step Heun"
    params = (Param("steps", "int", 10, "equal steps", minimum=1),)
    nfe_per_step = 2
    order = 2

    def integrate(self, dynamics: nn.Module, state: tuple[Tensor, ...], t0: float, t1: float) -> tuple[Tensor, ...]:
        steps = self.steps_taken()
        h = self.step(t0, t1, steps)
        y = state
        for i in range(steps):
            start, end = (torch.tensor(time, dtype=y[0].dtype, device=y[0].device)
                          for time in self.stage_times(t0, t0 + i * h, h))
            k1 = dynamics(start, y)
            k2 = dynamics(end, tuple(a + h * b for a, b in zip(y, k1, strict=True)))
            y = tuple(a + h / 2 * (b + c) for a, b, c in zip(y, k1, k2, strict=True))
        return y

    def steps_taken(self) -> int:
        return int(self.config["steps"])

    def step(self, t0: float, t1: float, steps: int) -> float:
        return (t1 - t0) / steps

    def stage_times(self, t0: float, t: float, h: float) -> tuple[float, float]:
        """The times of Heun's two stages in the step from ``t`` to ``t + h`` of a solve starting at ``t0``."""
        return t, t + h

    def expected_nfe(self) -> int | None:
        return 2 * int(self.config["steps"])


class GoodEuler(Solver):
    name = "good_euler"
    description = "fixed-step Euler"
    params = (Param("steps", "int", 10, "equal steps", minimum=1),)
    nfe_per_step = 1
    order = 1

    def integrate(self, dynamics: nn.Module, state: tuple[Tensor, ...], t0: float, t1: float) -> tuple[Tensor, ...]:
        steps = int(self.config["steps"])
        h = (t1 - t0) / steps
        y = state
        for i in range(steps):
            k = dynamics(torch.tensor(t0 + i * h, dtype=y[0].dtype, device=y[0].device), y)
            y = tuple(a + h * b for a, b in zip(y, k, strict=True))
        return y

    def expected_nfe(self) -> int | None:
        return int(self.config["steps"])


class GoodAdaptiveHeun(Solver):
    """Heun's method with Euler's as the embedded error estimate (the pair of torchdiffeq's adaptive_heun)."""

    name = "good_adaptive_heun"
    description = "adaptive Heun-Euler pair"
    params = (Param("rtol", "float", 1e-5, "relative tolerance", minimum=0.0),
              Param("atol", "float", 1e-5, "absolute tolerance", minimum=0.0))
    adaptive = True
    order = 2

    def integrate(self, dynamics: nn.Module, state: tuple[Tensor, ...], t0: float, t1: float) -> tuple[Tensor, ...]:
        rtol, atol = float(self.config["rtol"]), float(self.config["atol"])
        y, t, h = state, t0, (t1 - t0) / 8
        for _ in range(100000):
            if t == t1:
                return y
            last = abs(h) >= abs(t1 - t)
            h = t1 - t if last else h
            start, end = (torch.tensor(time, dtype=y[0].dtype, device=y[0].device)
                          for time in self.stage_times(t0, t, h))
            k1 = dynamics(start, y)
            k2 = dynamics(end, tuple(a + h * b for a, b in zip(y, k1, strict=True)))
            new = tuple(a + h / 2 * (b + c) for a, b, c in zip(y, k1, k2, strict=True))
            ratio = max(((c - b).abs() * abs(h) / 2 / (atol + rtol * torch.maximum(a.abs(), n.abs()))).max().item()
                        for a, b, c, n in zip(y, k1, k2, new, strict=True))
            if ratio <= 1:
                y, t = new, t1 if last else t + h
            h *= min(5.0, max(0.2, 0.9 / max(ratio, 1e-12) ** 0.5))
        raise RuntimeError("more than 100000 steps")

    def stage_times(self, t0: float, t: float, h: float) -> tuple[float, float]:
        return t, t + h


class GoodExact(ExactLoopTrace):
    name = "good_exact"
    description = "exact divergence"

    def __call__(self, field: Any, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        dz, div = super().__call__(field, t, z, create_graph)
        return dz, self.sign() * div

    def sign(self) -> float:
        return 1.0


class GoodHutchinson(TraceEstimator):
    name = "good_hutchinson"
    description = "Hutchinson, one Rademacher probe per solve"
    stochastic = True

    def begin_solve(self, z: Tensor, generator: torch.Generator | None) -> None:
        self.generator = generator
        self.probe = self.draw(z)

    def draw(self, z: Tensor) -> Tensor:
        return torch.randint(0, 2, z.shape, generator=self.generator).to(z.dtype) * 2 - 1

    def __call__(self, field: Any, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        dz = field(t, z)
        probe = self.probe_for_call(z)
        if not dz.requires_grad:
            return dz, torch.zeros(z.shape[0], dtype=z.dtype)
        (vjp,) = torch.autograd.grad(dz, z, grad_outputs=probe, create_graph=create_graph, allow_unused=True)
        if vjp is None:
            return dz, torch.zeros(z.shape[0], dtype=z.dtype)
        return dz, (vjp * probe).sum(dim=1)

    def probe_for_call(self, z: Tensor) -> Tensor:
        return self.probe


class GoodGaussian(SampledDataset):
    name = "good_gaussian"
    description = "2D standard Gaussian"
    params = SPLIT_PARAMS

    def __init__(self, **params: Any) -> None:
        super().__init__(**resolve_params("dataset 'good_gaussian'", self.params, params))

    @property
    def dim(self) -> int:
        return 2

    @property
    def has_density(self) -> bool:
        return True

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, 2, generator=generator)

    def log_prob(self, x: Tensor) -> Tensor:
        return -0.5 * x.pow(2).sum(dim=1) - torch.log(torch.tensor(2 * torch.pi))


GOOD = {"field": GoodField, "solver": GoodHeun, "trace": GoodExact, "dataset": GoodGaussian}


def make_plugin(name: str, **hooks: list[type]) -> types.ModuleType:
    """A plugin module whose hooks (``fields=[...]`` → ``cnfbench_fields``) return the given classes."""
    module = types.ModuleType(name)
    for key, classes in hooks.items():
        setattr(module, f"cnfbench_{key}", hookimpl(lambda classes=classes: list(classes)))
    return module


GOOD_PLUGIN = make_plugin("good_plugin", fields=[GoodField], solvers=[GoodHeun, GoodEuler],
                          traces=[GoodExact, GoodHutchinson], datasets=[GoodGaussian])

# The pytest helper: one test per component of the plugin.
test_good_plugin_conformance = conformance_tests(GOOD_PLUGIN)


def test_check_plugin_lists_what_it_checked() -> None:
    assert check_plugin(GOOD_PLUGIN) == ["dataset 'good_gaussian'", "field 'good_field'", "solver 'good_euler'",
                                         "solver 'good_heun'", "trace 'good_exact'", "trace 'good_hutchinson'"]


def test_plugin_components_of_a_builtin_module_by_name() -> None:
    found = plugin_components("cnfbench_plugins.traces")
    assert {family for family, _ in found} == {"trace"}
    assert {"exact", "hutchinson"} <= {cls.name for _, cls in found}


# --------------------------------------------------------------------------- broken components


class WrongShapeField(GoodField):
    name = "wrong_shape"

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return super().forward(t, z)[:, :1].expand(z.shape[0], 3)


class TimelessField(GoodField):
    name = "timeless"

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return super().forward(torch.zeros_like(t), z)


class DeadParameterField(GoodField):
    name = "dead_parameter"

    def __init__(self, dim: int, hidden: int = 8) -> None:
        super().__init__(dim, hidden)
        self.unused_scale = nn.Parameter(torch.ones(dim))


class BatchCoupledField(GoodField):
    name = "batch_coupled"

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        out = super().forward(t, z)
        return out - out.mean(dim=0, keepdim=True)  # like batch norm: each row depends on the others


class FusedField(GoodField):
    """GoodField offering the fused divergence: ``tr(W_out diag(1 - h^2) W_in[:, :D])`` by hand."""

    name = "fused"

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        time = t.reshape(1, 1).to(z.dtype).expand(z.shape[0], 1)
        hidden = torch.tanh(self.inner(torch.cat([z, time], dim=1)))
        div = (1 - hidden**2) @ (self.outer.weight.T * self.inner.weight[:, : self.dim]).sum(dim=1)
        return self.outer(hidden), div


class DecliningField(GoodField):
    """Offers the fused divergence but always declines it: allowed."""

    name = "declining"

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        return None


class OffsetDivergenceField(FusedField):
    name = "offset_divergence"

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        dz, div = super().forward_with_divergence(t, z)
        return dz, div + 0.5


class FusedDzMismatchField(FusedField):
    name = "fused_dz_mismatch"

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        dz, div = super().forward_with_divergence(t, z)
        return dz + 1e-3, div


class ColumnDivergenceField(FusedField):
    name = "column_divergence"

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        dz, div = super().forward_with_divergence(t, z)
        return dz, div[:, None]


class DetachedDivergenceField(FusedField):
    name = "detached_divergence"

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        dz, div = super().forward_with_divergence(t, z)
        return dz, div.detach()


class FrozenWeightDivergenceField(FusedField):
    """Right values, but the divergence treats the first layer's weight as a constant."""

    name = "frozen_weight_divergence"

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        time = t.reshape(1, 1).to(z.dtype).expand(z.shape[0], 1)
        hidden = torch.tanh(self.inner(torch.cat([z, time], dim=1)))
        div = (1 - hidden**2) @ (self.outer.weight.T * self.inner.weight[:, : self.dim].detach()).sum(dim=1)
        return self.outer(hidden), div


class OneStepHeun(GoodHeun):
    """Takes one step whatever ``steps`` says, and does not claim a cost."""

    name = "one_step"

    def steps_taken(self) -> int:
        return 1

    def expected_nfe(self) -> int | None:
        return None


class OneStepHeunClaimingSteps(OneStepHeun):
    """Takes one step but reports the cost of ``steps`` steps."""

    name = "one_step_claiming"

    def expected_nfe(self) -> int | None:
        return 2 * int(self.config["steps"])


class MiscountingHeun(GoodHeun):
    """Heun costs two evaluations per step; this one claims one."""

    name = "miscounting"

    def expected_nfe(self) -> int | None:
        return int(self.config["steps"])


class DetachingHeun(GoodHeun):
    name = "detaching"

    def integrate(self, dynamics: nn.Module, state: tuple[Tensor, ...], t0: float, t1: float) -> tuple[Tensor, ...]:
        with torch.no_grad():
            return super().integrate(dynamics, state, t0, t1)


class StopShortHeun(GoodHeun):
    """Steps (t1 - t0) / (steps + 1): it stops one step short of t1."""

    name = "stop_short"

    def step(self, t0: float, t1: float, steps: int) -> float:
        return (t1 - t0) / (steps + 1)


class TimelessHeun(GoodHeun):
    """Passes the solve's t0 to every stage: it ignores time."""

    name = "timeless_heun"

    def stage_times(self, t0: float, t: float, h: float) -> tuple[float, float]:
        return t0, t0


class StepStartHeun(GoodHeun):
    """Evaluates both stages at the step's start: second order on autonomous ODEs, first order otherwise."""

    name = "step_start_heun"

    def stage_times(self, t0: float, t: float, h: float) -> tuple[float, float]:
        return t, t


class EulerClaimingOrder2(GoodEuler):
    name = "euler_claiming_order_2"
    order = 2


class TimelessAdaptiveHeun(GoodAdaptiveHeun):
    """An adaptive solver that passes the solve's t0 to every evaluation."""

    name = "timeless_adaptive"

    def stage_times(self, t0: float, t: float, h: float) -> tuple[float, float]:
        return t0, t0


class NegatedExact(GoodExact):
    name = "negated"

    def sign(self) -> float:
        return -1.0


class RedrawingHutchinson(GoodHutchinson):
    """Draws a fresh probe at every call, so the ODE's right-hand side is random."""

    name = "redrawing"

    def probe_for_call(self, z: Tensor) -> Tensor:
        return self.draw(z)


class GlobalRNGHutchinson(GoodHutchinson):
    name = "global_rng_probe"

    def begin_solve(self, z: Tensor, generator: torch.Generator | None) -> None:
        self.probe = torch.randint(0, 2, z.shape).to(z.dtype) * 2 - 1


class BiasedHutchinson(GoodHutchinson):
    name = "biased"

    def __call__(self, field: Any, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        dz, div = super().__call__(field, t, z, create_graph)
        return dz, 1.25 * div


class GlobalRNGDataset(GoodGaussian):
    name = "global_rng"

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, 2)


class OverlappingDataset(Dataset):
    name = "overlapping"
    description = "test rows reused in training"

    @property
    def dim(self) -> int:
        return 2

    def splits(self, seed: int) -> Splits:
        x = torch.randn(300, 2, generator=torch.Generator().manual_seed(seed))
        return Splits(train=x[:200], val=x[200:250], test=x[150:300])


class SeedlessDataset(GoodGaussian):
    name = "seedless"

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


class Float64Dataset(Dataset):
    name = "float64"
    description = "splits in the wrong dtype"

    @property
    def dim(self) -> int:
        return 2

    def splits(self, seed: int) -> Splits:
        gen = torch.Generator().manual_seed(seed)
        return Splits(*(torch.randn(n, 2, generator=gen, dtype=torch.float64) for n in (20, 10, 10)))


class InfiniteDensityDataset(GoodGaussian):
    name = "infinite_density"

    def log_prob(self, x: Tensor) -> Tensor:
        return super().log_prob(x).masked_fill(x[:, 0] > 1.0, -torch.inf)


class Unnamed(GoodField):
    name = ""


BROKEN = [
    pytest.param(check_field, WrongShapeField, r"forward\(t, z\) with z \(7, 1\) float32 returned \(7, 3\) "
                                               r"torch.float32 on cpu; expected \(7, 1\)", id="field-wrong-shape"),
    pytest.param(check_field, TimelessField, "ignores t", id="field-ignoring-t"),
    pytest.param(check_field, DeadParameterField, "receive no gradient.*unused_scale", id="field-dead-parameter"),
    pytest.param(check_field, BatchCoupledField, "rows must be independent", id="field-coupling-rows"),
    pytest.param(check_field, Unnamed, "needs a class attribute `name`", id="field-without-name"),
    pytest.param(check_field, OffsetDivergenceField, r"forward_with_divergence\(t, z\) with z \(7, 1\) float32: div "
                                                     r"differs from the trace of the Jacobian by 0.5",
                 id="field-fused-divergence-off-by-a-constant"),
    pytest.param(check_field, FusedDzMismatchField, r"forward_with_divergence\(t, z\) with z \(7, 1\) float32: dz is "
                                                    r"not forward\(t, z\) \(max difference 0.001\)",
                 id="field-fused-dz-not-forward"),
    pytest.param(check_field, ColumnDivergenceField, r"returned div \(7, 1\) torch.float32 on cpu; expected \(7,\) "
                                                     r"torch.float32 on cpu \(one divergence per row\)",
                 id="field-fused-divergence-wrong-shape"),
    pytest.param(check_field, DetachedDivergenceField, r"float64 after .to\(torch.float64\): div is not "
                                                       r"differentiable", id="field-fused-divergence-detached"),
    pytest.param(check_field, FrozenWeightDivergenceField, r"div is not differentiable in inner.weight as the "
                                                           r"Jacobian's trace is: its gradient differs from autograd's",
                 id="field-fused-divergence-partly-detached"),
    pytest.param(check_solver, OneStepHeun, "does not converge as the grid is refined.*honour steps",
                 id="solver-one-step"),
    pytest.param(check_solver, OneStepHeunClaimingSteps, "expected_nfe\\(\\) is 20 but .* evaluated the dynamics "
                                                         "2 times", id="solver-one-step-claiming-steps"),
    pytest.param(check_solver, MiscountingHeun, "expected_nfe\\(\\) is 10 but .* evaluated the dynamics 20 times",
                 id="solver-miscounting"),
    pytest.param(check_solver, DetachingHeun, "no gradient reaches the initial state", id="solver-detaching"),
    pytest.param(check_solver, StopShortHeun, r"on dz/dt = 1 from t=1 to t=0 with steps=10 the result is -0.909091, "
                                              r"expected -1 \(does it stop short of t1\? it covers 90.9% of the "
                                              r"interval\)", id="solver-stopping-short"),
    pytest.param(check_solver, TimelessHeun, r"on dz/dt = t from t=1 to t=0 with steps=10 the result is -1, expected "
                                             r"-0.5: .*it passes t=1 to the dynamics at every evaluation: it ignores "
                                             r"time", id="solver-ignoring-t"),
    pytest.param(check_solver, StepStartHeun, r"converges at order 2.0 on the autonomous dz/dt = A z but only at order "
                                              r"1.0 when the field depends on t: .* it evaluates the dynamics at the "
                                              r"wrong times", id="solver-stages-at-step-start"),
    pytest.param(check_solver, EulerClaimingOrder2, r"declares order 2 but converges at order 1.0: on dz/dt = .* "
                                                    r"\(steps=64\); declare order = 1", id="solver-order-overclaimed"),
    pytest.param(check_solver, TimelessAdaptiveHeun, r"on dz/dt = t from t=1 to t=0 with rtol=atol=1e-06 the result "
                                                     r"is -1, expected -0.5: .*it ignores time",
                 id="solver-adaptive-ignoring-t"),
    pytest.param(check_trace, NegatedExact, "wrong sign", id="trace-wrong-sign"),
    pytest.param(check_trace, RedrawingHutchinson, "two calls within one solve .* gave different divergences",
                 id="trace-redrawing-probe"),
    pytest.param(check_trace, GlobalRNGHutchinson, "used the global RNG", id="trace-global-rng"),
    pytest.param(check_trace, BiasedHutchinson, "biased: .* standard errors off", id="trace-biased"),
    pytest.param(check_dataset, GlobalRNGDataset, r"used the global RNG \(torch.manual_seed/torch.rand\*\)",
                 id="dataset-global-rng"),
    pytest.param(check_dataset, OverlappingDataset, "train and test share 50 row", id="dataset-overlapping"),
    pytest.param(check_dataset, SeedlessDataset, r"splits\(0\) and splits\(1\) are identical",
                 id="dataset-ignoring-seed"),
    pytest.param(check_dataset, Float64Dataset, r"splits\(0\).train is \(20, 2\) torch.float64 .* float32",
                 id="dataset-float64"),
    pytest.param(check_dataset, InfiniteDensityDataset, "log_prob is not finite", id="dataset-infinite-log-prob"),
]


@pytest.mark.parametrize(("check", "cls", "problem"), BROKEN)
def test_broken_component_is_rejected_with_the_problem_named(
    check: Callable[..., None], cls: type, problem: str
) -> None:
    with pytest.raises(ConformanceError, match=problem) as info:
        check(cls)
    message = str(info.value)
    assert message.startswith(f"{check.__name__.removeprefix('check_')} "), message
    assert repr(cls.name) in message or cls.__qualname__ in message, message  # the component is named
    assert isinstance(info.value, AssertionError)


class StepSizeHeun(GoodHeun):
    """Heun on a ``step_size`` grid (the kit refines ``step_size = 1/n`` instead of ``steps``)."""

    name = "step_size_heun"
    params = (Param("step_size", "float", 0.1, "step length", minimum=1e-6),)

    def steps_taken(self) -> int:
        return max(1, round(1.0 / float(self.config["step_size"])))  # the kit integrates over unit intervals

    def expected_nfe(self) -> int | None:
        return 2 * self.steps_taken()


class UndeclaredOrderHeun(GoodHeun):
    name = "undeclared_order"
    order = None


def test_correct_hand_written_solvers_pass_with_and_without_a_declared_order() -> None:
    # GoodHeun and GoodEuler also pass through GOOD_PLUGIN above.
    for cls in (GoodAdaptiveHeun, StepSizeHeun, UndeclaredOrderHeun):
        check_solver(cls)
    check_solver(GoodHeun, {"steps": 3})


@pytest.mark.parametrize("order", [0, True, 2.0, "2"])
def test_an_invalid_order_is_rejected(order: Any) -> None:
    cls = type("BadOrder", (GoodHeun,), {"name": "bad_order", "order": order})
    with pytest.raises(ConformanceError, match=r"`order` must be None or a positive int"):
        check_solver(cls)


def test_an_order_declared_far_too_low_is_rejected() -> None:
    rk4 = REGISTRY.get("solver", "rk4").cls
    underclaiming = type("RK4ClaimingOrder2", (rk4,), {"name": "rk4_claiming_order_2", "order": 2})
    with pytest.raises(ConformanceError, match=r"declares order 2 but converges at order 4.0: .*declare order = 4"):
        check_solver(underclaiming)


def test_bad_params_are_reported_as_conformance_errors() -> None:
    with pytest.raises(ConformanceError, match="field 'good_field'.*unknown parameter 'width'"):
        check_field(GoodField, {"width": 3})


def test_component_exceptions_are_reported_with_what_was_being_done() -> None:
    class Crashing(GoodField):
        name = "crashing"

        def forward(self, t: Tensor, z: Tensor) -> Tensor:
            raise RuntimeError("boom")

    with pytest.raises(ConformanceError, match=r"field 'crashing' \(.*Crashing\): forward\(t, z\) .* raised "
                                               r"RuntimeError: boom"):
        check_field(Crashing)


def test_check_plugin_reports_every_failing_component() -> None:
    plugin = make_plugin("mixed", fields=[GoodField, TimelessField], traces=[NegatedExact])
    with pytest.raises(ConformanceError) as info:
        check_plugin(plugin)
    message = str(info.value)
    assert message.startswith("2 of 3 component(s) failed")
    assert "field 'timeless'" in message and "trace 'negated'" in message and "good_field" not in message


def test_check_plugin_params_are_per_component() -> None:
    plugin = make_plugin("one_field", fields=[GoodField])
    with pytest.raises(ConformanceError, match="bad value '0' for field 'good_field' parameter 'hidden'"):
        check_plugin(plugin, {"good_field": {"hidden": 0}})


def test_a_hook_without_hookimpl_is_named() -> None:
    plugin = types.ModuleType("forgetful")
    plugin.cnfbench_fields = lambda: [GoodField]  # type: ignore[attr-defined]
    with pytest.raises(ConformanceError, match="cnfbench_fields is not decorated with @hookimpl"):
        check_plugin(plugin)


def test_a_misspelt_hook_is_named() -> None:
    plugin = types.ModuleType("misspelt")
    plugin.cnfbench_field = hookimpl(lambda: [GoodField])  # type: ignore[attr-defined]
    with pytest.raises(ConformanceError, match="cnfbench_field"):
        check_plugin(plugin)


def test_a_class_of_the_wrong_family_is_named() -> None:
    with pytest.raises(ConformanceError, match="not a subclass of cnfbench.contracts.Solver"):
        check_plugin(make_plugin("confused", solvers=[GoodField]))


def test_an_empty_plugin_is_rejected() -> None:
    with pytest.raises(ConformanceError, match="implements none of cnfbench's hooks"):
        check_plugin(types.ModuleType("empty"))


class Linear(VectorField):
    """The README's example field ``v(t, z) = A z``: autonomous on purpose."""

    name = "linear"
    description = "v(t, z) = A z"
    params = (Param("init_scale", "float", 0.1, "std of A's initial entries", minimum=0.0),)

    def __init__(self, dim: int, init_scale: float = 0.1) -> None:
        super().__init__(dim, init_scale=init_scale)
        self.A = nn.Parameter(init_scale * torch.randn(dim, dim))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return z @ self.A.T


def test_an_autonomous_field_passes_with_time_dependent_false() -> None:
    check_field(Linear, {"init_scale": 0.5}, time_dependent=False)
    with pytest.raises(ConformanceError, match="ignores t"):
        check_field(Linear)
    plugin = make_plugin("readme_field", fields=[Linear])
    assert check_plugin(plugin, options={"linear": {"time_dependent": False}}) == ["field 'linear'"]


def test_a_correct_or_declining_fused_divergence_passes() -> None:
    for cls in (FusedField, DecliningField):
        assert isinstance(cls(2), FusedDivergence)
        check_field(cls)


@pytest.mark.parametrize("name", ["concatsquash", "mlp"])
@pytest.mark.parametrize("activation", ["tanh", "softplus", "elu", "swish"])
def test_the_builtin_fields_fused_divergence_is_checked_and_passes(name: str, activation: str) -> None:
    cls = REGISTRY.get("field", name).cls
    field = cls(3, hidden=(8, 8), activation=activation).double()
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert isinstance(field, FusedDivergence)
    assert field.forward_with_divergence(torch.tensor(0.2, dtype=torch.float64), z) is not None  # not vacuous
    check_field(cls, {"hidden": (8, 8), "activation": activation}, dims=(1, 3))


def test_the_reference_kit_passes_the_kit() -> None:
    check_solver(RK4)
    check_trace(ExactLoopTrace)
    assert TimeDependentODE.formula == TIME_DEPENDENT_ODE
