"""Checkpoint loading: every supported format loads to the same function; bad input fails
with the right error class and a message that names the problem.

Foreign state dicts are written here from a depthflow model by renaming per each source's
documented conventions (DINOv2 hub, timm ``VisionTransformer``, transformers 4.x and 5.x),
so the tests need neither timm nor the network.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import pickle
import re
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from depthflow.models import checkpoints
from depthflow.models.arch import PRESETS, parse_arch
from depthflow.models.checkpoints import from_module, save_checkpoint
from depthflow.api import loader
from depthflow.api.loader import load_model
from depthflow.errors import ArchitectureError, CheckpointError, ConfigError
from depthflow.models.formats import HF_STYLES, convert_state_dict
from depthflow.io.files import sha256_file
from depthflow.models.preprocessing import dinov2_preprocessing
from depthflow.models.vit import ViT, ViTConfig, count_parameters

from _models import randomize_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- helpers
HUB = dict(embed_dim=64, depth=2, num_heads=1, patch_size=4, img_size=16, mlp_hidden_dim=96,
           norm_eps=1e-6, interp_offset=0.1, interp_antialias=False)
HUB_REG = dict(HUB, num_register_tokens=2, interp_offset=0.0, interp_antialias=True)
TIMM = dict(HUB, num_register_tokens=2, interp_offset=0.0, interp_antialias=True)
HF_DINO = dict(HUB, num_heads=4, interp_offset=0.0)
HF_VIT = dict(HF_DINO, layerscale=False, norm_eps=1e-12)


def make_vit(seed: int = 0, **fields) -> ViT:
    """A float32 ViT with random, non-trivial weights (LayerScale far from 0 and 1)."""
    model = randomize_parameters(ViT(ViTConfig(**fields)), seed)
    return model.eval()


def state(model: ViT) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_function(model: ViT, reference: ViT, *, sizes=((16, 16), (24, 20))) -> None:
    """Equal trajectories and readouts in float64, at the native and another input size."""
    a = copy.deepcopy(model).double().set_attention("math").eval()
    b = copy.deepcopy(reference).double().set_attention("math").eval()
    gen = torch.Generator().manual_seed(7)
    for h, w in sizes:
        x = torch.randn(2, b.cfg.in_chans, h, w, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(a.trajectory(x), b.trajectory(x), rtol=0, atol=1e-12)
            torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-12)


def to_hub(sd, *, chunks: int = 0):
    """DINOv2 hub names are depthflow's; add the mask token, optionally chunk the blocks."""
    out = {"mask_token": torch.zeros(1, sd["cls_token"].shape[-1])}
    for key, value in sd.items():
        m = re.match(r"blocks\.(\d+)\.(.+)", key)
        if m and chunks:
            key = f"blocks.{int(m.group(1)) // chunks}.{m.group(1)}.{m.group(2)}"
        out[key] = value
    return out


def to_timm(sd, *, swiglu: str = "split", positions: str = "cls"):
    """timm names: ``reg_token``; SwiGLU as fc1_g/fc1_x or packed fc1; position table with a
    cls slot (``cls``), none (``none``, no_embed_class) or cls + register slots (``prefix``)."""
    out = {}
    for key, value in sd.items():
        if key == "register_tokens":
            key = "reg_token"
        elif key.endswith(("mlp.w12.weight", "mlp.w12.bias")):
            stem, kind = key.rsplit(".w12.", 1)
            if swiglu == "split":
                gate, up = value.chunk(2, dim=0)
                out[f"{stem}.fc1_g.{kind}"], out[f"{stem}.fc1_x.{kind}"] = gate, up
                continue
            key = f"{stem}.fc1.{kind}"
        elif ".mlp.w3." in key:
            key = key.replace(".mlp.w3.", ".mlp.fc2.")
        out[key] = value
    if positions == "prefix":        # registers get positions too: split them in halves
        regs = out["reg_token"]
        pos = out["pos_embed"]
        out["reg_token"] = regs / 2
        out["pos_embed"] = torch.cat([pos[:, :1], regs / 2, pos[:, 1:]], dim=1)
    return out


