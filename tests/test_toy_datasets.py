"""Tests for the built-in toy datasets and the Gaussian mixture family."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pluggy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from cnfbench import hookspecs
from cnfbench.contracts import SPLIT_PARAMS, SampledDataset


def _load_toy_module() -> ModuleType:
    try:
        import cnfbench_plugins.toy_datasets as module
    except ImportError:
        name = "cnfbench_plugins.toy_datasets"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "plugins" / "toy_datasets.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


toy = _load_toy_module()

ALL = toy.cnfbench_datasets()
NAMES = [cls.name for cls in ALL]
SMALL = {"n_train": 64, "n_val": 32, "n_test": 48}


def _by_name(name: str) -> type[SampledDataset]:
    return next(cls for cls in ALL if cls.name == name)


def _draw(name: str, n: int, seed: int = 0, **params: object) -> Tensor:
    return _by_name(name)(**params).sample(n, torch.Generator().manual_seed(seed))


def _reference_mixture(means: Tensor, std: float) -> MixtureSameFamily:
    count, dim = means.shape
    weights = Categorical(probs=torch.full((count,), 1.0 / count, dtype=torch.float64))
    components = Independent(Normal(means, torch.full((count, dim), std, dtype=torch.float64)), 1)
    return MixtureSameFamily(weights, components)


def _grid(low: float, high: float, step: float) -> tuple[Tensor, float]:
    """Cell centres of a square grid over ``[low, high]^2`` and the cell area."""
    axis = torch.arange(low + step / 2, high, step, dtype=torch.float64)
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1), step * step


def _radius_fractions(x: Tensor, radii: list[float], width: float) -> list[float]:
    norms = x.norm(dim=1)
    return [((norms - r).abs() < width).float().mean().item() for r in radii]


def test_hook_lists_the_expected_datasets() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(toy)
    (provided,) = manager.hook.cnfbench_datasets()
    assert [cls.name for cls in provided] == [
        "swissroll", "circles", "rings", "moons", "8gaussians", "pinwheel", "2spirals", "checkerboard",
        "gaussian_mixture",
    ]  # fmt: skip


@pytest.mark.parametrize("cls", ALL, ids=NAMES)
def test_metadata(cls: type[SampledDataset]) -> None:
    assert issubclass(cls, SampledDataset)
    assert cls.description and "\n" not in cls.description
    names = [param.name for param in cls.params]
    assert len(names) == len(set(names))
    assert all(param in cls.params for param in SPLIT_PARAMS)
    dataset = cls()
    assert dataset.config["n_train"] == 20000
    expected_density = cls.name in {"8gaussians", "checkerboard", "gaussian_mixture"}
    assert dataset.has_density is expected_density
    if cls.name != "gaussian_mixture":
        assert dataset.dim == 2


@pytest.mark.parametrize("name", NAMES)
def test_splits_shape_dtype_and_seeding(name: str) -> None:
    dataset = _by_name(name)(**SMALL)
    first, again, other = dataset.splits(0), dataset.splits(0), dataset.splits(1)
    for split, size in (("train", 64), ("val", 32), ("test", 48)):
        tensor = getattr(first, split)
        assert tensor.shape == (size, dataset.dim)
        assert tensor.dtype == torch.float32
        assert torch.isfinite(tensor).all()
        assert torch.equal(tensor, getattr(again, split))
        assert not torch.equal(tensor, getattr(other, split))
    assert not torch.equal(first.train[:32], first.val)
    assert not torch.equal(first.train[:48], first.test)
    assert not torch.equal(first.val, first.test[:32])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 11])
def test_exactly_n_rows(name: str, n: int) -> None:
    assert _draw(name, n).shape == (n, 2)


@pytest.mark.parametrize("name", NAMES)
def test_leaves_global_rngs_alone(name: str) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    dataset = _by_name(name)(**SMALL)
    dataset.splits(3)
    if dataset.has_density:
        dataset.entropy_estimate(16, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])


def test_swissroll_scale() -> None:
    x = _draw("swissroll", 4000)
    radius = x.norm(dim=1)
    # t / 5 with t uniform in [1.5 pi, 4.5 pi]: mean 3 pi / 5, plus noise of std 0.2 per axis.
    assert abs(radius.mean().item() - 3 * math.pi / 5) < 0.05
    assert radius.max().item() < 4.5 * math.pi / 5 + 1.0
    assert radius.quantile(0.01).item() > 1.5 * math.pi / 5 - 0.5


def test_circles_scale() -> None:
    fractions = _radius_fractions(_draw("circles", 4000), [3.0, 1.5], width=0.7)
    assert all(abs(fraction - 0.5) < 0.02 for fraction in fractions)


def test_rings_scale() -> None:
    x = _draw("rings", 4000)
    fractions = _radius_fractions(x, [3.0, 2.25, 1.5, 0.75], width=0.3)
    assert all(abs(fraction - 0.25) < 0.02 for fraction in fractions)
    assert abs(x.norm(dim=1).mean().item() - 1.875) < 0.02


def test_moons_scale() -> None:
    x = _draw("moons", 4000)
    assert torch.allclose(x.mean(0), torch.tensor([0.0, 0.3]), atol=0.03)
    assert -3.8 < x[:, 0].min().item() < -2.5 and 2.5 < x[:, 0].max().item() < 3.8
    assert -2.0 < x[:, 1].min().item() < -0.7 and 1.3 < x[:, 1].max().item() < 2.6


def test_8gaussians_scale() -> None:
    dataset = _by_name("8gaussians")()
    x = dataset.sample(4000, torch.Generator().manual_seed(0)).double()
    assert torch.allclose(dataset.means.norm(dim=1), torch.full((8,), 4 / 1.414, dtype=torch.float64))
    nearest = torch.cdist(x, dataset.means).min(dim=1)
    assert nearest.values.max().item() < 6 * 0.5 / 1.414
    counts = torch.bincount(nearest.indices, minlength=8).double() / 4000
    assert (counts - 1 / 8).abs().max().item() < 0.03
    assert abs((x - dataset.means[nearest.indices]).std().item() - 0.5 / 1.414) < 0.02


def test_pinwheel_scale() -> None:
    x = _draw("pinwheel", 5000)
    assert abs(x.norm(dim=1).mean().item() - 2.0) < 0.1
    assert x.mean(0).abs().max().item() < 0.1
    angles = torch.atan2(x[:, 1], x[:, 0])
    # Five arms: the angle histogram has period 2 pi / 5, so its fifth circular moment is large.
    assert torch.polar(torch.ones_like(angles), 5 * angles).mean().abs().item() > 0.3


def test_2spirals_scale() -> None:
    x = _draw("2spirals", 4000)
    radius = x.norm(dim=1)
    assert 3.0 < radius.max().item() < 4.0
    assert x.mean(0).abs().max().item() < 0.1
    assert abs(radius.mean().item() - 2.1) < 0.1


def test_checkerboard_support_and_log_prob() -> None:
    dataset = _by_name("checkerboard")()
    x = dataset.sample(5000, torch.Generator().manual_seed(0))
    assert x.min().item() >= -4.0 and x.max().item() < 4.0
    assert (dataset.log_prob(x) == -math.log(32.0)).all()
    cells = torch.bincount(((x[:, 0] + 4) // 2 * 4 + (x[:, 1] + 4) // 2).long(), minlength=16).double() / 5000
    occupied = cells > 0
    assert occupied.sum().item() == 8
    assert (cells[occupied] - 1 / 8).abs().max().item() < 0.03
    edges = torch.tensor([[-4.0, -4.0], [0.0, 0.0], [2.0, 2.0], [4.0, 0.0], [2.0, 0.0], [0.0, -2.0], [-4.0, 4.0]])
    expected = torch.tensor([True, True, True, False, False, False, False])
    assert torch.equal(torch.isfinite(dataset.log_prob(edges)), expected)


def test_checkerboard_grid_integral() -> None:
    points, area = _grid(-5.0, 5.0, 0.01)
    total = (_by_name("checkerboard")().log_prob(points).exp() * area).sum().item()
    assert abs(total - 1.0) < 1e-2


def test_8gaussians_log_prob_matches_torch_distributions() -> None:
    dataset = _by_name("8gaussians")()
    x = dataset.sample(500, torch.Generator().manual_seed(0)).double()
    reference = _reference_mixture(dataset.means, 0.5 / 1.414).log_prob(x)
    assert torch.allclose(dataset.log_prob(x), reference, atol=1e-5, rtol=0)
    assert dataset.log_prob(x.float()).dtype == torch.float32


def test_8gaussians_grid_integral_and_entropy() -> None:
    dataset = _by_name("8gaussians")()
    points, area = _grid(-5.0, 5.0, 0.02)
    log_density = dataset.log_prob(points)
    density = log_density.exp()
    assert abs((density * area).sum().item() - 1.0) < 1e-3
    grid_entropy = -(density * log_density * area).sum().item()
    estimate, error = dataset.entropy_estimate(20000, torch.Generator().manual_seed(0))
    assert 0 < error < 0.01
    assert abs(estimate - grid_entropy) < 4 * error
    assert abs(grid_entropy - 2.832) < 0.005


@pytest.mark.parametrize("dim", [2, 5])
def test_gaussian_mixture_log_prob_matches_torch_distributions(dim: int) -> None:
    dataset = _by_name("gaussian_mixture")(dim=dim, components=6, spread=3.0, scale=0.7)
    x = dataset.sample(2000, torch.Generator().manual_seed(0)).double()
    reference = _reference_mixture(dataset.means, 0.7).log_prob(x)
    ours = dataset.log_prob(x)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)
    assert abs(ours.mean().item() - reference.mean().item()) < 1e-5


def test_gaussian_mixture_means_are_fixed_by_dim_and_components() -> None:
    cls = _by_name("gaussian_mixture")
    first, second = cls(dim=3, components=4), cls(dim=3, components=4, n_train=10)
    assert torch.equal(first.means, second.means)
    assert first.means.shape == (4, 3)
    assert not torch.equal(first.means, cls(dim=3, components=5).means[:4])
    assert torch.allclose(cls(dim=3, components=4, spread=2.0).means, first.means / 2)
    wide = cls(dim=64, components=200)
    assert abs(wide.means.norm(dim=1).mean().item() - 4.0) < 0.2


def test_gaussian_mixture_single_component_entropy() -> None:
    dim, scale = 3, 0.8
    dataset = _by_name("gaussian_mixture")(dim=dim, components=1, scale=scale)
    exact = 0.5 * dim * math.log(2 * math.pi * math.e * scale**2)
    estimate, error = dataset.entropy_estimate(20000, torch.Generator().manual_seed(0))
    assert 0 < error < 0.02
    assert abs(estimate - exact) < 4 * error
    x = dataset.sample(20000, torch.Generator().manual_seed(1)).double()
    assert torch.allclose(x.mean(0), dataset.means[0], atol=0.05)
    assert abs((x - dataset.means[0]).std().item() - scale) < 0.02


@settings(max_examples=25, deadline=None)
@given(
    dim=st.integers(1, 8),
    components=st.integers(1, 5),
    spread=st.floats(0.0, 10.0),
    scale=st.floats(0.05, 3.0),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_gaussian_mixture_properties(dim: int, components: int, spread: float, scale: float, n: int, seed: int) -> None:
    dataset = _by_name("gaussian_mixture")(dim=dim, components=components, spread=spread, scale=scale)
    x = dataset.sample(n, torch.Generator().manual_seed(seed))
    assert x.shape == (n, dim) and x.dtype == torch.float32
    log_prob = dataset.log_prob(x)
    assert log_prob.shape == (n,) and torch.isfinite(log_prob).all()
    reference = _reference_mixture(dataset.means, scale).log_prob(x.double())
    assert torch.allclose(dataset.log_prob(x.double()), reference, atol=1e-5, rtol=0)
