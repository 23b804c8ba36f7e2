"""Rankings across datasets (``cnfbench report --rank``): ranks, Friedman's test and Nemenyi's critical difference
against hand computations and Demšar's table, a negative control, flagged/failed/missing entries, the performance
profile, the figures' layout, and the refusals through the CLI — all on hand-built result frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats
from test_plot_layout import assert_laid_out
from test_report import cell, frame, write_run

from cnfbench.cli import main
from cnfbench.reports import ReportError
from cnfbench.reports.plots import COLUMN_WIDTH, FULL_WIDTH
from cnfbench.reports.rank_plots import cd_figure, profile_figure
from cnfbench.reports.ranking import critical_difference, friedman_test, nemenyi_q, rank, rank_groups, to_text

DATASETS = ("8gaussians", "moons", "circles", "checkerboard", "2spirals", "pinwheel")


def suite(table: dict[str, dict[int, float | list[float]]], metric: str = "nll_ref", **extra: object) -> pd.DataFrame:
    """Rows for ``table[dataset][steps] = value`` (or one value per seed): configuration ``euler[steps=N]``."""
    rows = []
    for dataset, entries in table.items():
        for steps, values in entries.items():
            for seed, value in enumerate(values if isinstance(values, list) else [values]):
                row = cell("euler4", seed, dataset=dataset, **{metric: value}, **extra)
                row["solver_spec"] = f"euler[steps={steps},adjoint=false]"
                row["cell_id"] = f"{abs(hash((dataset, steps, seed))) % 16**16:016x}"
                rows.append(row)
    return frame(*rows)


# ranks (A, B, C) per dataset: (1, 2, 3), (1, 3, 2), (1, 2, 3), (2, 1, 3) -> average ranks 1.25, 2.0, 2.75
HAND = {"8gaussians": {2: 3.0, 4: 3.1, 8: 3.2}, "moons": {2: 1.0, 4: 1.5, 8: 1.2},
        "circles": {2: 2.0, 4: 2.2, 8: 2.9}, "checkerboard": {2: 4.1, 4: 4.0, 8: 4.6}}


def test_average_ranks_friedman_and_cd_match_a_hand_computation():
    ranking = rank(suite(HAND), "nll_ref")
    assert ranking.configurations == ["euler[steps=2]", "euler[steps=4]", "euler[steps=8]"]
    assert list(ranking.average_ranks.values()) == [1.25, 2.0, 2.75]
    # chi2 = 12 N / (k (k + 1)) * (sum R_j^2 - k (k + 1)^2 / 4) = 12*4/12 * (13.125 - 12) = 4.5; 2 d.o.f.
    assert ranking.friedman.statistic == pytest.approx(4.5)
    assert ranking.friedman.dof == 2
    assert ranking.friedman.p == pytest.approx(math.exp(-4.5 / 2))  # chi2 sf with 2 d.o.f.
    assert ranking.friedman.statistic == pytest.approx(stats.friedmanchisquare(
        [3.0, 1.0, 2.0, 4.1], [3.1, 1.5, 2.2, 4.0], [3.2, 1.2, 2.9, 4.6]).statistic)
    # Iman-Davenport: F = (N - 1) chi2 / (N (k - 1) - chi2) = 3 * 4.5 / 3.5, (2, 6) d.o.f.
    assert ranking.friedman.f_statistic == pytest.approx(13.5 / 3.5)
    assert ranking.friedman.f_dof == (2, 6)
    # CD = q * sqrt(k (k + 1) / (6 N)) with q = 2.343 for k = 3 (Demšar's Table 5a)
    assert ranking.critical_difference == pytest.approx(2.3437 * math.sqrt(12 / 24), abs=1e-3)
    assert not ranking.significant  # p = 0.105
    assert ranking.groups == [ranking.configurations]  # 2.75 - 1.25 < 1.657: one group


@pytest.mark.parametrize(("alpha", "table"), [
    (0.05, [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]),
    (0.10, [1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920]),
])
def test_nemenyi_q_matches_demsar_table(alpha, table):
    for k, expected in zip(range(2, 11), table, strict=True):
        assert nemenyi_q(k, alpha) == pytest.approx(expected, abs=1.5e-3)
    assert critical_difference(4, 10) == pytest.approx(2.569 * math.sqrt(4 * 5 / 60), abs=1e-3)


def test_ties_share_the_average_rank_and_friedman_is_tie_corrected_like_scipy():
    table = {"8gaussians": {2: 3.0, 4: 3.0, 8: 3.2, 16: 3.3}, "moons": {2: 1.0, 4: 1.5, 8: 1.5, 16: 1.5},
             "circles": {2: 2.0, 4: 2.2, 8: 2.9, 16: 2.1}}
    ranking = rank(suite(table), "nll_ref")
    ranks = {c.split("=")[-1].rstrip("]"): ranking.entries[(c, "8gaussians")].rank for c in ranking.configurations}
    assert ranks == {"2": 1.5, "4": 1.5, "8": 3.0, "16": 4.0}
    assert ranking.entries[("euler[steps=16]", "moons")].rank == 3.0  # three tied for ranks 2-4
    columns = [[table[d][s] for d in table] for s in (2, 4, 8, 16)]
    assert ranking.friedman.statistic == pytest.approx(stats.friedmanchisquare(*columns).statistic)
    assert ranking.friedman.p == pytest.approx(stats.friedmanchisquare(*columns).pvalue)


def test_negative_controls_give_no_difference():
    # a Latin square: every configuration takes every rank once -> equal average ranks, chi2 = 0
    latin = {d: {steps: 1.0 + ((i + j) % 4) for j, steps in enumerate((2, 4, 8, 16))}
             for i, d in enumerate(DATASETS[:4])}
    ranking = rank(suite(latin), "nll_ref")
    assert set(ranking.average_ranks.values()) == {2.5}
    assert ranking.friedman.statistic == 0 and ranking.friedman.p == 1.0 and not ranking.significant
    assert ranking.groups == [ranking.configurations]
    # all configurations equal: every dataset one tie
    equal = rank(suite({d: {2: 3.0, 4: 3.0, 8: 3.0} for d in DATASETS[:3]}), "nll_ref")
    assert set(equal.average_ranks.values()) == {2.0} and equal.friedman.p == 1.0
    # the same distribution for every configuration (seeded): no difference found
    rng = np.random.default_rng(7)
    noise = {d: {steps: float(rng.normal(3.0, 0.1)) for steps in (2, 4, 8, 16)} for d in DATASETS}
    assert rank(suite(noise), "nll_ref").friedman.p > 0.2


def test_a_clear_winner_is_significant_and_separated_by_the_cd():
    table = {d: {2: 3.0 + i, 4: 3.5 + i, 8: 4.0 + i, 16: 4.5 + i} for i, d in enumerate(DATASETS)}
    ranking = rank(suite(table), "nll_ref")
    assert list(ranking.average_ranks.values()) == [1.0, 2.0, 3.0, 4.0]
    assert ranking.significant and ranking.friedman.statistic == pytest.approx(18.0)  # N (k - 1), no ties
    assert math.isinf(ranking.friedman.f_statistic)
    cd = critical_difference(4, 6)  # 1.915: 1 and 4 differ, neighbours do not
    assert ranking.critical_difference == pytest.approx(cd)
    names = ranking.configurations
    assert ranking.groups == [names[0:2], names[1:3], names[2:4]]
    assert rank_groups([1.0, 1.0, 3.0], 1.0) == [[0, 1]]


def test_the_goal_comes_from_the_catalogue_mass_closest_to_one():
    table = {d: {2: 1.02, 4: 0.97, 8: 1.30} for d in DATASETS[:3]}
    ranking = rank(suite(table, metric="mass"), "mass")
    assert [round(ranking.average_ranks[c]) for c in ranking.configurations] == [1, 2, 3]
    assert ranking.configurations[0].endswith("steps=2]") and ranking.configurations[2].endswith("steps=8]")


def test_an_entry_is_the_seed_mean():
    table = {d: {2: [3.0, 5.0], 4: 3.5, 8: 4.5} for d in DATASETS[:3]}
    ranking = rank(suite(table), "nll_ref")
    two = next(c for c in ranking.configurations if c.endswith("steps=2]"))
    entry = ranking.entries[(two, "moons")]
    assert entry.value == 4.0 and entry.seeds == 2 and entry.rank == 2.0


def test_flagged_and_failed_entries_rank_last_with_a_note():
    cells = suite({d: {2: 3.0, 4: 3.5, 8: 4.0} for d in DATASETS[:3]})
    best = cells["solver_spec"].str.contains("steps=2,")
    cells.loc[best & (cells["dataset"] == "moons"), "valid"] = False
    cells.loc[~best, "valid"] = True
    failed = cells["solver_spec"].str.contains("steps=4,") & (cells["dataset"] == "circles")
    cells.loc[failed, ["status", "nll_ref"]] = ["diverged", math.nan]
    ranking = rank(cells, "nll_ref")
    by = {c.split("=")[-1].rstrip("]"): c for c in ranking.configurations}
    assert ranking.entries[(by["2"], "moons")].rank == 3.0 and ranking.entries[(by["2"], "moons")].flagged
    assert ranking.entries[(by["4"], "circles")].rank == 3.0
    assert ranking.entries[(by["8"], "circles")].rank == 2.0
    text = to_text(ranking, 200)
    assert "3.000 (!) (3)" in text and "failed (3)" in text
    assert "ranked last, flagged" in text and "ranked last, no finished seed" in text


def test_a_configuration_missing_on_a_dataset_is_left_out_with_a_note():
    table = {d: {2: 3.0, 4: 3.5, 8: 4.0} for d in DATASETS[:3]}
    del table["circles"][8]
    ranking = rank(suite(table), "nll_ref")
    assert len(ranking.configurations) == 2
    assert any("left out: no cell on circles" in note for note in ranking.notes)


def test_performance_profile_of_a_cost_metric():
    times = {"8gaussians": {2: 1.0, 4: 2.0, 8: 4.0}, "moons": {2: 3.0, 4: 1.0, 8: 1.5},
             "circles": {2: 2.0, 4: 2.0, 8: 10.0}}
    ranking = rank(suite(times, metric="train_time_s"), "train_time_s")
    profile = ranking.profile
    assert profile is not None
    by = {c.split("=")[-1].rstrip("]"): c for c in ranking.configurations}
    assert profile.ratios[(by["2"], "moons")] == 3.0 and profile.ratios[(by["8"], "circles")] == 5.0
    datasets = ranking.datasets
    assert [profile.fraction(by["2"], tau, datasets) for tau in (1, 2, 3)] == [2 / 3, 2 / 3, 1.0]
    assert [profile.fraction(by["8"], tau, datasets) for tau in (1, 1.5, 4, 5)] == [0, 1 / 3, 2 / 3, 1.0]
    assert "Performance profile of train time [s]" in to_text(ranking, 200)
    no_profile = rank(suite(HAND), "nll_ref")
    assert no_profile.profile is None and any("no performance profile for nll_ref" in n for n in no_profile.notes)


def test_text_folds_to_the_width():
    table = {d: {steps: 3.0 + 0.1 * steps for steps in (2, 4, 8, 16, 32)} for d in DATASETS}
    text = to_text(rank(suite(table), "nll_ref"), 60)
    assert max(len(line) for line in text.splitlines()) <= 60
    assert "[nats]" in text


@pytest.mark.parametrize("count", [2, 3, 5, 9])
def test_cd_diagram_keeps_text_apart_and_on_the_page(count):
    steps = [2**i for i in range(1, count + 1)]
    table = {d: {s: 3.0 + 0.1 * ((j + i) % count) for j, s in enumerate(steps)} for i, d in enumerate(DATASETS)}
    cells = suite(table)
    cells["trace_spec"] = cells["solver_spec"].map(lambda s: "hutchinson[noise=rademacher,probes=4]"
                                                   if "steps=4," in s else "exact")
    ranking = rank(cells, "nll_ref")
    figure = cd_figure(ranking, "Ranks by test NLL, ref solve [nats]")
    assert figure.get_figwidth() in (COLUMN_WIDTH, FULL_WIDTH)
    assert_laid_out(figure)
    drawn = " ".join(text.get_text() for text in figure.texts + figure.axes[0].texts)
    assert "[nats]" in drawn and "1 = best" in drawn and "CD = " in drawn


def test_profile_figure_fits_one_column():
    times = {d: {2: 1.0 + i, 4: 2.0, 8: 4.0 * (i + 1)} for i, d in enumerate(DATASETS[:4])}
    ranking = rank(suite(times, metric="train_time_s"), "train_time_s")
    figure = profile_figure(ranking, "Performance profile of train time [s]")
    assert figure is not None and figure.get_figwidth() == COLUMN_WIDTH
    assert_laid_out(figure)
    assert "ratio" in figure.axes[0].get_xlabel() and "fraction" in figure.axes[0].get_ylabel()


# --------------------------------------------------------------------------------------------------- CLI

def test_report_rank_prints_the_ranking_and_writes_the_figures(tmp_path):
    times = {d: {2: 1.0 + i, 4: 2.0, 8: 4.0 * (i + 1)} for i, d in enumerate(DATASETS[:4])}
    run = write_run(tmp_path / "suite", suite(times, metric="train_time_s", nll_ref=3.0))
    result = CliRunner().invoke(main, ["report", str(run), "--rank", "train_time_s", "--plots"])
    assert result.exit_code == 0, result.output
    assert "Friedman's test over 4 datasets and 3 configurations" in result.output
    assert "CD = " in result.output and "tau = 2" in result.output
    for name in ("rank_cd_train_time_s", "rank_profile_train_time_s"):
        for kind in ("png", "pdf", "svg"):
            assert (run / "plots" / f"{name}.{kind}").is_file()


def test_report_rank_reads_datasets_split_over_runs(tmp_path):
    cells = suite({d: {2: 3.0, 4: 3.5, 8: 4.0} for d in DATASETS[:4]})
    first = write_run(tmp_path / "a", cells[cells["dataset"].isin(DATASETS[:2])])
    second = write_run(tmp_path / "b", cells[cells["dataset"].isin(DATASETS[2:4])])
    result = CliRunner().invoke(main, ["report", str(first), str(second), "--rank", "nll_ref"])
    assert result.exit_code == 0, result.output
    assert "over 4 datasets and 3 configurations" in result.output


@pytest.mark.parametrize(("table", "args", "message"), [
    ({d: {2: 3.0, 4: 3.5} for d in DATASETS[:2]}, ["--rank", "nll_ref"],
     "a ranking needs at least 3 datasets; found 2 datasets (8gaussians, moons)"),
    ({d: {2: 3.0} for d in DATASETS[:3]}, ["--rank", "nll_ref"],
     "a ranking needs at least 2 configurations found on every dataset; found 1 configuration"),
    ({d: {2: 3.0, 4: 3.5} for d in DATASETS[:3]}, ["--rank", "nll_rf"], "did you mean 'nll_ref'?"),
    ({d: {2: 3.0, 4: 3.5} for d in DATASETS[:3]}, ["--rank", "dim"], "'dim' has no better direction"),
    ({d: {2: 3.0, 4: 3.5} for d in DATASETS[:3]}, ["--rank", "nll_ref", "--rows", "dataset", "--plots"],
     "drop --rows"),
])
def test_report_rank_refuses_in_one_line_and_writes_nothing(tmp_path, table, args, message):
    run = write_run(tmp_path / "suite", suite(table, dim=2.0))
    result = CliRunner().invoke(main, ["report", str(run), *args, "--plots"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert not (run / "plots").exists()


def test_rank_refuses_a_metric_without_values_of_these_runs():
    with pytest.raises(ReportError, match="not a metric of these runs"):
        rank(suite(HAND), "sliced_w2_typo")


def test_friedman_works_for_two_configurations():
    # scipy's friedmanchisquare needs 3 groups; by hand: A wins 4 of 5 datasets, average ranks 1.2 and 1.8,
    # chi2 = 12 * 5 / (2 * 3) * ((1.2 - 1.5)^2 + (1.8 - 1.5)^2) = 1.8 with 1 d.o.f.
    result = friedman_test(np.array([[1, 2]] * 4 + [[2, 1]], dtype=float))
    assert result.statistic == pytest.approx(1.8) and result.dof == 1
    assert result.p == pytest.approx(stats.chi2.sf(1.8, 1))
    assert nemenyi_q(2) == pytest.approx(1.960, abs=1e-3)


def test_ranking_a_timing_notes_cells_run_with_different_threads():
    cells = suite({d: {2: 1.0, 4: 2.0} for d in DATASETS[:3]}, metric="train_time_s")
    cells["torch_threads"] = [1, 2] * 3
    assert any("different torch thread counts" in note for note in rank(cells, "train_time_s").notes)
    assert not any("thread" in note for note in rank(cells.assign(nll_ref=3.0), "nll_ref").notes)


def test_report_rank_html_is_a_page_of_the_ranking_and_its_figures(tmp_path):
    times = {d: {2: 1.0 + i, 4: 2.0, 8: 4.0 * (i + 1)} for i, d in enumerate(DATASETS[:4])}
    run = write_run(tmp_path / "suite", suite(times, metric="train_time_s", nll_ref=3.0))
    out = tmp_path / "page"
    result = CliRunner().invoke(main, ["report", str(run), "--rank", "train_time_s", "--html", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "<h2>Rankings across datasets</h2>" in page and "Friedman&#x27;s test over 4 datasets" in page
    assert page.count('src="data:image/png;base64,') == 2  # the critical-difference diagram and the profile
    assert (out / "rank_cd_train_time_s.png").is_file()
