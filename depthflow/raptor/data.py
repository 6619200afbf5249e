"""Random access to preprocessed training images, and the deterministic batch order.

The order is a pure function of ``(seed, step)``: epoch ``e`` uses a fixed permutation
drawn from a generator seeded by ``seed`` and ``e``; global step ``s`` takes the
``s mod steps_per_epoch``-th slice of ``batch_size`` images (an incomplete last slice is
dropped). A resumed run therefore needs only the step counter to see the same data, and
each of ``world`` DDP ranks takes its contiguous share of every global batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from depthflow.data.images import ImageSource, _prepare
from depthflow.errors import ConfigError, InputError
from depthflow.models.preprocessing import Preprocessing

PRELOAD_BYTES = 512 << 20


class IndexedImages:
    """``images(indices) -> (B, C, H, W)`` preprocessed; preloaded when small enough."""

    def __init__(self, source: ImageSource, preprocessing: Preprocessing | None, *,
                 preload_bytes: int = PRELOAD_BYTES) -> None:
        if len(source) == 0:
            raise InputError("no training images")
        self.source, self.preprocessing = source, preprocessing
        first = next(source.batches(1, preprocessing=preprocessing)).images
        self.shape = tuple(first.shape[1:])
        self._all: Tensor | None = None
        if first[0].numel() * 4 * len(source) <= preload_bytes:
            self._all = torch.cat([b.images for b in source.batches(
                256, preprocessing=preprocessing)])

    @property
    def size(self) -> int:
        return len(self.source)

    def labels(self, indices: Tensor) -> Tensor:
        return torch.from_numpy(self.source.labels[indices.numpy()])

    def __call__(self, indices: Tensor) -> Tensor:
        if self._all is not None:
            return self._all[indices]
        raw = [self.source._read(int(i), int(i) + 1) for i in indices]
        images = [_prepare(r, self.preprocessing, self.source.names[int(i):int(i) + 1])
                  for r, i in zip(raw, indices)]
        return torch.cat(images)


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    if num_images < batch_size:
        raise ConfigError(
            f"batch_size={batch_size} is larger than the {num_images} training images; "
            "lower --batch-size or give more images")
    return num_images // batch_size


def batch_indices(step: int, *, num_images: int, batch_size: int, seed: int,
                  rank: int = 0, world: int = 1) -> Tensor:
    """Image indices of this rank's share of global batch ``step``."""
    per_epoch = steps_per_epoch(num_images, batch_size)
    epoch, position = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_images, generator=gen)
    batch = order[position * batch_size:(position + 1) * batch_size]
    share = batch_size // world
    return batch[rank * share:(rank + 1) * share]


def step_noise(step: int, shape: tuple[int, ...], *, sigma: float, seed: int, rank: int = 0,
               world: int = 1) -> Tensor | None:
    """Input noise of this rank's share of global batch ``step`` (None when ``sigma = 0``)."""
    if sigma <= 0:
        return None
    gen = torch.Generator().manual_seed(seed * 7_919 + 104_729 * step + 1)
    full = torch.randn((shape[0] * world, *shape[1:]), generator=gen)
    return sigma * full[rank * shape[0]:(rank + 1) * shape[0]]
