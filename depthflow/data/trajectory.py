"""Depth trajectories: the state of every token after every block, batch by batch."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor

from depthflow.core._memory import pin_mmap_threshold
from depthflow.data.images import Batch, ImageSource
from depthflow.errors import ConfigError
from depthflow.models.preprocessing import Preprocessing
from depthflow.models.vit import ViT

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclasses.dataclass
class TrajectoryBatch:
    batch: Batch
    states: Tensor            # (B, L+1, T, D), float32 (float64 when computing in float64)
    logits: Tensor | None     # (B, classes) when the model has a head


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device must be cpu, cuda[:N] or mps, got {str(device)!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} requested but CUDA is not available here; "
                          "use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {str(device)!r} requested but MPS is not available here; "
                          "use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be cpu, cuda[:N] or mps, got {str(device)!r}")
    return dev


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def compute_context(device: torch.device, dtype: torch.dtype):
    """bfloat16 runs under autocast (weights stay float32); others run natively."""
    if dtype == torch.bfloat16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_batch(model: ViT, batch: Batch, device: torch.device,
                  dtype: torch.dtype) -> TrajectoryBatch:
    """One batch's trajectory (call under ``torch.inference_mode()``; ``model`` already on
    ``device`` in the output dtype: float64 for float64, else float32)."""
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    images = batch.images.to(device=device, dtype=out_dtype)
    traj = state = None
    with compute_context(device, dtype):
        # each state is copied into the trajectory as it is made and then dropped: one batch
        # of states alive instead of the list of states plus their stacked copy
        for depth, state in model.iter_states(images):
            if traj is None:
                traj = torch.empty((state.shape[0], model.cfg.depth + 1, *state.shape[1:]),
                                   dtype=out_dtype, device=state.device)
            traj[:, depth] = state
        # the head on the whole batch (per-sample logits agree across batch sizes within
        # the reproducibility contract of docs/methods.md)
        logits = model.readout(state) if model.head is not None else None
    return TrajectoryBatch(batch, traj, None if logits is None else logits.to(out_dtype))


def iter_trajectories(model: ViT, source: ImageSource, *, preprocessing: Preprocessing | None,
                      batch_size: int = 64, device: str | torch.device = "cpu",
                      dtype: str = "float32", progress: bool = False) -> Iterator[TrajectoryBatch]:
    """Stream trajectories ``(B, L+1, T, D)`` for every batch of ``source``.

    Only one batch of states is alive at a time. Summaries are computed in float32 (float64
    when ``dtype="float64"``), whatever the compute dtype.
    """
    dev, tdtype = resolve_device(device), resolve_dtype(dtype)
    pin_mmap_threshold()              # flat resident memory over many batches
    out_dtype = torch.float64 if tdtype == torch.float64 else torch.float32
    model = model.to(device=dev, dtype=out_dtype).eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(source), unit="img", desc="trajectories", leave=False)
    try:
        for batch in source.batches(batch_size, preprocessing=preprocessing):
            # inference mode only around the forward pass: a generator suspended inside
            # the context would leave the consumer's thread in inference mode
            with torch.inference_mode():
                tb = forward_batch(model, batch, dev, tdtype)
            yield tb
            if bar is not None:
                bar.update(len(batch.labels))
    finally:
        if bar is not None:
            bar.close()
