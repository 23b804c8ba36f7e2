"""Exact W2, MMD, C2ST, marginal KS and normalized path energy: brute force, closed forms, negative controls."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment, linprog
from scipy.spatial.distance import pdist
from scipy.stats import ks_2samp

from cnfbench.sample_quality import (
    W2_MAX_SAMPLES,
    c2st_accuracy,
    marginal_ks,
    mmd_rbf,
    path_energy_normalized,
    wasserstein2_exact,
)


def normal(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def squared_costs(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1).numpy()


# --- exact W2 ---------------------------------------------------------------------------------------------------


def test_w2_is_the_best_permutation_for_equal_sizes() -> None:
    x, y = normal(7, 2, 1), normal(7, 2, 2, 0.3)
    cost = squared_costs(x, y)
    best = min(np.mean([cost[i, p[i]] for i in range(7)]) for p in itertools.permutations(range(7)))
    assert wasserstein2_exact(x, y) == pytest.approx(best, abs=1e-12)


def test_w2_matches_the_hungarian_optimum_at_200_points() -> None:
    x, y = normal(200, 3, 3), normal(200, 3, 4, 0.5)
    cost = squared_costs(x, y)
    rows, cols = linear_sum_assignment(cost)
    assert wasserstein2_exact(x, y) == pytest.approx(cost[rows, cols].mean(), abs=1e-10)


def test_w2_of_unequal_sizes_matches_a_linear_program() -> None:
    # 5 points of mass 1/5 against 3 of mass 1/3: mass must split, so no permutation exists
    x, y = normal(5, 2, 5), normal(3, 2, 6, 1.0)
    cost = squared_costs(x, y)
    rows = [np.kron(np.eye(5)[i], np.ones(3)) for i in range(5)] + [np.kron(np.ones(5), np.eye(3)[j]) for j in range(3)]
    plan = linprog(cost.ravel(), A_eq=np.array(rows), b_eq=[1 / 5] * 5 + [1 / 3] * 3, bounds=(0, None))
    assert plan.status == 0
    assert wasserstein2_exact(x, y) == pytest.approx(plan.fun, abs=1e-10)


def test_w2_of_a_pure_shift_is_the_squared_shift_exactly() -> None:
    x = normal(300, 3, 7)
    mu = torch.tensor([0.4, -1.5, 2.0], dtype=torch.float64)
    assert abs(wasserstein2_exact(x, x + mu) - float(mu @ mu)) < 1e-10
    assert wasserstein2_exact(x, x) == pytest.approx(0.0, abs=1e-12)


def test_w2_of_two_gaussians_is_near_the_closed_form() -> None:
    # N(0, I) vs N((1, 0), diag(2², 0.5²)): W2² = |m1 - m2|² + Σ (s1 - s2)² = 1 + 1 + 0.25 = 2.25; finite samples
    # of 2000 points scatter by about 0.1 (mostly the cross term 2 Δm·(x̄ - ȳ))
    x = normal(2000, 2, 8)
    scale, shift = torch.tensor([2.0, 0.5], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)
    y = normal(2000, 2, 9) * scale + shift
    value = wasserstein2_exact(x, y)
    assert abs(value - 2.25) < 0.25, value
    assert value > 1.0 + 0.9  # negative control: the means alone give 1.0; the covariance term is there


def test_w2_refuses_samples_over_the_size_limit() -> None:
    assert W2_MAX_SAMPLES == 20_000
    with pytest.raises(ValueError, match="capped at 10 points"):
        wasserstein2_exact(normal(11, 2, 1), normal(5, 2, 2), max_samples=10)
    with pytest.raises(ValueError, match="capped at 20000 points"):
        wasserstein2_exact(normal(5, 2, 1), normal(W2_MAX_SAMPLES + 1, 2, 2))
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        wasserstein2_exact(normal(5, 2, 1), normal(5, 3, 2))


def test_w2_without_pot_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ot", None)
    with pytest.raises(ModuleNotFoundError, match=r"cnfbench\[metrics\]"):
        wasserstein2_exact(normal(5, 2, 1), normal(5, 2, 2))


# --- MMD --------------------------------------------------------------------------------------------------------


def rbf(a: torch.Tensor, b: torch.Tensor, h: float) -> float:
    return math.exp(-float((a - b).pow(2).sum()) / (2 * h * h))


def brute_force_mmd(x: torch.Tensor, y: torch.Tensor, h: float) -> float:
    n, m = len(x), len(y)
    xx = sum(rbf(x[i], x[k], h) for i in range(n) for k in range(n) if i != k) / (n * (n - 1))
    yy = sum(rbf(y[j], y[k], h) for j in range(m) for k in range(m) if j != k) / (m * (m - 1))
    xy = sum(rbf(x[i], y[j], h) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd_matches_the_u_statistic_and_the_jackknife_by_explicit_loops() -> None:
    x, y = normal(6, 2, 11), normal(5, 2, 12, 0.6)
    value, stderr, h = mmd_rbf(x, y)
    assert value == pytest.approx(brute_force_mmd(x, y, h), abs=1e-12)
    without_x = [brute_force_mmd(torch.cat([x[:i], x[i + 1:]]), y, h) for i in range(6)]
    without_y = [brute_force_mmd(x, torch.cat([y[:j], y[j + 1:]]), h) for j in range(5)]
    variance = 5 / 6 * sum((v - np.mean(without_x)) ** 2 for v in without_x) \
        + 4 / 5 * sum((v - np.mean(without_y)) ** 2 for v in without_y)
    assert stderr == pytest.approx(math.sqrt(variance), rel=1e-10)


@pytest.mark.parametrize(("n", "m"), [(50, 41), (5, 3)])  # 4095 pairs (odd count) and 28 pairs (even count)
def test_mmd_bandwidth_is_the_numpy_median_of_the_pooled_pairwise_distances(n: int, m: int) -> None:
    x, y = normal(n, 3, 13), normal(m, 3, 14, 0.2)
    _, _, h = mmd_rbf(x, y)
    assert h == pytest.approx(float(np.median(pdist(torch.cat([x, y]).numpy()))), rel=1e-12)


def test_mmd_takes_a_fixed_bandwidth() -> None:
    x, y = normal(6, 2, 15), normal(5, 2, 16, 0.4)
    value, _, h = mmd_rbf(x, y, bandwidth=0.7)
    assert h == 0.7 and value == pytest.approx(brute_force_mmd(x, y, 0.7), abs=1e-12)


def test_mmd_is_unbiased_for_one_distribution_and_the_v_statistic_is_not() -> None:
    unbiased, biased = [], []
    for k in range(100):
        x, y = normal(40, 2, 100 + 2 * k), normal(40, 2, 101 + 2 * k)
        value, _, h = mmd_rbf(x, y)
        unbiased.append(value)
        z = torch.cat([x, y])
        kernel = torch.exp(-torch.cdist(z, z).pow(2) / (2 * h * h))
        biased.append(float(kernel[:40, :40].mean() + kernel[40:, 40:].mean() - 2 * kernel[:40, 40:].mean()))
    se = float(np.std(unbiased) / math.sqrt(100))
    assert abs(float(np.mean(unbiased))) < 3 * se
    assert float(np.mean(biased)) > 10 * se


def test_mmd_is_zero_within_its_stderr_for_one_distribution_and_clearly_positive_for_a_shift() -> None:
    x = normal(500, 2, 21)
    value, stderr, _ = mmd_rbf(x, normal(500, 2, 22))
    assert stderr > 0 and abs(value) < 4 * stderr
    value, stderr, _ = mmd_rbf(x, normal(500, 2, 23, 0.5))
    assert value > 4 * stderr
    value, stderr, _ = mmd_rbf(x, normal(500, 2, 23, 1.0))
    assert value > 10 * stderr


def test_the_mmd_jackknife_matches_the_spread_over_repeated_samples() -> None:
    runs = [mmd_rbf(normal(80, 2, 300 + 2 * k), normal(80, 2, 301 + 2 * k, 0.7)) for k in range(150)]
    spread = float(np.std([v for v, _, _ in runs], ddof=1))
    jackknife = float(np.mean([se for _, se, _ in runs]))
    assert 0.75 < jackknife / spread < 1.33


def test_mmd_refuses_tiny_samples_and_a_zero_bandwidth() -> None:
    with pytest.raises(ValueError, match="at least 3 points"):
        mmd_rbf(normal(2, 2, 1), normal(5, 2, 2))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_rbf(torch.zeros(4, 2), torch.zeros(4, 2))


# --- C2ST -------------------------------------------------------------------------------------------------------


def test_c2st_cannot_tell_one_distribution_from_itself() -> None:
    accuracy, stderr = c2st_accuracy(normal(500, 2, 31), normal(500, 2, 32), torch.Generator().manual_seed(0))
    assert abs(accuracy - 0.5) < 0.06 and 0 < stderr < 0.05


def test_c2st_separates_gaussians_five_apart() -> None:
    # the Bayes accuracy is Φ(2.5) = 0.994; with sklearn's default patience of 10 epochs some seeds stopped at 0.5
    accuracy, _ = c2st_accuracy(normal(500, 2, 33), normal(500, 2, 34, 5.0 / math.sqrt(2)),
                                torch.Generator().manual_seed(0))
    assert accuracy > 0.95


def test_c2st_is_seeded_by_its_generator_alone_and_uses_equal_counts() -> None:
    x, y = normal(120, 3, 35), normal(150, 3, 36, 0.8)
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
    first = c2st_accuracy(x, y, torch.Generator().manual_seed(7))
    assert c2st_accuracy(x, y, torch.Generator().manual_seed(7)) == first
    assert c2st_accuracy(x, y[:120], torch.Generator().manual_seed(7)) == first  # only the first min(n, m) are used
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state, strict=True))


def test_c2st_refuses_too_few_points_and_names_the_extra_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    for n in (4, 7):  # 7 + 7 points leave 10 in a training fold, whose 10 % validation set is 1 point
        with pytest.raises(ValueError, match="validation set"):
            c2st_accuracy(normal(n, 2, 1), normal(9, 2, 2), torch.Generator().manual_seed(0))
    assert 0 <= c2st_accuracy(normal(8, 2, 1), normal(9, 2, 2), torch.Generator().manual_seed(0))[0] <= 1
    monkeypatch.setitem(sys.modules, "sklearn.neural_network", None)
    with pytest.raises(ModuleNotFoundError, match=r"cnfbench\[metrics\]"):
        c2st_accuracy(normal(10, 2, 1), normal(10, 2, 2), torch.Generator().manual_seed(0))


# --- marginal KS ------------------------------------------------------------------------------------------------


def test_marginal_ks_is_scipy_per_coordinate() -> None:
    x, y = normal(90, 3, 41), normal(70, 3, 42, 0.3)
    mean, largest, each = marginal_ks(x, y)
    expected = [ks_2samp(x[:, k].numpy(), y[:, k].numpy()).statistic for k in range(3)]
    assert each == pytest.approx(expected, abs=1e-15)
    assert mean == pytest.approx(sum(expected) / 3) and largest == max(expected)


def test_marginal_ks_sees_a_shift_in_its_own_coordinate_only() -> None:
    x, y = normal(400, 3, 43), normal(400, 3, 44)
    _, _, before = marginal_ks(x, y)
    shifted = y.clone()
    shifted[:, 1] += 1.0
    _, largest, after = marginal_ks(x, shifted)
    assert after[0] == before[0] and after[2] == before[2]
    assert after[1] > 0.3 > 3 * before[1] and largest == after[1]
    assert marginal_ks(x, x) == (0.0, 0.0, [0.0, 0.0, 0.0])


# --- normalized path energy -------------------------------------------------------------------------------------


def test_npe_is_zero_for_the_straight_ot_flow_and_positive_for_a_detour() -> None:
    # q1 = 2·q0: the map x -> 2x is the gradient of the convex |x|², so the straight flow x_t = (1 + t) x0 is the
    # dynamic OT flow; its velocity along the path is x0, so PE = mean |x0|² = W2²(q0, q1)
    x0 = normal(200, 2, 51)
    w2 = wasserstein2_exact(x0, 2 * x0)
    path_energy = float(x0.pow(2).sum(dim=1).mean())
    assert w2 == pytest.approx(path_energy, rel=1e-12)
    assert path_energy_normalized(path_energy, w2) < 1e-10
    # the same endpoints, reached by x_t = x0 + t² x0: v = 2t x0, PE = ∫ 4t² dt · mean |x0|² = 4/3 W2²
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    speed2 = (2 * t[:, None, None] * x0).pow(2).sum(-1).mean(-1)
    assert path_energy_normalized(float(torch.trapezoid(speed2, t)), w2) == pytest.approx(1 / 3, rel=1e-6)


def test_npe_definition_with_numbers() -> None:
    assert path_energy_normalized(3.0, 2.0) == 0.5
    assert path_energy_normalized(1.0, 2.0) == 0.5  # |PE − W2²|: a flow that misses its target can undershoot
    assert path_energy_normalized(2.0, 2.0) == 0.0
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="W2"):
            path_energy_normalized(1.0, bad)
    assert path_energy_normalized(math.inf, 2.0) == math.inf  # a flow whose paths diverge
    for bad in (-0.1, math.nan):
        with pytest.raises(ValueError, match="path energy"):
            path_energy_normalized(bad, 1.0)
