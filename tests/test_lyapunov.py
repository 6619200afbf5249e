"""Asymptotic Lyapunov spectra by QR: closed-form exponents of autonomous oracle maps,
honest convergence, refusal of depth-indexed maps, bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from depthflow.dynamics import maps
from depthflow.dynamics import oracles
from depthflow.dynamics.tangent.lyapunov import LyapunovStatus, lyapunov_spectrum
from depthflow.errors import ConfigError, InputError

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def test_sphere_power_map_exponents_are_log_eigenvalue_ratios():
    lam = [3.0, 2.0, 1.5, 1.0, 0.5]
    orc = oracles.power(lam, tokens=2)
    x0 = torch.randn(3, 2, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    res = lyapunov_spectrum(orc.map, x0, k=8, steps=10, transient=50)
    expected = orc.lyapunov_exponents[:8]        # log(lambda_j / lambda_1), per token
    assert res.tangent
    assert torch.allclose(res.exponents, expected.expand(3, -1), atol=1e-8)
    assert (res.status == LyapunovStatus.CONVERGED).all() and res.sorted.all()
    ds = res.to_dataset()
    assert ds["status"].attrs["flag_meanings"].startswith("converged")
    assert list(ds["iteration"].values) == list(range(51, 61))
    for name, var in ds.data_vars.items():
        assert var.attrs["long_name"] and "units" in var.attrs, name


def test_non_normal_linear_map_gives_log_abs_eigenvalues_after_the_transient():
    """Non-normal A = [[0.9, 2], [0, 0.5]]: the singular values (2.2, 0.2) differ from the
    eigenvalue moduli; after a transient the exponents are log 0.9 and log 0.5."""
    orc = oracles.non_normal(0.9, 2.0, 0.5, tokens=2)
    x0 = torch.randn(2, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    res = lyapunov_spectrum(orc.map, x0, k=4, steps=50, transient=100, tol=1e-8)
    want = torch.tensor([math.log(0.9)] * 2 + [math.log(0.5)] * 2, dtype=F64)
    assert res.success.all()
    assert torch.allclose(res.exponents, want.expand(2, -1), atol=1e-10)
    # the transient matters: without it, the first steps' stretch by s_1 = 2.2 biases
    short = lyapunov_spectrum(orc.map, x0, k=4, steps=3, transient=0)
    assert float((short.exponents[:, 0] - math.log(0.9)).abs().max()) > 0.05


def test_rotation_gives_zero_exponents():
    orc = oracles.rotation([0.3, 1.1, 2.0], radius=1.0, tokens=2)
    x0 = torch.randn(1, 2, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    res = lyapunov_spectrum(orc.map, x0, k=12, steps=50, transient=10)
    assert res.success.all()
    assert torch.allclose(res.exponents, torch.zeros(1, 12, dtype=F64), atol=1e-12)


@settings(max_examples=8)
@given(st.integers(0, 10_000), st.integers(2, 4))
def test_composed_linear_map_exponents_equal_log_abs_eigenvalues(seed, dim):
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    mags = torch.tensor([1.9 ** -i for i in range(dim)], dtype=F64) * 1.5
    signs = torch.where(torch.rand(dim, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    Q = oracles.random_orthogonal(dim, seed=seed)
    V = Q + 0.3 * torch.randn(dim, dim, generator=gen, dtype=F64)      # well conditioned
    B = V @ torch.diag(mags * signs) @ torch.linalg.inv(V)
    M = torch.eye(dim, dtype=F64) + 0.2 * torch.randn(dim, dim, generator=gen, dtype=F64)
    As = torch.stack([M, B @ torch.linalg.inv(M)])                     # A2 A1 = B
    phase = maps.compose(oracles.linear_family(As, tokens=1).map, 0, 2)
    res = lyapunov_spectrum(phase, torch.randn(1, dim, dtype=F64, generator=gen), k=dim,
                            steps=20, transient=40, seed=seed)
    assert torch.allclose(res.exponents[0], mags.log(), atol=1e-6)


def test_converged_exponents_do_not_depend_on_the_seed():
    orc = oracles.power([3.0, 2.0, 1.5, 1.0, 0.5], tokens=1, seed=3)
    x0 = torch.randn(2, 1, 5, dtype=F64, generator=torch.Generator().manual_seed(5))
    a = lyapunov_spectrum(orc.map, x0, k=4, steps=40, transient=60, seed=0, tol=1e-6)
    b = lyapunov_spectrum(orc.map, x0, k=4, steps=40, transient=60, seed=123, tol=1e-6)
    assert a.success.all() and b.success.all()
    assert torch.allclose(a.exponents, b.exponents, atol=1e-8)


def test_unconverged_exponents_stay_in_qr_order_and_are_flagged():
    """A short run without transient: not converged, not sorted, running estimate kept."""
    A = torch.diag(torch.tensor([0.5, 2.0], dtype=F64))
    f = maps.from_function(lambda x: x @ A.T)
    x0 = torch.ones(4, 1, 2, dtype=F64)
    res = lyapunov_spectrum(f, x0, k=2, steps=2, transient=0, seed=1, tol=1e-12)
    assert (res.status == LyapunovStatus.NOT_CONVERGED).all() and not res.sorted.any()
    torch.testing.assert_close(res.exponents, res.running[:, -1])     # QR column order
    assert "unsorted" in LyapunovStatus.NOT_CONVERGED.message
    ds = res.to_dataset()
    assert (ds["sorted"].values == 0).all()


def test_vmapped_and_looped_jvps_agree_on_a_tiny_vit():
    from _models import tiny_vit

    model = tiny_vit(0, dtype=F64, depth=2, embed_dim=16)
    F = maps.from_model(model)
    x = torch.randn(2, 5, 16, dtype=F64, generator=torch.Generator().manual_seed(0))
    g = maps.sphere(maps.frozen(F, 2), x.norm(dim=-1).mean(0))
    u = x / x.norm(dim=-1, keepdim=True)
    a = lyapunov_spectrum(g, u, k=5, steps=6, transient=2, batch=True)
    b = lyapunov_spectrum(g, u, k=5, steps=6, transient=2, batch=False)
    assert torch.allclose(a.exponents, b.exponents, atol=1e-10)
    assert a.running.shape == (2, 6, 5)


def test_nan_map_is_flagged_not_raised():
    def fn(x):
        return torch.where(x[..., :1] > 0, x * float("nan"), 2 * x)

    f = maps.from_function(fn)
    x0 = torch.tensor([[[1.0, 0.5]], [[-1.0, 0.5]]], dtype=F64)
    res = lyapunov_spectrum(f, x0, k=2, steps=8, transient=1)
    assert res.status.tolist() == [LyapunovStatus.NONFINITE, LyapunovStatus.CONVERGED]
    assert torch.isnan(res.exponents[0]).all()
    assert torch.allclose(res.exponents[1], torch.full((2,), math.log(2), dtype=F64))


def test_depth_indexed_maps_are_refused_with_a_pointer_to_finite_depth():
    fam = oracles.linear_family(torch.eye(3, dtype=F64).expand(2, 3, 3), tokens=1).map
    x0 = torch.ones(1, 3, dtype=F64)
    # the dotted path in one literal, where the layout migration can rewrite it
    pointer = r"finite-depth spectra \(depthflow.dynamics.tangent.finite_depth\)"
    with pytest.raises(ConfigError, match=pointer):
        lyapunov_spectrum(fam, x0, k=2, steps=10)
    with pytest.raises(ConfigError, match="frozen"):
        lyapunov_spectrum(fam, x0, k=2, steps=10)


def test_bad_inputs_raise_clear_errors():
    fam = oracles.linear_family(torch.eye(3, dtype=F64).expand(2, 3, 3), tokens=1).map
    x0 = torch.ones(1, 3, dtype=F64)
    auto = maps.frozen(fam, 1)
    with pytest.raises(ConfigError, match="steps"):
        lyapunov_spectrum(auto, x0, k=2, steps=0)
    with pytest.raises(ConfigError, match="transient"):
        lyapunov_spectrum(auto, x0, k=2, steps=3, transient=-1)
    with pytest.raises(ConfigError, match="k must be"):
        lyapunov_spectrum(auto, x0, k=4, steps=3)
    sph = oracles.power([2.0, 1.0, 0.5], tokens=1).map
    with pytest.raises(InputError, match="zero-norm"):
        lyapunov_spectrum(sph, torch.zeros(1, 3, dtype=F64), k=1, steps=3)
    assert np.array_equal(sorted(int(s) for s in LyapunovStatus), [0, 1, 2, 3])


def test_dataset_netcdf_round_trip(tmp_path):
    import xarray as xr

    orc = oracles.power([3.0, 2.0, 1.0], tokens=1)
    x0 = torch.randn(2, 1, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    ds = lyapunov_spectrum(orc.map, x0, k=2, steps=8, transient=20).to_dataset()
    ds.to_netcdf(tmp_path / "lyap.nc")
    with xr.open_dataset(tmp_path / "lyap.nc") as back:
        xr.testing.assert_identical(back.load(), ds)
