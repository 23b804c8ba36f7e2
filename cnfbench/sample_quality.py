"""Sample-quality distances between model samples and test data: pure functions on tensors, in float64.

Two distances, each with a standard error, compare a model sample ``x``
(``[n, d]``) with a data sample ``y`` (``[m, d]``):

- :func:`energy_distance` — the (squared) energy distance
  ``D² = 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖`` (Székely & Rizzo), which is 0
  exactly when the two distributions are equal. The cross term is the mean
  of all ``n·m`` distances; the within-sample terms are U-statistics (the
  mean over pairs ``i ≠ j``), so the estimate is unbiased: its expectation is
  ``D²`` and, for two samples of one distribution, 0 (it can be negative).
  Its standard error is the two-sample delete-one jackknife:
  ``se² = (n−1)/n Σ_i (D²_(−x_i) − mean)² + (m−1)/m Σ_j (D²_(−y_j) − mean)²``,
  with ``D²_(−x_i)`` the estimate without ``x_i``, computed in closed form from
  the distance matrices' row sums. It is O((n + m)²) in time and memory. In
  the data's units (Euclidean distances).
- :func:`sliced_wasserstein2` — the sliced squared 2-Wasserstein distance
  ``SW²₂ = E_θ W²₂(θ·X, θ·Y)`` over ``projections`` directions ``θ`` drawn
  uniformly on the unit sphere from a seeded generator. For equal sample sizes
  the 1D ``W²₂`` of a projection is exact by sort-and-match:
  ``mean_k (θ·x_(k) − θ·y_(k))²``. Its standard error is the spread over
  directions, ``std_θ / √projections``: it covers the random choice of
  directions, not the sampling noise of ``x`` and ``y`` (two finite samples
  of one distribution give a small positive value, of order 1/n). For a
  pure shift ``Y = X + μ`` of any distribution, ``SW²₂ = E_θ (θ·μ)² = ‖μ‖²/d``.
  In the data's squared units.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _pairs(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().to("cpu", torch.float64)
    y = y.detach().to("cpu", torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"samples must be [n, d] and [m, d]; got {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def energy_distance(x: Tensor, y: Tensor) -> tuple[float, float]:
    """``(D², jackknife standard error)`` of the squared energy distance between samples ``x`` and ``y``.

    ``D² = 2·mean_{i,j} ‖x_i − y_j‖ − mean_{i≠i'} ‖x_i − x_i'‖ − mean_{j≠j'} ‖y_j − y_j'‖`` (unbiased);
    see the module docstring for the jackknife. Needs at least 3 points in each sample.
    """
    x, y = _pairs(x, y)
    n, m = x.shape[0], y.shape[0]
    if n < 3 or m < 3:
        raise ValueError(f"energy distance needs at least 3 points per sample; got {n} and {m}")
    d_xy, d_xx, d_yy = torch.cdist(x, y), torch.cdist(x, x), torch.cdist(y, y)
    d_xx.fill_diagonal_(0.0)
    d_yy.fill_diagonal_(0.0)
    cross_rows, cross_cols = d_xy.sum(dim=1), d_xy.sum(dim=0)  # per x_i, per y_j
    within_x, within_y = d_xx.sum(dim=1), d_yy.sum(dim=1)
    s_xy, s_xx, s_yy = d_xy.sum(), d_xx.sum(), d_yy.sum()
    estimate = 2 * s_xy / (n * m) - s_xx / (n * (n - 1)) - s_yy / (m * (m - 1))
    # delete x_i: its cross row and its row and column of d_xx go; delete y_j likewise
    without_x = 2 * (s_xy - cross_rows) / ((n - 1) * m) - (s_xx - 2 * within_x) / ((n - 1) * (n - 2)) \
        - s_yy / (m * (m - 1))
    without_y = 2 * (s_xy - cross_cols) / (n * (m - 1)) - s_xx / (n * (n - 1)) \
        - (s_yy - 2 * within_y) / ((m - 1) * (m - 2))
    variance = (n - 1) / n * (without_x - without_x.mean()).pow(2).sum() \
        + (m - 1) / m * (without_y - without_y.mean()).pow(2).sum()
    return float(estimate), float(variance.sqrt())


def random_directions(projections: int, dim: int, generator: torch.Generator) -> Tensor:
    """``projections`` directions uniform on the unit sphere of ``R^dim`` (normalized Gaussians), float64."""
    if projections < 2:
        raise ValueError(f"sliced Wasserstein needs at least 2 directions; got {projections}")
    theta = torch.randn(projections, dim, generator=generator, dtype=torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def sliced_wasserstein2(x: Tensor, y: Tensor, projections: int, generator: torch.Generator) -> tuple[float, float]:
    """``(SW²₂, standard error over directions)`` between equal-size samples ``x`` and ``y``.

    Each of ``projections`` unit directions from ``generator`` gives the exact 1D ``W²₂`` of the projected
    samples by sort-and-match; the estimate is their mean, the error their standard deviation / √projections.
    """
    x, y = _pairs(x, y)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"sliced Wasserstein needs two samples of one size; got {x.shape[0]} and {y.shape[0]}")
    theta = random_directions(projections, x.shape[1], generator)
    projected_x = torch.sort(x @ theta.T, dim=0).values  # [n, projections]
    projected_y = torch.sort(y @ theta.T, dim=0).values
    per_direction = (projected_x - projected_y).pow(2).mean(dim=0)
    return float(per_direction.mean()), float(per_direction.std() / math.sqrt(projections))
