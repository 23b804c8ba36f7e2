"""No traceback and no lost cell on any input: ranges, output locations, damaged files, meaningful settings.

Every command is driven with extreme and malformed values (huge, negative,
NaN, empty, unicode, files where folders are expected); each must exit 0 or
2, refuse with one ``Error:`` line, and write nothing when it refuses.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result
from conftest import TINY, read_cells
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnfbench.cli import main
from cnfbench.config import MAX_MASS_GRID, RANGES
from cnfbench.run_folder import RunStore
from cnfbench.summary import validity_notes
from cnfbench.validity import MASS_TOLERANCE, grid_resolution_note, suggested_grid, validity

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in root.rglob("*")}


def _assert_refused_in_one_line(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith(("warning:", "note:"))]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------- comma lists, ranges


@pytest.mark.parametrize(("value", "fragment"), [
    ("euler,,rk4", "--solver: empty item (item 2 of 'euler,,rk4')"),
    ("", "--solver: empty item ('')"),
    ("euler,", "--solver: empty item (item 2 of 'euler,')"),
    ("euler,rk4[steps=2", "--solver: unbalanced '['"),
])
def test_an_empty_or_broken_list_item_names_the_option_and_position(cli, tmp_path: Path, value: str,
                                                                     fragment: str) -> None:
    line = _assert_refused_in_one_line(cli("run", "--solver", value, "--dry-run"))
    assert fragment in line


@pytest.mark.parametrize("option", sorted(RANGES))
def test_every_numeric_option_has_an_upper_and_lower_bound(cli, tmp_path: Path, option: str) -> None:
    flag = f"--{option.replace('_', '-')}"
    bounds = RANGES[option]
    for value in (str(10**30), "-1", str(int(bounds.high) + 1) if bounds.integer else str(bounds.high * 2)):
        line = _assert_refused_in_one_line(cli("run", flag, value, "--name", "r"))
        assert flag in line and "must be" in line and "<=" in line, line
    assert not (tmp_path / "results").exists()


def test_huge_seeds_are_refused_even_with_dry_run(cli) -> None:
    line = _assert_refused_in_one_line(cli("run", "--seeds", str(10**30), "--dry-run"))
    assert "--seeds must be an integer >= 1 and <= 10000" in line


def test_the_mass_grid_cannot_ask_for_more_points_than_memory_holds(cli) -> None:
    line = _assert_refused_in_one_line(cli("run", "--mass-grid", "100000000", "--dry-run"))
    assert f"<= {MAX_MASS_GRID}" in line


def test_a_config_file_names_the_key_not_an_option(cli, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"batch_size = {10**18}\n")
    line = _assert_refused_in_one_line(cli("run", "--config", str(config), "--dry-run"))
    assert f"config file {str(config)!r}: 'batch_size' must be an integer" in line


@pytest.mark.parametrize("selector", ["concatsquash[hidden=1000000000x64]", f"concatsquash[hidden={10**30}]",
                                      f"gaussian_mixture[dim={10**12}]"])
def test_component_parameters_have_bounds_too(cli, selector: str) -> None:
    option = "--field" if selector.startswith("concat") else "--dataset"
    line = _assert_refused_in_one_line(cli("run", option, selector, "--dry-run"))
    assert "bad value" in line


def test_the_grid_size_is_bounded(cli) -> None:
    solvers = ",".join(f"euler[steps={n}]" for n in range(1, 12))
    line = _assert_refused_in_one_line(cli("run", "--solver", solvers, "--seeds", "10000", "--dry-run"))
    assert "the grid has 110000 cells" in line


# ---------------------------------------------------------------------------------------------- output locations


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A folder with a copy of the reference run, a plain file and nothing else."""
    shutil.copytree(REFERENCE, tmp_path / "ref", ignore=shutil.ignore_patterns("plots", "report.html"))
    (tmp_path / "afile").write_text("not a folder\n")
    return tmp_path


