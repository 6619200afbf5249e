"""Benchmark: scaling ``depthflow analyze`` out (issue 12), measured side by side in one run.

Prints:

* data-loading overlap: wall time of ``analyze`` (1 intra-op thread) on a folder of JPEGs
  with ``workers=0`` over ``workers=2`` (decoding in two worker processes while the model
  runs);
* scaling: wall time with 1 process (1 intra-op thread) over 2 gloo processes (1 thread
  each, ``torchrun --nproc-per-node 2``) on the same images, and 1 process with 2 threads
  over the 2 processes (on a 2-core machine shared with other jobs, reported as
  measured);
* memory: peak resident memory per rank of a 2-process run on 2,000 images over the same
  on 250 images (target <= 1.3), with every state kept (``states=all``, 130 KB per image)
  on a 4-block D=384 ViT at 56 px, so that holding per-sample data would show;
* GPU figures (``analyze`` vs a bare forward pass in bf16, images/s of ViT-S/14 and
  ViT-B/14 at 224 px, 1 -> N GPUs): measured only when CUDA is available, otherwise
  printed as open.

Model: a ViT-S/14-sized ViT (12 blocks, D=384, random weights) at 112 px, where the
forward pass dominates as for real checkpoints; ``--quick`` uses the embedded digits ViT.
Each measurement runs in a fresh process. Usage:
``python studies/bench_scaling.py [--quick] [--images 256]``.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "benchmarks"))
from report import emit  # noqa: E402


def make_jpegs(root: Path, n: int, side: int) -> Path:
    """``n`` smooth random colour JPEGs in two class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((side, side), Image.BILINEAR)
        path = root / ("a" if i % 2 else "b") / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=90)
    return root


def make_model(name: str):
    import torch

    from depthflow.api.loader import load_model
    from depthflow.models.checkpoints import LoadedModel
    from depthflow.models.preprocessing import Preprocessing
    from depthflow.models.vit import ViT, ViTConfig

    torch.manual_seed(0)
    if name == "digits":
        return load_model(None)
    side = 224 if name.endswith("224") else 56 if name == "vit-mem" else 112
    cfg = dict(embed_dim=384, depth=12, num_heads=6, mlp_hidden_dim=1536)
    if name.startswith("vit-b"):
        cfg = dict(embed_dim=768, depth=12, num_heads=12, mlp_hidden_dim=3072)
    if name == "vit-mem":                # wide states, cheap forward: 4 blocks, 17 tokens
        cfg = dict(embed_dim=384, depth=4, num_heads=6, mlp_hidden_dim=1536)
    model = ViT(ViTConfig(patch_size=14, img_size=side, num_register_tokens=0, **cfg)
                ).init_weights(seed=0, layerscale_init=0.1).eval()
    return LoadedModel(model, source=f"random {name}", format="bench",
                       preprocessing=Preprocessing(resize=side, crop=side))


# ------------------------------------------------------------------ child processes
def child(args) -> None:
    """One ``analyze`` (a rank of it under torchrun); writes its figures as JSON."""
    import torch

    from depthflow.analysis.registry import build_analyses
    from depthflow.analysis.run import AnalyzeConfig, analyze
    from depthflow.data.images import open_images

    torch.set_num_threads(args.threads)
    loaded = make_model(args.model)
    source = open_images(args.images_dir)
    if args.limit:
        source = source.head(args.limit)
    start = time.perf_counter()
    analyze(loaded, source, Path(args.out_dir) / "out.nc",
            config=AnalyzeConfig(states=args.states, workers=args.workers,
                                 batch_size=args.batch),
            analyses=build_analyses(dynamics="none", options=["phases.swap_trials=0"]),
            overwrite=True)
    seconds = time.perf_counter() - start
    rank = int(os.environ.get("RANK", "0"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out_dir, f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "seconds": seconds, "peak_mib": peak}))


def run(model: str, images: Path, *, procs: int, workers: int, limit: int | None,
        batch: int, states: str = "cls", threads: int = 1) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(HERE / "bench_scaling.py"), "--child", "--model", model,
               "--images-dir", str(images), "--out-dir", tmp, "--workers", str(workers),
               "--threads", str(threads), "--batch", str(batch), "--states", states]
        if limit:
            cmd += ["--limit", str(limit)]
        if procs > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={procs}", *cmd]
        else:
            cmd = [sys.executable, *cmd]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(procs)]


