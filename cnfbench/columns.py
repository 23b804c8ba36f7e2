"""The column catalogue: every column of ``cells.parquet``, what it means and how it is shown and compared.

One :class:`Column` per column says its unit and meaning, which way is better
(:data:`GOALS`), how two runs' values are compared (:data:`COMPARISONS`: a
difference for log-likelihoods, a ratio for times, NFE and memory), how it is
displayed (label, display unit, scale, decimals), whether it depends on the
machine, and in which default tables it appears (:data:`DEFAULT_USES`). The
identity columns are generated from the families table. The end-of-run
summary, the reports, ``compare`` and the README's column table all read this
catalogue (a test checks the README against it), and plugins declare the
columns they add with the same :class:`Column` through the ``cnfbench_columns``
hook (:func:`plugin_columns`).

This module imports nothing heavy: ``cnfbench run`` uses it to order rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cnfbench.families import EVAL_SLOTS, GRID_AXES

NO_UNIT = "—"

# groups: what a column is for
IDENTITY = "identity"  # which cell: id, grid-axis components, seed
BUDGET = "budget"  # the training budget: part of what a configuration is
PROTOCOL = "protocol"  # how a cell was evaluated (and where): numbers differ when this does
OUTCOME = "outcome"  # status, reasons and flags (not numbers to aggregate)
METRIC = "metric"  # a measured number
GROUPS = (IDENTITY, BUDGET, PROTOCOL, OUTCOME, METRIC)

LOWEST = "min"
CLOSEST_TO_ONE = "one"
GOALS: dict[str, str] = {LOWEST: "lowest", CLOSEST_TO_ONE: "closest to 1"}
"""Which value of a metric is best, and how a table's caption says it; a metric without a goal has no best."""

DIFFERENCE = "difference"
RATIO = "ratio"
COMPARISONS: dict[str, str] = {
    DIFFERENCE: "NEW - BASE in the column's unit (log-likelihoods in nats, mass)",
    RATIO: "NEW / BASE (times, NFE, memory, counts)",
}
"""How ``compare`` expresses and judges the change of a metric between two runs."""

REPORT = "report"
COMPARE = "compare"
SUMMARY = "summary"
DEFAULT_USES = (REPORT, COMPARE, SUMMARY)
"""The tables a column can be a default metric of: ``cnfbench report``, ``cnfbench compare``, the run's summary."""


class ColumnError(ValueError):
    """A bad column declaration (from a plugin): the message names the plugin and the column."""


@dataclass(frozen=True)
class Column:
    """One column of ``cells.parquet``: the same fields for cnfbench's own columns and a plugin's.

    ``unit`` is the stored unit (``—`` for none) and ``meaning`` one line for the README. ``goal``
    is :data:`LOWEST`, :data:`CLOSEST_TO_ONE` or ``None``; ``comparison`` :data:`DIFFERENCE` or
    :data:`RATIO` (``None``: not a number to compare). A table shows ``value * scale`` with
    ``decimals`` decimals under ``label [display_unit]`` (defaults: the name and the unit).
    ``machine`` marks numbers that depend on the machine (times, memory); ``flag_sensitive`` those
    of the solver's density, which a row's ``valid = false`` declares untrustworthy;
    ``defaults`` the tables of :data:`DEFAULT_USES` the column is shown in when none are asked for;
    ``short`` the label of the end-of-run summary, which must fit a 100-column terminal (default: ``label``).
    """

    name: str
    unit: str
    meaning: str
    group: str = METRIC
    goal: str | None = None
    comparison: str | None = RATIO
    label: str = ""
    display_unit: str = ""
    scale: float = 1.0
    decimals: int = 3
    machine: bool = False
    flag_sensitive: bool = False
    defaults: tuple[str, ...] = ()
    short: str = ""

    @property
    def shown_unit(self) -> str:
        """The unit of the displayed (scaled) value; empty when it has none."""
        if self.display_unit:
            return self.display_unit
        return "" if self.unit == NO_UNIT else self.unit

    @property
    def header(self) -> str:
        """``label [unit]``: how a table heads this column."""
        label = self.label or self.name
        return f"{label} [{self.shown_unit}]" if self.shown_unit else label

    @property
    def short_header(self) -> str:
        """``short [unit]``: how the end-of-run summary heads this column."""
        label = self.short or self.label or self.name
        return f"{label} [{self.shown_unit}]" if self.shown_unit else label

    def badness(self, value: float) -> float:
        """A number that is smaller when ``value`` is better (``nan`` for a column without a goal)."""
        return badness(self.goal, value)


