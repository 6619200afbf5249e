"""Every setting of the Raptor digits study, as plain dicts.

``get_config()`` is the base fit (the ``depthflow fit`` defaults on the embedded digits ViT,
k = 2, thresholds from max-cut) and the ablation ladder of docs/methods.md, each rung a
set of :class:`depthflow.raptor.FitConfig` overrides applied on top of the base.
"""

from __future__ import annotations

from typing import Any


def get_config() -> dict[str, Any]:
    base = {                     # FitConfig options; everything else is the default
        "k": 2,
        "thresholds": None,      # max-cut on digits:train (gives [6] for this teacher)
        "seed": 0,
        "num_threads": 1,
        # the recipe the numbers in README.md were measured with (before `--recipe paper`
        # became the default: 0.45 / 0.10 / 0.45 token weights in every segment, zero b2,
        # LayerNorm eps 1e-6, truncated-normal init); the paper's recipe is studies 1-4
        "recipe": "depthflow",
    }
    total = base_total_steps()
    plain = {"stage1_steps": total, "stage2_steps": 0}     # same step budget for every rung
    ladder = [
        ("teacher forcing only", {**plain, "tf_mode": "teacher", "depth_conditioning": False,
                                  "token_weighting": False}),
        ("+ annealed autoregressive", {**plain, "depth_conditioning": False,
                                       "token_weighting": False}),
        ("+ depth conditioning", {**plain, "token_weighting": False}),
        ("+ cls weighting", {**plain}),
        ("+ stage 2 (full recipe)", {}),
    ]
    return {"teacher": None, "images": "digits:train", "eval_images": "digits:test",
            "base": base, "ladder": ladder}


def base_total_steps() -> int:
    from depthflow.raptor import FitConfig

    default = FitConfig()
    return default.stage1_steps + default.stage2_steps
