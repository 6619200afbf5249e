"""depthflow's Vision Transformer: DINOv2's, with switches for the other ViT families.

Token layout is ``[cls?, distillation?, registers..., patches...]`` (:attr:`ViTConfig.
num_prefix_tokens` and friends say where each kind sits). Parameter names follow the DINOv2
hub checkpoints (``blocks.{i}.attn.qkv.weight``, ``blocks.{i}.ls1.gamma``...), with timm's
names for what DINOv2 lacks (``dist_token``, ``norm_pre``) and DINOv3's for RoPE
(``rope_embed.periods``); every other format is converted to these names. The switches
(cls token, distillation token, position encoding, RoPE, pre-norm, activation, q/k/v
biases, patch bias...) are documented on :class:`ViTConfig`, are recorded in the
architecture JSON, and each one reproduces a family checked against its reference.

Each block is a pure function of its parameters and the token state: it works on states of
shape ``(..., T, D)`` with any leading batch dims, so ``torch.func.vmap``/``jvp``/``vjp``
apply directly. Attention runs either as fused SDPA (fast) or in plain math form
(``softmax(q k^T / sqrt(d)) v``), which forward-mode AD needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from depthflow.errors import ConfigError, InputError
from depthflow.core.config import Options, check_choice, check_int
from depthflow.models.layers import (ACTIVATIONS, ATTENTION_IMPLS, Attention, GeluMlp,
                                     LayerScale, RopeEmbedding, SwiGLUMlp, activation_fn,
                                     check_attention, drop_path, rotate_half, sincos_table,
                                     swiglu_hidden_dim)

MLP_KINDS = ("gelu", "swiglu")
HEAD_INPUTS = ("cls", "cls+mean", "mean", "cls+distillation")
POSITION_EMBEDDINGS = ("learned", "sincos", "none")
ROPE_KINDS = ("none", "dinov3")
INTERP_MODES = ("bicubic", "bilinear")


MAX_DEPTH = 100_000           # shapes beyond these are refused whatever the memory
MAX_WIDTH = 1 << 20


def check_model_size(cfg: "ViTConfig") -> None:
    """Refuse, before anything is allocated, a shape no machine can hold (depth beyond
    :data:`MAX_DEPTH`, width beyond :data:`MAX_WIDTH`) or whose float32 parameters exceed
    the memory budget (:func:`depthflow.core.limits.memory_budget`)."""
    from depthflow.core.limits import format_bytes, memory_budget

    if cfg.depth > MAX_DEPTH or cfg.embed_dim > MAX_WIDTH or cfg.mlp_hidden_dim > 8 * MAX_WIDTH:
        raise ConfigError(f"ViTConfig depth={cfg.depth}, embed_dim={cfg.embed_dim}, "
                          f"mlp_hidden_dim={cfg.mlp_hidden_dim} is beyond any model "
                          f"(limits: depth {MAX_DEPTH:,}, width {MAX_WIDTH:,})")
    need = cfg.parameter_estimate() * 4
    budget = memory_budget()
    if budget is not None and need > budget:
        raise ConfigError(f"a ViT of depth {cfg.depth} and width {cfg.embed_dim} needs about "
                          f"{format_bytes(need)} for its float32 parameters alone, more than "
                          f"the {format_bytes(budget)} of memory available; check the "
                          "architecture (--arch, config.json)")


@dataclasses.dataclass(frozen=True)
class ViTConfig(Options):
    """Architecture of a pre-norm ViT (DINOv2 by default).

    ``img_size`` is the image size the position embeddings were trained for (their grid is
    ``img_size // patch_size`` per side); other input sizes interpolate them
    (``interp_mode``, with DINOv2's ``interp_offset``/``interp_antialias`` conventions).

    Switches beyond DINOv2 (defaults reproduce DINOv2):

    ``cls_token``
        Whether the sequence starts with a cls token (SigLIP has none).
    ``num_distillation_tokens``
        0, or 1 for DeiT's distillation token, placed right after the cls token.
    ``position_embedding``
        ``"learned"`` (a trained table), ``"sincos"`` (MAE: a fixed 2-D sin-cos table, kept
        as a frozen buffer) or ``"none"``. ``pos_embed_cls``: the table has slots for the
        cls and distillation tokens (registers never get one).
    ``rope`` / ``rope_theta``
        ``"dinov3"``: rotary embedding on q and k of the patch tokens (rotate-half, patch
        centres in [-1, 1] per axis, periods ``theta ** (4 i / head_dim)`` kept as the
        buffer ``rope_embed.periods`` so that a checkpoint's own periods are used).
    ``pre_norm``
        A LayerNorm (``norm_pre``) after the embedding, before block 1 (CLIP's ``ln_pre``).
    ``activation``
        Of the plain MLP: ``"gelu"`` (erf), ``"gelu_tanh"``, ``"quick_gelu"``
        (``x sigmoid(1.702 x)``, OpenAI CLIP). The SwiGLU MLP always gates with SiLU.
    ``qkv_bias_parts``
        Which of q, k, v carry a bias when ``qkv_bias`` (``"qkv"``; DINOv3: ``"qv"``, the
        key bias is masked to zero as by its ``bias_mask``).
    ``patch_bias``, ``head_bias``
        Bias of the patch-embedding convolution (CLIP has none) and of the head.
    ``head_input``
        What the head reads: ``"cls"``, ``"cls+mean"`` (Dinov2 classifiers),
        ``"cls+distillation"`` (DeiT: the two tokens concatenated), ``"mean"`` (mean patch,
        for models without a cls token).
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
    cls_token: bool = True
    num_distillation_tokens: int = 0
    position_embedding: str = "learned"
    rope: str = "none"
    rope_theta: float = 100.0
    pre_norm: bool = False
    activation: str = "gelu"
    qkv_bias_parts: str = "qkv"
    patch_bias: bool = True
    head_bias: bool = True
    interp_mode: str = "bicubic"

    def validate(self) -> ViTConfig:
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "img_size", "in_chans",
                     "mlp_hidden_dim"):
            check_int(getattr(self, name), f"ViTConfig.{name}")
        for name in ("num_register_tokens", "num_classes", "num_distillation_tokens"):
            check_int(getattr(self, name), f"ViTConfig.{name}", minimum=0)
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"ViTConfig.embed_dim={self.embed_dim} is not divisible by "
                f"num_heads={self.num_heads}; pick a head count that divides the width")
        check_choice(self.mlp, "ViTConfig.mlp", MLP_KINDS)
        check_choice(self.head_input, "ViTConfig.head_input", HEAD_INPUTS)
        check_choice(self.position_embedding, "ViTConfig.position_embedding",
                     POSITION_EMBEDDINGS)
        check_choice(self.rope, "ViTConfig.rope", ROPE_KINDS)
        check_choice(self.activation, "ViTConfig.activation", ACTIVATIONS)
        check_choice(self.interp_mode, "ViTConfig.interp_mode", INTERP_MODES)
        if self.num_distillation_tokens > 1:
            raise ConfigError("ViTConfig.num_distillation_tokens must be 0 or 1 (DeiT), got "
                              f"{self.num_distillation_tokens}")
        parts = self.qkv_bias_parts
        if not parts or any(c not in "qkv" for c in parts) or len(set(parts)) != len(parts):
            raise ConfigError(f"ViTConfig.qkv_bias_parts must be letters of 'qkv', each at "
                              f"most once (e.g. 'qkv', 'qv'), got {parts!r}")
        self._set("qkv_bias_parts", "".join(c for c in "qkv" if c in parts))
        if self.rope != "none" and self.head_dim % 4:
            raise ConfigError(f"ViTConfig.rope={self.rope!r} needs a head size divisible by "
                              f"4, got {self.head_dim}")
        if self.position_embedding == "sincos" and self.embed_dim % 4:
            raise ConfigError("ViTConfig.position_embedding='sincos' needs embed_dim divisible "
                              f"by 4, got {self.embed_dim}")
        if not self.cls_token and not self.num_classes and self.head_input == "cls":
            self._set("head_input", "mean")       # no head: the readout is the mean patch
        needs = {"cls": self.cls_token, "cls+mean": self.cls_token,
                 "cls+distillation": self.cls_token and self.num_distillation_tokens > 0}
        if not needs.get(self.head_input, True):
            raise ConfigError(f"ViTConfig.head_input={self.head_input!r} needs the tokens it "
                              "reads; this model lacks them (use head_input='mean')")
        if self.img_size < self.patch_size:
            raise ConfigError(
                f"ViTConfig.img_size={self.img_size} is smaller than patch_size={self.patch_size}")
        for name in ("norm_eps", "interp_offset", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or (name != "interp_offset" and value <= 0):
                raise ConfigError(f"ViTConfig.{name} must be a finite"
                                  f"{'' if name == 'interp_offset' else ' positive'} number, "
                                  f"got {value!r}")
        check_model_size(self)
        return self

    def parameter_estimate(self) -> int:
        """Parameters of a model of this shape (blocks, embeddings, head), to within the
        biases and norms: what :func:`check_model_size` compares with the memory."""
        d, L = self.embed_dim, self.depth
        block = 4 * d * d + 2 * d * self.mlp_hidden_dim * (2 if self.mlp == "swiglu" else 1)
        grid = (self.img_size // self.patch_size) ** 2
        embed = self.patch_size ** 2 * self.in_chans * d + (grid + 1) * d
        return L * (block + 12 * d) + embed + self.num_classes * d

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def grid(self) -> int:
        """Patches per side of the position-embedding grid."""
        return self.img_size // self.patch_size

    # ------------------------------------------------------------- token layout
    @property
    def num_class_tokens(self) -> int:
        """cls plus distillation tokens (the tokens a position table may have slots for)."""
        return int(self.cls_token) + self.num_distillation_tokens

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the first patch: cls, distillation, registers."""
        return self.num_class_tokens + self.num_register_tokens

    @property
    def cls_index(self) -> int | None:
        """Position of the cls token, or None when the model has none."""
        return 0 if self.cls_token else None

    @property
    def distillation_index(self) -> int | None:
        """Position of the distillation token, or None."""
        return int(self.cls_token) if self.num_distillation_tokens else None

    @property
    def register_slice(self) -> slice:
        return slice(self.num_class_tokens, self.num_prefix_tokens)

    @property
    def prefix_kinds(self) -> tuple[str, ...]:
        """Kinds of the prefix tokens in order (``cls``, ``distillation``, ``register``)."""
        return (("cls",) * int(self.cls_token)
                + ("distillation",) * self.num_distillation_tokens
                + ("register",) * self.num_register_tokens)

    @property
    def pos_embed_slots(self) -> int:
        """Prefix slots of the position table (cls and distillation, when covered)."""
        return self.num_class_tokens if self.pos_embed_cls else 0


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1 x))`` then ``x + ls2(mlp(norm2 x))``."""

    def __init__(self, cfg: ViTConfig, rope: RopeEmbedding | None = None) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(dim, cfg.num_heads, qkv_bias=cfg.qkv_bias, proj_bias=cfg.proj_bias,
                              bias_parts=cfg.qkv_bias_parts, rope=rope,
                              num_prefix_tokens=cfg.num_prefix_tokens)
        self.ls1 = LayerScale(dim) if cfg.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        if cfg.mlp == "swiglu":
            self.mlp: nn.Module = SwiGLUMlp(dim, cfg.mlp_hidden_dim, bias=cfg.ffn_bias)
        else:
            self.mlp = GeluMlp(dim, cfg.mlp_hidden_dim, bias=cfg.ffn_bias,
                               activation=cfg.activation)
        self.ls2 = LayerScale(dim) if cfg.layerscale else nn.Identity()
        self.drop_path_rate = 0.0
        self.attention = "sdpa"

    def forward(self, x: Tensor, attention: str | None = None) -> Tensor:
        x = x + self.attention_update(x, attention)
        return x + self.mlp_update(x)

    def attention_update(self, x: Tensor, attention: str | None = None) -> Tensor:
        """The attention branch's residual update ``ls1(attn(norm1 x))`` (the block's first
        half-step is ``x + attention_update(x)``)."""
        return drop_path(self.ls1(self.attn(self.norm1(x), attention or self.attention)),
                         self.drop_path_rate, self.training)

    def mlp_update(self, y: Tensor) -> Tensor:
        """The MLP branch's residual update ``ls2(mlp(norm2 y))`` at the half-step state
        ``y = x + attention_update(x)`` (the block's output is ``y + mlp_update(y)``)."""
        return drop_path(self.ls2(self.mlp(self.norm2(y))), self.drop_path_rate, self.training)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size,
                              bias=cfg.patch_bias)

    def forward(self, images: Tensor) -> Tensor:
        x = self.proj(images)                                # (B, D, h, w)
        return x.flatten(2).transpose(1, 2)                  # (B, h*w, D)


class ViT(nn.Module):
    """A pre-norm ViT whose depth is exposed state by state.

    ``embed(images)`` gives the depth-0 state, ``blocks[l-1](state)`` the step to depth l,
    ``trajectory(images)`` every depth at once, ``readout(state)`` the final norm and head.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        if cfg.cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        else:
            self.register_parameter("cls_token", None)
        if cfg.num_distillation_tokens:
            self.dist_token = nn.Parameter(torch.zeros(1, cfg.num_distillation_tokens, dim))
        else:
            self.register_parameter("dist_token", None)
        if cfg.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, dim))
        else:
            self.register_parameter("register_tokens", None)
        positions = cfg.grid * cfg.grid + cfg.pos_embed_slots
        if cfg.position_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, positions, dim))
        elif cfg.position_embedding == "sincos":        # frozen: a buffer, saved with the weights
            table = sincos_table(cfg.grid, cfg.grid, dim)
            table = torch.cat([torch.zeros(cfg.pos_embed_slots, dim, dtype=table.dtype), table])
            self.register_buffer("pos_embed", table[None].float())
        else:
            self.pos_embed = None
        self.rope_embed = (RopeEmbedding(cfg.head_dim, cfg.rope_theta)
                           if cfg.rope == "dinov3" else None)
        self.norm_pre = nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.pre_norm else None
        self.blocks = nn.ModuleList(Block(cfg, self.rope_embed) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        head_in = dim * (2 if cfg.head_input in ("cls+mean", "cls+distillation") else 1)
        self.head = (nn.Linear(head_in, cfg.num_classes, bias=cfg.head_bias)
                     if cfg.num_classes else None)
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
                elif name in ("cls_token", "dist_token"):
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
        """Kind of each token position: ``cls``, ``distillation``, ``register``, ``patch``."""
        return list(self.cfg.prefix_kinds) + ["patch"] * self.num_patches(height, width)

    # ----------------------------------------------------------------- forward pieces
    def interpolate_pos_encoding(self, h_patches: int, w_patches: int) -> Tensor:
        """Position table for an ``h_patches x w_patches`` grid, shape ``(1, S + h w, D)``
        with ``S`` = :attr:`ViTConfig.pos_embed_slots` prefix slots first."""
        cfg = self.cfg
        pos = self.pos_embed
        slots = cfg.pos_embed_slots
        cls_pos, patch_pos = pos[:, :slots], pos[:, slots:]
        m = cfg.grid
        if h_patches == m and w_patches == m:
            return pos
        dim = pos.shape[-1]
        work = torch.float64 if pos.dtype == torch.float64 else torch.float32
        grid = patch_pos.to(work).reshape(1, m, m, dim).permute(0, 3, 1, 2)
        mode, antialias = cfg.interp_mode, cfg.interp_antialias
        if cfg.interp_offset:
            scale = ((h_patches + cfg.interp_offset) / m, (w_patches + cfg.interp_offset) / m)
            grid = F.interpolate(grid, scale_factor=scale, mode=mode, antialias=antialias)
        else:
            grid = F.interpolate(grid, size=(h_patches, w_patches), mode=mode,
                                 antialias=antialias)
        patch_pos = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def prefix_tokens(self, batch: int) -> Tensor:
        """The learned prefix tokens ``(batch, P, D)`` in layout order, before positions."""
        parts = [t for t in (self.cls_token, self.dist_token, self.register_tokens)
                 if t is not None]
        if not parts:
            return self.patch_embed.proj.weight.new_zeros(batch, 0, self.cfg.embed_dim)
        return torch.cat(parts, dim=1).expand(batch, -1, -1)

    def embed(self, images: Tensor) -> Tensor:
        """Depth-0 state ``(B, T, D)``: patch embedding, prefix tokens, position embedding,
        then ``norm_pre`` when the model has one (CLIP)."""
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
        cfg = self.cfg
        x = self.patch_embed(images)                         # (B, N, D)
        prefix = self.prefix_tokens(x.shape[0])              # (B, P, D)
        if self.pos_embed is not None:
            pos = self.interpolate_pos_encoding(height // ps, width // ps)
            slots = cfg.pos_embed_slots
            x = x + pos[:, slots:]
            if slots:
                prefix = torch.cat([prefix[:, :slots] + pos[:, :slots], prefix[:, slots:]],
                                   dim=1)
        if self.rope_embed is not None:
            self.rope_embed.note_grid(height // ps, width // ps)
        x = torch.cat([prefix, x], dim=1)
        return self.norm_pre(x) if self.norm_pre is not None else x

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

        Returns logits when the model has a head, else the normed cls token (the normed
        mean patch for models without a cls token).
        """
        cfg = self.cfg
        normed = self.norm(state)
        mean = normed[..., cfg.num_prefix_tokens:, :].mean(dim=-2)
        if self.head is None:
            return normed[..., 0, :] if cfg.cls_token else mean
        if cfg.head_input == "mean":
            return self.head(mean)
        cls = normed[..., 0, :]
        if cfg.head_input == "cls+mean":
            cls = torch.cat([cls, mean], dim=-1)
        elif cfg.head_input == "cls+distillation":
            cls = torch.cat([cls, normed[..., 1, :]], dim=-1)
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
    "ATTENTION_IMPLS", "MLP_KINDS", "HEAD_INPUTS", "POSITION_EMBEDDINGS", "ROPE_KINDS",
    "ACTIVATIONS", "INTERP_MODES", "ViTConfig", "ViT", "Block", "Attention", "RopeEmbedding",
    "build_vit", "swiglu_hidden_dim", "sincos_table", "activation_fn", "rotate_half",
    "check_attention", "count_parameters",
    "flops_per_image",
]
