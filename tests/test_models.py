"""Trained models are kept: model files for done cells, load_model, cnfbench sample, merge, and every refusal.

A model file must give back the very field that was evaluated: the test NLL
recomputed from the loaded field with the cell's solver equals the row's
``nll`` bit for bit on CPU, and ``sample`` with the run's seed reproduces the
samples of the run's density artifact exactly.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result
from conftest import TINY

import cnfbench
from cnfbench.cli import main
from cnfbench.contracts import VectorField, split_generator
from cnfbench.evaluation import evaluate_log_prob, sample_model
from cnfbench.model_file import encode_model
from cnfbench.models import TrainedModel, load_trained
from cnfbench.params import parse_selection
from cnfbench.reports import merge_runs
from cnfbench.run_folder import ResultsError, load_run, model_path, write_model

AFFINE_PLUGIN = '''
import torch
from cnfbench.contracts import VectorField
from cnfbench.hookspecs import hookimpl


class Affine(VectorField):
    name = "affine"
    description = "dz/dt = W z + t (a test field from a --plugin file)"

    def __init__(self, dim):
        super().__init__(dim)
        self.linear = torch.nn.Linear(dim, dim)

    def forward(self, t, z):
        return self.linear(z) + t


@hookimpl
def cnfbench_fields():
    return [Affine]
'''

_FIELD_AT = TINY.index("--field")
NO_FIELD = TINY[:_FIELD_AT] + TINY[_FIELD_AT + 2:]
CONCATSQUASH = "concatsquash[hidden=16-16]"


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in root.rglob("*")}


def _refused(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith(("warning:", "note:"))]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inline run with a built-in field and a --plugin field; dopri5 cells end 'budget' (no model)."""
    root = tmp_path_factory.mktemp("models")
    plugin = root / "affine.py"
    plugin.write_text(AFFINE_PLUGIN)
    result = _invoke("run", *NO_FIELD, "--field", f"{CONCATSQUASH},affine", "--solver", "euler[steps=2],dopri5",
                     "--max-nfe", "3", "--plugin", str(plugin), "--isolation", "inline", "--out", str(root),
                     "--metrics", "default,plots", "--name", "grid")
    assert result.exit_code == 0, result.output
    return root / "grid"


@pytest.fixture
def grid_copy(grid: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(grid, tmp_path / "grid"))


def _affine(run_dir: Path) -> list[str]:
    """The plugin file of the affine field, named deliberately: a run's recorded plugins are never imported."""
    return [str(run_dir.parent / "affine.py")]


def _done(run_dir: Path) -> pd.DataFrame:
    cells = load_run(run_dir).cells
    return cells[cells["status"] == "done"]


def _cell_id(run_dir: Path, field: str) -> str:
    done = _done(run_dir)
    return str(done.loc[done["field"] == field, "cell_id"].iloc[0])


def _recomputed_nll(model: TrainedModel) -> float:
    """The test NLL of the loaded field, computed the way the run computed the row's ``nll``."""
    cell, registry = model.cell, model.registry
    test = registry.build("dataset", cell.dataset).splits(cell.seed).test
    return evaluate_log_prob(model.field, registry.build("solver", cell.solver),
                             registry.build("trace", cell.evaluation.trace), test, cell.evaluation.batch_size,
                             "eval", max_nfe=cell.budget.max_nfe).nll


# ------------------------------------------------------------------------------------------ files and round trips


def test_done_cells_have_a_model_file_and_failed_cells_none(grid: Path) -> None:
    cells = load_run(grid).cells
    assert sorted(cells["status"]) == ["budget", "budget", "done", "done"]
    for _, row in cells.iterrows():
        path = grid / "models" / f"{row['cell_id']}.safetensors"
        if row["status"] == "done":
            assert row["model_file"] == f"models/{row['cell_id']}.safetensors" and path.is_file()
        else:
            assert row["model_file"] == "" and not path.exists()
    assert sorted(p.name for p in (grid / "models").iterdir()) == sorted(f"{i}.safetensors" for i in _done(grid)
                                                                         ["cell_id"])


