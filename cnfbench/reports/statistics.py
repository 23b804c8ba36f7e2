"""The significance tests of ``compare``, from scipy: a paired t-test over the seeds both runs have, else Welch's.

Both are two-sided tests of equal means. A degenerate test (no variance on either side, or identical
differences) gives ``p`` 1 when the means are equal and 0 when they differ, where scipy would give NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAIRED = "paired t-test"
WELCH = "Welch's t-test"


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


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t distribution with ``df`` degrees of freedom."""
    from scipy import stats

    if math.isnan(t):
        return math.nan
    return float(2.0 * stats.t.sf(abs(t), df))


def _degenerate(test: str, difference: float) -> TestResult:
    return TestResult(test, 0.0 if difference == 0 else math.copysign(math.inf, difference), math.nan,
                      1.0 if difference == 0 else 0.0)


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Welch's unequal-variance t-test of equal means of ``a`` and ``b`` (two values or more each)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("Welch's t-test needs at least two values on each side")
    if x.var(ddof=1) == 0 and y.var(ddof=1) == 0:
        return _degenerate(WELCH, float(y.mean() - x.mean()))
    result = stats.ttest_ind(y, x, equal_var=False)
    return TestResult(WELCH, float(result.statistic), float(result.df), float(result.pvalue))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """The paired t-test of equal means of ``a[i]`` and ``b[i]`` (the same seeds, two pairs or more)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("the paired t-test needs two pairs or more, as many values on each side")
    differences = y - x
    if differences.var(ddof=1) == 0:
        return _degenerate(PAIRED, float(differences.mean()))
    result = stats.ttest_rel(y, x)
    return TestResult(PAIRED, float(result.statistic), float(result.df), float(result.pvalue))
