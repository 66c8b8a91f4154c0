"""Shapley and Beta Shapley values from models trained at many inclusion levels (Owen).

Owen's multilinear-extension identity writes the Shapley value as an integral over the
inclusion probability p of the Banzhaf-like contrast at that p:

    φ(i, t) = ∫₀¹ D(i, t; p) dp,
    D(i, t; p) = E_{S ~ Ber(p)}[U_t(S ∪ i) − U_t(S ∖ i)]
               = mean(Y_t | M_i = 1, α = p) − mean(Y_t | M_i = 0, α = p).

D is the difference of means of `datamodels.estimators.diffmeans`, estimated separately on the
models of each α level, then integrated:

- **grid**: models trained at the K nodes of a quadrature rule (`owen_grid`), many per node;
  φ = Σ_k w_k D(p_k). D(·) is a polynomial of degree n−1 in p, so Gauss-Legendre adds no
  error when 2K − 1 ≥ n − 1 and, for large n, a small one for the smooth D of real models.
- **continuous**: α ~ U(0, 1) per model. Models are cut into ``n_bins`` equal-count bins of
  α (equal α values are never split), and neighbouring bins are merged until each expects
  at least ``MIN_EXPECTED_GROUP`` = 15 models with and without any point (Σ α ≥ 15 and
  Σ (1 − α) ≥ 15 over its rows; see the standard error below). Bin b covers
  [e_b, e_{b+1}) with edges halfway between neighbouring bins and 0, 1 at the ends, and
  φ = Σ_b (e_{b+1} − e_b) D_b(p*_b), p*_b the bin's centre. Plain pooling would be biased:
  models that contain i are tilted towards the top of the bin (probability ∝ p), so the
  in-group sees larger subsets than the out-group; that bias is shared by every point and,
  for large n, exceeds the Shapley values themselves. So within a bin each group's mean is
  read off its own least-squares line in α at p*_b (`diffmeans.moments_to_difference`),
  which also takes the within-bin spread of the margins due to α out of the noise. Models
  at one shared α (grid levels, tied values) have no slope to fit and reduce to the plain
  difference of means.

**Beta Shapley** (Kwon & Zou 2022) with the paper's parameters (α, β) is the semivalue with
weight  w(k) = ∫₀¹ p^k (1−p)^{n−1−k} Beta(p; β, α) dp  on every subset of size k of the
other n−1 points, i.e. the same integral against the Beta density with scipy parameters
(a = β, b = α):  ψ(i, t) = ∫₀¹ D(i, t; p) p^{β−1} (1−p)^{α−1} / B(α, β) dp.
The paper's recommended Beta(16, 1) therefore puts its weight on small p (small subsets);
Beta(1, 1) is the uniform density, i.e. Shapley. On a grid the node weights become the
Beta law's interpolatory weights on the nodes, v_k = E_Beta[ℓ_k(p)] (ℓ_k the Lagrange
basis): exact when D has degree < K, whatever the density (`_grid_weights`; the product rule
w_k · density(p_k) needs 2K − 1 ≥ n − 1 + the density's degree, 15 for Beta(16, 1)); in bins
they become the Beta probability of each bin, and p*_b the Beta-weighted mean of p over the
bin. The bins follow whatever law α was drawn from, so a plan for Beta Shapley does best
drawing α ~ Beta(β, α) itself (equal-mass bins; about half the error of α ~ U(0, 1) for
Beta(4, 1) in the tests).

The standard error: levels are disjoint sets of models, hence independent, and their
weights are fixed numbers (the law's, not re-estimated from the sample), so
SE² = Σ_ℓ weight_ℓ² SE_ℓ², SE_ℓ from `diffmeans.moments_to_difference`. It does not include
the quadrature / binning error. What made it under-cover (Beta(16, 1), 8,000 models, a
7-point game; z = (estimate − exact) / SE should have rms 1 and 5% beyond ±1.96):

- levels with few models on one side. Beta(16, 1) puts its weight near p = 0, where few
  models contain a point: with 32 bins of α ~ U(0, 1) the lowest bin carried ~40% of the
  weight on 2-4 such models, whose sample variance is often ~0 because the events that
  move the margin (another point joining) are rare there (z rms 1.28, 9.7% beyond, 7% of
  SEs infinite); with α ~ Beta itself the lowest bins had none (D = 0, SE = inf). Hence the
  bin merging above, and each group's variance is moderated towards the pooled variance of
  both groups of its level with ``PRIOR_DF`` = 10 prior degrees of freedom (a group of ~20
  models, as at the lowest of 8 Gauss-Legendre nodes, then keeps two thirds of its own
  estimate, one of 200 models 95%);
- the grid weights: the product rule on 4 Gauss-Legendre nodes integrates Beta(16, 1)'s
  density to 0.958 and its bias reached 3 SE (z rms 1.62, 20% beyond); the interpolatory
  weights leave a tenth of that bias on this game (7 points: D has degree 6 > K − 1 = 3).

After (tests/estimators/test_games.py): z rms 0.85-1.02 and 2-5% beyond over α ~ U(0, 1)
with 32 bins, α ~ Beta, and 4 or 8 Gauss-Legendre levels, no infinite SE; in a wider sweep
(2,000-32,000 models, 7 or 10 points, noisy margins, Beta(16, 1), (4, 1), (1, 1), (1, 16))
rms 0.80-1.11 and at most 8% beyond. SE = inf remains only where a weighted level has no
model on one side (or no degree of freedom on both): D is not identified there.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scipy import special, stats
from scipy.interpolate import BarycentricInterpolator

from datamodels.estimators.base import (
    EstimatorInputError,
    Scores,
    as_margins,
    as_masks,
    as_row_vector,
    to_scores,
)
from datamodels.estimators.diffmeans import (
    DEFAULT_CHUNK_ROWS,
    accumulate_moments,
    moments_to_difference,
    target_blocks,
)

# Stored alpha is float32: its rounding (≤ 6e-8 relative) must still match the node.
_NODE_TOLERANCE = 1e-5
# A continuous-α level must expect at least this many models with, and without, any point
# (Σ α ≥ 15 and Σ (1 − α) ≥ 15 over its rows): see the module docstring. Measured without
# variance moderation: 10 left α ~ Beta(1, 16) at 2,000 models 8.2% beyond ±1.96; 20 made
# the wider bins over-cover (z rms 0.80 for α ~ U(0, 1), 8,000 models).
MIN_EXPECTED_GROUP = 15.0
# Prior degrees of freedom of the pooled variance each level's group variances are moderated
# towards (`diffmeans.moments_to_difference`): see the module docstring. 0 left 8 Gauss-
# Legendre levels under Beta(16, 1) at z rms 1.20 (10% beyond); 5, 10, 20 gave 1.04, 1.00,
# 0.97 (6%, 6%, 5% beyond).
PRIOR_DF = 10.0
# Largest Σ|v_k| of a grid's interpolatory weights that `_grid_weights` accepts.
_MAX_INTERPOLATORY_GAIN = 2.0


def owen_grid(
    n_levels: int, rule: Literal["gauss-legendre", "midpoint"] = "gauss-legendre"
) -> tuple[np.ndarray, np.ndarray]:
    """A quadrature rule for ∫₀¹ f(p) dp: (nodes float64[K] in (0, 1), weights float64[K]).

    Gauss-Legendre with K nodes is exact for polynomials of degree ≤ 2K − 1, so K ≥ n/2
    integrates D(·; p) of an n-point game exactly; midpoint is the equal-weight fallback.
    A plan trains its models at these α levels; the estimator needs the same pair back.
    """
    if n_levels < 1:
        raise EstimatorInputError(f"n_levels must be >= 1, got {n_levels}")
    if rule == "gauss-legendre":
        x, w = np.polynomial.legendre.leggauss(n_levels)
        return (x + 1.0) / 2.0, w / 2.0
    if rule == "midpoint":
        return (np.arange(n_levels) + 0.5) / n_levels, np.full(n_levels, 1.0 / n_levels)
    raise EstimatorInputError(f"rule must be 'gauss-legendre' or 'midpoint', got {rule!r}")


def _grid_levels(
    alpha: np.ndarray, grid: tuple[np.ndarray, np.ndarray], law: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Rows → grid level, and level weights w_k · density(p_k)."""
    nodes = np.asarray(grid[0], dtype=np.float64)
    weights = np.asarray(grid[1], dtype=np.float64)
    if nodes.ndim != 1 or nodes.shape != weights.shape or nodes.size == 0:
        raise EstimatorInputError("grid must be (nodes float[K], weights float[K]) with K >= 1")
    if not ((nodes > 0) & (nodes < 1)).all() or not np.isfinite(weights).all():
        raise EstimatorInputError("grid nodes must lie in (0, 1) and weights be finite")
    order = np.argsort(nodes)
    nodes, weights = nodes[order], weights[order]
    if len(nodes) == 1:
        level = np.zeros(len(alpha), dtype=np.int64)
    else:
        right = np.clip(np.searchsorted(nodes, alpha), 1, len(nodes) - 1)
        left = right - 1
        level = np.where(np.abs(alpha - nodes[left]) <= np.abs(alpha - nodes[right]), left, right)
    off = np.flatnonzero(np.abs(alpha - nodes[level]) > _NODE_TOLERANCE)
    if off.size:
        raise EstimatorInputError(
            f"row {int(off[0])} has alpha {alpha[off[0]]:g}, which is not a grid node; "
            "select the rows of the Owen-grid plan or pass grid=None for continuous alpha"
        )
    return level, _grid_weights(nodes, weights, law)


