"""Named models from local caches (depthflow.models.names), offline.

Every cache here is built in a temporary directory with the owning library's layout
(Hugging Face hub: ``models--org--name/{blobs,refs,snapshots}`` with symlinked files; torch
hub: ``hub/checkpoints/<url file name>``) and selected through the environment variables
those libraries read. ``huggingface_hub``'s own cache lookup is the oracle for the HF layout.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save

from depthflow.errors import CheckpointError
from depthflow.api.loader import load_model
from depthflow.models import names
from depthflow.models.vit import ViT, ViTConfig

from _models import randomize_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CACHE_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME",
              "TORCH_HOME")
TINY = dict(embed_dim=32, depth=2, num_heads=4, patch_size=4, img_size=16, mlp_hidden_dim=48,
            norm_eps=1e-6, interp_offset=0.0)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No cache variable leaks in from the machine; HOME points at an empty directory."""
    for var in CACHE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def tiny_vit(seed: int = 0, **changes) -> ViT:
    return randomize_parameters(ViT(ViTConfig(**{**TINY, **changes})), seed).eval()


def hf_dinov2_files(model: ViT) -> dict[str, bytes]:
    """config.json + model.safetensors of a transformers ``Dinov2Model`` (4.x names)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {"embeddings.cls_token": sd.pop("cls_token"),
           "embeddings.position_embeddings": sd.pop("pos_embed"),
           "embeddings.mask_token": torch.zeros(1, model.cfg.embed_dim),
           "layernorm.weight": sd.pop("norm.weight"), "layernorm.bias": sd.pop("norm.bias")}
    for kind in ("weight", "bias"):
        out[f"embeddings.patch_embeddings.projection.{kind}"] = sd.pop(f"patch_embed.proj.{kind}")
    for i in range(model.cfg.depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd.pop(f"{b}attn.qkv.{kind}").chunk(3)
            out.update({f"{h}attention.attention.query.{kind}": q,
                        f"{h}attention.attention.key.{kind}": k,
                        f"{h}attention.attention.value.{kind}": v,
                        f"{h}attention.output.dense.{kind}": sd.pop(f"{b}attn.proj.{kind}")})
            for part in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{h}{part}.{kind}"] = sd.pop(f"{b}{part}.{kind}")
        for s in (1, 2):
            out[f"{h}layer_scale{s}.lambda1"] = sd.pop(f"{b}ls{s}.gamma")
    assert not sd, sorted(sd)
    cfg = model.cfg
    config = {"model_type": "dinov2", "hidden_size": cfg.embed_dim,
              "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
              "patch_size": cfg.patch_size, "image_size": cfg.img_size,
              "layer_norm_eps": cfg.norm_eps, "hidden_act": "gelu", "mlp_ratio": 1.5,
              "use_swiglu_ffn": False}
    return {"config.json": json.dumps(config).encode(),
            "model.safetensors": save({k: v.contiguous() for k, v in out.items()})}


def hf_cache_repo(root: Path, repo_id: str, files: dict[str, bytes], *, commit: str = COMMIT,
                  ref: str | None = "main") -> Path:
    """One repo in a Hugging Face hub cache: blobs named by hash, snapshot symlinks, a ref."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def same_function(a: ViT, b: ViT) -> None:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(a.trajectory(x), b.trajectory(x), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- Hugging Face
def test_hf_repo_id_loads_from_the_hub_cache(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    model = tiny_vit()
    snapshot = hf_cache_repo(root, "acme/tiny-dino", hf_dinov2_files(model))
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    loaded = load_model("acme/tiny-dino")
    same_function(loaded.model, model)
    assert loaded.format == "hf-dinov2"
    assert loaded.source == "acme/tiny-dino"
    assert loaded.info["revision"] == COMMIT and loaded.info["cache"] == "hf-hub"
    assert Path(loaded.info["path"]) == snapshot
    # huggingface_hub's own lookup finds the same snapshot (our layout is the real one)
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache("acme/tiny-dino", "config.json", cache_dir=str(root))
    assert isinstance(found, str) and Path(found).parent == snapshot


@pytest.mark.parametrize("var", ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME",
                                 "XDG_CACHE_HOME", "HOME"])
def test_hub_cache_location_follows_the_environment(tmp_path, monkeypatch, var):
    base = tmp_path / "somewhere"
    root = {"HF_HUB_CACHE": base, "HUGGINGFACE_HUB_CACHE": base, "HF_HOME": base / "hub",
            "XDG_CACHE_HOME": base / "huggingface" / "hub",
            "HOME": base / ".cache" / "huggingface" / "hub"}[var]
    snapshot = hf_cache_repo(root, "acme/m", {"config.json": b'{"model_type": "dinov2"}',
                                              "model.safetensors": b"x"})
    monkeypatch.setenv(var, str(base))
    assert names.hf_hub_cache()[0] == root
    assert names.resolve("acme/m").path == snapshot


def test_hf_home_is_overridden_by_hf_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home-hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert names.hf_hub_cache() == (tmp_path / "hub", "$HF_HUB_CACHE")


