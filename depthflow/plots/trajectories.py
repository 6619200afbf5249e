"""Figures of the root group: per-sample token dynamics and population ranks.

Each panel function draws one quantity on a matplotlib ``Axes`` from the root
``xr.Dataset`` of a result file; :func:`draw_token_dynamics` writes one PNG per panel plus
an overview.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from depthflow.core import vocabulary as D
from depthflow.plots import KIND_COLORS, pyplot, save_figure, write_figures



def _band(ax, x, values, *, label: str, color: str | None) -> None:
    """Mean over samples with a +-1 standard deviation band."""
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0)
    ax.plot(x, mean, marker="o", ms=3, label=label, color=color)
    ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=color)


def _per_kind(ax, ds, name: str, x_dim: str, ylabel: str, title: str) -> None:
    var = ds[name]
    x = ds[x_dim].values
    for kind in ds[D.KIND].values:
        values = var.sel({D.KIND: kind}).transpose(D.SAMPLE, x_dim).values
        _band(ax, x, values, label=str(kind), color=KIND_COLORS.get(str(kind)))
    ax.set_xlabel(x_dim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def _log_y(ax) -> None:
    """Log scale with plain numbers (minor ticks labelled when the range is small)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter() if 0 < low and high / low < 20
                                 else NullFormatter())


def panel_norm(ax, ds) -> None:
    _per_kind(ax, ds, "norm", D.DEPTH, "mean ||x||", "token norms")
    _log_y(ax)


def panel_gamma(ax, ds) -> None:
    _per_kind(ax, ds, "gamma", D.DEPTH, "<x_l, x_L> (cos)", "convergence to final direction")


def panel_speed(ax, ds) -> None:
    _per_kind(ax, ds, "angular_speed", D.STEP, "angle per step (rad)", "angular speed")


def panel_coherence(ax, ds) -> None:
    _band(ax, ds[D.DEPTH].values, ds["patch_coherence"].transpose(D.SAMPLE, D.DEPTH).values,
          label="patches", color=KIND_COLORS["patch"])
    ax.set_xlabel(D.DEPTH)
    ax.set_ylabel("mean cos to mean patch")
    ax.set_title("patch coherence")


def panel_rank(ax, ds) -> None:
    x = ds[D.STEP].values
    if "update_stable_rank" in ds:
        _band(ax, x, ds["update_stable_rank"].transpose(D.SAMPLE, D.STEP).values,
              label="per image (all tokens)", color="black")
    for kind in ds[D.KIND].values:
        ax.plot(x, ds["population_stable_rank"].sel({D.KIND: kind}).values, ls="--",
                marker=".", color=KIND_COLORS.get(str(kind)), label=f"{kind}, images stacked")
    ax.set_xlabel(D.STEP)
    ax.set_ylabel("stable rank of update")
    ax.set_title("rank of updates a_l - a_(l-1)")
    ax.legend(fontsize=7)


def panel_classes(ax, ds) -> None:
    x = ds[D.DEPTH].values
    ax.plot(x, ds["cls_within_class"].values, marker="o", ms=3, label="within class")
    ax.plot(x, ds["cls_between_class"].values, marker="o", ms=3, label="between class means")
    ax.plot(x, ds["cls_class_separation"].values, marker="o", ms=3, color="black",
            label="separation")
    ax.set_xlabel(D.DEPTH)
    ax.set_ylabel("cosine")
    ax.set_title("class structure of cls directions")
    ax.legend(fontsize=8)


PANELS: dict[str, tuple[str, Callable]] = {
    "norm": ("norm", panel_norm),
    "gamma": ("gamma", panel_gamma),
    "angular_speed": ("angular_speed", panel_speed),
    "patch_coherence": ("patch_coherence", panel_coherence),
    "update_rank": ("population_stable_rank", panel_rank),
    "class_separation": ("cls_class_separation", panel_classes),
}


def available_panels(ds) -> list[str]:
    return [name for name, (needs, _) in PANELS.items() if needs in ds.variables]


def draw_token_dynamics(tree, out_dir: Path, *, dpi: int = 110) -> list[Path]:
    """Draw ``overview.png`` and one PNG per panel of the root group into an existing
    directory."""
    ds = tree.to_dataset(inherit=False) if hasattr(tree, "subtree") else tree
    plt = pyplot()
    names = available_panels(ds)
    if not names:
        return []
    n = ds.sizes.get(D.SAMPLE, 0)
    title = (f"{ds.attrs.get('title', 'depthflow')} (n = {n} images; lines: mean over images, "
             "bands: +-1 standard deviation across images)")
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        PANELS[name][1](ax, ds)
    for ax in list(axes.flat)[len(names):]:
        fig.delaxes(ax)                                   # no empty panels
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    drawn = [save_figure(fig, out_dir / "overview.png", dpi=dpi)]
    for name in names:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        PANELS[name][1](ax, ds)
        fig.tight_layout()
        drawn.append(save_figure(fig, out_dir / f"{name}.png", dpi=dpi))
    return drawn


def plot_token_dynamics(ds, out_dir: str | os.PathLike[str], *, overwrite: bool = False,
                        dpi: int = 110) -> list[Path]:
    """Write ``overview.png`` and one PNG per panel into ``out_dir`` (atomically)."""
    return write_figures(ds, out_dir, [lambda d, p: draw_token_dynamics(d, p, dpi=dpi)],
                         overwrite=overwrite)
