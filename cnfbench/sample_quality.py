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

Five more functions, in the same conventions (float64 on the CPU, plain floats back), compare samples or
summarize a flow's transport cost:

- :func:`wasserstein2_exact` — the exact squared 2-Wasserstein distance between the two empirical measures
  (uniform weights ``1/n`` and ``1/m``), ``W²₂ = min_π Σ_ij π_ij ‖x_i − y_j‖²`` over couplings ``π`` with those
  marginals, solved by POT's network simplex (``ot.emd2``; an optional dependency). It is the exact value for
  the two finite samples, not an estimate of the population ``W²₂`` free of bias: two samples of one
  distribution give a positive value that shrinks slowly with ``n`` (like ``n^(−2/d)`` for ``d ≥ 5``, Fournier &
  Guillin 2015), so compare models at one sample size. No standard error. For a pure shift ``Y = X + μ`` of the
  same points it is ``‖μ‖²`` exactly (the identity matching is optimal). Exact OT costs roughly O(n³) time and
  O(n·m) memory, so the sizes are capped at ``W2_MAX_SAMPLES``. In the data's squared units.
- :func:`mmd_rbf` — the unbiased squared maximum mean discrepancy ``MMD²_u`` (Gretton et al. 2012, JMLR)
  with the Gaussian kernel ``k(a, b) = exp(−‖a − b‖² / (2h²))``:
  ``mean_{i≠i'} k(x_i, x_i') + mean_{j≠j'} k(y_j, y_j') − 2 mean_{i,j} k(x_i, y_j)``. The bandwidth ``h``
  is, unless given, the median heuristic: the median of the Euclidean distances ``‖z_a − z_b‖`` over all
  ``(n + m)(n + m − 1)/2`` unordered pairs ``a < b`` of distinct points of the pooled sample
  ``z = (x_1..x_n, y_1..y_m)`` (the numpy median: the mean of the two middle values for an even count).
  Like the energy distance it is unbiased (0 in expectation for one distribution; it can be negative),
  and its standard error is the same two-sample delete-one jackknife, in closed form from the kernel
  matrices' row sums, with ``h`` held fixed at its full-sample value. O((n + m)²) time and memory. It is a
  kernel value, without units; it lies in ``[−2, 2]``.
- :func:`c2st_accuracy` — the classifier two-sample test (Lopez-Paz & Oquab 2017) as in sbibm's ``c2st``: the
  cross-validated accuracy of an MLP (two hidden layers of ``10·d`` ReLU units, Adam) told ``min(n, m)`` model
  points (label 0) from as many data points (label 1), over ``folds`` stratified shuffled folds (with early
  stopping: see the function). 0.5 means the classifier cannot tell the samples apart, 1 fully separable; a
  finite sample of one distribution scatters around 0.5 by about ``0.5/√(2·min(n, m))``. Its standard error is
  the spread over folds, ``std / √folds``, which treats the folds as independent and so understates the
  uncertainty somewhat (the folds share training data). Without units.
- :func:`marginal_ks` — the two-sample Kolmogorov–Smirnov statistic ``sup_t |F_x(t) − F_y(t)|`` of each
  coordinate (``scipy.stats.ks_2samp``), with its mean and maximum over coordinates. It sees only the
  one-dimensional marginals, not the dependence between coordinates. Two samples of one distribution give about
  ``0.87·√((n + m)/(n·m))`` per coordinate (the mean of the Kolmogorov distribution). No standard error. Without
  units, in ``[0, 1]``.
