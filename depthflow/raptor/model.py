"""The Raptor block and the block-recurrent surrogate (docs/methods.md).

A :class:`Raptor` has ``k`` blocks ``B_1..B_k``; block ``j`` produces the teacher layers of
segment ``j``, i.e. it is applied ``n_j`` times with ``sum n_j = L``. The routing comes from
thresholds: ``[7]`` on 12 layers gives counts ``(7, 5)`` (block 0 makes layers 1-7, block 1
layers 8-12). The surrogate reuses the teacher's patch embedding, cls/register tokens,
position embedding, final norm and head (frozen), so it exposes the same depth interface as
:class:`depthflow.models.vit.ViT`: ``embed``, ``step(layer, state)``, ``rollout``, ``iter_states``,
``trajectory``, ``readout``. ``step`` is a pure function of a ``(..., T, D)`` state, so
``torch.func.jvp``/``vjp``/``vmap`` apply in math attention.

Every ingredient of the recipe has a switch (:class:`RaptorConfig`) so that the paper's
ablation ladder can be run: MLP kind, LayerScale, depth conditioning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from depthflow.errors import ConfigError
from depthflow.core.config import Options, check_choice, check_int, check_number
from depthflow.models.vit import MLP_KINDS, Block, ViT, ViTConfig
from depthflow.phases.segmentation import check_thresholds, counts_from_thresholds

ROUTINGS = ("thresholds", "assignment")
BLOCK_INITS = ("pytorch", "trunc_normal")


def check_assignment(assignment: Sequence[int], depth: int, *,
                     k: int | None = None) -> tuple[int, ...]:
    """Validate a layer -> block assignment: one 0-based block per layer 1..depth, every
    block 0..k-1 used (blocks numbered by their first layer is not required)."""
    try:
        values = tuple(int(b) for b in assignment)
    except (TypeError, ValueError):
        raise ConfigError(f"assignment must be block indices, got {assignment!r}") from None
    if any(isinstance(b, bool) for b in assignment) or \
            any(float(a) != v for a, v in zip(assignment, values)):
        raise ConfigError(f"assignment must be integer block indices, got {list(assignment)}")
    if len(values) != depth:
        raise ConfigError(f"assignment needs one block per layer ({depth}), got "
                          f"{len(values)}: {list(values)}")
    used = sorted(set(values))
    if used != list(range(len(used))):
        raise ConfigError(f"assignment must use every block 0..k-1 (no gaps, no negatives), "
                          f"got blocks {used}")
    if k is not None and len(used) != k:
        raise ConfigError(f"k={k} but the assignment uses {len(used)} block(s): "
                          f"{list(values)}")
    return values


def assignment_from_thresholds(thresholds: Sequence[int], depth: int) -> tuple[int, ...]:
    """``[7], 12 -> (0,)*7 + (1,)*5``: the contiguous special case."""
    counts = counts_from_thresholds(thresholds, depth)
    return tuple(j for j, n in enumerate(counts) for _ in range(n))


def runs_of(assignment: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive layers routed to one block, as ``(block, start, stop)``
    depths (the run maps the state at depth ``start`` to the state at ``stop``).

    ``(0, 0, 1, 1, 0) -> [(0, 0, 2), (1, 2, 4), (0, 4, 5)]``.
    """
    runs: list[tuple[int, int, int]] = []
    for layer, block in enumerate(assignment, start=1):
        if runs and runs[-1][0] == block and runs[-1][2] == layer - 1:
            runs[-1] = (block, runs[-1][1], layer)
        else:
            runs.append((int(block), layer - 1, layer))
    return runs



