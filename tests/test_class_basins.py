"""Class-dependent angular basins: planted von Mises-Fisher mixtures, unstructured nulls,
constructed entry depths, a robustness curve with a closed form, invariances, bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import adjusted_mutual_info_score

from depthflow.dynamics import maps
from depthflow.dynamics.attractors import _class_stats as S
from depthflow.dynamics import oracles
from depthflow.dynamics.attractors.basin_robustness import (attractor_classes, basin_robustness,
                                                            half_angle)
from depthflow.dynamics.attractors.class_basins import class_basins
from depthflow.errors import ConfigError, InputError

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def vmf(mu: np.ndarray, kappa: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n von Mises-Fisher draws around unit ``mu`` (Wood 1994)."""
    p = len(mu)
    b = (-2 * kappa + math.sqrt(4 * kappa ** 2 + (p - 1) ** 2)) / (p - 1)
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (p - 1) * math.log(1 - x0 ** 2)
    w = np.empty(0)
    while len(w) < n:
        z = rng.beta((p - 1) / 2, (p - 1) / 2, size=2 * n)
        cand = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        ok = kappa * cand + (p - 1) * np.log(1 - x0 * cand) - c >= np.log(rng.random(2 * n))
        w = np.concatenate([w, cand[ok]])
    w = w[:n, None]
    v = rng.standard_normal((n, p))
    v -= (v @ mu)[:, None] * mu
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return w * mu + np.sqrt(1 - w ** 2) * v


def planted(n_per: int, kappas, *, C: int = 3, D: int = 5, seed: int = 0):
    """Directions (n, depth, D) with class c around e_c at concentration kappas[depth]."""
    rng = np.random.default_rng(seed)
    mus = np.eye(D)[:C]
    y = np.repeat(np.arange(C), n_per)
    u = np.stack([np.concatenate([vmf(mus[c], k, n_per, rng) for c in range(C)])
                  for k in kappas], 1)
    return u, y, mus


def test_vmf_sampler_mean_resultant_matches_bessel_ratio():
    from scipy.special import ive
    x = vmf(np.eye(5)[0], 4.0, 40000, np.random.default_rng(1))
    a = ive(5 / 2, 4.0) / ive(5 / 2 - 1, 4.0)                      # A_p(kappa), p = 5
    assert x[:, 0].mean() == pytest.approx(a, abs=0.01)


def test_planted_mixture_recovers_accuracy_and_ami():
    kappas = [0.0, 4.0, 12.0]
    u, y, mus = planted(100, kappas, seed=0)
    res = class_basins(u, y, seed=0, n_perm=200, n_boot=60)
    # reference: nearest TRUE mean (Bayes for equal kappas and priors) on a big sample
    big, yb, _ = planted(20000, kappas, seed=99)
    pred = np.argmax(big @ mus.T, -1)                               # (n, depth)
    ref_acc = (pred == yb[:, None]).mean(0)
    ref_ami = [adjusted_mutual_info_score(yb, pred[:, d]) for d in range(3)]
    n = len(y)
    for d in (1, 2):
        tol = 3 * math.sqrt(ref_acc[d] * (1 - ref_acc[d]) / n) + 0.02   # + estimated means
        assert abs(res.ncm_accuracy[d] - ref_acc[d]) < tol
        assert abs(res.ami[d] - ref_ami[d]) < 0.08
        assert res.ncm_accuracy_low[d] <= ref_acc[d] + 0.02
        assert res.ncm_accuracy_high[d] >= ref_acc[d] - 0.02
        assert res.ncm_p_value[d] <= 3 / 201 + 1e-12               # Holm floor, 3 depths
        assert res.ami_p_value[d] <= 3 / 201 + 1e-12
    assert abs(res.ncm_accuracy[0] - 1 / 3) < 0.1 and abs(res.ami[0]) < 0.03
    assert res.ncm_null_mean == pytest.approx(1 / 3, abs=0.03)
    assert np.abs(res.ami_null_mean).max() < 0.01
    # convergence: dispersion within class falls as kappa rises; class means near 90 deg
    assert res.within_dispersion[0] > res.within_dispersion[1] > res.within_dispersion[2]
    assert res.between_angle[2] == pytest.approx(math.pi / 2, abs=0.1)


