"""Labelled results of the phase analysis: segmentation and layer-swap Datasets, and the
short text table of ``depthflow phases``.

Variables have plain names (they are written to the ``phases`` and ``phases/swap`` groups),
carry ``long_name`` and ``units``, and use the dimension names of
:mod:`depthflow.core.vocabulary`; everything is NetCDF-plain (integers for flags, JSON strings
for thresholds).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from depthflow.core import vocabulary as D
from depthflow.phases import segmentation as seg
from depthflow.phases import swap
from depthflow.errors import ConfigError
from depthflow.phases.config import DEFAULT_K_MAX, PhaseConfig
from depthflow.core.vocabulary import attrs

SELECTION_RULE = ("k* = the smallest k whose modularity Q_k = (cut_k - mean_W * "
                  "pairs_between_k) / total_W is within select_tolerance of the best Q over "
                  "the optimal contiguous segmentations k = 1..k_max")


def _merge(a, b):
    """Merge two Datasets keeping the attributes of both (b wins on clashes)."""
    out = a.merge(b, combine_attrs="override")
    out.attrs = {**a.attrs, **b.attrs}
    return out


_VIEW_TEXT = ("paper: mean over {cls token, mean patch token} (the mean patch token alone for "
              "models without a cls token); cls: cls token; distillation: DeiT's "
              "distillation token; register / patch / all: every such token is one "
              "observation")


def segmentation_dataset(distance, config: PhaseConfig) -> Any:
    """Max-cut and DP segmentations of a distance matrix over blocks 1..L, with metrics."""
    import xarray as xr

    cfg = config
    w = seg.check_matrix(distance, name="distance matrix")
    n = w.shape[0]
    segs: list[tuple[str, seg.Segmentation]] = []
    notes = []
    if n > seg.MAX_EXACT_NODES:
        notes.append(f"max-cut skipped: {n} layers exceed the exact enumeration limit of "
                     f"{seg.MAX_EXACT_NODES}; only the contiguous (DP) segmentation is given")
    else:
        segs += [(f"maxcut_f{f:g}", seg.recursive_bisection(w, fraction=f,
                                                             min_size=cfg.min_size))
                 for f in cfg.fractions]
    if cfg.k_max > n and cfg.k_max != DEFAULT_K_MAX:     # the default adapts to small models
        raise ConfigError(f"k_max={cfg.k_max} is larger than the number of layers ({n})")
    k_max = max(1, min(cfg.k_max, n // cfg.min_size))
    if k_max < cfg.k_max:
        notes.append(f"k_max lowered from {cfg.k_max} to {k_max}: {n} layers hold at most "
                     f"{k_max} phases of min_size={cfg.min_size}")
    dps = seg.optimal_segmentations(w, k_max=k_max, min_size=min(cfg.min_size, n))
    segs += [(f"dp_k{s.k}", s) for s in dps]
    chosen = seg.select_k(dps, tolerance=cfg.select_tolerance)
    names = [name for name, _ in segs]
    steps = np.arange(1, n + 1)
    splits = max([len(s.cuts) for _, s in segs] + [1])
    metrics = [seg.phase_metrics(w, s.labels) for _, s in segs]
    cuts = np.full((len(segs), splits), np.nan)
    for i, (_, s) in enumerate(segs):
        cuts[i, :len(s.cuts)] = s.cuts
    S = D.SEGMENTATION
    ds = xr.Dataset(coords={
        S: (S, names, attrs("segmentation: maxcut_f<fraction> or dp_k<phases>", "")),
        "method": (S, [s.method for _, s in segs], attrs(
            "maxcut: paper's recursive max-cut bisection; dp: optimal contiguous", "")),
        "fraction": (S, [s.fraction for _, s in segs], attrs(
            "max-cut fraction f (eps = f * total_W); NaN for dp")),
        D.STEP: (D.STEP, steps, attrs("block l (its output, depth l)")),
        D.NUM_PHASES: (D.NUM_PHASES, np.arange(1, k_max + 1), attrs("number of phases k")),
    })
    ds["phase"] = ((S, D.STEP), np.stack([s.labels for _, s in segs]).astype(np.int32),
                         attrs("phase of block l's output, numbered by first block", ""))
    ds["count"] = (S, np.array([s.k for _, s in segs], np.int32),
                         attrs("number of phases", ""))
    ds["contiguous"] = (S, np.array([int(s.contiguous) for _, s in segs], np.int8),
                              attrs("1 if every phase is a run of consecutive blocks", ""))
    ds["thresholds"] = (S, [json.dumps(s.thresholds) if s.contiguous else ""
                                  for _, s in segs], attrs(
        "Raptor thresholds (last block of each phase but the last), JSON; '' if not "
        "contiguous", ""))
    ds["eps"] = (S, [s.eps for _, s in segs], attrs(
        "max-cut split threshold eps = f * total_W (NaN for dp)", "distance"))
    ds["split_cut"] = ((S, D.SPLIT), cuts, attrs(
        "cut value of each accepted max-cut bisection, in order (NaN padded)", "distance"))
    texts = {"cut": "total distance between phases (sum over pairs i<j)",
             "normalized_cut": "normalised cut: cut / total_W",
             "within": "mean distance between blocks of the same phase",
             "between": "mean distance between blocks of different phases",
             "contrast": "phase contrast: mean between- minus mean within-phase distance",
             "modularity": "modularity: (cut - mean distance * pairs between) / total_W"}
    for key, text in texts.items():
        ds[key] = (S, np.array([m[key] for m in metrics]), attrs(
            text, "1" if key == "normalized_cut" else "distance"))
    ds["dp_modularity"] = (D.NUM_PHASES, np.array([seg.modularity(s) for s in dps]),
                                 attrs("modularity of the optimal contiguous k phases "
                                        "(the selection score)"))
    ds["selected_k"] = ((), np.int32(chosen), attrs(
        "selected number of phases", "", rule=SELECTION_RULE,
        select_tolerance=cfg.select_tolerance, segmentation=f"dp_k{chosen}"))
    ds["total_weight"] = ((), float(seg.total_weight(w)), attrs(
        "total_W = sum of distances over block pairs i<j", "distance"))
    ds.attrs["notes"] = "; ".join(notes)
    return ds


def swap_dataset(model, batches, labels: Sequence[int], *, trials: int, max_layers: int = 3,
                 seed: int = 0, device: Any = "cpu", dtype: str = "float32",
                 segmentation: str = "", progress: bool = False,
                 total: int | None = None) -> Any:
    """Run the layer-swap test (:mod:`depthflow.phases.swap`) and label the result."""
    import xarray as xr

    rng = np.random.default_rng(seed)
    drawn = {f: swap.draw_trials(labels, family=f, trials=trials, max_layers=max_layers,
                                 rng=rng) for f in swap.FAMILIES}
    everything = [t for f in swap.FAMILIES for t in drawn[f]]
    if not everything:
        return xr.Dataset(attrs={"skipped": "no layer of any phase can be swapped"})
    values = swap.run_swaps(model, batches, everything, device=str(device), dtype=dtype,
                            progress=progress, total=total)
    shape = (len(swap.FAMILIES), trials)
    targets = np.full((*shape, max_layers), -1, np.int32)
    donors = np.full((*shape, max_layers), -1, np.int32)
    per_trial = {k: np.full(shape, np.nan) for k in ("cosine", "r2", "accuracy", "agreement")}
    i = 0
    for f, family in enumerate(swap.FAMILIES):
        for t, trial in enumerate(drawn[family]):
            targets[f, t, :len(trial.targets)] = trial.targets
            donors[f, t, :len(trial.donors)] = trial.donors
            for key in per_trial:
                per_trial[key][f, t] = values[key][i]
            i += 1
    F, T = D.SWAP_FAMILY, D.SWAP_TRIAL
    ds = xr.Dataset(coords={
        F: (F, list(swap.FAMILIES), attrs("donor block from the same / a different phase", "")),
        T: (T, np.arange(trials), attrs("random swap trial")),
        D.SWAP_SLOT: (D.SWAP_SLOT, np.arange(max_layers), attrs("replaced layer slot")),
        D.STATISTIC: (D.STATISTIC, list(swap.STATISTICS), attrs(
            "statistic over trials (std with ddof=1; qNN: quantile NN%)", "")),
    })
    ds["target"] = ((F, T, D.SWAP_SLOT), targets, attrs(
        "block replaced (1-based; -1 = unused slot)", ""))
    ds["donor"] = ((F, T, D.SWAP_SLOT), donors, attrs(
        "block run in its place (1-based; -1 = unused slot)", ""))
    ds["num_layers"] = ((F, T), (targets >= 0).sum(-1).astype(np.int32), attrs(
        "number of replaced layers", ""))
    feature = {"cls": "cls", "mean_patch": "mean-patch"}[values.get("feature", "cls")]
    texts = {"cosine": f"mean cosine of final normed {feature} features, swapped vs unswapped",
             "r2": f"R^2 of final normed {feature} features, swapped vs unswapped",
             "accuracy": f"top-1 accuracy of the {values['scorer']} with the swap",
             "agreement": f"share of images whose {values['scorer']} prediction is unchanged "
                          "by the swap"}
    for key, text in texts.items():
        if np.isnan(per_trial[key]).all():
            continue
        ds[key] = ((F, T), per_trial[key], attrs(text))
        ds[f"{key}_summary"] = ((F, D.STATISTIC), np.stack(
            [swap.summarize(row) for row in per_trial[key]]), attrs(text + ", over trials"))
    if values["baseline_accuracy"] == values["baseline_accuracy"]:
        ds["baseline_accuracy"] = ((), float(values["baseline_accuracy"]), attrs(
            f"top-1 accuracy of the unswapped model's {values['scorer']} on the same images",
            scorer=values["scorer"]))
    ds["phase"] = ((D.STEP,), np.asarray(labels, np.int32), attrs(
        "phases the swaps draw donors from", "", segmentation=segmentation))
    ds.attrs = {"samples": int(values["samples"]), "seed": int(seed),
                "segmentation": segmentation, "scorer": values["scorer"],
                "feature": values.get("feature", "cls"),
                "feature_note": "cls: norm(a_L)[cls]; mean_patch: mean over patch tokens of "
                "norm(a_L), for models without a cls token (docs/methods.md)",
                "scorer_note": "head: the model's own head; probe: logistic regression "
                f"on the unswapped normed {feature} features, cross-fitted on two halves of "
                "the images; none: no labels"}
    return ds


# ------------------------------------------------------------------------------ report
def describe_phases(node) -> str:
    """A short table: every segmentation with its phases, thresholds and metrics, and the
    layer-swap summary (``node``: the ``phases`` group, an ``xr.DataTree``)."""
    ds = node.to_dataset()
    lines = []
    view = ds["phase"].attrs.get("view", "")
    lines.append(f"segmented matrix: {ds['phase'].attrs.get('matrix', '')} "
                 f"({view}), blocks 1..{ds.sizes[D.STEP]}")
    lines.append(f"{'segmentation':<14} {'k':>2} {'contig':>6} {'ncut':>6} {'modul':>6} "
                 f"{'contrast':>8}  phases (blocks)")
    for name in ds[D.SEGMENTATION].values:
        row = ds.sel({D.SEGMENTATION: name})
        labels = row["phase"].values
        phases = " | ".join(_ranges(np.flatnonzero(labels == p) + 1)
                            for p in range(int(labels.max()) + 1))
        lines.append(f"{name:<14} {int(row['count']):>2} "
                     f"{'yes' if int(row['contiguous']) else 'no':>6} "
                     f"{float(row['normalized_cut']):6.3f} "
                     f"{float(row['modularity']):6.3f} "
                     f"{float(row['contrast']):8.4f}  {phases}")
    k = int(ds["selected_k"])
    lines.append(f"selected k = {k}: smallest k within "
                 f"{ds['selected_k'].attrs.get('select_tolerance')} of the best "
                 "modularity of the contiguous segmentations")
    if ds.attrs.get("notes"):
        lines.append(f"note: {ds.attrs['notes']}")
    sw = node["swap"].to_dataset() if "swap" in node.children else None
    if sw is not None and "cosine_summary" in sw:
        lines.append(f"layer swap ({sw.attrs.get('segmentation', '')}, "
                     f"{sw.sizes[D.SWAP_TRIAL]} trials per family, "
                     f"{sw.attrs.get('samples', '?')} images): mean +- std [q10, q90]")
        for key in ("cosine", "r2", "accuracy", "agreement"):
            if f"{key}_summary" not in sw:
                continue
            for family in sw[D.SWAP_FAMILY].values:
                s = sw[f"{key}_summary"].sel({D.SWAP_FAMILY: family})
                g = {k: float(s.sel({D.STATISTIC: k})) for k in ("mean", "std", "q10", "q90")}
                lines.append(f"  {key:<9} {family:<9} {g['mean']:7.3f} +- {g['std']:.3f} "
                             f"[{g['q10']:.3f}, {g['q90']:.3f}]")
        if "baseline_accuracy" in sw:
            lines.append(f"  unswapped accuracy {float(sw['baseline_accuracy']):.3f} "
                         f"({sw.attrs.get('scorer', 'head')})")
    elif sw is not None and sw.attrs.get("skipped"):
        lines.append(f"layer swap: skipped ({sw.attrs['skipped']})")
    elif ds.attrs.get("swap_skipped"):
        lines.append(f"layer swap: skipped ({ds.attrs['swap_skipped']})")
    return "\n".join(lines)


def _ranges(blocks: np.ndarray) -> str:
    """``[1,2,3,5]`` -> ``"1-3,5"``."""
    parts, start = [], None
    for i, b in enumerate(blocks):
        if start is None:
            start = b
        if i + 1 == len(blocks) or blocks[i + 1] != b + 1:
            parts.append(f"{start}-{b}" if b != start else f"{b}")
            start = None
    return ",".join(parts)
