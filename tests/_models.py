"""Small models and checkpoints shared by the tests (plain functions, no fixtures)."""

from __future__ import annotations

from pathlib import Path

import torch

from depthflow.models.checkpoints import LoadedModel, save_checkpoint
from depthflow.models.preprocessing import Preprocessing
from depthflow.models.vit import ViT, ViTConfig

DIGITS_PRE = Preprocessing(resize=8, crop=8, mean=(0.3,), std=(0.4,), interpolation="bilinear",
                           mode="L")


def tiny_config(**changes) -> ViTConfig:
    base = dict(embed_dim=32, depth=3, num_heads=2, patch_size=2, img_size=8, in_chans=1,
                mlp_hidden_dim=64, num_register_tokens=2, num_classes=10)
    base.update(changes)
    return ViTConfig(**base)


def tiny_vit(seed: int = 0, dtype=torch.float32, **changes) -> ViT:
    """A random ViT whose LayerScale is large enough that every block matters."""
    model = ViT(tiny_config(**changes)).init_weights(seed=seed, layerscale_init=0.5)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():   # non-trivial norms and biases too
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.to(dtype).eval()


def tiny_loaded(seed: int = 0, **changes) -> LoadedModel:
    return LoadedModel(tiny_vit(seed, **changes), source="tiny", format="test",
                       preprocessing=DIGITS_PRE)


def tiny_checkpoint(path: Path, seed: int = 0, **changes) -> Path:
    save_checkpoint(tiny_vit(seed, **changes), path, preprocessing=DIGITS_PRE,
                    info={"purpose": "test"})
    return path


def randomize_parameters(model: torch.nn.Module, seed: int, *, scale_names=("gamma", "lambda1")):
    """Seeded, non-trivial float32-representable weights for any ViT-like module.

    LayerScale vectors (names ending in ``scale_names``) in [0.2, 1], other vectors around
    their identity value, matrices and convolutions scaled by fan-in, token and position
    tables with std 0.5.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(scale_names):
                p.copy_(0.2 + 0.8 * torch.rand(p.shape, generator=gen))
            elif p.ndim == 1:
                base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * noise)
            elif p.ndim in (2, 4) and not name.endswith(("cls_token", "register_tokens",
                                                        "pos_embed")):
                p.copy_(noise / p[0].numel() ** 0.5)
            else:                                          # cls, registers, positions
                p.copy_(0.5 * noise)
    return model
