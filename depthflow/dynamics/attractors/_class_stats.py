"""Numerical core of the class-basin statistics (numpy, float64, no validation).

Everything here works on unit cls directions ``u`` of shape ``(depth, n, D)`` (depth-major,
contiguous: every depth is one BLAS matrix) and labels
``y`` in ``0..C-1`` that the public functions in :mod:`.class_basins` have already validated
and put in canonical order (sorted by sample id), so that seeded draws do not depend on the
order in which images were given.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln
from sklearn.metrics import adjusted_mutual_info_score

__all__ = ["unit", "angle", "take", "class_means", "nearest_mean", "stratified_folds",
           "crossfit_predictions", "halfsample_draws", "halfsample_interval",
           "spherical_kmeans", "ami", "FixedMarginAMI",
           "permutation_p", "holm", "wilson", "percentile_interval"]


def unit(x: np.ndarray) -> np.ndarray:
    """Normalise along the last axis; zero vectors stay zero (no direction)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in [0, pi] between unit vectors (last axis): ``2 atan2(|a-b|, |a+b|)``."""
    return 2.0 * np.arctan2(np.linalg.norm(a - b, axis=-1), np.linalg.norm(a + b, axis=-1))


def class_means(u: np.ndarray, y: np.ndarray, C: int) -> np.ndarray:
    """Mean directions ``(depth, C, D)`` of ``u`` (depth, n, D) per class; a class with no
    member (or a zero resultant) gets the zero vector."""
    return unit(np.matmul(np.eye(C)[y].T, u))


def nearest_mean(u: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Index ``(depth, n)`` of the nearest mean direction (largest cosine; the first class
    on exact ties); classes whose mean is the zero vector are never chosen."""
    scores = np.matmul(u, means.transpose(0, 2, 1))                       # (depth, n, C)
    empty = ~np.any(means != 0, axis=-1)                                  # (depth, C)
    return np.where(empty[:, None, :], -np.inf, scores).argmax(-1)


