"""Dimension, coordinate and attribute names shared by every depthflow Dataset.

Keep names here and nowhere else: result files from different analyses must line up.
"""

SAMPLE = "sample"
DEPTH = "depth"          # 0 = embedded input, 1..L = after block l
TOKEN = "token"          # token position: [cls, registers..., patches...]
FEATURE = "feature"
KIND = "kind"            # token-kind groups used by summaries: cls / register / patch
CLASS = "class"          # class labels
STEP = "step"            # depth transitions l -> l+1 (between depth l and l+1)
LOGIT = "logit"          # classifier output index
CHANNEL = "channel"
PIXEL_Y = "y"
PIXEL_X = "x"

TOKEN_KIND = "token_kind"   # coordinate on TOKEN: "cls" | "register" | "patch"
LABEL = "label"             # coordinate on SAMPLE: integer class label (-1 = unknown)

TOKEN_KINDS = ("cls", "register", "patch")

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
DYN_SAMPLE = "dyn_sample"   # a trajectory kept for the dynamics analyses (index on SAMPLE)
EIG = "eig"                 # index of an eigenvalue (largest first)
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
