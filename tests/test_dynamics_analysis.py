"""The dynamics plug-in of ``depthflow analyze`` on a tiny ViT: groups, labelled per-image
values, summaries with n and intervals, CF flags, figures, batch independence."""

import json

import numpy as np
import pytest
import xarray as xr
from _models import tiny_loaded

import depthflow as df
from depthflow.dynamics.analysis import DynamicsConfig
from depthflow.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

BUDGET = ["dynamics.samples=6", "dynamics.min_per_class=2", "dynamics.k=3",
          "dynamics.class_samples=40", "dynamics.robustness_samples=12",
          "dynamics.n_perm=20", "dynamics.n_boot=20", "dynamics.frozen_samples=2",
          "dynamics.frozen_steps=8", "dynamics.frozen_transient=2",
          "dynamics.attractor_steps=5", "dynamics.fixed_point_starts=4",
          "dynamics.fixed_point_max_iter=3", "dynamics.norm_scan_starts=2",
          "dynamics.recovery_depths=1", "dynamics.recovery_angles=0.1",
          "dynamics.recovery_draws=1", "dynamics.robustness_angles=0.1,1.0"]
GROUPS = ["lyapunov", "frozen_lyapunov", "stretching", "branches", "basins/classes",
          "basins/robustness",
          "basins/attractors", "fixed_points/state", "fixed_points/cls",
          "fixed_points/norm_scan", "recovery"]


def run(path, batch_size=8, options=BUDGET):
    analyses = df.build_analyses(options=["phases.swap_trials=0", *options])
    return df.analyze(tiny_loaded(0, depth=3), df.open_images("digits"), path,
                      config=df.AnalyzeConfig(limit=40, batch_size=batch_size),
                      analyses=analyses)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dyn")
    path = run(tmp / "a.nc")
    return df.open_result(path), tmp


def test_every_group_is_there_and_labelled(result):
    tree, _ = result
    for group in GROUPS:
        ds = tree[f"dynamics/{group}"].to_dataset(inherit=False)
        assert ds.data_vars, group
        for name, var in ds.data_vars.items():
            assert not name.startswith("dyn_"), name                    # plain names
            assert "long_name" in var.attrs and "units" in var.attrs, (group, name)
            if name.endswith("status") or name == "stability":
                assert "flag_values" in var.attrs and "flag_meanings" in var.attrs


def test_jvp_subset_is_labelled_with_global_indices(result):
    tree, _ = result
    ly = tree["dynamics/lyapunov"].to_dataset()
    root = tree.to_dataset()
    idx = ly["sample_index"].values
    labels = ly["label"].values
    assert len(idx) >= 6 and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(root["label"].values[idx], labels)     # same images
    assert list(ly["sample_name"].values) == list(root["sample_name"].values[idx])
    for c in np.unique(root["label"].values[:40]):                       # >= 2 per class
        assert (labels == c).sum() >= min(2, (root["label"].values[:40] == c).sum())


def test_summaries_are_medians_with_intervals(result):
    tree, _ = result
    ly = tree["dynamics/lyapunov"].to_dataset()
    ex = ly["lyapunov_exponent"].sel(restriction="all->all", segment="whole depth")
    med = ly["lyapunov_exponent_median"].sel(restriction="all->all", segment="whole depth")
    np.testing.assert_allclose(med.values, np.nanmedian(ex.values, axis=0))
    low = ly["lyapunov_exponent_low"].sel(restriction="all->all", segment="whole depth")
    high = ly["lyapunov_exponent_high"].sel(restriction="all->all", segment="whole depth")
    assert (low.values <= med.values + 1e-12).all() and (med.values <= high.values + 1e-12).all()
    assert ly["lyapunov_exponent_median"].attrs["n_images"] == ly.sizes["subsample"]
    exps = ex.values
    assert (np.diff(exps, axis=-1) <= 1e-12).all()                        # sorted
    assert list(ly["restriction"].values) == ["all->all", "cls->cls", "all->cls"]


def test_stretching_is_the_one_layer_spectrum(result):
    tree, _ = result
    st = tree["dynamics/stretching"].to_dataset()
    assert st.sizes["layer"] == 3 and "sigma" in st
    assert "stretch" in st["sigma"].attrs["long_name"]
    frac = ((np.log(st["sigma"].isel(mode=0).values) < 0).mean(0))
    np.testing.assert_allclose(st["contracting_fraction"].values, frac)


def test_class_statistics_use_images_not_tokens(result):
    tree, _ = result
    cl = tree["dynamics/basins/classes"].to_dataset()
    assert cl.attrs["n_images"] == cl.sizes["subsample"] == 40
    assert (cl["ncm_p_value"].values >= 1 / 21 - 1e-12).all()           # 20 permutations
    assert list(cl["class"].values) == list(tree.to_dataset()["class"].values)


def test_figures_and_info(result, tmp_path):
    tree, _ = result
    from depthflow.plots.dynamics import plot_dynamics
    from depthflow.reporting.info import describe

    names = {p.name for p in plot_dynamics(tree["dynamics"], tmp_path)}
    assert names == {"dynamics_lyapunov.png", "dynamics_stretching.png", "dynamics_basins.png",
                     "dynamics_recovery.png", "dynamics_fixed_points.png"}
    text = describe(tree.encoding.get("source") or result[1] / "a.nc")
    assert "finite-depth top Lyapunov exponent" in text and "n = " in text


