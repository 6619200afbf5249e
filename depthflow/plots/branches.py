"""The attention / MLP split figure (group ``dynamics/branches``)."""

from __future__ import annotations

from pathlib import Path

from depthflow.plots import KIND_COLORS, pyplot, save_figure

__all__ = ["plot_branches"]

COLORS = {"attention": "tab:purple", "mlp": "tab:olive", "layer": "k"}


def plot_branches(group, out_dir: Path, *, name: str = "dynamics_branches.png") -> list[Path]:
    """``dynamics_branches.png``: per layer, the median log sigma_1 of each half-step and
    the layer, the relative update norm of each branch per token kind, and the departure
    from normality of each tangent map (bootstrap intervals over images)."""
    ds = group.to_dataset()
    if "log_sigma1_median" not in ds:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    layer = ds["layer"].values
    for b in ds["branch"].values:
        s = ds.sel(branch=b)
        axes[0].plot(layer, s["log_sigma1_median"], "-o", ms=3, color=COLORS.get(b), label=b)
        axes[0].fill_between(layer, s["log_sigma1_low"], s["log_sigma1_high"],
                             color=COLORS.get(b), alpha=0.2, lw=0)
        axes[2].plot(layer, s["update_non_normality_median"], "-o", ms=3, color=COLORS.get(b),
                     label=b)
        axes[2].fill_between(layer, s["update_non_normality_low"],
                             s["update_non_normality_high"], color=COLORS.get(b), alpha=0.2,
                             lw=0)
    axes[0].axhline(0, color="0.5", lw=0.8)
    axes[0].set(xlabel="layer", ylabel="log sigma_1 (direction, norms held)",
                title="stretching by half-step")
    style = {"attention": "-", "mlp": "--"}
    for b in ("attention", "mlp"):
        for kind in ds["kind"].values:
            s = ds.sel(branch=b, kind=kind)
            axes[1].plot(layer, s["relative_update_median"], style[b],
                         color=KIND_COLORS.get(str(kind), "0.3"), label=f"{b}, {kind}")
    axes[1].set(xlabel="layer", ylabel="||update|| / ||input token||",
                title="update size (solid: attention, dashed: MLP)", yscale="log")
    axes[2].set(xlabel="layer", ylabel="||J^T J - J J^T|| / ||J - I||^2",
                title="departure from normality", yscale="log")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"attention / MLP split: medians over n = {ds.attrs.get('n_images')} images, "
                 "bootstrap 95% bands", fontsize=10)
    fig.tight_layout()
    return [save_figure(fig, Path(out_dir) / name)]
