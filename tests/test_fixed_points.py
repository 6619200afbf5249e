"""Directional fixed points against closed forms; statuses for bad input; NetCDF output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from depthflow.dynamics import maps
from depthflow.dynamics import FixedPointStatus, find_fixed_points, oracles, starts_from
from depthflow.dynamics.fixedpoints.fixed_points import EigStatus, Stability, frozen_depth_index
from depthflow.dynamics.fixedpoints.norm_sensitivity import scan_reference_norms
from depthflow.errors import ConfigError, InputError

F64 = torch.float64
LAM = [3.0, 2.0, 1.5, 1.0, 0.5]


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 2 * torch.asin(((a - b).norm(dim=-1) / 2).clamp(max=1))


@pytest.fixture(scope="module")
def power(one_thread):
    return oracles.power(LAM, tokens=2, seed=1)


@pytest.fixture(scope="module")
def power_result(power):
    gen = torch.Generator().manual_seed(0)
    starts = starts_from(torch.randn(6, 2, 5, generator=gen, dtype=F64), perturb=1,
                         random=4, seed=1)
    return find_fixed_points(power.map, starts, tol=1e-10)


def test_power_map_fixed_points_are_eigenvectors(power, power_result):
    res = power_result
    assert res.success.all(), res.messages
    assert (res.residual <= 1e-10).all()
    q = power.fixed_points                                             # (2D, D)
    lam = torch.tensor(LAM, dtype=F64)
    for point, radius, stable in zip(res.points, res.spectral_radius, res.stable):
        # every token sits on some +-q_i
        idx = [int(torch.argmin(_angle(q, tok))) for tok in point]
        assert max(float(_angle(q[i], tok)) for i, tok in zip(idx, point)) < 1e-8
        # tangent spectral radius: max over tokens of lambda_1 / lambda_i (i > 1) or
        # lambda_2 / lambda_1 on a token at +-q_1
        i = [j // 2 for j in idx]
        want = max(lam[0] / lam[j] if j else lam[1] / lam[0] for j in i)
        assert float(radius) == pytest.approx(float(want), rel=1e-9)
        assert bool(stable) == all(j == 0 for j in i)
    assert res.label.max() == len(res.points) - 1 and int(res.n_starts_found.sum()) == len(res.x)


def test_attractor_is_found_and_stable(power):
    start = power.state(0) + 0.3 * torch.randn(2, 5, dtype=F64,
                                               generator=torch.Generator().manual_seed(4))
    res = find_fixed_points(power.map, start[None], k=4)
    assert res.status[0] == FixedPointStatus.CONVERGED and bool(res.stable[0])
    torch.testing.assert_close(res.eigenvalues[0].real, torch.tensor([2 / 3, 2 / 3, 0.5, 0.5],
                                                                     dtype=F64))


def test_token_scope_moves_one_token(power):
    gen = torch.Generator().manual_seed(2)
    states = torch.randn(3, 2, 5, generator=gen, dtype=F64)
    starts = starts_from(states, perturb=1, angle=0.2, token=1, seed=3)
    torch.testing.assert_close(starts[3:, 0], starts[:3, 0])             # token 0 untouched
    res = find_fixed_points(power.map, starts, scope="token", token=1, tol=1e-10)
    assert res.success.all()
    torch.testing.assert_close(res.x[:, 0], starts[:, 0])               # frozen context
    q = power.fixed_points
    assert float(torch.cdist(res.x[:, 1], q).min(dim=1).values.max()) < 1e-8
    # per-token map: tangent spectrum of the moving token only, D - 1 values
    assert res.eigenvalues.shape[1] == 8 and torch.isnan(res.eigenvalues[:, 4:]).all()


def test_two_attractors_closed_form(one_thread):
    o = oracles.two_attractors(tokens=1)
    z = torch.tensor([0.0, 0.8, 2.0, 4.4], dtype=F64)
    th = torch.tensor([0.3, 0.5, 1.2, 3.0, 4.0, 5.5], dtype=F64)
    starts = torch.stack([torch.cos(th), torch.sin(th)], dim=-1)[:, None]
    res = find_fixed_points(o.map, starts, k=1)
    assert res.success.all()
    for point, ev, stable in zip(res.points, res.eigenvalues, res.stable):
        k = int(torch.argmin(_angle(o.fixed_points, point[0])))
        assert float(_angle(o.fixed_points[k], point[0])) < 1e-8
        assert complex(ev[0]).real == pytest.approx(float(o.tangent_eigenvalues[k, 0].real),
                                                    rel=1e-9)
        assert bool(stable) == bool(o.stable[k])
    assert o.basin_fractions.sum() == pytest.approx(1.0)
    assert float(o.basin_fractions[0]) == pytest.approx((z[1] - z[3] + 2 * math.pi) / (2 * math.pi))


def test_euclidean_affine_map():
    gen = torch.Generator().manual_seed(5)
    A = 0.5 * oracles.random_orthogonal(4, seed=2)
    b = torch.randn(3, 4, generator=gen, dtype=F64)
    f = maps.from_function(lambda x: x @ A.T + b)
    res = find_fixed_points(f, torch.randn(2, 3, 4, generator=gen, dtype=F64), k=4)
    want = torch.linalg.solve(torch.eye(4, dtype=F64) - A, b.T).T
    assert res.success.all() and len(res.points) == 1
    torch.testing.assert_close(res.points[0], want, rtol=1e-9, atol=1e-9)
    assert float(res.spectral_radius[0]) == pytest.approx(0.5) and bool(res.stable[0])


@settings(max_examples=8)
@given(seed=st.integers(0, 10_000), gap=st.floats(1.2, 3.0))
def test_found_points_map_to_themselves(seed, gap):
    torch.set_num_threads(1)
    lam = [gap ** -j for j in range(4)]
    o = oracles.power(lam, tokens=2, seed=seed)
    starts = starts_from(torch.randn(3, 2, 4, dtype=F64,
                                     generator=torch.Generator().manual_seed(seed)), seed=seed)
    res = find_fixed_points(o.map, starts, tol=1e-9, stability=False)
    ok = res.success
    assert ok.any()
    u = res.x[ok]
    assert float(_angle(o.map(None, u), u).max()) <= 1e-9
    assert torch.isnan(res.spectral_radius).all()


def test_nonfinite_map_is_flagged_not_raised():
    A = torch.diag(torch.tensor([2.0, 1.0, 0.5], dtype=F64))

    def fn(x):       # NaN wherever the first feature of a token is positive
        return torch.where(x[..., :1] > 0, torch.nan, x @ A)

    f = maps.sphere(maps.from_function(fn), 1.0)
    starts = torch.tensor([[[-0.9, 0.3, 0.1]], [[0.9, 0.3, 0.1]]], dtype=F64)
    res = find_fixed_points(f, starts)
    assert res.status.tolist() == [FixedPointStatus.CONVERGED, FixedPointStatus.NONFINITE]
    assert res.label.tolist() == [0, -1]
    assert "NaN" in res.messages[1]


def test_budget_and_max_iter_are_flagged(power):
    start = starts_from(torch.randn(1, 2, 5, dtype=F64,
                                    generator=torch.Generator().manual_seed(9)))
    res = find_fixed_points(power.map, start, max_evals=4, stability=False)
    assert res.status[0] == FixedPointStatus.BUDGET_EXHAUSTED and res.nfev[0] <= 4
    assert "max_evals" in FixedPointStatus.BUDGET_EXHAUSTED.message
    res = find_fixed_points(power.map, start, max_iter=1, tol=1e-14, stability=False)
    assert res.status[0] == FixedPointStatus.MAX_ITER and res.label[0] == -1
    assert res.nfev[0] == res.njev[0] + 1 + (res.nfev[0] - res.njev[0] - 1)  # evals counted
    assert res.njev[0] >= 1 and res.nfev[0] > res.njev[0]


def test_bad_input_raises(power):
    with pytest.raises(InputError, match="zero-norm"):
        find_fixed_points(power.map, torch.zeros(1, 2, 5, dtype=F64))
    family = oracles.linear_family(torch.eye(3, dtype=F64)[None].repeat(2, 1, 1)).map
    with pytest.raises(ConfigError, match="autonomous"):
        find_fixed_points(family, torch.ones(1, 2, 3, dtype=F64))
    with pytest.raises(ConfigError, match="scope"):
        find_fixed_points(power.map, power.state(0)[None], scope="layer")
    with pytest.raises(ConfigError, match="token"):
        find_fixed_points(power.map, power.state(0)[None], scope="token", token=7)
    with pytest.raises(InputError, match=r"\(N, T, D\)"):
        find_fixed_points(power.map, power.state(0))


def test_dataset_and_netcdf_round_trip(power_result, tmp_path):
    ds = power_result.to_dataset()
    assert ds["status"].attrs["flag_meanings"].split()[:2] == ["converged",
                                                               "converged_fallback"]
    assert list(ds["status"].attrs["flag_values"]) == [0, 1, 2, 3, 4]
    for name, var in ds.data_vars.items():
        assert var.attrs["long_name"] and "units" in var.attrs, name
    info = json.loads(ds.attrs["map"])
    assert info["map"] == "SphereMap" and "norms_mean" in info
    assert json.loads(ds.attrs["config"])["scope"] == "state"
    path = tmp_path / "fp.nc"
    ds.to_netcdf(path)
    with xr.open_dataset(path) as back:
        xr.testing.assert_identical(back.load(), ds)
    np.testing.assert_array_equal(ds["label"].values, power_result.label.numpy())


def test_starts_from_is_reproducible_and_unit():
    states = torch.randn(2, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    a = starts_from(states, perturb=2, angle=0.3, random=3, seed=7)
    b = starts_from(states, perturb=2, angle=0.3, random=3, seed=7)
    assert a.shape == (2 + 4 + 3, 3, 4) and torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(9, 3, dtype=F64))
    torch.testing.assert_close(_angle(a[2:4], a[:2]), torch.full((2, 3), 0.3, dtype=F64))


def test_two_attractors_basin_fractions_by_iteration():
    """The oracle's closed-form basin fractions match plain iteration from uniform angles."""
    o = oracles.two_attractors(tokens=1)
    n = 4000
    th = (torch.arange(n, dtype=F64) + 0.5) * (2 * math.pi / n)       # uniform grid
    u = torch.stack([torch.cos(th), torch.sin(th)], dim=-1)[:, None]
    with torch.no_grad():
        for _ in range(400):
            u = o.map(None, u)
    ang = _angle(u[:, 0, None, :], o.fixed_points[None])               # (n, 4)
    label = torch.where(ang.min(dim=1).values < 1e-6, ang.argmin(dim=1), -1)
    frac = torch.stack([(label == k).double().mean() for k in range(4)])
    torch.testing.assert_close(frac, o.basin_fractions, atol=2.0 / n, rtol=0)