def to_hf(sd, *, vit: bool = False, v5: bool = True, prefix: str = ""):
    """transformers names (5.x: q/k/v/o_proj, gate/up/down_proj, ViT ``layers.N``;
    4.x: attention.attention.query..., weights_in/out, ViT intermediate/output.dense)."""
    layer = "layers" if vit and v5 else "encoder.layer"
    top = {"cls_token": "embeddings.cls_token", "register_tokens": "embeddings.register_tokens",
           "pos_embed": "embeddings.position_embeddings"}
    out = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
        elif key.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key.startswith(("norm.", "head.")):
            name = "layernorm" if key.startswith("norm.") else "classifier"
            out[f"{name}.{key.rsplit('.', 1)[1]}"] = value
        else:
            i, rest = re.match(r"blocks\.(\d+)\.(.+)", key).groups()
            for name, tensor in _hf_block(rest, value, vit=vit, v5=v5):
                out[f"{layer}.{i}.{name}"] = tensor
    if not vit:
        out["embeddings.mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return {(k if k.startswith("classifier.") else prefix + k): v for k, v in out.items()}


def _hf_block(rest, value, *, vit, v5):
    part, kind = rest.rsplit(".", 1)
    if part == "attn.qkv":
        names = ("q_proj", "k_proj", "v_proj") if v5 else (
            "attention.query", "attention.key", "attention.value")
        return [(f"attention.{n}.{kind}", t) for n, t in zip(names, value.chunk(3, dim=0))]
    if part == "mlp.w12" and v5:
        gate, up = value.chunk(2, dim=0)
        return [(f"mlp.gate_proj.{kind}", gate), (f"mlp.up_proj.{kind}", up)]
    names = {
        "attn.proj": "attention.o_proj" if v5 else "attention.output.dense",
        "norm1": "layernorm_before" if vit else "norm1",
        "norm2": "layernorm_after" if vit else "norm2",
        "ls1": "layer_scale1", "ls2": "layer_scale2",
        "mlp.fc1": "intermediate.dense" if vit and not v5 else "mlp.fc1",
        "mlp.fc2": "output.dense" if vit and not v5 else "mlp.fc2",
        "mlp.w12": "mlp.weights_in", "mlp.w3": "mlp.down_proj" if v5 else "mlp.weights_out",
    }
    kind = "lambda1" if kind == "gamma" else kind
    return [(f"{names[part]}.{kind}", value)]


def hf_config(cfg: ViTConfig, model_type: str, **extra) -> dict:
    return {"model_type": model_type, "hidden_size": cfg.embed_dim,
            "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
            "patch_size": cfg.patch_size, "image_size": cfg.img_size,
            "layer_norm_eps": cfg.norm_eps, "hidden_act": "gelu",
            "use_swiglu_ffn": cfg.mlp == "swiglu",
            "num_register_tokens": cfg.num_register_tokens, **extra}


def write_hf_dir(path: pathlib.Path, tensors, config, *, shards: int = 1, index: bool = True):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"))
        return path
    keys = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k].contiguous() for k in keys[s::shards]}
        save_file(part, str(path / name))
        weight_map.update(dict.fromkeys(part, name))
    if index:
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return path


# --------------------------------------------------------------------------- formats
def test_hub_pth_plain_tensor_dict(tmp_path):
    ref = make_vit(**HUB)
    path = tmp_path / "dinov2_hub.pth"
    torch.save(to_hub(state(ref)), path)
    loaded = load_model(path)
    assert loaded.format == "dinov2-hub"
    assert loaded.config == ref.cfg
    assert loaded.sha256 == sha256_file(path)
    assert loaded.preprocessing == dinov2_preprocessing(224)
    assert_same_function(loaded.model, ref)


