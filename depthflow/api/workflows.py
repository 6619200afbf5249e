"""One library call per CLI command: resolve a checkpoint and images, run, write.

``depthflow analyze`` -> :func:`analyze_checkpoint`, ``depthflow phases`` ->
:func:`phases_checkpoint`, ``depthflow fit`` -> :func:`fit_checkpoint`. Every output path
is checked before any work starts, so a bad path costs nothing and an existing result is
never half-replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from depthflow.core._crash import crash_point
from depthflow.core._signals import deferred_signals
from depthflow.core.profiling import stage
from depthflow.analysis.context import Analysis
from depthflow.analysis.run import AnalyzeConfig, analyze
from depthflow.errors import ArchitectureError, ConfigError
from depthflow.data.images import open_images
from depthflow.io.files import check_output_path
from depthflow.io.guard import check_disjoint, output_lock
from depthflow.io.netcdf import write_tree
from depthflow.io.results import figure_record, open_result
from depthflow.api.loader import load_model
from depthflow.phases.analysis import PhaseAnalysis, PhaseConfig, phase_tree, phase_tree_from_file
from depthflow.plots import check_figure_dir, write_figures
from depthflow.plots.trajectories import draw_token_dynamics
from depthflow.raptor.config import FitConfig
from depthflow.raptor.fit import FitResult, fit_raptor, read_run

__all__ = ["AnalysisOutputs", "analyze_checkpoint", "phases_checkpoint", "fit_checkpoint"]


@dataclasses.dataclass
class AnalysisOutputs:
    """What :func:`analyze_checkpoint` wrote."""

    netcdf: Path
    figures: list[Path]
    num_samples: int
    depth: int


def analyze_checkpoint(checkpoint: str | os.PathLike[str] | None, output: str | os.PathLike[str],
                       *, images: str | os.PathLike[str] | None = None,
                       figures: str | os.PathLike[str] | None = None,
                       arch: str | None = None, config: AnalyzeConfig | None = None,
                       analyses: Sequence[Analysis] = (), overwrite: bool = False,
                       progress: bool = False, command: Sequence[str] | None = None,
                       resume: bool = False) -> AnalysisOutputs | None:
    """Load ``checkpoint``, analyse ``images`` into ``output`` and draw ``figures``
    (``None`` on the ranks > 0 of a distributed run: rank 0 writes).

    The result is written to a temporary file, the figures are drawn from it into a
    temporary folder (recording the file's SHA-256 in ``depthflow-figures.json``), the
    folder is renamed into place, then the file: a crash leaves either the old pair, or the
    old file with a new figure set whose record says it belongs to another file.
    """
    config = config or AnalyzeConfig()
    check_output_path(output, overwrite=overwrite)
    if figures is not None:
        check_figure_dir(figures, overwrite=overwrite)
    with stage("load"):
        loaded = load_model(checkpoint, arch=arch)
        source = open_images(images).head(config.limit)
    check_disjoint({"-o": output, "--figures": figures}, _inputs(checkpoint, source))
    crash_point("analyze.start")
    drawn: list[Path] = []
    tail = contextlib.ExitStack()        # figures renamed -> file renamed: not cut by a signal

    def draw(tmp: Path) -> None:
        tail.enter_context(deferred_signals())
        if figures is not None:
            drawers = [draw_token_dynamics, *(a.plot for a in analyses)]
            with stage("figures"), open_result(tmp) as tree:
                drawn.extend(write_figures(tree, figures, drawers, overwrite=overwrite,
                                           record=figure_record(tmp, output)))
        crash_point("analyze.written")

    with output_lock([output, figures] if _main_rank() else []), tail:
        path = analyze(loaded, source, output, config=config, analyses=analyses,
                       overwrite=overwrite, progress=progress, command=command,
                       resume=resume, before_rename=draw)
    if path is None:
        return None
    return AnalysisOutputs(Path(output), drawn, len(source), loaded.config.depth)


def _main_rank() -> bool:
    """Rank 0 of a torchrun run (or a plain run): the process that writes and locks."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def _inputs(checkpoint, source=None, **more) -> dict[str, Any]:
    """The paths a run reads, labelled for messages (see :func:`check_disjoint`)."""
    inputs: dict[str, Any] = {}
    if checkpoint is not None and os.path.lexists(str(checkpoint)):
        inputs["checkpoint"] = str(checkpoint)
    if source is not None:
        inputs["--images"] = source.input_paths()
    for label, value in more.items():
        if value is not None:
            inputs[label.replace("_", "-")] = value.input_paths() \
                if hasattr(value, "input_paths") else value
    return inputs


def phases_checkpoint(checkpoint: str | os.PathLike[str] | None, *,
                      images: str | os.PathLike[str] | None = None, limit: int | None = None,
                      arch: str | None = None, config: PhaseConfig | None = None,
                      batch_size: int = 64, device: str = "cpu", dtype: str = "float32",
                      seed: int = 0, output: str | os.PathLike[str] | None = None,
                      figures: str | os.PathLike[str] | None = None, overwrite: bool = False,
                      progress: bool = False, workers: int = 0) -> tuple[Any, list[Path]]:
    """``depthflow phases``: a checkpoint (or a ``.nc`` file with ``state``) -> the phase
    tree, optionally written to ``output`` (NetCDF, group ``phases``) and ``figures``."""
    config = config or PhaseConfig()
    if output is not None:
        check_output_path(output, overwrite=overwrite)
    if figures is not None:
        check_figure_dir(figures, overwrite=overwrite)
    if checkpoint is not None and str(checkpoint).endswith(".nc"):
        if images is not None:
            raise ConfigError("--images cannot be used with a trajectory file: its images "
                              "are already in it")
        check_disjoint({"-o": output, "--figures": figures}, _inputs(checkpoint))
        tree = phase_tree_from_file(checkpoint, config=config, batch_size=batch_size)
    else:
        loaded = load_model(checkpoint, arch=arch)
        source = open_images(images).head(limit)
        check_disjoint({"-o": output, "--figures": figures}, _inputs(checkpoint, source))
        tree = phase_tree(loaded, source, config=config, batch_size=batch_size,
                          device=device, dtype=dtype, seed=seed, progress=progress,
                          workers=workers)
        if tree is None:                 # a rank > 0 of a distributed run
            return None, []
    written: list[Path] = []
    with output_lock([output, figures]):
        if output is not None:
            written.append(write_tree(tree, output, overwrite=overwrite))
        if figures is not None:
            written += write_figures(tree, figures, [PhaseAnalysis(config).plot],
                                     overwrite=overwrite)
    return tree, written


def fit_checkpoint(checkpoint: str | os.PathLike[str] | None, output: str | os.PathLike[str],
                   *, images: str | None = None, limit: int | None = None,
                   eval_images: str | None = None,
                   arch: str | None = None, config: FitConfig | None = None,
                   overwrite: bool = False, resume: bool = False, progress: bool = False,
                   stop_after: int | None = None,
                   command: Sequence[str] | None = None) -> FitResult:
    """``depthflow fit``: load the teacher and images from specs and call
    :func:`depthflow.raptor.fit.fit_raptor`.

    ``images`` defaults to ``"digits:train"`` (its first ``limit`` only, when given);
    ``eval_images`` to ``"digits:test"`` when the training images are the digits, else the
    training images (in-sample). With ``resume``, the checkpoint and image specs recorded in
    ``output`` are used when not given.
    """
    if resume:
        saved = read_run(output)
        checkpoint = checkpoint if checkpoint is not None else saved.get("checkpoint")
        images = images or saved.get("images")
        eval_images = eval_images or saved.get("eval_images")
        arch = arch or saved.get("arch")
        limit = limit or saved.get("limit")
    images = images or "digits:train"
    if eval_images is None and str(images).startswith("digits"):
        eval_images = "digits:test"
    loaded = load_model(checkpoint, arch=arch)
    if loaded.config.rope != "none":
        raise ArchitectureError(
            f"cannot fit a Raptor surrogate to {loaded.source!r}: it uses RoPE "
            f"({loaded.config.rope}), and Raptor blocks have no rotary position mechanism; "
            "fit a model with absolute position embeddings")
    source = open_images(images).head(limit)
    eval_source = open_images(eval_images) if eval_images else None
    inputs = _inputs(checkpoint, source, eval_images=eval_source)
    check_disjoint({"-o": output}, inputs)
    if config is not None and config.cache_dir:      # teacher-state shards are written there
        check_disjoint({"--cache-dir": config.cache_dir}, inputs)
    run = {"checkpoint": None if checkpoint is None else str(checkpoint),
           "images": str(images), "limit": limit, "eval_images": eval_images, "arch": arch}
    with output_lock([output] if _main_rank() else []):
        return fit_raptor(loaded, source, output, config=config, eval_source=eval_source,
                          overwrite=overwrite, resume=resume, progress=progress,
                          stop_after=stop_after, command=command, run=run)
