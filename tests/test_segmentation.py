"""Segmentation: exact max-cut, the paper's bisection, contiguous DP, metrics, thresholds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from depthflow.phases import segmentation as seg
from depthflow.errors import ConfigError, InputError


def symmetric(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.random((n, n))
    w = w + w.T
    np.fill_diagonal(w, 0.0)
    return w


def planted(sizes, within: float = 0.1, between: float = 1.0) -> np.ndarray:
    """Distance matrix of block-diagonal phases: ``within`` inside, ``between`` across."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    d = np.where(labels[:, None] == labels[None, :], within, between)
    np.fill_diagonal(d, 0.0)
    return d


def contiguous_labelings(n: int, k: int, min_size: int = 1):
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = [0, *cuts, n]
        sizes = np.diff(bounds)
        if (sizes >= min_size).all():
            yield np.repeat(np.arange(k), sizes)


# --------------------------------------------------------------------------- max-cut
@given(n=st.integers(2, 9), seed=st.integers(0, 10_000))
def test_max_cut_equals_brute_force(n, seed):
    w = symmetric(n, seed)
    value, side = seg.max_cut(w)
    assert value == pytest.approx(seg.brute_force_max_cut(w), rel=1e-12, abs=1e-12)
    assert not side[0]
    assert value == pytest.approx(w[np.ix_(side, ~side)].sum(), rel=1e-12)


