"""Built-in metrics: every number cnfbench measures on a trained cell, each a :class:`~cnfbench.contracts.Metric`.

Grouped as ``--metrics`` accepts them (a group name selects all its metrics):

* ``likelihood`` — ``nll`` (the row's solver), ``nll_ref`` (the reference solve), ``logp_error`` (their
  per-sample gap: the solver's error on the test log-density);
* ``density`` (datasets with a known density) — ``entropy`` (the true entropy on the same test samples and the
  paired excess NLL) and ``reverse_kl``;
* ``validity`` — ``mass`` and ``mass_ref`` (2-D grid integrals with the row's solver and the reference solve)
  and ``mass_is`` (importance sampling, any dimension);
* ``samples`` — distances from model samples (the row's solver) to the test split: ``energy_distance``,
  ``sliced_w2``, ``w2`` (exact, POT), ``mmd``, ``c2st``, ``marginal_ks``;
* ``flow`` — ``path_energy`` (the kinetic energy of the learned paths, and normalized as flow-matching papers
  report it);
* ``inverse`` — ``roundtrip`` (data to base and back);
* ``plots`` — ``density_plot`` (the 2-D density plots' grids and samples; no column).

The default set (``cnfbench run`` without ``--metrics``) is what the summary and the validity flag read:
``nll``, ``nll_ref``, ``logp_error``, ``entropy``, ``reverse_kl``, ``mass`` and ``mass_is``: the ``mass``
grid with the row's solver only, so that a default 2-D cell does not pay for the reference solve on
6,400 grid points (``mass_ref``, which tells whether the grid resolves a density's mass; ``validity``
adds it).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cnfbench.columns import COLUMNS_BY_NAME, Column
from cnfbench.contracts import NEEDS_2D, NEEDS_DENSITY, Metric, MetricInputs, split_generator
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param
from cnfbench.sample_quality import (
    W2_EXACT_DEFAULT,
    W2_MAX_SAMPLES,
    c2st_accuracy,
    energy_distance,
    marginal_ks,
    mmd_rbf,
    path_energy_normalized,
    sliced_wasserstein2,
    wasserstein2_exact,
)

QUALITY_PROJECTIONS = 128
"""Random unit directions of the sliced Wasserstein-2 distance."""


def _columns(*names: str) -> tuple[Column, ...]:
    return tuple(COLUMNS_BY_NAME[name] for name in names)


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else math.nan


def _likelihood(passed: Any, inputs: MetricInputs, names: tuple[str, str, str, str]) -> dict[str, Any]:
    """NLL, its standard error, per dimension, and bits per dimension (a discrete dataset) of one pass."""
    nll, offset = passed.nll, inputs.discrete_nll_offset
    bits = (nll + offset) / (inputs.dim * math.log(2)) if offset is not None else math.nan
    return dict(zip(names, (nll, passed.nll_stderr, nll / inputs.dim, bits), strict=True))


class SolverNLL(Metric):
    name = "nll"
    description = "test NLL with the row's solver and the exact trace (per sample, per dimension, bits/dim)"
    group = "likelihood"
    columns = _columns("nll", "nll_stderr", "nll_per_dim", "bits_per_dim_solver")
    needs = ("eval",)
    default = True

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        return _likelihood(inputs["eval"], inputs, ("nll", "nll_stderr", "nll_per_dim", "bits_per_dim_solver"))


class ReferenceNLL(Metric):
    name = "nll_ref"
    description = "test NLL with the reference solve: the density the trained field defines"
    group = "likelihood"
    columns = _columns("nll_ref", "nll_ref_stderr", "nll_ref_per_dim", "bits_per_dim")
    needs = ("ref",)
    default = True

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        return _likelihood(inputs["ref"], inputs, ("nll_ref", "nll_ref_stderr", "nll_ref_per_dim", "bits_per_dim"))


class LogDensityError(Metric):
    name = "logp_error"
    description = "the row's solver's error on the test log-density against the reference solve (mean, max)"
    group = "likelihood"
    columns = _columns("logp_error_mean", "logp_error_max")
    needs = ("eval", "ref")
    default = True

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        error = (inputs["eval"].log_prob - inputs["ref"].log_prob).abs()
        return {"logp_error_mean": float(error.mean()), "logp_error_max": float(error.max())}


class Entropy(Metric):
    """True entropy on the test split, and the NLLs' paired gaps to it.

    Computing the entropy on the very samples the NLLs average over makes ``nll - entropy`` and
    ``excess_nll = nll_ref - entropy`` paired estimates of a KL divergence, with far smaller standard errors
    than either alone.
    """

    name = "entropy"
    description = "true entropy on the test split and the paired excess NLL (datasets with a known density)"
    group = "density"
    columns = _columns("entropy", "entropy_stderr", "excess_nll", "excess_nll_stderr", "nll_minus_entropy_stderr")
    needs = ("test", "data_density", "eval", "ref")
    requires = (NEEDS_DENSITY,)
    default = True

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        true_log_prob = inputs["data_density"](inputs["test"].to("cpu")).to(torch.float64)
        entropy, entropy_stderr = _mean_and_stderr(-true_log_prob)
        excess, excess_stderr = _mean_and_stderr(true_log_prob - inputs["ref"].log_prob)
        return {"entropy": entropy, "entropy_stderr": entropy_stderr, "excess_nll": excess,
                "excess_nll_stderr": excess_stderr,
                "nll_minus_entropy_stderr": _mean_and_stderr(true_log_prob - inputs["eval"].log_prob)[1]}


class ReverseKL(Metric):
    name = "reverse_kl"
    description = "KL(model || data) over 1,000 model samples drawn with the reference solve, with their density"
    group = "density"
    columns = _columns("reverse_kl", "reverse_kl_stderr")
    needs = ("ref_sample", "data_density")
    requires = (NEEDS_DENSITY,)
    default = True

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        drawn = inputs["ref_sample"]
        log_data = inputs["data_density"](drawn.x.to("cpu", torch.float32)).to(torch.float64)
        kl, stderr = _mean_and_stderr(drawn.log_q - log_data)
        return {"reverse_kl": kl, "reverse_kl_stderr": stderr}


class GridMass(Metric):
    name = "mass"
    description = "integral of the row's solver's density over a 2-D grid covering the test data"
    group = "validity"
    columns = _columns("mass")
    needs = ("grid",)
    requires = (NEEDS_2D,)
    default = True

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        return {"mass": inputs["grid"].mass()}


class ReferenceGridMass(Metric):
    name = "mass_ref"
    description = "the same integral with the reference solve: whether the grid resolves a density's mass"
    group = "validity"
    columns = _columns("mass_ref")
    needs = ("grid_ref",)
    requires = (NEEDS_2D,)

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        return {"mass_ref": inputs["grid_ref"].mass()}


class ImportanceSampledMass(Metric):
    """The mass of the row's solver's density by importance sampling, in any dimension.

    The model samples ``x`` drawn with the reference solve come with their reference log-density ``log q(x)``;
    the row's solver scores them, ``log p(x)``. With weights ``w = exp(log p - log q)``, ``mass_is = mean(w)``
    estimates ``∫ p`` (1 for a normalized density), with the standard error of the mean and Kish's effective
    sample size ``(Σw)² / Σw²``.
    """

    name = "mass_is"
    description = "integral of the row's solver's density by importance sampling (any dimension)"
    group = "validity"
    columns = _columns("mass_is", "mass_is_stderr", "mass_is_ess")
    needs = ("ref_sample", "ref_sample_eval")
    default = True

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        weights = torch.exp(inputs["ref_sample_eval"].log_prob - inputs["ref_sample"].log_q)
        mass, stderr = _mean_and_stderr(weights)
        total, squares = float(weights.sum()), float(weights.pow(2).sum())
        ess = total**2 / squares if squares > 0 and math.isfinite(squares) else math.nan
        return {"mass_is": mass, "mass_is_stderr": stderr, "mass_is_ess": ess}


def _paired(inputs: MetricInputs, most: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model samples and as many test points (the first ones), at most ``most`` of each."""
    samples, test = inputs["sample"].x, inputs["test"]
    n = min(samples.shape[0], test.shape[0], most or samples.shape[0])
    return samples[:n], test[:n]


