"""The result file in NetCDF groups, read by plain xarray; the CLI's conventions."""

from __future__ import annotations

import os
import stat

import netCDF4
import numpy as np
import pytest
import xarray as xr
from _models import tiny_loaded
from click.testing import CliRunner

import depthflow as df
from depthflow.cli.main import main
from depthflow.errors import InputError
from depthflow.data.images import unique_names
from depthflow.core.vocabulary import FORMAT_VERSION

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    out = tmp_path_factory.mktemp("layout") / "run.nc"
    return df.analyze(tiny_loaded(0, depth=4), df.open_images("digits"), out,
                      config=df.AnalyzeConfig(limit=30, batch_size=8),
                      analyses=df.build_analyses(
                          dynamics="stretching",
                          options=["phases.swap_trials=2", "phases.swap_samples=8",
                                   "dynamics.samples=4", "dynamics.k=2"]))


def test_plain_xarray_reads_root_groups_and_tree(path):
    with xr.open_dataset(path) as root:
        assert root.attrs["Conventions"] == "CF-1.11"
        assert root.attrs["depthflow_format_version"] == FORMAT_VERSION
        assert {"label", "sample_name", "class_name"} <= set(root.coords)
        assert "phase" not in root and "cosine_distance" not in root
        by_label = root["gamma"].groupby("label").mean()                 # labels as coords
        assert by_label.sizes["label"] == len(np.unique(root["label"].values))
        name = str(root["sample_name"].values[3])
        picked = root.set_xindex("sample_name").sel(sample_name=name)
        assert int(picked["sample"]) == 3
    with xr.open_dataset(path, group="phases") as phases:
        assert {"cosine_distance", "phase", "selected_k"} <= set(phases.data_vars)
    with xr.open_dataset(path, group="phases/swap") as swap:
        assert "cosine" in swap
    with xr.open_dataset(path, group="dynamics/stretching") as st:
        assert {"sample_index", "label", "sample_name"} <= set(st.coords)
    tree = xr.open_datatree(path)
    assert {"phases", "dynamics"} <= set(tree.children)


def test_open_result_validates(path, tmp_path):
    tree = df.open_result(path)
    assert "phases" in tree.children
    old = tmp_path / "old.nc"
    with netCDF4.Dataset(old, "w") as nc:                  # a file of the flat layout
        nc.depthflow_version = "0.1.0"
        nc.createDimension("sample", 1)
        nc.createVariable("phase_label", "i4", ("sample",))[:] = [0]
    with pytest.raises(InputError, match="re-run depthflow analyze"):
        df.open_result(old)
    other = tmp_path / "other.nc"
    xr.Dataset({"x": ("a", [1.0])}).to_netcdf(other)
    with pytest.raises(InputError, match="not a depthflow result"):
        df.open_result(other)
    with pytest.raises(InputError, match="is a directory"):
        df.open_result(tmp_path)


def test_sample_names_are_made_unique():
    assert unique_names(["a", "b", "a", "a"]) == ["a", "b", "a#2", "a#3"]
    names = unique_names(["x#2", "x", "x"])
    assert len(set(names)) == 3 and names[:2] == ["x#2", "x"]


def test_info_on_the_old_layout_is_one_line(tmp_path):
    old = tmp_path / "old.nc"
    with netCDF4.Dataset(old, "w") as nc:
        nc.depthflow_version = "0.1.0"
    res = CliRunner().invoke(main, ["info", str(old)])
    assert res.exit_code == 1 and "re-run depthflow analyze" in res.output
    assert res.output.strip().count("\n") == 0


def test_figures_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        res = CliRunner().invoke(main, ["analyze", "-o", str(tmp_path / "r.nc"), "--limit", "12",
                                        "--dynamics", "none", "--set",
                                        "phases.swap_trials=2", "-q"])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    folder = tmp_path / "r-figures"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    modes = {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes == {0o644}
    assert stat.S_IMODE((tmp_path / "r.nc").stat().st_mode) == 0o644
    names = {p.name for p in folder.iterdir()}
    assert {"overview.png", "phase_matrices.png", "phase_segmentations.png",
            "phase_swap.png"} <= names


@pytest.mark.parametrize("args, code", [
    (["analyze", "--set", "phases.nope=1"], 2),
    (["analyze", "--set", "nope.k=1"], 2),
    (["analyze", "--batch-size", "0"], 2),
    (["analyze", "--images", "/nonexistent/folder"], 1),
    (["analyze", "no-such-model"], 1),
    (["phases", "--k-max", "0"], 2),
    (["fit", "--k", "0"], 2),
    (["info", "/nonexistent.nc"], 1),
])
def test_exit_codes_usage_2_data_1(args, code, tmp_path):
    res = CliRunner().invoke(main, [*args, *(["-o", str(tmp_path / "x")]
                                             if args[0] != "info" else [])])
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output


def test_phases_and_analyze_list_the_same_image_sources():
    runner = CliRunner()
    texts = [runner.invoke(main, [cmd, "--help"]).output for cmd in ("analyze", "phases")]
    for source in ("digits", "lfw", "skimage", ".npy/.npz"):
        assert all(source in t for t in texts), source