# ----------------------------------------------------------------------------- stability


def _power_point(lam, i, *, dim_tokens=1, seed=0):
    """A power-iteration oracle and its fixed point +q_i on every token, as one start."""
    o = oracles.power(lam, tokens=dim_tokens, seed=seed)
    return o, o.state(2 * i)[None]


@pytest.mark.parametrize("i, want", [(0, Stability.ATTRACTING), (2, Stability.SADDLE),
                                     (4, Stability.REPELLING)])
def test_stability_categories_of_the_power_map(one_thread, i, want):
    """Tangent spectrum at +-q_i is lambda_j / lambda_i: attracting at the top eigenvector,
    repelling at the bottom one, a saddle in between."""
    o, start = _power_point(LAM, i)
    res = find_fixed_points(o.map, start, k=2, k_bottom=2)
    assert res.n_distinct == 1 and int(res.n_starts_found[0]) == 1
    assert Stability(int(res.stability[0])) == want, res.stability_messages
    lam = torch.tensor(LAM, dtype=F64)
    ratios = torch.cat([lam[:i], lam[i + 1:]]) / lam[i]
    assert float(res.spectral_radius[0]) == pytest.approx(float(ratios.max()), rel=1e-9)
    if want != Stability.ATTRACTING:           # the bottom is only computed when needed
        assert float(res.min_modulus[0]) == pytest.approx(float(ratios.min()), rel=1e-9)
        assert res.bottom_status[0] == EigStatus.CONVERGED
    else:
        assert res.bottom_status[0] == EigStatus.NOT_COMPUTED
        assert math.isnan(float(res.min_modulus[0]))


