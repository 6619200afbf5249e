"""Hugging Face readers for CLIP, SigLIP and DINOv3 vision towers.

==============  ============================================  =================================
style           transformers classes                          switches they set
==============  ============================================  =================================
``hf-clip``     ``CLIPVisionModel``, ``CLIPVisionModelWith``  pre-norm (``pre_layrnorm``), no
                ``Projection``, vision part of ``CLIPModel``  patch bias, quick-GELU, eps 1e-5,
                                                              projection kept as a bias-free head
``hf-siglip``   ``SiglipVisionModel``, vision part of         no cls token, table without a cls
                ``SiglipModel`` (SigLIP and fixed-res         slot, tanh GELU, eps 1e-6; the
                SigLIP2)                                      attention-pool head is dropped
``hf-dinov3``   ``DINOv3ViTModel``                            RoPE (theta from the config), no
                                                              position table, key bias masked,
                                                              LayerScale, eps 1e-5, GELU or SwiGLU
==============  ============================================  =================================

Each converter takes a state dict (4.x names as written by ``save_pretrained`` or the live
5.x names) and the model's ``config.json``, and returns ``(ViTConfig, state_dict, notes)``
with depthflow names; ``notes`` say what was dropped (text towers, pooling heads). DeiT and
ViTMAE share ViT's layout and are read by :func:`depthflow.models.formats.convert_hf`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from depthflow.errors import ArchitectureError
from depthflow.models.arch import infer_config, preview
from depthflow.models.renaming import compile_rules, rename
from depthflow.models.vit import RopeEmbedding, ViTConfig

FAMILY_STYLES = {"clip_vision_model": "hf-clip", "clip": "hf-clip",
                 "siglip_vision_model": "hf-siglip", "siglip": "hf-siglip",
                 "dinov3_vit": "hf-dinov3"}
# Hugging Face activations -> depthflow's (see ViTConfig.activation).
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "quick_gelu": "quick_gelu"}
# Model types depthflow recognises but does not read, and what differs.
UNSUPPORTED = {
    "siglip2": "SigLIP2 NaFlex (variable resolution: a linear patch embedding on flattened "
               "patches and position tables resized per image); fixed-resolution SigLIP2 "
               "checkpoints (model_type 'siglip') are supported",
    "siglip2_vision_model": "SigLIP2 NaFlex (variable resolution: a linear patch embedding on "
                            "flattened patches and position tables resized per image)",
    "clip_text_model": "a CLIP text model (token sequences, causal mask), not a vision tower",
    "siglip_text_model": "a SigLIP text model (token sequences), not a vision tower",
    "dinov3_convnext": "a DINOv3 ConvNeXt (convolutional stages, no transformer blocks)",
    "eva": "EVA-02 (SwiGLU with an inner norm and interleaved RoPE), not implemented",
}

_LAYER = r"(?:encoder\.layers|encoder\.layer|layers|model\.layer|layer)\.(\d+)\."
_CLIP_RULES = compile_rules([
    (r"embeddings\.class_embedding", "cls_token"),
    (r"embeddings\.patch_embedding\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"embeddings\.position_embedding\.weight", "pos_embed"),
    (r"embeddings\.position_ids", None),
    (r"pre_layrnorm\.(weight|bias)", r"norm_pre.\1"),
    (_LAYER + r"layer_norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (_LAYER + r"self_attn\.([qkv])_proj\.(weight|bias)", r"blocks.\1.attn.qkv.\3#\2"),
    (_LAYER + r"self_attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"post_layernorm\.(weight|bias)", r"norm.\1"),
    (r"visual_projection\.weight", "head.weight"),
    (r"head\.(probe|attention\..+|layernorm\..+|mlp\..+)", None),
])
_DINOV3_COMMON = [
    (r"embeddings\.(cls_token|register_tokens)", r"\1"),
    (r"embeddings\.mask_token", None),
    (r"embeddings\.patch_embeddings\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"rope_embeddings\.inv_freq", None),
    (_LAYER + r"norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (_LAYER + r"attention\.([qkv])_proj\.(weight|bias)", r"blocks.\1.attn.qkv.\3#\2"),
    (_LAYER + r"attention\.o_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"norm\.(weight|bias)", r"norm.\1"),
]
_DINOV3_GELU = compile_rules(_DINOV3_COMMON + [
    (_LAYER + r"mlp\.up_proj\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (_LAYER + r"mlp\.down_proj\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
])
_DINOV3_SWIGLU = compile_rules(_DINOV3_COMMON + [
    (_LAYER + r"mlp\.gate_proj\.(weight|bias)", r"blocks.\1.mlp.w12.\2#gate"),
    (_LAYER + r"mlp\.up_proj\.(weight|bias)", r"blocks.\1.mlp.w12.\2#up"),
    (_LAYER + r"mlp\.down_proj\.(weight|bias)", r"blocks.\1.mlp.w3.\2"),
])
_TOWER_EXTRAS = ("text_model.", "text_projection.", "logit_scale", "logit_bias")


def detect_family(keys: set[str]) -> str | None:
    """The family style of HF-named keys (prefixes stripped), or None."""
    if "embeddings.class_embedding" in keys or "vision_model.embeddings.class_embedding" in keys:
        return "hf-clip"
    if any(k.endswith("embeddings.patch_embedding.weight") for k in keys):
        return "hf-siglip"
    if any(k.endswith("layer_scale1.lambda1") and ".attention." not in k for k in keys) and \
            any(".attention.o_proj." in k for k in keys) and "embeddings.cls_token" in keys and \
            not any(k.startswith("embeddings.position_embeddings") for k in keys):
        return "hf-dinov3"
    return None


def unsupported(model_type: Any) -> str | None:
    """One line saying why an HF ``model_type`` is not read, or None if it is not listed."""
    reason = UNSUPPORTED.get(str(model_type))
    return None if reason is None else f"Hugging Face model_type {model_type!r} is {reason}"


def vision_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The vision tower's config: ``vision_config`` of a two-tower model, else itself."""
    inner = config.get("vision_config")
    return dict(inner) if isinstance(inner, Mapping) else dict(config)


