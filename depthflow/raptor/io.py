"""Raptor checkpoints: safetensors + JSON config, written atomically.

A fitted surrogate is a directory::

    raptor2/
      model.safetensors     # every tensor (blocks + the teacher's embedding/norm/head);
                            # its metadata repeats config.json, so the file alone loads
      config.json           # {"format": "depthflow-raptor", "teacher": ViTConfig,
                            #  "raptor": RaptorConfig, "preprocessing", "info"}
      training_state.pt     # resume record (tensors + plain values only)

:func:`load_raptor` reads the directory or the ``.safetensors`` file alone;
:func:`depthflow.load_model` recognises both and returns a ``LoadedModel``
whose ``.model`` is the :class:`~depthflow.raptor.model.Raptor`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from depthflow.models.checkpoints import (RAPTOR_FORMAT, checkpoint_format, LoadedModel,
                                          _canonicalize_header, check_finite, read_safetensors)
from depthflow.errors import ArchitectureError, CheckpointError, OutputError
from depthflow.io.files import atomic_path, sha256_file
from depthflow.models.preprocessing import Preprocessing
from depthflow.models.vit import ViTConfig
from depthflow.raptor.model import Raptor, RaptorConfig

FORMAT_NAME = RAPTOR_FORMAT
FORMAT_VERSION = "1"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"


def raptor_metadata(model: Raptor, *, preprocessing: Preprocessing | None,
                    info: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "teacher": model.cfg.to_dict(),
        "raptor": model.raptor_cfg.to_dict(),
        "preprocessing": preprocessing.to_dict() if preprocessing else None,
        "info": dict(info or {}),
    }


def save_raptor(model: Raptor, directory: str | os.PathLike[str], *,
                preprocessing: Preprocessing | None = None,
                info: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` then ``config.json`` into ``directory`` (each atomic)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    meta = raptor_metadata(model, preprocessing=preprocessing, info=info)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    text = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in meta.items()}
    try:
        directory.mkdir(exist_ok=True)
        with atomic_path(directory / MODEL_FILE, overwrite=True) as tmp:
            save_file(tensors, str(tmp), metadata=text)
            _canonicalize_header(tmp)
        write_json(directory / CONFIG_FILE, meta)
    except OSError as exc:
        raise OutputError(f"cannot write the Raptor checkpoint in {str(directory)!r}: "
                          f"{exc.strerror or exc}") from exc
    return directory


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def is_raptor_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Raptor checkpoint directory or file (cheap header check)."""
    return checkpoint_format(path) == FORMAT_NAME


def load_raptor(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a Raptor checkpoint (directory or ``model.safetensors``) as a LoadedModel."""
    p = Path(path)
    weights = p / MODEL_FILE if p.is_dir() else p
    if not weights.is_file():
        raise CheckpointError(f"{str(p)!r} has no {MODEL_FILE}; not a Raptor checkpoint")
    tensors, metadata = read_safetensors(weights)
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{str(weights)!r} is not a Raptor checkpoint (format "
                              f"{metadata.get('format')!r}, expected {FORMAT_NAME!r})")
    try:
        teacher_cfg = ViTConfig.from_dict(json.loads(metadata["teacher"]))
        raptor_cfg = RaptorConfig.from_dict(json.loads(metadata["raptor"]))
        pre = json.loads(metadata.get("preprocessing") or "null")
        info = json.loads(metadata.get("info") or "{}")
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"Raptor checkpoint {str(p)!r} has a broken header: {exc}") \
            from exc
    model = Raptor(teacher_cfg, raptor_cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ArchitectureError(
            f"weights in {str(p)!r} do not match the Raptor config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")
    check_finite(tensors, str(p))
    model.load_state_dict(tensors)
    return LoadedModel(model=model.eval(), source=str(p), format=FORMAT_NAME,
                       sha256=sha256_file(weights),
                       preprocessing=Preprocessing.from_dict(pre) if pre else None,
                       info={**info, "raptor": raptor_cfg.to_json()})


# --------------------------------------------------------------------------- resume state
def save_state(state: Mapping[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Write the resume record (tensors and plain Python values only) atomically."""
    path = Path(directory) / STATE_FILE
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    try:
        with atomic_path(path, overwrite=True) as tmp:
            tmp.write_bytes(buffer.getvalue())
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    return path


def load_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a resume record with ``torch.load(weights_only=True)`` (no code runs)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"nothing to resume in {str(directory)!r}: no {STATE_FILE}; give the output "
            "directory of an interrupted 'depthflow fit' run")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r} (truncated or corrupt?): "
                              f"{str(exc).splitlines()[0] if str(exc) else exc}") from exc
