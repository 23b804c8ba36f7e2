"""The significance and equivalence tests of ``compare``, from scipy: t-tests over the seeds of two runs.

Seeds both runs have are paired (the paired t-test over their differences); otherwise Welch's unequal-variance
t-test compares the two sides. Both are two-sided tests of equal means, and :func:`move_test` adds the
equivalence test of the same data (TOST: two one-sided tests against ``±margin``) and the ``1 - 2·alpha``
confidence interval of the move, so that one test's numbers decide all three of ``better``/``worse``, ``unchanged``
and ``inconclusive``.

Why t-tests: a t statistic is unbounded, so two values a side (two pairs) can already reach any ``p``
(:data:`MIN_VALUES`). A rank test cannot with the few seeds a benchmark has: Mann–Whitney's smallest two-sided
``p`` is 1/3 with 2 vs 2 seeds and 0.1 with 3 vs 3, the signed-rank test's 0.0625 with 5 pairs — it would leave
almost every comparison untested. The t-tests assume roughly normal seed means; ``compare`` runs them on the log of
times, NFE and memory (skewed, multiplicative), where that holds far better.

A degenerate test (no spread on either side, or identical differences: a deterministic quantity) gives ``p`` 1
when the means are equal and 0 when they differ, where scipy would give NaN; its interval is the point itself.
"No spread" allows for rounding (:data:`SPREAD_TOLERANCE`): ``-11.97 - -12.0`` and ``-11.47 - -11.5`` differ in
their last bits, and a t-test over such noise would give an arbitrary ``p``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

PAIRED = "paired t-test"
WELCH = "Welch's t-test"

MIN_VALUES = 2
"""The fewest values a side (pairs, for the paired test) with which the t-tests can reach any ``p < alpha``; with
fewer there is no test at all."""


SPREAD_TOLERANCE = 1e-9
"""A spread at most this fraction of the largest value's magnitude is rounding, not variation."""


def no_spread(values: np.ndarray, *scale_of: np.ndarray) -> bool:
    """Whether ``values`` are all equal up to rounding in the numbers they came from (``scale_of``; default
    ``values`` themselves)."""
    if len(values) < 2:
        return True
    magnitude = max(float(np.max(np.abs(array))) for array in (scale_of or (values,)))
    return float(np.ptp(values)) <= SPREAD_TOLERANCE * magnitude


@dataclass(frozen=True)
class TestResult:
    """A two-sided t-test: its name, statistic (positive when the second sample is larger), degrees of freedom
    and p-value."""

    test: str
    t: float
    df: float
    p: float


WelchResult = TestResult
"""The name an earlier release gave the result of :func:`welch_t_test`."""


@dataclass(frozen=True)
class MoveTest:
    """What one test says about the move ``mean(new) - mean(base)``: the two-sided ``p`` that it is 0, the
    ``1 - 2·alpha`` confidence interval, and the equivalence ``p`` (TOST) that it lies within ``±margin``."""

    test: str  # PAIRED or WELCH
    n_base: int  # the values used (for the paired test: the pairs, on both sides)
    n_new: int
    effect: float  # mean(new) - mean(base) (paired: the mean difference)
    p: float  # two-sided, H0: no move
    low: float  # the 1 - 2·alpha confidence interval of the move
    high: float
    margin: float
    equivalence_p: float  # TOST, H0: |move| >= margin; < alpha means "within ±margin"

    @property
    def paired(self) -> bool:
        return self.test == PAIRED

    def seeds_text(self) -> str:
        """``3 paired seeds`` or ``2 vs 4 seeds``: what the test rests on."""
        if self.paired:
            return f"{self.n_base} paired seed{'' if self.n_base == 1 else 's'}"
        return f"{self.n_base} vs {self.n_new} seeds"


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t distribution with ``df`` degrees of freedom."""
    from scipy import stats

    if math.isnan(t):
        return math.nan
    return float(2.0 * stats.t.sf(abs(t), df))


@contextmanager
def _one_side_without_spread() -> Iterator[None]:
    """scipy warns of "precision loss" when one side's values are all equal; Welch's test is exact there (that
    side's variance is 0), and both sides without spread never reach scipy (:func:`_degenerate`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred in moment calculation",
                                category=RuntimeWarning)
        yield


