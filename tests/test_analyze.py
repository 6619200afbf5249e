"""analyze(): streamed trajectories into a self-describing NetCDF file."""

import json

import numpy as np
import pytest
import torch
import xarray as xr

from depthflow.data import tokens
from depthflow.analysis.run import AnalyzeConfig, analyze
from depthflow.data.images import open_images
from depthflow.errors import ConfigError, OutputError
from depthflow.models.preprocessing import Preprocessing

from _models import DIGITS_PRE, tiny_loaded


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("an") / "run.nc"
    analyze(tiny_loaded(), open_images("digits"), path,
            config=AnalyzeConfig(batch_size=16, states="all", limit=40, image_ranks=True))
    return path


def test_file_is_self_describing(result):
    with xr.open_dataset(result) as ds:
        assert ds.sizes == {"sample": 40, "depth": 4, "step": 3, "token": 19, "kind": 3,
                            "feature": 32, "class": 10, "logit": 10}
        assert list(ds["kind"].values) == ["cls", "register", "patch"]
        assert list(ds["token_kind"].values[:4]) == ["cls", "register", "register", "patch"]
        for name, var in ds.variables.items():
            assert "long_name" in var.attrs and "units" in var.attrs, name
        for key in ("checkpoint", "checkpoint_sha256", "architecture", "preprocessing",
                    "depthflow_version", "torch_version", "seed", "config", "command", "images"):
            assert key in ds.attrs, key
        assert json.loads(ds.attrs["config"])["states"] == "all"
        assert json.loads(ds.attrs["architecture"])["depth"] == 3
        assert Preprocessing.from_dict(json.loads(ds.attrs["preprocessing"])) == DIGITS_PRE
        assert ds["label"].values.tolist() == open_images("digits", limit=40).labels.tolist()


def test_values_match_direct_computation(result):
    loaded = tiny_loaded()
    (batch,) = list(open_images("digits", limit=40).batches(40, preprocessing=DIGITS_PRE))
    with torch.no_grad():
        traj = loaded.model.trajectory(batch.images)
        logits = loaded.model(batch.images)
    groups = [torch.tensor([0]), torch.tensor([1, 2]), torch.arange(3, 19)]
    with xr.open_dataset(result) as ds:
        np.testing.assert_allclose(ds["state"].values, traj.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ds["cls_state"].values, traj[:, :, 0].numpy(), atol=1e-5)
        np.testing.assert_allclose(ds["gamma"].values,
                                   tokens.kind_mean(tokens.gamma(traj), groups).numpy(),
                                   atol=1e-5)
        np.testing.assert_allclose(ds["angular_speed"].values,
                                   tokens.kind_mean(tokens.angular_speed(traj), groups).numpy(),
                                   atol=1e-5)
        np.testing.assert_array_equal(ds["prediction"].values, logits.argmax(-1).numpy())
        acc = float((logits.argmax(-1) == batch.labels).float().mean())
        assert ds.attrs["head_accuracy"] == pytest.approx(acc)
        np.testing.assert_allclose(ds["gamma"].isel(depth=-1).values, 1.0, atol=1e-5)


def test_batch_size_does_not_change_results(tmp_path, result):
    other = tmp_path / "b.nc"
    analyze(tiny_loaded(), open_images("digits"), other,
            config=AnalyzeConfig(batch_size=7, states="none", limit=40, image_ranks=True))
    with xr.open_dataset(result) as a, xr.open_dataset(other) as b:
        assert "state" not in b and "cls_state" not in b
        for name in ("norm", "gamma", "angular_speed", "patch_coherence",
                     "update_stable_rank", "population_stable_rank", "cls_class_separation"):
            np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-4, atol=1e-5,
                                       err_msg=name)


def test_float64_and_bfloat16_compute(tmp_path, result):
    f64, bf16 = tmp_path / "f64.nc", tmp_path / "bf16.nc"
    analyze(tiny_loaded(), open_images("digits"), f64,
            config=AnalyzeConfig(dtype="float64", limit=40, states="none"))
    analyze(tiny_loaded(), open_images("digits"), bf16,
            config=AnalyzeConfig(dtype="bfloat16", limit=40, states="none"))
    with xr.open_dataset(result) as a, xr.open_dataset(f64) as b, xr.open_dataset(bf16) as c:
        np.testing.assert_allclose(a["gamma"].values, b["gamma"].values, atol=1e-4)
        assert c.attrs["compute_dtype"] == "bfloat16"
        np.testing.assert_allclose(a["gamma"].values, c["gamma"].values, atol=0.1)


