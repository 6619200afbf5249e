"""Figures of a phase Dataset: similarity heatmaps with phase boundaries, swap results."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from . import dims as D
from .plots import _pyplot

FAMILY_COLORS = {"same": "tab:green", "different": "tab:red"}


def _save(fig, path: Path, dpi: int) -> Path:
    """Write a figure atomically (temporary file beside it, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _boundaries(ax, labels: np.ndarray, first: int) -> None:
    """Lines between consecutive blocks of different phases; phase colours on the edge."""
    for i in np.flatnonzero(labels[1:] != labels[:-1]):
        edge = first + i + 0.5
        ax.axhline(edge, color="white", lw=1.5)
        ax.axvline(edge, color="white", lw=1.5)
    colors = np.asarray(labels)[None, :]
    x = np.arange(first, first + len(labels))
    ax.scatter(x, np.full(len(x), first - 0.9), c=colors[0], cmap="tab10", vmin=0, vmax=9,
               marker="s", s=18, clip_on=False)


def _heatmap(ax, matrix, depths, title: str, *, cmap: str = "viridis"):
    lo, hi = depths[0], depths[-1]
    im = ax.imshow(matrix, origin="upper", cmap=cmap, extent=(lo - 0.5, hi + 0.5, hi + 0.5,
                                                               lo - 0.5))
    from matplotlib.ticker import MaxNLocator

    for axis in (ax.xaxis, ax.yaxis):          # depths are integers
        axis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("depth j")
    ax.set_ylabel("depth i")
    return im


def panel_matrices(plt, ds):
    """Every matrix over depths 0..L: one row per metric (shared colour scale), one column
    per view."""
    names = [(n, dim) for n, dim in (("phase_cosine_distance", D.VIEW), ("phase_mse", D.VIEW),
                                     ("phase_cka", D.CKA_VIEW),
                                     ("phase_cka_debiased", D.CKA_VIEW)) if n in ds]
    cols = max(ds.sizes[dim] for _, dim in names)
    fig, axes = plt.subplots(len(names), cols, figsize=(2.6 * cols + 1, 2.6 * len(names)),
                             squeeze=False)
    depths = ds[D.DEPTH_I].values
    for row, (name, dim) in zip(axes, names):
        values = ds[name].values
        lo, hi = np.nanmin(values), np.nanmax(values)
        for ax, view in zip(row, ds[dim].values):
            im = _heatmap(ax, ds[name].sel({dim: view}).values, depths,
                          f"{name.removeprefix('phase_')} ({view})")
            im.set_clim(lo, hi)
            ax.set_xlabel("")
            ax.set_ylabel("depth i" if ax is row[0] else "")
        for ax in row[ds.sizes[dim]:]:
            ax.axis("off")
        fig.colorbar(im, ax=row.tolist(), fraction=0.02)
    for ax in axes[-1]:
        ax.set_xlabel("depth j")
    return fig


def panel_segmentations(plt, ds):
    """The segmented matrix (blocks 1..L) once per segmentation, boundaries drawn."""
    attrs = ds["phase_label"].attrs
    name, view = attrs.get("matrix", "phase_cosine_distance"), attrs.get("view", "paper")
    dim = D.CKA_VIEW if name.startswith("phase_cka") else D.VIEW
    matrix = ds[name].sel({dim: view}).values[1:, 1:]
    steps = ds[D.STEP].values
    segs = list(ds[D.SEGMENTATION].values)
    cols = min(4, len(segs))
    rows = -(-len(segs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows), squeeze=False)
    for ax, s in zip(axes.flat, segs):
        labels = ds["phase_label"].sel({D.SEGMENTATION: s}).values
        contiguous = int(ds["phase_contiguous"].sel({D.SEGMENTATION: s}))
        _heatmap(ax, matrix, steps, f"{s}: k={labels.max() + 1}"
                 f"{'' if contiguous else ' (not contiguous)'}")
        _boundaries(ax, labels, int(steps[0]))
        ax.set_xlabel("block j (phase colours above)")
        ax.set_ylabel("block i")
    for ax in list(axes.flat)[len(segs):]:
        ax.axis("off")
    fig.suptitle(f"{name.removeprefix('phase_')} ({view}), selected k = "
                 f"{int(ds['phase_selected_k'])}", fontsize=10)
    fig.tight_layout()
    return fig


def panel_swap(plt, ds):
    """Per-trial swap effects of both families (points) with their mean."""
    keys = [k for k in ("cosine", "r2", "accuracy", "agreement") if f"swap_{k}" in ds]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, key in zip(axes.flat, keys):
        for i, family in enumerate(ds[D.SWAP_FAMILY].values):
            v = ds[f"swap_{key}"].sel({D.SWAP_FAMILY: family}).values
            v = v[np.isfinite(v)]
            color = FAMILY_COLORS.get(str(family))
            ax.scatter(i + 0.15 * rng.standard_normal(len(v)), v, s=10, alpha=0.6, color=color)
            if len(v):
                ax.hlines(v.mean(), i - 0.3, i + 0.3, color="black")
        ax.set_xticks(range(ds.sizes[D.SWAP_FAMILY]), [f"{f} phase" for f in
                                                       ds[D.SWAP_FAMILY].values])
        ax.set_title(f"swap: {key}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_phases(ds, out_dir: str | os.PathLike[str], *, dpi: int = 90) -> list[Path]:
    """Write ``phase_matrices.png``, ``phase_segmentations.png`` and (when present)
    ``phase_swap.png`` into ``out_dir`` (created if missing; each file atomic)."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    panels = [("phase_matrices.png", panel_matrices, "phase_label"),
              ("phase_segmentations.png", panel_segmentations, "phase_label"),
              ("phase_swap.png", panel_swap, "swap_cosine")]
    for filename, panel, needs in panels:
        if needs not in ds:
            continue
        fig = panel(plt, ds)
        try:
            written.append(_save(fig, out / filename, dpi))
        finally:
            plt.close(fig)
    return written
