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
        "swissroll", "circles", "rings", "moons", "8gaussians", "pinwheel", "2spirals", "checkerboard", "scurve",
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


# --- The 2D protocol of Tong et al.'s conditional flow matching code (moons, scurve, 8gaussians) ---------------
# References: atong01/conditional-flow-matching @cacd4dc, runner/src/datamodules/distribution_datamodule.py
# (SKLearnDataModule moons and scurve, TorchDynDataModule "gaussians"), and DiffEqML/torchdyn @95cc74b,
# torchdyn/datasets/static_datasets.py generate_gaussians.

FROZEN_SEED, FROZEN_N = 1234, 1000
FROZEN_HEAD = {  # the first rows of sample(1000, Generator().manual_seed(1234)), drawn before the new parameters
    "moons": [[1.2167065143585205, -0.982338547706604], [0.9470835328102112, -1.1185853481292725],
              [-2.7547245025634766, 0.902762234210968]],
    "8gaussians": [[-2.031529188156128, 2.1212527751922607], [-1.8549102544784546, 2.355717658996582],
                   [1.9607888460159302, 1.7885644435882568]],
}


def _legacy_ffjord_moons(n: int, generator: torch.Generator) -> Tensor:
    """The moons draw as it was before ``noise`` and ``layout`` (kept here to prove the defaults bit-identical)."""
    f64 = torch.float64
    outer = n // 2
    a_out, a_in = torch.linspace(0.0, math.pi, outer, dtype=f64), torch.linspace(0.0, math.pi, n - outer, dtype=f64)
    upper = torch.stack([a_out.cos(), a_out.sin()], dim=1)
    lower = torch.tensor([1.0, 0.5], dtype=f64) - torch.stack([a_in.cos(), a_in.sin()], dim=1)
    points = torch.cat([upper, lower])[torch.randperm(n, generator=generator)]
    points = points + 0.1 * torch.randn((n, 2), generator=generator, dtype=f64)
    return (2.0 * points + torch.tensor([-1.0, -0.2], dtype=f64)).to(torch.float32)


def _legacy_ffjord_8gaussians(n: int, generator: torch.Generator) -> Tensor:
    """The 8gaussians draw as it was before ``radius``, ``std`` and ``counts``."""
    h = 1.0 / math.sqrt(2.0)
    directions = [(1, 0), (-1, 0), (0, 1), (0, -1), (h, h), (h, -h), (-h, h), (-h, -h)]
    centers = 4.0 * torch.tensor(directions, dtype=torch.float64)
    noise = 0.5 * torch.randn((n, 2), generator=generator, dtype=torch.float64)
    index = torch.randint(0, 8, (n,), generator=generator)
    return ((noise + centers[index]) / 1.414).to(torch.float32)


LEGACY = {"moons": _legacy_ffjord_moons, "8gaussians": _legacy_ffjord_8gaussians}


def _registry_kwargs(selector: str) -> dict[str, object]:
    from cnfbench.params import parse_selection
    from cnfbench.registry import load_registry

    return load_registry().resolve("dataset", parse_selection(selector)).kwargs


def test_new_parameters_stay_out_of_the_spec_at_their_defaults() -> None:
    splits = {"n_train": 20000, "n_val": 2000, "n_test": 2000}
    for name in ("moons", "8gaussians"):
        assert _registry_kwargs(name) == splits
    assert _registry_kwargs("moons[noise=0.1,layout=ffjord]") == splits
    assert _registry_kwargs(f"8gaussians[radius={4.0 / 1.414!r},std={0.5 / 1.414!r},counts=multinomial]") == splits
    assert _registry_kwargs("moons[noise=0.05,layout=tong]") == {**splits, "noise": 0.05, "layout": "tong"}
    assert _registry_kwargs("8gaussians[radius=5,std=1,counts=balanced]") == {
        **splits, "radius": 5.0, "std": 1.0, "counts": "balanced"}
    assert _registry_kwargs("scurve") == {**splits, "noise": 0.05, "scale": 1.5}


