"""depthflow's ViT: pure blocks, rollout composition, attention paths, AD, interpolation."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from depthflow.data import tokens
from depthflow.errors import ConfigError, InputError
from depthflow.models.vit import ViT, ViTConfig, swiglu_hidden_dim

from _models import tiny_config, tiny_vit

MODEL = tiny_vit(seed=3, dtype=torch.float64, depth=5)
IMAGES = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0),
                     dtype=torch.float64)


def test_token_layout():
    state = MODEL.embed(IMAGES)
    assert state.shape == (4, 1 + 2 + 16, 32)
    assert MODEL.token_kinds(8, 8) == ["cls", "register", "register"] + ["patch"] * 16
    # registers are identical across images and carry no position embedding
    torch.testing.assert_close(state[:, 1:3], MODEL.register_tokens.expand(4, -1, -1))
    torch.testing.assert_close(state[:, 0], (MODEL.cls_token + MODEL.pos_embed[:, :1])[:, 0]
                               .expand(4, -1))


@given(st.integers(0, 5), st.data())
def test_rollout_composition(start, data):
    """Running blocks s..s+k on the state at depth s equals the full rollout's depth s+k."""
    k = data.draw(st.integers(0, 5 - start))
    with torch.no_grad():
        traj = MODEL.trajectory(IMAGES)
        out = MODEL.rollout(traj[:, start], start=start, stop=start + k)
    torch.testing.assert_close(out, traj[:, start + k], rtol=0, atol=0)


def test_sdpa_equals_math_attention():
    with torch.no_grad():
        a = MODEL.set_attention("sdpa").trajectory(IMAGES)
        b = MODEL.set_attention("math").trajectory(IMAGES)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_blocks_take_any_leading_dims_and_vmap():
    state = MODEL.embed(IMAGES).detach()
    block = MODEL.blocks[1]
    batched = block(state)
    torch.testing.assert_close(block(state[0]), batched[0])
    torch.testing.assert_close(torch.func.vmap(block)(state), batched)
    torch.testing.assert_close(block(state.view(2, 2, *state.shape[1:])).view_as(batched),
                               batched)


def test_jvp_matches_finite_differences_and_vjp():
    MODEL.set_attention("math")
    block = MODEL.blocks[2]
    x = MODEL.embed(IMAGES).detach()[0]
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    u = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    params = {k: p.detach() for k, p in block.named_parameters()}

    def f(s):
        return torch.func.functional_call(block, params, (s,))

    _, jv = torch.func.jvp(f, (x,), (v,))
    h = 1e-6
    fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
    torch.testing.assert_close(jv, fd, rtol=1e-6, atol=1e-7)
    _, vjp_fn = torch.func.vjp(f, x)
    (jtu,) = vjp_fn(u)
    assert float((u * jv).sum()) == pytest.approx(float((jtu * v).sum()), rel=1e-10)


@given(st.permutations(range(4)))
def test_trajectories_and_summaries_are_batch_order_equivariant(perm):
    perm = torch.tensor(perm)
    with torch.no_grad():
        traj = MODEL.trajectory(IMAGES)
        traj_p = MODEL.trajectory(IMAGES[perm])
    torch.testing.assert_close(traj_p, traj[perm], rtol=1e-12, atol=1e-12)
    for fn in (tokens.gamma, tokens.angular_speed, tokens.token_norms):
        torch.testing.assert_close(fn(traj_p), fn(traj)[perm])


def test_position_interpolation():
    with torch.no_grad():
        native = MODEL.interpolate_pos_encoding(4, 4)
        assert native is MODEL.pos_embed
        big = MODEL.embed(torch.randn(2, 1, 12, 16, dtype=torch.float64))
    assert big.shape == (2, 3 + 6 * 8, 32)
    offset = tiny_vit(seed=1, interp_offset=0.1)
    no_offset = tiny_vit(seed=1, interp_offset=0.0)
    with torch.no_grad():
        a = offset.interpolate_pos_encoding(6, 6)
        b = no_offset.interpolate_pos_encoding(6, 6)
    assert a.shape == b.shape == (1, 37, 32)
    assert not torch.allclose(a, b)      # the DINOv2 offset convention is honoured


def test_no_cls_position_slot():
    model = tiny_vit(pos_embed_cls=False)
    assert model.pos_embed.shape == (1, 16, 32)
    with torch.no_grad():
        state = model.embed(torch.zeros(1, 1, 8, 8))
    torch.testing.assert_close(state[0, 0], model.cls_token[0, 0])


def test_swiglu_block_and_hidden_dim():
    assert swiglu_hidden_dim(384) == 1024
    assert swiglu_hidden_dim(1536) == 4096
    model = tiny_vit(mlp="swiglu", mlp_hidden_dim=48)
    assert model.blocks[0].mlp.w12.weight.shape == (96, 32)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 1, 8, 8))).all()


def test_drop_path_only_in_training():
    model = tiny_vit().set_drop_path(0.5)
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
    assert not torch.allclose(a, b)
    with pytest.raises(ConfigError):
        model.set_drop_path(1.0)


@pytest.mark.parametrize("changes,match", [
    ({"embed_dim": 30, "num_heads": 4}, "divisible"),
    ({"mlp": "relu"}, "mlp"),
    ({"depth": 0}, "depth"),
    ({"img_size": 1, "patch_size": 2}, "img_size"),
    ({"head_input": "pool"}, "head_input"),
])
def test_config_validation(changes, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**changes)


def test_config_round_trip_and_unknown_keys():
    cfg = tiny_config()
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        ViTConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_bad_image_shapes():
    with pytest.raises(InputError, match="multiple of the patch size"):
        MODEL.embed(torch.zeros(1, 1, 9, 8, dtype=torch.float64))
    with pytest.raises(InputError, match="shape"):
        MODEL.embed(torch.zeros(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ConfigError):
        MODEL.set_attention("flash")
    assert isinstance(MODEL, ViT)