def badness(goal: str | None, value: float) -> float:
    """A number that is smaller when ``value`` is better under ``goal`` (``nan`` without a goal)."""
    if goal == LOWEST:
        return value
    if goal == CLOSEST_TO_ONE:
        return abs(value - 1.0)
    return math.nan


def _identity_columns() -> tuple[Column, ...]:
    """The columns that say which cell a row is, in row order (as :func:`cnfbench.rows.identity_columns` writes)."""
    def plain(name: str, unit: str, meaning: str, group: str) -> Column:
        return Column(name, unit, meaning, group, comparison=None)

    return (
        plain("cell_id", NO_UNIT, "16-hex-digit hash of the cell's fully resolved spec; equal specs, equal ids",
              IDENTITY),
        *(plain(row.column, NO_UNIT, f"{row.meaning} name", IDENTITY) for row in GRID_AXES),
        plain("seed", NO_UNIT, "seed of the data splits, the initialisation, the batch order and the trace noise",
              IDENTITY),
        *(plain(row.spec_column, NO_UNIT, f"{row.meaning} with every parameter", IDENTITY) for row in GRID_AXES),
        plain("iterations", NO_UNIT, "training iterations requested", BUDGET),
        plain("epochs", NO_UNIT, "passes over the training split the iterations make, when the budget was given in "
              "epochs (--epochs; 0: given in iterations)", BUDGET),
        plain("batch_size", "samples", "training batch size", BUDGET),
        plain("lr", NO_UNIT, "the optimizer's base learning rate", BUDGET),
        plain("max_nfe", "evaluations", "dynamics evaluations allowed per solve (empty: unlimited)", BUDGET),
        plain("time_budget_s", "s", "wall-clock of training iterations allowed (--time-budget; empty: iterations)",
              BUDGET),
        plain("val_every", "iterations", "validation NLL recorded every this many iterations (0: never)", BUDGET),
        plain("select", NO_UNIT, "which parameters are kept: last, best (lowest validation NLL) or best_loss (lowest "
              "validation loss of the objective)", BUDGET),
        plain("val_solver_spec", NO_UNIT, "solver of the validation NLL of an objective that trains without "
              "solving (the training solver otherwise)", BUDGET),
        plain("trained_with", NO_UNIT, "components the model was trained with where they differ from the "
              "evaluated ones (cnfbench evaluate), as axis=spec; empty otherwise", IDENTITY),
        *(plain(slot.spec_column, NO_UNIT, slot.meaning, PROTOCOL) for slot in EVAL_SLOTS),
        plain("ref_dtype", NO_UNIT, "floating-point type of the reference solve", PROTOCOL),
        plain("eval_batch_size", "samples", "test samples per evaluation solve", PROTOCOL),
        plain("mass_grid", "points per axis", "resolution of the 2D mass check (0: off)", PROTOCOL),
        plain("device", NO_UNIT, "torch device the cell ran on", PROTOCOL),
    )


def _outcome(name: str, meaning: str) -> Column:
    return Column(name, NO_UNIT, meaning, OUTCOME, comparison=None)


def _nats(name: str, meaning: str, **display: Any) -> Column:
    """A log-likelihood (or its standard error) in nats per sample: compared as a difference."""
    return Column(name, "nats/sample", meaning, comparison=DIFFERENCE, **display)


def _stderr(name: str, meaning: str) -> Column:
    return Column(name, "nats/sample", meaning, comparison=RATIO)


def _evaluations(name: str, meaning: str, **display: Any) -> Column:
    return Column(name, "evaluations", meaning, goal=LOWEST, **{"decimals": 1, **display})


def _seconds(name: str, meaning: str, **display: Any) -> Column:
    return Column(name, "s", meaning, goal=LOWEST, machine=True, **display)


