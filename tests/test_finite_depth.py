"""Finite-depth Lyapunov spectra (depthflow.dynamics.tangent.finite_depth): known answers, invariants,
finite differences on a real ViT, status flags and input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import jacrev

from depthflow.dynamics import maps
from depthflow.dynamics import oracles
from depthflow.dynamics.tangent.finite_depth import (FiniteDepthStatus, Propagator,
                                                     finite_depth_spectrum)
from depthflow.dynamics.tangent.stretching import layer_stretching, segment_spectra
from depthflow.errors import ConfigError, InputError

from _models import tiny_vit

F64 = torch.float64
L, D = 12, 64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def family():
    """x -> A_t x, t = 1..12, A_t Gaussian / sqrt(D), one token; the product A = A_L..A_1
    and a start state x (1, D)."""
    As = torch.randn(L, D, D, generator=_gen(0), dtype=F64) / math.sqrt(D)
    A = torch.eye(D, dtype=F64)
    for M in As:
        A = M @ A
    x = torch.randn(1, D, generator=_gen(1), dtype=F64)   # = the seed-1 start draw: redrawn
    return oracles.linear_family(As, tokens=1).map, A, x


def _direction_closed_form(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """s_i((I - u_e u_e^T) A (I - u_s u_s^T)) / ||A u_s|| with u_e = A u_s / ||A u_s||."""
    us = x / x.norm()
    Au = A @ us
    ue = Au / Au.norm()
    eye = torch.eye(len(us), dtype=F64)
    P = (eye - torch.outer(ue, ue)) @ A @ (eye - torch.outer(us, us))
    return torch.linalg.svdvals(P) / Au.norm()


def test_state_exponents_linear_family(family, one_thread):
    f, A, x = family
    res = finite_depth_spectrum(f, x, kind="state", k=8, tol=1e-11)
    expected = torch.log(torch.linalg.svdvals(A)[:8]) / L
    assert res.status.tolist() == [FiniteDepthStatus.CONVERGED]
    torch.testing.assert_close(res.exponents[0], expected, atol=1e-8, rtol=0)
    assert res.applications[0] <= 64


def test_direction_exponents_linear_family(family, one_thread):
    f, A, x = family
    res = finite_depth_spectrum(f, x, kind="direction", k=8, tol=1e-11)
    expected = torch.log(_direction_closed_form(A, x[0])[:8]) / L
    assert res.success.all()
    torch.testing.assert_close(res.exponents[0], expected, atol=1e-8, rtol=0)
    # the norm r_s cancels: scaling the start state changes nothing
    again = finite_depth_spectrum(f, 7.5 * x, kind="direction", k=8, tol=1e-11)
    torch.testing.assert_close(again.exponents, res.exponents, atol=1e-8, rtol=0)


@pytest.mark.parametrize("kind", ["state", "direction"])
def test_sorted_and_seed_independent(family, kind, one_thread):
    f, _, x = family
    a = finite_depth_spectrum(f, x, kind=kind, k=6, tol=1e-10, seed=0)
    b = finite_depth_spectrum(f, x, kind=kind, k=6, tol=1e-10, seed=1)
    assert (a.exponents[0, 1:] <= a.exponents[0, :-1]).all()
    torch.testing.assert_close(a.exponents, b.exponents, atol=1e-9, rtol=0)


@pytest.mark.parametrize("kind", ["state", "direction"])
def test_rotation_family_gives_zero(kind, one_thread):
    Q = torch.stack([oracles.random_orthogonal(8, seed=t) for t in range(6)])
    f = oracles.linear_family(Q, tokens=3).map
    x = torch.randn(2, 3, 8, generator=_gen(2), dtype=F64)
    res = finite_depth_spectrum(f, x, kind=kind, k=5, tol=1e-10)
    assert res.success.all()
    torch.testing.assert_close(res.exponents, torch.zeros(2, 5, dtype=F64), atol=1e-10,
                               rtol=0)


# ----------------------------------------------------------------------------- invariants

T_MIX, D_MIX = 3, 5


def _mixing_map():
    """A nonlinear 3-layer map that mixes tokens: x -> x + tanh(W_t x M_t) (T = 3, D = 5)."""
    g = _gen(5)
    W = torch.randn(3, T_MIX, T_MIX, generator=g, dtype=F64) * 0.6
    M = torch.randn(3, D_MIX, D_MIX, generator=g, dtype=F64) * 0.6

    def fn(t, x):
        return x + torch.tanh(W[t - 1] @ x @ M[t - 1])
    return maps.from_function(fn, depths=range(1, 4), name="mixing")


def _dense_direction(f, x, in_tokens, out_tokens):
    """Ambient dense P (T*D, T*D) of one state x (T, D), from jacrev of the composed map
    u -> directions at the end, times the input tangent projection."""
    r = x.norm(dim=-1, keepdim=True)
    u0 = x / r

    def g(u):
        z = r * u
        for t in range(1, 4):
            z = f(t, z)
        return z / z.norm(dim=-1, keepdim=True)
    J = jacrev(g)(u0).reshape(x.numel(), x.numel())
    T, Dm = x.shape
    proj = torch.zeros(T, Dm, T, Dm, dtype=F64)
    for i in in_tokens:
        proj[i, :, i, :] = torch.eye(Dm, dtype=F64) - torch.outer(u0[i], u0[i])
    keep = torch.zeros(T, Dm, dtype=F64)
    keep[list(out_tokens)] = 1.0
    return keep.reshape(-1, 1) * (J @ proj.reshape(x.numel(), x.numel())), g(u0)


def _tangent_basis(u: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random orthonormal basis (D, D-1) of the tangent space at the unit vector u."""
    z = torch.randn(len(u), len(u) - 1, generator=gen, dtype=F64)
    z = z - torch.outer(u, u @ z)
    return torch.linalg.qr(z).Q


