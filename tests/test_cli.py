"""The depthflow command through click's CliRunner, including every bad input."""

import os
import pickle

import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from depthflow.cli.main import main

from _models import tiny_checkpoint, tiny_vit


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.safetensors")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, match):
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    assert match.lower() in lines[0].lower(), lines[0]


CHEAP_DYNAMICS = [item for pair in (
    ("--set", o) for o in ("dynamics.samples=4", "dynamics.min_per_class=0", "dynamics.k=2",
                           "dynamics.tol=1e-3", "dynamics.stretching_k=1",
                           "dynamics.n_perm=10", "dynamics.n_boot=10",
                           "dynamics.fixed_point_starts=2", "dynamics.fixed_point_max_iter=2",
                           "dynamics.norm_scan_starts=1", "dynamics.frozen_steps=4",
                           "dynamics.frozen_transient=1", "dynamics.attractor_steps=3",
                           "dynamics.robustness_samples=8", "dynamics.recovery_draws=1",
                           "phases.swap_trials=2")) for item in pair] + [
    "--dynamics", "stretching,basins,recovery"]       # the rest: test_dynamics_analysis.py


def test_analyze_and_info(tmp_path, ckpt):
    out = tmp_path / "run.nc"
    result = run("analyze", ckpt, "--images", "digits", "--limit", 24, "--batch-size", 10,
                 "-o", out, "--quiet", *CHEAP_DYNAMICS)
    assert result.exit_code == 0, result.output
    figures = tmp_path / "run-figures"
    assert {p.name for p in figures.iterdir()} >= {"overview.png", "gamma.png", "norm.png",
                                                   "angular_speed.png", "update_rank.png"}
    with xr.open_dataset(out) as ds:
        assert ds.sizes["sample"] == 24
        assert ds.attrs["command"].startswith("depthflow analyze")
    info = run("info", out)
    assert info.exit_code == 0
    assert "gamma" in info.output and "num_samples" in info.output
    assert "selected k" in info.output
    assert "per-layer log sigma_1" in info.output and "recovery at depth" in info.output
    assert "class basins (n = " in info.output
    # existing results are kept without --overwrite, replaced with it
    before = out.read_bytes()
    cheap = ("--no-phases", "--dynamics", "none")
    again = run("analyze", ckpt, "--limit", 5, "-o", out, "--quiet", *cheap)
    assert_one_line_error(again, "exists")
    assert out.read_bytes() == before
    again = run("analyze", ckpt, "--limit", 5, "-o", out, "--quiet", "--overwrite", *cheap)
    assert again.exit_code == 0
    with xr.open_dataset(out) as ds:
        assert ds.sizes["sample"] == 5


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(run("analyze", tmp_path / "nope.pth", "-o", tmp_path / "o.nc"),
                          "not found")
    assert leftovers(tmp_path) == []


def test_truncated_checkpoints(tmp_path, ckpt):
    data = ckpt.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("analyze", tmp_path / "t.safetensors", "-o", tmp_path / "o.nc"),
                          "t.safetensors")
    torch.save(tiny_vit().state_dict(), tmp_path / "full.pth")
    raw = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "t.pth").write_bytes(raw[: len(raw) // 2])
    assert_one_line_error(run("analyze", tmp_path / "t.pth", "-o", tmp_path / "o.nc"), "t.pth")
    assert not (tmp_path / "o.nc").exists()


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump({"cls_token": _Exploit(marker)}, handle)
    result = run("analyze", tmp_path / "evil.pth", "-o", tmp_path / "o.nc")
    assert_one_line_error(result, "unpickle")
    assert not marker.exists()


def test_weights_of_unknown_architecture(tmp_path):
    from safetensors.torch import save_file

    save_file({"encoder.weird.weight": torch.zeros(3, 3)}, str(tmp_path / "w.safetensors"))
    assert_one_line_error(run("analyze", tmp_path / "w.safetensors", "-o", tmp_path / "o.nc"),
                          "w.safetensors")


def test_nan_weights(tmp_path):
    from depthflow.models.checkpoints import save_checkpoint

    model = tiny_vit()
    with torch.no_grad():
        model.blocks[1].attn.qkv.weight[0, 0] = float("nan")
    save_checkpoint(model, tmp_path / "nan.safetensors")
    assert_one_line_error(run("analyze", tmp_path / "nan.safetensors", "-o", tmp_path / "o.nc"),
                          "nan")
    assert not (tmp_path / "o.nc").exists()


def test_empty_and_unreadable_images(tmp_path, ckpt):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("analyze", ckpt, "--images", tmp_path / "empty",
                              "-o", tmp_path / "o.nc"), "no images")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    assert_one_line_error(run("analyze", ckpt, "--images", bad, "-o", tmp_path / "o.nc",
                              "--quiet"), "broken.png")
    assert not (tmp_path / "o.nc").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failure_mid_stream_leaves_no_partial_file(tmp_path, ckpt):
    from PIL import Image
    import numpy as np

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "9_broken.png").write_bytes(b"garbage")        # read in the last batch
    result = run("analyze", ckpt, "--images", folder, "--batch-size", 2, "-o",
                 tmp_path / "o.nc", "--quiet")
    assert_one_line_error(result, "9_broken.png")
    assert leftovers(tmp_path) == ["imgs"]


def test_output_directory_missing_or_read_only(tmp_path, ckpt, monkeypatch):
    assert_one_line_error(run("analyze", ckpt, "-o", tmp_path / "missing" / "o.nc"),
                          "does not exist")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):      # root ignores permission bits: emulate the check
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, m, **k: False if str(p) == str(ro)
                                else real_access(p, m, **k))
        assert_one_line_error(run("analyze", ckpt, "-o", ro / "o.nc"), "not writable")
    finally:
        ro.chmod(0o755)
    assert leftovers(ro) == []


def test_bad_options(tmp_path, ckpt):
    assert_one_line_error(run("analyze", ckpt, "--device", "cuda:3", "-o", tmp_path / "o.nc"),
                          "cuda") if not torch.cuda.is_available() else None
    assert_one_line_error(run("analyze", ckpt, "--images", tmp_path / "x.txt",
                              "-o", tmp_path / "o.nc"), "not found")
    assert_one_line_error(run("info", tmp_path / "none.nc"), "not found")
    (tmp_path / "fake.nc").write_text("not netcdf")
    assert_one_line_error(run("info", tmp_path / "fake.nc"), "not a readable NetCDF")
