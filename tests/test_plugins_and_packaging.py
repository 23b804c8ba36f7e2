"""Plugin loading, the component registry, ``cnfbench plugins`` and the built wheel's contents."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cnfbench.contracts import FAMILIES
from cnfbench.params import ParamError, parse_selection
from cnfbench.plugin_manager import PluginLoadError
from cnfbench.registry import RegistryError, load_registry

REPO = Path(__file__).resolve().parents[1]

DUPLICATE_SOLVER = '''
from cnfbench.hookspecs import hookimpl
from cnfbench_plugins.torchdiffeq_solvers import SOLVER_CLASSES

class Impostor(SOLVER_CLASSES[0]):
    pass

@hookimpl
def cnfbench_solvers():
    return [Impostor]
'''


def test_builtins_are_entry_point_plugins_like_any_other() -> None:
    registry = load_registry()
    builtins = {info.name: info for info in registry.plugins if info.source == "built-in"}
    assert set(builtins) == {"cnfbench:datasets", "cnfbench:fields", "cnfbench:objectives", "cnfbench:solvers",
                             "cnfbench:traces", "cnfbench:bundled", "cnfbench:tabular", "cnfbench:executors",
                             "cnfbench:cluster_executors", "cnfbench:trackers", "cnfbench:torchode_solvers",
                             "cnfbench:metrics", "cnfbench:optimizers", "cnfbench:protocols"}
    assert all(info.origin.startswith("cnfbench_plugins.") for info in builtins.values())
    assert registry.get("solver", "dopri5").plugin == "cnfbench:solvers"
    assert registry.get("solver", "torchode_dopri5").plugin == "cnfbench:torchode_solvers"
    assert registry.get("dataset", "8gaussians").plugin == "cnfbench:datasets"


def test_builtin_families_are_complete() -> None:
    registry = load_registry()
    assert {"euler", "midpoint", "rk4", "heun2", "heun3", "dopri5", "dopri8", "bosh3", "fehlberg2",
            "adaptive_heun"} <= set(registry.names("solver"))
    assert set(registry.names("trace")) >= {"exact", "hutchinson"}
    assert set(registry.names("field")) >= {"concatsquash", "mlp"}
    assert {"swissroll", "circles", "rings", "moons", "8gaussians", "pinwheel", "2spirals",
            "checkerboard"} <= set(registry.names("dataset"))
    for family in FAMILIES:
        for entry in registry.entries(family):
            assert entry.cls.description, f"{family} {entry.name} has no description"


def test_resolve_fills_every_declared_parameter() -> None:
    registry = load_registry()
    resolved = registry.resolve("solver", parse_selection("dopri5[rtol=1e-6]"))
    assert resolved.kwargs == {"rtol": 1e-6, "atol": 1e-5, "max_steps": 10000, "adjoint": False}
    assert resolved.label() == "dopri5[rtol=1e-06,atol=1e-05,max_steps=10000,adjoint=false]"
    with pytest.raises(ParamError, match="unknown solver 'dopri6'; known solvers: adaptive_heun"):
        registry.resolve("solver", parse_selection("dopri6"))


def test_plugin_file_adds_components(tmp_path: Path) -> None:
    plugin = tmp_path / "extra.py"
    plugin.write_text(
        "from cnfbench.hookspecs import hookimpl\n"
        "from cnfbench_plugins.traces import ExactTrace\n"
        "class Mine(ExactTrace):\n    name = 'mine'\n    description = 'a copy of exact'\n"
        "@hookimpl\ndef cnfbench_traces():\n    return [Mine]\n"
    )
    registry = load_registry([str(plugin)])
    assert registry.get("trace", "mine").plugin == str(plugin)
    assert any(info.source == "file" for info in registry.plugins)


def test_duplicate_component_names_are_an_error_naming_both_plugins(tmp_path: Path) -> None:
    plugin = tmp_path / "dup.py"
    plugin.write_text(DUPLICATE_SOLVER)
    with pytest.raises(RegistryError, match=r"provided twice: by plugin 'cnfbench:solvers' and by plugin '.*dup.py'"):
        load_registry([str(plugin)])


def test_plugin_that_fails_to_import_names_itself(tmp_path: Path) -> None:
    plugin = tmp_path / "broken.py"
    plugin.write_text("raise RuntimeError('broken on purpose')\n")
    with pytest.raises(PluginLoadError, match="broken.py' failed to load: RuntimeError: broken on purpose"):
        load_registry([str(plugin)])


def test_plugins_command_lists_components_parameters_and_providers(cli) -> None:
    result = cli("plugins")
    assert result.exit_code == 0
    assert "cnfbench:solvers" in result.output
    assert "steps: integer = 10" in result.output
    assert "noise: string (gaussian|rademacher) = gaussian" in result.output
    data = json.loads(cli("plugins", "--json").output)
    euler = next(item for item in data["components"]["solvers"] if item["name"] == "euler")
    assert euler["plugin"] == "cnfbench:solvers"
    assert {p["name"]: p["default"] for p in euler["params"]} == {"steps": 10, "adjoint": False}


def test_built_wheel_contains_the_plugins_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("cnfbench-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for module in ("__init__", "torchdiffeq_solvers", "traces", "fields", "toy_datasets", "objectives",
                   "bundled_datasets", "tabular"):
        assert f"cnfbench_plugins/{module}.py" in names
    assert not any(name.startswith("plugins/") for name in names)
    assert "[cnfbench]" in entry_points and "cnfbench_plugins.torchdiffeq_solvers" in entry_points
