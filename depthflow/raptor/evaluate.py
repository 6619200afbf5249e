"""Fidelity of a fitted Raptor to its teacher, as the paper measures it and more.

Per depth ``l = 0..L`` (the Raptor rolled out from the teacher's ``a_0``):

* ``r2_paper``: the official code's R^2, ``1 - mean((x - x~)^2) / (var(x~) + 1e-6)``, one
  scalar over all entries with the variance of the PREDICTION ``x~`` (kept to compare with
  the paper);
* ``r2``: the standard R^2, the same with the variance of the teacher ``x`` and no epsilon;
* both also per token kind, and the mean cosine between teacher and Raptor tokens per kind.

Pooled over all depths 0..L (the paper's R^2 figure): ``r2_pooled`` (standard form over the
whole data set), ``r2_paper_pooled`` (paper form over the whole data set) and
``r2_paper_pooled_batches`` (the evaluation notebook's: the paper form per batch over every
entry of every depth, averaged over batches weighted by size; ``eval_batch_size`` recorded).
Depth 0 is the teacher's own embedding in both trajectories, so pooled values sit above
the per-layer ones.

Task fidelity: the teacher's head applied to the teacher's and to the Raptor's final states
(or, for a teacher without a head, a logistic-regression probe fitted on teacher features of
the probe images and applied to both), accuracy and the ratio Raptor / teacher.
Everything streams batch by batch (float64 accumulators).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor

from depthflow.core import vocabulary as D
from depthflow.data.images import ImageSource
from depthflow.models.preprocessing import Preprocessing
from depthflow.models.vit import ViT
from depthflow.raptor.model import Raptor
from depthflow.raptor.surrogates import GROUPS, PAPER_EPS, FidelityAccumulator  # noqa: F401
from depthflow.raptor.teacher import teacher_states



@dataclasses.dataclass
class Fidelity:
    """Per-depth fidelity arrays ``(L+1, group)`` and task numbers."""

    groups: list[str]
    arrays: dict[str, np.ndarray]
    num_samples: int
    task: str                       # "head" | "linear-probe" | "none"
    teacher_accuracy: float = float("nan")
    raptor_accuracy: float = float("nan")
    agreement: float = float("nan")
    pooled: dict[str, float] = dataclasses.field(default_factory=dict)
    eval_batch_size: int = 0
    probe: dict[str, Any] | None = None      # the fine-tuned-probe readout, when run
    probes: dict[str, Any] = dataclasses.field(default_factory=dict)   # three ways
    baselines: dict[str, Fidelity] = dataclasses.field(default_factory=dict)
    comparison: dict[str, Any] = dataclasses.field(default_factory=dict)
    shares: np.ndarray | None = dataclasses.field(default=None, repr=False)   # per image

    @property
    def accuracy_ratio(self) -> float:
        return self.raptor_accuracy / self.teacher_accuracy if self.teacher_accuracy else \
            float("nan")

    def last(self, name: str = "r2", group: str = "all") -> float:
        return float(self.arrays[name][-1, self.groups.index(group)])

    def summary(self, *, nested: bool = True) -> dict[str, Any]:
        """The headline numbers (JSON-ready); ``r2_image`` first."""
        out: dict[str, Any] = {"num_samples": self.num_samples, "task": self.task}
        if "r2_image" in self.arrays:
            out["last_layer_r2_image"] = self.last("r2_image")
            out["last_layer_r2_image_vw"] = self.last("r2_image_vw")
            if "cls" in self.groups:
                out["last_layer_r2_image_cls"] = self.last("r2_image", "cls")
        out.update({
            "teacher_accuracy": self.teacher_accuracy, "raptor_accuracy": self.raptor_accuracy,
            "accuracy_ratio": self.accuracy_ratio, "agreement": self.agreement,
            "last_layer_r2": self.last("r2"), "last_layer_r2_paper": self.last("r2_paper"),
            **self.pooled, "eval_batch_size": self.eval_batch_size,
        })
        if self.probe is not None:
            out["finetuned_probe"] = self.probe
        if self.probes:
            out["probes"] = self.probes
        for name in ("r2_image", "r2_image_vw", "r2", "r2_paper", "cosine"):
            if name in self.arrays:
                out[f"{name}_by_depth"] = {g: [_num(v) for v in self.arrays[name][:, i]]
                                           for i, g in enumerate(self.groups)}
        if nested and self.baselines:
            out["baselines"] = {name: b.summary(nested=False)
                                for name, b in self.baselines.items()}
            out["comparison"] = self.comparison
            out["beats_best_baseline"] = self.verdict()
        return {k: _num(v) if isinstance(v, float) else v for k, v in out.items()}

    def verdict(self, group: str | None = None) -> str:
        """One line: does the Raptor beat the best baseline (``r2_image``) at every depth?"""
        if not self.comparison:
            return "no baselines evaluated"
        group = group or ("cls" if "cls" in self.comparison else "all")
        parts = []
        for g in dict.fromkeys([group, "all"]):
            c = self.comparison.get(g)
            if not c:
                continue
            worst = min((i for i, lo in enumerate(c["low"]) if lo is not None),
                        key=lambda i: c["low"][i], default=None)
            tail = "" if worst is None else (
                f"; smallest margin at depth {worst}: {c['difference'][worst]:+.3f} "
                f"[{c['low'][worst]:+.3f}, {c['high'][worst]:+.3f}] over "
                f"{c['best_baseline'][worst]}")
            parts.append(f"{g}: {'yes' if c['beats_every_depth'] else 'no'} "
                         f"({c['depths_beaten']}/{c['depths']} depths{tail})")
        return "r2_image above the best baseline at every depth (95% bootstrap over " \
            f"{self.num_samples} images) -- " + "; ".join(parts)

    def to_dataset(self, raptor: Raptor, *, attrs: dict[str, Any] | None = None):
        """Labelled ``xr.Dataset`` with dims ``depth`` and ``group``."""
        import xarray as xr

        texts = {
            "r2": "standard R^2 of Raptor vs teacher state: 1 - MSE / var(teacher), all "
                  "entries", "r2_paper": "R^2 as in the official Raptor code: 1 - MSE / "
                  "(var(prediction) + 1e-6)", "mse": "mean squared error Raptor vs teacher",
            "cosine": "mean cosine between Raptor and teacher tokens"}
        units = {"mse": "activation units^2"}
        if "r2_image" in self.arrays:
            texts = {"r2_image": "image-specific R^2 of Raptor vs teacher: per (token, "
                                 "feature) entry 1 - SSE / SST over images, uniform mean",
                     "r2_image_vw": "image-specific R^2, variance-weighted over entries",
                     **texts}
        data = {name: (("depth", "group"), self.arrays[name],
                       {"long_name": text, "units": units.get(name, "1")})
                for name, text in texts.items()}
        blocks = [-1] + [raptor.block_for(layer) for layer in range(1, raptor.depth + 1)]
        data["block"] = (("depth",), np.array(blocks, dtype=np.int32),
                         {"long_name": "Raptor block producing this depth (-1: embedding)",
                          "units": ""})
        for name, text in (("r2_image", "image-specific R^2: per (token, feature) entry "
                                         "1 - SSE / SST over images, uniform mean over the "
                                         "group's entries"),
                           ("r2_image_vw", "image-specific R^2, variance-weighted over "
                                           "entries"),
                           ("r2", texts["r2"]), ("r2_paper", texts["r2_paper"]),
                           ("cosine", texts["cosine"])):
            if name not in self.arrays:
                continue
            stack = np.stack([self.arrays[name]] + [b.arrays[name]
                                                    for b in self.baselines.values()])
            data[f"surrogate_{name}"] = (("surrogate", "depth", "group"), stack,
                                         {"long_name": f"{text} (every surrogate)",
                                          "units": "1"})
        names = ["raptor", *self.baselines]
        ds = xr.Dataset(data, coords={
            D.DEPTH: (D.DEPTH, np.arange(raptor.depth + 1), {
                "long_name": "depth (0 = embedded input, l = after layer l)", "units": "1"}),
            "group": ("group", list(self.groups), {
                "long_name": "token group (all tokens or one token kind)", "units": ""}),
            "surrogate": ("surrogate", names, {
                "long_name": "the fitted Raptor and the baseline surrogates", "units": ""})})
        ds.attrs.update({k: v for k, v in self.summary(nested=False).items()
                         if not k.endswith("_depth") and not isinstance(v, dict)})
        if self.comparison:
            ds.attrs["beats_best_baseline"] = self.verdict()
        ds.attrs.update(attrs or {})
        return ds


def _num(v: Any) -> Any:
    v = float(v)
    return None if v != v else v


def _features(model: ViT, state: Tensor) -> Tensor:
    """Normed cls token of a final state (the readout without a head)."""
    return model.norm(state)[..., 0, :]


@torch.no_grad()
def evaluate_fidelity(raptor: Raptor, teacher: ViT, source: ImageSource, *,
                      preprocessing: Preprocessing | None, batch_size: int = 256,
                      device: str | torch.device = "cpu",
                      probe_source: ImageSource | None = None,
                      probe_limit: int = 5000, baselines=None, eval_batches=None,
                      train_batches=None, seed: int = 0, probe_epochs: int = 30,
                      bootstrap: int = 1000) -> Fidelity:
    """Roll the Raptor (and every baseline surrogate) out from the teacher's embedding on
    ``source`` and compare (see :mod:`depthflow.raptor.surrogates`).

    ``baselines``: surrogates evaluated on the same images (``Fidelity.baselines``, with
    the bootstrap comparison in ``Fidelity.comparison``). ``eval_batches`` /
    ``train_batches``: callables yielding ``(teacher states, labels)`` (e.g. from the
    teacher cache); default: computed from ``source`` / the labelled images of
    ``probe_source`` (at most ``probe_limit``), which feed the three probe readouts.
    """
    from depthflow.raptor.surrogates import (ModelSurrogate, compare_to_baselines,
                                             evaluate_surrogates, teacher_head)

    raptor.eval()
    teacher.eval()
    dev = torch.device(device)
    first = next(source.batches(1, preprocessing=preprocessing), None)
    if first is None:
        from depthflow.errors import InputError
        raise InputError("no evaluation images")
    kinds = teacher.token_kinds(*first.images.shape[-2:])
    if eval_batches is None:
        def eval_batches():
            for batch in source.batches(batch_size, preprocessing=preprocessing):
                yield teacher_states(teacher, batch.images.to(dev)), batch.labels
    if train_batches is None and probe_source is not None:
        def train_batches():
            seen = 0
            for batch in probe_source.batches(batch_size, preprocessing=preprocessing):
                keep = batch.labels >= 0
                if not bool(keep.any()):
                    continue
                yield teacher_states(teacher, batch.images[keep].to(dev)), batch.labels[keep]
                seen += int(keep.sum())
                if seen >= probe_limit:
                    break
    surrogates = [ModelSurrogate("raptor", raptor, raptor.depth), *(baselines or [])]
    results, groups, n = evaluate_surrogates(
        surrogates, eval_batches, kinds=kinds, teacher=teacher, train_batches=train_batches,
        head=teacher_head(teacher), seed=seed, epochs=probe_epochs)
    task = "head" if teacher.head is not None else (
        "linear-probe" if results["raptor"].probes else "none")

    def make(name: str) -> Fidelity:
        r = results[name]
        fid = Fidelity(groups, r.arrays, n, task=task, pooled=r.pooled,
                       eval_batch_size=batch_size, probes=r.probes, shares=r.shares)
        way = r.probes.get("teacher_probe")
        if way:
            fid.teacher_accuracy = r.probes["teacher"]["teacher_probe"]["accuracy"]
            fid.raptor_accuracy = way["accuracy"]
            fid.agreement = r.probes.get("agreement", float("nan"))
        return fid

    fidelity = make("raptor")
    fidelity.baselines = {s.name: make(s.name) for s in surrogates[1:]}
    if fidelity.baselines and bootstrap > 0:
        fidelity.comparison = compare_to_baselines(results, groups, replicates=bootstrap,
                                                   seed=seed)
    return fidelity


def _fit_probe(teacher: ViT, source: ImageSource, *, preprocessing, batch_size: int,
               device: torch.device, limit: int):
    """Logistic regression on the teacher's normed final cls features."""
    from sklearn.linear_model import LogisticRegression

    feats, labels = [], []
    seen = 0
    for batch in source.batches(batch_size, preprocessing=preprocessing):
        out = teacher.rollout(teacher.embed(batch.images.to(device)))
        feats.append(_features(teacher, out).cpu().double().numpy())
        labels.append(batch.labels.numpy())
        seen += len(batch.labels)
        if seen >= limit:
            break
    x, y = np.concatenate(feats)[:limit], np.concatenate(labels)[:limit]
    keep = y >= 0
    if len(np.unique(y[keep])) < 2:
        return None
    return LogisticRegression(max_iter=2000).fit(x[keep], y[keep])


