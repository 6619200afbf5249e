"""Perturbation recovery: closed-form curves on contracting maps, the adversarial direction
against a dense SVD of the directional propagator, batch invariance, solver flags."""

import functools
import math

import numpy as np
import pytest
import torch

from depthflow.dynamics import maps
from depthflow.dynamics.recovery import (AdversarialStatus, DirectionalPropagator,
                                         RecoveryResult, perturbation_recovery,
                                         top_singular_direction)
from depthflow.errors import ConfigError, InputError

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _diag_family(c, depth=5):
    c = torch.as_tensor(c, dtype=F64)
    return maps.from_function(lambda t, x: x * c, depths=range(1, depth + 1))


def _on_e1(n, tokens, dim):
    x = torch.zeros(n, tokens, dim, dtype=F64)
    x[..., 0] = torch.arange(1, tokens + 1, dtype=F64)      # different norms per token
    return x


def _mixing_family(T, D, depth, seed=0):
    """Linear maps mixing tokens: x -> reshape(M_t vec(x)), with the matrices."""
    gen = torch.Generator().manual_seed(seed)
    Ms = torch.eye(T * D, dtype=F64) + 0.4 * torch.randn(depth, T * D, T * D, generator=gen,
                                                         dtype=F64) / math.sqrt(T * D)

    def fn(t, x):
        return (x.reshape(*x.shape[:-2], T * D) @ Ms[t - 1].T).reshape(x.shape)

    return maps.from_function(fn, depths=range(1, depth + 1)), Ms


def _dense_propagator(Ms, x, start, stop, out):
    """Closed form: blockdiag((I - u_e u_e^T) / r_e)[out] M_stop..M_start+1
    blockdiag(r_s (I - u_s u_s^T))."""
    T, D = x.shape
    M = torch.eye(T * D, dtype=F64)
    for t in range(start + 1, stop + 1):
        M = Ms[t - 1] @ M
    xe = (M @ x.reshape(-1)).reshape(T, D)
    r_in, u_in = x.norm(dim=-1), x / x.norm(dim=-1, keepdim=True)
    r_out, u_out = xe.norm(dim=-1), xe / xe.norm(dim=-1, keepdim=True)
    eye = torch.eye(D, dtype=F64)
    Pin = torch.block_diag(*[r_in[i] * (eye - torch.outer(u_in[i], u_in[i])) for i in range(T)])
    Pout = torch.block_diag(*[(eye - torch.outer(u_out[i], u_out[i])) / r_out[i]
                              for i in range(T)])
    rows = torch.cat([torch.arange(i * D, (i + 1) * D) for i in out])
    return (Pout @ M @ Pin)[rows]


def test_random_curve_median_equals_the_closed_form():
    c = 0.6                                   # every direction orthogonal to e1 shrinks by c
    f = _diag_family([1.0, c, c, c])
    theta = torch.tensor([0.1, 0.5], dtype=F64)
    res = perturbation_recovery(f, _on_e1(5, 3, 4), depths=[0, 2], angles=theta.tolist(),
                                direction="random", n_draws=3,
                                kinds={"cls": [0], "patch": [1, 2]}, n_boot=200)
    ds = res.to_dataset()
    for i, l0 in enumerate([0, 2]):
        n = torch.arange(0, 6 - l0, dtype=F64)
        want = torch.atan(c ** n[None] * theta.tan()[:, None]) / theta[:, None]   # (A, n)
        for kind in ("cls", "patch"):
            med = ds["median"].sel(direction="random", inject_depth=l0, kind=kind)
            np.testing.assert_allclose(med.values[:, l0:], want.numpy(), atol=1e-12)
            assert np.isnan(med.values[:, :l0]).all()
            lo = ds["median_low"].sel(direction="random", inject_depth=l0, kind=kind)
            np.testing.assert_allclose(lo.values[:, l0:], want.numpy(), atol=1e-12)
    assert (ds["n_images"].sel(direction="random") == 5).all()
    for name, var in ds.data_vars.items():
        assert var.attrs["long_name"] and "units" in var.attrs, name