def take(u: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Images ``index`` (positions or mask) of ``u`` (depth, n, D), C-contiguous (so that
    every depth stays one BLAS matrix)."""
    return np.ascontiguousarray(u[:, index])


def stratified_folds(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two folds (0/1) of equal size within every class (one more in fold 0 when odd)."""
    fold = np.zeros(len(y), dtype=np.int8)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold[members[1::2]] = 1
    return fold


def crossfit_predictions(u: np.ndarray, y: np.ndarray, fold: np.ndarray, C: int,
                         *, final: bool = False) -> np.ndarray:
    """Nearest-class-mean predictions ``(depth, n)``, each image scored with the class means
    of the other fold. ``final=True`` uses the means at the last depth for every depth."""
    pred = np.empty(u.shape[:2], dtype=np.int64)
    for k in (0, 1):
        train, test = fold == k, fold != k
        means = class_means(take(u, train), y[train], C)
        if final:
            means = np.broadcast_to(means[-1:], means.shape)
        pred[:, test] = nearest_mean(take(u, test), means)
    return pred


def halfsample_draws(y: np.ndarray, n_draws: int, seed: int):
    """Yield ``(index, fold)`` per draw: ``index`` is a half-sample WITHOUT replacement,
    ``ceil(n_c / 2)`` images of every class c (no image twice, so none can sit on both
    sides of a cross-fit or form a spurious cluster with its copy); ``fold`` splits the
    drawn images into stratified cross-fit halves."""
    classes = [np.flatnonzero(y == c) for c in np.unique(y)]
    for b in range(n_draws):
        rng = np.random.default_rng([seed, 3, b])
        index = np.sort(np.concatenate([rng.permutation(m)[:(len(m) + 1) // 2]
                                        for m in classes]))
        yield index, stratified_folds(y[index], rng)


def halfsample_interval(estimate: np.ndarray, draws: np.ndarray, level: float,
                        bounds: tuple[float, float] = (-np.inf, np.inf),
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Centred half-sampling interval: the percentile interval of the half-sample
    statistics (axis 0) shifted by ``estimate - median(draws)``. Sampling half of n without
    replacement gives a linear statistic the variance of the full-sample one (finite
    population factor 1 - 1/2), and the shift removes the bias of the smaller sample. The
    shift can carry a bound past the statistic's range (an accuracy near 1 whose
    half-samples sit lower): ``bounds`` is that range, and the interval is clipped to it."""
    lo, hi = percentile_interval(draws, level)
    if draws.shape[0] == 0:
        return lo, hi
    shift = estimate - np.quantile(draws, 0.5, axis=0, method="inverted_cdf")
    return (np.clip(lo + shift, bounds[0], bounds[1]),
            np.clip(hi + shift, bounds[0], bounds[1]))


def _kpp(u: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding with the cosine distance ``1 - <u, c>`` (= half the squared
    chord): each step draws ``2 + log k`` candidates with probability proportional to the
    distance and keeps the one that lowers the total distance most (as sklearn does)."""
    trials = 2 + int(np.log(k))
    centres = [u[rng.integers(len(u))]]
    dist = np.clip(1.0 - u @ centres[0], 0.0, None)
    for _ in range(1, k):
        total = dist.sum()
        p = dist / total if total > 0 else np.full(len(u), 1.0 / len(u))
        cand = rng.choice(len(u), size=trials, p=p)
        new = np.minimum(dist, np.clip(1.0 - u[cand] @ u.T, 0.0, None))   # (trials, n)
        best = int(new.sum(1).argmin())
        centres.append(u[cand[best]])
        dist = new[best]
    return np.stack(centres)


def _lloyd(u: np.ndarray, centres: np.ndarray,
           max_iter: int) -> tuple[np.ndarray, np.ndarray, float]:
    label = None
    for _ in range(max_iter):
        cos = u @ centres.T
        new = cos.argmax(1)
        empty = np.setdiff1d(np.arange(len(centres)), new)
        if len(empty):               # an empty cluster takes the worst-fitted points
            worst = np.argsort(cos.max(1), kind="stable")[:len(empty)]
            new[worst] = empty
        if label is not None and np.array_equal(new, label):
            break
        label = new
        centres = unit(np.eye(len(centres))[label].T @ u)
    return label, centres, float((u @ centres.T).max(1).sum())


def spherical_kmeans(u: np.ndarray, k: int, *, seed, restarts: int = 10,
                     init: np.ndarray | None = None,
                     max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means of unit vectors ``u`` (n, D): labels ``(n,)`` and centres
    ``(k, D)``. Lloyd steps assign each point to the centre of largest cosine and set the
    centres to the normalised member sums. Starts: ``init`` centres (if given), then
    ``restarts`` k-means++ seedings on the cosine distance; the largest total cosine wins
    (the earliest start on ties)."""
    rng = np.random.default_rng(seed)
    starts = ([] if init is None else [init]) + [None] * restarts
    best, best_obj = None, -np.inf
    for start in starts:
        label, centres, obj = _lloyd(u, _kpp(u, k, rng) if start is None else start,
                                     max_iter)
        if obj > best_obj + 1e-12 * len(u):
            best, best_obj = (label, centres), obj
    return best


def ami(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Adjusted mutual information (sklearn ``adjusted_mutual_info_score``, arithmetic
    normalisation; chance level 0)."""
    return float(adjusted_mutual_info_score(labels, clusters))


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def _emi(a: np.ndarray, b: np.ndarray, n: int) -> float:
    """Expected mutual information of two labelings with marginals ``a``, ``b`` under the
    hypergeometric (permutation) model (Vinh, Epps and Bailey 2010)."""
    a, b = a[:, None, None].astype(float), b[None, :, None].astype(float)
    nij = np.arange(1, int(min(a.max(), b.max())) + 1, dtype=float)[None, None, :]
    valid = (nij >= a + b - n) & (nij <= np.minimum(a, b))
    g = gammaln
    with np.errstate(invalid="ignore", divide="ignore"):
        logp = (g(a + 1) + g(b + 1) + g(n - a + 1) + g(n - b + 1) - g(n + 1) - g(nij + 1)
                - g(a - nij + 1) - g(b - nij + 1) - g(n - a - b + nij + 1))
        term = nij / n * np.log(n * nij / (a * b)) * np.exp(logp)
    return float(np.where(valid, term, 0.0).sum())


def _signed_eps(x: float) -> float:
    eps = np.finfo(float).eps
    return min(x, -eps) if x < 0 else max(x, eps)


class FixedMarginAMI:
    """AMI of many labelings that share both marginals (a permutation null): the entropies
    and the expected mutual information are computed once, only the mutual information per
    labeling. Same definition and edge cases as sklearn's ``adjusted_mutual_info_score``."""

    def __init__(self, labels: np.ndarray, clusters: np.ndarray) -> None:
        _, self.y = np.unique(labels, return_inverse=True)
        _, self.k = np.unique(clusters, return_inverse=True)
        self.n = len(self.y)
        self.R, self.K = self.y.max() + 1, self.k.max() + 1
        a, b = np.bincount(self.y), np.bincount(self.k)
        self.emi = _emi(a, b, self.n)
        self.mean_h = (_entropy(a, self.n) + _entropy(b, self.n)) / 2
        self.outer = np.outer(a, b).astype(float)

    def __call__(self, perm: np.ndarray) -> float:
        """AMI between ``labels[perm]`` and the clusters."""
        if self.R == self.K == 1:
            return 1.0
        if self.R == 1 or self.K == 1:
            return 0.0
        nij = np.bincount(self.y[perm] * self.K + self.k, minlength=self.R * self.K)
        nij = nij.reshape(self.R, self.K).astype(float)
        nz = nij > 0
        mi = float((nij[nz] / self.n * np.log(self.n * nij[nz] / self.outer[nz])).sum())
        den = self.mean_h - self.emi
        return _signed_eps(mi - self.emi) / _signed_eps(den)


def permutation_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """``(1 + #(null >= observed)) / (1 + n_perm)`` along axis 0 of ``null``; a tiny
    relative slack counts float ties as ties."""
    slack = 1e-12 * np.maximum(1.0, np.abs(observed))
    return (1 + (null >= observed - slack).sum(0)) / (1 + null.shape[0])


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family = all entries of ``p``)."""
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def wilson(k: np.ndarray, n: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion ``k / n`` (NaN where ``n == 0``)."""
    from scipy.stats import norm
    z = norm.ppf(0.5 + level / 2)
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def percentile_interval(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0 (``inverted_cdf``: always a drawn value, so an
    infinite draw gives an infinite bound instead of NaN). NaN when there are no draws."""
    if draws.shape[0] == 0:
        nan = np.full(draws.shape[1:], np.nan)
        return nan, nan.copy()
    lo = np.quantile(draws, (1 - level) / 2, axis=0, method="inverted_cdf")
    hi = np.quantile(draws, (1 + level) / 2, axis=0, method="inverted_cdf")
    return lo, hi


def median_interval(values: np.ndarray, *, n_boot: int, level: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median over images (axis 0, NaN rows ignored) and its bootstrap percentile interval
    (images resampled with replacement, ``n_boot`` times, seeded)."""
    import warnings

    values = np.asarray(values, dtype=float)
    with warnings.catch_warnings():          # all-NaN slices (e.g. depths before l0)
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(values, axis=0)
        if n_boot < 1 or len(values) == 0:
            nan = np.full_like(med, np.nan)
            return med, nan, nan.copy()
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(values), size=(n_boot, len(values)))
        boot = np.nanmedian(values[idx], axis=1)                        # (B, ...)
        a = (1 - level) / 2
        lo, hi = np.nanquantile(boot, [a, 1 - a], axis=0)
    return med, lo, hi
