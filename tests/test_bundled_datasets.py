"""Tests for the scikit-learn bundled datasets: digits (dequantized, bits/dim offset) and standardized tables."""

from __future__ import annotations

import math
import socket

import cnfbench_plugins.bundled_datasets as bundled
import numpy as np
import pytest
import torch
from sklearn import datasets as skdata

from cnfbench.contracts import Dataset, split_generator
from cnfbench.params import ParamError
from cnfbench.registry import load_registry
from cnfbench.testing import check_dataset

Digits, Iris, Wine, BreastCancer = bundled.Digits, bundled.Iris, bundled.Wine, bundled.BreastCancer
TABLES = [Iris, Wine, BreastCancer]
ALL = [Digits, *TABLES]
SPLITS = ("train", "val", "test")
SKLEARN = {"digits": skdata.load_digits, "iris": skdata.load_iris, "wine": skdata.load_wine,
           "breast_cancer": skdata.load_breast_cancer}
DIMS = {"digits": 64, "iris": 4, "wine": 13, "breast_cancer": 30}


def _sklearn(name: str) -> np.ndarray:
    return np.asarray(SKLEARN[name]().data, dtype=np.float64)


def _pixels_of(dataset: Digits, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(floor(17 y), 17 y)`` in float64 for the dataset's output ``z`` (``y = s z + 1/2``)."""
    scaled = (z.to(torch.float64) * dataset.scale + 0.5) * Digits.LEVELS
    return scaled.floor(), scaled


def test_hook_returns_the_four_datasets_and_the_registry_loads_them() -> None:
    assert [cls.name for cls in bundled.cnfbench_datasets()] == ["digits", "iris", "wine", "breast_cancer"]
    registry = load_registry(["cnfbench_plugins.bundled_datasets"])
    for cls in ALL:
        assert registry.get("dataset", cls.name).cls is cls
        assert issubclass(cls, Dataset) and cls.description and cls.libraries == ("scikit-learn",)


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.name)
def test_shapes_dims_and_dtype(cls: type[bundled.BundledDataset]) -> None:
    dataset = cls()
    assert dataset.dim == DIMS[cls.name]
    splits = dataset.splits(0)
    sizes = {split: getattr(splits, split).shape[0] for split in SPLITS}
    assert sizes == dataset.sizes
    for split in SPLITS:
        x = getattr(splits, split)
        assert x.shape == (sizes[split], dataset.dim) and x.dtype == torch.float32 and torch.isfinite(x).all()
    distinct = np.unique(_sklearn(cls.name), axis=0).shape[0]
    assert sum(sizes.values()) == distinct == dataset.table().shape[0]


def test_default_split_sizes() -> None:
    assert Digits().sizes == {"train": 1297, "val": 200, "test": 300}
    assert Digits(n_train=500, n_val=50, n_test=60).sizes == {"train": 500, "val": 50, "test": 60}
    assert Iris().sizes == {"train": 104, "val": 15, "test": 30}  # 149 distinct rows, 14.9 -> 15, 29.8 -> 30
    assert Wine().sizes == {"train": 124, "val": 18, "test": 36}
    assert BreastCancer().sizes == {"train": 398, "val": 57, "test": 114}
    assert Iris(val_fraction=0.2, test_fraction=0.3).sizes == {"train": 74, "val": 30, "test": 45}


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.name)
def test_deterministic_per_seed_and_different_across_seeds(cls: type[bundled.BundledDataset]) -> None:
    first, again, other = cls().splits(5), cls().splits(5), cls().splits(6)
    for split in SPLITS:
        assert torch.equal(getattr(first, split), getattr(again, split))
        assert not torch.equal(getattr(first, split), getattr(other, split))
    indices = cls().split_indices(5)
    assert not torch.equal(indices["test"], cls().split_indices(6)["test"])
    assert all(torch.equal(indices[split], cls().split_indices(5)[split]) for split in SPLITS)


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.name)
def test_splits_are_disjoint_rows_covering_the_distinct_table(cls: type[bundled.BundledDataset]) -> None:
    dataset = cls()
    indices = dataset.split_indices(3)
    sets = {split: set(indices[split].tolist()) for split in SPLITS}
    assert all(len(sets[split]) == len(indices[split]) for split in SPLITS)
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == set(dataset.sklearn_rows().tolist())
    data = _sklearn(cls.name)
    rows = {split: {data[i].tobytes() for i in sets[split]} for split in SPLITS}  # distinct as raw rows too
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