def test_hub_with_registers_and_swiglu(tmp_path):
    ref = make_vit(**dict(HUB_REG, mlp="swiglu"))
    path = tmp_path / "hub_reg.pt"
    torch.save(to_hub(state(ref)), path)
    loaded = load_model(path)
    assert (loaded.format, loaded.config) == ("dinov2-hub", ref.cfg)
    assert_same_function(loaded.model, ref)


@pytest.mark.parametrize("container", ["teacher", "model", "state_dict"])
def test_hub_training_containers_and_chunks(tmp_path, container):
    ref = make_vit(**dict(HUB, depth=3))
    sd = to_hub(state(ref), chunks=2)                     # blocks.0.0, blocks.0.1, blocks.1.2
    if container == "teacher":                            # DINOv2 teacher_checkpoint.pth
        obj = {"teacher": {f"backbone.{k}": v for k, v in sd.items()}}
    elif container == "model":                            # full training checkpoint
        model = {f"teacher.backbone.{k}": v for k, v in sd.items()}
        model.update({f"student.backbone.{k}": v + 1 for k, v in sd.items()})
        model["teacher.dino_head.last_layer.weight"] = torch.zeros(3, 3)
        obj = {"model": model, "iteration": 5}
    else:                                                 # DDP-wrapped
        obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
    path = tmp_path / "train.ckpt"
    torch.save(obj, path)
    loaded = load_model(path)
    assert loaded.config == ref.cfg
    assert_same_function(loaded.model, ref)


@pytest.mark.parametrize("swiglu, positions, suffix", [
    ("split", "none", ".pth"), ("packed", "prefix", ".safetensors"),
    ("gelu", "prefix", ".pth"), ("split", "cls", ".safetensors")])
def test_timm_state_dicts(tmp_path, swiglu, positions, suffix):
    fields = dict(TIMM, mlp="gelu" if swiglu == "gelu" else "swiglu",
                  pos_embed_cls=positions != "none")
    ref = make_vit(**fields)
    sd = to_timm(state(ref), swiglu=swiglu, positions=positions)
    path = tmp_path / f"timm{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    loaded = load_model(path)
    assert (loaded.format, loaded.config) == ("timm", ref.cfg)
    assert loaded.preprocessing == dinov2_preprocessing(224)
    assert_same_function(loaded.model, ref)


@pytest.mark.parametrize("v5", [True, False])
@pytest.mark.parametrize("kind", ["dinov2", "dinov2-swiglu", "dinov2_with_registers", "vit"])
def test_hf_directories(tmp_path, kind, v5):
    fields = {"dinov2": HF_DINO, "dinov2-swiglu": dict(HF_DINO, mlp="swiglu"),
              "dinov2_with_registers": dict(HF_DINO, num_register_tokens=2,
                                            interp_antialias=True),
              "vit": HF_VIT}[kind]
    ref = make_vit(**fields)
    model_type = kind.replace("-swiglu", "")
    tensors = to_hf(state(ref), vit=kind == "vit", v5=v5)
    path = write_hf_dir(tmp_path / "hf", tensors, hf_config(ref.cfg, model_type),
                        shards=1 if v5 else 2)
    loaded = load_model(path)
    assert loaded.format == {"dinov2": "hf-dinov2", "vit": "hf-vit",
                             "dinov2_with_registers": "hf-dinov2-registers"}[model_type]
    assert loaded.config == ref.cfg
    assert loaded.sha256 == sha256_file(path)
    assert_same_function(loaded.model, ref)