@settings(max_examples=8)
@given(seed=st.integers(0, 10_000), restrict=st.sampled_from(["all", "cls", "all_to_cls"]))
def test_singular_values_invariant_to_tangent_bases(seed, restrict):
    f = _mixing_map()
    x = torch.randn(T_MIX, D_MIX, generator=_gen(3), dtype=F64) + 0.5
    tin, tout = {"all": ([0, 1, 2], [0, 1, 2]), "cls": ([0], [0]),
                 "all_to_cls": ([0, 1, 2], [0])}[restrict]
    P, ue = _dense_direction(f, x, tin, tout)
    P = P.reshape(T_MIX, D_MIX, T_MIX, D_MIX)
    u0 = x / x.norm(dim=-1, keepdim=True)
    gen = _gen(seed)
    for _ in range(2):          # two random bases of both tangent spaces: same values
        Bs = [_tangent_basis(u0[i], gen) for i in tin]
        Be = [_tangent_basis(ue[i], gen) for i in tout]
        coords = torch.cat([torch.cat([Be[a].T @ P[i, :, j, :] @ Bs[b]
                                       for b, j in enumerate(tin)], 1)
                            for a, i in enumerate(tout)], 0)
        dense = torch.linalg.svdvals(coords)
        k = min(4, len(dense))
        res = finite_depth_spectrum(f, x, start=0, stop=3, k=k, in_tokens=tin,
                                    out_tokens=tout, tol=1e-12, seed=seed)
        assert res.success.all()
        torch.testing.assert_close(res.singular_values[0], dense[:k], atol=1e-10, rtol=0)


def test_adjoint_consistent():
    f = _mixing_map()
    x = torch.randn(2, T_MIX, D_MIX, generator=_gen(4), dtype=F64)
    for kind in ("state", "direction"):
        op = Propagator(f, x, stop=3, kind=kind, in_tokens=[0, 2], out_tokens=[1, 2])
        v = torch.randn(x.shape, generator=_gen(6), dtype=F64)
        w = torch.randn(x.shape, generator=_gen(7), dtype=F64)
        lhs = (op.matvec(v) * w).sum((1, 2))
        rhs = (v * op.rmatvec(w)).sum((1, 2))
        torch.testing.assert_close(lhs, rhs, atol=1e-12, rtol=1e-12)


def test_jvp_modes_and_batching_agree():
    f = _mixing_map()
    x = torch.randn(3, T_MIX, D_MIX, generator=_gen(8), dtype=F64)
    ref = finite_depth_spectrum(f, x, stop=3, k=4, tol=1e-12)
    for opts in ({"jvp": "linearize"}, {"jvp": "plain"}, {"batch": False}):
        other = finite_depth_spectrum(f, x, stop=3, k=4, tol=1e-12, **opts)
        torch.testing.assert_close(other.exponents, ref.exponents, atol=1e-10, rtol=0)
    assert ref.jvp == "transpose"


# ----------------------------------------------------------------------------- real ViT


@pytest.fixture(scope="module")
def vit_state():
    model = tiny_vit(0, dtype=F64)
    img = torch.randn(2, 1, 8, 8, generator=_gen(0), dtype=F64)
    with torch.no_grad():
        x0 = model.embed(img)                                           # (2, 19, 32)
    return model, maps.from_model(model), x0


