"""Published protocols: documents as data, narrowing and overriding, rows that say how they deviated, the paper's
numbers beside the run's, the built-ins, and the kit's check of a protocol.

The end-to-end runs use a tiny protocol of their own (a ``--plugin`` file), so that they take seconds; the
built-in protocols are checked by the kit (every scale resolves to cells) and listed with their costs.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from click.testing import Result
from conftest import read_cells

from cnfbench.config import RunConfig, resolve_grid
from cnfbench.params import ParamError
from cnfbench.protocols import (
    OFF,
    WITHIN_PM,
    WITHIN_TOLERANCE,
    ProtocolError,
    parse,
    protocol_configs,
    published_table,
)
from cnfbench.registry import load_registry
from cnfbench.testing import ConformanceError, check_protocol

REGISTRY = load_registry()

TINY_PROTOCOL = """
name = "tiny-fm"
title = "Flow matching on a small 8gaussians, for tests"
sources = ["the tests of cnfbench"]
notes = ["NLL in nats per sample"]
deviations = ["none: it is its own paper"]
not_expressible = ["a non-Gaussian source"]

[settings]
objective = ["cfm[sigma=0.1]"]
field = ["mlp[hidden=8-8]"]
optimizer = ["adamw[weight_decay=1e-5]"]
solver = ["euler[steps=4]"]
ref_solver = "dopri5[rtol=1e-6,atol=1e-6]"
batch_size = 64
seeds = 2
mass_grid = 0
metrics = ["nll"]

[scales.full]
epochs = 2

[scales.quick]
iterations = 2
comparable = false
why = "two iterations"

[[groups]]
name = "gaussians"
dataset = ["8gaussians[n_train=128,n_val=32,n_test=64]"]

[[groups]]
name = "moons"
dataset = ["moons[n_train=128,n_val=32,n_test=64]"]

[[published]]
group = "gaussians"
objective = "cfm"
column = "nll"
value = 5.0
pm = 100.0
unit = "nats"
paper = "Test et al."
table = "Table 1"
row = "CFM, wide"

[[published]]
group = "moons"
objective = "cfm"
column = "nll"
value = -50.0
pm = 0.001
unit = "nats"
paper = "Test et al."
table = "Table 1"
row = "CFM, narrow"

