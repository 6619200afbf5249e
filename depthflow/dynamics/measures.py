"""The five analyses of the dynamics plug-in, each a function of one :class:`Run` that
returns its node of the result tree (see :mod:`depthflow.dynamics.analysis`).

Per-image values live on a ``subsample`` dimension whose coordinates ``sample_index``
(global index on the root's ``sample``), ``label`` and ``sample_name`` say which images they
are; summaries are medians over images with bootstrap percentile intervals (``_low``,
``_high``) and carry ``n_images``. Definitions: ``docs/methods.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from depthflow.dynamics import maps
from depthflow.core import vocabulary as D
from depthflow.dynamics.attractors._class_stats import median_interval
from depthflow.dynamics.attractors.basin_robustness import attractor_classes, basin_robustness
from depthflow.dynamics.attractors.class_basins import class_basins
from depthflow.dynamics.tangent.finite_depth import finite_depth_spectrum
from depthflow.dynamics.fixedpoints.fixed_points import find_fixed_points, starts_from
from depthflow.dynamics.tangent.lyapunov import lyapunov_spectrum
from depthflow.dynamics.fixedpoints.norm_sensitivity import scan_reference_norms
from depthflow.dynamics.recovery import perturbation_recovery
from depthflow.dynamics.tangent.stretching import layer_stretching, segment_spectra
from depthflow.errors import ConfigError
from depthflow.core.vocabulary import attrs

__all__ = ["Kept", "Run", "default_depths", "lyapunov", "frozen_lyapunov", "stretching",
           "branches", "basins", "fixed_points", "recovery", "median_interval"]

SEGMENT, RESTRICTION, MODE = "segment", "restriction", D.MODE


def default_depths(depths: Sequence[int] | None, L: int, what: str) -> list[int]:
    """Injection depths: the given ones (negative count from L) or L/4, L/2, 3L/4."""
    if depths is None:
        return sorted({max(1, L // 4), max(1, L // 2), max(1, (3 * L) // 4)} - {L})
    out = sorted({L + d if d < 0 else d for d in depths})
    if any(not 0 <= d < L for d in out):
        raise ConfigError(f"{what}: depths must be in 0..{L - 1} (negative counts from the "
                          f"end), got {list(depths)}")
    return out


def _layer(t: int, L: int, what: str) -> int:
    layer = L + 1 + t if t < 0 else t
    if not 1 <= layer <= L:
        raise ConfigError(f"{what}: layer {t} outside 1..{L} (negative counts from the end)")
    return layer


@dataclasses.dataclass
class Kept:
    """What the plug-in keeps of the streamed batches (CPU, float32, bounded)."""

    states: list[Tensor] = dataclasses.field(default_factory=list)     # JVP subset (L+1,T,D)
    labels: list[int] = dataclasses.field(default_factory=list)
    index: list[int] = dataclasses.field(default_factory=list)
    names: list[str] = dataclasses.field(default_factory=list)
    cls: list[Tensor] = dataclasses.field(default_factory=list)        # class subset (L+1,D)
    cls_labels: list[int] = dataclasses.field(default_factory=list)
    cls_index: list[int] = dataclasses.field(default_factory=list)
    rob: list[Tensor] = dataclasses.field(default_factory=list)        # (depths, T, D)
    rob_labels: list[int] = dataclasses.field(default_factory=list)
    rob_index: list[int] = dataclasses.field(default_factory=list)
    rob_depths: list[int] = dataclasses.field(default_factory=list)
    per_class: dict[int, int] = dataclasses.field(default_factory=dict)
    seen: int = 0

    @staticmethod
    def plan(labels: Sequence[int], *, samples: int, min_per_class: int, class_samples: int,
             robustness_samples: int, robustness: bool) -> np.ndarray:
        """Which images are kept, from the labels of the whole source in global order:
        ``(3, n)`` booleans (JVP subset, class subset, robustness subset).

        The JVP subset is the first ``samples`` images plus, up to ``4 samples``, images of
        classes with fewer than ``min_per_class`` so far; the class subset the first
        ``class_samples`` labelled images; the robustness subset the first
        ``robustness_samples``. A function of the labels only, so every process of a
        distributed run (and any batch size) keeps the same images.
        """
        labels = np.asarray(labels, dtype=np.int64)
        out = np.zeros((3, len(labels)), dtype=bool)
        per_class: dict[int, int] = {}
        jvp = n_cls = 0
        for g, label in enumerate(labels.tolist()):
            short = label >= 0 and per_class.get(label, 0) < min_per_class
            if jvp < samples or (short and jvp < 4 * samples):
                out[0, g] = True
                jvp += 1
                if label >= 0:
                    per_class[label] = per_class.get(label, 0) + 1
            if label >= 0 and n_cls < class_samples:
                out[1, g] = True
                n_cls += 1
        if robustness:
            out[2, :robustness_samples] = True
        return out

    @staticmethod
    def select(tb: Any, *, start: int, plan: np.ndarray,
               robustness_depths: list[int]) -> dict[str, Any]:
        """What one batch (global indices ``start..``) contributes: the kept images' data
        (CPU, float32), labels, global indices and names, as a picklable dict."""
        states = tb.states.detach()
        labels = tb.batch.labels.tolist()
        rows = plan[:, start:start + len(labels)]
        out: dict[str, Any] = {"seen": start + len(labels), "rob_depths": robustness_depths}
        for key, row in (("jvp", 0), ("cls", 1), ("rob", 2)):
            idx = np.flatnonzero(rows[row]).tolist()
            if key == "rob" and not robustness_depths:
                idx = []
            # one gather and one copy per batch (an advanced index copies), then one
            # tensor per kept image
            rows_t = torch.as_tensor(idx, dtype=torch.long, device=states.device)
            if not idx:
                data = []
            elif key == "jvp":
                data = list(states[rows_t].float().cpu().unbind(0))
            elif key == "cls":
                data = list(states[rows_t, :, 0].float().cpu().unbind(0))
            else:
                depths = torch.as_tensor(robustness_depths, dtype=torch.long,
                                         device=states.device)
                data = list(states[rows_t][:, depths].float().cpu().unbind(0))
            out[key] = (data, [labels[i] for i in idx], [start + i for i in idx],
                        [str(tb.batch.names[i]) for i in idx])
        return out

    def merge(self, part: dict[str, Any]) -> None:
        """Append a batch's :meth:`select` (batches in global order)."""
        self.rob_depths = part["rob_depths"]
        data, labels, index, names = part["jvp"]
        self.states += data
        self.labels += labels
        self.index += index
        self.names += names
        for label in labels:
            if label >= 0:
                self.per_class[label] = self.per_class.get(label, 0) + 1
        data, labels, index, _ = part["cls"]
        self.cls += data
        self.cls_labels += labels
        self.cls_index += index
        data, labels, index, _ = part["rob"]
        self.rob += data
        self.rob_labels += labels
        self.rob_index += index
        self.seen = part["seen"]

    def to(self, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        def stack(items):
            return torch.stack(items).to(device=device, dtype=dtype) if items else None

        return {"traj": stack(self.states), "labels": np.asarray(self.labels),
                "index": np.asarray(self.index), "names": list(self.names),
                "cls": stack(self.cls), "cls_labels": np.asarray(self.cls_labels),
                "cls_index": np.asarray(self.cls_index), "rob": stack(self.rob),
                "rob_labels": np.asarray(self.rob_labels),
                "rob_index": np.asarray(self.rob_index), "rob_depths": list(self.rob_depths)}


@dataclasses.dataclass
class Run:
    """Everything one analysis needs: the map, the kept data, the options, the context."""

    F: maps.DepthMap
    kept: dict[str, Any]
    cfg: Any
    ctx: Any

    @property
    def traj(self) -> Tensor:
        return self.kept["traj"]

    @property
    def n(self) -> int:
        return int(self.traj.shape[0])

    @property
    def L(self) -> int:
        return int(self.traj.shape[1]) - 1

    @property
    def cls_token(self) -> int | None:
        kinds = self.ctx.layout.token_kinds
        return kinds.index("cls") if "cls" in kinds else None

    def labelled(self, ds: xr.Dataset, dim: str = D.SAMPLE, *, index=None, labels=None,
                 names=None) -> xr.Dataset:
        """``ds`` with its per-image dimension renamed ``subsample`` and labelled."""
        index = self.kept["index"] if index is None else index
        labels = self.kept["labels"] if labels is None else labels
        ds = ds.drop_vars([v for v in (dim, D.LABEL, D.SAMPLE_NAME, "image_label")
                           if v in ds.variables and v not in ds.data_vars], errors="ignore")
        ds = ds.rename({dim: D.SUBSAMPLE}) if dim in ds.dims else ds
        coords = {D.SAMPLE_INDEX: (D.SUBSAMPLE, np.asarray(index, np.int64), attrs(
                      "index on the root group's sample dimension", "")),
                  D.LABEL: (D.SUBSAMPLE, np.asarray(labels, np.int32), attrs(
                      "class label index (-1 = unknown)", ""))}
        if names is not None:
            coords[D.SAMPLE_NAME] = (D.SUBSAMPLE, list(names), attrs("image name", ""))
        ds = ds.drop_vars([c for c in coords if c in ds.variables])
        return ds.assign_coords(coords)

    def summarise(self, values: np.ndarray, dims: Sequence[str], name: str, text: str,
                  units: str = "1") -> dict[str, tuple]:
        """Median over images of ``values`` (images first) with its bootstrap interval."""
        med, lo, hi = median_interval(values, n_boot=self.cfg.n_boot, level=self.cfg.level,
                                      seed=self.cfg.seed)
        lvl = f"{100 * self.cfg.level:g}%"
        n = int(np.isfinite(values).any(axis=tuple(range(1, values.ndim))).sum()) \
            if values.ndim > 1 else int(np.isfinite(values).sum())
        return {f"{name}_median": (dims, med, attrs(f"{text}: median over images", units,
                                                    n_images=n)),
                f"{name}_low": (dims, lo, attrs(f"{text}: bootstrap {lvl} lower bound", units)),
                f"{name}_high": (dims, hi, attrs(f"{text}: bootstrap {lvl} upper bound",
                                                 units))}

    def directions(self, depth: int) -> Tensor:
        x = self.traj[:, depth]
        return x / x.norm(dim=-1, keepdim=True)

    def frozen(self, t: int) -> maps.SphereMap:
        """Layer ``t`` iterated as an autonomous sphere map at the mean token norms of the
        JVP subset at its input depth (beyond depth L the depth index stays frozen)."""
        norms = maps.norms_from_states(self.traj[:, t - 1])
        return maps.sphere(maps.frozen(self.F, t), norms,
                           source=f"mean token norms of the JVP subset at depth {t - 1}")

    def phases(self) -> list[tuple[int, int]]:
        """The phases of the selected contiguous segmentation (from the phases group of the
        same run), as (start, stop) depth pairs; [] when the phases were not computed."""
        tree = getattr(self.ctx, "results", {}).get("phases")
        if tree is None:
            return []
        ds = tree.to_dataset()
        k = int(ds["selected_k"])
        labels = ds["phase"].sel({D.SEGMENTATION: f"dp_k{k}"}).values
        edges = [0, *(np.flatnonzero(labels[1:] != labels[:-1]) + 1).tolist(), len(labels)]
        return list(zip(edges[:-1], edges[1:])) if k > 1 else []


# --------------------------------------------------------------------------- lyapunov
def lyapunov(run: Run) -> xr.DataTree:
    cfg, L, cls = run.cfg, run.L, run.cls_token
    segments = [(0, L), *run.phases()]
    names = ["whole depth", *(f"phase {i + 1}" for i in range(len(segments) - 1))]
    restrictions = {"all->all": {}}
    if cls is not None:
        restrictions.update({"cls->cls": {"in_tokens": [cls], "out_tokens": [cls]},
                             "all->cls": {"out_tokens": [cls]}})
    k = cfg.k
    out = {key: [] for key in ("exponents", "residuals", "status", "applications")}
    for opts in restrictions.values():
        r = segment_spectra(run.F, run.traj, segments=segments, kind="direction", k=k,
                            tol=cfg.tol, seed=cfg.seed, **opts)
        kk = r.exponents.shape[-1]
        pad = (lambda a, fill: np.concatenate([a, np.full((*a.shape[:-1], k - kk), fill)], -1))
        out["exponents"].append(pad(r.exponents.numpy(), np.nan))
        out["residuals"].append(pad(r.residuals.numpy(), np.nan))
        out["status"].append(r.status.numpy())
        out["applications"].append(r.applications.numpy())
    dims = (D.SAMPLE, SEGMENT, RESTRICTION, D.EXPONENT)
    ex = np.stack(out["exponents"], axis=2)                           # (N, S, R, k)
    v = {"lyapunov_exponent": (dims, ex, attrs(
            "finite-depth Lyapunov exponent log(s_i(P)) / (stop - start) of the directional "
            "propagator P = d u_stop / d u_start (norms at start held)", "1/layer")),
         "residual": (dims, np.stack(out["residuals"], axis=2), attrs(
            "Lanczos residual ||P^T u_i - s_i v_i|| / s_1")),
         "status": (dims[:3], np.stack(out["status"], axis=2).astype(np.int8),
                    _status_attrs()),
         "applications": (dims[:3], np.stack(out["applications"], axis=2).astype(np.int32),
                           attrs("JVP + VJP chain applications to converge"))}
    v.update(run.summarise(ex, dims[1:], "lyapunov_exponent", "finite-depth Lyapunov "
                           "exponent", "1/layer"))
    if cfg.state_spectrum:
        r = finite_depth_spectrum(run.F, run.traj[:, 0], start=0, stop=L, kind="state", k=k,
                                  tol=cfg.tol, seed=cfg.seed)
        st = r.exponents.numpy()
        v["state_exponent"] = ((D.SAMPLE, D.EXPONENT), st, attrs(
            "finite-depth Lyapunov exponent of the state propagator d x_L / d x_0",
            "1/layer"))
        v["state_status"] = ((D.SAMPLE,), r.status.numpy().astype(np.int8), _status_attrs())
        v.update(run.summarise(st, (D.EXPONENT,), "state_exponent",
                               "state-propagator exponent", "1/layer"))
    coords = {SEGMENT: (SEGMENT, names, attrs("depth range of the propagator", "")),
              "start": (SEGMENT, [s for s, _ in segments], attrs("first depth")),
              "stop": (SEGMENT, [e for _, e in segments], attrs("last depth")),
              RESTRICTION: (RESTRICTION, list(restrictions), attrs(
                  "tokens perturbed -> tokens read", "")),
              D.EXPONENT: (D.EXPONENT, np.arange(1, k + 1), attrs("exponent index "
                                                                 "(1 = largest)"))}
    ds = run.labelled(xr.Dataset(v, coords=coords), names=run.kept["names"])
    ds.attrs.update(n_images=run.n, tol=cfg.tol, method="Golub-Kahan-Lanczos "
                    "bidiagonalisation with full reorthogonalisation on JVP/VJP chains",
                    composition="per-layer and per-phase spectra do not compose into the "
                    "whole-depth spectrum (norm perturbations at intermediate depths change "
                    "later directions)")
    if cls is None:
        ds.attrs["not_defined"] = f"restrictions cls->cls and all->cls: {D.NO_CLS}"
    return xr.DataTree(ds)


def _status_attrs() -> dict[str, Any]:
    from depthflow.dynamics.tangent.finite_depth import FiniteDepthStatus
    from depthflow.core.vocabulary import flag_attrs

    return flag_attrs(FiniteDepthStatus, "Lanczos solver status")


def frozen_lyapunov(run: Run) -> xr.DataTree:
    """Asymptotic QR spectra of frozen layers iterated beyond depth L (autonomous maps)."""
    cfg, L = run.cfg, run.L
    layers = [_layer(t, L, "frozen_layers") for t in cfg.frozen_layers]
    n = min(cfg.frozen_samples, run.n)
    parts = []
    for t in layers:
        res = lyapunov_spectrum(run.frozen(t), run.directions(t - 1)[:n], steps=cfg.frozen_steps,
                                k=cfg.k, transient=cfg.frozen_transient, seed=cfg.seed)
        ds = res.to_dataset()
        parts.append(ds.drop_vars([c for c in ds.coords if c == D.ITERATION]))
    ds = xr.concat(parts, dim=D.FROZEN_LAYER, combine_attrs="override")
    ds = ds.drop_dims([d for d in ds.dims if d == D.ITERATION])
    ds = ds.assign_coords({D.FROZEN_LAYER: (D.FROZEN_LAYER, layers, attrs(
        "layer t iterated as an autonomous sphere map (depth index frozen at t)"))})
    ds.attrs["maps"] = str([run.frozen(t).describe() for t in layers])
    return xr.DataTree(run.labelled(ds, index=run.kept["index"][:n],
                                    labels=run.kept["labels"][:n]))


# --------------------------------------------------------------------------- stretching
def stretching(run: Run) -> xr.DataTree:
    cfg = run.cfg
    r = layer_stretching(run.F, run.traj, k=min(cfg.stretching_k, cfg.k), tol=cfg.tol,
                         seed=cfg.seed)
    run.kept["layer_stretching"] = r             # the branch split's whole-layer spectra
    ds = r.to_dataset()
    log1 = np.log(r.sigma[:, :, 0].numpy())                               # (N, L)
    v = run.summarise(log1, (D.LAYER,), "log_sigma1", "log of the largest stretch sigma_1 "
                      "of a direction perturbation by the layer")
    contracting = (log1 < 0).mean(0)
    v["contracting_fraction"] = ((D.LAYER,), contracting, attrs(
        "fraction of images whose layer shrinks every direction perturbation "
        "(sigma_1 < 1)", n_images=run.n))
    ds = ds.assign(v)
    return xr.DataTree(run.labelled(ds, names=run.kept["names"]))


# --------------------------------------------------------------------------- branches
def branches(run: Run) -> xr.DataTree:
    """The attention / MLP split of every layer (:mod:`depthflow.dynamics.branches`)."""
    from depthflow.dynamics.branches import BRANCHES, branch_split
    from depthflow.errors import ArchitectureError

    cfg = run.cfg
    model = getattr(run.F, "model", None)
    try:
        same = isinstance(run.F, maps.ModelMap) and run.F.attention == "math"
        r = branch_split(model, run.traj, run.ctx.layout.token_kinds,
                         k=min(cfg.stretching_k, cfg.k), tol=cfg.tol,
                         probes=cfg.branch_probes, seed=cfg.seed,
                         sample_ids=run.kept["index"],
                         layer_spectra=run.kept.get("layer_stretching") if same else None)
    except ArchitectureError as err:
        return xr.DataTree(xr.Dataset(attrs={"skipped": f"not defined: {err}"}))
    B, K = "branch", D.KIND
    d4, d3 = (D.SAMPLE, D.LAYER, B, K), (D.SAMPLE, D.LAYER, B)
    v = {"update_norm": (d4, r.update_norm, attrs(
            "mean over the kind's tokens of the norm of the branch's residual update "
            "(layer: a + m)", "activation units")),
         "relative_update": (d4, r.relative_update, attrs(
            "mean over the kind's tokens of ||update|| / ||token at the layer's input||")),
         "sigma": (d3 + (MODE,), r.sigma, attrs(
            "largest stretch of a direction perturbation by the half-step (attention: "
            "x + a(x); mlp: y + m(y)) or the whole layer, norms held")),
         "status": (d3, r.status.astype(np.int8), _status_attrs()),
         "non_normality": (d3, r.non_normality, attrs(
            "departure from normality ||J^T J - J J^T||_F / ||J||_F^2 of the state tangent "
            "map (random-projection estimate)")),
         "update_non_normality": (d3, r.update_non_normality, attrs(
            "||J^T J - J J^T||_F / ||J - I||_F^2: the same numerator over the update part "
            "of the tangent map (random-projection estimate)"))}
    log1 = np.log(r.sigma[..., 0])                                     # (N, l, B)
    v.update(run.summarise(log1, (D.LAYER, B), "log_sigma1", "log of the largest stretch "
                           "sigma_1 of a direction perturbation"))
    for name, text in (("non_normality", "departure from normality of J"),
                       ("update_non_normality", "departure from normality over ||J - I||^2")):
        v.update(run.summarise(getattr(r, name), (D.LAYER, B), name, text))
    v.update(run.summarise(r.relative_update, (D.LAYER, B, K), "relative_update",
                           "relative update norm"))
    ds = xr.Dataset(v, coords={
        D.LAYER: (D.LAYER, r.layers, attrs("layer l (depth l-1 -> l)")),
        B: (B, list(BRANCHES), attrs("attention half-step, MLP half-step, or the whole "
                                     "layer", "")),
        K: (K, r.kinds, attrs("token kind", "")),
        MODE: (MODE, np.arange(1, r.sigma.shape[-1] + 1), attrs("singular value index "
                                                                  "(1 = largest)"))})
    ds.attrs.update(n_images=run.n, probes=cfg.branch_probes, tol=cfg.tol, split=(
        "y = x + ls1(attn(norm1 x)), z = y + ls2(mlp(norm2 y)): the model's own block, "
        "bit for bit"), composition="the half-step spectra do not compose into the layer's")
    return xr.DataTree(run.labelled(ds, names=run.kept["names"]))


# --------------------------------------------------------------------------- basins
def basins(run: Run) -> xr.DataTree:
    cfg, k, cls = run.cfg, run.kept, run.cls_token
    names = list(run.ctx.source.class_names) if run.ctx.source is not None else []
    counts = np.bincount(k["cls_labels"], minlength=1) if len(k["cls_labels"]) else np.zeros(1)
    usable = np.flatnonzero(counts >= 2)                  # the cross-fit needs 2 per class
    if cls is None or k["cls"] is None or len(usable) < 2:
        why = ("this model has no cls token" if cls is None else
               "fewer than two classes with at least two labelled images")
        return xr.DataTree(xr.Dataset(attrs={"skipped": f"not defined: {why}"}))
    keep = lambda labels: np.where(np.isin(labels, usable), labels, -1)   # noqa: E731
    dropped = sorted(set(np.flatnonzero(counts).tolist()) - set(usable.tolist()))
    res = class_basins(k["cls"].double(), keep(k["cls_labels"]), seed=cfg.seed,
                       n_perm=cfg.n_perm,
                       n_boot=min(cfg.n_boot, 200), level=cfg.level,
                       sample_ids=k["cls_index"])
    ds = _class_names(res.to_dataset(), names)
    ds.attrs["classes_left_out"] = (f"{dropped}: fewer than two labelled images" if dropped
                                    else "none")
    ds = run.labelled(ds, "image", index=res.image_ids,            # labelled images only
                      labels=res.classes[res.image_labels])
    children = {"classes": xr.DataTree(ds)}
    directions = k["cls"][:, -1] / k["cls"][:, -1].norm(dim=-1, keepdim=True)
    means = _class_means(directions, k["cls_labels"], len(names) or int(k["cls_labels"].max())
                         + 1)
    if k["rob"] is not None:
        states = {d: k["rob"][:, i] for i, d in enumerate(k["rob_depths"])}
        model = run.F.model
        rob = basin_robustness(run.F, states, keep(k["rob_labels"]), means,
                               thetas=cfg.robustness_angles, cls_index=cls,
                               head=(lambda x: model.readout(x)) if model.head is not None
                               else None, seed=cfg.seed, sample_ids=k["rob_index"],
                               n_boot=min(cfg.n_boot, 200), level=cfg.level)
        # only the images basin_robustness kept (labelled, of a usable class) are in it
        by_id = dict(zip(np.asarray(k["rob_index"]).tolist(), k["rob_labels"].tolist()))
        kept_ids = np.asarray(rob.image_ids, np.int64)
        children["robustness"] = xr.DataTree(run.labelled(
            rob.to_dataset(), "image", index=kept_ids,
            labels=np.array([by_id[int(i)] for i in kept_ids], np.int32)))
    t = _layer(cfg.attractor_layer, run.L, "attractor_layer")
    jvp_labels = keep(run.kept["labels"])
    if len(np.unique(jvp_labels[jvp_labels >= 0])) < 2:
        children["attractors"] = xr.DataTree(xr.Dataset(attrs={
            "skipped": "not defined: fewer than two usable classes among the labelled "
                       "images of the JVP subset (raise dynamics.samples)", "layer": t}))
        return xr.DataTree(xr.Dataset(attrs={"token": "cls"}), children=children)
    att = attractor_classes(run.frozen(t), run.directions(run.L), jvp_labels,
                            steps=cfg.attractor_steps, cls_index=cls,
                            tol_angle=cfg.attractor_tol, seed=cfg.seed, n_perm=cfg.n_perm,
                            n_boot=min(cfg.n_boot, 200), level=cfg.level,
                            sample_ids=run.kept["index"])
    adata = _class_names(att.to_dataset(), names)
    adata.attrs["layer"] = t
    # only the labelled images of a usable class are in it (as for the robustness child)
    children["attractors"] = xr.DataTree(run.labelled(
        adata, "image", index=np.asarray(att.image_ids, np.int64),
        labels=np.asarray(att.labels, np.int32)))
    return xr.DataTree(xr.Dataset(attrs={"token": "cls"}), children=children)


def _class_means(directions: Tensor, labels: np.ndarray, C: int) -> Tensor:
    means = torch.zeros(C, directions.shape[-1], dtype=directions.dtype,
                        device=directions.device)
    for c in range(C):
        rows = directions[torch.as_tensor(labels == c, device=directions.device)]
        if len(rows):
            m = rows.mean(0)
            means[c] = m / m.norm()
    return means


def _class_names(ds: xr.Dataset, names: list[str]) -> xr.Dataset:
    """Class coordinates as the root group's class names (the tree aligns them)."""
    if D.CLASS in ds.dims and names:
        ds = ds.reindex({D.CLASS: np.arange(len(names))})
        ds = ds.assign_coords({D.CLASS: names})
    return ds


# --------------------------------------------------------------------------- fixed points
def fixed_points(run: Run) -> xr.DataTree:
    cfg, L = run.cfg, run.L
    t = _layer(cfg.fixed_point_layer, L, "fixed_point_layer")
    g = run.frozen(t)
    data = run.directions(t - 1)
    n0 = min(run.n, cfg.fixed_point_starts)
    perturb = max(0, -(-cfg.fixed_point_starts // n0) - 1)
    starts = starts_from(data[:n0], perturb=perturb, angle=0.2, seed=cfg.seed)
    starts = starts[:cfg.fixed_point_starts]
    T, Dm = starts.shape[-2:]
    common = dict(max_iter=cfg.fixed_point_max_iter, seed=cfg.seed)
    state = find_fixed_points(g, starts, scope="state", k=min(cfg.k, T * (Dm - 1) - 2),
                              **common)
    children = {"state": xr.DataTree(state.to_dataset(points=False))}
    notes = {} if run.cls_token is not None else {
        "not_defined": f"cls-token fixed points and the norm scan: {D.NO_CLS}"}
    if run.cls_token is not None:
        token = find_fixed_points(g, starts, scope="token", token=run.cls_token,
                                  k=min(cfg.k, Dm - 3), **common)
        children["cls"] = xr.DataTree(token.to_dataset(points=False))
        scan = scan_reference_norms(g, starts[:cfg.norm_scan_starts], scales=cfg.norm_scales,
                                    scope="state", k=min(cfg.k, T * (Dm - 1) - 2),
                                    basin_starts=data[:n0], **common)
        sds = scan.to_dataset()
        sds.attrs["n_starts"] = int(min(cfg.norm_scan_starts, starts.shape[0]))
        children["norm_scan"] = xr.DataTree(sds)
    root = xr.Dataset(attrs={**notes, "layer": t, "n_starts": int(starts.shape[0]),
                             "starts": f"directions of {n0} images at depth {t - 1}, each "
                             f"with {perturb} copies rotated by 0.2 rad"})
    return xr.DataTree(root, children=children)


# --------------------------------------------------------------------------- recovery
def recovery(run: Run) -> xr.DataTree:
    cfg = run.cfg
    depths = default_depths(cfg.recovery_depths, run.L, "recovery_depths")
    kinds = {k: v.tolist() for k, v in run.ctx.layout.groups.items()}
    res = perturbation_recovery(run.F, run.traj[:, 0], depths=depths,
                                angles=cfg.recovery_angles,
                                direction=cfg.recovery_directions, n_draws=cfg.recovery_draws,
                                kinds=kinds, sample_index=run.kept["index"],
                                adversarial=_lanczos_direction(cfg.tol),
                                n_boot=cfg.n_boot, ci=cfg.level, seed=cfg.seed)
    ds = res.to_dataset()
    return xr.DataTree(run.labelled(ds, names=run.kept["names"]))


def _lanczos_direction(tol: float):
    """The adversarial direction: top right singular vector of the all-tokens-in ->
    kind-out directional propagator, by Lanczos (converged flag from its residual test)."""

    def solve(f, x, start, stop, out_tokens, *, seed=0):
        r = finite_depth_spectrum(f, x, start=start, stop=stop, kind="direction", k=1,
                                  out_tokens=list(out_tokens), tol=tol, seed=seed,
                                  vectors=True)
        return r.right[:, 0], r.success

    solve.batched = True
    return solve
