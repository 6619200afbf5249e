"""Reading ViT checkpoints (files, directories, live modules) and depthflow's own format.

:func:`read_checkpoint` reads a path (DINOv2 hub or timm ``.pth``/``.safetensors``, a
Hugging Face model directory, a depthflow file or directory); :func:`from_module` a live
module; both return a :class:`LoadedModel`. Named models and Raptor directories are
resolved one level up, by :func:`depthflow.load_model`. Key renaming and architecture
inference live in :mod:`depthflow.models.formats` and :mod:`depthflow.models.arch`.

depthflow's own format is one safetensors file whose metadata holds ``format =
"depthflow"``, the ViT architecture (``config``), the preprocessing and free-form ``info``
(training provenance, accuracy...); a directory with ``config.json`` (``{"format":
"depthflow", ...}``) and ``model.safetensors`` is accepted as well.

Nothing here unpickles anything beyond tensors: ``.pth`` files are read with
``torch.load(weights_only=True)`` only, and pickles that need more are refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from depthflow.errors import ArchitectureError, CheckpointError, ConfigError
from depthflow.models.formats import (convert_state_dict, default_preprocessing, hf_style,
                                      parse_arch, preprocessing_from_hf, timm_hints)
from depthflow.io.files import atomic_path, sha256_file
from depthflow.models.preprocessing import (Preprocessing, preprocessing_from_openclip,
                                            preprocessing_from_timm)
from depthflow.models.vit import ViT, ViTConfig

FORMAT_NAME = "depthflow"
FORMAT_VERSION = "1"
RAPTOR_FORMAT = "depthflow-raptor"    # declared by Raptor checkpoints (depthflow.raptor.io)


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
        record = {
            "checkpoint": self.source,
            "checkpoint_format": self.format,
            "checkpoint_sha256": self.sha256 or "",
            "architecture": self.model.cfg.to_json(),
        }
        converted = getattr(self.model, "weight_conversion", None)
        if converted:                     # mixed float dtypes read as float32: say so
            record["checkpoint_weight_conversion"] = converted
        return record


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
        _canonicalize_header(tmp)
    return Path(path)


def _canonicalize_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys so equal content gives equal bytes.

    safetensors serialises its header from a hash map, in an order that changes between
    runs; sorting it makes the file (and its sha256) reproducible.
    """
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + size:])


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
    kinds = check_dtypes(state_dict, expected, source)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()})
    if len(kinds) > 1:
        model.weight_conversion = f"{', '.join(kinds)} -> float32"
    return model.eval()


def check_dtypes(state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor],
                 source: str) -> list[str]:
    """Integer (quantised) or boolean weights where the model has floats are refused;
    weights mixing float dtypes are converted to the model's float32, with a one-line
    warning naming the dtypes found, and recorded (``checkpoint_weight_conversion`` in the
    provenance of every result). Returns the float dtypes found."""
    wrong = [f"{k} ({v.dtype})".replace("torch.", "") for k, v in state_dict.items()
             if torch.is_floating_point(expected[k]) and not torch.is_floating_point(v)]
    if wrong:
        raise CheckpointError(
            f"checkpoint {source!r} has integer weights where floats are expected "
            f"({_preview(wrong)}); quantised checkpoints are not read: dequantise them first")
    kinds = sorted({str(v.dtype).replace("torch.", "") for v in state_dict.values()
                    if torch.is_floating_point(v)})
    if len(kinds) > 1:
        import logging
        logging.getLogger("depthflow").warning(
            "depthflow: checkpoint %s mixes %s weights; all converted to float32", source,
            ", ".join(kinds))
    return kinds


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
    return _depthflow_from_tensors(tensors, metadata, p)


def _depthflow_from_tensors(tensors: Mapping[str, Tensor], metadata: Mapping[str, str],
                            p: Path, overrides: Mapping[str, Any] | None = None) -> LoadedModel:
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
    if overrides:
        cfg = cfg.replace(**overrides)
    model = build_from_state_dict(cfg, tensors, str(p))
    return LoadedModel(model=model, source=str(p), format=FORMAT_NAME,
                       sha256=sha256_file(p), preprocessing=pre, info=info)


# --------------------------------------------------------------------------- any checkpoint
DEFAULT_MODEL_FILE = "digits_vit.safetensors"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
CONTAINER_KEYS = ("state_dict", "model", "teacher", "module", "model_state_dict")


def default_model_path() -> Path:
    """Where the embedded default model (a small digits ViT) lives in the install."""
    return Path(__file__).resolve().parent.parent / "assets" / DEFAULT_MODEL_FILE


