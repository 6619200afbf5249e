"""Headline numbers of studies 6 and 7 as rows of ``summary.json`` (the record format that
``studies/tables.py --findings`` collects from every study): per claim and model the trained
model's number with its interval and n, the random-weights and depth-0 controls in the note,
and the verdict of the rule in ``studies/tables.py`` (docs/methods.md sections 2-15)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr


def _f(x: float, d: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.{d}f}" if abs(x) < 10 else f"{x:.1f}"


def _iv(lo: float, hi: float, d: int = 3) -> str:
    return f"[{_f(lo, d)}, {_f(hi, d)}]"


class Headlines:
    """One function per claim: ``(tree, boot1, wilson) -> (value, interval, n)`` texts."""

    def __init__(self, boot1: Callable, wilson: Callable) -> None:
        self.boot1, self.wilson = boot1, wilson

    def _L(self, tree: xr.DataTree) -> int:
        return int(tree.to_dataset().sizes["depth"]) - 1

    def gamma(self, tree):
        ds, L = tree.to_dataset(), self._L(tree)
        m, lo, hi = self.boot1(ds["gamma"].sel(kind="cls", depth=L // 2).values)
        return f"gamma_cls(l={L // 2}) {_f(m)}", _iv(lo, hi), int(ds.sizes["sample"])

    def late_speed(self, tree):
        ds, L = tree.to_dataset(), self._L(tree)
        m, lo, hi = self.boot1(ds["angular_speed"].sel(kind="cls", step=L).values)
        return f"cls speed at step {L} {_f(m)} rad", _iv(lo, hi), int(ds.sizes["sample"])

    def speed_order(self, tree):
        ds = tree.to_dataset()
        kinds = [str(k) for k in ds["kind"].values]
        vals = {k: self.boot1(np.nanmean(ds["angular_speed"].sel(kind=k).values, axis=1))
                for k in kinds}
        text = ", ".join(f"{k} {_f(v[0])}" for k, v in vals.items()) + " rad"
        return text, "cls " + _iv(*vals["cls"][1:]), int(ds.sizes["sample"])

    def coherence(self, tree):
        ds, L = tree.to_dataset(), self._L(tree)
        m, lo, hi = self.boot1(ds["patch_coherence"].sel(depth=L).values)
        mid = self.boot1(ds["patch_coherence"].sel(depth=L // 2).values)[0]
        return (f"kappa_L {_f(m)} (kappa_(L/2) {_f(mid)})", _iv(lo, hi),
                int(ds.sizes["sample"]))

    def stable_rank(self, tree):
        ds, L = tree.to_dataset(), self._L(tree)
        third = max(1, L // 3)
        v = ds["update_stable_rank"].values
        m, lo, hi = self.boot1(np.nanmean(v[:, -third:], axis=1))
        e = self.boot1(np.nanmean(v[:, :third], axis=1))[0]
        return (f"late {_f(m, 2)} (early {_f(e, 2)}; T = {ds.sizes['token']})",
                _iv(lo, hi, 2), int(ds.sizes["sample"]))

    def lyapunov(self, tree):
        ds = tree["dynamics/lyapunov"].to_dataset()
        e = ds["lyapunov_exponent"].sel(segment="whole depth", restriction="all->all")
        m, lo, hi = self.boot1(e.values[:, 0])
        return f"lambda_1 (all->all, 0-L) {_f(m)}", _iv(lo, hi), int(ds.sizes["subsample"])

    def stretching(self, tree):
        ds = tree["dynamics/stretching"].to_dataset()
        med = ds["log_sigma1_median"].values
        i = int(np.argmin(med))
        return (f"smallest layer log sigma_1 {_f(med[i])} (layer "
                f"{int(ds['layer'].values[i])})",
                _iv(float(ds["log_sigma1_low"].values[i]),
                    float(ds["log_sigma1_high"].values[i])), int(ds.sizes["subsample"]))

    def class_dependence(self, tree):
        ds, L = tree["dynamics/basins/classes"].to_dataset(), self._L(tree)
        s = ds.sel(depth=L)
        return (f"NCM accuracy at L {_f(float(s['ncm_accuracy']))} (null "
                f"{_f(float(s['ncm_null_mean']))}, p {_f(float(s['ncm_p_value']))})",
                _iv(float(s["ncm_accuracy_low"]), float(s["ncm_accuracy_high"])),
                int(ds.attrs.get("n_images", ds.sizes["subsample"])))

    def convergence(self, tree):
        ds, L = tree["dynamics/basins/classes"].to_dataset(), self._L(tree)
        s, h = ds.sel(depth=L), ds.sel(depth=L // 2)
        return (f"within-class dispersion {_f(float(h['within_dispersion']))} -> "
                f"{_f(float(s['within_dispersion']))} rad (l = L/2 -> L)",
                "L: " + _iv(float(s["within_dispersion_low"]),
                            float(s["within_dispersion_high"])),
                int(ds.attrs.get("n_images", ds.sizes["subsample"])))

    def entry(self, tree):
        ds = tree["dynamics/basins/classes"].to_dataset()
        e = ds["entry_depth"].values
        never = float((e < 0).mean())
        m, lo, hi = self.boot1(e[e >= 0].astype(float)) if (e >= 0).any() else \
            (math.nan,) * 3
        return (f"median entry depth {_f(m, 1)} (never {100 * never:.0f}%)", _iv(lo, hi, 1),
                int(len(e)))

    def robustness(self, tree):
        ds, L = tree["dynamics/basins/robustness"].to_dataset(), self._L(tree)
        d = int(ds["inject_depth"].values[len(ds["inject_depth"]) // 2])
        theta = float(ds["theta"].values[np.argmin(np.abs(ds["theta"].values - 0.2))])
        p = float(ds["stay_fraction"].sel(inject_depth=d, scope="cls", theta=theta))
        n = int(ds["n_placed"].sel(inject_depth=d))
        _, lo, hi = self.wilson(int(round(p * n)), n)
        return f"stay {_f(p, 2)} (cls rotated {theta:g} rad at depth {d})", _iv(lo, hi, 2), n

    def attractors(self, tree):
        ds = tree["dynamics/basins/attractors"].to_dataset()
        return (f"AMI {_f(float(ds['ami']))} (no attractor "
                f"{100 * float(ds['unassigned_fraction']):.0f}%)",
                _iv(float(ds["ami_low"]), float(ds["ami_high"])),
                int(ds.sizes.get("subsample", 0)))

    def _recovery(self, tree, direction: str):
        ds, L = tree["dynamics/recovery"].to_dataset(), self._L(tree)
        d = int(ds["inject_depth"].values[len(ds["inject_depth"]) // 2])
        theta = float(ds["perturb_angle"].values[0])
        s = ds.sel(direction=direction, inject_depth=d, perturb_angle=theta, depth=L,
                   kind="cls")
        n = int(ds["n_images"].sel(direction=direction, inject_depth=d, kind="cls"))
        return (f"cls angle_L / theta_K {_f(float(s['median']), 2)} (from depth {d}, "
                f"theta = {theta:g} rad)",
                _iv(float(s["median_low"]), float(s["median_high"]), 2), n)

    def recovery_random(self, tree):
        return self._recovery(tree, "random")

    def recovery_adversarial(self, tree):
        return self._recovery(tree, "adversarial")

    def frozen(self, tree):
        ds = tree["dynamics/frozen_lyapunov"].to_dataset().isel(frozen_layer=-1)
        st, e = ds["status"].values, ds["lyapunov_exponent"].values[:, 0]
        conv = int((st == 0).sum())
        m, lo, hi = self.boot1(e[st == 0] if conv else e)
        return (f"lambda_1 {_f(m)} ({conv}/{len(st)} converged)", _iv(lo, hi), len(st))


CLAIM_HEADLINE = {
    "directional convergence (S-curve)": "gamma",
    "cls reorientation late": "late_speed",
    "speed ordering (registers slow, patches moderate, cls fast)": "speed_order",
    "patch coherence rises late": "coherence",
    "low-rank late updates": "stable_rank",
    "directions contract along the trajectory": "lyapunov",
    "self-correction (layer by layer)": "stretching",
    "class-dependent angular basins (class dependence)": "class_dependence",
    "class-dependent angular basins (convergence)": "convergence",
    "class-dependent angular basins (entry along depth)": "entry",
    "class-dependent angular basins (robustness)": "robustness",
    "class-dependent angular basins (attractors)": "attractors",
    "self-correction (random perturbations)": "recovery_random",
    "self-correction (adversarial perturbations)": "recovery_adversarial",
    "angular basins as attractors (frozen layer)": "frozen",
}


def record(*, study: str, claim: str, paper: str, ours: str, interval: str, n: Any,
           agrees: str, note: str = "") -> dict[str, str]:
    """One row of ``summary.json`` (the schema of every study's summary)."""
    if agrees not in ("yes", "partly", "no", "not comparable"):
        raise ValueError(agrees)
    return {"study": study, "claim": claim, "paper": paper, "ours": ours,
            "interval": interval, "n": str(n), "agrees": agrees, "note": note}


def headline(h: Headlines, claim: str, tree: xr.DataTree) -> tuple[str, str, Any]:
    try:
        return getattr(h, CLAIM_HEADLINE[claim])(tree)
    except (KeyError, ValueError, IndexError):
        return "n/a", "", 0
