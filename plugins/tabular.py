"""Tabular datasets read from files: ``table`` (any CSV, TSV, parquet or ``.npy`` file) and the five density
estimation benchmarks of MAF (Papamakarios, Pavlakou and Murray, 2017) that FFJORD reports: ``power``, ``gas``,
``hepmass``, ``miniboone`` and ``bsds300``.

Files are found under the data folder (:func:`cnfbench.contracts.data_root`: ``$CNFBENCH_DATA``, which
``cnfbench run --data-dir`` sets, else ``~/.cache/cnfbench/data``); ``cnfbench data download maf`` puts the
MAF archive's files there. Every check that can run before training runs in :meth:`~Dataset.pin`, when a run
resolves its grid, and fails with one line naming the file (or the column) and what is wrong.

The MAF datasets reproduce ``datasets/{power,gas,hepmass,miniboone,bsds300}.py`` of github.com/gpapamak/maf
(copied unchanged into github.com/rtqichen/ffjord) step by step: their splits are the published ones, fixed by
the files and by the fixed seed ``numpy.random.RandomState(42)`` where the original shuffles, and never depend on
the cnfbench cell seed. ``gas`` is the exception: it reads the UCI text file (the archive holds only a pandas
pickle, which cnfbench does not unpickle) and so cannot have the published rows; see :class:`Gas`.
"""

from __future__ import annotations

import hashlib
import io
import re
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from cnfbench.contracts import DATA_ROOT_VARIABLE, Dataset, Splits, data_root, split_generator
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param, resolve_params

if TYPE_CHECKING:
    import pandas as pd

ALL_COLUMNS = "*"
"""``columns=*``: every numeric column of the file (the default)."""

COLUMN_SEPARATOR = "+"
"""Joins the names in ``columns`` (``a+b+c``): ``-`` would clash with names such as ``sensor-1``."""

MISSING_MARKERS = ("", "NA", "N/A", "n/a", "NULL", "null", "None", "#N/A", "<NA>")
"""CSV fields read as missing values (an empty field included); ``nan`` and ``inf`` are numbers, refused apart."""

_NAN_WORDS = frozenset({"nan", "+nan", "-nan"})
_HEX64 = re.compile(r"[0-9a-f]{64}")

MAF_DOWNLOAD = "cnfbench data download maf"
GAS_DOWNLOAD = "cnfbench data download gas"

N_TRAIN_CAP = Param("n_train", "int", 0, "train on the first n rows of the training split only (0 = all of it; more "
                    "than it has is an error); validation and test rows and the scaling stay those of the whole split",
                    minimum=0, maximum=10**9)


def cap_training_rows(train: np.ndarray, cap: int, what: str) -> np.ndarray:
    """The first ``cap`` rows of ``train`` (all for 0); asking for more rows than it has is a ``ValueError``."""
    if cap > train.shape[0]:
        raise ValueError(f"n_train={cap} but the training split of {what} has only {train.shape[0]} rows")
    return train[:cap] if cap else train


def resolve_data_path(text: str) -> Path:
    """``text`` as a path: ``~`` expanded, and relative to the data folder unless absolute."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else data_root() / path


def _reason(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def read_file_bytes(path: Path) -> bytes:
    """The bytes of ``path``; a missing, unreadable or non-regular file is a one-line ``ValueError``."""
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {_reason(exc)}") from None


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path`` in hex, read in chunks."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {_reason(exc)}") from None
    return digest.hexdigest()


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 tensor holding its own copy of ``array``."""
    return torch.from_numpy(np.array(array, dtype=np.float32, order="C", copy=True))


# ---------------------------------------------------------------------------------------------------------------
# table: any file of numbers
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Column:
    """One column of a file: its values as float64 (``None`` when not numeric, with ``why``) and missing mask."""

    name: str
    values: np.ndarray | None
    missing: np.ndarray
    why: str = ""


@dataclass(frozen=True)
class LoadedTable:
    """The selected columns of a file as a float64 array ``[rows, columns]``."""

    path: Path
    names: tuple[str, ...]
    values: np.ndarray


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _csv_columns(raw: bytes, path: Path, sep: str, compression: str | None) -> list[_Column]:
    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(raw), sep=sep, compression=compression, keep_default_na=False,
                            na_values=list(MISSING_MARKERS), low_memory=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} cannot be read as {'TSV' if sep == chr(9) else 'CSV'}: {_one_line(exc)}") from None
    columns = []
    for name in frame.columns:
        series = frame[name]
        missing = series.isna().to_numpy(dtype=bool)
        if pd.api.types.is_bool_dtype(series):
            columns.append(_Column(str(name), None, missing, "it holds true/false values"))
        elif pd.api.types.is_numeric_dtype(series):
            columns.append(_Column(str(name), series.to_numpy(dtype=np.float64, na_value=np.nan), missing))
        else:
            converted = pd.to_numeric(series, errors="coerce")
            words = series.astype(object).where(~series.isna(), "").map(lambda v: str(v).strip().lower())
            bad = (converted.isna() & ~series.isna() & ~words.isin(_NAN_WORDS)).to_numpy(dtype=bool)
            if bad.any():
                row = int(np.argmax(bad))
                why = f"line {row + 2} holds {str(series.iloc[row])[:40]!r}"
                columns.append(_Column(str(name), None, missing, why))
            else:
                columns.append(_Column(str(name), converted.to_numpy(dtype=np.float64, na_value=np.nan), missing))
    return columns


