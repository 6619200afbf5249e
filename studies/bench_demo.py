"""Benchmark: ``make demo`` stage by stage, on an idle machine and under a background load.

Runs the demo command (``depthflow analyze --image-ranks --overwrite -o ... --figures ...``,
what ``make demo`` runs) with ``--profile`` in a fresh process, first alone, then while
``--busy`` other processes each keep one core busy (a pure-Python loop), and prints one row
per stage (load, images, forward, summaries, each analysis, figures, write) with the idle
seconds as the baseline and the loaded seconds as ``ours`` side by side, plus the total
against the 120 s target (idle) and against twice the idle time (loaded).

Usage: ``python studies/bench_demo.py [--quick] [--busy 1] [--no-loaded]``. ``--quick``:
24 images, stretching only on 2 of them, no loaded run (a smoke test).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
from report import emit  # noqa: E402

ROW = re.compile(r"^(?P<name>.+?)\s+(?P<sec>\d+\.\d+)\s+(?P<calls>\d+)\s+(?P<share>[\d.]+)%$")
TOTAL = re.compile(r"^total \(wall\)\s+(?P<sec>\d+\.\d+)$")
QUICK = ["--limit", "24", "--no-phases", "--dynamics", "stretching",
         "--set", "dynamics.samples=2", "--set", "dynamics.min_per_class=0",
         "--set", "dynamics.k=1", "--set", "dynamics.stretching_k=1",
         "--set", "dynamics.tol=1e-3", "--set", "dynamics.n_boot=10"]


def depthflow_cli() -> list[str]:
    exe = Path(sys.executable).with_name("depthflow")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "depthflow.cli.main"]


def demo(tmp: Path, extra: list[str]) -> tuple[dict[str, float], float, float]:
    """One demo run with --profile: stage seconds, total wall seconds, wall incl. start."""
    cmd = [*depthflow_cli(), "analyze", "--image-ranks", "--overwrite", "-q", "--profile",
           "-o", str(tmp / "demo.nc"), "--figures", str(tmp / "demo-figures"), *extra]
    tic = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - tic
    stages, total = {}, float("nan")
    for line in done.stderr.splitlines():
        if m := ROW.match(line.strip()):
            stages[m["name"].strip()] = float(m["sec"])
        elif m := TOTAL.match(line.strip()):
            total = float(m["sec"])
    if not stages:
        raise SystemExit(f"no profile in the demo's output:\n{done.stderr[-2000:]}")
    return stages, total, wall


def _spin(stop) -> None:               # one core busy until told to stop
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small demo, idle only")
    parser.add_argument("--busy", type=int, default=1, help="background busy processes")
    parser.add_argument("--no-loaded", action="store_true", help="idle run only")
    args = parser.parse_args()
    extra = QUICK if args.quick else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        load0 = os.getloadavg()[0]
        idle, idle_total, idle_wall = demo(tmp, extra)
        loaded = loaded_total = None
        if not (args.quick or args.no_loaded):
            stop = mp.Event()
            spinners = [mp.Process(target=_spin, args=(stop,), daemon=True)
                        for _ in range(args.busy)]
            for p in spinners:
                p.start()
            try:
                loaded, loaded_total, _ = demo(tmp, extra)
            finally:
                stop.set()
                for p in spinners:
                    p.join(5)
    note = f"load {load0:.1f} before the idle run"
    what = "quick demo (24 images, stretching only)" if args.quick else "make demo"
    print(f"{'stage':28s} {'idle s':>8s} {'loaded s':>9s}")
    for name, sec in idle.items():
        other = None if loaded is None else loaded.get(name)
        print(f"{name:28s} {sec:8.2f} {'-' if other is None else f'{other:9.2f}'}")
        if loaded is None:
            emit(f"{what} stage: {name} (idle)", sec, unit="s", note=note)
        else:
            emit(f"{what} stage: {name}, loaded ({args.busy} busy) vs idle", other or 0.0,
                 baseline=sec, unit="s", note=note)
    emit(f"{what}: total wall (idle) vs the 120 s promise", idle_total, baseline=120.0,
         unit="s", target=None if args.quick else 1.0,
         note=f"{idle_wall:.1f} s with process start; {note}")
    if loaded_total is not None:
        emit(f"{what}: total wall, loaded ({args.busy} busy process) vs idle", loaded_total,
             baseline=idle_total, unit="s", target=0.5,
             note="target: at most twice the idle time")


if __name__ == "__main__":
    main()