def _rollout(raptor: Raptor, states: Tensor) -> Tensor:
    """The surrogate's trajectory ``(N, L+1, T, D)`` from the teacher's depth-0 states."""
    x = states[:, 0]
    preds = [x]
    for layer in range(1, raptor.depth + 1):
        x = raptor.step(layer, x)
        preds.append(x)
    return torch.stack(preds, dim=1)


@torch.no_grad()
def quick_fidelity(raptor: Raptor, states: Tensor, *, cls_index: int | None) -> dict[str, float]:
    """The training curve's held-out numbers on one batch of teacher states: ``r2_image``
    of the last depth (all tokens, and the cls token when there is one; docs/methods.md
    section 16, entries constant over the batch left out), then the standard R^2 of the
    last depth and its mean over depths 1..L. ``r2_image`` over one batch is noisier than
    the final evaluation's (fewer images), but it is the number that separates a surrogate
    from the mean trajectory, which the standard R^2 does not."""
    from depthflow.raptor.surrogates import VALID_RTOL

    pred = _rollout(raptor, states)
    mse = (pred - states).square().mean(dim=(0, 2, 3))             # standard R^2 per depth
    r2 = 1.0 - mse / states.var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-12)
    y, p = states[:, -1].double(), pred[:, -1].double()                 # (N, T, D)
    sst = (y - y.mean(dim=0)).square().sum(dim=0)
    sse = (p - y).square().sum(dim=0)
    valid = sst > VALID_RTOL * sst.max()

    def image(rows) -> float:
        v = valid[rows]
        return float((1.0 - sse[rows][v] / sst[rows][v]).mean()) if bool(v.any()) \
            else float("nan")

    out = {"r2_image_last": image(slice(None))}
    if cls_index is not None:
        out["r2_image_cls_last"] = image(slice(cls_index, cls_index + 1))
    out.update(r2_last=float(r2[-1]), r2_mean=float(r2[1:].mean()))
    return out
