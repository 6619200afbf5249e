"""Teacher states on the fly, with an optional bounded, compressed disk cache.

The official code precomputed every activation of ImageNet-train (terabytes). depthflow
computes the teacher trajectory ``(B, L+1, T, D)`` of each training batch when it is needed
(batched, no grad), and can keep it on disk: :class:`StateCache` stores fixed shards of
consecutive images (float32, or float16/bfloat16 at half the size) until a byte budget is
used up, and reads them back by memory map. Images beyond the budget are computed on the
fly, so memory and disk stay bounded whatever the data size. The cache folder is keyed by
:func:`cache_key` (teacher digest, preprocessing, image set), so one folder serves every k,
seed, baseline and evaluation of a study.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from depthflow.errors import ConfigError, OutputError
from depthflow.io.files import atomic_path
from depthflow.models.vit import ViT

log = logging.getLogger("depthflow.raptor")
CACHE_DTYPES = ("float32", "float16", "bfloat16")


@torch.no_grad()
def teacher_states(teacher: ViT, images: Tensor) -> Tensor:
    """The teacher's trajectory ``(B, L+1, T, D)`` (raw residual stream, no grad)."""
    return torch.stack([s for _, s in teacher.iter_states(images)], dim=1)


class StateCache:
    """Teacher states of an indexed image collection, cached by shards on disk.

    One cache folder serves every fit, baseline and evaluation that uses the same teacher,
    preprocessing and image set: the shards live in ``directory / key`` where ``key`` is
    :func:`cache_key` of the three (the caller passes it), so different image sets or models
    never mix. Shards are ``.npy`` files of ``shard_size`` consecutive images (float32,
    float16 or bfloat16 stored as its 16-bit pattern), written atomically, read back by
    memory map (only the rows a batch needs), so several processes (torchrun ranks) share
    them: each rank reads the rows of its own share of every batch and writes a missing
    shard with a rename (two ranks writing the same shard write the same bytes).

    Parameters
    ----------
    teacher
        The teacher ViT (eval mode, on its compute device).
    images
        A callable ``images(indices) -> (B, C, H, W)`` preprocessed tensor with ``size``.
    directory
        Where shard files live (created if missing); ``None``: no cache, always compute.
    max_bytes
        Disk budget for shards; a shard that would exceed it is not stored (one log line
        says so) and its images are computed on the fly.
    shard_size
        Images per shard (consecutive indices).
    memory_shards
        Shards whose memory maps are kept open.
    key
        Subfolder name (see :func:`cache_key`); ``""``: ``directory`` itself.
    dtype
        ``"float32"`` (lossless), ``"float16"`` or ``"bfloat16"`` (half the disk and reads).
    """

    def __init__(self, teacher: ViT, images, *, directory: str | os.PathLike[str] | None = None,
                 max_bytes: int = 1 << 30, shard_size: int = 256,
                 memory_shards: int = 64, key: str = "", dtype: str = "float32") -> None:
        if shard_size < 1 or memory_shards < 1 or max_bytes < 0:
            raise ConfigError("StateCache needs shard_size >= 1, memory_shards >= 1 and "
                              f"max_bytes >= 0; got {shard_size}, {memory_shards}, {max_bytes}")
        if dtype not in CACHE_DTYPES:
            raise ConfigError(f"cache dtype must be one of {CACHE_DTYPES}, got {dtype!r}")
        self.teacher, self.images = teacher, images
        self.directory = None if directory is None else Path(directory) / key if key else \
            Path(directory)
        self.max_bytes, self.shard_size, self.memory_shards = max_bytes, shard_size, memory_shards
        self.key, self.dtype = key, dtype
        self._memory: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._full = False
        self.hits = self.misses = 0
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create the teacher cache {str(directory)!r}: "
                                  f"{exc.strerror or exc}") from exc

    # ----------------------------------------------------------------- public
    def get(self, indices: Tensor, device: torch.device | None = None) -> Tensor:
        """Teacher states ``(B, L+1, T, D)`` (float32) of the images at ``indices``."""
        idx = [int(i) for i in indices.tolist()]
        if self.directory is None:
            return teacher_states(self.teacher, self.images(indices).to(device))
        rows: list[Tensor | None] = []
        for i in idx:
            shard = self._shard(i // self.shard_size, device)
            rows.append(None if shard is None else
                        _decode(np.asarray(shard[i % self.shard_size]), self.dtype))
        missing = [n for n, r in enumerate(rows) if r is None]
        self.misses += len(missing)
        self.hits += len(idx) - len(missing)
        if missing:
            fresh = teacher_states(self.teacher, self.images(indices[missing]).to(device))
            for n, state in zip(missing, fresh):
                rows[n] = state.float()
        return torch.stack([r.to(device) for r in rows])

    def warm(self) -> int:
        """Compute and store every shard that fits the bound; returns the cached images."""
        if self.directory is None:
            return 0
        cached = 0
        for shard in range(-(-self._size() // self.shard_size)):
            if self._shard(shard, None) is not None:
                cached += min(self.shard_size, self._size() - shard * self.shard_size)
        return cached

    def disk_bytes(self) -> int:
        if self.directory is None:
            return 0
        return sum(p.stat().st_size for p in self.directory.glob("shard-*.npy"))

    # ----------------------------------------------------------------- shards
    def _path(self, shard: int) -> Path:
        return self.directory / f"shard-{shard:07d}-{self.shard_size}-{self.dtype}.npy"

    def _shard(self, shard: int, device) -> np.ndarray | None:
        if shard in self._memory:
            self._memory.move_to_end(shard)
            return self._memory[shard]
        path = self._path(shard)
        array = _open(path) if path.is_file() else None
        if array is None:
            if self._full:
                return None
            states = self._compute(shard, device)
            array = self._store(path, states)
            if array is None:
                return None
        self._memory[shard] = array
        while len(self._memory) > self.memory_shards:
            self._memory.popitem(last=False)
        return array

    def _compute(self, shard: int, device) -> Tensor:
        start = shard * self.shard_size
        stop = min(start + self.shard_size, self._size())
        out = []
        for lo in range(start, stop, 64):
            idx = torch.arange(lo, min(lo + 64, stop))
            out.append(teacher_states(self.teacher, self.images(idx).to(device)).cpu())
        return torch.cat(out)

    def _size(self) -> int:
        return int(self.images.size)

    def _store(self, path: Path, states: Tensor) -> np.ndarray | None:
        array = _encode(states, self.dtype)
        if self.disk_bytes() + array.nbytes + 128 > self.max_bytes:
            self._full = True
            log.info("teacher cache %s: its bound of %.3g GB is reached (%d images cached); "
                     "the other images are computed on the fly (raise --cache-gb to cache "
                     "them)", self.directory, self.max_bytes / 2 ** 30,
                     len(list(self.directory.glob("shard-*.npy"))) * self.shard_size)
            return None
        try:
            with atomic_path(path, overwrite=True) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, array, allow_pickle=False)
        except OSError:                      # disk full: the cache is an optimisation only
            self._full = True
            return array
        return _open(path)


def _encode(states: Tensor, dtype: str) -> np.ndarray:
    states = states.detach().to("cpu", torch.float32)
    if dtype == "float32":
        return states.numpy()
    if dtype == "float16":
        if float(states.abs().max()) > 6.0e4:
            raise ConfigError("teacher states exceed the float16 range; use the cache dtype "
                              "bfloat16 or float32")
        return states.half().numpy()
    return states.bfloat16().view(torch.int16).numpy()


def _decode(array: np.ndarray, dtype: str) -> Tensor:
    tensor = torch.from_numpy(np.array(array))
    if dtype == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor.float()


def _open(path: Path) -> np.ndarray | None:
    with contextlib.suppress(OSError, ValueError):
        return np.load(path, mmap_mode="r", allow_pickle=False)
    return None


def cache_key(loaded_sha256: str, teacher: ViT, preprocessing, images) -> str:
    """A short digest of what the cached states depend on: the teacher's weights (its
    checkpoint digest, else a digest of its parameters), the preprocessing and the image
    set (the preprocessed pixels when they are in memory, else the source's names)."""
    h = hashlib.sha256()
    if loaded_sha256:
        h.update(loaded_sha256.encode())
    else:
        for name, tensor in sorted(teacher.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().float().numpy().tobytes())
    h.update(json.dumps(teacher.cfg.to_dict(), sort_keys=True, default=str).encode())
    h.update(json.dumps(preprocessing.to_dict() if preprocessing is not None else None,
                        sort_keys=True, default=str).encode())
    pixels = getattr(images, "_all", None)
    if pixels is not None:
        h.update(pixels.contiguous().numpy().tobytes())
    else:
        source = getattr(images, "source", None)
        h.update(json.dumps([source.describe() if source is not None else "",
                             list(getattr(source, "names", []))]).encode())
    return h.hexdigest()[:16]