def test_median_and_bootstrap_interval_over_images():
    """Images with different curves: the median is the middle image, the interval comes from
    resampling images and brackets it."""
    f = _diag_family([1.0, 0.5, 0.5])
    x = _on_e1(1, 1, 3)
    res = perturbation_recovery(f, x, depths=[0], angles=[0.1], direction="random",
                                n_boot=500)
    values = torch.tensor([0.2, 0.5, 0.9, 1.3, 3.0], dtype=F64)
    fake = res.ratio_random.repeat(5, 1, 1, 1, 1, 1) * values[:, None, None, None, None, None]
    many = RecoveryResult(fake, None, res.adversarial_status.repeat(5, 1, 1),
                          res.adversarial_gain.repeat(5, 1, 1), None, list(range(5)),
                          res.inject_depths, res.angles, res.depths, res.kinds, res.map_info,
                          res.config)
    s = many.summary()
    curve = res.ratio_random[0, 0, 0, 0, :, 0].numpy()
    np.testing.assert_allclose(s["median"].values[0, 0, 0, :, 0], 0.9 * curve)
    lo, hi = s["median_low"].values[0, 0, 0, -1, 0], s["median_high"].values[0, 0, 0, -1, 0]
    assert 0.2 * curve[-1] <= lo < 0.9 * curve[-1] < hi <= 3.0 * curve[-1]
    again = many.summary()
    assert float(again["median_low"][0, 0, 0, -1, 0]) == lo        # seeded


@pytest.mark.parametrize("method", ["dense", "subspace"])
def test_adversarial_direction_is_the_top_right_singular_vector(method):
    T, D, L = 3, 4, 3
    f, Ms = _mixing_family(T, D, L)
    x = torch.randn(2, T, D, dtype=F64, generator=torch.Generator().manual_seed(1))
    kinds = {"cls": [0], "all": [0, 1, 2]}
    solver = functools.partial(top_singular_direction, method=method, tol=1e-12,
                               max_iter=2000)
    res = perturbation_recovery(f, x, depths=[1], angles=[1e-6], direction="adversarial",
                                kinds=kinds, adversarial=solver, n_boot=0)
    assert (res.adversarial_status == AdversarialStatus.CONVERGED).all()
    for s in range(2):
        base = x[s]
        for t in range(1, 2):
            base = (Ms[t - 1] @ base.reshape(-1)).reshape(T, D)
        for k, toks in enumerate(kinds.values()):
            P = _dense_propagator(Ms, base, 1, L, toks)
            U, S, Vh = torch.linalg.svd(P)
            v = res.adversarial_direction[s, 0, k].reshape(-1)
            assert abs(float(v @ Vh[0])) == pytest.approx(1.0, abs=1e-8)
            assert float(res.adversarial_gain[s, 0, k]) == pytest.approx(float(S[0]),
                                                                         rel=1e-8)
            # linear limit: normalised by its own angle on the kind, the curve ends at
            # s_1 / ||v restricted to the kind's tokens|| (s_1 when the kind is everything)
            own = float(res.adversarial_direction[s, 0, k][toks].norm())
            end = float(res.ratio_adversarial[s, 0, 0, -1, k])
            assert end == pytest.approx(float(S[0]) / own, rel=1e-5)
            theta_k = float(res.adversarial_inject_angle[s, 0, 0, k])
            assert theta_k == pytest.approx(1e-6 * math.sqrt(T / len(toks)) * own, rel=1e-12)


def test_propagator_adjoint_and_weakest_contraction():
    f = _diag_family([1.0, 0.8, 0.3, 0.2], depth=4)
    x = _on_e1(1, 2, 4)[0]
    P = DirectionalPropagator(f, x, 1, 4, [0, 1])
    gen = torch.Generator().manual_seed(0)
    v, w = torch.randn(2, 2, 4, generator=gen, dtype=F64), torch.randn(2, 2, 4, generator=gen,
                                                                        dtype=F64)
    assert float((P.matmat(v) * w).sum()) == pytest.approx(float((v * P.rmatmat(w)).sum()),
                                                           rel=1e-12)
    d, ok = top_singular_direction(f, x, 1, 4, [0], seed=3)
    assert ok and abs(float(d[0, 1])) == pytest.approx(1.0, abs=1e-8)  # e2 of token 0
    res = perturbation_recovery(f, _on_e1(2, 1, 4), depths=[1], angles=[0.2], n_draws=4)
    adv = res.ratio_adversarial[:, 0, 0, -1, 0]
    torch.testing.assert_close(adv, torch.full((2,), math.atan(0.8 ** 3 * math.tan(0.2)) / 0.2,
                                               dtype=F64), atol=1e-8, rtol=0)
    assert (res.ratio_random[:, 0, 0, :, -1, 0] <= adv[:, None] + 1e-12).all()


