"""Figures of the ``dynamics`` group: finite-depth Lyapunov spectra, per-layer stretching,
class-dependent basins (convergence, class dependence, entry depth, robustness), recovery
curves and fixed points. Every summary is drawn as a median with its interval over images;
every title names its ``n``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from depthflow.core import vocabulary as D
from depthflow.plots import KIND_COLORS, pyplot, save_figure

RESTRICTION_COLORS = {"all->all": "tab:blue", "cls->cls": "tab:red", "all->cls": "tab:purple"}
STABILITY_COLORS = {"attracting": "tab:green", "repelling": "tab:red", "saddle": "tab:orange",
                    "marginal": "tab:olive", "unstable": "tab:pink", "unknown": "0.6"}


def _ds(node: Any, path: str):
    """The dataset of group ``path`` under ``node`` (None when the group is missing or
    holds no data, e.g. an analysis skipped because it is not defined for this model)."""
    try:
        ds = node[path].to_dataset()
    except KeyError:
        return None
    return ds if ds.data_vars else None


def _errorbar(ax, x, ds, name: str, **kw) -> None:
    med, lo, hi = (np.atleast_1d(np.asarray(ds[f"{name}_{s}"].values, float))
                   for s in ("median", "low", "high"))
    ax.errorbar(x, med, yerr=np.stack([med - lo, hi - med]), fmt=kw.pop("marker", "o"),
                capsize=3, **kw)


def fig_lyapunov(node: Any, plt) -> Any:
    """Top finite-depth exponent per segment and restriction (median and interval over
    images, per-image values as dots), next to the state propagator's."""
    ds = _ds(node, "lyapunov")
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    segs, rests = list(ds["segment"].values), list(ds["restriction"].values)
    width = 0.8 / len(rests)
    rng = np.random.default_rng(0)
    for j, r in enumerate(rests):
        x = np.arange(len(segs)) + (j - (len(rests) - 1) / 2) * width
        sel = ds.sel(restriction=r, exponent=1)
        per = sel["lyapunov_exponent"].transpose(D.SUBSAMPLE, "segment").values
        for i in range(len(segs)):
            ax.scatter(x[i] + 0.04 * rng.standard_normal(per.shape[0]), per[:, i], s=4,
                       alpha=0.25, color=RESTRICTION_COLORS.get(r))
        _errorbar(ax, x, sel, "lyapunov_exponent", color=RESTRICTION_COLORS.get(r),
                  label=f"direction, {r}")
    if "state_exponent_median" in ds:
        sel = ds.sel(exponent=1)
        _errorbar(ax, [-0.55], sel, "state_exponent", color="black", marker="s",
                  label="state, all->all")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(segs)),
                  [f"{s}\n(depth {int(a)}-{int(b)})" for s, a, b in
                   zip(segs, ds["start"].values, ds["stop"].values)], fontsize=8)
    ax.set_ylabel("top exponent log(s_1) / layers (1/layer)")
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"finite-depth Lyapunov exponents of the real model (n = {ds.sizes[D.SUBSAMPLE]} "
                 f"images; median and {_level(node)} bootstrap interval)", fontsize=9)
    return fig


