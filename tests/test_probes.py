"""Per-depth probes: equal to a plain scikit-learn fit on the same features, find class
information planted at a known depth, refuse beyond their memory bound, run from the CLI."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import depthflow as df
from depthflow.analysis.context import TokenLayout
from depthflow.errors import ConfigError, InputError
from depthflow.probes import ProbeAnalysis, ProbeConfig, fit_probe, probe_depths, readout_features
from depthflow.probes.fit import outer_folds, probe_scores

from _models import tiny_checkpoint, tiny_loaded

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(n=60, f=6, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n // 3)
    X = rng.normal(size=(n, f)) * rng.uniform(0.5, 3, size=f) + rng.normal(size=f)
    X[:, 0] += signal * y
    return X, y


def test_fit_probe_equals_a_plain_sklearn_fit():
    X, y = _problem()
    model = fit_probe(X, y, Cs=(0.01, 0.1, 1.0), inner_folds=3, seed=4)
    C = model.named_steps["lr"].C
    # the C of a plain GridSearchCV with the same inner folds
    search = GridSearchCV(Pipeline([("s", StandardScaler()), ("lr", LogisticRegression(
        max_iter=2000))]), {"lr__C": [0.01, 0.1, 1.0]},
        cv=StratifiedKFold(3, shuffle=True, random_state=4)).fit(X, y)
    assert C == search.best_params_["lr__C"]
    scaler = StandardScaler().fit(X)
    plain = LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(X), y)
    np.testing.assert_allclose(model.named_steps["lr"].coef_, plain.coef_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.predict_proba(X), plain.predict_proba(scaler.transform(X)),
                               rtol=0, atol=1e-12)


def test_out_of_fold_accuracy_equals_plain_fits_per_fold():
    X, y = _problem(seed=1, signal=0.7)
    splits = outer_folds(y, folds=4, seed=2)
    s = probe_scores(X, y, splits, Cs=(0.1, 1.0), inner_folds=3, seed=2, knn_k=3)
    correct = np.zeros(len(y), bool)
    for (train, test), C in zip(splits, s.chosen_C):
        sc = StandardScaler().fit(X[train])
        lr = LogisticRegression(C=C, max_iter=2000).fit(sc.transform(X[train]), y[train])
        correct[test] = lr.predict(sc.transform(X[test])) == y[test]
    np.testing.assert_array_equal(s.correct, correct)
    assert sorted(np.concatenate([t for _, t in splits]).tolist()) == list(range(len(y)))


def _planted_batches(n=90, depths=6, planted=3, seed=0):
    """States (n, depths, T=3 [cls, patch, patch], D=8): noise everywhere, the label added
    to one feature of every token from depth ``planted`` on."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    states = torch.randn(n, depths, 3, 8, generator=gen)
    states[:, planted:, :, 0] += 8.0 * labels[:, None, None].float()
    for start in range(0, n, 32):
        sl = slice(start, start + 32)
        batch = types.SimpleNamespace(labels=labels[sl].tolist(),
                                      names=[f"x{i}" for i in range(start, min(n, start + 32))])
        yield types.SimpleNamespace(states=states[sl], batch=batch)


def _ctx(n=90, max_megabytes=None):
    layout = TokenLayout(("cls", "patch", "patch"), 0, 0)
    source = types.SimpleNamespace(labels=[i % 2 for i in range(n)], class_names=["a", "b"])
    return types.SimpleNamespace(layout=layout, source=source)


