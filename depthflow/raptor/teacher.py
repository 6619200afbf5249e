"""Teacher states on the fly, with an optional bounded, compressed disk cache.

The official code precomputed every activation of ImageNet-train (terabytes). depthflow
computes the teacher trajectory ``(B, L+1, T, D)`` of each training batch when it is needed
(batched, no grad), and can keep some of it on disk: :class:`StateCache` stores fixed
shards of consecutive images (zlib-compressed float32, lossless) until a byte budget is
used up, and keeps at most a few decompressed shards in memory. Images beyond the budget
are computed on the fly as before, so memory and disk stay bounded whatever the data size.
"""

from __future__ import annotations

import collections
import contextlib
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from depthflow.errors import ConfigError, OutputError
from depthflow.io.files import atomic_path
from depthflow.models.vit import ViT


@torch.no_grad()
def teacher_states(teacher: ViT, images: Tensor) -> Tensor:
    """The teacher's trajectory ``(B, L+1, T, D)`` (raw residual stream, no grad)."""
    return torch.stack([s for _, s in teacher.iter_states(images)], dim=1)


class StateCache:
    """Teacher states of an indexed image collection, cached by shards on disk.

    Parameters
    ----------
    teacher
        The teacher ViT (eval mode, on its compute device).
    images
        A callable ``images(indices) -> (B, C, H, W)`` preprocessed tensor.
    directory
        Where shard files live (created if missing); ``None``: no cache, always compute.
    max_bytes
        Disk budget for compressed shards; shards that would exceed it are not stored.
    shard_size
        Images per shard (consecutive indices).
    memory_shards
        Decompressed shards kept in memory (least recently used are dropped).
    """

    def __init__(self, teacher: ViT, images, *, directory: str | os.PathLike[str] | None = None,
                 max_bytes: int = 1 << 30, shard_size: int = 256,
                 memory_shards: int = 4, key: str = "") -> None:
        if shard_size < 1 or memory_shards < 1 or max_bytes < 0:
            raise ConfigError("StateCache needs shard_size >= 1, memory_shards >= 1 and "
                              f"max_bytes >= 0; got {shard_size}, {memory_shards}, {max_bytes}")
        self.teacher, self.images = teacher, images
        self.directory = None if directory is None else Path(directory)
        self.max_bytes, self.shard_size, self.memory_shards = max_bytes, shard_size, memory_shards
        self.key = key
        self._memory: collections.OrderedDict[int, Tensor] = collections.OrderedDict()
        self._full = False
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create the teacher cache {str(directory)!r}: "
                                  f"{exc.strerror or exc}") from exc

    # ----------------------------------------------------------------- public
    def get(self, indices: Tensor, device: torch.device | None = None) -> Tensor:
        """Teacher states ``(B, L+1, T, D)`` of the images at ``indices``."""
        idx = indices.tolist()
        if self.directory is None:
            return teacher_states(self.teacher, self.images(indices).to(device))
        shards = sorted({i // self.shard_size for i in idx})
        found = {s: self._shard(s, device) for s in shards}
        out = [found[i // self.shard_size] for i in idx]
        rows = [None if s is None else s[i % self.shard_size] for s, i in zip(out, idx)]
        missing = [n for n, r in enumerate(rows) if r is None]
        if missing:
            fresh = teacher_states(self.teacher, self.images(indices[missing]).to(device))
            for n, state in zip(missing, fresh):
                rows[n] = state
        return torch.stack(rows)

    def disk_bytes(self) -> int:
        if self.directory is None:
            return 0
        return sum(p.stat().st_size for p in self.directory.glob("shard-*.z"))

    # ----------------------------------------------------------------- shards
    def _path(self, shard: int) -> Path:
        return self.directory / f"shard-{self.key}{shard:07d}.z"

    def _shard(self, shard: int, device) -> Tensor | None:
        if shard in self._memory:
            self._memory.move_to_end(shard)
            return self._memory[shard]
        path = self._path(shard)
        states = self._read(path) if path.is_file() else None
        if states is None:
            if self._full:
                return None
            states = self._compute(shard, device)
            if not self._store(path, states):
                return None
        self._memory[shard] = states = states.to(device)
        while len(self._memory) > self.memory_shards:
            self._memory.popitem(last=False)
        return states

    def _compute(self, shard: int, device) -> Tensor:
        start = shard * self.shard_size
        stop = min(start + self.shard_size, self._size())
        return teacher_states(self.teacher, self.images(torch.arange(start, stop)).to(device))

    def _size(self) -> int:
        return int(self.images.size)

    def _store(self, path: Path, states: Tensor) -> bool:
        array = states.detach().to("cpu", torch.float32).numpy()
        header = np.array(array.shape, dtype=np.int64).tobytes()
        blob = len(array.shape).to_bytes(1, "little") + header + zlib.compress(
            array.tobytes(), 1)
        if self.disk_bytes() + len(blob) > self.max_bytes:
            self._full = True
            return True                      # use it from memory, do not store it
        try:
            with atomic_path(path, overwrite=True) as tmp:
                tmp.write_bytes(blob)
        except OSError:                      # disk full: the cache is an optimisation only
            self._full = True
        return True

    @staticmethod
    def _read(path: Path) -> Tensor | None:
        with contextlib.suppress(OSError, zlib.error, ValueError):
            raw = path.read_bytes()
            ndim = raw[0]
            shape = tuple(np.frombuffer(raw[1:1 + 8 * ndim], dtype=np.int64))
            data = np.frombuffer(zlib.decompress(raw[1 + 8 * ndim:]), dtype=np.float32)
            return torch.from_numpy(data.reshape(shape).copy())
        return None