def fig_stretching(node: Any, plt) -> Any:
    """log sigma_1 of every layer: median with interval, per-image lines, and the fraction
    of images whose layer contracts every direction perturbation."""
    ds = _ds(node, "stretching")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    layers = ds[D.LAYER].values
    per = np.log(ds["sigma"].isel(mode=0).transpose(D.SUBSAMPLE, D.LAYER).values)
    ax.plot(layers, per.T, color="tab:blue", alpha=0.08, lw=0.8)
    ax.fill_between(layers, ds["log_sigma1_low"], ds["log_sigma1_high"], color="tab:blue",
                    alpha=0.3, label=f"{_level(node)} interval of the median")
    ax.plot(layers, ds["log_sigma1_median"], "o-", color="tab:blue", label="median")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("layer l")
    ax.set_ylabel("log sigma_1 (< 0: contracts every direction)")
    ax.legend(fontsize=7)
    ax.set_title(f"largest stretch of a direction perturbation per layer (n = {per.shape[0]})",
                 fontsize=9)
    frac = ds["contracting_fraction"].values
    ax2.bar(layers, frac, color="tab:green")
    if not frac.any():
        ax2.text(0.5, 0.5, f"none: every layer stretches some direction\nfor all {per.shape[0]} "
                 "images (sigma_1 > 1)", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("layer l")
    ax2.set_ylabel("fraction of images with sigma_1 < 1")
    ax2.set_title("layers that contract every direction perturbation", fontsize=9)
    return fig


def fig_basins(node: Any, plt) -> Any:
    """Class-dependent basins of the cls token: convergence, class dependence against the
    permutation null, entry depth, robustness."""
    cl = _ds(node, "basins/classes")
    rob = _ds(node, "basins/robustness")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), layout="constrained")
    depth = cl[D.DEPTH].values
    n = cl.attrs.get("n_images", cl.sizes.get(D.SUBSAMPLE))
    ax = axes[0, 0]
    for name, color, text in (("within_dispersion", "tab:blue", "within class (to class mean)"),
                              ("between_angle", "tab:orange", "between class means")):
        ax.fill_between(depth, cl[f"{name}_low"], cl[f"{name}_high"], color=color, alpha=0.3)
        ax.plot(depth, cl[name], "o-", color=color, label=text)
    ax.set_xlabel("depth")
    ax.set_ylabel("mean angle (rad)")
    ax.legend(fontsize=7)
    ax.set_title(f"convergence of cls directions (n = {n} images)", fontsize=9)
    ax = axes[0, 1]
    for name, null, color, text in (
            ("ncm_accuracy", "ncm_null_mean", "tab:green",
             "nearest-class-mean accuracy (cross-fitted)"),
            ("ami", "ami_null_mean", "tab:purple", "AMI of spherical k-means vs labels")):
        ax.fill_between(depth, cl[f"{name}_low"], cl[f"{name}_high"], color=color, alpha=0.3)
        ax.plot(depth, cl[name], "o-", color=color, label=text)
        ax.plot(depth, cl[null], ":", color=color, label="its permutation-null mean")
    significant = cl["ncm_p_value"].values < 0.05
    ax.scatter(depth[significant], np.full(significant.sum(), -0.05), marker="*",
               color="black", label="p < 0.05 (Holm)")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("depth")
    ax.legend(fontsize=6.5)
    ax.set_title("class dependence vs the label-permutation null", fontsize=9)
    ax = axes[1, 0]
    counts = cl["entry_count"].transpose(D.CLASS, "entry").values
    entries = cl["entry"].values
    bottom = np.zeros(len(entries))
    cmap = pyplot().get_cmap("tab10")
    for c, cname in enumerate(cl[D.CLASS].values):
        ax.bar(entries, counts[c], bottom=bottom, color=cmap(c % 10), label=str(cname))
        bottom += counts[c]
    ax.set_xticks(entries, ["never" if e < 0 else str(e) for e in entries], fontsize=7)
    ax.set_xlabel("basin entry depth")
    ax.set_ylabel("images")
    ax.legend(fontsize=6, ncol=2, title="class", title_fontsize=7)
    ax.set_title("first depth from which the cls stays nearest its own class mean", fontsize=9)
    ax = axes[1, 1]
    if rob is not None:
        styles = {"cls": "-", "all": "--"}
        for i, l0 in enumerate(rob["inject_depth"].values):
            for scope in rob["scope"].values:
                sel = rob.sel(inject_depth=l0, scope=scope)
                ax.plot(rob["theta"], sel["stay_fraction"], styles.get(str(scope), "-"),
                        marker="o", ms=3, color=cmap(i), label=f"depth {l0}, {scope} rotated")
                ax.fill_between(rob["theta"], sel["stay_fraction_low"],
                                sel["stay_fraction_high"], color=cmap(i), alpha=0.12)
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set_xlabel("rotation angle theta (rad)")
        ax.set_ylabel("fraction still nearest own class mean")
        ax.legend(fontsize=6)
        ax.set_title(f"basin robustness (n = {int(rob['n_placed'].max())} correctly placed "
                     "images)", fontsize=9)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "robustness not computed", ha="center")
    return fig


