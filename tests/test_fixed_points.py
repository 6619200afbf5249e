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

from depthflow import maps
from depthflow.dynamics import FixedPointStatus, find_fixed_points, oracles, starts_from
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
    assert res.label.max() == len(res.points) - 1 and int(res.count.sum()) == len(res.x)


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
