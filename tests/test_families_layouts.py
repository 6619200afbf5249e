"""OpenAI CLIP / OpenCLIP and DINOv3-hub state dicts load to the function their own code
computes.

The references below are written under the original parameter names, not by renaming
depthflow's weights (which would hide transposes and q/k/v order bugs): an OpenCLIP-style
``VisionTransformer`` whose blocks run torch's own ``nn.MultiheadAttention`` on the packed
``in_proj_weight`` and apply ``x @ proj``, and a DINOv3-hub block with a ``qkv`` bias
multiplied by its ``bias_mask`` buffer, SwiGLU ``w1/w2/w3`` and the hub's RoPE (``periods``
buffer, patch centres normalised per axis to [-1, 1], rotate-half on patch tokens only).
The key names and shapes of real published checkpoints (OpenAI ViT-B/16, DINOv3 ViT-S/16 and
ViT-S+/16, from their public model definitions) are pinned at the end.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from depthflow.errors import ArchitectureError
from depthflow.api.loader import load_model
from depthflow.models.formats import convert_state_dict
from depthflow.models.vit import ViT

from _models import randomize_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# --------------------------------------------------------------------------- OpenCLIP
class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class OCLayerScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, *, quick, layerscale):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = OCLayerScale(width) if layerscale else nn.Identity()
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU() if quick else nn.GELU()),
            ("c_proj", nn.Linear(4 * width, width))]))
        self.ls_2 = OCLayerScale(width) if layerscale else nn.Identity()

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.ls_1(self.attn(y, y, y, need_weights=False)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, **kw):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, **kw)
                                       for _ in range(layers))


class OCVisual(nn.Module):
    """OpenCLIP's ``VisionTransformer`` (token readout), states at every depth."""

    def __init__(self, *, width=32, layers=3, heads=4, patch=4, grid=4, out=8, quick=True,
                 layerscale=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, quick=quick, layerscale=layerscale)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, out))

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)              # (B, N, D)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        states = [x]
        for block in self.transformer.resblocks:
            x = block(x)
            states.append(x)
        return states, self.ln_post(x[:, 0]) @ self.proj


def openclip(seed=0, **kw):
    model = randomize_parameters(OCVisual(**kw), seed).double().eval()
    with torch.no_grad():
        model.proj.mul_(0.2)
    return model