def test_iris_drops_its_one_repeated_row() -> None:
    rows = Iris.sklearn_rows()
    assert len(rows) == 149 and 101 in rows and 142 not in rows
    data = _sklearn("iris")
    assert np.array_equal(data[101], data[142])


def test_digits_round_trip_recovers_the_sklearn_pixels_of_each_split() -> None:
    dataset = Digits()
    splits, indices = dataset.splits(11), dataset.split_indices(11)
    pixels = torch.from_numpy(_sklearn("digits"))
    for split in SPLITS:
        recovered, scaled = _pixels_of(dataset, getattr(splits, split))
        assert torch.equal(recovered, pixels[indices[split]])
        assert torch.equal(recovered, dataset.pixels(11)[split])
        assert (scaled - recovered).min() > 0 and (scaled - recovered).max() < 1  # strictly inside the cell
    assert recovered.min() == 0 and recovered.max() == 16


def test_digits_noise_is_fresh_per_split_and_seed_and_roughly_uniform() -> None:
    dataset = Digits()
    first, other = dataset.splits(0), dataset.splits(1)
    fractions = []
    for splits in (first, other):
        recovered, scaled = _pixels_of(dataset, splits.train)
        fractions.append(scaled - recovered)
    u = fractions[0]
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    # the same image in two seeds' training splits gets different noise
    rows = {seed: Digits().split_indices(seed)["train"].tolist() for seed in (0, 1)}
    shared = sorted(set(rows[0]) & set(rows[1]))[:5]
    for row in shared:
        a, b = fractions[0][rows[0].index(row)], fractions[1][rows[1].index(row)]
        assert not torch.equal(a, b)
    # the noise streams are named per split: same pixels, different split, different noise
    pixels = torch.zeros(4, 64)
    draws = [dataset.dequantize(pixels, split_generator(0, f"data/dequantize/{split}")) for split in SPLITS]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


@pytest.mark.parametrize("scale", [1e-3, 0.4, 1.0, 1e3])
def test_digits_extreme_noise_stays_inside_its_cell_after_float32_rounding(scale: float) -> None:
    dataset = Digits(scale=scale)
    levels = torch.arange(17, dtype=torch.float64).repeat_interleave(2)[:, None].expand(34, 64)
    cells = torch.tensor([0, (1 << Digits.NOISE_BITS) - 1]).repeat(17)[:, None].expand(34, 64)
    z = dataset.dequantize_at(levels, cells)
    recovered, scaled = _pixels_of(dataset, z)
    assert z.dtype == torch.float32 and torch.equal(recovered, levels)
    assert (scaled - recovered).min() > 0 and (scaled - recovered).max() < 1


def test_digits_default_scale_gives_unit_scale_data() -> None:
    z = torch.cat(list(vars(Digits().splits(0)).values()))
    assert Digits().scale == 0.4
    assert 0.9 < z.pow(2).mean().sqrt().item() < 1.1
    assert -1.25 - 1e-6 <= z.min().item() and z.max().item() < 1.25  # (y - 0.5) / 0.4 for y in [0, 1)


@pytest.mark.parametrize("scale", [0.05, 0.4, 1.0, 3.0])
def test_digits_offset_formula(scale: float) -> None:
    dataset = Digits(scale=scale)
    dim = dataset.dim
    assert dataset.discrete_nll_offset == pytest.approx(dim * math.log(17) + dim * math.log(scale), rel=1e-12)
    # a model uniform on the cube of y in [0, 1)^D has density s^D in z: NLL_z = -D ln s, so exactly log2(17) bits/dim
    nll_uniform = -dim * math.log(scale)
    bits_per_dim = (nll_uniform + dataset.discrete_nll_offset) / (dim * math.log(2))
    assert bits_per_dim == pytest.approx(math.log2(17), rel=1e-12)


def test_digits_offset_turns_a_histogram_density_into_the_exact_discrete_nll() -> None:
    """A density constant on each grey-level cell, ``p_y(y) = prod_d 17 P_d(floor(17 y_d))``, has the discrete
    NLL ``-sum_d log P_d(x_d)`` as its dequantization bound with equality: the offset must close the gap exactly."""
    dataset = Digits(scale=0.3)
    splits, pixels = dataset.splits(2), dataset.pixels(2)
    counts = torch.stack([torch.bincount(pixels["train"][:, d].long(), minlength=17) for d in range(64)]).double()
    probs = (counts + 0.5) / (counts + 0.5).sum(dim=1, keepdim=True)  # [64, 17]
    recovered, _ = _pixels_of(dataset, splits.test)
    log_p = probs.log().gather(1, recovered.long().T).T  # [n, 64]: log P_d(x_d)
    nll_z = -(log_p + math.log(17)).sum(dim=1) - 64 * math.log(dataset.scale)  # -log p_z = -log p_y - D ln s
    discrete = -(probs.log().gather(1, pixels["test"].long().T).T).sum(dim=1)
    assert torch.allclose(nll_z + dataset.discrete_nll_offset, discrete, rtol=0, atol=1e-9)


