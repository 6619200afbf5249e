"""The probes plug-in of ``depthflow analyze``: the ``probes`` group of a result file.

``update`` keeps the readout features of every labelled image at every depth in
preallocated float32 buffers (refused, before any work, beyond ``max_megabytes``);
``finish`` fits the per-depth probes (:func:`depthflow.probes.fit.probe_depths`) and returns
accuracies over ``readout x depth`` with Wilson intervals, the chance baseline and the best
depth. Definitions: ``docs/methods.md`` (per-depth linear probes).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import xarray as xr

from depthflow.core import vocabulary as D
from depthflow.core.config import Options, check_int, check_number
from depthflow.errors import ConfigError, InputError
from depthflow.probes.features import (READOUTS, FeatureBuffer, available_readouts,
                                       readout_features)
from depthflow.probes.fit import probe_depths
from depthflow.core.vocabulary import attrs

__all__ = ["ProbeConfig", "ProbeAnalysis", "READOUT", "FOLD", "probe_dataset"]

READOUT, FOLD = "readout", "fold"


@dataclasses.dataclass
class ProbeConfig(Options):
    """Per-depth probes: readouts, cross-validation, the C grid and the memory bound."""

    _what = "probes option"
    _help = {"readouts": f"token readouts to probe, from {', '.join(READOUTS)} (those a "
                         "model lacks are skipped)",
             "folds": "outer stratified cross-validation folds (capped by the smallest "
                      "class)",
             "inner_folds": "inner folds that choose C on each training fold",
             "c_grid": "inverse L2 strengths C the inner cross-validation chooses from",
             "knn_k": "neighbours of the k-NN probe",
             "level": "level of the Wilson intervals",
             "max_megabytes": "refuse when the kept features would exceed this size",
             "seed": "seed of the fold shuffles"}

    readouts: tuple[str, ...] = READOUTS
    folds: int = 5                                  # outer stratified folds
    inner_folds: int = 3                            # inner folds choosing C
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0)    # inverse L2 strengths C to choose from
    knn_k: int = 5
    level: float = 0.95
    max_megabytes: float = 1024.0
    seed: int = 0

    def validate(self) -> ProbeConfig:
        self._set("readouts", tuple(self.readouts))
        self._set("c_grid", tuple(float(c) for c in self.c_grid))
        available_readouts(READOUTS, self.readouts)            # names checked
        if not self.readouts:
            raise ConfigError("probes.readouts must name at least one readout")
        check_int(self.folds, "folds", minimum=2)
        check_int(self.inner_folds, "inner_folds", minimum=2)
        check_int(self.knn_k, "knn_k")
        check_int(self.seed, "seed", minimum=0)
        if not self.c_grid:
            raise ConfigError("probes.c_grid must hold at least one value")
        for c in self.c_grid:
            check_number(c, "c_grid", low=0, open_low=True)
        check_number(self.level, "level", low=0, high=1, open_low=True)
        check_number(self.max_megabytes, "max_megabytes", low=0, open_low=True)
        return self


class ProbeAnalysis:
    """``depthflow analyze`` plug-in: per-depth linear and k-NN probes of the labels."""

    name = "probes"
    group = "probes"

    def __init__(self, config: ProbeConfig | None = None) -> None:
        self.config = config or ProbeConfig()
        self.buffer: FeatureBuffer | None = None
        self.readouts: list[str] = []
        self._seen = 0

    # ------------------------------------------------------------------ streaming
    def _allocate(self, part: dict, ctx) -> None:
        labels = np.asarray(ctx.source.labels if ctx.source is not None else [], np.int64)
        n = int((labels >= 0).sum())
        if n == 0:
            raise InputError("probes need labelled images; these images have no labels "
                             "(use digits, lfw, or a folder with one sub-folder per class)")
        self.buffer = FeatureBuffer(n, part["depths"], part["widths"],
                                    max_bytes=int(self.config.max_megabytes * 2**20))

    def shard_update(self, tb, ctx, *, start: int) -> dict:
        """The features of the batch's labelled images (a picklable dict)."""
        kinds = ctx.layout.token_kinds
        if not self.readouts:
            self.readouts = available_readouts(kinds, self.config.readouts)
            if not self.readouts:
                raise ConfigError(f"none of probes.readouts={list(self.config.readouts)} "
                                  f"exists for this model's tokens {sorted(set(kinds))}")
        labels = np.asarray([int(v) for v in tb.batch.labels], np.int64)
        keep = np.flatnonzero(labels >= 0)
        states = tb.states.detach()[keep]                               # (b, L+1, T, D)
        feats = {r: readout_features(states, kinds, r).float().cpu().numpy()
                 for r in self.readouts}
        widths = {r: int(readout_features(tb.states[:1, :1], kinds, r).shape[-1])
                  for r in self.readouts}
        return {"features": feats, "labels": labels[keep], "index": start + keep,
                "depths": int(tb.states.shape[1]), "widths": widths}

    def merge(self, part: dict, ctx) -> None:
        if self.buffer is None:
            self._allocate(part, ctx)
        self.buffer.add(part["features"], part["labels"], part["index"])

    def update(self, tb, ctx) -> None:
        self.merge(self.shard_update(tb, ctx, start=self._seen), ctx)
        self._seen += len(tb.batch.labels)

    # ------------------------------------------------------------------ results
    def finish(self, ctx) -> xr.Dataset:
        if self.buffer is None or self.buffer.count == 0:
            raise InputError("the probes saw no labelled images")
        feats, labels, index = self.buffer.view()
        names = list(ctx.source.class_names) if ctx.source is not None else []
        return probe_dataset(feats, labels, index=index, config=self.config,
                             class_names=names)

    def plot(self, tree: xr.DataTree, out_dir: Path) -> list[Path]:
        from depthflow.probes.plot import plot_probes

        return plot_probes(tree, Path(out_dir))