def test_intervals_stay_in_the_range_of_each_statistic():
    # the centring shift estimate - median(half-samples) moves the percentile interval; an
    # accuracy of 1 whose half-samples sit below 1 would otherwise get an upper bound > 1
    lo, hi = S.halfsample_interval(np.array([1.0]), np.array([[0.90], [0.95], [0.97]]), 0.9,
                                   (0.0, 1.0))
    assert lo[0] == pytest.approx(0.90 + 0.05) and hi[0] == 1.0
    lo, hi = S.halfsample_interval(np.array([1.0]), np.array([[0.90], [0.95], [0.97]]), 0.9)
    assert hi[0] > 1.0                                     # unbounded: the shift shows
    u, y, _ = planted(60, [0.0, 40.0, 200.0], seed=1)      # nearly separable late
    res = class_basins(u, y, seed=0, n_perm=20, n_boot=40)
    assert res.ncm_accuracy[2] > 0.95
    for name, (low, high) in {"ncm_accuracy": (0, 1), "ami": (-np.inf, 1),
                              "within_dispersion": (0, math.pi),
                              "between_angle": (0, math.pi)}.items():
        for bound in ("_low", "_high"):
            v = getattr(res, name + bound)
            assert np.all((v >= low) & (v <= high)), (name, bound, v)


def test_unstructured_data_gives_chance_and_uniform_p_values():
    ncm_p, ami_p, amis, accs = [], [], [], []
    for rep in range(30):
        rng = np.random.default_rng(rep)
        u = rng.standard_normal((60, 1, 4))
        y = rng.permutation(np.arange(60) % 3)
        r = class_basins(u, y, seed=rep, n_perm=200, n_boot=0, kmeans_restarts=2)
        ncm_p.append(r.ncm_p_value[0])
        ami_p.append(r.ami_p_value[0])
        amis.append(r.ami[0])
        accs.append(r.ncm_accuracy[0])
    assert abs(np.mean(amis)) < 0.02 and abs(np.mean(accs) - 1 / 3) < 0.05
    for p in (ncm_p, ami_p):
        assert stats.kstest(p, "uniform").pvalue > 0.01
        assert 0.3 < np.mean(p) < 0.7


def test_fixed_margin_ami_equals_sklearn():
    rng = np.random.default_rng(3)
    for n, R, K in [(200, 5, 4), (31, 3, 3), (40, 2, 1), (25, 1, 1)]:
        y, k = rng.integers(0, R, n), rng.integers(0, K, n)
        f = S.FixedMarginAMI(y, k)
        for _ in range(3):
            perm = rng.permutation(n)
            assert f(perm) == pytest.approx(adjusted_mutual_info_score(y[perm], k),
                                            abs=1e-12)


def test_holm_and_permutation_p():
    assert np.allclose(S.holm(np.array([0.01, 0.04, 0.03, 0.5])), [0.04, 0.09, 0.09, 0.5])
    null = np.arange(10.0)[:, None]
    assert S.permutation_p(np.array([8.0]), null)[0] == pytest.approx(3 / 11)


def test_halfsamples_never_split_an_image_across_the_cross_fit():
    y = np.repeat(np.arange(4), [5, 6, 7, 9])
    for index, fold in S.halfsample_draws(y, 50, seed=2):
        assert len(np.unique(index)) == len(index)                  # no image twice
        assert set(np.unique(fold)) <= {0, 1} and len(fold) == len(index)
        for c in range(4):
            counts = np.bincount(fold[y[index] == c], minlength=2)
            assert abs(counts[0] - counts[1]) <= 1 and counts.sum() == (np.sum(y == c) + 1) // 2


def test_crossfit_never_scores_an_image_with_its_own_mean():
    u, y, _ = planted(6, [8.0], seed=4)
    U = np.ascontiguousarray(u.transpose(1, 0, 2))
    fold = S.stratified_folds(y, np.random.default_rng(0))
    base = S.crossfit_predictions(U, y, fold, 3)
    for i in range(len(y)):
        moved = U.copy()
        moved[:, i] = -moved[:, i]              # would flip its own class mean if it were used
        others = fold == fold[i]
        assert np.array_equal(S.crossfit_predictions(moved, y, fold, 3)[:, others & (
            np.arange(len(y)) != i)], base[:, others & (np.arange(len(y)) != i)])


def test_entry_depth_on_a_constructed_trajectory():
    e = np.eye(3)
    n_per, L1 = 6, 5
    y = np.repeat(np.arange(3), n_per)
    u = np.stack([e[y]] * L1, 1) + 1e-3 * np.random.default_rng(0).standard_normal((18, L1, 3))
    u[0, :2] = e[1]                     # class 0: near class 1 until depth 1 -> entry 2
    u[1, :] = e[0]; u[1, 3] = e[2]      # leaves at depth 3, back at 4 -> entry 4
    u[2, :] = e[0]                      # always home -> entry 0
    u[6, 4] = e[2]                      # class 1 ends near class 2 -> never (-1)
    res = class_basins(u, y, seed=0, n_perm=20, n_boot=0)
    assert res.entry_depth[[0, 1, 2, 6]].tolist() == [2, 4, 0, -1]
    counts = res.to_dataset()["entry_count"]
    assert int(counts.sel({"class": 1, "entry": -1})) == 1
    assert int(counts.sum()) == 18