@pytest.mark.parametrize("field", ["concatsquash", "affine"])
def test_the_loaded_field_gives_the_rows_nll_bit_for_bit(grid: Path, field: str) -> None:
    row = _done(grid).set_index("field").loc[field]
    model = load_trained(grid, str(row["cell_id"]), plugins=_affine(grid))  # the run's file, named by the reader
    assert isinstance(model.field, VectorField) and not model.field.training
    assert all(p.device.type == "cpu" for p in model.field.parameters())
    assert model.dim == 2 and model.cell.cell_id == row["cell_id"]
    assert _recomputed_nll(model) == row["nll"]
    field_only = cnfbench.load_model(grid, str(row["cell_id"]), device="cpu", plugins=_affine(grid))
    assert all(torch.equal(a, b) for a, b in zip(field_only.state_dict().values(), model.field.state_dict().values(),
                                                 strict=True))


def test_a_model_trained_in_a_worker_process_arrives_intact(tmp_path: Path) -> None:
    result = _invoke("run", *TINY, "--solver", "euler[steps=2]", "--out", str(tmp_path), "--name", "proc")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "proc"
    (row,) = [r for _, r in load_run(run_dir).cells.iterrows()]
    assert row["status"] == "done" and row["model_file"] == f"models/{row['cell_id']}.safetensors"
    assert _recomputed_nll(load_trained(run_dir, row["cell_id"])) == row["nll"]
    out = tmp_path / "s.npy"
    sampled = _invoke("sample", str(run_dir), "-n", "7", "--out", str(out))  # the only model needs no --cell
    assert sampled.exit_code == 0, sampled.output
    assert np.load(out, allow_pickle=False).shape == (7, 2)


def test_a_resumed_run_keeps_its_model_files(grid_copy: Path) -> None:
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (grid_copy / "models").iterdir()}
    plugin = grid_copy.parent / "affine.py"
    plugin.write_text(AFFINE_PLUGIN)
    result = _invoke("run", *NO_FIELD, "--field", f"{CONCATSQUASH},affine", "--solver", "euler[steps=2]",
                     "--max-nfe", "3", "--plugin", str(plugin), "--isolation", "inline", "--out",
                     str(grid_copy.parent), "--name", "grid")
    assert result.exit_code == 0, result.output
    assert "skipping 2 cells already done" in result.stderr
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (grid_copy / "models").iterdir()} == before


# ------------------------------------------------------------------------------------------ refusals of load_model


