"""Options of the phase analysis: :class:`PhaseConfig` and its defaults, in a module of
their own so that the labelled datasets (:mod:`depthflow.phases.datasets`) and the plug-in
(:mod:`depthflow.phases.analysis`) both import them without importing each other."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from depthflow.core.config import Options
from depthflow.errors import ConfigError
from depthflow.phases import segmentation as seg
from depthflow.phases.similarity import VIEWS, check_views

__all__ = ["PhaseConfig", "DEFAULT_K_MAX", "SEGMENT_METRICS"]

DEFAULT_K_MAX = 4       # PhaseConfig's default; lowered (with a note) on models this shallow
SEGMENT_METRICS = ("cosine", "mse", "cka", "cka_debiased")


@dataclasses.dataclass
class PhaseConfig(Options):
    """Options of the phase analysis (recorded as JSON in the output).

    ``metrics``: matrices to compute (``cosine``, ``mse``, ``cka``; ``cka`` also gives
    ``cka_debiased``); ``views``: token views of cosine and MSE; ``cka_views``: token views
    of CKA (each costs ``((L+1) D)^2`` float64 numbers); ``segment_metric`` /
    ``segment_view``: the matrix the segmentations run on; ``fractions``: max-cut
    fractions f (eps = f * total_W); ``k_max``, ``min_size``: DP segmentations;
    ``select_tolerance``: the selected k is the smallest within this of the best
    modularity; ``swap_trials``: random swaps per
    family (0: no swap test); ``swap_samples``: images used by it (None: all);
    ``swap_max_layers``: at most this many layers replaced per trial; ``swap_k``: phases of
    the DP segmentation the swaps use (None: the selected k, at least 2); ``seed``: None
    takes the analysis seed.
    """

    _what = "phase option"
    _help = {
        "metrics": "Matrices to compute: cosine, mse, cka (cka also gives cka_debiased).",
        "views": "Token views of cosine and MSE: paper, cls, distillation, register, patch, "
                 "all.",
        "cka_views": "Token views of CKA (each costs ((L+1) D)^2 float64 numbers).",
        "segment_metric": "Matrix the segmentations run on: cosine (the paper's), mse, cka, "
                          "cka_debiased.",
        "segment_view": "Token view of that matrix.",
        "fractions": "Max-cut fractions f (eps = f * total distance).",
        "k_max": "Largest number of phases of the contiguous (DP) segmentations.",
        "min_size": "Fewest blocks per phase.",
        "select_tolerance": "The selected k is the smallest within this of the best "
                            "modularity.",
        "swap_trials": "Random layer swaps per family (0: no swap test).",
        "swap_samples": "Images used by the swap test (none: all).",
        "swap_max_layers": "At most this many layers replaced per trial.",
        "swap_k": "Phases of the DP segmentation the swaps use (none: the selected k, at "
                  "least 2).",
        "seed": "Seed of the swap trials (none: the run's seed).",
    }

    metrics: tuple[str, ...] = ("cosine", "mse", "cka")
    views: tuple[str, ...] = VIEWS
    cka_views: tuple[str, ...] = ("cls",)
    segment_metric: str = "cosine"
    segment_view: str = "paper"
    fractions: tuple[float, ...] = (0.2, 0.1, 0.09)
    k_max: int = DEFAULT_K_MAX
    min_size: int = 2
    select_tolerance: float = 0.01
    swap_trials: int = 32
    swap_samples: int | None = 256
    swap_max_layers: int = 3
    swap_k: int | None = None
    seed: int | None = None

    def validate(self) -> PhaseConfig:
        self.metrics = tuple(self.metrics)
        bad = [m for m in self.metrics if m not in ("cosine", "mse", "cka")]
        if bad or not self.metrics:
            raise ConfigError(f"metrics must be among ('cosine', 'mse', 'cka'), got "
                              f"{list(self.metrics)}")
        self.views = check_views(self.views)
        self.cka_views = check_views(self.cka_views, name="cka_views")
        if self.segment_metric not in SEGMENT_METRICS:
            raise ConfigError(f"segment_metric must be one of {SEGMENT_METRICS}, got "
                              f"{self.segment_metric!r}")
        base = "cka" if self.segment_metric.startswith("cka") else self.segment_metric
        views = self.cka_views if base == "cka" else self.views
        if base not in self.metrics or self.segment_view not in views:
            raise ConfigError(f"segment_metric={self.segment_metric!r} with segment_view="
                              f"{self.segment_view!r} is not computed; add it to metrics and "
                              f"{'cka_views' if base == 'cka' else 'views'}")
        self.fractions = tuple(seg.check_fraction(f, name="fractions") for f in self.fractions)
        seg.check_min_size(self.min_size)
        _positive_int(self.k_max, "k_max")
        tol = self.select_tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
            raise ConfigError(f"select_tolerance must be in [0, 1), got {tol!r}")
        _positive_int(self.swap_trials, "swap_trials", minimum=0)
        _positive_int(self.swap_max_layers, "swap_max_layers")
        if self.swap_samples is not None:
            _positive_int(self.swap_samples, "samples")
        if self.swap_k is not None:
            _positive_int(self.swap_k, "swap_k", minimum=2)
        return self


def _positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
