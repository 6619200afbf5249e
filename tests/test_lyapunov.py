"""Lyapunov spectra by QR: closed-form exponents of oracle maps, code-path agreement, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from depthflow import maps
from depthflow.dynamics import oracles
from depthflow.dynamics.lyapunov import lyapunov_spectrum
from depthflow.errors import ConfigError, InputError

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _linear(A):
    return lambda x: x @ A.T


def test_sphere_power_map_exponents_are_log_eigenvalue_ratios():
    lam = [3.0, 2.0, 1.5, 1.0, 0.5]
    orc = oracles.power(lam, tokens=2)
    x0 = torch.randn(3, 2, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    res = lyapunov_spectrum(orc.map, x0, k=8, steps=10, transient=50)
    expected = orc.lyapunov_exponents[:8]        # log(lambda_j / lambda_1), per token
    assert res.tangent
    assert torch.allclose(res.exponents, expected.expand(3, -1), atol=1e-8)
    assert (res.status == 0).all()
    ds = res.to_dataset()
    assert ds["dyn_lyap_status"].attrs["flag_meanings"].startswith("converged")


@settings(max_examples=10)
@given(st.integers(0, 10_000), st.integers(2, 4))
def test_exponents_of_composed_linear_map_equal_log_abs_eigenvalues(seed, dim):
    gen = torch.Generator().manual_seed(seed)
    mags = torch.tensor([1.9 ** -i for i in range(dim)], dtype=F64) * 1.5
    signs = torch.where(torch.rand(dim, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    Q = oracles.random_orthogonal(dim, seed=seed)
    V = Q + 0.3 * torch.randn(dim, dim, generator=gen, dtype=F64)      # well conditioned
    B = V @ torch.diag(mags * signs) @ torch.linalg.inv(V)
    M = torch.eye(dim, dtype=F64) + 0.2 * torch.randn(dim, dim, generator=gen, dtype=F64)
    As = torch.stack([M, B @ torch.linalg.inv(M)])                     # A2 A1 = B
    fam = oracles.linear_family(As, tokens=1).map
    phase = maps.compose(fam, 0, 2)
    res = lyapunov_spectrum(phase, torch.randn(1, dim, dtype=F64, generator=gen), k=dim,
                            steps=20, transient=40, seed=seed)
    assert torch.allclose(res.exponents[0], mags.log(), atol=1e-6)


def test_non_autonomous_matches_qr_of_the_product_and_determinant():
    gen = torch.Generator().manual_seed(3)
    As = torch.randn(5, 4, 4, dtype=F64, generator=gen)
    fam = oracles.linear_family(As, tokens=1).map
    x0 = torch.randn(1, 4, dtype=F64, generator=gen)
    res = lyapunov_spectrum(fam, x0, k=4, seed=7)
    # sum of all exponents = mean log|det A_t| (independent of the initial frame)
    logdet = torch.linalg.slogdet(As).logabsdet.mean()
    assert math.isclose(float(res.exponents.sum()), float(logdet), abs_tol=1e-10)
    # telescoping QR: per-step QR equals one QR of the product applied to the same frame
    frame = torch.randn(4, 4, generator=torch.Generator().manual_seed(7), dtype=F64)
    q0 = torch.linalg.qr(frame.T).Q          # the routine's seeded frame: tangents as rows
    prod = torch.linalg.multi_dot(list(As.flip(0)))
    R = torch.linalg.qr(prod @ q0).R
    assert torch.allclose(res.exponents[0], R.diagonal().abs().log() / 5, atol=1e-10)
    assert list(res.step_index) == [1, 2, 3, 4, 5]


def test_vmapped_and_looped_jvps_agree_on_a_tiny_vit():
    from _models import tiny_vit

    model = tiny_vit(0, dtype=F64, depth=2, embed_dim=16)
    F = maps.from_model(model)
    x = torch.randn(2, 5, 16, dtype=F64, generator=torch.Generator().manual_seed(0))
    g = maps.sphere(maps.frozen(F, 2), x.norm(dim=-1).mean(0))
    u = x / x.norm(dim=-1, keepdim=True)
    a = lyapunov_spectrum(g, u, k=5, steps=6, batch=True)
    b = lyapunov_spectrum(g, u, k=5, steps=6, batch=False)
    assert torch.allclose(a.exponents, b.exponents, atol=1e-10)
    assert a.running.shape == (2, 6, 5)


def test_nan_map_is_flagged_not_raised():
    def fn(x):
        return torch.where(x[..., :1] > 0, x * float("nan"), 2 * x)

    f = maps.from_function(fn)
    x0 = torch.tensor([[[1.0, 0.5]], [[-1.0, 0.5]]], dtype=F64)
    res = lyapunov_spectrum(f, x0, k=2, steps=5)
    assert res.status.tolist() == [2, 0]
    assert torch.isnan(res.exponents[0]).all()
    assert torch.allclose(res.exponents[1], torch.full((2,), math.log(2), dtype=F64))


def test_bad_inputs_raise_clear_errors():
    fam = oracles.linear_family(torch.eye(3, dtype=F64).expand(2, 3, 3), tokens=1).map
    x0 = torch.ones(1, 3, dtype=F64)
    with pytest.raises(ConfigError, match="frozen"):
        lyapunov_spectrum(fam, x0, k=2, steps=10)
    auto = maps.frozen(fam, 1)
    with pytest.raises(ConfigError, match="steps"):
        lyapunov_spectrum(auto, x0, k=2)
    with pytest.raises(ConfigError, match="k must be"):
        lyapunov_spectrum(auto, x0, k=4, steps=3)
    sph = oracles.power([2.0, 1.0, 0.5], tokens=1).map
    with pytest.raises(InputError, match="zero-norm"):
        lyapunov_spectrum(sph, torch.zeros(1, 3, dtype=F64), k=1, steps=3)
