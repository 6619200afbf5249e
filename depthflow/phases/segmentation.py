"""Phases of a layer x layer distance matrix (docs/methods.md).

Pure numpy on a symmetric matrix ``W`` of distances between ``n`` layers (edge weights):

* :func:`max_cut`: exact maximum cut by enumerating the ``2^(n-1)`` bipartitions with node 0
  pinned, in meet-in-the-middle blocks (two halves of the free nodes, one matrix product
  per block), so 24 layers take well under a second; limited to :data:`MAX_EXACT_NODES`.
* :func:`recursive_bisection`: the paper's segmentation, recursive bisection by exact
  max-cut with ``eps = fraction * total_W`` (``total_W = sum(W) / 2``), clusters of fewer
  than ``2 * min_size`` layers never split, each side of a split at least ``min_size``
  layers, and a priority map in which both children inherit their parent's cut value.
* :func:`contiguous_segmentation` / :func:`optimal_segmentations`: the optimal contiguous
  k-segmentation by dynamic programming in ``O(n^2 k)``: it minimises the within-phase
  distance ``sum_{i<j, same phase} W_ij``, equivalently maximises the cut, i.e. it is the
  k-way max-cut restricted to contiguous phases.
* :func:`select_k`: model selection, the smallest k whose :func:`modularity` (the cut in
  excess of a structureless matrix's, over total_W) is within a tolerance of the best.
* :func:`phase_metrics`: within/between-phase distance, contrast, normalised cut.
* Raptor thresholds and repetition counts (:func:`counts_from_thresholds`...).

Layers are 0-based node indices here; :mod:`depthflow.phases` maps them to blocks 1..L.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Sequence

import numpy as np

from depthflow.errors import ConfigError, InputError

MAX_EXACT_NODES = 28
"""Largest matrix :func:`max_cut` enumerates: 2^27 bipartitions take a few seconds."""
_BLOCK_ENTRIES = 1 << 22      # cut values evaluated per matrix product


# ------------------------------------------------------------------------- validation
def check_matrix(matrix, *, name: str = "matrix", atol: float = 1e-6) -> np.ndarray:
    """A finite, square, symmetric float64 matrix (symmetrised), else :class:`InputError`."""
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise InputError(f"{name} must be a non-empty square 2-D matrix, got shape {a.shape}")
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise InputError(f"{name} must be finite, got {bad} NaN/infinite entries; "
                         "recompute it or drop the affected layers")
    asym = float(np.abs(a - a.T).max())
    if asym > atol * max(1.0, float(np.abs(a).max())):
        raise InputError(f"{name} must be symmetric, got max |M - M^T| = {asym:.3g}; "
                         "symmetrise it, e.g. (M + M.T) / 2")
    return (a + a.T) / 2


def check_fraction(fraction: float, *, name: str = "fraction") -> float:
    if not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"{name} must be in (0, 1), got {fraction!r}")
    return float(fraction)


def check_min_size(min_size: int) -> int:
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise ConfigError(f"min_size must be an integer >= 1, got {min_size!r}")
    return int(min_size)


# ------------------------------------------------------------------- thresholds/labels
def check_thresholds(thresholds: Sequence[int], depth: int, *,
                     k: int | None = None) -> tuple[int, ...]:
    """Validate thresholds against the teacher depth (and ``k`` when given)."""
    if any(isinstance(t, (bool, np.bool_)) for t in thresholds):
        raise ConfigError(f"thresholds must be integers, got {list(thresholds)!r}")
    try:
        values = tuple(int(t) for t in thresholds)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"thresholds must be integers, got {thresholds!r}") from exc
    if any(float(t) != v for t, v in zip(thresholds, values)):
        raise ConfigError(f"thresholds must be integers, got {list(thresholds)!r}")
    if any(b <= a for a, b in zip(values[:-1], values[1:])) or \
            any(not 1 <= t <= depth - 1 for t in values):
        raise ConfigError(
            f"thresholds {list(values)} do not partition layers 1..{depth}: expected strictly "
            f"increasing integers in 1..{depth - 1} (the last layer of every segment but the "
            f"final one), e.g. [{depth // 2}] for k=2")
    if k is not None and len(values) != k - 1:
        raise ConfigError(
            f"k={k} needs {k - 1} threshold(s), got {len(values)} ({list(values)}); "
            f"give k-1 thresholds or set k={len(values) + 1}")
    return values


def counts_from_thresholds(thresholds: Sequence[int], depth: int) -> tuple[int, ...]:
    """Raptor repetition counts from thresholds (last layer of every phase but the last).

    ``[7], 12 -> (7, 5)``; ``[4, 7, 10], 12 -> (4, 3, 3, 2)``; ``[], 12 -> (12,)``.
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ConfigError(f"depth must be an integer >= 1, got {depth!r}")
    edges = (0, *check_thresholds(thresholds, int(depth)), int(depth))
    return tuple(b - a for a, b in zip(edges[:-1], edges[1:]))


