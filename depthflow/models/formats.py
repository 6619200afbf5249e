"""Foreign ViT state dicts in depthflow's names, and the architecture their weights imply.

One converter per source style maps a state dict to depthflow's (DINOv2 hub) parameter
names and infers a :class:`~depthflow.models.vit.ViTConfig` from the tensor shapes:

=======================  ===============================================================
style                    source
=======================  ===============================================================
``dinov2-hub``           facebookresearch/dinov2 ``torch.hub`` models and training ckpts
``timm``                 timm ``VisionTransformer`` (``reg_token``, SwiGLU, no-cls pos)
``hf-dinov2``            transformers ``Dinov2Model`` (4.x and 5.x parameter names)
``hf-dinov2-registers``  transformers ``Dinov2WithRegistersModel`` (4.x and 5.x)
``hf-vit``               transformers ``ViTModel`` (4.x and 5.x)
``hf-deit``              transformers ``DeiTModel`` (+ teacher-distilled classifier heads)
``hf-vit-mae``           transformers ``ViTMAEModel`` (fixed sin-cos table, no masking)
``hf-clip``, ``hf-siglip``, ``hf-dinov3``  see :mod:`depthflow.models.hf_families`
``openclip``, ``dinov3-hub``               see :mod:`depthflow.models.layouts`
=======================  ===============================================================

docs/families.md lists every family, its switches and how each reader is verified.

Each converter returns ``(ViTConfig, state_dict)``. Facts the weights do not hold come as
``hints`` (from an HF ``config.json`` or a live module) or from the style's conventions;
``overrides`` (see :func:`parse_arch`) win over both. The number of attention heads is not
in the weights: without a hint it follows DINOv2's 64-wide heads. Everything here is pure:
no files, no modules, no pickles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from depthflow.models.arch import (DINOV2_HEAD_DIM, PRESETS, infer_config, is_square, parse_arch,
                                   preview, require)
from depthflow.errors import ArchitectureError, ConfigError
from depthflow.models.hf_families import (ACTIVATIONS, FAMILY_STYLES, convert_family,
                                          detect_family, dinov3_periods, unsupported)
from depthflow.models.layouts import convert_dinov3_hub as _convert_dinov3_hub
from depthflow.models.layouts import convert_openclip, detect_layout
from depthflow.models.preprocessing import Preprocessing, family_preprocessing
from depthflow.models.renaming import compile_rules as _compile, rename as _rename
from depthflow.models.vit import ViTConfig

STYLES = ("dinov2-hub", "timm", "hf-dinov2", "hf-dinov2-registers", "hf-vit", "hf-deit",
          "hf-vit-mae", "hf-clip", "hf-siglip", "hf-dinov3", "openclip", "dinov3-hub")
_VIT_LIKE = {"dinov2": "hf-dinov2", "dinov2_with_registers": "hf-dinov2-registers",
             "vit": "hf-vit", "deit": "hf-deit", "vit_mae": "hf-vit-mae"}
HF_STYLES = {**_VIT_LIKE, **FAMILY_STYLES}
# Wrappers around a backbone: DDP, torch.compile, DINOv2 training, HF task models.
PREFIXES = ("module.", "_orig_mod.", "teacher.backbone.", "backbone.", "teacher.", "model.",
            "dinov2_with_registers.", "dinov2.", "vit.", "deit.")
_HEAD_PREFIXES = ("classifier.", "head.", "cls_classifier.", "distillation_classifier.")
_ROOT_KEYS = ("cls_token", "embeddings.cls_token")

_HUB_BLOCK = r"blocks\.(?:\d+\.)?(\d+)\."          # plain or chunked (blocks.chunk.index)
_HUB_RULES = _compile([
    (r"(cls_token|register_tokens|pos_embed)", r"\1"),
    (r"mask_token", None),
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.proj.\1"),
    (_HUB_BLOCK + r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|mlp\.w12|mlp\.w3)"
     r"\.(weight|bias)", r"blocks.\1.\2.\3"),
    (_HUB_BLOCK + r"(ls1|ls2)\.gamma", r"blocks.\1.\2.gamma"),
    (r"(norm|head)\.(weight|bias)", r"\1.\2"),
])

_TIMM_BLOCK = r"blocks\.(\d+)\."
_TIMM_RULES = _compile([
    (r"(cls_token|pos_embed|dist_token)", r"\1"),
    (r"reg_token", "register_tokens"),
    (r"norm_pre\.(weight|bias)", r"norm_pre.\1"),
    (r"attn_pool\..+", None),
    (r"rope\..+", None),
    (_TIMM_BLOCK + r"gamma_([12])", r"blocks.\1.ls\2.gamma"),
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.proj.\1"),
    (_TIMM_BLOCK + r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)",
     r"blocks.\1.\2.\3"),
    (_TIMM_BLOCK + r"mlp\.fc1_g\.(weight|bias)", r"blocks.\1.mlp.w12.\2#gate"),
    (_TIMM_BLOCK + r"mlp\.fc1_x\.(weight|bias)", r"blocks.\1.mlp.w12.\2#up"),
    (_TIMM_BLOCK + r"(ls1|ls2)\.gamma", r"blocks.\1.\2.gamma"),
    (r"(norm|head)\.(weight|bias)", r"\1.\2"),
])
# timm features depthflow's ViT does not implement, by key fragment.
_TIMM_UNSUPPORTED = {
    "fc_norm.": "a global-average-pool readout with fc_norm (global_pool='avg')",
    ".attn.q_norm.": "QK normalisation", ".attn.k_norm.": "QK normalisation",
    ".attn.norm.": "attention scale-norm", ".mlp.norm.": "an MLP scale-norm",
}

# HF layer names: 4.x ``encoder.layer.N`` (all), 5.x ``encoder.layer.N`` (Dinov2) and
# ``layers.N`` (ViT); 5.x split SwiGLU ``gate_proj``/``up_proj`` is re-packed as ``w12``.
_HF_LAYER = r"(?:encoder\.layer|layers)\.(\d+)\."
_HF_RULES = _compile([
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.distillation_token", "dist_token"),
    (r"embeddings\.register_tokens", "register_tokens"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.mask_token", None),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (_HF_LAYER + r"(?:norm1|layernorm_before)\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (_HF_LAYER + r"(?:norm2|layernorm_after)\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (_HF_LAYER + r"attention\.(?:attention\.query|q_proj)\.(weight|bias)",
     r"blocks.\1.attn.qkv.\2#q"),
    (_HF_LAYER + r"attention\.(?:attention\.key|k_proj)\.(weight|bias)",
     r"blocks.\1.attn.qkv.\2#k"),
    (_HF_LAYER + r"attention\.(?:attention\.value|v_proj)\.(weight|bias)",
     r"blocks.\1.attn.qkv.\2#v"),
    (_HF_LAYER + r"attention\.(?:output\.dense|o_proj)\.(weight|bias)",
     r"blocks.\1.attn.proj.\2"),
    (_HF_LAYER + r"layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (_HF_LAYER + r"(?:mlp\.fc1|intermediate\.dense)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (_HF_LAYER + r"(?:mlp\.fc2|output\.dense)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (_HF_LAYER + r"mlp\.weights_in\.(weight|bias)", r"blocks.\1.mlp.w12.\2"),
    (_HF_LAYER + r"mlp\.gate_proj\.(weight|bias)", r"blocks.\1.mlp.w12.\2#gate"),
    (_HF_LAYER + r"mlp\.up_proj\.(weight|bias)", r"blocks.\1.mlp.w12.\2#up"),
    (_HF_LAYER + r"mlp\.(?:weights_out|down_proj)\.(weight|bias)", r"blocks.\1.mlp.w3.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"pooler\..+", None),
    (r"decoder\..+", None),
    (r"classifier\.(weight|bias)", r"head.\1"),
])


# --------------------------------------------------------------------------- renaming
def strip_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Unwrap backbone prefixes (``module.``, ``teacher.backbone.``, ``dinov2.``...).

    A prefix is removed when the keys under it hold a ViT (a cls token); other keys are
    dropped (DINOv2 heads, the student), except top-level ``classifier.*``/``head.*``.
    """
    sd = dict(state_dict)
    for _ in range(len(PREFIXES)):
        for prefix in PREFIXES:
            inner = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            if any(root in inner for root in _ROOT_KEYS):
                heads = {k: v for k, v in sd.items() if k.startswith(_HEAD_PREFIXES)}
                sd = {**heads, **inner}
                break
        else:
            return sd
    return sd