- :func:`path_energy_normalized` — the normalized path energy of Tong et al. (TMLR 2024, "Improving and
  generalizing flow-based generative models with minibatch optimal transport", arXiv 2302.00482):
  ``NPE = |PE − W²₂(q0, q1)| / W²₂(q0, q1)`` with ``PE = E_{x(0)∼q0} ∫₀¹ ‖v(t, x(t))‖² dt`` the flow's
  path (kinetic) energy. By Benamou–Brenier ``PE ≥ W²₂`` for any flow that carries ``q0`` to ``q1``,
  with equality for the optimal-transport flow, so NPE is 0 for the dynamic OT flow and grows with the
  flow's excess energy. A ratio, without units.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

W2_MAX_SAMPLES = 20_000
W2_EXACT_DEFAULT = 2000
"""Points a side the ``w2`` and ``path_energy`` metrics compare unless asked for more (``w2[samples=10000]``):
the model samples the harness draws by default."""
"""The largest sample :func:`wasserstein2_exact` accepts by default. Measured on a shared 2-core VM (the solver
uses one core): 2000 × 2000 points take about 0.7 s in 2-D and 1 s in 8-D, 5000 × 5000 about 5–7 s in 2-D and
11–16 s in 8-D to 60-D, with a peak of about 1.4 GB resident (1.15 GB above the interpreter: the 200 MB cost
matrix and the solver's graph); the first call also pays about 1.7 s to import POT."""


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


def _metrics_dependency(module: str, package: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(
        f"{module} needs the optional package {package!r}: pip install 'cnfbench[metrics]' (or pip install {package})")


def wasserstein2_exact(x: Tensor, y: Tensor, max_samples: int = W2_MAX_SAMPLES) -> float:
    """The exact squared 2-Wasserstein distance ``W²₂`` between the empirical measures of ``x`` and ``y``.

    Uniform weights ``1/n`` and ``1/m``, squared Euclidean cost, solved to optimality by POT's network simplex
    (``ot.emd2``); the sizes may differ. Returns ``W²₂`` in the data's squared units (take the square root for
    ``W₂``). Raises ``ValueError`` when ``n`` or ``m`` exceeds ``max_samples`` (default ``W2_MAX_SAMPLES`` =
    5000: about 5–16 s and 1.4 GB there, growing faster than ``n²``), ``ModuleNotFoundError`` without POT, and
    ``RuntimeError`` if the solver stops short of the optimum.
    """
    x, y = _pairs(x, y)
    n, m = x.shape[0], y.shape[0]
    if n == 0 or m == 0:
        raise ValueError(f"exact W2 needs non-empty samples; got {n} and {m}")
    if max(n, m) > max_samples:
        raise ValueError(f"exact W2 is capped at {max_samples} points per sample (O(n^3) time); got {n} and {m}")
    try:
        import ot
    except ImportError as error:
        raise _metrics_dependency("wasserstein2_exact", "pot") from error
    # the direct difference, not the |x|^2 + |y|^2 - 2 x.y expansion, so that equal points cost exactly 0
    cost = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").pow(2).numpy()
    # POT's default of 100000 iterations stops short of the optimum (with only a warning) from about 3000 points
    value, log = ot.emd2(np.full(n, 1.0 / n), np.full(m, 1.0 / m), cost, numItermax=1_000_000_000, log=True)
    if log["result_code"] != 1:
        raise RuntimeError(f"exact W2: the network simplex did not reach the optimum ({log['warning']})")
    return float(value)


def _median_pairwise_distance(z: Tensor, distances: Tensor) -> float:
    upper = torch.triu_indices(z.shape[0], z.shape[0], offset=1)
    return float(np.median(distances[upper[0], upper[1]].numpy()))


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float | None = None) -> tuple[float, float, float]:
    """``(MMD²_u, jackknife standard error, bandwidth h)`` with the kernel ``exp(−‖a − b‖² / (2h²))``.

    ``MMD²_u = mean_{i≠i'} k(x_i, x_i') + mean_{j≠j'} k(y_j, y_j') − 2 mean_{i,j} k(x_i, y_j)`` (unbiased). The
    bandwidth ``h`` is, unless given, the median of the Euclidean distances over all unordered pairs of distinct
    points of the pooled sample ``x ∪ y`` (a data-dependent kernel: pass one fixed ``bandwidth`` to compare several
    models on a common kernel). The standard error is the delete-one jackknife with ``h`` fixed (module
    docstring). O((n + m)²) time and memory: 2000 + 2000 points take about 1 s and 400 MB; cap the samples.
    Needs at least 3 points in each sample.
    """
    x, y = _pairs(x, y)
    n, m = x.shape[0], y.shape[0]
    if n < 3 or m < 3:
        raise ValueError(f"MMD needs at least 3 points per sample; got {n} and {m}")
    z = torch.cat([x, y])
    distances = torch.cdist(z, z)
    h = _median_pairwise_distance(z, distances) if bandwidth is None else float(bandwidth)
    if not h > 0 or not math.isfinite(h):
        raise ValueError(f"MMD needs a positive finite bandwidth; got {h} (are all points equal?)")
    kernel = torch.exp(-distances.pow(2) / (2 * h * h))
    del distances
    k_xx, k_yy, k_xy = kernel[:n, :n].clone(), kernel[n:, n:].clone(), kernel[:n, n:]
    k_xx.fill_diagonal_(0.0)
    k_yy.fill_diagonal_(0.0)
    cross_rows, cross_cols = k_xy.sum(dim=1), k_xy.sum(dim=0)  # per x_i, per y_j
    within_x, within_y = k_xx.sum(dim=1), k_yy.sum(dim=1)
    s_xy, s_xx, s_yy = k_xy.sum(), k_xx.sum(), k_yy.sum()
    estimate = s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2 * s_xy / (n * m)
    # delete x_i: its cross row and its row and column of k_xx go; delete y_j likewise
    without_x = (s_xx - 2 * within_x) / ((n - 1) * (n - 2)) + s_yy / (m * (m - 1)) \
        - 2 * (s_xy - cross_rows) / ((n - 1) * m)
    without_y = s_xx / (n * (n - 1)) + (s_yy - 2 * within_y) / ((m - 1) * (m - 2)) \
        - 2 * (s_xy - cross_cols) / (n * (m - 1))
    variance = (n - 1) / n * (without_x - without_x.mean()).pow(2).sum() \
        + (m - 1) / m * (without_y - without_y.mean()).pow(2).sum()
    return float(estimate), float(variance.sqrt()), h


C2ST_PATIENCE_STEPS = 100
"""Early stopping in :func:`c2st_accuracy` waits at least this many Adam steps (and 10 epochs) without a gain."""


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def c2st_accuracy(x: Tensor, y: Tensor, generator: torch.Generator, folds: int = 5) -> tuple[float, float]:
    """``(mean accuracy over folds, std over folds / √folds)`` of a classifier two-sample test of ``x`` against ``y``.

    The first ``k = min(n, m)`` points of each sample (label 0 for ``x``, 1 for ``y``) go through ``folds``-fold
    stratified cross-validation, shuffled; in each fold a pipeline of a ``StandardScaler`` (the pooled training
    fold's mean and std) and an ``MLPClassifier`` (hidden layers ``(10·d, 10·d)``, ReLU, Adam, ``max_iter=1000``,
    ``early_stopping=True``: 10 % of the training fold held out, stop when its accuracy has not improved for
    ``max(10 epochs, C2ST_PATIENCE_STEPS = 100 Adam steps)``) is fit, and scored on the held-out fold. The
    shuffle and the network's initialization are seeded from ``generator``. 0.5: indistinguishable; 1.0: fully
    separable. Needs scikit-learn, and at least 8 points per sample for 5 folds.

    Early stopping is on because it is both faster and more powerful here: on 1000 + 1000 points, without it
    the 8-D network trained 25–75 s per call and, overfitting, scored 0.505 on a 0.3 mean shift where early
    stopping scores 0.54–0.55 (0.560 is the Bayes accuracy). sklearn's default patience of 10 epochs is too
    short for small samples: at 200 + 200 points an epoch is 2 Adam steps, and some seeds stopped at chance
    (0.50) on two Gaussians 5 apart; counting the patience in steps fixed that (0.95–0.98). The network trains in
    float32 (about 1.3 times faster per epoch than float64). Measured on 1000 + 1000 points on a shared 2-core
    VM: about 0.3–1.5 s in 2-D, 0.6–6 s in 8-D and 16–22 s in 60-D when the machine was otherwise idle, up to
    about 100 s in 60-D when it was busy (the ``600 × 600`` hidden layers cost 70–100 ms an epoch there).

    The network is sbibm's (and older sbi's) ``c2st`` MLP (current sbi defaults to a random forest); unlike theirs,
    which z-score everything with the first sample's mean and std and use plain ``KFold``, the scaler here is fit on
    each training fold of the pooled sample and the folds keep the classes balanced.
    """
    x, y = _pairs(x, y)
    k = min(x.shape[0], y.shape[0])
    # each training fold must hold out a validation set (10 %, rounded up) with both labels in it
    if folds < 2 or k < folds or 2 * (k - math.ceil(k / folds)) < 12:
        raise ValueError(f"C2ST needs at least 2 folds and enough points for each training fold to hold out "
                         f"a validation set with both labels; got {folds} folds and {k} points per sample")
    try:
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as error:
        raise _metrics_dependency("c2st_accuracy", "scikit-learn") from error
    features = torch.cat([x[:k], y[:k]]).to(torch.float32).numpy()  # the MLP then trains in float32
    labels = np.concatenate([np.zeros(k, dtype=np.int64), np.ones(k, dtype=np.int64)])
    width = 10 * features.shape[1]
    fitted = 2 * k * (folds - 1) // folds * 9 // 10  # about the points each fold's network trains on
    batches_per_epoch = math.ceil(fitted / min(200, max(fitted, 1)))  # MLPClassifier's batch_size="auto"
    classifier = make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(width, width), activation="relu", solver="adam", max_iter=1000,
        early_stopping=True, n_iter_no_change=max(10, math.ceil(C2ST_PATIENCE_STEPS / batches_per_epoch)),
        random_state=_seed(generator)))
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=_seed(generator))
    scores = cross_val_score(classifier, features, labels, cv=splits, scoring="accuracy", error_score="raise")
    return float(scores.mean()), float(scores.std(ddof=1) / math.sqrt(folds))


