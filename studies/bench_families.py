"""Benchmark: depthflow's ViT forward against the Hugging Face class of each family.

For every family (ViT, DINOv2, CLIP, SigLIP, DINOv3, DeiT, ViTMAE) a random HF model of
ViT-S size (width 384, 6 heads, MLP 1536, patch 16) is built, converted with
:func:`depthflow.models.checkpoints.from_module` (same weights), and both forwards run side
by side in one process: same batch, dtype (float32), thread count and attention kernel
(SDPA on both sides), every hidden state kept (``output_hidden_states=True`` on the HF side,
``iter_states`` on ours), no autograd. Runs alternate between the two models; the reported
time is the median over ``--repeats`` runs, and the ratio is depthflow / HF (target: at most
1.1 on CPU).

Usage: ``python studies/bench_families.py [--quick] [--threads N] [--depth L] [--batch B]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
from report import emit  # noqa: E402

from depthflow.models.checkpoints import from_module  # noqa: E402

WIDTH = dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536, patch_size=16)
FAMILIES = ("vit", "dinov2", "clip", "siglip", "dinov3", "deit", "vit_mae")


def hf_model(family: str, *, depth: int, image: int):
    import transformers as T

    common = dict(WIDTH, num_hidden_layers=depth, image_size=image)
    if family == "vit":
        model = T.ViTModel(T.ViTConfig(**common), add_pooling_layer=False)
    elif family == "dinov2":
        model = T.Dinov2Model(T.Dinov2Config(**{k: v for k, v in common.items()
                                                if k != "intermediate_size"}, mlp_ratio=4))
    elif family == "clip":
        model = T.CLIPVisionModel(T.CLIPVisionConfig(**common))
    elif family == "siglip":
        model = T.SiglipVisionModel(T.SiglipVisionConfig(vision_use_head=False, **common))
    elif family == "dinov3":
        model = T.DINOv3ViTModel(T.DINOv3ViTConfig(num_register_tokens=4, **common))
    elif family == "deit":
        model = T.DeiTModel(T.DeiTConfig(**common), add_pooling_layer=False)
    else:
        model = T.ViTMAEModel(T.ViTMAEConfig(mask_ratio=0.0, **common))
    model.set_attn_implementation("sdpa")
    return model.float().eval()


def hf_forward(model, x, noise):
    kwargs = {"noise": noise} if model.config.model_type == "vit_mae" else {}
    return model(x, output_hidden_states=True, **kwargs).hidden_states


def ours_forward(model, x):
    return [state for _, state in model.iter_states(x)]


def bench(family: str, *, depth: int, image: int, batch: int, repeats: int) -> dict:
    hf = hf_model(family, depth=depth, image=image)
    ours = from_module(hf).model.float().eval().set_attention("sdpa")
    x = torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(0))
    n = (image // 16) ** 2
    noise = torch.arange(n, dtype=torch.float32).expand(batch, n)
    with torch.inference_mode():
        for _ in range(2):                                     # warm-up
            hf_forward(hf, x, noise)
            ours_forward(ours, x)
        t_hf, t_ours = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            hf_forward(hf, x, noise)
            t_hf.append(time.perf_counter() - start)
            start = time.perf_counter()
            ours_forward(ours, x)
            t_ours.append(time.perf_counter() - start)
    hf_ms, ours_ms = statistics.median(t_hf) * 1e3, statistics.median(t_ours) * 1e3
    return {"family": family, "hf_ms": hf_ms, "depthflow_ms": ours_ms,
            "ratio": ours_ms / hf_ms, "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="depth 4, 112 px, 5 repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None, help="default 15 (5 quick)")
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()
    if args.quick:
        args.depth, args.image = 4, 112
    args.repeats = args.repeats or (5 if args.quick else 15)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"CPU, float32, SDPA both sides, {args.threads} threads, batch {args.batch}, "
          f"{args.image} px, depth {args.depth}, median of {args.repeats} alternating runs")
    print(f"{'family':<10}{'HF ms':>10}{'depthflow ms':>14}{'ratio':>8}")
    for family in args.families.split(","):
        row = bench(family, depth=args.depth, image=args.image, batch=args.batch,
                    repeats=args.repeats)
        print(f"{family:<10}{row['hf_ms']:>10.1f}{row['depthflow_ms']:>14.1f}"
              f"{row['ratio']:>8.3f}", flush=True)
        emit(f"{family} forward, every hidden state, depth {args.depth}, {args.image} px, "
             f"batch {args.batch} (vs Hugging Face)", row["depthflow_ms"] / 1e3,
             baseline=row["hf_ms"] / 1e3, target=round(1 / 1.1, 3),
             note=f"CPU float32, SDPA both sides, {args.threads} threads; target: at most "
                  "1.1x the HF time")


if __name__ == "__main__":
    main()
