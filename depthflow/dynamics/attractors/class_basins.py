"""Class-dependent angular basins of the cls token over depth, with statistics that test the
claim (see ``docs/methods.md`` (class basins) for every definition).

:func:`class_basins` takes the cls directions of n labelled images at every depth
``0..L`` and reports, per depth: the angular dispersion within class and between class means
and the angular speed (convergence); the cross-fitted nearest-class-mean accuracy and the
adjusted mutual information between spherical k-means clusters and labels, each against a
label-permutation null with Holm-corrected p-values (class dependence); and, per image, the
depth from which its cls stays nearest its own final class mean (basin entry). Intervals are
centred half-sampling intervals over images (half-samples drawn without replacement, so
that no image is on both sides of a cross-fit). n is the number of images everywhere.

The robustness of the basins under perturbations of the real model and the attractor view
of iterated maps are in :mod:`.basin_robustness`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import xarray as xr

from depthflow.errors import ConfigError, InputError
from depthflow.dynamics.attractors import _class_stats as S
from depthflow.core.vocabulary import attrs

__all__ = ["ClassBasinResult", "class_basins", "check_labelled", "check_level", "as_numpy"]

DEPTH, CLASS, IMAGE, ENTRY = "depth", "class", "image", "entry"
NEVER = -1


def as_numpy(x: Any, name: str) -> np.ndarray:
    """A float64 numpy copy of a torch tensor or array-like."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be a numeric array or tensor, got "
                         f"{type(x).__name__}") from err


def check_level(level: float, n_boot: int, n_perm: int | None = None) -> None:
    if not 0 < level < 1:
        raise ConfigError(f"level must be a confidence level in (0, 1), got {level}")
    if int(n_boot) != n_boot or n_boot < 0:
        raise ConfigError(f"n_boot must be an integer >= 0 (0: no intervals), got {n_boot}")
    if n_perm is not None and (int(n_perm) != n_perm or n_perm < 1):
        raise ConfigError(f"n_perm must be an integer >= 1 (200 or more recommended), "
                          f"got {n_perm}")


