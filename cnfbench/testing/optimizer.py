"""The conformance check of an optimizer (:func:`check_optimizer`): it trains a small regression down, repeats
exactly, draws no random numbers and averages weights of the right names and shapes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnfbench.testing._checker import Checker, component_label, one_line, resolve_component

OPTIMIZER_CHECK_STEPS = 60
"""Updates the check makes on its regression (at learning rate 1e-2): enough for any sound optimizer to halve
its loss."""


def check_optimizer(cls: type, params: Mapping[str, Any] | None = None) -> None:
    """Check a :class:`~cnfbench.contracts.Optimizer` class built as ``cls(**params)``.

    * metadata: ``name``, ``description``, ``params``;
    * ``build(module, lr, iterations)`` returns an object with ``zero_grad``, ``step`` and ``averaged``;
    * :data:`OPTIMIZER_CHECK_STEPS` updates of a seeded two-layer regression at lr 1e-2 at least halve its loss
      (measured with the weights ``averaged`` returns, when it returns any);
    * two fresh builds on equal modules give bit-identical parameters: no state outside the build;
    * torch's global random state is untouched (a run's randomness comes from the cell's seed only);
    * ``averaged()`` is ``None`` or a state dict with the module's keys and shapes, finite.
    """
    import torch

    from cnfbench.contracts import Optimizer

    check = Checker(component_label("optimizer", cls))
    values = resolve_component("optimizer", cls, params, check)

    def module_and_data() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 3, generator=generator)
        y = torch.sin(x @ torch.tensor([[1.0], [-2.0], [0.5]]))
        torch.manual_seed(1)
        module = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        return module, x, y

    def train() -> tuple[torch.nn.Module, float, float, Any]:
        module, x, y = module_and_data()
        with check.calling("cls(**params)"):
            optimizer = cls(**values)
        check.require(isinstance(optimizer, Optimizer), "cls(**params) did not return an Optimizer")
        with check.calling("build(module, lr=1e-2, iterations)"):
            update = optimizer.build(module, 1e-2, OPTIMIZER_CHECK_STEPS)
        for method in ("zero_grad", "step", "averaged"):
            check.require(callable(getattr(update, method, None)), f"build() returned an object without {method}()")
        with torch.no_grad():
            first = float(((module(x) - y) ** 2).mean())
        state = torch.get_rng_state()
        for _ in range(OPTIMIZER_CHECK_STEPS):
            with check.calling("zero_grad()"):
                update.zero_grad()
            loss = ((module(x) - y) ** 2).mean()
            loss.backward()
            with check.calling("step()"):
                update.step()
        check.require(torch.equal(state, torch.get_rng_state()),
                      "step() drew from torch's global random generator: a seeded run would not repeat")
        with check.calling("averaged()"):
            averaged = update.averaged()
        if averaged is not None:
            expected = module.state_dict()
            shown = sorted(averaged) if isinstance(averaged, dict) else averaged
            check.require(isinstance(averaged, dict) and set(averaged) == set(expected),
                          lambda: f"averaged() returned {shown!r}; expected a dict with the module's state_dict "
                                  f"keys {sorted(expected)}")
            for key, value in averaged.items():
                check.require(torch.is_tensor(value) and value.shape == expected[key].shape
                              and bool(torch.isfinite(value).all()),
                              f"averaged()[{key!r}] is not a finite tensor of shape {tuple(expected[key].shape)}")
            try:
                module.load_state_dict(averaged)
            except RuntimeError as exc:
                raise check.fail(f"averaged() cannot be loaded into the module: {one_line(exc)}") from None
        with torch.no_grad():
            last = float(((module(x) - y) ** 2).mean())
        return module, first, last, averaged

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module, first, last, _ = train()
        check.require(last <= 0.5 * first, f"{OPTIMIZER_CHECK_STEPS} updates at lr 1e-2 took a small regression's "
                                           f"loss from {first:.4g} to {last:.4g} only (expected at most half)")
        again, _, _, _ = train()
        for (name, a), (_, b) in zip(module.state_dict().items(), again.state_dict().items(), strict=True):
            check.require(torch.equal(a, b), f"two fresh builds trained {name!r} differently: the update is not "
                                             "deterministic")
    finally:
        torch.set_num_threads(threads)
