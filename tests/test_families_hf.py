"""depthflow's ViT reproduces the Hugging Face CLIP, SigLIP, DINOv3, DeiT and ViTMAE vision
towers at every depth.

Random float64 models (every weight re-drawn so that norms, biases and LayerScale matter),
SDPA attention on the HF side (float64 throughout; HF's eager path takes the softmax in
float32), ``output_hidden_states=True``: HF's hidden state ``l`` must equal depthflow's
depth-``l`` state to 1e-6 relative to its largest entry, at the native input size and at
an interpolated one, and the final outputs (``last_hidden_state``, pooled output,
projection) must match too. Where HF's hidden states sit: CLIP's first entry is after the
pre-norm (``pre_layrnorm``), which depthflow's ``embed`` includes; SigLIP and DINOv3 start
at the embeddings. ``ViTMAEModel`` shuffles and masks patches even with ``mask_ratio=0``:
it is run with ``mask_ratio=0`` and a fixed increasing ``noise`` so that its order is the
identity.

Each model is loaded from the live module and from ``save_pretrained`` (4.x names on disk).
"""

from __future__ import annotations

import pytest
import torch

from depthflow.errors import ArchitectureError
from depthflow.api.loader import load_model
from depthflow.models.checkpoints import from_module

from _models import randomize_parameters

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = ((16, 16), (24, 20))            # native 4x4 grid, and an interpolated 6x5 one
COMMON = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, patch_size=4,
              image_size=16, intermediate_size=48)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48)
KINDS = ("clip", "clip-model", "siglip", "siglip-model", "dinov3", "dinov3-swiglu-registers",
         "deit", "mae")
STYLES = {"clip": "hf-clip", "siglip": "hf-siglip", "dinov3": "hf-dinov3", "deit": "hf-deit",
          "mae": "hf-vit-mae"}
ERRORS: dict[str, float] = {}


def hf_model(kind: str, seed: int = 0):
    """A small random transformers model in float64 with SDPA attention."""
    T = transformers
    if kind == "clip":
        model = T.CLIPVisionModel(T.CLIPVisionConfig(**COMMON))
    elif kind == "clip-model":
        model = T.CLIPModel(T.CLIPConfig(vision_config=COMMON, text_config=TEXT,
                                         projection_dim=8))
    elif kind == "siglip":
        model = T.SiglipVisionModel(T.SiglipVisionConfig(**COMMON))
    elif kind == "siglip-model":
        model = T.SiglipModel(T.SiglipConfig(vision_config=COMMON, text_config=TEXT))
    elif kind == "dinov3":
        model = T.DINOv3ViTModel(T.DINOv3ViTConfig(**COMMON))
    elif kind == "dinov3-swiglu-registers":
        model = T.DINOv3ViTModel(T.DINOv3ViTConfig(use_gated_mlp=True, hidden_act="silu",
                                                   num_register_tokens=2, **COMMON))
    elif kind == "deit":
        model = T.DeiTModel(T.DeiTConfig(**COMMON))
    elif kind == "mae":
        model = T.ViTMAEModel(T.ViTMAEConfig(mask_ratio=0.0, **COMMON))
    else:
        raise ValueError(kind)
    model.set_attn_implementation("sdpa")
    return randomize_parameters(model, seed).double().eval()


