"""``cnfbench new-plugin``: the scaffolded package passes the conformance kit, installs, and is found and run."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from cnfbench.cli import main
from cnfbench.scaffold import FAMILY_ORDER, ScaffoldError, component_names, package_name, render_plugin
from cnfbench.testing import check_objective, check_plugin, plugin_components

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def new_plugin(*args: str) -> Result:
    return CliRunner().invoke(main, ["new-plugin", *args], catch_exceptions=False)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def import_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Import ``<package>.plugin`` from a scaffolded folder's ``src``, and forget it afterwards."""
    imported: list[str] = []

    def load(folder: Path) -> ModuleType:
        package = package_name(folder.name)
        monkeypatch.syspath_prepend(str(folder / "src"))
        imported.append(package)
        return importlib.import_module(f"{package}.plugin")

    yield load
    for name in [name for name in sys.modules if any(name.split(".")[0] == pkg for pkg in imported)]:
        del sys.modules[name]


def test_every_family_passes_the_conformance_kit(tmp_path: Path, import_plugin) -> None:
    result = new_plugin("kit-probe-all", "--family", "all", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    folder = tmp_path / "kit-probe-all"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "README.md", "pyproject.toml", "src/kit_probe_all/__init__.py", "src/kit_probe_all/plugin.py",
        "tests/test_plugin.py",
    ]
    plugin = import_plugin(folder)
    assert check_plugin(plugin) == [
        "dataset 'kit_probe_all_gaussian'", "field 'kit_probe_all_mlp'", "objective 'kit_probe_all_cfm'",
        "solver 'kit_probe_all_heun'", "trace 'kit_probe_all_exact'", "optimizer 'kit_probe_all_sgd'",
        "executor 'kit_probe_all_pool'", "tracker 'kit_probe_all_csv'", "protocol 'kit_probe_all_toy'",
        "metric 'kit_probe_all_mean_shift'",
    ]
    for name in component_names("kit-probe-all", FAMILY_ORDER).values():
        assert name in result.output  # the next-steps hint names the components