def test_hf_vit_classifier_bin_with_prefix_and_default_preprocessing(tmp_path):
    ref = make_vit(**dict(HF_VIT, num_classes=5))
    tensors = to_hf(state(ref), vit=True, v5=False, prefix="vit.")
    tensors["vit.pooler.dense.weight"] = torch.zeros(64, 64)
    path = tmp_path / "vit"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(hf_config(ref.cfg, "vit")))
    torch.save(tensors, path / "pytorch_model.bin")
    loaded = load_model(path)
    assert loaded.config == ref.cfg and loaded.config.head_input == "cls"
    pre = loaded.preprocessing
    assert (pre.resize, pre.crop, pre.mean, pre.interpolation) == (16, 16, (0.5,) * 3,
                                                                   "bilinear")
    assert_same_function(loaded.model, ref)


def test_hf_dinov2_classifier_reads_cls_and_mean_patch(tmp_path):
    ref = make_vit(**dict(HF_DINO, num_register_tokens=2, interp_antialias=True,
                          num_classes=3, head_input="cls+mean"))
    tensors = to_hf(state(ref), prefix="dinov2.")
    path = write_hf_dir(tmp_path / "cls", tensors, hf_config(ref.cfg, "dinov2_with_registers"),
                        shards=2, index=False)
    loaded = load_model(path)
    assert loaded.config == ref.cfg
    assert_same_function(loaded.model, ref)


def test_hf_preprocessor_config_is_read(tmp_path):
    ref = make_vit(**HF_DINO)
    path = write_hf_dir(tmp_path / "hf", to_hf(state(ref)), hf_config(ref.cfg, "dinov2"))
    (path / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 196, "width": 196}, "do_center_crop": True,
        "do_normalize": True, "do_resize": True, "image_mean": [0.4, 0.5, 0.6],
        "image_std": [0.2, 0.25, 0.3], "resample": 2, "size": {"shortest_edge": 230}}))
    pre = load_model(path).preprocessing
    assert (pre.resize, pre.crop, pre.mean, pre.std, pre.interpolation) == (
        230, 196, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), "bilinear")


def test_hf_named_file_without_config_uses_dinov2_conventions(tmp_path):
    ref = make_vit(**dict(HF_DINO, num_heads=1))
    path = tmp_path / "bare.safetensors"
    save_file(to_hf(state(ref)), str(path))
    loaded = load_model(path)
    assert (loaded.format, loaded.config) == ("hf-dinov2", ref.cfg)


def test_depthflow_file_and_directory(tmp_path):
    ref = make_vit(**HUB_REG)
    pre = dinov2_preprocessing(112)
    path = save_checkpoint(ref, tmp_path / "model.safetensors", preprocessing=pre,
                           info={"note": "x"})
    loaded = load_model(path)
    assert (loaded.format, loaded.config, loaded.preprocessing) == ("depthflow", ref.cfg, pre)
    assert loaded.info == {"note": "x"}
    assert_same_function(loaded.model, ref)
    folder = tmp_path / "dir"
    folder.mkdir()
    save_file(state(ref), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(
        {"format": "depthflow", "config": ref.cfg.to_dict(), "preprocessing": pre.to_dict()}))
    loaded = load_model(folder)
    assert (loaded.format, loaded.config, loaded.preprocessing) == ("depthflow", ref.cfg, pre)
    assert_same_function(loaded.model, ref)


STYLES = ("hub", "hub-chunked", "timm-split", "timm-packed", "hf-v4", "hf-v5", "vit-v4",
          "vit-v5")


@settings(max_examples=25)
@given(style=st.sampled_from(STYLES), depth=st.integers(1, 3), heads=st.sampled_from([1, 2]),
       registers=st.integers(0, 2), swiglu=st.booleans(), layerscale=st.booleans(),
       qkv_bias=st.booleans(), classes=st.sampled_from([0, 3]))
