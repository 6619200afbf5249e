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

from depthflow.tokens import token_groups

if TYPE_CHECKING:
    import xarray as xr

    from depthflow.images import ImageSource
    from depthflow.models.checkpoints import LoadedModel
    from depthflow.models.preprocessing import Preprocessing
    from depthflow.trajectory import TrajectoryBatch

__all__ = ["TokenLayout", "AnalysisContext", "Analysis"]


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """The token sequence of a model at one input size: ``[cls, registers..., patches...]``."""

    token_kinds: tuple[str, ...]     # kind of every token position
    height: int                      # input image size (pixels)
    width: int

    @classmethod
    def of(cls, model: Any, height: int, width: int) -> TokenLayout:
        return cls(tuple(model.token_kinds(height, width)), int(height), int(width))

    @property
    def groups(self) -> dict[str, torch.Tensor]:
        """Token indices of each kind present (see :func:`depthflow.tokens.token_groups`)."""
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
