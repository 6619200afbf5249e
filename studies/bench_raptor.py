"""Training-step throughput: depthflow's Raptor block vs a block in the official code's style.

    python studies/bench_raptor.py [--device cpu|cuda] [--width 384] [--tokens 197]
                                   [--batch 64] [--applications 6] [--steps 20]

Both blocks have the same width, heads, SwiGLU MLP, LayerScale and depth conditioning and
are trained the same way (AdamW, one block applied ``--applications`` times, MSE at every
application, as in stage 1). They differ only in how they run:

* official style: ``nn.MultiheadAttention``, float32, no compile (the reference code);
* depthflow: its :class:`~depthflow.raptor.model.RaptorBlock` with fused SDPA, and on CUDA
  bf16 autocast, fused AdamW and ``torch.compile``.

The two are timed side by side in one run (interleaved rounds, median of rounds) and the
script prints steps/s, the ratio, and on CUDA the model FLOPs utilisation against the GPU's
dense bf16 peak. Writes ``bench_raptor.json`` next to this file's ``outputs/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

sys.path.insert(0, str(HERE / "benchmarks"))
from depthflow.raptor.model import DepthScale, RaptorBlock  # noqa: E402
from report import emit  # noqa: E402
from depthflow.models.vit import LayerScale, SwiGLUMlp, ViTConfig  # noqa: E402

BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


class OfficialStyleBlock(nn.Module):
    """Pre-LN block with ``nn.MultiheadAttention`` (batch first), SwiGLU, LayerScale, S(t)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = SwiGLUMlp(dim, hidden, bias=True)
        self.ls1, self.ls2 = LayerScale(dim), LayerScale(dim)
        self.scale = DepthScale(dim)

    def forward(self, x, t):
        s1, s2, s3 = self.scale(torch.as_tensor(t, dtype=x.dtype, device=x.device))
        h = self.norm1(x)
        x = x + s1 * self.ls1(self.attn(h, h, h, need_weights=False)[0])
        x = x + s2 * self.ls2(self.mlp(self.norm2(x)))
        return s3 * x


def flops_per_step(dim: int, hidden: int, tokens: int, batch: int, apps: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward)."""
    per_token = 2 * (4 * dim * dim + 3 * dim * hidden) + 4 * tokens * dim
    return 3.0 * per_token * tokens * batch * apps


def make_step(block, *, apps, x, targets, bf16, fused):
    opt = torch.optim.AdamW(block.parameters(), lr=3e-4, weight_decay=1e-4,
                            fused=fused or None)
    ctx = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if bf16 else None

    def step():
        state, loss = x, 0.0
        if ctx:
            with ctx():
                for a in range(apps):
                    state = block(state, float(a + 1))
                    loss = loss + F.mse_loss(state.float(), targets[a])
        else:
            for a in range(apps):
                state = block(state, float(a + 1))
                loss = loss + F.mse_loss(state, targets[a])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(block.parameters(), 1.0)
        opt.step()
    return step


def timed(step, device, steps: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - tic) / steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=None,
                        help="default: 768 on CUDA (ViT-B), 192 on CPU")
    parser.add_argument("--heads", type=int, default=None, help="default: width / 64")
    parser.add_argument("--tokens", type=int, default=None,
                        help="default: 261 on CUDA (DINOv2-B/14-reg at 224 px), 65 on CPU")
    parser.add_argument("--batch", type=int, default=None,
                        help="default: 64 on CUDA (the paper's), 16 on CPU")
    parser.add_argument("--applications", type=int, default=6)
    parser.add_argument("--steps", type=int, default=None, help="default: 20 CUDA, 3 CPU")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "raptor_digits" / "outputs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sizes = dict(width=(768, 192), tokens=(261, 65), batch=(64, 16), steps=(20, 3))
    for name, (gpu, cpu) in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, gpu if cuda else cpu)
    args.heads = args.heads or max(1, args.width // 64)
    dim, hidden = args.width, 4 * args.width
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.tokens, dim, generator=gen).to(device)
    targets = [torch.randn(args.batch, args.tokens, dim, generator=gen).to(device)
               for _ in range(args.applications)]
    torch.manual_seed(0)
    official = OfficialStyleBlock(dim, args.heads, hidden).to(device)
    cfg = ViTConfig(embed_dim=dim, num_heads=args.heads, mlp="swiglu", mlp_hidden_dim=hidden,
                    depth=1)
    ours = RaptorBlock(cfg).to(device)
    if cuda and not args.no_compile:
        ours.compile()
    steps = {
        "official": make_step(official, apps=args.applications, x=x, targets=targets,
                              bf16=False, fused=False),
        "depthflow": make_step(ours, apps=args.applications, x=x, targets=targets,
                               bf16=cuda, fused=cuda),
    }
    for step in steps.values():                       # warm-up (and compile)
        timed(step, device, 2)
    rounds = {name: [] for name in steps}
    for _ in range(args.rounds):                      # interleaved: same machine state
        for name, step in steps.items():
            rounds[name].append(timed(step, device, args.steps))
    sec = {name: statistics.median(v) for name, v in rounds.items()}
    flops = flops_per_step(dim, hidden, args.tokens, args.batch, args.applications)
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "threads": args.threads, "width": dim, "tokens": args.tokens, "batch": args.batch,
        "applications": args.applications,
        "steps_per_s": {k: 1.0 / v for k, v in sec.items()},
        "speedup": sec["official"] / sec["depthflow"],
        "tflops": {k: flops / v / 1e12 for k, v in sec.items()},
        "depthflow_path": "bf16 autocast + SDPA + fused AdamW" + (
            "" if args.no_compile else " + torch.compile") if cuda else "fp32 SDPA",
    }
    if cuda:
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
        result["mfu_bf16"] = None if peak is None else flops / sec["depthflow"] / peak
    print(json.dumps(result, indent=2))
    emit(f"Raptor training step, D={dim} T={args.tokens} B={args.batch} x{args.applications} "
         f"applications ({'CUDA' if cuda else 'CPU'})", result["steps_per_s"]["depthflow"],
         baseline=result["steps_per_s"]["official"], unit="steps/s", higher_is_better=True,
         target=None,
         note=result["depthflow_path"] + ("" if not cuda else
                                          f"; MFU {result.get('mfu_bf16') or float('nan'):.2f}"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_raptor.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
