"""Smoke test of ``make bench``: every ``studies/bench_*.py`` with a ``--quick`` mode runs
through the runner and reports well-formed rows (no timing is asserted), and the row
protocol of ``studies/benchmarks/report.py`` round-trips."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies" / "benchmarks"))

import report  # noqa: E402

def _load(name: str, path: Path):
    # by path, under a unique name: other tests load other studies' ``run.py``
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench_run = _load("benchmarks_run", ROOT / "studies" / "benchmarks" / "run.py")


def test_row_protocol_round_trips(capsys):
    row = report.emit("x vs y", 2.0, baseline=10.0, unit="s", target=4.0)
    assert row["ratio"] == 5.0 and row["met"] is True
    rate = report.emit("rate", 3.0, baseline=2.0, unit="steps/s", higher_is_better=True,
                       target=2.0)
    assert rate["ratio"] == 1.5 and rate["met"] is False
    rows = report.parse_rows("noise\n" + capsys.readouterr().out + "BENCH {broken\n")
    assert [r["benchmark"] for r in rows] == ["x vs y", "rate"]
    text = bench_run.table([("s.py", r) for r in rows], "machine", "2026-01-01")
    assert text.count("\n") == 4 and "| 5 |" in text and "| NO |" in text


def test_runner_discovers_every_bench_script():
    names = {p.name for p in bench_run.scripts()}
    assert {"bench_phases.py", "bench_extraction.py"} <= names
    assert all(n.startswith("bench_") for n in names)
    # every script reports rows for RESULTS.md (not only its wall time)
    silent = [p.name for p in bench_run.scripts() if "emit(" not in p.read_text()]
    assert not silent, silent


def test_quick_benchmarks_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "RESULTS.md"
    code = bench_run.main(["--quick", "--output", str(out), "--timeout", "600"])
    text = out.read_text()
    assert code == 0, text
    lines = [l for l in text.splitlines() if l.startswith("| bench_")]
    quick = [p.name for p in bench_run.scripts() if bench_run.has_quick(p)]
    assert quick and {l.split("|")[1].strip() for l in lines} == set(quick)
    assert "FAILED" not in text


def test_a_partial_run_keeps_the_other_scripts_rows(tmp_path, monkeypatch):
    out = tmp_path / "RESULTS.md"
    old = bench_run.table([("bench_a.py", {"benchmark": "a", "ours": 1.0}),
                           ("bench_c.py", {"benchmark": "c old", "ours": 3.0})], "m", "d")
    out.write_text("# Benchmark results\n\n" + old)
    script = tmp_path / "bench_c.py"
    monkeypatch.setattr(bench_run, "scripts", lambda: [script])
    monkeypatch.setattr(bench_run, "run_one",
                        lambda path, quick, timeout: ([{"benchmark": "c new", "ours": 2.0}],
                                                      None))
    assert bench_run.main(["--only", "bench_c", "--output", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| bench_")]
    assert [r.split("|")[2].strip() for r in rows] == ["a", "c new"]