def _boundary_case(D: int, alpha: float, n: int, seed: int = 0):
    """Starts at angle alpha from the great circle x_1 = 0, class by the side (+-e1), a
    positive diagonal map iterated 4 layers (keeps the sign of x_1): the stay probability
    for a uniform tangent direction is P(z > -tan(alpha) cot(theta)), (z+1)/2 ~ Beta."""
    rng = np.random.default_rng(seed)
    perp = rng.standard_normal((n, D))
    perp[:, 0] = 0
    perp /= np.linalg.norm(perp, axis=1, keepdims=True)
    y = np.arange(n) % 2
    sign = np.where(y == 0, 1.0, -1.0)
    x = math.sin(alpha) * sign[:, None] * np.eye(D)[0] + math.cos(alpha) * perp
    states = torch.as_tensor(np.stack([2.5 * x, 0.7 * perp], 1))   # (n, T = 2, D)
    A = torch.tensor(np.linspace(2.0, 0.5, D), dtype=F64)
    f = maps.from_function(lambda t, s: s * A, depths=range(1, 5), name="diag")
    means = torch.tensor(np.stack([np.eye(D)[0], -np.eye(D)[0]]))
    return f, states, y, means


def _closed_form(D: int, alpha: float, theta: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        c = -math.tan(alpha) / np.tan(theta)
    return stats.beta.sf((np.clip(c, -1, 1) + 1) / 2, (D - 2) / 2, (D - 2) / 2)


@pytest.mark.parametrize("D", [3, 5])
def test_robustness_curve_matches_the_great_circle_closed_form(D):
    alpha, n = 0.4, 1200
    thetas = np.array([0.2, 0.5, 0.9, 1.3, 1.8, 2.4, 3.0])
    f, states, y, means = _boundary_case(D, alpha, n)
    res = basin_robustness(f, {0: states, 2: states}, y, means, thetas=thetas, seed=1,
                           n_boot=100, batch_size=500)
    expect = _closed_form(D, alpha, thetas)
    assert res.placed.all()
    frac = res.summary["stay_fraction"]                              # (l, scope, theta)
    se = np.sqrt(expect * (1 - expect) / n)
    assert np.all(np.abs(frac - expect) <= 4 * se + 1e-12)
    half = res.summary["half_angle"]
    assert np.all(np.abs(half - math.pi / 2) < 0.15)                # P(pi/2) = 1/2 exactly
    assert np.all(res.summary["half_angle_low"] <= half)
    assert np.all(half <= res.summary["half_angle_high"])


def test_robustness_does_not_depend_on_batching_and_head_and_cls_scope():
    f, states, y, means = _boundary_case(3, 0.3, 40)
    thetas = [0.3, 1.0, 2.0]
    head = lambda s: torch.stack([s[:, 0, 0], -s[:, 0, 0]], -1)     # predicts the side
    a = basin_robustness(f, {1: states}, y, means, thetas=thetas, head=head, batch_size=7,
                         n_boot=20)
    b = basin_robustness(f, {1: states}, y, means, thetas=thetas, head=head, batch_size=40,
                         n_boot=20)
    assert np.array_equal(a.stays, b.stays) and np.array_equal(a.unchanged, b.unchanged)
    # the head predicts the side, so "unchanged" equals "stays" here (all images placed)
    assert np.array_equal(a.unchanged, a.stays)
    # cls and all scopes share the cls direction; the map acts per token -> same cls outcome
    assert np.array_equal(a.stays[:, 0], a.stays[:, 1])
    ds = a.to_dataset()
    assert ds.attrs["n_images"] == 40 and "head_unchanged_fraction" in ds


def test_half_angle_interpolates_and_censors():
    th = np.array([1.0, 2.0])
    stays = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)             # p = 0.75, 0.25
    assert half_angle(th, stays) == pytest.approx(1.5)
    assert half_angle(th, np.ones((2, 4), bool)) == np.inf


