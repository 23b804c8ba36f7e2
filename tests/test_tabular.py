"""File-based datasets: ``table`` (CSV, TSV, parquet, .npy) and the MAF benchmarks (power, gas, hepmass, miniboone,
bsds300), checked on tiny files written in the archive's formats; and ``cnfbench data download``, offline.

Each MAF dataset is compared with a literal transcription of the MAF code (github.com/gpapamak/maf ``datasets/``,
``.as_matrix()`` read as ``.values``) and with properties computed by hand.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import math
import tarfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cnfbench_plugins.tabular as tabular
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import read_cells

import cnfbench.cli.data as data_cli
from cnfbench.cli import main
from cnfbench.contracts import DATA_ROOT_VARIABLE, split_generator
from cnfbench.testing import ConformanceError, check_dataset


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The data folder, as ``$CNFBENCH_DATA``."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv(DATA_ROOT_VARIABLE, str(folder))
    tabular._CACHE.clear()
    return folder


def _as_numpy(splits: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = (splits.train, splits.val, splits.test)  # type: ignore[attr-defined]
    for part in parts:
        assert part.dtype == torch.float32 and part.is_contiguous()
    return tuple(part.numpy() for part in parts)  # type: ignore[return-value]


def _assert_close(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> None:
    for ours, theirs in zip(got, want, strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, np.asarray(theirs, dtype=np.float32))


def _error(call: object, *args: object) -> str:
    with pytest.raises(ValueError) as info:
        call(*args)  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------------------------

ROWS = 40


def _frame(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "a": rng.normal(5.0, 2.0, rows).round(4),
        "b-1": rng.integers(0, 50, rows),
        "label": rng.choice(["x", "y"], rows),
        "c": rng.exponential(3.0, rows).round(4),
    })


def _write_csv(root: Path, frame: pd.DataFrame, name: str = "t.csv") -> Path:
    path = root / name
    frame.to_csv(path, index=False)
    return path


def _expected_table(values: np.ndarray, seed: int, standardize: bool = True, val_fraction: float = 0.1,
                    test_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = values.shape[0]
    n_val, n_test = round(rows * val_fraction), round(rows * test_fraction)
    n_train = rows - n_val - n_test
    order = torch.randperm(rows, generator=split_generator(seed, "data/table")).numpy()
    shuffled = values[order].astype(np.float64)
    train, val, test = shuffled[:n_train], shuffled[n_train:n_train + n_val], shuffled[n_train + n_val:]
    if standardize:
        mean, std = train.mean(axis=0), train.std(axis=0)
        train, val, test = (train - mean) / std, (val - mean) / std, (test - mean) / std
    return train, val, test


def test_table_csv_selects_columns_and_standardizes_by_the_training_split_only(root: Path) -> None:
    frame = _frame()
    _write_csv(root, frame)
    params = tabular.Table.pin(tabular.Table(path="t.csv", columns="a+b-1").config)
    assert params["sha256"] == hashlib.sha256((root / "t.csv").read_bytes()).hexdigest()
    dataset = tabular.Table(**params)
    assert dataset.dim == 2 and not dataset.has_density and dataset.discrete_nll_offset is None
    got = _as_numpy(dataset.splits(3))
    want = _expected_table(frame[["a", "b-1"]].to_numpy(dtype=np.float64), 3)
    for ours, theirs in zip(got, want, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert [len(part) for part in got] == [32, 4, 4]
    train, val, _ = got
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-5)
    # validation rows are scaled by the training statistics, not by statistics that include them
    everything = frame[["a", "b-1"]].to_numpy(dtype=np.float64)
    rows_of_val = _expected_table(everything, 3, standardize=False)[1]
    by_all_rows = (rows_of_val - everything.mean(axis=0)) / everything.std(axis=0)
    assert not np.allclose(val, by_all_rows, atol=1e-3)
    # the same seed gives the same splits, another seed others
    _assert_close(_as_numpy(tabular.Table(**params).splits(3)), got)
    assert not np.array_equal(_as_numpy(dataset.splits(4))[2], got[2])


def test_table_star_takes_every_numeric_column_and_standardize_false_keeps_values(root: Path) -> None:
    frame = _frame()
    _write_csv(root, frame)
    dataset = tabular.Table(**tabular.Table.pin(tabular.Table(path=str(root / "t.csv"), standardize=False).config))
    assert dataset.dim == 3
    got = _as_numpy(dataset.splits(0))
    want = _expected_table(frame[["a", "b-1", "c"]].to_numpy(dtype=np.float64), 0, standardize=False)
    _assert_close(got, want)


def test_table_parquet_and_tsv_give_the_csv_splits(root: Path) -> None:
    frame = _frame()
    _write_csv(root, frame)
    frame.to_parquet(root / "t.parquet", index=False)
    frame.to_csv(root / "t.tsv", sep="\t", index=False)
    with gzip.open(root / "t.csv.gz", "wt") as handle:
        frame.to_csv(handle, index=False)
    reference = _as_numpy(tabular.Table(path="t.csv", columns="c+a").splits(5))
    for name in ("t.parquet", "t.tsv", "t.csv.gz"):
        params = tabular.Table.pin(tabular.Table(path=name, columns="c+a").config)
        _assert_close(_as_numpy(tabular.Table(**params).splits(5)), reference)


def test_table_npy_selects_columns_by_index(root: Path) -> None:
    array = np.random.default_rng(1).normal(size=(30, 4))
    np.save(root / "t.npy", array)
    dataset = tabular.Table(**tabular.Table.pin(tabular.Table(path="t.npy", columns="3+0",
                                                              val_fraction=0.2).config))
    assert dataset.dim == 2
    got = _as_numpy(dataset.splits(2))
    want = _expected_table(array[:, [3, 0]], 2, val_fraction=0.2)
    for ours, theirs in zip(got, want, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert [len(part) for part in got] == [21, 6, 3]
    assert "has no column '4'; it has column indices 0 to 3" in _error(tabular.Table.pin,
                                                                       {**dataset.config, "columns": "4"})


def test_table_n_train_keeps_the_first_training_rows_and_the_same_val_and_test(root: Path) -> None:
    _write_csv(root, _frame())
    full = _as_numpy(tabular.Table(path="t.csv").splits(1))
    capped = _as_numpy(tabular.Table(path="t.csv", n_train=10).splits(1))
    np.testing.assert_array_equal(capped[0], full[0][:10])
    np.testing.assert_array_equal(capped[1], full[1])
    np.testing.assert_array_equal(capped[2], full[2])
    assert "n_train=33 but the training split of" in _error(tabular.Table.pin, tabular.Table(path="t.csv",
                                                                                          n_train=33).config)


def test_table_passes_the_dataset_conformance_kit(root: Path) -> None:
    _write_csv(root, _frame())
    check_dataset(tabular.Table, {"path": "t.csv", "n_train": 20})


def test_table_pinned_sha256_detects_a_changed_file(root: Path) -> None:
    path = _write_csv(root, _frame())
    params = tabular.Table.pin(tabular.Table(path="t.csv").config)
    assert len(params["sha256"]) == 64
    _write_csv(root, _frame(seed=9))
    message = _error(tabular.Table(**params).splits, 0)
    assert str(path) in message and "changed since the run was configured" in message
    assert "not the sha256=" in _error(tabular.Table.pin, params)
    assert "64 hexadecimal digits" in _error(tabular.Table.pin, {**params, "sha256": "abc"})


def test_table_refusals_name_the_file_column_and_count(root: Path) -> None:
    frame = _frame()
    config = tabular.Table(path="t.csv").config
    missing = _error(tabular.Table.pin, config)
    assert f"{root / 't.csv'} does not exist" in missing
    absolute = _error(tabular.Table.pin, {**config, "path": str(root / "sub" / "u.csv")})
    assert str(root / "sub" / "u.csv") in absolute
    assert "table[path=FILE]" in _error(tabular.Table.pin, {**config, "path": ""})

    _write_csv(root, frame)
    text = _error(tabular.Table.pin, {**config, "columns": "a+label"})
    assert "column 'label'" in text and "not numeric" in text and "line 2 holds" in text
    assert "has no column 'zz'; it has columns 'a', 'b-1', 'label', 'c'" in _error(
        tabular.Table.pin, {**config, "columns": "a+zz"})

    holes = frame.astype({"a": object})
    holes.loc[[3, 7], "a"] = ""
    holes.loc[[7, 11], "c"] = np.nan
    _write_csv(root, holes)
    text = _error(tabular.Table.pin, config)
    assert "3 of 40 rows have missing values" in text and "'a', 'c'" in text

    _write_csv(root, frame.assign(a=frame["a"].astype(object).where(frame.index != 2, "nan"),
                                  c=frame["c"].where(~frame.index.isin([5, 6]), math.inf)))
    text = _error(tabular.Table.pin, config)
    assert "3 of 40 rows hold NaN or infinite values" in text

    _write_csv(root, frame.head(4))
    assert "has 4 rows: too few" in _error(tabular.Table.pin, config)
    _write_csv(root, frame.assign(b=1.5))
    assert "column 'b' of" in _error(tabular.Table.pin, config) and "constant" in _error(tabular.Table.pin, config)
    (root / "t.xlsx").write_bytes(b"x")
    assert "unknown file type" in _error(tabular.Table.pin, {**config, "path": "t.xlsx"})


def test_table_parquet_nulls_are_missing_values(root: Path) -> None:
    pd.DataFrame({"a": pd.array([1.0, None, 3.0, 4.0] * 5, dtype="Float64"),
                  "b": np.arange(20.0)}).to_parquet(root / "n.parquet")
    assert "5 of 20 rows have missing values" in _error(tabular.Table.pin, tabular.Table(path="n.parquet").config)
    pd.DataFrame({"s": ["x"] * 20, "b": np.arange(20.0)}).to_parquet(root / "s.parquet")
    assert "column 's'" in _error(tabular.Table.pin, tabular.Table(path="s.parquet", columns="s+b").config)


# ---------------------------------------------------------------------------------------------------------------
# MAF reference: the original code, transcribed
# ---------------------------------------------------------------------------------------------------------------


def maf_power_reference(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.RandomState(42)
    data = np.load(path)
    rng.shuffle(data)
    N = data.shape[0]  # noqa: N806 - as in the original
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(N, 1)
    gap_noise = 0.001 * rng.rand(N, 1)
    sm_noise = rng.rand(N, 3)
    time_noise = np.zeros((N, 1))
    noise = np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    data = data + noise
    N_test = int(0.1 * data.shape[0])  # noqa: N806
    data_test = data[-N_test:]
    data = data[0:-N_test]
    N_validate = int(0.1 * data.shape[0])  # noqa: N806
    data_validate = data[-N_validate:]
    data_train = data[0:-N_validate]
    data = np.vstack((data_train, data_validate))
    mu = data.mean(axis=0)
    s = data.std(axis=0)
    return (data_train - mu) / s, (data_validate - mu) / s, (data_test - mu) / s


def maf_miniboone_reference(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = np.load(path)
    N_test = int(0.1 * data.shape[0])  # noqa: N806
    data_test = data[-N_test:]
    data = data[0:-N_test]
    N_validate = int(0.1 * data.shape[0])  # noqa: N806
    data_validate = data[-N_validate:]
    data_train = data[0:-N_validate]
    data = np.vstack((data_train, data_validate))
    mu = data.mean(axis=0)
    s = data.std(axis=0)
    return (data_train - mu) / s, (data_validate - mu) / s, (data_test - mu) / s


def maf_hepmass_reference(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data_train = pd.read_csv(filepath_or_buffer=folder / "1000_train.csv", index_col=False)
    data_test = pd.read_csv(filepath_or_buffer=folder / "1000_test.csv", index_col=False)
    data_train = data_train[data_train[data_train.columns[0]] == 1]
    data_train = data_train.drop(data_train.columns[0], axis=1)
    data_test = data_test[data_test[data_test.columns[0]] == 1]
    data_test = data_test.drop(data_test.columns[0], axis=1)
    data_test = data_test.drop(data_test.columns[-1], axis=1)
    mu = data_train.mean()
    s = data_train.std()
    data_train = (data_train - mu) / s
    data_test = (data_test - mu) / s
    data_train, data_test = data_train.values, data_test.values
    i = 0
    features_to_remove = []
    for feature in data_train.T:
        c = Counter(feature)
        max_count = np.array([v for k, v in sorted(c.items())])[0]
        if max_count > 5:
            features_to_remove.append(i)
        i += 1
    data_train = data_train[:, np.array([i for i in range(data_train.shape[1]) if i not in features_to_remove])]
    data_test = data_test[:, np.array([i for i in range(data_test.shape[1]) if i not in features_to_remove])]
    N = data_train.shape[0]  # noqa: N806
    N_validate = int(N * 0.1)  # noqa: N806
    return data_train[0:-N_validate], data_train[-N_validate:], data_test


def maf_gas_reference(data: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``gas.py`` from the pickle on: ``data`` is what the pickle would hold (here: a seeded 25% sample)."""
    data = data.drop("Meth", axis=1)  # the original drops in place, which pandas 3 deprecates
    data = data.drop("Eth", axis=1)
    data = data.drop("Time", axis=1)

    def get_correlation_numbers(data: pd.DataFrame) -> np.ndarray:
        C = data.corr()  # noqa: N806
        A = C > 0.98  # noqa: N806
        return A.values.sum(axis=1)

    B = get_correlation_numbers(data)  # noqa: N806
    while np.any(B > 1):
        col_to_remove = np.where(B > 1)[0][0]
        col_name = data.columns[col_to_remove]
        data = data.drop(col_name, axis=1)
        B = get_correlation_numbers(data)  # noqa: N806
    data = ((data - data.mean()) / data.std()).values
    N_test = int(0.1 * data.shape[0])  # noqa: N806
    data_test = data[-N_test:]
    data_train = data[0:-N_test]
    N_validate = int(0.1 * data_train.shape[0])  # noqa: N806
    return data_train[0:-N_validate], data_train[-N_validate:], data_test


