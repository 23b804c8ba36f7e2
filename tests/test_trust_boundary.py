"""A run folder is data, never code: reading one imports no plugin it names, and checks the plugins the user names.

A tampered ``run.json`` naming a ``.py`` file (or a module) that writes a marker when imported is read through
every command that reads run folders — the marker is never written. A real run with a ``--plugin`` field
records the file's SHA-256; reading it without the plugin is one line naming the file and its hash, with the
same file (under any name) it works, with a changed file of the same name it is refused (exit 2, nothing
written) unless ``--allow-changed-plugin``. ``evaluate`` names every model it skips, and why.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import TINY

import cnfbench
from cnfbench.cli import main
from cnfbench.recorded_plugins import ChangedPluginError, ChangedPluginWarning, MissingComponentError
from cnfbench.run_folder import load_run, model_path

MY_FIELD = '''
import torch
from cnfbench.contracts import VectorField
from cnfbench.hookspecs import hookimpl


class MyField(VectorField):
    name = "myfield"
    description = "dz/dt = W z + b t (a field from a --plugin file)"

    def __init__(self, dim):
        super().__init__(dim)
        self.linear = torch.nn.Linear(dim, dim)
        self.time = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, t, z):
        return self.linear(z) + self.time * t


@hookimpl
def cnfbench_fields():
    return [MyField]
'''

MARKER_PLUGIN = '''
from pathlib import Path

Path({marker!r}).write_text("imported")

from cnfbench.hookspecs import hookimpl


@hookimpl
def cnfbench_cell_metrics():
    return {{}}
'''

_FIELD_AT = TINY.index("--field")
BASE = [*TINY[:_FIELD_AT], *TINY[_FIELD_AT + 2:], "--iterations", "2", "--batch-size", "64", "--executor", "inline"]


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _evaluate(*args: str) -> Result:
    return _invoke("evaluate", *args, "--quiet", "--executor", "inline")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _one_error(result: Result) -> str:
    """The one ``Error:`` line of a refused command (exit 2, no traceback)."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith(("warning:", "note:"))]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of ``myfield`` from ``my_field.py`` (passed with --plugin); the plugin file lies beside the run."""
    root = tmp_path_factory.mktemp("trust")
    plugin = root / "my_field.py"
    plugin.write_text(MY_FIELD)
    result = _invoke("run", *BASE, "--field", "myfield", "--solver", "euler[steps=2]", "--plugin", str(plugin),
                     "--out", str(root), "--name", "mine")
    assert result.exit_code == 0, result.output
    return root / "mine"


