"""The conformance check of a metric (:func:`check_metric`): declarations, inputs only from the harness,
deterministic, and units that scale as they say.

The check runs the metric through the harness's own evaluation plan (:mod:`cnfbench.metric_plan`) on a
scenario with closed forms: a 2-D Gaussian dataset with a known density, and a trained model that is the linear
field ``v(t, z) = A z`` (so the model is the Gaussian ``N(0, e^A e^{A^T})``), solved with the kit's RK4. The
data differ from the model (a shifted, stretched Gaussian), so that every distance is clearly above zero.

**Units by dimensional analysis.** Scaling the data by ``s`` and the model with it (the field
``(A + ln s · I) z`` carries ``N(0, I)`` to ``s`` times the model's samples) must multiply a column in
``data units`` by ``s``, one in ``data units²`` by ``s²``, and leave a unitless one (``1``) unchanged: a
metric whose numbers scale otherwise mislabels its unit. Checked for metrics that read only
distribution-level inputs (``test``, ``sample``, ``ref_sample``, the log-density passes, the grids, the
dataset's density); the paths and the model itself do not scale that way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cnfbench.testing._checker import Checker, component_label, resolve_component, single_threaded, torch_module

UNIT_POWERS: dict[str, int] = {"data units": 1, "data units²": 2, "1": 0}
"""How a column in each of these units scales when the data are scaled by ``s``: as ``s`` to this power."""

SCALE = 10.0
"""The factor the unit check scales the data (and the model) by."""

UNIT_TOLERANCE = 0.1
"""Largest relative deviation from the scaling law the unit check accepts (sampling metrics such as a classifier's
accuracy are invariant only up to their fitting noise)."""

SCALING_INPUTS = frozenset({"test", "sample", "ref_sample", "eval", "ref", "ref_sample_eval", "grid", "grid_ref",
                            "data_density"})
"""The inputs that scale with the data exactly; a metric reading only these has its units checked."""

MOST_FIELD_TIMES = 2
"""Distinct times a metric may evaluate the field at outside ``model.push_forward`` before the check calls it a
solve of its own (a metric may probe the field, not integrate it)."""


def _scenario(scale: float, n_test: int = 400) -> Any:
    """The evaluation setup of the scenario at data scale ``scale``."""
    torch = torch_module()
    from cnfbench.contracts import Dataset, Splits
    from cnfbench.metric_plan import EvaluationSetup
    from cnfbench.testing.reference import RK4, ExactLoopTrace, MatrixField

    mean = torch.tensor([1.5, -1.0], dtype=torch.float64)
    cholesky = torch.tensor([[1.2, 0.0], [0.5, 0.6]], dtype=torch.float64)

    class ShiftedGaussian(Dataset):
        name = "check-shifted-gaussian"
        description = "N(mean, L L^T) scaled by s (the metric check's data)"

        @property
        def dim(self) -> int:
            return 2

        @property
        def has_density(self) -> bool:
            return True

        def splits(self, seed: int) -> Splits:
            generator = torch.Generator().manual_seed(seed)
            draws = [(scale * (mean + torch.randn(n, 2, generator=generator, dtype=torch.float64) @ cholesky.T))
                     .to(torch.float32) for n in (64, 64, n_test)]
            return Splits(*draws)

        def log_prob(self, x: Any) -> Any:
            from torch.distributions import MultivariateNormal

            return MultivariateNormal(scale * mean, scale_tril=scale * cholesky).log_prob(x.to(torch.float64))

    class RecordingMatrixField(MatrixField):
        """The model's linear field; records the times it is evaluated at while a metric computes."""

        def __init__(self, matrix: Any) -> None:
            super().__init__(matrix)
            self.metric_times: set[float] = set()

        def forward(self, t: Any, z: Any) -> Any:
            from cnfbench.dynamics import COMPUTING_METRIC

            if COMPUTING_METRIC.get() is not None:
                self.metric_times.update(float(value) for value in t.reshape(-1))
            return super().forward(t, z)

    matrix = torch.tensor([[0.3, 0.2], [-0.1, -0.2]]) + math.log(scale) * torch.eye(2)
    dataset = ShiftedGaussian()
    test = dataset.splits(0).test
    return EvaluationSetup(RecordingMatrixField(matrix.to(torch.float32)), RK4(steps=20), RK4(steps=40),
                           ExactLoopTrace(), dataset, test, 0, 256, None, torch.float64, 24,
                           ("field 'check-matrix'", "trace 'exact'"), torch.device("cpu"))


def _measure(cls: type, values: Mapping[str, Any], scale: float, check: Checker) -> dict[str, Any]:
    """Run the metric through the harness's plan on the scenario at ``scale``; its columns."""
    from cnfbench.metric_plan import measure

    setup = _scenario(scale)
    measured = measure(setup, [(cls.name, cls(**values))])
    note = measured.notes.get(cls.name, "")
    if "solved the model itself" in note:
        raise check.fail(f"computed an input itself instead of declaring it: {note.removeprefix('failed: ')}")
    check.require(not note, lambda: f"failed on the check's scenario (2-D Gaussian data, a linear model): {note}")
    times = setup.field.metric_times
    check.require(len(times) <= MOST_FIELD_TIMES, lambda: (
        f"evaluated the field at {len(times)} distinct times outside model.push_forward: it is solving the model "
        f"itself; declare the input it needs ({', '.join(sorted(_solve_inputs()))})"))
    model = measured.values.get("model")
    if model is not None:
        declared = [value for name, value in measured.values.items() if name in cls.needs and name != "model"]
        for pushed in model.pushed:
            check.require(any(_taken_from(pushed, value) for value in declared), (
                "pushed points forward that come from none of its declared inputs: draw samples by declaring "
                "'sample' (or 'ref_sample'), and push only points of a declared input"))
    return {name: measured.columns.get(name) for name in cls.column_names()}


