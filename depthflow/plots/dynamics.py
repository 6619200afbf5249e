"""Figures (PNG) of the dynamics variables (``dyn_*``) of an analysis Dataset.

One function per figure, each drawing from an ``xr.Dataset`` as written by
:class:`depthflow.dynamics.analysis.DynamicsAnalysis`; :func:`plot_dynamics` writes those whose
variables are present (each file written to a temporary name and renamed).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from depthflow import vocabulary as D
from depthflow.plots import KIND_COLORS, pyplot, save_figure


def fig_spectra(ds, plt):
    """Tangent eigenvalues of every layer in the complex plane, spectral radius per layer."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    # only the layers whose spectra were computed (the file's step axis holds all L)
    ds = ds.isel({D.STEP: ds["dyn_spectral_radius"].notnull().any(D.DYN_SAMPLE).values})
    steps = ds[D.STEP].values
    cmap = plt.get_cmap("viridis")
    for j, t in enumerate(steps):
        re = ds["dyn_eig_real"].isel({D.STEP: j}).values.ravel()
        im = ds["dyn_eig_imag"].isel({D.STEP: j}).values.ravel()
        ax0.scatter(re, im, s=8, color=cmap(j / max(1, len(steps) - 1)), label=f"layer {t}")
    theta = np.linspace(0, 2 * np.pi, 200)
    ax0.plot(np.cos(theta), np.sin(theta), "k--", lw=0.8)
    ax0.set_aspect("equal")
    ax0.set_xlabel("Re")
    ax0.set_ylabel("Im")
    ax0.set_title("top tangent eigenvalues per layer")
    ax0.legend(fontsize=6, ncol=2)
    rho = ds["dyn_spectral_radius"].transpose(D.DYN_SAMPLE, D.STEP).values
    ax1.plot(steps, rho.T, color="gray", alpha=0.4, lw=0.8)
    ax1.plot(steps, np.nanmean(rho, 0), "o-", color="black", label="sample mean")
    if "dyn_token_block_radius" in ds:
        for kind in ds["dyn_token_block_radius"][D.KIND].values:
            v = ds["dyn_token_block_radius"].sel({D.KIND: kind}).transpose(D.DYN_SAMPLE, D.STEP)
            ax1.plot(steps, np.nanmean(v.values, 0), "s--", ms=3,
                     color=KIND_COLORS.get(str(kind)), label=f"{kind} token blocks")
    ax1.axhline(1.0, color="k", ls=":", lw=0.8)
    ax1.set_xlabel("layer t")
    ax1.set_ylabel("spectral radius")
    ax1.set_title("tangent spectral radius (< 1: contracting)")
    ax1.legend(fontsize=7)
    return fig


def fig_exponents(ds, plt):
    """Local stretches per layer along the trajectory; exponents of frozen late layers."""
    has_frozen = "dyn_lyap_frozen_exponent" in ds
    fig, axes = plt.subplots(1, 2 if has_frozen else 1, figsize=(11 if has_frozen else 5.5,
                                                                 4.2), squeeze=False)
    ax = axes[0, 0]
    st = ds["dyn_lyap_stretch_depth"].transpose(D.DYN_SAMPLE, D.STEP, D.EXPONENT)
    steps = ds[D.STEP].values if D.STEP in st.coords else np.arange(st.shape[1]) + 1
    mean = np.nanmean(st.values, 0)
    cmap = plt.get_cmap("plasma")
    k = mean.shape[1]
    for j in range(k):
        ax.plot(steps, mean[:, j], marker=".", color=cmap(j / max(1, k - 1)),
                label=f"j={j + 1}" if j in (0, k - 1) else None)
    ax.axhline(0, color="k", ls=":", lw=0.8)
    ax.set_xlabel("layer t")
    ax.set_ylabel("log |R_jj| (local stretch)")
    ax.set_title("tangent stretches along the trajectory (sphere)")
    ax.legend(fontsize=7)
    if has_frozen:
        ax = axes[0, 1]
        ex = ds["dyn_lyap_frozen_exponent"]
        for layer in ex[D.FROZEN_LAYER].values:
            v = ex.sel({D.FROZEN_LAYER: layer}).transpose(D.DYN_SAMPLE, D.EXPONENT).values
            idx = np.arange(1, v.shape[1] + 1)
            ax.errorbar(idx, np.nanmean(v, 0), yerr=np.nanstd(v, 0), marker="o", ms=3,
                        capsize=2, label=f"layer {layer} iterated")
        ax.axhline(0, color="k", ls=":", lw=0.8)
        ax.set_xlabel("exponent index j")
        ax.set_ylabel("Lyapunov exponent (1/iteration)")
        ax.set_title("frozen layers as autonomous sphere maps")
        ax.legend(fontsize=7)
    return fig


