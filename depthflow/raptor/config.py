"""Every option of a Raptor fit, in one frozen record (:class:`FitConfig`)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..errors import ConfigError
from ..overrides import known_keys
from ..trajectory import resolve_device
from .model import RaptorConfig
from .schedules import TF_MODES

DTYPES = ("float32", "bfloat16")
# Options that may change on resume without changing the result (beyond float rounding).
RESUMABLE_CHANGES = ("device", "log_every", "checkpoint_every", "eval_every", "num_threads",
                     "cache_dir", "cache_gb", "compile", "eval_batch_size")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Every option of a Raptor fit; the paper's value in brackets where it differs.

    Defaults are the paper's recipe scaled for small models, so that the embedded digits ViT
    (12 blocks, width 64, 21 tokens) fits in a few CPU minutes: 400 + 400 steps instead of
    312,500, batch 32 instead of 64 (1,347 training images: 19 epochs), lr 1e-3 instead of
    3e-4 (a short run of a small model needs larger steps; 3e-4 reaches R^2 0.9 only after
    several times as many steps), warmup 3.2% of each stage (the paper's 10k of 312.5k).
    Scale ``stage1_steps``/``stage2_steps`` up and ``lr`` down towards the paper's values for
    large teachers.

    Architecture: ``k``, ``thresholds`` (k-1 values; None: max-cut on the training images),
    ``mlp``, ``mlp_hidden_dim``, ``layerscale_init``, ``depth_conditioning``,
    ``cond_hidden``, ``cond_init_std``, ``init`` ("random" as the paper, or "teacher").
    Recipe: ``stage1_steps``, ``stage2_steps``, ``batch_size`` (global), ``lr``, ``min_lr``,
    ``weight_decay``, ``betas``, ``warmup_fraction``, ``grad_clip``, ``tf_mode`` ("anneal",
    "teacher" = teacher forcing only, "autoregressive"), ``anneal_fraction``,
    ``token_weighting`` with ``cls_weight``/``register_weight``/``patch_weight``,
    ``input_noise``. Execution: ``seed``, ``device``, ``dtype`` ("bfloat16" = autocast),
    ``attention`` for training ("sdpa" fused; the fitted model is saved for any), ``compile``
    (torch.compile the blocks; pays on GPU), logging/checkpoint/eval intervals, the teacher
    cache (``cache_dir``, ``cache_gb``), ``threshold_images`` for max-cut, ``num_threads``.
    """

    k: int = 2
    thresholds: tuple[int, ...] | None = None
    mlp: str = "swiglu"
    mlp_hidden_dim: int | None = None
    layerscale_init: float = 1e-5
    depth_conditioning: bool = True
    cond_hidden: int = 16
    cond_init_std: float = 1e-4
    init: str = "random"
    stage1_steps: int = 400
    stage2_steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.032
    grad_clip: float = 1.0
    tf_mode: str = "anneal"
    anneal_fraction: float = 0.25
    token_weighting: bool = True
    cls_weight: float = 0.45
    register_weight: float = 0.10
    patch_weight: float = 0.45
    input_noise: float = 0.0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    attention: str = "sdpa"
    compile: bool = False
    log_every: int = 25
    checkpoint_every: int = 200
    eval_every: int = 50
    eval_batch_size: int = 256
    threshold_images: int = 1000
    cache_dir: str | None = None
    cache_gb: float = 1.0
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.thresholds is not None:
            object.__setattr__(self, "thresholds", tuple(int(t) for t in self.thresholds))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def validate(self) -> FitConfig:
        positive = ("k", "batch_size", "log_every", "checkpoint_every", "eval_every",
                    "eval_batch_size", "threshold_images", "cond_hidden")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stage1_steps < 0 or self.stage2_steps < 0 or \
                self.stage1_steps + self.stage2_steps < 1:
            raise ConfigError(f"stage1_steps and stage2_steps must be >= 0 with at least one "
                              f"step in all, got {self.stage1_steps} and {self.stage2_steps}")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("min_lr", "weight_decay", "input_noise", "cls_weight", "register_weight",
                     "patch_weight", "layerscale_init", "cond_init_std", "cache_gb"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("warmup_fraction", "anneal_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        choices = {"tf_mode": TF_MODES, "dtype": DTYPES, "attention": ("sdpa", "math"),
                   "init": ("random", "teacher")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.thresholds is not None and len(self.thresholds) != self.k - 1:
            raise ConfigError(
                f"k={self.k} needs {self.k - 1} threshold(s), got {len(self.thresholds)} "
                f"({list(self.thresholds)}); give k-1 thresholds or set k="
                f"{len(self.thresholds) + 1}")
        resolve_device(self.device)
        return self

    def raptor_config(self) -> RaptorConfig:
        if self.thresholds is None:
            raise ConfigError("thresholds are not resolved yet")
        return RaptorConfig(thresholds=self.thresholds, mlp=self.mlp,
                            mlp_hidden_dim=self.mlp_hidden_dim,
                            layerscale_init=self.layerscale_init,
                            depth_conditioning=self.depth_conditioning,
                            cond_hidden=self.cond_hidden, cond_init_std=self.cond_init_std)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("thresholds", "betas"):
            data[key] = None if data[key] is None else list(data[key])
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        return cls(**known_keys(cls, data, what="fit options"))

    def replace(self, **changes: Any) -> FitConfig:
        return dataclasses.replace(self, **changes)
