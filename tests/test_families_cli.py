"""``depthflow analyze`` end to end on a random-weight checkpoint of every family, written in
the Hugging Face layout by ``save_pretrained``; ``depthflow fit`` refuses RoPE models."""

from __future__ import annotations

import json

import pytest
import xarray as xr
from click.testing import CliRunner

from depthflow.cli.main import main

from _models import randomize_parameters

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, patch_size=4,
              image_size=16, intermediate_size=48)
# Trajectories, phases (cheap swaps) and figures; the dynamics analyses are exercised on
# these switches by tests/test_families_switches.py (jvp) and by tests/test_cli.py.
CHEAP = ["--set", "phases.swap_trials=2", "--dynamics", "none"]
# The model's own preprocessing config (16 px, as the tiny models were built for): without
# it the family default (resize 256, crop 224) would give 3,136 tokens per image.
PREPROCESSOR = {"do_resize": True, "size": {"height": 16, "width": 16}, "do_center_crop": False,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}


def family_model(kind: str):
    T = transformers
    model = {
        "clip": lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**COMMON)),
        "siglip": lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**COMMON)),
        "dinov3": lambda: T.DINOv3ViTModel(T.DINOv3ViTConfig(num_register_tokens=2, **COMMON)),
        "deit": lambda: T.DeiTModel(T.DeiTConfig(**COMMON)),
        "mae": lambda: T.ViTMAEModel(T.ViTMAEConfig(mask_ratio=0.0, **COMMON)),
        "vit": lambda: T.ViTModel(T.ViTConfig(**COMMON)),
    }[kind]()
    return randomize_parameters(model, 0).eval()


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("kind", ["clip", "dinov3", "deit", "mae", "vit", "siglip"])
def test_analyze_runs_on_every_family(kind, tmp_path):
    family_model(kind).save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    out = tmp_path / "out.nc"
    result = run("analyze", tmp_path / "model", "--images", "digits", "--limit", 6,
                 "--batch-size", 6, "-o", out, "--quiet", *CHEAP)
    assert result.exit_code == 0, result.output
    with xr.open_dataset(out) as ds:
        assert '"cls_token"' in ds.attrs["architecture"]
        assert "preprocessing_source" in ds.attrs["model_info"]
        assert json.loads(ds.attrs["preprocessing"])["crop"] == 16     # the model's config


def test_rope_tables_from_inference_mode_are_not_reused_for_autograd():
    """States computed under inference mode (as analyze does) must not leave cached RoPE
    tables that a later jvp cannot save for backward."""
    import torch

    from depthflow.models.checkpoints import from_module

    model = from_module(family_model("dinov3")).model.double().set_attention("math")
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with torch.inference_mode():
        model.trajectory(x)
    state = model.embed(x)
    _, tangent = torch.func.jvp(lambda s: model.step(1, s, attention="math"), (state,),
                                (torch.ones_like(state),))
    out, pullback = torch.func.vjp(lambda s: model.step(1, s, attention="math"), state)
    assert pullback(torch.ones_like(out))[0].shape == state.shape
    assert tangent.shape == state.shape


def test_fit_refuses_rope_models(tmp_path):
    family_model("dinov3").save_pretrained(tmp_path / "model")
    result = run("fit", tmp_path / "model", "-o", tmp_path / "fit")
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "RoPE" in lines[0], \
        result.output