@given(n=st.integers(4, 9), min_size=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_max_cut_respects_min_size(n, min_size, seed):
    if n < 2 * min_size:
        return
    w = symmetric(n, seed)
    value, side = seg.max_cut(w, min_size=min_size)
    assert min_size <= side.sum() <= n - min_size
    best = max(w[np.ix_(s, ~s)].sum() for s in (np.array(bits, bool) for bits in
                                                itertools.product([0, 1], repeat=n))
               if min_size <= s.sum() <= n - min_size)
    assert value == pytest.approx(best, rel=1e-12)


def test_max_cut_limits():
    with pytest.raises(ConfigError, match="limited to 28"):
        seg.max_cut(symmetric(seg.MAX_EXACT_NODES + 1, 0))
    with pytest.raises(ConfigError, match="min_size"):
        seg.max_cut(symmetric(3, 0), min_size=2)


# ------------------------------------------------------------------ paper bisection
@pytest.mark.parametrize("sizes", [(7, 5), (4, 3, 3, 2), (3, 6, 3), (2, 2)])
def test_bisection_recovers_planted_phases(sizes):
    d = planted(sizes)
    result = seg.recursive_bisection(d, fraction=0.05, min_size=2)
    expected = np.repeat(np.arange(len(sizes)), sizes)
    np.testing.assert_array_equal(result.labels, expected)
    assert result.contiguous
    assert result.thresholds == seg.thresholds_from_counts(sizes)
    assert len(result.cuts) == len(sizes) - 1


def test_bisection_eps_rule_and_priority():
    """Root cut 35 of total 48.9: f=0.5 (eps 24.45) splits once; the children's cuts (12
    for 4|3, 6.25... for 5 points) stop at eps, reproducing the fraction ladder."""
    d = planted((4, 3, 5))
    total = seg.total_weight(d)
    one = seg.recursive_bisection(d, fraction=0.5)
    assert one.k == 2 and one.cuts[0] == pytest.approx(35.0)
    assert one.eps == pytest.approx(0.5 * total)
    two = seg.recursive_bisection(d, fraction=0.2)
    assert two.k == 3 and two.cuts == pytest.approx((35.0, 12.0))
    none = seg.recursive_bisection(d, fraction=0.9)
    assert none.k == 1 and none.cuts == ()
    assert none.cut == 0.0


def test_bisection_can_be_non_contiguous():
    """Layers 1-2 and 5-6 alike, 3-4 different: max-cut puts 1,2,5,6 together."""
    labels = np.array([0, 0, 1, 1, 0, 0])
    d = np.where(labels[:, None] == labels[None, :], 0.0, 1.0)
    result = seg.recursive_bisection(d, fraction=0.1, min_size=2)
    assert result.k == 2 and not result.contiguous
    assert result.thresholds is None
    with pytest.raises(ConfigError, match="not contiguous"):
        seg.thresholds_from_labels(result.labels)


@given(n=st.integers(1, 10), f=st.floats(0.01, 0.99), seed=st.integers(0, 1000))
def test_segmentations_cover_every_layer_once(n, f, seed):
    w = symmetric(n, seed)
    for result in [seg.recursive_bisection(w, fraction=f, min_size=1),
                   *seg.optimal_segmentations(w, k_max=n, min_size=1)]:
        assert result.labels.shape == (n,)
        assert sorted(i for p in result.phases for i in p) == list(range(n))
        assert set(result.labels.tolist()) == set(range(result.k))
        assert result.cut == pytest.approx(seg.phase_metrics(w, result.labels)["cut"])


# ---------------------------------------------------------------------------- DP
@given(n=st.integers(1, 9), seed=st.integers(0, 10_000), min_size=st.integers(1, 3))
def test_dp_never_worse_than_brute_force(n, seed, min_size):
    if n < min_size:
        return
    w = symmetric(n, seed)
    k_max = n // min_size
    results = seg.optimal_segmentations(w, k_max=k_max, min_size=min_size)
    for result in results:
        assert result.contiguous
        assert np.bincount(result.labels).min() >= min_size
        best = max(seg.phase_metrics(w, lab)["cut"]
                   for lab in contiguous_labelings(n, result.k, min_size))
        assert result.cut >= best - 1e-9
        assert result.cut == pytest.approx(best, rel=1e-9, abs=1e-9)


def test_dp_recovers_planted_phases_and_selects_k():
    sizes = (4, 3, 3, 2)
    d = planted(sizes)
    results = seg.optimal_segmentations(d, k_max=6, min_size=2)
    np.testing.assert_array_equal(results[3].labels, np.repeat(np.arange(4), sizes))
    assert seg.select_k(results) == 4
    assert seg.select_k(seg.optimal_segmentations(planted((7, 5)), k_max=4, min_size=2)) == 2
    flat = np.ones((12, 12)) - np.eye(12)
    flat_results = seg.optimal_segmentations(flat, k_max=4, min_size=2)
    assert [seg.modularity(r) for r in flat_results] == pytest.approx([0.0] * 4, abs=1e-12)
    assert seg.select_k(flat_results) == 1


def test_dp_is_instant_for_deep_models():
    d = planted((10, 10, 12, 16))
    result = seg.contiguous_segmentation(d, k=4, min_size=2)
    assert result.thresholds == [10, 20, 32]


def test_segment_into_prefers_the_paper_bisection():
    d = planted((7, 3, 2))
    two = seg.segment_into(d, 2)
    assert two.method == "maxcut" and two.thresholds == [7]
    three = seg.segment_into(d, 3)
    assert three.thresholds == [7, 10]
    non_contiguous = np.where(np.array([0, 0, 1, 1, 0, 0])[:, None]
                              == np.array([0, 0, 1, 1, 0, 0])[None, :], 0.0, 1.0)
    fallback = seg.segment_into(non_contiguous, 2)
    assert fallback.method == "dp" and fallback.contiguous


# ------------------------------------------------------------------------- metrics
def test_metrics_known_answer():
    d = planted((3, 3), within=0.2, between=1.0)
    m = seg.phase_metrics(d, [0, 0, 0, 1, 1, 1])
    assert m["within"] == pytest.approx(0.2) and m["between"] == pytest.approx(1.0)
    assert m["contrast"] == pytest.approx(0.8)
    assert m["cut"] == pytest.approx(9.0) and m["total"] == pytest.approx(10.2)
    assert m["normalized_cut"] == pytest.approx(9.0 / 10.2)
    assert m["modularity"] == pytest.approx((9.0 - 10.2 / 15 * 9) / 10.2)
    one = seg.phase_metrics(d, np.zeros(6, int))
    assert np.isnan(one["between"]) and one["normalized_cut"] == 0.0


# -------------------------------------------------------------------- thresholds
@pytest.mark.parametrize("thresholds, counts", [([7], (7, 5)), ([7, 10], (7, 3, 2)),
                                                ([4, 7, 10], (4, 3, 3, 2)), ([], (12,))])
def test_thresholds_counts_round_trip(thresholds, counts):
    assert seg.counts_from_thresholds(thresholds, 12) == counts
    assert seg.thresholds_from_counts(counts) == thresholds
    labels = seg.labels_from_thresholds(thresholds, 12)
    assert seg.thresholds_from_labels(labels) == thresholds


@pytest.mark.parametrize("thresholds", [[0], [12], [7, 7], [8, 3], [1.5], [True]])
def test_bad_thresholds(thresholds):
    with pytest.raises(ConfigError, match="thresholds"):
        seg.counts_from_thresholds(thresholds, 12)


@pytest.mark.parametrize("counts", [[], [3, 0], [-1, 4], [2.5]])
def test_bad_counts(counts):
    with pytest.raises(ConfigError, match="counts"):
        seg.thresholds_from_counts(counts)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("matrix, message", [
    (np.zeros((3, 4)), "square"),
    (np.zeros(3), "square"),
    (np.array([[0.0, 1.0], [0.5, 0.0]]), "symmetric"),
    (np.array([[0.0, np.nan], [np.nan, 0.0]]), "finite"),
])
def test_bad_matrices(matrix, message):
    for call in (lambda: seg.recursive_bisection(matrix, fraction=0.1),
                 lambda: seg.optimal_segmentations(matrix, k_max=1),
                 lambda: seg.max_cut(matrix),
                 lambda: seg.phase_metrics(matrix, [0, 0])):
        with pytest.raises(InputError, match=message):
            call()


def test_bad_k_and_fractions():
    d = planted((3, 3))
    with pytest.raises(ConfigError, match="larger than the number of layers"):
        seg.optimal_segmentations(d, k_max=7)
    with pytest.raises(ConfigError, match="do not fit"):
        seg.contiguous_segmentation(d, k=4, min_size=2)
    for f in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\)"):
            seg.recursive_bisection(d, fraction=f)
    with pytest.raises(ConfigError, match="min_size"):
        seg.recursive_bisection(d, fraction=0.1, min_size=0)