def test_default_is_one_field(tmp_path: Path, import_plugin) -> None:
    result = new_plugin("kit-probe-default", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    plugin = import_plugin(tmp_path / "kit-probe-default")
    assert [(family, cls.name) for family, cls in plugin_components(plugin)] == [("field", "kit_probe_default_mlp")]
    assert not hasattr(plugin, "cnfbench_solvers")
    assert "cnfbench run --field kit_probe_default_mlp" in result.output


@pytest.mark.parametrize("families", ["solver", "trace", "dataset", "objective", "executor", "tracker", "metric",
                                      "field,trace", "field,objective", "all"])
def test_every_family_combination_is_valid_python(families: str) -> None:
    files = render_plugin("combo", families.split(","))
    for path, text in files.items():
        if path.endswith(".py"):
            compile(text, path, "exec")
    plugin_source = files["src/combo/plugin.py"]
    wanted = FAMILY_ORDER if families == "all" else families.split(",")
    for family in FAMILY_ORDER:
        hook = {"field": "cnfbench_fields", "solver": "cnfbench_solvers", "trace": "cnfbench_traces",
                "dataset": "cnfbench_datasets", "objective": "cnfbench_objectives",
                "optimizer": "cnfbench_optimizers", "executor": "cnfbench_executors",
                "tracker": "cnfbench_trackers", "metric": "cnfbench_metrics",
                "protocol": "cnfbench_protocols"}[family]
        assert (f"def {hook}()" in plugin_source) == (family in wanted)


def test_the_objective_plugin_passes_its_own_tests_and_trains_a_cell(tmp_path: Path, import_plugin, cli) -> None:
    result = new_plugin("kit-probe-objective", "--family", "objective", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "cnfbench run --objective kit_probe_objective_cfm" in result.output
    folder = tmp_path / "kit-probe-objective"
    plugin = import_plugin(folder)
    assert [(family, cls.name) for family, cls in plugin_components(plugin)] == [
        ("objective", "kit_probe_objective_cfm")]
    check_objective(plugin.FlowMatching, {"sigma": 0.1})

    # Its generated test file passes as written (the entry-point test is skipped: the package is not installed).
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests"],
                           cwd=folder, capture_output=True, text=True, timeout=300, env=CHILD_ENV)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "1 passed, 1 skipped" in tests.stdout, tests.stdout

    # cnfbench trains with it: a cell per solver, both done.
    run = cli("run", "--plugin", str(folder / "src" / "kit_probe_objective" / "plugin.py"), "--objective",
              "kit_probe_objective_cfm[sigma=0.01]", "--solver", "euler[steps=2],rk4[steps=1]", "--name", "fm",
              "--isolation", "inline")
    assert run.exit_code == 0, run.output
    cells = pd.read_parquet(tmp_path / "results" / "fm" / "cells.parquet")
    assert list(cells["objective"]) == ["kit_probe_objective_cfm"] * 2, cells
    assert list(cells["status"]) == ["done", "done"], cells[["solver", "status"]]


def test_the_executor_plugin_passes_the_kit_and_runs_a_sweep(tmp_path: Path, import_plugin, cli) -> None:
    from cnfbench.testing import check_executor

    result = new_plugin("kit-probe-executor", "--family", "executor", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "cnfbench run --executor kit_probe_executor_pool" in result.output
    folder = tmp_path / "kit-probe-executor"
    plugin = import_plugin(folder)
    assert [(family, cls.name) for family, cls in plugin_components(plugin)] == [
        ("executor", "kit_probe_executor_pool")]
    check_executor(plugin.PoolExecutor, {"workers": 2})

    run = cli("run", "--plugin", str(folder / "src" / "kit_probe_executor" / "plugin.py"), "--executor",
              "kit_probe_executor_pool[workers=2]", "--solver", "euler[steps=2],rk4[steps=1]", "--name", "pool")
    assert run.exit_code == 0, run.output
    cells = pd.read_parquet(tmp_path / "results" / "pool" / "cells.parquet")
    assert list(cells["status"]) == ["done", "done"], cells[["solver", "status", "reason"]]
    assert set(cells["executor"]) == {"kit_probe_executor_pool[workers=2]"} and set(cells["concurrency"]) == {2}


def test_the_tracker_plugin_logs_every_iteration_of_a_sweep(tmp_path: Path, import_plugin, cli) -> None:
    from cnfbench.testing import check_tracker

    result = new_plugin("kit-probe-tracker", "--family", "tracker", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    plugin = import_plugin(tmp_path / "kit-probe-tracker")
    check_tracker(plugin.CsvTracker)
    run = cli("run", "--plugin", str(tmp_path / "kit-probe-tracker" / "src" / "kit_probe_tracker" / "plugin.py"),
              "--tracker", "kit_probe_tracker_csv", "--solver", "euler[steps=2]", "--name", "csv")
    assert run.exit_code == 0, run.output
    lines = (tmp_path / "results" / "csv" / "kit_probe_tracker_csv.csv").read_text().splitlines()
    curves = pd.read_parquet(tmp_path / "results" / "csv" / "curves.parquet")
    assert sum(",loss_nats," in line for line in lines) == len(curves)


def test_the_metric_plugin_adds_its_column_to_a_run_and_to_a_finished_one(tmp_path: Path, import_plugin,
                                                                         cli) -> None:
    from cnfbench.testing import check_metric

    result = new_plugin("kit-probe-metric", "--family", "metric", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    plugin = import_plugin(tmp_path / "kit-probe-metric")
    check_metric(plugin.MeanShift)
    source = str(tmp_path / "kit-probe-metric" / "src" / "kit_probe_metric" / "plugin.py")
    run = cli("run", "--plugin", source, "--metrics", "default,kit_probe_metric_mean_shift", "--solver",
              "euler[steps=2]", "--name", "shift")
    assert run.exit_code == 0, run.output
    cells = pd.read_parquet(tmp_path / "results" / "shift" / "cells.parquet")
    (shift,) = cells["kit_probe_metric_mean_shift"]
    assert 0 < shift < 10 and "kit_probe_metric_mean_shift" in cells["metrics"].iloc[0]
    plain = cli("run", "--solver", "euler[steps=2]", "--name", "plain")
    assert plain.exit_code == 0, plain.output
    added = cli("evaluate", str(tmp_path / "results" / "plain"), "--plugin", source, "--metrics",
                "kit_probe_metric_mean_shift")
    assert added.exit_code == 0, added.output
    before = pd.read_parquet(tmp_path / "results" / "shift" / "cells.parquet").iloc[0]
    after = pd.read_parquet(tmp_path / "results" / "plain" / "cells.parquet").iloc[0]
    assert after["kit_probe_metric_mean_shift"] == shift  # same model, same sampling draws
    assert after["nll_ref"] == before["nll_ref"]  # kept from the first evaluation, not recomputed


def test_pyproject_readme_and_tests_point_at_the_plugin(tmp_path: Path) -> None:
    files = render_plugin("My-Flows", ["field", "solver"])
    project = tomllib.loads(files["pyproject.toml"])
    assert project["project"]["name"] == "My-Flows"
    assert any(dep.startswith("cnfbench") for dep in project["project"]["dependencies"])
    assert project["project"]["entry-points"]["cnfbench"] == {"my_flows": "my_flows.plugin"}
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"
    readme = files["README.md"]
    for command in ("pip install -e ./My-Flows", "cnfbench plugins", "cnfbench run --field my_flows_mlp "
                    "--solver my_flows_heun", "pytest My-Flows/tests"):
        assert command in readme
    test_source = files["tests/test_plugin.py"]
    assert "from cnfbench.testing import" in test_source and "from my_flows import plugin" in test_source


@pytest.mark.parametrize(("name", "fragment"), [
    ("1flows", "invalid plugin name '1flows'"),
    ("my flows", "invalid plugin name 'my flows'"),
    ("my--flows", "invalid plugin name"),
    ("flows-", "invalid plugin name"),
    ("my.flows", "invalid plugin name"),
    ("class", "'class' is a Python keyword"),
    ("json", "would shadow an existing module"),
    ("cnfbench", "would shadow an existing module"),
])
def test_invalid_names_are_one_line_errors(tmp_path: Path, name: str, fragment: str) -> None:
    assert_one_line_error(new_plugin(name, "--dir", str(tmp_path)), fragment)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ScaffoldError):
        package_name(name)


def test_unknown_family_is_a_one_line_error(tmp_path: Path) -> None:
    assert_one_line_error(new_plugin("flows", "--family", "field,fields", "--dir", str(tmp_path)),
                          "unknown family 'fields'", "field, solver, trace, dataset")
    assert not any(tmp_path.iterdir())


def test_refuses_a_non_empty_folder_but_fills_an_empty_one(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    assert new_plugin("flows", "--dir", str(tmp_path)).exit_code == 0
    keep = tmp_path / "flows" / "README.md"
    keep.write_text("mine")
    assert_one_line_error(new_plugin("flows", "--family", "all", "--dir", str(tmp_path)), "not empty")
    assert keep.read_text() == "mine"


def test_dir_is_created_when_missing(tmp_path: Path) -> None:
    result = new_plugin("flows", "--dir", str(tmp_path / "a" / "b"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "b" / "flows" / "src" / "flows" / "plugin.py").is_file()


# --------------------------------------------------------------------------- installed end to end


def _overlay_environment(root: Path) -> Path:
    """A fresh virtual environment layered over this one: it sees every package installed here.

    Installing into it proves ``pip install -e`` and entry-point discovery exactly as in this environment,
    without ever touching this (shared) environment, even if the test is killed half-way.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, capture_output=True,
                   timeout=120)
    python = root / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    here = sysconfig.get_paths()["purelib"]
    Path(purelib, "_cnfbench_parent_env.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    return python


# Tiny tensors: extra threads only wait for a core on a busy machine. Plugin autoloading on, no extra plugins.
CHILD_ENV = {key: value for key, value in os.environ.items()
             if key not in ("CNFBENCH_DISABLE_PLUGIN_AUTOLOAD", "CNFBENCH_PLUGINS")}
CHILD_ENV |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=CHILD_ENV)
    print(f"{time.perf_counter() - started:6.1f}s  {' '.join(argv[1:4])}")
    assert result.returncode == 0, f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def test_installed_plugin_is_found_through_its_entry_point_and_runs(tmp_path: Path) -> None:
    assert new_plugin("kit-probe-installed", "--dir", str(tmp_path)).exit_code == 0
    folder = tmp_path / "kit-probe-installed"
    python = str(_overlay_environment(tmp_path / "venv"))
    try:
        _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
              "-e", str(folder)])

        listing = json.loads(_run([python, "-m", "cnfbench", "plugins", "--json"]).stdout)
        mine = [info for info in listing["plugins"] if info["origin"] == "kit_probe_installed.plugin"]
        assert len(mine) == 1 and mine[0]["source"] == "entry point" and mine[0]["error"] is None, mine
        fields = {entry["name"]: entry for entry in listing["components"]["fields"]}
        assert fields["kit_probe_installed_mlp"]["plugin"] == mine[0]["name"]
        assert [p["name"] for p in fields["kit_probe_installed_mlp"]["params"]] == ["hidden", "depth"]

        out = tmp_path / "results"
        _run([python, "-m", "cnfbench", "run", "--field", "kit_probe_installed_mlp[hidden=16]",
              "--solver", "euler[steps=2]", "--iterations", "2", "--batch-size", "32",
              "--dataset", "8gaussians[n_train=64,n_val=16,n_test=32]", "--mass-grid", "8",
              "--ref-solver", "rk4[steps=4]", "--allow-loose-ref", "--quiet", "--out", str(out), "--name", "s"])
        cells = pd.read_parquet(out / "s" / "cells.parquet")
        row = cells[cells["field"] == "kit_probe_installed_mlp"]
        assert len(row) == 1 and row["status"].iloc[0] == "done", cells[["field", "status"]]

        # The generated tests pass, the entry-point one included (it is skipped only when not installed).
        tests = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(folder / "tests")])
        assert "2 passed" in tests.stdout and "skipped" not in tests.stdout, tests.stdout
    finally:  # the overlay lives in tmp_path anyway; uninstalling keeps the test honest about cleaning up
        subprocess.run([python, "-m", "pip", "uninstall", "-y", "--quiet", "kit-probe-installed"],
                       capture_output=True, timeout=120)
    # This environment never saw it.
    assert not any(ep.name == "kit_probe_installed" for ep in importlib.metadata.entry_points(group="cnfbench"))