def convert_family(state_dict: Mapping[str, Tensor], style: str, *,
                   config: Mapping[str, Any] | None = None,
                   hints: Mapping[str, Any] | None = None,
                   overrides: Mapping[str, Any] | None = None,
                   ) -> tuple[ViTConfig, dict[str, Tensor], list[str]]:
    """Convert a CLIP / SigLIP / DINOv3 state dict (see the module table)."""
    config = vision_config(config or {})
    sd, notes = _vision_part(state_dict, style)
    if style in ("hf-clip", "hf-siglip"):
        out, defaults = _clip_like(sd, style, config, notes)
    elif style == "hf-dinov3":
        out, defaults = _dinov3(sd, config)
    else:
        raise ArchitectureError(f"no Hugging Face family reader for style {style!r}")
    defaults.update(hints or {})
    return infer_config(out, defaults=defaults, overrides=overrides), out, notes


def _vision_part(state_dict: Mapping[str, Tensor], style: str,
                 ) -> tuple[dict[str, Tensor], list[str]]:
    """Keys of the vision tower; text towers and logit scales are dropped with a note."""
    sd = dict(state_dict)
    notes: list[str] = []
    if any(k.startswith("vision_model.") for k in sd):
        dropped = sorted(k for k in sd if k.startswith(_TOWER_EXTRAS))
        if dropped:
            notes.append(f"text tower dropped ({len(dropped)} tensors: "
                         f"{preview(dropped, 2)}); depthflow reads the vision tower")
        other = sorted(k for k in sd if not k.startswith(("vision_model.", "visual_projection.",
                                                          *_TOWER_EXTRAS)))
        if other:
            raise ArchitectureError(
                f"{style} weights mix a vision_model with other keys: {preview(other)}")
        sd = {k.removeprefix("vision_model."): v for k, v in sd.items()
              if k.startswith(("vision_model.", "visual_projection."))}
    return sd, notes