def test_results_do_not_depend_on_batching():
    from _models import tiny_vit

    model = tiny_vit(0, dtype=F64, depth=3, embed_dim=16)
    F = maps.from_model(model)
    x0 = torch.randn(4, 5, 16, dtype=F64, generator=torch.Generator().manual_seed(0))
    kw = dict(depths=[1], angles=[0.05], n_draws=2, kinds={"cls": [0], "patch": [2, 3, 4]},
              n_boot=50)
    whole = perturbation_recovery(F, x0, sample_index=[10, 11, 12, 13], **kw)
    parts = [perturbation_recovery(F, x0[:2], sample_index=[10, 11], **kw),
             perturbation_recovery(F, x0[2:], sample_index=[12, 13], **kw)]
    joined = RecoveryResult.concat(parts)
    for name in ("ratio_random", "ratio_adversarial", "adversarial_gain"):
        torch.testing.assert_close(getattr(joined, name), getattr(whole, name), atol=1e-10,
                                   rtol=0, equal_nan=True)
    assert torch.equal(joined.adversarial_status, whole.adversarial_status)
    ds = whole.to_dataset()
    assert list(ds["sample"].values) == [10, 11, 12, 13]
    np.testing.assert_allclose(joined.summary()["median"].values, ds["median"].values,
                               atol=1e-10)
    # a different global index draws a different random direction
    other = perturbation_recovery(F, x0[:2], sample_index=[20, 21], **kw)
    assert not torch.allclose(other.ratio_random, parts[0].ratio_random, equal_nan=True)