def test_guards(tmp_path):
    out = tmp_path / "x.nc"
    out.write_text("keep me")
    with pytest.raises(OutputError, match="exists"):
        analyze(tiny_loaded(), open_images("digits"), out, config=AnalyzeConfig(limit=4))
    assert out.read_text() == "keep me"
    with pytest.raises(ConfigError, match="states"):
        AnalyzeConfig(states="some").validate()
    with pytest.raises(ConfigError, match="CUDA"):
        AnalyzeConfig(device="cuda:7").validate() if not torch.cuda.is_available() else \
            (_ for _ in ()).throw(ConfigError("CUDA present"))


def test_automatic_batch_size_bounds_state_memory(tmp_path):
    from depthflow.analysis.run import auto_batch_size
    from depthflow.models.checkpoints import LoadedModel
    from depthflow.models.preprocessing import dinov2_preprocessing
    from depthflow.models.vit import ViT, ViTConfig

    loaded = tiny_loaded()
    per_image = 4 * 19 * 32 * 4                      # (L+1) * T * D float32
    assert auto_batch_size(loaded, DIGITS_PRE, budget_bytes=10 * per_image) == 10
    assert auto_batch_size(loaded, DIGITS_PRE, budget_bytes=per_image // 2) == 1
    assert auto_batch_size(loaded, DIGITS_PRE) == 64                 # capped
    vits = LoadedModel(ViT(ViTConfig()), "vits", "test")
    assert auto_batch_size(vits, dinov2_preprocessing(224)) == 52     # 13 x 257 x 384 floats
    out = tmp_path / "auto.nc"
    analyze(loaded, open_images("digits"), out, config=AnalyzeConfig(limit=9))
    with xr.open_dataset(out) as ds:
        assert json.loads(ds.attrs["config"])["batch_size"] == 64    # recorded as used


class _CountingAnalysis:
    """A plug-in that counts the samples it saw and adds variables of every kind."""

    name = "count"
    group = "count"

    def __init__(self):
        self.seen = 0

    def update(self, tb, ctx):
        self.seen += tb.states.shape[0]
        assert ctx.layout.token_kinds[0] == "cls"
        assert ctx.layout.kinds == ["cls", "register", "patch"]

    def finish(self, ctx):
        depth = ctx.loaded.config.depth
        return xr.Dataset(
            {"count_seen": ((), self.seen, {"long_name": "samples seen", "units": "1"}),
             "count_depth": (("depth",), np.arange(depth + 1.0) * 2,
                             {"long_name": "twice the depth", "units": "1"}),
             "count_flag": (("count_i",), np.array([True, False]),
                            {"long_name": "flags", "units": "1"}),
             "count_name": (("count_i",), np.array(["a", "bb"]),
                            {"long_name": "names", "units": ""})},
            coords={"depth": np.arange(depth + 1)}, attrs={"count_config": "{}"})

    def plot(self, ds, out_dir):
        path = out_dir / "count.png"
        path.write_bytes(b"png")
        return [path]


def test_plugin_variables_join_the_file(tmp_path):
    plugin = _CountingAnalysis()
    path = analyze(tiny_loaded(), open_images("digits"), tmp_path / "p.nc", analyses=[plugin],
                   config=AnalyzeConfig(batch_size=8, limit=20, states="none"))
    with xr.open_dataset(path, group="count") as ds:
        assert int(ds["count_seen"]) == 20
        np.testing.assert_array_equal(ds["count_depth"].values, [0, 2, 4, 6])
        np.testing.assert_array_equal(ds["count_flag"].values, [1, 0])
        assert list(ds["count_name"].values) == ["a", "bb"]
        assert ds.attrs["count_config"] == "{}"
    with xr.open_dataset(path) as root:
        assert root.attrs["analyses"] == "trajectories,count"
        assert "count_seen" not in root


def test_plugin_dimension_mismatch_leaves_nothing(tmp_path):
    class Bad(_CountingAnalysis):
        def finish(self, ctx):
            return xr.Dataset({"bad": (("depth",), np.zeros(99), {"long_name": "x",
                                                                   "units": "1"})})

    with pytest.raises(ValueError, match="dimension 'depth'"):
        analyze(tiny_loaded(), open_images("digits"), tmp_path / "p.nc", analyses=[Bad()],
                config=AnalyzeConfig(batch_size=8, limit=8, states="none"))
    assert list(tmp_path.iterdir()) == []
