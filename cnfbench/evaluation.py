"""Evaluation of a trained field by the measurement protocol.

Test log-likelihoods are computed with the exact (deterministic) evaluation
trace, in memory-bounded chunks, once with the cell's solver (``nll``: what
that pipeline would report) and once with a tight reference solve, by default
dopri5 at rtol=atol=1e-7 in float64 (``nll_ref``: the density the trained
field really defines). Every pass records its NFE and wall-clock, and, for a solver that steps each sample
on its own clock, every sample's accepted and rejected steps.

Model samples are drawn by a solve of the samples alone (:func:`sample_model`):
the field's forward pass, no log-density or trace riding along, so its NFE and
seconds are what drawing samples costs and an adaptive solver's error control
watches the samples only. Where a metric needs the samples' log-density too, it
draws its own samples with :func:`sample_with_log_prob`, one joint solve.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cnfbench.contracts import STEP_STATISTICS, Solver, TraceEstimator, VectorField
from cnfbench.dynamics import (
    CNFDynamics,
    FieldDynamics,
    NFECounter,
    log_likelihood_and_base,
    standard_normal_log_prob,
)
from cnfbench.measure import now


@dataclass
class EvaluationPass:
    """Per-sample log-likelihoods of one evaluation pass and what it cost."""

    log_prob: Tensor  # float64 on CPU, nats per sample
    nfe: int  # dynamics evaluations over all chunks
    nfe_max_chunk: int  # the most one chunk's solve needed
    seconds: float
    steps: dict[str, Tensor] | None = None  # per-sample solvers: each row's accepted and rejected steps
    base: Tensor | None = None  # with keep_base: each row's image at t=0, on the data's device and dtype

    @property
    def nll(self) -> float:
        return float(-self.log_prob.mean())

    @property
    def nll_stderr(self) -> float:
        n = self.log_prob.numel()
        return float(self.log_prob.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan


def evaluate_log_prob(
    field_module: VectorField,
    solver: Solver,
    trace: TraceEstimator,
    data: Tensor,
    batch_size: int,
    phase: str,
    dtype: torch.dtype | None = None,
    max_nfe: int | None = None,
    labels: tuple[str, str] = ("field", "trace"),
    keep_base: bool = False,
) -> EvaluationPass:
    """Log-likelihood of every row of ``data`` under the CNF, chunked by ``batch_size``.

    With ``dtype`` set, a copy of the field in that dtype is evaluated and the
    trained module is left as it is; otherwise the module itself is switched
    to eval mode. With ``keep_base``, the pass keeps each row's image at t=0 (``base``): the
    round trip pushes those forward again instead of solving the test points back a second time.
    """
    device = data.device
    model = field_module
    if dtype is not None and dtype != data.dtype:
        model = copy.deepcopy(field_module).to(dtype)
        data = data.to(dtype)
    model.eval()
    counter = NFECounter(max_per_solve=max_nfe)
    dynamics = CNFDynamics(model, trace, counter, differentiable=False, field_label=labels[0], trace_label=labels[1])
    chunks: list[Tensor] = []
    bases: list[Tensor] = []
    steps: list[dict[str, Tensor] | None] = []
    most = 0
    start = now(device)
    with torch.no_grad():
        for chunk in torch.split(data, batch_size):
            log_prob, base = log_likelihood_and_base(dynamics, solver, chunk, phase, None)
            chunks.append(log_prob.detach().to("cpu", torch.float64))
            if keep_base:
                bases.append(base.detach())
            most = max(most, counter.current)
            steps.append(solver.step_statistics())
    seconds = now(device) - start
    return EvaluationPass(torch.cat(chunks), counter.totals[phase], most, seconds, _joined_steps(steps),
                          torch.cat(bases) if keep_base else None)


def step_columns(passed: EvaluationPass | None) -> dict[str, float]:
    """``steps_<kind>_mean`` and ``steps_<kind>_max`` over the rows of ``passed`` for each kind of
    :data:`~cnfbench.contracts.STEP_STATISTICS`; NaN without a pass or for a solver that reports none."""
    columns: dict[str, float] = {}
    for kind in STEP_STATISTICS:
        counts = None if passed is None or passed.steps is None else passed.steps[kind].to(torch.float64)
        columns[f"steps_{kind}_mean"] = math.nan if counts is None else float(counts.mean())
        columns[f"steps_{kind}_max"] = math.nan if counts is None else float(counts.max())
    return columns


def _joined_steps(chunks: list[dict[str, Tensor] | None]) -> dict[str, Tensor] | None:
    """The per-row step counts of all chunks, in row order; ``None`` unless every chunk's solve reported them."""
    if not chunks or any(chunk is None for chunk in chunks):
        return None
    return {kind: torch.cat([chunk[kind].reshape(-1).cpu() for chunk in chunks if chunk is not None])
            for kind in STEP_STATISTICS}