def test_unconverged_solver_is_flagged_and_left_out_of_the_summary():
    f, _ = _mixing_family(3, 4, 3)
    x = torch.randn(3, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    capped = functools.partial(top_singular_direction, method="subspace", max_iter=1,
                               oversample=1, tol=1e-14)
    res = perturbation_recovery(f, x, depths=[0], angles=[0.1], adversarial=capped,
                                n_boot=20)
    assert (res.adversarial_status == AdversarialStatus.NOT_CONVERGED).all()
    ds = res.to_dataset()
    assert int(ds["n_images"].sel(direction="adversarial").squeeze()) == 0
    assert np.isnan(ds["median"].sel(direction="adversarial").values).all()
    assert int(ds["n_images"].sel(direction="random").squeeze()) == 3

    def half(f, x, start, stop, out, *, seed):          # a custom solver: flags one sample
        v, _ = top_singular_direction(f, x, start, stop, out, seed=seed)
        return v, bool(x[0, 0] < 2.5)

    f = _diag_family([1.0, 0.8, 0.3, 0.2], depth=4)
    x = _on_e1(3, 1, 4) * torch.tensor([1.0, 2.0, 3.0], dtype=F64)[:, None, None]
    res = perturbation_recovery(f, x, depths=[0], angles=[0.1], adversarial=half, n_boot=20)
    assert res.adversarial_status[:, 0, 0].tolist() == [0, 0, 1]
    assert int(res.to_dataset()["n_images"].sel(direction="adversarial").squeeze()) == 2


def test_recovery_on_a_tiny_vit_runs_and_labels():
    from _models import tiny_vit

    model = tiny_vit(0, dtype=F64, depth=3, embed_dim=16)
    x0 = torch.randn(2, 5, 16, dtype=F64, generator=torch.Generator().manual_seed(0))
    res = perturbation_recovery(maps.from_model(model), x0, depths=[1], angles=[0.05],
                                kinds={"cls": [0], "register": [1], "patch": [2, 3, 4]},
                                n_boot=20)
    ds = res.to_dataset()
    assert list(ds["kind"].values) == ["cls", "register", "patch"]
    assert torch.isfinite(res.ratio_random[:, :, :, :, 1:]).all()
    np.testing.assert_allclose(ds["ratio_random"].sel(depth=1).values, 1.0, atol=1e-9)
    assert (res.adversarial_status == AdversarialStatus.CONVERGED).all()


def test_bad_inputs():
    f = _diag_family([1.0, 0.5])
    with pytest.raises(ConfigError, match="depth-indexed"):
        perturbation_recovery(maps.frozen(f, 1), _on_e1(1, 1, 2))
    with pytest.raises(ConfigError, match="injection depths"):
        perturbation_recovery(f, _on_e1(1, 1, 2), depths=[5])
    with pytest.raises(ConfigError, match="angles"):
        perturbation_recovery(f, _on_e1(1, 1, 2), angles=[2.0])
    with pytest.raises(ConfigError, match="kinds"):
        perturbation_recovery(f, _on_e1(1, 1, 2), kinds={"cls": [3]})
    with pytest.raises(InputError, match="sample_index"):
        perturbation_recovery(f, _on_e1(2, 1, 2), sample_index=[1, 1])
    with pytest.raises(InputError, match="zero-norm"):
        perturbation_recovery(f, torch.zeros(1, 1, 2, dtype=F64))


def test_dataset_netcdf_round_trip(tmp_path):
    import xarray as xr

    f = _diag_family([1.0, 0.5, 0.5], depth=3)
    res = perturbation_recovery(f, _on_e1(3, 2, 3), depths=[0, 1], angles=[0.1], n_draws=2,
                                kinds={"cls": [0], "patch": [1]}, n_boot=30)
    ds = res.to_dataset(directions=True)
    ds.to_netcdf(tmp_path / "rec.nc")
    with xr.open_dataset(tmp_path / "rec.nc") as back:
        xr.testing.assert_identical(back.load(), ds)
    assert ds["adversarial_status"].attrs["flag_meanings"].split()[0] == "converged"


@pytest.mark.parametrize("method", ["dense", "subspace"])
def test_cls_ratio_of_a_cls_only_perturbation_does_not_depend_on_T(method):
    """Per-token linear map diag(1, 0.5, 0.25), tokens on e1, no token mixing: the cls
    adversarial direction is the cls token alone along e2, turned by phi = theta sqrt(T) at
    l0; its angle after n blocks is atan(0.5^n tan(phi)) exactly. Normalised by its own angle
    on the cls kind, the cls curve is that over phi -- 0.5^n to O(phi^2) at T = 5 and T = 65
    alike; normalised by theta (the RMS over all T tokens) it was sqrt(T) times larger."""
    L, theta = 4, 1e-3
    f = _diag_family([1.0, 0.5, 0.25], depth=L)
    solver = functools.partial(top_singular_direction, method=method, tol=1e-12,
                               max_iter=2000)
    ends = {}
    for T in (5, 65):
        x = _on_e1(1, T, 3)
        kinds = {"cls": [0], "patch": list(range(1, T))}
        res = perturbation_recovery(f, x, depths=[0], angles=[theta], kinds=kinds,
                                    adversarial=solver, n_boot=0, n_draws=2)
        assert res.adversarial_status[0, 0, 0] == AdversarialStatus.CONVERGED
        v = res.adversarial_direction[0, 0, 0]
        assert float(v[0].norm()) == pytest.approx(1.0, abs=1e-8)       # cls alone
        assert abs(float(v[0, 1])) == pytest.approx(1.0, abs=1e-8)      # along e2
        phi = theta * math.sqrt(T)
        assert float(res.adversarial_inject_angle[0, 0, 0, 0]) == pytest.approx(phi, rel=1e-12)
        n = torch.arange(L + 1, dtype=F64)
        exact = torch.atan(0.5 ** n * math.tan(phi)) / phi
        cls = res.ratio_adversarial[0, 0, 0, :, 0]
        torch.testing.assert_close(cls, exact, rtol=1e-9, atol=0)
        ends[T] = float(cls[-1])
        # the random direction turns every token by theta: its cls curve starts at 1
        assert res.ratio_random[0, 0, 0, :, 0, 0].tolist() == pytest.approx([1.0] * 2,
                                                                             rel=1e-9)
    assert ends[5] == pytest.approx(0.5 ** L, rel=1e-4)
    assert ends[65] == pytest.approx(ends[5], rel=1e-4)
    # the old normalisation (by theta) differed by sqrt(65 / 5) = 3.6 between the two
    assert ends[65] * math.sqrt(65) / (ends[5] * math.sqrt(5)) == pytest.approx(
        math.sqrt(13), rel=1e-4)