def test_saddle_with_matrix_free_smallest_moduli(one_thread):
    lam = [4.0, 3.0, 2.5, 2.0, 1.5, 1.2, 1.0, 0.8]
    o, start = _power_point(lam, 3, dim_tokens=2)
    res = find_fixed_points(o.map, start, k=2, k_bottom=2, eig_method="arpack")
    assert Stability(int(res.stability[0])) == Stability.SADDLE
    assert float(res.min_modulus[0]) == pytest.approx(0.8 / 2.0, rel=1e-8)
    assert res.bottom_eigenvalues[0].abs()[0] <= res.bottom_eigenvalues[0].abs()[1]


def test_marginal_unstable_and_unknown(one_thread):
    # marginal: top tangent eigenvalue lambda_2 / lambda_1 = 0.9995, within 1e-3 of 1
    o, start = _power_point([1.0, 0.9995, 0.5], 0)
    res = find_fixed_points(o.map, start, k=2)
    assert Stability(int(res.stability[0])) == Stability.MARGINAL
    res = find_fixed_points(o.map, start, k=2, marginal_tol=1e-4)
    assert Stability(int(res.stability[0])) == Stability.ATTRACTING
    # near 1 and contracting (moduli 1/0.9995, 0.5/0.9995): marginal, not attracting
    o2, start2 = _power_point([1.0, 0.9995, 0.5], 1)
    assert Stability(int(find_fixed_points(o2.map, start2, k=2).stability[0])) == \
        Stability.MARGINAL
    # expanding, near 1 and contracting (2, 0.9995, 0.5): a saddle, flagged non-hyperbolic
    o2, start2 = _power_point([2.0, 1.0, 0.9995, 0.5], 1)
    res2 = find_fixed_points(o2.map, start2, k=3)
    assert Stability(int(res2.stability[0])) == Stability.SADDLE
    assert bool(res2.non_hyperbolic[0])
    # expanding and near 1, nothing contracting (2 / 1.0005, 1 / 1.0005): an expanding
    # direction makes it unstable whatever the rest (not marginal); non-hyperbolic
    o3, start3 = _power_point([2.0, 1.0005, 1.0], 1)
    res3 = find_fixed_points(o3.map, start3, k=2)
    assert Stability(int(res3.stability[0])) == Stability.UNSTABLE
    assert bool(res3.non_hyperbolic[0])
    ds3 = res3.to_dataset()
    assert int(ds3["non_hyperbolic"].values[0]) == 1
    assert "non-hyperbolic" in ds3.attrs["stability_definition"]
    # unstable: the top is above 1 and the bottom is not computed
    o4, start4 = _power_point(LAM, 2)
    res = find_fixed_points(o4.map, start4, k=2, bottom=False)
    assert Stability(int(res.stability[0])) == Stability.UNSTABLE
    assert "bottom" in Stability.UNSTABLE.message
    # unknown: Krylov-Schur capped at 3 vectors and no restart does not converge
    lam = [2.0 - 0.05 * j for j in range(16)]
    o5, start5 = _power_point(lam, 0)
    res = find_fixed_points(o5.map, start5, k=2, eig_method="krylov", eig_ncv=4,
                            eig_max_restarts=0)
    assert res.success.all()                                  # Newton converged ...
    assert res.eig_status[0] == EigStatus.NOT_CONVERGED      # ... the eigensolver did not
    assert Stability(int(res.stability[0])) == Stability.UNKNOWN
    res = find_fixed_points(o5.map, start5, k=2, stability=False)
    assert Stability(int(res.stability[0])) == Stability.UNKNOWN


