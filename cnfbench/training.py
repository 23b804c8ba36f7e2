"""Maximum-likelihood training of one cell's CNF with Adam, measured per iteration.

Randomness comes only from generators derived from the cell's seed: the
field's initialisation, the minibatch order and the trace estimator's noise.
Each iteration records its loss, forward and backward NFE and wall-clock.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cnfbench.cells import Cell
from cnfbench.contracts import Solver, TraceEstimator, VectorField, split_generator
from cnfbench.dynamics import CNFDynamics, NFECounter, PhaseTracker, log_likelihood
from cnfbench.measure import now

IterationCallback = Callable[[int, float], None]
"""Called after every iteration with ``(iterations done, loss in nats)``."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss or state."""


def exploded_above(first_loss: float) -> float:
    """The loss (nats/sample) beyond which training counts as diverged: far above where it started."""
    return max(1e3, 100.0 * abs(first_loss))


def seeded_field(build: Callable[[], VectorField], seed: int, device: torch.device) -> VectorField:
    """Build a field with its initialisation drawn from the cell's seed, leaving the global RNG untouched."""
    init = split_generator(seed, "field/init").initial_seed()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init)
        built = build()
    return built.to(device)


def minibatches(data: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless epochs of shuffled minibatches (the last short batch of an epoch is dropped)."""
    n = data.shape[0]
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator).to(data.device)
        for start in range(0, n - size + 1, size):
            yield data.index_select(0, order[start : start + size])


@dataclass
class TrainingRecord:
    """What training measured, kept even when training stops early."""

    losses: list[float] = field(default_factory=list)
    nfe_forward: list[int] = field(default_factory=list)
    nfe_backward: list[int] = field(default_factory=list)
    iteration_seconds: list[float] = field(default_factory=list)
    total_seconds: float = 0.0

    @property
    def iterations(self) -> int:
        return len(self.losses)

    def median_iteration_seconds(self) -> float:
        """Median per-iteration wall-clock, excluding the first (warm-up) iteration when there are others."""
        times = self.iteration_seconds[1:] if len(self.iteration_seconds) > 1 else self.iteration_seconds
        return statistics.median(times) if times else math.nan

    def curves(self) -> list[dict[str, float]]:
        elapsed = 0.0
        rows = []
        for index, loss in enumerate(self.losses):
            elapsed += self.iteration_seconds[index]
            rows.append({
                "iteration": index + 1,
                "loss_nats": loss,
                "nfe_forward": self.nfe_forward[index],
                "nfe_backward": self.nfe_backward[index],
                "iteration_s": self.iteration_seconds[index],
                "elapsed_s": elapsed,
            })
        return rows


def train(
    cell: Cell,
    field_module: VectorField,
    solver: Solver,
    trace: TraceEstimator,
    train_data: Tensor,
    record: TrainingRecord,
    on_iteration: IterationCallback | None = None,
    labels: tuple[str, str] | None = None,
    tracker: PhaseTracker | None = None,
) -> None:
    """Train ``field_module`` in place, filling ``record``; raise :class:`Diverged` on a non-finite loss.

    ``labels`` name the field and trace in contract-violation messages; ``tracker`` is told when each
    iteration's forward solve and backward pass begin (so :class:`Diverged` messages leave the iteration out).
    """
    tracker = tracker or PhaseTracker()
    device = train_data.device
    counter = NFECounter(max_per_solve=cell.budget.max_nfe)
    field_label, trace_label = labels or (repr(cell.field.name), repr(cell.trace.name))
    dynamics = CNFDynamics(field_module, trace, counter, differentiable=True,
                           field_label=field_label, trace_label=trace_label)
    optimizer = torch.optim.Adam(field_module.parameters(), lr=cell.budget.lr)
    batches = minibatches(train_data, cell.budget.batch_size, split_generator(cell.seed, "train/batches"))
    noise = split_generator(cell.seed, "trace/train")
    field_module.train()
    start = now(device)
    try:
        for iteration in range(1, cell.budget.iterations + 1):
            tracker.enter("train_forward", iteration)
            began = now(device)
            x = next(batches)
            optimizer.zero_grad(set_to_none=True)
            loss = -log_likelihood(dynamics, solver, x, "forward", noise).mean()
            forward_nfe = counter.current
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise Diverged(f"non-finite training loss ({loss_value})")
            if record.losses and loss_value > exploded_above(record.losses[0]):
                raise Diverged(f"training loss exploded to {loss_value:.4g} nats (first loss {record.losses[0]:.4g})")
            tracker.enter("train_backward", iteration)
            counter.start("backward")
            loss.backward()
            backward_nfe = counter.current
            optimizer.step()
            ended = now(device)
            record.losses.append(loss_value)
            record.nfe_forward.append(forward_nfe)
            record.nfe_backward.append(backward_nfe)
            record.iteration_seconds.append(ended - began)
            if on_iteration is not None:
                on_iteration(iteration, record.losses[-1])
    finally:
        record.total_seconds = now(device) - start