@pytest.mark.parametrize("name", sorted(LEGACY))
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_default_draws_are_bit_identical_to_the_frozen_ones(name: str, n: int) -> None:
    for seed in (0, FROZEN_SEED):
        drawn = _draw(name, n, seed)
        assert torch.equal(drawn, LEGACY[name](n, torch.Generator().manual_seed(seed)))
    head = _draw(name, FROZEN_N, FROZEN_SEED)[:3]
    assert torch.allclose(head, torch.tensor(FROZEN_HEAD[name]), rtol=0, atol=1e-6)


def test_default_8gaussians_means_and_std_are_ffjords() -> None:
    default, explicit = _by_name("8gaussians")(), _by_name("8gaussians")(radius=4.0 / 1.414, std=0.5 / 1.414)
    h = 1.0 / math.sqrt(2.0)
    centers = 4.0 * torch.tensor([(1, 0), (-1, 0), (0, 1), (0, -1), (h, h), (h, -h), (-h, h), (-h, -h)],
                                 dtype=torch.float64)
    assert torch.equal(default.means, centers / 1.414) and torch.equal(explicit.means, default.means)
    assert default.component_std == 0.5 / 1.414


def _projection_ks(a: np.ndarray, b: np.ndarray, directions: int = 8) -> float:
    """The largest two-sample KS statistic over ``directions`` evenly spaced 1D projections."""
    from scipy.stats import ks_2samp

    angles = np.arange(directions) * np.pi / directions
    return max(ks_2samp(a @ u, b @ u).statistic for u in np.stack([np.cos(angles), np.sin(angles)], axis=1))


def _support_distance_ks(a: np.ndarray, b: np.ndarray, support: np.ndarray) -> float:
    """KS statistic between the distances of ``a`` and ``b`` to a dense noiseless ``support`` (sensitive to noise)."""
    from scipy.spatial import cKDTree
    from scipy.stats import ks_2samp

    tree = cKDTree(support)
    return ks_2samp(tree.query(a)[0], tree.query(b)[0]).statistic


KS_N = 20000
KS_TOLERANCE = 0.025
"""At n = m = 20000 the largest of these KS statistics between two samples of one law stays below about 0.017;
the wrong laws checked below (a shift of 0.2, a scale off by 3%, noise off by 10%) give 0.045 to 0.33."""


def _moons_support(shift: tuple[float, float]) -> np.ndarray:
    a = np.linspace(0.0, np.pi, 10001)
    upper, lower = np.stack([np.cos(a), np.sin(a)], 1), np.stack([1 - np.cos(a), 0.5 - np.sin(a)], 1)
    return 2.0 * np.concatenate([upper, lower]) + np.array(shift)


@pytest.mark.parametrize(("noise", "layout", "shift"), [(0.05, "tong", (-1.0, 0.0)), (0.1, "ffjord", (-1.0, -0.2))])
def test_moons_match_sklearn_make_moons_in_distribution(noise: float, layout: str, shift: tuple[float, float]) -> None:
    from sklearn.datasets import make_moons

    reference = make_moons(KS_N, noise=noise, random_state=0)[0] * 2  # SKLearnDataModule: * 2, then x[:, 0] -= 1
    reference += np.array(shift)
    support = _moons_support(shift)

    def ours(**params: object) -> np.ndarray:
        return _draw("moons", KS_N, 1, **params).double().numpy()

    drawn = ours(noise=noise, layout=layout)
    assert _projection_ks(drawn, reference) < KS_TOLERANCE
    assert _support_distance_ks(drawn, reference, support) < KS_TOLERANCE
    assert _projection_ks(ours(noise=noise, layout="ffjord" if layout == "tong" else "tong"), reference) > 0.05
    assert _support_distance_ks(ours(noise=0.9 * noise, layout=layout), reference, support) > 0.035


def test_moons_tong_layout_is_the_ffjord_one_moved_up_by_0_2() -> None:
    ffjord, tong = _draw("moons", 500, 3, noise=0.05), _draw("moons", 500, 3, noise=0.05, layout="tong")
    assert torch.allclose(tong - ffjord, torch.tensor([0.0, 0.2]).expand(500, 2), atol=1e-6)
    assert torch.equal(_draw("moons", 500, 3, noise=0.0, layout="tong")[:, 0],
                       _draw("moons", 500, 3, noise=0.0)[:, 0])


