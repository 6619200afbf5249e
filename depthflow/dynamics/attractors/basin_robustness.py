"""Robustness of class basins under perturbations of the real model, and the attractor view
of iterated autonomous maps (definitions in ``docs/methods.md`` (class basins)).

* :func:`basin_robustness`: rotate the cls token (``scope="cls"``) or every token
  (``scope="all"``) at depth l by an angle theta towards a random tangent direction, norms
  kept, run the real layers l+1..L and count the images whose final cls stays nearest its
  own depth-L class mean (and, with a ``head``, whose prediction is unchanged).
* :func:`attractor_classes`: iterate an autonomous map beyond depth L from the images'
  states, cluster the cls end points (:func:`depthflow.dynamics.attractors.basins.basins_fractions`)
  and test the attractor label against the class (AMI with a permutation null).

n is the number of images everywhere; random directions are keyed by (seed, sample id,
depth), so results do not depend on batching or on the order of the images.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import warnings

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from depthflow.errors import ConfigError, InputError
from depthflow.dynamics.maps import DepthMap, tangent_project
from depthflow.dynamics.attractors import _class_stats as S
from depthflow.dynamics.attractors.basins import basins_fractions
from depthflow.dynamics.attractors.class_basins import as_numpy, check_labelled, check_level
from depthflow.core.vocabulary import attrs

__all__ = ["RobustnessResult", "basin_robustness", "AttractorClassResult",
           "attractor_classes", "SCOPES"]

SCOPES = ("cls", "all")
INJECT, SCOPE, THETA, IMAGE, CLASS, BASIN = ("inject_depth", "scope", "theta", "image",
                                             "class", "basin")


def random_tangents(x: Tensor, ids: np.ndarray, depth: int, seed: int) -> Tensor:
    """Unit tangent directions ``(n, T, D)`` at the token directions of ``x``; image ``i``'s
    draw depends only on ``(seed, ids[i], depth)``."""
    T, D = x.shape[-2:]
    g = np.stack([np.random.default_rng([seed, int(i), depth]).standard_normal((T, D))
                  for i in ids])
    w = tangent_project(x / x.norm(dim=-1, keepdim=True), torch.as_tensor(g).to(x))
    return w / w.norm(dim=-1, keepdim=True)


def rotate(x: Tensor, w: Tensor, theta: float, tokens: slice | list[int]) -> Tensor:
    """``x' = ||x|| (cos theta x_hat + sin theta w)`` on ``tokens``, the rest unchanged."""
    out = x.clone()
    xs = x[:, tokens]
    r = xs.norm(dim=-1, keepdim=True)
    out[:, tokens] = r * (math.cos(theta) * xs / r + math.sin(theta) * w[:, tokens])
    return out


def _run(f: DepthMap, x: Tensor, start: int, stop: int) -> Tensor:
    with torch.no_grad():
        for t in range(start + 1, stop + 1):
            x = f(t, x)
    return x