def test_distinct_points_count_their_starts(power):
    q = power.fixed_points
    base = torch.stack([q[[0, 0]], q[[0, 0]], q[[2, 0]]])              # two distinct states
    starts = torch.cat([base, starts_from(base, perturb=1, angle=1e-3, seed=1)[3:]])
    res = find_fixed_points(power.map, starts, tol=1e-10)
    assert res.n_distinct == 2
    order = res.label[:3].tolist()
    assert order[0] == order[1] != order[2]
    assert int(res.n_starts_found[order[0]]) == 4 and int(res.n_starts_found[order[2]]) == 2
    ds = res.to_dataset(points=False)
    assert int(ds["n_distinct"]) == 2 and ds["n_starts_found"].values.sum() == 6
    assert list(ds["stability"].attrs["flag_meanings"].split()) == [
        s.name.lower() for s in Stability]
    assert ds["reference_norm"].dims == ("token",)


def test_frozen_depth_index_is_stated():
    fam = oracles.linear_family(torch.eye(3, dtype=F64)[None].repeat(4, 1, 1) * 2, tokens=1)
    g = maps.sphere(maps.frozen(fam.map, 4), 1.0)
    assert frozen_depth_index(g) == 4
    res = find_fixed_points(g, torch.eye(3, dtype=F64)[:1, None], k=1)
    ds = res.to_dataset()
    assert ds.attrs["frozen_depth_index"] == 4 and "frozen at 4" in ds.attrs["depth_index_note"]


# ----------------------------------------------------------------------------- reference norms


