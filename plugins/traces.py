"""Built-in trace estimators: the exact divergence (batched and looped), Hutchinson and Hutch++.

* ``exact`` computes the exact divergence the fastest way measured for the
  dimension and device (see :class:`ExactTrace`): a loop for D <= 2, else the
  field's own ``forward_with_divergence`` when it has one, else D
  vector-Jacobian products, batched with ``torch.func`` (``vmap`` over
  ``vjp``) where that was measured to pay and looped otherwise.
* ``exact_loop`` is the reference: one ``autograd.grad`` per dimension.
* ``hutchinson`` averages ``e^T (dv/dz) e`` over ``probes`` probes drawn once
  per solve in :meth:`begin_solve` and reused at every step, as FFJORD does;
  an unbiased estimate of the trace.
* ``hutchpp`` is Hutch++ (Meyer, Musco, Musco & Woodruff 2021): a budget of
  ``probes`` matrix-vector products, a third spent on finding the dominant
  subspace ``Q`` of the Jacobian (whose trace is taken exactly), the rest on a
  Hutchinson estimate of what is left. Unbiased for any square matrix.

**The fused-divergence protocol.** A field (the callable the harness passes)
may define ``forward_with_divergence(t, z) -> (dz, div) | None``: ``dz`` equal
to ``field(t, z)``, ``div`` the exact divergence ``[B]``, both differentiable
by ordinary autograd with respect to ``z`` and the field's parameters.
Returning ``None`` declines, and the trace uses its generic method. The
built-in ``concatsquash`` and ``mlp`` fields implement it by propagating the
Jacobian forward through their layers; any third-party field can opt in the
same way. Nothing here checks for a concrete field class. A field that also
sets ``prefers_fused_divergence = True`` (``cnfbench.contracts.PREFER_FUSED``) gets its fused
method in every dimension, D <= 2 included: the harness's compiled training
field (``--compile``) does, as its compiled fused pass is faster than the
loop there and is the only one compiled code can differentiate in training.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cnfbench.contracts import FUSED_METHOD, PREFER_FUSED, FieldFunction, TraceEstimator, exact_divergence_loop
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param

BATCHED_ROWS = 2048
"""On CPU the batched exact trace vmaps over ``BATCHED_ROWS // B`` basis vectors at a time.

Chunks of about 2048 (row, direction) pairs keep the temporaries of a 64-wide field near 2^17
elements, small enough to stay in the heap and the cache; measured (concatsquash 3x64, batch 256,
1 CPU thread, D=8 to 64) 1.1-1.5x faster than the loop in training where one unchunked vmap was
0.8-1.1x, with thousands of page faults per evaluation.
"""

BATCHED_ELEMENTS = 1 << 22
"""On other devices the batched exact trace vmaps over at most this many ``[D, B, D]`` basis entries at once."""


@dataclass(frozen=True)
class MultipleParam(Param):
    """An ``int`` parameter that must also be a multiple of ``multiple_of`` (rejected by ``registry.resolve``)."""

    multiple_of: int = 1

    def coerce(self, raw: Any) -> Any:
        value = super().coerce(raw)
        if value % self.multiple_of:
            raise ValueError(f"must be a multiple of {self.multiple_of}")
        return value


def _zeros(z: Tensor) -> Tensor:
    return torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)


# --------------------------------------------------------------------------------------------------
# Exact divergence: three ways of computing the same number.
# --------------------------------------------------------------------------------------------------


loop_divergence = exact_divergence_loop
"""``(dz, div)`` with one ``autograd.grad`` (a vector-Jacobian product) per dimension: the contract's own loop."""


