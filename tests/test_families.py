"""The families table is the one place that enumerates families: everything else derives from it.

These tests say what a new family needs besides its row (a contract class, a conformance check, a scaffold
template) and check that the cell JSON, the rows, the configuration, the CLI and the plugin listing follow
the table.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from cnfbench import contracts
from cnfbench.cells import Cell
from cnfbench.cli import main
from cnfbench.config import RunConfig, resolve_cells
from cnfbench.families import AXIS_KEYS, EVAL_SLOTS, FAMILY_TABLE, GRID_AXES
from cnfbench.registry import load_registry
from cnfbench.rows import identity_columns
from cnfbench.scaffold import FAMILY_ORDER
from cnfbench.testing import CHECKS


def test_every_family_has_a_contract_a_check_and_a_template() -> None:
    for row in FAMILY_TABLE:
        assert isinstance(getattr(contracts, row.contract), type), row.key
        assert contracts.FAMILIES[row.key].base is getattr(contracts, row.contract)
        assert row.key in CHECKS and row.key in FAMILY_ORDER, row.key
    for slot in EVAL_SLOTS:
        assert slot.family in contracts.FAMILIES


def test_cells_rows_and_config_follow_the_table() -> None:
    registry = load_registry()
    (cell,) = resolve_cells(RunConfig(iterations=1), registry)
    data = cell.to_json()
    implicit = [row.key for row in GRID_AXES if row.implicit and cell.axes[row.key].label() == row.implicit]
    assert implicit == ["objective", "optimizer"]  # the default mle and adam are left out: 0.1.0 ids stay the same
    assert [key for key in data if key in AXIS_KEYS] == [key for key in AXIS_KEYS if key not in implicit]
    (flow,) = resolve_cells(RunConfig(iterations=1, objective=("cfm",), optimizer=("adamw",)), registry)
    assert [key for key in flow.to_json() if key in AXIS_KEYS] == list(AXIS_KEYS)
    assert Cell.from_json(json.loads(json.dumps(flow.to_json()))) == flow and flow.cell_id != cell.cell_id
    assert set(data["evaluation"]) >= {slot.json_key for slot in EVAL_SLOTS}
    assert Cell.from_json(json.loads(json.dumps(data))) == cell
    row = identity_columns(cell)
    for axis in GRID_AXES:
        assert row[axis.column] == cell.axes[axis.key].name and row[axis.spec_column] == cell.axes[axis.key].label()
    for slot in EVAL_SLOTS:
        assert row[slot.spec_column] == cell.evaluation.slots[slot.key].label()
        assert getattr(RunConfig(), slot.config_key) == slot.default
    for axis in GRID_AXES:
        assert getattr(RunConfig(), axis.config_key) == axis.default


def test_the_run_options_and_the_plugin_listing_come_from_the_table() -> None:
    run = main.commands["run"]
    options = {opt for param in run.params if isinstance(param, click.Option) for opt in param.opts}
    assert {row.option for row in GRID_AXES} | {slot.option for slot in EVAL_SLOTS} <= options
    listing = CliRunner().invoke(main, ["plugins", "--json"])
    assert listing.exit_code == 0
    assert set(json.loads(listing.output)["components"]) == {row.plural for row in FAMILY_TABLE}


@pytest.mark.parametrize("command", [["--help"], ["run", "--help"], ["report", "--help"], ["compare", "--help"],
                                     ["merge", "--help"], ["plugins", "--help"], ["new-plugin", "--help"],
                                     ["sample", "--help"], ["evaluate", "--help"],
                                     ["data", "download", "--help"]])
def test_help_imports_no_torch_pandas_or_matplotlib(command: list[str]) -> None:
    code = ("import sys\nfrom cnfbench.cli import main\n"
            f"try:\n    main({command!r})\nexcept SystemExit:\n    pass\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pandas', 'matplotlib'})\n"
            "print('HEAVY', heavy)\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "HEAVY []" in completed.stdout, completed.stdout[-300:]
