"""The conformance check of a dataset (:func:`check_dataset`): seeded, disjoint, float32 splits and a finite density."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cnfbench.testing._checker import (
    Checker,
    changed_rngs,
    component_label,
    declared_params,
    describe,
    global_rng_states,
    resolve_component,
    single_threaded,
    torch_module,
)

if TYPE_CHECKING:
    from torch import Tensor

DATASET_CHECK_SIZES = {"n_train": 256, "n_val": 64, "n_test": 128}
"""Split sizes used by :func:`check_dataset` when the dataset declares them and ``params`` does not set them."""


@single_threaded
def check_dataset(cls: type, params: Mapping[str, Any] | None = None, *, seeds: tuple[int, int] = (0, 1)) -> None:
    """Check a :class:`~cnfbench.contracts.Dataset` class built as ``cls(**params)``.

    Split sizes the dataset declares (``n_train``, ``n_val``, ``n_test``) and
    ``params`` does not set default to :data:`DATASET_CHECK_SIZES`.
    """
    torch = torch_module()
    from cnfbench.contracts import Dataset

    check = Checker(component_label("dataset", cls))
    declared = declared_params(cls)
    given = {**{k: v for k, v in DATASET_CHECK_SIZES.items() if k in declared}, **dict(params or {})}
    kwargs = resolve_component("dataset", cls, given, check)

    def build() -> Any:
        with check.calling(f"building it with {kwargs}"):
            dataset = cls(**kwargs)
        check.require(isinstance(dataset, Dataset), "cls(**params) did not return a Dataset")
        return dataset

    def splits(dataset: Any, seed: int) -> dict[str, Tensor]:
        with check.calling(f"splits({seed})"):
            result = dataset.splits(seed)
        parts = {}
        for split in ("train", "val", "test"):
            x = getattr(result, split, None)
            check.require(torch.is_tensor(x) and x.dim() == 2 and x.shape[0] >= 1 and x.shape[1] == dim
                          and x.dtype == torch.float32,
                          lambda x=x, split=split: f"splits({seed}).{split} is {describe(x)}; expected "
                                                   f"[N, {dim}] float32 with N >= 1")
            check.require(torch.isfinite(x).all(), f"splits({seed}).{split} has non-finite values")
            if f"n_{split}" in kwargs:
                check.require(x.shape[0] == kwargs[f"n_{split}"],
                              f"splits({seed}).{split} has {x.shape[0]} rows but n_{split}={kwargs[f'n_{split}']}")
            parts[split] = x
        return parts

    before = global_rng_states()
    dataset = build()
    with check.calling("dim"):
        dim = dataset.dim
    check.require(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1,
                  f"dim must be a positive int (got {dim!r})")
    with check.calling("has_density"):
        has_density = dataset.has_density
    check.require(isinstance(has_density, bool), f"has_density must be a bool (got {has_density!r})")

    first = splits(dataset, seeds[0])
    log_probs = {}
    if has_density:
        for split, x in first.items():
            with check.calling(f"log_prob(splits({seeds[0]}).{split})"):
                log_probs[split] = dataset.log_prob(x)
    changed = changed_rngs(before)
    check.require(not changed, f"used the global RNG ({', '.join(changed)}) in its constructor, splits() or "
                               f"log_prob(): draw only from a generator derived from the seed "
                               f"(SampledDataset.sample gets one)")

    same = splits(build(), seeds[0])
    repeat = splits(dataset, seeds[0])
    for split in first:
        check.require(torch.equal(first[split], same[split]) and torch.equal(first[split], repeat[split]),
                      f"splits({seeds[0]}).{split} differs between two calls with the same seed")
    other = splits(dataset, seeds[1])
    check.require(any(first[split].shape != other[split].shape or not torch.equal(first[split], other[split])
                      for split in first),
                  f"splits({seeds[0]}) and splits({seeds[1]}) are identical: the seed must change the draw")

    arrays = {split: x.detach().cpu().numpy() for split, x in first.items()}
    rows = {split: {row.tobytes() for row in array} for split, array in arrays.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = rows[a] & rows[b]
        if shared:
            example = next(row for row in arrays[a] if row.tobytes() in shared)
            raise check.fail(f"splits({seeds[0]}): {a} and {b} share {len(shared)} row(s), e.g. "
                             f"{example.tolist()}; the splits must be disjoint")

    for split, log_prob in log_probs.items():
        n = first[split].shape[0]
        check.require(torch.is_tensor(log_prob) and log_prob.shape == (n,) and log_prob.is_floating_point(),
                      lambda log_prob=log_prob, split=split, n=n: f"log_prob(splits({seeds[0]}).{split}) returned "
                                                                  f"{describe(log_prob)}; expected ({n},) floats")
        bad = (~torch.isfinite(log_prob)).sum().item()
        check.require(bad == 0, f"log_prob is not finite on {bad} of the {n} {split} samples (has_density is True, "
                                f"so samples must have a finite log-density)")


