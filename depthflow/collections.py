"""Large image collections and batch loading for long (and distributed) runs.

Loading: :func:`read_batch` reads one span ``[start, stop)`` of any
:class:`~depthflow.images.ImageSource` as a model-ready :class:`~depthflow.images.Batch`;
:func:`load_batches` yields the spans of one rank in order, in this process
(``workers=0``) or decoded ahead by ``workers`` worker processes (a
``torch.utils.data.DataLoader`` over spans), so that decoding overlaps the forward pass.
A worker's error comes back as the same one-line error, never a worker traceback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from depthflow.errors import ConfigError
from depthflow.images import Batch, ImageSource, _prepare

__all__ = ["read_batch", "load_batches"]


def read_batch(source: ImageSource, start: int, stop: int, *, preprocessing=None) -> Batch:
    """Images ``start..stop-1`` of ``source`` as a model-ready batch (what
    ``source.batches`` yields for that span)."""
    raw = source._read(start, stop)
    images = _prepare(raw, preprocessing, source.names[start:stop])
    return Batch(images=images, labels=torch.from_numpy(source.labels[start:stop]),
                 names=list(source.names[start:stop]))


@dataclasses.dataclass
class _Failure:
    """An exception raised in a worker, carried back to be raised again."""

    error: BaseException


class _Spans(torch.utils.data.Dataset):
    def __init__(self, source: ImageSource, spans: Sequence[tuple[int, int]],
                 preprocessing) -> None:
        self.source, self.spans, self.preprocessing = source, list(spans), preprocessing

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> Any:
        start, stop = self.spans[i]
        try:
            return read_batch(self.source, start, stop, preprocessing=self.preprocessing)
        except Exception as exc:        # noqa: BLE001 - re-raised in the main process
            try:
                import pickle

                pickle.dumps(exc)
                return _Failure(exc)
            except Exception:           # noqa: BLE001
                return _Failure(RuntimeError(f"{type(exc).__name__}: {exc}"))


def _identity(item: Any) -> Any:
    return item


def load_batches(source: ImageSource, spans: Sequence[tuple[int, int]], *, preprocessing=None,
                 workers: int = 0, prefetch: int = 2) -> Iterator[Batch]:
    """Yield the batches of ``spans`` (in order). ``workers > 0`` decodes them in that many
    worker processes, ``prefetch`` batches ahead each."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be an integer >= 0, got {workers!r}")
    if workers == 0 or len(spans) == 0:
        for start, stop in spans:
            yield read_batch(source, start, stop, preprocessing=preprocessing)
        return
    loader = torch.utils.data.DataLoader(
        _Spans(source, spans, preprocessing), batch_size=None, shuffle=False,
        num_workers=min(workers, len(spans)), prefetch_factor=prefetch,
        collate_fn=_identity, worker_init_fn=_worker_init)
    for item in loader:
        if isinstance(item, _Failure):
            raise item.error
        yield item


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)          # decoding only: leave the cores to the forward pass