def check_labelled(labels: Any, n: int, sample_ids: Any = None, *,
                   min_per_class: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Validate labels and sample ids of ``n`` images.

    Returns ``(keep, y, classes, excluded)``: ``keep`` the positions of the labelled images
    in canonical order (sorted by sample id), ``y`` their class index ``0..C-1``,
    ``classes`` the label value of every class index, ``excluded`` the number of images
    with label -1.
    """
    lab = as_numpy(labels, "labels")
    if lab.ndim != 1 or len(lab) != n:
        raise InputError(f"labels must have shape ({n},), one per image, got {lab.shape}")
    if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)) or np.any(lab < -1):
        raise InputError("labels must be integers >= 0 (or -1 for 'no label, excluded'), "
                         f"got values {np.unique(lab)[:8].tolist()}")
    ids = np.arange(n) if sample_ids is None else as_numpy(sample_ids, "sample_ids")
    if ids.shape != (n,) or np.any(ids != np.round(ids)) or len(np.unique(ids)) != n:
        raise InputError(f"sample_ids must be {n} distinct integers (one per image), got "
                         f"shape {ids.shape}")
    lab, ids = lab.astype(np.int64), ids.astype(np.int64)
    keep = np.flatnonzero(lab >= 0)
    keep = keep[np.argsort(ids[keep], kind="stable")]
    classes, y, counts = np.unique(lab[keep], return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise InputError(f"labels must name at least 2 classes among the labelled images, "
                         f"got {len(classes)} ({classes.tolist()})")
    if counts.min() < min_per_class:
        raise InputError(f"every class needs at least {min_per_class} images for the "
                         f"cross-fit, got counts {dict(zip(classes.tolist(), counts.tolist()))}")
    return keep, y.astype(np.int64), classes, int(n - len(keep))


def _check_directions(directions: Any) -> np.ndarray:
    u = as_numpy(directions, "directions")
    if u.ndim != 3 or u.shape[2] < 2:
        raise InputError("directions must be the cls vectors of shape (n_images, depth, D) "
                         f"with D >= 2 (depth = L + 1), got shape {u.shape}")
    if not np.all(np.isfinite(u)):
        raise InputError("directions contain NaN or inf")
    if np.any(np.linalg.norm(u, axis=-1) == 0):
        raise InputError("directions contain zero vectors, which have no direction")
    return S.unit(u)


def _convergence(u: np.ndarray, y: np.ndarray, C: int) -> dict[str, np.ndarray]:
    means = S.class_means(u, y, C)                                  # (depth, C, D)
    own = S.angle(u, means[:, y])                                   # (depth, n)
    onehot = np.eye(C)[y]
    by_class = own @ onehot / onehot.sum(0)                         # (depth, C)
    iu = np.triu_indices(C, 1)
    between = S.angle(means[:, iu[0]], means[:, iu[1]]).mean(-1)
    speed = np.full(u.shape[0], np.nan)
    if u.shape[0] > 1:
        speed[1:] = np.median(S.angle(u[1:], u[:-1]), axis=1)
    return dict(within_dispersion=own.mean(1), within_dispersion_by_class=by_class,
                between_angle=between, angular_speed=speed)


def _ncm(u: np.ndarray, y: np.ndarray, fold: np.ndarray, C: int) -> np.ndarray:
    return (S.crossfit_predictions(u, y, fold, C) == y).mean(1)


def _clusters(u: np.ndarray, C: int, seed: Any, restarts: int,
              init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means per depth: labels (depth, n) and centres (depth, C, D)."""
    out = [S.spherical_kmeans(ud, C, seed=[*seed, d], restarts=restarts,
                              init=None if init is None else init[d])
           for d, ud in enumerate(u)]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def _entry(u: np.ndarray, y: np.ndarray, fold: np.ndarray, C: int) -> np.ndarray:
    """First depth from which the image stays nearest its own depth-L class mean
    (cross-fitted); NEVER when it is not nearest it at depth L."""
    ok = S.crossfit_predictions(u, y, fold, C, final=True) == y     # (depth, n)
    stays = np.flip(np.logical_and.accumulate(np.flip(ok, 0), axis=0), 0)
    return np.where(stays[-1], stays.argmax(0), NEVER)


@dataclasses.dataclass
class ClassBasinResult:
    """Per-depth class-basin statistics (arrays over ``depth`` unless said otherwise).

    ``*_low``/``*_high`` are centred half-sampling bounds over images (NaN when
    ``n_boot = 0``);
    ``*_p_value`` are Holm-adjusted over the depths, ``*_p_value_raw`` unadjusted;
    ``*_null_mean`` is the mean of the permutation null (the chance level).
    ``entry_depth`` (image): -1 = never; ``entry_count`` (class, entry_depth -1..L).
    """

    depths: np.ndarray
    classes: np.ndarray
    image_ids: np.ndarray
    image_labels: np.ndarray
    stats: dict[str, np.ndarray]
    clusters: np.ndarray
    entry_depth: np.ndarray
    config: dict[str, Any]
    excluded: int

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    def __getattr__(self, name: str) -> np.ndarray:
        stats = self.__dict__.get("stats", {})
        if name in stats:
            return stats[name]
        raise AttributeError(name)

    def entry_count(self) -> np.ndarray:
        """Counts ``(C, L + 2)`` of entry depths per class (columns -1 = never, 0..L)."""
        cols = np.arange(NEVER, len(self.depths))
        return np.stack([[np.sum((self.image_labels == c) & (self.entry_depth == e))
                          for e in cols] for c in range(len(self.classes))])

    def to_dataset(self) -> xr.Dataset:
        return _to_dataset(self)


_MEANING = {
    "within_dispersion": ("mean angle of cls to its own class mean direction", "rad"),
    "between_angle": ("mean pairwise angle between class mean directions", "rad"),
    "angular_speed": ("median over images of the angle between cls at depth l-1 and l",
                      "rad"),
    "ncm_accuracy": ("cross-fitted nearest-class-mean accuracy of the cls direction", "1"),
    "ami": ("adjusted mutual information, spherical k-means clusters vs labels", "1"),
}

_SHORT = {"ncm_accuracy": "ncm", "ami": "ami"}
# the range of each statistic (its interval is clipped to it): angles in [0, pi], an
# accuracy in [0, 1], AMI at most 1 (negative below chance)
_RANGE = {"within_dispersion": (0.0, np.pi), "between_angle": (0.0, np.pi),
          "angular_speed": (0.0, np.pi), "ncm_accuracy": (0.0, 1.0), "ami": (-np.inf, 1.0)}


def _to_dataset(r: ClassBasinResult) -> xr.Dataset:
    v: dict[str, Any] = {}
    for name, (meaning, units) in _MEANING.items():
        v[name] = ((DEPTH,), r.stats[name], attrs(meaning, units))
        v[f"{name}_low"] = ((DEPTH,), r.stats[f"{name}_low"], attrs(f"{meaning}: lower "
                            f"{r.config['level']:.0%} half-sampling bound", units))
        v[f"{name}_high"] = ((DEPTH,), r.stats[f"{name}_high"], attrs(f"{meaning}: upper "
                             f"{r.config['level']:.0%} half-sampling bound", units))
    for name, short in _SHORT.items():
        v[f"{short}_null_mean"] = ((DEPTH,), r.stats[f"{short}_null_mean"],
                                   attrs(f"{name}: mean of the label-permutation null", "1"))
        v[f"{short}_p_value"] = ((DEPTH,), r.stats[f"{short}_p_value"],
                                 attrs(f"{name}: permutation p-value, Holm-adjusted over depths"))
        v[f"{short}_p_value_raw"] = ((DEPTH,), r.stats[f"{short}_p_value_raw"],
                                     attrs(f"{name}: permutation p-value, unadjusted"))
    v["within_dispersion_by_class"] = ((DEPTH, CLASS), r.stats["within_dispersion_by_class"],
                                       attrs("mean angle of cls to its class mean, per class",
                                          "rad"))
    v["kmeans_cluster"] = ((DEPTH, IMAGE), r.clusters.astype(np.int32),
                           attrs("spherical k-means cluster of the cls direction", ""))
    v["label"] = ((IMAGE,), r.classes[r.image_labels].astype(np.int64), attrs("class label", ""))
    v["entry_depth"] = ((IMAGE,), r.entry_depth.astype(np.int32), attrs(
        "first depth from which cls stays nearest its own depth-L class mean (cross-fitted)",
        "", flag_values=np.int32(NEVER), flag_meanings="never"))
    v["entry_count"] = ((CLASS, ENTRY), r.entry_count().astype(np.int64), attrs(
        "number of images of the class with this entry depth (-1 = never)", ""))
    coords = {DEPTH: (DEPTH, r.depths, attrs("depth (0 = embedding)", "")),
              CLASS: (CLASS, r.classes, attrs("class label", "")),
              IMAGE: (IMAGE, r.image_ids, attrs("sample id of the image", "")),
              ENTRY: (ENTRY, np.arange(NEVER, len(r.depths)), attrs("entry depth (-1 = never)",
                                                                 ""))}
    meta = {"n_images": r.n_images, "n_excluded_unlabelled": r.excluded,
             "config": json.dumps(r.config, sort_keys=True),
             "p_value_correction": "Holm over the depths tested",
             "min_attainable_p_value": len(r.depths) / (r.config["n_perm"] + 1),
             "token": "cls"}
    return xr.Dataset(v, coords=coords, attrs=meta)


def _point(u, y, C, fold, clusters, ami) -> dict[str, np.ndarray]:
    out = _convergence(u, y, C)
    out["ncm_accuracy"] = _ncm(u, y, fold, C)
    out["ami"] = np.array([ami(y, c) for c in clusters])
    return out


def _fast_ami(y: np.ndarray, clusters: np.ndarray) -> float:
    return S.FixedMarginAMI(y, clusters)(np.arange(len(y)))


def _null(u, y, C, clusters, n_perm, seed) -> tuple[np.ndarray, np.ndarray]:
    """Label-permutation nulls (n_perm, depth); the cross-fit halves are redrawn per
    permutation (stratified by the permuted labels), the clusters do not depend on labels."""
    ncm = np.empty((n_perm, u.shape[0]))
    ami = np.empty((n_perm, u.shape[0]))
    amis = [S.FixedMarginAMI(y, c) for c in clusters]
    for b in range(n_perm):
        rng = np.random.default_rng([seed, 1, b])
        perm = rng.permutation(len(y))
        ncm[b] = _ncm(u, y[perm], S.stratified_folds(y[perm], rng), C)
        ami[b] = [f(perm) for f in amis]
    return ncm, ami


def _halfsamples(u, y, C, n_boot, seed, restarts, centres) -> dict[str, np.ndarray]:
    """Statistics of every half-sample; k-means starts from the data's centres (plus
    ``restarts`` k-means++ seedings)."""
    draws: dict[str, list[np.ndarray]] = {}
    for b, (idx, fold) in enumerate(S.halfsample_draws(y, n_boot, seed)):
        ub = S.take(u, idx)
        clusters, _ = _clusters(ub, C, (seed, 4, b), restarts, init=centres)
        for k, val in _point(ub, y[idx], C, fold, clusters, _fast_ami).items():
            draws.setdefault(k, []).append(val)
    return {k: np.stack(val) for k, val in draws.items()}


def class_basins(directions: Any, labels: Any, *, seed: int = 0, n_perm: int = 1000,
                 n_boot: int = 200, level: float = 0.95, kmeans_restarts: int = 10,
                 boot_restarts: int = 0, sample_ids: Any = None) -> ClassBasinResult:
    """Test class-dependent angular basins of the cls token over depth.

    Parameters
    ----------
    directions : (n_images, L + 1, D) torch tensor or array
        cls vectors at depths 0..L (normalised here).
    labels : (n_images,) int
        Class of every image; -1 = no label (the image is excluded; the count is recorded).
        At least 2 classes with at least 2 images each.
    seed : seeds the cross-fit halves, k-means, permutations and half-samples.
    n_perm : label permutations of each null. The smallest attainable Holm-adjusted p-value
        is ``(L + 1) / (n_perm + 1)``: with 13 depths, 200 permutations can never reach 0.05,
        hence the default 1000 (recorded as ``min_attainable_p_value``).
    n_boot, level : half-samples over images for the intervals (0: none) and their level.
    kmeans_restarts : k-means++ restarts on the data (best total cosine wins).
    boot_restarts : extra k-means++ restarts per half-sample; every half-sample first starts
        from the data's centres (so a draw measures sampling variability around the data's
        clustering rather than the luck of random seeding).
    sample_ids : (n_images,) distinct ints naming the images (default: positions). Draws are
        made in the order of the ids, so permuting images with their ids changes nothing.
    """
    u = _check_directions(directions)                               # (n, depth, D)
    check_level(level, n_boot, n_perm)
    if int(kmeans_restarts) < 1 or int(boot_restarts) < 0:
        raise ConfigError(f"need kmeans_restarts >= 1 and boot_restarts >= 0, got "
                          f"{kmeans_restarts} and {boot_restarts}")
    keep, y, classes, excluded = check_labelled(labels, u.shape[0], sample_ids)
    ids = (np.arange(u.shape[0]) if sample_ids is None
           else as_numpy(sample_ids, "sample_ids").astype(np.int64))[keep]
    u, C = np.ascontiguousarray(u[keep].transpose(1, 0, 2)), len(classes)   # (depth, n, D)
    fold = S.stratified_folds(y, np.random.default_rng([seed, 0]))
    clusters, centres = _clusters(u, C, (seed, 2), kmeans_restarts)
    stats = _point(u, y, C, fold, clusters, S.ami)
    ncm_null, ami_null = _null(u, y, C, clusters, n_perm, seed)
    for name, null in (("ncm_accuracy", ncm_null), ("ami", ami_null)):
        raw = S.permutation_p(stats[name], null)
        short = _SHORT[name]
        stats.update({f"{short}_null_mean": null.mean(0), f"{short}_p_value_raw": raw,
                      f"{short}_p_value": S.holm(raw)})
    boot = _halfsamples(u, y, C, n_boot, seed, boot_restarts, centres) if n_boot else {}
    for name in _MEANING:
        draws = boot.get(name, np.empty((0, u.shape[0])))
        stats[f"{name}_low"], stats[f"{name}_high"] = S.halfsample_interval(
            stats[name], draws, level, _RANGE[name])
    config = dict(seed=seed, n_perm=n_perm, n_boot=n_boot, level=level,
                  kmeans="spherical k-means (own implementation), k = number of classes, "
                         "k-means++ seeding on 1 - cos",
                  kmeans_restarts=kmeans_restarts, boot_restarts=boot_restarts,
                  interval="centred half-sampling: n_boot stratified half-samples without "
                           "replacement, percentile interval shifted by estimate - median, "
                           "clipped to the statistic's range; "
                           "k-means in a half-sample starts from the data's centres")
    return ClassBasinResult(np.arange(u.shape[0]), classes, ids, y, stats, clusters,
                            _entry(u, y, fold, C), config, excluded)
