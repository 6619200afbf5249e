"""Smoke tests of the Raptor studies 1-4 at their ``--tiny`` size (each writes every
output: config.json, results.nc, table.md, summary.json, figures)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUDIES = ["stochastic_depth", "partitions", "overfitting", "ablation"]
KEYS = {"study", "claim", "paper", "ours", "interval", "n", "agrees", "note"}


@pytest.mark.parametrize("study", STUDIES)
def test_study_tiny_writes_every_output(study, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "studies" / study / "run.py"), "--tiny",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("config.json", "results.nc", "table.md", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "figures").glob("*.png"))
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert rows and all(set(r) == KEYS for r in rows)
    assert all(r["agrees"] in ("yes", "partly", "no", "not comparable") for r in rows)
    assert all(r["study"] == study for r in rows)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "config" in config and "versions" in config
    import xarray as xr
    with xr.open_dataset(tmp_path / "results.nc") as ds:
        assert ds.sizes and "config" in ds.attrs
        assert (tmp_path / "results.nc").stat().st_size < 2_000_000     # no raw states
    assert "|" in (tmp_path / "table.md").read_text()
