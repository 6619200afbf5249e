"""A short text summary of a ``compare`` group."""

from __future__ import annotations

import numpy as np

__all__ = ["describe_compare"]


def describe_compare(ds) -> str:
    """Per view: matched debiased CKA at depth 1, the middle and the last depth (interval
    and null beside it), and the phase alignment."""
    lines = [f"compare: A = {ds.attrs.get('model_a')}, B = {ds.attrs.get('model_b')}; "
             f"n = {ds.attrs.get('n_images')} images, intervals: 95% over "
             f"{ds.attrs.get('n_batches')} batches resampled"]
    depths = ds["depth"].values
    picks = sorted({int(depths[min(1, len(depths) - 1)]), int(depths[len(depths) // 2]),
                    int(depths[-1])})
    for v in ds["view"].values:
        s = ds.sel(view=v)
        parts = []
        for d in picks:
            e = s.sel(depth=d)
            parts.append(f"depth {d}: {float(e['matched_cka_debiased']):.3f} "
                         f"[{float(e['matched_cka_debiased_low']):.3f}, "
                         f"{float(e['matched_cka_debiased_high']):.3f}] (null "
                         f"{float(e['matched_cka_debiased_null']):.3f})")
        best = s["best_match"].values
        lines.append(f"  {v:<11} matched debiased CKA " + "; ".join(parts))
        lines.append(f"  {'':<11} best depth of B per depth of A: "
                     f"{' '.join(str(int(b)) if b >= 0 else '-' for b in best)}")
        if "r2_image_specific" in s:
            r2 = s["r2_image_specific"].values
            lines.append(f"  {'':<11} image-specific R^2 at the last depth: "
                         f"{r2[-1]:.3f}" if np.isfinite(r2[-1]) else "")
    return "\n".join(line for line in lines if line)