class EnergyDistance(Metric):
    name = "energy_distance"
    description = "squared energy distance between model samples (the row's solver) and test points, unbiased"
    group = "samples"
    columns = _columns("energy_distance", "energy_distance_stderr")
    needs = ("sample", "test")

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        value, stderr = energy_distance(*_paired(inputs))
        return {"energy_distance": value, "energy_distance_stderr": stderr}


class SlicedW2(Metric):
    name = "sliced_w2"
    description = "sliced squared Wasserstein-2 distance between model samples and test points (128 directions)"
    group = "samples"
    columns = _columns("sliced_w2", "sliced_w2_stderr")
    needs = ("sample", "test")

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        value, stderr = sliced_wasserstein2(*_paired(inputs), QUALITY_PROJECTIONS,
                                            split_generator(inputs.seed, "model/quality_projections"))
        return {"sliced_w2": value, "sliced_w2_stderr": stderr}


class ExactW2(Metric):
    name = "w2"
    description = (f"exact 2-Wasserstein distance between model samples and test points (POT's network simplex; "
                   f"at most {W2_MAX_SAMPLES:,} of each)")
    group = "samples"
    columns = _columns("w2")
    needs = ("sample", "test")
    libraries = ("pot",)
    params = (Param("samples", "int", W2_EXACT_DEFAULT, "model samples and test points (the first ones) compared, "
                    "at most the test split (10,000 in 2-D: about 30 s of POT on one core)", minimum=2,
                    maximum=W2_MAX_SAMPLES, added=True),)

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        return {"w2": math.sqrt(max(wasserstein2_exact(*_paired(inputs, int(self.config["samples"])),
                                                       max_samples=W2_MAX_SAMPLES), 0.0))}


