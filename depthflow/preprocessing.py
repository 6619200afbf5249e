"""Image preprocessing recorded with every model and every result.

Inputs are first brought to floats in [0, 1] (PIL images divide by 255, the bundled digits
by 16, arrays as described in :mod:`depthflow.data`), then resized (shorter side), centre
cropped, and normalised per channel: ``(x - mean) / std``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError, InputError
from .overrides import known_keys

MODES = ("RGB", "L")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How raw images become model input.

    ``resize``: shorter side after resizing (None: keep); ``crop``: centre crop size
    (None: keep). ``mode`` is the PIL colour mode the model expects (``"RGB"`` or ``"L"``).
    """

    resize: int | None = 256
    crop: int | None = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    mode: str = "RGB"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.mode not in MODES:
            raise ConfigError(f"preprocessing mode must be one of {MODES}, got {self.mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"preprocessing interpolation must be one of {INTERPOLATIONS}, "
                f"got {self.interpolation!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"preprocessing mean/std need {self.channels} values for mode {self.mode}, "
                f"got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocessing std must be positive, got {self.std}")
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"preprocessing {name} must be a positive int or None")

    @property
    def channels(self) -> int:
        return 3 if self.mode == "RGB" else 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(**known_keys(cls, data, what="preprocessing keys"))

    def __call__(self, images: Tensor) -> Tensor:
        """Apply to a float batch ``(B, C, H, W)`` with values in [0, 1]."""
        return self.apply(images)

    def apply(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise InputError(
                f"expected images of shape (batch, {self.channels}, H, W) for mode "
                f"{self.mode}, got {tuple(images.shape)}")
        x = images.float()
        if self.resize is not None:
            h, w = x.shape[-2:]
            scale = self.resize / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            if size != (h, w):
                kwargs = {} if self.interpolation == "nearest" else {"antialias": True,
                                                                     "align_corners": False}
                x = F.interpolate(x, size=size, mode=self.interpolation, **kwargs)
        if self.crop is not None:
            h, w = x.shape[-2:]
            if h < self.crop or w < self.crop:
                raise InputError(
                    f"image of {h}x{w} pixels is smaller than the crop {self.crop}; "
                    "set a resize of at least the crop size")
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
            x = x[..., top:top + self.crop, left:left + self.crop]
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std


def dinov2_preprocessing(crop: int = 224) -> Preprocessing:
    """The DINOv2 evaluation transform: resize to 256/224 of the crop, centre crop, ImageNet."""
    return Preprocessing(resize=round(crop * 256 / 224), crop=crop)
