"""The conformance check of a vector field (:func:`check_field`), its fused divergence included."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cnfbench.testing._checker import (
    Checker,
    component_label,
    describe,
    require_dz_and_div,
    resolve_component,
    same,
    single_threaded,
    torch_module,
)
from cnfbench.testing._harness import harness_run

if TYPE_CHECKING:
    from torch import Tensor

FUSED_DZ_TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
"""How far (relative to the output's size) a fused ``dz`` may be from ``forward(t, z)``, by dtype."""

FUSED_DIV_TOLERANCE = {"float32": 1e-4, "float64": 1e-6}
"""How far (relative to ``1 + max |tr J|``) a fused ``div`` may be from the Jacobian's trace, by dtype."""

FUSED_GRADIENT_TOLERANCE = 1e-6
"""How far (relative) the float64 gradients of a fused ``dz``/``div`` may be from those autograd gives."""


@single_threaded
def check_field(cls: type, params: Mapping[str, Any] | None = None, *, dims: Sequence[int] = (1, 2, 5),
                batch: int = 7, seed: int = 0, device: str = "cpu", time_dependent: bool = True) -> None:
    """Check a :class:`~cnfbench.contracts.VectorField` class built as ``cls(dim, **params)``.

    Output ``[B, D]`` in the input's dtype and device for each of ``dims``,
    rows independent, depends on ``t``, deterministic under a seed, gradients
    reach every parameter, survives ``copy.deepcopy`` and
    ``.to(torch.float64)``, and trains inside the harness (CNF dynamics,
    exact trace, backward pass). A field that offers
    :class:`~cnfbench.contracts.FusedDivergence` must return ``forward``'s
    output and the Jacobian's trace (to 1e-6 in float64), both
    differentiable as autograd would differentiate them; declining (``None``)
    is allowed.
    A field that declares ``per_row_time`` must give, for ``t`` of shape
    ``[B]``, row ``i`` equal to ``forward(t[i], z[i:i+1])``, and its fused
    divergence (as a per-sample solver calls it) is checked there too.
    ``time_dependent=False`` skips the check that the output changes with
    ``t`` (for a deliberately autonomous field).
    """
    torch = torch_module()
    from cnfbench.contracts import FusedDivergence, VectorField
    from cnfbench.testing import reference

    check = Checker(component_label("field", cls))
    kwargs = resolve_component("field", cls, params, check)

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
                      lambda: f"forward(t, z) {what} returned {describe(out)}; expected {describe(z)} "
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
        check.require(same(out, again), f"two calls of forward(t, z) {where} gave different results "
                                        f"(a field must be deterministic: no dropout or noise)")
        twin = build(dim, seed)
        check.require(same(call(twin, t, z, where), out),
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
        check.require(same(call(copied, t, z, f"{where} after copy.deepcopy"), out),
                      "a copy.deepcopy of the field gives a different output")
        with check.calling(".to(torch.float64) (the reference solve runs in float64)"):
            field64 = copy.deepcopy(field).to(torch.float64)
        z64, t64 = z.to(torch.float64), t.to(torch.float64)
        where64 = f"with z {tuple(z.shape)} float64 after .to(torch.float64)"
        out64 = call(field64, t64, z64, where64)
        check.require(torch.allclose(out64.float(), out, rtol=0, atol=1e-4 * scale),
                      "in float64 the output differs from float32 by more than rounding "
                      f"({(out64.float() - out).abs().max().item():.3g})")
        if getattr(cls, "per_row_time", False):
            times = torch.linspace(0.0, 1.0, batch, device=device)
            rows = call(field, times, z, f"{where} and one time per row (per_row_time), t {tuple(times.shape)}")
            for row in (0, batch // 2, batch - 1):
                alone = call(field, times[row], z[row : row + 1],
                             f"with z[{row}:{row + 1}] at t={times[row].item():.3g}")
                check.require(torch.allclose(rows[row : row + 1], alone, rtol=0, atol=1e-5 * scale),
                              f"declares per_row_time, but row {row} of forward(t [B], z) differs from "
                              f"forward(t[{row}], z[{row}:{row + 1}]) (each row must use its own time)")
        if isinstance(field, FusedDivergence):
            _check_fused_divergence(check, field, t, z, where)
            _check_fused_divergence(check, field64, t64, z64, where64, gradients=True)
            if getattr(cls, "per_row_time", False):  # as a per-sample solver calls it
                times64 = torch.linspace(0.0, 1.0, batch, dtype=torch.float64, device=device)
                _check_fused_divergence(check, field64, times64, z64, f"{where64} and one time per row",
                                        gradients=True)

    field = build(2, seed)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(7)).to(device)
    harness_run(check, field, reference.ExactLoopTrace(), reference.RK4(steps=3), x, expected=12, generator=None,
                what="training step with the exact trace and RK4")


def _check_fused_divergence(check: Checker, field: Any, t: Tensor, z: Tensor, what: str,
                            gradients: bool = False) -> None:
    """Check ``field.forward_with_divergence(t, z)`` (:class:`~cnfbench.contracts.FusedDivergence`) at one point.

    ``None`` (declining) passes. Otherwise ``dz`` must be ``forward(t, z)``
    (shape, dtype, device, values) and ``div`` ``[B]`` in ``z``'s dtype,
    equal to the trace of the Jacobian (:func:`~cnfbench.testing.reference.jacobian_trace`).
    With ``gradients`` (in float64), both must be differentiable, with the
    gradients in the parameters and in ``z`` that ordinary autograd gives
    through ``forward`` and :func:`~cnfbench.testing.reference.exact_trace_loop`.
    """
    torch = torch_module()
    from cnfbench.testing import reference

    where = f"forward_with_divergence(t, z) {what}"
    method = getattr(field, "forward_with_divergence", None)
    check.require(callable(method),
                  f"has a forward_with_divergence attribute that is not callable ({describe(method)})")
    z = z.detach().requires_grad_(True)  # as the exact trace hands it over
    with check.calling(where):
        result = method(t, z)
    if result is None:
        return  # declined: an exact trace falls back to automatic differentiation
    dz, div = require_dz_and_div(check, result, z, where, otherwise=", or None to decline")
    dtype = str(z.dtype).removeprefix("torch.")
    with check.calling(f"forward(t, z) {what}"):
        plain = field(t, z)
    dz_error = (dz - plain).abs().max().item()
    check.require(dz_error <= FUSED_DZ_TOLERANCE[dtype] * (1.0 + plain.abs().max().item()),
                  f"{where}: dz is not forward(t, z) (max difference {dz_error:.3g}): the fused pass must return "
                  f"the field's own output")
    with check.calling(f"the Jacobian of forward(t, z) {what}"):
        exact = reference.jacobian_trace(field, t, z)
    div_error = (div.detach() - exact).abs().max().item()
    sign = " (it has the wrong sign: div must be +tr(dv/dz))" \
        if torch.allclose(div.detach(), -exact, atol=FUSED_DIV_TOLERANCE[dtype]) and exact.abs().max() > 0 else ""
    check.require(div_error <= FUSED_DIV_TOLERANCE[dtype] * (1.0 + exact.abs().max().item()),
                  lambda: f"{where}: div differs from the trace of the Jacobian by {div_error:.3g}{sign}: got "
                          f"{div.detach().tolist()}, expected {exact.tolist()}")
    if not gradients:
        return

    named = [(name, p) for name, p in field.named_parameters() if p.requires_grad] + [("z", z)]
    inputs = [tensor for _, tensor in named]
    with check.calling(f"the exact divergence of forward(t, z) {what} by autograd"):
        reference_dz, reference_div = reference.exact_trace_loop(field, t, z, create_graph=True)
    rows = torch.linspace(0.5, 1.5, z.shape[0], dtype=z.dtype, device=z.device)
    for part, got, expected in (("dz", dz, reference_dz), ("div", div, reference_div)):
        check.require(got.requires_grad,
                      f"{where}: {part} is not differentiable (training backpropagates through it to the field's "
                      f"parameters and to z)")
        weights = rows[:, None] * torch.linspace(1.0, 2.0, z.shape[1], dtype=z.dtype, device=z.device) \
            if part == "dz" else rows
        with check.calling(f"backward through {part} of {where}"):
            got_grads = torch.autograd.grad((got * weights).sum(), inputs, retain_graph=True, allow_unused=True)
        expected_grads = torch.autograd.grad((expected * weights).sum(), inputs, retain_graph=True,
                                             allow_unused=True)
        for (name, tensor), got_grad, expected_grad in zip(named, got_grads, expected_grads, strict=True):
            reached = torch.zeros_like(tensor) if got_grad is None else got_grad
            wanted = torch.zeros_like(tensor) if expected_grad is None else expected_grad
            error = (reached - wanted).abs().max().item()
            if error <= FUSED_GRADIENT_TOLERANCE * (1.0 + wanted.abs().max().item()):
                continue
            what_reached = "no gradient reaches it" if got_grad is None or not got_grad.any() else \
                f"its gradient differs from autograd's by {error:.3g}"
            of = "forward(t, z)" if part == "dz" else "the Jacobian's trace"
            raise check.fail(f"{where}: {part} is not differentiable in {name} as {of} is: {what_reached} "
                             f"(a detached or approximate term?)")