def read_checkpoint(path: str | os.PathLike[str], *,
                    overrides: Mapping[str, Any] | None = None) -> LoadedModel:
    """Load an existing ViT checkpoint file or directory (no named-model lookup, no Raptor:
    :func:`depthflow.load_model` resolves those)."""
    p = Path(path)
    if not os.access(p, os.R_OK) or (p.is_dir() and not os.access(p, os.X_OK)):
        raise CheckpointError(
            f"cannot read checkpoint {str(p)!r}: permission denied; check its permissions")
    if p.is_dir():
        return _load_directory(p, dict(overrides or {}))
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        tensors, metadata = read_safetensors(p)
        if is_depthflow_metadata(metadata):
            return _depthflow_from_tensors(tensors, metadata, p, overrides)
    elif suffix in TORCH_SUFFIXES:
        tensors = read_torch_file(p)
    else:
        raise CheckpointError(
            f"{str(p)!r}: unsupported checkpoint type {suffix or '(no extension)'!r}; expected "
            f".safetensors, {', '.join(TORCH_SUFFIXES)} or a model directory")
    return _from_state_dict(tensors, p, overrides=overrides)


def checkpoint_format(path: str | os.PathLike[str]) -> str | None:
    """The ``format`` a checkpoint declares (a directory's ``config.json`` or a safetensors
    header), read cheaply; ``None`` when it declares none or cannot be read."""
    p = Path(path)
    try:
        if p.is_dir():
            return json.loads((p / "config.json").read_text()).get("format")
        if p.suffix.lower() == ".safetensors" and p.is_file():
            with open(p, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                if size > 100 << 20:
                    return None
                header = json.loads(handle.read(size))
            return header.get("__metadata__", {}).get("format")
    except (OSError, ValueError, AttributeError):
        return None
    return None


OPENCLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _load_directory(p: Path, overrides: dict[str, Any]) -> LoadedModel:
    config_file = p / "config.json"
    openclip = p / "open_clip_config.json"
    if openclip.is_file() and not (config_file.is_file() and _has_hf_weights(p)):
        return _load_openclip_directory(p, overrides)
    if not config_file.is_file():
        raise CheckpointError(
            f"directory {str(p)!r} has no config.json; expected a Hugging Face model "
            "directory (config.json + model.safetensors), a timm or OpenCLIP hub directory, "
            "or a depthflow checkpoint directory")
    config = _read_json(config_file)
    if config.get("format") == FORMAT_NAME:
        tensors, _ = read_safetensors(p / "model.safetensors")
        metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
        return _depthflow_from_tensors(tensors, metadata, p, overrides)
    if "architecture" in config and "model_type" not in config:
        return _load_timm_directory(p, config, overrides)
    hf_style(config)                      # unsupported model types fail before reading
    return _from_state_dict(read_hf_weights(p), p, overrides=overrides, hf_config=config)


def _has_hf_weights(p: Path) -> bool:
    return any((p / name).is_file() for name in
               ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))


