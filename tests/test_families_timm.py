"""timm state dicts of the CLIP, SigLIP, distilled DeiT and DINOv3 families load to the
function Hugging Face computes with the same weights.

The weights of a random float64 HF model are written under timm's names (as timm's own
``checkpoint_filter_fn`` produces them: packed ``qkv``, ``norm_pre``, ``dist_token`` +
``head_dist``, EVA-style ``gamma_1`` / ``q_bias`` / ``v_bias`` / ``reg_token`` for DINOv3), so
the reference is HF's forward, not depthflow's key map. What timm's architecture names fix
(quick-GELU, eps, heads) comes from :func:`timm_hints`; a timm hub directory
(``config.json`` with ``architecture`` and ``pretrained_cfg``) gives it and the
preprocessing.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from depthflow.api.loader import load_model
from depthflow.models.formats import convert_state_dict, timm_hints
from depthflow.models.vit import ViT

from _models import randomize_parameters

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, patch_size=4,
              image_size=16, intermediate_size=48)


def _qkv(sd, src, dst, *, k_bias=True):
    q, k, v = (sd[f"{src}.{p}_proj.weight"] for p in "qkv")
    out = {f"{dst}.qkv.weight": torch.cat([q, k, v])}
    if k_bias:
        out[f"{dst}.qkv.bias"] = torch.cat([sd[f"{src}.{p}_proj.bias"] for p in "qkv"])
    return out


def clip_like_to_timm(model, *, clip: bool):
    sd = model.vision_model.state_dict() if hasattr(model, "vision_model") else model.state_dict()
    out = {"patch_embed.proj.weight": sd["embeddings.patch_embedding.weight"],
           "norm.weight": sd["post_layernorm.weight"], "norm.bias": sd["post_layernorm.bias"]}
    pos = sd["embeddings.position_embedding.weight"][None]
    out["pos_embed"] = pos
    if clip:
        out["cls_token"] = sd["embeddings.class_embedding"].reshape(1, 1, -1)
        out["norm_pre.weight"], out["norm_pre.bias"] = (sd["pre_layrnorm.weight"],
                                                        sd["pre_layrnorm.bias"])
    else:
        out["patch_embed.proj.bias"] = sd["embeddings.patch_embedding.bias"]
        out["attn_pool.latent"] = torch.zeros(1, 1, 32)             # MAP head: dropped
        out["attn_pool.q.weight"] = torch.zeros(32, 32)
    for i in range(2):
        src, dst = f"encoder.layers.{i}", f"blocks.{i}"
        out.update(_qkv(sd, f"{src}.self_attn", f"{dst}.attn"))
        for a, b in (("self_attn.out_proj", "attn.proj"), ("layer_norm1", "norm1"),
                     ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]
    return out


def deit_to_timm(model):
    sd = model.state_dict()
    e = "deit.embeddings."
    out = {"cls_token": sd[e + "cls_token"], "dist_token": sd[e + "distillation_token"],
           "pos_embed": sd[e + "position_embeddings"],
           "patch_embed.proj.weight": sd[e + "patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd[e + "patch_embeddings.projection.bias"],
           "norm.weight": sd["deit.layernorm.weight"], "norm.bias": sd["deit.layernorm.bias"],
           "head.weight": sd["cls_classifier.weight"], "head.bias": sd["cls_classifier.bias"],
           "head_dist.weight": sd["distillation_classifier.weight"],
           "head_dist.bias": sd["distillation_classifier.bias"]}
    for i in range(2):
        src, dst = f"deit.layers.{i}", f"blocks.{i}"
        out.update(_qkv(sd, f"{src}.attention", f"{dst}.attn"))
        for a, b in (("attention.o_proj", "attn.proj"), ("layernorm_before", "norm1"),
                     ("layernorm_after", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]
    return out


def dinov3_to_timm_eva(model):
    sd = model.state_dict()
    out = {"cls_token": sd["embeddings.cls_token"], "reg_token": sd["embeddings.register_tokens"],
           "patch_embed.proj.weight": sd["embeddings.patch_embeddings.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.bias"],
           "norm.weight": sd["norm.weight"], "norm.bias": sd["norm.bias"]}
    for i in range(2):
        src, dst = f"model.layer.{i}", f"blocks.{i}"
        out.update(_qkv(sd, f"{src}.attention", f"{dst}.attn", k_bias=False))
        out[f"{dst}.attn.q_bias"] = sd[f"{src}.attention.q_proj.bias"]
        out[f"{dst}.attn.v_bias"] = sd[f"{src}.attention.v_proj.bias"]
        out[f"{dst}.gamma_1"] = sd[f"{src}.layer_scale1.lambda1"]
        out[f"{dst}.gamma_2"] = sd[f"{src}.layer_scale2.lambda1"]
        for a, b in (("attention.o_proj", "attn.proj"), ("norm1", "norm1"), ("norm2", "norm2"),
                     ("mlp.up_proj", "mlp.fc1"), ("mlp.down_proj", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]
    return out


def hf(kind):
    T = transformers
    if kind == "clip":
        model = T.CLIPVisionModel(T.CLIPVisionConfig(**COMMON))
    elif kind == "siglip":
        model = T.SiglipVisionModel(T.SiglipVisionConfig(hidden_act="gelu", **COMMON))
    elif kind == "deit":
        model = T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(   # timm: eps 1e-6
            num_labels=5, layer_norm_eps=1e-6, **COMMON))
    else:
        model = T.DINOv3ViTModel(T.DINOv3ViTConfig(num_register_tokens=2, **COMMON))
    model.set_attn_implementation("sdpa")
    return randomize_parameters(model, 0).double().eval()


CASES = {
    "clip": ("vit_base_patch16_clip_quickgelu_224", lambda m: clip_like_to_timm(m, clip=True)),
    "siglip": ("vit_base_patch16_siglip_224", lambda m: clip_like_to_timm(m, clip=False)),
    "deit": ("deit_base_distilled_patch16_224", deit_to_timm),
    "dinov3": ("vit_small_patch16_dinov3", dinov3_to_timm_eva),
}


def hf_outputs(model, kind, x):
    with torch.no_grad():
        if kind == "deit":
            return model.deit(x, output_hidden_states=True).hidden_states, model(x).logits
        kwargs = {} if kind == "dinov3" else {"interpolate_pos_encoding": True}
        out = model(x, output_hidden_states=True, **kwargs)
        return out.hidden_states, None


@pytest.mark.parametrize("kind", sorted(CASES))
def test_timm_layout_matches_hf(kind):
    model = hf(kind)
    arch, to_timm = CASES[kind]
    hints = {**timm_hints(arch), "num_heads": 4}
    notes: list[str] = []
    style, cfg, sd = convert_state_dict(to_timm(model), hints=hints, notes=notes)
    assert style == "timm"
    assert cfg.activation == ("quick_gelu" if kind == "clip" else "gelu")
    assert cfg.cls_token == (kind != "siglip")
    assert cfg.num_distillation_tokens == (kind == "deit")
    assert cfg.rope == ("dinov3" if kind == "dinov3" else "none")
    if kind == "siglip":
        assert any("attn_pool" in n for n in notes)
    ours = ViT(cfg).double()
    ours.load_state_dict(sd)
    ours.eval().set_attention("math")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64)
    states, logits = hf_outputs(model, kind, x)
    with torch.no_grad():
        trajectory = ours.trajectory(x)
        for depth, theirs in enumerate(states):
            err = ((trajectory[:, depth] - theirs).abs().max() / theirs.abs().max()).item()
            assert err < 1e-6, (kind, depth, err)
        if logits is not None:
            torch.testing.assert_close(ours(x), logits, rtol=0, atol=1e-9)


def test_timm_hub_directory(tmp_path):
    model = hf("clip")
    tensors = {k: v.float().contiguous() for k, v in clip_like_to_timm(model, clip=True).items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "vit_base_patch16_clip_quickgelu_224", "num_classes": 0,
        "pretrained_cfg": {"input_size": [3, 16, 16], "crop_pct": 1.0,
                           "interpolation": "bicubic", "mean": [0.4, 0.4, 0.4],
                           "std": [0.2, 0.2, 0.2]}}))
    loaded = load_model(tmp_path, arch="num_heads=4")
    assert (loaded.format, loaded.config.activation, loaded.config.norm_eps) == \
        ("timm", "quick_gelu", 1e-5)
    assert (loaded.preprocessing.resize, loaded.preprocessing.crop) == (16, 16)
    assert loaded.preprocessing.mean == (0.4, 0.4, 0.4)
    assert loaded.info["preprocessing_source"] == "timm pretrained_cfg"


@pytest.mark.parametrize("name, expected", [
    ("vit_base_patch16_clip_224", {"norm_eps": 1e-5}),
    ("vit_large_patch14_clip_quickgelu_224", {"activation": "quick_gelu", "norm_eps": 1e-5}),
    ("vit_so400m_patch14_siglip_384", {"num_heads": 16}),
    ("vit_huge_patch14_clip_224", {"norm_eps": 1e-5, "num_heads": 16}),
    ("vit_huge_plus_patch16_dinov3", {"norm_eps": 1e-5, "rope_theta": 100.0}),
    ("deit3_small_patch16_224", {}),
])
def test_timm_hints(name, expected):
    assert timm_hints(name) == expected


@pytest.mark.parametrize("architecture", [5, "", None, ["vit_base_patch16_224"]])
def test_timm_architecture_field_of_the_wrong_type_is_one_error(tmp_path, architecture):
    from depthflow.errors import ConfigError

    model = hf("clip")
    tensors = {k: v.float().contiguous() for k, v in clip_like_to_timm(model, clip=True).items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": architecture}))
    with pytest.raises(ConfigError, match="architecture"):
        load_model(tmp_path, arch="num_heads=4")
