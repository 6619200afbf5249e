"""Image preprocessing recorded with every model and every result.

Inputs are first brought to floats in [0, 1] (PIL images divide by 255, the bundled digits
by 16, arrays as described in :mod:`depthflow.data.images`), then resized (shorter side), centre
cropped, and normalised per channel: ``(x - mean) / std``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from depthflow.errors import ConfigError, InputError
from depthflow.core.config import Options, check_choice, check_int

MODES = ("RGB", "L")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)       # OpenAI CLIP
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)                                # SigLIP, HF ViT
DINOV3_SAT_MEAN = (0.430, 0.411, 0.296)               # DINOv3 satellite (SAT-493M) models
DINOV3_SAT_STD = (0.213, 0.156, 0.143)


@dataclasses.dataclass(frozen=True)
class Preprocessing(Options):
    """How raw images become model input.

    ``resize``: shorter side after resizing (None: keep); ``crop``: centre crop size
    (None: keep). ``mode`` is the PIL colour mode the model expects (``"RGB"`` or ``"L"``).
    """

    _what = "preprocessing"

    resize: int | None = 256
    crop: int | None = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    mode: str = "RGB"

    def validate(self) -> Preprocessing:
        try:
            self._set("mean", tuple(float(m) for m in self.mean))
            self._set("std", tuple(float(s) for s in self.std))
        except (TypeError, ValueError):
            raise ConfigError(f"preprocessing mean/std must be lists of numbers, got "
                              f"{self.mean!r} and {self.std!r}") from None
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ConfigError(f"preprocessing mean/std must be finite, got {self.mean} and "
                              f"{self.std}")
        check_choice(self.mode, "preprocessing mode", MODES)
        check_choice(self.interpolation, "preprocessing interpolation", INTERPOLATIONS)
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"preprocessing mean/std need {self.channels} values for mode {self.mode}, "
                f"got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocessing std must be positive, got {self.std}")
        for name in ("resize", "crop"):
            check_int(getattr(self, name), f"preprocessing {name}", optional=True)
            value = getattr(self, name)
            if value is not None and value > MAX_SIDE:
                raise ConfigError(f"preprocessing {name}={value} is beyond {MAX_SIDE} pixels")
        return self

    @property
    def channels(self) -> int:
        return 3 if self.mode == "RGB" else 1


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
            check_resized(h, w, size)
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


MAX_SIDE = 1 << 16        # resize / crop beyond 65,536 pixels are refused


def check_resized(h: int, w: int, size: tuple[int, int]) -> None:
    """Refuse a resize whose result would exceed the image pixel limit (an image very long
    in one dimension: 1 x 60,000,000 pixels resized to a shorter side of 256 would be
    256 x 15,360,000,000), before anything is allocated."""
    from depthflow.data.images import MAX_PIXELS_ENV, max_image_pixels

    limit = max_image_pixels()
    if size[0] * size[1] > limit:
        raise InputError(
            f"an image of {h}x{w} pixels resized to a shorter side of {min(size)} would be "
            f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, more than the limit of "
            f"{limit:,} (aspect ratio {max(h, w) / max(1, min(h, w)):.0f}:1); crop the image "
            f"or raise --max-image-pixels / {MAX_PIXELS_ENV}")


def dinov2_preprocessing(crop: int = 224) -> Preprocessing:
    """The DINOv2 evaluation transform: resize to 256/224 of the crop, centre crop, ImageNet."""
    return Preprocessing(resize=round(crop * 256 / 224), crop=crop)


def family_preprocessing(style: str, img_size: int) -> Preprocessing:
    """A family's evaluation transform when the checkpoint carries none.

    ``hf-clip``/``openclip``: resize the shorter side to ``img_size`` (bicubic), centre
    crop, CLIP mean/std. ``hf-siglip``: ``img_size`` square, mean = std = 0.5, bicubic.
    ``hf-dinov3``/``dinov3-hub``: 224 square, bilinear, ImageNet mean/std (the LVD-1689M
    models; satellite models need :func:`dinov3_preprocessing` with ``satellite=True``).
    ``hf-deit``/``timm``/DINOv2 styles: resize 256/224 of the crop, crop 224, ImageNet.
    ``hf-vit-mae``: 224 square, bilinear, ImageNet. ``hf-vit``: ``img_size`` square,
    mean = std = 0.5, bilinear.
    """
    if style in ("hf-clip", "openclip"):
        return Preprocessing(resize=img_size, crop=img_size, mean=CLIP_MEAN, std=CLIP_STD)
    if style == "hf-siglip":
        return Preprocessing(resize=img_size, crop=img_size, mean=HALF, std=HALF)
    if style in ("hf-dinov3", "dinov3-hub"):
        return dinov3_preprocessing()
    if style == "hf-vit-mae":
        return Preprocessing(resize=224, crop=224, interpolation="bilinear")
    if style == "hf-vit":
        return Preprocessing(resize=img_size, crop=img_size, mean=HALF, std=HALF,
                             interpolation="bilinear")
    return dinov2_preprocessing(224)


def dinov3_preprocessing(size: int = 224, *, satellite: bool = False) -> Preprocessing:
    """DINOv3's transform: ``size`` square (bilinear); ImageNet mean/std for the web-image
    (LVD-1689M) models, the SAT-493M statistics for the satellite ones."""
    mean, std = (DINOV3_SAT_MEAN, DINOV3_SAT_STD) if satellite else (IMAGENET_MEAN, IMAGENET_STD)
    return Preprocessing(resize=size, crop=size, mean=mean, std=std, interpolation="bilinear")


def preprocessing_from_timm(cfg: dict[str, Any]) -> Preprocessing:
    """See :func:`_from_timm`; a field of the wrong type or range is one ConfigError."""
    return _parsed("timm pretrained_cfg", _from_timm, cfg)


def preprocessing_from_openclip(cfg: dict[str, Any], img_size: int) -> Preprocessing:
    """See :func:`_from_openclip`; a field of the wrong type or range is one ConfigError."""
    return _parsed("open_clip_config.json preprocess_cfg", _from_openclip, cfg, img_size)


def _parsed(what: str, fn, *args) -> Preprocessing:
    if not isinstance(args[0], dict):
        raise ConfigError(f"{what} must be a JSON object, got {type(args[0]).__name__}")
    try:
        return fn(*args)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError,
            OverflowError) as exc:
        raise ConfigError(f"{what} has a field of the wrong type or range: "
                          f"{type(exc).__name__}: {exc}") from None


def _from_timm(cfg: dict[str, Any]) -> Preprocessing:
    """A timm ``pretrained_cfg``: ``input_size`` (C, H, W), ``crop_pct`` (resize to
    ``H / crop_pct``, then centre crop ``H``), ``interpolation``, ``mean``, ``std``."""
    size = cfg.get("test_input_size") or cfg.get("input_size") or (3, 224, 224)
    side = int(size[-1])
    crop_pct = float(cfg.get("test_crop_pct") or cfg.get("crop_pct") or 0.875)
    interpolation = str(cfg.get("interpolation", "bicubic"))
    if interpolation not in INTERPOLATIONS:
        interpolation = "bicubic"
    return Preprocessing(resize=int(side / crop_pct), crop=side,
                         mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                         std=tuple(cfg.get("std", IMAGENET_STD)), interpolation=interpolation)


def _from_openclip(cfg: dict[str, Any], img_size: int) -> Preprocessing:
    """An ``open_clip_config.json``'s ``preprocess_cfg`` (``mean``, ``std``,
    ``interpolation``); resize the shorter side to ``img_size`` and centre crop."""
    interpolation = str(cfg.get("interpolation", "bicubic"))
    if interpolation not in INTERPOLATIONS:
        interpolation = "bicubic"
    return Preprocessing(resize=img_size, crop=img_size, mean=tuple(cfg.get("mean", CLIP_MEAN)),
                         std=tuple(cfg.get("std", CLIP_STD)), interpolation=interpolation)


def model_preprocessing(loaded: Any) -> Preprocessing:
    """A loaded model's own preprocessing, else a default that fits its input size
    (grey 8x8-style models: resize to ``img_size``, mean/std 0.5; others: DINOv2's)."""
    if loaded.preprocessing is not None:
        return loaded.preprocessing
    cfg = loaded.config
    if cfg.in_chans == 1:
        return Preprocessing(resize=cfg.img_size, crop=cfg.img_size, mean=(0.5,), std=(0.5,),
                             mode="L")
    return dinov2_preprocessing(224 if cfg.patch_size == 14 else cfg.img_size)
