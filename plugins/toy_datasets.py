"""Built-in datasets: FFJORD's eight 2D toy distributions, the S curve, and a Gaussian mixture family.

The 2D toys reproduce the shapes and scales of ``lib/toy_data.py`` in FFJORD
(Grathwohl, Chen et al., 2019) with torch ops, so every draw is seeded by the
``torch.Generator`` passed to :meth:`sample` and always returns exactly ``n``
rows. ``8gaussians``, ``checkerboard`` and ``gaussian_mixture`` also know their
exact log-density and offer a Monte-Carlo entropy estimate.

The 2D data of Tong et al.'s conditional flow matching papers (TMLR 2024,
"Improving and generalizing flow-based generative models with minibatch optimal
transport"; SF2M, AISTATS 2024), made in their code
(``runner/src/datamodules/distribution_datamodule.py``) by scikit-learn and
torchdyn, are drawn in distribution by ``moons[noise=0.05,layout=tong]``,
``scurve`` (at its defaults) and ``8gaussians[radius=5,std=1,counts=balanced]``.
Parameters added to ``moons`` and ``8gaussians`` default to the FFJORD draws,
bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor

from cnfbench.contracts import SPLIT_PARAMS, SampledDataset
from cnfbench.hookspecs import hookimpl
from cnfbench.params import Param, resolve_params

_TWO_PI = 2.0 * math.pi


class ToyDataset(SampledDataset):
    """A sampled dataset whose missing parameters are filled with their declared defaults (2D unless overridden)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**resolve_params(f"dataset {self.name!r}", self.params, params))

    @property
    def dim(self) -> int:
        return 2