def test_every_writing_command_checks_its_output_location_first(workspace: Path) -> None:
    ref, afile = str(workspace / "ref"), str(workspace / "afile")
    refusals = [
        (("run", "--out", afile, "--solver", "euler[steps=2]", "--iterations", "1"), "is a file, not a folder"),
        (("run", "--out", f"{afile}/deeper", "--iterations", "1"), "is a file, not a folder"),
        (("report", ref, "--html", "--out", f"{afile}/x"), "is a file, not a folder"),
        (("report", ref, "--plots", "--out", "/proc/cnfbench-no-such-place"), "not writable"),
        (("report", ref, "--markdown", str(workspace)), "it is a folder, not a file"),
        (("report", ref, "--latex", f"{afile}/table.tex"), "is a file, not a folder"),
        (("compare", ref, ref, "--json", f"{afile}/c.json"), "is a file, not a folder"),
        (("merge", f"{afile}/merged", ref), "is a file, not a folder"),
        (("sample", ref, "-n", "5", "--out", f"{afile}/s.npy"), "is a file, not a folder"),
        (("new-plugin", "my-plug", "--dir", afile), "it is a file, not a folder"),
    ]
    for args, fragment in refusals:
        before = _snapshot(workspace)
        line = _assert_refused_in_one_line(_invoke(*args))
        assert fragment in line, (args, line)
        assert _snapshot(workspace) == before, args


_HUGE = st.sampled_from([str(10**30), "-1", "0", "nan", "inf", "-inf", "1e308", "9223372036854775808", "", " "])
_TEXT = st.one_of(
    st.sampled_from(["", " ", ",", ",,", "[", "]", "x[=]", "euler[steps=]", "ü∂ß", "\u202e", "a" * 300, "-",
                     "euler[steps=99999999999999999999999]", "dopri5[rtol=nan]", "nll,,nfe", "dataset,,solver"]),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20),
)


@st.composite
def _paths(draw: st.DrawFn, root: Path) -> str:
    """A file where a folder is expected, a folder where a file is expected, a path through a file, or new."""
    return draw(st.sampled_from([str(root / "afile"), str(root / "afile" / "below"), str(root),
                                 str(root / "new" / "deep" / "x"), "new/relative", "/proc/cnfbench-nowhere", "", " "]))