# --------------------------------------------------------------------------- detection
_EXPECTED_CORE = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.norm1.weight",
                  "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "norm.weight")


def detect_style(state_dict: Mapping[str, Tensor]) -> str:
    """Which source style a (prefix-stripped) state dict comes from; see :data:`STYLES`.

    Hub and timm dicts of a plain ViT have identical names; they are read as ``dinov2-hub``
    unless something only timm writes is present (``reg_token``, ``fc1_g``, a packed
    SwiGLU ``fc1``, a position table without a cls slot, timm-only modules).
    """
    keys = set(state_dict)
    family = detect_family(keys) or detect_layout(keys)
    if family is not None:
        return family
    if "embeddings.cls_token" in keys or any(k.startswith(("encoder.layer.", "layers."))
                                             for k in keys):
        if "embeddings.distillation_token" in keys:
            return "hf-deit"
        if any(".layernorm_before." in k for k in keys):
            return "hf-vit"
        return "hf-dinov2-registers" if "embeddings.register_tokens" in keys else "hf-dinov2"
    if "cls_token" in keys and any(k.startswith("blocks.") for k in keys):
        return "timm" if _looks_timm(state_dict) else "dinov2-hub"
    if {"pos_embed", "patch_embed.proj.weight"} <= keys and \
            any(k.startswith("blocks.") for k in keys):
        return "timm"                             # a timm tower without cls token (SigLIP)
    missing = [k for k in _EXPECTED_CORE if k not in keys]
    unexpected = sorted(k for k in keys if not any(p.fullmatch(k) for p, _ in _HUB_RULES))
    raise ArchitectureError(
        "weights match no supported ViT (DINOv2 hub, timm, Hugging Face Dinov2/ViT/DeiT/"
        "ViTMAE/CLIP/SigLIP/DINOv3): "
        f"missing {preview(missing)}; unexpected {preview(unexpected)}. Pass the backbone's "
        "state dict (not an optimizer or a detection/segmentation model)")


