"""depthflow's Vision Transformer, faithful to DINOv2.

Token layout is always ``[cls, registers..., patches...]``. Parameter names follow the
DINOv2 hub checkpoints (``blocks.{i}.attn.qkv.weight``, ``blocks.{i}.ls1.gamma``...), so a
hub state dict loads without renaming and every other format is converted to these names.

Each block is a pure function of its parameters and the token state: it works on states of
shape ``(..., T, D)`` with any leading batch dims, so ``torch.func.vmap``/``jvp``/``vjp``
apply directly. Attention runs either as fused SDPA (fast) or in plain math form
(``softmax(q k^T / sqrt(d)) v``), which forward-mode AD needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from depthflow.errors import ConfigError, InputError
from depthflow.config import Options, check_choice, check_int

ATTENTION_IMPLS = ("sdpa", "math")
MLP_KINDS = ("gelu", "swiglu")
HEAD_INPUTS = ("cls", "cls+mean")


@dataclasses.dataclass(frozen=True)
class ViTConfig(Options):
    """Architecture of a DINOv2-style ViT.

    ``img_size`` is the image size the position embeddings were trained for (their grid is
    ``img_size // patch_size`` per side); other input sizes interpolate them bicubically,
    with DINOv2's ``interp_offset``/``interp_antialias`` conventions.
    """

    _what = "ViT architecture"

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 14
    img_size: int = 518
    in_chans: int = 3
    mlp: str = "gelu"
    mlp_hidden_dim: int = 1536
    num_register_tokens: int = 0
    layerscale: bool = True
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    norm_eps: float = 1e-6
    pos_embed_cls: bool = True
    interp_offset: float = 0.1
    interp_antialias: bool = False
    num_classes: int = 0
    head_input: str = "cls"

    def validate(self) -> ViTConfig:
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "img_size", "in_chans",
                     "mlp_hidden_dim"):
            check_int(getattr(self, name), f"ViTConfig.{name}")
        for name in ("num_register_tokens", "num_classes"):
            check_int(getattr(self, name), f"ViTConfig.{name}", minimum=0)
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"ViTConfig.embed_dim={self.embed_dim} is not divisible by "
                f"num_heads={self.num_heads}; pick a head count that divides the width")
        check_choice(self.mlp, "ViTConfig.mlp", MLP_KINDS)
        check_choice(self.head_input, "ViTConfig.head_input", HEAD_INPUTS)
        if self.img_size < self.patch_size:
            raise ConfigError(
                f"ViTConfig.img_size={self.img_size} is smaller than patch_size={self.patch_size}")
        return self

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def grid(self) -> int:
        """Patches per side of the position-embedding grid."""
        return self.img_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens



def swiglu_hidden_dim(embed_dim: int, mlp_ratio: float = 4.0) -> int:
    """DINOv2's SwiGLU width: 2/3 of ``mlp_ratio * D``, rounded up to a multiple of 8."""
    hidden = int(embed_dim * mlp_ratio)
    return (int(hidden * 2 / 3) + 7) // 8 * 8


def check_attention(attention: str) -> str:
    if attention not in ATTENTION_IMPLS:
        raise ConfigError(f"attention must be one of {ATTENTION_IMPLS}, got {attention!r}")
    return attention


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool, proj_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, attention: str = "sdpa") -> Tensor:
        *batch, tokens, dim = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(*batch, tokens, 3, heads, dim // heads)
        qkv = qkv.movedim(-3, 0).transpose(-3, -2)          # (3, ..., H, T, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scale = (dim // heads) ** -0.5
            weights = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
            out = weights @ v                                # (..., H, T, hd)
        out = out.transpose(-3, -2).reshape(*batch, tokens, dim)
        return self.proj(out)


class GeluMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, *, bias: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUMlp(nn.Module):
    """DINOv2's SwiGLU: ``w3(silu(x1) * x2)`` with ``(x1, x2) = w12(x).chunk(2)``."""

    def __init__(self, dim: int, hidden: int, *, bias: bool) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: drop a whole residual branch per sample, rescale the kept ones."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1 x))`` then ``x + ls2(mlp(norm2 x))``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(dim, cfg.num_heads, qkv_bias=cfg.qkv_bias, proj_bias=cfg.proj_bias)
        self.ls1 = LayerScale(dim) if cfg.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        mlp_cls = SwiGLUMlp if cfg.mlp == "swiglu" else GeluMlp
        self.mlp = mlp_cls(dim, cfg.mlp_hidden_dim, bias=cfg.ffn_bias)
        self.ls2 = LayerScale(dim) if cfg.layerscale else nn.Identity()
        self.drop_path_rate = 0.0
        self.attention = "sdpa"

    def forward(self, x: Tensor, attention: str | None = None) -> Tensor:
        impl = attention or self.attention
        x = x + drop_path(self.ls1(self.attn(self.norm1(x), impl)), self.drop_path_rate,
                          self.training)
        return x + drop_path(self.ls2(self.mlp(self.norm2(x))), self.drop_path_rate,
                             self.training)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def forward(self, images: Tensor) -> Tensor:
        x = self.proj(images)                                # (B, D, h, w)
        return x.flatten(2).transpose(1, 2)                  # (B, h*w, D)


class ViT(nn.Module):
    """A DINOv2-style ViT whose depth is exposed state by state.

    ``embed(images)`` gives the depth-0 state, ``blocks[l-1](state)`` the step to depth l,
    ``trajectory(images)`` every depth at once, ``readout(state)`` the final norm and head.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if cfg.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, dim))
        else:
            self.register_parameter("register_tokens", None)
        positions = cfg.grid * cfg.grid + (1 if cfg.pos_embed_cls else 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, positions, dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        head_in = dim * (2 if cfg.head_input == "cls+mean" else 1)
        self.head = nn.Linear(head_in, cfg.num_classes) if cfg.num_classes else None
        self.attention = "sdpa"

    # ----------------------------------------------------------------- configuration
    @property
    def depth(self) -> int:
        return self.cfg.depth

    def set_attention(self, attention: str) -> ViT:
        """Select ``"sdpa"`` (fused, fast) or ``"math"`` (forward-mode AD) everywhere."""
        check_attention(attention)
        self.attention = attention
        for block in self.blocks:
            block.attention = attention
        return self

    def set_drop_path(self, rate: float) -> ViT:
        """Stochastic depth with the same drop probability for every block (training only)."""
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"drop_path rate must be in [0, 1), got {rate}")
        for block in self.blocks:
            block.drop_path_rate = float(rate)
        return self

    def init_weights(self, *, seed: int = 0, layerscale_init: float = 1e-5) -> ViT:
        """Truncated-normal init (std 0.02) as in DINOv2/timm; deterministic given ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("gamma"):
                    p.fill_(layerscale_init)
                elif name.startswith("norm") or ".norm" in name:
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                elif name.endswith("bias"):
                    p.zero_()
                elif name == "cls_token":
                    p.copy_(torch.randn(p.shape, generator=gen) * 1e-6)
                else:
                    p.copy_((torch.randn(p.shape, generator=gen) * 0.02).clamp_(-0.04, 0.04))
        return self

    # ----------------------------------------------------------------- token layout
    def num_patches(self, height: int, width: int) -> int:
        ps = self.cfg.patch_size
        return (height // ps) * (width // ps)

    def num_tokens(self, height: int, width: int) -> int:
        return self.cfg.num_prefix_tokens + self.num_patches(height, width)

    def token_kinds(self, height: int, width: int) -> list[str]:
        """Kind of each token position: ``cls``, ``register`` or ``patch``."""
        regs = self.cfg.num_register_tokens
        return ["cls"] + ["register"] * regs + ["patch"] * self.num_patches(height, width)

    # ----------------------------------------------------------------- forward pieces
    def interpolate_pos_encoding(self, h_patches: int, w_patches: int) -> Tensor:
        """Position embeddings for an ``h_patches x w_patches`` grid, shape ``(1, P, D)``."""
        cfg = self.cfg
        pos = self.pos_embed
        n_cls = 1 if cfg.pos_embed_cls else 0
        cls_pos, patch_pos = pos[:, :n_cls], pos[:, n_cls:]
        m = cfg.grid
        if h_patches == m and w_patches == m:
            return pos
        dim = pos.shape[-1]
        grid = patch_pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
        if cfg.interp_offset:
            scale = ((h_patches + cfg.interp_offset) / m, (w_patches + cfg.interp_offset) / m)
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic",
                                 antialias=cfg.interp_antialias)
        else:
            grid = F.interpolate(grid, size=(h_patches, w_patches), mode="bicubic",
                                 antialias=cfg.interp_antialias)
        patch_pos = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def embed(self, images: Tensor) -> Tensor:
        """Depth-0 state ``(B, T, D)``: patch embedding, cls, position embedding, registers."""
        if images.ndim != 4 or images.shape[1] != self.cfg.in_chans:
            raise InputError(
                f"images must have shape (batch, {self.cfg.in_chans}, height, width), "
                f"got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        ps = self.cfg.patch_size
        if height % ps or width % ps:
            raise InputError(
                f"image size {height}x{width} is not a multiple of the patch size {ps}; "
                "resize or crop to a multiple first")
        x = self.patch_embed(images)                         # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        pos = self.interpolate_pos_encoding(height // ps, width // ps)
        if self.cfg.pos_embed_cls:
            x = torch.cat([cls, x], dim=1) + pos
        else:
            x = torch.cat([cls, x + pos], dim=1)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], regs, x[:, 1:]], dim=1)
        return x

    def step(self, layer: int, state: Tensor, *, attention: str | None = None) -> Tensor:
        """Apply block ``layer`` (1-based: depth ``layer-1`` -> ``layer``) to ``(..., T, D)``.

        ``attention`` (``"sdpa"``/``"math"``) overrides the model's setting for this call
        only (analysis code asks for ``"math"``: forward-mode AD has no rule for fused
        attention kernels)."""
        if not 1 <= layer <= self.cfg.depth:
            raise ConfigError(f"layer must be in 1..{self.cfg.depth}, got {layer}")
        return self.blocks[layer - 1](state, attention)

    def rollout(self, state: Tensor, *, start: int = 0, stop: int | None = None) -> Tensor:
        """Run the blocks taking depth ``start`` to depth ``stop`` (default: the last)."""
        stop = self.cfg.depth if stop is None else stop
        if not 0 <= start <= stop <= self.cfg.depth:
            raise ConfigError(f"need 0 <= start <= stop <= {self.cfg.depth}, got {start}, {stop}")
        for block in self.blocks[start:stop]:
            state = block(state)
        return state

    def iter_states(self, images: Tensor) -> Iterator[tuple[int, Tensor]]:
        """Yield ``(depth, state)`` for depth 0..L without keeping earlier states."""
        state = self.embed(images)
        yield 0, state
        for depth, block in enumerate(self.blocks, start=1):
            state = block(state)
            yield depth, state

    def trajectory(self, images: Tensor) -> Tensor:
        """All states stacked: ``(B, L+1, T, D)``."""
        return torch.stack([s for _, s in self.iter_states(images)], dim=1)

    def readout(self, state: Tensor) -> Tensor:
        """Final norm and (if present) head applied to a depth-L state ``(B, T, D)``.

        Returns logits when the model has a head, else the normed cls token.
        """
        normed = self.norm(state)
        if self.head is None:
            return normed[..., 0, :]
        cls = normed[..., 0, :]
        if self.cfg.head_input == "cls+mean":
            patches = normed[..., self.cfg.num_prefix_tokens:, :].mean(dim=-2)
            cls = torch.cat([cls, patches], dim=-1)
        return self.head(cls)

    def forward_features(self, images: Tensor) -> Tensor:
        return self.norm(self.rollout(self.embed(images)))

    def forward(self, images: Tensor) -> Tensor:
        return self.readout(self.rollout(self.embed(images)))


def build_vit(cfg: ViTConfig | Mapping[str, Any]) -> ViT:
    cfg = cfg if isinstance(cfg, ViTConfig) else ViTConfig.from_dict(cfg)
    return ViT(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(cfg: ViTConfig, tokens: int) -> float:
    """Approximate forward FLOPs (2 per multiply-add) for one image of ``tokens`` tokens."""
    d, h = cfg.embed_dim, cfg.mlp_hidden_dim
    mlp = 2 * tokens * d * h * (3 if cfg.mlp == "swiglu" else 2)
    attn = 2 * tokens * d * 4 * d + 2 * 2 * tokens * tokens * d
    return float(cfg.depth * (mlp + attn))


__all__ = [
    "ATTENTION_IMPLS", "ViTConfig", "ViT", "Block", "build_vit", "swiglu_hidden_dim",
    "count_parameters", "flops_per_image",
]
