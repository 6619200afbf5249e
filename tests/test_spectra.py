"""Jacobian spectra against closed forms, across routes, and under orthogonal conjugation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import jacrev

from depthflow.dynamics import maps
from depthflow.dynamics import (eigvals, oracles, singular_values, token_jacobians)
from depthflow.dynamics.tangent import _linalg
from depthflow.errors import ConfigError, InputError
from tests._models import randomize_parameters, tiny_vit

F64 = torch.float64
ROUTES = ("dense", "arpack", "krylov")
SV_ROUTES = ROUTES + ("subspace",)


def _sorted(ev: torch.Tensor) -> np.ndarray:
    """Values sorted by (-|.|, -real, imag) for order-free comparisons of spectra."""
    ev = np.asarray(ev.cpu(), dtype=complex)
    return ev[np.lexsort((ev.imag.round(9), -ev.real.round(9), -np.abs(ev).round(9)))]


def _close(a, b, tol=1e-9):
    np.testing.assert_allclose(_sorted(torch.as_tensor(a)), _sorted(torch.as_tensor(b)),
                               rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def power(one_thread):
    return oracles.power([3.0, 2.0, 1.5, 1.0, 0.5], tokens=2, seed=1)


@pytest.mark.parametrize("route", ROUTES)
def test_power_tangent_spectrum_at_fixed_points(power, route):
    for index in ([0, 0], [2, 5], [9, 3]):
        res = eigvals(power.map, None, power.state(index), k=6, method=route)
        want = torch.cat([power.tangent_eigenvalues[i] for i in index])
        _close(res.eigenvalues, want[torch.argsort(want.abs(), descending=True)][:6])
        assert res.converged and res.tangent and res.size == 2 * 4 and res.method == route


def test_attracting_point_of_power_map_has_radius_below_one(power):
    res = eigvals(power.map, None, power.state(1), k=3)
    assert res.spectral_radius == pytest.approx(2.0 / 3.0, rel=1e-12)
    assert eigvals(power.map, None, power.state(2), k=3).spectral_radius == pytest.approx(1.5)


def _complex_linear():
    """``A = S blockdiag(0.9 R(0.4), 0.6 R(1.3), 0.3) S^-1``: non-normal, complex pairs."""
    blocks = torch.zeros(5, 5, dtype=F64)
    for k, (rho, th) in enumerate([(0.9, 0.4), (0.6, 1.3)]):
        c, s = math.cos(th), math.sin(th)
        blocks[2 * k:2 * k + 2, 2 * k:2 * k + 2] = rho * torch.tensor([[c, -s], [s, c]])
    blocks[4, 4] = 0.3
    gen = torch.Generator().manual_seed(2)
    S = torch.eye(5, dtype=F64) + 0.5 * torch.randn(5, 5, generator=gen, dtype=F64)
    want = torch.tensor([0.9 * np.exp(0.4j), 0.9 * np.exp(-0.4j), 0.6 * np.exp(1.3j),
                         0.6 * np.exp(-1.3j), 0.3], dtype=torch.complex128)
    return oracles.linear(S @ blocks @ torch.linalg.inv(S), tokens=3), want


@pytest.mark.parametrize("route", ROUTES)
def test_non_normal_complex_eigenvalues(route, one_thread):
    oracle, want = _complex_linear()
    x = torch.randn(3, 5, dtype=F64)
    res = eigvals(oracle.map, None, x, k=6, method=route)
    # 0.9 e^(+-0.4i), once per token; a triple eigenvalue of a non-normal matrix is only
    # determined to about cond(S) * eps
    _close(res.eigenvalues, want[:2].repeat(3), 1e-7)
    _close(oracle.jacobian_eigenvalues[:6], res.eigenvalues, 1e-7)
    assert not res.tangent and res.size == 15


@pytest.mark.parametrize("route", ROUTES)
def test_eigenvectors_satisfy_eigen_equation(route, one_thread):
    oracle, _ = _complex_linear()
    x = torch.randn(3, 5, dtype=F64)
    res = eigvals(oracle.map, None, x, k=2, method=route, vectors=True)
    A = oracle.matrix.to(torch.complex128)
    for lam, v in zip(res.eigenvalues, res.vectors):
        torch.testing.assert_close(v @ A.T, lam * v, rtol=1e-7, atol=1e-7)


def test_largest_real_part(one_thread):
    A = torch.diag(torch.tensor([-2.0, 1.0, 0.5], dtype=F64))
    oracle = oracles.linear(A, tokens=1)
    res = eigvals(oracle.map, None, torch.randn(1, 3, dtype=F64), k=1, which="LR",
                  method="dense")
    assert res.eigenvalues[0].real == pytest.approx(1.0)
    res = eigvals(oracle.map, None, torch.randn(1, 3, dtype=F64), k=1, which="LM",
                  method="dense")
    assert res.eigenvalues[0].real == pytest.approx(-2.0)


@pytest.mark.parametrize("route", SV_ROUTES)
def test_singular_values_non_normal(route, one_thread):
    oracle = oracles.non_normal(0.9, 2.0, 0.5, tokens=3)
    x = torch.randn(3, 2, dtype=F64)
    res = singular_values(oracle.map, None, x, k=4, method=route)
    torch.testing.assert_close(res.singular_values, oracle.singular_values[:4], rtol=1e-9,
                               atol=1e-9)
    assert res.spectral_radius > 0.9        # spectral norm > spectral radius: non-normal
    v, u, s = res.vectors[0], res.left_vectors[0], res.singular_values[0]
    torch.testing.assert_close(oracle.map.jvp(None, x, v)[1], s * u, rtol=1e-7, atol=1e-7)


@pytest.fixture(scope="module")
def vit_sphere(one_thread):
    model = tiny_vit(seed=2, embed_dim=8, depth=2, num_heads=2, mlp_hidden_dim=16)
    model = randomize_parameters(model, seed=4).double().requires_grad_(False)
    f = maps.from_model(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, generator=gen, dtype=F64) * 3
    return maps.sphere(maps.frozen(f, 2), x.norm(dim=-1)), x / x.norm(dim=-1, keepdim=True), f


def test_routes_agree_on_a_vit_sphere_map(vit_sphere):
    S, u, _ = vit_sphere
    dense = eigvals(S, None, u, k=5, method="dense").eigenvalues.abs()
    for route in ("arpack", "krylov"):   # magnitudes: k = 5 may split a conjugate pair
        mf = eigvals(S, None, u, k=5, method=route).eigenvalues.abs()
        torch.testing.assert_close(mf, dense, rtol=1e-9, atol=1e-9)
    sv = singular_values(S, None, u, k=4, method="dense").singular_values
    for route in ("arpack", "krylov", "subspace"):
        torch.testing.assert_close(singular_values(S, None, u, k=4, method=route)
                                   .singular_values, sv, rtol=1e-8, atol=1e-8)


def test_tangent_operator_removes_radial_directions(vit_sphere):
    """The dense tangent matrix has T*(D-1) eigenvalues; the ambient projected Jacobian
    P J P at a non-fixed point adds T spurious zeros and differs."""
    S, u, _ = vit_sphere
    res = eigvals(S, None, u, k=4 * 7, method="dense")
    assert res.size == 28 and res.eigenvalues.shape == (28,)
    singular = singular_values(S, None, u, k=28, method="dense").singular_values
    ambient = torch.func.jacrev(lambda z: S(None, z))(u).reshape(32, 32)
    y = S(None, u)
    P_in = torch.block_diag(*[torch.eye(8, dtype=F64) - torch.outer(a, a) for a in u])
    P_out = torch.block_diag(*[torch.eye(8, dtype=F64) - torch.outer(a, a) for a in y])
    full = torch.linalg.svdvals(P_out @ ambient @ P_in)
    torch.testing.assert_close(full[:28], singular, rtol=1e-9, atol=1e-9)
    assert full[28:].abs().max() < 1e-9


def test_token_jacobians_are_diagonal_blocks(vit_sphere):
    _, u, f = vit_sphere
    x = 2.5 * u
    blocks = token_jacobians(f, 1, torch.stack([x, x.flip(0)]))
    assert blocks.shape == (2, 4, 8, 8)
    J = jacrev(lambda z: f(1, z))(x)                                   # (T, D, T, D)
    for i in range(4):
        torch.testing.assert_close(blocks[0, i], J[i, :, i, :], rtol=1e-10, atol=1e-12)
    S = maps.sphere(maps.frozen(f, 1), torch.full((4,), 2.5, dtype=F64))
    tb = token_jacobians(S, None, u)
    Jh = jacrev(lambda z: S(None, z))(u)
    y = S(None, u)
    for i in range(4):
        Pu = torch.eye(8, dtype=F64) - torch.outer(u[i], u[i])
        Py = torch.eye(8, dtype=F64) - torch.outer(y[i], y[i])
        torch.testing.assert_close(tb[i], Py @ Jh[i, :, i, :] @ Pu, rtol=1e-10, atol=1e-12)
    assert (tb @ u[:, :, None]).abs().max() < 1e-12                   # radial input killed


def test_transport_is_a_rotation_taking_y_to_u():
    gen = torch.Generator().manual_seed(3)
    y, u = (torch.nn.functional.normalize(torch.randn(2, 6, generator=gen, dtype=F64),
                                          dim=-1))
    R = _linalg.transport(y, u, torch.eye(6, dtype=F64)).T            # columns R e_j
    torch.testing.assert_close(R @ y, u)
    torch.testing.assert_close(R.T @ R, torch.eye(6, dtype=F64))
    c = torch.randn(5, dtype=F64, generator=gen)
    v = _linalg.to_tangent(u, c)
    assert abs(float(v @ u)) < 1e-13
    torch.testing.assert_close(_linalg.from_tangent(u, v), c)


@settings(max_examples=6)
@given(seed=st.integers(0, 10_000), sphere=st.booleans())
def test_spectra_invariant_under_orthogonal_feature_change(seed, sphere):
    """``G(x) = Q^T F(Q x)`` per token has the spectrum of ``F`` at ``Q^T x``."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    T, D = 3, 5
    W = torch.randn(D, D, generator=gen, dtype=F64)
    M = torch.randn(T, T, generator=gen, dtype=F64) / T
    Q = oracles.random_orthogonal(D, seed=seed + 1)

    def fn(x):
        return torch.tanh(x @ W.T) + M @ x

    f = maps.from_function(fn)
    g = maps.from_function(lambda x: fn(x @ Q.T) @ Q)
    x = torch.randn(T, D, generator=gen, dtype=F64)
    if sphere:
        r = torch.rand(T, generator=gen, dtype=F64) + 0.5
        f, g = maps.sphere(f, r), maps.sphere(g, r)
    a = eigvals(f, None, x, k=6, method="dense").eigenvalues
    b = eigvals(g, None, x @ Q, k=6, method="dense").eigenvalues
    np.testing.assert_allclose(np.sort(np.abs(a.numpy())), np.sort(np.abs(b.numpy())),
                               rtol=1e-9, atol=1e-11)
    sa = singular_values(f, None, x, k=4, method="dense").singular_values
    sb = singular_values(g, None, x @ Q, k=4, method="dense").singular_values
    torch.testing.assert_close(sa, sb, rtol=1e-9, atol=1e-11)


