"""Real datasets bundled with scikit-learn (read from its package files, never from the network).

* ``digits`` — the 1,797 8x8 handwritten digits (64-D), grey levels ``0..16``, uniformly dequantized and
  affinely rescaled; it declares :attr:`~cnfbench.contracts.Dataset.discrete_nll_offset`, so the harness
  reports bits per dimension of the discrete images.
* ``iris`` (4-D), ``wine`` (13-D) and ``breast_cancer`` (30-D) — continuous features standardized with the
  training split's mean and standard deviation only.

Every dataset splits its rows by a seeded shuffle (``split_generator(seed, "data/split")``): the cell seed
picks which rows are train, validation and test, and every row is in exactly one split. Exactly repeated rows
are dropped first (keeping the first), so that no row can be in two splits: iris has one (sklearn rows 101
and 142), the others none. :meth:`BundledDataset.split_indices` gives the sklearn row numbers of each split.
"""

from __future__ import annotations

import functools
import math
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cnfbench.contracts import Dataset, Splits, split_generator
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param, resolve_params

SPLITS = ("train", "val", "test")


@functools.cache
def _load(loader: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(data [N, D] float64, sklearn row number of each row, feature names)`` of ``sklearn.datasets.<loader>``,
    exact duplicate rows dropped (the first kept), arrays read-only."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:  # importing scikit-learn (and its loaders) may draw from the global RNGs; a dataset must leave them alone
        import sklearn.datasets  # imported here: listing the plugins need not pay for scikit-learn

        bunch = getattr(sklearn.datasets, loader)()
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    data = np.asarray(bunch.data, dtype=np.float64)
    _, first = np.unique(data, axis=0, return_index=True)
    rows = np.sort(first)
    data = np.ascontiguousarray(data[rows])
    names = tuple(str(name) for name in getattr(bunch, "feature_names", ())) or tuple(
        f"feature {d}" for d in range(data.shape[1]))
    data.flags.writeable = False
    rows.flags.writeable = False
    return data, rows, names


class BundledDataset(Dataset):
    """A fixed table from ``sklearn.datasets``, split by a seeded shuffle of its (de-duplicated) rows."""

    libraries = ("scikit-learn",)
    loader = ""

    def __init__(self, **params: Any) -> None:
        super().__init__(**resolve_params(f"dataset {self.name!r}", self.params, params))
        self.sizes = self.split_sizes(self.config)

    @classmethod
    def table(cls) -> np.ndarray:
        """The de-duplicated rows ``[N, D]`` float64 (read-only), in sklearn's order."""
        return _load(cls.loader)[0]

    @classmethod
    def sklearn_rows(cls) -> np.ndarray:
        """The sklearn row number of each row of :meth:`table`."""
        return _load(cls.loader)[1]

    @classmethod
    def split_sizes(cls, config: dict[str, Any]) -> dict[str, int]:
        """Rows per split for the resolved ``config``; a one-line ``ValueError`` when they do not fit."""
        raise NotImplementedError

    @classmethod
    def pin(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Checks that the split sizes fit the table (the data themselves ship with scikit-learn)."""
        cls.split_sizes(resolve_params(f"dataset {cls.name!r}", cls.params, params))
        return params

    @property
    def dim(self) -> int:
        return int(self.table().shape[1])

    def split_indices(self, seed: int) -> dict[str, Tensor]:
        """The sklearn row numbers (``int64``) of each split for ``seed``, in the order the split returns them.

        A seeded permutation ``torch.randperm(N, generator=split_generator(seed, "data/split"))`` of the
        de-duplicated rows gives the test rows first, then the validation rows, then the training rows.
        """
        n = self.table().shape[0]
        order = torch.randperm(n, generator=split_generator(seed, "data/split"))
        positions, start = {}, 0
        for split in ("test", "val", "train"):
            positions[split] = order[start:start + self.sizes[split]]
            start += self.sizes[split]
        rows = torch.from_numpy(self.sklearn_rows().copy())
        return {split: rows[positions[split]] for split in SPLITS}

    def _raw_splits(self, seed: int) -> dict[str, np.ndarray]:
        """The raw rows ``[n, D]`` float64 of each split for ``seed``."""
        lookup = np.full(int(self.sklearn_rows().max()) + 1, -1)
        lookup[self.sklearn_rows()] = np.arange(self.table().shape[0])
        return {split: self.table()[lookup[rows.numpy()]] for split, rows in self.split_indices(seed).items()}


def _rounded(fraction: float, n: int) -> int:
    return int(math.floor(fraction * n + 0.5))


class StandardizedTable(BundledDataset):
    """A continuous table standardized per feature with the training split's statistics only.

    For seed ``s``, with ``mu`` and ``sigma`` the mean and the population standard deviation (``ddof=0``) of
    each feature over the training rows of that seed, every split is ``z = (x - mu) / sigma``: the training
    split has mean 0 and standard deviation 1 per feature (validation and test only roughly). The NLLs the
    benchmark reports are those of ``z``, in nats; the map's log-determinant is ``-sum_d log sigma_d``, so the
    NLL of the raw features is ``nll_raw = nll_std + sum_d log sigma_d`` (:meth:`standardization` gives
    ``mu`` and ``sigma``; :meth:`raw_nll_shift` the sum).

    The split sizes come from fractions of the ``N`` de-duplicated rows: ``n_test = floor(test_fraction N +
    1/2)``, ``n_val = floor(val_fraction N + 1/2)``, the rest train.
    """

    params = (
        Param("val_fraction", "float", 0.1, "fraction of the rows in the validation split", minimum=0.0,
              maximum=1.0),
        Param("test_fraction", "float", 0.2, "fraction of the rows in the test split (the NLL is averaged over "
              "these)", minimum=0.0, maximum=1.0),
    )

    @classmethod
    def split_sizes(cls, config: dict[str, Any]) -> dict[str, int]:
        n = cls.table().shape[0]
        n_val, n_test = _rounded(float(config["val_fraction"]), n), _rounded(float(config["test_fraction"]), n)
        sizes = {"train": n - n_val - n_test, "val": n_val, "test": n_test}
        if n_val < 1 or n_test < 1 or sizes["train"] < 2:
            raise ValueError(f"val_fraction={config['val_fraction']:g} and test_fraction={config['test_fraction']:g}"
                             f" split the {n} rows of {cls.name} into {sizes['train']} train, {n_val} val and "
                             f"{n_test} test; each split needs a row and train needs 2")
        return sizes

    def standardization(self, seed: int) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)``, each ``[D]`` float64: the training split's per-feature mean and population std."""
        train = self._raw_splits(seed)["train"]
        mean, std = train.mean(axis=0), train.std(axis=0)
        if not (std > 0).all():
            feature = _load(self.loader)[2][int(np.argmin(std))]
            raise ValueError(f"{self.name}: feature {feature!r} is constant over the {train.shape[0]} training rows "
                             f"of seed {seed}; use a larger training split")
        return torch.from_numpy(mean), torch.from_numpy(std)

    def raw_nll_shift(self, seed: int) -> float:
        """``sum_d log sigma_d`` in nats: add it to a standardized-space NLL to get the raw features' NLL."""
        return float(self.standardization(seed)[1].log().sum())

    def splits(self, seed: int) -> Splits:
        raw = self._raw_splits(seed)
        mean, std = (t.numpy() for t in self.standardization(seed))
        return Splits(**{split: torch.from_numpy((x - mean) / std).to(torch.float32).contiguous()
                         for split, x in raw.items()})


class Iris(StandardizedTable):
    """Fisher's iris (``sklearn.datasets.load_iris``): 150 flowers, 4 measurements in cm (149 distinct rows)."""

    name = "iris"
    description = ("4D iris flower measurements (149 distinct rows), standardized by the training split; "
                   "NLL in standardized units")
    loader = "load_iris"


class Wine(StandardizedTable):
    """UCI wine recognition (``sklearn.datasets.load_wine``): 178 wines, 13 chemical measurements."""

    name = "wine"
    description = "13D wine chemical analyses (178 rows), standardized by the training split; NLL in standardized units"
    loader = "load_wine"


class BreastCancer(StandardizedTable):
    """Wisconsin diagnostic breast cancer (``sklearn.datasets.load_breast_cancer``): 569 tumours, 30 features."""

    name = "breast_cancer"
    description = ("30D breast cancer cell-nucleus features (569 rows), standardized by the training split; "
                   "NLL in standardized units")
    loader = "load_breast_cancer"


class Digits(BundledDataset):
    """sklearn's handwritten digits (``load_digits``): 1,797 images of 8x8 pixels with ``K = 17`` grey levels.

    Each image ``x in {0..16}^64`` is dequantized with fresh uniform noise and rescaled:

    * ``y = (x + u) / 17`` with ``u`` uniform in the unit cube, so ``y in [0, 1)^64`` and
      ``floor(17 y) = x``; ``u`` is drawn from ``split_generator(seed, "data/dequantize/<split>")``, one
      stream per split, as ``u = (j + 1/2) / 2^18`` with ``j`` uniform in ``{0 .. 2^18 - 1}``: the uniform
      distribution at a resolution of 2^-18 of a grey level (a few float32 ulps of ``z``), whose points keep a
      margin of 2^-19 of a level from the cell's edges, so that every value stays strictly inside its cell
      after rounding to float32 (continuous noise would cross an edge for about one pixel in a million);
    * ``z = (y - 1/2) / s`` with ``s`` the ``scale`` parameter (default 0.4, the root-mean-square of
      ``y - 1/2`` over all pixels, so ``z`` is of unit scale), returned as float32.

    The dequantization bound: ``p_y(y) = s^-D p_z(z)`` and ``P(x) = int_{[0,1)^D} 17^-D p_y((x + u) / 17) du``
    (the density of ``x + u`` is ``17^-D p_y``), so by Jensen

    ``-log P(x) <= E_u[-log p_z(z)] + D ln 17 + D ln s``,

    and :attr:`discrete_nll_offset` is ``D ln(17 s)`` with ``D = 64``: bits per dimension are
    ``(nll_z + D ln(17 s)) / (D ln 2)``. A model uniform on the cube of ``y`` (NLL ``-D ln s`` in ``z``)
    scores exactly ``log2 17`` bits per dimension.

    Split sizes: ``n_val`` and ``n_test`` rows, and ``n_train`` rows (0: all the others) of a seeded shuffle.
    """

    name = "digits"
    description = ("64D 8x8 handwritten digits (1,797, 17 grey levels), uniformly dequantized to [0,1) then "
                   "(y - 0.5)/scale; bits/dim via the dequantization bound")
    loader = "load_digits"
    params = (
        Param("n_train", "int", 0, "training images (0: every image not in the validation or test split)",
              minimum=0, maximum=10**8),
        Param("n_val", "int", 200, "validation images", minimum=1, maximum=10**8),
        Param("n_test", "int", 300, "test images (the NLL is averaged over these)", minimum=1, maximum=10**8),
        Param("scale", "float", 0.4, "s in z = (y - 0.5) / s, for the dequantized pixels y in [0, 1)",
              minimum=1e-3, maximum=1e3),
    )

    LEVELS = 17
    NOISE_BITS = 18

    @classmethod
    def split_sizes(cls, config: dict[str, Any]) -> dict[str, int]:
        n = cls.table().shape[0]
        n_val, n_test, n_train = int(config["n_val"]), int(config["n_test"]), int(config["n_train"])
        rest = n - n_val - n_test
        if rest < 1 or n_train > rest:
            wanted = f"n_train={n_train}, " if n_train else ""
            raise ValueError(f"{wanted}n_val={n_val} and n_test={n_test} do not fit the {n} images of digits "
                             f"(with at least 1 training image)")
        return {"train": n_train or rest, "val": n_val, "test": n_test}

    @property
    def scale(self) -> float:
        return float(self.config["scale"])

    @property
    def discrete_nll_offset(self) -> float:
        """``D ln(17 s)``: ``D ln 17`` for 17 levels scaled to ``[0, 1)`` plus ``D ln s`` for the scaling by ``1/s``."""
        return self.dim * (math.log(self.LEVELS) + math.log(self.scale))

    def pixels(self, seed: int) -> dict[str, Tensor]:
        """The images ``[n, 64]`` (float64, values ``0..16``) of each split, before dequantization."""
        return {split: torch.from_numpy(x.copy()) for split, x in self._raw_splits(seed).items()}

    def dequantize(self, pixels: Tensor, generator: torch.Generator) -> Tensor:
        """``z = ((pixels + u) / 17 - 1/2) / s`` float32, ``u`` drawn from ``generator`` (see the class)."""
        cells = torch.randint(0, 1 << self.NOISE_BITS, pixels.shape, generator=generator, dtype=torch.int64)
        return self.dequantize_at(pixels, cells)

    def dequantize_at(self, pixels: Tensor, cells: Tensor) -> Tensor:
        """``z`` float32 for the noise ``u = (cells + 1/2) / 2^18`` given by integer ``cells`` in ``[0, 2^18)``."""
        u = (cells.to(torch.float64) + 0.5) / (1 << self.NOISE_BITS)
        y = (pixels.to(torch.float64) + u) / self.LEVELS
        return ((y - 0.5) / self.scale).to(torch.float32).contiguous()

    def splits(self, seed: int) -> Splits:
        return Splits(**{split: self.dequantize(x, split_generator(seed, f"data/dequantize/{split}"))
                         for split, x in self.pixels(seed).items()})


@hookimpl
def cnfbench_datasets() -> list[type[Dataset]]:
    """The datasets bundled with scikit-learn."""
    return [Digits, Iris, Wine, BreastCancer]