def test_per_sample_values_do_not_depend_on_the_batch_size(result, tmp_path):
    tree, _ = result
    other = df.open_result(run(tmp_path / "b.nc", batch_size=5))
    for group, name in [("stretching", "sigma"), ("recovery", "ratio_random"),
                        ("basins/classes", "entry_depth")]:
        a = tree[f"dynamics/{group}"][name].values
        b = other[f"dynamics/{group}"][name].values
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=f"{group}/{name}")


def test_models_without_labels_or_cls_skip_with_a_reason(tmp_path):
    path = df.analyze(tiny_loaded(0, depth=3), df.open_images("digits"), tmp_path / "c.nc",
                      config=df.AnalyzeConfig(limit=8),
                      analyses=df.build_analyses(phases=False, dynamics="basins",
                                                 options=["dynamics.samples=4",
                                                          "dynamics.class_samples=1",
                                                          "dynamics.n_perm=5",
                                                          "dynamics.n_boot=5"]))
    node = df.open_result(path)["dynamics/basins"]
    assert "not defined" in node.attrs["skipped"]


def test_attractors_keep_only_images_of_usable_classes(tmp_path):
    """Classes with one labelled image in the JVP subset are left out of the attractor
    statistics; the group is labelled with the images actually used (regression:
    `depthflow analyze --limit 20` raised a dimension-size error)."""
    options = [o for o in BUDGET if not o.startswith(("dynamics.samples", "dynamics.min_per"))]
    analyses = df.build_analyses(phases=False, dynamics="basins",
                                 options=["dynamics.samples=20", "dynamics.min_per_class=1",
                                          *options])
    path = df.analyze(tiny_loaded(0, depth=3), df.open_images("digits"), tmp_path / "d.nc",
                      config=df.AnalyzeConfig(limit=20), analyses=analyses)
    tree = df.open_result(path)
    labels = tree.to_dataset()["label"].values
    counts = np.bincount(labels)
    att = tree["dynamics/basins/attractors"].to_dataset()
    assert (counts == 1).any()                       # the case this test is about
    assert att.sizes["subsample"] == int(counts[counts >= 2].sum())
    assert set(att["label"].values.tolist()) == set(np.flatnonzero(counts >= 2).tolist())
    np.testing.assert_array_equal(labels[att["sample_index"].values], att["label"].values)


@pytest.mark.parametrize("changes, message", [
    (dict(analyses=("spectra",)), "unknown dynamics analyses"),
    (dict(samples=0), "samples"),
    (dict(tol=0.5), "tol"),
    (dict(robustness_angles=(4.0,)), "robustness_angles"),
    (dict(recovery_directions=("sideways",)), "recovery_directions"),
    (dict(dtype="float16"), "dtype"),
])
def test_bad_config(changes, message):
    with pytest.raises(ConfigError, match=message):
        DynamicsConfig(**changes)


def test_config_is_recorded(result):
    tree, _ = result
    cfg = json.loads(tree["dynamics"].attrs["config"])
    assert cfg["samples"] == 6 and cfg["k"] == 3
    assert isinstance(xr.open_dataset, object)


def _run_threads(path, threads, options=BUDGET):
    analyses = df.build_analyses(options=["phases.swap_trials=0", *options])
    return df.analyze(tiny_loaded(0, depth=3), df.open_images("digits"), path,
                      config=df.AnalyzeConfig(limit=40, batch_size=8, threads=threads),
                      analyses=analyses)


def test_the_worker_process_gives_the_values_of_one_process(tmp_path, monkeypatch):
    """Two cores and a one-thread (small) model: basins, fixed points and recovery run in
    a forked worker; every value equals the one-process run's, bit for bit."""
    import depthflow.dynamics.analysis as dyn

    calls = []
    real = dyn._compute_in_two
    monkeypatch.setattr(dyn, "_compute_in_two", lambda *a, **k: calls.append(1) or real(*a, **k))
    two = df.open_result(_run_threads(tmp_path / "two.nc", 2))
    assert calls, "the two-process path was not taken"
    one = df.open_result(_run_threads(tmp_path / "one.nc", 1))
    assert len(calls) == 1
    for node in one["dynamics"].subtree:
        ours = two[node.path].to_dataset()
        for name, var in node.to_dataset().data_vars.items():
            np.testing.assert_array_equal(var.values, ours[name].values,
                                          err_msg=f"{node.path}/{name}")
    seconds = json.loads(two["dynamics"].attrs["seconds"])
    assert set(seconds) == {"lyapunov", "stretching", "branches", "basins", "fixed_points",
                            "recovery"} and all(v > 0 for v in seconds.values())


def test_an_error_in_the_worker_is_the_run_s_error(tmp_path, monkeypatch):
    import depthflow.dynamics.measures as measures
    from depthflow.errors import DepthflowError

    def boom(run):
        raise ConfigError("planted failure in the worker")

    monkeypatch.setattr(measures, "recovery", boom)          # inherited by the fork
    with pytest.raises(ConfigError, match="planted failure"):
        _run_threads(tmp_path / "e.nc", 2)
    assert not (tmp_path / "e.nc").exists()

    def dies(run):
        import os
        os._exit(3)

    monkeypatch.setattr(measures, "recovery", dies)
    with pytest.raises(DepthflowError, match="DEPTHFLOW_DYNAMICS_WORKERS=1"):
        _run_threads(tmp_path / "d.nc", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
