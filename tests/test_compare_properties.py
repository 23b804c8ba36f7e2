"""Properties of compare's verdicts over widely varying seeds, thresholds and alphas (hypothesis): no verdict is
better or worse without a test that can decide it, unchanged only when shown within the threshold, a why for every
verdict, and p-values that never round across alpha."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from cnfbench.reports import metric_info
from cnfbench.reports.compare import MetricChange, Threshold, metric_change, row_verdict
from cnfbench.reports.statistics import MIN_VALUES, p_text

NLL = metric_info("nll_ref")
TIME = metric_info("train_time_s")

nlls = st.lists(st.floats(-50.0, 50.0, allow_nan=False), min_size=1, max_size=8)
times = st.lists(st.floats(1e-3, 1e4, allow_nan=False), min_size=1, max_size=8)
alphas = st.sampled_from([0.001, 0.01, 0.05, 0.1, 0.2])
differences = st.floats(0.0, 2.0).map(lambda value: Threshold("difference", value))
factors = st.floats(1.0, 3.0).map(lambda value: Threshold("ratio", value))


def seeded(values: list[float], first: int = 0) -> dict[str, float]:
    return {str(first + index): value for index, value in enumerate(values)}


def check(change: MetricChange, alpha: float) -> None:
    """What every metric change must satisfy, whatever its values."""
    assert change.change in ("better", "worse", "unchanged", "inconclusive")
    assert change.why
    if min(change.base_n, change.new_n) < MIN_VALUES:
        assert (change.change, change.tested, change.p_value) == ("inconclusive", False, None)
        assert change.why.endswith(": no test") and "seed" in change.why
    if change.change in ("better", "worse"):
        assert change.tested and change.p_value is not None and change.p_value < alpha
        assert change.beyond_factor and change.direction == change.change
        assert f"p={change.p_value}" not in change.why and "p" in change.why  # p as p_text writes it
    if change.change == "unchanged":
        assert change.tested and change.equivalence_p is not None and change.equivalence_p < alpha
        assert not change.beyond_factor and change.direction == ""
    if change.beyond_factor:
        assert change.change != "unchanged" and change.direction in ("better", "worse")


@settings(max_examples=150, deadline=None)
@given(nlls, nlls, differences, alphas, st.booleans())
def test_difference_metric_verdicts_need_a_test(base, new, threshold, alpha, paired):
    change = metric_change(NLL, seeded(base), seeded(new, 0 if paired else 100), threshold, alpha)
    check(change, alpha)
    same_seeds = paired and len(base) == len(new)  # seeds pair only when both sides have the same ones
    assert change.test == ("" if min(len(base), len(new)) < MIN_VALUES
                           else "paired t-test" if same_seeds else "Welch's t-test")


@settings(max_examples=150, deadline=None)
@given(times, times, factors, alphas)
def test_ratio_metric_verdicts_need_a_test(base, new, threshold, alpha):
    change = metric_change(TIME, seeded(base), seeded(new), threshold, alpha)
    check(change, alpha)
    ratio = math.exp(sum(map(math.log, new)) / len(new) - sum(map(math.log, base)) / len(base))
    assert math.isclose(change.ratio, ratio, rel_tol=1e-9)
    if change.change in ("better", "worse"):
        assert max(ratio, 1 / ratio) > threshold.value * (1 - 1e-9)


@settings(max_examples=100, deadline=None)
@given(nlls, nlls, differences, alphas)
def test_swapping_the_runs_swaps_better_and_worse(base, new, threshold, alpha):
    forward = metric_change(NLL, seeded(base), seeded(new), threshold, alpha)
    backward = metric_change(NLL, seeded(new), seeded(base), threshold, alpha)
    swapped = {"better": "worse", "worse": "better"}
    assert backward.change == swapped.get(forward.change, forward.change)
    if forward.tested:
        assert math.isclose(forward.p_value, backward.p_value, rel_tol=1e-6, abs_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(nlls, nlls), min_size=1, max_size=4), differences, alphas)
def test_a_row_is_better_or_worse_only_through_a_tested_metric(metrics, threshold, alpha):
    changes = [metric_change(NLL, seeded(base), seeded(new), threshold, alpha) for base, new in metrics]
    verdict, why = row_verdict(changes)
    assert why and verdict in ("better", "worse", "unchanged", "inconclusive")
    if verdict in ("better", "worse"):
        assert any(c.change == verdict and c.tested and c.p_value < alpha for c in changes)
        assert why.startswith(NLL.name) and "p" in why
    if all(min(c.base_n, c.new_n) < MIN_VALUES for c in changes):
        assert verdict == "inconclusive" and why.endswith(": no test")
    if verdict == "unchanged":
        assert all(c.change == "unchanged" for c in changes)
    if any(c.change == "worse" for c in changes):
        assert verdict == "worse"


@settings(max_examples=300, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(1e-4, 0.5))
def test_p_values_are_written_on_the_side_of_alpha_they_are(p, alpha):
    text = p_text(p, alpha)
    if text == "p<0.001":
        assert p < 0.001 <= alpha
    else:
        assert (float(text.removeprefix("p=")) < alpha) == (p < alpha)
