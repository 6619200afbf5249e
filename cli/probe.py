"""``depthflow probe``: which depth (and token readout) of a model carries the labels."""

from __future__ import annotations

from pathlib import Path

import click

from depthflow.cli import options
from depthflow.probes.analysis import ProbeConfig


@click.command()
@click.argument("checkpoint", required=False)
@options.images
@click.option("-o", "--output", default="probe.nc", show_default=True,
              help="NetCDF result (group 'probes', plus the phases that shade the figure).")
@click.option("--figures", default=None,
              help="Directory for the accuracy-vs-depth figure [default: <output stem>-figures].")
@click.option("--no-figures", is_flag=True, help="Write no figures.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N images.")
@click.option("--phases/--no-phases", default=True, show_default=True,
              help="Also segment the depths into phases (shaded in the figure).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per batch [default: automatic].")
@click.option("--device", default="cpu", show_default=True, help="Torch device.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float64"]),
              default="float32", show_default=True, help="Compute dtype.")
@options.config_options(ProbeConfig)
@options.arch
@options.overwrite
@options.quiet
@options.one_line_errors
def probe(checkpoint, images, output, figures, no_figures, limit, phases, batch_size, device,
          dtype, arch, overwrite, quiet, **probe_options):
    """Per-depth linear (and k-NN) probes of the image labels, with Wilson intervals.

    CHECKPOINT: anything `depthflow analyze` reads (a Raptor directory included).
    Default: the embedded digits ViT on the digits.
    """
    from depthflow.probes.workflow import probe_checkpoint

    config = options.build_config(ProbeConfig, probe_options)
    figures = None if no_figures else (f"{Path(output).with_suffix('')}-figures"
                                       if figures is None else figures)
    result = probe_checkpoint(checkpoint, output, images=images, limit=limit, config=config,
                              phases=phases, figures=figures, arch=arch,
                              batch_size=batch_size, device=device, dtype=dtype,
                              overwrite=overwrite, progress=not quiet,
                              command=options.command_line())
    if result is None or quiet:
        return
    from depthflow.io.results import open_result
    from depthflow.probes.text import describe_probes

    with open_result(result.netcdf) as tree:
        click.echo(describe_probes(tree["probes"].to_dataset()))
    click.echo(f"wrote {result.netcdf}")
    if result.figures:
        click.echo(f"wrote {len(result.figures)} figures to {figures}/")
