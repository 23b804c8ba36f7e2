"""Bad input stops before training: one ``Error:`` line naming the culprit, exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnfbench.cells import Budget, Cell, EvalProtocol
from cnfbench.execute import classify_failure
from cnfbench.registry import ResolvedComponent, load_registry

BAD_INPUTS = [
    (["--solver", "eulr"], "unknown solver 'eulr'; known solvers: adaptive_heun, bosh3, dopri5"),
    (["--dataset", "9gaussians"], "unknown dataset '9gaussians'; known datasets: 2spirals, 8gaussians"),
    (["--field", "resnet"], "unknown field 'resnet'; known fields: concatsquash, hollow, mlp"),
    (["--trace", "hutch"], "unknown trace 'hutch'; known traces: exact, exact_loop, hutchinson, hutchpp"),
    (["--solver", "euler[step=3]"], "unknown parameter 'step' for solver 'euler'; valid parameters: adjoint, steps"),
    (["--solver", "dopri5[rtol=small]"], "bad value 'small' for solver 'dopri5' parameter 'rtol': expected number"),
    (["--solver", "euler[steps=0]"], "parameter 'steps': must be >= 1"),
    (["--trace", "hutchinson[noise=uniform]"], "expected one of gaussian, rademacher"),
    (["--field", "concatsquash[activation=relu]"], "expected one of tanh, softplus, elu, swish"),
    (["--solver", "euler[steps=3"], "unbalanced '['"),
    (["--eval-trace", "hutchinson"], "--eval-trace must be an exact"),
    (["--name", "../escape"], "invalid run name '../escape'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--plugin", "no_such_module_xyz"], "plugin 'no_such_module_xyz' failed to load: ModuleNotFoundError"),
    (["--plugin", "missing_file.py"], "plugin file 'missing_file.py' does not exist"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_nothing_written(cli, tmp_path: Path, args: list[str], message: str) -> None:
    result = cli("run", "--name", "bad", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert message in lines[0]
    assert not (tmp_path / "results").exists()


def test_bad_config_files(cli, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("solver = [euler\n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('solvers = "euler"\n')
    typed = tmp_path / "typed.toml"
    typed.write_text('iterations = "many"\n')
    for path, fragment in [(broken, "is not valid TOML"), (unknown, "unknown key 'solvers'"),
                           (typed, "'iterations' must be an integer"), (tmp_path / "nope.toml", "cannot read")]:
        result = cli("run", "--config", str(path))
        assert result.exit_code == 2, (path, result.output)
        assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_click_usage_errors_are_one_line_too(cli) -> None:
    result = cli("run", "--iterations", "many", tiny=False)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: Invalid value for '--iterations': 'many' is not a valid integer."
    ]


@pytest.mark.parametrize("args", [["--family", "solvr"], ["--family", "solver,trcae", "--json"]])
def test_plugins_unknown_family_is_one_line_naming_the_valid_ones(cli, args: list[str]) -> None:
    result = cli("plugins", *args)
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    bad, close = ("solvr", "solver") if "solvr" in args else ("trcae", "trace")
    assert line == (f"Error: unknown family {bad!r} for --family; families: dataset, field, objective, solver, "
                    f"trace, optimizer, executor, tracker, protocol, metric; did you mean {close!r}?")


def test_console_script_exit_code_and_single_line() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "cnfbench", "run", "--solver", "nope", "--dry-run"],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("Error: unknown solver 'nope'")
    assert "Traceback" not in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30))
def test_random_solver_selectors_never_crash(cli, text: str) -> None:
    result = cli("run", "--solver", text, "--dry-run")
    assert result.exit_code in (0, 2)
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("Error: ")


def _cell() -> Cell:
    spec = ResolvedComponent("x", ())
    axes = {"dataset": ResolvedComponent("8gaussians", ()), "field": ResolvedComponent("concatsquash", ()),
            "objective": ResolvedComponent("mle", ()), "solver": ResolvedComponent("dopri5", ()),
            "trace": ResolvedComponent("exact", ())}
    return Cell(axes, 0, Budget(1, 1, 1e-3), EvalProtocol({"eval_trace": spec, "ref_solver": spec}, "float64", 1),
                "cpu")


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (AssertionError("underflow in dt 0.0"), "diverged"),
        (AssertionError("max_num_steps exceeded (10>=10)"), "budget"),
        (ValueError("boom"), "error"),
    ],
)
def test_solver_failures_are_classified(exc: Exception, status: str) -> None:
    got, reason = classify_failure(exc, load_registry(), _cell())
    assert got == status
    assert reason and "\n" not in reason