class GaussianMMD(Metric):
    name = "mmd"
    description = "unbiased squared MMD, Gaussian kernel at the median-heuristic bandwidth, with a jackknife stderr"
    group = "samples"
    columns = _columns("mmd2", "mmd2_stderr", "mmd_bandwidth")
    needs = ("sample", "test")

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        value, stderr, bandwidth = mmd_rbf(*_paired(inputs))
        return {"mmd2": value, "mmd2_stderr": stderr, "mmd_bandwidth": bandwidth}


class ClassifierTwoSampleTest(Metric):
    name = "c2st"
    description = "classifier two-sample test: cross-validated accuracy telling model samples from test points " \
                  "(0.5: indistinguishable)"
    group = "samples"
    params = (Param("folds", "int", 5, "cross-validation folds", minimum=2, maximum=20),
              Param("samples", "int", 1000, "model samples and test points used (at most; each side)",
                    minimum=20, maximum=20000))
    columns = _columns("c2st_accuracy", "c2st_accuracy_stderr")
    needs = ("sample", "test")
    libraries = ("scikit-learn",)

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        accuracy, stderr = c2st_accuracy(*_paired(inputs, int(self.config.get("samples", 1000))),
                                         inputs.generator("folds"), folds=int(self.config.get("folds", 5)))
        return {"c2st_accuracy": accuracy, "c2st_accuracy_stderr": stderr}


class MarginalKS(Metric):
    name = "marginal_ks"
    description = "two-sample Kolmogorov-Smirnov statistic of each dimension's marginal (mean and max over " \
                  "dimensions)"
    group = "samples"
    columns = _columns("ks_mean", "ks_max")
    needs = ("sample", "test")

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        mean, most, _ = marginal_ks(*_paired(inputs))
        return {"ks_mean": mean, "ks_max": most}


class PathEnergy(Metric):
    name = "path_energy"
    description = "kinetic energy of the learned flow's paths, and normalized against W2² of source and data"
    group = "flow"
    columns = _columns("path_energy", "path_energy_stderr", "path_energy_normalized")
    needs = ("paths", "test")
    params = (Param("samples", "int", W2_EXACT_DEFAULT, "paths drawn, and source and test points of the W2² it is "
                    "normalized by", minimum=2, maximum=W2_MAX_SAMPLES, added=True),)

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        paths, test = inputs["paths"], inputs["test"]
        energy, stderr = _mean_and_stderr(paths.energy[: int(self.config["samples"])])
        columns: dict[str, Any] = {"path_energy": energy, "path_energy_stderr": stderr}
        n = min(paths.base.shape[0], test.shape[0], int(self.config["samples"]))
        columns["path_energy_normalized"] = path_energy_normalized(
            energy, wasserstein2_exact(paths.base[:n], test[:n]))
        return columns


class RoundTrip(Metric):
    """OT-Flow's inverse-consistency check: ``‖x − F(F⁻¹(x))‖`` per test point, with the row's solver.

    ``F⁻¹(x)`` is the test pass's own image of each point at t=0 (the ``eval`` input keeps it), pushed forward
    again with the full CNF dynamics (the state and its divergence integral, as the test pass solves them).
    """

    name = "roundtrip"
    description = "mean over test points of ‖x - F(F^-1(x))‖ with the row's solver"
    group = "inverse"
    columns = _columns("roundtrip_error")
    needs = ("eval", "test", "model")

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        test = inputs["test"]
        x1, _ = inputs["model"].push_forward(inputs["eval"].base, with_log_density=True)
        return {"roundtrip_error": float((test - x1).to("cpu", torch.float64).norm(dim=1).mean())}


class DensityPlot(Metric):
    name = "density_plot"
    description = "the 2-D density plots' data: both grids' log-densities and 500 model samples (no column)"
    group = "plots"
    columns = ()
    needs = ("grid", "grid_ref", "sample", "test")
    requires = (NEEDS_2D,)

    def compute(self, inputs: MetricInputs) -> dict[str, Any]:
        return {}  # the plan keeps the plots' arrays whenever their inputs were computed


BUILT_IN_METRICS: tuple[type[Metric], ...] = (
    SolverNLL, ReferenceNLL, LogDensityError, Entropy, ReverseKL, GridMass, ReferenceGridMass, ImportanceSampledMass,
    EnergyDistance, SlicedW2, ExactW2, GaussianMMD, ClassifierTwoSampleTest, MarginalKS, PathEnergy, RoundTrip,
    DensityPlot,
)


@hookimpl
def cnfbench_metrics() -> list[type[Metric]]:
    return list(BUILT_IN_METRICS)