def thresholds_from_counts(counts: Sequence[int]) -> list[int]:
    """Inverse of :func:`counts_from_thresholds`: ``(7, 3, 2) -> [7, 10]``."""
    c = list(counts)
    if not c or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                    for v in c):
        raise ConfigError(f"counts must be a non-empty sequence of integers >= 1, got {c!r}")
    return [int(v) for v in np.cumsum(c)[:-1]]


def canonical_labels(labels: Sequence[int]) -> np.ndarray:
    """Relabel phases 0, 1, ... in order of their first layer."""
    lab = np.asarray(labels)
    _, first, inverse = np.unique(lab, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def is_contiguous(labels: Sequence[int]) -> bool:
    """Whether every phase is one run of consecutive layers."""
    lab = np.asarray(labels)
    changes = int((lab[1:] != lab[:-1]).sum())
    return changes == len(np.unique(lab)) - 1


def labels_from_thresholds(thresholds: Sequence[int], depth: int) -> np.ndarray:
    """Phase index of layers 1..depth (array of length ``depth``)."""
    counts = counts_from_thresholds(thresholds, depth)
    return np.repeat(np.arange(len(counts)), counts)


def thresholds_from_labels(labels: Sequence[int]) -> list[int]:
    """Thresholds (1-based) of contiguous labels over layers 1..L."""
    lab = np.asarray(labels)
    if not is_contiguous(lab):
        raise ConfigError(f"phases {lab.tolist()} are not contiguous; Raptor thresholds need "
                          "contiguous phases (use the contiguous segmentation)")
    return [int(i) + 1 for i in np.flatnonzero(lab[1:] != lab[:-1])]


# ------------------------------------------------------------------------------ max-cut
def _bits(count: int) -> np.ndarray:
    """All ``2^count`` 0/1 vectors as rows, ``(2^count, count)``."""
    masks = np.arange(1 << count, dtype=np.int64)[:, None]
    return ((masks >> np.arange(count)) & 1).astype(np.float64)


def max_cut(weights, *, min_size: int = 1) -> tuple[float, np.ndarray]:
    """Exact maximum cut of a symmetric weight matrix.

    Returns ``(value, side)``: ``side`` is a bool array, False for the side of node 0.
    Every bipartition with node 0 pinned is evaluated (``2^(n-1)``); both sides must hold at
    least ``min_size`` nodes. With ``x`` the 0/1 side vector, ``cut = x.d - x^T W x``
    (``d`` the row sums); splitting the free nodes into halves A, B gives
    ``cut = f_A[a] + f_B[b] - 2 (X_A W_AB X_B^T)[a, b]``, one matrix product per block of
    A-masks. Ties go to the first maximum in enumeration order. Raises
    :class:`ConfigError` beyond :data:`MAX_EXACT_NODES` nodes and when no bipartition
    satisfies ``min_size``.
    """
    w = check_matrix(weights, name="weights")
    min_size = check_min_size(min_size)
    n = w.shape[0]
    if n > MAX_EXACT_NODES:
        raise ConfigError(f"exact max-cut enumerates 2^(n-1) bipartitions and is limited to "
                          f"{MAX_EXACT_NODES} layers, got {n}; use the contiguous (DP) "
                          "segmentation instead")
    if n < 2 * min_size:
        raise ConfigError(f"cannot split {n} layers into two sides of at least "
                          f"min_size={min_size}")
    w = w - np.diag(np.diag(w))
    deg = w.sum(1)
    free = np.arange(1, n)
    na = (n - 1) // 2
    a_nodes, b_nodes = free[:na], free[na:]
    xa, xb = _bits(len(a_nodes)), _bits(len(b_nodes))
    waa, wbb = w[np.ix_(a_nodes, a_nodes)], w[np.ix_(b_nodes, b_nodes)]
    fa = xa @ deg[a_nodes] - ((xa @ waa) * xa).sum(1)
    fb = xb @ deg[b_nodes] - ((xb @ wbb) * xb).sum(1)
    cross = 2.0 * (xa @ w[np.ix_(a_nodes, b_nodes)])            # (2^na, nb)
    pa, pb = xa.sum(1), xb.sum(1)
    best, best_a, best_b = -np.inf, -1, -1
    rows = max(1, _BLOCK_ENTRIES // len(fb))
    for start in range(0, len(fa), rows):
        stop = min(start + rows, len(fa))
        cut = fa[start:stop, None] + fb[None, :] - cross[start:stop] @ xb.T
        size = pa[start:stop, None] + pb[None, :]                # nodes on node 0's far side
        cut[(size < min_size) | (size > n - min_size)] = -np.inf
        flat = int(np.argmax(cut))
        value = float(cut.flat[flat])
        if value > best:
            best, best_a, best_b = value, start + flat // cut.shape[1], flat % cut.shape[1]
    side = np.zeros(n, dtype=bool)
    side[a_nodes] = xa[best_a] > 0
    side[b_nodes] = xb[best_b] > 0
    return best, side


def brute_force_max_cut(weights) -> float:
    """Reference max-cut by a plain loop over every subset (tests only; tiny n)."""
    w = np.asarray(weights, dtype=np.float64)
    n = w.shape[0]
    best = 0.0
    for mask in range(1, 1 << n):
        side = np.array([(mask >> i) & 1 for i in range(n)], dtype=bool)
        if side.all():
            continue
        best = max(best, float(w[np.ix_(side, ~side)].sum()))
    return best


# ---------------------------------------------------------------- recursive bisection
@dataclasses.dataclass(frozen=True)
class Segmentation:
    """One segmentation of ``n`` layers (0-based nodes).

    ``labels``: phase per layer, numbered by first layer; ``cuts``: cut value of every
    accepted split in the order made (max-cut) or empty (DP); ``cut``: total weight between
    phases; ``total``: ``sum_{i<j} W_ij``; ``method``: ``"maxcut"`` or ``"dp"``;
    ``fraction``: the max-cut fraction (NaN for DP); ``eps``: the split threshold.
    """

    labels: np.ndarray
    cut: float
    total: float
    method: str
    fraction: float = float("nan")
    eps: float = float("nan")
    cuts: tuple[float, ...] = ()

    @property
    def k(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    @property
    def contiguous(self) -> bool:
        return is_contiguous(self.labels)

    @property
    def phases(self) -> list[list[int]]:
        """Layer indices (0-based) of every phase."""
        return [np.flatnonzero(self.labels == p).tolist() for p in range(self.k)]

    @property
    def thresholds(self) -> list[int] | None:
        """Raptor thresholds (1-based block indices) or None when not contiguous."""
        return thresholds_from_labels(self.labels) if self.contiguous else None


def _within(w: np.ndarray, labels: np.ndarray) -> float:
    same = labels[:, None] == labels[None, :]
    return float(np.triu(w * same, 1).sum())


def total_weight(weights) -> float:
    """``sum_{i<j} W_ij`` (the paper's ``sum(W) / 2`` for a zero-diagonal W)."""
    w = np.asarray(weights, dtype=np.float64)
    return float(np.triu(w, 1).sum())


def recursive_bisection(weights, *, fraction: float, min_size: int = 2) -> Segmentation:
    """The paper's segmentation: recursive bisection by exact max-cut.

    Clusters wait in a priority map (the full set at +inf). The cluster with the largest
    pending gain is taken; if that gain is ``<= eps = fraction * total_W`` the procedure
    stops. A cluster of fewer than ``2 * min_size`` layers is not split, nor one whose
    max-cut (sides of at least ``min_size``) is ``<= eps``; otherwise it is split and BOTH
    children wait with the parent's cut value as their priority. Contiguity is not
    enforced; check :attr:`Segmentation.contiguous`.
    """
    w = check_matrix(weights, name="distance matrix")
    fraction = check_fraction(fraction)
    min_size = check_min_size(min_size)
    n = w.shape[0]
    if n > MAX_EXACT_NODES:
        raise ConfigError(f"the max-cut segmentation needs exact max-cuts, limited to "
                          f"{MAX_EXACT_NODES} layers, got {n}; use the contiguous (DP) "
                          "segmentation instead")
    w = w - np.diag(np.diag(w))
    total = total_weight(w)
    eps = fraction * total
    queue: list[tuple[float, int, tuple[int, ...]]] = [(-np.inf, 0, tuple(range(n)))]
    final: list[tuple[int, ...]] = []
    cuts: list[float] = []
    order = 1
    while queue:
        neg_gain, _, cluster = heapq.heappop(queue)
        if -neg_gain <= eps:
            final.append(cluster)
            final.extend(c for _, _, c in queue)
            break
        if len(cluster) < 2 * min_size:
            final.append(cluster)
            continue
        idx = np.asarray(cluster)
        value, side = max_cut(w[np.ix_(idx, idx)], min_size=min_size)
        if value <= eps:
            final.append(cluster)
            continue
        cuts.append(value)
        for child in (tuple(idx[~side].tolist()), tuple(idx[side].tolist())):
            heapq.heappush(queue, (-value, order, child))
            order += 1
    labels = np.empty(n, dtype=np.int64)
    for p, cluster in enumerate(final):
        labels[list(cluster)] = p
    labels = canonical_labels(labels)
    return Segmentation(labels, total - _within(w, labels), total, "maxcut",
                        fraction=fraction, eps=eps, cuts=tuple(cuts))


# -------------------------------------------------------------- contiguous segmentation
def _check_k(k: int, n: int, min_size: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {k!r}")
    if k > n:
        raise ConfigError(f"{name}={k} is larger than the number of layers ({n})")
    if k * min_size > n:
        raise ConfigError(f"{name}={k} phases of at least min_size={min_size} layers do not "
                          f"fit in {n} layers; lower {name} or min_size")
    return int(k)


def optimal_segmentations(weights, *, k_max: int, min_size: int = 1) -> list[Segmentation]:
    """Optimal contiguous segmentations for every k in 1..k_max (DP, ``O(n^2 k_max)``).

    Each minimises the within-phase distance ``sum_{i<j same phase} W_ij`` over all
    segmentations into k runs of at least ``min_size`` consecutive layers (= maximises the
    cut between phases).
    """
    w = check_matrix(weights, name="distance matrix")
    min_size = check_min_size(min_size)
    n = w.shape[0]
    k_max = _check_k(k_max, n, min_size, "k_max")
    w = w - np.diag(np.diag(w))
    total = total_weight(w)
    prefix = np.zeros((n + 1, n + 1))
    prefix[1:, 1:] = w.cumsum(0).cumsum(1)
    starts = np.arange(n + 1)

    def cost(a: np.ndarray, b: int) -> np.ndarray:   # within weight of layers a..b-1
        return (prefix[b, b] - prefix[a, b] - prefix[b, a] + prefix[a, a]) / 2

    best = np.full((k_max + 1, n + 1), np.inf)
    arg = np.zeros((k_max + 1, n + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for k in range(1, k_max + 1):
        for b in range(k * min_size, n + 1):
            a = starts[(k - 1) * min_size: b - min_size + 1]
            values = best[k - 1, a] + cost(a, b)
            i = int(np.argmin(values))
            best[k, b], arg[k, b] = values[i], a[i]
    out = []
    for k in range(1, k_max + 1):
        bounds, b = [n], n
        for j in range(k, 0, -1):
            b = int(arg[j, b])
            bounds.append(b)
        labels = np.repeat(np.arange(k), np.diff(bounds[::-1]))
        out.append(Segmentation(labels, total - _within(w, labels), total, "dp"))
    return out


def contiguous_segmentation(weights, *, k: int, min_size: int = 1) -> Segmentation:
    """The optimal contiguous segmentation into exactly ``k`` phases."""
    return optimal_segmentations(weights, k_max=k, min_size=min_size)[-1]


def modularity(segmentation: Segmentation) -> float:
    """Excess cut over a structureless matrix, as a share of the total distance.

    ``Q = (cut - mean_W * pairs_between) / total_W``, ``mean_W`` the mean distance over
    pairs i < j: the cut a matrix of equal distances would give for the same phase sizes is
    subtracted. ``Q = 0`` for every segmentation of a structureless matrix; splitting a
    homogeneous phase lowers Q; NaN when ``total_W = 0``.
    """
    labels = segmentation.labels
    n = len(labels)
    pairs = n * (n - 1) / 2
    if segmentation.total == 0 or pairs == 0:
        return float("nan")
    sizes = np.bincount(labels)
    between = pairs - float((sizes * (sizes - 1) / 2).sum())
    return (segmentation.cut - segmentation.total / pairs * between) / segmentation.total


def select_k(segmentations: Sequence[Segmentation], *, tolerance: float = 0.01) -> int:
    """Number of phases: the smallest k whose :func:`modularity` is within ``tolerance``
    of the best over ``segmentations`` (the optimal ones for k = 1, 2, ..., as from
    :func:`optimal_segmentations`); 1 for a structureless matrix."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
            0 <= tolerance < 1):
        raise ConfigError(f"select_tolerance must be in [0, 1), got {tolerance!r}")
    if not segmentations:
        raise ConfigError("select_k needs at least one segmentation")
    q = np.array([modularity(s) for s in segmentations])
    if not np.isfinite(q).any():
        return segmentations[0].k
    best = np.nanmax(q)
    return next(s.k for s, v in zip(segmentations, q) if np.isfinite(v) and v >= best
                - tolerance - 1e-12)


# ------------------------------------------------------------------------------ metrics
def phase_metrics(distance, labels: Sequence[int]) -> dict[str, float]:
    """Phase-structure metrics of ``labels`` on a distance matrix.

    * ``within``: mean distance over pairs i < j in the same phase (NaN if none);
    * ``between``: mean distance over pairs in different phases (NaN when k = 1);
    * ``contrast``: ``between - within`` (for D = 1 - S: mean within-phase similarity minus
      mean between-phase similarity); > 0 when phases are real, ~0 for no structure;
    * ``normalized_cut``: ``cut / total_W``, the share of all pairwise distance that lies
      between phases, in [0, 1] for non-negative distances;
    * ``modularity``: the normalised cut in excess of a structureless matrix's
      (:func:`modularity`), 0 without structure;
    * ``cut`` and ``total``.
    """
    w = check_matrix(distance, name="distance matrix")
    lab = np.asarray(labels)
    if lab.shape != (w.shape[0],):
        raise InputError(f"labels must have one entry per layer ({w.shape[0]}), "
                         f"got shape {lab.shape}")
    iu = np.triu_indices(w.shape[0], 1)
    same = (lab[:, None] == lab[None, :])[iu]
    values = w[iu]
    total = float(values.sum())
    cut = float(values[~same].sum())
    within = float(values[same].mean()) if same.any() else float("nan")
    between = float(values[~same].mean()) if (~same).any() else float("nan")
    mean = total / len(values) if len(values) else float("nan")
    excess = (cut - mean * float((~same).sum())) / total if total else float("nan")
    return {"within": within, "between": between, "contrast": between - within,
            "normalized_cut": cut / total if total else float("nan"), "modularity": excess,
            "cut": cut, "total": total}


def segment_into(distance, k: int, *, min_size: int = 2) -> Segmentation:
    """Exactly ``k`` contiguous phases: the paper's max-cut bisection when some fraction
    gives exactly k contiguous phases (the largest such fraction), else the optimal
    contiguous DP segmentation with k phases."""
    w = check_matrix(distance, name="distance matrix")
    n = w.shape[0]
    min_size = check_min_size(min_size)
    k = _check_k(k, n, min_size)
    if n <= MAX_EXACT_NODES and k > 1:
        for fraction in _candidate_fractions(w, min_size):
            seg = recursive_bisection(w, fraction=fraction, min_size=min_size)
            if seg.k == k and seg.contiguous:
                return seg
            if seg.k > k:
                break
    return contiguous_segmentation(w, k=k, min_size=min_size)


def _candidate_fractions(w: np.ndarray, min_size: int) -> list[float]:
    """Fractions at which the bisection changes, largest first (just below each cut value
    of the full split hierarchy)."""
    total = total_weight(w - np.diag(np.diag(w)))
    if total <= 0:
        return []
    full = recursive_bisection(w, fraction=1e-12, min_size=min_size)
    values = sorted({c / total for c in full.cuts if c / total < 1.0}, reverse=True)
    return [v * (1 - 1e-9) for v in values if v * (1 - 1e-9) > 0]
