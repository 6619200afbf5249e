"""The results vocabulary: dimension names, the attribute helper and status flags.

Keep names here and nowhere else: result groups from different analyses must line up.
Every variable gets ``long_name``/``units`` from :func:`attrs`; every status variable is
an integer whose CF ``flag_values``/``flag_meanings`` come from :func:`flag_attrs`.
"""

from __future__ import annotations

import enum
from typing import Any

SAMPLE = "sample"
DEPTH = "depth"          # 0 = embedded input, 1..L = after block l
TOKEN = "token"          # token position: [cls?, distillation?, registers..., patches...]
FEATURE = "feature"
KIND = "kind"            # token-kind groups used by summaries: cls / distillation / ...
CLASS = "class"          # class labels
STEP = "step"            # depth transitions l -> l+1 (between depth l and l+1)
LOGIT = "logit"          # classifier output index
CHANNEL = "channel"
PIXEL_Y = "y"
PIXEL_X = "x"

TOKEN_KIND = "token_kind"   # coordinate on TOKEN: "cls" | "distillation" | "register" | "patch"
LABEL = "label"             # coordinate on SAMPLE: integer class label (-1 = unknown)
SAMPLE_NAME = "sample_name" # coordinate on SAMPLE: unique image name
CLASS_NAME = "class_name"   # coordinate on SAMPLE: class name of the label ("" = unknown)

TOKEN_KINDS = ("cls", "distillation", "register", "patch")   # DeiT's distillation token
NO_CLS = "not defined: this model has no cls token"   # status of cls-only quantities


# Phase structure (depthflow.phases): layer x layer matrices, segmentations, layer swaps
DEPTH_I = "depth_i"              # first depth of a depth x depth matrix (0..L)
DEPTH_J = "depth_j"              # second depth of a depth x depth matrix (0..L)
VIEW = "view"                    # token view of a similarity matrix: paper / cls / ... / all
CKA_VIEW = "cka_view"            # token views with a linear CKA matrix
SEGMENTATION = "segmentation"    # one segmentation: "maxcut_f0.2", "dp_k3", ...
SPLIT = "split"                  # accepted bisections of a max-cut segmentation, in order
NUM_PHASES = "num_phases"        # k = 1..k_max of the contiguous (DP) segmentations
SWAP_FAMILY = "swap_family"      # "same" / "different" phase donors
SWAP_TRIAL = "swap_trial"        # one random layer swap
SWAP_SLOT = "swap_slot"          # which of the (up to 3) replaced layers of a trial
STATISTIC = "statistic"          # mean / std / min / q10 / q50 / q90 / max

# dynamics (depthflow.dynamics)
SUBSAMPLE = "subsample"     # the images of a group that covers a subset of the samples
SAMPLE_INDEX = "sample_index"  # coordinate on SUBSAMPLE: global index on SAMPLE
EIG = "eig"                 # index of an eigenvalue (largest first)
LAYER = "layer"             # a selected block l (1-based) of a per-layer analysis
MODE = "mode"               # index of a singular value / tangent direction (largest first)
START = "start"             # one initial point of a fixed-point or basin search
FIXED_POINT = "fixed_point" # one unique (deduplicated) fixed point

# dynamics, part B (lyapunov, basins, recovery, the analyze plugin)
EXPONENT = "exponent"           # index of a Lyapunov exponent (1 = largest)
ITERATION = "iteration"         # iteration n of an autonomous map
FROZEN_LAYER = "frozen_layer"   # layer t of a frozen (autonomous) map
BASIN = "basin"                 # basin label: -1 = none, 0..M-1 = attractor
ATTRACTOR = "attractor"         # attractor index of a basin run
BASIN_START = "basin_start"     # one initial state of a basin run
FP_START = "fp_start"           # one start of the analyze plugin's fixed-point search
INJECT_DEPTH = "inject_depth"   # depth l0 at which a perturbation is injected
PERTURB_ANGLE = "perturb_angle" # injected angle theta (rad)
DIRECTION = "direction"         # perturbation direction: random / adversarial
DRAW = "draw"                   # random draw / singular vector index


FORMAT_VERSION = "2"        # depthflow_format_version: 2 = one NetCDF group per analysis


def attrs(long_name: str, units: str = "1", **extra: Any) -> dict[str, Any]:
    """CF attributes of a variable: ``long_name``, ``units`` and anything else given."""
    return {"long_name": long_name, "units": units, **extra}


class Status(enum.IntEnum):
    """Base of every status enum: members carry a ``message`` saying what to do."""

    @property
    def message(self) -> str:
        return type(self)._messages().get(self, self.name.lower())

    @classmethod
    def _messages(cls) -> dict[Status, str]:
        return {}

    @property
    def meaning(self) -> str:
        return self.name.lower()


def flags(status: type[enum.IntEnum]) -> dict[str, Any]:
    """CF ``flag_values``/``flag_meanings`` of an integer status enum."""
    import numpy as np

    members = list(status)
    return {"flag_values": np.array([int(m) for m in members], dtype=np.int8),
            "flag_meanings": " ".join(m.name.lower() for m in members)}


def flag_attrs(status: type[enum.IntEnum], long_name: str, **extra: Any) -> dict[str, Any]:
    """Attributes of an integer status variable: CF ``flag_values``/``flag_meanings``."""
    return attrs(long_name, "", **flags(status), **extra)
