"""The probe figure: accuracy against depth with Wilson intervals, chance, phases shaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from depthflow.plots import pyplot, save_figure

__all__ = ["phase_spans", "plot_probes"]


def phase_spans(tree) -> list[tuple[int, int]]:
    """``(start, stop)`` depths of the selected contiguous phases of ``tree`` (a result
    ``xr.DataTree``), ``[]`` when it has no ``phases`` group."""
    if "phases" not in getattr(tree, "children", {}):
        return []
    ds = tree["phases"].to_dataset()
    if "selected_k" not in ds or "phase" not in ds:
        return []
    k = int(ds["selected_k"])
    labels = ds["phase"].sel(segmentation=f"dp_k{k}").values
    edges = [0, *(np.flatnonzero(labels[1:] != labels[:-1]) + 1).tolist(), len(labels)]
    return list(zip(edges[:-1], edges[1:]))


def shade_phases(ax, spans: list[tuple[int, int]]) -> None:
    for i, (a, b) in enumerate(spans):
        if i % 2:
            ax.axvspan(a - 0.5, b - 0.5, color="0.9", zorder=0, lw=0)


def plot_probes(tree, out_dir: Path, *, name: str = "probes_accuracy.png") -> list[Path]:
    """``probes_accuracy.png``: linear (solid, Wilson band) and k-NN (dashed) probe accuracy
    per readout against depth, the chance level, the best depth marked."""
    if "probes" not in tree.children:
        return []
    ds = tree["probes"].to_dataset()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    shade_phases(ax, phase_spans(tree))
    depth = ds["depth"].values
    for i, r in enumerate(ds["readout"].values):
        color = f"C{i}"
        sel = ds.sel(readout=r)
        ax.plot(depth, sel["accuracy"], "-o", ms=3, color=color, label=f"{r} (linear)")
        ax.fill_between(depth, sel["accuracy_low"], sel["accuracy_high"], color=color,
                        alpha=0.2, lw=0)
        ax.plot(depth, sel["knn_accuracy"], "--", color=color, alpha=0.7, label=f"{r} (k-NN)")
        b = int(sel["best_depth"])
        ax.plot([depth[b]], [float(sel["accuracy"][b])], "*", ms=12, color=color)
    ax.axhline(float(ds["chance"]), color="k", lw=1, ls=":", label="chance (majority class)")
    ax.set_xlabel("depth (0 = embedded input)")
    ax.set_ylabel("out-of-fold accuracy")
    ax.set_title(f"per-depth probes: n = {ds.attrs.get('n_images')} images, "
                 f"{ds.attrs.get('folds')}-fold CV, Wilson 95% bands", fontsize=10)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    return [save_figure(fig, Path(out_dir) / name)]
