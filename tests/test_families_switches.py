"""Every architecture switch of :class:`ViTConfig`: recorded in the architecture JSON, saved
and reloaded with depthflow's format, a pure function of the state with forward-mode AD in
math attention, and actually changing the function (negative control). Closed-form checks
for the token layout, RoPE and the activations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from depthflow.errors import ConfigError, InputError
from depthflow.api.loader import load_model
from depthflow.models.arch import parse_arch
from depthflow.models.checkpoints import save_checkpoint
from depthflow.models.vit import ViT, ViTConfig, activation_fn, rotate_half

from _models import randomize_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = dict(embed_dim=32, depth=2, num_heads=2, patch_size=4, img_size=16, mlp_hidden_dim=48,
            interp_offset=0.0)
SWITCHES = {
    "no_cls": dict(cls_token=False, pos_embed_cls=False),
    "distillation": dict(num_distillation_tokens=1),
    "registers_and_distillation": dict(num_distillation_tokens=1, num_register_tokens=2),
    "sincos": dict(position_embedding="sincos"),
    "no_position": dict(position_embedding="none"),
    "patch_table_only": dict(pos_embed_cls=False),
    "rope": dict(rope="dinov3", position_embedding="none", num_register_tokens=1),
    "rope_theta": dict(rope="dinov3", rope_theta=1000.0, position_embedding="none"),
    "pre_norm": dict(pre_norm=True),
    "gelu_tanh": dict(activation="gelu_tanh"),
    "quick_gelu": dict(activation="quick_gelu"),
    "swiglu": dict(mlp="swiglu"),
    "no_layerscale": dict(layerscale=False),
    "qv_bias": dict(qkv_bias_parts="qv"),
    "no_qkv_bias": dict(qkv_bias=False),
    "no_patch_bias": dict(patch_bias=False),
    "bilinear": dict(interp_mode="bilinear"),
    "eps": dict(norm_eps=1e-12),
    "head_mean": dict(cls_token=False, pos_embed_cls=False, num_classes=3, head_input="mean",
                      head_bias=False),
    "head_distillation": dict(num_distillation_tokens=1, num_classes=3,
                              head_input="cls+distillation"),
}


def model_with(seed=0, **changes):
    return randomize_parameters(ViT(ViTConfig(**BASE, **changes)), seed).double().eval()


def images(h=16, w=12, seed=1):
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_switch_is_recorded_saved_and_differentiable(name, tmp_path):
    changes = SWITCHES[name]
    model = model_with(**changes)
    cfg = model.cfg
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg                      # JSON round trip
    assert parse_arch(",".join(f"{k}={v}" for k, v in changes.items())) == changes
    path = save_checkpoint(model.float(), tmp_path / "m.safetensors")
    loaded = load_model(path).model.double().set_attention("math")
    model = model.double().set_attention("math")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.trajectory(x), model.trajectory(x), rtol=0, atol=0)
    state = model.embed(x)
    tangent = torch.randn_like(state)
    _, jvp = torch.func.jvp(lambda s: model.step(1, s, attention="math"), (state,), (tangent,))
    eps = 1e-6
    with torch.no_grad():
        fd = (model.step(1, state + eps * tangent)
              - model.step(1, state - eps * tangent)) / (2 * eps)
    assert (jvp - fd).abs().max() < 1e-6 * max(1.0, fd.abs().max().item())
    with torch.no_grad():            # sdpa and math attention agree with every switch
        torch.testing.assert_close(model.step(1, state, attention="sdpa"),
                                   model.step(1, state, attention="math"), rtol=0, atol=1e-10)


# Not here: off-grid only (bilinear, patch_table_only: see below), heads (readout only),
# sincos (a table like any other once loaded), and qv_bias: a key bias adds q.b_k to every
# logit of a query, which softmax ignores -- DINOv3 masks it at no cost in function.
@pytest.mark.parametrize("name", sorted(set(SWITCHES) - {"bilinear", "patch_table_only",
                                                          "sincos", "head_mean", "qv_bias",
                                                          "head_distillation"}))
def test_switch_changes_the_function(name):
    """Negative control: the same weights without the switch compute something else."""
    changes = SWITCHES[name]
    model = model_with(**changes)
    base = randomize_parameters(ViT(ViTConfig(**{**BASE, **{
        k: v for k, v in changes.items() if k in ("num_register_tokens",)}})), 5)
    shared = {k: v for k, v in model.state_dict().items()
              if k in base.state_dict() and base.state_dict()[k].shape == v.shape}
    base = base.double()
    base.load_state_dict(shared, strict=False)
    x = images()
    with torch.no_grad():
        a, b = model.trajectory(x), base.eval().trajectory(x)
    assert a.shape != b.shape or (a - b).abs().max() > 1e-6


def test_interpolation_mode_matters_off_grid():
    a = model_with()
    b = model_with(interp_mode="bilinear")
    with torch.no_grad():
        assert (a.embed(images(16, 16)) - b.embed(images(16, 16))).abs().max() == 0
        assert (a.embed(images(24, 20)) - b.embed(images(24, 20))).abs().max() > 1e-6


def test_token_layout_properties():
    cfg = ViTConfig(**BASE, num_distillation_tokens=1, num_register_tokens=3)
    assert (cfg.num_class_tokens, cfg.num_prefix_tokens) == (2, 5)
    assert (cfg.cls_index, cfg.distillation_index, cfg.register_slice) == (0, 1, slice(2, 5))
    assert cfg.prefix_kinds == ("cls", "distillation", "register", "register", "register")
    model = ViT(cfg)
    assert model.token_kinds(8, 8)[:6] == ["cls", "distillation", "register", "register",
                                          "register", "patch"]
    nocls = ViTConfig(**BASE, cls_token=False, pos_embed_cls=False)
    assert (nocls.num_prefix_tokens, nocls.cls_index, nocls.distillation_index) == (0, None,
                                                                                  None)
    assert nocls.pos_embed_slots == 0
    assert ViT(nocls).double().embed(images()).shape == (2, 12, 32)


def test_distillation_token_takes_its_position_slot():
    """With a table covering class tokens, cls and distillation get slots 0 and 1."""
    model = model_with(num_distillation_tokens=1)
    with torch.no_grad():
        state = model.embed(images(16, 16))
        torch.testing.assert_close(state[:, 1], (model.dist_token[0, 0] + model.pos_embed[0, 1])
                                   .expand(2, -1))
        torch.testing.assert_close(state[:, 0], (model.cls_token[0, 0] + model.pos_embed[0, 0])
                                   .expand(2, -1))


def test_rope_closed_form():
    """Patch centres of a 2x4 grid and the angle layout: [y / periods, x / periods] twice;
    prefix tokens are not rotated."""
    model = model_with(rope="dinov3", position_embedding="none", num_register_tokens=1)
    rope = model.rope_embed
    hd = model.cfg.head_dim                                           # 16: periods of 4
    torch.testing.assert_close(rope.periods.double(),
                               100.0 ** (torch.arange(4, dtype=torch.float64) * 4 / hd),
                               rtol=1e-7, atol=0)
    rope.note_grid(2, 4)
    cos, sin = rope(8, torch.float64)
    ys, xs = torch.tensor([-0.5, 0.5]), torch.tensor([-0.75, -0.25, 0.25, 0.75])
    y, x = ys.repeat_interleave(4), xs.repeat(2)                     # row-major patches
    periods = rope.periods.double()
    half = torch.cat([2 * math.pi * y[:, None] / periods, 2 * math.pi * x[:, None] / periods], 1)
    torch.testing.assert_close(cos, torch.cat([half, half], 1).cos())
    torch.testing.assert_close(sin, torch.cat([half, half], 1).sin())
    v = torch.arange(4.0)
    assert rotate_half(v).tolist() == [-2.0, -3.0, 0.0, 1.0]
    # cls and register tokens are not rotated: their attention outputs ignore RoPE changes
    x_img = images(8, 16)
    with torch.no_grad():
        state = model.embed(x_img)
        q_before = model.blocks[0].attn.qkv(model.blocks[0].norm1(state))
        assert q_before.shape[-2] == 2 + 8


def test_rope_needs_a_known_grid():
    model = model_with(rope="dinov3", position_embedding="none")
    state = torch.zeros(1, 1 + 6, 32, dtype=torch.float64)          # 6 patches, never embedded
    with pytest.raises(InputError, match="grid"):
        model.step(1, state)


@pytest.mark.parametrize("name, reference", [
    ("gelu", lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))),
    ("gelu_tanh", lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi)
                                                      * (x + 0.044715 * x ** 3)))),
    ("quick_gelu", lambda x: x / (1 + torch.exp(-1.702 * x))),
])
def test_activations_closed_form(name, reference):
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    torch.testing.assert_close(activation_fn(name)(x), reference(x), rtol=1e-12, atol=1e-12)


def test_masked_key_bias_is_ignored():
    model = model_with(qkv_bias_parts="qv")
    x = images()
    with torch.no_grad():
        before = model.trajectory(x)
        for block in model.blocks:
            block.attn.qkv.bias[32:64] = 100.0                        # the key third
        torch.testing.assert_close(model.trajectory(x), before, rtol=0, atol=0)
    assert not any("bias_mask" in k for k in model.state_dict())


@pytest.mark.parametrize("changes, match", [
    (dict(num_distillation_tokens=2), "num_distillation_tokens"),
    (dict(qkv_bias_parts="qq"), "qkv_bias_parts"),
    (dict(qkv_bias_parts="x"), "qkv_bias_parts"),
    (dict(position_embedding="rope"), "position_embedding"),
    (dict(rope="eva02"), "rope"),
    (dict(activation="relu"), "activation"),
    (dict(cls_token=False, head_input="cls", num_classes=2), "head_input"),
    (dict(head_input="cls+distillation", num_classes=2), "head_input"),
    (dict(interp_mode="nearest"), "interp_mode"),
])
def test_bad_switches_are_config_errors(changes, match):
    with pytest.raises(ConfigError, match=match):
        ViTConfig(**BASE, **changes)


def test_sdpa_swiglu_reference():
    """SwiGLU: w3(silu(x1) * x2) with (x1, x2) the halves of w12 x."""
    model = model_with(mlp="swiglu")
    mlp = model.blocks[0].mlp
    x = torch.randn(3, 32, dtype=torch.float64)
    w1, w2 = mlp.w12.weight.chunk(2)
    b1, b2 = mlp.w12.bias.chunk(2)
    ref = F.linear(F.silu(F.linear(x, w1, b1)) * F.linear(x, w2, b2), mlp.w3.weight, mlp.w3.bias)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), ref)