@dataclasses.dataclass(frozen=True)
class RaptorConfig(Options):
    """Architecture of a Raptor surrogate (everything but the teacher's own config).

    Parameters
    ----------
    thresholds
        Last teacher layer of every segment but the final one (``k - 1`` values).
    assignment
        Optional layer -> block routing, one 0-based block index per teacher layer
        (``routing="assignment"``); thresholds are its contiguous special case. Blocks may
        own non-contiguous layers (see :func:`runs_of` and docs/methods.md for how stage 1
        trains them). When given, ``thresholds`` must be ``()``.
    mlp
        ``"swiglu"`` (every released Raptor: ``Linear D -> 2H``, ``silu(x1) * x2``,
        ``Linear H -> D``) or ``"gelu"``.
    mlp_hidden_dim
        MLP width H; ``None`` means ``4 D`` for SwiGLU (the paper's) and the teacher's width
        for GELU.
    layerscale, layerscale_init
        LayerScale on both residual branches, initialised to ``layerscale_init`` (1e-5).
    depth_conditioning
        ``S = W2 silu(W1 t + b1) + b2 + 1`` with ``t`` the raw target-layer index, split
        into ``(s1, s2, s3)``: ``x += s1 ls1(attn)``, ``x += s2 ls2(mlp)``, ``out = s3 x``.
        Off: ``S = 1`` (an autonomous block).
    cond_hidden, cond_init_std, cond_bias_init_std
        Width of ``W1`` (16), the standard deviation of ``W2``'s init (1e-4) and of ``b2``'s
        (1e-4 in the official code; 0 gives ``b2 = 0``).
    norm_eps
        LayerNorm epsilon of the blocks (None: the teacher's; the official code uses
        PyTorch's 1e-5).
    """

    _what = "Raptor config"

    thresholds: tuple[int, ...]
    mlp: str = "swiglu"
    mlp_hidden_dim: int | None = None
    layerscale: bool = True
    layerscale_init: float = 1e-5
    depth_conditioning: bool = True
    cond_hidden: int = 16
    cond_init_std: float = 1e-4
    routing: str = "thresholds"
    cond_bias_init_std: float = 0.0
    norm_eps: float | None = None
    assignment: tuple[int, ...] | None = None

    def validate(self) -> RaptorConfig:
        self._set("thresholds", tuple(int(t) for t in self.thresholds))
        if self.assignment is not None:
            if self.thresholds:
                raise ConfigError("give thresholds or an assignment, not both")
            values = check_assignment(self.assignment, len(self.assignment))
            self._set("assignment", values)
            self._set("routing", "assignment")
        elif self.routing == "assignment":
            raise ConfigError("routing='assignment' needs an assignment")
        check_number(self.cond_bias_init_std, "RaptorConfig.cond_bias_init_std", low=0)
        if self.norm_eps is not None:
            check_number(self.norm_eps, "RaptorConfig.norm_eps", low=0, open_low=True)
        check_choice(self.mlp, "RaptorConfig.mlp", MLP_KINDS)
        check_int(self.mlp_hidden_dim, "RaptorConfig.mlp_hidden_dim", optional=True)
        check_int(self.cond_hidden, "RaptorConfig.cond_hidden")
        check_number(self.cond_init_std, "RaptorConfig.cond_init_std", low=0)
        check_number(self.layerscale_init, "RaptorConfig.layerscale_init", low=0)
        check_choice(self.routing, "RaptorConfig.routing", ROUTINGS)
        return self

    @property
    def k(self) -> int:
        if self.assignment is not None:
            return max(self.assignment) + 1
        return len(self.thresholds) + 1

    def layer_assignment(self, depth: int) -> tuple[int, ...]:
        """The 0-based block of every layer 1..depth."""
        if self.assignment is not None:
            return check_assignment(self.assignment, depth)
        return assignment_from_thresholds(self.thresholds, depth)

    def block_config(self, teacher: ViTConfig) -> ViTConfig:
        """The ViTConfig of one Raptor block (teacher width, heads and biases)."""
        hidden = self.mlp_hidden_dim
        if hidden is None:
            hidden = 4 * teacher.embed_dim if self.mlp == "swiglu" else teacher.mlp_hidden_dim
        eps = teacher.norm_eps if self.norm_eps is None else self.norm_eps
        return teacher.replace(mlp=self.mlp, mlp_hidden_dim=hidden, layerscale=self.layerscale,
                               norm_eps=eps)



