"""Model vs model: a model against itself gives CKA 1 on the diagonal (1e-12), against a
random-weight copy it does not, an orthogonal rotation of the features changes nothing;
the streamed cross-model CKA equals the reference form and the phases' accumulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import depthflow as df
from depthflow.compare import CrossCKA, compare_models, compare_states, cross_linear_cka
from depthflow.compare import random_copy
from depthflow.phases.similarity import LinearCKAAccumulator

from _models import tiny_checkpoint, tiny_loaded

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_loaded(0, dtype=torch.float64)


@pytest.fixture(scope="module")
def images():
    return df.open_images("digits").head(48)


def test_a_model_against_itself_is_the_identity(model, images):
    ds = compare_models(model, model, images, views=("cls", "mean_patch", "registers", "patch"),
                        batch_size=12, dtype="float64", n_boot=20)
    assert list(ds["view"].values) == ["cls", "mean_patch", "registers", "patch"]
    for key in ("matched_cka", "matched_cka_debiased", "r2_image_specific"):
        got = ds[key].values.copy()
        assert np.isnan(got[[0, 2], 0]).all()      # cls and registers at depth 0: constant
        got[[0, 2], 0] = 1.0
        np.testing.assert_allclose(got, 1.0, rtol=0, atol=1e-12, err_msg=key)
    best = ds["best_match"].values[[1, 3], :]                     # the identity alignment
    np.testing.assert_array_equal(best, np.broadcast_to(np.arange(best.shape[1]), best.shape))
    assert (np.abs(ds["matched_cka_debiased_null"].values[:, 1:]) < 0.5).all()


def test_a_random_weight_copy_is_not_the_identity(model, images):
    other = random_copy(model, seed=3)
    ds = compare_models(model, other, images, batch_size=12, dtype="float64", n_boot=20)
    last = ds["matched_cka"].isel(depth=-1).values
    assert (last < 0.99).all(), last
    assert (ds["matched_cka_debiased_high"].isel(depth=-1).values < 1.0).all()


@settings(max_examples=8)
@given(seed=st.integers(0, 2**16))
def test_an_orthogonal_rotation_of_the_features_keeps_cka(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 3, 5, 6, generator=gen, dtype=torch.float64)        # (B, L+1, T, D)
    x[:, 1:] += x[:, :1]                                                    # related depths
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    kinds = ["cls", "patch", "patch", "patch", "patch"]
    batches = lambda y: [(x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]  # noqa: E731
    same = compare_states(batches(x), kinds, kinds, n_boot=5)
    rot = compare_states(batches(x @ q), kinds, kinds, n_boot=5)
    np.testing.assert_allclose(np.diagonal(rot["cka"].values, axis1=1, axis2=2), 1.0,
                               rtol=0, atol=1e-12)
    for key in ("cka", "cka_debiased"):
        np.testing.assert_allclose(rot[key].values, same[key].values, rtol=0, atol=1e-10)


def test_streamed_cross_cka_equals_the_reference_and_the_phases_accumulator():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(30, 2, 5, generator=gen, dtype=torch.float64) + x[:, :2, :1]
    acc = CrossCKA()
    for i in range(0, 30, 10):
        acc.update(x[i:i + 10], y[i:i + 10])
    res = acc.result(n_boot=10)
    for i in range(3):
        for j in range(2):
            assert res["cka"][i, j] == pytest.approx(float(cross_linear_cka(x[:, i], y[:, j])),
                                                     abs=1e-12)
    same, ref = CrossCKA(), LinearCKAAccumulator()
    for i in range(0, 30, 10):
        same.update(x[i:i + 10], x[i:i + 10])
        ref.update(x[i:i + 10])
    out, expected = same.result(n_boot=10), ref.result()
    np.testing.assert_allclose(out["cka"], expected["cka"].numpy(), atol=1e-12)
    np.testing.assert_allclose(out["cka_debiased"], expected["cka_debiased"].numpy(),
                               atol=1e-12)


def test_cli_models_files_and_bad_input(tmp_path):
    from depthflow.cli.main import main

    ck = tiny_checkpoint(tmp_path / "t.safetensors")
    run = lambda *a: CliRunner().invoke(main, [str(v) for v in a])   # noqa: E731
    res = run("compare", ck, ck, "--limit", 24, "--batch-size", 8, "-o", tmp_path / "c.nc",
              "--n-boot", 10)
    assert res.exit_code == 0, res.output
    assert "matched debiased CKA" in res.output
    assert (tmp_path / "c-figures" / "compare.png").stat().st_size > 0
    tree = df.open_result(tmp_path / "c.nc")
    assert "compare" in tree.children and tree.attrs["command"].startswith("depthflow compare")
    for name in ("a", "b"):
        r = run("analyze", ck, "--limit", 16, "--states", "all", "--no-phases", "--dynamics",
                "none", "--no-figures", "-q", "-o", tmp_path / f"{name}.nc")
        assert r.exit_code == 0, r.output
    res = run("compare", tmp_path / "a.nc", tmp_path / "b.nc", "--batch-size", 8,
              "-o", tmp_path / "f.nc", "--no-figures", "-q")
    assert res.exit_code == 0, res.output
    ds = df.open_result(tmp_path / "f.nc")["compare"].to_dataset()
    np.testing.assert_allclose(ds["matched_cka"].values[:, 1:], 1.0, atol=1e-6)   # float32
    res = run("compare", tmp_path / "a.nc", ck, "-o", tmp_path / "g.nc")
    assert res.exit_code == 2 and res.output.startswith("Error:"), res.output
    assert len(res.output.strip().splitlines()) == 1
    res = run("compare", ck, ck, "--views", "nope", "-o", tmp_path / "h.nc")
    assert res.output.startswith("Error:") and len(res.output.strip().splitlines()) == 1
