"""The per-sample adaptive solvers (plugins/torchode_solvers.py): closed forms, per-row stepping, NFE, failures."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from cnfbench.contracts import StepCapReached
from cnfbench.dynamics import CNFDynamics, NFECounter, field_at_row_times, log_likelihood
from cnfbench.params import ParamError, parse_selection
from cnfbench.registry import load_registry
from cnfbench.testing import check_solver
from cnfbench.testing.reference import ExactLoopTrace, LearnableLinearODE, LinearODE, MLPField, TimeDependentODE
from tests.conftest import read_cells

F64 = torch.float64
REGISTRY = load_registry()
NAMES = ("torchode_dopri5", "torchode_tsit5")
A_MILD = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=F64)
Z0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.0, -1.0]], dtype=F64)


def make(selector: str):
    return REGISTRY.build("solver", REGISTRY.resolve("solver", parse_selection(selector)))


class RowRates(nn.Module):
    """``dz_i/dt = -k_i z_i`` with one rate per row: row ``i`` is stiffer the larger ``k_i``; counts its calls."""

    def __init__(self, rates: Tensor) -> None:
        super().__init__()
        self.rates = rates
        self.calls = 0

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.calls += 1
        return (-self.rates[:, None] * state[0],)


@pytest.mark.parametrize("name", NAMES)
def test_registered_as_per_sample_solvers_that_pass_the_kit(name: str) -> None:
    cls = REGISTRY.get("solver", name).cls
    assert cls.adaptive and cls.per_sample_time and cls.order == 5 and cls.libraries == ("torchode",)
    check_solver(cls)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("t0", "t1"), [(1.0, 0.0), (0.0, 1.0)])
def test_linear_ode_matches_the_matrix_exponential_and_tightens_with_the_tolerance(name: str, t0: float,
                                                                                     t1: float) -> None:
    exact = LinearODE(A_MILD).solution((Z0,), t0, t1)[0]
    errors = []
    for tolerance in (1e-4, 1e-7, 1e-10):
        (z,) = make(f"{name}[rtol={tolerance:g},atol={tolerance:g}]").integrate(LinearODE(A_MILD), (Z0.clone(),),
                                                                              t0, t1)
        errors.append((z - exact).abs().max().item())
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-8


@pytest.mark.parametrize("name", NAMES)
def test_time_dependent_closed_form_with_per_row_times(name: str) -> None:
    dynamics = TimeDependentODE()
    zeros = torch.zeros(3, dtype=F64)
    z, constant, linear = make(f"{name}[rtol=1e-9,atol=1e-9]").integrate(dynamics, (Z0, zeros, zeros), 1.0, 0.0)
    exact = dynamics.solution((Z0, zeros, zeros), 1.0, 0.0)
    assert dynamics.row_time_calls == dynamics.calls > 0  # every evaluation had one time per row
    assert torch.allclose(z, exact[0], atol=1e-7) and torch.allclose(constant, exact[1], atol=1e-9)
    assert torch.allclose(linear, exact[2], atol=1e-9)


def test_each_row_steps_on_its_own_clock() -> None:
    """An easy row takes fewer steps than a stiff one in the same batch, and ends where it would alone."""
    rates = torch.tensor([0.5, 5.0, 40.0], dtype=F64)
    solver = make("torchode_dopri5[rtol=1e-7,atol=1e-7]")
    dynamics = RowRates(rates)
    (z,) = solver.integrate(dynamics, (Z0.clone(),), 0.0, 1.0)
    steps = solver.step_statistics()
    accepted, rejected = steps["accepted"], steps["rejected"]
    assert accepted.dtype == torch.long and accepted.shape == (3,) and rejected.shape == (3,)
    assert accepted[0] < accepted[1] < accepted[2]
    assert torch.allclose(z, Z0 * torch.exp(-rates)[:, None], rtol=1e-5, atol=1e-6)
    for row in range(3):
        alone = make("torchode_dopri5[rtol=1e-7,atol=1e-7]")
        (z_row,) = alone.integrate(RowRates(rates[row : row + 1]), (Z0[row : row + 1].clone(),), 0.0, 1.0)
        assert torch.allclose(z_row, z[row : row + 1], rtol=0, atol=1e-13)
        assert alone.step_statistics()["accepted"].item() == accepted[row].item()
    # The batch is evaluated as a whole until its slowest row is done: the calls follow the stiffest row.
    stiff_alone = RowRates(rates[2:])
    make("torchode_dopri5[rtol=1e-7,atol=1e-7]").integrate(stiff_alone, (Z0[2:].clone(),), 0.0, 1.0)
    assert dynamics.calls == stiff_alone.calls


def test_harness_counts_every_call_of_the_batched_dynamics() -> None:
    field = MLPField(2, seed=1, dtype=F64)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    counter = NFECounter()
    solver = make("torchode_dopri5[rtol=1e-8,atol=1e-8]")
    logp = log_likelihood(CNFDynamics(field, ExactLoopTrace(), counter, differentiable=False), solver, x, "eval",
                          None)
    reference = log_likelihood(CNFDynamics(field, ExactLoopTrace(), NFECounter(), differentiable=False),
                               make("dopri5[rtol=1e-10,atol=1e-10]"), x, "eval", None)
    assert torch.allclose(logp, reference, atol=1e-6)
    statistics = solver.step_statistics()
    # dopri5 costs 6 evaluations a step (first-same-as-last) plus the initial step selection's.
    assert counter.totals["eval"] >= 6 * int((statistics["accepted"] + statistics["rejected"]).max())


def test_field_without_per_row_time_is_evaluated_once_per_distinct_time() -> None:
    field = MLPField(3, seed=2, dtype=F64)  # takes a 0-dim t only
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.tensor([0.1, 0.7, 0.1, 0.3, 0.7], dtype=F64)
    dz, calls = field_at_row_times(field, t, z)
    assert calls == 3
    for row in range(5):
        assert torch.allclose(dz[row : row + 1], field(t[row], z[row : row + 1]), rtol=0, atol=1e-15)


def test_gradients_agree_with_torchdiffeq() -> None:
    def gradients(selector: str) -> list[Tensor]:
        dynamics = LearnableLinearODE(torch.tensor([[-0.3, 0.9], [-0.7, 0.2]], dtype=F64),
                                      torch.tensor([0.1, -0.2], dtype=F64))
        z = Z0.clone().requires_grad_(True)
        (end,) = make(selector).integrate(dynamics, (z,), 1.0, 0.0)
        (end**2).sum().backward()
        return [z.grad, dynamics.weight.grad, dynamics.bias.grad]

    for ours, theirs in zip(gradients("torchode_dopri5[rtol=1e-9,atol=1e-9]"),
                            gradients("dopri5[rtol=1e-9,atol=1e-9]"), strict=True):
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_max_steps_raises_the_contracts_step_cap(name: str) -> None:
    with pytest.raises(StepCapReached, match=r"3 of 3 rows took max_steps=2 steps"):
        make(f"{name}[max_steps=2,rtol=1e-10,atol=1e-10]").integrate(RowRates(torch.tensor([1.0, 2.0, 3.0],
                                                                                          dtype=F64)),
                                                                    (Z0.clone(),), 0.0, 1.0)


def test_a_parameter_it_lacks_is_one_line_naming_the_valid_ones() -> None:
    with pytest.raises(ParamError) as error:
        REGISTRY.resolve("solver", parse_selection("torchode_dopri5[adjoint=true]"))
    message = str(error.value)
    assert "\n" not in message and "adjoint" in message
    assert all(name in message for name in ("rtol", "atol", "max_steps"))


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchode", None)
    with pytest.raises(Exception, match=r"pip install cnfbench\[torchode\]"):
        make("torchode_tsit5")


def test_a_run_reports_per_sample_step_statistics(cli, tmp_path: Path) -> None:
    result = cli("run", "--solver", "dopri5,torchode_dopri5", "--name", "per-sample")
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "per-sample").set_index("solver")
    assert (cells["status"] == "done").all()
    ours = cells.loc["torchode_dopri5"]
    assert ours["steps_accepted_mean"] >= 1 and ours["steps_accepted_max"] >= ours["steps_accepted_mean"]
    assert ours["steps_rejected_max"] >= ours["steps_rejected_mean"] >= 0
    assert ours["nfe_eval"] >= 6 * ours["steps_accepted_max"]
    assert all(math.isnan(cells.loc["dopri5", column]) for column in ("steps_accepted_mean", "steps_rejected_max"))
    assert abs(ours["nll"] - cells.loc["dopri5", "nll"]) < 1e-3


def test_the_side_by_side_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/bench_torchode.py --quick: trains, evaluates both solvers and prints one row per dataset and
    tolerance, with NFE, steps per point, times and NLL errors."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_torchode.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--datasets", "8gaussians", "--tolerances",
                           "1e-5,1e-7"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 8gaussians (D=2) |")]
    assert len(rows) == 2
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert int(cells[2]) > 0 and int(cells[3]) > 0  # NFE of each solver
        assert float(cells[5].split()[0]) >= 1  # torchode's accepted steps per point
        assert float(cells[10]) == pytest.approx(float(cells[11]), abs=1e-3)  # the two NLLs agree
        assert float(cells[12]) == pytest.approx(float(cells[11]) - float(cells[10]), abs=1e-4)  # their difference
