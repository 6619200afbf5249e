"""Non-Hugging-Face layouts beyond DINOv2: OpenAI CLIP / OpenCLIP and the DINOv3 hub.

==============  ==================================================================
style           source and names
==============  ==================================================================
``openclip``    OpenAI CLIP (``clip.load``) and OpenCLIP state dicts: ``visual.conv1``,
                ``visual.class_embedding``, ``visual.positional_embedding``,
                ``visual.ln_pre``, ``visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight,
                attn.in_proj_bias, attn.out_proj, ls_1.gamma, ln_2, mlp.c_fc, mlp.c_proj,
                ls_2.gamma}``, ``visual.ln_post``, ``visual.proj`` (applied as ``x @ proj``: kept
                as a bias-free head with weight ``proj.T``). The text tower is dropped with a
                note. ``in_proj_weight`` packs q, k, v in that order (``nn.MultiheadAttention``).
``dinov3-hub``  facebookresearch/dinov3 backbones: ``storage_tokens`` (registers),
                ``rope_embed.periods`` (kept as stored), ``blocks.N.attn.qkv.bias_mask``
                (honoured: the masked thirds of the bias become ``qkv_bias_parts``, the mask
                itself is never loaded as a weight), ``ls1.gamma``, ``mlp.w1/w2/w3``
                (SwiGLU, packed as ``w12 = [w1; w2]``) or ``mlp.fc1/fc2``.
==============  ==================================================================

OpenCLIP weights do not record the MLP activation: OpenAI CLIP and OpenCLIP's
``-quickgelu`` models use quick-GELU, the others exact GELU. It comes from an
``open_clip_config.json`` (``model_cfg.quick_gelu``) when the checkpoint has one, else
from ``--arch activation=...``; without either the reader refuses rather than guess.
The number of heads follows OpenCLIP's ``width // head_width`` with 64-wide heads unless
the config says otherwise. DINOv3's head size is ``4 * len(periods)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from depthflow.errors import ArchitectureError
from depthflow.models.arch import infer_config, preview
from depthflow.models.renaming import compile_rules, rename
from depthflow.models.vit import ViTConfig

LAYOUT_STYLES = ("openclip", "dinov3-hub")

_OC_BLOCK = r"transformer\.resblocks\.(\d+)\."
_OPENCLIP_RULES = compile_rules([
    (r"conv1\.weight", "patch_embed.proj.weight"),
    (r"class_embedding", "cls_token"),
    (r"positional_embedding", "pos_embed"),
    (r"ln_pre\.(weight|bias)", r"norm_pre.\1"),
    (_OC_BLOCK + r"ln_([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (_OC_BLOCK + r"attn\.in_proj_weight", r"blocks.\1.attn.qkv.weight"),
    (_OC_BLOCK + r"attn\.in_proj_bias", r"blocks.\1.attn.qkv.bias"),
    (_OC_BLOCK + r"attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_OC_BLOCK + r"ls_([12])\.gamma", r"blocks.\1.ls\2.gamma"),
    (_OC_BLOCK + r"mlp\.c_fc\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (_OC_BLOCK + r"mlp\.c_proj\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"ln_post\.(weight|bias)", r"norm.\1"),
    (r"proj", "head.weight"),
])
# OpenCLIP vision features depthflow's ViT does not implement, by key fragment.
_OPENCLIP_UNSUPPORTED = {
    "attn_pool": "an attentional pooler (CoCa)", ".ln_inner.": "an MLP inner norm",
    ".ln_attn.": "a post-attention norm (scale_attn)", ".attn.head_scale": "head scaling",
    "trunk.": "a timm trunk (the timm reader handles it: pass the trunk's state dict)",
}
_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
              "text_projection", "logit_scale", "logit_bias", "text.", "attn_mask")

_HUB3_BLOCK = r"blocks\.(\d+)\."
_DINOV3_HUB_RULES = compile_rules([
    (r"(cls_token|pos_embed)", r"\1"),
    (r"storage_tokens", "register_tokens"),
    (r"mask_token", None),
    (r"local_cls_norm\.(weight|bias)", None),
    (r"rope_embed\.periods", "rope_embed.periods"),
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.proj.\1"),
    (_HUB3_BLOCK + r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|mlp\.w3)"
     r"\.(weight|bias)", r"blocks.\1.\2.\3"),
    (_HUB3_BLOCK + r"attn\.qkv\.bias_mask", None),
    (_HUB3_BLOCK + r"mlp\.w1\.(weight|bias)", r"blocks.\1.mlp.w12.\2#gate"),
    (_HUB3_BLOCK + r"mlp\.w2\.(weight|bias)", r"blocks.\1.mlp.w12.\2#up"),
    (_HUB3_BLOCK + r"(ls1|ls2)\.gamma", r"blocks.\1.\2.gamma"),
    (r"norm\.(weight|bias)", r"norm.\1"),
])


def detect_layout(keys: set[str]) -> str | None:
    """``openclip`` / ``dinov3-hub`` from key names, or None."""
    if {"visual.conv1.weight", "visual.class_embedding"} <= keys or \
            {"conv1.weight", "class_embedding"} <= keys:
        return "openclip"
    if "cls_token" in keys and ("rope_embed.periods" in keys or "storage_tokens" in keys
                                or any(k.endswith("attn.qkv.bias_mask") for k in keys)):
        return "dinov3-hub"
    return None


# --------------------------------------------------------------------------- OpenCLIP
def convert_openclip(state_dict: Mapping[str, Tensor], *,
                     model_cfg: Mapping[str, Any] | None = None,
                     hints: Mapping[str, Any] | None = None,
                     overrides: Mapping[str, Any] | None = None,
                     ) -> tuple[ViTConfig, dict[str, Tensor], list[str]]:
    """OpenAI CLIP / OpenCLIP names (see the module table); ``model_cfg`` is an
    ``open_clip_config.json``'s ``model_cfg`` (``quick_gelu``, ``vision_cfg``)."""
    sd, notes = _visual(state_dict)
    for key in sd:
        reason = next((r for frag, r in _OPENCLIP_UNSUPPORTED.items() if frag in key), None)
        if reason:
            raise ArchitectureError(
                f"this OpenCLIP vision tower uses {reason} ({key!r}), which depthflow's ViT "
                "does not implement")
    out = rename(sd, _OPENCLIP_RULES, "openclip")
    out["cls_token"] = out["cls_token"].reshape(1, 1, -1)
    if "pos_embed" in out:
        out["pos_embed"] = out["pos_embed"][None]
    if "head.weight" in out:
        out["head.weight"] = out["head.weight"].t().contiguous()   # x @ proj = proj^T x
    model_cfg = dict(model_cfg or {})
    vision = dict(model_cfg.get("vision_cfg") or {})
    defaults: dict[str, Any] = {"norm_eps": 1e-5, "interp_offset": 0.0,
                                "interp_antialias": False}
    if "quick_gelu" in model_cfg or model_cfg:
        defaults["activation"] = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    width = int(out["patch_embed.proj.weight"].shape[0])
    head_width = int(vision.get("head_width", 64))
    if width % head_width == 0:
        defaults["num_heads"] = width // head_width
    defaults.update(hints or {})
    if "activation" not in defaults and "activation" not in (overrides or {}):
        raise ArchitectureError(
            "OpenCLIP / OpenAI CLIP weights do not record the MLP activation; pass "
            "--arch activation=quick_gelu (OpenAI CLIP and OpenCLIP '-quickgelu' models) or "
            "activation=gelu (other OpenCLIP models), or load the directory with its "
            "open_clip_config.json")
    return infer_config(out, defaults=defaults, overrides=overrides), out, notes