def _parquet_columns(raw: bytes, path: Path) -> list[_Column]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(raw))
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise ValueError(f"{path} cannot be read as parquet: {_one_line(exc)}") from None
    columns = []
    for name in table.column_names:
        column = table.column(name)
        kind = column.type
        missing = np.asarray(pc.is_null(column), dtype=bool)
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            values = pc.fill_null(pc.cast(column, pa.float64(), safe=False), 0.0).to_numpy()
            columns.append(_Column(str(name), np.asarray(values, dtype=np.float64), missing))
        else:
            columns.append(_Column(str(name), None, missing, f"its parquet type is {kind}"))
    return columns


def _npy_columns(raw: bytes, path: Path) -> list[_Column]:
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} cannot be read as .npy: {_one_line(exc)}") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype.kind not in "iuf":
        raise ValueError(f"{path} holds a {getattr(array, 'ndim', '?')}-D array of {getattr(array, 'dtype', '?')}; "
                         "table needs a 2-D array of numbers (rows x columns)")
    no_missing = np.zeros(array.shape[0], dtype=bool)
    return [_Column(str(index), array[:, index].astype(np.float64), no_missing) for index in range(array.shape[1])]


_READERS = (
    (".csv", lambda raw, path: _csv_columns(raw, path, ",", None)),
    (".csv.gz", lambda raw, path: _csv_columns(raw, path, ",", "gzip")),
    (".tsv", lambda raw, path: _csv_columns(raw, path, "\t", None)),
    (".tsv.gz", lambda raw, path: _csv_columns(raw, path, "\t", "gzip")),
    (".parquet", _parquet_columns),
    (".pq", _parquet_columns),
    (".npy", _npy_columns),
)


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_table(path: Path, columns: str = ALL_COLUMNS, raw: bytes | None = None) -> LoadedTable:
    """The ``columns`` of the file at ``path`` (``raw``: its bytes, when already read), checked.

    Raises a one-line ``ValueError`` for an unknown file type, an unknown or non-numeric selected column, rows
    with missing values (counted; never dropped) and rows holding NaN or infinite values (counted).
    """
    lowered = path.name.lower()
    reader = next((read for suffix, read in _READERS if lowered.endswith(suffix)), None)
    if reader is None:
        raise ValueError(f"{path}: unknown file type; table reads .csv, .tsv (either may be .gz), .parquet, .pq "
                         "and .npy files")
    found = reader(read_file_bytes(path) if raw is None else raw, path)
    if columns.strip() == ALL_COLUMNS:
        chosen = [column for column in found if column.values is not None]
        if not chosen:
            raise ValueError(f"{path} has no numeric column")
    else:
        wanted = [part.strip() for part in columns.split(COLUMN_SEPARATOR)]
        if any(not name for name in wanted):
            raise ValueError(f"columns={columns!r} names an empty column: join column names with "
                             f"'{COLUMN_SEPARATOR}', as in a{COLUMN_SEPARATOR}b")
        repeated = sorted({name for name in wanted if wanted.count(name) > 1})
        if repeated:
            raise ValueError(f"columns={columns!r} names column {repeated[0]!r} twice")
        by_name = {column.name: column for column in found}
        for name in wanted:
            if name not in by_name:
                if lowered.endswith(".npy"):
                    what = f"column indices 0 to {len(found) - 1}" if len(found) > 1 else "column index 0"
                else:
                    what = f"columns {_listing(list(by_name))}"
                raise ValueError(f"{path} has no column {name!r}; it has {what}")
        chosen = [by_name[name] for name in wanted]
        for column in chosen:
            if column.values is None:
                raise ValueError(f"column {column.name!r} of {path} is not numeric: {column.why}")
    rows = len(chosen[0].missing)
    missing = np.zeros(rows, dtype=bool)
    for column in chosen:
        missing |= column.missing
    if missing.any():
        where = [column.name for column in chosen if column.missing.any()]
        raise ValueError(f"{path}: {int(missing.sum())} of {rows} rows have missing values (empty or NA) in column"
                         f"{'s' if len(where) > 1 else ''} {_listing(where, 5)}; table refuses them rather than "
                         "dropping rows: fill them in or remove those rows")
    values = np.column_stack([column.values for column in chosen]) if rows else np.zeros((0, len(chosen)))
    finite = np.isfinite(values)
    if not finite.all():
        bad_rows = int((~finite.all(axis=1)).sum())
        where = [name.name for name, ok in zip(chosen, finite.all(axis=0), strict=True) if not ok]
        raise ValueError(f"{path}: {bad_rows} of {rows} rows hold NaN or infinite values in column"
                         f"{'s' if len(where) > 1 else ''} {_listing(where, 5)}")
    return LoadedTable(path, tuple(column.name for column in chosen), values)