def test_planted_class_information_is_found_at_its_depth():
    probe = ProbeAnalysis(ProbeConfig(folds=3, c_grid=(1.0, 100.0), knn_k=5))
    ctx = _ctx()
    for tb in _planted_batches():
        probe.update(tb, ctx)
    ds = probe.finish(ctx)
    assert list(ds["readout"].values) == ["cls", "mean_patch", "cls+mean_patch"]
    acc = ds["accuracy"].values                                          # (readout, depth)
    assert float(ds["chance"]) == pytest.approx(1 / 2)
    assert (acc[:, :3] < 0.7).all(), acc                  # noise: near chance (n = 90)
    assert (ds["accuracy_low"].values[:, :3] < 0.5).all()
    assert (acc[:, 3:] > 0.95).all(), acc
    assert (ds["best_depth"].values >= 3).all()
    assert (ds["accuracy_low"] <= ds["accuracy"]).all() and (ds["accuracy"]
                                                             <= ds["accuracy_high"]).all()
    assert ds.sizes["subsample"] == 90


def test_the_feature_buffer_refuses_beyond_its_bound():
    probe = ProbeAnalysis(ProbeConfig(max_megabytes=1e-4))
    ctx = _ctx()
    with pytest.raises(ConfigError, match="probes.max_megabytes"):
        for tb in _planted_batches():
            probe.update(tb, ctx)


def test_readouts_and_unlabelled_images():
    states = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    kinds = ("cls", "register", "patch")
    assert torch.equal(readout_features(states, kinds, "registers"), states[:, 1])
    assert readout_features(states, kinds, "cls+mean_patch").shape == (2, 4)
    with pytest.raises(InputError, match="two classes"):
        probe_depths(np.zeros((4, 2, 3)), np.zeros(4, int))


def test_analyze_plugin_and_cli(tmp_path):
    analyses = df.build_analyses(phases=False, dynamics="none",
                                 options=["probes.folds=2", "probes.c_grid=1.0"])
    assert [a.name for a in analyses] == ["probes"]
    path = df.analyze(tiny_loaded(0), df.open_images("digits"), tmp_path / "a.nc",
                      config=df.AnalyzeConfig(limit=40, batch_size=16), analyses=analyses)
    tree = df.open_result(path)
    assert tree["probes"].sizes["depth"] == 4
    ck = tiny_checkpoint(tmp_path / "t.safetensors")
    from depthflow.cli.main import main

    out = tmp_path / "p.nc"
    res = CliRunner().invoke(main, ["probe", str(ck), "--limit", "40", "-o", str(out),
                                    "--folds", "2", "--c-grid", "1.0", "--no-figures"])
    assert res.exit_code == 0, res.output
    assert "best depth" in res.output and "chance" in res.output
    res = CliRunner().invoke(main, ["probe", str(ck), "--limit", "40", "-o", str(out),
                                    "--readouts", "nope"])
    assert res.exit_code != 0 and res.output.strip().startswith("Error:")
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_probe_and_compare_a_fitted_raptor(tmp_path):
    from depthflow.cli.main import main
    from depthflow.raptor.config import RaptorConfig
    from depthflow.raptor.io import save_raptor
    from depthflow.raptor.model import build_raptor

    from _models import tiny_vit

    teacher = tiny_vit(0, depth=3)
    save_raptor(build_raptor(teacher, RaptorConfig(thresholds=(1,), mlp="gelu"), seed=2),
                tmp_path / "r", info={"note": "test"})
    res = CliRunner().invoke(main, ["probe", str(tmp_path / "r"), "--limit", "40", "-o",
                                    str(tmp_path / "p.nc"), "--folds", "2", "--c-grid", "1.0",
                                    "--no-figures", "-q"])
    assert res.exit_code == 0, res.output
    assert df.open_result(tmp_path / "p.nc")["probes"].sizes["depth"] == 4
    ck = tiny_checkpoint(tmp_path / "t.safetensors", depth=3)
    res = CliRunner().invoke(main, ["compare", str(ck), str(tmp_path / "r"), "--limit", "16",
                                    "--batch-size", "8", "--n-boot", "5", "-o",
                                    str(tmp_path / "c.nc"), "--no-figures", "-q"])
    assert res.exit_code == 0, res.output
    ds = df.open_result(tmp_path / "c.nc")["compare"].to_dataset()
    assert ds.sizes["depth"] == 4 and "r2_image_specific" in ds
