#!/usr/bin/env python
"""Harness overhead: cnfbench's training iteration against a minimal hand-written torchdiffeq loop.

For every solver asked for, one cell (8gaussians, concatsquash 3x64 tanh, the
looped exact trace ``exact_loop``, Adam) is built with cnfbench's own machinery
(``RunConfig`` + ``resolve_cells`` + the registry) and trained with
``cnfbench.training.train``; its per-iteration wall-clock is read from
``TrainingRecord.iteration_seconds`` (the harness's own clock). The baseline
is a FFJORD-style loop written here from scratch with ``torchdiffeq.odeint``
only: the same field architecture with the same initial weights, the same
minibatches, the same solver method and options, the exact trace as a loop of
``autograd.grad`` with ``create_graph=True`` and Adam with the same learning
rate.

Both sides restart every block from the same initial weights, a fresh Adam
and the same batch order, so every block does the same work on both sides
(the losses agree iteration by iteration; the first one is checked before
timing, and the largest gap over all timed iterations is printed). A block
pair is one ``train`` call of N iterations and N baseline iterations:

* ``--interleave iteration`` (default): the baseline's iterations run from
  ``train``'s per-iteration callback, so the two sides alternate iteration by
  iteration: H1 B1 H2 B2 ... in even blocks, B1 H1 B2 H2 ... in odd ones, so
  that any advantage of running first in a pair cancels. The callback runs
  after the harness has read its clock, so it is not in the harness's times.
  Load on a shared machine changes within a second; neighbouring iterations
  share it, whole blocks of a few seconds do not.
* ``--interleave block``: whole blocks alternate in ABBA order (harness,
  baseline, baseline, harness, ...); this also gives the whole-block
  wall-clock and CPU time, which include ``train``'s per-call setup and its
  per-iteration bookkeeping after the iteration's clock read.

The first (warm-up) iteration of every block is dropped, and the overhead is
the median over block pairs of ``median(harness iteration) / median(baseline
iteration) - 1``.

    python benchmarks/bench_harness_overhead.py [--iterations N] [--repeats R] [--batch-size B]
        [--solver SPEC ...] [--interleave {iteration,block}] [--threads T] [--check PCT]

Exit status: 0 normally; 1 when ``--check PCT`` is given and a solver's
median overhead exceeds PCT percent; 3 when the two loops do not compute the
same loss (the comparison is then invalid); 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torchdiffeq
from torch import Tensor, nn

from cnfbench.config import RunConfig, resolve_cells
from cnfbench.contracts import split_generator
from cnfbench.params import ParamError
from cnfbench.provenance import cpu_model
from cnfbench.registry import load_registry
from cnfbench.training import TrainingRecord, seeded_field, train

DATASET = "8gaussians"
FIELD = "concatsquash[hidden=3x64,activation=tanh]"
LOOP_TRACES = ("exact_loop", "exact")  # the first one registered: one autograd.grad per dimension, like the baseline
DEFAULT_SOLVERS = ("euler[steps=10]", "dopri5")
LOSS_TOLERANCE = 1e-5  # first-iteration losses must agree to this (absolute, per nat above 1)
EXIT_CHECK_FAILED = 1
EXIT_INVALID = 3


# --------------------------------------------------------------------------------------------------
# The hand-written baseline: torch + torchdiffeq only, no cnfbench in here.
# --------------------------------------------------------------------------------------------------

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU,
                                                   "swish": nn.SiLU}


class SquashLinear(nn.Module):
    """FFJORD's ConcatSquashLinear: ``(W x + b) * sigmoid(a t + c) + d t``.

    The tensor ops are the ones cnfbench's ``concatsquash`` plugin runs (one ``reshape`` + ``to`` of ``t`` per
    layer), so that a difference in time is the harness's and not the field's.
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)
        self.hyper_bias = nn.Linear(1, dim_out, bias=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        t_column = t.reshape(1, 1).to(x.dtype)
        return self.linear(x) * torch.sigmoid(self.hyper_gate(t_column)) + self.hyper_bias(t_column)


class SquashMLP(nn.Module):
    """A stack of :class:`SquashLinear` with an activation between layers (parameter names as cnfbench's)."""

    def __init__(self, dim: int, hidden: tuple[int, ...], activation: str) -> None:
        super().__init__()
        widths = [dim, *hidden, dim]
        self.layers = nn.ModuleList(SquashLinear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = z
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            h = layer(t, h)
            if index < last:
                h = self.activation(h)
        return h


class ExactCNF(nn.Module):
    """``(z, a) -> (v(t, z), -div v(t, z))`` with the exact divergence (one VJP per dimension)."""

    def __init__(self, velocity: nn.Module) -> None:
        super().__init__()
        self.velocity = velocity

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        z = state[0]
        dz = self.velocity(t, z)
        div = torch.zeros(z.shape[0], dtype=dz.dtype, device=dz.device)
        for i in range(z.shape[1]):
            div = div + torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i]
        return dz, -div


class CountingCNF(ExactCNF):
    """:class:`ExactCNF` that counts its evaluations; used only in the untimed validation run."""

    nfe = 0

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        self.nfe += 1
        return super().forward(t, state)


@dataclass(frozen=True)
class OdeSettings:
    """How the baseline calls ``torchdiffeq.odeint``."""

    method: str
    rtol: float
    atol: float
    steps: int | None  # fixed grid: equal steps over [1, 0]; None for adaptive methods

    def options(self) -> dict:
        if self.steps is None:
            # As cnfbench's adaptive solvers do: make the last step land on t=0 instead of interpolating past it.
            return {"step_t": [0.0]}
        steps = self.steps

        def grid(_func: object, _y0: Tensor, t: Tensor) -> Tensor:
            return torch.linspace(float(t[0]), float(t[-1]), steps + 1, dtype=t.dtype, device=t.device)

        return {"grid_constructor": grid}


@dataclass
class LoopRecord:
    losses: list[float] = field(default_factory=list)
    iteration_seconds: list[float] = field(default_factory=list)
    nfe_forward: list[int] = field(default_factory=list)


def baseline_training(velocity: nn.Module, data: Tensor, batch_seed: int, batch_size: int, iterations: int,
                      lr: float, ode: OdeSettings, record: LoopRecord, count_nfe: bool = False) -> Iterator[None]:
    """Minimal FFJORD-style maximum-likelihood training, timed per iteration; yields after every iteration."""
    device = data.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cnf = CountingCNF(velocity) if count_nfe else ExactCNF(velocity)
    optimizer = torch.optim.Adam(velocity.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(batch_seed)
    n, dim = data.shape
    size = min(batch_size, n)
    times = torch.tensor([1.0, 0.0], dtype=data.dtype, device=device)
    options = ode.options()
    log_2pi = dim * math.log(2 * math.pi)
    order, position = None, n
    velocity.train()
    for _ in range(iterations):
        sync()
        began = time.perf_counter()
        if position + size > n:  # new epoch: reshuffle, drop the short last batch
            order, position = torch.randperm(n, generator=generator).to(device), 0
        # z must require grad at the first evaluation for autograd.grad; cnfbench's dynamics detach() and
        # requires_grad_() inside every evaluation instead (part of what is measured as harness overhead).
        x = data.index_select(0, order[position:position + size]).requires_grad_(True)
        position += size
        optimizer.zero_grad(set_to_none=True)
        if count_nfe:
            cnf.nfe = 0
        a1 = torch.zeros(size, dtype=data.dtype, device=device)
        z_traj, a_traj = torchdiffeq.odeint(cnf, (x, a1), times, rtol=ode.rtol, atol=ode.atol, method=ode.method,
                                            options=options)
        z0, a0 = z_traj[-1], a_traj[-1]
        loss = -(-0.5 * (z0.pow(2).sum(dim=1) + log_2pi) - a0).mean()
        forward_nfe = cnf.nfe if count_nfe else 0
        loss.backward()
        optimizer.step()
        sync()
        ended = time.perf_counter()
        record.losses.append(loss.item())
        record.iteration_seconds.append(ended - began)
        record.nfe_forward.append(forward_nfe)
        yield


# --------------------------------------------------------------------------------------------------
# The cnfbench side: one cell built and trained with cnfbench's own machinery.
# --------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    spec: str
    cell: object
    field_module: nn.Module
    objective: object
    solver: object
    trace: object
    optimizer: object
    train_data: Tensor
    initial_state: dict[str, Tensor]
    baseline_field: nn.Module
    batch_seed: int
    ode: OdeSettings


def default_trace(registry) -> str:
    """cnfbench's looped exact trace: ``exact_loop`` where ``exact`` may take a fused or batched shortcut."""
    known = registry.names("trace")
    return next((name for name in LOOP_TRACES if name in known), LOOP_TRACES[-1])


def build(spec: str, registry, trace: str, batch_size: int, lr: float, device: str) -> Setup:
    config = RunConfig(dataset=(DATASET,), field=(FIELD,), solver=(spec,), trace=(trace,), iterations=1,
                       batch_size=batch_size, lr=lr, device=device)
    cells = resolve_cells(config, registry)
    if len(cells) != 1:
        raise ParamError(f"solver {spec!r} expands to {len(cells)} cells; give one solver per --solver value")
    cell = cells[0]
    solver_entry = registry.get("solver", cell.solver.name)
    solver_params = cell.solver.kwargs
    if "torchdiffeq" not in solver_entry.cls.libraries:
        raise ParamError(f"solver {spec!r} is not a torchdiffeq solver; the baseline only calls torchdiffeq.odeint")
    if solver_params.get("adjoint", False):
        raise ParamError(f"solver {spec!r}: adjoint=true is not supported by this benchmark's baseline")
    if not solver_entry.cls.adaptive and (getattr(solver_entry.cls, "multistep", False)
                                          or solver_entry.cls.nfe_per_step is None):
        raise ParamError(f"solver {spec!r}: multistep methods are not supported by this benchmark's baseline")
    if solver_entry.cls.adaptive:
        ode = OdeSettings(solver_entry.cls.method, float(solver_params["rtol"]), float(solver_params["atol"]), None)
    else:  # rtol/atol only matter for implicit Adams; cnfbench passes these
        ode = OdeSettings(solver_entry.cls.method, 1e-3, 1e-4, int(solver_params["steps"]))

    torch_device = torch.device(cell.device)
    dataset = registry.build("dataset", cell.dataset)
    train_data = dataset.splits(cell.seed).train.to(torch_device)
    field_module = seeded_field(lambda: registry.build("field", cell.field, dataset.dim), cell.seed, torch_device)
    initial_state = {key: value.detach().clone() for key, value in field_module.state_dict().items()}
    field_params = cell.field.kwargs
    baseline_field = SquashMLP(dataset.dim, tuple(field_params["hidden"]), field_params["activation"])
    baseline_field.load_state_dict(initial_state, strict=True)
    baseline_field.to(torch_device)
    return Setup(
        spec=spec, cell=cell, field_module=field_module, objective=registry.build("objective", cell.objective),
        solver=registry.build("solver", cell.solver), trace=registry.build("trace", cell.trace),
        optimizer=registry.build("optimizer", cell.optimizer), train_data=train_data, initial_state=initial_state,
        baseline_field=baseline_field,
        batch_seed=split_generator(cell.seed, "train/batches").initial_seed(), ode=ode,
    )


@dataclass
class Block:
    """One timed run of N iterations of one side."""

    iteration_seconds: list[float]
    losses: list[float]
    nfe_forward: list[int]
    wall_s: float = math.nan  # the whole block (for the harness: the train() call), wall-clock
    cpu_s: float = math.nan  # the same span in process CPU time (robust to time spent waiting for a core)

    @property
    def median_s(self) -> float:
        """Median iteration, the first (warm-up: first epoch shuffle, Adam state, contract check) dropped."""
        return statistics.median(self.iteration_seconds[1:] or self.iteration_seconds)


def harness_cell(setup: Setup, iterations: int):
    return dataclasses.replace(setup.cell, budget=dataclasses.replace(setup.cell.budget, iterations=iterations))


def start_baseline(setup: Setup, iterations: int, count_nfe: bool = False) -> tuple[LoopRecord, Iterator[None]]:
    setup.baseline_field.load_state_dict(setup.initial_state)
    record = LoopRecord()
    budget = setup.cell.budget
    steps = baseline_training(setup.baseline_field, setup.train_data, setup.batch_seed, budget.batch_size, iterations,
                              budget.lr, setup.ode, record, count_nfe)
    return record, steps


def run_harness(setup: Setup, iterations: int, on_iteration: Callable[[int, float, int], None] | None = None) -> Block:
    """One ``cnfbench.training.train`` call from the initial weights; times from its ``TrainingRecord``."""
    setup.field_module.load_state_dict(setup.initial_state)
    record = TrainingRecord()
    gc.collect()
    cpu, began = time.process_time(), time.perf_counter()
    train(harness_cell(setup, iterations), setup.field_module, setup.objective, setup.solver, setup.trace,
          setup.optimizer, setup.train_data, record, on_iteration)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    return Block(list(record.iteration_seconds), list(record.losses), list(record.nfe_forward), wall, cpu)


def run_baseline(setup: Setup, iterations: int, count_nfe: bool = False) -> Block:
    record, steps = start_baseline(setup, iterations, count_nfe)
    gc.collect()
    cpu, began = time.process_time(), time.perf_counter()
    for _ in steps:
        pass
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    return Block(record.iteration_seconds, record.losses, record.nfe_forward, wall, cpu)


def run_interleaved(setup: Setup, iterations: int, baseline_first: bool) -> tuple[Block, Block]:
    """One ``train`` call whose per-iteration callback runs one baseline iteration: H1 B1 H2 B2 ... Hn Bn.

    With ``baseline_first`` the order is B1 H1 B2 H2 ... Bn Hn instead (B1 runs before ``train`` is called, and
    the callback after Hk runs Bk+1). The callback runs after the harness has read its end-of-iteration clock,
    so it is outside the harness's iteration times; the wall-clock of the call covers both sides and is not
    reported.
    """
    record, steps = start_baseline(setup, iterations)
    if baseline_first:
        next(steps)

        def on_iteration(iteration: int, _loss: float, _nfe: int) -> None:
            if iteration < iterations:
                next(steps)
    else:

        def on_iteration(_iteration: int, _loss: float, _nfe: int) -> None:
            next(steps)

    harness = run_harness(setup, iterations, on_iteration=on_iteration)
    harness.wall_s = harness.cpu_s = math.nan  # they cover both sides here
    return harness, Block(record.iteration_seconds, record.losses, record.nfe_forward)


# --------------------------------------------------------------------------------------------------
# Measurement and report.
# --------------------------------------------------------------------------------------------------


@dataclass
class Result:
    spec: str
    iterations: int
    nfe_forward: float
    harness_ms: float
    baseline_ms: float
    harness_wall_ms: float
    baseline_wall_ms: float
    ratios: list[float]
    cpu_ratios: list[float]
    max_loss_gap: float

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def overhead_pct(self) -> float:
        return 100.0 * (self.ratio - 1.0)

    @property
    def cpu_overhead_pct(self) -> float:
        return 100.0 * (statistics.median(self.cpu_ratios) - 1.0)


def validate(setup: Setup, iterations: int) -> tuple[bool, Block]:
    """Untimed check that both loops compute the same losses (and, here, the same forward NFE)."""
    harness = run_harness(setup, iterations)
    baseline = run_baseline(setup, iterations, count_nfe=True)
    h, b = harness.losses[0], baseline.losses[0]
    gap = abs(h - b)
    ok = gap <= LOSS_TOLERANCE * max(1.0, abs(h))
    print(f"  check: first-iteration loss  harness {h:.8f} nats  baseline {b:.8f} nats  |diff| {gap:.2e}"
          f"  -> {'agree' if ok else 'DISAGREE'}")
    print(f"  check: forward NFE per iteration  harness {harness.nfe_forward}  baseline {baseline.nfe_forward}")
    if harness.nfe_forward != baseline.nfe_forward:
        print("  note: forward NFE differ between the two loops")
    return ok, harness


def choose_iterations(requested: int | None, probe: Block, block_seconds: float) -> int:
    if requested is not None:
        return requested
    return max(6, min(400, round(block_seconds / max(probe.median_s, 1e-6))))


def measure(setup: Setup, iterations: int, repeats: int, interleave: str) -> Result:
    harness_blocks: list[Block] = []
    baseline_blocks: list[Block] = []
    for pair in range(repeats):
        if interleave == "iteration":
            baseline_first = pair % 2 == 1  # alternate which side of each iteration pair runs first
            h, b = run_interleaved(setup, iterations, baseline_first)
            harness_blocks.append(h)
            baseline_blocks.append(b)
            how = "B1 H1 B2 H2 ..." if baseline_first else "H1 B1 H2 B2 ..."
        else:
            order = ("harness", "baseline") if pair % 2 == 0 else ("baseline", "harness")  # ABBA
            for side in order:
                if side == "harness":
                    harness_blocks.append(run_harness(setup, iterations))
                else:
                    baseline_blocks.append(run_baseline(setup, iterations))
            h, b = harness_blocks[-1], baseline_blocks[-1]
            how = f"{order[0]} first"
        print(f"  pair {pair + 1:2d}/{repeats} ({how}): harness {1e3 * h.median_s:8.3f} ms/iter  "
              f"baseline {1e3 * b.median_s:8.3f} ms/iter  ratio {h.median_s / b.median_s:.4f}", flush=True)
    pooled_h = [s for block in harness_blocks for s in block.iteration_seconds[1:]]
    pooled_b = [s for block in baseline_blocks for s in block.iteration_seconds[1:]]
    gap = max(abs(x - y) for h, b in zip(harness_blocks, baseline_blocks, strict=True)
              for x, y in zip(h.losses, b.losses, strict=True))
    ratios = [h.median_s / b.median_s for h, b in zip(harness_blocks, baseline_blocks, strict=True)]
    if len(ratios) > 1:
        first = "harness" if interleave == "iteration" else "harness block"
        print(f"  median block ratio with the {first} first {statistics.median(ratios[0::2]):.4f}, "
              f"with the baseline first {statistics.median(ratios[1::2]):.4f}")
    return Result(
        spec=setup.spec, iterations=iterations,
        nfe_forward=statistics.fmean(n for block in harness_blocks for n in block.nfe_forward),
        harness_ms=1e3 * statistics.median(pooled_h), baseline_ms=1e3 * statistics.median(pooled_b),
        harness_wall_ms=1e3 * statistics.median(block.wall_s / iterations for block in harness_blocks),
        baseline_wall_ms=1e3 * statistics.median(block.wall_s / iterations for block in baseline_blocks),
        ratios=ratios,
        cpu_ratios=[h.cpu_s / b.cpu_s for h, b in zip(harness_blocks, baseline_blocks, strict=True)],
        max_loss_gap=gap,
    )


def machine_line(device: str) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    where = f"CPU {cpu_model()} ({cores} cores usable)"
    if device.startswith("cuda"):
        where += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    return (f"machine: {where}, torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), "
            f"torchdiffeq {torchdiffeq.__version__}, Python {platform.python_version()}, device {device}{load}")


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}"


def table(results: list[Result], whole_blocks: bool) -> str:
    headers = ["solver", "iters/block", "NFE fwd/iter", "harness ms/iter", "baseline ms/iter",
               "ratio (median)", "ratio min..max", "overhead %"]
    rows = [[r.spec, str(r.iterations), f"{r.nfe_forward:.1f}", f"{r.harness_ms:.3f}", f"{r.baseline_ms:.3f}",
             f"{r.ratio:.4f}", f"{min(r.ratios):.4f}..{max(r.ratios):.4f}", f"{r.overhead_pct:+.2f}"]
            for r in results]
    if whole_blocks:
        headers += ["harness wall ms/iter", "baseline wall ms/iter", "block CPU-time overhead %"]
        for row, r in zip(rows, results, strict=True):
            row += [_ms(r.harness_wall_ms), _ms(r.baseline_wall_ms), _pct(r.cpu_overhead_pct)]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in rows:
        cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=None, metavar="N",
                        help="iterations per block (default: chosen per solver so a block takes ~--block-seconds)")
    parser.add_argument("--block-seconds", type=float, default=2.0, metavar="S",
                        help="target time per side and block when --iterations is not given (default 2.0)")
    parser.add_argument("--repeats", type=int, default=16, metavar="R",
                        help="block pairs (harness + baseline) per solver (default 16)")
    parser.add_argument("--interleave", choices=("iteration", "block"), default="iteration",
                        help="iteration (default): harness and baseline iterations alternate (H1 B1 H2 B2 ..., "
                             "B1 H1 B2 H2 ... in odd blocks) through train()'s per-iteration callback; "
                             "block: whole blocks alternate in ABBA order")
    parser.add_argument("--batch-size", type=int, default=512, metavar="B", help="minibatch size (default 512)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--solver", nargs="+", default=list(DEFAULT_SOLVERS), metavar="SPEC",
                        help="cnfbench solver selectors (default: euler[steps=10] dopri5)")
    parser.add_argument("--trace", default=None, metavar="NAME",
                        help="cnfbench trace for the harness (default: exact_loop, else exact). The baseline always "
                             "loops autograd.grad over dimensions, so another algorithm is no longer like for like")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=1, metavar="T",
                        help="torch intra-op threads (default 1: stable on a shared machine; 0 = torch's default)")
    parser.add_argument("--check", type=float, default=None, metavar="PCT",
                        help="exit 1 if a solver's median overhead exceeds PCT percent")
    args = parser.parse_args(argv)
    if args.iterations is not None and args.iterations < 2:
        parser.error("--iterations must be >= 2 (the first iteration of each block is dropped)")
    if args.repeats < 1 or args.batch_size < 1 or args.threads < 0:
        parser.error("--repeats and --batch-size must be >= 1, --threads >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    registry = load_registry()
    try:
        trace = args.trace or default_trace(registry)
        setups = [build(spec, registry, trace, args.batch_size, args.lr, args.device) for spec in args.solver]
    except ParamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    gc.collect()
    gc.freeze()  # the long-lived objects (torch, registry, data) out of the collector's way: cheap per-block collects
    machine = machine_line(str(setups[0].train_data.device))
    order = ("blocks in ABBA order" if args.interleave == "block"
             else "iterations interleaved, H1 B1 H2 B2 ... and B1 H1 B2 H2 ... in alternate blocks")
    print(machine)
    print(f"config: {DATASET} | {FIELD} | {trace} trace | batch {args.batch_size} | Adam lr {args.lr} | "
          f"{args.repeats} block pairs per solver, {order}, first iteration of each block dropped")
    results = []
    for setup in setups:
        print(f"\n{setup.cell.describe()}")
        ok, probe = validate(setup, 3)
        if not ok:
            print(f"error: the harness and the baseline compute different losses for {setup.spec!r}; "
                  "the timing comparison would be invalid", file=sys.stderr)
            return EXIT_INVALID
        iterations = choose_iterations(args.iterations, probe, args.block_seconds)
        result = measure(setup, iterations, args.repeats, args.interleave)
        print(f"  max |loss harness - loss baseline| over all timed iterations: {result.max_loss_gap:.2e} nats")
        results.append(result)
    print()
    print(machine)
    print("ms/iter: median per-iteration wall-clock over all blocks, first iteration of each block dropped "
          "(harness: TrainingRecord.iteration_seconds of cnfbench.training.train); ratio: median over block pairs "
          "of harness/baseline block medians; overhead % = 100 * (ratio - 1)")
    whole_blocks = args.interleave == "block"
    if whole_blocks:
        print("wall ms/iter: whole block (the train() call) / iterations, warm-up included; block CPU-time "
              "overhead %: median over pairs of the blocks' process CPU-time ratio, minus 1")
    print(table(results, whole_blocks))
    failed = [r for r in results if args.check is not None and r.overhead_pct > args.check]
    for r in failed:
        print(f"check failed: {r.spec} overhead {r.overhead_pct:+.2f}% > {args.check}%", file=sys.stderr)
    return EXIT_CHECK_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
