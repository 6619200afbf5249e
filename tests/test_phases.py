"""Phase analysis: the analyze plugin, NetCDF output, trajectory files, CLI, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from _models import DIGITS_PRE, tiny_loaded
from click.testing import CliRunner

from depthflow.core import vocabulary as D
from depthflow.analysis.context import AnalysisContext, TokenLayout
from depthflow.analysis.run import AnalyzeConfig, analyze
from depthflow.cli.main import main
from depthflow.errors import ConfigError, InputError
from depthflow.data.images import open_images
from depthflow.io.netcdf import write_tree
from depthflow.phases.analysis import (PhaseAnalysis, PhaseConfig, phase_tree,
                                       phase_tree_from_file, suggest_thresholds)
from depthflow.phases.datasets import describe_phases
from depthflow.data.trajectory import iter_trajectories

SMALL = dict(swap_trials=3, swap_samples=10, cka_views=("paper", "cls"))
DIM_NAMES = {v for k, v in vars(D).items() if k.isupper() and isinstance(v, str)}


def context(loaded, source, token_kinds):
    return AnalysisContext(layout=TokenLayout(tuple(token_kinds), 8, 8), loaded=loaded,
                           source=source, preprocessing=DIGITS_PRE, batch_size=8, seed=3)


NO_MODEL = AnalysisContext(layout=TokenLayout((), 0, 0))


@pytest.fixture(scope="module")
def result(one_thread):
    loaded = tiny_loaded(0, depth=5)
    source = open_images("digits", limit=24)
    analysis = PhaseAnalysis(PhaseConfig(**SMALL))
    ctx = None
    for tb in iter_trajectories(loaded.model, source, preprocessing=DIGITS_PRE, batch_size=8):
        ctx = ctx or context(loaded, source, loaded.model.token_kinds(8, 8))
        analysis.update(tb, ctx)
    return analysis, analysis.finish(ctx)


def test_plugin_dataset_contract(result):
    _, tree = result
    ds = tree.to_dataset()
    sw = tree["swap"].to_dataset(inherit=False)         # its own variables only
    assert {"cosine_distance", "mse", "cka", "cka_debiased", "phase", "normalized_cut",
            "contrast", "modularity", "selected_k"} <= set(ds.data_vars)
    assert {"cosine", "accuracy", "r2"} <= set(sw.data_vars)
    for name, var in [*ds.data_vars.items(), *sw.data_vars.items()]:
        assert not name.startswith(("phase_", "swap_")), name          # plain names
        assert "long_name" in var.attrs and "units" in var.attrs, name
        assert set(var.dims) <= DIM_NAMES, (name, var.dims)
    assert list(ds[D.VIEW].values) == ["paper", "cls", "register", "patch", "all"]
    assert list(ds[D.SEGMENTATION].values) == ["maxcut_f0.2", "maxcut_f0.1", "maxcut_f0.09",
                                               "dp_k1", "dp_k2"]
    labels = ds["phase"].values
    assert labels.shape == (5, 5) and (labels.min(1) == 0).all()
    assert ds.sizes[D.DEPTH_I] == 6 and sw.sizes[D.SWAP_TRIAL] == 3
    assert ds.attrs["notes"].startswith("k_max lowered from 4 to 2")
    cos = ds["cosine_distance"].values
    np.testing.assert_array_equal(cos, cos.transpose(0, 2, 1))


def test_netcdf_round_trip_and_plots(result, tmp_path):
    analysis, node = result
    tree = xr.DataTree(children={"phases": node})
    path = write_tree(tree, tmp_path / "phases.nc")
    with xr.open_datatree(path) as back:
        for group in ("phases", "phases/swap"):
            for name, var in tree[group].to_dataset().data_vars.items():
                np.testing.assert_array_equal(back[group][name].values, var.values)
        with xr.open_dataset(path, group="phases/swap") as plain:      # plain xarray
            assert "cosine" in plain
        (tmp_path / "figures").mkdir()
        figures = analysis.plot(back, tmp_path / "figures")
        assert "maxcut_f0.2" in describe_phases(back["phases"])
    assert [p.name for p in figures] == ["phase_matrices.png", "phase_segmentations.png",
                                         "phase_swap.png"]
    assert all(p.stat().st_size > 1000 for p in figures)


def test_planted_phases_through_the_plugin():
    """Depths 1-3 point one way, 4-6 another (plus noise): thresholds [3]."""
    gen = torch.Generator().manual_seed(0)
    kinds = ["cls"] + ["patch"] * 4
    base = torch.randn(2, 8, generator=gen, dtype=torch.float64)
    pattern = torch.tensor([0, 0, 0, 0, 1, 1, 1])                  # depth 0..6
    states = base[pattern][None, :, None, :] + 0.05 * torch.randn(
        16, 7, len(kinds), 8, generator=gen, dtype=torch.float64)
    analysis = PhaseAnalysis(PhaseConfig(swap_trials=0))
    analysis.update_states(states[:9], kinds)
    analysis.update_states(states[9:], kinds)
    ds = analysis.finish(NO_MODEL).to_dataset()
    for name in ds[D.SEGMENTATION].values:
        row = ds.sel({D.SEGMENTATION: name})
        if int(row["count"]) == 2:
            assert str(row["thresholds"].values) == "[3]"
    assert int(ds["selected_k"]) == 2
    assert float(ds["contrast"].sel({D.SEGMENTATION: "dp_k2"})) > 0.5


def test_trajectory_file_gives_the_same_matrices(tmp_path, one_thread):
    loaded = tiny_loaded(1, depth=4)
    config = PhaseConfig(swap_trials=0)
    path = analyze(loaded, open_images("digits", limit=12), tmp_path / "a.nc",
                   config=AnalyzeConfig(states="all", batch_size=5))
    from_file = phase_tree_from_file(path, config=config, batch_size=5)["phases"]
    live = phase_tree(loaded, open_images("digits", limit=12), config=config,
                      batch_size=5)["phases"]
    for name in ("cosine_distance", "mse", "cka", "phase"):
        np.testing.assert_allclose(from_file[name].values, live[name].values, atol=1e-6)
    assert "swap" not in from_file.children
    no_states = analyze(loaded, open_images("digits", limit=4), tmp_path / "b.nc")
    with pytest.raises(InputError, match="--states all"):
        phase_tree_from_file(no_states)


def test_suggest_thresholds(one_thread):
    loaded = tiny_loaded(2, depth=6)
    source = open_images("digits", limit=40)
    th = suggest_thresholds(loaded, source, k=3, limit=16, batch_size=8)
    assert len(th) == 2 and 1 <= th[0] < th[1] <= 5
    assert len(source) == 40                                      # the source is untouched
    assert suggest_thresholds(loaded, source, k=1) == []
    with pytest.raises(ConfigError, match="larger than the number of layers"):
        suggest_thresholds(loaded, source, k=7)


@pytest.mark.parametrize("changes, message", [
    (dict(fractions=(0.2, 1.0)), r"fractions must be in \(0, 1\)"),
    (dict(fractions=(0.0,)), r"fractions must be in \(0, 1\)"),
    (dict(metrics=("cosine", "pixels")), "metrics must be among"),
    (dict(segment_metric="cka", cka_views=("cls",), segment_view="paper"), "not computed"),
    (dict(views=("paper", "paper")), "distinct"),
    (dict(k_max=0), "k_max must be an integer >= 1"),
    (dict(min_size=0), "min_size"),
    (dict(swap_k=1), "swap_k"),
    (dict(select_tolerance=1.5), "select_tolerance"),
])
def test_bad_config(changes, message):
    with pytest.raises(ConfigError, match=message):
        PhaseConfig(**changes)


def test_k_larger_than_layers():
    analysis = PhaseAnalysis(PhaseConfig(k_max=9, swap_trials=0))
    analysis.update_states(torch.randn(4, 7, 3, 4), ["cls", "patch", "patch"])
    with pytest.raises(ConfigError, match="k_max=9 is larger than the number of layers"):
        analysis.finish(NO_MODEL)


def test_cli_quick_look(tmp_path, one_thread):
    runner = CliRunner()
    out = tmp_path / "p.nc"
    args = ["phases", "--limit", "12", "--swap-trials", "2", "--swap-samples", "6",
            "--batch-size", "6", "-q"]
    res = runner.invoke(main, [*args, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists()
    res = runner.invoke(main, [*args[:-1], "--swap-trials", "0", "--segment-metric", "cka",
                               "--segment-view", "cls"])
    assert res.exit_code == 0, res.output
    assert "cka (cls)" in res.output and "dp_k4" in res.output
    for bad, message, code in [
            (["--fractions", "0,0.2"], "Error: fractions must be in (0, 1)", 2),
            (["--k-max", "13"], "Error: k_max=13 is larger than the number", 2),
            (["-o", str(out)], "exists; pass --overwrite", 1)]:
        res = runner.invoke(main, [*args, *bad])
        assert res.exit_code == code and message in res.output, res.output
        assert "Traceback" not in res.output
        assert res.output.strip().count("\n") == 0                   # one line