def test_attractor_view_on_the_power_map():
    orc = oracles.power([2.0, 1.0, 0.5], tokens=1, seed=0)
    q1 = orc.fixed_points[0].numpy()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    side = (x @ q1 > 0).astype(int)
    res = attractor_classes(orc.map, torch.as_tensor(x), side, steps=60, tol_angle=0.05,
                            n_perm=200, n_boot=50)
    assert res.stats["ami"] == pytest.approx(1.0) and res.stats["unassigned_fraction"] == 0
    assert res.stats["ami_p_value"] == pytest.approx(1 / 201)
    rand = attractor_classes(orc.map, torch.as_tensor(x), rng.permutation(side), steps=60,
                             tol_angle=0.05, n_perm=200, n_boot=0)
    assert abs(rand.stats["ami"]) < 0.05 and rand.stats["ami_p_value"] > 0.01
    ds = res.to_dataset()
    assert int(ds["count"].sum()) == 80


@settings(max_examples=8)
@given(seed=st.integers(0, 10_000))
def test_invariant_to_rotation_and_image_order(seed):
    u, y, _ = planted(8, [1.0, 6.0], seed=seed)
    rng = np.random.default_rng(seed)
    Q = oracles.random_orthogonal(5, seed=seed).numpy()
    perm = rng.permutation(len(y))
    kw = dict(seed=1, n_perm=30, n_boot=10, kmeans_restarts=3)
    a = class_basins(u, y, **kw).to_dataset()
    b = class_basins(u @ Q.T, y, **kw).to_dataset()
    c = class_basins(u[perm], y[perm], sample_ids=perm, **kw).to_dataset()
    for other in (b, c):
        for name in a.data_vars:
            np.testing.assert_allclose(a[name].values, other[name].values, atol=1e-9,
                                       err_msg=name)
    for name in ("ncm_accuracy", "ncm_p_value", "ami_p_value"):
        assert np.all((a[name] >= 0) & (a[name] <= 1))


@settings(max_examples=6)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.05, 1.5))
def test_robustness_fractions_in_unit_interval(seed, alpha):
    f, states, y, means = _boundary_case(4, alpha, 20, seed=seed)
    res = basin_robustness(f, {0: states}, y, means, thetas=[0.5, 1.5, 3.1], seed=seed,
                           n_boot=10)
    for key in ("stay_fraction", "stay_fraction_low", "stay_fraction_high"):
        v = res.summary[key]
        assert np.all((v >= -1e-12) & (v <= 1 + 1e-12))


def test_dataset_has_plain_names_units_and_encodable_attrs():
    u, y, _ = planted(6, [2.0, 8.0], seed=5)
    y = y.copy()
    y[0] = -1                                                        # excluded with a note
    ds = class_basins(u, y, n_perm=20, n_boot=5).to_dataset()
    assert ds.attrs["n_images"] == 17 and ds.attrs["n_excluded_unlabelled"] == 1
    for name in ("ncm_accuracy", "ncm_accuracy_low", "ncm_accuracy_high", "ncm_null_mean",
                 "ncm_p_value", "ami", "ami_null_mean", "ami_p_value", "within_dispersion",
                 "between_angle", "angular_speed", "entry_depth", "entry_count"):
        assert name in ds
    for var in [*ds.data_vars.values(), *ds.coords.values()]:
        assert "long_name" in var.attrs and "units" in var.attrs
    assert all(isinstance(v, (str, int, float)) for v in ds.attrs.values())


def test_bad_input_raises_named_errors():
    u, y, _ = planted(4, [2.0], seed=0)
    with pytest.raises(InputError, match="directions"):
        class_basins(u[:, 0], y)
    with pytest.raises(InputError, match="labels must have shape"):
        class_basins(u, y[:-1])
    with pytest.raises(InputError, match="at least 2 classes"):
        class_basins(u, np.zeros_like(y))
    with pytest.raises(InputError, match="at least 2 images"):
        class_basins(u, np.r_[y[:-1], 7])
    with pytest.raises(ConfigError, match="level"):
        class_basins(u, y, level=1.5)
    f, states, yb, means = _boundary_case(3, 0.3, 10)
    with pytest.raises(ConfigError, match="thetas"):
        basin_robustness(f, {0: states}, yb, means, thetas=[0.5, 4.0])
    with pytest.raises(ConfigError, match="scopes"):
        basin_robustness(f, {0: states}, yb, means, thetas=[0.5], scopes=["patch"])
    with pytest.raises(InputError, match="class_means"):
        basin_robustness(f, {0: states}, yb, means[:1], thetas=[0.5])
    with pytest.raises(ConfigError, match="inject depth"):
        basin_robustness(f, {7: states}, yb, means, thetas=[0.5])
