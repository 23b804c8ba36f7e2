"""The conformance check of a trace estimator (:func:`check_trace`): exact ones exact, stochastic ones unbiased."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cnfbench.testing._checker import (
    Checker,
    changed_rngs,
    component_label,
    global_rng_states,
    require_dz_and_div,
    resolve_component,
    same,
    single_threaded,
    torch_module,
)
from cnfbench.testing._harness import harness_run

if TYPE_CHECKING:
    import torch
    from torch import Tensor

UNBIASED_SOLVES = 80
"""Independent solves (probes) averaged by the unbiasedness check of a stochastic trace estimator."""

UNBIASED_ROWS = 50
"""Rows per solve in that check (each row its own probe, unless the estimator shares one per batch).

Kept small: elementwise ops on more than ~1000 float64 values go multi-threaded
in MKL, which is slow on an oversubscribed machine."""


@single_threaded
def check_trace(cls: type, params: Mapping[str, Any] | None = None, *, dims: Sequence[int] = (1, 2, 5),
                device: str = "cpu") -> None:
    """Check a :class:`~cnfbench.contracts.TraceEstimator` class built as ``cls(**params)``."""
    torch = torch_module()
    check = Checker(component_label("trace", cls))
    kwargs = resolve_component("trace", cls, params, check)
    from cnfbench.testing import reference

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
        dz, div = require_dz_and_div(check, result, z, where)
        check.require(torch.isfinite(div).all(), f"{where} returned a non-finite divergence")
        with torch.no_grad():
            reference = field(t, z)
        check.require(torch.allclose(dz, reference, rtol=1e-10, atol=1e-10),
                      f"{where}: dz is not field(t, z) (max difference {(dz - reference).abs().max().item():.3g})")
        return dz, div

    t = torch.tensor(0.37, dtype=f64, device=device)
    for dim in dims:
        field = reference.MLPField(dim, seed=dim).to(device)
        z = torch.randn(6, dim, generator=torch.Generator().manual_seed(dim), dtype=f64).to(device)
        z.requires_grad_(True)
        what = f"on a {dim}-D MLP field"
        trace = build()
        before = global_rng_states()
        begin(trace, z, 0)
        _, div = call(trace, field, t, z, False, what)
        _, again = call(trace, field, t, z, False, what)
        check.require(same(div, again),
                      f"two calls within one solve at the same (t, z) {what} gave different divergences "
                      f"({div[0].item():.6g} then {again[0].item():.6g}): draw the noise once in begin_solve "
                      f"and reuse it at every step of the solve")
        changed = changed_rngs(before)
        check.require(not changed, f"used the global RNG ({', '.join(changed)}) although begin_solve was given a "
                                   f"generator: draw the noise from that generator so runs are reproducible")
        exact = reference.jacobian_trace(field, t, z)
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
    linear = reference.MatrixField(matrix)
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
    drift = reference.ConstantField(2, dtype=f64).to(device)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(4), dtype=f64).to(device).requires_grad_(True)
    for create_graph in (False, True):
        trace = build()
        begin(trace, z, 0)
        _, div = call(trace, drift, t, z, create_graph, "on a field that does not depend on z")
        check.require(torch.allclose(div, torch.zeros_like(div)),
                      f"the divergence of a field that does not depend on z is {div.tolist()}, not 0")

    if stochastic:
        # Seeded: the same generator seed gives the same estimate, another seed another.
        field = reference.MLPField(3, seed=5).to(device)
        z = torch.randn(10, 3, generator=torch.Generator().manual_seed(6), dtype=f64).to(device).requires_grad_(True)
        estimates = []
        for seed in (1234, 1234, 4321):
            trace = build()
            begin(trace, z, seed)
            estimates.append(call(trace, field, t, z, False, "on a 3-D MLP field")[1])
        check.require(same(estimates[0], estimates[1]),
                      "two solves with generators seeded alike gave different estimates: draw the noise only from "
                      "the generator given to begin_solve")
        check.require(not same(estimates[0], estimates[2]),
                      "two solves with generators seeded differently gave the same estimate: draw the noise from "
                      "the generator given to begin_solve")

        # Unbiased: the mean over many probes matches the exact trace within a few standard errors.
        dim = 4
        field = reference.MLPField(dim, seed=5).to(device)
        point = torch.randn(1, dim, generator=torch.Generator().manual_seed(7), dtype=f64).to(device)
        exact = reference.jacobian_trace(field, t, point)[0].item()
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

    field = reference.MLPField(2, seed=8, dtype=torch.float32).to(device)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(9)).to(device)
    harness_run(check, field, build(), reference.RK4(steps=3), x, expected=12,
                 generator=torch.Generator().manual_seed(0), what="training step with RK4")