class KnownDensity(ToyDataset):
    """A toy dataset whose :meth:`log_prob` is exact."""

    @property
    def has_density(self) -> bool:
        return True

    @abstractmethod
    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density in nats of ``x`` ``[N, D]``, shape ``[N]``."""

    def entropy_estimate(self, n: int, generator: torch.Generator) -> tuple[float, float]:
        """Monte-Carlo differential entropy in nats and its standard error, from ``n >= 2`` fresh samples."""
        if n < 2:
            raise ValueError("entropy_estimate needs n >= 2 samples")
        neg_log_prob = -self.log_prob(self.sample(n, generator).to(torch.float64))
        return neg_log_prob.mean().item(), (neg_log_prob.std() / math.sqrt(n)).item()


def _uniform(n: int, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _normal(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def _circle(count: int, radius: float, endpoint: bool = False, stop: float = _TWO_PI) -> Tensor:
    """``count`` points at evenly spaced angles in ``[0, stop)`` (``[0, stop]`` with ``endpoint``)."""
    if endpoint:
        angles = torch.linspace(0.0, stop, count, dtype=torch.float64)
    else:
        angles = torch.arange(count, dtype=torch.float64) * (stop / max(count, 1))
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1)


def _shuffle(x: Tensor, generator: torch.Generator) -> Tensor:
    return x[torch.randperm(x.shape[0], generator=generator)]


def _param_default(component: ToyDataset, name: str) -> Any:
    return next(param.default for param in component.params if param.name == name)


def _isotropic_mixture_log_prob(x: Tensor, means: Tensor, std: float) -> Tensor:
    """Log-density of an equal-weight mixture of ``N(mean_k, std^2 I)``, computed in float64, in ``x``'s dtype."""
    points = x.to(torch.float64)
    count, dim = means.shape
    normalizer = math.log(count) + dim * (math.log(std) + 0.5 * math.log(_TWO_PI))
    rows = max(1, (1 << 22) // (count * dim))
    parts = []
    for chunk in points.split(rows):
        squared = (chunk[:, None, :] - means[None, :, :]).pow(2).sum(-1)
        parts.append(torch.logsumexp(-0.5 * squared / std**2, dim=1) - normalizer)
    return torch.cat(parts).to(x.dtype if x.is_floating_point() else torch.float64)


class Swissroll(ToyDataset):
    """FFJORD's swissroll: ``make_swiss_roll(noise=1.0)[:, [0, 2]] / 5``."""

    name = "swissroll"
    description = "2D swiss roll: spiral t(cos t, sin t)/5, t in [1.5pi, 4.5pi] (radius 0.94..2.83), noise std 0.2"
    params = (*SPLIT_PARAMS,)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        t = 1.5 * math.pi * (1.0 + 2.0 * _uniform(n, generator))
        roll = t[:, None] * torch.stack([t.cos(), t.sin()], dim=1)
        return ((roll + _normal((n, 2), generator)) / 5.0).to(torch.float32)


class Circles(ToyDataset):
    """FFJORD's circles: ``make_circles(factor=0.5, noise=0.08) * 3``."""

    name = "circles"
    description = "2D two concentric circles of radius 3 and 1.5 (half the points each), noise std 0.24"
    params = (*SPLIT_PARAMS,)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        outer = n // 2
        points = torch.cat([_circle(outer, 1.0), _circle(n - outer, 0.5)])
        points = _shuffle(points, generator) + 0.08 * _normal((n, 2), generator)
        return (3.0 * points).to(torch.float32)


class Rings(ToyDataset):
    """FFJORD's rings: four evenly spaced circles of radius 3, 2.25, 1.5 and 0.75, shuffled, then noise 0.08."""

    name = "rings"
    description = "2D four concentric rings of radius 3, 2.25, 1.5, 0.75 (a quarter of the points each), noise std 0.08"
    params = (*SPLIT_PARAMS,)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        quarter = n // 4
        counts = (quarter, quarter, quarter, n - 3 * quarter)
        rings = [_circle(count, radius) for count, radius in zip(counts, (1.0, 0.75, 0.5, 0.25), strict=True)]
        points = _shuffle(3.0 * torch.cat(rings), generator)
        return (points + 0.08 * _normal((n, 2), generator)).to(torch.float32)


class Moons(ToyDataset):
    """sklearn's ``make_moons(noise=noise) * 2`` plus ``[-1, -0.2]`` (``layout=ffjord``) or ``[-1, 0]`` (``tong``).

    scikit-learn's generator: ``n // 2`` upper points ``(cos a, sin a)`` and ``n - n // 2`` lower points
    ``(1 - cos a, 1 - sin a - 0.5)``, each half at ``linspace(0, pi)`` angles, shuffled, plus
    ``N(0, noise^2 I)``; then doubled and shifted. The defaults (``noise=0.1``, ``layout=ffjord``) are FFJORD's
    moons (``lib/toy_data.py``: ``make_moons(noise=0.1) * 2 + [-1, -0.2]``); ``noise=0.05`` with
    ``layout=tong`` is the moons of Tong et al.'s conditional flow matching code (``SKLearnDataModule``:
    ``make_moons(noise=0.05) * 2``, then ``x[:, 0] -= 1``).
    """

    name = "moons"
    description = ("2D two interleaved half circles of radius 2 (sklearn make_moons x2) plus [-1, -0.2] "
                   "(layout=ffjord, FFJORD: x in [-3, 3], y in [-1.2, 1.8]) or [-1, 0] (layout=tong, Tong et al.'s "
                   "CFM code), noise std 2*noise (0.2)")
    params = (
        *SPLIT_PARAMS,
        Param("noise", "float", 0.1, "std of sklearn's noise, added before the x2 scaling (FFJORD 0.1, "
              "Tong et al. 0.05)", minimum=0.0, added=True),
        Param("layout", "str", "ffjord", "shift after the x2 scaling: ffjord [-1, -0.2], tong [-1, 0]",
              choices=("ffjord", "tong"), added=True),
    )

    _SHIFTS = {"ffjord": (-1.0, -0.2), "tong": (-1.0, 0.0)}

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        outer = n // 2
        upper = _circle(outer, 1.0, endpoint=True, stop=math.pi)
        lower = torch.tensor([1.0, 0.5], dtype=torch.float64) - _circle(n - outer, 1.0, endpoint=True, stop=math.pi)
        points = _shuffle(torch.cat([upper, lower]), generator)  # shuffled, then noised, as sklearn does
        points = points + float(self.config["noise"]) * _normal((n, 2), generator)
        shift = torch.tensor(self._SHIFTS[self.config["layout"]], dtype=torch.float64)
        return (2.0 * points + shift).to(torch.float32)


class EightGaussians(KnownDensity):
    """Eight equal isotropic Gaussians ``N(radius c_k, std^2 I)``, ``c_k`` the 8 unit compass directions.

    At the defaults this is FFJORD's 8gaussians, drawn with its arithmetic ``(N(0, 0.5^2 I) + 4 c_k) / 1.414``
    (so ``radius`` = 4/1.414 and ``std`` = 0.5/1.414), each row's component chosen uniformly at random
    (``counts=multinomial``). ``counts=balanced`` gives every component ``n // 8`` rows and ``n % 8`` distinct
    components, chosen at random, one row more, in random row order. ``radius=5,std=1,counts=balanced`` is
    torchdyn's ``generate_gaussians(n_gaussians=8, radius=5, std_gaussians=1)`` as Tong et al.'s conditional
    flow matching code draws it (``TorchDynDataModule`` "gaussians"): means at angles ``k pi / 4``, exactly
    ``N // 8`` points each. Differences: torchdyn returns its rows component by component and drops ``N % 8``,
    the CFM code balances the pooled ``N`` and then splits it at random, while here every split is balanced and
    shuffled on its own; torchdyn's ``noise=1e-4`` is one ``N(0, 1e-8 I)`` offset per component (a shift of the
    whole component, shared by its points), which this leaves out. Each row's density is the equal mixture
    whatever ``counts`` says, so :meth:`log_prob` is exact for every setting.
    """

    name = "8gaussians"
    description = ("2D mixture of 8 equal Gaussians, means on a circle of radius `radius` (4/1.414 = 2.83) in the "
                   "8 compass directions, std `std` (0.5/1.414 = 0.354); counts=balanced gives each n//8 rows")
    params = (
        *SPLIT_PARAMS,
        Param("radius", "float", 4.0 / 1.414, "distance of each component mean from the origin (FFJORD 4/1.414, "
              "Tong et al. 5)", minimum=0.0, added=True),
        Param("std", "float", 0.5 / 1.414, "isotropic standard deviation of each component (FFJORD 0.5/1.414, "
              "Tong et al. 1)", minimum=1e-6, added=True),
        Param("counts", "str", "multinomial", "rows per component: multinomial (each row picks one at random, "
              "FFJORD) or balanced (n // 8 each, the n % 8 left over to distinct random ones, torchdyn)",
              choices=("multinomial", "balanced"), added=True),
    )

    _COUNT = 8
    _SCALE = 4.0
    _STD = 0.5
    _DIVISOR = 1.414

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        h = 1.0 / math.sqrt(2.0)
        self.directions = torch.tensor(
            [(1, 0), (-1, 0), (0, 1), (0, -1), (h, h), (h, -h), (-h, h), (-h, -h)], dtype=torch.float64
        )
        self.centers = self._SCALE * self.directions
        # FFJORD's own arithmetic at the default radius and std, so that the default draws never change.
        self._ffjord = self.config["radius"] == _param_default(self, "radius") and (
            self.config["std"] == _param_default(self, "std"))

    @property
    def means(self) -> Tensor:
        """Component means ``[8, 2]`` float64 (FFJORD's centers / 1.414 at the default radius)."""
        if self.config["radius"] == _param_default(self, "radius"):
            return self.centers / self._DIVISOR
        return float(self.config["radius"]) * self.directions

    @property
    def component_std(self) -> float:
        return float(self.config["std"])

    def _components(self, n: int, generator: torch.Generator) -> Tensor:
        if self.config["counts"] == "multinomial":
            return torch.randint(0, self._COUNT, (n,), generator=generator)
        balanced = torch.arange(self._COUNT).repeat(n // self._COUNT)
        extra = torch.randperm(self._COUNT, generator=generator)[: n % self._COUNT]
        return _shuffle(torch.cat([balanced, extra]), generator)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        noise = _normal((n, 2), generator)
        index = self._components(n, generator)
        if self._ffjord:
            return ((self._STD * noise + self.centers[index]) / self._DIVISOR).to(torch.float32)
        return (self.means[index] + self.component_std * noise).to(torch.float32)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact mixture log-density in nats ``[N]``, computed in float64 and returned in ``x``'s dtype."""
        return _isotropic_mixture_log_prob(x, self.means, self.component_std)


class Pinwheel(ToyDataset):
    """FFJORD's pinwheel (radial std 0.3, tangential std 0.1, 5 arms, rate 0.25), scaled by 2.

    The arms get ``n`` points in balanced random order (FFJORD drops ``n % 5``).
    """

    name = "pinwheel"
    description = "2D pinwheel of 5 curved arms, radius about 2 (radial std 0.6, tangential std 0.2)"
    params = (*SPLIT_PARAMS,)

    _CLASSES = 5
    _RADIAL_STD = 0.3
    _TANGENTIAL_STD = 0.1
    _RATE = 0.25

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        labels = torch.randperm(n, generator=generator) % self._CLASSES
        stds = torch.tensor([self._RADIAL_STD, self._TANGENTIAL_STD], dtype=torch.float64)
        features = _normal((n, 2), generator) * stds
        features[:, 0] += 1.0
        angles = labels.to(torch.float64) * (_TWO_PI / self._CLASSES) + self._RATE * features[:, 0].exp()
        cos, sin = angles.cos(), angles.sin()
        radial, tangential = features[:, 0], features[:, 1]
        rotated = torch.stack([radial * cos + tangential * sin, tangential * cos - radial * sin], dim=1)
        return (2.0 * rotated).to(torch.float32)


class TwoSpirals(ToyDataset):
    """FFJORD's 2spirals: one arm ``(-t cos t, t sin t) + U[0, 0.5)^2``, its mirror image, ``/ 3``, noise 0.1.

    As in FFJORD the second arm mirrors the first arm's pre-noise points; for
    odd ``n`` one mirrored point is dropped, and the rows are shuffled.
    """

    name = "2spirals"
    description = "2D two interleaved spirals (1.5 turns each), radius up to about 3.2, noise std 0.1"
    params = (*SPLIT_PARAMS,)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        half = (n + 1) // 2
        t = _uniform(half, generator).sqrt() * (540.0 * _TWO_PI / 360.0)
        arm = torch.stack([-t.cos() * t, t.sin() * t], dim=1) + 0.5 * torch.stack(
            [_uniform(half, generator), _uniform(half, generator)], dim=1
        )
        points = torch.cat([arm, -arm]) / 3.0
        points = points[torch.randperm(2 * half, generator=generator)[:n]]
        return (points + 0.1 * _normal((n, 2), generator)).to(torch.float32)


class Checkerboard(KnownDensity):
    """FFJORD's checkerboard, uniform on 8 of the 16 squares of side 2 tiling ``[-4, 4)^2``.

    A point is in the support when it lies in ``[-4, 4)^2`` and
    ``floor(x / 2) + floor(y / 2)`` is even; squares are half-open, as drawn.
    """

    name = "checkerboard"
    description = "2D checkerboard: uniform on 8 alternating 2x2 squares of [-4, 4)^2 (density 1/32)"
    params = (*SPLIT_PARAMS,)

    _LOG_DENSITY = -math.log(32.0)

    @staticmethod
    def _grid_uniform(n: int, generator: torch.Generator) -> Tensor:
        """Uniforms on the grid ``k / 2^23`` in ``[0, 1)``, so every coordinate below is exact in float32."""
        return torch.randint(0, 1 << 23, (n,), generator=generator).to(torch.float64) / (1 << 23)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        x1 = self._grid_uniform(n, generator) * 4.0 - 2.0
        row = torch.randint(0, 2, (n,), generator=generator).to(torch.float64)
        x2 = self._grid_uniform(n, generator) - 2.0 * row + torch.remainder(x1.floor(), 2.0)
        return (2.0 * torch.stack([x1, x2], dim=1)).to(torch.float32)

    def log_prob(self, x: Tensor) -> Tensor:
        """``-log 32`` on the support and ``-inf`` elsewhere, shape ``[N]``, in ``x``'s (floating) dtype."""
        half = x.to(torch.float64) / 2.0
        in_box = ((half >= -2.0) & (half < 2.0)).all(dim=-1)
        in_square = torch.remainder(half.floor().sum(dim=-1), 2.0) == 0.0
        dtype = x.dtype if x.is_floating_point() else torch.float64
        inside = torch.full(in_box.shape, self._LOG_DENSITY, dtype=dtype)
        return inside.masked_fill(~(in_box & in_square), -math.inf)


class SCurve(ToyDataset):
    """sklearn's ``make_s_curve(noise=noise)``, columns x and z, times ``scale``: Tong et al.'s "scurve".

    scikit-learn draws ``t = 3 pi (U - 0.5)``, the point ``(sin t, 2 U', sign(t) (cos t - 1))`` and adds
    ``N(0, noise^2)`` to all three coordinates; the conditional flow matching code (``SKLearnDataModule``) keeps
    the first and last column and multiplies by 1.5. The same order here: noise on the curve, then the scale
    (noise std ``noise * scale``). The dropped coordinate ``2 U'`` and its noise are not drawn (they do not
    change the distribution of the two kept ones).
    """

    name = "scurve"
    description = ("2D S curve (sklearn make_s_curve, columns x and z, Tong et al.'s CFM code): "
                   "scale*(sin t, sign(t)(cos t - 1)), t uniform in [-1.5pi, 1.5pi], noise std noise*scale (0.075)")
    params = (
        *SPLIT_PARAMS,
        Param("noise", "float", 0.05, "std of sklearn's noise, added before the scaling", minimum=0.0),
        Param("scale", "float", 1.5, "factor applied after the noise", minimum=1e-6),
    )

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        t = 3.0 * math.pi * (_uniform(n, generator) - 0.5)
        curve = torch.stack([t.sin(), t.sign() * (t.cos() - 1.0)], dim=1)
        points = curve + float(self.config["noise"]) * _normal((n, 2), generator)
        return (float(self.config["scale"]) * points).to(torch.float32)


class GaussianMixture(KnownDensity):
    """Equal-weight mixture of ``components`` isotropic Gaussians ``N(mu_k, scale^2 I)`` in ``dim`` dimensions.

    The means are ``mu_k = spread * z_k / sqrt(dim)`` with ``z ~ N(0, I)`` of
    shape ``[components, dim]`` drawn once from a ``torch.Generator`` seeded by
    the first 8 bytes of ``sha256("cnfbench/gaussian_mixture:{dim}:{components}")``;
    so ``|mu_k|`` is about ``spread`` in every dimension, and the distribution
    depends only on the parameters, never on the cell seed.
    """

    name = "gaussian_mixture"
    description = "Mixture of `components` equal isotropic Gaussians in `dim` D, means at radius ~`spread`, std `scale`"
    params = (
        Param("dim", "int", 2, "dimension of the data", minimum=1, maximum=100000),
        Param("components", "int", 8, "number of equally weighted components", minimum=1,
              maximum=100000),
        Param("spread", "float", 4.0, "typical distance of a component mean from the origin", minimum=0.0),
        Param("scale", "float", 0.5, "isotropic standard deviation of each component", minimum=1e-6),
        *SPLIT_PARAMS,
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.means = self.component_means(self.dim, int(self.config["components"]), float(self.config["spread"]))

    @staticmethod
    def component_means(dim: int, components: int, spread: float) -> Tensor:
        """The fixed means ``spread * z / sqrt(dim)``, ``z`` drawn from a generator seeded by ``(dim, components)``."""
        digest = hashlib.sha256(f"cnfbench/gaussian_mixture:{dim}:{components}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        return spread * _normal((components, dim), generator) / math.sqrt(dim)

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def component_std(self) -> float:
        return float(self.config["scale"])

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        index = torch.randint(0, self.means.shape[0], (n,), generator=generator)
        noise = self.component_std * _normal((n, self.dim), generator)
        return (self.means[index] + noise).to(torch.float32)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact mixture log-density in nats ``[N]``, computed in float64 and returned in ``x``'s dtype."""
        return _isotropic_mixture_log_prob(x, self.means, self.component_std)


@hookimpl
def cnfbench_datasets() -> list[type[SampledDataset]]:
    """The built-in datasets."""
    return [Swissroll, Circles, Rings, Moons, EightGaussians, Pinwheel, TwoSpirals, Checkerboard, SCurve,
            GaussianMixture]