def _load_openclip_directory(p: Path, overrides: dict[str, Any]) -> LoadedModel:
    """An OpenCLIP hub directory: ``open_clip_config.json`` + ``open_clip_model.safetensors``
    (or ``open_clip_pytorch_model.bin``)."""
    meta = _read_json(p / "open_clip_config.json")
    weights = next((p / n for n in OPENCLIP_FILES if (p / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"OpenCLIP directory {str(p)!r} has no weights; expected one of "
                              f"{', '.join(OPENCLIP_FILES)}")
    tensors = (read_safetensors(weights)[0] if weights.suffix == ".safetensors"
               else read_torch_file(weights))
    model_cfg = check_openclip_config(meta, p / "open_clip_config.json")
    notes: list[str] = []
    style, cfg, converted = _convert(tensors, str(p), style="openclip", model_cfg=model_cfg,
                                     overrides=overrides, notes=notes)
    _check_agrees(model_cfg.get("vision_cfg") or {}, cfg, p / "open_clip_config.json",
                  {"width": "embed_dim", "layers": "depth", "patch_size": "patch_size",
                   "image_size": "img_size"}, overrides)
    model = build_from_state_dict(cfg, converted, str(p))
    pre_cfg = meta.get("preprocess_cfg")
    if isinstance(pre_cfg, dict):
        pre, source = preprocessing_from_openclip(pre_cfg, cfg.img_size), "open_clip_config.json"
    else:
        pre, source = default_preprocessing(style, cfg), f"family default ({style})"
    info = {**_info(style, notes), "preprocessing_source": source}
    return LoadedModel(model=model, source=str(p), format=style, sha256=sha256_file(weights),
                       preprocessing=pre, info=info)


def _load_timm_directory(p: Path, config: Mapping[str, Any],
                         overrides: dict[str, Any]) -> LoadedModel:
    """A timm hub directory: ``config.json`` with ``architecture`` and ``pretrained_cfg``,
    plus ``model.safetensors`` / ``pytorch_model.bin`` in timm's names."""
    notes: list[str] = []
    if not isinstance(config["architecture"], str) or not config["architecture"].strip():
        raise ConfigError(f"{str(p / 'config.json')!r}: field 'architecture' must be a "
                          f"non-empty string (a timm model name), got "
                          f"{config['architecture']!r}")
    hints = timm_hints(str(config["architecture"]))
    style, cfg, converted = _convert(read_hf_weights(p), str(p), style="timm", hints=hints,
                                     overrides=overrides, notes=notes)
    model = build_from_state_dict(cfg, converted, str(p))
    pre_cfg = config.get("pretrained_cfg")
    if isinstance(pre_cfg, dict) and cfg.in_chans == 3:
        pre, source = preprocessing_from_timm(pre_cfg), "timm pretrained_cfg"
    else:
        pre, source = default_preprocessing(style, cfg), "family default (timm)"
    info = {**_info(style, notes), "architecture": str(config["architecture"]),
            "preprocessing_source": source}
    return LoadedModel(model=model, source=str(p), format=style, sha256=sha256_file(p),
                       preprocessing=pre, info=info)


def _from_state_dict(tensors: Mapping[str, Tensor], p: Path, *,
                     overrides: Mapping[str, Any] | None,
                     hf_config: Mapping[str, Any] | None = None) -> LoadedModel:
    notes: list[str] = []
    style, cfg, converted = _convert(tensors, str(p), hf_config=hf_config, overrides=overrides,
                                     notes=notes)
    model = build_from_state_dict(cfg, converted, str(p))
    processor = p / "preprocessor_config.json"
    if style.startswith("hf-") and p.is_dir():
        pre = hf_preprocessing(processor, style, cfg)
        source = ("preprocessor_config.json" if processor.is_file()
                  else f"family default ({style})")
    else:
        pre, source = default_preprocessing(style, cfg), f"family default ({style})"
    return LoadedModel(model=model, source=str(p), format=style, sha256=sha256_file(p),
                       preprocessing=pre,
                       info={**_info(style, notes), "preprocessing_source": source})


def _info(style: str, notes: list[str]) -> dict[str, Any]:
    return {"style": style, **({"notes": list(notes)} if notes else {})}


def _convert(tensors: Mapping[str, Tensor], source: str, **kwargs: Any,
             ) -> tuple[str, ViTConfig, dict[str, Tensor]]:
    try:
        return convert_state_dict(tensors, **kwargs)
    except ArchitectureError as exc:
        raise ArchitectureError(f"checkpoint {source!r}: {exc}") from exc


def hf_preprocessing(path: Path, style: str, cfg: ViTConfig) -> Preprocessing | None:
    """Preprocessing from an HF ``preprocessor_config.json``, or the style's default."""
    if not path.is_file():
        return default_preprocessing(style, cfg)
    try:
        return preprocessing_from_hf(_read_json(path), style, cfg)
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot use {str(path)!r}: {_first_line(exc)}") from exc


# --------------------------------------------------------------------------- live modules
def from_module(obj: Any, *, arch: str | Mapping[str, Any] | None = None) -> LoadedModel:
    """Wrap a live model: a depthflow ViT (as is), an HF Dinov2/ViT model, or a timm or
    DINOv2-hub VisionTransformer (weights copied into a depthflow ViT, float32, eval).

    HF models are recognised by ``obj.config.model_type`` (``*ForImageClassification``
    wrappers give their backbone and classifier), timm/hub ones by ``blocks``,
    ``patch_embed`` and ``cls_token``; the heads, norm eps and interpolation convention are
    read off the module. The format is ``"module"``; ``info["style"]`` says which.
    """
    overrides = parse_arch(arch)
    label = f"module:{type(obj).__name__}"
    if isinstance(obj, ViT):
        model = obj
        if overrides:
            model = build_from_state_dict(obj.cfg.replace(**overrides), obj.state_dict(), label)
        return LoadedModel(model=model, source=label, format="module", info={"style": FORMAT_NAME})
    if not isinstance(obj, nn.Module):
        raise CheckpointError(
            "from_module expects a torch.nn.Module (a depthflow ViT, a Hugging Face "
            f"Dinov2Model/ViTModel or a timm/DINOv2-hub VisionTransformer), got "
            f"{type(obj).__name__}")
    model_type = getattr(getattr(obj, "config", None), "model_type", None)
    if model_type is not None:
        config = obj.config.to_dict() if hasattr(obj.config, "to_dict") else vars(obj.config)
        kwargs: dict[str, Any] = {"hf_config": config}
    elif all(hasattr(obj, name) for name in ("blocks", "patch_embed", "cls_token")):
        kwargs = _vit_module_hints(obj)
    else:
        raise ArchitectureError(
            f"cannot recognise {type(obj).__name__} as a ViT: expected a Hugging Face model "
            "(config.model_type) or a timm/DINOv2-hub VisionTransformer (blocks, patch_embed, "
            "cls_token)")
    tensors = {k: v.detach().cpu() for k, v in obj.state_dict().items()}
    notes: list[str] = []
    style, cfg, converted = _convert(tensors, label, overrides=overrides, notes=notes, **kwargs)
    model = build_from_state_dict(cfg, converted, label)
    return LoadedModel(model=model, source=label, format="module",
                       preprocessing=default_preprocessing(style, cfg), info=_info(style, notes))


def _vit_module_hints(obj: nn.Module) -> dict[str, Any]:
    blocks = [m for m in obj.blocks.modules() if hasattr(m, "attn") and hasattr(m, "mlp")]
    for block in blocks:
        if not all(hasattr(block, name) for name in ("norm1", "ls1", "norm2", "ls2")):
            raise ArchitectureError(
                f"{type(obj).__name__} uses {type(block).__name__} blocks, not the pre-norm "
                "x + ls1(attn(norm1 x)), x + ls2(mlp(norm2 x)) blocks depthflow implements")
        _check_activation(block.mlp, type(obj).__name__)
    hints: dict[str, Any] = {}
    heads = getattr(obj, "num_heads", None) or (
        getattr(blocks[0].attn, "num_heads", None) if blocks else None)
    if heads:
        hints["num_heads"] = int(heads)
    eps = getattr(getattr(obj, "norm", None), "eps", None)
    if eps is not None:
        hints["norm_eps"] = float(eps)
    if hasattr(obj, "rope_embed") or hasattr(obj, "storage_tokens"):   # DINOv3 hub
        return {"style": "dinov3-hub", "hints": hints}
    if hasattr(obj, "interpolate_offset"):                      # DINOv2 hub
        hints.update(interp_offset=float(obj.interpolate_offset),
                     interp_antialias=bool(getattr(obj, "interpolate_antialias", False)))
        return {"style": "dinov2-hub", "hints": hints}
    pool, head = getattr(obj, "global_pool", "token"), getattr(obj, "head", None)
    if pool not in ("token", "", None) and isinstance(head, nn.Module) and \
            any(True for _ in head.parameters()):
        raise ArchitectureError(
            f"this timm model pools with global_pool={pool!r} before its head, but depthflow's "
            "readout uses the cls token; drop the head first (model.reset_classifier(0))")
    return {"style": "timm", "hints": hints,
            "no_embed_class": bool(getattr(obj, "no_embed_class", False))}


def _check_activation(mlp: nn.Module, owner: str) -> None:
    act = getattr(mlp, "act", None)
    if act is None or isinstance(act, nn.Identity):
        return
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    gated = hasattr(mlp, "fc1_g") or (
        isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
        and fc1.out_features == 2 * fc2.in_features)
    if gated and getattr(mlp, "gate_last", False):
        raise ArchitectureError(
            f"{owner} has a GLU MLP with the gate on the second half (gate_last=True); "
            "depthflow's SwiGLU gates the first half")
    ok = isinstance(act, nn.SiLU) if gated else (
        isinstance(act, nn.GELU) and act.approximate == "none")
    if not ok:
        raise ArchitectureError(
            f"{owner} uses {act!r} in a {'gated' if gated else 'plain'} MLP; depthflow "
            "implements the exact GELU MLP and the SiLU-gated (SwiGLU) MLP only")


def read_hf_weights(directory: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Tensors of a Hugging Face model directory: single, sharded or ``pytorch_model.bin``."""
    p = Path(directory)
    if (p / "model.safetensors").is_file():
        return read_safetensors(p / "model.safetensors")[0]
    index = p / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{str(index)!r} has no weight_map; the index is broken")
        shards = [p / name for name in sorted(set(weight_map.values()))]
    else:
        shards = sorted(p.glob("model-*-of-*.safetensors"))
    if shards:
        tensors: dict[str, Tensor] = {}
        for shard in shards:
            if not shard.is_file():
                raise CheckpointError(f"shard {str(shard)!r} listed in {str(index)!r} is missing")
            tensors.update(read_safetensors(shard)[0])
        return tensors
    if (p / "pytorch_model.bin").is_file():
        return read_torch_file(p / "pytorch_model.bin")
    raise CheckpointError(
        f"model directory {str(p)!r} has no weights; expected model.safetensors, sharded "
        "model-0000x-of-0000y.safetensors (with model.safetensors.index.json) or "
        "pytorch_model.bin")


def read_torch_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """State dict of a ``.pth``/``.pt``/``.bin``/``.ckpt`` file, read with
    ``torch.load(weights_only=True)`` only: pickles that would build arbitrary objects (or
    run code) are refused, never executed."""
    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise CheckpointError(
                f"cannot read checkpoint {str(p)!r} (truncated or corrupt?): "
                f"{_first_line(exc)}") from exc
        raise CheckpointError(
            f"depthflow refuses to unpickle {str(p)!r}: it holds Python objects other than "
            "tensors, and unpickling them could run arbitrary code. If you trust it, convert "
            "it to safetensors elsewhere (safetensors.torch.save_file(state_dict, "
            "'model.safetensors')) and load that") from exc
    except Exception as exc:  # torch raises many types (OSError, EOFError, RuntimeError...)
        raise CheckpointError(
            f"cannot read checkpoint {str(p)!r} (truncated or corrupt?): "
            f"{_first_line(exc)}") from exc
    return unwrap_state_dict(obj, str(p))


def unwrap_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """The tensor mapping inside common containers (``{"model": sd}``, ``{"state_dict": sd}``,
    ``{"teacher": sd}``); key prefixes are handled by :func:`depthflow.models.formats.strip_prefixes`."""
    for _ in range(len(CONTAINER_KEYS) + 1):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj, Mapping)
                      and isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    found = (f"a mapping with keys {_preview(sorted(map(str, obj)))}"
             if isinstance(obj, Mapping) else f"a {type(obj).__name__}")
    raise CheckpointError(
        f"{source!r} holds {found}, not a state dict of tensors; expected name -> tensor, "
        f"possibly inside one of {', '.join(CONTAINER_KEYS)}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_openclip_config(meta: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The ``model_cfg`` of an ``open_clip_config.json``, its fields checked for type and
    range (one ConfigError naming the field and the value); {} when there is none."""
    model_cfg = meta.get("model_cfg", {})
    where = f"{str(path)!r}"
    if not isinstance(model_cfg, dict):
        raise ConfigError(f"{where}: field 'model_cfg' must be a JSON object, got "
                          f"{type(model_cfg).__name__}")
    if "quick_gelu" in model_cfg and not isinstance(model_cfg["quick_gelu"], bool):
        raise ConfigError(f"{where}: field 'model_cfg.quick_gelu' must be true or false, "
                          f"got {model_cfg['quick_gelu']!r}")
    vision = model_cfg.get("vision_cfg", {})
    if not isinstance(vision, dict):
        raise ConfigError(f"{where}: field 'model_cfg.vision_cfg' must be a JSON object, got "
                          f"{type(vision).__name__}")
    for key in ("width", "layers", "head_width", "patch_size"):
        if key in vision and not _positive_int(vision[key]):
            raise ConfigError(f"{where}: field 'model_cfg.vision_cfg.{key}' must be a "
                              f"positive integer, got {vision[key]!r}")
    size = vision.get("image_size")
    if size is not None and not (_positive_int(size) or (
            isinstance(size, list) and len(size) == 2 and all(map(_positive_int, size))
            and size[0] == size[1])):
        raise ConfigError(f"{where}: field 'model_cfg.vision_cfg.image_size' must be a "
                          f"positive integer (or a square [h, w]), got {size!r}")
    return model_cfg


def _check_agrees(fields: Mapping[str, Any], cfg: ViTConfig, path: Path,
                  names: Mapping[str, str], overrides: Mapping[str, Any] | None) -> None:
    """A config file field that disagrees with the architecture read from the weights is
    an error naming both values (fields that ``--arch`` overrides are not compared)."""
    for key, attr in names.items():
        if key not in fields or attr in (overrides or {}):
            continue
        value = fields[key][0] if isinstance(fields[key], list) else fields[key]
        have = getattr(cfg, attr)
        if value != have:
            raise ConfigError(f"{str(path)!r} says {key} = {value} but the weights have "
                              f"{attr} = {have}; the config and the weights disagree")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r}: {_first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _preview(items: list[str], limit: int = 4) -> str:
    if not items:
        return "none"
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
