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
