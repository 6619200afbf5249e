"""Intra-op CPU threads: an explicit count for a run, and fewer for small operations.

Every intra-op parallel operation synchronises its threads. Thousands of small operations
(the JVP chains of the dynamics analyses on a small model) gain nothing from a second
thread on an idle machine and lose a great deal on a busy one, where each operation waits
for a descheduled thread (docs/guide.md ("Speed")). :func:`threads_for` picks one thread per
``per_thread`` numbers of the operands, at most the current count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["intra_op_threads", "threads_for", "PER_THREAD"]

PER_THREAD = 1 << 19          # numbers per thread worth a thread (about 2 MiB of float32)


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the enclosed code with ``threads`` intra-op CPU threads (``None``: unchanged,
    i.e. ``OMP_NUM_THREADS`` when set, else torch's default), restoring the count after."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_for(numbers: int, *, per_thread: int = PER_THREAD) -> int:
    """Threads worth using for operations on ``numbers`` elements: one per ``per_thread``,
    at least 1, at most the current count."""
    return max(1, min(torch.get_num_threads(), int(numbers) // int(per_thread)))