PROTOCOL_COLUMNS = ("protocol", "protocol_scale", "protocol_group", "protocol_deviation")
"""The columns that say which published protocol wrote a row (empty strings outside a protocol run)."""


COLUMNS: tuple[Column, ...] = (
    *_identity_columns(),
    # outcome
    _outcome("status", "done, diverged, budget, timeout, error, interrupted or skipped"),
    _outcome("reason", "one line saying why a cell did not finish (empty when done)"),
    Column("iterations_done", NO_UNIT, "training iterations completed", decimals=0),
    Column("n_params", "parameters", "trainable parameters of the field", decimals=0),
    # likelihood
    Column("final_train_loss", "train_loss_unit", "the objective's training loss at the last iteration (for mle: the "
           "batch NLL with the training trace)", goal=LOWEST, comparison=DIFFERENCE),
    _outcome("train_loss_unit", "unit of final_train_loss and of the loss curve: the objective's loss_unit"),
    _outcome("model_key", "16-hex-digit hash of what training depends on: rows with one model_key share one "
                          "trained model"),
    _outcome("protocol", "published protocol whose run wrote the row (cnfbench run --protocol; empty otherwise)"),
    _outcome("protocol_scale", "the protocol's scale: full (the paper's budgets) or quick"),
    _outcome("protocol_group", "the part of the protocol's grid the row belongs to (a dataset with its settings)"),
    _outcome("protocol_deviation", "the options that overrode the protocol, as key=value (protocol: its value); "
                                   "empty when the row follows it"),
    _outcome("trained_in", "cell_id of the cell that trained this row's model (its own id when trained here); "
                           "training time counts once per model"),
    Column("selected_iteration", NO_UNIT, "iteration whose parameters were kept (--select best: the best "
           "validation NLL)", decimals=0),
    _nats("best_val_nll", "lowest validation NLL recorded in training (--val-every)", goal=LOWEST),
    Column("best_val_loss", "train_loss_unit", "lowest loss of the objective on the validation split recorded in "
           "training (--select best_loss)", goal=LOWEST, comparison=DIFFERENCE),
    _nats("nll", "test NLL with the row's solver and the exact trace: what this pipeline reports", goal=LOWEST,
          label="test NLL, solver", display_unit="nats", flag_sensitive=True,
          defaults=(REPORT, COMPARE, SUMMARY), short="NLL solver"),
    _stderr("nll_stderr", "standard error of nll over the test samples"),
    _nats("nll_ref", "test NLL of the same field with the reference solve: the density it defines", goal=LOWEST,
          label="test NLL, ref solve", display_unit="nats", defaults=(REPORT, COMPARE, SUMMARY),
          short="NLL ref"),
    _stderr("nll_ref_stderr", "standard error of nll_ref over the test samples"),
    # the solver's error on the test log-density: what a work-precision diagram plots against nfe_eval and
    # eval_time_s; true whatever the validity flag says (it measures exactly the error the flag is about)
    _nats("logp_error_mean", "mean over the test samples of |log p_solver(x) - log p_ref(x)|: the row's "
          "solver's error on the test log-density against the reference solve (same samples, no extra solve)",
          goal=LOWEST, label="log p error, mean", display_unit="nats", decimals=4),
    _nats("logp_error_max", "the same, maximum over the test samples", goal=LOWEST, label="log p error, max",
          display_unit="nats", decimals=4),
    Column("dim", "dimensions", "dimension of the data", decimals=0),
    Column("nll_per_dim", "nats/dim", "nll / dim", goal=LOWEST, comparison=DIFFERENCE),
    Column("nll_ref_per_dim", "nats/dim", "nll_ref / dim", goal=LOWEST, comparison=DIFFERENCE),
    Column("bits_per_dim", "bits/dim", "(nll_ref + the dataset's discrete_nll_offset) / (dim ln 2): bits per "
           "dimension of the discrete data by the dequantization bound, from the reference solve (discrete datasets)",
           goal=LOWEST, comparison=DIFFERENCE, label="bits/dim, ref solve", decimals=3, defaults=(SUMMARY,),
           short="bits/dim ref"),
    Column("bits_per_dim_solver", "bits/dim", "the same from nll (the row's solver)", goal=LOWEST,
           comparison=DIFFERENCE, flag_sensitive=True),
    _nats("entropy", "true entropy of the data: mean of -log p_data over the same test samples",
          label="true entropy", display_unit="nats"),
    _stderr("entropy_stderr", "standard error of entropy over the test samples"),
    _nats("excess_nll", "nll_ref - entropy: a paired estimate of KL(data || model), >= 0 in expectation", goal=LOWEST,
          label="excess NLL = ref - entropy", display_unit="nats", defaults=(REPORT, SUMMARY),
          short="excess NLL"),
    _stderr("excess_nll_stderr", "paired standard error of excess_nll"),
    _stderr("nll_minus_entropy_stderr", "paired standard error of nll - entropy (used by the flag)"),
    Column("mass", "1", "integral of the solver's density over a grid covering the test data (2D only)",
           goal=CLOSEST_TO_ONE, comparison=DIFFERENCE, label="mass, solver", flag_sensitive=True,
           defaults=(REPORT,)),
    Column("mass_ref", "1", "the same integral with the reference solve (2D only); 1 for a true density",
           goal=CLOSEST_TO_ONE, comparison=DIFFERENCE, label="mass, ref solve"),
    Column("mass_is", "1", "integral of the row's solver's density in any dimension, by importance sampling: mean "
           "of exp(log p_solver(x) - log p_ref(x)) over 1,000 model samples x drawn with the reference solve",
           goal=CLOSEST_TO_ONE, comparison=DIFFERENCE, label="mass (IS), solver", decimals=3, flag_sensitive=True,
           defaults=(REPORT,)),
    Column("mass_is_stderr", "1", "standard error of mass_is over the samples"),
    Column("mass_is_ess", "samples", "Kish's effective sample size of mass_is, (Σw)²/Σw² (of 1,000)", decimals=0),
    # sample quality: model samples drawn with the row's solver against the test split
    Column("energy_distance", "data units", "squared energy distance 2E‖X-Y‖ - E‖X-X'‖ - E‖Y-Y'‖ between model "
           "samples (the row's solver) and test points, unbiased; ~0 for a perfect model", goal=LOWEST,
           comparison=DIFFERENCE),
    Column("energy_distance_stderr", "data units", "jackknife standard error of energy_distance"),
    Column("sliced_w2", "data units²", "sliced squared Wasserstein-2 distance between model samples (training "
           "solver) and test points, mean over 128 random unit directions", goal=LOWEST, comparison=DIFFERENCE),
    Column("sliced_w2_stderr", "data units²", "standard error of sliced_w2 over the directions (not the samples)"),
    _nats("reverse_kl", "KL(model || data): mean of log q - log p_data over model samples drawn with the reference "
          "solve, log q from that same solve (datasets with a known density)", goal=LOWEST),
    _stderr("reverse_kl_stderr", "standard error of reverse_kl over the model samples"),
    Column("roundtrip_error", "data units", "mean over test points of ‖x - F(F^-1(x))‖ with the row's solver "
           "(data to base and back, full dynamics with the exact trace)", goal=LOWEST),
    Column("w2", "data units", "exact 2-Wasserstein distance between model samples (the row's solver) and as many "
           "test points (POT's network simplex, squared Euclidean cost; at most 5,000 of each)", goal=LOWEST,
           comparison=DIFFERENCE, label="W2"),
    Column("mmd2", "1", "unbiased squared MMD between model samples and test points, Gaussian kernel at the "
           "median-heuristic bandwidth; ~0 (can be < 0) for a perfect model", goal=LOWEST, comparison=DIFFERENCE,
           decimals=4),
    Column("mmd2_stderr", "1", "jackknife standard error of mmd2", decimals=4),
    Column("mmd_bandwidth", "data units", "the Gaussian kernel's bandwidth: the median pairwise distance of the "
           "pooled samples"),
    Column("c2st_accuracy", "1", "classifier two-sample test: cross-validated accuracy of an MLP telling model "
           "samples from test points; 0.5 = indistinguishable", goal=LOWEST, comparison=DIFFERENCE,
           label="C2ST accuracy"),
    Column("c2st_accuracy_stderr", "1", "standard error of c2st_accuracy over the folds"),
    Column("ks_mean", "1", "two-sample Kolmogorov-Smirnov statistic of each dimension's marginal (model samples "
           "against test points), mean over dimensions", goal=LOWEST, comparison=DIFFERENCE),
    Column("ks_max", "1", "the same, largest over dimensions", goal=LOWEST, comparison=DIFFERENCE),
    Column("path_energy", "data units²", "kinetic energy of the learned flow: mean over model samples of "
           "∫₀¹ ‖v(t, x_t)‖² dt along their paths (the row's solver)", goal=LOWEST),
    Column("path_energy_stderr", "data units²", "standard error of path_energy over the samples"),
    Column("path_energy_normalized", "1", "|path_energy - W2²(N(0, I), data)| / W2²(N(0, I), data): 0 for the "
           "optimal-transport (straight, constant-speed) flow; W2² exact between the paths' base draws and as many "
           "test points", goal=LOWEST, comparison=DIFFERENCE, label="normalized path energy"),
    _outcome("metrics", "the metrics whose columns the row holds (--metrics), comma-separated"),
    _outcome("metrics_note", "metrics that were skipped (the dataset lacks what they need) or failed, with why: "
                             "'name: reason' joined by '; '; their columns are empty"),
    _outcome("valid", "false when nll < entropy by > 2 paired stderr, or mass is off 1 (off mass_ref when the "
                      "grid cannot resolve 1) by > 0.03"),
    _outcome("validity_reason", "why a row is flagged (empty when valid)"),
    _outcome("ref_loose", "true when the reference solve is fixed-step or looser than 1e-6 (--allow-loose-ref): "
                          "nll_ref is then only as exact as that solve"),
    _outcome("model_file", "the trained field in the run folder (models/<cell_id>.safetensors, relative to it); "
                           "empty when none"),
    # work
    _evaluations("nfe_expected_per_solve", "steps x stages for a fixed-grid Runge-Kutta solver, else empty"),
    _evaluations("nfe_forward_mean", "dynamics evaluations per training forward solve, mean over iterations",
                 label="NFE fwd/iter", display_unit="evals", defaults=(REPORT, COMPARE)),
    _evaluations("nfe_forward_max", "the same, maximum over iterations"),
    _evaluations("nfe_backward_mean", "dynamics evaluations per backward pass (non-zero with the adjoint)",
                 label="NFE bwd/iter", display_unit="evals"),
    _evaluations("nfe_backward_max", "the same, maximum over iterations"),
    _evaluations("field_evals_per_iter", "field evaluations per training iteration of an objective that trains "
                 "without solving (flow matching); empty for one that solves (see nfe_forward_mean)"),
    _evaluations("nfe_eval", "dynamics evaluations of the test pass with the row's solver (all chunks)",
                 label="NFE test pass", display_unit="evals", decimals=0, defaults=(SUMMARY,), short="NFE test"),
    _evaluations("nfe_eval_max_chunk", "the most evaluations one test chunk's solve needed"),
    _evaluations("nfe_ref", "dynamics evaluations of the reference test pass (all chunks)"),
    *(column for kind in ("accepted", "rejected") for column in (
        Column(f"steps_{kind}_mean", "steps", f"{kind} steps per test point in the test pass with the row's solver, "
               "mean over the test points (solvers that step each sample on its own, e.g. torchode_dopri5; empty "
               "for one that steps the batch as one)", goal=LOWEST, decimals=1, label=f"{kind} steps/point"),
        Column(f"steps_{kind}_max", "steps", "the same, maximum over the test points (the point that needed the "
               "most)", goal=LOWEST, decimals=0))),
    _evaluations("nfe_sample", "dynamics evaluations of the solve that draws the model samples of the sample "
                 "distances (the row's solver; the samples alone, each evaluation one forward pass of the field)"),
    # time and memory
    _seconds("train_time_s", "wall-clock of the whole training of this row's model (validation passes included; "
             "once per model_key)", label="train time", decimals=1, defaults=(REPORT, SUMMARY), short="train"),
    _seconds("iter_time_median_s", "median wall-clock of one training iteration, warm-up iteration excluded",
             label="median iter", display_unit="ms", scale=1000.0, decimals=1),
    _seconds("eval_time_s", "wall-clock of the test pass with the row's solver", label="eval time", decimals=2),
    _seconds("ref_time_s", "wall-clock of the reference test pass"),
    _seconds("mass_time_s", "wall-clock of the mass grid pass with the row's solver"),
    _seconds("mass_ref_time_s", "wall-clock of the mass grid pass with the reference solve"),
    _seconds("mass_is_time_s", "wall-clock of scoring the model samples with the row's solver for mass_is"),
    _seconds("sample_time_s", "wall-clock of drawing the model samples of the sample distances (the solve of "
             "the samples alone that nfe_sample counts)"),
    _evaluations("nfe_mass", "dynamics evaluations of the mass grid pass with the row's solver (all chunks)"),
    _evaluations("nfe_mass_ref", "dynamics evaluations of the mass grid pass with the reference solve (all chunks)"),
    _evaluations("nfe_mass_is", "dynamics evaluations of scoring mass_is's reference samples with the row's solver"),
    _evaluations("nfe_ref_sample", "dynamics evaluations of the joint reference solve that draws mass_is's and "
                 "reverse_kl's model samples with their log-density"),
    _seconds("ref_sample_time_s", "wall-clock of that joint reference solve"),
    _evaluations("nfe_paths", "dynamics evaluations of the solve of the sample paths' kinetic energy (path_energy)"),
    _seconds("paths_time_s", "wall-clock of that solve"),
    _seconds("cell_time_s", "wall-clock of the whole cell: build, train, evaluate"),
    Column("peak_memory_mib", "MiB", "peak memory during the cell (see memory_kind)", goal=LOWEST,
           label="peak mem", decimals=0, machine=True),
    _outcome("memory_kind", "cuda_max_allocated on a GPU, else process_peak_rss (reset per cell)"),
    Column("host", NO_UNIT, "machine the cell ran on (its worker's; empty when the worker was lost before it "
           "answered)", comparison=None, machine=True),
    Column("executor", NO_UNIT, "executor that ran the cell, with its parameters (--executor)", comparison=None,
           machine=True),
    Column("concurrency", "cells", "cells the executor ran at once (its workers): times from different values "
           "are not comparable", comparison=None, machine=True, decimals=0),
    Column("torch_threads", "threads", "torch threads of the process that ran the cell", comparison=None,
           machine=True, decimals=0),
    Column("torch_threads_reason", NO_UNIT, "how torch_threads was chosen: explicit (process[threads=T]) or auto "
           "(the CPUs the worker may use — affinity, cgroup quota, SLURM_CPUS_PER_TASK — shared by the workers, "
           "fewer when the 1-min load average showed other processes busy), with the figures", comparison=None,
           machine=True),
    # --compile
    Column("compile", NO_UNIT, "training was asked to compile the field with torch.compile (--compile)", BUDGET,
           comparison=None),
    _outcome("compiled", "true when the training iterations ran the field compiled (--compile), false when they "
                         "ran the eager field instead (see compile_note); empty without --compile"),
    _outcome("compile_note", "why --compile trained the eager field (the compile or probe error), one line; empty "
                             "otherwise"),
    _seconds("compile_time_s", "wall-clock of compiling the field and of the probe iteration that compiles it "
             "(--compile): part of train_time_s, of no iteration (not in iter_time_median_s or --time-budget)"),
)
"""Every column cnfbench writes, in row order."""

COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in COLUMNS)
COLUMNS_BY_NAME: dict[str, Column] = {column.name: column for column in COLUMNS}


def columns_in(*groups: str, columns: Iterable[Column] = COLUMNS) -> tuple[str, ...]:
    """The names of the columns of ``groups``, in row order."""
    return tuple(column.name for column in columns if column.group in groups)


def default_metrics(use: str, columns: Iterable[Column] = COLUMNS) -> tuple[str, ...]:
    """The default metrics of table ``use`` (one of :data:`DEFAULT_USES`), in row order.

    ``compare`` never defaults to a machine-dependent metric: two runs from different machines would differ.
    """
    if use not in DEFAULT_USES:
        raise ValueError(f"unknown table {use!r}; valid: {', '.join(DEFAULT_USES)}")
    return tuple(c.name for c in columns if use in c.defaults and not (use == COMPARE and c.machine))


def ordered(row: dict[str, object]) -> dict[str, object]:
    """``row`` with the documented columns first, in documented order, then any extra (plugin) columns."""
    known = {name: row[name] for name in COLUMN_NAMES if name in row}
    extra = {name: value for name, value in row.items() if name not in known}
    return {**known, **extra}


def check_column(column: Any, source: str) -> Column:
    """``column`` unchanged when it is a valid declaration; :class:`ColumnError` naming ``source`` if not."""
    if not isinstance(column, Column):
        raise ColumnError(f"{source} declared {column!r}, which is not a cnfbench.columns.Column")
    where = f"{source} column {column.name!r}"
    problems = []
    if not isinstance(column.name, str) or not column.name or column.name.startswith("_"):
        problems.append("needs a name that does not start with '_'")
    if column.goal is not None and column.goal not in GOALS:
        problems.append(f"goal {column.goal!r} is not one of {', '.join(GOALS)} or None")
    if column.comparison is not None and column.comparison not in COMPARISONS:
        problems.append(f"comparison {column.comparison!r} is not one of {', '.join(COMPARISONS)} or None")
    if column.group not in GROUPS:
        problems.append(f"group {column.group!r} is not one of {', '.join(GROUPS)}")
    if not (isinstance(column.scale, (int, float)) and math.isfinite(column.scale) and column.scale > 0):
        problems.append(f"scale {column.scale!r} is not a positive number")
    if not (isinstance(column.decimals, int) and 0 <= column.decimals <= 12):
        problems.append(f"decimals {column.decimals!r} is not an integer from 0 to 12")
    unknown = [use for use in column.defaults if use not in DEFAULT_USES]
    if unknown:
        problems.append(f"defaults {unknown!r} are not among {', '.join(DEFAULT_USES)}")
    if problems:
        raise ColumnError(f"{where}: " + "; ".join(problems))
    return column


