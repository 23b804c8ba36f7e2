"""What every family's check shares: the error, the checker that names the component, metadata checks, helpers.

Nothing here imports torch at import time (:func:`torch_module` does it on
first use), so ``import cnfbench.testing`` stays cheap for pytest.
"""

from __future__ import annotations

import contextlib
import functools
import random
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


class ConformanceError(AssertionError):
    """A component breaks its family's contract; the message names the component and the problem."""


def torch_module() -> Any:
    """``torch``, imported on first use."""
    import torch

    return torch


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line of at most ~300 characters."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def component_label(family: str, cls: Any) -> str:
    """``field 'name' (QualName)``: how every failure message names the component."""
    name = getattr(cls, "name", "")
    qualname = getattr(cls, "__qualname__", repr(cls))
    return f"{family} {name!r} ({qualname})" if name else f"{family} class {qualname}"


class Checker:
    """Carries the component's label into every failure message."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, problem: str) -> ConformanceError:
        return ConformanceError(f"{self.label}: {problem}")

    def require(self, condition: Any, problem: str | Callable[[], str]) -> None:
        if not condition:
            raise self.fail(problem() if callable(problem) else problem)

    @contextlib.contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """Turn an exception raised by the component into a failure that says what was being done."""
        try:
            yield
        except ConformanceError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the component raises becomes one clear line
            raise self.fail(f"{what} raised {one_line(exc)}") from exc


def same(a: Tensor, b: Tensor) -> bool:
    """Equal up to the last bits (GPU reductions need not be bitwise reproducible)."""
    return a.shape == b.shape and torch_module().allclose(a, b, rtol=1e-6, atol=1e-9)


def describe(x: Any) -> str:
    """``(7, 2) torch.float32 on cpu`` for a tensor, the type's name for anything else."""
    if not torch_module().is_tensor(x):
        return type(x).__name__
    return f"{tuple(x.shape)} {x.dtype} on {x.device}"


def require_dz_and_div(check: Checker, result: Any, z: Tensor, where: str,
                       otherwise: str = "") -> tuple[Tensor, Tensor]:
    """Require ``result`` to be ``(dz, div)``: ``dz`` like ``z``, ``div`` ``[B]`` in ``z``'s dtype and device.

    ``otherwise`` ends the message about a result that is no pair (``", or None to decline"``).
    """
    torch = torch_module()
    check.require(isinstance(result, tuple) and len(result) == 2,
                  f"{where} returned {type(result).__name__}; expected the tuple (dz, div){otherwise}")
    dz, div = result
    check.require(torch.is_tensor(dz) and dz.shape == z.shape and dz.dtype == z.dtype and dz.device == z.device,
                  lambda: f"{where} returned dz {describe(dz)}; expected {describe(z)}")
    check.require(torch.is_tensor(div) and div.shape == z.shape[:1] and div.dtype == z.dtype
                  and div.device == z.device,
                  lambda: f"{where} returned div {describe(div)}; expected ({z.shape[0]},) {z.dtype} on {z.device} "
                          f"(one divergence per row)")
    return dz, div


def resolve_component(family: str, cls: Any, params: Mapping[str, Any] | None, check: Checker) -> dict[str, Any]:
    """Check the class's metadata and return its declared parameters filled and coerced."""
    from cnfbench.contracts import FAMILIES
    from cnfbench.params import Param, ParamError, resolve_params

    base = FAMILIES[family].base
    check.require(isinstance(cls, type) and issubclass(cls, base),
                  f"is not a subclass of {base.__module__}.{base.__qualname__}")
    name = getattr(cls, "name", "")
    check.require(isinstance(name, str) and name and not any(ch in name for ch in "[],= "),
                  f"needs a class attribute `name`: a non-empty string without '[', ']', ',', '=' or spaces "
                  f"(got {name!r})")
    check.require(isinstance(getattr(cls, "description", None), str) and cls.description.strip(),
                  "needs a one-line `description` string (cnfbench plugins shows it)")
    declared = getattr(cls, "params", ())
    check.require(isinstance(declared, (tuple, list)) and all(isinstance(p, Param) for p in declared),
                  "`params` must be a tuple of cnfbench.params.Param")
    names = [p.name for p in declared]
    check.require(len(set(names)) == len(names), f"declares a parameter twice: {names}")
    for param in declared:
        try:
            param.coerce(param.default)
        except ValueError as exc:
            raise check.fail(f"the default {param.default!r} of parameter {param.name!r} is invalid: {exc}") from None
    try:
        return resolve_params(f"{family} {name!r}", declared, dict(params or {}))
    except ParamError as exc:
        raise check.fail(str(exc)) from None


def declared_params(cls: Any) -> dict[str, Any]:
    """The class's declared :class:`~cnfbench.params.Param` objects by name."""
    return {param.name: param for param in getattr(cls, "params", ())}


def single_threaded(check: Callable[..., None]) -> Callable[..., None]:
    """Run a check with one torch thread (restored afterwards).

    Its tensors are tiny, and on a busy machine an op that goes multi-threaded
    can wait milliseconds for a second core.
    """

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> None:
        torch = torch_module()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            check(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return run


def global_rng_states() -> dict[str, Any]:
    """The state of every global RNG a component might use instead of its generator."""
    torch = torch_module()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if "numpy" in sys.modules:
        states["numpy"] = sys.modules["numpy"].random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def changed_rngs(before: dict[str, Any]) -> list[str]:
    """The global RNGs (as a user would call them) whose state moved since :func:`global_rng_states`."""
    torch = torch_module()
    after = global_rng_states()
    changed = []
    for key, old in before.items():
        new = after.get(key)
        if key == "torch":
            unchanged = torch.equal(old, new)
        elif key == "torch.cuda":
            unchanged = len(old) == len(new) and all(torch.equal(a, b) for a, b in zip(old, new, strict=True))
        elif key == "numpy":
            unchanged = old[0] == new[0] and (old[1] == new[1]).all() and old[2:] == new[2:]
        else:
            unchanged = old == new
        if not unchanged:
            changed.append({"torch": "torch.manual_seed/torch.rand*", "random": "Python's random",
                            "numpy": "numpy.random", "torch.cuda": "torch.cuda"}[key])
    return changed