# ---------------------------------------------------------------------------------------------------------------
# MAF files in the archive's formats
# ---------------------------------------------------------------------------------------------------------------


def _write_power(root: Path, rows: int = 57) -> np.ndarray:
    rng = np.random.default_rng(0)
    # global active power, global reactive power, voltage, global intensity, 3 sub-meterings, minute of the day
    raw = np.column_stack([rng.gamma(2.0, 0.5, rows), rng.gamma(1.0, 0.1, rows), rng.normal(240, 3, rows),
                           rng.gamma(2.0, 2.0, rows), rng.integers(0, 40, (rows, 3)).astype(float),
                           rng.integers(0, 1440, rows).astype(float)]).round(3)
    (root / "power").mkdir()
    np.save(root / "power" / "data.npy", raw)
    return raw


def _write_miniboone(root: Path, rows: int = 63) -> np.ndarray:
    raw = np.random.default_rng(2).normal(size=(rows, 43)) * np.arange(1, 44)
    (root / "miniboone").mkdir()
    np.save(root / "miniboone" / "data.npy", raw)
    return raw


DISCRETE = (2, 5, 9, 13, 17, 21)
"""HEPMASS features made discrete in the test files (their smallest value repeats): MAF removes these six."""


def _write_hepmass(root: Path, signal_train: int = 64, signal_test: int = 23) -> None:
    rng = np.random.default_rng(3)

    def rows(count: int, label: float) -> np.ndarray:
        features = rng.normal(size=(count, 27)).round(6)
        for index in DISCRETE:
            features[:, index] = rng.choice([-1.5, 0.25, 1.75], count)
        features[:, 3] = np.where(np.arange(count) % 6 == 0, 2.5, features[:, 3])  # the most common value is not
        features[0, 3] = -9.0  # the smallest: MAF keeps this feature (it counts the smallest value's repeats)
        features[:, 4] = np.where(np.arange(count) < 5, -7.0, features[:, 4])  # smallest value 5 times: kept
        return np.column_stack([np.full(count, label), features])

    train = np.vstack([rows(signal_train, 1.0), rows(30, 0.0)])
    train = train[rng.permutation(len(train))]
    test = np.vstack([rows(signal_test, 1.0), rows(12, 0.0)])
    test = np.column_stack([test, np.full(len(test), 1000.0)])  # the test file's extra last column
    names = ["# label", *(f"f{i}" for i in range(27))]
    (root / "hepmass").mkdir()
    for path, values, header in ((root / "hepmass" / "1000_train.csv", train, names),
                                 (root / "hepmass" / "1000_test.csv", test, [*names, "mass"])):
        lines = [",".join(header)] + [",".join(f"{v:.6f}" for v in row) for row in values]
        path.write_text("\n".join(lines) + "\n")