@pytest.mark.parametrize("tokens", [(None, None), ([0], [0]), (None, [0])])
def test_propagator_equals_finite_differences(vit_state, tokens, one_thread):
    model, F, x0 = vit_state
    tin, tout = tokens
    op = Propagator(F, x0, start=0, stop=3, in_tokens=tin, out_tokens=tout)
    v = op.project_in(torch.randn(x0.shape, generator=_gen(9), dtype=F64))
    r = x0.norm(dim=-1, keepdim=True)
    u = x0 / r

    def final_directions(h):
        uh = u + h * v
        with torch.no_grad():
            y = model.rollout(r * uh / uh.norm(dim=-1, keepdim=True))
        return y / y.norm(dim=-1, keepdim=True)
    h = 1e-5
    fd = (final_directions(h) - final_directions(-h)) / (2 * h)
    if tout is not None:
        fd = fd[:, tout]
    pv = op.matvec(v)
    pv = pv if tout is None else pv[:, tout]
    assert float(pv.abs().max()) > 1e-2
    torch.testing.assert_close(pv, fd, atol=1e-7, rtol=1e-6)


def test_cls_spectrum_and_vectors(vit_state, one_thread):
    """cls -> cls: the solver exhausts the 31-dim tangent space and equals the dense SVD;
    the top right vector is a tangent cls perturbation stretched by s_1."""
    model, F, x0 = vit_state
    res = finite_depth_spectrum(F, x0, k=3, in_tokens=[0], out_tokens=[0], vectors=True,
                                tol=1e-10)
    assert res.success.all()
    op = Propagator(F, x0, in_tokens=[0], out_tokens=[0])
    cols = [op.matvec(_basis(x0, j))[:, 0] for j in range(32)]
    dense = torch.stack(cols, -1)                                       # (2, 32, 32)
    torch.testing.assert_close(res.singular_values, torch.linalg.svdvals(dense)[:, :3],
                               atol=1e-10, rtol=0)
    v1 = res.right[:, 0]
    assert v1[:, 1:].abs().max() == 0
    assert (v1[:, 0] * x0[:, 0]).sum(-1).abs().max() < 1e-10
    torch.testing.assert_close(op.matvec(v1).norm(dim=(1, 2)), res.singular_values[:, 0])


def _basis(x0, j):
    e = torch.zeros_like(x0)
    e[:, 0, j] = 1.0
    return e


def test_layer_stretching_and_segments(family, one_thread):
    f, _, x = family
    As = torch.stack([_matrix(f, t) for t in range(1, L + 1)])
    traj = [x]
    for t in range(1, L + 1):
        traj.append(f(t, traj[-1]))
    traj = torch.stack(traj)                                            # (L+1, 1, D)
    out = layer_stretching(f, traj, layers=[1, 5, 12], k=3, tol=1e-11)
    for j, t in enumerate([1, 5, 12]):
        expected = _direction_closed_form(As[t - 1], traj[t - 1, 0])[:3]
        torch.testing.assert_close(out.sigma[0, j], expected, atol=1e-10, rtol=0)
    ds = out.to_dataset()
    assert ds["sigma"].dims == ("sample", "layer", "mode")
    assert list(ds["layer"].values) == [1, 5, 12]
    assert ds["sigma"].attrs["long_name"] == ("largest stretch of a direction perturbation "
                                             "by this layer, norms held")
    seg = segment_spectra(f, traj, segments=[(0, 6), (6, 12)], k=3, tol=1e-11)
    assert seg.to_dataset()["lyapunov_exponent"].dims == ("sample", "segment", "mode")
    whole = finite_depth_spectrum(f, x, k=3, tol=1e-11)
    torch.testing.assert_close(seg.results[0].exponents,
                               finite_depth_spectrum(f, x, stop=6, k=3,
                                                     tol=1e-11).exponents)
    assert whole.exponents.shape == (1, 3)


def _matrix(f, t):
    e = torch.eye(D, dtype=F64)
    return f(t, e).T                                    # rows e_i -> A e_i as columns


# ----------------------------------------------------------------------------- status, errors


def test_status_nonfinite_and_max_iter(one_thread):
    def fn(t, x):
        bad = (x[..., :1, :1] > 100).to(x.dtype)     # sample flagged by a huge entry
        return torch.tanh(x) + x / (1 - bad)
    f = maps.from_function(fn, depths=[1, 2], name="nan for one sample")
    x = torch.randn(2, 3, 4, generator=_gen(3), dtype=F64)
    x[1, 0, 0] = 1e3
    res = finite_depth_spectrum(f, x, k=2, tol=1e-10)
    assert res.status.tolist() == [FiniteDepthStatus.CONVERGED, FiniteDepthStatus.NONFINITE]
    assert torch.isnan(res.exponents[1]).all() and torch.isfinite(res.exponents[0]).all()
    assert "NaN" in res.messages[1]
    mixing = _mixing_map()
    y = torch.randn(T_MIX, D_MIX, generator=_gen(4), dtype=F64)
    res = finite_depth_spectrum(mixing, y, stop=3, k=3, tol=1e-14, max_iter=4)
    assert res.status.tolist() == [FiniteDepthStatus.MAX_ITER]
    assert res.applications.tolist() == [4] and torch.isfinite(res.exponents).all()
    assert "max_iter" in FiniteDepthStatus.MAX_ITER.message


