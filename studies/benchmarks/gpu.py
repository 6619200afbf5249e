"""GPU figures of depthflow in one script (``make bench-gpu``): under 8 minutes on one GPU.

    python studies/benchmarks/gpu.py                 # on CUDA: full sizes
    python studies/benchmarks/gpu.py --quick         # tiny sizes on the CPU (make test)

Prints, measured side by side in one run:

1. ``depthflow analyze`` (trajectory summaries, ``--states cls``, bf16) images/s against a
   bare bf16 forward pass over the same batches of the same source (same preprocessing,
   same transfer to the device), for a ViT-S/14 and a ViT-B/14-sized model with random
   weights at 224 px; best of ``--repeats``; target: analyze at >= 0.8x the forward's
   images/s;
2. Raptor training steps/s and model FLOPs utilisation (bf16 autocast, SDPA, fused AdamW,
   ``torch.compile``; ``studies/bench_raptor.py``), target MFU >= 35 %;
3. whether the per-sample values of an analysis on the device agree with the same analysis
   on the CPU within the reproducibility contract (docs/methods.md: float32, relative 1e-5
   of each variable's scale; TF32 switched off for this comparison, since TF32 products
   round to 10-bit mantissas by design).

Each figure is also a ``BENCH`` row (:mod:`report`). With ``--quick`` every part runs on
tiny models on the CPU (a smoke test: no timing is asserted, the agreement check compares
two batch sizes on the CPU). Writes ``gpu.json`` to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from report import emit  # noqa: E402

from depthflow.analysis.run import AnalyzeConfig, analyze  # noqa: E402
from depthflow.data.images import open_images  # noqa: E402
from depthflow.models.checkpoints import LoadedModel  # noqa: E402
from depthflow.models.preprocessing import Preprocessing  # noqa: E402
from depthflow.models.vit import ViT, ViTConfig, flops_per_image  # noqa: E402
from depthflow.data.trajectory import compute_context  # noqa: E402

MODELS = {   # name: (embed_dim, heads)
    "ViT-S/14": (384, 6),
    "ViT-B/14": (768, 12),
}
PER_SAMPLE = ("norm", "gamma", "angular_speed", "patch_coherence", "logits", "cls_state")
TARGET_RATIO, TARGET_MFU = 0.8, 0.35


def make_loaded(dim: int, heads: int, *, side: int, depth: int, patch: int) -> LoadedModel:
    cfg = ViTConfig(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch,
                    img_size=side, mlp_hidden_dim=4 * dim, num_register_tokens=0,
                    num_classes=10)
    model = ViT(cfg).init_weights(seed=0, layerscale_init=0.1).eval()
    return LoadedModel(model, source=f"random D={dim} @{side}px", format="bench",
                       preprocessing=Preprocessing(resize=side, crop=side))


def make_images(directory: Path, n: int, side: int) -> Path:
    rng = np.random.default_rng(0)
    path = directory / f"images_{n}_{side}.npz"
    np.savez(path, images=rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8),
             labels=np.arange(n) % 10)
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(loaded: LoadedModel, images: Path, batch: int, device: torch.device,
                 dtype: str) -> float:
    """Seconds of a bare forward pass (every block, no summaries) over the same batches."""
    model = loaded.model.to(device=device, dtype=torch.float32).eval()
    tdtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    source = open_images(images)
    _sync(device)
    tic = time.perf_counter()
    with torch.inference_mode(), compute_context(device, tdtype):
        for b in source.batches(batch, preprocessing=loaded.preprocessing):
            model.forward_features(b.images.to(device))
    _sync(device)
    return time.perf_counter() - tic


def timed_analyze(loaded: LoadedModel, images: Path, batch: int, device: torch.device,
                  dtype: str, out: Path) -> float:
    _sync(device)
    tic = time.perf_counter()
    analyze(loaded, open_images(images), out, overwrite=True,
            config=AnalyzeConfig(batch_size=batch, device=str(device), dtype=dtype,
                                 states="cls"))
    _sync(device)
    return time.perf_counter() - tic


def extraction(args, device: torch.device, tmp: Path) -> list[dict]:
    rows = []
    side, depth, patch = (224, 12, 14) if not args.quick else (28, 2, 14)
    images = make_images(tmp, args.images, side)
    for name, (dim, heads) in MODELS.items():
        if args.quick:
            dim, heads = dim // 12, heads // 3 or 1
        loaded = make_loaded(dim, heads, side=side, depth=depth, patch=patch)
        bare_forward(loaded, images, args.batch, device, args.dtype)            # warm-up
        timed_analyze(loaded, images, args.batch, device, args.dtype, tmp / "warm.nc")
        fwd, ana = [], []
        for _ in range(args.repeats):                     # interleaved: same machine state
            fwd.append(bare_forward(loaded, images, args.batch, device, args.dtype))
            ana.append(timed_analyze(loaded, images, args.batch, device, args.dtype,
                                     tmp / "out.nc"))
        rate_f, rate_a = args.images / min(fwd), args.images / min(ana)
        tokens = loaded.model.num_tokens(side, side)
        tflops = flops_per_image(loaded.config, tokens) * rate_f / 1e12
        row = emit(f"{name}-sized random model, {side} px, {args.dtype}: analyze vs bare "
                   f"forward images/s ({args.images} images, batch {args.batch})", rate_a,
                   baseline=rate_f, unit="images/s", higher_is_better=True,
                   target=TARGET_RATIO,
                   note=f"best of {args.repeats}; forward {tflops:.1f} TFLOP/s")
        rows.append({**row, "model": name, "embed_dim": dim})
    return rows


def raptor(args, device: torch.device, tmp: Path) -> dict:
    import bench_raptor

    cmd = ["--device", str(device), "--out", str(tmp / "raptor")]
    if args.quick:
        cmd += ["--width", "32", "--tokens", "9", "--batch", "2", "--applications", "2",
                "--steps", "1", "--rounds", "1", "--threads", str(torch.get_num_threads())]
    result = bench_raptor.main(cmd)          # prints its own row (steps/s vs official style)
    mfu = result.get("mfu_bf16")
    if mfu is not None:
        emit(f"Raptor training MFU (bf16, D={result['width']} T={result['tokens']} "
             f"B={result['batch']})", mfu, baseline=TARGET_MFU, unit="of peak",
             higher_is_better=True, target=1.0,
             note=f"{result['tflops']['depthflow']:.0f} TFLOP/s; ratio = MFU / 35 %")
    return result


def agreement(args, device: torch.device, tmp: Path) -> dict:
    """Per-sample values on ``device`` vs the CPU (float32; TF32 off), within the contract."""
    import xarray as xr

    side = 112 if not args.quick else 28
    loaded = make_loaded(*(MODELS["ViT-S/14"] if not args.quick else (32, 2)), side=side,
                         depth=12 if not args.quick else 2, patch=14)
    images = make_images(tmp, 16, side)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        other = device if device.type != "cpu" else torch.device("cpu")
        analyze(loaded, open_images(images), tmp / "dev.nc", overwrite=True,
                config=AnalyzeConfig(batch_size=8 if other.type != "cpu" else 5,
                                     device=str(other), states="cls"))
        analyze(loaded, open_images(images), tmp / "cpu.nc", overwrite=True,
                config=AnalyzeConfig(batch_size=8, device="cpu", states="cls"))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    worst, details = 0.0, {}
    with xr.open_dataset(tmp / "dev.nc") as a, xr.open_dataset(tmp / "cpu.nc") as b:
        for name in PER_SAMPLE:
            if name not in a:
                continue
            x, y = b[name].values.astype(np.float64), a[name].values.astype(np.float64)
            scale = float(np.nanmax(np.abs(x))) or 1.0
            dev = float(np.nanmax(np.abs(x - y))) / scale
            details[name] = dev
            worst = max(worst, dev)
    ok = worst <= 1e-5
    emit(f"per-sample values {other.type} vs cpu (float32, 16 images): largest deviation / "
         "scale", worst, baseline=1e-5, unit="", target=1.0,
         note=("within" if ok else "OUTSIDE") + " the contract (1e-5 of scale); " +
         ", ".join(f"{k} {v:.1e}" for k, v in details.items()))
    return {"device": other.type, "largest_relative_deviation": worst, "within": ok,
            "per_variable": details}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny models on the CPU (smoke test for make test)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --quick)")
    parser.add_argument("--images", type=int, default=None, help="default 2048 (quick: 8)")
    parser.add_argument("--batch", type=int, default=None, help="default 256 (quick: 4)")
    parser.add_argument("--dtype", default=None, help="default bfloat16 (quick: float32)")
    parser.add_argument("--repeats", type=int, default=None, help="default 2 (quick: 1)")
    parser.add_argument("--out", type=Path, default=None, help="write gpu.json here")
    args = parser.parse_args(argv)
    q = args.quick
    args.device = args.device or ("cpu" if q else "cuda")
    args.images = args.images or (8 if q else 2048)
    args.batch = args.batch or (4 if q else 256)
    args.dtype = args.dtype or ("float32" if q else "bfloat16")
    args.repeats = args.repeats or (1 if q else 2)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("Error: no CUDA device here; run with --quick for the CPU smoke test",
              file=sys.stderr)
        raise SystemExit(2)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else platform.processor() or "cpu")
    print(f"device: {where}; torch {torch.__version__}", flush=True)
    tic = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result = {"device": where, "quick": q,
                  "extraction": extraction(args, device, tmp),
                  "raptor": raptor(args, device, tmp),
                  "agreement": agreement(args, device, tmp)}
    result["seconds"] = time.perf_counter() - tic
    print("\n| figure | depthflow | baseline | ratio | target |\n|---|---|---|---|---|")
    for r in result["extraction"]:
        print(f"| {r['benchmark']} | {r['ours']:.0f} img/s | {r['baseline']:.0f} img/s | "
              f"{r['ratio']:.2f} | >= {TARGET_RATIO} |")
    rap = result["raptor"]
    mfu = rap.get("mfu_bf16")
    print(f"| Raptor steps/s (vs official style) | {rap['steps_per_s']['depthflow']:.2f} | "
          f"{rap['steps_per_s']['official']:.2f} | {rap['speedup']:.2f} | - |")
    print(f"| Raptor MFU (bf16) | {'-' if mfu is None else f'{100 * mfu:.1f} %'} | - | - | "
          f">= {100 * TARGET_MFU:.0f} % |")
    agr = result["agreement"]
    print(f"| {agr['device']} vs cpu per-sample values | {agr['largest_relative_deviation']:.1e}"
          f" of scale | 1e-5 | - | {'within' if agr['within'] else 'OUTSIDE'} |")
    print(f"total {result['seconds']:.0f} s", flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
