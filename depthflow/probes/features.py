"""Token readouts of streamed states, kept in memory-bounded per-depth buffers.

A readout turns the states ``(B, L+1, T, D)`` of a batch into features ``(B, L+1, F)``:
``cls`` (the cls token), ``mean_patch`` (the mean of the patch tokens), ``cls+mean_patch``
(both, concatenated) and ``registers`` (the mean of the register tokens). Readouts whose
tokens a model lacks are left out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from depthflow.errors import ConfigError, InputError

__all__ = ["READOUTS", "available_readouts", "readout_features", "FeatureBuffer"]

READOUTS = ("cls", "mean_patch", "cls+mean_patch", "registers")


def available_readouts(token_kinds: tuple[str, ...] | list[str],
                       wanted: tuple[str, ...] = READOUTS) -> list[str]:
    """The readouts of ``wanted`` that a token layout supports (in ``READOUTS`` order)."""
    bad = [r for r in wanted if r not in READOUTS]
    if bad:
        raise ConfigError(f"readouts must be from {READOUTS}, got {bad}")
    has = set(token_kinds)
    need = {"cls": {"cls"}, "mean_patch": {"patch"}, "cls+mean_patch": {"cls", "patch"},
            "registers": {"register"}}
    return [r for r in READOUTS if r in wanted and need[r] <= has]


def readout_features(states: Tensor, token_kinds, readout: str) -> Tensor:
    """Features ``(..., F)`` of one readout from states ``(..., T, D)``."""
    kinds = list(token_kinds)
    if states.shape[-2] != len(kinds):
        raise InputError(f"states have {states.shape[-2]} tokens, the layout {len(kinds)}")
    idx = lambda kind: torch.tensor([i for i, k in enumerate(kinds) if k == kind],  # noqa: E731
                                    dtype=torch.long, device=states.device)
    if readout == "cls":
        return states[..., kinds.index("cls"), :]
    if readout == "mean_patch":
        return states.index_select(-2, idx("patch")).mean(-2)
    if readout == "cls+mean_patch":
        return torch.cat([states[..., kinds.index("cls"), :],
                          states.index_select(-2, idx("patch")).mean(-2)], dim=-1)
    if readout == "registers":
        return states.index_select(-2, idx("register")).mean(-2)
    raise ConfigError(f"readout must be one of {READOUTS}, got {readout!r}")


class FeatureBuffer:
    """Preallocated float32 buffers ``(n, L+1, F)`` per readout for ``n`` labelled images.

    The total size is checked before any image is kept: beyond ``max_bytes`` it refuses with
    one line that names the size and the options that shrink it.
    """

    def __init__(self, n: int, depths: int, widths: dict[str, int], *, max_bytes: int) -> None:
        need = sum(n * depths * w * 4 for w in widths.values())
        if need > max_bytes:
            raise ConfigError(
                f"the probe features of {n} images x {depths} depths x "
                f"{sum(widths.values())} features need {need / 2**20:.0f} MiB, more than "
                f"probes.max_megabytes={max_bytes / 2**20:.0f}; use fewer images (--limit), "
                f"fewer readouts (probes.readouts) or raise probes.max_megabytes")
        self.data = {r: np.zeros((n, depths, w), dtype=np.float32) for r, w in widths.items()}
        self.labels = np.full(n, -1, dtype=np.int64)
        self.index = np.zeros(n, dtype=np.int64)
        self.count = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.data.values())

    def add(self, features: dict[str, np.ndarray], labels: np.ndarray, index: np.ndarray) -> None:
        """Append rows (images) in global order."""
        m = len(labels)
        if self.count + m > len(self.labels):
            raise InputError(f"more labelled images than the {len(self.labels)} announced")
        for r, a in features.items():
            self.data[r][self.count:self.count + m] = a
        self.labels[self.count:self.count + m] = labels
        self.index[self.count:self.count + m] = index
        self.count += m

    def view(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        c = self.count
        return ({r: a[:c] for r, a in self.data.items()}, self.labels[:c], self.index[:c])