def gpu_figures() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return ["GPU: no CUDA device here; analyze vs bare forward (bf16), images/s of "
                "ViT-S/14 and ViT-B/14 at 224 px and 1 -> N GPU scaling stay OPEN"]
    from depthflow.data.images import Batch
    from depthflow.data.trajectory import forward_batch

    lines = []
    for name in ("vit-s-224", "vit-b-224"):
        loaded = make_model(name)
        model = loaded.model.to("cuda").eval()
        images = torch.rand(64, 3, 224, 224, device="cuda")
        batch = Batch(images=images, labels=torch.zeros(64, dtype=torch.long),
                  names=[str(i) for i in range(64)])

        def bare():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                model.forward_features(images)

        def traj():
            with torch.inference_mode():
                forward_batch(model, batch, torch.device("cuda"), torch.bfloat16)

        rates = {}
        for label, fn in (("bare", bare), ("trajectory", traj)):
            fn()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
            rates[label] = 640 / (time.perf_counter() - start)
        lines.append(f"GPU {name}: bare forward {rates['bare']:.0f} img/s, trajectory "
                     f"{rates['trajectory']:.0f} img/s, ratio "
                     f"{rates['trajectory'] / rates['bare']:.2f} (synthetic batches of 64)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the digits ViT, fewer images")
    parser.add_argument("--images", type=int, default=128,
                        help="JPEGs for the workers and process comparisons")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="vit-s", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--states", default="cls", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    model = "digits" if args.quick else "vit-s"
    n = min(args.images, 128) if args.quick else args.images
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        jpegs = make_jpegs(Path(tmp) / "jpegs", n, side=64 if args.quick else 160)
        t1 = run(model, jpegs, procs=1, workers=0, limit=None, batch=32)[0]["seconds"]
        t1w = run(model, jpegs, procs=1, workers=2, limit=None, batch=32)[0]["seconds"]
        t2p = max(r["seconds"] for r in run(model, jpegs, procs=2, workers=0, limit=None,
                                            batch=32))
        t1t2 = run(model, jpegs, procs=1, workers=0, limit=None, batch=32,
                   threads=2)[0]["seconds"]
        few, many = (32, 256) if args.quick else (250, 2000)
        big = make_jpegs(Path(tmp) / "big", many, side=32)
        mem_model = "digits" if args.quick else "vit-mem"
        small_run = run(mem_model, big, procs=2, workers=0, limit=few, batch=32, states="all")
        large_run = run(mem_model, big, procs=2, workers=0, limit=many, batch=32,
                        states="all")
    print(f"model: {model}, {n} JPEGs, batches of 32, {os.cpu_count()} cores, load average "
          f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after (other jobs share the "
          "cores: timings are noisy)")
    print(f"{'measure':46s} {'value':>10s}")
    rows = [("1 process, 1 thread, workers=0 (s)", t1),
            ("1 process, 1 thread, workers=2 (s)", t1w),
            ("loading overlap: time w0 / time w2", t1 / t1w),
            ("2 gloo processes, 1 thread each (s)", t2p),
            ("scaling: time 1 process / time 2 processes", t1 / t2p),
            ("1 process, 2 threads (s)", t1t2),
            ("2 threads / 2 gloo processes (time ratio)", t1t2 / t2p)]
    for label, value in rows:
        print(f"{label:46s} {value:10.3f}")
    for rank in range(2):
        a, b = small_run[rank]["peak_mib"], large_run[rank]["peak_mib"]
        print(f"{f'rank {rank} peak MiB, {few} -> {many} images':46s} {a:5.0f} -> {b:5.0f}"
              f"  ratio {b / a:.3f}")
    print(f"target: memory ratio <= 1.3 per rank ({mem_model}, states=all: every state is "
          "gathered to rank 0 and written as it arrives)")
    size = f"{model}, {n} JPEGs"                      # rows of `make bench` (RESULTS.md)
    emit(f"analyze data loading, workers=2 vs workers=0 ({size})", t1w, baseline=t1,
         note="1 process, 1 intra-op thread; decoding in 2 worker processes")
    emit(f"analyze, 2 gloo processes vs 1 process ({size})", t2p, baseline=t1,
         note="1 intra-op thread each; slowest rank's wall time")
    emit(f"analyze, 2 gloo processes vs 1 process with 2 threads ({size})", t2p,
         baseline=t1t2, note="same 2 cores used both ways")
    for rank in range(2):
        a, b = small_run[rank]["peak_mib"], large_run[rank]["peak_mib"]
        emit(f"peak memory of rank {rank}, {few} vs {many} images ({mem_model}, states=all)",
             b, baseline=a, unit="MiB", target=round(1 / 1.3, 3),
             note=f"ratio = MiB({few}) / MiB({many}); target: {many} images need at most 1.3x")
    for line in gpu_figures():
        print(line)


if __name__ == "__main__":
    main()