def plugin_columns(pm: Any) -> dict[str, Column]:
    """The columns every plugin of the pluggy manager ``pm`` declares through ``cnfbench_columns``, and those of the
    metrics it returns from ``cnfbench_metrics`` (other than cnfbench's own columns), by name.

    A declaration that is not a valid :class:`Column`, or whose name is one of cnfbench's own columns or is
    declared by two plugins, raises :class:`ColumnError` naming the plugin.
    """
    declared: dict[str, tuple[str, Column]] = {}
    sources = [(impl, impl.function() or ()) for impl in pm.hook.cnfbench_columns.get_hookimpls()]
    for impl in pm.hook.cnfbench_metrics.get_hookimpls():  # a metric's columns are declarations too
        sources.append((impl, [column for cls in impl.function() or () for column in getattr(cls, "columns", ())
                               if getattr(column, "name", None) not in COLUMNS_BY_NAME]))
    for impl, columns in sources:
        plugin = f"plugin {pm.get_name(impl.plugin) or impl.plugin!r}"
        for column in columns:
            column = check_column(column, plugin)
            if column.name in COLUMNS_BY_NAME:
                raise ColumnError(f"{plugin} declares column {column.name!r}, which is one of cnfbench's own")
            if column.name in declared and declared[column.name][0] != plugin:
                raise ColumnError(f"column {column.name!r} is declared twice: by {declared[column.name][0]} and "
                                  f"by {plugin}")
            declared[column.name] = (plugin, column)
    return {name: column for name, (_, column) in declared.items()}


NOTE_SEPARATOR = "; "
"""What separates the metrics in ``metrics_note`` (a metric's own reason has it replaced by ``, ``)."""


def notes_text(notes: Mapping[str, str]) -> str:
    """``metrics_note``: ``name: note`` per metric, in order, joined by ``; ``."""
    return NOTE_SEPARATOR.join(f"{name}: {note}" for name, note in notes.items())


def parse_notes(text: Any) -> dict[str, str]:
    """The notes of :func:`notes_text`, by metric."""
    if not isinstance(text, str) or not text:
        return {}
    notes: dict[str, str] = {}
    for item in text.split(NOTE_SEPARATOR):
        name, _, note = item.partition(": ")
        notes[name] = note
    return notes
