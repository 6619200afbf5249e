"""The plug-in protocol of ``depthflow analyze``: what an analysis sees and returns.

A plug-in (:class:`Analysis`) sees every streamed batch of trajectories (``update``),
returns its result once (``finish``: an ``xr.Dataset`` or an ``xr.DataTree`` whose root
becomes the NetCDF group named by ``group``) and draws figures from the re-opened result
(``plot``). :class:`AnalysisContext` is the one typed record handed to ``update`` and
``finish``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from depthflow.errors import InputError
from depthflow.data.tokens import cls_position, token_groups

if TYPE_CHECKING:
    import xarray as xr

    from depthflow.data.images import ImageSource
    from depthflow.models.checkpoints import LoadedModel
    from depthflow.models.preprocessing import Preprocessing
    from depthflow.data.trajectory import TrajectoryBatch

__all__ = ["TokenLayout", "AnalysisContext", "Analysis"]


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """The token sequence of a model at one input size:
    ``[cls?, distillation?, registers..., patches...]``.

    Every prefix kind may be absent (SigLIP has no cls token, most models no distillation
    token or registers); patches come last. Analyses ask :attr:`cls_index` (``None``: the
    model has no cls token, and cls-only quantities are recorded as
    :data:`depthflow.core.vocabulary.NO_CLS`).
    """

    token_kinds: tuple[str, ...]     # kind of every token position
    height: int                      # input image size (pixels)
    width: int

    def __post_init__(self) -> None:
        kinds = tuple(self.token_kinds)
        object.__setattr__(self, "token_kinds", kinds)
        cls_position(kinds)                              # at most one cls token
        if "patch" in kinds:
            first = kinds.index("patch")
            if any(k != "patch" for k in kinds[first:]):
                raise InputError("patch tokens must come last in a token layout, got "
                                 f"{list(kinds[:first + 3])}...")

    @classmethod
    def of(cls, model: Any, height: int, width: int) -> TokenLayout:
        return cls(tuple(model.token_kinds(height, width)), int(height), int(width))

    @classmethod
    def from_counts(cls, *, n_cls: int = 1, n_distillation: int = 0, n_registers: int = 0,
                    n_patches: int, height: int = 0, width: int = 0) -> TokenLayout:
        """A layout from token counts, in depthflow's order (cls, distillation, registers,
        patches)."""
        counts = {"cls": n_cls, "distillation": n_distillation, "register": n_registers,
                  "patch": n_patches}
        for kind, n in counts.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise InputError(f"number of {kind} tokens must be an integer >= 0, got {n!r}")
        kinds = [k for k, n in counts.items() for _ in range(n)]
        return cls(tuple(kinds), int(height), int(width))

    @property
    def cls_index(self) -> int | None:
        """Position of the cls token; ``None`` when the model has none."""
        return cls_position(self.token_kinds)

    @property
    def has_cls(self) -> bool:
        return self.cls_index is not None

    @property
    def distillation_index(self) -> int | None:
        """Position of DeiT's distillation token; ``None`` when absent."""
        kinds = self.token_kinds
        return kinds.index("distillation") if "distillation" in kinds else None

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the first patch (cls, distillation, registers)."""
        return self.patch_slice.start

    @property
    def groups(self) -> dict[str, torch.Tensor]:
        """Token indices of each kind present (see :func:`depthflow.data.tokens.token_groups`)."""
        return token_groups(self.token_kinds)

    @property
    def kinds(self) -> list[str]:
        return list(self.groups)

    @property
    def num_tokens(self) -> int:
        return len(self.token_kinds)

    @property
    def patch_slice(self) -> slice:
        first = next((i for i, k in enumerate(self.token_kinds) if k == "patch"),
                     len(self.token_kinds))
        return slice(first, len(self.token_kinds))


@dataclasses.dataclass
class AnalysisContext:
    """What an :class:`Analysis` plug-in sees of the run it is part of.

    ``loaded`` and ``source`` are ``None`` when the analysis runs on stored states (e.g.
    phases from a trajectory file): plug-ins then skip what needs the model.
    """

    layout: TokenLayout
    loaded: LoadedModel | None = None
    source: ImageSource | None = None
    preprocessing: Preprocessing | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    dtype: str = "float32"
    batch_size: int = 64
    seed: int = 0
    progress: bool = False
    config: Any = None               # the AnalyzeConfig of the run (None outside analyze)
    results: dict[str, Any] = dataclasses.field(default_factory=dict)   # finished plug-ins


@runtime_checkable
class Analysis(Protocol):
    """A plug-in analysis of ``depthflow analyze`` (phases, dynamics, ...).

    ``update`` sees every streamed batch (accumulate, never keep all states), ``finish``
    returns the plug-in's result as an ``xr.Dataset`` or ``xr.DataTree`` written to the
    NetCDF group ``group`` (sub-groups from the tree), and ``plot`` draws PNGs from the
    re-opened result file (an ``xr.DataTree``) into a directory.
    """

    name: str
    group: str

    def update(self, tb: TrajectoryBatch, ctx: AnalysisContext) -> None: ...

    def finish(self, ctx: AnalysisContext) -> xr.Dataset | xr.DataTree: ...

    def plot(self, tree: xr.DataTree, out_dir: Path) -> list[Path]: ...