def fig_basins(ds, plt):
    """Basin fractions (with binomial errors) per token kind and per class."""
    panels = [n for n in ("dyn_basin_fraction_by_kind", "dyn_basin_fraction_by_class")
              if n in ds]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4.2),
                             squeeze=False)
    for ax, name in zip(axes.flat, panels):
        group = D.KIND if "kind" in name else D.CLASS
        frac = ds[name].transpose(group, D.BASIN).fillna(0).values
        basins = ds[D.BASIN].values
        rows = [str(g) for g in ds[group].values]
        bottom = np.zeros(len(rows))
        cmap = plt.get_cmap("tab20")
        for b_i, b in enumerate(basins):
            color = "lightgray" if b < 0 else cmap(int(b) % 20)
            ax.bar(rows, frac[:, b_i], bottom=bottom, color=color,
                   label="none (-1)" if b < 0 else (f"basin {b}" if b < 8 else None))
            bottom += frac[:, b_i]
        ax.set_ylabel("fraction of end points")
        ax.set_title(f"basin fractions per {group}")
        ax.legend(fontsize=6)
    return fig


def fig_recovery(ds, plt):
    """Angle to the unperturbed trajectory / injected angle, per token kind and l0."""
    ang = ds["dyn_recovery_angle"]
    depths = ds[D.DEPTH].values
    dirs = [str(d) for d in ds[D.DIRECTION].values]
    thetas = ds[D.PERTURB_ANGLE].values
    fig, axes = plt.subplots(1, len(dirs), figsize=(5.5 * len(dirs), 4.2), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, d in zip(axes.flat, dirs):
        for kind in ds[D.KIND].values:
            for l_i, l0 in enumerate(ds[D.INJECT_DEPTH].values):
                v = ang.sel({D.DIRECTION: d, D.KIND: kind, D.INJECT_DEPTH: l0})
                v = v / ang[D.PERTURB_ANGLE]
                curve = v.mean([D.DYN_SAMPLE, D.DRAW, D.PERTURB_ANGLE]).values
                ax.plot(depths, curve, styles[l_i % 4], marker=".",
                        color=KIND_COLORS.get(str(kind)),
                        label=f"{kind}" if l_i == 0 else None)
        ax.axhline(1.0, color="k", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("depth")
        ax.set_ylabel("angle / theta")
        ax.set_title(f"{d} perturbations (theta = {', '.join(f'{t:g}' for t in thetas)}; "
                     "line style: l0)", fontsize=9)
        ax.legend(fontsize=7)
    return fig


FIGURES: dict[str, tuple[str, Callable]] = {
    "dynamics_spectra": ("dyn_eig_real", fig_spectra),
    "dynamics_exponents": ("dyn_lyap_stretch_depth", fig_exponents),
    "dynamics_basins": ("dyn_basin_fraction", fig_basins),
    "dynamics_recovery": ("dyn_recovery_angle", fig_recovery),
}


def plot_dynamics(ds, out_dir: str | os.PathLike[str], *, dpi: int = 110) -> list[Path]:
    """Write one PNG per available figure into ``out_dir`` (created if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    written = []
    for name, (needs, draw) in FIGURES.items():
        if needs not in ds.variables:
            continue
        fig = draw(ds, plt)
        fig.tight_layout()
        written.append(save_figure(fig, out / f"{name}.png", dpi=dpi))
        plt.close(fig)
    return written