def test_dataset_house_style(family):
    f, _, x = family
    ds = finite_depth_spectrum(f, x, k=4, tol=1e-10).to_dataset()
    assert set(ds.data_vars) == {"lyapunov_exponent", "singular_value", "residual", "status",
                                 "applications"}
    for name, var in ds.variables.items():
        assert "long_name" in var.attrs and "units" in var.attrs, name
    status = ds["status"]
    assert status.dtype == np.int8
    assert list(status.attrs["flag_values"]) == [0, 1, 2]
    assert status.attrs["flag_meanings"] == "converged max_iter nonfinite"
    assert ds.attrs["kind"] == "direction" and ds.attrs["stop"] == L
    assert all(not isinstance(v, (bool, dict, type(None))) for v in ds.attrs.values())


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"k": 64}, ConfigError, "k must"),
    ({"k": 0}, ConfigError, "k must"),
    ({"start": 5, "stop": 5}, ConfigError, "start"),
    ({"start": 0, "stop": 13}, ConfigError, "stop"),
    ({"in_tokens": [1]}, ConfigError, "in_tokens"),
    ({"out_tokens": []}, ConfigError, "out_tokens"),
    ({"kind": "angle"}, ConfigError, "kind"),
    ({"tol": 0.0}, ConfigError, "tol"),
    ({"max_iter": 2, "k": 4}, ConfigError, "max_iter"),
    ({"jvp": "fast"}, ConfigError, "jvp"),
])
def test_bad_configuration(family, kwargs, exc, word):
    f, _, x = family
    with pytest.raises(exc, match=word):
        finite_depth_spectrum(f, x, **kwargs)


def test_bad_input(family):
    f, _, x = family
    with pytest.raises(InputError, match="zero-norm"):
        finite_depth_spectrum(f, torch.zeros_like(x), k=2)
    finite_depth_spectrum(f, torch.zeros_like(x), k=2, kind="state")   # fine for states
    with pytest.raises(InputError, match="x "):
        finite_depth_spectrum(f, x[0], k=2)
    with pytest.raises(InputError, match="NaN"):
        finite_depth_spectrum(f, x * float("nan"), k=2)
    with pytest.raises(ConfigError, match="DepthMap"):
        finite_depth_spectrum(lambda t, z: z, x, k=2)


def test_one_layer_propagators_do_not_compose(family):
    """Docs derivation: P_e..P_(s+1) = P exactly when later directions ignore intermediate
    norms (a per-token linear family), not for a token-mixing nonlinear map."""
    def chain(f, x, layers):
        ops, z = [], x
        for t in layers:
            ops.append(Propagator(f, z, start=t - 1, stop=t))
            z = f(t, z)
        return ops

    for f, x, n, composes in [
            (family[0], family[2].repeat(2, 1), L, True),
            (_mixing_map(), torch.randn(T_MIX, D_MIX, generator=_gen(11), dtype=F64), 3,
             False)]:
        whole = Propagator(f, x, start=0, stop=n)
        v = whole.project_in(torch.randn(whole.x.shape, generator=_gen(12), dtype=F64))
        w = v
        for op in chain(f, x, range(1, n + 1)):
            w = op.matvec(w)
        gap = float((w - whole.matvec(v)).norm() / whole.matvec(v).norm())
        assert (gap < 1e-12) if composes else (gap > 1e-3), gap


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    model = tiny_vit(0, dtype=F64)
    img = torch.randn(2, 1, 8, 8, generator=_gen(0), dtype=F64)
    with torch.no_grad():
        x0 = model.embed(img)
    cpu = finite_depth_spectrum(maps.from_model(model), x0, k=3, out_tokens=[0], tol=1e-10)
    gpu_model = tiny_vit(0, dtype=F64).cuda()
    gpu = finite_depth_spectrum(maps.from_model(gpu_model), x0.cuda(), k=3, out_tokens=[0],
                                tol=1e-10)
    torch.testing.assert_close(gpu.exponents, cpu.exponents, atol=1e-10, rtol=0)