def _grid_weights(nodes: np.ndarray, weights: np.ndarray, law: Any) -> np.ndarray:
    """Level weights of a grid (sorted ``nodes``) for ``law``.

    The uniform law (Shapley) uses the rule as given. A Beta law uses its interpolatory
    weights on the nodes, v_k = E_law[ℓ_k(p)] with ℓ_k the Lagrange basis of the nodes:
    the integral of the degree-(K−1) interpolant of D through the nodes against the law,
    exact when D has degree < K. The product rule w_k·density(p_k) integrates D·density,
    whose degree a steep Beta adds to (Beta(16, 1): 15), so it needs far more nodes: with
    4 Gauss-Legendre nodes its weights sum to 0.958 and its bias was 3 standard errors at
    8,000 models. Where the interpolatory weights would amplify noise (Σ|v_k| > 2, e.g.
    many equispaced nodes) and for other laws, the product rule is kept."""
    product = weights * law.pdf(nodes)
    quadrature = _beta_quadrature(law, len(nodes) + 8)
    if quadrature is None:
        return product
    points, mass = quadrature
    basis = BarycentricInterpolator(nodes, np.eye(len(nodes)))(points)  # [points, K]: ℓ_k
    interpolatory = mass @ basis
    if np.abs(interpolatory).sum() > _MAX_INTERPOLATORY_GAIN:
        return product
    return interpolatory