def split_sizes(path: Path, rows: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """``(train, val, test)`` row counts: the validation and test fractions of ``rows``, rounded, the rest training."""
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be below 1, got {val_fraction:g} + {test_fraction:g}")
    n_val = int(rows * val_fraction + 0.5)
    n_test = int(rows * test_fraction + 0.5)
    n_train = rows - n_val - n_test
    if n_val < 1 or n_test < 1 or n_train < 2:
        raise ValueError(f"{path} has {rows} rows: too few for val_fraction={val_fraction:g} and test_fraction="
                         f"{test_fraction:g}, which need at least 1 validation row, 1 test row and 2 training rows")
    return n_train, n_val, n_test


class Table(Dataset):
    """The rows of a CSV, TSV, parquet or ``.npy`` file, split at random by the cell seed.

    ``path`` is absolute or relative to the data folder. ``columns`` picks columns by name (by 0-based index for a
    ``.npy`` file, whose array must be 2-D), joined by ``+``; ``*`` takes every numeric column and leaves the others
    out. A selected column that is not numeric, a row with a missing value (an empty field, ``NA``, a parquet null)
    and a row holding NaN or an infinity are refused with a count — rows are never dropped silently.

    The rows are shuffled by ``torch.randperm`` on ``split_generator(seed, "data/table")``; the first
    ``1 - val_fraction - test_fraction`` of the shuffled rows train, the next ``val_fraction`` validate and the last
    ``test_fraction`` test (each count rounded; at least 2 training rows and 1 of each other). With ``standardize``
    each column is shifted and scaled by the mean and standard deviation (``ddof=0``) of the training split only
    (the whole split, before an ``n_train`` cap, so capped and uncapped runs see the same validation and test
    values); a column that is constant there is refused by name, since it cannot be scaled and has no density.

    ``sha256`` is filled with the file's SHA-256 when the run is configured (two runs on different files never
    look alike), and a file whose contents changed since is refused before training.

    With ``standardize`` the NLLs are those of the standardized data, in nats; the NLL of the raw columns is
    ``nll + sum_d log std_d`` with the training split's standard deviations.
    """

    name = "table"
    description = "rows of a CSV/TSV, parquet or .npy file (path relative to the data folder), split by the seed"
    params = (
        Param("path", "str", "", "the file: absolute, or relative to the data folder ($CNFBENCH_DATA, --data-dir)"),
        Param("columns", "str", ALL_COLUMNS, "columns to use joined by '+' (names; 0-based indices for .npy); "
              "* = every numeric column"),
        Param("standardize", "bool", True, "scale each column by the training split's mean and std"),
        Param("val_fraction", "float", 0.1, "fraction of the rows held out for validation", minimum=0.0,
              maximum=0.9),
        Param("test_fraction", "float", 0.1, "fraction of the rows held out for the test NLL", minimum=0.0,
              maximum=0.9),
        N_TRAIN_CAP,
        Param("sha256", "str", "", "SHA-256 of the file, filled in when the run is configured and checked before "
              "training"),
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**resolve_params(f"dataset {self.name!r}", self.params, params))
        self._loaded: LoadedTable | None = None

    @staticmethod
    def _path(params: dict[str, Any]) -> Path:
        text = str(params.get("path", "")).strip()
        if not text:
            raise ValueError("table needs the file to read: table[path=FILE] (absolute, or relative to the data "
                             f"folder {data_root()})")
        return resolve_data_path(text)

    @staticmethod
    def _given_sha256(params: dict[str, Any]) -> str:
        given = str(params.get("sha256", "")).strip().lower()
        if given and not _HEX64.fullmatch(given):
            raise ValueError(f"sha256={given!r} is not a SHA-256 (64 hexadecimal digits)")
        return given

    @classmethod
    def pin(cls, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with ``sha256`` set to the file's; checks the file, its columns and its row count."""
        path = cls._path(params)
        given = cls._given_sha256(params)
        raw = read_file_bytes(path)
        digest = hashlib.sha256(raw).hexdigest()
        if given and given != digest:
            raise ValueError(f"{path} has SHA-256 {digest}, not the sha256={given} given")
        table = load_table(path, str(params["columns"]), raw)
        n_train, _, _ = split_sizes(path, table.values.shape[0], float(params["val_fraction"]),
                                    float(params["test_fraction"]))
        cap_training_rows(np.empty((n_train, 0)), int(params["n_train"]), str(path))
        if params["standardize"]:
            constant = [name for name, spread in zip(table.names, np.ptp(table.values, axis=0), strict=True)
                        if spread == 0]
            if constant:
                raise ValueError(f"column {constant[0]!r} of {path} is constant, so standardize cannot scale it "
                                 "(and it has no density): leave it out with columns=...")
        return {**params, "sha256": digest}

    def table(self) -> LoadedTable:
        """The selected columns, read once; a file that changed since ``sha256`` was pinned is refused."""
        if self._loaded is None:
            path = self._path(self.config)
            pinned = self._given_sha256(self.config)
            raw = read_file_bytes(path)
            if pinned:
                digest = hashlib.sha256(raw).hexdigest()
                if digest != pinned:
                    raise ValueError(f"{path} changed since the run was configured: its SHA-256 is {digest[:16]}..., "
                                     f"the run pinned {pinned[:16]}...; restore the file or start a new run")
            self._loaded = load_table(path, str(self.config["columns"]), raw)
        return self._loaded

    @property
    def dim(self) -> int:
        return len(self.table().names)

    def splits(self, seed: int) -> Splits:
        table = self.table()
        rows = table.values.shape[0]
        n_train, n_val, _ = split_sizes(table.path, rows, float(self.config["val_fraction"]),
                                        float(self.config["test_fraction"]))
        order = torch.randperm(rows, generator=split_generator(seed, "data/table")).numpy()
        shuffled = table.values[order]
        train, val, test = shuffled[:n_train], shuffled[n_train:n_train + n_val], shuffled[n_train + n_val:]
        if self.config["standardize"]:
            mean, std = train.mean(axis=0), train.std(axis=0)
            constant = [name for name, spread in zip(table.names, std, strict=True) if spread == 0]
            if constant:
                raise ValueError(f"column {constant[0]!r} of {table.path} is constant on the training split of seed "
                                 f"{seed}, so standardize cannot scale it: leave it out with columns=...")
            train, val, test = ((part - mean) / std for part in (train, val, test))
        train = cap_training_rows(train, int(self.config["n_train"]), str(table.path))
        return Splits(_tensor(train), _tensor(val), _tensor(test))


# ---------------------------------------------------------------------------------------------------------------
# The MAF benchmarks
# ---------------------------------------------------------------------------------------------------------------

MAF_SEED = 42
"""``numpy.random.RandomState(42)``: the fixed seed of MAF's POWER shuffle and noise."""

ArraySplits = tuple[np.ndarray, np.ndarray, np.ndarray]


def maf_tail_split(data: np.ndarray, what: str = "the data") -> ArraySplits:
    """MAF's split: the last ``int(0.1 * N)`` rows test, the last ``int(0.1 * rest)`` of the others validate."""
    n_test = int(0.1 * data.shape[0])
    rest = data[0:-n_test] if n_test else data
    n_val = int(0.1 * rest.shape[0])
    if n_test < 1 or n_val < 1 or rest.shape[0] - n_val < 1:
        raise ValueError(f"{what} has {data.shape[0]} rows: too few for MAF's 10% test and 10% validation splits")
    return rest[0:-n_val], rest[-n_val:], data[-n_test:]


def _normalise_by_train_and_val(train: np.ndarray, val: np.ndarray, test: np.ndarray) -> ArraySplits:
    """MAF's POWER and MINIBOONE scaling: mean and std (``ddof=0``) of the training and validation rows together."""
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return (train - mu) / s, (val - mu) / s, (test - mu) / s


def maf_power(data: np.ndarray) -> ArraySplits:
    """MAF's ``power.py`` on the archive's ``power/data.npy`` (``[N, 8]``), float64 ``[*, 6]`` splits.

    ``rng = RandomState(42)``; shuffle the rows with ``rng``; delete column 3 (global intensity), then column 1
    (global reactive power); add uniform noise drawn from ``rng`` in this order: voltage ``0.01 U[0,1)``, global
    active power ``0.001 U[0,1)``, the three sub-meterings ``U[0,1)``, none on the time column; split the last
    10% off as test and the last 10% of the rest as validation; normalise by the mean and std of train+val.
    """
    rng = np.random.RandomState(MAF_SEED)
    data = np.array(data, copy=True)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    return _normalise_by_train_and_val(*maf_tail_split(data, "power/data.npy"))


def maf_miniboone(data: np.ndarray) -> ArraySplits:
    """MAF's ``miniboone.py`` on the archive's ``miniboone/data.npy``: no shuffle (the file's order), the last 10%
    test, the last 10% of the rest validation, normalised by the mean and std of train+val. The archive's file is
    already cleaned (outliers with a first feature below -100 removed, and the features whose smallest value occurs
    more than 5 times removed, as the commented-out code in ``miniboone.py`` records), so nothing is removed here.
    """
    return _normalise_by_train_and_val(*maf_tail_split(np.asarray(data), "miniboone/data.npy"))


def min_value_repeats(column: np.ndarray) -> int:
    """How often a column's smallest value occurs: MAF's ``sorted(Counter(feature).items())[0]`` count."""
    return int(np.count_nonzero(column == column.min()))


def maf_hepmass(train_frame: pd.DataFrame, test_frame: pd.DataFrame) -> ArraySplits:
    """MAF's ``hepmass.py`` on the archive's ``1000_train.csv`` and ``1000_test.csv`` (as ``pd.read_csv(...,
    index_col=False)`` reads them), float64 splits.

    Keep the rows whose first column (the label) is 1 and drop that column; drop the test file's last column too
    (the test file has one more column than the training file); subtract the training rows' mean and divide by
    their std (pandas, ``ddof=1``), test rows included; remove every feature whose smallest value occurs more than
    5 times among the normalised training rows (the discrete features; MAF's ``Counter`` loop names it
    ``max_count`` but takes the count of the smallest key); the last ``int(0.1 * N)`` training rows validate.
    """
    train = train_frame[train_frame[train_frame.columns[0]] == 1]
    train = train.drop(train.columns[0], axis=1)
    test = test_frame[test_frame[test_frame.columns[0]] == 1]
    test = test.drop(test.columns[0], axis=1)
    test = test.drop(test.columns[-1], axis=1)
    if list(test.columns) != list(train.columns):
        raise ValueError(f"hepmass/1000_test.csv has columns {_listing([str(c) for c in test.columns], 4)} after "
                         "MAF's steps, not those of hepmass/1000_train.csv: are these the MAF archive's files?")
    mu = train.mean()
    s = train.std()
    train_values = ((train - mu) / s).to_numpy(dtype=np.float64)
    test_values = ((test - mu) / s).to_numpy(dtype=np.float64)
    if train_values.shape[0] < 2:
        raise ValueError(f"hepmass/1000_train.csv has {train_values.shape[0]} signal rows (label 1): too few")
    if not (np.isfinite(train_values).all() and np.isfinite(test_values).all()):
        raise ValueError("hepmass files give NaN or infinite values after MAF's normalisation (a constant feature?): "
                         "are these the MAF archive's files?")
    keep = [i for i in range(train_values.shape[1]) if min_value_repeats(train_values[:, i]) <= 5]
    train_values, test_values = train_values[:, keep], test_values[:, keep]
    n_val = int(train_values.shape[0] * 0.1)
    if n_val < 1 or test_values.shape[0] < 1:
        raise ValueError(f"hepmass: {train_values.shape[0]} training and {test_values.shape[0]} test signal rows are "
                         "too few for MAF's splits")
    return train_values[0:-n_val], train_values[-n_val:], test_values


GAS_COLUMNS = ("Time", "Meth", "Eth", *(f"sensor{i}" for i in range(1, 17)))
"""The 19 columns of a UCI gas text file: time, the two set-point concentrations and the 16 sensors."""

GAS_SAMPLE_FRACTION = 0.25
GAS_CORRELATION = 0.98


def correlation_numbers(data: pd.DataFrame) -> np.ndarray:
    """MAF's ``get_correlation_numbers``: per column, how many columns it correlates with above 0.98 (itself too)."""
    return (data.corr() > GAS_CORRELATION).to_numpy().sum(axis=1)


def maf_gas(frame: pd.DataFrame, seed: int = MAF_SEED) -> ArraySplits:
    """MAF's ``gas.py`` steps on the rows of a UCI gas text file (columns :data:`GAS_COLUMNS`).

    Take a random 25% of the rows in random order (``RandomState(seed).choice(N, round(N / 4), replace=False)``,
    what ``DataFrame.sample(frac=0.25, random_state=seed)`` draws: MAF's pickle is such a sample, drawn without a
    seed); drop ``Meth``, ``Eth`` and ``Time``; while some column correlates above 0.98 with another, drop the
    first such column and recompute; normalise every column by its mean and std over all rows (pandas,
    ``ddof=1``); the last ``int(0.1 * N)`` rows test and the last 10% of the rest validate.
    """
    count = len(frame)
    rows = np.random.RandomState(seed).choice(count, size=round(GAS_SAMPLE_FRACTION * count), replace=False)
    data = frame.iloc[rows].reset_index(drop=True)
    data = data.drop(columns=["Meth", "Eth", "Time"])
    numbers = correlation_numbers(data)
    while np.any(numbers > 1):
        data = data.drop(columns=data.columns[np.where(numbers > 1)[0][0]])
        numbers = correlation_numbers(data)
    data = (data - data.mean()) / data.std()
    return maf_tail_split(data.to_numpy(dtype=np.float64), "the gas sample")


def read_uci_gas(path: Path) -> pd.DataFrame:
    """A UCI 'Gas sensor array under dynamic gas mixtures' text file: one header line, then 19 numbers a row."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep=r"\s+", skiprows=1, header=None, names=list(GAS_COLUMNS), dtype=np.float64,
                            engine="c")
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a UCI gas text file (a header line, then 19 numbers a row): "
                         f"{_one_line(exc)}") from None
    if frame.isna().to_numpy().any():
        raise ValueError(f"{path} has rows with fewer than 19 numbers: not a UCI gas text file")
    return frame


_CACHE: dict[tuple[Any, ...], ArraySplits] = {}


class MafDataset(Dataset):
    """A MAF benchmark: fixed files under the data folder, fixed preprocessing, published splits (seed ignored)."""

    published_dim: ClassVar[int] = 0
    files: ClassVar[tuple[str, ...]] = ()
    download: ClassVar[str] = MAF_DOWNLOAD
    params = (N_TRAIN_CAP,)

    def __init__(self, **params: Any) -> None:
        super().__init__(**resolve_params(f"dataset {self.name!r}", self.params, params))

    @property
    def dim(self) -> int:
        return self.published_dim

    @classmethod
    def paths(cls, params: dict[str, Any]) -> list[Path]:
        """The files this dataset reads, under the data folder."""
        return [data_root() / name for name in cls.files]

    @classmethod
    def missing_message(cls, path: Path) -> str:
        return (f"{path} is missing: dataset {cls.name!r} reads it from the MAF archive; download it with "
                f"`{cls.download}` (into {data_root()}; --data-dir or ${DATA_ROOT_VARIABLE} choose another folder)")

    @classmethod
    def require_files(cls, params: dict[str, Any]) -> list[Path]:
        """The files, each checked to exist and be readable; a one-line ``ValueError`` otherwise."""
        paths = cls.paths(params)
        for path in paths:
            if not path.is_file():
                raise ValueError(cls.missing_message(path))
            try:
                with path.open("rb") as handle:
                    handle.read(1)
            except OSError as exc:
                raise ValueError(f"{path} cannot be read: {_reason(exc)}") from None
        return paths

    @classmethod
    def pin(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Checks that the files exist, can be read and look like the archive's (from their headers only)."""
        cls.check_format(cls.require_files(params), dict(params))
        return dict(params)

    @classmethod
    def check_format(cls, paths: list[Path], params: dict[str, Any]) -> None:
        """Cheap checks of the files' shapes (and of ``n_train`` where the shapes tell the training rows); a
        one-line ``ValueError``."""

    @abstractmethod
    def load(self, paths: list[Path]) -> ArraySplits:
        """The published float64 train, validation and test arrays."""

    def splits(self, seed: int) -> Splits:
        """The published splits (the same for every ``seed``); ``n_train`` keeps the first training rows."""
        paths = self.require_files(self.config)
        key = (self.name, tuple(sorted((k, v) for k, v in self.config.items() if k != "n_train")),
               tuple((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in paths))
        if key not in _CACHE:
            train, val, test = self.load(paths)
            for part in (train, val, test):
                if part.ndim != 2 or part.shape[1] != self.published_dim:
                    raise ValueError(f"{paths[0]} gives {part.shape[-1]} columns after MAF's preprocessing, not the "
                                     f"published {self.published_dim}: is it the MAF archive's file?")
                if not np.isfinite(part).all():
                    raise ValueError(f"{paths[0]} gives NaN or infinite values after MAF's preprocessing: is it the "
                                     "MAF archive's file?")
            _CACHE.clear()
            _CACHE[key] = tuple(np.ascontiguousarray(part, dtype=np.float32) for part in (train, val, test))
        train, val, test = _CACHE[key]
        train = cap_training_rows(train, int(self.config["n_train"]), f"dataset {self.name!r}")
        return Splits(_tensor(train), _tensor(val), _tensor(test))


def _npy_shape(path: Path) -> tuple[int, ...]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} cannot be read as .npy: {_one_line(exc)}") from None
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{path} holds {array.dtype} values, not numbers")
    return tuple(array.shape)


class Power(MafDataset):
    """UCI individual household electric power consumption, as MAF preprocesses it (``datasets/power.py``).

    Reads ``power/data.npy`` of the MAF archive (2,049,280 rows of 8 columns). Steps: :func:`maf_power` —
    shuffle with ``numpy.random.RandomState(42)``, delete columns 3 and 1, add that generator's uniform noise
    (0.001 to global active power, 0.01 to voltage, 1 to the three sub-meterings, none to time), 10% test and 10%
    of the rest validation from the end, normalise by train+val mean and std. The seed is fixed, so the splits
    are MAF's and FFJORD's (1,659,917 / 184,435 / 204,928 rows) whatever the cell seed.
    Source: github.com/gpapamak/maf ``datasets/power.py`` (= github.com/rtqichen/ffjord ``datasets/power.py``).
    """

    name = "power"
    description = "UCI household power, 6D, MAF/FFJORD preprocessing and published splits (seed-independent)"
    published_dim = 6
    files = ("power/data.npy",)

    @classmethod
    def check_format(cls, paths: list[Path], params: dict[str, Any]) -> None:
        shape = _npy_shape(paths[0])
        if len(shape) != 2 or shape[1] != 8:
            raise ValueError(f"{paths[0]} holds an array of shape {shape}, not MAF's (N, 8)")
        train, _, _ = maf_tail_split(np.empty((shape[0], 0)), str(paths[0]))
        cap_training_rows(train, int(params["n_train"]), f"dataset {cls.name!r}")

    def load(self, paths: list[Path]) -> ArraySplits:
        return maf_power(np.load(paths[0], allow_pickle=False))


class Miniboone(MafDataset):
    """UCI MiniBooNE particle identification, as MAF preprocesses it (``datasets/miniboone.py``).

    Reads ``miniboone/data.npy`` of the MAF archive (36,488 rows of 43 columns, already cleaned by MAF). Steps:
    :func:`maf_miniboone` — no shuffle: the last 10% of the file test, the last 10% of the rest validate
    (29,556 / 3,284 / 3,648 rows), normalised by train+val mean and std. No randomness: the splits are the
    published ones whatever the cell seed.
    Source: github.com/gpapamak/maf ``datasets/miniboone.py`` (= github.com/rtqichen/ffjord).
    """

    name = "miniboone"
    description = "UCI MiniBooNE, 43D, MAF/FFJORD preprocessing and published splits (seed-independent)"
    published_dim = 43
    files = ("miniboone/data.npy",)

    @classmethod
    def check_format(cls, paths: list[Path], params: dict[str, Any]) -> None:
        shape = _npy_shape(paths[0])
        if len(shape) != 2 or shape[1] != 43:
            raise ValueError(f"{paths[0]} holds an array of shape {shape}, not MAF's (N, 43)")
        train, _, _ = maf_tail_split(np.empty((shape[0], 0)), str(paths[0]))
        cap_training_rows(train, int(params["n_train"]), f"dataset {cls.name!r}")

    def load(self, paths: list[Path]) -> ArraySplits:
        return maf_miniboone(np.load(paths[0], allow_pickle=False))


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            return handle.readline().strip().split(",")
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {_reason(exc)}") from None


class Hepmass(MafDataset):
    """UCI HEPMASS (the '1000' files), as MAF preprocesses it (``datasets/hepmass.py``).

    Reads ``hepmass/1000_train.csv`` and ``hepmass/1000_test.csv`` of the MAF archive with
    ``pandas.read_csv(..., index_col=False)``. Steps: :func:`maf_hepmass` — keep the signal rows (label 1), drop
    the label and the test file's extra last column, normalise both by the training rows' mean and std (``ddof=1``),
    remove the features whose smallest value occurs more than 5 times in the training rows (27 - 6 = 21 remain),
    the last 10% of the training rows validate (315,123 / 35,013 / 174,987 rows). No randomness: the splits are the
    published ones whatever the cell seed.
    Source: github.com/gpapamak/maf ``datasets/hepmass.py`` (= github.com/rtqichen/ffjord).
    """

    name = "hepmass"
    description = "UCI HEPMASS signal events, 21D, MAF/FFJORD preprocessing and published splits (seed-independent)"
    published_dim = 21
    files = ("hepmass/1000_train.csv", "hepmass/1000_test.csv")

    @classmethod
    def check_format(cls, paths: list[Path], params: dict[str, Any]) -> None:
        for path in paths:
            if len(_csv_header(path)) < 2:
                raise ValueError(f"{path} does not start with a comma-separated header line: not MAF's HEPMASS file")

    def load(self, paths: list[Path]) -> ArraySplits:
        import pandas as pd

        frames = []
        for path in paths:
            try:
                frames.append(pd.read_csv(filepath_or_buffer=path, index_col=False))
            except (ValueError, OSError) as exc:
                raise ValueError(f"{path} cannot be read as CSV: {_one_line(exc)}") from None
        return maf_hepmass(*frames)


class Gas(MafDataset):
    """UCI 'Gas sensor array under dynamic gas mixtures', with MAF's GAS preprocessing (``datasets/gas.py``).

    MAF reads ``gas/ethylene_CO.pickle``, a pandas pickle; cnfbench never unpickles (a pickle can run any code), so
    this dataset reads the UCI text file instead — ``gas/ethylene_methane.txt`` (``mixture=methane``, the default)
    or ``gas/ethylene_CO.txt`` (``mixture=CO``), which ``cnfbench data download gas`` fetches from UCI. MAF's
    pickle holds the methane recordings despite its name (its columns are ``Time, Meth, Eth``, and ``gas.py``
    drops ``Meth``), and is a random 25% of the file's rows (``gas.py`` keeps the line
    ``pd.read_pickle(file).sample(frac=0.25)`` that made it, and its 1,052,065 rows are a quarter of the
    UCI file's roughly 4.2 million), drawn without a seed.

    Steps: :func:`maf_gas` — a 25% sample of the rows in random order by ``RandomState(42)``, drop ``Meth``,
    ``Eth`` and ``Time``, drop the first column correlated above 0.98 with another until none is, normalise by
    the mean and std of all rows (``ddof=1``), the last 10% test and the last 10% of the rest validate (MAF's
    sample: 852,174 / 94,685 / 105,206 rows). The preprocessing and the split sizes are MAF's, and the seed is
    fixed (the splits do not depend on the cell seed), but the rows are not those of MAF's unseeded sample: compare
    GAS numbers with the published ones as estimates on another draw of the same distribution, not on the same test
    rows.
    """

    name = "gas"
    description = ("UCI gas sensors, 8D, MAF/FFJORD preprocessing from the UCI text file "
                   "(seed-independent; a fixed 25% sample, not MAF's rows)")
    published_dim = 8
    download = GAS_DOWNLOAD
    params = (
        Param("mixture", "str", "methane", "which UCI recording: methane (ethylene_methane.txt, what MAF's pickle "
              "holds) or CO (ethylene_CO.txt)", choices=("methane", "CO")),
        N_TRAIN_CAP,
    )

    @classmethod
    def paths(cls, params: dict[str, Any]) -> list[Path]:
        mixture = params.get("mixture", "methane")
        return [data_root() / "gas" / f"ethylene_{mixture}.txt"]

    @classmethod
    def missing_message(cls, path: Path) -> str:
        return (f"{path} is missing: dataset 'gas' reads the UCI text file {path.name}, which the MAF archive does "
                f"not hold; download it with `{GAS_DOWNLOAD}` (into {data_root()}; --data-dir or "
                f"${DATA_ROOT_VARIABLE} choose another folder)")

    @classmethod
    def check_format(cls, paths: list[Path], params: dict[str, Any]) -> None:
        path = paths[0]
        try:
            with path.open("r", encoding="utf-8", errors="replace") as handle:
                handle.readline()
                first = handle.readline().split()
        except OSError as exc:
            raise ValueError(f"{path} cannot be read: {_reason(exc)}") from None
        if len(first) != len(GAS_COLUMNS):
            raise ValueError(f"{path} has {len(first)} fields on its first data line, not the {len(GAS_COLUMNS)} of a "
                             "UCI gas text file")

    def load(self, paths: list[Path]) -> ArraySplits:
        return maf_gas(read_uci_gas(paths[0]))


class Bsds300(MafDataset):
    """8x8 patches of BSDS300 images, as MAF prepared them (``datasets/bsds300.py``).

    Reads ``BSDS300/BSDS300.hdf5`` of the MAF archive: its ``train``, ``validation`` and ``test`` arrays
    (1,000,000 / 50,000 / 250,000 patches of 63 values, prepared by MAF: monochrome 8x8 patches dequantized and
    scaled to [0, 1], each patch's mean subtracted, the bottom-right pixel dropped), used as they are. No
    randomness: the splits are the published ones whatever the cell seed.
    Source: github.com/gpapamak/maf ``datasets/bsds300.py`` (= github.com/rtqichen/ffjord).
    """

    name = "bsds300"
    description = "BSDS300 8x8 image patches, 63D, MAF/FFJORD data and published splits (seed-independent)"
    published_dim = 63
    files = ("BSDS300/BSDS300.hdf5",)
    keys: ClassVar[tuple[str, ...]] = ("train", "validation", "test")

    @classmethod
    def check_format(cls, paths: list[Path], params: dict[str, Any]) -> None:
        import h5py

        try:
            with h5py.File(paths[0], "r") as handle:
                for key in cls.keys:
                    if key not in handle:
                        raise ValueError(f"{paths[0]} has no {key!r} array: not MAF's BSDS300 file")
                    shape = handle[key].shape
                    if len(shape) != 2 or shape[1] != cls.published_dim or shape[0] < 1:
                        raise ValueError(f"{paths[0]}: its {key!r} array has shape {shape}, not MAF's (N, 63)")
                cap_training_rows(np.empty((handle["train"].shape[0], 0)), int(params["n_train"]),
                                  f"dataset {cls.name!r}")
        except OSError as exc:
            raise ValueError(f"{paths[0]} cannot be read as HDF5: {_one_line(exc)}") from None

    def load(self, paths: list[Path]) -> ArraySplits:
        import h5py

        try:
            with h5py.File(paths[0], "r") as handle:
                train, val, test = (np.asarray(handle[key][:], dtype=np.float64) for key in self.keys)
        except (OSError, KeyError) as exc:
            raise ValueError(f"{paths[0]} cannot be read as MAF's BSDS300 file: {_one_line(exc)}") from None
        return train, val, test


@hookimpl
def cnfbench_datasets() -> list[type[Dataset]]:
    """The file-based datasets."""
    return [Table, Power, Gas, Hepmass, Miniboone, Bsds300]