def _clip_like(sd: dict[str, Tensor], style: str, config: Mapping[str, Any],
               notes: list[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    clip = style == "hf-clip"
    if any(k.startswith("head.probe") for k in sd):
        notes.append("SigLIP attention-pool head (head.*) dropped: it sits outside the "
                     "residual stream; the readout is the normed mean patch")
    out = rename(sd, _CLIP_RULES, style)
    if "cls_token" in out:
        out["cls_token"] = out["cls_token"].reshape(1, 1, -1)
    if "pos_embed" in out:
        out["pos_embed"] = out["pos_embed"][None]
    act = str(config.get("hidden_act", "quick_gelu" if clip else "gelu_pytorch_tanh"))
    if act not in ACTIVATIONS:
        raise ArchitectureError(
            f"hidden_act {act!r} is not implemented by depthflow's ViT; supported: "
            f"{', '.join(sorted(ACTIVATIONS))}")
    defaults = {"activation": ACTIVATIONS[act],
                "norm_eps": float(config.get("layer_norm_eps", 1e-5 if clip else 1e-6)),
                "interp_offset": 0.0, "interp_antialias": False, "pos_embed_cls": clip,
                **_heads(config)}
    return out, defaults


def _dinov3(sd: dict[str, Tensor], config: Mapping[str, Any],
            ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = dict(sd)
    gated = any(".mlp.gate_proj." in k for k in sd)
    parts = ""
    for letter in "qkv":
        keys = [k for k in sd if k.endswith(f"attention.{letter}_proj.weight")]
        with_bias = [k for k in keys if k[: -len("weight")] + "bias" in sd]
        if with_bias and len(with_bias) != len(keys):
            raise ArchitectureError(f"some {letter}_proj layers have a bias and others not: "
                                    f"{preview(sorted(set(keys) - set(with_bias)))}")
        if with_bias:
            parts += letter
    if parts:                                # absent parts become zero biases, masked
        for key in [k for k in sd if k.endswith("attention.q_proj.weight")]:
            for letter in set("qkv") - set(parts):
                bias_key = key.replace("q_proj.weight", f"{letter}_proj.bias")
                sd[bias_key] = sd[key].new_zeros(sd[key].shape[0])
    out = rename(sd, _DINOV3_SWIGLU if gated else _DINOV3_GELU, "hf-dinov3")
    if "register_tokens" in out and out["register_tokens"].shape[1] == 0:
        del out["register_tokens"]                   # HF keeps an empty (1, 0, D) table
    act = str(config.get("hidden_act", "silu" if gated else "gelu"))
    if (gated and act != "silu") or (not gated and act not in ACTIVATIONS):
        raise ArchitectureError(
            f"hidden_act {act!r} with {'a gated' if gated else 'a plain'} MLP is not "
            "implemented by depthflow's ViT (SwiGLU gates with silu)")
    heads = config.get("num_attention_heads")
    if heads is None:
        raise ArchitectureError("DINOv3 weights need num_attention_heads from config.json "
                                "(RoPE depends on the head size)")
    theta = float(config.get("rope_theta", 100.0))
    width = int(out["patch_embed.proj.weight"].shape[0])
    out["rope_embed.periods"] = dinov3_periods(width // int(heads), theta)
    defaults: dict[str, Any] = {
        "rope": "dinov3", "rope_theta": theta, "position_embedding": "none",
        "qkv_bias_parts": parts or "qkv",
        "norm_eps": float(config.get("layer_norm_eps", 1e-5)),
        "img_size": int(config.get("image_size", 224)), **_heads(config)}
    if not gated:
        defaults["activation"] = ACTIVATIONS[act]
    return out, defaults


def _heads(config: Mapping[str, Any]) -> dict[str, Any]:
    heads = config.get("num_attention_heads")
    return {} if heads is None else {"num_heads": int(heads)}


def dinov3_periods(head_dim: int, theta: float) -> Tensor:
    """DINOv3's RoPE periods ``theta ** (4 i / head_dim)`` (float32)."""
    return RopeEmbedding(head_dim, theta).periods.clone()


__all__ = ["FAMILY_STYLES", "UNSUPPORTED", "detect_family", "unsupported", "vision_config",
           "convert_family", "dinov3_periods"]
