"""Layer-swap test: are layers interchangeable inside a phase and not across phases?

A trial replaces 1..``max_layers`` distinct layers l (blocks, 1-based) by another block m,
run at position l: in the *same* family m is drawn from l's phase (m != l), in the
*different* family from another phase. Every trial is run on the same images and
compared with the unswapped model:

* ``cosine``: mean over images of the cosine between the readout features of the swapped
  and unswapped model: the final normed cls token ``model.norm(a_L)[cls]`` (the feature a
  head reads), or, for a model without a cls token (SigLIP), the mean over patch tokens of
  the final normed tokens ``mean_i model.norm(a_L)[patch_i]`` (docs/methods.md, "Layer-swap
  readout"); DeiT's distillation token is not part of the feature;
* ``r2``: ``1 - sum (x - x~)^2 / sum (x - mean x)^2`` over images and features of the same
  features (variance from the unswapped model: the standard R^2);
* ``accuracy``: top-1 accuracy of the model's head on labelled images; a model without a
  head gets a linear probe instead (logistic regression on the standardised unswapped
  features, cross-fitted on two class-stratified halves of the images: every image is
  scored by the probe fitted on the other half), applied unchanged to the swapped features;
* ``agreement``: share of images whose head (or probe) prediction is unchanged.

Trials are drawn once from ``seed`` (numpy) before any image is read. Each batch's
unswapped trajectory is kept, so a trial only runs the blocks from its first swapped layer
on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from depthflow.errors import ConfigError
from depthflow.data.trajectory import compute_context, resolve_device, resolve_dtype

FAMILIES = ("same", "different")
QUANTILES = (0.1, 0.5, 0.9)
STATISTICS = ("mean", "std", "min", "q10", "q50", "q90", "max")


@dataclasses.dataclass(frozen=True)
class SwapTrial:
    """Blocks ``targets`` (1-based) are replaced by blocks ``donors`` (same order)."""

    family: str
    targets: tuple[int, ...]
    donors: tuple[int, ...]

    def schedule(self, depth: int) -> list[int]:
        """Block run at each position 1..depth."""
        run = list(range(1, depth + 1))
        for t, d in zip(self.targets, self.donors):
            run[t - 1] = d
        return run


def draw_trials(labels: Sequence[int], *, family: str, trials: int, max_layers: int = 3,
                rng: np.random.Generator) -> list[SwapTrial]:
    """Random swaps for a phase labelling of blocks 1..L (``labels[l-1]`` = phase of l).

    The number of swapped layers is uniform in 1..``max_layers`` (capped by the eligible
    layers). Returns ``[]`` when no swap of this family exists (e.g. ``different`` with
    one phase, ``same`` with only single-layer phases).
    """
    if family not in FAMILIES:
        raise ConfigError(f"swap family must be one of {FAMILIES}, got {family!r}")
    if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1:
        raise ConfigError(f"swap max_layers must be an integer >= 1, got {max_layers!r}")
    lab = np.asarray(labels)
    layers = np.arange(1, len(lab) + 1)
    donors = {int(n): layers[(lab == lab[n - 1]) & (layers != n)] if family == "same"
              else layers[lab != lab[n - 1]] for n in layers}
    eligible = np.array([n for n in layers if len(donors[int(n)])])
    if not len(eligible):
        return []
    out = []
    for _ in range(trials):
        count = int(rng.integers(1, min(max_layers, len(eligible)) + 1))
        targets = np.sort(rng.choice(eligible, size=count, replace=False))
        chosen = tuple(int(rng.choice(donors[int(t)])) for t in targets)
        out.append(SwapTrial(family, tuple(int(t) for t in targets), chosen))
    return out


class _TrialStats:
    """Streaming sums of one trial's comparison with the unswapped model."""

    def __init__(self) -> None:
        self.cos = 0.0
        self.sq_err = 0.0
        self.correct = 0
        self.agree = 0


def readout_feature(model) -> str:
    """``"cls"`` or, for models without a cls token, ``"mean_patch"``."""
    return "cls" if getattr(model.cfg, "cls_token", True) else "mean_patch"


def readout_features(model, state: Tensor) -> Tensor:
    """The layer-swap readout ``(B, D)`` (float64) of depth-L states ``(B, T, D)``:
    ``norm(a_L)[cls]``, or ``mean_i norm(a_L)[patch_i]`` without a cls token."""
    normed = model.norm(state)
    if readout_feature(model) == "cls":
        return normed[:, model.cfg.cls_index or 0].double()
    return normed[:, model.cfg.num_prefix_tokens:].mean(1).double()