def test_conversion_round_trip(style, depth, heads, registers, swiglu, layerscale, qkv_bias,
                               classes):
    """Writing depthflow weights in a source's names and converting back is the identity,
    and the inferred architecture is the original one (with the source's conventions)."""
    family = style.split("-")[0]
    fields = dict(embed_dim=64 * heads, depth=depth, num_heads=heads, patch_size=2,
                  img_size=8, mlp="swiglu" if swiglu else "gelu", mlp_hidden_dim=48,
                  num_register_tokens=registers, layerscale=layerscale, qkv_bias=qkv_bias,
                  num_classes=classes, interp_offset=0.0, interp_antialias=registers > 0)
    if family == "hub":
        fields.update(interp_offset=0.0 if registers else 0.1)
    elif family == "timm":
        fields.update(interp_antialias=True, pos_embed_cls=registers == 0,
                      mlp="swiglu" if style == "timm-packed" else fields["mlp"])
    elif family == "vit":
        fields.update(num_register_tokens=0, layerscale=False, mlp="gelu", norm_eps=1e-12,
                      interp_antialias=False)
    ref = make_vit(**fields)
    sd, hf = state(ref), None
    if family == "hub":
        foreign = to_hub(sd, chunks=2 if style == "hub-chunked" else 0)
    elif family == "timm":
        foreign = to_timm(sd, swiglu=style.split("-")[1], positions="none" if registers
                          else "cls")
    else:
        model_type = "vit" if family == "vit" else (
            "dinov2_with_registers" if registers else "dinov2")
        foreign = to_hf(sd, vit=family == "vit", v5=style.endswith("v5"))
        hf = hf_config(ref.cfg, model_type)
    kind = {"hub": "dinov2-hub", "timm": "timm"}.get(family)
    got_style, cfg, converted = convert_state_dict(foreign, style=kind, hf_config=hf)
    assert got_style == (kind or HF_STYLES[hf["model_type"]])
    assert cfg == ref.cfg
    assert sorted(converted) == sorted(sd)
    assert all(torch.equal(converted[k], sd[k]) for k in sd)


# --------------------------------------------------------------------------- arch
def test_heads_not_inferable_asks_for_arch(tmp_path):
    ref = make_vit(**dict(HUB, embed_dim=48, num_heads=4))
    path = tmp_path / "w48.pth"
    torch.save(state(ref), path)
    with pytest.raises(ArchitectureError, match="num_heads"):
        load_model(path)
    for arch in ("num_heads=4", '{"num_heads": 4}', {"num_heads": "4"}):
        loaded = load_model(path, arch=arch)
        assert loaded.config == ref.cfg
    assert_same_function(loaded.model, ref)


def test_arch_overrides_apply_and_are_checked(tmp_path):
    ref = make_vit(**HUB)
    path = tmp_path / "hub.pth"
    torch.save(state(ref), path)
    loaded = load_model(path, arch="norm_eps=1e-5,interp_offset=0,interp_antialias=true")
    assert (loaded.config.norm_eps, loaded.config.interp_offset,
            loaded.config.interp_antialias) == (1e-5, 0.0, True)
    with pytest.raises(ArchitectureError, match="blocks.0.mlp.fc1.weight"):
        load_model(path, arch="mlp_hidden_dim=100")
    with pytest.raises(ArchitectureError, match="do not match the architecture"):
        load_model(path, arch="dinov2_vits14")
    with pytest.raises(ConfigError, match="num_heads"):
        load_model(path, arch="num_heads=5")


def test_parse_arch_types_presets_and_errors():
    assert parse_arch(None) == {} and parse_arch("") == {}
    assert parse_arch("depth=3, layerscale=false,norm_eps=1e-5,mlp=swiglu") == {
        "depth": 3, "layerscale": False, "norm_eps": 1e-5, "mlp": "swiglu"}
    assert parse_arch("dinov2_vitb14_reg4,img_size=224")["img_size"] == 224
    assert parse_arch("dinov2_vitg14")["mlp_hidden_dim"] == 4096
    assert parse_arch("dinov2_vitl14_reg4") == dict(PRESETS["dinov2_vitl14"],
                                                    num_register_tokens=4)
    for bad, field in [("depth=three", "depth"), ("layerscale=maybe", "layerscale"),
                       ("heads=4", "heads"), ({"num_heads": 2.5}, "num_heads"),
                       ("dinov2_vitx14", "dinov2_vitx14"), ("{not json", "JSON")]:
        with pytest.raises(ConfigError, match=field):
            parse_arch(bad)