def _affine_sphere(r0: float, beta: float = 1.0):
    """``F(x) = diag(2, 0.5) x + (0, beta)`` on one token in 2-D: its sphere map at norm r has
    the fixed directions +e2 (always), (cos p, sin p) with sin p = beta / (1.5 r) (two, when
    1.5 r > beta) and -e2 (when r > 2 beta)."""
    A = torch.diag(torch.tensor([2.0, 0.5], dtype=F64))
    b = torch.tensor([0.0, beta], dtype=F64)
    return maps.sphere(maps.from_function(lambda x: x @ A.T + b, name="affine"), r0)


def test_scan_reference_norms_counts_closed_form_fixed_points(one_thread):
    th = torch.linspace(0, 2 * math.pi, 41, dtype=F64)[:-1] + 0.01
    starts = torch.stack([torch.cos(th), torch.sin(th)], -1)[:, None]
    scan = scan_reference_norms(_affine_sphere(1.2), starts, basin_starts=starts,
                                basin_steps=200, basin_tol=0.05, k=1, tol=1e-10)
    assert scan.n_distinct == [1, 3, 4]                 # r = 0.6, 1.2, 2.4
    ds = scan.to_dataset()
    np.testing.assert_allclose(ds["reference_norm"].values[:, 0], [0.6, 1.2, 2.4])
    assert list(ds["n_distinct"].values) == [1, 3, 4]
    np.testing.assert_allclose(ds["basin_fraction"].sum("basin").values, 1.0)
    assert int(ds["n_basins"][0]) == 1                  # r = 0.6: +e2 attracts everything
    e2 = torch.tensor([0.0, 1.0], dtype=F64)
    for r, res in zip([0.6, 1.2, 2.4], scan.results):   # derivative at +e2: 2r / (r/2 + 1)
        j = int(torch.argmin(_angle(res.points[:, 0], e2)))
        assert float(res.spectral_radius[j]) == pytest.approx(2 * r / (r / 2 + 1), rel=1e-6)
        want = Stability.ATTRACTING if r < 1 else Stability.REPELLING
        assert Stability(int(res.stability[j])) == want
    for name, var in ds.data_vars.items():
        assert var.attrs["long_name"] and "units" in var.attrs, name


def test_scan_dataset_netcdf_round_trip(power, tmp_path):
    starts = power.fixed_points[[0, 2]][:, None].expand(2, 2, 5).contiguous()
    ds = scan_reference_norms(power.map, starts, basin_starts=starts, basin_steps=5,
                              k=2).to_dataset()
    ds.to_netcdf(tmp_path / "scan.nc")
    with xr.open_dataset(tmp_path / "scan.nc") as back:
        xr.testing.assert_identical(back.load(), ds)


def test_scan_of_a_scale_invariant_map_changes_nothing(power):
    starts = starts_from(torch.randn(4, 2, 5, dtype=F64,
                                     generator=torch.Generator().manual_seed(3)), seed=2)
    scan = scan_reference_norms(power.map, starts, k=2)
    ref = scan.results[1]
    for r in scan.results:
        assert r.n_distinct == ref.n_distinct
        torch.testing.assert_close(r.stability, ref.stability)
    with pytest.raises(ConfigError, match="sphere map"):
        scan_reference_norms(maps.from_function(lambda x: x), starts)
    with pytest.raises(ConfigError, match="scales"):
        scan_reference_norms(power.map, starts, scales=(0.0, 1.0))


# ------------------------------------------------------- stability over planted spectra

_TOL = 1e-3
_MODULI = {"inside": st.floats(0.05, 0.95), "band": st.floats(1 - 0.5 * _TOL, 1 + 0.5 * _TOL),
           "outside": st.floats(1.05, 3.0)}


@st.composite
def _planted(draw):
    """A linear map ``x -> A x`` on one token with planted multipliers: real ones (either
    sign) and optionally one complex pair (a rotation block), made non-normal by a strictly
    upper-triangular part in a random orthogonal basis when ``normal`` is False."""
    # at most 3 real multipliers: a defective triple eigenvalue moves by ~eps^(1/3), far
    # inside the 0.5 tol margin kept from the band's edges
    kinds = draw(st.lists(st.sampled_from(sorted(_MODULI)), min_size=1, max_size=3))
    real = [draw(_MODULI[k]) * draw(st.sampled_from([1.0, -1.0])) for k in kinds]
    pair = draw(st.one_of(st.none(), st.tuples(st.sampled_from(sorted(_MODULI)),
                                                st.floats(0.3, 2.8))))
    blocks, moduli = [torch.tensor([[v]], dtype=F64) for v in real], [abs(v) for v in real]
    if pair is not None:
        r, phi = draw(_MODULI[pair[0]]), pair[1]
        blocks.append(r * torch.tensor([[math.cos(phi), -math.sin(phi)],
                                        [math.sin(phi), math.cos(phi)]], dtype=F64))
        moduli += [r, r]
    A = torch.block_diag(*blocks)
    n = A.shape[0]
    normal = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    if not normal:                                # same eigenvalues, non-normal
        A = A + torch.triu(torch.rand(n, n, generator=gen, dtype=F64) * 2 - 1, diagonal=1) \
            * (0 if n == 1 else 1)
        if pair is not None:                      # keep the rotation block's own entries
            A[-2:, -2:] = blocks[-1]
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    return q @ A @ q.T, moduli, normal