def _outcome(final: Tensor, cls_index: int, means: Tensor,
             head: Callable | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Nearest class mean of the final cls, and the head's prediction (argmax of logits)."""
    c = final[:, cls_index]
    near = (c / c.norm(dim=-1, keepdim=True) @ means.to(c).T).argmax(-1).cpu().numpy()
    if head is None:
        return near, None
    with torch.no_grad():
        out = torch.as_tensor(head(final))
    return near, (out.argmax(-1) if out.ndim == 2 else out).cpu().numpy()


def half_angle(thetas: np.ndarray, stays: np.ndarray) -> np.ndarray:
    """Angle at which the stay fraction (mean over the last axis of ``stays``, shape
    ``(..., theta, n)``) first falls below 1/2, linear between grid points (theta = 0 counts
    as 1); ``inf`` when it never does on the grid, NaN with no image."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # no image: "mean of empty slice"
        p = stays.mean(-1)                                           # (..., theta)
    p = np.concatenate([np.ones(p.shape[:-1] + (1,)), p], -1)
    th = np.concatenate([[0.0], thetas])
    below = p < 0.5
    k = np.where(below.any(-1), below.argmax(-1), 0)
    p0, p1 = np.take_along_axis(p, (k - 1)[..., None], -1)[..., 0], \
        np.take_along_axis(p, k[..., None], -1)[..., 0]
    t0, t1 = th[k - 1], th[k]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = t0 + (p0 - 0.5) / (p0 - p1) * (t1 - t0)
    out = np.where(below.any(-1), out, np.inf)
    return np.where(stays.shape[-1] == 0 or np.isnan(p[..., 1]), np.nan, out)


def _check_thetas(thetas: Sequence[float]) -> np.ndarray:
    th = np.asarray(thetas, dtype=np.float64).reshape(-1)
    if th.size == 0 or not np.all(np.isfinite(th)) or th.min() < 0 or th.max() > math.pi \
            or np.any(np.diff(th) <= 0):
        raise ConfigError(f"thetas must be increasing angles in [0, pi] radians, got "
                          f"{th.tolist()}")
    return th


def _check_states(f: DepthMap, states: Mapping[int, Tensor], n: int) -> tuple[int, list]:
    if not isinstance(f, DepthMap) or f.depths is None:
        raise ConfigError("basin_robustness needs a depth-indexed DepthMap (the real model, "
                          f"maps.from_model), got {getattr(f, 'name', type(f).__name__)}")
    L = max(f.depths)
    if not isinstance(states, Mapping) or not states:
        raise InputError("states must map inject depth l -> states (n_images, T, D) at l")
    for l, x in states.items():
        if int(l) != l or not 0 <= l <= L or any(t not in f.depths for t in range(l + 1, L + 1)):
            raise ConfigError(f"inject depth {l} needs layers {l + 1}..{L} in the map")
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[0] != n:
            raise InputError(f"states[{l}] must be a tensor (n_images={n}, T, D), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if not torch.isfinite(x).all() or (x.norm(dim=-1) == 0).any():
            raise InputError(f"states[{l}] must be finite with non-zero tokens")
    return L, sorted(int(l) for l in states)


@dataclasses.dataclass
class RobustnessResult:
    """``stays`` (inject_depth, scope, theta, image): final cls nearest its own class mean,
    over the images ``placed`` there unperturbed (inject_depth, image); ``unchanged`` the
    same for the head's prediction (over all images; None without head)."""

    inject_depths: list[int]
    scopes: list[str]
    thetas: np.ndarray
    image_ids: np.ndarray
    placed: np.ndarray
    stays: np.ndarray
    unchanged: np.ndarray | None
    summary: dict[str, np.ndarray]
    config: dict[str, Any]

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    def to_dataset(self) -> xr.Dataset:
        s, lvl = self.summary, f"{self.config['level']:.0%}"
        d3, d2 = (INJECT, SCOPE, THETA), (INJECT, SCOPE)
        v: dict[str, Any] = {
            "stay_fraction": (d3, s["stay_fraction"], attrs(
                "fraction of placed images whose final cls stays nearest its class mean")),
            "stay_fraction_low": (d3, s["stay_fraction_low"], attrs(f"Wilson {lvl} lower bound")),
            "stay_fraction_high": (d3, s["stay_fraction_high"], attrs(f"Wilson {lvl} upper bound")),
            "n_placed": ((INJECT,), self.placed.sum(-1).astype(np.int64), attrs(
                "images nearest their own class mean without perturbation", "")),
            "half_angle": (d2, s["half_angle"], attrs(
                "angle at which half of the placed images leave their basin (inf: > max "
                "theta)", "rad")),
            "half_angle_low": (d2, s["half_angle_low"], attrs(f"bootstrap {lvl} lower bound",
                                                           "rad")),
            "half_angle_high": (d2, s["half_angle_high"], attrs(f"bootstrap {lvl} upper bound",
                                                             "rad")),
            "half_angle_censored": (d2, np.isinf(s["half_angle"]).astype(np.int8), attrs(
                "1: fewer than half leave up to the largest theta", "",
                flag_values=np.int8([0, 1]), flag_meanings="reached censored")),
            "stays": ((*d3, IMAGE), self.stays.astype(np.int8), attrs(
                "image stays in its basin (only meaningful where placed)", "")),
            "placed": ((INJECT, IMAGE), self.placed.astype(np.int8), attrs(
                "image nearest its own class mean without perturbation", ""))}
        if self.unchanged is not None:
            v["head_unchanged_fraction"] = (d3, s["head_unchanged_fraction"], attrs(
                "fraction of images whose head prediction is unchanged"))
            v["head_unchanged_fraction_low"] = (d3, s["head_unchanged_fraction_low"],
                                                attrs(f"Wilson {lvl} lower bound"))
            v["head_unchanged_fraction_high"] = (d3, s["head_unchanged_fraction_high"],
                                                 attrs(f"Wilson {lvl} upper bound"))
        coords = {INJECT: (INJECT, self.inject_depths, attrs("depth l of the perturbation", "")),
                  SCOPE: (SCOPE, list(self.scopes), attrs("tokens rotated", "")),
                  THETA: (THETA, self.thetas, attrs("rotation angle", "rad")),
                  IMAGE: (IMAGE, self.image_ids, attrs("sample id of the image", ""))}
        meta = {"n_images": self.n_images, "config": json.dumps(self.config, sort_keys=True),
                "token": "cls"}
        return xr.Dataset(v, coords=coords, attrs=meta)


def _summarise(thetas, placed, stays, unchanged, n_boot, level, seed) -> dict[str, np.ndarray]:
    k = (stays & placed[:, None, None]).sum(-1)
    n = np.broadcast_to(placed.sum(-1)[:, None, None], k.shape)
    out = {"stay_fraction": np.where(n > 0, k / np.maximum(n, 1), np.nan)}
    out["stay_fraction_low"], out["stay_fraction_high"] = S.wilson(k, n, level)
    if unchanged is not None:
        m = unchanged.shape[-1]
        out["head_unchanged_fraction"] = unchanged.mean(-1)
        lo, hi = S.wilson(unchanged.sum(-1), np.full(unchanged.shape[:-1], m), level)
        out["head_unchanged_fraction_low"], out["head_unchanged_fraction_high"] = lo, hi
    half = np.empty(stays.shape[:2])
    lo, hi = np.full_like(half, np.nan), np.full_like(half, np.nan)
    for i, p in enumerate(placed):
        sub = stays[i][..., p]                                       # (scope, theta, n_p)
        half[i] = half_angle(thetas, sub)
        if n_boot and p.sum():
            rng = np.random.default_rng([seed, 5, i])
            draws = np.stack([half_angle(thetas, sub[..., rng.integers(0, sub.shape[-1],
                                                                        sub.shape[-1])])
                              for _ in range(n_boot)])
            lo[i], hi[i] = S.percentile_interval(draws, level)
    out.update(half_angle=half, half_angle_low=lo, half_angle_high=hi)
    return out


def basin_robustness(f: DepthMap, states: Mapping[int, Tensor], labels: Any,
                     class_means: Any, *, thetas: Sequence[float],
                     scopes: Sequence[str] = SCOPES, cls_index: int = 0,
                     head: Callable[[Tensor], Tensor] | None = None, seed: int = 0,
                     sample_ids: Any = None, batch_size: int = 64, n_boot: int = 200,
                     level: float = 0.95) -> RobustnessResult:
    """Fraction of images that stay in their class basin after a rotation at depth l.

    Parameters
    ----------
    f : the real model's depth-indexed map (``maps.from_model``); layers l+1..L are run.
    states : ``{l: (n_images, T, D)}`` token states at every inject depth l.
    labels : (n_images,) class index (row of ``class_means``); -1 = excluded.
    class_means : (C, D) class mean directions of the cls token at depth L.
    thetas : increasing rotation angles in [0, pi] (radians).
    scopes : ``"cls"`` rotates the cls token only, ``"all"`` every token (independent
        random tangent directions per token; the cls direction is the same in both).
    head : optional ``head(final_states) -> logits (n, K) or predictions (n,)``.
    seed, sample_ids : random directions are keyed by (seed, sample id, l).
    batch_size : images per forward pass (results do not depend on it).
    n_boot, level : bootstrap over placed images for the half-angle interval; Wilson
        intervals (n = images) for the fractions.
    """
    th = _check_thetas(thetas)
    check_level(level, n_boot)
    n = len(as_numpy(labels, "labels").reshape(-1))
    L, depths = _check_states(f, states, n)
    keep, _, _, excluded = check_labelled(labels, n, sample_ids, min_per_class=1)
    y = as_numpy(labels, "labels").astype(np.int64)[keep]             # rows of class_means
    means = torch.as_tensor(as_numpy(class_means, "class_means"))
    D = states[depths[0]].shape[-1]
    if means.ndim != 2 or means.shape[0] <= y.max() or means.shape[1] != D:
        raise InputError(f"class_means must be (C > {y.max()}, D = {D}) with a row per "
                         f"label, got {tuple(means.shape)}")
    means = means / means.norm(dim=-1, keepdim=True)
    if not scopes or any(s not in SCOPES for s in scopes):
        raise ConfigError(f"scopes must be a non-empty subset of {SCOPES}, got {scopes}")
    T = states[depths[0]].shape[1]
    if not 0 <= cls_index < T or int(batch_size) < 1:
        raise ConfigError(f"need 0 <= cls_index < T = {T} and batch_size >= 1, got "
                          f"cls_index={cls_index}, batch_size={batch_size}")
    ids = (np.arange(n) if sample_ids is None else as_numpy(sample_ids, "sample_ids")
           .astype(np.int64))[keep]
    placed = np.zeros((len(depths), len(keep)), dtype=bool)
    stays = np.zeros((len(depths), len(scopes), len(th), len(keep)), dtype=bool)
    unchanged = None if head is None else np.zeros_like(stays)
    for i, l in enumerate(depths):
        for lo in range(0, len(keep), batch_size):
            sl = slice(lo, lo + batch_size)
            x = states[l][torch.as_tensor(keep[sl])]
            w = random_tangents(x, ids[sl], l, seed)
            near0, pred0 = _outcome(_run(f, x, l, L), cls_index, means, head)
            placed[i, sl] = near0 == y[sl]
            for j, scope in enumerate(scopes):
                tokens = [cls_index] if scope == "cls" else slice(None)
                for k, theta in enumerate(th):
                    near, pred = _outcome(_run(f, rotate(x, w, float(theta), tokens), l, L),
                                          cls_index, means, head)
                    stays[i, j, k, sl] = near == y[sl]
                    if head is not None:
                        unchanged[i, j, k, sl] = pred == pred0
    summary = _summarise(th, placed, stays, unchanged, n_boot, level, seed)
    config = dict(seed=seed, n_boot=n_boot, level=level, cls_index=cls_index,
                  final_depth=L, excluded_unlabelled=excluded, map=f.describe(),
                  perturbation="x' = ||x|| (cos theta x_hat + sin theta w), w random unit "
                               "tangent keyed by (seed, sample id, l)")
    return RobustnessResult(depths, list(scopes), th, ids, placed, stays, unchanged, summary,
                            config)


@dataclasses.dataclass
class AttractorClassResult:
    """Attractor label of every image's cls end point (-1 = none) against its class."""

    image_ids: np.ndarray
    labels: np.ndarray
    attractor_label: np.ndarray
    attractors: np.ndarray
    stats: dict[str, float]
    config: dict[str, Any]

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    def to_dataset(self) -> xr.Dataset:
        basins = np.arange(-1, len(self.attractors))
        classes = np.unique(self.labels)
        table = np.array([[np.sum((self.labels == c) & (self.attractor_label == b))
                           for b in basins] for c in classes], dtype=np.int64)
        s, lvl = self.stats, f"{self.config['level']:.0%}"
        v = {"ami": ((), s["ami"], attrs("AMI of attractor label (-1 as one group) vs class")),
             "ami_low": ((), s["ami_low"], attrs(f"centred half-sampling {lvl} lower bound")),
             "ami_high": ((), s["ami_high"], attrs(f"centred half-sampling {lvl} upper bound")),
             "ami_null_mean": ((), s["ami_null_mean"], attrs("mean of the permutation null")),
             "ami_p_value": ((), s["ami_p_value"], attrs("label-permutation p-value")),
             "unassigned_fraction": ((), s["unassigned_fraction"], attrs(
                 "fraction of images whose end point reached no attractor")),
             "count": ((CLASS, BASIN), table, attrs("images of the class in the basin", "")),
             "attractor_label": ((IMAGE,), self.attractor_label.astype(np.int32), attrs(
                 "attractor reached by the cls end point (-1 = none)", "")),
             "label": ((IMAGE,), self.labels, attrs("class label", "")),
             "attractor": (("attractor", "feature"), self.attractors, attrs(
                 "attractor directions (cls token)"))}
        coords = {IMAGE: (IMAGE, self.image_ids, attrs("sample id of the image", "")),
                  CLASS: (CLASS, classes, attrs("class label", "")),
                  BASIN: (BASIN, basins, attrs("attractor label (-1 = none)", ""))}
        return xr.Dataset(v, coords=coords, attrs={
            "n_images": self.n_images, "token": "cls",
            "config": json.dumps(self.config, sort_keys=True)})


def attractor_classes(f: DepthMap, starts: Any, labels: Any, *, steps: int,
                      cls_index: int = 0, tol_angle: float = 0.1, seed: int = 0,
                      n_perm: int = 1000, n_boot: int = 200, level: float = 0.95,
                      sample_ids: Any = None, window: int | None = None,
                      converge_tol: float | None = None) -> AttractorClassResult:
    """Do the attractors of an iterated autonomous map sort the images by class?

    ``f`` is autonomous (e.g. ``maps.sphere(maps.frozen(F, L), norms)`` or a Raptor block
    frozen at L); ``starts`` are the images' states ``(n_images, T, D)`` at depth L (or cls
    directions ``(n_images, D)``). The cls end points after ``steps`` iterations are
    clustered by :func:`depthflow.dynamics.attractors.basins.basins_fractions` (label -1 = not
    converged or no attractor within ``tol_angle``). Reports the AMI of attractor label
    (-1 counted as one group) vs class, its permutation null and p-value, and a centred
    half-sampling interval over images (attractor labels held fixed).
    """
    check_level(level, n_boot, n_perm)
    x = torch.as_tensor(starts) if not isinstance(starts, Tensor) else starts
    x = x[:, None, :] if x.ndim == 2 else x
    if x.ndim != 3:
        raise InputError(f"starts must be (n_images, T, D) or (n_images, D), got "
                         f"{tuple(x.shape)}")
    keep, y, classes, excluded = check_labelled(labels, x.shape[0], sample_ids,
                                                min_per_class=1)
    res = basins_fractions(f, x[torch.as_tensor(keep)], steps=steps, tol_angle=tol_angle,
                           scope="token", tokens=[cls_index], window=window,
                           converge_tol=converge_tol, seed=seed)
    att = res.labels[:, 0].numpy().astype(np.int64)
    fixed = S.FixedMarginAMI(y, att)
    null = np.array([fixed(np.random.default_rng([seed, 1, b]).permutation(len(y)))
                     for b in range(n_perm)])
    est = S.ami(y, att)
    draws = np.array([S.FixedMarginAMI(y[i], att[i])(np.arange(len(i)))
                      for i, _ in S.halfsample_draws(y, n_boot, seed)]).reshape(-1, 1)
    lo, hi = S.halfsample_interval(np.array([est]), draws, level, (-np.inf, 1.0))
    stats = dict(ami=est, ami_low=float(lo[0]), ami_high=float(hi[0]),
                 ami_null_mean=float(null.mean()),
                 ami_p_value=float(S.permutation_p(np.array(est), null)),
                 unassigned_fraction=float(np.mean(att < 0)))
    ids = (np.arange(x.shape[0]) if sample_ids is None else as_numpy(sample_ids, "sample_ids")
           .astype(np.int64))[keep]
    config = dict(steps=steps, tol_angle=tol_angle, cls_index=cls_index, seed=seed,
                  n_perm=n_perm, n_boot=n_boot, level=level, excluded_unlabelled=excluded,
                  map=f.describe(), basins=res.settings)
    return AttractorClassResult(ids, classes[y], att, res.attractors.double().numpy(), stats,
                                config)