@pytest.mark.parametrize("name, low, high", [
    ("dinov2_vits14", 21e6, 23e6), ("dinov2_vitb14", 85e6, 88e6),
    ("dinov2_vitl14", 300e6, 306e6), ("dinov2_vitg14_reg4", 1.1e9, 1.2e9)])
def test_presets_have_the_published_sizes(name, low, high):
    with torch.device("meta"):
        model = ViT(ViTConfig(**PRESETS[name]))
    assert low < count_parameters(model) < high


# --------------------------------------------------------------------------- sources
def test_default_model_missing_and_present(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "default_model_path", lambda: tmp_path / "none.safetensors")
    with pytest.raises(CheckpointError, match="embedded default model is missing"):
        load_model()
    ref = make_vit(**HUB)
    path = save_checkpoint(ref, tmp_path / "digits.safetensors")
    monkeypatch.setattr(loader, "default_model_path", lambda: path)
    assert load_model().config == ref.cfg


def test_named_models_go_through_the_zoo(tmp_path, monkeypatch):
    path = save_checkpoint(make_vit(**HUB), tmp_path / "named.safetensors")
    fake = types.SimpleNamespace(
        resolve_named=lambda name: path if name == "my-model" else None)
    monkeypatch.setattr(loader, "zoo", fake)
    loaded = load_model("my-model")
    assert loaded.source == "my-model" and loaded.sha256 == sha256_file(path)
    with pytest.raises(CheckpointError, match="'other' not found"):
        load_model("other")


class HubLike(nn.Module):
    """The attributes a DINOv2-hub (or, without interpolate_offset, timm) model has."""

    def __init__(self, vit: ViT, **attributes) -> None:
        super().__init__()
        for name in ("patch_embed", "cls_token", "pos_embed", "blocks", "norm"):
            setattr(self, name, getattr(vit, name))
        for name, value in attributes.items():
            setattr(self, name, value)            # parameters get registered


def test_from_module_depthflow_hub_and_timm_like():
    ref = make_vit(**dict(HUB, embed_dim=32, num_heads=2, interp_offset=0.25))
    assert from_module(ref).model is ref
    hub = HubLike(ref, interpolate_offset=0.25, interpolate_antialias=False, num_heads=2)
    hub.mask_token = nn.Parameter(torch.zeros(1, 32))
    loaded = from_module(hub)
    assert (loaded.format, loaded.info["style"], loaded.config) == ("module", "dinov2-hub",
                                                                    ref.cfg)
    timm_ref = make_vit(**dict(TIMM, embed_dim=32, num_heads=2, pos_embed_cls=False))
    timm = HubLike(timm_ref, reg_token=timm_ref.register_tokens, no_embed_class=True,
                   global_pool="token")
    loaded = from_module(timm)
    assert (loaded.info["style"], loaded.config) == ("timm", timm_ref.cfg)
    assert_same_function(loaded.model, timm_ref)


def test_from_module_refusals():
    ref = make_vit(**dict(HUB, embed_dim=32, num_heads=2))
    with pytest.raises(CheckpointError, match="torch.nn.Module"):
        from_module("not a model")
    with pytest.raises(ArchitectureError, match="cannot recognise Linear"):
        from_module(nn.Linear(2, 2))
    pooled = HubLike(ref, global_pool="avg")
    pooled.head = nn.Linear(32, 3)
    with pytest.raises(ArchitectureError, match="global_pool='avg'"):
        from_module(pooled)
    tanh = HubLike(copy.deepcopy(ref))
    tanh.blocks[0].mlp.act = nn.GELU(approximate="tanh")
    with pytest.raises(ArchitectureError, match="exact GELU"):
        from_module(tanh)