def test_scurve_matches_sklearn_make_s_curve_in_distribution() -> None:
    from sklearn.datasets import make_s_curve

    points = make_s_curve(KS_N, noise=0.05, random_state=0)[0]
    reference = np.vstack([points[:, 0], points[:, 2]]).T * 1.5  # SKLearnDataModule's scurve
    s = np.linspace(-1.5 * np.pi, 1.5 * np.pi, 20001)
    support = 1.5 * np.stack([np.sin(s), np.sign(s) * (np.cos(s) - 1.0)], axis=1)

    def ours(**params: object) -> np.ndarray:
        return _draw("scurve", KS_N, 1, **params).double().numpy()

    drawn = ours()
    assert _projection_ks(drawn, reference) < KS_TOLERANCE
    assert _support_distance_ks(drawn, reference, support) < KS_TOLERANCE
    assert _projection_ks(ours(scale=1.45), reference) > 0.04
    assert _support_distance_ks(ours(noise=0.045), reference, support) > 0.035


def test_scurve_shape_and_noise_order() -> None:
    clean = _draw("scurve", 4000, 2, noise=0.0, scale=1.0).double()
    x, z = clean[:, 0], clean[:, 1]
    assert torch.allclose(x.pow(2) + (1 - z.abs()).pow(2), torch.ones(4000, dtype=torch.float64), atol=1e-6)
    assert x.abs().max() <= 1.0 and z.abs().max() <= 2.0 and (z.abs() > 1.9).any()
    scaled = _draw("scurve", 4000, 2, noise=0.2, scale=3.0).double()
    unit = _draw("scurve", 4000, 2, noise=0.2, scale=1.0).double()
    assert torch.allclose(scaled, 3.0 * unit, atol=1e-5)  # the noise is added before the scale
    residual = unit - _draw("scurve", 4000, 2, noise=0.0, scale=1.0).double()
    assert abs(residual.std().item() - 0.2) < 0.01


def _torchdyn_gaussians(n_samples: int, n_gaussians: int = 8, radius: float = 5.0, std_gaussians: float = 1.0,
                        noise: float = 1e-4) -> tuple[Tensor, Tensor]:
    """torchdyn's ``generate_gaussians`` for ``dim=2`` (static_datasets.py lines 115-144), transcribed; it draws
    from torch's global RNG, which the caller forks."""
    from torch.distributions import Normal as TorchNormal

    X = torch.zeros(n_samples * n_gaussians, 2)  # noqa: N806 - as torchdyn names it
    y = torch.zeros(n_samples * n_gaussians).long()
    angle = torch.zeros(1)
    loc = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])
    dist = TorchNormal(loc, scale=std_gaussians)
    for i in range(n_gaussians):
        angle += 2 * math.pi / n_gaussians
        dist.loc = torch.tensor([radius * torch.cos(angle).item(), radius * torch.sin(angle).item()])
        X[i * n_samples : (i + 1) * n_samples] = dist.sample(sample_shape=(n_samples,)) + torch.randn(2) * noise
        y[i * n_samples : (i + 1) * n_samples] = i
    return X, y


def test_8gaussians_torchdyn_means_angles_and_std() -> None:
    dataset = _by_name("8gaussians")(radius=5, std=1, counts="balanced")
    means = dataset.means
    assert torch.allclose(means.norm(dim=1), torch.full((8,), 5.0, dtype=torch.float64), rtol=0, atol=1e-12)
    angles = torch.remainder(torch.atan2(means[:, 1], means[:, 0]), 2 * math.pi) / (math.pi / 4)
    assert torch.allclose(angles.sort().values, torch.arange(8, dtype=torch.float64), rtol=0, atol=1e-12)
    assert dataset.component_std == 1.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference, labels = _torchdyn_gaussians(1500)
    torchdyn_means = torch.stack([reference[labels == k].mean(0) for k in range(8)]).double()
    matched = torch.cdist(torchdyn_means, means).min(dim=1)
    assert matched.values.max() < 0.1 and sorted(matched.indices.tolist()) == list(range(8))
    for k in range(8):
        assert abs(reference[labels == k].double().std(0).mean().item() - 1.0) < 0.05


