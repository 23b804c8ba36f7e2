"""Sample distances: closed forms, unbiasedness, honest standard errors, negative controls, and the cell's columns."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import read_cells

from cnfbench.columns import COLUMNS_BY_NAME
from cnfbench.sample_quality import energy_distance, random_directions, sliced_wasserstein2


def normal(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def gaussian_shift_energy(mu: float) -> float:
    """Closed form for N(0, 1) vs N(mu, 1): E|N(m, s²)| = s√(2/π) exp(−m²/2s²) + m erf(m/(s√2)), s² = 2."""
    cross = 2 / math.sqrt(math.pi) * math.exp(-mu * mu / 4) + mu * math.erf(mu / 2)
    return 2 * cross - 2 * (2 / math.sqrt(math.pi))


def biased_energy(x: torch.Tensor, y: torch.Tensor) -> float:
    """Negative control: the V-statistic, with the zero diagonal in the within-sample means."""
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def test_energy_distance_matches_the_closed_form_of_a_gaussian_shift() -> None:
    for mu in (0.5, 1.0, 2.0):
        value, stderr = energy_distance(normal(1500, 1, 1), normal(1500, 1, 2, mu))
        assert abs(value - gaussian_shift_energy(mu)) < 4 * stderr, (mu, value, stderr)
        assert stderr < 0.2 * gaussian_shift_energy(mu)
    shifts = [energy_distance(normal(400, 2, 3), normal(400, 2, 4, mu))[0] for mu in (0.0, 0.5, 1.0, 2.0)]
    assert shifts == sorted(shifts)


def test_energy_distance_is_unbiased_and_the_v_statistic_is_not() -> None:
    # 600 pairs of 10-point samples of one distribution: the U-statistic averages to 0, the V-statistic to
    # about (E|X-X'| + E|Y-Y'|)/n = 2 * (2/√π) / 10 = 0.23
    unbiased = torch.tensor([energy_distance(normal(10, 1, 2 * k), normal(10, 1, 2 * k + 1))[0] for k in range(600)])
    biased = torch.tensor([biased_energy(normal(10, 1, 2 * k), normal(10, 1, 2 * k + 1)) for k in range(600)])
    se = float(unbiased.std() / math.sqrt(600))
    assert abs(float(unbiased.mean())) < 3 * se
    assert float(biased.mean()) > 10 * se and abs(float(biased.mean()) - 4 / math.sqrt(math.pi) / 10) < 0.05


def test_energy_distance_is_zero_within_its_stderr_for_one_distribution() -> None:
    value, stderr = energy_distance(normal(1000, 2, 5), normal(1000, 2, 6))
    assert abs(value) < 3 * stderr and stderr > 0


def test_the_jackknife_stderr_matches_the_spread_over_repeated_samples() -> None:
    runs = [energy_distance(normal(120, 2, 100 + 2 * k), normal(120, 2, 101 + 2 * k, 0.7)) for k in range(150)]
    values = torch.tensor([v for v, _ in runs])
    jackknife = sum(se for _, se in runs) / len(runs)
    assert 0.75 < jackknife / float(values.std()) < 1.33


def test_energy_distance_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        energy_distance(normal(2, 2, 0), normal(5, 2, 1))
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        energy_distance(normal(5, 2, 0), normal(5, 3, 1))


def test_sliced_w2_of_a_pure_shift_is_the_squared_shift_over_the_dimension() -> None:
    x = normal(2000, 4, 7)
    mu = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    value, stderr = sliced_wasserstein2(x, x + mu, 2000, torch.Generator().manual_seed(0))
    # shifting one sample by mu sorts identically: each direction gives (θ·μ)² exactly, E = |μ|²/d
    expected = float(mu.pow(2).sum()) / 4
    assert abs(value - expected) < 4 * stderr and stderr < 0.05 * expected
    # a two-sample version: the shift dominates the O(1/n) sampling term
    two_sample, spread = sliced_wasserstein2(normal(2000, 4, 8), normal(2000, 4, 9) + mu, 128,
                                             torch.Generator().manual_seed(1))
    assert abs(two_sample - expected) < 4 * spread + 0.01


def test_sliced_w2_is_near_zero_for_one_distribution_and_grows_with_the_shift() -> None:
    values = [sliced_wasserstein2(normal(2000, 2, 10), normal(2000, 2, 11, mu), 128, torch.Generator().manual_seed(2))
              for mu in (0.0, 0.25, 0.5, 1.0)]
    assert values[0][0] < 0.01  # only the finite-sample term, of order 1/n
    assert [v for v, _ in values] == sorted(v for v, _ in values)
    assert abs(values[3][0] - 1.0) < 0.05  # shift (1, 1): |μ|²/d = 1


def test_sliced_w2_negative_controls() -> None:
    x, y = normal(2000, 2, 12), normal(2000, 2, 13)
    theta = random_directions(128, 2, torch.Generator().manual_seed(3))
    assert torch.allclose(theta.norm(dim=1), torch.ones(128, dtype=torch.float64))
    # matching without sorting (an arbitrary coupling) gives ~2 Var(θ·X) = 2, not ~0
    unsorted = ((x @ theta.T - y @ theta.T) ** 2).mean()
    assert float(unsorted) > 1.5 and sliced_wasserstein2(x, y, 128, torch.Generator().manual_seed(3))[0] < 0.01
    # Gaussian (unnormalized) directions would scale a shift by E|θ|² = d: 2x too large here
    mu = torch.tensor([1.0, 1.0], dtype=torch.float64)
    raw = torch.randn(4000, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert float((raw @ mu).pow(2).mean()) > 1.8
    assert abs(sliced_wasserstein2(x, x + mu, 4000, torch.Generator().manual_seed(4))[0] - 1.0) < 0.05
    with pytest.raises(ValueError, match="one size"):
        sliced_wasserstein2(x, y[:10], 16, torch.Generator())


def test_sliced_w2_is_reproducible_from_its_generator() -> None:
    x, y = normal(100, 3, 14), normal(100, 3, 15)
    first = sliced_wasserstein2(x, y, 64, torch.Generator().manual_seed(5))
    assert first == sliced_wasserstein2(x, y, 64, torch.Generator().manual_seed(5))
    assert first != sliced_wasserstein2(x, y, 64, torch.Generator().manual_seed(6))


QUALITY_COLUMNS = ("energy_distance", "energy_distance_stderr", "sliced_w2", "sliced_w2_stderr", "reverse_kl",
                   "reverse_kl_stderr", "mass_is", "mass_is_stderr", "mass_is_ess", "mass_is_time_s", "roundtrip_error",
                   "nfe_sample", "sample_time_s")


def test_every_done_cell_gets_the_sample_quality_columns(cli, tmp_path: Path) -> None:
    result = cli("run", "--name", "quality", "--isolation", "inline", "--solver", "dopri5,euler[steps=2]",
                 "--metrics", "default,energy_distance,sliced_w2,roundtrip")
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "quality").set_index("solver")
    assert set(cells["status"]) == {"done"}
    for name in QUALITY_COLUMNS:
        assert name in COLUMNS_BY_NAME
        assert cells[name].map(math.isfinite).all(), name
    assert (cells["energy_distance_stderr"] > 0).all() and (cells["sliced_w2_stderr"] > 0).all()
    assert (cells["nfe_sample"] > 0).all()
    assert cells.loc["euler", "nfe_sample"] == 2  # one sampling solve of two Euler steps, counted by the harness
    # dopri5 inverts itself closely; two Euler steps there and back do not
    assert cells.loc["dopri5", "roundtrip_error"] < 1e-3
    assert cells.loc["euler", "roundtrip_error"] > 10 * cells.loc["dopri5", "roundtrip_error"]
    # not in the printed summary
    header = result.output[result.output.index("Summary"):].splitlines()[1:3]
    assert "energy" not in " ".join(header) and "sliced" not in " ".join(header)