@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of built-in components only: two models (euler 2 and 3 steps) and a dopri5 cell that ran out of NFE."""
    root = tmp_path_factory.mktemp("builtin")
    result = _invoke("run", *BASE, "--field", "concatsquash[hidden=8]", "--solver",
                     "euler[steps=2],euler[steps=3],dopri5", "--max-nfe", "3", "--out", str(root), "--name", "plain")
    assert result.exit_code == 0, result.output
    return root / "plain"


def _copy(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(run, tmp_path / name))


def _cell(run: Path, **where: str) -> str:
    cells = load_run(run).cells
    for key, value in where.items():
        cells = cells[cells[key].astype(str) == value]
    return str(cells["cell_id"].iloc[0])


# ------------------------------------------------------------------------------------------ a tampered run.json


def _tamper(run: Path, evil: Path, module: str) -> None:
    """Make ``run``'s run.json name ``evil`` (absolute, and relative to a forged cwd) and ``module`` as its
    plugins, the way a real run records them, in the run's entry and in an evaluation's."""
    data = json.loads((run / "run.json").read_text())
    forged = [{"name": str(evil), "source": "file", "origin": str(evil), "version": "", "error": None,
               "sha256": _sha(evil)},
              {"name": module, "source": "module", "origin": module, "version": "", "error": None}]
    data["plugins"] = [entry for entry in data["plugins"] if entry["source"] != "file"] + forged
    data["config"]["plugin"] = [str(evil), evil.name, module]
    data["cwd"] = str(evil.parent)
    data["evaluations"] = [{"config": {"plugin": [evil.name]}, "plugins": forged}]
    (run / "run.json").write_text(json.dumps(data))


@pytest.fixture
def evil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, Path]:
    """A plugin file and an importable module that each write a marker file when imported."""
    marker = tmp_path / "MARKER"
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    evil = folder / "evil.py"
    evil.write_text(MARKER_PLUGIN.format(marker=str(marker)))
    module = "cnfbench_trust_marker_module"
    (folder / f"{module}.py").write_text(MARKER_PLUGIN.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(folder))
    return evil, module, marker


def test_reading_a_tampered_run_imports_nothing_it_names(builtin_run: Path, tmp_path: Path,
                                                          evil: tuple[Path, str, Path]) -> None:
    script, module, marker = evil
    run = _copy(builtin_run, tmp_path)
    _tamper(run, script, module)
    cell = _cell(run, solver_spec="euler[steps=2,adjoint=false]")
    other = _copy(builtin_run, tmp_path, "other")

    sampled = _invoke("sample", str(run), "--cell", cell, "-n", "5", "--out", str(tmp_path / "s.npy"))
    assert sampled.exit_code == 0, sampled.output  # the components are installed: it works, without the plugin
    assert (tmp_path / "s.npy").is_file()
    assert cnfbench.load_model(run, cell).dim == 2
    for command in (["report", str(run)], ["compare", str(other), str(run)],
                    ["merge", str(tmp_path / "merged"), str(run), str(other)]):
        result = _invoke(*command)
        assert result.exit_code == 0, (command, result.output)
    evaluated = _evaluate(str(run), "--cell", cell)
    assert evaluated.exit_code == 0, evaluated.output
    assert f"recorded plugins '{script}' (sha256 {_sha(script)[:12]}), '{module}', not loaded" in evaluated.stderr
    assert not marker.exists()


def test_a_tampered_run_whose_field_is_missing_names_the_plugin_and_its_hash(plugin_run: Path, tmp_path: Path,
                                                                             evil: tuple[Path, str, Path]) -> None:
    script, module, marker = evil
    run = _copy(plugin_run, tmp_path)
    _tamper(run, script, module)
    cell = _cell(run)
    before = _snapshot(run)
    out = tmp_path / "s.npy"
    for result in (_invoke("sample", str(run), "-n", "5", "--out", str(out)), _evaluate(str(run))):
        line = _one_error(result)
        assert f"cell {cell} needs field 'myfield', which no loaded plugin provides" in line, line
        assert f"'{script}' (sha256 {_sha(script)[:12]})" in line and f"'{module}'" in line, line
        assert "--plugin PATH_OR_MODULE (plugins=[PATH_OR_MODULE] in Python)" in line, line
    with pytest.raises(MissingComponentError, match=f"'{script}' \\(sha256 {_sha(script)[:12]}\\)"):
        cnfbench.load_model(run, cell)
    assert not marker.exists() and not out.exists() and _snapshot(run) == before


# ------------------------------------------------------------------------------------------ a run with a --plugin


def test_the_run_records_its_plugin_files_sha256(plugin_run: Path) -> None:
    plugin = plugin_run.parent / "my_field.py"
    provenance = json.loads((plugin_run / "run.json").read_text())
    (entry,) = [entry for entry in provenance["plugins"] if entry["source"] == "file"]
    assert entry["name"] == str(plugin) and entry["sha256"] == _sha(plugin)
    assert all("sha256" not in entry for entry in provenance["plugins"] if entry["source"] != "file")


def test_without_the_plugin_sample_evaluate_and_load_model_name_it_and_its_hash(plugin_run: Path,
                                                                                 tmp_path: Path) -> None:
    plugin = plugin_run.parent / "my_field.py"
    cell = _cell(plugin_run)
    before = _snapshot(plugin_run)
    out = tmp_path / "s.npy"
    expected = (f"Error: cell {cell} needs field 'myfield', which no loaded plugin provides; {plugin_run} recorded "
                f"plugin '{plugin}' (sha256 {_sha(plugin)[:12]}), which cnfbench never imports from a run folder: if "
                "you trust it, pass it yourself with --plugin PATH (plugins=[PATH] in Python)")
    assert _one_error(_invoke("sample", str(plugin_run), "-n", "5", "--out", str(out))) == expected
    assert _one_error(_evaluate(str(plugin_run))) == expected
    with pytest.raises(MissingComponentError) as caught:
        cnfbench.load_model(plugin_run, cell)
    assert f"Error: {caught.value}" == expected
    assert not out.exists() and _snapshot(plugin_run) == before


def test_the_same_plugin_file_under_any_name_works(plugin_run: Path, tmp_path: Path) -> None:
    plugin = plugin_run.parent / "my_field.py"
    renamed = tmp_path / "copied_field.py"  # the same bytes: the same plugin, whatever its name
    shutil.copyfile(plugin, renamed)
    for given in (plugin, renamed):
        out = tmp_path / f"{given.stem}.npy"
        result = _invoke("sample", str(plugin_run), "-n", "5", "--plugin", str(given), "--out", str(out))
        assert result.exit_code == 0 and "warning" not in result.stderr, result.output
        assert out.is_file()
    assert cnfbench.load_model(plugin_run, _cell(plugin_run), plugins=[str(renamed)]).dim == 2
    run = _copy(plugin_run, tmp_path)
    evaluated = _evaluate(str(run), "--plugin", str(plugin), "--solver", "euler[steps=3]")
    assert evaluated.exit_code == 0, evaluated.output
    assert "warning" not in evaluated.stderr and "not loaded" not in evaluated.stderr
    (entry,) = json.loads((run / "run.json").read_text())["evaluations"]
    assert entry["config"]["plugin"] == [str(plugin)]
    assert [item["sha256"] for item in entry["plugins"] if item["source"] == "file"] == [_sha(plugin)]
    assert len(load_run(run).cells) == 2


def test_a_changed_plugin_file_is_refused_unless_allowed(plugin_run: Path, tmp_path: Path) -> None:
    original = plugin_run.parent / "my_field.py"
    marker = tmp_path / "IMPORTED"
    changed = tmp_path / "v2" / "my_field.py"  # the run's file name, other bytes (which would leave a marker)
    changed.parent.mkdir()
    changed.write_text(MY_FIELD.replace("self.time * t", "2 * self.time * t")
                       + f"\nfrom pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n")
    run = _copy(plugin_run, tmp_path)
    cell = _cell(run)
    before = _snapshot(run)
    out = tmp_path / "s.npy"
    short_old, short_new = _sha(original)[:12], _sha(changed)[:12]
    for result in (_invoke("sample", str(run), "-n", "5", "--plugin", str(changed), "--out", str(out)),
                   _evaluate(str(run), "--plugin", str(changed))):
        line = _one_error(result)
        assert line == (f"Error: plugin file '{changed}' (sha256 {short_new}) is not the '{original}' (sha256 "
                        f"{short_old}) that {run} recorded: the run's numbers came from other code; to use it "
                        "anyway, pass --allow-changed-plugin (allow_changed_plugin=True in Python)"), line
    with pytest.raises(ChangedPluginError, match="allow_changed_plugin=True"):
        cnfbench.load_model(run, cell, plugins=[str(changed)])
    assert not marker.exists() and not out.exists() and _snapshot(run) == before  # refused before importing it

    allowed = _invoke("sample", str(run), "-n", "5", "--plugin", str(changed), "--allow-changed-plugin",
                      "--out", str(out))
    assert allowed.exit_code == 0 and out.is_file(), allowed.output
    (warning,) = [line for line in allowed.stderr.splitlines() if line.startswith("warning:")]
    assert warning.startswith(f"warning: plugin file '{changed}' (sha256 {short_new}) is not the '{original}'") \
        and "using it anyway, as allowed" in warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cnfbench.load_model(run, cell, plugins=[str(changed)], allow_changed_plugin=True).dim == 2
    assert [type(w.message) for w in caught] == [ChangedPluginWarning]
    evaluated = _evaluate(str(run), "--plugin", str(changed), "--allow-changed-plugin")
    assert evaluated.exit_code == 0 and "using it anyway, as allowed" in evaluated.stderr, evaluated.output
    (entry,) = json.loads((run / "run.json").read_text())["evaluations"]
    assert entry["config"]["allow_changed_plugin"] is True
    assert [item["sha256"] for item in entry["plugins"] if item["source"] == "file"] == [_sha(changed)]


# ------------------------------------------------------------------------------------------ what evaluate skips


def test_evaluate_names_each_model_it_skips_and_why(builtin_run: Path, tmp_path: Path) -> None:
    run = _copy(builtin_run, tmp_path)
    gone, damaged = _cell(run, solver_spec="euler[steps=2,adjoint=false]"), \
        _cell(run, solver_spec="euler[steps=3,adjoint=false]")
    model_path(run, gone).unlink()
    before = _snapshot(run)
    line = _one_error(_evaluate(str(run), "--cell", gone))
    assert line == (f"Error: cell {gone} of {run} has no model to evaluate: its model file "
                    f"models/{gone}.safetensors is missing")
    budget = _cell(run, status="budget")
    line = _one_error(_evaluate(str(run), "--cell", budget))
    assert line.endswith("has no model to evaluate: it ended 'budget', not 'done': only finished cells keep a model")
    assert _snapshot(run) == before

    result = _evaluate(str(run))
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    described = "8gaussians | concatsquash | mle | euler | exact | adam | seed 0"
    assert warned == [f"warning: skipping cell {gone} ({described}): its model file models/{gone}.safetensors is "
                      "missing"]
    assert "note: 1 cell did not finish (1 'budget') and has no model to evaluate" in result.stderr
    assert "1 cell evaluated from 1 model" in result.output

    path = model_path(run, damaged)
    path.write_bytes(path.read_bytes()[:200])
    result = _evaluate(str(run))
    assert _one_error(result) == f"Error: no model file of {run} is readable; nothing to evaluate"
    assert f"warning: skipping cell {damaged} ({described}): {path} is damaged" in result.stderr


def test_evaluate_warns_once_for_a_shared_model_that_is_gone(tmp_path: Path) -> None:
    result = _invoke("run", *BASE, "--field", "concatsquash[hidden=8]", "--objective", "cfm", "--seeds", "2",
                     "--solver", "euler[steps=2],rk4[steps=1]", "--out", str(tmp_path), "--name", "fm")
    assert result.exit_code == 0, result.output
    run = tmp_path / "fm"
    cells = load_run(run).cells
    trainer = str(cells.loc[cells["seed"] == 0, "trained_in"].iloc[0])
    model_path(run, trainer).unlink()
    result = _evaluate(str(run))
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and warned[0].startswith(f"warning: skipping cell {trainer} (") and \
        warned[0].endswith(f"(and the 1 other cell that shares its model): its model file "
                           f"models/{trainer}.safetensors is missing"), warned
