"""The fine-tuned-probe readout of the paper's headline accuracies (docs/methods.md).

The official ImageNet numbers come from a linear head fine-tuned on top of the frozen
Raptor: started from the teacher's head, AdamW (lr 1e-4, weight decay 1e-2), a linear warmup
from 1% over 100 steps then a cosine to 1% of the peak (batch 512), random resized crops (scale 0.08-1, aspect 3/4-4/3)
and horizontal flips, the accuracy of the best validation epoch reported. :func:`finetune_probe`
does the same for any depth model (a Raptor or the teacher itself) on preprocessed image
tensors. Differences from the official script, all recorded in the result: the validation
epoch is chosen on a held-out part of the TRAINING images (the official script selects on
the evaluation set it reports), the number of epochs (official 15) and the batch size
(official 512, here 64 by default: small data sets) are options, and
flips are off by default (digits are not mirror-symmetric).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from depthflow.core.config import Options, check_int, check_number
from depthflow.errors import ConfigError, InputError


@dataclasses.dataclass(frozen=True)
class ProbeConfig(Options):
    """Options of the fine-tuned probe (official values as defaults, epochs aside)."""

    _what = "probe option"

    epochs: int = 15
    lr: float = 1e-4
    weight_decay: float = 1e-2
    batch_size: int = 64
    warmup_steps: int = 100
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False
    val_fraction: float = 0.2
    seed: int = 0

    def validate(self) -> ProbeConfig:
        check_int(self.epochs, "probe epochs", minimum=0)
        check_int(self.batch_size, "probe batch_size")
        check_int(self.warmup_steps, "probe warmup_steps", minimum=0)
        check_number(self.lr, "probe lr", low=0, open_low=True)
        check_number(self.weight_decay, "probe weight_decay", low=0)
        check_number(self.val_fraction, "probe val_fraction", low=0, high=1, open_low=True)
        self._set("crop_scale", tuple(float(v) for v in self.crop_scale))
        self._set("crop_ratio", tuple(float(v) for v in self.crop_ratio))
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"crop_scale must satisfy 0 < low <= high <= 1, got "
                              f"{self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        return self


def random_resized_crop(images: Tensor, *, scale: tuple[float, float],
                        ratio: tuple[float, float], gen: torch.Generator,
                        hflip: bool = False) -> Tensor:
    """Per image: a crop of area fraction ~U(scale) and log-uniform aspect ratio in
    ``ratio`` at a uniform position (clipped to the image), resized back to the input size
    (bicubic); with ``hflip`` a flip with probability 1/2. Pure tensor ops, seeded."""
    b = images.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = log_r.exp()
    w = (area * aspect).sqrt().clamp(max=1.0)          # width, height as image fractions
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * (1 - w) + w / 2) * 2 - 1    # centre in [-1, 1]
    cy = (torch.rand(b, generator=gen) * (1 - h) + h / 2) * 2 - 1
    flip = torch.ones(b)
    if hflip:
        flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bicubic", padding_mode="border",
                         align_corners=False)


def head_features(model, state: Tensor) -> Tensor:
    """What the model's head reads from a final state (normed cls, or cls + mean patch)."""
    normed = model.norm(state)
    cls = normed[..., 0, :]
    if getattr(model.cfg, "head_input", "cls") == "cls+mean":
        patches = normed[..., model.cfg.num_prefix_tokens:, :].mean(dim=-2)
        cls = torch.cat([cls, patches], dim=-1)
    return cls


@torch.no_grad()
def _features(model, images: Tensor, batch_size: int) -> Tensor:
    out = []
    for start in range(0, len(images), batch_size):
        out.append(head_features(model, model.rollout(model.embed(images[start:start +
                                                                         batch_size]))))
    return torch.cat(out)


def _accuracy(head, feats: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return float((head(feats).argmax(-1) == labels).double().mean())


def finetune_probe(model, train_images: Tensor, train_labels: Tensor, eval_images: Tensor,
                   eval_labels: Tensor, config: ProbeConfig | None = None) -> dict[str, Any]:
    """Fine-tune a copy of ``model.head`` on the frozen ``model``'s features.

    ``*_images`` are preprocessed tensors ``(N, C, H, W)``; labels ``(N,)``. Epoch 0 is the
    frozen head. Returns the frozen-head and best-validation-epoch accuracies on the
    evaluation images, the chosen epoch and the per-epoch curve.
    """
    cfg = (config or ProbeConfig()).validate()
    if getattr(model, "head", None) is None:
        raise InputError("the fine-tuned probe starts from the teacher's head; this model "
                         "has none")
    if len(train_images) != len(train_labels) or len(eval_images) != len(eval_labels):
        raise InputError("images and labels differ in length")
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train_images), generator=gen)
    n_val = max(1, int(round(cfg.val_fraction * len(train_images))))
    if n_val >= len(train_images):
        raise InputError(f"val_fraction {cfg.val_fraction} leaves no training images")
    val_idx, fit_idx = order[:n_val], order[n_val:]
    model.eval()
    val_x = _features(model, train_images[val_idx], 256)
    val_y = train_labels[val_idx]
    test_x = _features(model, eval_images, 256)
    head = copy.deepcopy(model.head).float()
    for p in head.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(fit_idx) / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, cfg.warmup_steps)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (0.01 + 0.99 * step / max(1, warmup))
        progress = (step - warmup) / max(1, total - warmup)
        low = cfg.lr * 1e-2
        return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * progress))

    curve = [{"epoch": 0, "val_accuracy": _accuracy(head, val_x, val_y),
              "eval_accuracy": _accuracy(head, test_x, eval_labels), "loss": float("nan")}]
    best = dict(curve[0])
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        perm = fit_idx[torch.randperm(len(fit_idx), generator=gen)]
        total_loss = 0.0
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            crops = random_resized_crop(train_images[idx], scale=cfg.crop_scale,
                                        ratio=cfg.crop_ratio, gen=gen, hflip=cfg.hflip)
            with torch.no_grad():
                feats = head_features(model, model.rollout(model.embed(crops)))
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(head(feats), train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total_loss += float(loss.detach()) * len(idx)
        row = {"epoch": epoch, "val_accuracy": _accuracy(head, val_x, val_y),
               "eval_accuracy": _accuracy(head, test_x, eval_labels),
               "loss": total_loss / len(perm)}
        curve.append(row)
        if row["val_accuracy"] > best["val_accuracy"]:     # first best epoch wins ties
            best = dict(row)
    return {"frozen_accuracy": curve[0]["eval_accuracy"],
            "probe_accuracy": best["eval_accuracy"], "best_epoch": best["epoch"],
            "best_val_accuracy": best["val_accuracy"], "n_fit": int(len(fit_idx)),
            "n_val": int(n_val), "n_eval": int(len(eval_labels)),
            "config": cfg.to_dict(), "curve": curve,
            "selection": "best epoch on a held-out part of the training images"}


def accuracy_interval(correct: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``correct / n``."""
    if n <= 0:
        return (float("nan"), float("nan"))
    from scipy.stats import norm
    z = float(norm.ppf(0.5 + level / 2))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(centre - half), float(centre + half))
