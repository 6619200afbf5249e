"""Conformance: every depth-map implementation passes the same checks (float64, tiny models).

Shape preserved, batch dims and torch.func.vmap consistent with single states, JVP equal to
central finite differences, ``<u, J v> = <J^T u, v>``, ``describe()`` JSON-serialisable.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.func import vmap

from depthflow.dynamics import maps
from depthflow.errors import ConfigError, InputError
from tests._models import randomize_parameters, tiny_vit

T, D = 5, 16
F64 = torch.float64


def _vit():
    model = tiny_vit(seed=3, embed_dim=D, depth=3, num_heads=2, mlp_hidden_dim=32)
    return model.double()


def _raptor():
    raptor = pytest.importorskip("depthflow.raptor")
    cfg = _vit().cfg
    model = raptor.Raptor(cfg, raptor.RaptorConfig(thresholds=(1,), mlp_hidden_dim=24))
    randomize_parameters(model, seed=5)
    return model.double().eval()


def _mlp_fn():
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(D, D, generator=gen, dtype=F64) / D ** 0.5
    mix = torch.randn(T, T, generator=gen, dtype=F64) / T

    def fn(x):                                   # token mixing + nonlinearity
        return x + torch.tanh(x @ W.T) + mix @ torch.sin(x)
    return fn


def _norms():
    return 1.0 + torch.arange(T, dtype=F64) / T


def _cases():
    """(id, builder -> (map, t)) for every map implementation."""
    return {
        "model": lambda: (maps.from_model(_vit()), 2),
        "function": lambda: (maps.from_function(_mlp_fn(), name="mlp"), None),
        "function_depths": lambda: (maps.from_function(lambda t, x: t * 0.3 * torch.tanh(x) + x,
                                                       depths=(1, 2)), 2),
        "composed": lambda: (maps.compose(maps.from_model(_vit()), 0, 3), None),
        "frozen": lambda: (maps.frozen(maps.from_model(_vit()), 3), None),
        "sphere_frozen": lambda: (maps.sphere(maps.frozen(maps.from_model(_vit()), 1),
                                              _norms()), None),
        "sphere_family": lambda: (maps.sphere(maps.from_model(_vit()), _norms()), 2),
        "raptor": lambda: (maps.from_model(_raptor()), 2),
        "raptor_frozen_sphere": lambda: (maps.sphere(maps.frozen(maps.from_model(_raptor()), 3),
                                                     _norms()), None),
    }


CASES = _cases()


def _point(seed: int, *shape: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, T, D, generator=gen, dtype=F64)


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request, one_thread):
    return CASES[request.param]()


def test_shape_and_batch_dims(case):
    f, t = case
    x = _point(0, 2, 3)
    y = f(t, x)
    assert y.shape == x.shape and y.dtype == F64
    assert torch.isfinite(y).all()
    torch.testing.assert_close(f(t, x[1, 2]), y[1, 2], rtol=1e-12, atol=1e-12)


def test_vmap_matches_batch(case):
    f, t = case
    x = _point(1, 4)
    torch.testing.assert_close(vmap(lambda z: f(t, z))(x), f(t, x), rtol=1e-12, atol=1e-12)


def test_jvp_equals_central_differences(case):
    f, t = case
    x, v = _point(2), _point(3)
    y, jv = f.jvp(t, x, v)
    torch.testing.assert_close(y, f(t, x), rtol=1e-12, atol=1e-12)
    h = 1e-5
    fd = (f(t, x + h * v) - f(t, x - h * v)) / (2 * h)
    torch.testing.assert_close(jv, fd, rtol=1e-6, atol=1e-7)
    assert jv.abs().max() > 1e-3                    # a real derivative, not zero


def test_adjoint_identity(case):
    f, t = case
    x, v, u = _point(4), _point(5), _point(6)
    jv = f.jvp(t, x, v)[1]
    jtu = f.vjp(t, x, u)[1]
    lhs, rhs = (u * jv).sum().detach(), (jtu * v).sum().detach()
    assert abs(float(lhs - rhs)) <= 1e-10 * max(1.0, abs(float(lhs)))


def test_describe_is_json(case):
    f, _ = case
    text = json.dumps(f.describe())
    assert json.loads(text)["map"] == type(f).__name__
    assert f.to_json() == json.dumps(f.describe(), sort_keys=True)


def test_autonomy_flags(case):
    f, t = case
    assert f.autonomous == (t is None)
    if not f.autonomous:
        with pytest.raises(ConfigError, match="depth index"):
            f(99, _point(0))


def test_sphere_outputs_and_tangent_adjoint(one_thread):
    f = maps.sphere(maps.frozen(maps.from_model(_vit()), 2), _norms())
    u = _point(7)
    u = u / u.norm(dim=-1, keepdim=True)
    y = f(None, u)
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(T, dtype=F64))
    v, w = _point(8), _point(9)
    _, jv = f.tangent_jvp(None, u, v)
    _, jtw = f.tangent_vjp(None, u, w)
    # the output of a normalised map is tangent at y; the adjoint is tangent at u
    assert (jv * y).sum(-1).abs().max() < 1e-12
    assert (jtw * u).sum(-1).abs().max() < 1e-12
    lhs = (maps.tangent_project(y, w) * jv).sum().detach()
    rhs = (jtw * maps.tangent_project(u, v)).sum().detach()
    assert abs(float(lhs - rhs)) < 1e-10 * max(1.0, abs(float(lhs)))
    info = f.describe()
    assert info["wrapper"].startswith("F_hat") and info["norms_shape"] == [T]
    assert info["base"]["map"] == "FrozenMap"


def test_sphere_rejects_zero_norms():
    with pytest.raises(InputError, match="positive"):
        maps.sphere(maps.from_function(torch.tanh), torch.zeros(T))
