"""Phase analysis: the analyze plugin, NetCDF output, trajectory files, CLI, bad input."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import xarray as xr
from _models import DIGITS_PRE, tiny_loaded
from click.testing import CliRunner

from depthflow import dims as D
from depthflow.analyze import AnalyzeConfig, analyze
from depthflow.cli.main import main
from depthflow.data import open_images
from depthflow.errors import ConfigError, InputError
from depthflow.netcdf import write_dataset
from depthflow.phases import (PhaseAnalysis, PhaseConfig, describe_phases, phase_dataset,
                              phase_dataset_from_file, suggest_thresholds)
from depthflow.trajectory import iter_trajectories

SMALL = dict(swap_trials=3, swap_samples=10, cka_views=("paper", "cls"))
DIM_NAMES = {v for k, v in vars(D).items() if k.isupper() and isinstance(v, str)}


def context(loaded, source, token_kinds):
    kinds = [k for k in D.TOKEN_KINDS if k in token_kinds]
    return types.SimpleNamespace(
        loaded=loaded, source=source, preprocessing=DIGITS_PRE, device=torch.device("cpu"),
        dtype="float32", batch_size=8, progress=False, seed=3, token_kinds=token_kinds,
        kinds=kinds, groups=[torch.tensor([i for i, t in enumerate(token_kinds) if t == k])
                             for k in kinds])


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
    _, ds = result
    assert {"phase_cosine_distance", "phase_mse", "phase_cka", "phase_cka_debiased",
            "phase_label", "phase_normalized_cut", "phase_contrast", "phase_modularity",
            "phase_selected_k", "swap_cosine", "swap_accuracy", "swap_r2"} <= set(ds.data_vars)
    for name, var in ds.data_vars.items():
        assert name.startswith(("phase_", "swap_")), name
        assert "long_name" in var.attrs and "units" in var.attrs, name
        assert set(var.dims) <= DIM_NAMES, (name, var.dims)
    assert list(ds[D.VIEW].values) == ["paper", "cls", "register", "patch", "all"]
    assert list(ds[D.SEGMENTATION].values) == ["maxcut_f0.2", "maxcut_f0.1", "maxcut_f0.09",
                                               "dp_k1", "dp_k2"]
    labels = ds["phase_label"].values
    assert labels.shape == (5, 5) and (labels.min(1) == 0).all()
    assert ds.sizes[D.DEPTH_I] == 6 and ds.sizes[D.SWAP_TRIAL] == 3
    assert ds.attrs["phase_notes"].startswith("k_max lowered from 4 to 2")
    cos = ds["phase_cosine_distance"].values
    np.testing.assert_array_equal(cos, cos.transpose(0, 2, 1))


def test_netcdf_round_trip_and_plots(result, tmp_path):
    analysis, ds = result
    path = write_dataset(ds, tmp_path / "phases.nc")
    with xr.open_dataset(path) as back:
        for name in ds.data_vars:
            np.testing.assert_array_equal(back[name].values, ds[name].values)
        figures = analysis.plot(back, tmp_path / "figures")
        assert "maxcut_f0.2" in describe_phases(back)
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
    ds = analysis.finish(types.SimpleNamespace(loaded=None, source=None))
    for name in ds[D.SEGMENTATION].values:
        row = ds.sel({D.SEGMENTATION: name})
        if int(row["phase_count"]) == 2:
            assert str(row["phase_thresholds"].values) == "[3]"
    assert int(ds["phase_selected_k"]) == 2
    assert float(ds["phase_contrast"].sel({D.SEGMENTATION: "dp_k2"})) > 0.5


def test_trajectory_file_gives_the_same_matrices(tmp_path, one_thread):
    loaded = tiny_loaded(1, depth=4)
    config = PhaseConfig(swap_trials=0)
    path = analyze(loaded, open_images("digits", limit=12), tmp_path / "a.nc",
                   config=AnalyzeConfig(states="all", batch_size=5))
    from_file = phase_dataset_from_file(path, config=config, batch_size=5)
    live = phase_dataset(loaded, open_images("digits", limit=12), config=config, batch_size=5)
    for name in ("phase_cosine_distance", "phase_mse", "phase_cka", "phase_label"):
        np.testing.assert_allclose(from_file[name].values, live[name].values, atol=1e-6)
    assert "swap_cosine" not in from_file
    no_states = analyze(loaded, open_images("digits", limit=4), tmp_path / "b.nc")
    with pytest.raises(InputError, match="--states all"):
        phase_dataset_from_file(no_states)


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
        PhaseConfig(**changes).validate()


def test_k_larger_than_layers():
    analysis = PhaseAnalysis(PhaseConfig(k_max=9, swap_trials=0))
    analysis.update_states(torch.randn(4, 7, 3, 4), ["cls", "patch", "patch"])
    with pytest.raises(ConfigError, match="k_max=9 is larger than the number of layers"):
        analysis.finish(types.SimpleNamespace(loaded=None, source=None))


def test_cli_quick_look(tmp_path, one_thread):
    runner = CliRunner()
    out = tmp_path / "p.nc"
    args = ["phases", "--limit", "12", "--swap-trials", "2", "--swap-samples", "6",
            "--batch-size", "6", "-q"]
    res = runner.invoke(main, [*args, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists()
    res = runner.invoke(main, [*args[:-1], "--swap-trials", "0", "--metric", "cka"])
    assert res.exit_code == 0, res.output
    assert "phase_cka (cls)" in res.output and "dp_k4" in res.output
    for bad, message in [(["--fractions", "0,0.2"], "Error: fractions must be in (0, 1)"),
                         (["--k-max", "13"], "Error: k_max=13 is larger than the number"),
                         (["-o", str(out)], "exists; pass --overwrite")]:
        res = runner.invoke(main, [*args, *bad])
        assert res.exit_code == 1 and message in res.output, res.output
        assert "Traceback" not in res.output
