"""Benchmark: streaming feature-space linear CKA vs the naive Gram form; exact max-cut.

    python studies/bench_phases.py                     # 4,096 samples, 13 depths, D = 384
    python studies/bench_phases.py --naive-pairs 10    # time 10 Gram-form pairs, scale up

Prints, in one run: the time of the streaming CKA over every depth pair (batches of
``--batch``), the time of the textbook Gram-form CKA (two centred n x n Gram matrices per
pair) over the same pairs, their ratio, the memory each needs per depth pair, the largest
disagreement between the two, and the time of an exact max-cut and of the paper's
bisection on 24 layers, also as a ratio to one Gram-form CKA.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from depthflow.phases import segmentation as seg
from depthflow.phases.similarity import LinearCKAAccumulator, linear_cka_gram

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
from report import emit  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--depths", type=int, default=13)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--naive-pairs", type=int, default=None,
                   help="time only this many Gram-form pairs and scale to all pairs")
    p.add_argument("--layers", type=int, default=24, help="max-cut size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (make test's smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.depths, args.dim, args.batch, args.layers = 64, 4, 16, 32, 12
    return args


def states(n: int, depths: int, dim: int, seed: int) -> torch.Tensor:
    """A random walk over depth, ``(n, depths, dim)`` float32: neighbouring depths alike."""
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randn(n, depths, dim, generator=gen)
    mix = torch.randn(dim, dim, generator=gen) / dim**0.5
    return (steps.cumsum(1) @ mix).contiguous()


def main(argv=None) -> None:
    args = parse_args(argv)
    n, depths, dim = args.samples, args.depths, args.dim
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    x = states(n, depths, dim, args.seed)
    pairs = list(itertools.combinations(range(depths), 2))

    t0 = time.perf_counter()
    acc = LinearCKAAccumulator()
    for start in range(0, n, args.batch):
        acc.update(x[start:start + args.batch])
    streamed = acc.result()["cka"]
    t_stream = time.perf_counter() - t0

    timed = pairs if args.naive_pairs is None else pairs[:args.naive_pairs]
    worst = 0.0
    t0 = time.perf_counter()
    for i, j in timed:
        value = float(linear_cka_gram(x[:, i], x[:, j]))
        worst = max(worst, abs(value - float(streamed[i, j])))
    t_pair = (time.perf_counter() - t0) / len(timed)
    t_naive = t_pair * len(pairs)

    print(f"\nlinear CKA, {n} samples x {depths} depths x D={dim} ({len(pairs)} pairs)")
    print(f"  streaming feature space : {t_stream:8.2f} s  (batches of {args.batch})")
    print(f"  naive Gram form         : {t_naive:8.2f} s  ({t_pair:.3f} s per pair, "
          f"{len(timed)} pairs timed{'' if len(timed) == len(pairs) else ', scaled'})")
    print(f"  speed-up                : {t_naive / t_stream:8.1f}x")
    print(f"  memory per depth pair   : streaming {dim * dim * 8 / 2**20:.2f} MiB "
          f"(D^2 float64), Gram form {2 * n * n * 4 / 2**20:.0f} MiB (two n x n float32)")
    print(f"  streaming total state   : {(depths * dim) ** 2 * 8 / 2**20:.0f} MiB")
    print(f"  max |difference|        : {worst:.2e}")
    emit(f"linear CKA, {n} x {depths} depths x D={dim}: streaming vs Gram form", t_stream,
         baseline=t_naive, unit="s", note=f"max |diff| {worst:.1e}")

    rng = np.random.default_rng(args.seed)
    w = rng.random((args.layers, args.layers))
    w = w + w.T
    np.fill_diagonal(w, 0)
    seg.max_cut(w[:6, :6])                                     # warm up numpy
    t0 = time.perf_counter()
    seg.max_cut(w, min_size=2)
    t_cut = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = seg.recursive_bisection(w, fraction=0.01, min_size=2)
    t_bis = time.perf_counter() - t0
    t0 = time.perf_counter()
    seg.optimal_segmentations(w, k_max=min(8, args.layers // 2), min_size=2)
    t_dp = time.perf_counter() - t0
    print(f"\nexact max-cut, {args.layers} layers (2^{args.layers - 1} bipartitions)")
    print(f"  one max-cut             : {t_cut:8.3f} s  = {t_cut / t_pair:.2f} x one Gram-form "
          "CKA pair")
    print(f"  full bisection (f=0.01) : {t_bis:8.3f} s  ({result.k} phases, "
          f"{len(result.cuts)} cuts)")
    print(f"  DP, k = 1..8            : {t_dp:8.4f} s")
    emit(f"exact max-cut, {args.layers} layers, vs one Gram-form CKA pair", t_cut,
         baseline=t_pair, unit="s")


if __name__ == "__main__":
    main()
