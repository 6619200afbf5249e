"""The root group of a result file: per-sample trajectory summaries and population ranks.

Per sample (streamed, one batch at a time): token norms, directional convergence gamma,
angular speed, patch coherence, optional per-image update ranks, head predictions and raw
states. Population (reduced over all images): update ranks from streamed Gram matrices and
the class structure of cls directions. ``label``, ``sample_name`` and ``class_name`` are
coordinates on ``sample``. Definitions: ``docs/methods.md``; layout: ``docs/file-format.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from depthflow.data import tokens
from depthflow.core import vocabulary as D
from depthflow.core.vocabulary import attrs

if TYPE_CHECKING:
    from depthflow.analysis.context import TokenLayout
    from depthflow.io.netcdf import StreamingWriter
    from depthflow.data.trajectory import TrajectoryBatch

__all__ = ["TrajectorySummaries", "SAMPLE_COORDS"]

SAMPLE_COORDS = (D.LABEL, D.SAMPLE_NAME, D.CLASS_NAME)

_RANK_NAMES = {"stable_rank": "stable rank ||U||_F^2 / ||U||_2^2",
               "effective_rank": "effective rank exp(entropy of normalised singular values)",
               "participation_ratio": "participation ratio (sum s^2)^2 / sum s^4"}

_CLASS_TEXTS = {   # variable name: (ClassDirectionAccumulator.result key, long name)
    "cls_within_class": ("within",
                         "mean cosine of cls directions to their class-mean direction"),
    "cls_between_class": ("between", "mean cosine between class-mean cls directions"),
    "cls_class_separation": ("separation",
                             "cls class separation: within - between class cosine"),
}


class TrajectorySummaries:
    """Defines, fills and closes the root group of an analysis file.

    Parameters
    ----------
    model
        The depth model (``cfg.depth``, ``cfg.embed_dim``, ``head``).
    layout
        Token kinds at the input size of the run.
    class_names
        Class names of the image source (empty: unlabelled).
    states
        Raw states kept: ``"none"``, ``"cls"`` or ``"all"``.
    image_ranks
        Whether per-image update ranks are computed.
    device
        Where the population accumulators live (the states' device).
    """

    def __init__(self, model: Any, layout: TokenLayout, class_names: list[str], *,
                 states: str, image_ranks: bool, device: torch.device) -> None:
        self.depth = model.cfg.depth
        self.layout = layout
        self.kinds = layout.kinds
        self.groups = list(layout.groups.values())
        self.dim = model.cfg.embed_dim
        self.classes = list(class_names)
        self.has_head = model.head is not None
        self.states, self.image_ranks = states, image_ranks
        self.cls = layout.cls_index           # None: no cls token, cls-only values undefined
        self.num_logits = 0
        self.grams = tokens.GramAccumulator(self.depth, len(self.kinds), self.dim, device=device)
        self.class_dirs = (tokens.ClassDirectionAccumulator(self.depth + 1, len(self.classes),
                                                            self.dim, device=device)
                           if self.classes and self.cls is not None else None)
        self.correct = self.total = 0
        self.workspace = tokens.Workspace()     # scratch reused batch after batch

    # ------------------------------------------------------------------ schema
    def define(self, w: StreamingWriter) -> None:
        """Dimensions, coordinates and every variable (population ones up front: defining
        variables after data has been appended makes HDF5 leave and re-enter define mode,
        which is slow on large files)."""
        L, T = self.depth, self.layout.num_tokens
        w.dimension(D.DEPTH, L + 1)
        w.dimension(D.STEP, L)
        w.dimension(D.TOKEN, T)
        w.dimension(D.KIND, len(self.kinds))
        w.dimension(D.FEATURE, self.dim)
        w.variable(D.DEPTH, [D.DEPTH], "i4", data=np.arange(L + 1), attrs=attrs(
            "depth (0 = embedded input, l = after block l)"))
        w.variable(D.STEP, [D.STEP], "i4", data=np.arange(1, L + 1), attrs=attrs(
            "update step l: depth l-1 -> l (block l)"))
        w.variable(D.TOKEN, [D.TOKEN], "i4", data=np.arange(T), attrs=attrs("token position"))
        w.variable(D.TOKEN_KIND, [D.TOKEN], str, data=list(self.layout.token_kinds),
                   attrs=attrs("token kind", ""))
        w.variable(D.KIND, [D.KIND], str, data=self.kinds, attrs=attrs("token kind group", ""))
        w.variable(D.FEATURE, [D.FEATURE], "i4", data=np.arange(self.dim),
                   attrs=attrs("feature index"))
        if self.classes:
            w.dimension(D.CLASS, len(self.classes))
            w.variable(D.CLASS, [D.CLASS], str, data=self.classes, attrs=attrs("class name", ""))
        S = D.SAMPLE
        w.variable(S, [S], "i4", attrs=attrs("sample index in the image source"))
        w.variable(D.LABEL, [S], "i4", attrs=attrs("class label index (-1 = unknown)", ""))
        w.variable(D.SAMPLE_NAME, [S], str, attrs=attrs("image name (unique)", ""))
        w.variable(D.CLASS_NAME, [S], str, attrs=attrs("class name ('' = unknown)", ""))
        per_kind = [S, D.DEPTH, D.KIND]
        w.variable("norm", per_kind, "f4", attrs=attrs(
            "mean token norm ||x|| within token kind", "activation units"))
        w.variable("gamma", per_kind, "f4", attrs=attrs(
            "directional convergence <x_hat_l, x_hat_L>, mean within token kind"))
        w.variable("angular_speed", [S, D.STEP, D.KIND], "f4", attrs=attrs(
            "angular speed arccos <x_hat_l, x_hat_(l-1)>, mean within token kind", "rad"))
        if self.layout.patch_slice.stop > self.layout.patch_slice.start:
            w.variable("patch_coherence", [S, D.DEPTH], "f4", attrs=attrs(
                "patch coherence: mean cosine of patch tokens to the mean patch direction"))
        if self.image_ranks:
            for name, text in _RANK_NAMES.items():
                w.variable(f"update_{name}", [S, D.STEP], "f4", attrs=attrs(
                    f"{text} of the update a_l - a_(l-1), tokens stacked, per image"))
        if self.has_head:
            w.variable("prediction", [S], "i4", attrs=attrs("predicted class index", ""))
            w.dimension(D.LOGIT, self.num_logits)
            w.variable("logits", [S, D.LOGIT], "f4", attrs=attrs("classifier logits", ""))
        if self.cls is None:
            w.attrs({"not_defined": f"cls_state and the cls class structure: {D.NO_CLS}"})
        if self.states in ("cls", "all") and self.cls is not None:
            w.variable("cls_state", [S, D.DEPTH, D.FEATURE], "f4", compress=True,
                       attrs=attrs("cls token state a_l[cls]", "activation units"))
        if self.states == "all":
            T_all = [1, L + 1, T, self.dim]
            w.variable("state", [S, D.DEPTH, D.TOKEN, D.FEATURE], "f4", compress=True,
                       chunks=T_all, attrs=attrs("token state a_l (raw residual stream)",
                                                 "activation units"))
        for name, text in _RANK_NAMES.items():
            w.variable(f"population_{name}", [D.STEP, D.KIND], "f8", attrs=attrs(
                f"{text} of the updates a_l - a_(l-1), all images and tokens of a kind stacked"))
        if self.class_dirs is not None:
            for name, (_, text) in _CLASS_TEXTS.items():
                w.variable(name, [D.DEPTH], "f8", attrs=attrs(text))

    # ------------------------------------------------------------------ batches
    def add(self, tb: TrajectoryBatch, w: StreamingWriter) -> None:
        """Append one batch's per-sample values and update the population accumulators."""
        w.append(self.values(tb, start=w.n))

    def values(self, tb: TrajectoryBatch, *, start: int) -> dict[str, Any]:
        """One batch's per-sample values (numpy, sample axis first; ``start``: the global
        index of its first image) and the batch added to this process's population sums.

        In a distributed run each rank calls this for its batches; rank 0 appends the
        values of every rank in global order (:meth:`append`) and the sums are reduced
        (:meth:`sums`, :meth:`load_sums`).
        """
        traj = tb.states
        # the whole batch at once, on the states' device: values agree across batch sizes
        # within the reproducibility contract (docs/methods.md), bit-identical for the same
        # batch size, world size and device
        measures, updates = tokens.summarize_batch(traj, self.groups, self.layout.patch_slice,
                                                   image_ranks=self.image_ranks,
                                                   workspace=self.workspace)
        labels = tb.batch.labels.numpy().astype(np.int32)
        values: dict[str, Any] = {
            D.SAMPLE: np.arange(start, start + len(tb.batch.names), dtype=np.int32),
            D.LABEL: labels,
            D.SAMPLE_NAME: list(tb.batch.names),
            D.CLASS_NAME: [self.classes[i] if 0 <= i < len(self.classes) else ""
                           for i in labels],
            **measures,
        }
        if self.has_head:
            values["prediction"] = tb.logits.argmax(-1).to(torch.int32)
            values["logits"] = tb.logits
        if self.states in ("cls", "all") and self.cls is not None:
            values["cls_state"] = traj[:, :, self.cls]
        if self.states == "all":
            values["state"] = traj
        out = {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v
               for k, v in values.items()}
        self.grams.add_kind_updates(updates)       # before the workspace is reused
        if self.class_dirs is not None:
            self.class_dirs.update(traj[:, :, self.cls], tb.batch.labels)
        if self.has_head:
            labelled = tb.batch.labels >= 0
            pred = tb.logits.argmax(-1).cpu()
            self.correct += int((pred[labelled] == tb.batch.labels[labelled]).sum())
            self.total += int(labelled.sum())
        return out

    @staticmethod
    def append(values: dict[str, Any], w: StreamingWriter) -> None:
        """Append per-sample values from :meth:`values` to the file."""
        w.append(values)

    def sums(self) -> dict[str, Any]:
        """The population accumulators (all sums: reducible over processes)."""
        out: dict[str, Any] = {"gram": self.grams.gram, "gram_rows": self.grams.rows,
                               "correct": self.correct, "total": self.total}
        if self.class_dirs is not None:
            out["class_sums"] = self.class_dirs.sums
            out["class_counts"] = self.class_dirs.counts
        return out

    def load_sums(self, sums: dict[str, Any]) -> None:
        """Replace the accumulators by ``sums`` (e.g. reduced over processes)."""
        self.grams.gram = sums["gram"].to(self.grams.gram.device, torch.float64)
        self.grams.rows = sums["gram_rows"].to(torch.int64).cpu()
        self.correct, self.total = int(sums["correct"]), int(sums["total"])
        if self.class_dirs is not None:
            self.class_dirs.sums = sums["class_sums"].to(self.class_dirs.sums.device,
                                                         torch.float64)
            self.class_dirs.counts = sums["class_counts"].to(self.class_dirs.counts.device,
                                                             torch.float64)

    def finish(self, w: StreamingWriter) -> float:
        """Write the population variables; return the head's accuracy (NaN: undefined)."""
        for name, value in self.grams.ranks().items():
            w.write(f"population_{name}", value.numpy())
        if self.class_dirs is not None:
            result = self.class_dirs.result()
            for name, (key, _) in _CLASS_TEXTS.items():
                w.write(name, result[key].cpu().numpy())
        return self.correct / self.total if self.total else float("nan")
