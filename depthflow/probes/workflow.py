"""``depthflow probe``: per-depth probes of a model in one library call."""

from __future__ import annotations

import os
from collections.abc import Sequence

from depthflow.analysis.run import AnalyzeConfig
from depthflow.phases.analysis import PhaseAnalysis, PhaseConfig
from depthflow.probes.analysis import ProbeAnalysis, ProbeConfig
from depthflow.api.workflows import AnalysisOutputs, analyze_checkpoint

__all__ = ["probe_checkpoint"]


def probe_checkpoint(checkpoint: str | os.PathLike[str] | None, output: str | os.PathLike[str],
                     *, images: str | None = None, limit: int | None = None,
                     config: ProbeConfig | None = None, phases: bool = True,
                     figures: str | os.PathLike[str] | None = None, arch: str | None = None,
                     batch_size: int | None = None, device: str = "cpu",
                     dtype: str = "float32", overwrite: bool = False, progress: bool = False,
                     command: Sequence[str] | None = None) -> AnalysisOutputs | None:
    """Stream ``images`` (default: the digits) through ``checkpoint`` (default: the embedded
    digits ViT; anything :func:`depthflow.load_model` reads, a fitted Raptor included) and
    write the ``probes`` group (and, with ``phases``, the phase segmentation that shades the
    figure, without layer swaps) to ``output``."""
    config = config or ProbeConfig()
    run = AnalyzeConfig(limit=limit, batch_size=batch_size, device=device, dtype=dtype,
                        states="none", seed=config.seed)
    analyses = [PhaseAnalysis(PhaseConfig(swap_trials=0, seed=config.seed))] if phases else []
    return analyze_checkpoint(checkpoint, output, images=images, figures=figures, arch=arch,
                              config=run, analyses=[*analyses, ProbeAnalysis(config)],
                              overwrite=overwrite, progress=progress, command=command)
