"""What a fit was trained from, as digests: ``fit --resume`` refuses to mix runs.

Recorded in ``fit_config.json`` (``digests``) when a fit starts, compared when it resumes:

* ``teacher``: the SHA-256 of the teacher's checkpoint file when it has one, else of its
  weights (every tensor of the state dict, names and bytes, in sorted order);
* ``training_set``: the SHA-256 of the training images' names and labels and, when they
  are preloaded (small sets), of the preprocessed pixels;
* ``recipe``: the SHA-256 of the options that shape the training (every option except the
  ones a resume may change, :data:`~depthflow.raptor.config.RESUMABLE_CHANGES`).

A resumed run whose teacher, training set or recipe differs stops with one line naming what
differs (both digests, shortened), before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch

from depthflow.errors import ConfigError

__all__ = ["fit_digests", "check_resume_digests"]


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().tobytes()


def teacher_digest(loaded: Any) -> str:
    if getattr(loaded, "sha256", None):
        return str(loaded.sha256)
    digest = hashlib.sha256()
    for name, tensor in sorted(loaded.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def training_set_digest(source: Any, images: Any = None) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(list(map(str, source.names))).encode())
    digest.update(np.asarray(source.labels, dtype=np.int64).tobytes())
    preloaded = getattr(images, "_all", None)
    if isinstance(preloaded, torch.Tensor):
        digest.update(_tensor_bytes(preloaded.float()))
    return digest.hexdigest()


def recipe_digest(config: Any) -> str:
    from depthflow.raptor.config import RESUMABLE_CHANGES

    values = {k: v for k, v in config.to_dict().items()
              if k not in RESUMABLE_CHANGES and k not in ("thresholds", "assignment")}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def fit_digests(loaded: Any, source: Any, images: Any, config: Any) -> dict[str, str]:
    """The digests of a fit's teacher, training set and recipe (see the module docstring)."""
    return {"teacher": teacher_digest(loaded), "training_set": training_set_digest(source, images),
            "recipe": recipe_digest(config)}


def check_resume_digests(saved: dict[str, Any], now: dict[str, str], directory: Any) -> None:
    """:class:`ConfigError` naming every digest of ``now`` that differs from ``saved`` (a
    run recorded without digests, by an older depthflow, is not checked)."""
    if not isinstance(saved, dict) or not saved:
        return
    what = {"teacher": "teacher", "training_set": "training set", "recipe": "recipe"}
    differ = [k for k in what if k in saved and saved[k] != now.get(k)]
    if differ:
        detail = ", ".join(f"{what[k]} (saved {str(saved[k])[:12]}, now "
                           f"{str(now.get(k))[:12]})" for k in differ)
        raise ConfigError(f"cannot resume {str(directory)!r}: a different {detail}; resume "
                          "with the run's own inputs (omit them to use the recorded ones) or "
                          "start a new fit")