def _rounded(difference: float, *scale_of: np.ndarray) -> float:
    """``difference``, or 0 when it is rounding in numbers of the magnitude of ``scale_of``."""
    magnitude = max(float(np.max(np.abs(array))) for array in scale_of)
    return 0.0 if abs(difference) <= SPREAD_TOLERANCE * magnitude else difference


def _degenerate(test: str, difference: float) -> TestResult:
    return TestResult(test, 0.0 if difference == 0 else math.copysign(math.inf, difference), math.nan,
                      1.0 if difference == 0 else 0.0)


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Welch's unequal-variance t-test of equal means of ``a`` and ``b`` (two values or more each)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < MIN_VALUES or len(y) < MIN_VALUES:
        raise ValueError("Welch's t-test needs at least two values on each side")
    if no_spread(x) and no_spread(y):
        return _degenerate(WELCH, _rounded(float(y.mean() - x.mean()), x, y))
    with _one_side_without_spread():
        result = stats.ttest_ind(y, x, equal_var=False)
    return TestResult(WELCH, float(result.statistic), float(result.df), float(result.pvalue))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """The paired t-test of equal means of ``a[i]`` and ``b[i]`` (the same seeds, two pairs or more)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) != len(y) or len(x) < MIN_VALUES:
        raise ValueError("the paired t-test needs two pairs or more, as many values on each side")
    differences = y - x
    if no_spread(differences, x, y):
        return _degenerate(PAIRED, _rounded(float(differences.mean()), x, y))
    result = stats.ttest_rel(y, x)
    return TestResult(PAIRED, float(result.statistic), float(result.df), float(result.pvalue))


def move_test(base: Sequence[float], new: Sequence[float], paired: bool, margin: float,
              alpha: float) -> MoveTest | None:
    """The paired (``paired``: ``base[i]`` and ``new[i]`` are one seed) or Welch's t-test of the move from
    ``base`` to ``new``, with its ``1 - 2·alpha`` interval and the TOST equivalence ``p`` against ``±margin``
    (``margin >= 0``); ``None`` with fewer than :data:`MIN_VALUES` values a side. A degenerate move (no spread)
    is within the margin when it is 0 or smaller than the margin."""
    from scipy import stats

    x, y = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    if len(x) < MIN_VALUES or len(y) < MIN_VALUES:
        return None
    confidence = 1.0 - 2.0 * alpha
    if paired:
        d = y - x
        two_sided = paired_t_test(x, y)
        effect = _rounded(float(d.mean()), x, y)
        if no_spread(d, x, y):
            low = high = effect
            equivalence = 0.0 if effect == 0 or abs(effect) < margin else 1.0
        else:
            interval = stats.ttest_1samp(d, 0.0).confidence_interval(confidence)
            low, high = float(interval.low), float(interval.high)
            equivalence = max(float(stats.ttest_1samp(d, margin, alternative="less").pvalue),
                              float(stats.ttest_1samp(d, -margin, alternative="greater").pvalue))
        return MoveTest(PAIRED, len(d), len(d), effect, two_sided.p, low, high, margin, equivalence)
    two_sided = welch_t_test(x, y)
    effect = _rounded(float(y.mean() - x.mean()), x, y)
    if no_spread(x) and no_spread(y):
        low = high = effect
        equivalence = 0.0 if effect == 0 or abs(effect) < margin else 1.0
    else:
        with _one_side_without_spread():
            interval = stats.ttest_ind(y, x, equal_var=False).confidence_interval(confidence)
            upper = stats.ttest_ind(y - margin, x, equal_var=False, alternative="less").pvalue
            lower = stats.ttest_ind(y + margin, x, equal_var=False, alternative="greater").pvalue
        low, high = float(interval.low), float(interval.high)
        equivalence = max(float(upper), float(lower))
    return MoveTest(WELCH, len(x), len(y), effect, two_sided.p, low, high, margin, equivalence)


def p_text(p: float, alpha: float) -> str:
    """``p=0.31``, ``p<0.001``: two significant digits, more where two would round across ``alpha``."""
    if p < 0.001 <= alpha:
        return "p<0.001"
    for digits in (2, 3, 4, 6):
        text = f"{p:.{digits}g}"
        if (float(text) < alpha) == (p < alpha):
            return f"p={text}"
    return f"p={p!r}"
