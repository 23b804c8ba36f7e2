"""cnfbench compare (every verdict, differences in nats, paired and Welch tests) and merge, on hand-built runs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_report import cell, frame, write_run

from cnfbench.cli import main
from cnfbench.reports import ReportError, merge_runs, metric_info
from cnfbench.reports.compare import (
    Threshold,
    _sharing,
    compare_runs,
    headline,
    metric_change,
    parse_thresholds,
    row_verdict,
    to_json,
    to_markdown,
    to_text,
)
from cnfbench.reports.statistics import move_test, p_text, paired_t_test, t_two_sided_p, welch_t_test
from cnfbench.run_folder import Run, load_run

VERSIONS = {"cnfbench": "0.1.0", "torch": "2.13.0", "torchdiffeq": "0.2.5"}


def run(cells: pd.DataFrame, versions: dict | None = None, name: str = "r") -> Run:
    return Run(Path(name), name, cells, pd.DataFrame(), {"versions": dict(versions or VERSIONS)})


def two(solver: str, values: tuple[float, ...], **extra) -> list[dict]:
    return [cell(solver, seed, nll_ref=v, **extra) for seed, v in enumerate(values)]


# --------------------------------------------------------------------------------------------------- statistics

def test_t_distribution_two_sided_p_values():
    # reference values: scipy.stats.t.sf(|t|, df) * 2
    assert t_two_sided_p(2.0, 10) == pytest.approx(0.07338803477074037, rel=1e-12)
    assert t_two_sided_p(0.5, 3.5) == pytest.approx(0.6468504393225509, rel=1e-12)
    assert t_two_sided_p(12.0, 1) == pytest.approx(0.052929352119179755, rel=1e-12)
    assert t_two_sided_p(0.0, 5) == 1.0 and t_two_sided_p(math.inf, 5) == 0.0


def test_welch_t_test_matches_reference_values():
    # scipy.stats.ttest_ind([1, 2, 3, 4], [2, 4, 6, 8], equal_var=False)
    result = welch_t_test([1, 2, 3, 4], [2, 4, 6, 8])
    assert result.t == pytest.approx(1.7320508075688772, rel=1e-12)
    assert result.df == pytest.approx(4.411764705882353, rel=1e-12)
    assert result.p == pytest.approx(0.15158050484530375, rel=1e-10)
    assert welch_t_test([1.0, 1.0], [1.0, 1.0]).p == 1.0
    assert welch_t_test([1.0, 1.0], [2.0, 2.0]).p == 0.0
    with pytest.raises(ValueError):
        welch_t_test([1.0], [1.0, 2.0])


def test_the_tests_are_scipys():
    from scipy import stats

    samples = [([3.0, 3.1, 2.95], [3.3, 3.5]), ([10, 11, 12, 13, 9], [20, 21, 19]), ([0.1, 0.2], [0.15, 0.3, 0.1])]
    for a, b in samples:
        expected = stats.ttest_ind(b, a, equal_var=False)
        result = welch_t_test(a, b)
        assert result.t == pytest.approx(expected.statistic, rel=1e-10)
        assert result.p == pytest.approx(expected.pvalue, rel=1e-9)
    paired = paired_t_test([3.0, 3.1, 2.9], [3.05, 3.2, 2.93])
    expected = stats.ttest_rel([3.05, 3.2, 2.93], [3.0, 3.1, 2.9])
    assert (paired.test, paired.p) == ("paired t-test", pytest.approx(expected.pvalue, rel=1e-9))
    assert paired_t_test([1.0, 2.0], [1.5, 2.5]).p == 0.0  # identical differences: a certain move
    assert paired_t_test([1.0, 2.0], [1.0, 2.0]).p == 1.0


def test_nll_moves_are_differences_in_nats_whatever_the_sign():
    nll = metric_info("nll_ref")
    default = Threshold("difference", 0.02)
    # one seed each: no test can decide, whatever the move; the threshold still says how far it went
    worse = metric_change(nll, [3.0], [3.03], default, 0.05)
    assert (worse.change, worse.tested, worse.beyond_factor, worse.direction) == ("inconclusive", False, True, "worse")
    assert worse.why == "1 seed per side: no test"
    small = metric_change(nll, [3.0], [3.01], default, 0.05)
    assert (small.change, small.beyond_factor) == ("inconclusive", False)  # within the threshold, but not shown
    # a negative NLL (POWER, GAS, BSDS300): the same 0.03-nat move is the same change; no ratio
    base, new = {"0": -12.0, "1": -12.5, "2": -11.5}, {"0": -11.97, "1": -12.47, "2": -11.47}
    negative = metric_change(nll, base, new, default, 0.05)
    assert negative.change == "worse" and math.isnan(negative.ratio) and negative.difference == pytest.approx(0.03)
    assert negative.why == "+0.030 nats, p<0.001"
    # +15%, but 0.015 nats, and every seed moved alike: shown within ±0.02 nats
    within = metric_change(nll, {"0": 0.1, "1": 0.2}, {"0": 0.115, "1": 0.215}, default, 0.05)
    assert within.change == "unchanged" and within.why.startswith("within ±0.02 nats, TOST p")
    # the same seeds on both sides pair: a consistent small move is significant where Welch's test is not
    base, new = {"0": 3.0, "1": 3.3, "2": 2.7}, {"0": 3.05, "1": 3.34, "2": 2.76}
    paired = metric_change(nll, base, new, default, 0.05)
    assert (paired.change, paired.test, paired.seeds) == ("worse", "paired t-test", "3 paired seeds")
    assert paired.p_value < 0.05
    unpaired = metric_change(nll, list(base.values()), list(new.values()), default, 0.05)
    assert (unpaired.change, unpaired.test, unpaired.beyond_factor) == ("inconclusive", "Welch's t-test", True)
    assert unpaired.why == f"+0.050 nats, p={unpaired.p_value:.2f} ≥ 0.05" and unpaired.seeds == "3 vs 3 seeds"
    # seeds on one side only: Welch
    other = metric_change(nll, {"0": 3.0, "1": 3.1}, {"5": 3.3, "6": 3.5}, default, 0.05)
    assert other.test == "Welch's t-test" and other.p_value == pytest.approx(0.1290478355482834, rel=1e-9)
    assert other.change == "inconclusive" and other.why == "+0.350 nats, p=0.13 ≥ 0.05"
    # mass: |mass - 1| moved by more than the threshold
    mass = metric_info("mass")
    pair = {"0": 1.01, "1": 1.02}
    assert metric_change(mass, pair, {"0": 0.96, "1": 0.95}, default, 0.05).change == "worse"  # 0.01 -> 0.04
    assert metric_change(mass, pair, {"0": 0.99, "1": 0.98}, default, 0.05).change == "unchanged"  # 0.01 -> 0.01
    assert metric_change(mass, {"0": 1.10, "1": 1.11}, {"0": 1.00, "1": 1.01}, default, 0.05).change == "better"
    missing = metric_change(nll, [], [3.0], default, 0.05)
    assert (missing.change, missing.why) == ("n/a", "no value in BASE")


def test_times_are_ratios_of_geometric_means_tested_on_the_log_scale():
    from scipy import stats

    time = metric_info("train_time_s")
    factor = Threshold("ratio", 1.05)
    assert metric_change(time, [10.0], [11.0], factor, 0.05).direction == "worse"
    assert metric_change(time, [10.0], [10.4], factor, 0.05).direction == ""
    assert metric_change(time, [10.0], [9.0], factor, 0.05).direction == "better"
    assert metric_change(time, [10.0], [11.0], Threshold("ratio", 1.2), 0.05).ratio == pytest.approx(1.1)
    base, new = {"0": 10.0, "1": 20.0, "2": 40.0}, {"0": 22.0, "1": 41.0, "2": 79.0}
    slower = metric_change(time, base, new, factor, 0.05)
    logs = [math.log(new[s] / base[s]) for s in base]
    assert slower.ratio == pytest.approx(math.exp(sum(logs) / 3))  # NEW/BASE of the geometric means
    assert slower.p_value == pytest.approx(stats.ttest_1samp(logs, 0.0).pvalue)
    assert (slower.change, slower.why) == ("worse", f"2.07× slower, p={slower.p_value:.2g}")
    faster = metric_change(time, new, base, factor, 0.05)
    assert (faster.change, faster.why) == ("better", f"2.07× faster, p={slower.p_value:.2g}")
    nfe = metric_info("nfe_forward_mean")
    assert metric_change(nfe, {"0": 20.0, "1": 20.0}, {"0": 10.0, "1": 10.0}, factor, 0.05).why == \
        "2.00× lower, p<0.001"  # a deterministic count: the same move for every seed


def test_thresholds_parse_and_refuse_in_one_line():
    assert parse_thresholds("nll_ref:+0.02, train_time_s:x1.10") == {
        "nll_ref": Threshold("difference", 0.02), "train_time_s": Threshold("ratio", 1.1)}
    for bad, says in [("nll_ref:0.02", "must be METRIC:+D"), ("nll_ref:x0.9", "must be METRIC:+D"),
                      ("nll_rf:+0.1", "unknown metric 'nll_rf' in threshold 'nll_rf:+0.1'; did you mean 'nll_ref'?")]:
        with pytest.raises(ReportError, match=re.escape(says)):
            parse_thresholds(bad, ["nll_ref", "train_time_s"])


# --------------------------------------------------------------------------------------------------- verdicts

def verdicts(base: pd.DataFrame, new: pd.DataFrame, **options) -> dict[str, tuple[str, str]]:
    comparison = compare_runs(run(base), run(new), metrics=["nll_ref"], **options)
    return {r.labels["solver"]: (r.verdict, r.reason) for r in comparison.rows}


def test_better_worse_unchanged_each_with_why():
    base = frame(*two("euler4", (3.00, 3.02)), *two("euler10", (3.00, 3.02)), *two("dopri5", (3.00, 3.02)))
    new = frame(*two("euler4", (3.50, 3.52)), *two("euler10", (2.50, 2.52)), *two("dopri5", (3.01, 3.03)))
    result = verdicts(base, new)
    assert result == {"euler[steps=4]": ("worse", "nll_ref +0.500 nats, p<0.001"),
                      "euler[steps=10]": ("better", "nll_ref -0.500 nats, p<0.001"),
                      "dopri5": ("unchanged", "nll_ref within ±0.02 nats, TOST p<0.001")}
    comparison = compare_runs(run(base), run(new), metrics=["nll_ref"])
    assert [r.verdict for r in comparison.rows] == ["worse", "better", "unchanged"]  # worst first
    assert "low power: fewer than 3 seeds a side in 3 of 3 configurations; run more seeds (--seeds) before " \
           "trusting a verdict" in comparison.notes


def test_a_one_seed_move_is_inconclusive_never_worse_or_unchanged():
    base = frame(cell("euler4", 0, nll_ref=3.0), cell("dopri5", 0, nll_ref=3.0), cell("euler10", 0, nll_ref=3.0))
    new = frame(cell("euler4", 0, nll_ref=3.5), cell("dopri5", 0, nll_ref=2.5), cell("euler10", 0, nll_ref=3.0))
    result = verdicts(base, new)
    assert set(result.values()) == {("inconclusive", "1 seed per side: no test")}
    comparison = compare_runs(run(base), run(new), metrics=["nll_ref"])
    assert comparison.regressions == []
    text = to_text(comparison, width=400)
    assert "3.000 → 3.500 (+0.500) inconclusive" in text
    assert "INCONCLUSIVE: 3 of 3 configurations undecided (too few seeds or p ≥ 0.05)" in text
    one_side = frame(*two("dopri5", (3.0, 3.1)), cell("dopri5", 2, nll_ref=3.05))
    assert verdicts(frame(cell("dopri5", 0, nll_ref=3.0)), one_side)["dopri5"] == \
        ("inconclusive", "1 seed in BASE: no test")


def test_a_24x_slower_training_with_two_seeds_a_side_is_inconclusive():
    base = frame(*two("dopri5", (3.0, 3.02), train_time_s=1.0), *two("euler4", (3.0, 3.02), train_time_s=1.0))
    base.loc[1, "train_time_s"] = base.loc[3, "train_time_s"] = 1.2
    new = base.copy()
    new.loc[[0, 1], "train_time_s"] = [2.4, 288.0]  # 24.0× slower (geometric means), seed 1 very slow
    new.loc[[2, 3], "train_time_s"] = [24.0, 28.8]  # 24× slower, every seed alike
    comparison = compare_runs(run(base), run(new), metrics=["train_time_s"])
    rows = {r.labels["solver"]: r for r in comparison.rows}
    noisy, steady = rows["dopri5"], rows["euler"]
    change = noisy.changes[0]
    assert (noisy.verdict, change.change, change.direction) == ("inconclusive", "inconclusive", "worse")
    assert change.ratio == pytest.approx(24.0) and 0.05 <= change.p_value
    assert noisy.reason == f"train_time_s 24.0× slower, p={change.p_value:.2g} ≥ 0.05, 2 paired seeds"
    assert (steady.verdict, steady.reason) == ("worse", "train_time_s 24.0× slower, p<0.001")
    assert [r.verdict for r in comparison.rows] == ["worse", "inconclusive"]
    assert headline(comparison) == "REGRESSED: 1 of 2 configurations worse or newly failing; 1 inconclusive"


def test_unchanged_must_be_shown_within_the_threshold():
    nll = metric_info("nll_ref")
    margin = Threshold("difference", 0.02)
    seeds = [str(s) for s in range(6)]
    base = dict(zip(seeds, [3.0, 3.3, 2.7, 3.1, 2.9, 3.2], strict=True))
    # a tiny move that the paired test calls significant is unchanged: the 90% interval lies inside ±0.02 nats
    tiny = metric_change(nll, base, {s: v + 0.005 + 0.001 * (i % 2) for i, (s, v) in enumerate(base.items())},
                         margin, 0.05)
    assert tiny.p_value < 0.05 and tiny.equivalence_p < 0.05 and tiny.change == "unchanged"
    assert tiny.why == f"within ±0.02 nats, TOST {p_text(tiny.equivalence_p, 0.05)}"
    steady = metric_change(metric_info("train_time_s"), {"0": 10.0, "1": 20.0}, {"0": 10.1, "1": 20.2},
                           Threshold("ratio", 1.05), 0.05)
    assert (steady.change, steady.why) == ("unchanged", "within ×1.05, TOST p<0.001")  # 1.01× every seed
    assert row_verdict([tiny, steady]) == ("unchanged", f"all within their thresholds, TOST "
                                                        f"p≤{max(tiny.equivalence_p, 0.001):.2g}")
    # a small mean move with noisy seeds is not shown within: inconclusive, not unchanged
    noisy = metric_change(nll, base, {s: v + (0.2 if i % 2 else -0.19) for i, (s, v) in enumerate(base.items())},
                          margin, 0.05)
    assert (noisy.change, noisy.beyond_factor) == ("inconclusive", False)
    assert noisy.why.startswith("+0.005 nats, not shown within ±0.02 nats (TOST p=")
    # a zero margin: only identical values are unchanged
    exact = Threshold("difference", 0.0)
    assert metric_change(nll, base, dict(base), exact, 0.05).why == "identical values"
    assert metric_change(nll, base, {s: v + 1e-6 for s, v in base.items()}, exact, 0.05).change == "worse"


def test_the_equivalence_test_is_two_one_sided_t_tests():
    from scipy import stats

    x, y = [3.0, 3.2, 2.9, 3.1], [3.01, 3.15, 2.95, 3.12, 3.0]
    result = move_test(x, y, paired=False, margin=0.1, alpha=0.05)
    welch = stats.ttest_ind(y, x, equal_var=False)
    se = (np.var(x, ddof=1) / 4 + np.var(y, ddof=1) / 5) ** 0.5
    effect = np.mean(y) - np.mean(x)
    lower = stats.t.sf((effect + 0.1) / se, welch.df)  # H0: move <= -0.1
    upper = stats.t.cdf((effect - 0.1) / se, welch.df)  # H0: move >= +0.1
    assert result.equivalence_p == pytest.approx(max(lower, upper), rel=1e-9)
    assert result.p == pytest.approx(welch.pvalue, rel=1e-12) and result.effect == pytest.approx(effect)
    half = stats.t.ppf(0.95, welch.df) * se
    assert (result.low, result.high) == (pytest.approx(effect - half), pytest.approx(effect + half))
    paired = move_test(x, y[:4], paired=True, margin=0.1, alpha=0.05)
    d = np.subtract(y[:4], x)
    assert paired.equivalence_p == pytest.approx(max(stats.ttest_1samp(d, -0.1, alternative="greater").pvalue,
                                                     stats.ttest_1samp(d, 0.1, alternative="less").pvalue))
    assert paired.seeds_text() == "4 paired seeds" and result.seeds_text() == "4 vs 5 seeds"
    assert move_test([1.0], [1.0, 2.0], paired=False, margin=0.1, alpha=0.05) is None
    # rounding is no spread: the same move in every seed, computed in floating point, is a certain move
    rounded = move_test([-12.0, -12.5, -11.5], [-11.97, -12.47, -11.47], paired=True, margin=0.02, alpha=0.05)
    assert (rounded.p, rounded.equivalence_p) == (0.0, 1.0) and rounded.low == rounded.high


def test_p_values_never_round_across_alpha():
    assert [p_text(p, 0.05) for p in (0.31, 0.0499, 0.0501, 0.05, 0.008, 1e-5, 0.0)] == [
        "p=0.31", "p=0.0499", "p=0.05", "p=0.05", "p=0.008", "p<0.001", "p<0.001"]
    assert p_text(0.0996, 0.1) == "p=0.0996" and p_text(0.0004, 0.0001) == "p=0.0004"


def test_matching_is_by_configuration_not_row_order_or_cell_id():
    base = frame(*two("euler4", (3.0, 3.0)), *two("dopri5", (2.0, 2.0)))
    new = frame(*two("dopri5", (2.0, 2.0)), *two("euler4", (3.0, 3.0)))
    new["cell_id"] = [f"{i:016x}" for i in range(len(new))]
    assert set(verdicts(base, new).values()) == {("unchanged", "identical values")}


def test_newly_failing_and_fixed():
    base = frame(*two("euler4", (3.0, 3.0)), cell("dopri5", 0, nll_ref=2.0), cell("dopri5", 1, status="diverged"),
                 cell("euler10", 0, status="error"))
    new = frame(cell("euler4", 0, nll_ref=3.0), cell("euler4", 1, status="diverged"), *two("dopri5", (2.0, 2.0)),
                cell("euler10", 0, nll_ref=3.0))
    result = verdicts(base, new)
    assert result["euler[steps=4]"] == ("newly failing", "seed 1 diverged: NaN loss at iteration 3")
    assert result["dopri5"][0] == "fixed" and result["dopri5"][1].startswith("seed 1 now done")
    assert result["euler[steps=10]"][0] == "fixed"


def test_not_comparable_protocol_missing_and_failing_in_both():
    base = frame(*two("euler4", (3.0, 3.0)), *two("dopri5", (2.0, 2.0)), cell("euler10", 0, status="error"))
    new = frame(*(dict(r, ref_dtype="float32") for r in two("euler4", (3.0, 3.0))),
                cell("euler10", 0, status="error"), *two("euler10", (1.0, 1.0), trace="hutchinson"))
    comparison = compare_runs(run(base), run(new), metrics=["nll_ref"])
    rows = {(r.labels["solver"], r.labels["trace"]): (r.verdict, r.reason) for r in comparison.rows}
    assert rows[("euler[steps=4]", "exact")] == ("not comparable",
                                                 "evaluated differently: ref_dtype float64 vs float32")
    assert rows[("dopri5", "exact")] == ("not comparable", "only in BASE")
    assert rows[("euler[steps=10]", "hutchinson")] == ("not comparable", "only in NEW")
    assert rows[("euler[steps=10]", "exact")][0] == "not comparable"
    assert rows[("euler[steps=10]", "exact")][1].startswith("no finished seed in BASE (error")


def test_versions_differ_not_comparable_unless_ignored():
    base = frame(*two("dopri5", (3.0, 3.0)))
    new = frame(*two("dopri5", (4.0, 4.0)))
    comparison = compare_runs(run(base), run(new, {**VERSIONS, "torch": "2.12.0"}), metrics=["nll_ref"])
    assert [(r.verdict, r.reason) for r in comparison.rows] == [
        ("not comparable", "versions differ: torch 2.13.0 vs 2.12.0")]
    comparison = compare_runs(run(base), run(new, {**VERSIONS, "torch": "2.12.0"}), metrics=["nll_ref"],
                              ignore_versions=True)
    assert comparison.rows[0].verdict == "worse" and "compared anyway" in comparison.notes[0]
    comparison = compare_runs(run(base), run(new, {**VERSIONS, "torch": "2.13.0+cu121"}), metrics=["nll_ref"])
    assert comparison.rows[0].verdict == "worse"  # a CUDA build of the same torch release is comparable


def test_unknown_versions_are_noted_not_blocking():
    base = run(frame(*two("dopri5", (3.0, 3.0))))
    base.provenance = {}
    comparison = compare_runs(base, run(frame(*two("dopri5", (3.0, 3.0)))), metrics=["nll_ref"])
    assert (comparison.rows[0].verdict, comparison.rows[0].reason) == ("unchanged", "identical values")
    assert "unknown" in comparison.notes[0]


def test_outputs_text_markdown_json():
    base = frame(*two("euler4", (3.0, 3.02)), *two("dopri5", (3.0, 3.02)))
    new = frame(*two("euler4", (3.5, 3.52)), *two("dopri5", (3.0, 3.02)))
    comparison = compare_runs(run(base), run(new), metrics=["nll_ref"])
    assert max(len(line) for line in to_text(comparison).splitlines()) <= 100  # a 100-column terminal
    text = to_text(comparison, width=400)
    assert "3.010 → 3.510 (+0.500) worse (p<0.001)" in text  # seeds pair: identical moves
    assert "2 configurations: 1 worse, 1 unchanged" in text and "REGRESSED: 1 of 2" in text
    assert "test NLL, ref solve [nats]" in text and "thresholds: nll_ref ±0.02 nats" in text
    assert "unchanged: the 90% confidence interval within it (TOST)" in text
    assert re.search(r"euler +worse +nll_ref \+0\.500 nats, p<0\.001\n", text)
    assert re.search(r"dopri5 +unchanged +identical values", text)
    markdown = to_markdown(comparison)
    assert "| **worse** | nll\\_ref +0.500 nats, p&lt;0.001 |" in markdown
    data = json.loads(to_json(comparison))
    assert data["counts"]["worse"] == 1 and data["thresholds"] == {"nll_ref": "+0.02"}
    worse = next(r for r in data["rows"] if r["verdict"] == "worse")
    assert worse["reason"] == "nll_ref +0.500 nats, p<0.001"
    metric = worse["metrics"]["nll_ref"]
    assert metric["difference"] == pytest.approx(0.5) and metric["test"] == "paired t-test"
    assert (metric["change"], metric["direction"], metric["seeds_tested"]) == ("worse", "worse", "2 paired seeds")
    assert metric["why"] == "+0.500 nats, p<0.001" and metric["equivalence_p"] == 1.0


def test_compare_reads_right_at_80_and_100_columns():
    specs = ("euler4", "euler10", "dopri5")
    base = frame(*(c for solver in specs for c in two(solver, (3.0, 3.02), nfe_forward_mean=20.0)))
    new = frame(*two("euler4", (3.5, 3.52), nfe_forward_mean=20.0), *two("euler10", (3.0, 3.4), nfe_forward_mean=20.0),
                cell("dopri5", 0, nll_ref=2.9, nfe_forward_mean=20.0))
    comparison = compare_runs(run(base), run(new), metrics=["nll_ref", "nfe_forward_mean"])
    for width in (80, 100):
        text = to_text(comparison, width)
        assert max(len(line) for line in text.splitlines()) <= width
        verdict_table = text.split("\n\n")[2]  # after the runs and rule, and the numbers
        assert verdict_table.splitlines()[0].split() == ["solver", "verdict", "why"]
        rows = {line.split()[0]: line for line in verdict_table.splitlines()[2:] if line[:1].strip()}
        assert rows["euler[steps=4]"].split()[1] == "worse"
        assert "1 seed in NEW: no test" in rows["dopri5"]
        for token in ("p<0.001", "±0.02", "×1.05", "euler[steps=10]"):  # never cut inside a token
            assert token in text
        assert "euler[steps=10]  inconclusive  nll_ref +0.190 nats, p=0.5 ≥ 0.05, 2 paired seeds\n" in text


def test_plurals_in_every_line():
    one = frame(*two("dopri5", (3.0, 3.02), torch_threads=1, concurrency=1))
    comparison = compare_runs(run(one[:1]), run(frame(*two("dopri5", (3.5, 3.52), torch_threads=1, concurrency=1))),
                              metrics=["nll_ref"])
    text = to_text(comparison, 400)
    assert ": 1 cell, " in text and ": 2 cells, " in text
    assert "1 configuration: 1 inconclusive" in text and "of 1 configuration undecided" in text
    assert "(s)" not in text and "1 configurations" not in text
    assert _sharing(run(one)) == "1 cell at a time, 1 torch thread"
    assert _sharing(run(frame(*timed("dopri5", 2, concurrency=4)))) == "4 cells at a time, 2 torch threads"
    failing = frame(cell("dopri5", 0, nll_ref=3.0), cell("dopri5", 1, nll_ref=3.0), cell("dopri5", 2, nll_ref=3.0))
    broken = frame(cell("dopri5", 0, status="diverged"), cell("dopri5", 1, status="diverged"),
                   cell("dopri5", 2, nll_ref=3.0))
    assert verdicts(failing, broken)["dopri5"][1].startswith("seeds 0, 1 diverged: ")
    assert verdicts(failing, broken[1:])["dopri5"][1].startswith("seed 1 diverged: ")


def test_cli_compare_exit_codes(tmp_path):
    base = write_run(tmp_path / "base", frame(*two("dopri5", (3.0, 3.02), nll=3.0, nfe_forward_mean=20.0)))
    new = write_run(tmp_path / "new", frame(*two("dopri5", (3.5, 3.52), nll=3.0, nfe_forward_mean=20.0)))
    runner = CliRunner()
    result = runner.invoke(main, ["compare", str(base), str(new)], catch_exceptions=False)
    assert result.exit_code == 0 and "worse" in result.output
    result = runner.invoke(main, ["compare", str(base), str(new), "--fail-on-regression"], catch_exceptions=False)
    assert result.exit_code == 1 and "regression: 1 configuration" in result.output
    result = runner.invoke(main, ["compare", str(base), str(base), "--fail-on-regression"], catch_exceptions=False)
    assert result.exit_code == 0 and "1 unchanged" in result.output
    result = runner.invoke(main, ["compare", str(base), str(new), "--difference", "0.6", "--fail-on-regression"],
                           catch_exceptions=False)
    assert result.exit_code == 0
    result = runner.invoke(main, ["compare", str(base), str(new), "--fail-on", "nll_ref:+0.6"], catch_exceptions=False)
    assert result.exit_code == 0  # a 0.5-nat move is within this gate
    result = runner.invoke(main, ["compare", str(base), str(new), "--fail-on", "nll_ref:+0.1,nfe_forward_mean:x1.1"],
                           catch_exceptions=False)
    assert result.exit_code == 1 and "regression: 1 configuration" in result.output  # (the CLI words the plural)
    assert "newly failing or worse in nll_ref (+0.1)" in result.output
    result = runner.invoke(main, ["compare", str(base), str(new), "--fail-on", "nll_ref:0.1"], catch_exceptions=False)
    assert result.exit_code == 2 and "must be METRIC:+D" in result.output
    result = runner.invoke(main, ["compare", str(base), str(new), "--metric", "nll_rf"], catch_exceptions=False)
    assert result.exit_code == 2 and result.output.startswith("Error: unknown metric 'nll_rf'; valid metrics: ")
    assert result.output.strip().endswith("did you mean 'nll_ref'?")
    result = runner.invoke(main, ["compare", str(base), str(tmp_path / "gone")], catch_exceptions=False)
    assert result.exit_code == 2 and result.output.strip() == f"Error: no run folder at {tmp_path / 'gone'}"
    (new / "run.json").write_text("{ hand edited")
    result = runner.invoke(main, ["compare", str(base), str(new)], catch_exceptions=False)
    assert result.exit_code == 0 and "warning: " in result.output and "run.json is unreadable" in result.output


# --------------------------------------------------------------------------------------------------- thread counts

def timed(solver: str, threads: object, concurrency: object = 1, seconds: float = 1.0) -> list[dict]:
    """Two seeds of ``solver`` with a training time, run with ``threads`` torch threads and ``concurrency`` cells at
    a time (``None``: not recorded, as in rows written before the columns existed)."""
    return two(solver, (3.0, 3.02), train_time_s=seconds, torch_threads=threads, concurrency=concurrency)


def timing_notes(comparison) -> list[str]:
    return [n for n in comparison.notes if "timings compare" in n]


def test_timings_from_different_thread_counts_are_left_out_with_a_note():
    base, new = run(frame(*timed("dopri5", 1))), run(frame(*timed("dopri5", 2, seconds=0.5)))
    comparison = compare_runs(base, new, metrics=["nll_ref", "train_time_s"])
    assert [m.name for m in comparison.metrics] == ["nll_ref"]
    assert [n for n in comparison.notes if not n.startswith("low power")] == [
        "train_time_s left out as not comparable: BASE ran 1 cell at a time, 1 torch thread, NEW 1 cell at a time, "
        "2 torch threads (timings compare cells run with different torch thread counts (1, 2)); --ignore-concurrency "
        "compares them anyway"]
    forced = compare_runs(base, new, metrics=["nll_ref", "train_time_s"], ignore_concurrency=True)
    assert [m.name for m in forced.metrics] == ["nll_ref", "train_time_s"]
    assert forced.notes[0].startswith("time and memory compared anyway (--ignore-concurrency): BASE ran 1 cell at")
    assert forced.rows[0].verdict == "better"  # nll_ref identical, train_time_s halved in both seeds
    with pytest.raises(ReportError, match=r"torch thread counts \(1, 2\)\): train_time_s are not comparable"):
        compare_runs(base, new, metrics=["train_time_s"])
    at_once = compare_runs(base, run(frame(*timed("dopri5", 1, concurrency=4))), metrics=["train_time_s"],
                           ignore_concurrency=True)
    assert at_once.notes[0].endswith("(timings compare cells run with different concurrency (1, 4 cells at a time))")


def test_thread_counts_are_compared_per_configuration_and_unknown_ones_never_differ():
    both = frame(*timed("dopri5", 1), *timed("euler4", 2))  # each configuration like for like in both runs
    comparison = compare_runs(run(both), run(both), metrics=["train_time_s"])
    assert timing_notes(comparison) == [] and [r.verdict for r in comparison.rows] == ["unchanged", "unchanged"]
    assert {r.reason for r in comparison.rows} == {"identical values"}
    older = run(frame(*timed("dopri5", None, None), *timed("euler4", None, None)))  # before the columns existed
    assert timing_notes(compare_runs(older, run(both), metrics=["train_time_s"])) == []
    without = run(frame(*two("dopri5", (3.0, 3.02), train_time_s=1.0), *two("euler4", (3.0, 3.02), train_time_s=1.0)))
    assert timing_notes(compare_runs(without, run(both), metrics=["train_time_s"])) == []
    mixed = frame(*timed("dopri5", 1), *timed("euler4", 2))
    mixed.loc[3, "torch_threads"] = 4  # one euler seed of NEW ran with 4 threads
    comparison = compare_runs(run(both), run(mixed), metrics=["nll_ref", "train_time_s"])
    assert timing_notes(comparison) == [
        "train_time_s left out as not comparable: BASE ran 1 cell at a time, 1/2 torch threads, NEW 1 cell at a "
        "time, 1/2/4 torch threads (timings compare cells run with different torch thread counts (2, 4) in 1 of 2 "
        "configurations); --ignore-concurrency compares them anyway"]


def test_cli_compare_prints_the_thread_note(tmp_path):
    base = write_run(tmp_path / "base", frame(*timed("dopri5", 1)))
    new = write_run(tmp_path / "new", frame(*timed("dopri5", 2)))
    result = CliRunner().invoke(main, ["compare", str(base), str(new), "--metric", "nll_ref,train_time_s",
                                       "--markdown", "-"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "- note: train\\_time\\_s left out as not comparable: BASE ran 1 cell at a time" in result.output
    assert "(timings compare cells run with different torch thread counts (1, 2))" in result.output


# --------------------------------------------------------------------------------------------------- merge

def curves_for(cells: pd.DataFrame, loss: float) -> pd.DataFrame:
    return pd.DataFrame([{"cell_id": c, "iteration": i, "loss_nats": loss} for c in cells["cell_id"] for i in (1, 2)])


def test_merge_keeps_provenance_and_resolves_duplicates(tmp_path):
    a_cells = frame(cell("euler4", 0, nll_ref=3.0), cell("dopri5", 0, status="diverged"), cell("euler10", 0,
                                                                                                 nll_ref=1.0))
    b_cells = frame(cell("dopri5", 0, nll_ref=2.0), cell("dopri5", 1, nll_ref=2.1), cell("euler10", 0, nll_ref=1.5))
    a = write_run(tmp_path / "a", a_cells, curves_for(a_cells, 5.0),
                  {"created": "2025-01-02T00:00:00+00:00", "hostname": "alpha", "versions": VERSIONS})
    b = write_run(tmp_path / "b", b_cells, curves_for(b_cells, 7.0),
                  {"created": "2025-01-01T00:00:00+00:00", "hostname": "beta", "versions": VERSIONS})
    result = merge_runs(tmp_path / "m", [a, b], ["cnfbench", "merge"])
    merged = load_run(tmp_path / "m")
    assert result.cells == 4 and len(merged.cells) == 4 and merged.warnings == []
    dopri = merged.cells[(merged.cells["solver"] == "dopri5") & (merged.cells["seed"] == 0)].iloc[0]
    assert (dopri["status"], dopri["nll_ref"]) == ("done", 2.0)  # the done row beats the diverged one
    euler10 = merged.cells[merged.cells["solver_spec"].str.startswith("euler[steps=10,")].iloc[0]
    assert euler10["nll_ref"] == 1.0  # both done: the newer run (a, created later) wins
    assert merged.cells["cell_id"].is_unique
    assert any("kept the done one" in n for n in result.notes) and any("kept the newest" in n for n in result.notes)
    sources = merged.provenance["merged_from"]
    assert [s["hostname"] for s in sources] == ["alpha", "beta"]
    assert [(s["cells_in_source"], s["cells_kept"]) for s in sources] == [(3, 2), (3, 2)]
    assert merged.provenance["versions"] == VERSIONS
    losses = merged.curves.groupby("cell_id")["loss_nats"].first()
    assert losses[dopri["cell_id"]] == 7.0 and losses[euler10["cell_id"]] == 5.0 and len(merged.curves) == 8


def test_merge_refuses_existing_output_and_reports_mixed_versions(tmp_path):
    a = write_run(tmp_path / "a", frame(cell("dopri5", 0, nll_ref=3.0)))
    b = write_run(tmp_path / "b", frame(cell("dopri5", 1, nll_ref=3.0)),
                  provenance={"versions": {**VERSIONS, "torch": "2.12.0"}})
    with pytest.raises(ValueError, match="already holds a run"):
        merge_runs(a, [b])
    result = merge_runs(tmp_path / "m", [a, b])
    assert load_run(tmp_path / "m").versions["torch"] == "mixed: 2.13.0, 2.12.0"
    assert any("different package versions" in n for n in result.notes)
    cli = CliRunner().invoke(main, ["merge", str(tmp_path / "m"), str(a)], catch_exceptions=False)
    assert cli.exit_code == 2 and cli.output.startswith("Error: ") and "already holds a run" in cli.output
    cli = CliRunner().invoke(main, ["merge", str(tmp_path / "m2"), str(a), str(tmp_path / "nope")],
                             catch_exceptions=False)
    assert cli.exit_code == 2 and cli.output.strip() == f"Error: no run folder at {tmp_path / 'nope'}"
    cli = CliRunner().invoke(main, ["merge", str(tmp_path / "m3"), str(a), str(b)], catch_exceptions=False)
    assert cli.exit_code == 0 and "merged 2 cells from 2 runs" in cli.output


def test_merge_uses_the_csv_of_a_damaged_source_and_says_so(tmp_path):
    a = write_run(tmp_path / "a", frame(cell("dopri5", 0, nll_ref=3.0)))
    b = write_run(tmp_path / "b", frame(cell("dopri5", 1, nll_ref=3.1)))
    (b / "cells.parquet").write_bytes(b"truncated")
    cli = CliRunner().invoke(main, ["merge", str(tmp_path / "m"), str(a), str(b)], catch_exceptions=False)
    assert cli.exit_code == 0
    assert f"warning: {b / 'cells.parquet'} is unreadable" in cli.output and "merged 2 cells" in cli.output
    merged = load_run(tmp_path / "m")
    assert sorted(merged.cells["seed"]) == [0, 1]
    assert merged.provenance["merged_from"][1]["warnings"][0].startswith(f"{b / 'cells.parquet'} is unreadable")


def test_a_comparison_gives_a_frame_and_a_notebook_view():
    base = frame(*two("euler4", (3.0, 3.02)), *two("dopri5", (3.0, 3.02)))
    new = frame(*two("euler4", (3.5, 3.52)), *two("dopri5", (3.0, 3.02)))
    comparison = compare_runs(run(base), run(new), metrics=["nll_ref"])
    numbers = comparison.to_frame()
    assert list(numbers["verdict"]) == ["worse", "unchanged"]
    assert numbers.loc[0, "nll_ref_difference"] == pytest.approx(0.5) and numbers.loc[0, "nll_ref_p"] == 0.0
    page = comparison._repr_html_()
    assert page.startswith("<p><b>REGRESSED: 1 of 2 configurations") and "<table" in page
    assert "<td>nll_ref +0.500 nats, p&lt;0.001</td>" in page and "<td>identical values</td>" in page
    assert list(numbers["nll_ref_why"]) == ["+0.500 nats, p<0.001", "identical values"]