def test_to_dataset_netcdf_round_trip(power, tmp_path):
    res = eigvals(power.map, None, power.state(0), k=3)
    sv = singular_values(power.map, None, power.state(0), k=2)
    ds = xr.merge([res.to_dataset(), sv.to_dataset()], combine_attrs="override")
    for name, var in ds.data_vars.items():
        assert var.attrs["long_name"] and "units" in var.attrs, name
    assert set(ds["eig_real"].dims) == {"eig"} and set(ds["singular_value"].dims) == {"mode"}
    assert float(ds["spectral_radius"]) == pytest.approx(2 / 3)
    assert json.loads(ds.attrs["map"])["map"] == "SphereMap"
    path = tmp_path / "spec.nc"
    ds.to_netcdf(path)
    back = xr.open_dataset(path)
    xr.testing.assert_identical(back.load(), ds)
    back.close()


def test_bad_input(power):
    x = power.state(0)
    with pytest.raises(ConfigError, match="max_dense"):
        eigvals(power.map, None, x, k=2, method="dense", max_dense=4)
    with pytest.raises(ConfigError, match="method"):
        eigvals(power.map, None, x, method="magic")
    with pytest.raises(ConfigError, match="k must be"):
        eigvals(power.map, None, x, k=99)
    with pytest.raises(InputError, match=r"\(T, D\)"):
        eigvals(power.map, None, x[None], k=2)
    with pytest.raises(InputError, match="zero-norm"):
        singular_values(power.map, None, torch.zeros_like(x), k=2)
    with pytest.raises(ConfigError, match="which"):
        eigvals(power.map, None, x, which="SR")
    with pytest.raises(ConfigError, match="Krylov"):
        eigvals(power.map, None, x, which="SM", method="krylov")


def test_smallest_magnitudes_dense_and_arpack_agree(one_thread):
    """Power map at +q_1: tangent eigenvalues lambda_j / lambda_1; the smallest come first."""
    lam = [4.0, 3.0, 2.5, 2.0, 1.5, 1.2, 1.0, 0.8]
    o = oracles.power(lam, tokens=2, seed=1)
    x = o.state(0)
    want = torch.tensor(sorted(lam[1:]) * 2, dtype=torch.float64).sort().values[:3] / 4.0
    for method in ("dense", "arpack"):
        res = eigvals(o.map, None, x, k=3, which="SM", method=method)
        assert res.converged
        torch.testing.assert_close(res.eigenvalues.abs(), want, rtol=1e-8, atol=1e-10)