class DepthScale(nn.Module):
    """``S(t) = W2 silu(W1 t + b1) + b2 + 1``, split into three ``(D,)`` scales."""

    def __init__(self, dim: int, *, hidden: int = 16, init_std: float = 1e-4,
                 bias_init_std: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, hidden)
        self.fc2 = nn.Linear(hidden, 3 * dim)
        with torch.no_grad():
            self.fc2.weight.normal_(0.0, init_std)
            if bias_init_std > 0:
                self.fc2.bias.normal_(0.0, bias_init_std)
            else:
                self.fc2.bias.zero_()

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``t``: raw layer indices of shape ``(...,)``; returns three ``(..., 1, D)``."""
        s = self.fc2(F.silu(self.fc1(t[..., None]))) + 1.0      # (..., 3D)
        s1, s2, s3 = s[..., None, :].chunk(3, dim=-1)          # (..., 1, D) each
        return s1, s2, s3


class RaptorBlock(Block):
    """A pre-LN ViT block with optional depth conditioning.

    Parameter names are the teacher's (``attn.qkv.weight``, ``ls1.gamma``...), plus
    ``scale.fc1/fc2`` for the conditioning, so a teacher block loads into it directly.
    """

    def __init__(self, cfg: ViTConfig, *, layerscale_init: float = 1e-5,
                 depth_conditioning: bool = True, cond_hidden: int = 16,
                 cond_init_std: float = 1e-4, cond_bias_init_std: float = 0.0) -> None:
        super().__init__(cfg)
        if cfg.layerscale:
            with torch.no_grad():
                self.ls1.gamma.fill_(layerscale_init)
                self.ls2.gamma.fill_(layerscale_init)
        self.scale = (DepthScale(cfg.embed_dim, hidden=cond_hidden, init_std=cond_init_std,
                                 bias_init_std=cond_bias_init_std)
                      if depth_conditioning else None)

    def forward(self, x: Tensor, t: Tensor | float | None = None,  # type: ignore[override]
                attention: str | None = None) -> Tensor:
        """One application at target layer ``t`` (scalar, or ``(B,)`` per sample)."""
        impl = attention or self.attention
        attn = self.ls1(self.attn(self.norm1(x), impl))
        if self.scale is None or t is None:
            x = x + attn
            return x + self.ls2(self.mlp(self.norm2(x)))
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 1:                                 # per-sample layer index (B,)
            t = t.reshape(t.shape + (1,) * (x.ndim - 3))
        s1, s2, s3 = self.scale(t)
        x = x + s1 * attn
        x = x + s2 * self.ls2(self.mlp(self.norm2(x)))
        return s3 * x


class Raptor(ViT):
    """A block-recurrent surrogate of a ViT teacher: ``k`` blocks over ``L`` layers.

    ``cfg`` is the teacher's :class:`~depthflow.models.vit.ViTConfig` (``depth = L``) and
    ``raptor_cfg`` the :class:`RaptorConfig`. ``blocks`` holds the ``k`` Raptor blocks;
    :meth:`block_for` gives the block that makes a layer, and ``step(layer, state)``
    applies it with depth conditioning ``t = layer``. The embedding, final norm and head are
    the teacher's (load them with :meth:`adopt_teacher`; they are frozen).
    """

    def __init__(self, cfg: ViTConfig, raptor_cfg: RaptorConfig) -> None:
        super().__init__(cfg.replace(depth=1))          # embedding, norm, head (+1 spare block)
        self.cfg = cfg
        self.raptor_cfg = raptor_cfg
        self._route = list(raptor_cfg.layer_assignment(cfg.depth))
        self.counts = tuple(self._route.count(j) for j in range(raptor_cfg.k))
        block_cfg = raptor_cfg.block_config(cfg)
        self.blocks = nn.ModuleList(
            RaptorBlock(block_cfg, layerscale_init=raptor_cfg.layerscale_init,
                        depth_conditioning=raptor_cfg.depth_conditioning,
                        cond_hidden=raptor_cfg.cond_hidden,
                        cond_init_std=raptor_cfg.cond_init_std,
                        cond_bias_init_std=raptor_cfg.cond_bias_init_std)
            for _ in range(raptor_cfg.k))
        for p in self.teacher_parameters():
            p.requires_grad_(False)

    # ----------------------------------------------------------------- routing
    @property
    def k(self) -> int:
        return self.raptor_cfg.k

    def block_for(self, layer: int) -> int:
        """0-based index of the block that produces teacher layer ``layer`` (1-based).

        With thresholds ``[7]`` on 12 layers, layers 1-7 -> 0 and 8-12 -> 1.
        """
        if not 1 <= layer <= self.cfg.depth:
            raise ConfigError(f"layer must be in 1..{self.cfg.depth}, got {layer}")
        return self._route[layer - 1]

    @property
    def assignment(self) -> tuple[int, ...]:
        """The 0-based block of every layer 1..L."""
        return tuple(self._route)

    @property
    def contiguous(self) -> bool:
        return len(self.runs()) == self.k

    def segments(self) -> list[tuple[int, int]]:
        """``(start, stop)`` depths of every block: block j maps depth start -> stop
        (contiguous routing only; see :meth:`runs` for the general case)."""
        if not self.contiguous:
            raise ConfigError("segments() needs a contiguous routing; use runs()")
        return [(start, stop) for _, start, stop in self.runs()]

    def runs(self) -> list[tuple[int, int, int]]:
        """Maximal runs ``(block, start, stop)`` of consecutive layers of one block."""
        return runs_of(self._route)

    # ----------------------------------------------------------------- parameters
    def teacher_parameters(self) -> Iterator[nn.Parameter]:
        """The reused (frozen) teacher parameters: embedding, tokens, norm, head."""
        for name, p in self.named_parameters():
            if not name.startswith("blocks."):
                yield p

    def block_parameters(self) -> Iterator[nn.Parameter]:
        return self.blocks.parameters()

    @torch.no_grad()
    def adopt_teacher(self, teacher: ViT) -> Raptor:
        """Copy the teacher's embedding, tokens, position embedding, final norm and head."""
        if teacher.cfg != self.cfg:
            raise ConfigError("adopt_teacher: the teacher's ViTConfig differs from the "
                              "Raptor's; build the Raptor with Raptor(teacher.cfg, ...)")
        own = {k: v for k, v in teacher.state_dict().items() if not k.startswith("blocks.")}
        missing, unexpected = self.load_state_dict(own, strict=False)
        if unexpected or any(not k.startswith("blocks.") for k in missing):
            raise ConfigError(f"adopt_teacher: unexpected {unexpected}, missing {missing}")
        return self

    @torch.no_grad()
    def init_blocks_from_teacher(self, teacher: ViT, layers: Sequence[int]) -> Raptor:
        """Initialise block j with teacher block ``layers[j]`` (1-based); conditioning = 1.

        Needs the same block architecture as the teacher (MLP kind and width, LayerScale).
        With ``k = L`` and ``layers = 1..L`` the surrogate reproduces the teacher exactly.
        """
        if len(layers) != self.k:
            raise ConfigError(f"need one teacher layer per block ({self.k}), got {len(layers)}")
        for block, layer in zip(self.blocks, layers):
            if isinstance(layer, (list, tuple)):       # the average of several layers
                dicts = [teacher.blocks[int(i) - 1].state_dict() for i in layer]
                source = {k: torch.stack([d[k] for d in dicts]).mean(dim=0) for k in dicts[0]}
            else:
                source = teacher.blocks[int(layer) - 1].state_dict()
            missing, unexpected = block.load_state_dict(source, strict=False)
            if unexpected or any(not k.startswith("scale.") for k in missing):
                raise ConfigError(
                    "init_blocks_from_teacher: the Raptor block architecture differs from the "
                    f"teacher's (missing {missing[:3]}, unexpected {unexpected[:3]}); use the "
                    "teacher's MLP kind, width and LayerScale")
            if block.scale is not None:                # S = 1 exactly
                block.scale.fc2.weight.zero_()
                block.scale.fc2.bias.zero_()
        return self

    # ----------------------------------------------------------------- depth interface
    def step(self, layer: int, state: Tensor, *, attention: str | None = None) -> Tensor:
        """Apply the block routed to ``layer`` (1-based) with conditioning ``t = layer``
        (``attention`` overrides the model's setting for this call only)."""
        return self.blocks[self.block_for(layer)](state, float(layer), attention)

    def rollout(self, state: Tensor, *, start: int = 0, stop: int | None = None) -> Tensor:
        stop = self.cfg.depth if stop is None else stop
        if not 0 <= start <= stop <= self.cfg.depth:
            raise ConfigError(f"need 0 <= start <= stop <= {self.cfg.depth}, got {start}, {stop}")
        for layer in range(start + 1, stop + 1):
            state = self.step(layer, state)
        return state

    def iter_states(self, images: Tensor) -> Iterator[tuple[int, Tensor]]:
        state = self.embed(images)
        yield 0, state
        for layer in range(1, self.cfg.depth + 1):
            state = self.step(layer, state)
            yield layer, state

    def set_drop_path(self, rate: float) -> Raptor:
        raise ConfigError("a Raptor surrogate has no stochastic depth")

    def extra_repr(self) -> str:
        return f"k={self.k}, counts={self.counts}, teacher_depth={self.cfg.depth}"


