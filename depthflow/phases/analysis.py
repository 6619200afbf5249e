"""Phase structure of a ViT over depth: matrices, segmentations, metrics, layer swaps.

:class:`PhaseAnalysis` is a streaming plug-in of ``depthflow analyze`` (``update`` per batch
of trajectories, ``finish`` -> the ``phases`` group with a ``swap`` child, ``plot`` ->
heatmaps with phase boundaries); :func:`phase_tree` runs it on a model and images,
:func:`phase_tree_from_file` on the ``state`` variable of an analysis file, and
:func:`suggest_thresholds` turns the paper's segmentation into Raptor thresholds.

Segmentations run on one distance matrix over block outputs 1..L (default: the paper's
cosine distance, ``paper`` view): the paper's max-cut bisection for every fraction, and the
optimal contiguous (DP) segmentation for every k up to ``k_max``, with the selected k the
smallest whose modularity is within ``select_tolerance`` of the best (see
:mod:`depthflow.phases.segmentation`). Metrics per segmentation: mean within- and between-phase
distance, their contrast (between - within), the normalised cut (cut / total_W) and the
modularity (normalised cut in excess of a structureless matrix's).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from depthflow.core import vocabulary as D
from depthflow.analysis.context import AnalysisContext, TokenLayout
from depthflow.core.config import check_int
from depthflow.data.images import ImageSource
from depthflow.io.provenance import provenance
from depthflow.models.checkpoints import LoadedModel
from depthflow.models.preprocessing import model_preprocessing
from depthflow.data.trajectory import TrajectoryBatch, iter_trajectories
from depthflow.core.vocabulary import attrs
from depthflow.phases import segmentation as seg
from depthflow.errors import ConfigError, InputError
from depthflow.phases.config import DEFAULT_K_MAX, SEGMENT_METRICS, PhaseConfig
from depthflow.phases.datasets import (SELECTION_RULE, _merge, _VIEW_TEXT, describe_phases,
                                       segmentation_dataset, swap_dataset)
from depthflow.phases.similarity import DepthSimilarity

__all__ = ["PhaseConfig", "PhaseAnalysis", "phase_tree", "phase_tree_from_file",
           "suggest_thresholds", "describe_phases", "segmentation_dataset", "swap_dataset",
           "SELECTION_RULE", "SEGMENT_METRICS", "DEFAULT_K_MAX"]

_MATRIX_VARS = {   # result key: (variable, long name, units, view dim)
    "cosine": ("cosine_distance", "cosine distance 1 - cos between depths", "1", D.VIEW),
    "mse": ("mse", "mean squared difference between depths", "activation units^2",
            D.VIEW),
    "cka": ("cka", "linear CKA between depths (feature space, all observations)", "1",
            D.CKA_VIEW),
    "cka_debiased": ("cka_debiased",
                     "debiased minibatch linear CKA between depths (mean unbiased HSIC)",
                     "1", D.CKA_VIEW),
}
class PhaseAnalysis:
    """Streaming phase analysis: ``update`` per batch, ``finish`` once, ``plot`` after."""

    name = "phases"
    group = "phases"

    def __init__(self, config: PhaseConfig | None = None) -> None:
        self.config = config or PhaseConfig()
        self._sim: DepthSimilarity | None = None
        self.num_samples = 0

    def update(self, tb: TrajectoryBatch, ctx: AnalysisContext) -> None:
        """Add one :class:`~depthflow.data.trajectory.TrajectoryBatch` (states on any device)."""
        self.update_states(tb.states, ctx.layout.token_kinds)

    def update_states(self, states: torch.Tensor, token_kinds: Sequence[str]) -> None:
        """Add trajectories ``(B, L+1, T, D)`` with token kinds
        ``[cls?, distillation?, registers..., patches...]``."""
        self._prepare(token_kinds)
        self._sim.update(states)
        self.num_samples += states.shape[0]

    def _prepare(self, token_kinds: Sequence[str]) -> None:
        if self._sim is None:
            cfg = self.config
            self._sim = DepthSimilarity(
                token_kinds,
                views=cfg.views if {"cosine", "mse"} & set(cfg.metrics) else (),
                cka_views=cfg.cka_views if "cka" in cfg.metrics else ())

    # ------------------------------------------------------- distributed runs (sums)
    def shared_state(self) -> dict[str, torch.Tensor]:
        """What every process must share before its first batch: the CKA shifts (rank 0's
        first batch mean), so that every process adds the same float64 terms."""
        if self._sim is None:
            return {}
        return {f"{v}/{i}": acc.shift for v, accs in self._sim.cka.items()
                for i, acc in enumerate(accs) if acc.shift is not None}

    def adopt_shared_state(self, state: dict[str, torch.Tensor],
                           token_kinds: Sequence[str], device=None) -> None:
        self._prepare(token_kinds)
        for v, accs in self._sim.cka.items():
            for i, acc in enumerate(accs):
                if f"{v}/{i}" in state:
                    acc.shift = state[f"{v}/{i}"].to(device or state[f"{v}/{i}"].device)

    def sums(self) -> dict[str, object]:
        """The accumulators, all sums (reducible over processes; see
        :mod:`depthflow.core.distributed`)."""
        out: dict[str, object] = {"num_samples": self.num_samples}
        if self._sim is None:
            return out
        for v, acc in self._sim.pairwise.items():
            out.update({f"pair/{v}/cosine": acc.cosine, f"pair/{v}/mse": acc.mse,
                        f"pair/{v}/count": acc.count})
        for v, accs in self._sim.cka.items():
            for i, acc in enumerate(accs):
                out.update({f"cka/{v}/{i}/{k}": getattr(acc, k)
                            for k in ("cross", "total", "hsic", "count", "batches")})
        return out

    def load_sums(self, sums: dict[str, object], token_kinds: Sequence[str]) -> None:
        """Replace the accumulators by ``sums`` (e.g. reduced over processes)."""
        self._prepare(token_kinds)
        self.num_samples = int(sums["num_samples"])
        shapes = [t.shape[-1] for k, t in sums.items()
                  if isinstance(t, torch.Tensor) and k.endswith(("/cosine", "/hsic"))]
        if self._sim.depths is None and shapes:
            self._sim.depths = int(shapes[0])
        for v, acc in self._sim.pairwise.items():
            acc.cosine, acc.mse = sums[f"pair/{v}/cosine"], sums[f"pair/{v}/mse"]
            acc.count = int(sums[f"pair/{v}/count"])
        for v, accs in self._sim.cka.items():
            for i, acc in enumerate(accs):
                for k in ("cross", "total", "hsic"):
                    setattr(acc, k, sums[f"cka/{v}/{i}/{k}"])
                acc.count = int(sums[f"cka/{v}/{i}/count"])
                acc.batches = int(sums[f"cka/{v}/{i}/batches"])

    # ------------------------------------------------------------------------ finish
    def finish(self, ctx: AnalysisContext) -> xr.DataTree:
        """Matrices, segmentations and metrics (the ``phases`` node) and, with a model, the
        layer-swap test (its ``swap`` child)."""
        if self._sim is None:
            raise InputError("the phase analysis saw no trajectories")
        cfg = self.config
        result = self._sim.result()
        depths = self._sim.depths
        ds = xr.Dataset(coords={D.DEPTH_I: (D.DEPTH_I, np.arange(depths), attrs(
            "first depth (0 = embedded input, l = after block l)")), D.DEPTH_J: (
            D.DEPTH_J, np.arange(depths), attrs("second depth"))})
        for key, (name, text, units, view_dim) in _MATRIX_VARS.items():
            views = result.get(key, {})
            if not views or (key == "mse" and "mse" not in cfg.metrics) or (
                    key == "cosine" and "cosine" not in cfg.metrics):
                continue
            ds[name] = xr.DataArray(
                np.stack([views[v].numpy() for v in views]), dims=(view_dim, D.DEPTH_I, D.DEPTH_J),
                coords={view_dim: (view_dim, list(views), attrs("token view", "",
                                                                  description=_VIEW_TEXT))},
                attrs=attrs(text, units))
        distance = self._segment_matrix(result)
        ds = _merge(ds, segmentation_dataset(distance, cfg))
        matrix_var = _MATRIX_VARS[cfg.segment_metric][0]
        ds["phase"].attrs.update(
            matrix=matrix_var, view=cfg.segment_view,
            distance=f"1 - {matrix_var}" if cfg.segment_metric.startswith("cka") else matrix_var)
        ds.attrs["config"] = cfg.to_json()
        ds.attrs["num_samples"] = self.num_samples
        ds.attrs["paper_view"] = ("mean patch token only: this model has no cls token"
                                  if self._sim.cls_index is None else
                                  "cls token and mean patch token, metrics averaged")
        if self._sim.not_defined:
            ds.attrs["views_not_defined"] = "; ".join(
                f"{view}: {why}" for view, why in self._sim.not_defined.items())
        if not (cfg.swap_trials and ctx.loaded is not None and ctx.source is not None):
            ds.attrs["swap_skipped"] = ("swap_trials=0" if not cfg.swap_trials else
                                        "no model or images to run the layer-swap test")
            return xr.DataTree(ds)
        return xr.DataTree(ds, children={"swap": xr.DataTree(self._swap(ds, ctx))})

    def _segment_matrix(self, result) -> np.ndarray:
        cfg = self.config
        if cfg.segment_view not in result[cfg.segment_metric]:
            why = self._sim.not_defined.get(cfg.segment_view, "not computed")
            raise ConfigError(f"segment_view={cfg.segment_view!r} is {why}; segment on "
                              "segment_view=paper (the mean patch token for such models)")
        matrix = result[cfg.segment_metric][cfg.segment_view].numpy()[1:, 1:]  # blocks 1..L
        if cfg.segment_metric.startswith("cka"):
            matrix = 1.0 - matrix
        return matrix

    def _swap(self, ds, ctx) -> Any:
        cfg = self.config
        k_avail = [int(k) for k in ds[D.NUM_PHASES].values]
        want = cfg.swap_k or max(2, int(ds["selected_k"]))
        if want not in k_avail:
            return xr.Dataset(attrs={"skipped": f"no contiguous segmentation with "
                                                f"k={want} (have k in {k_avail})"})
        name = f"dp_k{want}"
        labels = ds["phase"].sel({D.SEGMENTATION: name}).values
        seed = cfg.seed if cfg.seed is not None else ctx.seed
        images = ctx.source.head(cfg.swap_samples)
        batches = images.batches(ctx.batch_size, preprocessing=ctx.preprocessing)
        return swap_dataset(ctx.loaded.model, batches, labels, trials=cfg.swap_trials,
                            max_layers=cfg.swap_max_layers, seed=seed, device=ctx.device,
                            dtype=ctx.dtype, segmentation=name, progress=ctx.progress,
                            total=len(images))

    def plot(self, tree: xr.DataTree, out_dir: Path) -> list[Path]:
        """Heatmaps with phase boundaries (and the swap results) as PNGs in ``out_dir``."""
        from depthflow.plots.phases import plot_phases

        return plot_phases(tree[self.group], out_dir)


# ----------------------------------------------------------------------- entry points
def phase_tree(loaded: LoadedModel, source: ImageSource, *, config: PhaseConfig | None = None,
               batch_size: int = 64, device: Any = "cpu", dtype: str = "float32",
               seed: int = 0, progress: bool = False, workers: int = 0) -> xr.DataTree | None:
    """Stream ``source`` through ``loaded``; return a tree whose ``phases`` group holds the
    matrices and segmentations (and ``phases/swap`` the layer-swap test), with provenance
    at the root. Under ``torchrun`` the images are sharded over the processes and rank 0
    gets the tree, the other ranks ``None`` (:func:`depthflow.analysis.run.stream_analyses`)."""
    from depthflow.analysis.run import stream_analyses

    analysis = PhaseAnalysis(config)
    check_int(batch_size, "batch_size")
    if len(source) == 0:
        raise InputError("no images to analyse")
    ctx = stream_analyses(loaded, source, [analysis], batch_size=batch_size, device=device,
                          dtype=dtype, seed=seed, progress=progress, workers=workers)
    if ctx is None:                   # a rank > 0 of a distributed run: rank 0 has it all
        return None
    tree = xr.DataTree(children={analysis.group: analysis.finish(ctx)})
    tree.attrs = provenance(config=analysis.config.to_dict(), extra={
        "title": f"depthflow phases of {Path(str(loaded.source)).name}",
        **loaded.provenance(), "images": source.describe(), "num_samples": len(source),
        "depthflow_format_version": D.FORMAT_VERSION})
    return tree


def phase_tree_from_file(path: str | os.PathLike[str], *, config: PhaseConfig | None = None,
                         batch_size: int = 64) -> xr.DataTree:
    """Phase matrices and segmentations from an analysis file holding ``state``
    (``depthflow analyze --states all``); no layer-swap test (no model)."""
    import netCDF4

    p = Path(path)
    if not p.is_file():
        raise InputError(f"trajectory file {str(p)!r} not found")
    try:
        nc = netCDF4.Dataset(p)
    except OSError as exc:
        raise InputError(f"{str(p)!r} is not a readable NetCDF file: {exc}") from exc
    with nc:
        if "state" not in nc.variables or D.TOKEN_KIND not in nc.variables:
            raise InputError(f"{str(p)!r} has no 'state' variable; rerun depthflow analyze "
                             "with --states all (or give a checkpoint instead)")
        kinds = [str(k) for k in nc.variables[D.TOKEN_KIND][:]]
        state = nc.variables["state"]
        analysis = PhaseAnalysis(config)
        n = state.shape[0]
        if n == 0:
            raise InputError(f"{str(p)!r} holds no samples")
        for start in range(0, n, batch_size):
            chunk = np.asarray(state[start:start + batch_size], dtype=np.float32)
            analysis.update_states(torch.from_numpy(chunk), kinds)
        layout = TokenLayout(tuple(kinds), 0, 0)
        tree = xr.DataTree(children={analysis.group: analysis.finish(AnalysisContext(layout))})
        tree.attrs = provenance(config=analysis.config.to_dict(), extra={
            "title": f"depthflow phases of {p.name}", "trajectory_file": str(p),
            "checkpoint": getattr(nc, "checkpoint", ""),
            "depthflow_format_version": D.FORMAT_VERSION})
    return tree


def suggest_thresholds(loaded: LoadedModel, source: ImageSource, *, k: int = 2,
                       limit: int | None = 1024, batch_size: int = 64, device: str = "cpu",
                       progress: bool = False) -> list[int]:
    """Raptor thresholds for ``k`` phases from the paper's cosine distance on ``source``.

    The paper's max-cut bisection at the largest fraction that gives exactly ``k``
    contiguous phases, else the optimal contiguous DP segmentation into ``k`` phases
    (phases of at least 2 blocks when they fit). Reads at most ``limit`` images.
    """
    depth = loaded.config.depth
    check_int(k, "k")
    if k > depth:
        raise ConfigError(f"k={k} is larger than the number of layers ({depth})")
    if k == 1:
        return []
    check_int(limit, "limit", optional=True)
    analysis = PhaseAnalysis(PhaseConfig(metrics=("cosine",), views=("paper",),
                                         swap_trials=0))
    if len(source) == 0:
        raise InputError("no images to segment")
    stream = iter_trajectories(loaded.model, source.head(limit),
                               preprocessing=model_preprocessing(loaded),
                               batch_size=batch_size, device=device, progress=progress)
    for tb in stream:
        h, w = tb.batch.images.shape[-2:]
        analysis.update_states(tb.states, loaded.model.token_kinds(h, w))
    matrix = analysis._segment_matrix(analysis._sim.result())
    min_size = 2 if 2 * k <= depth else 1
    return seg.segment_into(matrix, k, min_size=min_size).thresholds or []