[[published]]
group = "moons"
column = "nll"
value = 1.0
unit = "nats"
paper = "Test et al."
table = "Table 2"
row = "another split"
comparable = false
why = "another test split"
"""


@pytest.fixture
def tiny_plugin(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_protocol.py"
    path.write_text(textwrap.dedent(f'''
        from cnfbench.contracts import Protocol
        from cnfbench.hookspecs import hookimpl

        class Tiny(Protocol):
            name = "tiny-fm"
            description = "tiny flow-matching protocol for tests"

            @classmethod
            def document(cls):
                return {TINY_PROTOCOL!r}

        @hookimpl
        def cnfbench_protocols():
            return [Tiny]
        '''), encoding="utf-8")
    return path


def _run(cli: Callable[..., Result], plugin: Path, *args: str) -> Result:
    return cli("run", "--protocol", "tiny-fm", "--plugin", str(plugin), "--quiet", *args, tiny=False)


# ----------------------------------------------------------------------------------------- documents


def test_the_tiny_document_parses_with_its_groups_scales_and_numbers() -> None:
    spec = parse(TINY_PROTOCOL, "test")
    assert spec.group_names() == ["gaussians", "moons"]
    assert spec.scales["quick"].comparable is False and spec.scales["full"].comparable
    assert [entry.row for entry in spec.published] == ["CFM, wide", "CFM, narrow", "another split"]


@pytest.mark.parametrize(("edit", "message"), [
    (("[scales.quick]", "[scales.quik]"), "unknown scale 'quik'"),
    (('name = "tiny-fm"', 'name = "tiny-fm"\nreproduce = 1'), "unknown key 'reproduce'"),
    (('group = "moons"\nobjective', 'group = "moon"\nobjective'), "names group 'moon'"),
    (("value = 5.0", 'value = "5"'), "value must be a number"),
    (('why = "another test split"', ""), "is not comparable: say why"),
    (("[scales.full]\nepochs = 2", ""), "needs [scales.full]"),
])
def test_a_bad_document_is_one_line_naming_the_key(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("[", r"\[")) as info:
        parse(TINY_PROTOCOL.replace(*edit, 1), "test")
    assert "\n" not in str(info.value)


def test_options_narrow_the_grid_or_override_it_and_overrides_are_recorded() -> None:
    spec = parse(TINY_PROTOCOL, "test")
    plain = protocol_configs(spec, "full", RunConfig(), {}, "test")
    assert [group for group, _ in plain.configs] == ["gaussians", "moons"] and plain.deviations == ()
    assert plain.configs[0][1].epochs == 2 and plain.configs[0][1].optimizer == ("adamw[weight_decay=1e-5]",)
    narrowed = protocol_configs(spec, "full", RunConfig(), {"dataset": ("moons",), "objective": ("cfm",)}, "test")
    assert [group for group, _ in narrowed.configs] == ["moons"] and narrowed.deviations == ()
    assert narrowed.configs[0][1].dataset == ("moons[n_train=128,n_val=32,n_test=64]",)  # the protocol's params
    changed = protocol_configs(spec, "quick", RunConfig(), {"seeds": 3, "solver": ("rk4[steps=2]",),
                                                           "executor": "process[workers=2]"}, "test")
    assert changed.deviations == ("seeds=3 (protocol: 2)", "solver=rk4[steps=2] (protocol: euler[steps=4])")
    assert all(config.seeds == 3 and config.solver == ("rk4[steps=2]",) for _, config in changed.configs)
    assert changed.stamp("moons")["protocol_deviation"] == "seeds=3 (protocol: 2); solver=rk4[steps=2] (protocol: " \
                                                        "euler[steps=4])"
    with pytest.raises(ParamError, match="--scale must be one of full, quick"):
        protocol_configs(spec, "medium", RunConfig(), {}, "test")


# ----------------------------------------------------------------------------------------- verdicts


def _rows(values: dict[tuple[str, str], list[float]], scale: str = "full", deviation: str = "") -> pd.DataFrame:
    return pd.DataFrame([{"protocol": "tiny-fm", "protocol_group": group, "protocol_scale": scale,
                          "protocol_deviation": deviation, "objective": objective, "status": "done", "nll": value}
                         for (group, objective), numbers in values.items() for value in numbers])


def test_published_table_gives_mean_std_difference_and_verdict() -> None:
    spec = parse(TINY_PROTOCOL.replace('row = "CFM, narrow"', 'row = "CFM, narrow"\ntolerance = 60.0'), "test")
    table = published_table(spec, _rows({("gaussians", "cfm"): [4.0, 6.0], ("moons", "cfm"): [3.0, 5.0]}))
    wide, narrow, other = table.to_dict("records")
    assert wide["ours_mean"] == 5.0 and wide["ours_std"] == pytest.approx(math.sqrt(2.0)) and wide["seeds"] == 2
    assert wide["difference"] == 0.0 and wide["verdict"] == WITHIN_PM
    assert narrow["difference"] == 54.0 and narrow["verdict"] == WITHIN_TOLERANCE
    assert other["verdict"] == "not comparable" and other["why"] == "another test split"
    tight = published_table(parse(TINY_PROTOCOL, "test"), _rows({("moons", "cfm"): [3.0, 5.0]}))
    assert tight.loc[1, "verdict"] == OFF and tight.loc[0, "verdict"] == "not run"
    quick = published_table(spec, _rows({("gaussians", "cfm"): [5.0]}, scale="quick"))
    assert quick.loc[0, "verdict"] == "not comparable (quick)" and "two iterations" in quick.loc[0, "why"]
    deviated = published_table(spec, _rows({("gaussians", "cfm"): [5.0]}, deviation="seeds=1 (protocol: 2)"))
    assert deviated.loc[0, "verdict"] == f"{WITHIN_PM} (deviated)" and "seeds=1" in deviated.loc[0, "why"]


# ----------------------------------------------------------------------------------------- end to end


def test_a_protocol_run_writes_protocol_rows_and_report_published_holds_them_against_the_paper(
        cli: Callable[..., Result], tiny_plugin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(cli, tiny_plugin, "--name", "p")
    assert result.exit_code == 0, result.output
    rows = read_cells(tmp_path, "p")
    assert len(rows) == 4 and set(rows["status"]) == {"done"}
    assert set(rows["protocol"]) == {"tiny-fm"} and set(rows["protocol_scale"]) == {"full"}
    assert sorted(set(rows["protocol_group"])) == ["gaussians", "moons"] and set(rows["protocol_deviation"]) == {""}
    assert set(rows["epochs"]) == {2} and set(rows["iterations"]) == {4}  # 2 passes of 128 // 64 minibatches
    assert set(rows["optimizer_spec"]) == {"adamw[weight_decay=1e-05,schedule=constant,warmup=0,clip=0.0,ema=0.0]"}
    latex = tmp_path / "published.tex"
    unknown = cli("report", str(tmp_path / "results" / "p"), "--published")
    assert unknown.exit_code == 2 and "no installed plugin offers" in unknown.output  # a run folder is data
    monkeypatch.setenv("CNFBENCH_PLUGINS", str(tiny_plugin))
    report = cli("report", str(tmp_path / "results" / "p"), "--published", "--latex", str(latex))
    assert report.exit_code == 0, report.output
    flat = " ".join(report.output.split())
    assert WITHIN_PM in flat and " off" in flat and " n/c" in flat and "why: another test split" in flat
    assert "not expressible: a non-Gaussian source" in flat
    mean = rows[rows["protocol_group"] == "gaussians"]["nll"].mean()
    assert f"{mean:.3f}" in flat
    text = latex.read_text()
    assert "\\begin{tabular}" in text and f"{mean:.3f}" in text and "Protocol tiny-fm" in text


def test_an_override_is_noted_and_recorded_in_every_row(cli: Callable[..., Result], tiny_plugin: Path,
                                                         tmp_path: Path) -> None:
    result = _run(cli, tiny_plugin, "--scale", "quick", "--seeds", "1", "--dataset", "moons", "--name", "q")
    assert result.exit_code == 0, result.output
    assert "deviates from protocol tiny-fm: seeds=1 (protocol: 2)" in result.output
    rows = read_cells(tmp_path, "q")
    assert len(rows) == 1 and rows.loc[0, "protocol_group"] == "moons"
    assert rows.loc[0, "protocol_deviation"] == "seeds=1 (protocol: 2)" and rows.loc[0, "iterations"] == 2


@pytest.mark.parametrize(("args", "message"), [
    (("run", "--protocol", "cfm2d"), "unknown protocol 'cfm2d' (`cnfbench protocols` lists them); protocols: "
                                     "cfm-2d, ffjord-tabular, ffjord-toy; did you mean 'cfm-2d'?"),
    (("run", "--scale", "quick"), "--scale chooses a protocol's budget; add --protocol NAME"),
    (("run", "--protocol", "cfm-2d", "--scale", "huge"), "Invalid value for '--scale'"),
])
def test_bad_protocol_options_are_one_line_and_exit_2(cli: Callable[..., Result], args: tuple[str, ...],
                                                       message: str, tmp_path: Path) -> None:
    result = cli(*args, "--dry-run", tiny=False)
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_a_component_the_protocol_lacks_overrides_it_with_a_note(cli: Callable[..., Result]) -> None:
    result = cli("run", "--protocol", "cfm-2d", "--dataset", "swissroll", "--dry-run", tiny=False)
    assert result.exit_code == 0, result.output
    assert "deviates from protocol cfm-2d: dataset=swissroll (protocol: 8gaussians[" in result.output
    assert "10 cells would run" in result.output  # three groups, one dataset now: each cell once


def test_report_published_of_a_run_without_a_protocol_says_how_to_make_one(cli: Callable[..., Result],
                                                                          tmp_path: Path) -> None:
    assert cli("run", "--name", "plain").exit_code == 0
    result = cli("report", str(tmp_path / "results" / "plain"), "--published")
    assert result.exit_code == 2 and "cnfbench run --protocol NAME" in result.output


def test_protocols_lists_each_with_what_it_reproduces_and_its_cost(cli: Callable[..., Result]) -> None:
    result = cli("protocols", "--json")
    assert result.exit_code == 0, result.output
    listing = {item["name"]: item for item in json.loads(result.output)["protocols"]}
    assert set(listing) == {"cfm-2d", "ffjord-tabular", "ffjord-toy"}
    cfm = listing["cfm-2d"]
    assert cfm["reproduces"] == ["Tong et al., SF2M (AISTATS 2024), Table 2"] and cfm["published_numbers"] == 12
    assert cfm["scales"]["full"]["cells"] == 30 and cfm["scales"]["full"]["training_iterations"] == 30 * 19 * 1000
    assert cfm["scales"]["quick"]["comparable"] is False and "moons→8gaussians" in cfm["not_expressible"][0]
    assert listing["ffjord-toy"]["kind"] == "visual"
    text = cli("protocols")
    assert text.exit_code == 0 and "--scale full: 30 cells, 570,000 training iterations" in text.output


# ----------------------------------------------------------------------------------------- the built-ins and the kit


@pytest.mark.parametrize("name", REGISTRY.names("protocol"))
def test_every_built_in_protocol_passes_the_kit(name: str) -> None:
    check_protocol(REGISTRY.get("protocol", name).cls, registry=REGISTRY)


def test_cfm_2d_follows_the_papers_protocol() -> None:
    from cnfbench_plugins.protocols import FlowMatching2D

    spec = parse(FlowMatching2D.document(), "cfm-2d")
    (group, config), *_ = protocol_configs(spec, "full", RunConfig(), {}, "test").configs
    (cell, *_) = resolve_grid(config, REGISTRY, pin=False).cells
    assert cell.field.label() == "mlp[hidden=64-64-64,activation=selu,time=input]"
    assert cell.optimizer.label().startswith("adamw[weight_decay=1e-05,") and cell.budget.lr == 1e-3
    assert cell.budget.batch_size == 512 and cell.budget.epochs == 1000 and cell.budget.iterations == 19_000
    assert cell.solver.label() == "euler[steps=100,adjoint=false]" and cell.budget.select == "best_loss"
    assert dict(cell.dataset.params)["n_test"] == 10_000 and config.seeds == 5
    assert {entry.column for entry in spec.published} == {"w2", "path_energy_normalized"}
    assert len(spec.published) == 12 and all(entry.pm is not None for entry in spec.published)


def test_the_kit_rejects_a_protocol_whose_numbers_name_no_column(tiny_plugin: Path) -> None:
    from cnfbench.contracts import Protocol

    class Broken(Protocol):
        name = "tiny-fm"
        description = "a protocol comparing with a column nobody writes"

        @classmethod
        def document(cls) -> str:
            return TINY_PROTOCOL.replace('column = "nll"', 'column = "nll_typo"', 1)

    with pytest.raises(ConformanceError, match="column 'nll_typo'"):
        check_protocol(Broken, registry=REGISTRY)

    class Unrunnable(Protocol):
        name = "tiny-fm"
        description = "a protocol with a solver that does not exist"

        @classmethod
        def document(cls) -> str:
            return TINY_PROTOCOL.replace('solver = ["euler[steps=4]"]', 'solver = ["eulr"]')

    with pytest.raises(ConformanceError, match="unknown solver 'eulr'"):
        check_protocol(Unrunnable, registry=REGISTRY)


def test_a_config_file_names_the_protocol_and_its_keys_override_it_as_options_do(
        cli: Callable[..., Result], tiny_plugin: Path, tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text('protocol = "tiny-fm"\nscale = "quick"\nseeds = 1\n', encoding="utf-8")
    result = cli("run", "--config", str(config), "--plugin", str(tiny_plugin), "--dry-run", tiny=False)
    assert result.exit_code == 0, result.output
    assert "deviates from protocol tiny-fm: seeds=1 (protocol: 2)" in result.output
    assert "2 cells would run" in result.output  # two groups, one seed
