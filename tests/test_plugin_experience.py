"""Writing plugins: the three ways in, guarded loading, observer hooks, and documented hooks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import read_cells

from cnfbench.hookspecs import HOOK_NAMES

REPO = Path(__file__).resolve().parents[1]

MINE_PLUGIN = '''
import torch
from cnfbench.contracts import SPLIT_PARAMS, SampledDataset, TraceEstimator, VectorField
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param


class MyField(VectorField):
    name = "mine"
    description = "a linear field with a learnable matrix"
    params = (Param("scale", "float", 0.1, "initial scale", minimum=0.0),)

    def __init__(self, dim, scale=0.1):
        super().__init__(dim, scale=scale)
        self.A = torch.nn.Parameter(scale * torch.randn(dim, dim))

    def forward(self, t, z):
        return z @ self.A.T


class MyTrace(TraceEstimator):
    name = "mine"
    description = "exact trace, one row of the Jacobian at a time"

    def __call__(self, field, t, z, create_graph):
        dz = field(t, z)
        div = sum(torch.autograd.grad(dz[:, i].sum(), z, create_graph=create_graph, retain_graph=True)[0][:, i]
                  for i in range(z.shape[1]))
        return dz, div


class Blob(SampledDataset):
    name = "blob"
    description = "one isotropic 2D Gaussian"
    params = SPLIT_PARAMS

    @property
    def dim(self):
        return 2

    def sample(self, n, generator):
        return torch.randn(n, 2, generator=generator)


@hookimpl
def cnfbench_fields():
    return [MyField]


@hookimpl
def cnfbench_traces():
    return [MyTrace]


@hookimpl
def cnfbench_datasets():
    return [Blob]
'''

OBSERVER_PLUGIN = '''
import hashlib
import json
import os

from cnfbench.hookspecs import hookimpl


@hookimpl
def cnfbench_cell_metrics(cell, field, test):
    return {"weight_norm": float(sum(p.norm() ** 2 for p in field.parameters()) ** 0.5),
            "test_points": int(test.shape[0]), "seen_seed": cell["seed"], "worker_pid": os.getpid()}


@hookimpl
def cnfbench_cell_finished(row, run_dir):
    with open(os.path.join(run_dir, "observed.jsonl"), "a") as stream:
        stream.write(json.dumps({"cell_id": row["cell_id"], "status": row["status"], "pid": os.getpid()}) + "\\n")
'''


def test_plugin_file_adds_a_field_and_a_trace_to_the_same_table(cli, tmp_path: Path) -> None:
    plugin = tmp_path / "that_file.py"
    plugin.write_text(MINE_PLUGIN)
    result = cli("run", "--plugin", str(plugin), "--field", "mine", "--trace", "mine,exact", "--solver",
                 "rk4[steps=2]", "--name", "mine")
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "mine")
    mine = cells[(cells["field"] == "mine") & (cells["trace"] == "mine")]
    assert len(mine) == 1 and mine["status"].iloc[0] == "done"
    # the plugin's exact trace and the built-in one train the same model
    exact = cells[(cells["field"] == "mine") & (cells["trace"] == "exact")]
    assert mine["nll"].iloc[0] == pytest.approx(exact["nll"].iloc[0], rel=1e-5)


def test_a_plugin_file_runs_from_the_bytes_its_sha256_names_even_when_edited(tmp_path: Path) -> None:
    from cnfbench.registry import load_registry

    plugin = tmp_path / "edited.py"
    plugin.write_text(MINE_PLUGIN)
    first = load_registry([str(plugin)])
    plugin.write_text(MINE_PLUGIN.replace('description = "a linear field', 'description = "edited: a linear field'))
    second = load_registry([str(plugin)])  # the same path in the same process: the new code, not a stale module
    (info_1,), (info_2,) = ([info for info in r.plugins if info.source == "file"] for r in (first, second))
    assert info_2.sha256 == hashlib.sha256(plugin.read_bytes()).hexdigest() != info_1.sha256
    assert first.get("field", "mine").cls.description.startswith("a linear field")
    assert second.get("field", "mine").cls.description.startswith("edited: ")


def test_plugins_from_the_environment_variable(tmp_path: Path) -> None:
    (tmp_path / "env_plugin_mod.py").write_text(MINE_PLUGIN)
    env = {**os.environ, "CNFBENCH_PLUGINS": "env_plugin_mod", "PYTHONPATH": str(tmp_path)}
    listed = subprocess.run([sys.executable, "-m", "cnfbench", "plugins", "--json"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert {"name": "env_plugin_mod", "source": "module"}.items() <= next(
        p for p in data["plugins"] if p["name"] == "env_plugin_mod").items()
    assert any(f["name"] == "mine" and f["plugin"] == "env_plugin_mod" for f in data["components"]["fields"])
    blob = next(d for d in data["components"]["datasets"] if d["name"] == "blob")
    assert [p["name"] for p in blob["params"]] == ["n_train", "n_val", "n_test"]


def _fake_distribution(root: Path, module_source: str) -> None:
    """An installed distribution with a ``cnfbench`` entry point, as pip would leave it."""
    (root / "brokenplug_mod.py").write_text(module_source)
    info = root / "brokenplug-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[cnfbench]\nbroken = brokenplug_mod\n")


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        ("raise ImportError('needs a GPU driver')\n", "ImportError: needs a GPU driver"),
        ("from cnfbench.hookspecs import hookimpl\n@hookimpl\ndef cnfbench_feilds():\n    return []\n",
         "unknown hook 'cnfbench_feilds'"),
        ("from cnfbench.hookspecs import hookimpl\n@hookimpl\ndef cnfbench_fields(dim):\n    return []\n",
         "Argument(s) {'dim'} are declared in the hookimpl but can not be found in the hookspec"),
    ],
)
def test_broken_entry_point_plugin_is_reported_and_the_rest_keep_working(tmp_path: Path, source: str,
                                                                          cause: str) -> None:
    _fake_distribution(tmp_path, source)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    listed = subprocess.run([sys.executable, "-m", "cnfbench", "plugins"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "brokenplug:broken 0.3 (entry point: brokenplug_mod)" in listed.stdout
    flat = " ".join(listed.stdout.split())  # the listing folds long lines to the terminal's width
    assert "BROKEN:" in listed.stdout and cause in flat
    assert "dopri5" in listed.stdout  # the rest keep working
    dry = subprocess.run([sys.executable, "-m", "cnfbench", "run", "--dry-run"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert dry.returncode == 0
    assert "warning: plugin brokenplug:broken" in dry.stderr and cause in dry.stderr
    quiet = subprocess.run([sys.executable, "-m", "cnfbench", "plugins", "--json"], capture_output=True, text=True,
                           env={**env, "CNFBENCH_DISABLE_PLUGIN_AUTOLOAD": "1"}, timeout=120)
    assert "brokenplug" not in quiet.stdout
    assert {p["source"] for p in json.loads(quiet.stdout)["plugins"]} == {"built-in"}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\n", "implements no cnfbench hook"),
        ("import torch\nfrom cnfbench.hookspecs import hookimpl\n@hookimpl\ndef cnfbench_fields():\n"
         "    return [torch.nn.Linear]\n", "is not a subclass of cnfbench.contracts.VectorField"),
    ],
)
def test_broken_plugin_files_exit_2_with_a_message_naming_them(cli, tmp_path: Path, source: str,
                                                                message: str) -> None:
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(source)
    result = cli("run", "--plugin", str(plugin), "--dry-run")
    assert result.exit_code == 2
    assert message in result.stderr and "bad_plugin.py" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


CONTRACT_BREAKERS = '''
import torch
from cnfbench.contracts import VectorField
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param


class WrongShape(VectorField):
    name = "wrong_shape"
    description = "returns one column too many"

    def __init__(self, dim):
        super().__init__(dim)
        self.linear = torch.nn.Linear(dim, dim + 1)

    def forward(self, t, z):
        return self.linear(z)


class Undeclared(VectorField):
    name = "undeclared"
    description = "declares a parameter its constructor does not accept"
    params = (Param("width", "int", 8),)

    def __init__(self, dim):
        super().__init__(dim)


@hookimpl
def cnfbench_fields():
    return [WrongShape, Undeclared]
'''


def test_components_breaking_their_contract_fail_their_cell_naming_the_plugin(cli, tmp_path: Path) -> None:
    plugin = tmp_path / "breakers.py"
    plugin.write_text(CONTRACT_BREAKERS)
    result = cli("run", "--plugin", str(plugin), "--field", "wrong_shape,undeclared", "--solver", "euler[steps=2]",
                 "--trace", "exact,hutchinson", "--name", "breakers", "--isolation", "inline")
    assert result.exit_code == 0
    cells = read_cells(tmp_path, "breakers")
    for row in cells[cells["field"] == "wrong_shape"].itertuples():
        assert row.status == "error"
        assert row.reason.startswith("error in the training forward pass at iteration 1: "
                                     "contract violation: field 'wrong_shape' (plugin '")
        assert "breakers.py" in row.reason and "(64, 3)" in row.reason
    undeclared = cells[cells["field"] == "undeclared"].iloc[0]
    assert undeclared["status"] == "error"
    assert undeclared["reason"].startswith("error while building the field: field 'undeclared' (plugin '")
    assert "unexpected keyword argument 'width'" in undeclared["reason"]


def test_observer_hooks_add_metrics_in_the_worker_and_hear_every_finished_cell(cli, tmp_path: Path) -> None:
    plugin = tmp_path / "observer.py"
    plugin.write_text(OBSERVER_PLUGIN)
    result = cli("run", "--plugin", str(plugin), "--solver", "euler[steps=2],rk4[steps=1]", "--name", "obs")
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "obs")
    assert (cells["test_points"] == 96).all() and (cells["weight_norm"] > 0).all()
    assert list(cells["seen_seed"]) == [0, 0]
    observed = [json.loads(line) for line in (tmp_path / "results" / "obs" / "observed.jsonl").read_text().splitlines()]
    assert [o["cell_id"] for o in observed] == list(cells["cell_id"])
    assert all(o["status"] == "done" for o in observed)
    assert all(o["pid"] == os.getpid() for o in observed)  # finished: in the main process
    assert (cells["worker_pid"] != os.getpid()).all()  # metrics: where the cell ran


def test_a_failing_metrics_plugin_fails_its_cell_with_its_name(cli, tmp_path: Path) -> None:
    plugin = tmp_path / "bad_metrics.py"
    plugin.write_text("from cnfbench.hookspecs import hookimpl\n@hookimpl\ndef cnfbench_cell_metrics():\n"
                      "    return {'nll': 0.0}\n")
    result = cli("run", "--plugin", str(plugin), "--solver", "euler[steps=2]", "--name", "badm",
                 "--isolation", "inline")
    assert result.exit_code == 0
    row = read_cells(tmp_path, "badm").iloc[0]
    assert row["status"] == "error"
    assert row["reason"].startswith("error in the plugin metrics (cnfbench_cell_metrics): metrics plugin '")
    assert "bad_metrics.py' returned column 'nll', which already exists" in row["reason"]
    assert row["nll"] == pytest.approx(row["nll"])  # the measured numbers are kept


def test_every_hook_is_documented_and_exercised_by_a_test() -> None:
    readme = (REPO / "README.md").read_text()
    tests = "\n".join(path.read_text() for path in (REPO / "tests").glob("test_*.py"))
    from cnfbench import hookspecs

    for name in HOOK_NAMES:
        assert f"`{name}`" in readme, f"hook {name} is not documented in README.md"
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"hook {name} has no docstring"
        assert f"def {name}(" in tests, f"no test implements hook {name}"
    assert set(HOOK_NAMES) == {"cnfbench_datasets", "cnfbench_fields", "cnfbench_objectives", "cnfbench_solvers",
                               "cnfbench_traces", "cnfbench_optimizers", "cnfbench_executors", "cnfbench_trackers",
                               "cnfbench_metrics", "cnfbench_protocols", "cnfbench_cell_metrics",
                               "cnfbench_cell_finished", "cnfbench_columns"}


def test_results_frame_keeps_plugin_columns_after_documented_ones(cli, tmp_path: Path) -> None:
    plugin = tmp_path / "observer.py"
    plugin.write_text(OBSERVER_PLUGIN)
    assert cli("run", "--plugin", str(plugin), "--solver", "euler[steps=2]", "--name", "order",
               "--isolation", "inline").exit_code == 0
    columns = list(pd.read_parquet(tmp_path / "results" / "order" / "cells.parquet").columns)
    assert columns[-4:] == ["weight_norm", "test_points", "seen_seed", "worker_pid"]
