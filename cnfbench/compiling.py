"""Compiled training fields (``--compile``): the field wrapped by ``torch.compile`` for the training iterations,
checked on a probe iteration first, and the eager field, with a warning, wherever compiling fails.

What is compiled is what a training iteration calls and compiled code can differentiate (measured in
``benchmarks/README.md``, "Compiled fields"):

* An objective that trains without solving (flow matching) calls the field's ``forward`` and differentiates
  it once: ``forward`` is compiled.
* An objective that solves (``mle``, ``rnode``) calls the field through the trace estimator. The traces built
  on vector-Jacobian products (``hutchinson``, ``hutchpp``, the exact trace's loop and batched methods) take
  them with ``create_graph=True``, and the loss's backward differentiates them again, which code compiled by
  ``torch.compile`` cannot do (AOT autograd has no double backward). So ``forward`` stays eager and only the
  field's fused ``forward_with_divergence`` (``dz`` and the exact divergence in one pass, differentiated
  once) is compiled; the wrapper asks the ``exact`` trace to use it in every dimension
  (:data:`~cnfbench.contracts.PREFER_FUSED`), D <= 2 included, where the eager loop is otherwise cheaper. A
  pipeline that never calls it (another trace, a field without the method) has nothing compiled to run: it trains eager.

Compilation is ``fullgraph=True``: a field dynamo cannot capture in one graph is not compiled at all, rather
than run as compiled pieces between eager ones (it would say ``compiled`` and gain nothing).
``torch.compiler.reset()`` runs first, so that every cell compiles from scratch (its compile time does not
depend on the cells a worker ran before, and dynamo's recompile limit is never reached).

Before the first iteration, :func:`compile_for_training` runs one training loss and backward pass through
the wrapper (the probe, on the first training batch's shape, so that the iterations do not recompile for a
new shape). It draws from throwaway generators and the global RNG is restored afterwards, counts no NFE into
the cell, and leaves the parameters, their gradients and the buffers as they were; its wall-clock (the
compilation happens there) is reported apart. Any exception there — dynamo, inductor, a missing C++
compiler, the double backward — and a probe that never reached compiled code make the cell train the
eager field instead: a :class:`CompileFallbackWarning` and a note in the row say why. Evaluation never
sees the wrapper: it runs the eager module, which holds the same parameters.
"""

from __future__ import annotations

import contextlib
import re
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cnfbench.contracts import FUSED_METHOD, PREFER_FUSED, VectorField
from cnfbench.measure import now
from cnfbench.messages import describe_exception, one_line

NOTE_LIMIT = 240
"""Characters of the exception message a fallback note quotes."""

COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch._aot_autograd",
                    "torch._functorch.aot_autograd")
"""Modules whose frames in a traceback mark an exception as raised by compiled code or the compiler."""


class CompileFallbackWarning(RuntimeWarning):
    """``--compile`` could not be used for a cell's field: it trains eager (the message says why)."""


class NothingCompiled(RuntimeError):
    """The training pass never reached the compiled code."""


class CompiledField(VectorField):
    """The field as training calls it: ``torch.compile``'d callables in front of the eager module ``eager``.

    ``compile_forward`` compiles ``forward``; ``compile_fused`` compiles ``forward_with_divergence`` (and sets
    :data:`~cnfbench.contracts.PREFER_FUSED`). What is not compiled calls the eager module. The eager module is
    a submodule, so ``parameters()`` (an adjoint solver's) are its own. ``compiled_calls`` counts the calls that
    ran compiled code.
    """

    name = "compiled"
    description = "a field's compiled training callables (cnfbench --compile)"

    def __init__(self, field: VectorField, compile_forward: bool, compile_fused: bool) -> None:
        super().__init__(getattr(field, "dim", 0))
        self.eager = field
        self.per_row_time = getattr(field, "per_row_time", False)  # type: ignore[misc]
        self.compiled_calls = 0
        fused = getattr(field, FUSED_METHOD, None)
        # kept in a dict, not as attributes: an OptimizedModule attribute would register a second submodule
        self._compiled: dict[str, Callable[..., Any]] = {}
        if compile_forward:
            self._compiled["forward"] = torch.compile(field, fullgraph=True)
        if compile_fused and callable(fused):
            self._compiled["fused"] = torch.compile(fused, fullgraph=True)
        setattr(self, PREFER_FUSED, "fused" in self._compiled)

    @property
    def compiles(self) -> tuple[str, ...]:
        """What is compiled: ``forward`` and/or ``forward_with_divergence``."""
        return tuple(FUSED_METHOD if key == "fused" else key for key in self._compiled)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        compiled = self._compiled.get("forward")
        if compiled is None:
            return self.eager(t, z)
        self.compiled_calls += 1
        return compiled(t, z)

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
        compiled = self._compiled.get("fused")
        if compiled is None:
            fused = getattr(self.eager, FUSED_METHOD, None)
            return fused(t, z) if callable(fused) else None
        result = compiled(t, z)
        if result is not None:
            self.compiled_calls += 1
        return result