# --------------------------------------------------------------------------- bad input
def test_missing_file_and_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(CheckpointError, match="has no weights"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ArchitectureError, match="'bert' is not supported"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported checkpoint type '.npz'"):
        load_model(tmp_path / "weights.npz")


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "locked.pth"
    torch.save(state(make_vit(**HUB)), path)
    path.chmod(0)
    try:
        if not os.access(path, os.R_OK):                  # root reads anything: skip that part
            with pytest.raises(CheckpointError, match="permission denied"):
                load_model(path)
    finally:
        path.chmod(0o644)
    monkeypatch.setattr(checkpoints.os, "access", lambda *args: False)
    with pytest.raises(CheckpointError, match="locked.pth.*permission denied"):
        load_model(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_files(tmp_path, suffix, keep):
    path = tmp_path / f"model{suffix}"
    sd = state(make_vit(**HUB))
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as info:
        load_model(path)
    assert "\n" not in str(info.value)


class Exploit:
    """A pickle whose loading would create a file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("legacy", [False, True])
def test_code_running_pickle_is_refused(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"cls_token": torch.zeros(1), "payload": Exploit(marker)}
    if legacy:
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match="refuses to unpickle.*safetensors"):
        load_model(path)
    assert not marker.exists()


def test_pickle_without_a_state_dict(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="not a state dict of tensors"):
        load_model(path)


def test_keys_matching_no_architecture(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(2, 4)},
              str(path))
    with pytest.raises(ArchitectureError) as info:
        load_model(path)
    message = str(info.value)
    assert "resnet.safetensors" in message
    assert "missing cls_token" in message and "unexpected conv1.weight, fc.weight" in message


def test_unknown_extra_and_missing_keys(tmp_path):
    sd = state(make_vit(**HUB))
    path = tmp_path / "extra.pth"
    torch.save({**sd, "blocks.0.attn.rel_pos.weight": torch.ones(64)}, path)
    with pytest.raises(ArchitectureError, match=r"unexpected blocks\.0\.attn\.rel_pos\.weight"):
        load_model(path)
    torch.save({**sd, "blocks.0.attn.q_norm.weight": torch.ones(64)}, path)
    with pytest.raises(ArchitectureError, match="QK normalisation.*q_norm"):
        load_model(path)
    del sd["blocks.1.mlp.fc2.weight"]
    torch.save(sd, path)
    with pytest.raises(ArchitectureError, match=r"missing blocks\.1\.mlp\.fc2\.weight"):
        load_model(path)
    timm = to_timm(state(make_vit(**TIMM)))
    timm.update({"fc_norm.weight": torch.ones(64), "fc_norm.bias": torch.zeros(64)})
    torch.save(timm, path)
    with pytest.raises(ArchitectureError, match="fc_norm"):
        load_model(path)


def test_shape_mismatch(tmp_path):
    sd = state(make_vit(**HUB))
    sd["blocks.1.mlp.fc1.weight"] = torch.zeros(80, 64)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ArchitectureError, match=r"blocks\.1\.mlp\.fc1\.weight \(80, 64\)"):
        load_model(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights(tmp_path, value):
    sd = state(make_vit(**HUB))
    sd["blocks.0.attn.proj.weight"][0, 0] = value
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="NaN/inf.*blocks.0.attn.proj.weight") as info:
        load_model(path)
    assert not isinstance(info.value, ArchitectureError)


def test_hf_unsupported_activation(tmp_path):
    ref = make_vit(**HF_VIT)
    config = hf_config(ref.cfg, "vit", hidden_act="swish")
    path = write_hf_dir(tmp_path / "act", to_hf(state(ref), vit=True), config)
    with pytest.raises(ArchitectureError, match="swish"):
        load_model(path)