def _visual(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if not any(k.startswith("visual.") for k in sd):
        return sd, []
    text = sorted(k for k in sd if not k.startswith("visual."))
    stray = [k for k in text if not k.startswith(_TEXT_KEYS)]
    if stray:
        raise ArchitectureError(f"OpenCLIP weights mix the visual tower with unknown keys: "
                                f"{preview(stray)}")
    notes = [f"text tower dropped ({len(text)} tensors); depthflow reads visual.*"] if text \
        else []
    return {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}, notes


# --------------------------------------------------------------------------- DINOv3 hub
def convert_dinov3_hub(state_dict: Mapping[str, Tensor], *,
                       hints: Mapping[str, Any] | None = None,
                       overrides: Mapping[str, Any] | None = None,
                       ) -> tuple[ViTConfig, dict[str, Tensor], list[str]]:
    """facebookresearch/dinov3 backbone names (see the module table). Published backbones:
    LayerNorm eps 1e-5 (``layernormbf16``), RoPE base 100, coordinates normalised per axis."""
    sd = dict(state_dict)
    notes: list[str] = []
    if "cls_norm.weight" in sd:
        raise ArchitectureError(
            "this DINOv3 backbone unties the cls/register norm from the patch norm "
            "(cls_norm.*), which depthflow's single final norm does not implement")
    if "local_cls_norm.weight" in sd:
        notes.append("local_cls_norm dropped: DINOv3 uses it in training only")
    parts = _bias_parts(sd)
    out = rename(sd, _DINOV3_HUB_RULES, "dinov3-hub")
    defaults: dict[str, Any] = {"norm_eps": 1e-5, "rope": "dinov3", "position_embedding": "none"}
    if parts is not None:
        defaults["qkv_bias_parts"] = parts
    periods = out.get("rope_embed.periods")
    if periods is None:
        raise ArchitectureError("DINOv3 hub weights lack rope_embed.periods (the RoPE "
                                "periods); the checkpoint is incomplete")
    width = int(out["patch_embed.proj.weight"].shape[0])
    head_dim = 4 * int(periods.numel())
    if width % head_dim:
        raise ArchitectureError(f"rope_embed.periods has {periods.numel()} entries, so heads "
                                f"of {head_dim}, which do not divide the width {width}")
    defaults["num_heads"] = width // head_dim
    theta = _theta(periods, head_dim)
    if theta is not None:
        defaults["rope_theta"] = theta
    defaults.update(hints or {})
    return infer_config(out, defaults=defaults, overrides=overrides), out, notes


def _bias_parts(sd: Mapping[str, Tensor]) -> str | None:
    """The q/k/v thirds a ``bias_mask`` keeps (``"qv"`` for DINOv3), the same in every
    block; a mask that is not 0/1 per third (e.g. the NaN of an uninitialised one) fails."""
    found = set()
    for key in sorted(k for k in sd if k.endswith("attn.qkv.bias_mask")):
        mask = sd[key].detach().double()
        thirds = mask.reshape(3, -1)
        parts = ""
        for letter, third in zip("qkv", thirds):
            if bool((third == 1).all()):
                parts += letter
            elif not bool((third == 0).all()):
                raise ArchitectureError(
                    f"{key} is not 0 or 1 on each of q, k, v (NaN: never initialised); "
                    "depthflow honours masks that keep or drop whole q/k/v biases")
        found.add(parts)
    if len(found) > 1:
        raise ArchitectureError(f"blocks mask different q/k/v biases: {sorted(found)}")
    if not found:
        return None
    parts = found.pop()
    if not parts:
        raise ArchitectureError("attn.qkv.bias_mask drops every bias; remove the bias instead")
    return parts


def _theta(periods: Tensor, head_dim: int) -> float | None:
    """The RoPE base the periods were made from (recorded in the config; the periods
    themselves are loaded as stored)."""
    n = periods.numel()
    first, last = float(periods[0]), float(periods[-1])
    if n < 2 or first != 1.0 or last <= 1.0:
        return None
    base = last ** (head_dim / (4 * (n - 1)))       # periods[i] = base ** (4 i / head_dim)
    return float(round(base, 1)) if math.isfinite(base) else None


__all__ = ["LAYOUT_STYLES", "detect_layout", "convert_openclip", "convert_dinov3_hub"]
