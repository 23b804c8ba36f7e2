"""``--compile``: the field trains compiled where it can and eager, with a warning, where it cannot (at the
probe or in a later iteration), never failing a cell; cells without it keep their ids; the benchmark's quick
mode; the option's help and checks."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, read_cells

import cnfbench.training as training
from cnfbench.cells import Budget, Cell, EvalProtocol
from cnfbench.cli import main
from cnfbench.compiling import (
    CompiledField,
    CompileFallbackWarning,
    CompileResult,
    compile_for_training,
    raised_by_compiler,
)
from cnfbench.config import RunConfig, resolve_grid
from cnfbench.contracts import VectorField
from cnfbench.registry import load_registry
from cnfbench.specs import ResolvedComponent

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_compile.py"

UNCOMPILABLE_PLUGIN = '''
import torch
from cnfbench.contracts import VectorField
from cnfbench.hookspecs import hookimpl


class Uncompilable(VectorField):
    name = "uncompilable"
    description = "an MLP whose forward refuses to be traced by torch.compile (an unsupported op's stand-in)"
    per_row_time = True

    def __init__(self, dim):
        super().__init__(dim)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, 8), torch.nn.Tanh(), torch.nn.Linear(8, dim))

    def forward(self, t, z):
        if torch.compiler.is_compiling():
            raise RuntimeError("this op is not supported by torch.compile")
        return self.net(torch.cat([z, t.reshape(-1, 1).to(z.dtype).expand(z.shape[0], 1)], dim=1))


@hookimpl
def cnfbench_fields():
    return [Uncompilable]
'''

SMALL = ("--solver", "euler[steps=2]")  # on the tiny defaults of conftest.TINY
TINY_BUT_THE_FIELD = TINY[:TINY.index("--field")] + TINY[TINY.index("--field") + 2:]


def test_compile_trains_compiled_and_says_so(cli, tmp_path: Path) -> None:
    result = cli("run", *SMALL, "--objective", "mle,cfm", "--compile", "--name", "compiled")
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "compiled").set_index("objective")
    assert (cells["status"] == "done").all() and cells["compile"].all()
    assert cells["compiled"].tolist() == [True, True] and (cells["compile_note"] == "").all()
    for column in ("nll", "nll_ref", "final_train_loss", "iter_time_median_s", "compile_time_s"):
        assert cells[column].map(math.isfinite).all(), column
    # compiling is training wall-clock, but of no iteration; the probe counts no NFE
    assert (cells["train_time_s"] >= cells["compile_time_s"]).all() and (cells["compile_time_s"] > 0).all()
    assert cells.loc["mle", "nfe_forward_mean"] == 2 == cells.loc["mle", "nfe_forward_max"]
    assert cells.loc["cfm", "field_evals_per_iter"] == 1
    assert (cells["iterations_done"] == 3).all()
    assert "warning" not in result.output
    # evaluation runs the eager module: cnfbench evaluate on the stored models reproduces the numbers exactly
    again = CliRunner().invoke(main, ["evaluate", str(tmp_path / "results" / "compiled"), "--quiet", "--executor",
                                      "inline"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    after = read_cells(tmp_path, "compiled").set_index("objective")
    for column in ("nll", "nll_ref", "mass_is", "reverse_kl", "compiled", "compile_time_s"):
        assert after[column].tolist() == cells[column].tolist(), column


def test_an_uncompilable_field_trains_eager_with_a_warning_and_the_same_numbers(cli, tmp_path: Path) -> None:
    plugin = tmp_path / "uncompilable.py"
    plugin.write_text(UNCOMPILABLE_PLUGIN)
    common = (*TINY_BUT_THE_FIELD, "--plugin", str(plugin), "--field", "uncompilable", "--solver", "euler[steps=2]",
              "--objective", "cfm,mle", "--executor", "inline")
    plain = cli("run", *common, "--name", "plain", tiny=False)
    assert plain.exit_code == 0, plain.output
    result = cli("run", *common, "--compile", "--name", "fallback", tiny=False)
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "fallback").set_index("objective")
    eager = read_cells(tmp_path, "plain").set_index("objective")
    assert (cells["status"] == "done").all() and cells["compiled"].tolist() == [False, False]
    note = cells.loc["cfm", "compile_note"]
    assert note.startswith("--compile: field 'uncompilable' (plugin ") and "trains eager: Unsupported: " in note
    assert "RuntimeError('this op is not supported by torch.compile')) in forward at uncompilable.py:" in note
    assert "has no forward_with_divergence" in cells.loc["mle", "compile_note"]
    assert "\n" not in "".join(cells["compile_note"])
    for objective in ("cfm", "mle"):  # said once, by the runner (the worker keeps its Python warning quiet)
        assert result.output.count(f"warning: cell {cells.loc[objective, 'cell_id']} (") == 1
    assert result.output.count(cells.loc["cfm", "compile_note"]) == 1
    # eager throughout, and the probe disturbed no random stream: the numbers are those of the run without it
    assert (cells.index == eager.index).all() and not set(cells["cell_id"]) & set(eager["cell_id"])
    for column in ("nll", "nll_ref", "final_train_loss", "mass_is", "nfe_eval"):
        assert cells[column].tolist() == eager[column].tolist(), column
    assert eager["compiled"].isna().all() and not eager["compile"].any()


def test_a_failure_of_compiled_code_mid_training_continues_eager_from_the_same_random_state(monkeypatch) -> None:
    registry = load_registry([])
    config = replace(RunConfig(), dataset=("8gaussians[n_train=256,n_val=32,n_test=96]",),
                     field=("concatsquash[hidden=8-8]",), objective=("cfm",), iterations=4, batch_size=64,
                     device="cpu")

    def train(compile_field: bool) -> training.TrainingRecord:
        cell = resolve_grid(replace(config, compile=compile_field), registry).cells[0]
        data = registry.build("dataset", cell.dataset).splits(cell.seed).train
        field = training.seeded_field(lambda: registry.build("field", cell.field, 2), cell.seed, torch.device("cpu"))
        record = training.TrainingRecord()
        training.train(cell, field, registry.build("objective", cell.objective), registry.build("solver", cell.solver),
                       registry.build("trace", cell.trace), registry.build("optimizer", cell.optimizer), data, record)
        return record

    # stands in for compiled code that fails at its second call (iteration 2): raised from a dynamo frame
    namespace = {"__name__": "torch._dynamo.stand_in"}
    exec("def fail():\n    raise RuntimeError('recompilation failed')\n", namespace)

    class FailsLater(VectorField):
        per_row_time = True

        def __init__(self, field: VectorField) -> None:
            super().__init__(2)
            self.eager, self.calls = field, 0

        def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 2:
                namespace["fail"]()
            return self.eager(t, z)

    monkeypatch.setattr(training, "compile_for_training",
                        lambda field, *args, **kwargs: CompileResult(FailsLater(field), True, "", 0.5))
    with pytest.warns(CompileFallbackWarning, match="at iteration 2, after 1 compiled"):
        record = train(True)
    assert record.compiled is False and "RuntimeError: recompilation failed" in record.compile_note
    assert record.losses == train(False).losses and record.iterations == 4


def test_the_probe_leaves_parameters_gradients_and_random_streams_alone() -> None:
    class Tiny(VectorField):
        per_row_time = True

        def __init__(self) -> None:
            super().__init__(2)
            self.linear = torch.nn.Linear(2, 2)

        def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.linear(z)) * t.reshape(-1, 1)

    field = Tiny()
    before = {name: p.detach().clone() for name, p in field.named_parameters()}
    state = torch.get_rng_state()

    def probe(training_field: VectorField) -> torch.Tensor:
        z = torch.randn(16, 2)  # the global RNG: restored afterwards
        return training_field(torch.rand(16), z).pow(2).sum()

    result = compile_for_training(field, False, probe, "'tiny'", torch.device("cpu"))
    assert result.compiled and isinstance(result.field, CompiledField) and result.field.compiled_calls == 1
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in field.parameters())
    assert all(torch.equal(p, before[name]) for name, p in field.named_parameters())
    # the wrapper trains the field's own parameters; the eager module is what evaluation uses
    assert list(result.field.parameters()) == list(field.parameters()) and result.seconds > 0


def test_compiling_for_training_never_raises_it_warns_and_returns_the_eager_field() -> None:
    field = torch.nn.Linear(2, 2)  # no forward_with_divergence: nothing a likelihood objective could compile

    def probe(training_field: VectorField) -> torch.Tensor:
        raise AssertionError("not reached")

    with pytest.warns(CompileFallbackWarning, match="field 'linear' trains eager: NothingCompiled: it has no "
                                                    "forward_with_divergence"):
        result = compile_for_training(field, True, probe, "'linear'", torch.device("cpu"))
    assert result.field is field and not result.compiled and result.note.startswith("--compile: field 'linear'")


def test_compiler_failures_are_told_from_the_fields_own_by_their_frames() -> None:
    try:
        raise ValueError("the field's own")
    except ValueError as exc:
        assert not raised_by_compiler(exc)
    namespace = {"__name__": "torch._inductor.stand_in"}
    exec("def fail():\n    raise RuntimeError('no C++ compiler')\n", namespace)
    try:
        namespace["fail"]()
    except RuntimeError as exc:
        assert raised_by_compiler(exc)


def test_without_compile_cell_ids_are_unchanged_and_with_it_the_cell_and_its_model_differ() -> None:
    spec = ResolvedComponent
    axes = {"dataset": spec("8gaussians", (("n_train", 256),)),
            "field": spec("concatsquash", (("hidden", (8, 8)), ("activation", "tanh"))),
            "objective": spec("mle", ()), "solver": spec("euler", (("steps", 10), ("adjoint", False))),
            "trace": spec("exact", ())}
    evaluation = EvalProtocol({"eval_trace": spec("exact", ()),
                               "ref_solver": spec("dopri5", (("rtol", 1e-7), ("atol", 1e-7)))}, "float64", 4096, 80)
    cell = Cell(axes, 0, Budget(3, 64, 3e-3), evaluation, "cpu")  # the optimizer axis reads as its implicit adam
    assert "compile" not in cell.to_json()["budget"]
    assert (cell.cell_id, cell.model_key()) == ("8c582682c835c74b", "42b0e7046ddbd77b")  # as before --compile
    compiled = replace(cell, budget=replace(cell.budget, compile=True))
    assert compiled.to_json()["budget"]["compile"] is True
    assert compiled.cell_id != cell.cell_id and compiled.model_key() != cell.model_key()
    assert Cell.from_json(compiled.to_json()) == compiled and Cell.from_json(cell.to_json()) == cell


def test_compile_is_an_option_of_run_its_config_and_python(cli, tmp_path: Path) -> None:
    import cnfbench

    help_text = cli("run", "--help", tiny=False, out=False).output
    assert "--compile" in help_text and "torch.compile" in help_text
    plain = cli("run", "--dry-run", "--name", "d").output
    compiled = cli("run", "--dry-run", "--compile", "--name", "d").output
    ids = [{line.split()[0] for line in text.splitlines() if line.startswith("  ")} for text in (plain, compiled)]
    assert len(ids[0]) == len(ids[1]) == 1 and ids[0] != ids[1]
    config = tmp_path / "grid.toml"
    config.write_text("compile = true\n")
    assert cli("run", "--dry-run", "--config", str(config), "--name", "d").output == compiled
    config.write_text("compile = 1\n")
    bad = cli("run", "--dry-run", "--config", str(config), "--name", "d")
    assert bad.exit_code == 2 and "'compile' must be true or false" in bad.output
    with pytest.raises(ValueError, match="--seeds"):  # the same checks from Python, the flag accepted
        cnfbench.run(compile=True, seeds=0, out=str(tmp_path), name="py")


def test_bench_compile_quick_prints_its_table(tmp_path: Path) -> None:
    report = tmp_path / "compile.md"
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--warm-cache", "--out", str(report)],
                          capture_output=True, text=True, timeout=600)  # warm: the cold start-up costs seconds
    assert done.returncode == 0, done.stdout + done.stderr
    text = report.read_text()
    assert text == done.stdout and "torch 2" in text and "1 torch thread(s)" in text and "Command: `python " in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["configuration", "D", "NFE or field evals per iter", "eager [ms/iter]", "compiled [ms/iter]",
                      "compiled / eager", "compile [s] first / later", "compiled?"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
    assert [row[0] for row in rows] == ["cfm (flow matching)", "mle + hutchinson, euler 10"]
    assert rows[0][-1] == "yes" and rows[1][-1].startswith("fell back: NothingCompiled: trace 'hutchinson'")
    assert all(float(row[5]) > 0 for row in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_bench_compile_refuses_cuda_without_it() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--device", "cuda"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and not done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert "CUDA is not available" in line


def test_rows_written_before_compile_mean_no_compile(tmp_path: Path) -> None:
    from cnfbench.run_folder import with_earlier_meanings

    old = pd.DataFrame([{"cell_id": "0123456789abcdef", "nll": 1.0}])
    assert not with_earlier_meanings(old).loc[0, "compile"]