def _solve_inputs() -> set[str]:
    from cnfbench.contracts import METRIC_INPUTS

    return set(METRIC_INPUTS) - {"test", "data_density", "model"}


def _tensors(value: Any) -> list[Any]:
    torch = torch_module()
    if torch.is_tensor(value):
        return [value]
    return [item for item in vars(value).values() if torch.is_tensor(item)] if hasattr(value, "__dict__") else []


def _taken_from(pushed: Any, value: Any) -> bool:
    """Whether the rows of ``pushed`` are the first rows of a tensor of the input ``value``."""
    torch = torch_module()
    return any(tensor.dim() == 2 and tensor.shape[1] == pushed.shape[1] and tensor.shape[0] >= pushed.shape[0]
               and torch.equal(tensor[:pushed.shape[0]].to(pushed.dtype), pushed) for tensor in _tensors(value))


@single_threaded
def check_metric(cls: type, params: Mapping[str, Any] | None = None) -> None:
    """Check a :class:`~cnfbench.contracts.Metric` class built as ``cls(**params)``.

    * metadata: ``name``, ``description``, ``params``; a ``group``; ``columns`` valid
      :class:`~cnfbench.columns.Column` declarations with distinct names; ``needs`` from
      :data:`~cnfbench.contracts.METRIC_INPUTS`; ``requires`` from
      :data:`~cnfbench.contracts.METRIC_REQUIREMENTS`; ``default`` a bool;
    * run through the harness's evaluation plan on the scenario, it returns a number or a string for every
      declared column and nothing else, without failing;
    * it computes no input itself: no dynamics solve outside ``model.push_forward`` (the harness stops one),
      the field evaluated at no more than :data:`MOST_FIELD_TIMES` distinct times, and ``push_forward`` given
      only points of a declared input;
    * the same inputs give the same numbers;
    * units: its columns with a goal in ``data units``, ``data units²`` or ``1`` scale with the data as
      :data:`UNIT_POWERS` says (metrics that read only :data:`SCALING_INPUTS`).
    """
    from cnfbench.columns import Column, ColumnError, check_column
    from cnfbench.contracts import METRIC_INPUTS, METRIC_REQUIREMENTS

    check = Checker(component_label("metric", cls))
    values = resolve_component("metric", cls, params, check)
    check.require(isinstance(cls.group, str) and cls.group, "needs a `group` (e.g. 'samples'): --metrics selects "
                                                            "metrics by group")
    columns = cls.columns
    check.require(isinstance(columns, tuple) and all(isinstance(column, Column) for column in columns),
                  "`columns` must be a tuple of cnfbench.columns.Column declarations (unit, meaning, goal)")
    for column in columns:
        try:
            check_column(column, f"metric {cls.name!r}")
        except ColumnError as exc:
            raise check.fail(str(exc)) from None
    names = [column.name for column in columns]
    check.require(len(set(names)) == len(names), f"declares a column twice: {names}")
    unknown = [need for need in cls.needs if need not in METRIC_INPUTS]
    check.require(not unknown, lambda: f"needs unknown input {unknown[0]!r}; inputs: {', '.join(METRIC_INPUTS)}")
    check.require(isinstance(cls.needs, tuple), "`needs` must be a tuple of input names")
    bad = [need for need in cls.requires if need not in METRIC_REQUIREMENTS]
    check.require(not bad, lambda: f"requires {bad[0]!r}; valid: {', '.join(METRIC_REQUIREMENTS)}")
    check.require(isinstance(cls.default, bool), "`default` must be a bool")

    first = _measure(cls, values, 1.0, check)
    for name, value in first.items():
        check.require(isinstance(value, (int, float, str, bool)), lambda name=name, value=value: (
            f"gave no value for its declared column {name!r} ({value!r}) on the check's scenario, which has "
            "every input"))
    again = _measure(cls, values, 1.0, check)
    for name, value in first.items():
        other = again[name]
        same = value == other or (isinstance(value, float) and isinstance(other, float) and (
            math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(value) and math.isnan(other))))
        check.require(same, lambda name=name, value=value, other=other: (
            f"is not deterministic: {name} was {value!r}, then {other!r} from the same inputs (draw random numbers "
            "from inputs.generator(stream))"))
    if not set(cls.needs) <= SCALING_INPUTS:
        return
    scaled = _measure(cls, values, SCALE, check)
    for column in columns:
        if column.goal is None:  # a standard error or a count: not a headline number with a scaling law to hold
            continue
        power = UNIT_POWERS.get(column.unit)
        value, other = first[column.name], scaled[column.name]
        if power is None or not isinstance(value, float) or not math.isfinite(value) or abs(value) < 1e-9:
            continue
        expected = value * SCALE**power
        if abs(other - expected) > UNIT_TOLERANCE * abs(expected):
            ratio = other / value
            measured = math.log(abs(ratio), SCALE) if ratio else math.nan
            said = {0: "unitless", 1: "in data units", 2: "in data units²"}
            fits = min(said, key=lambda p: abs(p - measured)) if math.isfinite(measured) else None
            hint = f"; it behaves as {said[fits]}" if fits is not None and fits != power else ""
            raise check.fail(f"column {column.name!r} says its unit is {column.unit!r}, but scaling the data by "
                             f"{SCALE:g} changed it by a factor {ratio:.4g}, not {SCALE**power:g}{hint}")
