"""Checkpoints of a long ``depthflow analyze`` run, so that ``--resume`` can continue it.

With ``resume=True`` a run keeps a directory ``.<output name>.resume/`` beside its output
(rank 0 writes it; a shared file system when several nodes run):

* ``meta.json``: what identifies the run (images, model, options, batch size); resuming
  with anything different is refused;
* ``values/<start>.npz``: the per-sample values of every global batch, written as they
  arrive at rank 0 (batches after the last checkpoint are written again on resume);
* ``state.pt``: every ``checkpoint_every`` steps, the number of global batches completed,
  the float64 sums (reduced over all processes onto rank 0; the others restart theirs
  from zero, so a later total is the same sum), the values every process must share (CKA
  shifts) and what plug-ins gather on rank 0 (kept trajectories), written atomically.

At the end the result file is written from ``values/`` in global order, then the directory
is removed. A run resumed after a kill writes the same file as an uninterrupted one
(per-sample values identical; sums equal up to float64 rounding of the summation order),
with any number of processes. A checkpoint left by a failed run is kept for ``--resume``;
a run without ``--resume`` removes it and starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depthflow.errors import ConfigError, InputError, OutputError

__all__ = ["RunStore", "store_path"]

FORMAT = 1


def store_path(output: str | os.PathLike[str]) -> Path:
    out = Path(output)
    return out.with_name(f".{out.name}.resume")


def fingerprint(*, loaded: Any, source: Any, config: Any, analyses: list) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed."""
    cfg = {k: v for k, v in config.to_dict().items()
           if k not in ("workers", "checkpoint_every", "device", "threads")}
    names = hashlib.sha256("\n".join(map(str, source.names)).encode()).hexdigest()
    return {"format": FORMAT, "images": source.describe(), "num_images": len(source),
            "image_names_sha256": names,
            "labels_sha256": hashlib.sha256(np.asarray(source.labels).tobytes()).hexdigest(),
            "model": json.loads(json.dumps(loaded.provenance(), sort_keys=True, default=str)),
            "config": json.loads(json.dumps(cfg, sort_keys=True, default=str)),
            "analyses": [[a.name, json.loads(a.config.to_json())
                          if hasattr(getattr(a, "config", None), "to_json") else None]
                         for a in analyses]}


class RunStore:
    """The checkpoint directory of one run (used on rank 0 only)."""

    def __init__(self, output: str | os.PathLike[str], meta: dict[str, Any], *,
                 every: int) -> None:
        self.root = store_path(output)
        self.meta = meta
        self.every = every
        self.state: dict[str, Any] | None = None

    # ----------------------------------------------------------------- opening
    def open(self, *, resume: bool) -> int:
        """Prepare the directory; return the global batches already completed (0 for a
        fresh run). Without ``resume`` any old checkpoint is removed."""
        if self.root.exists() and not resume:
            shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            try:
                meta = json.loads((self.root / "meta.json").read_text())
            except (OSError, ValueError):
                meta = None
            if meta is None:
                shutil.rmtree(self.root, ignore_errors=True)
            elif meta != self.meta:
                diff = sorted(k for k in set(meta) | set(self.meta)
                              if meta.get(k) != self.meta.get(k))
                raise ConfigError(
                    f"the checkpoint {str(self.root)!r} belongs to a different run ({', '.join(diff)} "
                    "differ); give the same command, or remove it to start afresh")
        try:
            (self.root / "values").mkdir(parents=True, exist_ok=True)
            _atomic_write_text(self.root / "meta.json", json.dumps(self.meta, sort_keys=True))
        except OSError as exc:
            raise OutputError(f"cannot write the checkpoint {str(self.root)!r}: "
                              f"{exc.strerror or exc}") from exc
        state_file = self.root / "state.pt"
        if resume and state_file.is_file():
            try:
                self.state = torch.load(state_file, map_location="cpu", weights_only=True)
            except Exception as exc:     # noqa: BLE001 - a torn file is a fresh start
                raise InputError(f"cannot read the checkpoint {str(state_file)!r} ({exc}); "
                                 "remove it to start afresh") from exc
            return int(self.state["batches_done"])
        return 0

    # ----------------------------------------------------------------- values
    def save_values(self, start: int, values: dict[str, Any]) -> None:
        arrays = {k: np.asarray(v) if not isinstance(v, list) else np.asarray(v, dtype=str)
                  for k, v in values.items()}
        path = self.root / "values" / f"{start:012d}.npz"
        tmp = path.with_suffix(".tmp.npz")
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)

    def replay(self, summaries: Any, writer: Any, total: int) -> None:
        """Append every saved batch to ``writer`` in global order."""
        files = sorted((self.root / "values").glob("[0-9]*.npz"))
        for path in files:
            if int(path.stem) != writer.n:
                raise InputError(f"the checkpoint {str(self.root)!r} lacks the batch "
                                 f"starting at image {writer.n}; remove it and rerun")
            with np.load(path, allow_pickle=False) as data:
                values = {k: (list(data[k]) if data[k].dtype.kind == "U" else data[k])
                          for k in data.files}
            summaries.append(values, writer)
        if writer.n != total:
            raise InputError(f"the checkpoint {str(self.root)!r} holds {writer.n} of "
                             f"{total} images; remove it and rerun")

    # ----------------------------------------------------------------- state
    def due(self, step: int, steps: int) -> bool:
        return (step + 1) % self.every == 0 and step + 1 < steps

    def save_state(self, state: dict[str, Any]) -> None:
        path = self.root / "state.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_cpu(value: Any) -> Any:
    """Tensors (in dicts and lists) moved to the CPU, for ``torch.save``."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value

