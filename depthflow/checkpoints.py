"""depthflow's own checkpoint format: one safetensors file with a JSON header.

The safetensors metadata holds ``format = "depthflow"``, the ViT architecture
(``config``), the preprocessing and free-form ``info`` (training provenance, accuracy...).
A directory with ``config.json`` (``{"format": "depthflow", ...}``) and
``model.safetensors`` is accepted as well. Nothing here unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import ArchitectureError, CheckpointError
from .io import atomic_path, sha256_file
from .preprocessing import Preprocessing
from .vit import ViT, ViTConfig

FORMAT_NAME = "depthflow"
FORMAT_VERSION = "1"


@dataclasses.dataclass
class LoadedModel:
    """A ViT with everything known about where it came from."""

    model: ViT
    source: str
    format: str
    sha256: str | None = None
    preprocessing: Preprocessing | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def config(self) -> ViTConfig:
        return self.model.cfg

    def provenance(self) -> dict[str, Any]:
        return {
            "checkpoint": self.source,
            "checkpoint_format": self.format,
            "checkpoint_sha256": self.sha256 or "",
            "architecture": self.model.cfg.to_json(),
        }


def save_checkpoint(model: ViT, path: str | os.PathLike[str], *,
                    preprocessing: Preprocessing | None = None,
                    info: Mapping[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """Write ``model`` in depthflow's format (atomic; refuses to overwrite unless asked)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_json(),
        "preprocessing": preprocessing.to_json() if preprocessing else "",
        "info": json.dumps(dict(info or {}), sort_keys=True),
    }
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with corrupt files as CheckpointError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot read safetensors file {str(path)!r} (truncated or corrupt?): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return tensors, metadata


def is_depthflow_metadata(metadata: Mapping[str, str]) -> bool:
    return metadata.get("format") == FORMAT_NAME


def check_finite(state_dict: Mapping[str, Tensor], source: str) -> None:
    """Refuse weights with NaN or inf, naming the first bad tensors."""
    bad = [k for k, v in state_dict.items()
           if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(
            f"checkpoint {source!r} has NaN/inf values in {', '.join(bad[:3])}{more}")


def build_from_state_dict(cfg: ViTConfig, state_dict: Mapping[str, Tensor],
                          source: str) -> ViT:
    """Build a ViT and load ``state_dict`` (depthflow names) strictly, with clear errors."""
    model = ViT(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ArchitectureError(
            f"weights in {source!r} do not match the architecture: "
            f"missing {_preview(missing)}; unexpected {_preview(unexpected)}")
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
             for k, v in expected.items() if tuple(state_dict[k].shape) != tuple(v.shape)]
    if wrong:
        raise ArchitectureError(
            f"weights in {source!r} have shapes that do not match the architecture "
            f"(got vs expected): {_preview(wrong)}")
    check_finite(state_dict, source)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()})
    return model.eval()


def load_depthflow(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a checkpoint in depthflow's own format (file or directory)."""
    p = Path(path)
    if p.is_dir():
        cfg_path, weights = p / "config.json", p / "model.safetensors"
        try:
            meta = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read {str(cfg_path)!r}: {exc}") from exc
        tensors, _ = read_safetensors(weights)
        metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    else:
        tensors, metadata = read_safetensors(p)
    if not is_depthflow_metadata(metadata):
        raise CheckpointError(f"{str(p)!r} is not a depthflow checkpoint (no format header)")
    try:
        cfg = ViTConfig.from_dict(json.loads(metadata["config"]))
        pre_json = metadata.get("preprocessing") or ""
        pre = Preprocessing.from_dict(json.loads(pre_json)) if pre_json else None
        info = json.loads(metadata.get("info") or "{}")
    except (KeyError, json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"depthflow checkpoint {str(p)!r} has a broken header: {exc}") \
            from exc
    model = build_from_state_dict(cfg, tensors, str(p))
    return LoadedModel(model=model, source=str(p), format=FORMAT_NAME,
                       sha256=sha256_file(p), preprocessing=pre, info=info)


def _preview(items: list[str], limit: int = 4) -> str:
    if not items:
        return "none"
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