def test_revisions_refs_and_commits(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    files = {"config.json": b'{"model_type": "clip"}', "model.safetensors": b"w"}
    other = "f" * 40
    first = hf_cache_repo(root, "acme/m", files)
    second = hf_cache_repo(root, "acme/m", files, commit=other, ref="v2")
    assert names.resolve("acme/m").path == first
    assert names.resolve("acme/m@v2").path == second
    assert names.resolve(f"acme/m@{other}").path == second
    assert names.resolve("hf_hub:acme/m").path == first
    (root / "models--acme--m" / "refs" / "main").unlink()
    with pytest.raises(CheckpointError, match=r"no refs/main and 2 snapshots.*acme/m@<commit>"):
        names.resolve("acme/m")


def test_single_snapshot_without_refs_is_used(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    snapshot = hf_cache_repo(root, "acme/m", {"config.json": b'{"model_type": "vit"}',
                                              "pytorch_model.bin": b"w"}, ref=None)
    found = names.resolve("acme/m")
    assert found.path == snapshot and found.revision == COMMIT


def test_missing_model_says_where_and_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError) as err:
        load_model("facebook/dinov2-small")
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "hf" / "hub" / "models--facebook--dinov2-small") in message
    assert "$HF_HOME/hub" in message
    assert "hf download facebook/dinov2-small" in message
    assert "huggingface-cli download facebook/dinov2-small" in message
    with pytest.raises(CheckpointError, match=r"accept the licence at https://huggingface.co/"
                                              r"facebook/dinov3-vits16-pretrain-lvd1689m"):
        load_model("facebook/dinov3-vits16-pretrain-lvd1689m")


def test_missing_blob_or_weights_is_named(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    snapshot = hf_cache_repo(root, "acme/m", {"config.json": b'{"model_type": "dinov2"}',
                                              "model.safetensors": b"w"})
    (snapshot / "model.safetensors").resolve().unlink()        # dangling symlink
    with pytest.raises(CheckpointError, match=r"has no weights \(found config.json, "
                                              r"model.safetensors; a missing blob"):
        names.resolve("acme/m")


def test_timm_and_open_clip_repos_resolve_to_their_snapshots(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    model = tiny_vit(1, embed_dim=64, num_heads=1)      # timm configs carry no head count
    weights = save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    timm_config = json.dumps({"architecture": "vit_tiny_test", "num_classes": 0}).encode()
    snapshot = hf_cache_repo(root, "timm/vit_tiny_test.x",
                             {"config.json": timm_config, "model.safetensors": weights})
    assert names.resolve("timm/vit_tiny_test.x").path == snapshot
    loaded = load_model("timm/vit_tiny_test.x")
    same_function(loaded.model, model)
    assert loaded.format == "timm" and loaded.source == "timm/vit_tiny_test.x"
    clip = hf_cache_repo(root, "acme/open-clip-only",
                         {"open_clip_config.json": b"{}", "open_clip_pytorch_model.bin": b"w"})
    assert names.resolve("acme/open-clip-only").path == clip
    bare = hf_cache_repo(root, "acme/bare", {"pytorch_model.bin": b"w"})
    assert names.resolve("acme/bare").path == bare / "pytorch_model.bin"


# --------------------------------------------------------------------------- torch hub
@pytest.mark.parametrize("name, file, registers", [
    ("dinov2_vits14", "dinov2_vits14_pretrain.pth", 0),
    ("dinov2_vits14_reg", "dinov2_vits14_reg4_pretrain.pth", 4),
])
def test_dinov2_hub_names_load_from_torch_home(tmp_path, monkeypatch, name, file, registers):
    model = tiny_vit(2, num_register_tokens=registers, interp_offset=0.1, embed_dim=64,
                     num_heads=1)                    # hub weights carry no head count
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["mask_token"] = torch.zeros(1, model.cfg.embed_dim)
    torch.save(sd, checkpoints / file)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    loaded = load_model(name)
    same_function(loaded.model, model)
    assert loaded.model.cfg.num_register_tokens == registers
    assert loaded.info["cache"] == "torch-hub" and loaded.info["family"].startswith("dinov2")


def test_torch_home_defaults_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert names.torch_hub_checkpoints() == tmp_path / "xdg" / "torch" / "hub" / "checkpoints"
    with pytest.raises(CheckpointError) as err:
        load_model("dinov2_vitb14_reg")
    message = str(err.value)
    assert str(tmp_path / "xdg" / "torch" / "hub" / "checkpoints" /
               "dinov2_vitb14_reg4_pretrain.pth") in message
    assert ("torch.hub.load_state_dict_from_url('https://dl.fbaipublicfiles.com/dinov2/"
            "dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth')") in message


def test_dinov3_hub_files_are_found_by_their_published_names(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(CheckpointError, match=r"gated: request them.*"
                                              r"dinov3_vits16_pretrain_lvd1689m-08c60483\.pth"):
        names.resolve("dinov3_vits16")
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth").write_bytes(b"w")
    (checkpoints / "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth").write_bytes(b"w")
    assert names.resolve("dinov3_vits16").path.name == "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    assert names.resolve("dinov3_vitl16_sat493m").path.name.startswith(
        "dinov3_vitl16_pretrain_sat493m-")
    with pytest.raises(CheckpointError, match="not in the local model cache"):
        names.resolve("dinov3_vitl16")


# --------------------------------------------------------------------------- names vs paths
def test_paths_and_unknown_names_keep_the_plain_error(tmp_path):
    for missing in ("runs/model.pth", str(tmp_path / "nothing.safetensors"), "no-such-thing"):
        assert names.resolve(missing) is None
        with pytest.raises(CheckpointError, match="not found: no such file or directory"):
            load_model(missing)


@given(org=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,12}", fullmatch=True),
       repo=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,12}", fullmatch=True),
       rev=st.none() | st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True))