def openclip_state(visual, *, text=True):
    sd = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    if text:                                     # a full CLIP: the text tower is dropped
        sd.update({"token_embedding.weight": torch.zeros(10, 8),
                   "positional_embedding": torch.zeros(5, 8), "ln_final.weight": torch.ones(8),
                   "text_projection": torch.zeros(8, 8), "logit_scale": torch.zeros(()),
                   "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(24, 8)})
    return sd


@pytest.mark.parametrize("quick, layerscale", [(True, False), (False, True)])
def test_openclip_matches_reference_at_every_depth(quick, layerscale):
    ref = openclip(quick=quick, layerscale=layerscale)
    style, cfg, sd = convert_state_dict(
        openclip_state(ref), overrides={"activation": "quick_gelu" if quick else "gelu",
                                        "num_heads": 4})
    assert style == "openclip"
    assert (cfg.pre_norm, cfg.patch_bias, cfg.layerscale, cfg.head_bias) == \
        (True, False, layerscale, False)
    assert (cfg.norm_eps, cfg.num_classes, cfg.head_input) == (1e-5, 8, "cls")
    model = ViT(cfg).double()
    model.load_state_dict(sd)
    model = model.eval().set_attention("math")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    with torch.no_grad():
        states, pooled = ref(x)
        ours = model.trajectory(x)
        assert ours.shape[1] == len(states)
        for depth, theirs in enumerate(states):
            assert rel_err(ours[:, depth], theirs) < 1e-12, depth
        assert rel_err(model.readout(ours[:, -1]), pooled) < 1e-12


def test_openclip_heads_and_activation_from_open_clip_config(tmp_path):
    """A directory with open_clip_config.json gives the activation and head width."""
    import json

    ref = openclip(quick=True)
    save_file({k: v.float().contiguous() for k, v in openclip_state(ref).items()},
              str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 8, "quick_gelu": True,
                      "vision_cfg": {"image_size": 16, "layers": 3, "width": 32,
                                     "patch_size": 4, "head_width": 8}},
        "preprocess_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]}}))
    loaded = load_model(tmp_path)
    assert loaded.format == "openclip"
    assert (loaded.config.activation, loaded.config.num_heads) == ("quick_gelu", 4)
    assert loaded.preprocessing.mean == (0.1, 0.2, 0.3)
    assert any("text tower" in n for n in loaded.info["notes"])


def test_openclip_without_activation_is_refused():
    with pytest.raises(ArchitectureError, match="quick_gelu"):
        convert_state_dict(openclip_state(openclip()))


def test_openclip_qkv_order_matters():
    """Negative control: swapping q and k in in_proj_weight changes the function."""
    ref = openclip()
    sd = openclip_state(ref, text=False)
    key = "visual.transformer.resblocks.0.attn.in_proj_weight"
    q, k, v = sd[key].chunk(3)
    sd[key] = torch.cat([k, q, v])
    _, cfg, converted = convert_state_dict(sd, overrides={"activation": "quick_gelu",
                                                          "num_heads": 4})
    model = ViT(cfg)
    model.load_state_dict(converted)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(model.double().trajectory(x)[:, 1], ref(x)[0][1]) > 1e-3


# --------------------------------------------------------------------------- DINOv3 hub
class HubAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.qkv.register_buffer("bias_mask", torch.cat([torch.ones(dim), torch.zeros(dim),
                                                         torch.ones(dim)]))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rope):
        B, N, C = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias * self.qkv.bias_mask)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        sin, cos = rope
        prefix = N - sin.shape[-2]

        def apply(t):
            x1, x2 = t[..., prefix:, :].chunk(2, dim=-1)
            rotated = torch.cat([-x2, x1], dim=-1)
            return torch.cat([t[..., :prefix, :], t[..., prefix:, :] * cos + rotated * sin],
                             dim=-2)

        out = F.scaled_dot_product_attention(apply(q), apply(k), v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class HubLayerScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class HubSwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1, self.w2 = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class HubBlock(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = HubAttention(dim, heads)
        self.ls1 = HubLayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = HubSwiGLU(dim, hidden)
        self.ls2 = HubLayerScale(dim)

    def forward(self, x, rope):
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class HubPatchEmbed(nn.Module):
    def __init__(self, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class HubRope(nn.Module):
    def __init__(self, head_dim, base=100.0):
        super().__init__()
        exps = 2 * torch.arange(head_dim // 4, dtype=torch.float64) / (head_dim // 2)
        self.register_buffer("periods", base ** exps)

    def forward(self, H, W):
        ch = torch.arange(0.5, H, dtype=torch.float64) / H
        cw = torch.arange(0.5, W, dtype=torch.float64) / W
        coords = 2.0 * torch.stack(torch.meshgrid(ch, cw, indexing="ij"), -1).flatten(0, 1) - 1
        angles = (2 * math.pi * coords[:, :, None] / self.periods[None, None, :]).flatten(1, 2)
        angles = angles.tile(2)
        return angles.sin(), angles.cos()


class HubViT(nn.Module):
    """The DINOv3 hub backbone's forward, states at every depth."""

    def __init__(self, dim=32, depth=3, heads=4, patch=4, hidden=40, storage=2):
        super().__init__()
        self.patch_size = patch
        self.patch_embed = HubPatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, storage, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.rope_embed = HubRope(dim // heads)
        self.blocks = nn.ModuleList(HubBlock(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x):
        H, W = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        B = x.shape[0]
        cls = self.cls_token + 0 * self.mask_token
        x = torch.cat([cls.expand(B, -1, -1), self.storage_tokens.expand(B, -1, -1), x], 1)
        rope = self.rope_embed(H, W)
        states = [x]
        for block in self.blocks:
            x = block(x, rope)
            states.append(x)
        return states, self.norm(x)


def hub_vit(seed=0):
    model = randomize_parameters(HubViT(), seed).double().eval()
    with torch.no_grad():                      # garbage in the masked key bias: must not matter
        for block in model.blocks:
            block.attn.qkv.bias[32:64] = 5.0
    return model


@pytest.mark.parametrize("bf16_periods", [False, True])
def test_dinov3_hub_matches_reference_at_every_depth(bf16_periods):
    ref = hub_vit()
    if bf16_periods:                # a checkpoint's own (rounded) periods are used as stored
        ref.rope_embed.periods = ref.rope_embed.periods.bfloat16().double()
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    style, cfg, converted = convert_state_dict(sd)
    assert style == "dinov3-hub"
    assert (cfg.rope, cfg.qkv_bias_parts, cfg.num_register_tokens, cfg.num_heads) == \
        ("dinov3", "qv", 2, 4)
    assert (cfg.mlp, cfg.mlp_hidden_dim, cfg.position_embedding) == ("swiglu", 40, "none")
    assert not any("bias_mask" in k for k in converted)
    model = ViT(cfg).double()
    model.load_state_dict(converted)
    model = model.eval().set_attention("math")
    torch.testing.assert_close(model.rope_embed.periods, ref.rope_embed.periods, rtol=0, atol=0)
    gen = torch.Generator().manual_seed(4)
    for h, w in ((16, 16), (24, 20)):
        x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            states, final = ref(x)
            ours = model.trajectory(x)
            for depth, theirs in enumerate(states):
                assert rel_err(ours[:, depth], theirs) < 1e-12, (h, w, depth)
            assert rel_err(model.norm(ours[:, -1]), final) < 1e-12


def test_dinov3_hub_uninitialised_bias_mask_is_refused():
    sd = hub_vit().state_dict()
    sd["blocks.0.attn.qkv.bias_mask"] = torch.full((96,), math.nan)
    with pytest.raises(ArchitectureError, match="bias_mask"):
        convert_state_dict(sd)


# --------------------------------------------------------------------------- published shapes
def _meta(shapes):
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def openai_vitb16_shapes():
    """OpenAI CLIP ViT-B/16 visual tower (clip/model.py: width 768, 12 layers, patch 16,
    224 px, output 512)."""
    shapes = {"visual.class_embedding": (768,), "visual.positional_embedding": (197, 768),
              "visual.proj": (768, 512), "visual.conv1.weight": (768, 3, 16, 16),
              "visual.ln_pre.weight": (768,), "visual.ln_pre.bias": (768,),
              "visual.ln_post.weight": (768,), "visual.ln_post.bias": (768,)}
    for i in range(12):
        p = f"visual.transformer.resblocks.{i}."
        shapes.update({p + "attn.in_proj_weight": (2304, 768), p + "attn.in_proj_bias": (2304,),
                       p + "attn.out_proj.weight": (768, 768), p + "attn.out_proj.bias": (768,),
                       p + "ln_1.weight": (768,), p + "ln_1.bias": (768,),
                       p + "mlp.c_fc.weight": (3072, 768), p + "mlp.c_fc.bias": (3072,),
                       p + "mlp.c_proj.weight": (768, 3072), p + "mlp.c_proj.bias": (768,),
                       p + "ln_2.weight": (768,), p + "ln_2.bias": (768,)})
    return shapes


def dinov3_shapes(hidden: int, swiglu: bool):
    """DINOv3 hub ViT-S/16 (ffn 4x, Mlp) or ViT-S+/16 (ffn 6x, SwiGLU aligned to 8):
    width 384, 12 blocks, 6 heads, 4 storage tokens, masked key bias."""
    shapes = {"cls_token": (1, 1, 384), "storage_tokens": (1, 4, 384), "mask_token": (1, 384),
              "rope_embed.periods": (16,), "patch_embed.proj.weight": (384, 3, 16, 16),
              "patch_embed.proj.bias": (384,), "norm.weight": (384,), "norm.bias": (384,)}
    for i in range(12):
        p = f"blocks.{i}."
        shapes.update({p + "norm1.weight": (384,), p + "norm1.bias": (384,),
                       p + "attn.qkv.weight": (1152, 384), p + "attn.qkv.bias": (1152,),
                       p + "attn.proj.weight": (384, 384), p + "attn.proj.bias": (384,),
                       p + "ls1.gamma": (384,), p + "norm2.weight": (384,),
                       p + "norm2.bias": (384,), p + "ls2.gamma": (384,)})
        mlp = ({"w1": (hidden, 384), "w2": (hidden, 384), "w3": (384, hidden)} if swiglu
               else {"fc1": (hidden, 384), "fc2": (384, hidden)})
        for name, shape in mlp.items():
            shapes[p + f"mlp.{name}.weight"] = shape
            shapes[p + f"mlp.{name}.bias"] = shape[:1]
    return shapes


def _converted_matches_model(cfg, converted):
    with torch.device("meta"):
        model = ViT(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert expected == {k: tuple(v.shape) for k, v in converted.items()}


def test_published_openai_clip_vitb16_layout():
    style, cfg, converted = convert_state_dict(_meta(openai_vitb16_shapes()),
                                               overrides={"activation": "quick_gelu"})
    assert style == "openclip"
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size) == \
        (768, 12, 12, 16, 224)
    assert (cfg.mlp_hidden_dim, cfg.num_classes, cfg.pre_norm) == (3072, 512, True)
    _converted_matches_model(cfg, converted)


@pytest.mark.parametrize("hidden, swiglu", [(1536, False), (1536, True)])
def test_published_dinov3_vits16_layouts(hidden, swiglu):
    shapes = dinov3_shapes(hidden, swiglu)
    sd = _meta(shapes)
    mask = torch.cat([torch.ones(384), torch.zeros(384), torch.ones(384)])
    for i in range(12):
        sd[f"blocks.{i}.attn.qkv.bias_mask"] = mask
    sd["rope_embed.periods"] = 100.0 ** (torch.arange(16) / 16)
    style, cfg, converted = convert_state_dict(sd)
    assert style == "dinov3-hub"
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size) == (384, 12, 6, 16)
    assert (cfg.num_register_tokens, cfg.qkv_bias_parts, cfg.rope_theta) == (4, "qv", 100.0)
    assert (cfg.mlp, cfg.mlp_hidden_dim) == ("swiglu" if swiglu else "gelu", hidden)
    _converted_matches_model(cfg, {k: v for k, v in converted.items()})


def test_dinov3_hub_live_module():
    """A live hub-style module (rope_embed, storage_tokens) is read as dinov3-hub."""
    from depthflow.models.checkpoints import from_module

    ref = hub_vit()
    loaded = from_module(ref)
    assert loaded.info["style"] == "dinov3-hub"
    assert (loaded.config.num_heads, loaded.config.norm_eps) == (4, 1e-5)
    model = loaded.model.double().set_attention("math")
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6),
                    dtype=torch.float64)
    with torch.no_grad():
        states, _ = ref(x)
        assert rel_err(model.trajectory(x)[:, -1], states[-1]) < 1e-6   # float32 copy


@pytest.mark.parametrize("change, field", [
    ({"model_cfg": [1, 2]}, "model_cfg"),
    ({"model_cfg": {"quick_gelu": "yes"}}, "quick_gelu"),
    ({"model_cfg": {"quick_gelu": True, "vision_cfg": "big"}}, "vision_cfg"),
    ({"model_cfg": {"quick_gelu": True, "vision_cfg": {"head_width": "8"}}}, "head_width"),
    ({"model_cfg": {"quick_gelu": True, "vision_cfg": {"head_width": 0}}}, "head_width"),
    ({"model_cfg": {"quick_gelu": True, "vision_cfg": {"layers": 2.5}}}, "layers"),
    ({"model_cfg": {"quick_gelu": True, "vision_cfg": {"image_size": -16}}}, "image_size"),
    ({"model_cfg": {"quick_gelu": True, "vision_cfg": {"width": 64, "head_width": 8}}},
     "width = 64"),
    ({"model_cfg": {"quick_gelu": True, "vision_cfg": {"layers": 5, "head_width": 8}}},
     "layers = 5"),
    ({"model_cfg": {"quick_gelu": True, "vision_cfg": {"patch_size": 8, "head_width": 8}}},
     "patch_size = 8"),
])
def test_open_clip_config_fields_are_checked_before_use(tmp_path, change, field):
    """Wrong types and ranges, and fields that disagree with the weights (width 32,
    3 layers, patch 4 here), are one ConfigError naming the field (and both values)."""
    import json

    from depthflow.errors import ConfigError

    save_file({k: v.float().contiguous() for k, v in openclip_state(openclip(quick=True)).items()},
              str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps(change))
    with pytest.raises(ConfigError, match=field) as info:
        load_model(tmp_path)
    assert "\n" not in str(info.value)
