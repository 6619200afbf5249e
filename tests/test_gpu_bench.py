"""``studies/benchmarks/gpu.py --quick`` (``make bench-gpu`` on the CPU, tiny sizes): every
part runs and reports its figures; the agreement check passes on two batch sizes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_runs_quick_on_the_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "studies" / "benchmarks"
                                                  / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
        result = module.main(["--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert [r["model"] for r in result["extraction"]] == ["ViT-S/14", "ViT-B/14"]
    assert all(r["ours"] > 0 and r["baseline"] > 0 for r in result["extraction"])
    assert result["raptor"]["steps_per_s"]["depthflow"] > 0
    assert result["agreement"]["within"], result["agreement"]
    assert set(result["agreement"]["per_variable"]) >= {"norm", "gamma", "logits"}
    assert json.loads((tmp_path / "gpu.json").read_text())["quick"] is True
    assert out.count("BENCH ") >= 4 and "| Raptor MFU (bf16) |" in out