@dataclass(frozen=True)
class CompileResult:
    """What :func:`compile_for_training` decided: the field training calls, whether it is compiled, why not
    (``note``, one line; empty when compiled) and the wall-clock of compiling and the probe, in seconds."""

    field: VectorField
    compiled: bool
    note: str
    seconds: float


@contextlib.contextmanager
def untouched(field: VectorField, device: torch.device) -> Iterator[None]:
    """Run a throwaway pass: afterwards the global RNG, the gradients and the buffers of ``field`` are as
    before (its parameters change only through an optimizer, which a probe never steps)."""
    grads = [(parameter, parameter.grad) for parameter in field.parameters()]
    buffers = [(buffer, buffer.detach().clone()) for buffer in field.buffers()]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        for parameter, grad in grads:
            parameter.grad = grad
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def compiler_message(exc: BaseException) -> str:
    """``exc`` on one line; a dynamo error's pages of hints cut to its headline, the detail it was given and
    the innermost line of user code it points at."""
    text = str(exc)
    if not type(exc).__module__.startswith("torch._dynamo") or "\n" not in text.strip():
        return describe_exception(exc, NOTE_LIMIT)
    headline = text.strip().splitlines()[0].strip()
    detail = re.search(r"Developer debug context: (.+)", text)
    places = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text.split("from user code:", 1)[-1]) \
        if "from user code:" in text else []
    summary = headline + (f" ({detail.group(1).strip()})" if detail and detail.group(1).strip() else "")
    if places:
        path, line, function = places[-1]
        summary += f" in {function} at {Path(path).name}:{line}"
    return one_line(f"{type(exc).__name__}: {summary}", NOTE_LIMIT)


def fallback_note(field_label: str, exc: BaseException) -> str:
    """One line: why ``--compile`` trains the eager ``field_label``."""
    return f"--compile: field {field_label} trains eager: {compiler_message(exc)}"


def compile_for_training(field: VectorField, solves: bool, probe: Callable[[VectorField], Tensor],
                         field_label: str, device: torch.device, trace_label: str = "") -> CompileResult:
    """The field a cell's training iterations should call: compiled when that works, else ``field``.

    ``solves`` says whether the objective solves the CNF in training (then only the fused method is
    compiled, see the module docstring); ``probe(training_field)`` returns one training loss computed with
    throwaway generators and NFE counter, which is differentiated here; ``trace_label`` names the training
    trace in the note of a probe that never reached compiled code. Never raises an ``Exception``: a
    failure warns (:class:`CompileFallbackWarning`) and returns the eager field with the note.
    """
    started = now(device)
    try:
        if solves and not callable(getattr(field, FUSED_METHOD, None)):
            raise NothingCompiled(f"it has no {FUSED_METHOD}, the only part of a field a likelihood objective "
                                  "can train compiled (its training differentiates vector-Jacobian products "
                                  "twice, which compiled code cannot)")
        with untouched(field, device):
            torch.compiler.reset()
            wrapper = CompiledField(field, compile_forward=not solves, compile_fused=solves)
            probe(wrapper).backward()
        if wrapper.compiled_calls == 0:
            by = f"trace {trace_label}" if trace_label and solves else "the training pass"
            raise NothingCompiled(f"{by} never called its compiled {', '.join(wrapper.compiles)}"
                                  + (" (a likelihood objective trains compiled only through it, which the exact "
                                     "trace uses)" if solves else ""))
        return CompileResult(wrapper, True, "", now(device) - started)
    except Exception as exc:  # noqa: BLE001 - --compile must never fail a cell
        note = fallback_note(field_label, exc)
        warnings.warn(note, CompileFallbackWarning, stacklevel=2)
        return CompileResult(field, False, note, now(device) - started)


def raised_by_compiler(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it chains) passed through ``torch.compile``'s machinery: dynamo,
    inductor or AOT autograd's compiled functions."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for frame, _ in traceback.walk_tb(current.__traceback__):
            if str(frame.f_globals.get("__name__", "")).startswith(COMPILER_MODULES):
                return True
        current = current.__cause__ or current.__context__
    return False
