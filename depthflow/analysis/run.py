"""``depthflow analyze``: stream a model's depth trajectories into one NetCDF file.

:func:`analyze` streams the images through the model batch by batch: the root group gets
the per-sample trajectory summaries (:mod:`depthflow.analysis.summaries`), every plug-in
(:class:`~depthflow.analysis.context.Analysis`) sees each batch and writes its own group
at the end. Memory is bounded by one batch of states plus the accumulators; the file
appears only when complete (temporary file + rename).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from depthflow import vocabulary as D
from depthflow._crash import crash_point
from depthflow.analysis.context import Analysis, AnalysisContext, TokenLayout
from depthflow.analysis.summaries import SAMPLE_COORDS, TrajectorySummaries
from depthflow.config import Options, check_choice, check_int
from depthflow.errors import InputError
from depthflow.images import ImageSource
from depthflow.io.files import check_output_path
from depthflow.io.netcdf import StreamingWriter
from depthflow.io.provenance import provenance
from depthflow.limits import check_analyze_resources
from depthflow.models.checkpoints import LoadedModel
from depthflow.models.preprocessing import Preprocessing, model_preprocessing
from depthflow.trajectory import DTYPES, TrajectoryBatch, iter_trajectories, resolve_device

__all__ = ["AnalyzeConfig", "analyze", "auto_batch_size", "STATES"]

STATES = ("none", "cls", "all")
STATE_BUDGET_BYTES = 256 << 20      # one batch of trajectories, when batch_size is automatic
MAX_AUTO_BATCH = 64


def auto_batch_size(loaded: LoadedModel, preprocessing: Preprocessing, *,
                    budget_bytes: int = STATE_BUDGET_BYTES) -> int:
    """Images per batch such that one batch of states ``(B, L+1, T, D)`` fits the budget.

    Large models get small batches (memory bounded): e.g. 52 for ViT-S/14 at 224 px; small
    models get the cap, 64. Larger batches made the peak memory of long runs grow on CPU
    (heap fragmentation), hence the cap.
    """
    cfg = loaded.config
    side = preprocessing.crop or preprocessing.resize or cfg.img_size
    per_image = (cfg.depth + 1) * loaded.model.num_tokens(side, side) * cfg.embed_dim * 4
    return int(max(1, min(MAX_AUTO_BATCH, budget_bytes // per_image)))


@dataclasses.dataclass
class AnalyzeConfig(Options):
    """Options of :func:`analyze` (all recorded, JSON-encoded, in the output)."""

    _what = "analyze option"
    _help = {
        "batch_size": "Images per batch (none: automatic, one batch of states about 256 MiB, "
                      "at most 64 images).",
        "device": "Torch device: cpu, cuda, cuda:1, ...",
        "dtype": "Compute dtype: float32, bfloat16 or float64.",
        "states": "Raw states kept (compressed) besides the summaries: none, cls or all.",
        "limit": "Analyse only the first N images.",
        "seed": "Seed for every random path (recorded in the output).",
        "image_ranks": "Rank measures of each image's update matrix (tokens stacked); costs "
                       "a float64 eigenproblem per image and step.",
    }

    batch_size: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    states: str = "cls"
    limit: int | None = None
    seed: int = 0
    image_ranks: bool = False

    def validate(self) -> AnalyzeConfig:
        check_int(self.batch_size, "batch_size", optional=True)
        check_choice(self.dtype, "dtype", sorted(DTYPES))
        check_choice(self.states, "states", STATES)
        check_int(self.limit, "limit", optional=True)
        check_int(self.seed, "seed", minimum=0)
        resolve_device(self.device)
        return self


def analyze(loaded: LoadedModel, source: ImageSource, output: str | os.PathLike[str], *,
            config: AnalyzeConfig | None = None, analyses: Sequence[Analysis] = (),
            overwrite: bool = False, progress: bool = False,
            command: Sequence[str] | None = None) -> Path:
    """Extract trajectories of ``source`` through ``loaded`` and write ``output`` (NetCDF).

    Memory is bounded by one batch of states plus ``O(L K D^2)`` accumulators, whatever the
    number of images. Each plug-in of ``analyses`` sees every batch and writes its group at
    the end. The file appears only when complete; ``source`` is not changed.
    """
    config = config or AnalyzeConfig()
    check_output_path(output, overwrite=overwrite)
    torch.manual_seed(config.seed)
    source = source.head(config.limit)
    if len(source) == 0:
        raise InputError("no images to analyse")
    preprocessing = model_preprocessing(loaded)
    batch_size = config.batch_size or auto_batch_size(loaded, preprocessing)
    config = config.replace(batch_size=batch_size)                  # recorded as used
    check_analyze_resources(loaded, source, preprocessing, config, analyses, output)
    stream = iter_trajectories(loaded.model, source, preprocessing=preprocessing,
                               batch_size=batch_size, device=config.device,
                               dtype=config.dtype, progress=progress)
    first = next(stream)
    layout = TokenLayout.of(loaded.model, *first.batch.images.shape[-2:])
    summaries = TrajectorySummaries(loaded.model, layout, source.class_names,
                                    states=config.states, image_ranks=config.image_ranks,
                                    device=first.states.device)
    if summaries.has_head:
        summaries.num_logits = first.logits.shape[-1]
    ctx = AnalysisContext(layout=layout, loaded=loaded, source=source,
                          preprocessing=preprocessing, device=first.states.device,
                          dtype=config.dtype, batch_size=batch_size, seed=config.seed,
                          progress=progress, config=config)
    with StreamingWriter(output, overwrite=overwrite, sample_coords=SAMPLE_COORDS) as writer:
        summaries.define(writer)
        for tb in _chain(first, stream):
            summaries.add(tb, writer)
            for analysis in analyses:
                analysis.update(tb, ctx)
            crash_point("analyze.batch")
        accuracy = summaries.finish(writer)
        crash_point("analyze.analyses")
        for analysis in analyses:              # in order: later ones may read earlier ones
            ctx.results[analysis.name] = result = analysis.finish(ctx)
            writer.add_tree(result, group=analysis.group)
        attrs = _global_attrs(loaded, source, preprocessing, config, writer.n, accuracy,
                              command)
        attrs["analyses"] = ",".join(["trajectories", *(a.name for a in analyses)])
        writer.attrs(attrs)
        writer.commit()
    return Path(output)


def _chain(first: TrajectoryBatch, rest: Iterator[TrajectoryBatch]
           ) -> Iterator[TrajectoryBatch]:
    yield first
    yield from rest


def _global_attrs(loaded: LoadedModel, source: ImageSource, preprocessing: Preprocessing,
                  config: AnalyzeConfig, n: int, accuracy: float,
                  command: Sequence[str] | None) -> dict[str, Any]:
    extra = {
        "title": f"depthflow trajectories of {Path(loaded.source).name}",
        **loaded.provenance(),
        "preprocessing": preprocessing.to_json(),
        "images": source.describe(),
        "num_samples": n,
        "seed": config.seed,
        "device": config.device,
        "compute_dtype": config.dtype,
        "model_info": loaded.info,
        "depthflow_format_version": D.FORMAT_VERSION,
    }
    if accuracy == accuracy:                  # only when there are a head and labels
        extra["head_accuracy"] = accuracy
    return provenance(config=config.to_dict(), command=command, extra=extra)