UCI_GAS_HEADER = "Time (seconds), Methane conc (ppm), Ethylene conc (ppm), sensor readings (16 channels)"


def _gas_rows(rows: int = 403) -> np.ndarray:
    rng = np.random.default_rng(4)
    time_s = np.arange(rows) * 0.01
    setpoints = rng.choice([0.0, 25.0, 50.0], (rows, 2))
    base = rng.normal(size=(rows, 8)) * 100 + 1000
    sensors = np.empty((rows, 16))
    sensors[:, 0::2] = base + rng.normal(size=(rows, 8))
    sensors[:, 1::2] = 2.0 * base + rng.normal(size=(rows, 8))  # each pair correlates above 0.98
    return np.column_stack([time_s, setpoints, sensors]).round(2)


def _write_gas(root: Path, name: str = "ethylene_methane.txt") -> np.ndarray:
    values = _gas_rows()
    (root / "gas").mkdir(exist_ok=True)
    lines = [UCI_GAS_HEADER] + ["  ".join(f"{v:.2f}" for v in row) for row in values]
    (root / "gas" / name).write_text("\n".join(lines) + "\n")
    return values


def _write_bsds(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    arrays = {key: rng.normal(size=(count, 63)).astype(np.float32)
              for key, count in (("train", 50), ("validation", 7), ("test", 11))}
    (root / "BSDS300").mkdir()
    with h5py.File(root / "BSDS300" / "BSDS300.hdf5", "w") as handle:
        for key, array in arrays.items():
            handle.create_dataset(key, data=array)
    return arrays


# ---------------------------------------------------------------------------------------------------------------
# MAF datasets
# ---------------------------------------------------------------------------------------------------------------


def test_power_matches_maf_and_its_steps_by_hand(root: Path) -> None:
    raw = _write_power(root)
    dataset = tabular.Power(**tabular.Power.pin(tabular.Power().config))
    assert dataset.dim == 6
    got = _as_numpy(dataset.splits(0))
    _assert_close(got, maf_power_reference(root / "power" / "data.npy"))
    assert [len(part) for part in got] == [47, 5, 5]  # int(0.1 * 57) = 5 test, int(0.1 * 52) = 5 validation
    _assert_close(_as_numpy(dataset.splits(123)), got)  # the cell seed does not matter
    # by hand: the shuffled raw rows lose columns 1 and 3, and each kept column gets noise of its own size
    shuffled = raw.copy()
    np.random.RandomState(42).shuffle(shuffled)
    noise = power_rows_before_the_split(raw) - shuffled[:, [0, 2, 4, 5, 6, 7]]
    for column, high in enumerate((0.001, 0.01, 1.0, 1.0, 1.0, 0.0)):
        assert (noise[:, column] >= 0).all() and (noise[:, column] <= high).all()
        assert noise[:, column].max() >= high / 2
    train, val, _ = tabular.maf_power(raw)
    np.testing.assert_allclose(np.vstack([train, val]).mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.vstack([train, val]).std(axis=0), 1.0, atol=1e-9)


def power_rows_before_the_split(raw: np.ndarray) -> np.ndarray:
    """POWER's rows after the shuffle, the deletions and the noise, before the split and the scaling."""
    rng = np.random.RandomState(42)
    data = raw.copy()
    rng.shuffle(data)
    n = len(data)
    data = np.delete(np.delete(data, 3, axis=1), 1, axis=1)
    voltage, gap, sub = 0.01 * rng.rand(n, 1), 0.001 * rng.rand(n, 1), rng.rand(n, 3)
    return data + np.hstack([gap, voltage, sub, np.zeros((n, 1))])


def test_maf_datasets_pass_the_conformance_kit_but_for_their_seed_independent_splits(root: Path) -> None:
    _write_power(root)
    with pytest.raises(ConformanceError) as info:
        check_dataset(tabular.Power, {"n_train": 20})
    assert "are identical: the seed must change the draw" in str(info.value)  # deliberately: published splits
    assert "\n" not in str(info.value)


def test_power_n_train_keeps_the_first_rows_after_the_published_shuffle(root: Path) -> None:
    _write_power(root)
    full = _as_numpy(tabular.Power().splits(0))
    capped = _as_numpy(tabular.Power(n_train=7).splits(0))
    np.testing.assert_array_equal(capped[0], full[0][:7])
    np.testing.assert_array_equal(capped[2], full[2])
    for call in (tabular.Power(n_train=48).splits, lambda _: tabular.Power.pin(tabular.Power(n_train=48).config)):
        assert "n_train=48 but the training split of dataset 'power' has only 47 rows" in _error(call, 0)


def test_miniboone_matches_maf(root: Path) -> None:
    raw = _write_miniboone(root)
    dataset = tabular.Miniboone(**tabular.Miniboone.pin(tabular.Miniboone().config))
    got = _as_numpy(dataset.splits(0))
    _assert_close(got, maf_miniboone_reference(root / "miniboone" / "data.npy"))
    assert [len(part) for part in got] == [52, 5, 6]  # int(6.3) test, int(5.7) validation
    # by hand: no shuffle, the last 6 rows are the test rows
    both = raw[:57]
    np.testing.assert_allclose(got[2], (raw[-6:] - both.mean(axis=0)) / both.std(axis=0), rtol=1e-5, atol=1e-6)


def test_hepmass_matches_maf_and_drops_the_discrete_features(root: Path) -> None:
    _write_hepmass(root)
    dataset = tabular.Hepmass(**tabular.Hepmass.pin(tabular.Hepmass().config))
    assert dataset.dim == 21
    got = _as_numpy(dataset.splits(0))
    _assert_close(got, maf_hepmass_reference(root / "hepmass"))
    assert [len(part) for part in got] == [58, 6, 23]
    # by hand: the signal rows of the training file, in file order, scaled by their own mean and std (ddof=1)
    frame = pd.read_csv(root / "hepmass" / "1000_train.csv")
    signal = frame[frame["# label"] == 1].drop(columns="# label").to_numpy()
    kept = [i for i in range(27) if i not in DISCRETE]
    scaled = (signal - signal.mean(axis=0)) / signal.std(axis=0, ddof=1)
    np.testing.assert_allclose(got[1], scaled[-6:, kept], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[0], scaled[:58, kept], rtol=1e-5, atol=1e-6)
    assert tabular.min_value_repeats(np.array([3.0, 1.0, 1.0, 2.0, 2.0, 2.0])) == 2


def test_gas_follows_maf_steps_on_the_uci_text_file(root: Path) -> None:
    values = _write_gas(root)
    dataset = tabular.Gas(**tabular.Gas.pin(tabular.Gas().config))
    assert dataset.dim == 8
    got = _as_numpy(dataset.splits(0))
    frame = pd.DataFrame(values, columns=list(tabular.GAS_COLUMNS))
    sample = frame.sample(frac=0.25, random_state=42)  # what MAF's pickle is: a 25% sample (there unseeded)
    _assert_close(got, maf_gas_reference(sample))
    assert [len(part) for part in got] == [82, 9, 10]  # round(403 / 4) = 101 rows
    _assert_close(_as_numpy(dataset.splits(9)), got)
    # by hand: the first sensor of every correlated pair is dropped, every column scaled over all sampled rows
    kept = sample[[f"sensor{i}" for i in range(2, 17, 2)]].to_numpy()
    everything = np.vstack(got)
    np.testing.assert_allclose(everything, (kept - kept.mean(axis=0)) / kept.std(axis=0, ddof=1), rtol=1e-5,
                               atol=1e-5)


def test_gas_mixture_co_reads_the_co_file(root: Path) -> None:
    _write_gas(root, "ethylene_CO.txt")
    message = _error(tabular.Gas.pin, tabular.Gas().config)
    assert str(root / "gas" / "ethylene_methane.txt") in message and "cnfbench data download gas" in message
    assert tabular.Gas(mixture="CO").splits(0).train.shape[1] == 8


def test_bsds300_reads_the_three_arrays(root: Path) -> None:
    arrays = _write_bsds(root)
    dataset = tabular.Bsds300(**tabular.Bsds300.pin(tabular.Bsds300().config))
    assert dataset.dim == 63
    _assert_close(_as_numpy(dataset.splits(0)), (arrays["train"], arrays["validation"], arrays["test"]))
    assert len(tabular.Bsds300(n_train=20).splits(0).train) == 20


@pytest.mark.parametrize(("cls", "relative"), [
    (tabular.Power, "power/data.npy"), (tabular.Miniboone, "miniboone/data.npy"),
    (tabular.Hepmass, "hepmass/1000_train.csv"), (tabular.Bsds300, "BSDS300/BSDS300.hdf5"),
])
def test_a_missing_maf_file_names_its_path_and_the_download_command(root: Path, cls: type, relative: str) -> None:
    for call in (cls.pin, lambda config: cls(**config).splits(0)):
        message = _error(call, cls().config)
        assert f"{root / relative} is missing" in message
        assert "`cnfbench data download maf`" in message


def test_maf_files_of_the_wrong_shape_are_refused(root: Path) -> None:
    (root / "power").mkdir()
    np.save(root / "power" / "data.npy", np.zeros((50, 7)))
    assert "shape (50, 7), not MAF's (N, 8)" in _error(tabular.Power.pin, tabular.Power().config)
    np.save(root / "power" / "data.npy", np.zeros((9, 8)))
    assert "too few" in _error(tabular.Power.pin, tabular.Power().config)
    (root / "gas").mkdir()
    (root / "gas" / "ethylene_methane.txt").write_text(UCI_GAS_HEADER + "\n1 2 3\n")
    assert "3 fields" in _error(tabular.Gas.pin, tabular.Gas().config)


# ---------------------------------------------------------------------------------------------------------------
# cnfbench data download, offline
# ---------------------------------------------------------------------------------------------------------------


def _invoke(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


class _Server(http.server.ThreadingHTTPServer):
    payload = b""
    ranges: list[str | None]
    honour_range = True
    cut_after: int | None = None  # send only this many bytes of the body, then hang up


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        wanted = self.headers.get("Range")
        self.server.ranges.append(wanted)
        payload = self.server.payload
        if wanted and self.server.honour_range:
            start = int(wanted.split("=")[1].split("-")[0])
            body = payload[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            body = payload
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if self.server.cut_after is None else body[:self.server.cut_after])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    """An HTTP server on 127.0.0.1 that answers ``Range`` requests."""
    httpd = _Server(("127.0.0.1", 0), _RangeHandler)
    httpd.ranges = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


MEMBERS = {"data/power/data.npy": b"power bytes" * 100, "data/hepmass/1000_train.csv": b"# label,f0\n1,2\n",
           "data/mnist/mnist.pkl.gz": b"not unpacked"}


def test_download_maf_offline_fails_at_once_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_cli, "MAF_URL", "http://127.0.0.1:9/data.tar.gz")
    started = time.monotonic()
    result = _invoke("data", "download", "maf", "--data-dir", str(tmp_path / "d"))
    assert time.monotonic() - started < 8
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach http://127.0.0.1:9/data.tar.gz")
    assert "Traceback" not in result.output


def test_download_maf_unpacks_the_dataset_folders_and_resumes(tmp_path: Path, server: _Server,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    server.payload = _archive(MEMBERS)
    monkeypatch.setattr(data_cli, "MAF_URL", f"http://127.0.0.1:{server.server_port}/data.tar.gz")
    root = tmp_path / "d"
    root.mkdir()
    (root / "maf-data.tar.gz.part").write_bytes(server.payload[:100])  # an interrupted earlier download
    result = _invoke("data", "download", "maf", "--data-dir", str(root))
    assert result.exit_code == 0, result.output
    assert server.ranges == ["bytes=100-"]
    assert (root / "power" / "data.npy").read_bytes() == MEMBERS["data/power/data.npy"]
    assert (root / "hepmass" / "1000_train.csv").is_file()
    assert not (root / "mnist").exists() and not (root / "data").exists()
    assert not (root / "maf-data.tar.gz").exists() and not (root / "maf-data.tar.gz.part").exists()


def test_download_restarts_when_the_server_ignores_the_range_and_keeps_a_cut_transfer(
        tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    server.payload = _archive(MEMBERS)
    monkeypatch.setattr(data_cli, "MAF_URL", f"http://127.0.0.1:{server.server_port}/data.tar.gz")
    root = tmp_path / "d"
    root.mkdir()
    part = root / "maf-data.tar.gz.part"
    server.cut_after = 60
    result = _invoke("data", "download", "maf", "--data-dir", str(root))
    lines = result.stderr.strip().splitlines()  # the progress bar's label, then the error
    assert result.exit_code == 2 and lines[-1].startswith("Error: download of ") and "Traceback" not in result.output
    assert lines[-1].endswith("run the command again to resume)")
    assert part.read_bytes() == server.payload[:60]
    server.cut_after, server.honour_range = None, False
    part.write_bytes(b"garbage" * 20)
    result = _invoke("data", "download", "maf", "--data-dir", str(root), "--keep-archive")
    assert result.exit_code == 0, result.output
    assert server.ranges[-1] == "bytes=140-"
    assert (root / "maf-data.tar.gz").read_bytes() == server.payload
    assert (root / "power" / "data.npy").read_bytes() == MEMBERS["data/power/data.npy"]


def test_unpacking_refuses_unsafe_members(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "maf-data.tar.gz").write_bytes(_archive({"data/power/data.npy": b"x", "data/power/../../evil": b"x"}))
    result = _invoke("data", "download", "maf", "--data-dir", str(root))
    assert result.exit_code == 2 and "unsafe member 'data/power/../../evil'" in result.stderr
    assert not (tmp_path / "evil").exists() and not (root / "power").exists()
    absolute = tmp_path / "abs.tar.gz"
    absolute.write_bytes(_archive({"/etc/power/x": b"x"}))
    with pytest.raises(data_cli.DownloadError, match="unsafe member"):
        data_cli.unpack_tar(absolute, root, ("power",))


def test_download_gas_extracts_the_uci_text_files(tmp_path: Path, server: _Server,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data/ethylene_methane.txt", UCI_GAS_HEADER + "\n")
        archive.writestr("../ethylene_CO.txt", "co")
    server.payload = buffer.getvalue()
    monkeypatch.setattr(data_cli, "GAS_URL", f"http://127.0.0.1:{server.server_port}/gas.zip")
    result = _invoke("data", "download", "gas", "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "gas" / "ethylene_methane.txt").read_text().startswith("Time")
    assert (tmp_path / "d" / "gas" / "ethylene_CO.txt").read_text() == "co"
    assert not (tmp_path / "ethylene_CO.txt").exists()


def test_data_help_is_quick() -> None:
    result = _invoke("data", "download", "maf", "--help")
    assert result.exit_code == 0 and "--data-dir" in result.output


# ---------------------------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------------------------


def test_run_on_a_table_and_a_maf_dataset_finishes_done(cli, tmp_path: Path, root: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    pd.DataFrame({"x": rng.normal(size=160), "y": rng.normal(size=160) * 2 + 1}).to_csv(root / "xy.csv", index=False)
    _write_miniboone(root)
    monkeypatch.delenv(DATA_ROOT_VARIABLE)  # --data-dir sets it for the run and its workers
    result = cli("run", "--plugin", "cnfbench_plugins.tabular", "--data-dir", str(root), "--dataset",
                 "table[path=xy.csv],miniboone", "--name", "tab")
    assert result.exit_code == 0, result.output
    cells = read_cells(tmp_path, "tab").set_index("dataset")
    for name in ("table", "miniboone"):
        assert cells.loc[name, "status"] == "done", cells.loc[name, "reason"]
        assert math.isfinite(cells.loc[name, "nll"])
    assert f"sha256={hashlib.sha256((root / 'xy.csv').read_bytes()).hexdigest()}" in cells.loc["table", "dataset_spec"]
    assert cells.loc["miniboone", "dim"] == 43
