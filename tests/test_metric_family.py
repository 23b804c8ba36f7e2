"""The metric family: chosen metrics, inputs computed once, failures that never fail a cell, and the kit's rules.

A metric declares its columns and the inputs it needs; the harness plans a cell's evaluation from the chosen
metrics, computes each input once and hands each metric only what it declared. The conformance kit rejects a
metric that computes an input itself and one whose unit does not scale as it says.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import TINY

from cnfbench import metric_plan
from cnfbench.columns import Column
from cnfbench.config import resolve_metrics
from cnfbench.contracts import Metric, MetricInputs
from cnfbench.evaluation import sample_model
from cnfbench.params import ParamError
from cnfbench.registry import load_registry
from cnfbench.testing import ConformanceError, check_metric

REGISTRY = load_registry()


def _w2_like(unit: str) -> type[Metric]:
    class MeanDistance(Metric):
        name = "probe_mean_distance"
        description = "mean distance between paired samples and test points"
        group = "probe"
        columns = (Column("probe_mean_distance", unit, "mean ‖x_i - y_i‖", goal="min"),)
        needs = ("sample", "test")

        def compute(self, inputs: MetricInputs) -> dict[str, Any]:
            x, y = inputs["sample"].x, inputs["test"]
            n = min(len(x), len(y))
            return {"probe_mean_distance": float((x[:n] - y[:n]).norm(dim=1).mean())}

    return MeanDistance


def test_the_kit_accepts_every_built_in_metric_and_a_correctly_labelled_one() -> None:
    check_metric(_w2_like("data units"))
    for entry in REGISTRY.entries("metric"):
        check_metric(entry.cls)


def test_the_kit_rejects_a_metric_that_mislabels_its_unit() -> None:
    with pytest.raises(ConformanceError, match=r"says its unit is '1'.*factor 10.*behaves as in data units"):
        check_metric(_w2_like("1"))
    with pytest.raises(ConformanceError, match=r"says its unit is 'data units²'.*behaves as in data units"):
        check_metric(_w2_like("data units²"))


class SamplesItself(Metric):
    """Draws its own samples with the harness's sampler instead of declaring ``sample``."""

    name = "probe_samples_itself"
    description = "a metric that solves the model itself"
    group = "probe"
    columns = (Column("probe_spread", "data units", "spread of its own samples", goal="min"),)
    needs = ("model",)

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        from cnfbench.testing.reference import RK4

        field = inputs["model"].field
        samples = sample_model(field, RK4(steps=4), 64, torch.Generator().manual_seed(0), torch.device("cpu"))
        return {"probe_spread": float(samples.std())}


class IntegratesTheField(Metric):
    """Integrates the raw field by hand (its own Euler loop), outside the harness's dynamics."""

    name = "probe_integrates"
    description = "a metric that integrates the field itself"
    group = "probe"
    columns = (Column("probe_end", "data units", "norm of its own end points", goal="min"),)
    needs = ("model", "test")

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        field, z = inputs["model"].field, torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
        for step in range(10):
            z = z + 0.1 * field(torch.tensor(step / 10), z)
        return {"probe_end": float(z.norm(dim=1).mean())}


class PushesItsOwnDraws(Metric):
    """Pushes base draws of its own forward: the ``sample`` input by another name."""

    name = "probe_pushes"
    description = "a metric that pushes its own draws forward"
    group = "probe"
    columns = (Column("probe_pushed", "data units", "norm of its own samples", goal="min"),)
    needs = ("model",)

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        z0 = torch.randn(64, inputs.dim, generator=inputs.generator("base"))
        x, _ = inputs["model"].push_forward(z0)
        return {"probe_pushed": float(x.norm(dim=1).mean())}


