"""Every hyperparameter of the default digits ViT, as one plain dict.

``train.py`` reads this, lets the command line override ``epochs`` and ``seed``, and
records the result (JSON) in ``config.json`` and in the checkpoint's ``info["config"]``.
"""

from __future__ import annotations

from typing import Any

SPLIT = "sklearn digits, stratified 25% test, seed 0"


def get_config() -> dict[str, Any]:
    """The configuration of the shipped ``depthflow/assets/digits_vit.safetensors``."""
    return {
        "seed": 0,
        "split": SPLIT,
        "architecture": {
            "img_size": 8,
            "patch_size": 2,
            "in_chans": 1,
            "embed_dim": 64,
            "depth": 12,
            "num_heads": 4,
            "mlp": "gelu",
            "mlp_hidden_dim": 256,
            "num_register_tokens": 4,
            "layerscale": True,
            "num_classes": 10,
            "head_input": "cls",
        },
        "layerscale_init": 0.01,
        "drop_path": 0.5,            # same drop probability for every block (see README)
        "epochs": 40,
        "batch_size": 32,
        "lr": 2e-3,                  # peak AdamW learning rate
        "min_lr": 1e-5,              # end of the cosine
        "warmup_epochs": 3,          # linear warmup from 0, then cosine to min_lr
        "weight_decay": 0.05,        # on matrices only (no biases, norms, tokens, gammas)
        "betas": [0.9, 0.999],
        "label_smoothing": 0.1,
        "grad_clip": 1.0,
        "translate": 0,              # random shifts of up to this many pixels (0: off; see README)
        "eval_batch_size": 512,
        "num_threads": 1,
    }