def test_a_damaged_model_file_is_refused_naming_it(grid_copy: Path) -> None:
    cell_id = _cell_id(grid_copy, "concatsquash")
    path = model_path(grid_copy, cell_id)
    intact = path.read_bytes()
    for damaged, fragment in [(intact[: len(intact) // 2], "is damaged"), (b"junk", "too short"),
                              (b"\xff" * 64, "is damaged: its safetensors header claims")]:
        path.write_bytes(damaged)
        with pytest.raises(ResultsError, match="is damaged|too short") as caught:
            cnfbench.load_model(grid_copy, cell_id)
        message = str(caught.value)
        assert str(path) in message and fragment in message and "\n" not in message


def test_a_mismatched_model_file_is_refused_naming_what_is_wrong(grid: Path, grid_copy: Path) -> None:
    concat, affine = _cell_id(grid_copy, "concatsquash"), _cell_id(grid_copy, "affine")
    concat_file, affine_file = model_path(grid_copy, concat), model_path(grid_copy, affine)
    plugins = _affine(grid)
    stored_affine = load_trained(grid_copy, affine, plugins=plugins)
    cell = stored_affine.cell
    shutil.copyfile(concat_file, affine_file)
    with pytest.raises(ResultsError, match=f"holds the model of cell '{concat}', not of cell '{affine}'"):
        cnfbench.load_model(grid_copy, affine, plugins=plugins)
    wrong_shape = {"linear.weight": torch.zeros(3, 3), "linear.bias": torch.zeros(3)}
    cases = [
        (encode_model(wrong_shape, cell, 2), r"does not match its spec \(field affine, dimension 2\): .*size mismatch"),
        (encode_model({"linear.weight": torch.zeros(2, 2)}, cell, 2), "does not match its spec.*Missing key"),
        (encode_model({k: v.double() for k, v in stored_affine.field.state_dict().items()}, cell, 2),
         "linear.weight is torch.float64, the field's is torch.float32"),
        (encode_model(stored_affine.field.state_dict(), cell, 3),
         r"records dimension 3, dataset 8gaussians\[.*\] has dimension 2"),
    ]
    for data, pattern in cases:
        affine_file.write_bytes(data)
        with pytest.raises(ResultsError, match=pattern) as caught:
            cnfbench.load_model(grid_copy, affine, plugins=plugins)
        assert str(affine_file) in str(caught.value)


def test_write_model_refuses_another_cells_bytes_and_writes_nothing(grid_copy: Path) -> None:
    concat, affine = _cell_id(grid_copy, "concatsquash"), _cell_id(grid_copy, "affine")
    model_path(grid_copy, affine).unlink()
    with pytest.raises(ResultsError, match="holds the model of cell"):
        write_model(grid_copy, affine, model_path(grid_copy, concat).read_bytes())
    assert not model_path(grid_copy, affine).exists()


def test_unknown_cells_unfinished_cells_runs_without_models_and_missing_plugins_are_one_line(grid: Path,
                                                                                             tmp_path: Path) -> None:
    failed = load_run(grid).cells.query("status != 'done'")["cell_id"].iloc[0]
    affine = _cell_id(grid, "affine")
    bare = Path(shutil.copytree(grid, tmp_path / "bare", ignore=shutil.ignore_patterns("models")))
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: cnfbench.load_model(grid, "0123456789abcdef"), "no cell '0123456789abcdef' in .*cells with a model"),
        (lambda: cnfbench.load_model(grid, "../../etc"), "no cell '../../etc'"),
        (lambda: cnfbench.load_model(grid, failed), f"cell {failed} of .* ended 'budget', not 'done'"),
        (lambda: cnfbench.load_model(bare, affine), "holds no model files"),
        (lambda: cnfbench.load_model(grid, affine),
         f"cell {affine} needs field 'affine', which no loaded plugin provides; .* recorded plugin '.*affine\\.py' "
         r"\(sha256 [0-9a-f]{12}\)"),
        (lambda: cnfbench.load_model(tmp_path / "nothing", affine), "no run folder at"),
    ]
    for call, pattern in cases:
        with pytest.raises(ResultsError, match=pattern) as caught:
            call()
        assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------------ cnfbench sample


def test_sample_writes_the_models_samples(grid: Path, tmp_path: Path) -> None:
    cell_id = _cell_id(grid, "concatsquash")
    model = load_trained(grid, cell_id)
    out = tmp_path / "samples.npy"
    result = _invoke("sample", str(grid), "--cell", cell_id, "-n", "96", "--out", str(out))
    assert result.exit_code == 0, result.output
    samples = np.load(out, allow_pickle=False)
    assert samples.shape == (96, 2) and samples.dtype == np.float32
    with np.load(grid / "density" / f"{cell_id}.npz", allow_pickle=False) as density:
        assert np.array_equal(samples, density["samples"])  # the run's own samples: same seed, solver and trace
    assert f"wrote {out}: 96 samples x 2 dimensions (float32) from cell {cell_id}" in result.output
    assert "sampling solve: euler[steps=2,adjoint=false] from t=0 to t=1, base seed 0; NFE 2 evaluations" in \
        result.output

    parquet = tmp_path / "samples.parquet"
    result = _invoke("sample", str(grid), "--cell", cell_id, "-n", "64", "--solver", "midpoint[steps=1]", "--seed", "7",
                     "--out", str(parquet))
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(parquet)
    registry = model.registry
    solver = registry.build("solver", registry.resolve("solver", parse_selection("midpoint[steps=1]")))
    expected = sample_model(model.field, solver, 64, split_generator(7, "model/quality_samples"),
                            torch.device("cpu")).numpy()
    assert list(frame.columns) == ["x0", "x1"] and frame.shape == (64, 2)
    written = np.ascontiguousarray(frame.to_numpy())  # parquet reads back column-major; numpy sums in memory order
    assert np.array_equal(written, expected) and np.array_equal(written.mean(axis=0), expected.mean(axis=0))
    assert "midpoint[steps=1,adjoint=false]" in result.output and "NFE 2 evaluations" in result.output


