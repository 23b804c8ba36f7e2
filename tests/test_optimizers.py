"""The optimizer axis, budgets in epochs and the best checkpoint by validation loss.

``adam`` is the axis's implicit component: cells made before the axis keep their ids and train exactly as
before. ``adamw`` carries decoupled weight decay, a warmup and schedule, gradient clipping and an EMA whose
weights are the ones validated and kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import Result
from cnfbench_plugins.optimizers import AdamW, schedule_factor
from conftest import read_cells

from cnfbench.config import RunConfig, resolve_cells
from cnfbench.contracts import Optimizer, TrainingOptimizer
from cnfbench.registry import load_registry
from cnfbench.testing import ConformanceError, check_optimizer

REGISTRY = load_registry()


@pytest.mark.parametrize("params", [None, {"weight_decay": 1e-5}, {"ema": 0.9, "clip": 1.0},
                                    {"schedule": "cosine", "warmup": 5}, {"schedule": "linear"}])
def test_adamw_passes_the_kit(params: dict | None) -> None:
    check_optimizer(AdamW, params)


def test_adam_passes_the_kit_and_stays_out_of_the_cell() -> None:
    check_optimizer(REGISTRY.get("optimizer", "adam").cls)
    (cell,) = resolve_cells(RunConfig(iterations=1), REGISTRY)
    assert "optimizer" not in cell.to_json() and cell.optimizer.label() == "adam"
    (other,) = resolve_cells(RunConfig(iterations=1, optimizer=("adamw",)), REGISTRY)
    assert other.to_json()["optimizer"]["name"] == "adamw" and other.cell_id != cell.cell_id


def test_the_schedule_warms_up_then_decays_to_zero() -> None:
    assert [schedule_factor("constant", 4, 100, step) for step in (0, 3, 4, 99)] == [0.25, 1.0, 1.0, 1.0]
    assert schedule_factor("cosine", 0, 100, 0) == 1.0 and schedule_factor("cosine", 0, 100, 50) == pytest.approx(0.5)
    assert schedule_factor("cosine", 0, 100, 100) == pytest.approx(0.0)
    assert schedule_factor("linear", 10, 110, 60) == pytest.approx(0.5)


def test_the_ema_is_the_exponential_average_of_the_iterates() -> None:
    torch.manual_seed(0)
    module = torch.nn.Linear(2, 1)
    update = AdamW(weight_decay=0.0, schedule="constant", warmup=0, clip=0.0, ema=0.5).build(module, 0.1, 10)
    expected = [p.detach().clone() for p in module.parameters()]
    x = torch.randn(16, 2)
    for _ in range(4):
        update.zero_grad()
        module(x).pow(2).mean().backward()
        update.step()
        expected = [0.5 * e + 0.5 * p.detach() for e, p in zip(expected, module.parameters(), strict=True)]
    averaged = update.averaged()
    assert averaged is not None
    assert torch.allclose(averaged["weight"], expected[0]) and torch.allclose(averaged["bias"], expected[1])
    assert not torch.allclose(averaged["weight"], module.weight)  # the EMA lags the iterate


def test_clipping_bounds_the_gradient_norm() -> None:
    module = torch.nn.Linear(3, 1)
    update = AdamW(weight_decay=0.0, schedule="constant", warmup=0, clip=0.01, ema=0.0).build(module, 0.1, 1)
    update.zero_grad()
    (1e3 * module(torch.ones(4, 3))).sum().backward()
    update.step()
    norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in module.parameters()))
    assert norm <= 0.01 + 1e-6


def test_the_kit_rejects_an_optimizer_that_does_not_train_or_draws_global_random_numbers() -> None:
    class Frozen(Optimizer):
        name = "frozen"
        description = "never moves the parameters"

        def build(self, module: torch.nn.Module, lr: float, iterations: int) -> TrainingOptimizer:
            class Update:
                def zero_grad(self) -> None: ...
                def step(self) -> None: ...
                def averaged(self) -> None:
                    return None
            return Update()

    with pytest.raises(ConformanceError, match="only"):
        check_optimizer(Frozen)

    class Noisy(Optimizer):
        name = "noisy"
        description = "SGD with noise from the global generator"

        def build(self, module: torch.nn.Module, lr: float, iterations: int) -> TrainingOptimizer:
            sgd = torch.optim.SGD(module.parameters(), lr=lr * 10)

            class Update:
                def zero_grad(self) -> None:
                    sgd.zero_grad()

                def step(self) -> None:
                    for p in module.parameters():
                        p.grad.add_(1e-6 * torch.randn_like(p))
                    sgd.step()

                def averaged(self) -> None:
                    return None
            return Update()

    with pytest.raises(ConformanceError, match="global random generator"):
        check_optimizer(Noisy)


def test_epochs_ema_and_best_loss_end_to_end(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli("run", "--objective", "cfm", "--solver", "euler[steps=4]", "--epochs", "3", "--iterations", "1",
                 "--optimizer", "adamw[ema=0.9,schedule=cosine,warmup=2]", "--val-every", "2",
                 "--select", "best_loss", "--name", "e")
    assert result.exit_code == 0, result.output
    rows = read_cells(tmp_path, "e")
    row = rows.iloc[0]
    assert row["epochs"] == 3 and row["iterations"] == 12 and row["iterations_done"] == 12  # 3 x 256 // 64
    assert row["status"] == "done" and math.isnan(row["best_val_nll"]) and math.isfinite(row["best_val_loss"])
    curves = pd.read_parquet(tmp_path / "results" / "e" / "curves.parquet")
    validated = curves.dropna(subset=["val_loss"])
    assert list(validated["iteration"]) == [2, 4, 6, 8, 10, 12]
    best = validated.loc[validated["val_loss"].idxmin()]
    assert row["selected_iteration"] == best["iteration"] and row["best_val_loss"] == best["val_loss"]


def test_epochs_need_a_dataset_that_declares_its_training_size(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli("run", "--dataset", "iris", "--epochs", "2", "--dry-run")
    assert result.exit_code == 2 and "--epochs needs the training split's size" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_select_best_loss_needs_validation(cli: Callable[..., Result]) -> None:
    result = cli("run", "--select", "best_loss", "--dry-run")
    assert result.exit_code == 2 and "--select best_loss needs --val-every K" in result.output


def test_a_plugin_optimizer_trains_a_cell(cli: Callable[..., Result], tmp_path: Path) -> None:
    plugin = tmp_path / "sgd_plugin.py"
    plugin.write_text('''
import torch
from cnfbench.contracts import Optimizer
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param


class Update:
    def __init__(self, optimizer):
        self.optimizer = optimizer

    def zero_grad(self):
        self.optimizer.zero_grad()

    def step(self):
        self.optimizer.step()

    def averaged(self):
        return None


class PlainSGD(Optimizer):
    name = "plain_sgd"
    description = "SGD with momentum, for the tests"
    params = (Param("momentum", "float", 0.5, "momentum"),)

    def build(self, module, lr, iterations):
        return Update(torch.optim.SGD(module.parameters(), lr=lr, momentum=self.config["momentum"]))


@hookimpl
def cnfbench_optimizers():
    return [PlainSGD]
''', encoding="utf-8")
    result = cli("run", "--plugin", str(plugin), "--optimizer", "plain_sgd[momentum=0.9],adam", "--name", "s")
    assert result.exit_code == 0, result.output
    rows = read_cells(tmp_path, "s")
    assert sorted(rows["optimizer_spec"]) == ["adam", "plain_sgd[momentum=0.9]"]
    assert set(rows["status"]) == {"done"} and rows["nll"].nunique() == 2