def _commands(root: Path) -> st.SearchStrategy[list[str]]:
    ref = str(root / "ref")
    paths = _paths(root)
    numeric = st.sampled_from(["--seeds", "--first-seed", "--iterations", "--batch-size", "--lr", "--max-nfe",
                               "--eval-batch-size", "--mass-grid", "--timeout"])
    textual = st.sampled_from(["--dataset", "--field", "--solver", "--trace", "--eval-trace", "--ref-solver",
                               "--device", "--name"])
    run = st.lists(st.one_of(st.tuples(numeric, _HUGE), st.tuples(textual, _TEXT),
                             st.tuples(st.just("--out"), paths)), min_size=1, max_size=4).map(
        lambda pairs: ["run", "--dry-run", *(item for pair in pairs for item in pair)])
    report_options = st.one_of(
        st.tuples(st.sampled_from(["--metric", "--rows", "--cols"]), _TEXT),
        st.tuples(st.sampled_from(["--markdown", "--csv", "--latex", "--json"]), paths),
        st.tuples(st.just("--stat"), _TEXT),
    )
    report = st.lists(report_options, max_size=3).map(
        lambda pairs: ["report", ref, *(item for pair in pairs for item in pair)])
    plots = st.tuples(st.sampled_from(["--plots", "--html"]), paths).filter(lambda p: "afile" in p[1] or "proc" in p[1])
    report_plots = plots.map(lambda pair: ["report", ref, pair[0], "--out", pair[1]])
    compare_options = st.one_of(
        st.tuples(st.sampled_from(["--factor", "--alpha"]), _HUGE),
        st.tuples(st.just("--metric"), _TEXT),
        st.tuples(st.sampled_from(["--markdown", "--json"]), paths),
    )
    compare = st.lists(compare_options, max_size=3).map(
        lambda pairs: ["compare", ref, ref, *(item for pair in pairs for item in pair)])
    merge = st.tuples(paths, st.sampled_from([ref, str(root / "afile"), str(root / "nothing"), ""])).map(
        lambda pair: ["merge", *pair])
    new_plugin = st.tuples(_TEXT, paths, st.sampled_from(["field", "all", "", "nope", "solver,,trace"])).map(
        lambda t: ["new-plugin", t[0] or "x", "--dir", t[1], "--family", t[2]])
    plugins = _TEXT.map(lambda text: ["plugins", "--plugin", text])
    models = root / "models"  # a run with one model file, when the test put one there; the fuzzed options
    # come after valid ones, so that some commands succeed (click keeps an option's last value)
    cells = sorted(path.name.split(".")[0] for path in models.glob("models/*.safetensors"))
    sample_options = st.one_of(
        st.tuples(st.just("-n"), st.one_of(_HUGE, st.sampled_from(["1", "5"]))),
        st.tuples(st.just("--cell"), st.one_of(_TEXT, st.sampled_from([*cells, "0123456789abcdef", "../ref"]))),
        st.tuples(st.just("--seed"), st.one_of(_HUGE, st.just("3"))),
        st.tuples(st.just("--solver"), st.one_of(_TEXT, st.sampled_from(["euler[steps=1]", "rk4,euler"]))),
        st.tuples(st.just("--device"), st.one_of(_TEXT, st.sampled_from(["cpu", "cuda", "cuda:99"]))),
        st.tuples(st.just("--out"), st.one_of(paths, st.sampled_from(
            ["new/s.npy", str(root / "new" / "deep" / "s.parquet"), str(root / "afile" / "s.npy"), "/proc/x.npy",
             str(root / "afile"), "new/s.csv", "new/s.npy/"]))),
    )
    sample = st.tuples(st.sampled_from([str(models), ref, str(root / "afile"), str(root / "nothing"), ""]),
                       st.lists(sample_options, max_size=5)).map(
        lambda t: ["sample", t[0], "-n", "2", "--out", "new/s.npy", *(item for pair in t[1] for item in pair)])
    return st.one_of(run, report, report_plots, compare, merge, new_plugin, plugins, sample)


