"""The Raptor block and surrogate: exact reproduction at k = L, routing, AD, checkpoints."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from depthflow.api.loader import load_model
from depthflow.errors import ConfigError
from depthflow.raptor import (Raptor, RaptorConfig, build_raptor, check_thresholds,
                              counts_from_thresholds, load_raptor, save_raptor)

from _models import tiny_vit

IMAGES = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0),
                     dtype=torch.float64)


def untied_copy(teacher, **switches):
    """k = L blocks with the teacher's own block architecture, initialised from its layers."""
    depth = teacher.cfg.depth
    cfg = RaptorConfig(thresholds=tuple(range(1, depth)), mlp=teacher.cfg.mlp,
                       mlp_hidden_dim=teacher.cfg.mlp_hidden_dim, **switches)
    raptor = build_raptor(teacher, cfg, seed=1)
    return raptor.init_blocks_from_teacher(teacher, list(range(1, depth + 1)))


@settings(max_examples=8)
@given(seed=st.integers(0, 1000), depth=st.integers(2, 4), mlp=st.sampled_from(["gelu", "swiglu"]),
       conditioning=st.booleans(), registers=st.integers(0, 2))
def test_untied_raptor_reproduces_the_teacher_exactly(seed, depth, mlp, conditioning, registers):
    hidden = 64 if mlp == "gelu" else 48
    teacher = tiny_vit(seed, dtype=torch.float64, depth=depth, mlp=mlp, mlp_hidden_dim=hidden,
                       num_register_tokens=registers)
    raptor = untied_copy(teacher, depth_conditioning=conditioning).eval()
    assert raptor.k == depth and raptor.counts == (1,) * depth
    with torch.no_grad():
        torch.testing.assert_close(raptor.trajectory(IMAGES), teacher.trajectory(IMAGES),
                                   rtol=0, atol=0)
        torch.testing.assert_close(raptor(IMAGES), teacher(IMAGES), rtol=0, atol=0)


@settings(max_examples=25)
@given(depth=st.integers(1, 16), data=st.data())
def test_routing_picks_the_block_of_every_depth(depth, data):
    thresholds = sorted(data.draw(st.sets(st.integers(1, max(1, depth - 1)),
                                          max_size=depth - 1))) if depth > 1 else []
    counts = counts_from_thresholds(thresholds, depth)
    assert sum(counts) == depth and len(counts) == len(thresholds) + 1 and min(counts) >= 1
    teacher = tiny_vit(0, depth=depth, embed_dim=8, num_heads=1, mlp_hidden_dim=8)
    raptor = Raptor(teacher.cfg, RaptorConfig(thresholds=tuple(thresholds)))
    edges = [0, *thresholds, depth]
    for layer in range(1, depth + 1):
        expected = next(j for j in range(len(edges) - 1) if edges[j] < layer <= edges[j + 1])
        assert raptor.block_for(layer) == expected
    assert raptor.segments() == list(zip(edges[:-1], edges[1:]))


def test_paper_examples_and_bad_thresholds():
    assert counts_from_thresholds([7], 12) == (7, 5)
    assert counts_from_thresholds([7, 10], 12) == (7, 3, 2)
    assert counts_from_thresholds([4, 7, 10], 12) == (4, 3, 3, 2)
    for bad in ([0], [12], [7, 7], [8, 3], [2.5]):
        with pytest.raises(ConfigError, match="threshold"):
            check_thresholds(bad, 12)
    with pytest.raises(ConfigError, match="k=3 needs 2"):
        check_thresholds([7], 12, k=3)


def test_depth_conditioning_is_identity_at_init_scale_and_used():
    teacher = tiny_vit(0, dtype=torch.float64, depth=3)
    raptor = build_raptor(teacher, RaptorConfig(thresholds=(1,))).double()
    state = raptor.embed(IMAGES).detach()
    block = raptor.blocks[1]
    plain = block(state, None)                       # t = None: no conditioning
    # W2 ~ N(0, 1e-4): S(t) = 1 + O(1e-4), so the conditioned step is close to the plain one
    torch.testing.assert_close(block(state, 2.0), plain, rtol=0, atol=1e-2)
    with torch.no_grad():
        block.scale.fc2.bias[:] = 0.5
    assert not torch.allclose(block(state, 2.0), plain)
    assert not torch.allclose(block(state, 2.0), block(state, 3.0))