def fig_recovery(node: Any, plt) -> Any:
    """Median recovery curves angle_l / theta after injection, per token kind."""
    ds = _ds(node, "recovery")
    depths = ds["inject_depth"].values
    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.8), squeeze=False,
                             layout="constrained", sharey=True)
    theta = ds["perturb_angle"].values[0]
    for ax, l0 in zip(axes.flat, depths):
        for kind in ds[D.KIND].values:
            for direction, style in (("random", "-"), ("adversarial", "--")):
                if direction not in ds["direction"].values:
                    continue
                sel = ds.sel(direction=direction, inject_depth=l0, kind=kind,
                             perturb_angle=theta)
                ok = np.isfinite(sel["median"].values)
                x = ds[D.DEPTH].values[ok]
                color = KIND_COLORS.get(str(kind))
                ax.plot(x, sel["median"].values[ok], style, color=color,
                        label=f"{kind}, {direction}")
                ax.fill_between(x, sel["median_low"].values[ok], sel["median_high"].values[ok],
                                color=color, alpha=0.15)
        ax.axhline(1, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("depth")
        ax.set_title(f"injected at depth {l0} (theta = {theta:g} rad)", fontsize=9)
    axes.flat[0].set_ylabel("angle to the unperturbed run / theta")
    axes.flat[-1].legend(fontsize=6)
    fig.suptitle(f"perturbation recovery: median over n = {ds.sizes[D.SUBSAMPLE]} images and "
                 f"{_level(node)} bootstrap interval (< 1: the perturbation shrank)", fontsize=9)
    return fig


def fig_fixed_points(node: Any, plt) -> Any:
    """Tangent spectra at the fixed points of the frozen last layer (coloured by stability)
    and how the fixed points change with the reference norms."""
    st = _ds(node, "fixed_points/state")
    scan = _ds(node, "fixed_points/norm_scan")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    meanings = str(st["stability"].attrs.get("flag_meanings", "")).split()
    t = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(t), np.sin(t), color="grey", lw=0.8)
    flat = st["non_hyperbolic"].values if "non_hyperbolic" in st else None
    for p in range(st.sizes.get(D.FIXED_POINT, 0)):
        kind = meanings[int(st["stability"].values[p])] if meanings else "unknown"
        color = STABILITY_COLORS.get(kind, "0.5")
        nh = flat is not None and int(flat[p]) == 1      # hollow: non-hyperbolic
        ax.scatter(st["eig_real"].values[p], st["eig_imag"].values[p], s=12,
                   facecolors="none" if nh else color, edgecolors=color)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=c, label=k)
               for k, c in STABILITY_COLORS.items()]
    handles.append(Line2D([], [], marker="o", ls="", color="0.3", markerfacecolor="none",
                          label="hollow: non-hyperbolic"))
    ax.legend(handles=handles, fontsize=7)
    ax.set_aspect("equal")
    ax.set_xlabel("Re eigenvalue")
    ax.set_ylabel("Im eigenvalue")
    ax.set_title(f"tangent eigenvalues at {int(st['n_distinct'])} distinct fixed points\n"
                 f"({int(st['n_converged'])} of {st.sizes['start']} starts converged)",
                 fontsize=9)
    if scan is not None:
        scales = scan["norm_scale"].values
        stab = scan["stability"].values
        bottom = np.zeros(len(scales))
        for code, kind in enumerate(meanings):
            count = (stab == code).sum(-1)
            ax2.bar(np.arange(len(scales)), count, bottom=bottom,
                    color=STABILITY_COLORS.get(kind, "0.5"), label=kind)
            bottom += count
        ax2.set_xticks(range(len(scales)), [f"r x {s:g}" for s in scales])
        ax2.set_ylabel("distinct fixed points")
        ax2.legend(fontsize=7)
        ax2.set_title(f"fixed points with the reference norms r scaled\n"
                      f"({scan.attrs.get('n_starts', '?')} starts; converged per scale: "
                      f"{', '.join(str(int(c)) for c in scan['n_converged'].values)})",
                      fontsize=9)
    else:
        ax2.set_axis_off()
    return fig


def _level(node: Any) -> str:
    import json

    try:
        return f"{100 * json.loads(node.attrs.get('config', '{}')).get('level', 0.95):g}%"
    except (TypeError, ValueError):
        return "95%"


FIGURES = {"dynamics_lyapunov": ("lyapunov", fig_lyapunov),
           "dynamics_stretching": ("stretching", fig_stretching),
           "dynamics_basins": ("basins/classes", fig_basins),
           "dynamics_recovery": ("recovery", fig_recovery),
           "dynamics_fixed_points": ("fixed_points/state", fig_fixed_points)}


def plot_dynamics(node: Any, out_dir: str | os.PathLike[str], *, dpi: int = 110) -> list[Path]:
    """Write one PNG per available figure of the ``dynamics`` group into ``out_dir``."""
    plt = pyplot()
    out = Path(out_dir)
    written = []
    for name, (needs, draw) in FIGURES.items():
        if _ds(node, needs) is not None:
            written.append(save_figure(draw(node, plt), out / f"{name}.png", dpi=dpi))
    return written