@pytest.mark.parametrize("cls", TABLES, ids=lambda cls: cls.name)
def test_standardization_uses_the_training_split_only(cls: type[bundled.StandardizedTable]) -> None:
    dataset = cls()
    splits, indices = dataset.splits(4), dataset.split_indices(4)
    assert dataset.discrete_nll_offset is None and not dataset.has_density
    train = splits.train.double()
    assert train.mean(dim=0).abs().max() < 1e-5
    assert (train.std(dim=0, unbiased=False) - 1).abs().max() < 1e-5
    test = splits.test.double()
    assert test.mean(dim=0).abs().max() > 1e-2 or (test.std(dim=0, unbiased=False) - 1).abs().max() > 1e-2
    raw = torch.from_numpy(_sklearn(cls.name))
    mean, std = dataset.standardization(4)
    raw_train = raw[indices["train"]]
    assert torch.allclose(mean, raw_train.mean(dim=0)) and torch.allclose(std, raw_train.std(dim=0, unbiased=False))
    assert not torch.allclose(mean, raw.mean(dim=0))  # not the whole table's statistics
    for split in SPLITS:
        expected = ((raw[indices[split]] - mean) / std).float()
        assert torch.allclose(getattr(splits, split), expected, atol=1e-6)


@pytest.mark.parametrize("cls", TABLES, ids=lambda cls: cls.name)
def test_raw_nll_is_the_standardized_nll_plus_the_log_scales(cls: type[bundled.StandardizedTable]) -> None:
    dataset = cls()
    splits, indices = dataset.splits(7), dataset.split_indices(7)
    mean, std = dataset.standardization(7)
    raw_test = torch.from_numpy(_sklearn(cls.name))[indices["test"]]
    standard = torch.distributions.Normal(0.0, 1.0)
    nll_std = -standard.log_prob(splits.test.double()).sum(dim=1)
    nll_raw = -torch.distributions.Normal(mean, std).log_prob(raw_test).sum(dim=1)  # the same model in raw units
    assert dataset.raw_nll_shift(7) == pytest.approx(std.log().sum().item())
    assert torch.allclose(nll_raw, nll_std + dataset.raw_nll_shift(7), atol=1e-4)


def test_sizes_that_do_not_fit_are_rejected_in_one_line() -> None:
    cases = [
        (Digits, {"n_val": 1000, "n_test": 1000}),
        (Digits, {"n_train": 1500}),
        (Digits, {"n_val": 1000, "n_test": 797}),
        (Iris, {"test_fraction": 0.001}),
        (Iris, {"val_fraction": 0.0}),
        (Wine, {"val_fraction": 0.5, "test_fraction": 0.5}),
    ]
    for cls, params in cases:
        for attempt in (lambda cls=cls, params=params: cls(**params), lambda cls=cls, params=params: cls.pin(params)):
            with pytest.raises(ValueError) as caught:
                attempt()
            assert "\n" not in str(caught.value) and cls.name in str(caught.value)
    assert Digits.pin({"n_val": 200}) == {"n_val": 200}
    assert Digits(n_train=1297).sizes["train"] == 1297
    with pytest.raises(ParamError):
        Digits(scale=0.0)


def test_constant_training_feature_is_reported() -> None:
    tiny = Iris(val_fraction=0.49, test_fraction=0.49)  # 149 rows: 73 val, 73 test, 3 train
    assert tiny.sizes["train"] == 3
    seeds = []
    for seed in range(200):
        try:
            tiny.splits(seed)
        except ValueError as exc:
            assert "constant" in str(exc) and "\n" not in str(exc)
            seeds.append(seed)
    assert seeds, "expected some seed whose 3 training rows share a feature value"


def test_loading_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the bundled datasets must not open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    bundled._load.cache_clear()
    for cls in ALL:
        assert cls().splits(0).train.shape[1] == DIMS[cls.name]


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.name)
def test_conformance_kit(cls: type[bundled.BundledDataset]) -> None:
    check_dataset(cls)


def test_conformance_kit_with_default_digits_sizes() -> None:
    check_dataset(Digits, {"n_train": 1297, "n_val": 200, "n_test": 300, "scale": 0.25})