def _field_in(field_module: VectorField, dtype: torch.dtype) -> VectorField:
    """The field itself, or a copy of it in ``dtype`` when its parameters have another dtype."""
    if dtype != next(iter(field_module.parameters()), torch.empty(0)).dtype:
        return copy.deepcopy(field_module).to(dtype)
    return field_module


def sample_model(
    field_module: VectorField, solver: Solver, n: int, generator: torch.Generator, device: torch.device,
    dtype: torch.dtype = torch.float32, counter: NFECounter | None = None, field_label: str = "field",
) -> Tensor:
    """``n`` samples of the model: base draws ``z0 ~ N(0, I)`` pushed from t=0 to t=1 by ``solver``.

    The solve carries the samples alone (:class:`~cnfbench.dynamics.FieldDynamics`), so its cost is the
    sampler's: one field forward pass per dynamics evaluation. The base draws are those
    :func:`sample_with_log_prob` takes from the same ``generator``, and an explicit fixed-grid solver takes
    the same steps as there; an adaptive one chooses its steps by the samples' error alone. ``counter`` (a
    fresh one when None) counts the solve's dynamics evaluations in its ``sample`` phase: ``counter.current``
    afterwards is the sampling NFE, and its ``max_per_solve`` bounds it. A copy of the field in ``dtype`` is
    used when that differs from the field's own.
    """
    model = _field_in(field_module, dtype)
    base = torch.randn(n, field_module.dim, generator=generator, dtype=dtype).to(device)
    counter = counter if counter is not None else NFECounter()
    counter.start("sample")
    dynamics = FieldDynamics(model.eval(), counter, field_label)
    with torch.no_grad():
        (samples,) = solver.integrate(dynamics, (base,), 0.0, 1.0)
    return samples.detach()


def sample_with_log_prob(
    field_module: VectorField, solver: Solver, trace: TraceEstimator, n: int, generator: torch.Generator,
    device: torch.device, dtype: torch.dtype, counter: NFECounter | None = None,
) -> tuple[Tensor, Tensor]:
    """``n`` model samples and their log-density under the model (nats, float64 on CPU), from one joint solve.

    The full dynamics run from t=0 (``z0 ~ N(0, I)``, ``a = 0``) to t=1, so ``a(1) = -∫_0^1 div v dt`` and
    ``log q(x1) = log N(z0; 0, I) + a(1)``: ``log q`` is the density of exactly these samples, which is what
    importance weights need. An adaptive solver's error control covers ``a`` too, so this solve costs more
    than :func:`sample_model`'s and is not a sampler's cost. A copy of the field in ``dtype`` is used when that
    differs from the field's own; ``trace`` should be exact for ``log q`` to be the model's density.
    """
    model = _field_in(field_module, dtype)
    base = torch.randn(n, field_module.dim, generator=generator, dtype=dtype).to(device)
    counter = counter if counter is not None else NFECounter()
    counter.start("sample")
    dynamics = CNFDynamics(model.eval(), trace, counter, differentiable=False)
    trace.begin_solve(base, None)
    with torch.no_grad():
        samples, change = solver.integrate(dynamics, (base, torch.zeros(n, dtype=dtype, device=device)), 0.0, 1.0)
    log_q = standard_normal_log_prob(base) + change
    return samples.detach(), log_q.detach().to("cpu", torch.float64)
