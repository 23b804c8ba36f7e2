"""Is a reported likelihood a real one? Mass checks, by importance sampling in any dimension and on 2D grids, and
the validity flag.

A normalized density integrates to 1 and its expected NLL cannot fall below
the data's entropy. For 2D data the harness integrates ``exp(log p)`` over a
grid covering the test data (``mass`` with the cell's solver, ``mass_ref``
with the reference solve); a row is flagged when its ``nll`` is below the
true entropy on the same test samples (by more than two paired standard
errors) or when its ``mass`` is off 1 by more than :data:`MASS_TOLERANCE`.

The reference mass is the grid's own quadrature check: the reference solve
defines a normalized density, so a ``mass_ref`` off 1 means the grid is too
coarse (or too small) to integrate it. Then ``mass`` cannot be judged against
1, and is judged against ``mass_ref`` instead (the same grid, the same
quadrature error): flagged when ``|mass / mass_ref - 1|`` exceeds the
tolerance. :func:`grid_resolution_note` says which grid to use.

In any dimension, ``mass_is`` estimates the same integral by importance
sampling with the reference-solved model as the proposal (see
:mod:`cnfbench.execute`); a row is flagged when it is off 1 by more than
:data:`MASS_TOLERANCE` and by more than :data:`MASS_SIGMAS` standard errors
(on 2D cells only when the grid has not flagged the mass already).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

MASS_SIGMAS = 3.0
"""How many standard errors ``mass_is`` must also be off 1 by before a row is flagged."""

MASS_TOLERANCE = 0.03
"""Largest ``|mass - 1|`` accepted before a row is flagged (grid truncation and quadrature stay well below it)."""

ENTROPY_SIGMAS = 2.0
"""How many paired standard errors below the entropy an ``nll`` must be to be flagged."""

REFERENCE_TOLERANCE = 1e-6
"""Loosest error tolerance a reference solver may have for ``nll_ref`` to count as the field's density."""


def loose_reference(tolerance: float | None) -> bool:
    """Whether a reference solver with this :meth:`~cnfbench.contracts.Solver.error_tolerance` is too loose."""
    return tolerance is None or not tolerance <= REFERENCE_TOLERANCE


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
    mass, mass_ref = row.get("mass"), row.get("mass_ref")
    if mass is not None and not (isinstance(mass, float) and math.isnan(mass)):
        if grid_resolves(mass_ref):
            if not _finite(mass) or abs(mass - 1.0) > MASS_TOLERANCE:
                problems.append(f"the solver's density integrates to {mass:.3f}, not 1 (tolerance "
                                f"{MASS_TOLERANCE})")
        elif not _finite(mass) or abs(mass / mass_ref - 1.0) > MASS_TOLERANCE:
            problems.append(f"the solver's density integrates to {mass:.3f} on a grid where the reference "
                            f"solve's integrates to {mass_ref:.3f} (ratio {mass / mass_ref:.3f}, not 1, tolerance "
                            f"{MASS_TOLERANCE}; the grid is too coarse to resolve 1)")
    if not any("integrates" in problem for problem in problems):
        problems.extend(_importance_sampling_problems(row))
    return (not problems), "; ".join(problems)


def _importance_sampling_problems(row: dict[str, Any]) -> list[str]:
    """The flag of the importance-sampling mass: off 1 by more than the tolerance *and* by more than
    :data:`MASS_SIGMAS` standard errors (so neither noise nor a negligible bias flags a row)."""
    mass, stderr, ess = row.get("mass_is"), row.get("mass_is_stderr"), row.get("mass_is_ess")
    if mass is None or (isinstance(mass, float) and math.isnan(mass)):
        return []
    if not _finite(mass):
        return [f"the solver's density has no finite mass (importance sampling gave {mass})"]
    off = abs(mass - 1.0)
    if off > MASS_TOLERANCE and (not _finite(stderr) or off > MASS_SIGMAS * stderr):
        where = f" ± {stderr:.3f}" if _finite(stderr) else ""
        sample_size = f", effective sample size {ess:.0f}" if _finite(ess) else ""
        return [f"the solver's density integrates to {mass:.3f}{where} by importance sampling{sample_size}, not 1 "
                f"(tolerance {MASS_TOLERANCE} and {MASS_SIGMAS:g} standard errors)"]
    return []


def grid_resolves(mass_ref: Any) -> bool:
    """Whether the grid integrates the reference density to 1 (or there is no reference mass to tell)."""
    return not _finite(mass_ref) or mass_ref <= 0 or abs(mass_ref - 1.0) <= MASS_TOLERANCE


def suggested_grid(resolution: int, mass_ref: float) -> int:
    """Points per axis that should bring the midpoint rule's error (∝ 1/resolution²) within a third of the tolerance."""
    error = abs(mass_ref - 1.0)
    return max(80, math.ceil(resolution * math.sqrt(error / (MASS_TOLERANCE / 3))))


def grid_resolution_note(row: dict[str, Any]) -> str:
    """A warning when the mass grid of a finished row is too coarse to resolve a density, else ``""``."""
    mass_ref, resolution = row.get("mass_ref"), row.get("mass_grid")
    if grid_resolves(mass_ref) or not _finite(resolution) or resolution <= 0:
        return ""
    return (f"the {int(resolution)}x{int(resolution)} mass grid integrates the reference density to {mass_ref:.3f}, "
            f"not 1: too coarse to check mass against 1, so mass was judged against mass_ref; use --mass-grid "
            f"{suggested_grid(int(resolution), mass_ref)} or more")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
