"""depthflow's ViT reproduces Hugging Face transformers at every depth.

Random float64 models (weights re-drawn with a seeded generator so that LayerScale, norms and
biases all matter), eager attention, ``output_hidden_states=True``: hidden state ``l`` must
equal our depth-``l`` state to 1e-6 relative, at the native input size and at another one
(position-embedding interpolation), and ``last_hidden_state`` must equal ``norm(a_L)``.

Each model is loaded four ways: ``from_module(live model)`` (transformers 5.x names),
``save_pretrained(dir)`` (transformers 5.23 writes the 4.x names back), a safetensors file
with the live 5.x names, and a safetensors file with 4.x names made by the renaming
:func:`to_v4` below, which inverts transformers' ``conversion_mapping.py``:

=================================  ============================================
5.x name (in ``encoder.layer.N``)  4.x name
=================================  ============================================
``attention.q_proj``               ``attention.attention.query``
``attention.k_proj``               ``attention.attention.key``
``attention.v_proj``               ``attention.attention.value``
``attention.o_proj``               ``attention.output.dense``
``mlp.gate_proj`` + ``up_proj``    ``mlp.weights_in`` (concatenated, gate first)
``mlp.down_proj``                  ``mlp.weights_out``
ViT ``layers.N.``                  ViT ``encoder.layer.N.``
ViT ``attention.q_proj``           ViT ``attention.attention.query`` (k, v alike)
ViT ``mlp.fc1`` / ``mlp.fc2``      ViT ``intermediate.dense`` / ``output.dense``
=================================  ============================================
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from depthflow.models.checkpoints import from_module

from depthflow.api.loader import load_model
from depthflow.errors import ArchitectureError

from _models import randomize_parameters

transformers = pytest.importorskip("transformers")

SIZES = ((16, 16), (24, 20))            # native 4x4 grid, and an interpolated 6x5 one
KINDS = ("dinov2", "dinov2-swiglu", "dinov2-registers", "dinov2-registers-swiglu", "vit")
STYLE = {"dinov2": "hf-dinov2", "dinov2-registers": "hf-dinov2-registers", "vit": "hf-vit"}


pytestmark = pytest.mark.usefixtures("one_thread")


def hf_model(kind: str, *, num_labels: int = 0, seed: int = 0):
    """A small random transformers model in float64 (eager attention)."""
    common = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, patch_size=4,
                  image_size=16, attn_implementation="eager", num_labels=num_labels)
    if kind == "vit":
        config = transformers.ViTConfig(intermediate_size=48, **common)
        cls = transformers.ViTForImageClassification if num_labels else transformers.ViTModel
    elif kind.startswith("dinov2-registers"):
        config = transformers.Dinov2WithRegistersConfig(
            num_register_tokens=2, use_swiglu_ffn=kind.endswith("swiglu"), **common)
        cls = (transformers.Dinov2WithRegistersForImageClassification if num_labels
               else transformers.Dinov2WithRegistersModel)
    else:
        config = transformers.Dinov2Config(use_swiglu_ffn=kind.endswith("swiglu"), **common)
        cls = (transformers.Dinov2ForImageClassification if num_labels
               else transformers.Dinov2Model)
    return randomize_parameters(cls(config), seed).double().eval()


def to_v4(state_dict, *, vit: bool):
    """transformers 5.x names -> 4.x names (see the table in the module docstring)."""
    out = {}
    for key, value in state_dict.items():
        if vit:
            key = re.sub(r"^(vit\.)?layers\.", r"\1encoder.layer.", key)
            key = key.replace("mlp.fc1.", "intermediate.dense.")
            key = key.replace("mlp.fc2.", "output.dense.")
        key = re.sub(r"attention\.([qkv])_proj\.",
                     lambda m: "attention.attention."
                     + {"q": "query", "k": "key", "v": "value"}[m.group(1)] + ".", key)
        key = key.replace("attention.o_proj.", "attention.output.dense.")
        key = key.replace("mlp.down_proj.", "mlp.weights_out.")
        if "mlp.up_proj." in key:
            continue
        if "mlp.gate_proj." in key:
            up = state_dict[key.replace("gate_proj", "up_proj")]
            key, value = key.replace("gate_proj", "weights_in"), torch.cat([value, up])
        out[key] = value
    return out


def hf_states(model, x):
    kwargs = {"interpolate_pos_encoding": True} if model.config.model_type == "vit" else {}
    with torch.no_grad():
        out = model(x, output_hidden_states=True, **kwargs)
    return out


def assert_reproduces(loaded, model) -> None:
    ours = loaded.model.double().set_attention("math")
    gen = torch.Generator().manual_seed(1)
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
        out = hf_states(model, x)
        with torch.no_grad():
            trajectory = ours.trajectory(x)                       # (B, L+1, T, D)
        assert trajectory.shape[1] == len(out.hidden_states)
        for depth, theirs in enumerate(out.hidden_states):
            torch.testing.assert_close(trajectory[:, depth], theirs, rtol=0,
                                       atol=1e-6 * theirs.abs().max().item())
        final = out.last_hidden_state if hasattr(out, "last_hidden_state") else None
        if final is not None:
            with torch.no_grad():
                torch.testing.assert_close(ours.norm(trajectory[:, -1]), final, rtol=0,
                                           atol=1e-6 * final.abs().max().item())


@pytest.fixture(scope="module", params=KINDS)
def kind_and_model(request):
    return request.param, hf_model(request.param)


def style_of(kind: str) -> str:
    return STYLE[kind.replace("-swiglu", "")]


def test_from_live_module(kind_and_model):
    kind, model = kind_and_model
    loaded = from_module(model)
    assert (loaded.format, loaded.info["style"]) == ("module", style_of(kind))
    assert loaded.config.num_register_tokens == (2 if "registers" in kind else 0)
    assert loaded.config.mlp == ("swiglu" if kind.endswith("swiglu") else "gelu")
    assert loaded.config.norm_eps == (1e-12 if kind == "vit" else 1e-6)
    assert_reproduces(loaded, model)


def test_from_save_pretrained(kind_and_model, tmp_path):
    kind, model = kind_and_model
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.format == style_of(kind)
    assert_reproduces(loaded, model)


def test_v4_renaming_matches_save_pretrained(kind_and_model, tmp_path):
    """The documented 5.x -> 4.x renaming is what transformers itself writes to disk."""
    from safetensors import safe_open

    kind, model = kind_and_model
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        written = set(handle.keys())
    assert set(to_v4(model.state_dict(), vit=kind == "vit")) == written


@pytest.mark.parametrize("names", ["v5", "v4"])
def test_from_safetensors_names(kind_and_model, tmp_path, names):
    kind, model = kind_and_model
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    if names == "v4":
        tensors = to_v4(tensors, vit=kind == "vit")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(model.config.to_json_string())
    loaded = load_model(tmp_path)
    assert loaded.format == style_of(kind)
    assert_reproduces(loaded, model)


def test_wrong_interpolation_convention_is_detected(kind_and_model):
    """Negative control: the comparison at the second size does see the pos-embed convention."""
    kind, model = kind_and_model
    loaded = from_module(model, arch="interp_offset=0.1")
    with pytest.raises(AssertionError):
        assert_reproduces(loaded, model)


@pytest.mark.parametrize("kind", ["dinov2-registers", "vit"])
def test_image_classification_heads(kind):
    model = hf_model(kind, num_labels=5, seed=3)
    loaded = from_module(model)
    assert loaded.config.num_classes == 5
    assert loaded.config.head_input == ("cls" if kind == "vit" else "cls+mean")
    ours = loaded.model.double()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    with torch.no_grad():
        logits = model(x).logits
        torch.testing.assert_close(ours(x), logits, rtol=0,
                                   atol=1e-6 * logits.abs().max().item())


def test_unsupported_activation_is_refused(tmp_path):
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=48, patch_size=4, image_size=16,
                                    hidden_act="relu")
    model = transformers.ViTModel(config)
    with pytest.raises(ArchitectureError, match="relu"):
        from_module(model)
    model.save_pretrained(tmp_path)
    with pytest.raises(ArchitectureError, match="relu"):
        load_model(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["hidden_act"] == "relu"