def _looks_timm(sd: Mapping[str, Tensor]) -> bool:
    keys = set(sd)
    if {"reg_token", "norm_pre.weight", "dist_token"} & keys or any(
            ".mlp.fc1_g." in k or k.startswith("attn_pool.") or k.endswith(".gamma_1")
            for k in keys):
        return True
    if any(fragment in k for k in keys for fragment in _TIMM_UNSUPPORTED):
        return True
    fc1, fc2 = sd.get("blocks.0.mlp.fc1.weight"), sd.get("blocks.0.mlp.fc2.weight")
    if fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]:
        return True
    pos = sd.get("pos_embed")
    # a table without a cls slot is timm's, unless the hub's own register name is there
    # (timm writes reg_token): then it is a hub table of the wrong size, and the hub
    # reader says so instead of blaming register_tokens
    return (pos is not None and pos.ndim == 3 and is_square(pos.shape[1])
            and "register_tokens" not in keys)


# --------------------------------------------------------------------------- converters
def convert_state_dict(state_dict: Mapping[str, Tensor], *, style: str | None = None,
                       hf_config: Mapping[str, Any] | None = None,
                       hints: Mapping[str, Any] | None = None,
                       overrides: Mapping[str, Any] | None = None,
                       no_embed_class: bool | None = None,
                       notes: list[str] | None = None,
                       model_cfg: Mapping[str, Any] | None = None,
                       ) -> tuple[str, ViTConfig, dict[str, Tensor]]:
    """Detect the style (unless given), convert, and infer the architecture.

    Returns ``(style, config, state_dict)`` with depthflow names; what was dropped on the way
    (text towers, pooling heads, decoders) is appended to ``notes`` when given.
    """
    notes = notes if notes is not None else []
    if style in FAMILY_STYLES.values() or (style is None and (
            (hf_config is not None and hf_config.get("model_type") in FAMILY_STYLES)
            or (hf_config is None and detect_family(set(state_dict)) is not None))):
        style = style or (hf_style(hf_config) if hf_config is not None
                          else detect_family(set(state_dict)))
        cfg, out, dropped = convert_family(strip_prefixes(state_dict), str(style),
                                           config=hf_config, hints=hints, overrides=overrides)
        notes.extend(dropped)
        return str(style), cfg, out
    if style is None and hf_config is None:
        style = detect_layout(set(state_dict)) or detect_layout(set(strip_prefixes(state_dict)))
    if style == "openclip":
        cfg, out, dropped = convert_openclip(state_dict, model_cfg=model_cfg, hints=hints,
                                             overrides=overrides)
        notes.extend(dropped)
        return style, cfg, out
    sd = strip_prefixes(state_dict)
    if hf_config is not None and style is None:
        style = hf_style(hf_config)
    style = style or detect_style(sd)
    if style == "dinov3-hub":
        cfg, out, dropped = _convert_dinov3_hub(sd, hints=hints, overrides=overrides)
        notes.extend(dropped)
        return style, cfg, out
    if style == "dinov2-hub":
        cfg, out = convert_dinov2_hub(sd, hints=hints, overrides=overrides)
    elif style == "timm":
        cfg, out = convert_timm(sd, no_embed_class=no_embed_class, hints=hints,
                                overrides=overrides, notes=notes)
    elif style in _VIT_LIKE.values():
        dropped = sorted(k for k in state_dict if k.startswith(("decoder.", "pooler.")))
        if dropped:
            notes.append(f"{len(dropped)} tensors outside the encoder dropped "
                         f"({preview(dropped, 2)})")
        cfg, out = convert_hf(sd, style=style, config=hf_config, hints=hints,
                              overrides=overrides)
    else:
        raise ConfigError(f"style must be one of {STYLES}, got {style!r}")
    return style, cfg, out


