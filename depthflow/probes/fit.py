"""Linear and nearest-neighbour probes of features, per depth, under k-fold cross-validation.

The linear probe is scikit-learn's ``StandardScaler`` then ``LogisticRegression`` (lbfgs,
L2), its inverse regularisation ``C`` chosen from a small grid by inner stratified k-fold
cross-validation on the training fold only (``GridSearchCV``, refit on the whole training
fold); the k-nearest-neighbour probe standardises the same way. Accuracy is out-of-fold:
every image is predicted once, by the probe fitted on the folds it is not in, so its
uncertainty is the Wilson interval of ``correct / n`` over images.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np

from depthflow.dynamics.attractors._class_stats import wilson
from depthflow.errors import ConfigError, InputError

__all__ = ["ProbeScores", "fit_probe", "outer_folds", "probe_scores", "probe_depths"]


def _pipeline(C: float | None = None, *, max_iter: int = 2000):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    lr = LogisticRegression(C=1.0 if C is None else C, max_iter=max_iter)
    return Pipeline([("scale", StandardScaler()), ("lr", lr)])


def fit_probe(X: np.ndarray, y: np.ndarray, *, Cs: Sequence[float] = (0.01, 0.1, 1.0),
              inner_folds: int = 3, seed: int = 0, max_iter: int = 2000):
    """A fitted standardised logistic regression whose ``C`` (from ``Cs``) maximises the
    inner stratified ``inner_folds``-fold CV accuracy on ``(X, y)``; refitted on all of it.

    Returns the fitted ``sklearn`` pipeline (steps ``scale``, ``lr``)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    counts = np.bincount(np.unique(y, return_inverse=True)[1])
    inner = max(2, min(inner_folds, int(counts.min())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if len(Cs) == 1 or counts.min() < 2:
            return _pipeline(float(Cs[0]), max_iter=max_iter).fit(X, y)
        search = GridSearchCV(_pipeline(max_iter=max_iter), {"lr__C": [float(c) for c in Cs]},
                              cv=StratifiedKFold(inner, shuffle=True, random_state=seed),
                              scoring="accuracy", refit=True)
        return search.fit(X, y).best_estimator_


def outer_folds(y: np.ndarray, *, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified ``folds``-fold (shuffled, seeded) train/test index pairs; ``folds`` is
    capped by the smallest class count (at least 2 images of every class are needed)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise InputError(f"probes need at least two classes among the labelled images, got "
                         f"{len(classes)} ({len(y)} labelled images)")
    if counts.min() < 2:
        raise InputError(f"probes need at least 2 images of every class, class "
                         f"{classes[counts.argmin()]} has {counts.min()}; use more images "
                         f"(--limit)")
    k = min(int(folds), int(counts.min()))
    split = StratifiedKFold(k, shuffle=True, random_state=seed)
    return list(split.split(np.zeros(len(y)), y))


@dataclasses.dataclass
class ProbeScores:
    """Out-of-fold results of one feature matrix.

    ``correct`` / ``knn_correct``: (n,) bool per image; ``chosen_C``: (folds,) the C of each
    outer fold's linear probe."""

    correct: np.ndarray
    knn_correct: np.ndarray
    chosen_C: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def knn_accuracy(self) -> float:
        return float(self.knn_correct.mean())


def probe_scores(X: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], *,
                 Cs: Sequence[float] = (0.01, 0.1, 1.0), inner_folds: int = 3,
                 knn_k: int = 5, seed: int = 0) -> ProbeScores:
    """Out-of-fold correctness of the linear probe (:func:`fit_probe`) and of a standardised
    ``knn_k``-nearest-neighbour classifier on the outer ``splits``."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    correct = np.zeros(len(y), dtype=bool)
    knn_correct = np.zeros(len(y), dtype=bool)
    chosen = []
    for train, test in splits:
        model = fit_probe(X[train], y[train], Cs=Cs, inner_folds=inner_folds, seed=seed)
        correct[test] = model.predict(X[test]) == y[test]
        chosen.append(model.named_steps["lr"].C)
        k = min(knn_k, len(train))
        knn = Pipeline([("scale", StandardScaler()),
                        ("knn", KNeighborsClassifier(n_neighbors=k))]).fit(X[train], y[train])
        knn_correct[test] = knn.predict(X[test]) == y[test]
    return ProbeScores(correct, knn_correct, np.asarray(chosen, dtype=np.float64))


def probe_depths(features: np.ndarray, y: np.ndarray, *, folds: int = 5,
                 Cs: Sequence[float] = (0.01, 0.1, 1.0), inner_folds: int = 3,
                 knn_k: int = 5, level: float = 0.95, seed: int = 0) -> dict[str, np.ndarray]:
    """Probe accuracy per depth of ``features`` ``(n, depths, F)`` with labels ``y`` (n,).

    Every depth uses the same outer folds. Returns arrays over depth: ``accuracy``,
    ``accuracy_low``/``_high`` (Wilson, over images), ``knn_accuracy`` (+ interval),
    ``correct``/``knn_correct`` ``(depths, n)``, ``chosen_C`` ``(depths, folds)``, and the
    scalars ``chance`` (majority-class fraction) and ``best_depth``."""
    features = np.asarray(features)
    if features.ndim != 3 or len(features) != len(y):
        raise InputError(f"features must be (n, depths, F) with n = {len(y)} labels, got "
                         f"{features.shape}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    splits = outer_folds(y, folds=folds, seed=seed)
    scores = [probe_scores(features[:, d], y, splits, Cs=Cs, inner_folds=inner_folds,
                           knn_k=knn_k, seed=seed) for d in range(features.shape[1])]
    n = len(y)
    out: dict[str, np.ndarray] = {
        "correct": np.stack([s.correct for s in scores]),
        "knn_correct": np.stack([s.knn_correct for s in scores]),
        "chosen_C": np.stack([s.chosen_C for s in scores])}
    for name, key in (("accuracy", "correct"), ("knn_accuracy", "knn_correct")):
        k = out[key].sum(1)
        out[name] = k / n
        out[f"{name}_low"], out[f"{name}_high"] = wilson(k, np.full_like(k, n), level)
    out["chance"] = np.asarray(np.bincount(np.unique(y, return_inverse=True)[1]).max() / n)
    out["best_depth"] = np.asarray(int(np.argmax(out["accuracy"])))
    out["folds"] = np.asarray(len(splits))
    return out