@pytest.fixture(scope="module")
def models_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-cell run with its model file."""
    root = tmp_path_factory.mktemp("models")
    result = CliRunner().invoke(main, ["run", *TINY, "--solver", "euler[steps=2]", "--mass-grid", "0",
                                       "--isolation", "inline", "--out", str(root), "--name", "models"])
    assert result.exit_code == 0, result.output
    return root / "models"


@pytest.mark.parametrize("command", ["run", "report", "compare", "merge", "new-plugin", "plugins", "sample"])
def test_every_command_survives_extreme_and_malformed_values(workspace: Path, command: str,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            request: pytest.FixtureRequest) -> None:
    monkeypatch.chdir(workspace)  # a relative or empty path lands in the workspace, which is watched
    if command == "sample":
        shutil.copytree(request.getfixturevalue("models_run"), workspace / "models")
    strategy = _commands(workspace).filter(lambda argv: argv[0] == command)

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(strategy)
    def check(argv: list[str]) -> None:
        before = _snapshot(workspace)
        result = _invoke(*argv)
        assert "Traceback" not in result.output and "Traceback" not in result.stderr, argv
        assert result.exception is None or isinstance(result.exception, SystemExit), (argv, repr(result.exception))
        assert result.exit_code in (0, 2), (argv, result.exit_code, result.output)
        if result.exit_code == 2:
            _assert_refused_in_one_line(result)
            assert _snapshot(workspace) == before, argv
        shutil.rmtree(workspace / "new", ignore_errors=True)  # what a successful command wrote there

    check()


# ---------------------------------------------------------------------------------------------- damaged cells.parquet


def _damage(run_dir: Path) -> bytes:
    damaged = b"PAR1 this is not a parquet file"
    (run_dir / "cells.parquet").write_bytes(damaged)
    return damaged


def _damaged_copy(run_dir: Path) -> Path:
    (copy,) = run_dir.glob("cells.parquet.damaged-*")
    return copy


@pytest.mark.parametrize("command", ["report", "compare", "merge"])
def test_reading_commands_set_a_damaged_parquet_aside_and_use_the_csv(workspace: Path, command: str) -> None:
    run_dir = workspace / "ref"
    damaged = _damage(run_dir)
    args = {"report": ["report", str(run_dir)],
            "compare": ["compare", str(run_dir), str(REFERENCE)],
            "merge": ["merge", str(workspace / "merged"), str(run_dir)]}[command]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.stderr.splitlines() if line.startswith("warning:"))
    assert "cells.parquet is unreadable" in warning and "set aside as cells.parquet.damaged-" in warning
    assert "using" in warning and "cells.csv" in warning
    assert _damaged_copy(run_dir).read_bytes() == damaged
    if command == "merge":
        assert len(pd.read_parquet(workspace / "merged" / "cells.parquet")) == 4


def test_a_resumed_run_sets_a_damaged_parquet_aside_uses_the_csv_and_never_overwrites_it(cli, tmp_path: Path) -> None:
    args = ("run", "--solver", "euler[steps=2]", "--name", "res", "--isolation", "inline", "--iterations", "1")
    assert cli(*args).exit_code == 0
    run_dir = tmp_path / "results" / "res"
    damaged = _damage(run_dir)
    result = cli(*args[:-2], "--iterations", "1", "--seeds", "2")
    assert result.exit_code == 0, result.output
    assert "set aside as cells.parquet.damaged-" in result.stderr
    assert "skipping 1 cell already done" in result.stderr  # the CSV's row was used
    assert _damaged_copy(run_dir).read_bytes() == damaged  # the next writes went to a new cells.parquet
    assert sorted(read_cells(tmp_path, "res")["seed"]) == [0, 1]


def test_two_damaged_copies_in_the_same_second_are_both_kept(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    for content in (b"first", b"second"):
        (tmp_path / "cells.parquet").write_bytes(content)
        store.set_aside(tmp_path / "cells.parquet")
    assert sorted(p.read_bytes() for p in tmp_path.glob("cells.parquet.damaged-*")) == [b"first", b"second"]


# ---------------------------------------------------------------------------------------------- no finished cell lost

HUGE_METRIC_PLUGIN = '''
from cnfbench.hookspecs import hookimpl


@hookimpl
def cnfbench_cell_metrics(cell):
    return {"huge": 10**30, "mixed": "text" if cell["seed"] == 0 else 1.5}
'''


def test_a_value_parquet_cannot_store_is_kept_as_text_and_the_row_is_written(cli, tmp_path: Path) -> None:
    plugin = tmp_path / "huge_metric.py"
    plugin.write_text(HUGE_METRIC_PLUGIN)
    result = cli("run", "--plugin", str(plugin), "--solver", "euler[steps=2]", "--iterations", "1", "--seeds", "2",
                 "--isolation", "inline", "--name", "huge")
    assert result.exit_code == 0, result.output
    assert "column 'huge'" in result.stderr and "stored as text" in result.stderr
    cells = read_cells(tmp_path, "huge").sort_values("seed")
    assert list(cells["status"]) == ["done", "done"]
    assert list(cells["huge"]) == [str(10**30)] * 2 and list(cells["mixed"]) == ["text", "1.5"]
    csv = pd.read_csv(tmp_path / "results" / "huge" / "cells.csv")
    assert len(csv) == 2


# ---------------------------------------------------------------------------------------------- meaningful settings


@pytest.mark.parametrize(("ref", "what"), [("euler[steps=2]", "is a fixed-step solver"),
                                           ("rk4", "is a fixed-step solver"),
                                           ("dopri5[rtol=1e-3,atol=1e-7]", "error tolerance of 0.001")])
def test_a_fixed_step_or_loose_reference_is_refused_unless_allowed(cli, tmp_path: Path, ref: str, what: str) -> None:
    line = _assert_refused_in_one_line(cli("run", "--ref-solver", ref, "--name", "loose"))
    assert what in line and "--allow-loose-ref" in line
    assert not (tmp_path / "results").exists()
    allowed = cli("run", "--ref-solver", ref, "--allow-loose-ref", "--dry-run")
    assert allowed.exit_code == 0 and "ref_loose = true" in allowed.stderr
    config = tmp_path / "loose.toml"
    config.write_text(f'ref_solver = "{ref}"\nallow_loose_ref = true\n')
    assert cli("run", "--config", str(config), "--dry-run").exit_code == 0


def test_every_row_of_a_loose_reference_run_says_so(cli, tmp_path: Path) -> None:
    result = cli("run", "--ref-solver", "rk4[steps=3]", "--allow-loose-ref", "--solver", "euler[steps=2]",
                 "--iterations", "1", "--seeds", "2", "--isolation", "inline", "--name", "loose")
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "loose")
    assert list(cells["ref_loose"]) == [True, True]
    assert "warning: nll_ref of 2 cells comes from the loose reference solve rk4[steps=3" in result.output
    tight = cli("run", "--solver", "euler[steps=2]", "--iterations", "1", "--isolation", "inline", "--name", "tight")
    assert tight.exit_code == 0 and list(read_cells(tmp_path, "tight")["ref_loose"]) == [False]


def test_duplicate_grid_items_are_reported_and_kept_once(cli) -> None:
    result = cli("run", "--solver", "euler,euler[steps=10],rk4", "--trace", "exact,exact", "--dry-run")
    assert result.exit_code == 0
    assert "--solver: euler and euler[steps=10] are the same solver (euler[steps=10,adjoint=false]); kept once" \
        in result.stderr
    assert "--trace: exact and exact are the same trace" in result.stderr
    assert "2 cells would run" in result.output


def test_the_mass_flag_uses_the_reference_mass_when_the_grid_cannot_resolve_one() -> None:
    base = {"nll": 3.0, "entropy": 2.8, "nll_minus_entropy_stderr": 0.01, "mass_grid": 4}
    assert validity({**base, "mass": 1.135, "mass_ref": 1.0}) == (
        False, f"the solver's density integrates to 1.135, not 1 (tolerance {MASS_TOLERANCE})")
    assert validity({**base, "mass": 0.83, "mass_ref": 0.82})[0]  # a quadrature error, not the solver's
    valid, reason = validity({**base, "mass": 1.0, "mass_ref": 0.82})
    assert not valid and "reference solve's integrates to 0.820" in reason and "too coarse" in reason
    note = grid_resolution_note({**base, "mass": 0.83, "mass_ref": 0.82})
    assert "4x4 mass grid" in note and f"--mass-grid {suggested_grid(4, 0.82)} or more" in note
    assert suggested_grid(4, 0.82) >= 80 and grid_resolution_note({**base, "mass_ref": 1.001}) == ""
    # the midpoint rule's error falls as 1/n²: the suggested grid brings 0.18 within a third of the tolerance
    assert 0.18 * (4 / suggested_grid(4, 0.82)) ** 2 <= MASS_TOLERANCE / 3 + 1e-12
    rows = pd.DataFrame([{**base, "status": "done", "valid": True, "validity_reason": "", "mass": 0.83,
                          "mass_ref": 0.82, "dataset": "8gaussians", "dataset_spec": "8gaussians",
                          "solver_spec": "euler", "seed": 0}])
    assert validity_notes(rows) == [f"warning: 8gaussians: {note}"]


def test_a_coarse_mass_grid_is_warned_about_before_and_after_the_run(cli, tmp_path: Path) -> None:
    result = cli("run", "--solver", "euler[steps=2]", "--iterations", "1", "--mass-grid", "3", "--isolation",
                 "inline", "--metrics", "default,mass_ref", "--name", "coarse")
    assert result.exit_code == 0, result.output
    assert "note: --mass-grid 3: a 3x3 grid is too coarse" in result.stderr
    row = read_cells(tmp_path, "coarse").iloc[0]
    assert math.isfinite(row["mass_ref"])
    if abs(row["mass_ref"] - 1) > MASS_TOLERANCE:
        assert "warning: 8gaussians" in result.output and "use --mass-grid" in result.output