def _expected(moduli, tol):
    """The issue's rules, written from the planted moduli alone."""
    expanding = [m > 1 + tol for m in moduli]
    contracting = [m < 1 - tol for m in moduli]
    if any(expanding):
        if all(expanding):
            return Stability.REPELLING
        return Stability.SADDLE if min(moduli) < 1 - tol else Stability.UNSTABLE
    return Stability.ATTRACTING if all(contracting) else Stability.MARGINAL


@settings(max_examples=60, deadline=None)
@given(_planted())
def test_stability_labels_of_planted_spectra(one_thread, planted):
    """Every label and the non-hyperbolic flag on linear maps (diagonal and non-normal)
    with known multipliers: the fixed point 0, tangent Jacobian A, whole spectrum computed."""
    A, moduli, _ = planted
    n = A.shape[0]
    f = maps.FunctionMap(lambda x: x @ A.T, name="planted linear map")
    res = find_fixed_points(f, torch.zeros(1, 1, n, dtype=F64), k=n, marginal_tol=_TOL,
                            eig_method="dense")
    assert res.n_distinct == 1
    want = _expected(moduli, _TOL)
    assert Stability(int(res.stability[0])) == want, (moduli, res.stability_messages)
    assert bool(res.non_hyperbolic[0]) == any(abs(m - 1) <= _TOL for m in moduli)
    # defective (non-normal, repeated) eigenvalues are computed to ~eps^(1/3) only
    assert float(res.spectral_radius[0]) == pytest.approx(max(moduli), rel=1e-4)
    if want == Stability.MARGINAL:
        assert bool(res.non_hyperbolic[0])
    if max(moduli) > 1 + _TOL:                    # the bottom is computed (here reused)
        assert float(res.min_modulus[0]) == pytest.approx(min(moduli), rel=1e-4)


def test_expanding_and_band_multiplier_is_unstable_not_marginal(one_thread):
    """The review's case: multipliers {3.0, 1.0004} are unstable (non-hyperbolic)."""
    A = torch.tensor([[3.0, 0.7], [0.0, 1.0004]], dtype=F64)
    f = maps.FunctionMap(lambda x: x @ A.T, name="3 and 1.0004")
    res = find_fixed_points(f, torch.zeros(1, 1, 2, dtype=F64), k=2)
    assert Stability(int(res.stability[0])) == Stability.UNSTABLE
    assert bool(res.non_hyperbolic[0])


@pytest.mark.parametrize("moduli, want, flat", [
    ([0.5, 0.9], Stability.ATTRACTING, False),
    ([0.5, 1.0004], Stability.MARGINAL, True),
    ([0.9996, 0.3], Stability.MARGINAL, True),
    ([1.5, 2.0], Stability.REPELLING, False),
    ([2.0, 0.5], Stability.SADDLE, False),
    ([2.0, 1.0002, 0.5], Stability.SADDLE, True),
    ([3.0, 1.0004], Stability.UNSTABLE, True),
    ([1.2, 0.9997, 1.0003], Stability.UNSTABLE, True),
])
@pytest.mark.parametrize("normal", [True, False])
def test_every_label_on_a_planted_spectrum(one_thread, moduli, want, flat, normal):
    """Each label at least once, diagonal and non-normal (upper-triangular coupling)."""
    n = len(moduli)
    A = torch.diag(torch.tensor(moduli, dtype=F64))
    if not normal:
        A = A + 0.8 * torch.triu(torch.ones(n, n, dtype=F64), diagonal=1)
    f = maps.FunctionMap(lambda x: x @ A.T, name="planted")
    res = find_fixed_points(f, torch.zeros(1, 1, n, dtype=F64), k=n, marginal_tol=_TOL)
    assert Stability(int(res.stability[0])) == want == _expected(moduli, _TOL)
    assert bool(res.non_hyperbolic[0]) == flat
