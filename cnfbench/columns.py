"""The columns of ``cells.parquet``: their order, unit and meaning, in one place.

The README's "What the numbers mean" table is checked against this list by
the tests, so a new column cannot ship undocumented.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    unit: str
    meaning: str


COLUMNS: tuple[Column, ...] = (
    # identity
    Column("cell_id", "—", "16-hex-digit hash of the cell's fully resolved spec; equal specs, equal ids"),
    Column("dataset", "—", "dataset name"),
    Column("field", "—", "vector field name"),
    Column("solver", "—", "training ODE solver name"),
    Column("trace", "—", "training trace estimator name"),
    Column("seed", "—", "seed of the data splits, the initialisation, the batch order and the trace noise"),
    Column("dataset_spec", "—", "dataset with every parameter, e.g. 8gaussians[n_train=20000,...]"),
    Column("field_spec", "—", "field with every parameter"),
    Column("solver_spec", "—", "training solver with every parameter"),
    Column("trace_spec", "—", "training trace estimator with every parameter"),
    Column("iterations", "—", "training iterations requested"),
    Column("batch_size", "samples", "training batch size"),
    Column("lr", "—", "Adam learning rate"),
    Column("max_nfe", "evaluations", "dynamics evaluations allowed per solve (empty: unlimited)"),
    Column("eval_trace_spec", "—", "trace estimator of every reported NLL (exact)"),
    Column("ref_solver_spec", "—", "reference solve behind nll_ref"),
    Column("ref_dtype", "—", "floating-point type of the reference solve"),
    Column("eval_batch_size", "samples", "test samples per evaluation solve"),
    Column("mass_grid", "points per axis", "resolution of the 2D mass check (0: off)"),
    Column("device", "—", "torch device the cell ran on"),
    # outcome
    Column("status", "—", "done, diverged, budget, timeout, error, interrupted or skipped"),
    Column("reason", "—", "one line saying why a cell did not finish (empty when done)"),
    Column("iterations_done", "—", "training iterations completed"),
    Column("n_params", "parameters", "trainable parameters of the field"),
    # likelihood
    Column("final_train_loss", "nats/sample",
           "training loss (batch NLL with the training trace) at the last iteration"),
    Column("nll", "nats/sample", "test NLL with the training solver and the exact trace: what this pipeline reports"),
    Column("nll_stderr", "nats/sample", "standard error of nll over the test samples"),
    Column("nll_ref", "nats/sample", "test NLL of the same field with the reference solve: the density it defines"),
    Column("nll_ref_stderr", "nats/sample", "standard error of nll_ref over the test samples"),
    Column("entropy", "nats/sample", "true entropy of the data: mean of -log p_data over the same test samples"),
    Column("entropy_stderr", "nats/sample", "standard error of entropy over the test samples"),
    Column("excess_nll", "nats/sample",
           "nll_ref - entropy: a paired estimate of KL(data || model), >= 0 in expectation"),
    Column("excess_nll_stderr", "nats/sample", "paired standard error of excess_nll"),
    Column("nll_minus_entropy_stderr", "nats/sample", "paired standard error of nll - entropy (used by the flag)"),
    Column("mass", "1", "integral of the training solver's density over a grid covering the test data (2D only)"),
    Column("mass_ref", "1", "the same integral with the reference solve (2D only); 1 for a true density"),
    Column("valid", "—", "false when nll < entropy by > 2 paired stderr, or mass is off 1 (off mass_ref when the "
                         "grid cannot resolve 1) by > 0.03"),
    Column("validity_reason", "—", "why a row is flagged (empty when valid)"),
    Column("ref_loose", "—", "true when the reference solve is fixed-step or looser than 1e-6 (--allow-loose-ref): "
                            "nll_ref is then only as exact as that solve"),
    # work
    Column("nfe_expected_per_solve", "evaluations", "steps x stages for a fixed-grid Runge-Kutta solver, else empty"),
    Column("nfe_forward_mean", "evaluations", "dynamics evaluations per training forward solve, mean over iterations"),
    Column("nfe_forward_max", "evaluations", "the same, maximum over iterations"),
    Column("nfe_backward_mean", "evaluations", "dynamics evaluations per backward pass (non-zero with the adjoint)"),
    Column("nfe_backward_max", "evaluations", "the same, maximum over iterations"),
    Column("nfe_eval", "evaluations", "dynamics evaluations of the test pass with the training solver (all chunks)"),
    Column("nfe_eval_max_chunk", "evaluations", "the most evaluations one test chunk's solve needed"),
    Column("nfe_ref", "evaluations", "dynamics evaluations of the reference test pass (all chunks)"),
    # time and memory
    Column("train_time_s", "s", "wall-clock of the whole training"),
    Column("iter_time_median_s", "s", "median wall-clock of one training iteration, warm-up iteration excluded"),
    Column("eval_time_s", "s", "wall-clock of the test pass with the training solver"),
    Column("ref_time_s", "s", "wall-clock of the reference test pass"),
    Column("mass_time_s", "s", "wall-clock of the mass grid pass with the training solver"),
    Column("mass_ref_time_s", "s", "wall-clock of the mass grid pass with the reference solve"),
    Column("cell_time_s", "s", "wall-clock of the whole cell: build, train, evaluate"),
    Column("peak_memory_mib", "MiB", "peak memory during the cell (see memory_kind)"),
    Column("memory_kind", "—", "cuda_max_allocated on a GPU, else process_peak_rss (reset per cell)"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in COLUMNS)


def ordered(row: dict[str, object]) -> dict[str, object]:
    """``row`` with the documented columns first, in documented order, then any extra (plugin) columns."""
    known = {name: row[name] for name in COLUMN_NAMES if name in row}
    extra = {name: value for name, value in row.items() if name not in known}
    return {**known, **extra}
