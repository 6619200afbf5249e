"""Perturbation recovery: closed-form decay on contracting oracles, bad input."""

import math

import pytest
import torch

from depthflow import maps
from depthflow.dynamics.recovery import perturbation_recovery
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


def test_random_perturbation_decays_geometrically_at_the_known_rate():
    c = 0.6                                   # every direction orthogonal to e1 shrinks by c
    f = _diag_family([1.0, c, c, c])
    theta = torch.tensor([0.1, 0.5], dtype=F64)
    res = perturbation_recovery(f, _on_e1(2, 3, 4), depths=[0, 2], angles=theta.tolist(),
                                n_directions=3, token_kinds=["cls", "patch", "patch"])
    for i, l0 in enumerate([0, 2]):
        for n in range(0, 6 - l0):
            expected = torch.atan(c ** n * theta.tan())          # tan(angle) = c^n tan(theta)
            got = res.angle[:, i, :, 0, :, l0 + n, :]            # (N, A, draws, T)
            assert torch.allclose(got, expected[None, :, None, None].expand_as(got),
                                  atol=1e-12)
        assert torch.isnan(res.angle[:, i, ..., :l0, :]).all()
    ratio = res.to_dataset()["dyn_recovery_ratio"]
    assert ratio.sel(kind="patch", inject_depth=0).values == pytest.approx(
        (torch.atan(c ** 5 * theta.tan()) / theta)[None, :, None, None].expand(
            2, 2, 1, 3).numpy(), abs=1e-12)


def test_adversarial_direction_follows_the_weakest_contraction():
    f = _diag_family([1.0, 0.8, 0.3, 0.2], depth=4)
    theta = 0.2
    res = perturbation_recovery(f, _on_e1(2, 1, 4), depths=[1], angles=[theta],
                                direction=["adversarial", "random"], n_directions=2)
    adv = res.ratio[:, 0, 0, 0]                               # (N, n, T)
    assert torch.allclose(adv[:, 0], torch.full_like(adv[:, 0],
                          math.atan(0.8 ** 3 * math.tan(theta)) / theta), atol=1e-8)
    assert torch.allclose(adv[:, 1], torch.full_like(adv[:, 1],
                          math.atan(0.3 ** 3 * math.tan(theta)) / theta), atol=1e-6)
    assert torch.allclose(res.singular_values, torch.tensor([0.8, 0.3], dtype=F64)
                          .expand(2, 1, 2), atol=1e-8)
    assert (res.ratio[:, 0, 0, 1] <= adv[:, :1] + 1e-12).all()   # random recovers faster


def test_recovery_on_a_tiny_vit_runs_and_labels():
    from _models import tiny_vit

    model = tiny_vit(0, dtype=F64, depth=3, embed_dim=16)
    x0 = torch.randn(2, 5, 16, dtype=F64, generator=torch.Generator().manual_seed(0))
    res = perturbation_recovery(maps.from_model(model), x0, depths=[1], angles=[0.05],
                                direction=("random", "adversarial"),
                                token_kinds=["cls", "register", "patch", "patch", "patch"])
    ds = res.to_dataset()
    assert set(ds["kind"].values) == {"cls", "register", "patch"}
    assert torch.isfinite(res.ratio).all()
    assert (ds["dyn_recovery_angle"].sel(depth=1).values == pytest.approx(0.05, abs=1e-9))


def test_bad_inputs():
    f = _diag_family([1.0, 0.5])
    with pytest.raises(ConfigError, match="depth-indexed"):
        perturbation_recovery(maps.frozen(f, 1), _on_e1(1, 1, 2))
    with pytest.raises(ConfigError, match="injection depths"):
        perturbation_recovery(f, _on_e1(1, 1, 2), depths=[5])
    with pytest.raises(ConfigError, match="angles"):
        perturbation_recovery(f, _on_e1(1, 1, 2), angles=[2.0])
    with pytest.raises(InputError, match="zero-norm"):
        perturbation_recovery(f, torch.zeros(1, 1, 2, dtype=F64))
