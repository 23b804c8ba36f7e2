"""Train once, evaluate many: shared models, ``cnfbench evaluate``, budgets in seconds, validation and selection."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import read_cells

from cnfbench import load_model

FLOW = ["--objective", "cfm[sigma=0.01]", "--solver", "euler[steps=4],rk4[steps=2]"]


def _run_dir(tmp_path: Path, name: str) -> Path:
    return tmp_path / "results" / name


def test_flow_matching_trains_once_per_seed_for_every_solver(cli, tmp_path: Path) -> None:
    assert cli("run", *FLOW, "--seeds", "2", "--name", "fm").exit_code == 0
    cells = read_cells(tmp_path, "fm")
    assert len(cells) == 4 and set(cells["status"]) == {"done"}
    run = _run_dir(tmp_path, "fm")
    assert len(list((run / "models").glob("*.safetensors"))) == 2  # one model per seed, not per solver
    for _, seed in cells.groupby("seed"):
        assert seed["model_key"].nunique() == 1 and seed["trained_in"].nunique() == 1
        trainer = seed["trained_in"].iloc[0]
        assert trainer in set(seed["cell_id"])
        assert seed["model_file"].nunique() == 1 and seed["model_file"].iloc[0] == f"models/{trainer}.safetensors"
        for column in ("train_time_s", "final_train_loss", "iterations_done", "field_evals_per_iter"):
            assert seed[column].nunique() == 1, column  # the training is the trainer's, counted once
        assert seed["nfe_eval"].nunique() == 2  # ... while each solver evaluates it on its own
    assert cells["field_evals_per_iter"].eq(1.0).all()  # per-row times: one batched field call per iteration
    assert cells["nfe_forward_mean"].isna().all()  # flow matching never solves in training: no misleading NFE
    assert set(cells["train_loss_unit"]) == {"(data unit/time)²/sample"}
    curves = pd.read_parquet(run / "curves.parquet")
    assert set(curves["cell_id"]) == set(cells["trained_in"])  # curves once per model


def test_likelihood_objectives_train_once_per_solver(cli, tmp_path: Path) -> None:
    assert cli("run", "--objective", "mle,rnode", "--solver", "euler[steps=4],rk4[steps=2]", "--name", "ml"
               ).exit_code == 0
    cells = read_cells(tmp_path, "ml")
    assert len(cells) == 4 and (cells["trained_in"] == cells["cell_id"]).all()
    assert cells["model_key"].nunique() == 4
    assert len(list((_run_dir(tmp_path, "ml") / "models").glob("*.safetensors"))) == 4
    assert cells["nfe_forward_mean"].notna().all() and cells["field_evals_per_iter"].isna().all()
    curves = pd.read_parquet(_run_dir(tmp_path, "ml") / "curves.parquet")
    rnode = curves[curves["cell_id"].isin(cells.loc[cells["objective"] == "rnode", "cell_id"])]
    assert rnode[["loss_nll", "loss_kinetic", "loss_jacobian"]].notna().all().all()
    regularizers = 0.01 * rnode["loss_kinetic"] + 0.01 * rnode["loss_jacobian"]
    assert np.allclose(rnode["loss"], rnode["loss_nll"] + regularizers, rtol=1e-5)


def test_a_solver_added_later_reuses_the_model_and_the_default_cells_keep_their_ids(cli, tmp_path: Path) -> None:
    assert cli("run", "--objective", "cfm", "--solver", "euler[steps=4]", "--name", "grow").exit_code == 0
    first = read_cells(tmp_path, "grow")
    result = cli("run", "--objective", "cfm", "--solver", "euler[steps=4],rk4[steps=2]", "--name", "grow")
    assert result.exit_code == 0 and "skipping 1 cell already done, running 1" in result.output
    cells = read_cells(tmp_path, "grow")
    assert set(cells["trained_in"]) == set(first["cell_id"])
    assert len(list((_run_dir(tmp_path, "grow") / "models").glob("*.safetensors"))) == 1
    assert cells["train_time_s"].nunique() == 1


def _evaluate(cli, *args: str):
    from click.testing import CliRunner

    from cnfbench.cli import main

    return CliRunner().invoke(main, ["evaluate", *args, "--quiet", "--executor", "inline"], catch_exceptions=False)


def test_evaluate_reproduces_the_stored_nll_bit_for_bit_and_adds_other_solvers(cli, tmp_path: Path) -> None:
    assert cli("run", "--objective", "mle,cfm", "--solver", "euler[steps=4]", "--name", "ev", "--metrics",
               "default,energy_distance,sliced_w2,roundtrip").exit_code == 0
    run = _run_dir(tmp_path, "ev")
    before = read_cells(tmp_path, "ev").set_index("cell_id")
    result = _evaluate(cli, str(run), "--solver", "euler[steps=4],rk4[steps=3]")
    assert result.exit_code == 0, result.output
    assert "4 cells evaluated from 2 models; no training" in result.output
    after = read_cells(tmp_path, "ev").set_index("cell_id")
    assert len(after) == 4
    for cell_id, row in before.iterrows():  # the training solver again: the very same numbers
        for column in ("nll", "nll_ref", "mass", "energy_distance", "sliced_w2", "roundtrip_error", "reverse_kl",
                       "train_time_s", "final_train_loss"):
            assert after.loc[cell_id, column] == row[column], column
    new = after.drop(index=before.index)
    mle, cfm = new[new["objective"] == "mle"].iloc[0], new[new["objective"] == "cfm"].iloc[0]
    assert mle["trained_with"].startswith("solver=euler[steps=4") and cfm["trained_with"] == ""
    assert mle["solver"] == cfm["solver"] == "rk4" and mle["nfe_eval"] == 3 * 4
    trained_mle = before[before["objective"] == "mle"].iloc[0]
    assert mle["nll_ref"] == trained_mle["nll_ref"]  # same model, same reference solve
    assert mle["nll"] != trained_mle["nll"] and mle["trained_in"] == trained_mle.name
    provenance = json.loads((run / "run.json").read_text())
    assert provenance["config"]["objective"] == ["mle,cfm"]  # the run's own provenance is kept
    (entry,) = provenance["evaluations"]
    assert entry["config"]["solver"] == ["euler[steps=4],rk4[steps=3]"] and len(entry["cells"]) == 4
    assert {cell["cell_id"] for cell in provenance["cells"]} == set(after.index)
    field = load_model(run, mle.name)  # a row that shares a model loads it
    assert field.dim == 2


def test_evaluate_refuses_what_it_cannot_do_and_writes_nothing(cli, tmp_path: Path) -> None:
    assert cli("run", "--solver", "euler[steps=4]", "--name", "bad").exit_code == 0
    run = _run_dir(tmp_path, "bad")
    stored = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}

    def refused(*args: str, says: str) -> None:
        result = _evaluate(cli, *args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("Error: ") and says in lines[-1], lines
        assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == stored

    refused(str(run), "--cell", "0123456789abcdef", says="no cell '0123456789abcdef'")
    refused(str(run), "--solver", "nosuch", says="unknown solver 'nosuch'")
    refused(str(run), "--eval-trace", "hutchinson", says="must be an exact")
    refused(str(run), "--ref-solver", "euler", says="--allow-loose-ref")
    refused(str(tmp_path / "nowhere"), says="no run folder")
    (model,) = (run / "models").glob("*.safetensors")
    model.write_bytes(model.read_bytes()[:100])  # damaged: reported, never loaded
    refused(str(run), says="no model file")
    shutil.rmtree(run / "models")
    refused(str(run), says="holds no model files")


def test_time_budget_trains_for_seconds_and_records_the_iterations(cli, tmp_path: Path) -> None:
    result = cli("run", "--objective", "cfm", "--solver", "euler[steps=2]", "--time-budget", "0.3",
                 "--iterations", "1000000", "--name", "tb")
    assert result.exit_code == 0, result.output
    (row,) = read_cells(tmp_path, "tb").to_dict("records")
    curves = pd.read_parquet(_run_dir(tmp_path, "tb") / "curves.parquet")
    assert row["status"] == "done" and row["time_budget_s"] == 0.3
    assert 1 <= row["iterations_done"] < 1000000 and len(curves) == row["iterations_done"]
    # the loop's own rule, summed as the loop sums (not a timing assertion: it holds on any machine)
    assert math.fsum(curves["iteration_s"]) >= 0.3  # it stopped because the budget was spent, not before
    assert math.fsum(curves["iteration_s"].iloc[:-1]) < 0.3  # ... and at the first iteration past it


def test_validation_curves_and_best_checkpoint(cli, tmp_path: Path) -> None:
    args = ["--solver", "euler[steps=2]", "--iterations", "6", "--val-every", "2", "--lr", "0.05"]
    assert cli("run", *args, "--select", "best", "--name", "best").exit_code == 0
    assert cli("run", *args, "--name", "last").exit_code == 0
    best, last = read_cells(tmp_path, "best").iloc[0], read_cells(tmp_path, "last").iloc[0]
    curves = pd.read_parquet(_run_dir(tmp_path, "best") / "curves.parquet")
    validated = curves.dropna(subset=["val_nll"])
    assert list(validated["iteration"]) == [2, 4, 6] and (validated["val_time_s"] > 0).all()
    assert best["best_val_nll"] == validated["val_nll"].min()
    assert best["selected_iteration"] == validated.loc[validated["val_nll"].idxmin(), "iteration"]
    assert last["selected_iteration"] == 6 and last["val_solver_spec"] == ""  # mle validates with its own solver
    if best["selected_iteration"] != 6:
        assert best["nll"] != last["nll"]  # another checkpoint was evaluated
    flow = cli("run", "--objective", "cfm", "--solver", "euler[steps=2]", "--iterations", "2", "--val-every", "1",
               "--name", "fmval")
    assert flow.exit_code == 0
    row = read_cells(tmp_path, "fmval").iloc[0]
    assert row["val_solver_spec"] == "rk4[steps=16,adjoint=false]" and math.isfinite(row["best_val_nll"])


def test_select_best_needs_validation(cli, tmp_path: Path) -> None:
    result = cli("run", "--select", "best", "--name", "nov")
    assert result.exit_code == 2 and "--select best needs --val-every" in result.stderr
    assert not (tmp_path / "results" / "nov").exists()


def test_reverse_kl_where_the_density_is_known(cli, tmp_path: Path) -> None:
    assert cli("run", "--solver", "euler[steps=4]", "--name", "kl").exit_code == 0
    assert cli("run", "--solver", "euler[steps=4]", "--dataset", "moons[n_train=256,n_val=32,n_test=96]",
               "--name", "kl2").exit_code == 0
    known = read_cells(tmp_path, "kl").iloc[0]
    unknown = read_cells(tmp_path, "kl2").set_index("dataset").loc["moons"]
    assert math.isfinite(known["reverse_kl"]) and known["reverse_kl_stderr"] > 0
    assert known["reverse_kl"] > -3 * known["reverse_kl_stderr"]  # a KL divergence, up to its noise
    assert math.isnan(unknown["reverse_kl"])


def test_sample_output_has_the_distribution_the_row_measured(cli, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cnfbench.cli import main
    from cnfbench.registry import load_registry
    from cnfbench.sample_quality import energy_distance

    assert cli("run", *FLOW, "--iterations", "30", "--name", "smp", "--metrics", "default,energy_distance"
               ).exit_code == 0
    cells = read_cells(tmp_path, "smp")
    shared = cells[cells["trained_in"] != cells["cell_id"]].iloc[0]  # a row that only evaluates a shared model
    out = tmp_path / "samples.npy"
    result = CliRunner().invoke(main, ["sample", str(_run_dir(tmp_path, "smp")), "--cell", shared["cell_id"],
                                       "-n", "96", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "NFE 8 evaluations" in result.output  # the row's own solver, rk4[steps=2]: 2 steps x 4 stages
    import torch

    samples = torch.from_numpy(np.load(out, allow_pickle=False))
    dataset = load_registry().build("dataset", _resolved_dataset(shared["dataset_spec"]))
    test = dataset.splits(int(shared["seed"])).test
    distance, stderr = energy_distance(samples, test)
    assert abs(distance - shared["energy_distance"]) <= 4 * math.hypot(stderr, shared["energy_distance_stderr"])


def _resolved_dataset(label: str):
    from cnfbench.params import parse_selection
    from cnfbench.registry import load_registry

    return load_registry().resolve("dataset", parse_selection(label))


def test_evaluate_skips_a_model_file_that_does_not_match_its_spec(cli, tmp_path: Path) -> None:
    from safetensors.torch import load, save

    assert cli("run", "--solver", "euler[steps=4]", "--objective", "mle,cfm", "--name", "mis").exit_code == 0
    run = _run_dir(tmp_path, "mis")
    cells = read_cells(tmp_path, "mis").set_index("objective")
    broken = run / cells.loc["mle", "model_file"]
    data = broken.read_bytes()
    tensors = load(data)
    name = next(name for name, tensor in tensors.items() if tensor.dim() and tensor.shape[-1] > 1)
    tensors[name] = tensors[name][..., :1].contiguous()  # another shape under the same spec
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    broken.write_bytes(save(tensors, metadata=header["__metadata__"]))
    before = (run / "cells.parquet").read_bytes()
    result = _evaluate(cli, str(run), "--solver", "rk4[steps=2]")
    assert result.exit_code == 0
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning.startswith(f"warning: skipping cell {cells.loc['mle', 'cell_id']} (") and \
        f"): {broken} does not match its spec" in warning, (result.output, result.stderr)
    after = read_cells(tmp_path, "mis")
    assert len(after) == 3 and set(after["objective"]) == {"mle", "cfm"}  # only the sound model was evaluated
    only_broken = _evaluate(cli, str(run), "--cell", cells.loc["mle", "cell_id"])
    assert only_broken.exit_code == 2 and "no model file of" in only_broken.stderr
    assert (run / "cells.parquet").read_bytes() != before  # the first evaluation added a row ...
    rows = (run / "cells.parquet").read_bytes()
    _evaluate(cli, str(run), "--cell", cells.loc["mle", "cell_id"])
    assert (run / "cells.parquet").read_bytes() == rows  # ... the refused one wrote nothing


def test_merge_keeps_the_model_a_row_shares(cli, tmp_path: Path) -> None:
    from cnfbench.reports import merge_runs

    assert cli("run", *FLOW, "--name", "m1").exit_code == 0
    merged = merge_runs(tmp_path / "merged", [_run_dir(tmp_path, "m1")])
    cells = pd.read_parquet(tmp_path / "merged" / "cells.parquet")
    assert merged is not None and cells["model_file"].nunique() == 1 and cells["model_file"].iloc[0]
    assert (tmp_path / "merged" / cells["model_file"].iloc[0]).is_file()
    for cell_id in cells["cell_id"]:
        assert load_model(tmp_path / "merged", cell_id).dim == 2


def test_evaluate_adds_a_plugins_new_metric_without_training(cli, tmp_path: Path) -> None:
    assert cli("run", "--solver", "euler[steps=4]", "--name", "met").exit_code == 0
    plugin = tmp_path / "speed.py"
    plugin.write_text(
        "from cnfbench.hookspecs import hookimpl\n\n\n"
        "@hookimpl\n"
        "def cnfbench_cell_metrics(cell, field, test):\n"
        "    return {'mean_speed': float(field(test.new_tensor(0.5), test).norm(dim=1).mean())}\n"
    )
    run = _run_dir(tmp_path, "met")
    before = read_cells(tmp_path, "met")
    assert "mean_speed" not in before
    result = _evaluate(cli, str(run), "--plugin", str(plugin))
    assert result.exit_code == 0, result.output
    after = read_cells(tmp_path, "met")
    assert len(after) == 1 and after["mean_speed"].iloc[0] > 0
    assert after["nll"].iloc[0] == before["nll"].iloc[0]
    assert after["train_time_s"].iloc[0] == before["train_time_s"].iloc[0]  # not trained again
    provenance = json.loads((run / "run.json").read_text())
    assert str(plugin) in provenance["evaluations"][0]["config"]["plugin"]
    (recorded,) = [entry for entry in provenance["evaluations"][0]["plugins"] if entry["source"] == "file"]
    assert recorded["sha256"] == hashlib.sha256(plugin.read_bytes()).hexdigest()
    again = _evaluate(cli, str(run))  # the run's own plugin is a name to show, not a file to import
    assert again.exit_code == 0, again.output
    assert f"recorded plugin '{plugin}' (sha256 {recorded['sha256'][:12]}), not loaded" in again.stderr


def test_evaluate_uses_models_of_rows_written_before_sharing_and_never_trains(cli, tmp_path: Path) -> None:
    assert cli("run", "--solver", "euler[steps=4]", "--name", "old").exit_code == 0
    run = _run_dir(tmp_path, "old")
    cells = read_cells(tmp_path, "old").drop(columns=["model_key", "trained_in"])  # as the previous release wrote
    cells.to_parquet(run / "cells.parquet", index=False)
    cells.to_csv(run / "cells.csv", index=False)
    curves_before = (run / "curves.parquet").read_bytes()
    result = _evaluate(cli, str(run), "--solver", "euler[steps=4],rk4[steps=2]")
    assert result.exit_code == 0, result.output
    after = read_cells(tmp_path, "old").set_index("solver")
    assert set(after["status"]) == {"done"} and len(after) == 2
    assert after.loc["euler", "nll"] == cells["nll"].iloc[0]  # evaluated from the kept model, not retrained
    assert after.loc["rk4", "trained_in"] == cells["cell_id"].iloc[0]
    assert (run / "curves.parquet").read_bytes() == curves_before  # no training curve was written