def build_raptor(teacher: ViT, raptor_cfg: RaptorConfig, *, seed: int = 0,
                 init: str = "random", block_init: str = "trunc_normal",
                 init_layer: str = "middle", states: Tensor | None = None) -> Raptor:
    """A fresh Raptor for ``teacher``: random blocks (seeded) or ``init="teacher"``: block j
    starts as a copy of one of its teacher layers (``init_layer``: ``"middle"``, ``"first"``,
    ``"last"``, ``"best"`` = the layer whose repetition over the phase best reproduces the
    teacher ``states`` of training images, see
    :func:`depthflow.raptor.surrogates.best_loop_layers`) or the average of their weights
    (``"mean"``), with the teacher's own norm eps when ``raptor_cfg.norm_eps`` is None.

    ``block_init`` for random blocks: ``"pytorch"`` (the official code: PyTorch's default
    ``nn.Linear`` init, the attention input projection Xavier-uniform with zero bias and a
    zero output-projection bias, as ``nn.MultiheadAttention`` does) or ``"trunc_normal"``
    (std 0.02, zero biases, as DINOv2/timm).
    """
    if raptor_cfg.assignment is None:
        check_thresholds(raptor_cfg.thresholds, teacher.cfg.depth)
    else:
        check_assignment(raptor_cfg.assignment, teacher.cfg.depth)
    check_choice(block_init, "block_init", BLOCK_INITS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        raptor = Raptor(teacher.cfg, raptor_cfg)
        if block_init == "pytorch":
            _pytorch_init(raptor, layerscale_init=raptor_cfg.layerscale_init)
    if block_init == "trunc_normal":
        _init_blocks(raptor, seed=seed, layerscale_init=raptor_cfg.layerscale_init)
    raptor.adopt_teacher(teacher)
    if init == "teacher":
        raptor.init_blocks_from_teacher(
            teacher, teacher_init_layers(teacher, raptor.assignment, init_layer, states))
    elif init != "random":
        raise ConfigError(f"init must be 'random' or 'teacher', got {init!r}")
    return raptor.to(next(teacher.parameters()).dtype)


INIT_LAYERS = ("middle", "first", "last", "mean", "best")


def phase_layers(assignment: Sequence[int]) -> list[list[int]]:
    """The 1-based teacher layers of every block."""
    k = max(assignment) + 1
    return [[layer for layer, b in enumerate(assignment, 1) if b == j] for j in range(k)]


def middle_layers(assignment: Sequence[int]) -> list[int]:
    """The middle teacher layer of every block (the upper one of an even count)."""
    return [layers[len(layers) // 2] for layers in phase_layers(assignment)]


@torch.no_grad()
def best_loop_layers(teacher, assignment: Sequence[int], states: Tensor) -> list[int]:
    """Per block, the teacher layer whose repetition over the block's layers (rolled out
    from the teacher's state before each run) has the smallest squared error on ``states``
    (teacher states of training images): the ``best`` teacher initialisation."""
    chosen = []
    runs = runs_of(assignment)
    for j, layers in enumerate(phase_layers(assignment)):
        errors = []
        for candidate in layers:
            err = 0.0
            for block, start, stop in runs:
                if block != j:
                    continue
                x = states[:, start]
                for layer in range(start + 1, stop + 1):
                    x = teacher.step(candidate, x)
                    err += float((x - states[:, layer]).double().square().mean())
            errors.append(err if math.isfinite(err) else math.inf)
        chosen.append(layers[int(np.argmin(errors))])
    return chosen


def teacher_init_layers(teacher: ViT, assignment: Sequence[int], mode: str = "middle",
                        states: Tensor | None = None) -> list:
    """The teacher layer (1-based) initialising every block, or a list of layers whose
    weights are averaged (``"mean"``)."""
    check_choice(mode, "init_layer", INIT_LAYERS)
    phases = phase_layers(assignment)
    if mode == "best":
        if states is None:
            raise ConfigError("init_layer 'best' needs teacher states of training images")
        return best_loop_layers(teacher, assignment, states)
    if mode == "mean":
        return [list(layers) for layers in phases]
    pick = {"middle": lambda ls: ls[len(ls) // 2], "first": lambda ls: ls[0],
            "last": lambda ls: ls[-1]}[mode]
    return [pick(layers) for layers in phases]


@torch.no_grad()
def _pytorch_init(raptor: Raptor, *, layerscale_init: float) -> None:
    """The official blocks' initialisation (modules built under the caller's seed keep
    PyTorch's defaults; the attention projections get ``nn.MultiheadAttention``'s)."""
    for block in raptor.blocks:
        nn.init.xavier_uniform_(block.attn.qkv.weight)
        for linear in (block.attn.qkv, block.attn.proj):
            if linear.bias is not None:
                linear.bias.zero_()
        if hasattr(block, "ls1") and hasattr(block.ls1, "gamma"):
            block.ls1.gamma.fill_(layerscale_init)
            block.ls2.gamma.fill_(layerscale_init)


@torch.no_grad()
def _init_blocks(raptor: Raptor, *, seed: int, layerscale_init: float) -> None:
    """Truncated normal (std 0.02) matrices, zero biases, unit norms, as DINOv2/timm."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in raptor.blocks.named_parameters():
        if name.endswith("gamma"):
            p.fill_(layerscale_init)
        elif ".scale." in name:
            continue                                    # DepthScale keeps its own init
        elif ".norm" in name:
            p.fill_(1.0 if name.endswith("weight") else 0.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.copy_((torch.randn(p.shape, generator=gen) * 0.02).clamp_(-0.04, 0.04))
