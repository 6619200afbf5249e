"""The shipped default model: loads, has the promised shape, and earns its recorded accuracy."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from depthflow.models.checkpoints import load_depthflow
from depthflow.data.images import load_digits_arrays

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "depthflow" / "assets" / "digits_vit.safetensors"
STUDY_CONFIG = REPO / "studies" / "digits_vit" / "config.py"


@pytest.fixture(scope="module")
def loaded():
    return load_depthflow(ASSET)


def study_config() -> dict:
    spec = importlib.util.spec_from_file_location("digits_vit_config", STUDY_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_file_is_small():
    assert ASSET.stat().st_size < 4 * 1024 * 1024


def test_architecture(loaded):
    cfg = loaded.config
    assert cfg.depth == 12
    assert len(loaded.model.blocks) == 12
    assert cfg.num_register_tokens >= 1
    assert cfg.num_classes == 10 and cfg.head_input == "cls"
    patches = (cfg.img_size // cfg.patch_size) ** 2
    assert loaded.model.num_tokens(8, 8) == 1 + cfg.num_register_tokens + patches
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    images = torch.zeros(2, cfg.in_chans, 8, 8)
    assert loaded.model.embed(images).shape == (2, 1 + cfg.num_register_tokens + patches,
                                                cfg.embed_dim)


def test_preprocessing_recorded(loaded):
    pre = loaded.preprocessing
    assert pre is not None
    assert (pre.resize, pre.crop, pre.mode, pre.interpolation) == (8, 8, "L", "bilinear")
    train, _, _ = load_digits_arrays("train")
    assert pre.mean[0] == round(float(train.mean(dtype="float64")), 4)
    assert pre.std[0] == round(float(train.std(dtype="float64")), 4)


def test_recorded_info(loaded):
    info = loaded.info
    assert info["test_accuracy"] >= 0.97
    assert info["trained_by"] == "studies/digits_vit/train.py"
    assert info["split"] == "sklearn digits, stratified 25% test, seed 0"
    assert info["n_test"] == len(load_digits_arrays("test")[1])
    assert info["n_train"] == len(load_digits_arrays("train")[1])
    for key in ("train_accuracy", "seed", "epochs", "drop_path", "config", "torch_version"):
        assert key in info


def test_reproduces_recorded_test_accuracy(loaded):
    images, labels, _ = load_digits_arrays("test")
    inputs = loaded.preprocessing(torch.from_numpy(images))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the thread count the accuracy was recorded with
    try:
        with torch.no_grad():
            predictions = loaded.model.eval()(inputs).argmax(-1)
    finally:
        torch.set_num_threads(threads)
    correct = int((predictions == torch.from_numpy(labels)).sum())
    assert correct == loaded.info["test_correct"]
    assert abs(correct / len(labels) - loaded.info["test_accuracy"]) <= 1e-9


def test_study_config_matches_checkpoint(loaded):
    config = study_config()
    recorded = json.loads(loaded.info["config"])
    assert recorded == config
    assert loaded.info["seed"] == config["seed"]
    assert loaded.info["epochs"] == config["epochs"]
    assert loaded.info["drop_path"] == config["drop_path"]
    assert loaded.config.to_dict() == {**loaded.config.to_dict(), **config["architecture"]}


def test_is_the_default_of_load_model(loaded):
    from depthflow.models.checkpoints import default_model_path
    from depthflow.api.loader import load_model

    assert default_model_path() == ASSET.resolve()
    assert load_model().sha256 == loaded.sha256
