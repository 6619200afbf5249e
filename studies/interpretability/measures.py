"""Numerical helpers of the interpretability and layer-swap studies (definitions:
docs/methods.md section 15): the phase-boundary test of angular-speed changes, bootstrap
means over trials, and the depth-0 class control of the mean patch direction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binom


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float, float]:
    """Proportion ``k / n`` with its Wilson score interval (95%); NaNs when ``n == 0``."""
    if n <= 0:
        return math.nan, math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # clamped so that rounding never puts p outside its own interval (k = 0 or k = n)
    return p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def boundaries(phase: Sequence[int]) -> np.ndarray:
    """Depths ``b`` (1..L-1) between steps b and b+1 whose phases differ; ``phase[l-1]`` is
    the phase of step l."""
    phase = np.asarray(phase)
    return np.flatnonzero(phase[1:] != phase[:-1]) + 1


def largest_change(speed: np.ndarray) -> np.ndarray:
    """Per image, the depth ``b`` in 1..L-1 of the largest ``|s_(b+1) - s_b|`` (first on
    ties); ``speed`` is ``(n, L)``. Images with a NaN speed get -1."""
    speed = np.asarray(speed, dtype=float)
    change = np.abs(np.diff(speed, axis=1))                      # (n, L-1): depth b = j+1
    out = np.full(len(speed), -1, dtype=int)
    ok = np.all(np.isfinite(change), axis=1)
    out[ok] = change[ok].argmax(axis=1) + 1
    return out


def boundary_test(speed: np.ndarray, phase: Sequence[int]) -> dict[str, Any]:
    """The binomial test of methods.md section 15: how often the largest speed change of an
    image falls on a phase boundary, against the uniform chance rate ``|B| / (L - 1)``."""
    speed = np.asarray(speed, dtype=float)
    L = speed.shape[1]
    bounds = boundaries(phase)
    where = largest_change(speed)
    where = where[where > 0]
    n = int(len(where))
    hits = int(np.isin(where, bounds).sum())
    p0 = len(bounds) / (L - 1) if L > 1 else math.nan
    if n == 0 or len(bounds) == 0:
        p_value = math.nan
    else:
        p_value = float(binom.sf(hits - 1, n, p0))               # P(X >= hits)
    rate, low, high = wilson(hits, n)
    counts = np.bincount(where, minlength=L)[1:L] if n else np.zeros(L - 1, int)
    return {"n": n, "hits": hits, "rate": rate, "low": low, "high": high, "chance": p0,
            "p_value": p_value, "boundaries": [int(b) for b in bounds],
            "counts": [int(c) for c in counts]}


def bootstrap_mean(values: Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` (NaNs dropped) with its bootstrap percentile interval."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    a = (1 - level) / 2
    return float(x.mean()), float(np.quantile(draws, a)), float(np.quantile(draws, 1 - a))


def bootstrap_difference(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000,
                         level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` of two independent samples with the percentile interval of
    the difference of their bootstrap means."""
    x, y = (np.asarray(v, dtype=float) for v in (a, b))
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) == 0 or len(y) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    dx = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    dy = y[rng.integers(0, len(y), size=(n_boot, len(y)))].mean(axis=1)
    d = dx - dy
    q = (1 - level) / 2
    return float(x.mean() - y.mean()), float(np.quantile(d, q)), float(np.quantile(d, 1 - q))


def ncm_control(directions: np.ndarray, labels: np.ndarray, *, n_perm: int = 200,
                seed: int = 0) -> dict[str, float]:
    """Cross-fitted nearest-class-mean accuracy of unit vectors ``(n, D)`` (two stratified
    halves, each scored with the class means of the other) with a label-permutation null
    (the same statistic on permuted labels) and its one-sided p-value
    ``(1 + #{null >= observed}) / (1 + n_perm)``; the accuracy's Wilson interval uses
    n = images."""
    from depthflow.dynamics.attractors._class_stats import crossfit_predictions, stratified_folds

    y = np.asarray(labels)
    keep = y >= 0
    u, y = np.asarray(directions, dtype=float)[keep][None], y[keep]
    classes, y = np.unique(y, return_inverse=True)
    C = len(classes)
    rng = np.random.default_rng(seed)

    def score(lab: np.ndarray) -> float:
        fold = stratified_folds(lab, rng)
        return float((crossfit_predictions(u, lab, fold, C)[0] == lab).mean())

    acc = score(y)
    null = np.array([score(rng.permutation(y)) for _ in range(n_perm)])
    _, low, high = wilson(int(round(acc * len(y))), len(y))
    return {"n": int(len(y)), "accuracy": acc, "low": low, "high": high,
            "null_mean": float(null.mean()),
            "p_value": float((1 + (null >= acc).sum()) / (1 + n_perm))}
