"""Built-in optimizers: Adam as cnfbench has always trained, and AdamW with a schedule, clipping and an EMA.

``adam`` is the parameterless default (``torch.optim.Adam`` at the budget's learning rate): cells made before
the optimizer axis existed used it, and leave the axis out of their JSON. ``adamw`` carries what the
flow-matching literature trains with: decoupled weight decay (Loshchilov & Hutter 2019), a warmup and a cosine or
linear decay of the learning rate, gradient clipping by global norm and an exponential moving average of the
weights (the averaged weights are the ones validated, evaluated and kept).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from cnfbench.contracts import Optimizer, TrainingOptimizer
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param

SCHEDULES = ("constant", "cosine", "linear")


def schedule_factor(schedule: str, warmup: int, iterations: int, step: int) -> float:
    """The learning-rate multiplier after ``step`` updates: a linear warmup over ``warmup`` updates, then
    ``schedule`` (constant, or a cosine or linear decay to 0 at ``iterations``)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(iterations - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


class _Update:
    """A torch optimizer with an optional schedule, gradient clipping by global norm and weight average."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, clip: float,
                 ema: float) -> None:
        self.module, self.optimizer, self.schedule, self.clip, self.ema = module, optimizer, schedule, clip, ema
        self.parameters = [p for p in module.parameters() if p.requires_grad]
        self.names = [name for name, p in module.named_parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.parameters] if ema else None

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip)
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        if self.average is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self.average, [p.detach() for p in self.parameters], 1.0 - self.ema)

    def averaged(self) -> dict[str, Tensor] | None:
        if self.average is None:
            return None
        state = {name: value.detach().clone() for name, value in self.module.state_dict().items()}
        state.update({name: value.clone() for name, value in zip(self.names, self.average, strict=True)})
        return state


class Adam(Optimizer):
    name = "adam"
    description = "Adam (torch.optim.Adam, betas 0.9/0.999) at the budget's --lr: no decay, schedule, clipping or EMA"

    def build(self, module: nn.Module, lr: float, iterations: int) -> TrainingOptimizer:
        trainable = [p for p in module.parameters() if p.requires_grad]
        return _Update(module, torch.optim.Adam(trainable, lr=lr), None, 0.0, 0.0)


class AdamW(Optimizer):
    name = "adamw"
    description = ("AdamW (torch.optim.AdamW) at the budget's --lr, with a warmup and schedule, gradient clipping "
                   "and an exponential moving average of the weights (the EMA weights are validated and kept)")
    params = (
        Param("weight_decay", "float", 0.01, "decoupled weight decay (torch's default 0.01)", minimum=0, maximum=10),
        Param("schedule", "str", "constant", "learning-rate schedule after the warmup", choices=SCHEDULES),
        Param("warmup", "int", 0, "iterations of linear learning-rate warmup", minimum=0, maximum=10**8),
        Param("clip", "float", 0.0, "largest global gradient norm (0: no clipping)", minimum=0, maximum=1e6),
        Param("ema", "float", 0.0, "decay of the weights' exponential moving average (0: none, e.g. 0.999)",
              minimum=0, maximum=0.999999),
    )

    def build(self, module: nn.Module, lr: float, iterations: int) -> TrainingOptimizer:
        trainable = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=float(self.config["weight_decay"]))
        schedule_name, warmup = str(self.config["schedule"]), int(self.config["warmup"])
        schedule = None
        if schedule_name != "constant" or warmup:
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: schedule_factor(schedule_name, warmup, iterations, step))
        return _Update(module, optimizer, schedule, float(self.config["clip"]), float(self.config["ema"]))


@hookimpl
def cnfbench_optimizers() -> list[type[Optimizer]]:
    return [Adam, AdamW]
