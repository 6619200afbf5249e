"""ViT architectures: what weights imply, presets, and user overrides.

:func:`infer_config` reads a :class:`~depthflow.models.vit.ViTConfig` off depthflow-named weights
(width, depth, patch size, registers, position grid, MLP kind, biases, head). The number of
attention heads is not in the weights: it comes from a hint (an HF config, a live module),
an override, or DINOv2's 64-wide heads. :func:`parse_arch` turns what a user types
(``--arch dinov2_vitb14_reg4``, ``--arch num_heads=4,norm_eps=1e-6``, JSON) into typed
overrides.
"""

from __future__ import annotations

import dataclasses

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from depthflow.core.config import parse_assignments, parse_value
from depthflow.errors import ArchitectureError, ConfigError
from depthflow.models.vit import ViTConfig, swiglu_hidden_dim

DINOV2_HEAD_DIM = 64

# --------------------------------------------------------------------------- arch presets
_SIZES = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "g": (1536, 40, 24)}


def _preset(size: str, registers: bool) -> dict[str, Any]:
    dim, depth, heads = _SIZES[size]
    swiglu = size == "g"
    return {"embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": 14,
            "img_size": 518, "mlp": "swiglu" if swiglu else "gelu",
            "mlp_hidden_dim": swiglu_hidden_dim(dim) if swiglu else 4 * dim,
            "num_register_tokens": 4 if registers else 0, "layerscale": True}


PRESETS: dict[str, dict[str, Any]] = {
    f"dinov2_vit{size}14{suffix}": _preset(size, bool(suffix))
    for size in _SIZES for suffix in ("", "_reg", "_reg4")
}
# the field defaults, read without building a config (which checks its size against the
# memory budget: a small DEPTHFLOW_MEMORY_BUDGET must not break the import)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ViTConfig)}


