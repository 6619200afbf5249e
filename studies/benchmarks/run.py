"""Run every ``studies/bench_*.py`` and write ``studies/benchmarks/RESULTS.md`` (``make bench``).

    python studies/benchmarks/run.py            # full sizes, writes RESULTS.md
    python studies/benchmarks/run.py --quick    # smoke test: tiny sizes, writes nothing
                                                # unless --output is given

Scripts are discovered by name (new ``bench_*.py`` files join automatically). Each is run in
its own process (``--quick`` passed when the script accepts it; scripts without a quick mode
are skipped in quick runs); its ``BENCH {json}`` lines (:mod:`report`) become table rows. A
script that prints no rows still gets one row with its wall time; one that fails gets a
row saying so, and the runner exits 1 at the end.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STUDIES = HERE.parent
sys.path.insert(0, str(HERE))

from report import parse_rows  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        threads = torch.get_num_threads()
    except Exception:  # noqa: BLE001 - the table must still be written
        gpu, threads = "torch unavailable", os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} CPUs ({threads} torch threads), {gpu}, "
            f"load {load:.1f} at start")


def scripts() -> list[Path]:
    return sorted(STUDIES.glob("bench_*.py"))


def has_quick(path: Path) -> bool:
    return "--quick" in path.read_text()


def run_one(path: Path, quick: bool, timeout: float) -> tuple[list[dict], str | None]:
    cmd = [sys.executable, str(path), *(["--quick"] if quick else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STUDIES.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    tic = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - tic
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return parse_rows(done.stdout), f"exit {done.returncode}: {last}"
    rows = parse_rows(done.stdout)
    if not rows:
        rows = [{"benchmark": f"{path.stem} (whole script; prints no rows)", "baseline": None,
                 "ours": round(wall, 2), "unit": "s", "ratio": None, "target": None,
                 "met": None, "note": "wall time"}]
    return rows, None


def fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        text = f"{value:.3g}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def table(results: list[tuple[str, dict]], where: str, date: str) -> str:
    lines = ["| script | benchmark | baseline | ours | ratio | target | met | machine | date "
             "| note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for script, r in results:
        unit = r.get("unit", "")
        lines.append(f"| {script} | {r['benchmark']} | {fmt(r.get('baseline'), unit)} | "
                     f"{fmt(r.get('ours'), unit)} | {fmt(r.get('ratio'))} | "
                     f"{fmt(r.get('target'))} | {fmt(r.get('met'))} | {where} | {date} | "
                     f"{(r.get('note') or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--output", type=Path, default=None,
                   help="table file [default: studies/benchmarks/RESULTS.md; none with --quick]")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per script")
    p.add_argument("--only", default=None,
                   help="run only scripts whose name contains this (their rows replace "
                        "theirs in an existing table; other scripts' rows are kept)")
    args = p.parse_args(argv)
    output = args.output or (None if args.quick else HERE / "RESULTS.md")
    where = machine()
    date = datetime.date.today().isoformat()
    results: list[tuple[str, dict]] = []
    failed = []
    for path in scripts():
        if args.only and args.only not in path.name:
            continue
        if args.quick and not has_quick(path):
            print(f"{path.name}: skipped (no --quick mode)", flush=True)
            continue
        print(f"{path.name}: running{' (quick)' if args.quick else ''}", flush=True)
        rows, error = run_one(path, args.quick, args.timeout)
        for row in rows:
            results.append((path.name, row))
        if error:
            failed.append(path.name)
            results.append((path.name, {"benchmark": f"FAILED: {error}", "baseline": None,
                                        "ours": None, "ratio": None, "target": None,
                                        "met": False}))
            print(f"{path.name}: {error}", file=sys.stderr, flush=True)
    text = ("# Benchmark results\n\nWritten by `make bench` (`studies/benchmarks/run.py`); "
            "ratio = baseline / ours for times and memory (higher is better), target = the "
            "promised ratio.\n\n" + table(results, where, date))
    if output is not None and args.only and output.is_file():
        # a partial run replaces its scripts' rows and keeps every other script's rows
        ran = {name for name, _ in results}
        kept = [line for line in output.read_text().splitlines()
                if line.startswith("| bench_") and line.split("|")[1].strip() not in ran]
        lines = text.rstrip("\n").splitlines()
        head = [line for line in lines if not line.startswith("| bench_")]
        rows = [line for line in lines if line.startswith("| bench_")] + kept
        rows.sort(key=lambda line: line.split("|")[1].strip())    # stable: script order
        text = "\n".join(head + rows) + "\n"
    if output is not None:
        output.write_text(text)
        print(f"wrote {output}")
    else:
        print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
