"""The model-vs-model figure: CKA heatmaps per view with the phase alignment, and the
matched-depth similarity with its interval and null."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from depthflow.plots import pyplot, save_figure

__all__ = ["plot_compare"]


def plot_compare(tree, out_dir: Path, *, name: str = "compare.png") -> list[Path]:
    """``compare.png``: per view, the debiased CKA of every depth pair (best match of each
    depth of A marked) and the matched-depth CKA (standard, debiased with its interval, and
    the permuted-pairs null)."""
    if "compare" not in tree.children:
        return []
    ds = tree["compare"].to_dataset()
    views = list(ds["view"].values)
    plt = pyplot()
    fig, axes = plt.subplots(2, len(views), figsize=(4.2 * len(views), 7.6), squeeze=False)
    for c, v in enumerate(views):
        s = ds.sel(view=v)
        ax = axes[0, c]
        im = ax.imshow(s["cka_debiased"].values, origin="lower", vmin=0, vmax=1,
                       cmap="viridis", aspect="auto")
        best = s["best_match"].values
        ok = best >= 0
        ax.plot(best[ok], np.arange(len(best))[ok], "w.", ms=6, label="best match of A")
        ax.set(xlabel="depth of B", ylabel="depth of A", title=f"{v}: debiased CKA")
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax = axes[1, c]
        d = s["depth"].values
        ax.plot(d, s["matched_cka"], "-o", ms=3, label="CKA")
        ax.plot(d, s["matched_cka_debiased"], "-s", ms=3, label="debiased CKA")
        ax.fill_between(d, s["matched_cka_debiased_low"], s["matched_cka_debiased_high"],
                        alpha=0.25, lw=0)
        ax.plot(d, s["matched_cka_debiased_null"], ":", color="k", label="null (pairs shuffled)")
        if "r2_image_specific" in s:
            r2 = np.clip(s["r2_image_specific"].values, -1, 1)
            ax.plot(d, r2, "--", color="tab:red", label="image-specific R^2 (clipped at -1)")
        ax.set(xlabel="depth (both models)", ylabel="similarity at the same depth",
               ylim=(-0.1, 1.05))
        ax.legend(fontsize=7)
    fig.suptitle(f"A = {Path(str(ds.attrs.get('model_a'))).name}   vs   "
                 f"B = {Path(str(ds.attrs.get('model_b'))).name}\n"
                 f"n = {ds.attrs.get('n_images')} images, debiased-CKA bands: 95% over "
                 f"{ds.attrs.get('n_batches')} batches resampled", fontsize=9)
    fig.tight_layout()
    return [save_figure(fig, Path(out_dir) / name)]
