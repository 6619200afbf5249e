"""Phase structure of a ViT over depth: matrices, segmentations, metrics, layer swaps.

:class:`PhaseAnalysis` is a streaming plugin for ``depthflow analyze`` (``update`` per batch
of trajectories, ``finish`` -> an ``xr.Dataset`` of ``phase_*`` / ``swap_*`` variables,
``plot`` -> heatmaps with phase boundaries); :func:`phase_dataset` runs it on a model and
images, :func:`phase_dataset_from_file` on the ``state`` variable of an analysis file, and
:func:`suggest_thresholds` turns the paper's segmentation into Raptor thresholds.

Segmentations run on one distance matrix over block outputs 1..L (default: the paper's
cosine distance, ``paper`` view): the paper's max-cut bisection for every fraction, and the
optimal contiguous (DP) segmentation for every k up to ``k_max``, with the selected k the
smallest whose modularity is within ``select_tolerance`` of the best (see
:mod:`depthflow.segmentation`). Metrics per segmentation: mean within- and between-phase
distance, their contrast (between - within), the normalised cut (cut / total_W) and the
modularity (normalised cut in excess of a structureless matrix's).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import dims as D
from . import segmentation as seg
from . import swap
from .errors import ConfigError, InputError
from .phase_data import (DEFAULT_K_MAX, SELECTION_RULE, _attrs, _merge, _VIEW_TEXT,
                         describe_phases, segmentation_dataset, swap_dataset)
from .similarity import VIEWS, DepthSimilarity, check_views

__all__ = ["PhaseConfig", "PhaseAnalysis", "phase_dataset", "phase_dataset_from_file",
           "suggest_thresholds", "run_phases", "describe_phases", "segmentation_dataset",
           "swap_dataset", "SELECTION_RULE"]

SEGMENT_METRICS = ("cosine", "mse", "cka", "cka_debiased")
_MATRIX_VARS = {   # result key: (variable, long name, units, view dim)
    "cosine": ("phase_cosine_distance", "cosine distance 1 - cos between depths", "1", D.VIEW),
    "mse": ("phase_mse", "mean squared difference between depths", "activation units^2",
            D.VIEW),
    "cka": ("phase_cka", "linear CKA between depths (feature space, all observations)", "1",
            D.CKA_VIEW),
    "cka_debiased": ("phase_cka_debiased",
                     "debiased minibatch linear CKA between depths (mean unbiased HSIC)",
                     "1", D.CKA_VIEW),
}
@dataclasses.dataclass
class PhaseConfig:
    """Options of the phase analysis (recorded as JSON in the output).

    ``metrics``: matrices to compute (``cosine``, ``mse``, ``cka``; ``cka`` also gives
    ``cka_debiased``); ``views``: token views of cosine and MSE; ``cka_views``: token views
    of CKA (each costs ``((L+1) D)^2`` float64 numbers); ``segment_metric`` /
    ``segment_view``: the matrix the segmentations run on; ``fractions``: max-cut
    fractions f (eps = f * total_W); ``k_max``, ``min_size``: DP segmentations;
    ``select_tolerance``: the selected k is the smallest within this of the best
    modularity; ``swap_trials``: random swaps per
    family (0: no swap test); ``swap_samples``: images used by it (None: all);
    ``swap_max_layers``: at most this many layers replaced per trial; ``swap_k``: phases of
    the DP segmentation the swaps use (None: the selected k, at least 2); ``seed``: None
    takes the analysis seed.
    """

    metrics: tuple[str, ...] = ("cosine", "mse", "cka")
    views: tuple[str, ...] = VIEWS
    cka_views: tuple[str, ...] = ("cls",)
    segment_metric: str = "cosine"
    segment_view: str = "paper"
    fractions: tuple[float, ...] = (0.2, 0.1, 0.09)
    k_max: int = DEFAULT_K_MAX
    min_size: int = 2
    select_tolerance: float = 0.01
    swap_trials: int = 32
    swap_samples: int | None = 256
    swap_max_layers: int = 3
    swap_k: int | None = None
    seed: int | None = None

    def validate(self) -> PhaseConfig:
        self.metrics = tuple(self.metrics)
        bad = [m for m in self.metrics if m not in ("cosine", "mse", "cka")]
        if bad or not self.metrics:
            raise ConfigError(f"metrics must be among ('cosine', 'mse', 'cka'), got "
                              f"{list(self.metrics)}")
        self.views = check_views(self.views)
        self.cka_views = check_views(self.cka_views, name="cka_views")
        if self.segment_metric not in SEGMENT_METRICS:
            raise ConfigError(f"segment_metric must be one of {SEGMENT_METRICS}, got "
                              f"{self.segment_metric!r}")
        base = "cka" if self.segment_metric.startswith("cka") else self.segment_metric
        views = self.cka_views if base == "cka" else self.views
        if base not in self.metrics or self.segment_view not in views:
            raise ConfigError(f"segment_metric={self.segment_metric!r} with segment_view="
                              f"{self.segment_view!r} is not computed; add it to metrics and "
                              f"{'cka_views' if base == 'cka' else 'views'}")
        self.fractions = tuple(seg.check_fraction(f, name="fractions") for f in self.fractions)
        seg.check_min_size(self.min_size)
        _positive_int(self.k_max, "k_max")
        tol = self.select_tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
            raise ConfigError(f"select_tolerance must be in [0, 1), got {tol!r}")
        _positive_int(self.swap_trials, "swap_trials", minimum=0)
        _positive_int(self.swap_max_layers, "swap_max_layers")
        if self.swap_samples is not None:
            _positive_int(self.swap_samples, "swap_samples")
        if self.swap_k is not None:
            _positive_int(self.swap_k, "swap_k", minimum=2)
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def _positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class PhaseAnalysis:
    """Streaming phase analysis: ``update`` per batch, ``finish`` once, ``plot`` after."""

    name = "phases"

    def __init__(self, config: PhaseConfig | None = None) -> None:
        self.config = (config or PhaseConfig()).validate()
        self._sim: DepthSimilarity | None = None
        self.num_samples = 0

    def update(self, tb, ctx) -> None:
        """Add one :class:`~depthflow.trajectory.TrajectoryBatch` (states on any device)."""
        self.update_states(tb.states, ctx.token_kinds)

    def update_states(self, states: torch.Tensor, token_kinds: Sequence[str]) -> None:
        """Add trajectories ``(B, L+1, T, D)`` with token kinds ``[cls, registers, ...]``."""
        if self._sim is None:
            cfg = self.config
            self._sim = DepthSimilarity(
                token_kinds,
                views=cfg.views if {"cosine", "mse"} & set(cfg.metrics) else (),
                cka_views=cfg.cka_views if "cka" in cfg.metrics else ())
        self._sim.update(states)
        self.num_samples += states.shape[0]

    # ------------------------------------------------------------------------ finish
    def finish(self, ctx) -> Any:
        """Matrices, segmentations, metrics and (with a model) the layer-swap test."""
        import xarray as xr

        if self._sim is None:
            raise InputError("the phase analysis saw no trajectories")
        cfg = self.config
        result = self._sim.result()
        depths = self._sim.depths
        ds = xr.Dataset(coords={D.DEPTH_I: (D.DEPTH_I, np.arange(depths), _attrs(
            "first depth (0 = embedded input, l = after block l)")), D.DEPTH_J: (
            D.DEPTH_J, np.arange(depths), _attrs("second depth"))})
        for key, (name, text, units, view_dim) in _MATRIX_VARS.items():
            views = result.get(key, {})
            if not views or (key == "mse" and "mse" not in cfg.metrics) or (
                    key == "cosine" and "cosine" not in cfg.metrics):
                continue
            ds[name] = xr.DataArray(
                np.stack([views[v].numpy() for v in views]), dims=(view_dim, D.DEPTH_I, D.DEPTH_J),
                coords={view_dim: (view_dim, list(views), _attrs("token view", "",
                                                                  description=_VIEW_TEXT))},
                attrs=_attrs(text, units))
        distance = self._segment_matrix(result)
        ds = _merge(ds, segmentation_dataset(distance, cfg))
        matrix_var = _MATRIX_VARS[cfg.segment_metric][0]
        ds["phase_label"].attrs.update(
            matrix=matrix_var, view=cfg.segment_view,
            distance=f"1 - {matrix_var}" if cfg.segment_metric.startswith("cka") else matrix_var)
        ds.attrs["phase_config"] = cfg.to_json()
        ds.attrs["phase_num_samples"] = self.num_samples
        loaded = getattr(ctx, "loaded", None)
        if cfg.swap_trials and loaded is not None and getattr(ctx, "source", None) is not None:
            ds = _merge(ds, self._swap(ds, ctx))
        else:
            ds.attrs["swap_skipped"] = ("swap_trials=0" if not cfg.swap_trials else
                                        "no model or images to run the layer-swap test")
        return ds

    def _segment_matrix(self, result) -> np.ndarray:
        cfg = self.config
        matrix = result[cfg.segment_metric][cfg.segment_view].numpy()[1:, 1:]  # blocks 1..L
        if cfg.segment_metric.startswith("cka"):
            matrix = 1.0 - matrix
        return matrix

    def _swap(self, ds, ctx) -> Any:
        cfg = self.config
        k_avail = [int(k) for k in ds[D.NUM_PHASES].values]
        want = cfg.swap_k or max(2, int(ds["phase_selected_k"]))
        if want not in k_avail:
            import xarray as xr

            return xr.Dataset(attrs={"swap_skipped": f"no contiguous segmentation with "
                                                     f"k={want} (have k in {k_avail})"})
        name = f"dp_k{want}"
        labels = ds["phase_label"].sel({D.SEGMENTATION: name}).values
        seed = cfg.seed if cfg.seed is not None else int(getattr(ctx, "seed", 0))
        batches = swap.limited_batches(ctx.source, samples=cfg.swap_samples,
                                       batch_size=ctx.batch_size,
                                       preprocessing=ctx.preprocessing)
        return swap_dataset(ctx.loaded.model, batches, labels, trials=cfg.swap_trials,
                            max_layers=cfg.swap_max_layers, seed=seed, device=ctx.device,
                            dtype=ctx.dtype, segmentation=name,
                            progress=bool(getattr(ctx, "progress", False)),
                            total=min(len(ctx.source), cfg.swap_samples or len(ctx.source)))

    def plot(self, ds, out_dir: Path) -> list[Path]:
        """Heatmaps with phase boundaries (and the swap results) as PNGs in ``out_dir``."""
        from .phase_plots import plot_phases

        return plot_phases(ds, out_dir)


# ----------------------------------------------------------------------- entry points
def _context(loaded, source, *, batch_size: int, device: Any, dtype: str, seed: int,
             progress: bool, token_kinds: Sequence[str]) -> types.SimpleNamespace:
    from .analyze import model_preprocessing
    from .trajectory import resolve_device

    kinds = [k for k in D.TOKEN_KINDS if k in token_kinds]
    return types.SimpleNamespace(
        loaded=loaded, source=source,
        preprocessing=model_preprocessing(loaded) if loaded is not None else None,
        device=resolve_device(device), dtype=dtype, batch_size=batch_size, progress=progress,
        seed=seed, token_kinds=list(token_kinds), kinds=kinds,
        groups=[torch.tensor([i for i, t in enumerate(token_kinds) if t == k]) for k in kinds])


def phase_dataset(loaded, source, *, config: PhaseConfig | None = None, batch_size: int = 64,
                  device: Any = "cpu", dtype: str = "float32", seed: int = 0,
                  progress: bool = False) -> Any:
    """Stream ``source`` through ``loaded`` and return the phase Dataset (with swaps)."""
    from .analyze import model_preprocessing
    from .provenance import provenance
    from .trajectory import iter_trajectories

    analysis = PhaseAnalysis(config)
    _positive_int(batch_size, "batch_size")
    if len(source) == 0:
        raise InputError("no images to analyse")
    ctx = None
    for tb in iter_trajectories(loaded.model, source, preprocessing=model_preprocessing(loaded),
                                batch_size=batch_size, device=device, dtype=dtype,
                                progress=progress):
        if ctx is None:
            h, w = tb.batch.images.shape[-2:]
            ctx = _context(loaded, source, batch_size=batch_size, device=device, dtype=dtype,
                           seed=seed, progress=progress,
                           token_kinds=loaded.model.token_kinds(h, w))
        analysis.update(tb, ctx)
    ds = analysis.finish(ctx)
    ds.attrs.update(provenance(config=dataclasses.asdict(analysis.config), extra={
        "title": f"depthflow phases of {Path(str(loaded.source)).name}",
        **loaded.provenance(), "images": source.describe(), "num_samples": len(source)}))
    return ds


def phase_dataset_from_file(path: str | os.PathLike[str], *, config: PhaseConfig | None = None,
                            batch_size: int = 64) -> Any:
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
        ds = analysis.finish(types.SimpleNamespace(loaded=None, source=None))
        ds.attrs.update({"title": f"depthflow phases of {p.name}", "trajectory_file": str(p),
                         "checkpoint": getattr(nc, "checkpoint", "")})
    return ds


def suggest_thresholds(loaded, source, *, k: int = 2, limit: int | None = 1024,
                       batch_size: int = 64, device: str = "cpu",
                       progress: bool = False) -> list[int]:
    """Raptor thresholds for ``k`` phases from the paper's cosine distance on ``source``.

    The paper's max-cut bisection at the largest fraction that gives exactly ``k``
    contiguous phases, else the optimal contiguous DP segmentation into ``k`` phases
    (phases of at least 2 blocks when they fit). Reads at most ``limit`` images.
    """
    from .analyze import model_preprocessing
    from .trajectory import iter_trajectories

    depth = loaded.config.depth
    _positive_int(k, "k")
    if k > depth:
        raise ConfigError(f"k={k} is larger than the number of layers ({depth})")
    if k == 1:
        return []
    if limit is not None:
        _positive_int(limit, "limit")
    analysis = PhaseAnalysis(PhaseConfig(metrics=("cosine",), views=("paper",),
                                         swap_trials=0))
    if len(source) == 0:
        raise InputError("no images to segment")
    stream = iter_trajectories(loaded.model, _Limited(source, limit),
                               preprocessing=model_preprocessing(loaded),
                               batch_size=batch_size, device=device, progress=progress)
    for tb in stream:
        h, w = tb.batch.images.shape[-2:]
        analysis.update_states(tb.states, loaded.model.token_kinds(h, w))
    matrix = analysis._segment_matrix(analysis._sim.result())
    min_size = 2 if 2 * k <= depth else 1
    return seg.segment_into(matrix, k, min_size=min_size).thresholds or []


class _Limited:
    """The first ``limit`` images of a source, as a source (the original is unchanged)."""

    def __init__(self, source, limit: int | None) -> None:
        self.source, self.n = source, len(source) if limit is None else min(limit, len(source))

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int, *, preprocessing=None):
        return swap.limited_batches(self.source, samples=self.n, batch_size=batch_size,
                                    preprocessing=preprocessing)


def run_phases(checkpoint: str | os.PathLike[str] | None, *,
               images: str | os.PathLike[str] | None = None, limit: int | None = None,
               arch: str | None = None, config: PhaseConfig | None = None,
               batch_size: int = 64, device: str = "cpu", dtype: str = "float32",
               seed: int = 0, output: str | os.PathLike[str] | None = None,
               figures: str | os.PathLike[str] | None = None, overwrite: bool = False,
               progress: bool = False) -> tuple[Any, list[Path]]:
    """One call for ``depthflow phases``: checkpoint (or ``.nc`` trajectory file) -> phase
    Dataset, optionally written to ``output`` (NetCDF) and ``figures``. Output paths are
    checked before any work starts."""
    from .io import check_output_path
    from .netcdf import write_dataset
    from .plots import check_figure_dir

    config = (config or PhaseConfig()).validate()
    if output is not None:
        check_output_path(output, overwrite=overwrite)
    if figures is not None:
        check_figure_dir(figures, overwrite=overwrite)
    if checkpoint is not None and str(checkpoint).endswith(".nc"):
        if images is not None:
            raise ConfigError("--images cannot be used with a trajectory file: its images "
                              "are already in it")
        ds = phase_dataset_from_file(checkpoint, config=config, batch_size=batch_size)
    else:
        from .checkpoints import load_model
        from .data import open_images

        loaded = load_model(checkpoint, arch=arch)
        source = open_images(images, limit=limit)
        ds = phase_dataset(loaded, source, config=config, batch_size=batch_size,
                           device=device, dtype=dtype, seed=seed, progress=progress)
    written: list[Path] = []
    if output is not None:
        written.append(write_dataset(ds, output, overwrite=overwrite))
    if figures is not None:
        written += PhaseAnalysis(config).plot(ds, Path(figures))
    return ds, written
