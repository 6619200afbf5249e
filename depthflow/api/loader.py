"""One entry point that loads any model depthflow analyses: :func:`load_model`.

It resolves what the user named (nothing: the embedded digits ViT; a checkpoint path; a
named model of :mod:`depthflow.models.zoo`; a model named by its Hugging Face repo id or
torch hub name and found in the local caches by :mod:`depthflow.models.names`; a live
module; a fitted Raptor directory) and hands the reading to
:mod:`depthflow.models.checkpoints`. It sits above both
``depthflow.models`` and ``depthflow.raptor``: the Raptor reader is imported only when the
path declares the Raptor format.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from depthflow.errors import ArchitectureError, CheckpointError
from depthflow.models import names, zoo
from depthflow.models.checkpoints import (RAPTOR_FORMAT, LoadedModel, checkpoint_format,
                                          default_model_path, from_module, read_checkpoint)
from depthflow.models.formats import parse_arch

__all__ = ["load_model"]


def load_model(source: str | os.PathLike[str] | nn.Module | None = None, *,
               arch: str | Mapping[str, Any] | None = None) -> LoadedModel:
    """Load a ViT (or a fitted Raptor surrogate) from any supported source.

    Parameters
    ----------
    source
        ``None`` (the embedded default model); a path to a ``.safetensors``, ``.pth``,
        ``.pt``, ``.bin`` or ``.ckpt`` file, a Hugging Face model directory, a depthflow
        directory or a Raptor directory written by ``depthflow fit``; a named model known
        to :mod:`depthflow.models.zoo`; a Hugging Face repo id (``facebook/dinov2-small``,
        ``timm/vit_base_patch16_clip_224.openai``, optionally ``@revision``) or torch hub
        name (``dinov2_vits14_reg``) found in the local caches, never downloaded (see
        :mod:`depthflow.models.names`); or a ``torch.nn.Module`` (see
        :func:`depthflow.models.checkpoints.from_module`).
    arch
        Architecture overrides applied on top of what the weights imply (see
        :func:`depthflow.models.formats.parse_arch`); checked strictly against the weights.

    Returns
    -------
    LoadedModel
        The model in eval mode (float32) with its source, format, SHA-256 and default
        preprocessing.

    Raises
    ------
    CheckpointError
        Missing, unreadable, corrupt or unsafe (code-running pickle) checkpoints, NaN/inf
        weights.
    ArchitectureError
        Weights that match no supported ViT, or not the requested architecture.
    """
    overrides = parse_arch(arch)
    if isinstance(source, nn.Module):
        return from_module(source, arch=overrides)
    if source is None:
        path = default_model_path()
        if not path.is_file():
            raise CheckpointError(
                f"the embedded default model is missing from the install (expected "
                f"{str(path)!r}); reinstall depthflow or pass a checkpoint path")
        return _load_path(path, overrides)
    path = Path(os.fspath(source))
    if path.exists():
        if not (path.is_file() or path.is_dir()):      # a FIFO would block the read forever
            raise CheckpointError(f"checkpoint {str(source)!r} is not a regular file or "
                                  "directory (a FIFO, device or socket); refused without "
                                  "reading it")
        return _load_path(path, overrides)
    named = zoo.resolve_named(source) if isinstance(source, str) else None
    if named is not None:
        loaded = _load_path(Path(named), overrides)
        loaded.info.setdefault("path", str(named))
        loaded.source = str(source)
        return loaded
    found = names.resolve(source) if isinstance(source, str) else None
    if found is None:
        raise CheckpointError(
            f"checkpoint {str(source)!r} not found: no such file or directory, and not a "
            "named model; give a .safetensors/.pth file, a model directory or a model name "
            "(`depthflow models` lists them)")
    loaded = _load_path(found.path, overrides)
    loaded.info.update(found.info())
    loaded.source = found.name
    return loaded


def _load_path(path: Path, overrides: Mapping[str, Any]) -> LoadedModel:
    if checkpoint_format(path) == RAPTOR_FORMAT:          # a fitted Raptor surrogate
        if overrides:
            raise ArchitectureError(f"{str(path)!r} is a Raptor checkpoint; --arch does not "
                                    "apply")
        from depthflow.raptor.io import load_raptor

        return load_raptor(path)
    return read_checkpoint(path, overrides=overrides)
