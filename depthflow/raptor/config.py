"""Every option of a Raptor fit, in one frozen record (:class:`FitConfig`)."""

from __future__ import annotations

import dataclasses

from depthflow.errors import ConfigError
from depthflow.core.config import Options, check_choice, check_int, check_number
from depthflow.data.trajectory import resolve_device
from depthflow.raptor.model import RaptorConfig
from depthflow.raptor.schedules import TF_MODES

DTYPES = ("float32", "bfloat16")
RECIPES = ("paper", "depthflow")
STAGE1_WEIGHTINGS = ("final", "all")
# The options a recipe decides (a field left at None takes the recipe's value).
RECIPE_VALUES: dict[str, dict[str, object]] = {
    # KempnerInstitute/raptor: stage-1 runs with plain MSE except the segment ending at the
    # last layer (weighted 0.34/0.33/0.33), b2 ~ N(0, 1e-4), nn.LayerNorm's eps 1e-5,
    # PyTorch default initialisation.
    "paper": {"stage1_weighting": "final", "cond_bias_init_std": 1e-4, "norm_eps": 1e-5,
              "block_init": "pytorch"},
    # depthflow's earlier choices: every stage-1 segment weighted like stage 2, b2 = 0,
    # DINOv2's eps 1e-6, trunc-normal(0.02) initialisation.
    "depthflow": {"stage1_weighting": "all", "cond_bias_init_std": 0.0, "norm_eps": 1e-6,
                  "block_init": "trunc_normal"},
}
# Options that may change on resume without changing the result (beyond float rounding).
RESUMABLE_CHANGES = ("device", "log_every", "checkpoint_every", "eval_every", "num_threads",
                     "cache_dir", "cache_gb", "compile", "eval_batch_size", "probe_epochs",
                     "cache_dtype", "baselines", "baseline_images", "bootstrap",
                     "feature_probe_epochs")