def test_repo_ids_parse_back(org, repo, rev):
    name = f"{org}/{repo}" + (f"@{rev}" if rev else "")
    if ".." in name:
        assert names._parse_hf(name) is None
    else:
        assert names._parse_hf(name) == (f"{org}/{repo}", rev)
        assert names.looks_named(name)


def test_registry_is_consistent():
    seen = set()
    for entry in names.REGISTRY:
        assert entry.name.lower() not in seen
        seen.add(entry.name.lower())
        assert entry.source in ("hf", "timm", "torch-hub", "wheel")
        assert entry.licence and entry.size and entry.family
        assert entry.source == "wheel" or names.looks_named(entry.name)
        if entry.family == "dinov3":
            assert entry.gated and "DINOv3 License" in entry.licence
    families = {e.family for e in names.REGISTRY}
    assert {"dinov2", "clip", "siglip", "dinov3", "deit", "deit-distilled", "mae"} <= families


# --------------------------------------------------------------------------- the CLI
def test_models_command_lists_registry_and_cache(tmp_path, monkeypatch):
    from depthflow.cli.main import main

    root = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hf_cache_repo(root, "facebook/dinov2-small", {"config.json": b'{"model_type": "dinov2"}',
                                                  "model.safetensors": b"w"})
    hf_cache_repo(root, "acme/unlisted", {"config.json": b'{"model_type": "siglip"}',
                                          "model.safetensors": b"w"})
    run = CliRunner().invoke(main, ["models"], catch_exceptions=False)
    assert run.exit_code == 0
    header, *lines = run.output.splitlines()[1:-1]
    at = header.index("local")
    rows = {line.split()[0]: line for line in lines}
    assert rows["facebook/dinov2-small"][at:].split()[0] == "yes"
    assert rows["facebook/dinov2-base"][at:].split()[0] == "no"
    assert rows["acme/unlisted"].split()[1:3] == ["siglip", "hf"]
    assert str(root) in run.output.splitlines()[0]
    as_json = CliRunner().invoke(main, ["models", "--json", "--present"],
                                 catch_exceptions=False)
    present = {r["name"] for r in json.loads(as_json.output)}
    assert {"facebook/dinov2-small", "acme/unlisted"} <= present
    assert "facebook/dinov2-base" not in present


def test_analyze_missing_name_is_one_line_exit_1(tmp_path, monkeypatch):
    from depthflow.cli.main import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke(main, ["analyze", "google/siglip-base-patch16-224", "-q"])
    assert run.exit_code == 1
    lines = run.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "hf download google/siglip-base-patch16-224" in lines[0]
    assert not list(tmp_path.glob("*.nc"))


def test_analyze_a_cached_siglip_by_name(tmp_path, monkeypatch):
    """The front door: a SigLIP vision tower (no cls token) saved by transformers into a
    hub cache, analysed by its repo id through the CLI."""
    transformers = pytest.importorskip("transformers")
    from depthflow.cli.main import main

    config = transformers.SiglipVisionConfig(hidden_size=32, num_hidden_layers=4,
                                             num_attention_heads=4, patch_size=4,
                                             image_size=16, intermediate_size=48)
    torch.manual_seed(0)
    saved = tmp_path / "saved"
    transformers.SiglipVisionModel(config).save_pretrained(saved)
    files = {f.name: f.read_bytes() for f in saved.iterdir() if f.is_file()}
    root = tmp_path / "hub"
    hf_cache_repo(root, "google/siglip-base-patch16-224", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke(main, [
        "analyze", "google/siglip-base-patch16-224", "--images", "digits", "--limit", "12",
        "--batch-size", "6", "--dynamics", "none", "--no-figures", "-q",
        "--set", "phases.swap_trials=2", "--set", "phases.min_size=1"],
        catch_exceptions=False)
    assert run.exit_code == 0, run.output
    import xarray as xr

    with xr.open_datatree(tmp_path / "siglip-base-patch16-224.depthflow.nc") as tree:
        root_ds = tree.to_dataset()
        assert set(root_ds["token_kind"].values) == {"patch"}
        assert "cls_state" not in root_ds and "not defined" in root_ds.attrs["not_defined"]
        assert json.loads(root_ds.attrs["model_info"])["named_model"] == \
            "google/siglip-base-patch16-224"
        assert tree["phases"].attrs["paper_view"].startswith("mean patch token only")
        assert tree["phases/swap"].attrs["feature"] == "mean_patch"