@pytest.mark.parametrize(("cls", "message"), [
    (SamplesItself, "computed an input itself instead of declaring it: .*solved the model itself"),
    (IntegratesTheField, "evaluated the field at 10 distinct times outside model.push_forward"),
    (PushesItsOwnDraws, "pushed points forward that come from none of its declared inputs"),
])
def test_the_kit_rejects_a_metric_that_computes_an_input_itself(cls: type[Metric], message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_metric(cls)


class ReadsUndeclared(Metric):
    name = "probe_undeclared"
    description = "reads an input it does not declare"
    group = "probe"
    columns = (Column("probe_undeclared", "1", "anything", goal="min"),)
    needs = ("test",)

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        return {"probe_undeclared": float(inputs["sample"].x.mean())}


class StrayColumn(Metric):
    name = "probe_stray"
    description = "returns a column it does not declare"
    group = "probe"
    columns = (Column("probe_declared", "1", "declared", goal="min"),)
    needs = ("test",)

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        return {"probe_declared": 1.0, "probe_other": 2.0}


def test_the_kit_names_an_undeclared_input_a_stray_column_and_an_unknown_input() -> None:
    with pytest.raises(ConformanceError, match="reads input 'sample', which it does not declare"):
        check_metric(ReadsUndeclared)
    with pytest.raises(ConformanceError, match="returned column probe_other, not among its declared columns"):
        check_metric(StrayColumn)

    class UnknownInput(StrayColumn):
        name = "probe_unknown_input"
        needs = ("samples",)

    with pytest.raises(ConformanceError, match="needs unknown input 'samples'"):
        check_metric(UnknownInput)


def test_metrics_resolve_by_name_group_all_and_default() -> None:
    assert resolve_metrics(REGISTRY, ()) is None and resolve_metrics(REGISTRY, ("default",)) is None
    names = [spec.name for spec in resolve_metrics(REGISTRY, ("default,w2",))]
    defaults = [entry.name for entry in REGISTRY.entries("metric") if entry.cls.default]
    assert set(names) == {*defaults, "w2"} and "nll_ref" in names and "mass_ref" not in names
    assert {spec.name for spec in resolve_metrics(REGISTRY, ("samples",))} == {
        "energy_distance", "sliced_w2", "w2", "mmd", "c2st", "marginal_ks"}
    assert len(resolve_metrics(REGISTRY, "all")) == len(REGISTRY.names("metric"))
    (c2st,) = resolve_metrics(REGISTRY, ("c2st[folds=3]",))
    assert dict(c2st.params)["folds"] == 3
    with pytest.raises(ParamError, match=r"unknown metric 'sliced_w3'.*did you mean 'sliced_w2'"):
        resolve_metrics(REGISTRY, ("likelihood,sliced_w3",))
    with pytest.raises(ParamError, match="the group 'samples' takes no parameters"):
        resolve_metrics(REGISTRY, ("samples[folds=2]",))


def test_an_unknown_metric_is_one_line_and_exit_2(cli, tmp_path: Path) -> None:
    result = cli("run", "--metrics", "nll,mmmd", "--name", "bad")
    assert result.exit_code == 2
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("Error: --metrics: unknown metric 'mmmd'") and "did you mean 'mmd'" in line
    assert not (tmp_path / "results" / "bad").exists()


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count how often the harness computes each input (the run goes inline, in this process)."""
    calls: dict[str, int] = {}
    for name, spec in list(metric_plan.INPUTS_BY_NAME.items()):
        def produce(setup: Any, got: Any, _name: str = name, _produce: Any = spec.produce) -> Any:
            calls[_name] = calls.get(_name, 0) + 1
            return _produce(setup, got)

        monkeypatch.setitem(metric_plan.INPUTS_BY_NAME, name, metric_plan.InputSpec(
            spec.name, spec.phase, produce, spec.needs, spec.columns, spec.requires))
    return calls


def test_each_input_is_computed_once_and_only_for_the_chosen_metrics(cli, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    result = cli("run", "--metrics", "energy_distance,sliced_w2,mmd,marginal_ks,nll", "--solver",
                 "euler[steps=2]", "--isolation", "inline", "--name", "shared")
    assert result.exit_code == 0, result.output
    assert calls == {"eval": 1, "sample": 1, "test": 1}  # four sample metrics, one sampling solve
    (row,) = pd.read_parquet(tmp_path / "results" / "shared" / "cells.parquet").to_dict("records")
    assert row["metrics"] == "energy_distance,marginal_ks,mmd,nll,sliced_w2"  # in the registry's (name) order
    assert math.isnan(row["nll_ref"]) and math.isnan(row["ref_time_s"]) and row["nfe_sample"] == 2
    assert "metrics not computed: " in result.output and "nll_ref" in result.output

    calls.clear()
    again = cli("evaluate", str(tmp_path / "results" / "shared"), "--metrics", "nll_ref", "--isolation", "inline")
    assert again.exit_code == 0, again.output
    assert calls == {"ref": 1}  # one reference solve per cell, and nothing else
    (after,) = pd.read_parquet(tmp_path / "results" / "shared" / "cells.parquet").to_dict("records")
    assert after["metrics"] == "energy_distance,marginal_ks,mmd,nll,nll_ref,sliced_w2"
    assert math.isfinite(after["nll_ref"]) and after["energy_distance"] == row["energy_distance"]
    assert after["nfe_sample"] == row["nfe_sample"] and after["nll"] == row["nll"]


class Broken(Metric):
    name = "probe_broken"
    description = "always fails"
    group = "probe"
    columns = (Column("probe_broken_value", "1", "never written", goal="min"),)
    needs = ("sample",)

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        raise RuntimeError("no luck; try again")


def test_a_failing_metric_leaves_its_columns_empty_and_the_cell_done(cli, tmp_path: Path) -> None:
    plugin = tmp_path / "broken.py"
    plugin.write_text("from cnfbench.hookspecs import hookimpl\n"
                      "from test_metric_family import Broken\n\n"
                      "@hookimpl\ndef cnfbench_metrics():\n    return [Broken]\n")
    result = cli("run", "--plugin", str(plugin), "--metrics", "nll,probe_broken,energy_distance",
                 "--solver", "euler[steps=2]", "--isolation", "inline", "--name", "broken")
    assert result.exit_code == 0, result.output
    (row,) = pd.read_parquet(tmp_path / "results" / "broken" / "cells.parquet").to_dict("records")
    assert row["status"] == "done" and math.isnan(row["probe_broken_value"])
    assert math.isfinite(row["energy_distance"])  # the metric that shares its input still ran
    assert row["metrics_note"] == "probe_broken: failed: RuntimeError: no luck, try again"
    assert "note: metric probe_broken failed: RuntimeError: no luck, try again (1 cell: " in \
        " ".join(result.output.split())


def test_a_metric_the_dataset_cannot_serve_is_skipped_with_a_note(cli, tmp_path: Path) -> None:
    options = [item for item in TINY if "8gaussians" not in item and item != "--dataset"]
    result = cli("run", *options, "--dataset", "gaussian_mixture[dim=3,n_train=256,n_val=32,n_test=64]",
                 "--metrics", "nll,mass,entropy", "--solver", "euler[steps=2]", "--name", "skip", tiny=False)
    assert result.exit_code == 0, result.output
    (row,) = pd.read_parquet(tmp_path / "results" / "skip" / "cells.parquet").to_dict("records")
    assert row["status"] == "done" and row["metrics"] == "entropy,nll" and math.isnan(row["mass"])
    assert row["metrics_note"] == "mass: skipped: needs a 2-D dataset"
    assert "note: metric mass skipped: needs a 2-D dataset (1 cell: gaussian_mixture)" in " ".join(
        result.output.split())


def test_the_plugin_listing_shows_each_metrics_group_inputs_and_columns(cli) -> None:
    import json

    listing = cli("plugins", "--family", "metric")
    assert listing.exit_code == 0
    assert "group samples · default no · needs sample, test · columns w2" in " ".join(listing.output.split())
    assert "group validity · default yes · needs grid · requires a 2-D dataset · columns mass" in \
        " ".join(listing.output.split())
    (w2,) = [item for item in json.loads(cli("plugins", "--family", "metric", "--json").output)["components"]
             ["metrics"] if item["name"] == "w2"]
    assert w2["facts"] == {"group": "samples", "default": "no", "needs": "sample, test", "columns": "w2"}