def parse_arch(arch: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Architecture overrides from a dict, JSON, a preset name or ``key=value,...``.

    Parameters
    ----------
    arch
        ``None``; a mapping of :class:`ViTConfig` fields; a JSON object string; a preset
        (``"dinov2_vitb14"``, ``"dinov2_vitb14_reg4"``...); or comma-separated
        ``key=value`` pairs, which may start with a preset (``"dinov2_vits14,img_size=224"``).

    Returns
    -------
    dict
        Field name -> value, typed like the :class:`ViTConfig` field.

    Raises
    ------
    ConfigError
        For unknown fields, values of the wrong type and unparsable text.
    """
    if arch is None:
        return {}
    if isinstance(arch, Mapping):
        items = dict(arch)
    elif isinstance(arch, str):
        items = _parse_arch_text(arch.strip())
    else:
        raise ConfigError(
            "arch must be None, a dict, a JSON object, a preset name or 'key=value,...'; "
            f"got {type(arch).__name__}")
    return {str(key): _coerce_field(str(key), value) for key, value in items.items()}


def _parse_arch_text(text: str) -> dict[str, Any]:
    if text.startswith("{"):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"arch {text!r} is not valid JSON: {exc}") from exc
        if not isinstance(items, dict):
            raise ConfigError(f"arch JSON must be an object, got {type(items).__name__}")
        return items
    items: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" in part:
            items.update(parse_assignments([part], what="arch entry"))
        elif part in PRESETS:
            items.update(PRESETS[part])
        else:
            raise ConfigError(
                f"arch entry {part!r} is neither key=value nor a preset; presets are "
                f"{', '.join(sorted(PRESETS))}")
    return items


def _coerce_field(key: str, value: Any) -> Any:
    if key not in _DEFAULTS:
        raise ConfigError(f"unknown arch field {key!r}; expected one of {sorted(_DEFAULTS)}")
    like = _DEFAULTS[key]
    if isinstance(value, str) and isinstance(like, str):
        return value.strip()                      # "none" is a value here, not None
    if isinstance(value, str):
        return parse_value(value, like, f"arch field {key}")
    if isinstance(like, bool) and isinstance(value, bool):
        return value
    if isinstance(like, int) and not isinstance(like, bool) and isinstance(value, int) \
            and not isinstance(value, bool):
        return value
    if isinstance(like, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"arch field {key}={value!r} is not a valid {type(like).__name__}")


# --------------------------------------------------------------------------- inference
def infer_config(state_dict: Mapping[str, Tensor], *,
                 defaults: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> ViTConfig:
    """The :class:`ViTConfig` that depthflow-named weights imply.

    Shapes give the width, depth, patch size, channels, cls/distillation/register tokens,
    position table and grid (hence ``img_size``), RoPE (``rope_embed.periods``), pre-norm,
    MLP kind and width, LayerScale, biases and the head. ``defaults`` add
    what shapes cannot tell (heads, norm eps, interpolation); ``overrides`` win over all.
    Heads default to DINOv2's 64-wide heads.
    """
    fields: dict[str, Any] = dict(defaults or {})
    fields.update(overrides or {})
    fields = {**_shape_fields(state_dict, fields), **fields}
    if fields.get("num_heads") is None:
        fields["num_heads"] = default_num_heads(fields["embed_dim"])
    return ViTConfig.from_dict(fields)


def default_num_heads(embed_dim: int) -> int:
    """DINOv2's convention (64-wide heads), or ArchitectureError asking for the count."""
    if embed_dim % DINOV2_HEAD_DIM:
        raise ArchitectureError(
            f"the weights do not record the number of attention heads, and width {embed_dim} "
            f"is not a multiple of DINOv2's head size {DINOV2_HEAD_DIM}; pass it explicitly, "
            "e.g. --arch num_heads=4 (arch={'num_heads': 4})")
    return embed_dim // DINOV2_HEAD_DIM


def _shape_fields(sd: Mapping[str, Tensor], fields: Mapping[str, Any]) -> dict[str, Any]:
    require(sd, ("patch_embed.proj.weight", "norm.weight"))
    proj = sd["patch_embed.proj.weight"]                    # (D, C, p, p)
    if proj.ndim != 4 or proj.shape[-1] != proj.shape[-2]:
        raise ArchitectureError(
            f"patch_embed.proj.weight must be a square conv kernel (D, C, p, p), got "
            f"{tuple(proj.shape)}")
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    first = "blocks.0."
    swiglu = first + "mlp.w12.weight" in sd
    mlp_in = first + ("mlp.w12" if swiglu else "mlp.fc1")
    require(sd, (mlp_in + ".weight", first + "attn.qkv.weight"))
    regs, dist = sd.get("register_tokens"), sd.get("dist_token")
    cls = "cls_token" in sd
    n_dist = int(dist.shape[1]) if dist is not None else 0
    pos_embed_cls = bool(fields.get("pos_embed_cls", True)) and (cls or n_dist > 0)
    pos = sd.get("pos_embed")
    if pos is not None:
        slots = (int(cls) + n_dist) if pos_embed_cls else 0
        img_size = _grid(pos, slots) * patch
        position = fields.get("position_embedding", "learned")
    else:
        img_size = int(fields.get("img_size", 224))
        position = "none"
    out = {
        "embed_dim": dim, "depth": _depth(sd), "patch_size": patch, "in_chans": int(proj.shape[1]),
        "img_size": img_size, "mlp": "swiglu" if swiglu else "gelu",
        "mlp_hidden_dim": int(sd[mlp_in + ".weight"].shape[0]) // (2 if swiglu else 1),
        "num_register_tokens": int(regs.shape[1]) if regs is not None else 0,
        "layerscale": first + "ls1.gamma" in sd, "qkv_bias": first + "attn.qkv.bias" in sd,
        "proj_bias": first + "attn.proj.bias" in sd, "ffn_bias": mlp_in + ".bias" in sd,
        "pos_embed_cls": pos_embed_cls, "cls_token": cls, "num_distillation_tokens": n_dist,
        "position_embedding": position, "pre_norm": "norm_pre.weight" in sd,
        "patch_bias": "patch_embed.proj.bias" in sd,
        **_head_fields(sd, dim, cls, n_dist),
    }
    if "rope_embed.periods" in sd:
        out["rope"] = "dinov3"
    return out


def _head_fields(sd: Mapping[str, Tensor], dim: int, cls: bool, n_dist: int) -> dict[str, Any]:
    head = sd.get("head.weight")
    if head is None:
        return {"num_classes": 0, "head_input": "cls" if cls else "mean"}
    if head.ndim != 2 or head.shape[1] not in (dim, 2 * dim) or (
            head.shape[1] == 2 * dim and not cls):
        raise ArchitectureError(
            f"head.weight has shape {tuple(head.shape)}; depthflow reads linear heads on the "
            f"cls token or mean patch ({dim} inputs) or on cls + mean patch / cls + "
            f"distillation token ({2 * dim}); drop the head")
    wide = "cls+distillation" if n_dist else "cls+mean"
    return {"num_classes": int(head.shape[0]), "head_bias": "head.bias" in sd,
            "head_input": ("cls" if cls else "mean") if head.shape[1] == dim else wide}


def _depth(sd: Mapping[str, Tensor]) -> int:
    indices = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not indices:
        raise ArchitectureError("no transformer blocks found (expected keys blocks.0.*)")
    gaps = sorted(set(range(max(indices) + 1)) - indices)
    if gaps:
        raise ArchitectureError(
            f"block indices are not contiguous: blocks {preview([str(g) for g in gaps])} are "
            f"missing among 0..{max(indices)}")
    return max(indices) + 1


def _grid(pos: Tensor, slots: int) -> int:
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise ArchitectureError(f"pos_embed must have shape (1, P, D), got {tuple(pos.shape)}")
    rows = int(pos.shape[1])
    n = rows - slots
    if not is_square(n):
        root = math.isqrt(max(n, 0))
        hint = ("; if the checkpoint stores no class slot in the table, pass --arch "
                "pos_embed_cls=false" if slots and is_square(rows) else
                "; if it stores one, pass --arch pos_embed_cls=true" if not slots and
                is_square(rows - 1) else "")
        raise ArchitectureError(
            f"pos_embed has {rows} rows"
            f"{f', {n} patch positions after {slots} class/distillation slot(s)' if slots else ''}"
            f": not a square grid of patch positions (nearest {root}^2 = {root * root}, "
            f"{root + 1}^2 = {(root + 1) ** 2}); the position table does not fit this model"
            f"{hint}")
    return math.isqrt(n)


def is_square(n: int) -> bool:
    """Whether ``n`` positions form a square grid."""
    return n > 0 and math.isqrt(n) ** 2 == n


def require(sd: Mapping[str, Tensor], keys: tuple[str, ...]) -> None:
    """ArchitectureError naming the missing depthflow keys."""
    missing = [k for k in keys if k not in sd]
    if missing:
        raise ArchitectureError(
            f"weights lack {preview(missing)} (depthflow names); present: "
            f"{preview(sorted(sd))}")


def preview(items: list[str], limit: int = 4) -> str:
    """``a, b, c, d (+n more)``, or ``none``."""
    if not items:
        return "none"
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


__all__ = ["PRESETS", "DINOV2_HEAD_DIM", "parse_arch", "infer_config", "default_num_heads"]