def marginal_ks(x: Tensor, y: Tensor) -> tuple[float, float, list[float]]:
    """``(mean, max, per-coordinate list)`` of the two-sample Kolmogorov–Smirnov statistics of each coordinate.

    Coordinate ``k`` gives ``sup_t |F_x,k(t) − F_y,k(t)|`` of the empirical CDFs (``scipy.stats.ks_2samp``).
    """
    x, y = _pairs(x, y)
    if x.shape[0] == 0 or y.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"KS needs non-empty samples; got {tuple(x.shape)} and {tuple(y.shape)}")
    from scipy.stats import ks_2samp

    xs, ys = x.numpy(), y.numpy()
    statistics = [float(ks_2samp(xs[:, k], ys[:, k]).statistic) for k in range(xs.shape[1])]
    return sum(statistics) / len(statistics), max(statistics), statistics


def path_energy_normalized(path_energy: float, w2_squared: float) -> float:
    """The normalized path energy ``NPE = |PE − W²₂| / W²₂`` of Tong et al. (TMLR 2024, arXiv 2302.00482).

    ``path_energy`` is ``PE = E_{x(0)∼q0} ∫₀¹ ‖v(t, x(t))‖² dt`` along the flow's trajectories and ``w2_squared``
    the squared 2-Wasserstein distance ``W²₂(q0, q1)`` between source and target (both in the data's squared units,
    e.g. from :func:`wasserstein2_exact`; note: squared, not ``W₂``). This is the paper's definition, ``NPE(v_θ) =
    |PE(v_θ) − W²₂(q0, q1)| / W²₂(q0, q1)``; the authors' code (github.com/atong01/conditional-flow-matching,
    ``runner/src/models/cfm_module.py``) logs ``PE`` as ``test/squared_L2``: the per-sample integral of
    ``torch.pow(torch.norm(dx, p=2, dim=1), 2)`` (``SquaredL2Reg`` in
    ``runner/src/models/components/augmentation.py``), accumulated as an extra ODE state over ``t ∈ [0, 1]`` and
    averaged over samples; the ratio is formed outside that code. Their logged ``2-Wasserstein`` metric
    (``runner/src/models/components/optimal_transport.py``, ``wasserstein(..., power=2)``) is ``W₂``, the square
    root of ``ot.emd2``: square it before passing it here.
    """
    pe, w2 = float(path_energy), float(w2_squared)
    if math.isnan(pe) or pe < 0:
        raise ValueError(f"path energy must be a non-negative number; got {pe}")  # +inf: a diverging flow
    if not math.isfinite(w2) or w2 <= 0:
        raise ValueError(f"W2^2 must be a finite positive number; got {w2}")
    return abs(pe - w2) / w2