def _probe_scores(ref: np.ndarray, swapped: list[np.ndarray], labels: np.ndarray,
                  seed: int = 0) -> tuple[float, np.ndarray, np.ndarray]:
    """Cross-fitted linear-probe accuracy of the unswapped features and, with the same two
    probes, accuracy and agreement of each trial's features (labelled images only)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    half = np.empty(len(labels), dtype=np.int64)      # stratified: alternate within a class
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        half[idx] = np.arange(len(idx)) % 2
    base_pred = np.empty(len(labels), dtype=np.int64)
    pred = np.empty((len(swapped), len(labels)), dtype=np.int64)
    for part in (0, 1):
        fit, score = half != part, half == part
        if len(np.unique(labels[fit])) < 2:
            return float("nan"), np.full(len(swapped), np.nan), np.full(len(swapped), np.nan)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000,
                                                                   random_state=seed))
        probe.fit(ref[fit], labels[fit])
        base_pred[score] = probe.predict(ref[score])
        for i, feats in enumerate(swapped):
            pred[i, score] = probe.predict(feats[score])
    accuracy = (pred == labels).mean(1)
    agreement = (pred == base_pred).mean(1)
    return float((base_pred == labels).mean()), accuracy, agreement


def run_swaps(model, batches, trials: Sequence[SwapTrial], *, device: str = "cpu",
              dtype: str = "float32", probe: bool = True, progress: bool = False,
              total: int | None = None) -> dict[str, np.ndarray | float | int]:
    """Run every trial on every batch (iterable of :class:`~depthflow.data.images.Batch`).

    Returns per-trial arrays ``cosine``, ``r2``, ``accuracy`` and ``agreement`` (NaN where
    undefined) plus ``baseline_accuracy``, ``samples``, ``labelled``, ``scorer``
    (``"head"``, ``"probe"`` or ``"none"``) and ``feature`` (``"cls"`` or ``"mean_patch"``,
    see :func:`readout_features`). Without a head, ``probe`` fits the
    cross-fitted linear probe described above on labelled images (two classes at least).
    ``progress`` shows a bar over the images (``total`` of them, when known).
    """
    dev, tdtype = resolve_device(device), resolve_dtype(dtype)
    out_dtype = torch.float64 if tdtype == torch.float64 else torch.float32
    model = model.to(device=dev, dtype=out_dtype).eval()
    depth = model.cfg.depth
    stats = [_TrialStats() for _ in trials]
    has_head = model.head is not None
    n = labelled = base_correct = 0
    ref_sum = ref_sq = shift = None
    keep_feats = probe and not has_head           # for the probe: labelled features
    probe_ref: list[Tensor] = []
    probe_swapped: list[list[Tensor]] = [[] for _ in trials]
    probe_labels: list[Tensor] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, unit="img", desc=f"layer swaps ({len(trials)} trials)",
                   leave=False)
    with torch.inference_mode(), compute_context(dev, tdtype):
        for batch in batches:
            images = batch.images.to(device=dev, dtype=out_dtype)
            states = [s for _, s in model.iter_states(images)]      # depth 0..L
            ref = readout_features(model, states[-1])                  # (B, D)
            labels = batch.labels.to(dev)
            keep = labels >= 0
            ref_pred = model.readout(states[-1]).argmax(-1) if has_head else None
            if has_head:
                base_correct += int((ref_pred[keep] == labels[keep]).sum())
            for i, (trial, st) in enumerate(zip(trials, stats)):
                start = min(trial.targets) - 1
                state = states[start]
                for pos, block in enumerate(trial.schedule(depth)[start:], start=start + 1):
                    state = model.step(block, state)
                feats = readout_features(model, state)
                st.cos += float(torch.nn.functional.cosine_similarity(
                    feats, ref, dim=-1, eps=1e-8).clamp(-1, 1).sum())
                st.sq_err += float((feats - ref).square().sum())
                if has_head:
                    pred = model.readout(state).argmax(-1)
                    st.correct += int((pred[keep] == labels[keep]).sum())
                    st.agree += int((pred == ref_pred).sum())
                elif keep_feats:
                    probe_swapped[i].append(feats[keep].float().cpu())
            if shift is None:                 # shifted sums: an accurate variance
                shift = ref.mean(0)
                ref_sum, ref_sq = torch.zeros_like(shift), torch.zeros_like(shift)
            ref_sum += (ref - shift).sum(0)
            ref_sq += (ref - shift).square().sum(0)
            if keep_feats:
                probe_ref.append(ref[keep].float().cpu())
                probe_labels.append(labels[keep].cpu())
            n += len(images)
            labelled += int(keep.sum())
            if bar is not None:
                bar.update(len(images))
    if bar is not None:
        bar.close()
    if n == 0:
        raise ConfigError("the layer-swap test got no images")
    variance = float((ref_sq - ref_sum.square() / n).sum())
    nan = float("nan")
    accuracy = np.array([s.correct / labelled if has_head and labelled else nan
                         for s in stats])
    agreement = np.array([s.agree / n if has_head else nan for s in stats])
    baseline = base_correct / labelled if has_head and labelled else nan
    scorer = "head" if has_head else "none"
    if keep_feats and labelled >= 4 and trials:
        y = torch.cat(probe_labels).numpy()
        if len(np.unique(y)) >= 2:
            baseline, accuracy, agreement = _probe_scores(
                torch.cat(probe_ref).numpy(), [torch.cat(f).numpy() for f in probe_swapped], y)
            scorer = "probe" if baseline == baseline else "none"
    return {
        "cosine": np.array([s.cos / n for s in stats]),
        "r2": np.array([1.0 - s.sq_err / variance if variance > 0 else nan for s in stats]),
        "accuracy": accuracy,
        "agreement": agreement,
        "baseline_accuracy": baseline,
        "samples": n,
        "labelled": labelled,
        "scorer": scorer,
        "feature": readout_feature(model),
    }


def summarize(values: np.ndarray) -> np.ndarray:
    """``STATISTICS`` of finite values (NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return np.full(len(STATISTICS), np.nan)
    q = np.quantile(v, QUANTILES)
    return np.array([v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0, v.min(), *q, v.max()])