def test_step_is_pure_jvp_matches_finite_differences_and_vmap():
    from depthflow.dynamics.maps import frozen, from_model

    teacher = tiny_vit(2, dtype=torch.float64, depth=3)
    raptor = build_raptor(teacher, RaptorConfig(thresholds=(2,), layerscale_init=0.3),
                          seed=4).double().set_attention("math").eval()
    with torch.no_grad():
        for block in raptor.blocks:
            block.scale.fc2.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))
    x = raptor.embed(IMAGES).detach()[0]
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f = lambda s: raptor.step(3, s)  # noqa: E731
    out, tangent = torch.func.jvp(f, (x,), (v,))
    eps = 1e-6
    fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-7)
    u = torch.randn_like(out)
    _, pullback = torch.func.vjp(f, x)
    torch.testing.assert_close((u * tangent).sum(), (pullback(u)[0] * v).sum())
    batch = raptor.embed(IMAGES).detach()
    torch.testing.assert_close(torch.func.vmap(f)(batch), f(batch))
    # the dynamics engine's maps take the surrogate unchanged
    block = frozen(from_model(raptor), 3)
    torch.testing.assert_close(block(None, x), f(x))


def test_save_load_round_trip_and_load_model(tmp_path):
    teacher = tiny_vit(0, depth=3)
    raptor = build_raptor(teacher, RaptorConfig(thresholds=(1,), mlp="gelu"), seed=2)
    save_raptor(raptor, tmp_path / "r", info={"note": "test"})
    for path in (tmp_path / "r", tmp_path / "r" / "model.safetensors"):
        loaded = load_model(path)
        assert isinstance(loaded.model, Raptor) and loaded.format == "depthflow-raptor"
        assert loaded.model.raptor_cfg == raptor.raptor_cfg
        with torch.no_grad():
            images = IMAGES.float()
            torch.testing.assert_close(loaded.model.trajectory(images),
                                       raptor.eval().trajectory(images), rtol=0, atol=0)
    assert load_raptor(tmp_path / "r").info["note"] == "test"


def test_teacher_parts_are_frozen_and_shared():
    teacher = tiny_vit(0, depth=3)
    raptor = build_raptor(teacher, RaptorConfig(thresholds=(2,)))
    trainable = {n for n, p in raptor.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("blocks.") for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(raptor.embed(IMAGES.float()), teacher.embed(IMAGES.float()))
        state = torch.randn(2, 19, 32)
        torch.testing.assert_close(raptor.readout(state), teacher.readout(state))
    assert raptor.token_kinds(8, 8) == teacher.token_kinds(8, 8)
    assert raptor.depth == 3 and raptor.cfg == teacher.cfg


def test_training_curve_fidelity_is_r2_image_first():
    """quick_fidelity: 1 for an exact surrogate; sklearn's r2_score for any other."""
    import numpy as np
    from depthflow.raptor.evaluate import _rollout, quick_fidelity
    from depthflow.raptor.surrogates import r2_image_reference

    teacher = tiny_vit(0, dtype=torch.float64, depth=3, num_register_tokens=1)
    images = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    with torch.no_grad():
        states = teacher.trajectory(images)
        exact = quick_fidelity(untied_copy(teacher).eval(), states, cls_index=0)
        assert list(exact)[:2] == ["r2_image_last", "r2_image_cls_last"]
        for key in ("r2_image_last", "r2_image_cls_last", "r2_last"):
            assert exact[key] == pytest.approx(1.0, abs=1e-12)
        other = build_raptor(teacher, RaptorConfig(thresholds=(2,), mlp=teacher.cfg.mlp,
                                                   mlp_hidden_dim=teacher.cfg.mlp_hidden_dim),
                             seed=3).double().eval()
        got = quick_fidelity(other, states, cls_index=0)
        pred = _rollout(other, states)
    y, p = states[:, -1].numpy(), pred[:, -1].numpy()
    assert got["r2_image_last"] == pytest.approx(r2_image_reference(y, p)[0], rel=1e-9)
    assert got["r2_image_cls_last"] == pytest.approx(
        r2_image_reference(y[:, :1], p[:, :1])[0], rel=1e-9)
    assert np.isfinite(got["r2_last"]) and "r2_image_cls_last" not in quick_fidelity(
        other, states, cls_index=None)
