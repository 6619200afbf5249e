"""Schedules of the Raptor recipe: learning rate and teacher-forcing ratio.

Both are pure functions of the step (0-based), so a resumed run needs only the step
counter to continue exactly.
"""

from __future__ import annotations

import math
from typing import Any

from depthflow.errors import ConfigError

TF_MODES = ("anneal", "teacher", "autoregressive")


def lr_at(step: int, *, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warmup from ``lr / warmup`` to ``lr`` over ``warmup`` steps, then a cosine
    from ``lr`` down to ``min_lr`` at step ``total - 1``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def teacher_forcing_ratio(step: int, *, total: int, anneal_fraction: float = 0.25,
                          mode: str = "anneal") -> float:
    """Weight ``r`` of the teacher-forced loss in ``r L_TF + (1 - r) L_AR``.

    ``"anneal"`` (the paper): ``r`` falls linearly from 1 at step 0 to 0 at step
    ``anneal_fraction * total`` and stays 0; ``"teacher"``: always 1 (teacher forcing
    only, the first rung of the ablation ladder); ``"autoregressive"``: always 0.
    """
    if mode == "teacher":
        return 1.0
    if mode == "autoregressive":
        return 0.0
    if mode != "anneal":
        raise ConfigError(f"teacher-forcing mode must be one of {TF_MODES}, got {mode!r}")
    span = anneal_fraction * total
    if span <= 0:
        return 0.0
    return max(0.0, 1.0 - step / span)


class WarmupCosine:
    """The learning-rate schedule as an object with a ``state_dict`` (for checkpoints).

    It sets the learning rate of every parameter group of ``optimizer`` from the step
    counter; :meth:`step` advances the counter.
    """

    def __init__(self, optimizer: Any, *, total: int, warmup: int, lr: float,
                 min_lr: float) -> None:
        if total < 1 or warmup < 0 or lr <= 0 or min_lr < 0:
            raise ConfigError(f"schedule needs total >= 1, warmup >= 0, lr > 0, min_lr >= 0; "
                              f"got {total}, {warmup}, {lr}, {min_lr}")
        self.optimizer = optimizer
        self.total, self.warmup, self.lr, self.min_lr = total, warmup, lr, min_lr
        self.last_step = 0
        self._apply()

    def current(self) -> float:
        return lr_at(self.last_step, total=self.total, warmup=self.warmup, lr=self.lr,
                     min_lr=self.min_lr)

    def _apply(self) -> None:
        value = self.current()
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "total": self.total, "warmup": self.warmup,
                "lr": self.lr, "min_lr": self.min_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("total", "warmup", "lr", "min_lr"):
            if state[key] != getattr(self, key):
                raise ConfigError(f"cannot resume: schedule {key} was {state[key]}, now "
                                  f"{getattr(self, key)}; resume with the same options")
        self.last_step = int(state["last_step"])
        self._apply()