@dataclasses.dataclass(frozen=True)
class FitConfig(Options):
    """Every option of a Raptor fit; the paper's value in brackets where it differs.

    ``recipe`` ("paper", the default, or "depthflow") decides the options left at None:
    ``stage1_weighting``, ``cond_bias_init_std``, ``norm_eps``, ``block_init`` (see
    :data:`RECIPE_VALUES`; :meth:`setting` reads the effective value). Routing: ``k`` with
    ``thresholds`` (contiguous) or ``assignment`` (one block per layer, any pattern).

    Defaults are the paper's recipe scaled for small models, so that the embedded digits ViT
    (12 blocks, width 64, 21 tokens) fits in a few CPU minutes: 400 + 400 steps instead of
    312,500, batch 32 instead of 64 (1,347 training images: 19 epochs), lr 1e-3 instead of
    3e-4 (a short run of a small model needs larger steps; 3e-4 reaches R^2 0.9 only after
    several times as many steps), warmup 3.2% of each stage (the paper's 10k of 312.5k).
    Scale ``stage1_steps``/``stage2_steps`` up and ``lr`` down towards the paper's values for
    large teachers.

    Architecture: ``k``, ``thresholds`` (k-1 values; None: max-cut on the training images),
    ``mlp``, ``mlp_hidden_dim``, ``layerscale_init``, ``depth_conditioning``,
    ``cond_hidden``, ``cond_init_std``, ``init`` ("random" as the paper, or "teacher").
    Recipe: ``stage1_steps``, ``stage2_steps``, ``batch_size`` (global), ``lr``, ``min_lr``,
    ``weight_decay``, ``betas``, ``warmup_fraction``, ``grad_clip``, ``tf_mode`` ("anneal",
    "teacher" = teacher forcing only, "autoregressive"), ``anneal_fraction``,
    ``token_weighting`` with ``cls_weight``/``register_weight``/``patch_weight``,
    ``input_noise``. Execution: ``seed``, ``device``, ``dtype`` ("bfloat16" = autocast),
    ``attention`` for training ("sdpa" fused; the fitted model is saved for any), ``compile``
    (torch.compile the blocks; pays on GPU), logging/checkpoint/eval intervals, the teacher
    cache (``cache_dir``, ``cache_gb``), ``threshold_images`` for max-cut, ``num_threads``.
    """

    _what = "fit option"
    _help = {
        "recipe": "Recipe deciding the options left unset: paper (the official code: "
                  "stage-1 plain MSE but 0.34/0.33/0.33 on the last segment, b2 ~ "
                  "N(0,1e-4), LayerNorm eps 1e-5, PyTorch init) or depthflow (every segment "
                  "0.45/0.10/0.45, b2 = 0, eps 1e-6, trunc-normal init).",
        "k": "Number of Raptor blocks.",
        "assignment": "Layer -> block routing, one 0-based block per layer, e.g. "
                      "0,0,1,1,0,... (instead of thresholds; blocks may be non-contiguous).",
        "stage1_weighting": "Stage-1 token weights: final (plain MSE except the segment "
                            "ending at the last layer, which gets the final-* weights) or "
                            "all (every segment gets the cls/register/patch weights) "
                            "(unset: the --recipe value).",
        "final_cls_weight": "Stage-1 cls weight of the segment ending at the last layer.",
        "final_register_weight": "Stage-1 register weight of the last segment.",
        "final_patch_weight": "Stage-1 patch weight of the last segment.",
        "cond_bias_init_std": "Std of the depth-conditioning bias b2 at init "
                              "(unset: the --recipe value).",
        "norm_eps": "LayerNorm epsilon of the Raptor blocks (unset: the --recipe value).",
        "block_init": "Random block init: pytorch (PyTorch defaults, official) or "
                      "trunc_normal (std 0.02) (unset: the --recipe value).",
        "thresholds": "Last layer of every phase but the final one, e.g. 7,10 for k=3 "
                      "(none: max-cut phases of the training images).",
        "mlp": "Raptor block MLP: swiglu or gelu.",
        "mlp_hidden_dim": "MLP width (none: 4 x width for SwiGLU, the teacher's for GELU).",
        "layerscale_init": "LayerScale initial value.",
        "depth_conditioning": "Depth-conditioned scales S(t) (off: autonomous blocks).",
        "cond_hidden": "Width of the depth-conditioning MLP.",
        "cond_init_std": "Std of the depth-conditioning output layer's initial weights.",
        "init": "Block init: random (paper) or teacher (a copy of a teacher layer of the "
                "phase, with the teacher's own norm eps; see --init-layer).",
        "init_layer": "Which teacher layer initialises a phase's block with --init teacher "
                      "(and the loop baseline): middle, first, last, mean (the average of "
                      "the phase's layers) or best (the layer whose repetition best "
                      "reproduces the phase on training images).",
        "baselines": "Evaluate the baseline surrogates (identity, mean_trajectory, linear, "
                     "init, loop) beside the Raptor.",
        "baseline_images": "Training images for the mean_trajectory and linear baselines, "
                           "the best init layer and the probe features.",
        "bootstrap": "Bootstrap replicates (over images) of the Raptor - best baseline "
                     "comparison.",
        "feature_probe_epochs": "Epochs of the feature-level fine-tuned probe (the third "
                                "probe readout).",
        "cache_dtype": "Teacher-cache shard dtype: float16, bfloat16 or float32 (lossless).",
        "stage1_steps": "Stage 1 steps (each block on its own segment).",
        "stage2_steps": "Stage 2 steps (all blocks chained, autoregressive).",
        "batch_size": "Global batch (split over DDP processes).",
        "lr": "Peak AdamW learning rate (paper: 3e-4).",
        "min_lr": "End of the cosine schedule.",
        "weight_decay": "AdamW weight decay.",
        "betas": "AdamW betas.",
        "warmup_fraction": "Linear warmup, as a fraction of each stage (paper: 10k of 312.5k).",
        "grad_clip": "Gradient-norm clip (per block in stage 1).",
        "tf_mode": "Stage 1 loss: anneal (teacher forcing fading to autoregressive), teacher "
                   "(teacher forcing only) or autoregressive.",
        "anneal_fraction": "Fraction of stage 1 over which teacher forcing fades to 0.",
        "token_weighting": "Weight the loss by token kind (off: one MSE over all tokens).",
        "cls_weight": "Loss weight of the cls token (stage 2; stage 1 with "
                      "--stage1-weighting all).",
        "register_weight": "Loss weight of the register tokens (as cls_weight).",
        "patch_weight": "Loss weight of the patch tokens (as cls_weight).",
        "input_noise": "Std of Gaussian noise added to the states fed to the blocks.",
        "seed": "Seed for every random path (recorded in the output).",
        "device": "Torch device: cpu, cuda, cuda:1, ...",
        "dtype": "float32, or bfloat16 (autocast: the GPU speed path).",
        "attention": "Attention kernel for training: sdpa (fused) or math.",
        "compile": "torch.compile the blocks (pays on GPU).",
        "log_every": "Steps between log lines.",
        "checkpoint_every": "Steps between resumable checkpoints.",
        "eval_every": "Steps between held-out R^2 points of the curve.",
        "eval_batch_size": "Images per evaluation batch.",
        "threshold_images": "Images used to find max-cut thresholds.",
        "cache_dir": "Cache teacher states here (a subfolder per teacher, preprocessing "
                     "and image set; bounded by --cache-gb).",
        "cache_gb": "Bound of the teacher-state cache (GB).",
        "num_threads": "CPU threads (none: torch's default).",
        "probe_epochs": "Also evaluate with the paper's fine-tuned probe: the teacher's head "
                        "fine-tuned on the frozen Raptor for N epochs (AdamW 1e-4, wd 1e-2, "
                        "random resized crops, best validation epoch); 0: frozen head only.",
    }

    recipe: str = "paper"
    k: int = 2
    thresholds: tuple[int, ...] | None = None
    assignment: tuple[int, ...] | None = None
    mlp: str = "swiglu"
    mlp_hidden_dim: int | None = None
    layerscale_init: float = 1e-5
    depth_conditioning: bool = True
    cond_hidden: int = 16
    cond_init_std: float = 1e-4
    init: str = "random"
    init_layer: str = "middle"
    stage1_steps: int = 400
    stage2_steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.032
    grad_clip: float = 1.0
    tf_mode: str = "anneal"
    anneal_fraction: float = 0.25
    token_weighting: bool = True
    cls_weight: float = 0.45
    register_weight: float = 0.10
    patch_weight: float = 0.45
    stage1_weighting: str | None = None
    final_cls_weight: float = 0.34
    final_register_weight: float = 0.33
    final_patch_weight: float = 0.33
    cond_bias_init_std: float | None = None
    norm_eps: float | None = None
    block_init: str | None = None
    input_noise: float = 0.0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    attention: str = "sdpa"
    compile: bool = False
    log_every: int = 25
    checkpoint_every: int = 200
    eval_every: int = 50
    eval_batch_size: int = 256
    threshold_images: int = 1000
    cache_dir: str | None = None
    cache_gb: float = 1.0
    num_threads: int | None = None
    probe_epochs: int = 0
    cache_dtype: str = "float16"
    baselines: bool = True
    baseline_images: int = 512
    bootstrap: int = 1000
    feature_probe_epochs: int = 30

    def validate(self) -> FitConfig:
        if self.thresholds is not None:
            try:
                self._set("thresholds", tuple(int(t) for t in self.thresholds))
            except (TypeError, ValueError):
                raise ConfigError(f"thresholds: expected comma-separated layer numbers like "
                                  f"7,10, got {self.thresholds!r}") from None
        if self.assignment is not None:
            from depthflow.raptor.model import check_assignment
            try:
                values = tuple(int(b) for b in self.assignment)
            except (TypeError, ValueError):
                raise ConfigError(f"assignment: expected comma-separated block indices like "
                                  f"0,0,1,1, got {self.assignment!r}") from None
            values = check_assignment(values, len(values))
            self._set("assignment", values)
            if self.thresholds is not None:
                raise ConfigError("give --thresholds or --assignment, not both")
            if max(values) + 1 != self.k:
                raise ConfigError(f"the assignment uses {max(values) + 1} block(s) but k="
                                  f"{self.k}; set k={max(values) + 1}")
        check_choice(self.recipe, "recipe", RECIPES)
        check_int(self.probe_epochs, "probe_epochs", minimum=0)
        check_int(self.feature_probe_epochs, "feature_probe_epochs", minimum=0)
        check_int(self.bootstrap, "bootstrap", minimum=0)
        check_int(self.baseline_images, "baseline_images")
        from depthflow.raptor.model import INIT_LAYERS
        from depthflow.raptor.teacher import CACHE_DTYPES
        check_choice(self.init_layer, "init_layer", INIT_LAYERS)
        check_choice(self.cache_dtype, "cache_dtype", CACHE_DTYPES)
        if self.stage1_weighting is not None:
            check_choice(self.stage1_weighting, "stage1_weighting", STAGE1_WEIGHTINGS)
        if self.block_init is not None:
            from depthflow.raptor.model import BLOCK_INITS
            check_choice(self.block_init, "block_init", BLOCK_INITS)
        if self.cond_bias_init_std is not None:
            check_number(self.cond_bias_init_std, "cond_bias_init_std", low=0)
        if self.norm_eps is not None:
            check_number(self.norm_eps, "norm_eps", low=0, open_low=True)
        for name in ("final_cls_weight", "final_register_weight", "final_patch_weight"):
            check_number(getattr(self, name), name, low=0)
        betas = self.betas if isinstance(self.betas, (tuple, list)) else (self.betas,)
        if len(betas) != 2:
            raise ConfigError(f"betas must be two numbers (beta1,beta2), got {len(betas)}: "
                              f"{tuple(betas)}")
        for b in betas:
            if check_number(b, "betas", low=0, high=1) >= 1:
                raise ConfigError(f"betas must lie in [0, 1), got {tuple(betas)}")
        self._set("betas", tuple(float(b) for b in betas))
        for name in ("k", "batch_size", "log_every", "checkpoint_every", "eval_every",
                     "eval_batch_size", "threshold_images", "cond_hidden"):
            check_int(getattr(self, name), name)
        if self.stage1_steps < 0 or self.stage2_steps < 0 or \
                self.stage1_steps + self.stage2_steps < 1:
            raise ConfigError(f"stage1_steps and stage2_steps must be >= 0 with at least one "
                              f"step in all, got {self.stage1_steps} and {self.stage2_steps}")
        for name in ("lr", "grad_clip"):
            check_number(getattr(self, name), name, low=0, open_low=True)
        for name in ("min_lr", "weight_decay", "input_noise", "cls_weight", "register_weight",
                     "patch_weight", "layerscale_init", "cond_init_std", "cache_gb"):
            check_number(getattr(self, name), name, low=0)
        for name in ("warmup_fraction", "anneal_fraction"):
            check_number(getattr(self, name), name, low=0, high=1)
        choices = {"tf_mode": TF_MODES, "dtype": DTYPES, "attention": ("sdpa", "math"),
                   "init": ("random", "teacher")}
        for name, allowed in choices.items():
            check_choice(getattr(self, name), name, allowed)
        if self.thresholds is not None and len(self.thresholds) != self.k - 1:
            raise ConfigError(
                f"k={self.k} needs {self.k - 1} threshold(s), got {len(self.thresholds)} "
                f"({list(self.thresholds)}); give k-1 thresholds or set k="
                f"{len(self.thresholds) + 1}")
        resolve_device(self.device)
        return self

    def setting(self, name: str):
        """The effective value of a recipe-decided option (the field, else the recipe's)."""
        value = getattr(self, name)
        return RECIPE_VALUES[self.recipe][name] if value is None else value

    def effective(self) -> dict[str, object]:
        """Every recipe-decided option with its effective value (for the records)."""
        out = {name: self.setting(name) for name in RECIPE_VALUES[self.recipe]}
        if self.block_norm_eps() is None:
            out["norm_eps"] = "teacher's"
        return out

    @property
    def routed(self) -> bool:
        """Whether the routing is known (thresholds or an assignment given, or k = 1)."""
        return self.thresholds is not None or self.assignment is not None

    def raptor_config(self) -> RaptorConfig:
        if self.assignment is not None:
            routing = {"thresholds": (), "assignment": self.assignment}
        elif self.thresholds is None:
            raise ConfigError("thresholds are not resolved yet")
        else:
            routing = {"thresholds": self.thresholds}
        return RaptorConfig(**routing, mlp=self.mlp,
                            mlp_hidden_dim=self.mlp_hidden_dim,
                            layerscale_init=self.layerscale_init,
                            depth_conditioning=self.depth_conditioning,
                            cond_hidden=self.cond_hidden, cond_init_std=self.cond_init_std,
                            cond_bias_init_std=float(self.setting("cond_bias_init_std")),
                            norm_eps=self.block_norm_eps())

    def block_norm_eps(self) -> float | None:
        """The blocks' LayerNorm eps: teacher-initialised blocks keep the teacher's own
        (None) unless ``norm_eps`` is set, so that they copy its layers exactly."""
        if self.init == "teacher" and self.norm_eps is None:
            return None
        return float(self.setting("norm_eps"))

