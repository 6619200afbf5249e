"""The attention / MLP split: exact through the model's own block; a zeroed MLP leaves all
stretching to attention and vice versa; the non-normality estimate against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from depthflow.dynamics.branches import (BRANCHES, branch_split, branch_updates,
                                         half_step_maps, non_normality)
from depthflow.errors import ArchitectureError
from depthflow.dynamics.maps import from_function

from _models import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def _trajectory(model, n=3, seed=0):
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64)
    with torch.no_grad():
        return model.set_attention("math").trajectory(x)


def test_half_steps_compose_to_the_block_bit_for_bit():
    model = tiny_vit(0, dtype=torch.float64)
    traj = _trajectory(model)
    A, M = half_step_maps(model)
    for t in range(1, model.depth + 1):
        x = traj[:, t - 1]
        assert torch.equal(M(t, A(t, x)), traj[:, t])
        a, m, y = branch_updates(model, t, x)
        assert torch.equal(x + a + m, traj[:, t]) and torch.equal(y, x + a)


def _zeroed(which):
    model = tiny_vit(1, dtype=torch.float64)
    with torch.no_grad():
        for block in model.blocks:
            lin = block.mlp.fc2 if which == "mlp" else block.attn.proj
            lin.weight.zero_()
            lin.bias.zero_()
    return model


@pytest.mark.parametrize("zeroed, active", [("mlp", "attention"), ("attention", "mlp")])
def test_a_zeroed_branch_leaves_all_stretching_to_the_other(zeroed, active):
    model = _zeroed(zeroed)
    traj = _trajectory(model, n=2)
    r = branch_split(model, traj, model.token_kinds(8, 8), k=1, tol=1e-8, probes=2)
    z, a, layer = (BRANCHES.index(b) for b in (zeroed, active, "layer"))
    assert np.all(r.update_norm[:, :, z] == 0)
    assert np.all(r.update_norm[:, :, a] > 0)
    np.testing.assert_allclose(r.sigma[:, :, z], 1.0, rtol=1e-6)          # identity half-step
    np.testing.assert_allclose(r.sigma[:, :, a], r.sigma[:, :, layer], rtol=1e-6)
    assert np.abs(np.log(r.sigma[:, :, a, 0])).max() > 1e-3              # it does stretch
    np.testing.assert_allclose(r.non_normality[:, :, z], 0.0, atol=1e-12)
    np.testing.assert_allclose(r.non_normality[:, :, a], r.non_normality[:, :, layer],
                               rtol=1e-10)


def test_non_normality_against_closed_forms():
    gen = torch.Generator().manual_seed(3)
    S = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    x = torch.zeros(4, 1, 6, dtype=torch.float64)
    sym = from_function(lambda v: v @ (S + S.T).T)
    nn, _ = non_normality(sym, None, x, probes=4)
    np.testing.assert_allclose(nn.numpy(), 0.0, atol=1e-12)
    lin = from_function(lambda v: v @ S.T)
    exact = torch.linalg.norm(S.T @ S - S @ S.T) / torch.linalg.norm(S) ** 2
    exact_update = torch.linalg.norm(S.T @ S - S @ S.T) / torch.linalg.norm(
        S - torch.eye(6, dtype=torch.float64)) ** 2
    nn, nnu = non_normality(lin, None, x, probes=400, seed=1)
    np.testing.assert_allclose(nn.numpy(), exact.item(), rtol=0.25)
    np.testing.assert_allclose(nnu.numpy(), exact_update.item(), rtol=0.25)


def test_only_plain_blocks_are_split():
    model = tiny_vit(0)

    class Other(type(model.blocks[0])):
        def forward(self, x, attention=None):
            return x

    model.blocks[0].__class__ = Other
    with pytest.raises(ArchitectureError, match="plain pre-norm block"):
        half_step_maps(model)


def test_an_images_projections_do_not_depend_on_the_others():
    model = tiny_vit(0, dtype=torch.float64)
    traj = _trajectory(model, n=3)
    A, _ = half_step_maps(model)
    both, _ = non_normality(A, 2, traj[:, 1], probes=2, seed=5, sample_ids=[10, 11, 12])
    one, _ = non_normality(A, 2, traj[2:, 1], probes=2, seed=5, sample_ids=[12])
    assert float(both[2]) == pytest.approx(float(one[0]), rel=1e-12)
    other, _ = non_normality(A, 2, traj[2:, 1], probes=2, seed=6, sample_ids=[12])
    assert float(other[0]) != float(one[0])