def batched_chunk(z: Tensor) -> int | None:
    """Basis vectors per vmapped chunk for the state ``z``: see :data:`BATCHED_ROWS`, :data:`BATCHED_ELEMENTS`."""
    batch, dim = z.shape
    if z.device.type == "cpu":
        return max(1, BATCHED_ROWS // batch)
    return None if dim * batch * dim <= BATCHED_ELEMENTS else max(1, BATCHED_ELEMENTS // (batch * dim))


def batched_divergence(field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    """``(dz, div)`` from one ``torch.func.vjp`` whose pullback is vmapped over the D basis vectors.

    Works for any field that ``torch.func`` can transform. The basis is
    processed in chunks of :func:`batched_chunk` vectors. Without
    ``create_graph`` the pullbacks run under ``no_grad`` (``torch.func``
    transforms ignore an outer ``no_grad``), so no graph is kept for ``div``;
    ``dz`` is the primal output and stays in the caller's graph either way.
    """
    batch, dim = z.shape
    dz, pullback = torch.func.vjp(lambda state: field(t, state), z)
    if not dz.requires_grad:
        return dz, _zeros(dz)
    basis = torch.eye(dim, dtype=z.dtype, device=z.device).unsqueeze(1).expand(dim, batch, dim)
    chunk = batched_chunk(z)
    with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
        (rows,) = torch.func.vmap(pullback, chunk_size=chunk)(basis)  # rows[i, b] = e_i^T J_b
        div = rows.diagonal(dim1=0, dim2=2).sum(dim=-1)
    return dz, div


def fused_divergence(field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor] | None:
    """``(dz, div)`` from the field's ``forward_with_divergence``, or ``None`` when it lacks or declines it."""
    fused = getattr(field, FUSED_METHOD, None)
    if not callable(fused):
        return None
    result = fused(t, z)
    if result is None:
        return None
    dz, div = result
    return dz, (div if create_graph else div.detach())


class ExactTrace(TraceEstimator):
    """The exact divergence, computed the fastest way measured for the dimension and device.

    Measured on a shared 2-core AMD EPYC, 1 torch thread, torch 2.13 CPU:
    concat-squash 3x64 tanh, batch 256, float32. *Training* = forward +
    divergence with ``create_graph=True`` + backward of the summed divergence
    to the parameters; *evaluation* = forward + divergence without a graph.
    Speed-ups are ``loop time / method time`` in thread CPU time, median of
    interleaved repeats; first a run of each method on its own (fused =
    ``forward_with_divergence``, batched = :func:`batched_divergence`):

    ==================  =====  =====  =====  =====  =====  =====  =====  =====  =====
    D                     1      2      3      4      8     16     32     64    128
    ==================  =====  =====  =====  =====  =====  =====  =====  =====  =====
    fused, training     0.89   1.04   1.21   1.36   1.63   1.81   2.14   2.68   3.29
    fused, evaluation   0.86   1.02   1.19   1.32   1.80   2.00   2.29   2.63   3.31
    batched, training   0.67   0.81   0.95   0.98   0.96   1.13   1.28   1.31   1.30
    batched, evaluation 0.61   0.75   0.85   0.94   1.20   1.44   1.53   1.59   1.42
    ==================  =====  =====  =====  =====  =====  =====  =====  =====  =====

    then ``exact_loop / exact`` as ``benchmarks/bench_trace_cost.py`` measures
    it in training (CPU time, median of paired ratios / ratio of the fastest
    times): D=2 1.03x / 1.06x (the same code), D=8 1.57x / 1.58x, D=16
    1.61x / 1.73x, D=32 2.10x / 2.12x, D=64 2.41x / 2.53x, D=128 3.40x /
    3.34x; see ``benchmarks/README.md``. Hence, in order:

    1. D <= :attr:`loop_max_dim` (2): the **loop** (:func:`loop_divergence`),
       cheapest when there are one or two backward passes to make — unless
       the field sets :data:`PREFER_FUSED` (a compiled field, ``--compile``).
    2. **Fused**, whenever the field offers ``forward_with_divergence`` (the
       protocol in the module docstring). The built-in fields propagate the
       Jacobian forward as batched matrix products; differentiating that
       costs fewer, larger operations than D reverse passes and their
       double backward.
    3. **Batched** (``torch.func.vjp`` with its pullback vmapped over chunks
       of the basis, see :data:`BATCHED_ROWS`) for any other field where it
       pays: on CPU from D = :attr:`batched_min_dim` (16) when the batch
       leaves chunks of at least :attr:`batched_min_chunk` (4) basis vectors
       (batch <= 512). At batch 512 (chunks of 4) it gained only 1.06-1.13x
       in training, 1.12-1.23x in evaluation; at batch 4096 a chunk would
       be one vector, no better than the loop. Without chunks, and in the
       other ``torch.func`` forms tried (``vmap(jacrev)``, ``vmap(jacfwd)``, a
       vmapped ``jvp`` over the basis) or ``autograd.grad(is_grads_batched=True)``
       (2-2.8x the loop's time at D=64), training was not faster than the
       loop. On a GPU the loop's D sequential backward passes are
       launch-bound, so the batched method is used from D=3 in both modes
       with chunks bounded by :data:`BATCHED_ELEMENTS`: a reasoned choice, as
       no GPU was available to measure it.
    4. Otherwise the **loop**, which is also the fallback when ``torch.func``
       cannot transform a field (a warning is issued once and this estimator
       keeps using the loop).
    """

    name = "exact"
    description = "exact divergence, batched: the field's fused Jacobian pass, else vmapped vector-Jacobian products"
    loop_max_dim = 2
    batched_min_dim = 16
    batched_min_chunk = 4

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._batched_failed = False

    def _batched_pays(self, z: Tensor) -> bool:
        if self._batched_failed:
            return False
        if z.device.type != "cpu":
            return True
        chunk = batched_chunk(z)
        return z.shape[1] >= self.batched_min_dim and chunk is not None and chunk >= self.batched_min_chunk

    def __call__(self, field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        if z.shape[1] <= self.loop_max_dim and not getattr(field, PREFER_FUSED, False):
            return loop_divergence(field, t, z, create_graph)
        fused = fused_divergence(field, t, z, create_graph)
        if fused is not None:
            return fused
        if z.shape[1] <= self.loop_max_dim or not self._batched_pays(z):
            return loop_divergence(field, t, z, create_graph)
        try:
            return batched_divergence(field, t, z, create_graph)
        except Exception as exc:  # noqa: BLE001 - the loop below re-raises anything that is the field's fault
            self._batched_failed = True
            warnings.warn(f"exact trace: the field cannot be batched with torch.func ({type(exc).__name__}: "
                          f"{exc}); using one autograd.grad per dimension", RuntimeWarning, stacklevel=2)
            return loop_divergence(field, t, z, create_graph)


class ExactLoopTrace(TraceEstimator):
    name = "exact_loop"
    description = "exact divergence: one vector-Jacobian product per dimension (reference for exact)"

    def __call__(self, field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        return loop_divergence(field, t, z, create_graph)


# --------------------------------------------------------------------------------------------------
# Stochastic estimators.
# --------------------------------------------------------------------------------------------------

NOISE = Param("noise", "str", "gaussian", "probe distribution", choices=("gaussian", "rademacher"))


def draw_probes(shape: tuple[int, ...], noise: str, z: Tensor, generator: torch.Generator | None) -> Tensor:
    """Probes of ``shape`` drawn on the CPU from ``generator`` (dtype of ``z``), then moved to ``z``'s device."""
    probe = torch.randn(shape, generator=generator, dtype=z.dtype, device="cpu")
    if noise == "rademacher":
        probe = torch.sign(probe) + (probe == 0).to(probe.dtype)
    return probe.to(z.device)


def vector_jacobian_products(
    dz: Tensor, z: Tensor, vectors: Tensor, create_graph: bool, keep_graph: bool = False
) -> list[Tensor | None]:
    """``v^T (d dz / d z)`` per row for each ``v`` in ``vectors`` ``[n, B, D]`` (``None`` when dz ignores z).

    The graph of ``dz`` is kept afterwards when ``create_graph`` or ``keep_graph``.
    """
    products: list[Tensor | None] = []
    for index, vector in enumerate(vectors):
        retain = create_graph or keep_graph or index < vectors.shape[0] - 1
        (product,) = torch.autograd.grad(dz, z, grad_outputs=vector, create_graph=create_graph, retain_graph=retain,
                                         allow_unused=True)
        products.append(product)
    return products


class StochasticTrace(TraceEstimator):
    """Shared bookkeeping: noise drawn once per solve, and the check that it matches the state."""

    stochastic = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._probes: Tensor | None = None

    def setting(self, name: str) -> Any:
        """A parameter's configured value, or its declared default when built without it."""
        if name in self.config:
            return self.config[name]
        return next(param.default for param in self.params if param.name == name)

    def _checked_probes(self, z: Tensor) -> Tensor:
        if self._probes is None or self._probes.shape[-2:] != z.shape:
            raise RuntimeError(f"{self.name}: begin_solve() must be called with the solve's initial state first")
        return self._probes


class HutchinsonTrace(StochasticTrace):
    name = "hutchinson"
    description = "Hutchinson estimator e^T J e averaged over k probes fixed per solve (unbiased)"
    params = (NOISE, Param("probes", "int", 1, "probes per solve; the estimate is the mean of their k estimates",
                           minimum=1, maximum=100000))

    def begin_solve(self, z: Tensor, generator: torch.Generator | None) -> None:
        probes = int(self.setting("probes"))
        if probes == 1:  # exactly the draw of the single-probe estimator, so seeded results do not change
            self._probes = draw_probes(tuple(z.shape), self.setting("noise"), z, generator).unsqueeze(0)
        else:
            self._probes = draw_probes((probes, *z.shape), self.setting("noise"), z, generator)

    def __call__(self, field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        probes = self._checked_probes(z)
        dz = field(t, z)
        if not dz.requires_grad:
            return dz, _zeros(dz)
        estimate: Tensor | None = None
        for probe, product in zip(probes, vector_jacobian_products(dz, z, probes, create_graph), strict=True):
            if product is None:
                return dz, _zeros(dz)
            term = (product * probe).sum(dim=1)
            estimate = term if estimate is None else estimate + term
        assert estimate is not None
        return dz, estimate if probes.shape[0] == 1 else estimate / probes.shape[0]


class HutchPlusPlusTrace(StochasticTrace):
    """Hutch++ with ``probes = k`` matrix-vector products per evaluation, ``m = k / 3`` probes of each kind.

    Per batch row, with ``A = J^T`` (same trace; every product is then a cheap
    vector-Jacobian product): ``Q = orth(A S)`` by a batched QR of the
    ``[B, D, m]`` sketch, and the estimate is
    ``tr(Q^T A Q) + (1/m) tr(G^T P A P G)`` with ``P = I - Q Q^T``. ``S`` and
    ``G`` (``D x m`` each) are drawn once per solve. When ``m >= D``, ``Q``
    spans everything and the estimate is exact (then only ``m + D`` products
    are spent).

    ``Q`` is treated as a constant in the backward pass: for any fixed ``Q``
    the estimate is unbiased for ``tr(J)`` as a function of the parameters, so
    its gradient is an unbiased estimate of the gradient of the trace, and no
    (ill-conditioned) QR derivative is needed. The sketch ``A S`` is therefore
    computed without a graph.
    """

    name = "hutchpp"
    description = "Hutch++: exact trace on a sketched dominant subspace + Hutchinson on the rest (unbiased)"
    params = (NOISE, MultipleParam("probes", "int", 6, "matrix-vector products per evaluation (a multiple of 3)",
                                   minimum=3, maximum=99999, multiple_of=3))

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        probes = int(self.setting("probes"))
        if probes < 3 or probes % 3:
            raise ValueError(f"hutchpp needs probes >= 3 and a multiple of 3, got {probes}")

    def begin_solve(self, z: Tensor, generator: torch.Generator | None) -> None:
        third = int(self.setting("probes")) // 3
        self._probes = draw_probes((2 * third, *z.shape), self.setting("noise"), z, generator)  # [S; G]

    def __call__(self, field: FieldFunction, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        probes = self._checked_probes(z)
        third, dim = probes.shape[0] // 2, z.shape[1]
        sketch_probes, hutch_probes = probes[:third], probes[third:]
        dz = field(t, z)
        if not dz.requires_grad:
            return dz, _zeros(dz)
        sketch = vector_jacobian_products(dz, z, sketch_probes, create_graph=False, keep_graph=True)
        if any(product is None for product in sketch):
            return dz, _zeros(dz)
        basis, _ = torch.linalg.qr(torch.stack(sketch, dim=-1).detach())  # [B, D, min(D, m)], orthonormal columns
        basis = basis.permute(2, 0, 1)  # [r, B, D]
        vectors, weights = [basis], [torch.ones(basis.shape[0], dtype=z.dtype, device=z.device)]
        if basis.shape[0] < dim:
            coefficients = torch.einsum("rbd,mbd->rmb", basis, hutch_probes)
            residual = hutch_probes - torch.einsum("rmb,rbd->mbd", coefficients, basis)  # P G, per row
            vectors.append(residual)
            weights.append(torch.full((third,), 1.0 / third, dtype=z.dtype, device=z.device))
        stacked = torch.cat(vectors)
        quadratic = [torch.zeros_like(dz[:, 0]) if product is None else (product * vector).sum(dim=1)
                     for product, vector in zip(vector_jacobian_products(dz, z, stacked, create_graph), stacked,
                                                strict=True)]
        return dz, (torch.cat(weights).unsqueeze(1) * torch.stack(quadratic)).sum(dim=0)


@hookimpl
def cnfbench_traces() -> list[type[TraceEstimator]]:
    return [ExactTrace, ExactLoopTrace, HutchinsonTrace, HutchPlusPlusTrace]