@pytest.mark.parametrize(("args", "fragment"), [
    (["--cell", "0123456789abcdef", "-n", "5"], "no cell '0123456789abcdef'"),
    (["-n", "5"], "holds 2 models"),
    (["--cell", "CELL", "-n", "0"], "-n must be an integer >= 1"),
    (["--cell", "CELL", "-n", str(10**30)], "-n must be an integer >= 1 and <= 10000000"),
    (["--cell", "CELL", "-n", "-3"], "-n must be an integer >= 1"),
    (["--cell", "CELL", "-n", "5", "--seed", "-1"], "--seed must be an integer >= 0"),
    (["--cell", "CELL", "-n", "5", "--solver", "eulr"], "unknown solver 'eulr'"),
    (["--cell", "CELL", "-n", "5", "--solver", "euler,rk4"], "--solver takes exactly one solver"),
    (["--cell", "CELL", "-n", "5", "--device", "tpu"], "device"),
    (["--cell", "FAILED", "-n", "5"], "ended 'budget', not 'done'"),
    (["--cell", "CELL", "-n", "5", "--solver", "rk4[steps=3]"], "NFE budget of 3 evaluations"),  # the run's --max-nfe
    (["--cell", "CELL", "-n", "5", "--out", "OUT/s.csv"], "must end in .npy or .parquet"),
    (["--cell", "CELL", "-n", "5", "--out", "OUT/afile/s.npy"], "is a file, not a folder"),
    (["--cell", "CELL", "-n", "5", "--out", "OUT"], "must end in .npy or .parquet"),
    (["--cell", "CELL", "-n", "5", "--out", "OUT/folder.npy"], "it is a folder, not a file"),
])
def test_sample_refuses_bad_input_in_one_line_and_writes_nothing(grid: Path, tmp_path: Path, args: list[str],
                                                                  fragment: str) -> None:
    (tmp_path / "afile").write_text("a file\n")
    (tmp_path / "folder.npy").mkdir()
    failed = load_run(grid).cells.query("status != 'done'")["cell_id"].iloc[0]
    substitutions = {"CELL": _cell_id(grid, "concatsquash"), "FAILED": failed}
    argv = [substitutions.get(arg, arg).replace("OUT", str(tmp_path)) for arg in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "s.npy")]
    before = _snapshot(tmp_path), _snapshot(grid)
    line = _refused(_invoke("sample", str(grid), *argv))
    assert fragment in line, line
    assert (_snapshot(tmp_path), _snapshot(grid)) == before


def test_sample_refuses_a_damaged_model_and_a_run_without_models(grid_copy: Path, tmp_path: Path) -> None:
    cell_id = _cell_id(grid_copy, "concatsquash")
    path = model_path(grid_copy, cell_id)
    path.write_bytes(path.read_bytes()[:100])
    out = tmp_path / "s.npy"
    line = _refused(_invoke("sample", str(grid_copy), "--cell", cell_id, "-n", "5", "--out", str(out)))
    assert f"Error: {path} is damaged" in line and not out.exists()
    reference = Path(__file__).resolve().parents[1] / "results" / "reference"
    line = _refused(_invoke("sample", str(reference), "--cell", cell_id, "-n", "5", "--out", str(out)))
    assert "holds no model files" in line and not out.exists()


# ------------------------------------------------------------------------------------------ merge


def test_merge_copies_the_model_files(grid: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(grid, tmp_path / "other"))
    affine = _cell_id(grid, "affine")
    model_path(other, affine).unlink()  # its row still names it: the merged row must not
    result = merge_runs(tmp_path / "merged", [other])
    merged = load_run(tmp_path / "merged")
    assert "copied 1 model file(s) into" in " ".join(result.notes)
    rows = merged.cells.set_index("cell_id")
    concat = _cell_id(grid, "concatsquash")
    assert rows.loc[concat, "model_file"] == f"models/{concat}.safetensors" and rows.loc[affine, "model_file"] == ""
    assert model_path(tmp_path / "merged", concat).read_bytes() == model_path(grid, concat).read_bytes()
    assert _recomputed_nll(load_trained(tmp_path / "merged", concat)) == rows.loc[concat, "nll"]