def vision_forward(model, x):
    """HF outputs with every hidden state, at any input size."""
    kind = model.config.model_type
    kwargs = {"output_hidden_states": True}
    if kind in ("clip", "siglip"):
        tower = model.vision_model
        out = tower(pixel_values=x, interpolate_pos_encoding=True, **kwargs)
        return out, model
    if kind != "dinov3_vit":
        kwargs["interpolate_pos_encoding"] = True
    if kind == "vit_mae":
        n = (x.shape[-2] // 4) * (x.shape[-1] // 4)
        kwargs["noise"] = torch.arange(n, dtype=x.dtype).expand(x.shape[0], n)
    return model(x, **kwargs), model


def family(kind: str) -> str:
    return kind.split("-")[0]


def compare(loaded, model, kind: str) -> float:
    """Largest relative error over depths, sizes and final outputs (asserted below 1e-6)."""
    ours = loaded.model.double().set_attention("math")
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            out, _ = vision_forward(model, x)
            trajectory = ours.trajectory(x)                    # (B, L+1, T, D)
        assert trajectory.shape[1] == len(out.hidden_states) == ours.depth + 1
        pairs = [(trajectory[:, d], theirs) for d, theirs in enumerate(out.hidden_states)]
        with torch.no_grad():
            final = ours.norm(trajectory[:, -1])
            readout = ours.readout(trajectory[:, -1])
        if family(kind) in ("siglip", "dinov3", "deit", "mae"):
            pairs.append((final, out.last_hidden_state))
        if family(kind) in ("clip", "dinov3"):
            pairs.append((final[:, 0], out.pooler_output))
        if kind == "clip-model":
            pairs.append((readout, model.visual_projection(out.pooler_output)))
        for mine, theirs in pairs:
            assert mine.shape == theirs.shape
            err = ((mine - theirs).abs().max() / theirs.abs().max()).item()
            worst = max(worst, err)
    assert worst < 1e-6, f"{kind}: relative error {worst:.2e}"
    ERRORS[kind] = max(ERRORS.get(kind, 0.0), worst)
    return worst


@pytest.fixture(scope="module", params=KINDS)
def kind_and_model(request):
    return request.param, hf_model(request.param)


def test_from_live_module(kind_and_model):
    kind, model = kind_and_model
    loaded = from_module(model)
    cfg = loaded.config
    assert loaded.info["style"] == STYLES[family(kind)]
    assert cfg.cls_token == (family(kind) != "siglip")
    assert cfg.num_distillation_tokens == (1 if kind == "deit" else 0)
    assert cfg.pre_norm == (family(kind) == "clip")
    assert cfg.rope == ("dinov3" if family(kind) == "dinov3" else "none")
    assert cfg.position_embedding == {"dinov3": "none", "mae": "sincos"}.get(family(kind),
                                                                               "learned")
    assert cfg.activation == {"clip": "quick_gelu", "siglip": "gelu_tanh"}.get(family(kind),
                                                                               "gelu")
    assert cfg.norm_eps == {"clip": 1e-5, "siglip": 1e-6, "dinov3": 1e-5}.get(family(kind),
                                                                              1e-12)
    assert cfg.patch_bias == (family(kind) != "clip")
    assert cfg.qkv_bias_parts == ("qv" if family(kind) == "dinov3" else "qkv")
    assert cfg.layerscale == (family(kind) == "dinov3")
    if kind == "clip-model":
        assert (cfg.num_classes, cfg.head_bias) == (8, False)
        assert any("text tower" in n for n in loaded.info["notes"])
    if family(kind) == "siglip":
        assert any("attention-pool" in n for n in loaded.info["notes"])
    compare(loaded, model, kind)


def test_from_save_pretrained(kind_and_model, tmp_path):
    kind, model = kind_and_model
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.format == STYLES[family(kind)]
    compare(loaded, model, kind)


def test_mae_sincos_table_is_frozen_and_is_hfs():
    """A fresh depthflow MAE-style model builds HF's sin-cos table, as a buffer."""
    from transformers.models.vit_mae.modeling_vit_mae import (
        build_2d_sinusoidal_position_embedding as hf_table)

    from depthflow.models.vit import ViT, ViTConfig

    ours = ViT(ViTConfig(embed_dim=32, depth=1, num_heads=4, patch_size=4, img_size=16,
                         mlp_hidden_dim=48, position_embedding="sincos"))
    assert "pos_embed" not in dict(ours.named_parameters())
    assert "pos_embed" in ours.state_dict()
    table = ours.pos_embed[0].double()                          # (1 + 16, 32)
    theirs = hf_table(4, 4, embed_dim=32, cls_token=True, dtype=torch.float64)
    torch.testing.assert_close(table, theirs, rtol=0, atol=1e-7)
    # closed form: the cls slot is zero; patch (0, 0) is [sin 0, cos 0, sin 0, cos 0]
    assert table[0].abs().max() == 0
    torch.testing.assert_close(table[1], torch.tensor([0.0] * 8 + [1.0] * 8 + [0.0] * 8
                                                      + [1.0] * 8, dtype=torch.float64))


def test_deit_teacher_head_averages_both_classifiers():
    model = randomize_parameters(transformers.DeiTForImageClassificationWithTeacher(
        transformers.DeiTConfig(num_labels=5, **COMMON)), 3).double().eval()
    loaded = from_module(model)
    assert (loaded.config.head_input, loaded.config.num_classes) == ("cls+distillation", 5)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    with torch.no_grad():
        logits = model(x).logits
        torch.testing.assert_close(loaded.model.double()(x), logits, rtol=0,
                                   atol=1e-9 * logits.abs().max().item())


def test_wrong_rope_periods_are_detected():
    """Negative control: the comparison sees RoPE's frequencies (1% off fails)."""
    model = hf_model("dinov3")
    loaded = from_module(model)
    with torch.no_grad():
        loaded.model.rope_embed.periods.mul_(1.01)
    with pytest.raises(AssertionError):
        compare(loaded, model, "dinov3")


def test_relative_errors_are_reported(capsys):
    """Prints the per-family maximum relative errors measured above (for the record)."""
    for kind in KINDS:
        if kind not in ERRORS:
            compare(from_module(hf_model(kind)), hf_model(kind), kind)
    with capsys.disabled():
        print("\nmax relative error vs HF (float64, every depth, 2 sizes): "
              + ", ".join(f"{k} {v:.1e}" for k, v in sorted(ERRORS.items())))
    assert max(ERRORS.values()) < 1e-6


@pytest.mark.parametrize("config, match", [
    (lambda T: T.Siglip2VisionModel(T.Siglip2VisionConfig(
        **{k: v for k, v in COMMON.items() if k != "image_size"})), "NaFlex"),
    (lambda T: T.CLIPTextModel(T.CLIPTextConfig(**TEXT)), "text model"),
])
def test_unsupported_families_say_what_differs(config, match, tmp_path):
    model = config(transformers)
    model.save_pretrained(tmp_path)
    with pytest.raises(ArchitectureError, match=match):
        load_model(tmp_path)