def _beta_quadrature(law: Any, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Gauss-Jacobi (points, probabilities) exact for polynomials of degree < 2·``size``
    under a plain ``scipy.stats.beta(a, b)`` law; None for the uniform law and other laws."""
    dist = getattr(getattr(law, "dist", None), "name", None)
    if dist != "beta" or getattr(law, "kwds", None) or len(getattr(law, "args", ())) != 2:
        return None
    a, b = (float(v) for v in law.args)
    if a == 1.0 and b == 1.0:
        return None  # the uniform law: the rule as given
    x, w = special.roots_jacobi(size, b - 1.0, a - 1.0)  # weight (1 − x)^(b−1) (1 + x)^(a−1)
    return (x + 1.0) / 2.0, w / w.sum()


def _binned_levels(
    alpha: np.ndarray, n_bins: int, law: Any, min_group: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows → equal-count α bin (ties kept together); each bin's probability under ``law``
    and its ``law``-weighted centre. With ``min_group`` > 0, neighbouring bins are merged
    until each expects at least that many models with and without any point i:
    Σ_rows α ≥ min_group and Σ_rows (1 − α) ≥ min_group (`_merge_thin_bins`)."""
    if n_bins < 1:
        raise EstimatorInputError(f"n_bins must be >= 1, got {n_bins}")
    values, inverse, counts = np.unique(alpha, return_inverse=True, return_counts=True)
    midrank = np.cumsum(counts) - counts / 2.0
    bin_of_value = np.minimum((midrank * n_bins / len(alpha)).astype(np.int64), n_bins - 1)
    _, bin_of_value = np.unique(bin_of_value, return_inverse=True)  # drop empty bins
    if min_group > 0:
        bin_of_value = _merge_thin_bins(bin_of_value, values, counts, min_group)
    n_levels = int(bin_of_value.max()) + 1
    first = np.searchsorted(bin_of_value, np.arange(n_levels))  # bins are runs of sorted values
    low, high = values[first], values[np.r_[first[1:], len(values)] - 1]
    edges = np.concatenate([[0.0], (high[:-1] + low[1:]) / 2.0, [1.0]])
    mass = law.cdf(edges[1:]) - law.cdf(edges[:-1])
    centre = np.array([
        law.expect(lambda p: p, lb=lo, ub=hi, conditional=True) if weight > 0 else (lo + hi) / 2.0
        for lo, hi, weight in zip(edges[:-1], edges[1:], mass, strict=True)
    ])
    # Quadrature over a bin holding a vanishing mass of a steep Beta can stray a little.
    centre = np.clip(centre, edges[:-1], edges[1:])
    return bin_of_value[inverse.ravel()], mass, centre


def _merge_thin_bins(
    bin_of_value: np.ndarray, values: np.ndarray, counts: np.ndarray, min_group: float
) -> np.ndarray:
    """Merge runs of neighbouring bins (left to right) until each expects ``min_group``
    models on both sides of every contrast; a short remainder joins the last bin."""
    with_point = np.bincount(bin_of_value, weights=values * counts)
    without_point = np.bincount(bin_of_value, weights=(1.0 - values) * counts)
    merged = np.empty(len(with_point), dtype=np.int64)
    current, got_with, got_without = 0, 0.0, 0.0
    for b in range(len(with_point)):
        merged[b] = current
        got_with += with_point[b]
        got_without += without_point[b]
        if got_with >= min_group and got_without >= min_group:
            current, got_with, got_without = current + 1, 0.0, 0.0
    if merged[-1] == current and current > 0:  # an unfinished last run joins its neighbour
        merged[merged == current] = current - 1
    return merged[bin_of_value]


def owen_semivalue(
    masks: np.ndarray,
    margins: np.ndarray,
    alpha: np.ndarray,
    *,
    law: Any,
    grid: tuple[np.ndarray, np.ndarray] | None = None,
    n_bins: int = 32,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Scores:
    """ψ(i, t) = ∫₀¹ D(i, t; p) ω(p) dp for a probability law ω on [0, 1].

    masks: bool[m, n_train]; margins: float[m, T]; alpha: float[m], the inclusion probability
    each model's mask was drawn with. law: a frozen ``scipy.stats`` distribution on [0, 1]
    (on a grid, ``scipy.stats.beta(a, b)`` gets its interpolatory weights and other laws
    ``pdf`` times the rule's weights; ``cdf`` and ``expect`` for bins), e.g.
    ``stats.uniform()`` for Shapley. See the module docstring for grid vs continuous α, the
    bin merging and the standard error.
    Returns `Scores` with values, stderr float32[T, n_train].
    """
    masks = as_masks(masks)
    alpha = as_row_vector(alpha, masks.shape[0], "alpha", np.float64)
    if masks.shape[0] == 0:
        raise EstimatorInputError("no models given: masks has 0 rows")
    if not ((alpha >= 0) & (alpha <= 1)).all():
        raise EstimatorInputError("alpha must lie in [0, 1] for every model")
    if grid is not None:
        level, level_weight = _grid_levels(alpha, grid, law)
        centre = None
    else:
        level, level_weight, centre = _binned_levels(alpha, n_bins, law, MIN_EXPECTED_GROUP)

    margins = as_margins(margins, masks.shape[0])
    values = np.zeros((margins.shape[1], masks.shape[1]), dtype=np.float32)
    stderr = np.zeros_like(values)
    for block in target_blocks(margins.shape[1], masks.shape[1]):
        values[block], stderr[block] = _integrate_levels(
            masks, margins[:, block], alpha, level, level_weight, centre, chunk_rows
        )
    return to_scores(values, stderr, masks.shape[0])


def _integrate_levels(
    masks: np.ndarray,
    margins: np.ndarray,
    alpha: np.ndarray,
    level: np.ndarray,
    level_weight: np.ndarray,
    centre: np.ndarray | None,
    chunk_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Σ_ℓ weight_ℓ · D_ℓ and sqrt(Σ_ℓ weight_ℓ² SE_ℓ²), float64[T, n_train]."""
    values = np.zeros((margins.shape[1], masks.shape[1]))
    variance = np.zeros_like(values)
    for k, weight in enumerate(level_weight):
        if weight == 0.0:
            continue
        rows = np.flatnonzero(level == k)
        if rows.size == 0:
            # A weighted node without models: the integral is unidentified there.
            variance += np.inf
            continue
        if centre is None:
            moments = accumulate_moments(masks, margins, rows=rows, chunk_rows=chunk_rows)
            diff, stderr = moments_to_difference(moments, prior_df=PRIOR_DF)
        else:
            moments = accumulate_moments(
                masks, margins, rows=rows, covariate=alpha, chunk_rows=chunk_rows
            )
            diff, stderr = moments_to_difference(
                moments, covariate_at=float(centre[k]), prior_df=PRIOR_DF
            )
        values += weight * diff
        variance += (weight * stderr) ** 2
    return values, np.sqrt(variance)


def shapley(
    masks: np.ndarray,
    margins: np.ndarray,
    alpha: np.ndarray,
    *,
    grid: tuple[np.ndarray, np.ndarray] | None = None,
    n_bins: int = 32,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Scores:
    """Shapley values φ(i, t) = ∫₀¹ D(i, t; p) dp by Owen sampling.

    masks: bool[m, n_train]; margins: float[m, T]; alpha: float[m] per-model inclusion
    probability. grid: the (nodes, weights) from `owen_grid` the plan trained at, or None
    for α ~ U(0, 1) per model (``n_bins`` equal-count bins).
    Returns `Scores` with values, stderr float32[T, n_train].
    """
    return owen_semivalue(
        masks, margins, alpha, law=stats.uniform(), grid=grid, n_bins=n_bins, chunk_rows=chunk_rows
    )


def beta_shapley(
    masks: np.ndarray,
    margins: np.ndarray,
    alpha: np.ndarray,
    *,
    beta_params: tuple[float, float] = (16.0, 1.0),
    grid: tuple[np.ndarray, np.ndarray] | None = None,
    n_bins: int = 32,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Scores:
    """Beta(α, β)-Shapley (Kwon & Zou 2022) by Owen sampling.

    beta_params: the paper's (α, β); p is integrated against p^{β−1}(1−p)^{α−1}/B(α, β), so
    (16, 1) favours small subsets and (1, 1) is Shapley. Other arguments as `shapley`.
    Returns `Scores` with values, stderr float32[T, n_train].
    """
    paper_alpha, paper_beta = (float(v) for v in beta_params)
    if not (paper_alpha > 0 and paper_beta > 0):
        raise EstimatorInputError(f"beta_params must be positive, got {beta_params}")
    law = stats.beta(paper_beta, paper_alpha)  # scipy's (a, b) = paper's (β, α)
    return owen_semivalue(
        masks, margins, alpha, law=law, grid=grid, n_bins=n_bins, chunk_rows=chunk_rows
    )