def convert_dinov2_hub(state_dict: Mapping[str, Tensor], *,
                       hints: Mapping[str, Any] | None = None,
                       overrides: Mapping[str, Any] | None = None,
                       ) -> tuple[ViTConfig, dict[str, Tensor]]:
    """DINOv2 hub names (plain or chunked ``blocks.C.N``); ``mask_token`` is dropped.

    Hub interpolation: offset 0.1 without antialias, or offset 0 with antialias for the
    register models.
    """
    sd = _rename(strip_prefixes(state_dict), _HUB_RULES, "dinov2-hub")
    registers = "register_tokens" in sd
    defaults = {"norm_eps": 1e-6, "interp_offset": 0.0 if registers else 0.1,
                "interp_antialias": registers, **(hints or {})}
    return infer_config(sd, defaults=defaults, overrides=overrides), sd


def convert_timm(state_dict: Mapping[str, Tensor], *, no_embed_class: bool | None = None,
                 hints: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None,
                 notes: list[str] | None = None,
                 ) -> tuple[ViTConfig, dict[str, Tensor]]:
    """timm ``VisionTransformer`` names: ``reg_token``, SwiGLU ``fc1_g``/``fc1_x`` (gate
    first) or packed ``fc1`` (silu on the first half), position tables with or without
    prefix slots (register slots are folded into the register tokens); CLIP towers
    (``norm_pre``), SigLIP towers (no cls token; the ``attn_pool`` MAP head is dropped with
    a note), DeiT-III (LayerScale, table without prefix slots), distilled DeiT
    (``dist_token``, ``head_dist``) and timm's DINOv3 (``eva.py``: ``gamma_1``,
    ``q_bias``/``v_bias``, RoPE). What the names fix (activation, eps, heads) comes in
    ``hints`` (see :func:`timm_hints`).

    ``no_embed_class`` (timm's flag: the table has no prefix slots) is guessed from the
    table's length when not given. timm interpolation: offset 0 with antialias.
    """
    sd = strip_prefixes(state_dict)
    for key in sd:
        reason = next((r for frag, r in _TIMM_UNSUPPORTED.items() if frag in key), None)
        if reason:
            raise ArchitectureError(
                f"this timm model uses {reason} ({key!r}), which depthflow's ViT does not "
                "implement; only pre-norm ViTs with a cls-token readout are supported")
    if notes is not None and any(k.startswith("attn_pool.") for k in sd):
        notes.append("attention-pool (MAP) head attn_pool.* dropped: it sits outside the "
                     "residual stream")
    sd, parts = _timm_split_biases(_timm_dist_head(sd))
    sd, pos_embed_cls = _timm_positions(_timm_swiglu(_rename(sd, _TIMM_RULES, "timm")),
                                        no_embed_class)
    defaults = {"norm_eps": 1e-6 if parts is None else 1e-5, "interp_offset": 0.0,
                "interp_antialias": True, "pos_embed_cls": bool(pos_embed_cls)}
    if parts is not None:                       # timm's DINOv3 (eva.py): RoPE, no k bias
        defaults.update(qkv_bias_parts=parts, rope="dinov3", position_embedding="none")
    defaults.update(hints or {})
    if parts is not None:
        width = int(sd["patch_embed.proj.weight"].shape[0])
        heads = int({**defaults, **(overrides or {})}.get("num_heads")
                    or width // DINOV2_HEAD_DIM)
        theta = float({**defaults, **(overrides or {})}.get("rope_theta", 100.0))
        sd["rope_embed.periods"] = dinov3_periods(width // heads, theta)
    return infer_config(sd, defaults=defaults, overrides=overrides), sd


def _timm_dist_head(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm's distilled DeiT averages ``head(cls)`` and ``head_dist(dist)`` in eval: one
    head on cls + distillation with weights ``[W, W_dist] / 2``."""
    out = dict(sd)
    if "head_dist.weight" in out:
        if "head.weight" not in out:
            raise ArchitectureError("timm weights have head_dist but no head")
        w, wd = out.pop("head.weight"), out.pop("head_dist.weight")
        out["head.weight"] = torch.cat([w, wd], dim=1) / 2
        if "head.bias" in out or "head_dist.bias" in out:
            out["head.bias"] = (out.pop("head.bias", 0) + out.pop("head_dist.bias", 0)) / 2
    return out


def _timm_split_biases(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
    """EVA-style ``attn.q_bias``/``attn.v_bias`` (timm's DINOv3) packed into ``qkv.bias`` with
    a zero, masked key bias; returns the parts that carry a bias (None: not EVA-style)."""
    out = dict(sd)
    keys = [k for k in out if k.endswith(".attn.q_bias")]
    if not keys and not any(k.endswith(".gamma_1") for k in out):
        return out, None
    for key in keys:
        block = key[: -len("q_bias")]
        q, v = out.pop(key), out.pop(block + "v_bias", None)
        if v is None:
            raise ArchitectureError(f"{key} has no matching {block}v_bias")
        out[block + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    return out, "qv"


_TIMM_HEADS = (("so400m", 16), ("huge", 16), ("giant", 16), ("gigantic", 16))


def timm_hints(architecture: str) -> dict[str, Any]:
    """What a timm architecture name fixes that the weights do not: the MLP activation
    (``*_quickgelu_*``), CLIP's norm eps 1e-5, DINOv3's 1e-5 and RoPE base, and the head
    count of the ``huge``/``giant``/``so400m`` towers (16 heads, not 64-wide)."""
    name = architecture.lower()
    hints: dict[str, Any] = {}
    if "quickgelu" in name:
        hints["activation"] = "quick_gelu"
    if "_clip" in name or "dinov3" in name:
        hints["norm_eps"] = 1e-5
    if "dinov3" in name:
        hints["rope_theta"] = 100.0
        if "huge" in name:
            return hints                        # DINOv3 H+: 20 heads of 64
    for fragment, heads in _TIMM_HEADS:
        if fragment in name:
            hints["num_heads"] = heads
            break
    return hints


def _timm_swiglu(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = dict(sd)
    for key in [k for k in sd if k.endswith(".mlp.fc1.weight")]:
        block = key[: -len("fc1.weight")]
        fc2 = sd.get(block + "fc2.weight")
        if fc2 is not None and sd[key].shape[0] == 2 * fc2.shape[1]:
            for kind in ("weight", "bias"):
                if block + f"fc1.{kind}" in out:
                    out[block + f"w12.{kind}"] = out.pop(block + f"fc1.{kind}")
    for key in [k for k in out if k.endswith(".mlp.w12.weight")]:
        block = key[: -len("w12.weight")]
        for kind in ("weight", "bias"):
            if block + f"fc2.{kind}" in out:
                out[block + f"w3.{kind}"] = out.pop(block + f"fc2.{kind}")
    return out


def _timm_positions(sd: dict[str, Tensor], no_embed_class: bool | None,
                    ) -> tuple[dict[str, Tensor], bool]:
    """Bring the position table to depthflow's layout; returns it and ``pos_embed_cls``."""
    if "pos_embed" not in sd and "blocks.0.attn.qkv.weight" in sd:
        return dict(sd), False                      # no table (RoPE models)
    require(sd, ("pos_embed",))
    pos, regs = sd["pos_embed"], sd.get("register_tokens")
    if pos.ndim != 3:
        raise ArchitectureError(f"pos_embed must have shape (1, P, D), got {tuple(pos.shape)}")
    r, n = (regs.shape[1] if regs is not None else 0), pos.shape[1]
    c = int("cls_token" in sd) + (int(sd["dist_token"].shape[1]) if "dist_token" in sd else 0)
    if no_embed_class is None:
        layout = ("none" if is_square(n) else "cls" if c and is_square(n - c)
                  else "prefix" if r and c and is_square(n - c - r) else None)
        if layout is None:
            raise ArchitectureError(
                f"pos_embed has {n} positions: not a square patch grid, nor one plus {c} "
                f"class-token slot(s){f', nor one plus those and {r} register slots' if r else ''}")
    else:
        layout = "none" if no_embed_class else ("prefix" if r else "cls")
    out = dict(sd)
    if layout == "prefix" and regs is not None:
        out["register_tokens"] = regs + pos[:, c:c + r]   # registers' positions are constant
        out["pos_embed"] = torch.cat([pos[:, :c], pos[:, c + r:]], dim=1)
    return out, layout != "none"


def hf_style(config: Mapping[str, Any]) -> str:
    """Style of an HF ``config.json`` (``model_type``), or ArchitectureError."""
    model_type = config.get("model_type")
    reason = unsupported(model_type)
    if reason is not None:
        raise ArchitectureError(reason)
    if model_type not in HF_STYLES:
        raise ArchitectureError(
            f"Hugging Face model_type {model_type!r} is not supported; depthflow reads "
            f"{', '.join(sorted(HF_STYLES))}")
    return HF_STYLES[model_type]


def convert_hf(state_dict: Mapping[str, Tensor], *, style: str | None = None,
               config: Mapping[str, Any] | None = None,
               hints: Mapping[str, Any] | None = None,
               overrides: Mapping[str, Any] | None = None,
               ) -> tuple[ViTConfig, dict[str, Tensor]]:
    """transformers Dinov2Model / Dinov2WithRegistersModel / ViTModel / DeiTModel /
    ViTMAEModel, 4.x or 5.x names.

    ``config`` is the model's ``config.json`` (heads, ``layer_norm_eps``, ``hidden_act``).
    The pooler, mask token and MAE decoder are dropped; a classifier becomes ``head``
    (Dinov2's reads cls + mean patch, ViT's and DeiT's the cls token; DeiT's teacher-distilled
    pair ``cls_classifier`` + ``distillation_classifier``, whose logits HF averages, becomes
    one head on cls + distillation token with weights ``[W_cls, W_dist] / 2``). ViTMAE's
    fixed sin-cos table is kept as stored, as a frozen buffer. HF interpolates to the target
    grid (offset 0), with antialias for the register models only.
    """
    sd = strip_prefixes(state_dict)
    style = style or (hf_style(config) if config else detect_style(sd))
    sd = _deit_teacher_head(sd)
    out = _rename(sd, _HF_RULES, style)
    check_hf_config_types(dict(config or {}))
    defaults = {**_hf_defaults(style, dict(config or {}), out), **(hints or {})}
    cfg = infer_config(out, defaults=defaults, overrides=overrides)
    check_hf_config_agrees(dict(config or {}), cfg, overrides or {})
    return cfg, out


_HF_INT_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "patch_size", "num_channels", "image_size", "head_dim",
                  "num_register_tokens")
_HF_FLOAT_FIELDS = ("layer_norm_eps",)


def check_hf_config_types(config: Mapping[str, Any]) -> None:
    """The fields of an HF ``config.json`` depthflow reads, each of its type and range:
    positive integers (booleans and fractions refused; ``num_register_tokens`` may be 0),
    a finite positive ``layer_norm_eps``; otherwise one :class:`ArchitectureError` naming
    the field and its value."""
    import math

    for key in _HF_INT_FIELDS:
        value = config.get(key)
        if value is None:
            continue
        low = 0 if key == "num_register_tokens" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ArchitectureError(f"config.json field {key}={value!r} must be an integer "
                                    f">= {low}")
    for key in _HF_FLOAT_FIELDS:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or value <= 0:
            raise ArchitectureError(f"config.json field {key}={value!r} must be a finite "
                                    "positive number")
    act = config.get("hidden_act")
    if act is not None and not isinstance(act, str):
        raise ArchitectureError(f"config.json field hidden_act={act!r} must be a string")


def check_hf_config_agrees(config: Mapping[str, Any], cfg: ViTConfig,
                           overrides: Mapping[str, Any]) -> None:
    """What ``config.json`` declares must be what the weights hold: a disagreement is an
    :class:`ArchitectureError` naming both values (an explicit ``--arch`` override wins)."""
    pairs = (("hidden_size", "embed_dim"), ("num_hidden_layers", "depth"),
             ("intermediate_size", "mlp_hidden_dim"), ("patch_size", "patch_size"),
             ("num_channels", "in_chans"), ("num_attention_heads", "num_heads"))
    for key, field in pairs:
        declared = config.get(key)
        if declared is None or field in overrides:
            continue
        if field == "mlp_hidden_dim" and cfg.mlp != "gelu":
            continue                     # SwiGLU widths are stored fused / rounded
        held = getattr(cfg, field)
        if int(declared) != int(held):
            raise ArchitectureError(f"config.json says {key}={declared} but the weights hold "
                                    f"{field}={held}; the config and the weights disagree")


def _deit_teacher_head(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = dict(sd)
    if "cls_classifier.weight" in out or "distillation_classifier.weight" in out:
        keys = [f"{n}_classifier.{p}" for n in ("cls", "distillation") for p in ("weight", "bias")]
        missing = [k for k in keys if k not in out]
        if missing:
            raise ArchitectureError(f"DeiT teacher-distilled heads incomplete: missing "
                                    f"{preview(missing)}")
        w_c, b_c, w_d, b_d = (out.pop(k) for k in keys)
        out["classifier.weight"] = torch.cat([w_c, w_d], dim=1) / 2
        out["classifier.bias"] = (b_c + b_d) / 2
    return out


def _hf_defaults(style: str, config: dict[str, Any], sd: Mapping[str, Tensor]) -> dict[str, Any]:
    act = config.get("hidden_act", "gelu")
    if "blocks.0.mlp.w12.weight" not in sd and act not in ACTIVATIONS:
        raise ArchitectureError(
            f"hidden_act {act!r} is not implemented by depthflow's ViT; supported: "
            f"{', '.join(sorted(ACTIVATIONS))}")
    eps = 1e-12 if style in ("hf-vit", "hf-deit", "hf-vit-mae") else 1e-6
    out: dict[str, Any] = {"norm_eps": float(config.get("layer_norm_eps", eps)),
                           "interp_offset": 0.0,
                           "interp_antialias": style == "hf-dinov2-registers"}
    if "blocks.0.mlp.w12.weight" not in sd:
        out["activation"] = ACTIVATIONS[act]
    if style == "hf-vit-mae":
        out["position_embedding"] = "sincos"
    heads = config.get("num_attention_heads")
    if heads is not None:
        out["num_heads"] = int(heads)
        head_dim, width = config.get("head_dim"), config.get("hidden_size")
        if head_dim and width and int(head_dim) * int(heads) != int(width):
            raise ArchitectureError(
                f"config head_dim={head_dim} x num_attention_heads={heads} != "
                f"hidden_size={width}; depthflow needs heads that split the width exactly")
    return out


# --------------------------------------------------------------------------- preprocessing
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def default_preprocessing(style: str, cfg: ViTConfig) -> Preprocessing | None:
    """What a style's models expect when nothing says otherwise (see
    :func:`~depthflow.models.preprocessing.family_preprocessing`); None for inputs that are
    not RGB."""
    if cfg.in_chans != 3:
        return None
    return family_preprocessing(style, cfg.img_size)


def preprocessing_from_hf(processor: Mapping[str, Any], style: str,
                          cfg: ViTConfig) -> Preprocessing | None:
    """depthflow's reading of an HF ``preprocessor_config.json``.

    ``size`` (``shortest_edge``, or ``height``/``width`` for a square resize, read as resize
    + centre crop), ``crop_size``, ``image_mean``/``image_std`` and ``resample`` (PIL codes).
    Missing entries fall back to :func:`default_preprocessing`.
    """
    base = default_preprocessing(style, cfg)
    if base is None:
        return None
    size = processor.get("size") if processor.get("do_resize", True) else None
    crop = processor.get("crop_size") if processor.get("do_center_crop", True) else None
    resize = _edge(size, "size") if size is not None else None
    crop_px = _edge(crop, "crop_size") if crop is not None else None
    if crop_px is None and isinstance(size, Mapping) and "height" in size:
        crop_px = resize                                 # a fixed H x W resize
    mean, std = processor.get("image_mean", base.mean), processor.get("image_std", base.std)
    if not processor.get("do_normalize", True):
        mean, std = (0.0,) * 3, (1.0,) * 3
    resample = processor.get("resample", 3)
    interpolation = (_PIL_RESAMPLE.get(resample, "bicubic") if isinstance(resample, int)
                     else str(resample).lower())
    return Preprocessing(resize=resize, crop=crop_px, mean=tuple(mean), std=tuple(std),
                         interpolation=interpolation)


def _edge(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            return int(min(value["height"], value["width"]))
    raise ConfigError(f"preprocessor {name}={value!r} is not an int, shortest_edge or "
                      "height/width")


__all__ = [
    "timm_hints", "STYLES", "HF_STYLES", "PREFIXES", "PRESETS", "parse_arch", "infer_config",
    "strip_prefixes", "detect_style", "convert_state_dict", "convert_dinov2_hub", "convert_timm",
    "convert_hf", "hf_style", "default_preprocessing", "preprocessing_from_hf",
]