def probe_dataset(features: dict[str, np.ndarray], labels: np.ndarray, *,
                  index: np.ndarray | None = None, config: ProbeConfig | None = None,
                  class_names: list[str] | None = None) -> xr.Dataset:
    """The ``probes`` group from features ``{readout: (n, depths, F)}`` and labels ``(n,)``."""
    cfg = config or ProbeConfig()
    labels = np.asarray(labels, np.int64)
    index = np.arange(len(labels)) if index is None else np.asarray(index, np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    dropped = classes[counts < 2].tolist()                # a class needs a train and a test
    if dropped:
        keep = ~np.isin(labels, dropped)
        labels, index = labels[keep], index[keep]
        features = {r: f[keep] for r, f in features.items()}
    readouts = list(features)
    res = {r: probe_depths(features[r], labels, folds=cfg.folds, Cs=cfg.c_grid,
                           inner_folds=cfg.inner_folds, knn_k=cfg.knn_k, level=cfg.level,
                           seed=cfg.seed) for r in readouts}
    stack = lambda key: np.stack([res[r][key] for r in readouts])       # noqa: E731
    lvl = f"{100 * cfg.level:g}%"
    n = len(labels)
    dims = (READOUT, D.DEPTH)
    v = {}
    for name, what in (("accuracy", "linear probe (standardised logistic regression, C by "
                                    "inner CV)"),
                       ("knn_accuracy", f"{cfg.knn_k}-nearest-neighbour probe (standardised)")):
        v[name] = (dims, stack(name), attrs(f"out-of-fold accuracy of the {what}", "1",
                                            n_images=n))
        v[f"{name}_low"] = (dims, stack(f"{name}_low"), attrs(f"Wilson {lvl} lower bound", "1"))
        v[f"{name}_high"] = (dims, stack(f"{name}_high"), attrs(f"Wilson {lvl} upper bound",
                                                                "1"))
    v["correct"] = ((READOUT, D.DEPTH, D.SUBSAMPLE), stack("correct").astype(np.int8), attrs(
        "1 where the linear probe predicts the image's label (out of fold)", ""))
    v["chosen_C"] = ((READOUT, D.DEPTH, FOLD), stack("chosen_C"), attrs(
        "inverse L2 strength C chosen by the inner CV in each outer fold", "1"))
    v["best_depth"] = ((READOUT,), stack("best_depth").astype(np.int64), attrs(
        "depth of the highest linear-probe accuracy (first of ties)", ""))
    best = stack("accuracy").max(1)
    low_at_best = np.take_along_axis(stack("accuracy_low"), stack("best_depth")[:, None], 1)[:, 0]
    earliest = np.array([int(np.flatnonzero(stack("accuracy")[i] >= low_at_best[i])[0])
                         for i in range(len(readouts))])
    v["earliest_good_depth"] = ((READOUT,), earliest, attrs(
        "first depth whose accuracy reaches the lower Wilson bound of the best depth", ""))
    v["best_accuracy"] = ((READOUT,), best, attrs("highest linear-probe accuracy over depth",
                                                  "1", n_images=n))
    v["chance"] = ((), float(res[readouts[0]]["chance"]), attrs(
        "majority-class fraction (accuracy of always guessing the largest class)", "1",
        n_images=n))
    counts = np.bincount(labels - labels.min()) if n else np.zeros(0)
    coords = {READOUT: (READOUT, readouts, attrs("token readout of the features", "")),
              D.DEPTH: (D.DEPTH, np.arange(features[readouts[0]].shape[1]), attrs(
                  "depth (0 = embedded input, l = after block l)", "")),
              D.SAMPLE_INDEX: (D.SUBSAMPLE, index, attrs(
                  "index on the root group's sample dimension", "")),
              D.LABEL: (D.SUBSAMPLE, labels.astype(np.int32), attrs(
                  "class label index (-1 = unknown)", ""))}
    ds = xr.Dataset(v, coords=coords)
    ds.attrs.update(config=cfg.to_json(), n_images=n,
                    n_classes=int((counts > 0).sum()), folds=int(res[readouts[0]]["folds"]),
                    class_names=",".join(class_names or []),
                    classes_left_out=(f"{dropped}: fewer than two labelled images" if dropped
                                      else "none"),
                    method="out-of-fold predictions of stratified k-fold CV (shuffled, seeded); "
                           "the linear probe is StandardScaler + LogisticRegression (lbfgs, "
                           "L2) with C chosen by inner stratified CV on the training fold",
                    features="raw residual-stream states at each depth (before the final norm)")
    return ds
