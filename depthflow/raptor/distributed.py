"""Data-parallel training across processes started by ``torchrun`` (or spawned in tests).

``torchrun --nproc-per-node N -m depthflow.cli.fit ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`setup` then joins the process group
(NCCL on CUDA, gloo on CPU) and every rank takes ``batch_size / N`` images of each global
batch. Gradients are averaged by ``DistributedDataParallel``; rank 0 alone evaluates and
writes files. The process-group code is shared with the analysis: :mod:`depthflow.core.distributed`.
"""

from __future__ import annotations

from depthflow.core.distributed import (DistInfo, all_mean, barrier, broadcast_object, setup,
                                        teardown)

__all__ = ["DistInfo", "setup", "teardown", "barrier", "all_mean", "broadcast_object"]
