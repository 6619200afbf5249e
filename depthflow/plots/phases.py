"""Figures of the ``phases`` group: similarity heatmaps, segmentations with phase
boundaries, and the layer-swap test (its ``swap`` child group)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from depthflow.core import vocabulary as D
from depthflow.plots import pyplot, save_figure

FAMILY_COLORS = {"same": "tab:green", "different": "tab:red"}
NAN_COLOR = "0.8"
_MATRICES = (("cosine_distance", D.VIEW, "cosine distance 1 - cos", "linear"),
             ("mse", D.VIEW, "mean squared difference", "log"),
             ("cka", D.CKA_VIEW, "linear CKA", "linear"),
             ("cka_debiased", D.CKA_VIEW, "debiased linear CKA", "linear"))


def _cmap(name: str = "viridis"):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=NAN_COLOR)


def _norm(values: np.ndarray, scale: str):
    """Colour scale of one metric: log for MSE (the last layer's values dwarf the rest),
    linear otherwise; zeros (the diagonal) sit at the bottom of a log scale."""
    from matplotlib.colors import LogNorm, Normalize

    finite = values[np.isfinite(values)]
    if scale == "log":
        positive = finite[finite > 0]
        if positive.size:
            return LogNorm(vmin=float(positive.min()), vmax=float(positive.max()), clip=True)
    if finite.size == 0:
        return Normalize(0, 1)
    return Normalize(float(finite.min()), float(finite.max()))


def _heatmap(ax, matrix, depths, title: str, norm, *, xlabel: str = "depth j",
             ylabel: str = "depth i"):
    from matplotlib.ticker import MaxNLocator

    lo, hi = depths[0], depths[-1]
    shown = np.array(matrix, dtype=float)
    if isinstance(norm, type(_norm(np.ones(1), "log"))):          # LogNorm: zeros floor
        shown = np.where(shown <= 0, norm.vmin, shown)
    im = ax.imshow(np.ma.masked_invalid(shown), origin="upper", cmap=_cmap(), norm=norm,
                   extent=(lo - 0.5, hi + 0.5, hi + 0.5, lo - 0.5), interpolation="nearest")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    return im


def panel_matrices(plt, ds):
    """Every layer x layer matrix over depths 0..L, one panel per (metric, view), packed
    without empty rows; one colour bar per panel; MSE on a log scale; NaN cells grey."""
    panels = [(name, dim, text, scale, view) for name, dim, text, scale in _MATRICES
              if name in ds for view in ds[dim].values]
    cols = min(5, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.9 * rows + 0.6),
                             squeeze=False, layout="constrained")
    depths = ds[D.DEPTH_I].values
    has_nan = False
    for ax, (name, dim, text, scale, view) in zip(axes.flat, panels):
        values = ds[name].values
        matrix = ds[name].sel({dim: view}).values
        has_nan |= bool(np.isnan(matrix).any())
        im = _heatmap(ax, matrix, depths, f"{text}\n({view} view)", _norm(values, scale))
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=7)
        if scale == "log":
            bar.set_label("log scale", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.remove()
    note = "; grey cells: undefined (NaN)" if has_nan else ""
    fig.suptitle(f"layer x layer matrices over depths 0..{int(depths[-1])} "
                 f"(depth 0 = embedded input; MSE on a log scale{note})", fontsize=10)
    return fig


def panel_segmentations(plt, ds):
    """The segmented matrix (blocks 1..L) once per segmentation: phase boundaries as white
    lines, the phase of every block as a coloured strip above the matrix."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    attrs = ds["phase"].attrs
    name, view = attrs.get("matrix", "cosine_distance"), attrs.get("view", "paper")
    dim = D.CKA_VIEW if name.startswith("cka") else D.VIEW
    matrix = ds[name].sel({dim: view}).values[1:, 1:]
    steps = ds[D.STEP].values
    segs = list(ds[D.SEGMENTATION].values)
    cols = min(4, len(segs))
    rows = -(-len(segs) // cols)
    fig = plt.figure(figsize=(3.3 * cols + 1.2, 3.6 * rows + 0.8), layout="constrained")
    grid = fig.add_gridspec(rows * 2, cols, height_ratios=[1, 9] * rows)
    norm = _norm(matrix, "linear")
    k_max = int(ds["phase"].max()) + 1
    palette = ListedColormap([pyplot().get_cmap("tab10")(i % 10) for i in range(k_max)])
    im = None
    for i, s in enumerate(segs):
        r, c = divmod(i, cols)
        strip, ax = fig.add_subplot(grid[2 * r, c]), fig.add_subplot(grid[2 * r + 1, c])
        labels = ds["phase"].sel({D.SEGMENTATION: s}).values
        contiguous = int(ds["contiguous"].sel({D.SEGMENTATION: s}))
        strip.imshow(labels[None, :], cmap=palette, vmin=-0.5, vmax=k_max - 0.5,
                     aspect="auto", extent=(steps[0] - 0.5, steps[-1] + 0.5, 0, 1))
        strip.set_axis_off()
        strip.set_title(f"{s}: {labels.max() + 1} phases"
                        f"{'' if contiguous else ' (not contiguous)'}", fontsize=9)
        im = _heatmap(ax, matrix, steps, "", norm, xlabel="block j", ylabel="block i")
        for edge in np.flatnonzero(labels[1:] != labels[:-1]) + steps[0] + 0.5:
            ax.axhline(edge, color="white", lw=1.5)
            ax.axvline(edge, color="white", lw=1.5)
    if im is not None:
        fig.colorbar(im, ax=fig.axes, shrink=0.6, label=name.replace("_", " "))
    fig.legend(handles=[Patch(color=palette(p), label=f"phase {p + 1}") for p in range(k_max)],
               loc="outside lower center", ncol=min(k_max, 8), fontsize=8,
               title="strip above each matrix: phase of block j", title_fontsize=8)
    fig.suptitle(f"segmentations of the {name.replace('_', ' ')} ({view} view) over blocks "
                 f"1..{int(steps[-1])}; selected k = {int(ds['selected_k'])}", fontsize=10)
    return fig


_SWAP_TEXT = {"cosine": "cosine of final cls (swapped vs not)",
              "r2": "R^2 of final cls (swapped vs not)",
              "accuracy": "accuracy with the swap", "agreement": "predictions unchanged"}


def panel_swap(plt, sw, phases_ds=None):
    """Per-trial swap effects of both donor families (points) with their mean and the
    10-90% range."""
    keys = [k for k in _SWAP_TEXT if k in sw]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.8), squeeze=False,
                             layout="constrained")
    rng = np.random.default_rng(0)
    for ax, key in zip(axes.flat, keys):
        families = list(sw[D.SWAP_FAMILY].values)
        for i, family in enumerate(families):
            v = sw[key].sel({D.SWAP_FAMILY: family}).values
            v = v[np.isfinite(v)]
            ax.scatter(i + 0.12 * rng.standard_normal(len(v)), v, s=10, alpha=0.6,
                       color=FAMILY_COLORS.get(str(family)), label=f"{family} phase")
            if len(v):
                ax.hlines(v.mean(), i - 0.3, i + 0.3, color="black")
                ax.vlines(i + 0.35, *np.quantile(v, [0.1, 0.9]), color="black", lw=1)
        ax.set_xticks(range(len(families)), [f"{f}\nphase donor" for f in families],
                      fontsize=8)
        ax.set_xlim(-0.6, len(families) - 0.4)
        feature = "mean patch" if sw.attrs.get("feature") == "mean_patch" else "cls"
        ax.set_ylabel(_SWAP_TEXT[key].replace("final cls", f"final {feature}"), fontsize=8)
        if key == "accuracy" and "baseline_accuracy" in sw:
            ax.axhline(float(sw["baseline_accuracy"]), color="grey", ls="--", lw=1,
                       label="no swap")
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"layer swap: 1-{sw.sizes[D.SWAP_SLOT]} layers replaced by a block of the "
                 f"same or a different phase ({sw.sizes[D.SWAP_TRIAL]} trials per family, "
                 f"{sw.attrs.get('samples', '?')} images; bar: mean, line: 10-90%)",
                 fontsize=9)
    return fig


def plot_phases(node: Any, out_dir: str | os.PathLike[str], *, dpi: int = 90) -> list[Path]:
    """Write ``phase_matrices.png``, ``phase_segmentations.png`` and (when the swap test
    ran) ``phase_swap.png`` into ``out_dir`` from the ``phases`` group (an
    ``xr.DataTree``)."""
    plt = pyplot()
    out = Path(out_dir)
    ds = node.to_dataset()
    written = []
    if "phase" in ds:
        written.append(save_figure(panel_matrices(plt, ds), out / "phase_matrices.png",
                                   dpi=dpi))
        written.append(save_figure(panel_segmentations(plt, ds),
                                   out / "phase_segmentations.png", dpi=dpi))
    if "swap" in node.children:
        sw = node["swap"].to_dataset()
        if "cosine" in sw:
            written.append(save_figure(panel_swap(plt, sw), out / "phase_swap.png", dpi=dpi))
    return written
