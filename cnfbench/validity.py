"""Is a reported likelihood a real one? Mass checks on 2D grids and the validity flag.

A normalized density integrates to 1 and its expected NLL cannot fall below
the data's entropy. For 2D data the harness integrates ``exp(log p)`` over a
grid covering the test data (``mass`` with the training solver, ``mass_ref``
with the reference solve); a row is flagged when its ``nll`` is below the
true entropy on the same test samples (by more than two paired standard
errors) or when its ``mass`` is off 1 by more than :data:`MASS_TOLERANCE`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

MASS_TOLERANCE = 0.03
"""Largest ``|mass - 1|`` accepted before a row is flagged (grid truncation and quadrature stay well below it)."""

ENTROPY_SIGMAS = 2.0
"""How many paired standard errors below the entropy an ``nll`` must be to be flagged."""

GRID_PADDING = 0.25
"""Fraction of the data's extent added on every side of the integration box."""


def mass_grid(data: Tensor, resolution: int) -> tuple[Tensor, float]:
    """Cell centres of a ``resolution x resolution`` grid over the padded bounding box of 2D ``data``.

    Returns the points ``[resolution**2, 2]`` (on ``data``'s device and dtype) and the area of one cell.
    """
    low = data.min(dim=0).values.to(torch.float64)
    high = data.max(dim=0).values.to(torch.float64)
    pad = GRID_PADDING * (high - low).max()
    low, high = low - pad, high + pad
    width = (high - low) / resolution
    axes = [low[i] + width[i] * (torch.arange(resolution, dtype=torch.float64) + 0.5) for i in range(2)]
    xs, ys = torch.meshgrid(axes[0], axes[1], indexing="ij")
    points = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).to(device=data.device, dtype=data.dtype)
    return points, float(width[0] * width[1])


def integrate_mass(log_prob: Tensor, cell_area: float) -> float:
    """Midpoint-rule integral of ``exp(log_prob)`` over the grid (non-finite values count as 0 or inf)."""
    values = log_prob.to(torch.float64)
    if torch.isnan(values).any():
        return math.nan
    return float(torch.exp(values).sum() * cell_area)


def validity(row: dict[str, Any]) -> tuple[bool, str]:
    """``(valid, reason)`` for a finished row: below-entropy NLLs and wrong masses are flagged."""
    problems = []
    nll, entropy, gap_stderr = row.get("nll"), row.get("entropy"), row.get("nll_minus_entropy_stderr")
    if _finite(nll) and _finite(entropy):
        margin = ENTROPY_SIGMAS * gap_stderr if _finite(gap_stderr) else 0.0
        if nll < entropy - margin:
            problems.append(f"nll {nll:.3f} is below the true entropy {entropy:.3f} nats on the same test samples "
                            f"(by {entropy - nll:.3f}, paired stderr {gap_stderr:.3f}): not a normalized density")
    mass = row.get("mass")
    if mass is not None and not (isinstance(mass, float) and math.isnan(mass)):
        if not _finite(mass) or abs(mass - 1.0) > MASS_TOLERANCE:
            problems.append(f"the training solver's density integrates to {mass:.3f}, not 1 (tolerance "
                            f"{MASS_TOLERANCE})")
    return (not problems), "; ".join(problems)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