def test_8gaussians_torchdyn_matches_generate_gaussians_in_distribution() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = _torchdyn_gaussians(KS_N // 8)[0].double().numpy()
    drawn = _draw("8gaussians", KS_N, 1, radius=5, std=1, counts="balanced").double().numpy()
    assert _projection_ks(drawn, reference) < KS_TOLERANCE
    assert _projection_ks(_draw("8gaussians", KS_N, 1, radius=4.5, std=1).double().numpy(), reference) > 0.04
    assert abs(drawn.var(axis=0).mean() - (1.0 + 12.5)) < 0.3  # std^2 + radius^2 / 2 per axis


@pytest.mark.parametrize("n", [8, 16, 1500 * 8, 13, 7, 1])
def test_8gaussians_balanced_counts(n: int) -> None:
    dataset = _by_name("8gaussians")(radius=5, std=0.01, counts="balanced")
    x = dataset.sample(n, torch.Generator().manual_seed(n)).double()
    counts = torch.bincount(torch.cdist(x, dataset.means).argmin(dim=1), minlength=8)
    assert counts.sum() == n and counts.min() == n // 8 and counts.max() <= n // 8 + 1
    assert (counts == n // 8 + 1).sum() == n % 8
    if n >= 1000:  # rows in random order, not component by component as torchdyn returns them
        assert len(set(torch.cdist(x[: n // 8], dataset.means).argmin(dim=1).tolist())) == 8


@pytest.mark.parametrize("params", [{"radius": 5.0, "std": 1.0, "counts": "balanced"}, {"radius": 1.0, "std": 0.3},
                                    {"std": 0.2}, {"radius": 2.0}])
def test_8gaussians_new_parameters_keep_the_log_prob_exact(params: dict[str, object]) -> None:
    dataset = _by_name("8gaussians")(**params)
    radius, std = float(params.get("radius", 4.0 / 1.414)), float(params.get("std", 0.5 / 1.414))
    assert torch.allclose(dataset.means.norm(dim=1), torch.full((8,), radius, dtype=torch.float64))
    x = dataset.sample(4000, torch.Generator().manual_seed(0)).double()
    reference = _reference_mixture(dataset.means, std).log_prob(x)
    assert torch.allclose(dataset.log_prob(x), reference, atol=1e-9, rtol=0)
    nearest = torch.cdist(x, dataset.means).min(dim=1)
    if radius * math.sin(math.pi / 8) > 4 * std:  # well separated: the residual std is the component std
        assert abs((x - dataset.means[nearest.indices]).std().item() - std) < 0.03 * std
    edge = radius + 8 * std
    points, area = _grid(-edge, edge, edge / 200)
    assert abs((dataset.log_prob(points).exp() * area).sum().item() - 1.0) < 1e-3


@pytest.mark.parametrize(("name", "params", "words"), [
    ("moons", {"layout": "sklearn"}, ["layout", "ffjord, tong"]),
    ("moons", {"noise": -0.1}, ["noise", ">= 0"]),
    ("8gaussians", {"std": 0}, ["std", ">= 1e-06"]),
    ("8gaussians", {"radius": -1}, ["radius", ">= 0"]),
    ("8gaussians", {"counts": "even"}, ["counts", "multinomial, balanced"]),
    ("8gaussians", {"layout": "torchdyn"}, ["unknown parameter 'layout'", "counts"]),
    ("scurve", {"scale": 0}, ["scale", ">= 1e-06"]),
    ("scurve", {"noise": "a lot"}, ["noise", "expected number"]),
])
def test_bad_new_parameter_values_give_one_line_errors(name: str, params: dict[str, object], words: list[str]) -> None:
    from cnfbench.params import ParamError

    with pytest.raises(ParamError) as info:
        _by_name(name)(**params)
    message = str(info.value)
    assert "\n" not in message and all(word in message for word in words), message
