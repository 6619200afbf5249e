"""The layers of depthflow's ViT: attention (packed qkv, masked biases, DINOv3 RoPE), MLPs
(activation choice, SwiGLU), LayerScale, stochastic depth, and MAE's sin-cos table.

Every layer is a pure function of its parameters and its input ``(..., T, D)``; attention
runs as fused SDPA or in plain math form (``softmax(q k^T / sqrt(d)) v``), which
forward-mode AD needs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from depthflow.errors import ConfigError, InputError

ATTENTION_IMPLS = ("sdpa", "math")
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")


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


def activation_fn(name: str) -> Any:
    """The MLP activation ``name`` (see :data:`ACTIVATIONS`) as a function."""
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return _gelu_tanh
    if name == "quick_gelu":
        return _quick_gelu
    raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def rotate_half(x: Tensor) -> Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class RopeEmbedding(nn.Module):
    """DINOv3's rotary position embedding of the patch tokens.

    Patch ``(i, j)`` of an ``h x w`` grid sits at ``y = 2 (i + 1/2) / h - 1``,
    ``x = 2 (j + 1/2) / w - 1``; its angles are ``2 pi y / periods`` then ``2 pi x /
    periods`` (``head_dim / 4`` each), tiled twice to ``head_dim`` for rotate-half. The
    periods are a buffer (``theta ** (4 i / head_dim)`` by default) so that a checkpoint's
    own, possibly bf16-rounded, periods are used as stored.

    A state ``(..., T, D)`` does not say its grid: :meth:`note_grid` (called by
    :meth:`ViT.embed`) records the grid of each patch count; a count never seen is taken to
    be a square grid.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        exponents = torch.arange(head_dim // 4, dtype=torch.float64) * 4 / head_dim
        self.register_buffer("periods", (float(theta) ** exponents).float())
        self.grids: dict[int, tuple[int, int]] = {}
        self._cache: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}

    def note_grid(self, h_patches: int, w_patches: int) -> None:
        self.grids[h_patches * w_patches] = (h_patches, w_patches)

    def grid_for(self, num_patches: int) -> tuple[int, int]:
        if num_patches in self.grids:
            return self.grids[num_patches]
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise InputError(
                f"cannot tell the patch grid of a state with {num_patches} patches; embed an "
                "image of that size first (model.embed) so that RoPE knows its grid")
        return side, side

    def forward(self, num_patches: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(cos, sin)``, each ``(N, head_dim)``, for ``num_patches`` patch tokens (cached
        per grid, dtype, device, version of the periods and inference mode)."""
        h, w = self.grid_for(num_patches)
        key = (h, w, dtype, self.periods.device, self.periods.data_ptr(), self.periods._version,
               torch.is_inference_mode_enabled())     # inference tensors stay in their mode
        if key not in self._cache:
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = self._table(h, w, dtype)
        return self._cache[key]

    def _table(self, h: int, w: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        periods = self.periods.to(torch.float64 if dtype == torch.float64 else torch.float32)
        ys = (torch.arange(h, dtype=periods.dtype, device=periods.device) + 0.5) / h
        xs = (torch.arange(w, dtype=periods.dtype, device=periods.device) + 0.5) / w
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0                                 # (N, 2)
        angles = 2 * math.pi * coords[:, :, None] / periods         # (N, 2, hd/4)
        angles = angles.flatten(1, 2).tile(2)                       # (N, hd)
        return angles.cos().to(dtype), angles.sin().to(dtype)


class Attention(nn.Module):
    """Multi-head self-attention with one packed ``qkv`` projection.

    ``bias_parts`` (``"qkv"``, ``"qv"``...) masks the bias of the parts not named to zero
    (a buffer, not a weight). ``rope`` (shared with the model, not a submodule) rotates q
    and k of the last ``N`` (patch) tokens."""

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool, proj_bias: bool,
                 bias_parts: str = "qkv", rope: RopeEmbedding | None = None,
                 num_prefix_tokens: int = 0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        if qkv_bias and bias_parts != "qkv":
            mask = torch.cat([torch.full((dim,), float(c in bias_parts)) for c in "qkv"])
            self.register_buffer("bias_mask", mask, persistent=False)
        else:
            self.bias_mask = None
        object.__setattr__(self, "rope", rope)       # shared, owned by the ViT

    def forward(self, x: Tensor, attention: str = "sdpa") -> Tensor:
        *batch, tokens, dim = x.shape
        heads = self.num_heads
        if self.bias_mask is None:
            qkv = self.qkv(x)
        else:
            qkv = F.linear(x, self.qkv.weight, self.qkv.bias * self.bias_mask)
        qkv = qkv.reshape(*batch, tokens, 3, heads, dim // heads)
        qkv = qkv.movedim(-3, 0).transpose(-3, -2)          # (3, ..., H, T, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.rope is not None:
            q, k = self._rotate(q, k)
        if attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scale = (dim // heads) ** -0.5
            weights = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
            out = weights @ v                                # (..., H, T, hd)
        out = out.transpose(-3, -2).reshape(*batch, tokens, dim)
        return self.proj(out)

    def _rotate(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        prefix = self.num_prefix_tokens
        cos, sin = self.rope(q.shape[-2] - prefix, q.dtype)  # (N, hd) each

        def rot(t: Tensor) -> Tensor:
            head, patches = t[..., :prefix, :], t[..., prefix:, :]
            return torch.cat([head, patches * cos + rotate_half(patches) * sin], dim=-2)

        return rot(q), rot(k)


class GeluMlp(nn.Module):
    """``fc2(act(fc1 x))`` with ``act`` one of :data:`ACTIVATIONS` (exact GELU by default)."""

    def __init__(self, dim: int, hidden: int, *, bias: bool, activation: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.activation = activation
        self._act = activation_fn(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self._act(self.fc1(x)))


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


def sincos_table(height: int, width: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """MAE's fixed 2-D sin-cos position table ``(height * width, dim)`` in float64.

    With ``omega_i = temperature ** (-i / (dim/4))``, ``i < dim/4``, the row of patch
    ``(r, c)`` is ``[sin(r omega), cos(r omega), sin(c omega), cos(c omega)]`` (the layout of
    transformers' ``ViTMAEEmbeddings``).
    """
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")
    emb_r, emb_c = rows.flatten().outer(omega), cols.flatten().outer(omega)
    return torch.cat([emb_r.sin(), emb_r.cos(), emb_c.sin(), emb_c.cos()], dim=1)


__all__ = [
    "ATTENTION_IMPLS", "ACTIVATIONS", "swiglu_hidden_dim", "check_attention", "LayerScale",
    "activation_fn", "rotate_half", "RopeEmbedding", "Attention", "GeluMlp", "SwiGLUMlp",
    "drop_path", "sincos_table",
]
