"""``depthflow phases``: a quick look at a model's phase structure."""

from __future__ import annotations

import click

from depthflow.cli import options
from depthflow.core.distributed import quiet_followers
from depthflow.phases.analysis import PhaseConfig


@click.command()
@click.argument("checkpoint", required=False)
@options.images
@click.option("--limit", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Use only the first N images.")
@click.option("--figures", default=None,
              help="Directory for the heatmaps with phase boundaries.")
@click.option("-o", "--output", default=None,
              help="Also write the result as NetCDF (group 'phases').")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per batch.")
@click.option("--device", default="cpu", show_default=True, help="Torch device.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float64"]),
              default="float32", show_default=True, help="Compute dtype.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes decoding images ahead of the forward pass.")
@options.config_options(PhaseConfig, defaults={"seed": 0})
@options.arch
@options.overwrite
@options.quiet
@options.one_line_errors
@quiet_followers
def phases(checkpoint, images, limit, figures, output, batch_size, device, dtype, workers,
           arch, overwrite, quiet, **phase_options):
    """Similarity matrices, max-cut and contiguous phases, metrics and the layer-swap test.

    CHECKPOINT: anything `depthflow analyze` reads, or an analysis file written with
    `depthflow analyze --states all` (matrices and segmentations only). Default: the
    embedded digits ViT. Runs sharded under ``torchrun -m depthflow.cli.phases``.
    """
    from depthflow.phases.datasets import describe_phases
    from depthflow.api.workflows import phases_checkpoint

    config = options.build_config(PhaseConfig, phase_options)
    tree, written = phases_checkpoint(
        checkpoint, images=images, limit=limit, arch=arch, config=config,
        batch_size=batch_size, device=device, dtype=dtype, seed=config.seed or 0,
        output=output, figures=figures, overwrite=overwrite, progress=not quiet,
        workers=workers)
    if tree is None:                     # a rank > 0 of a torchrun run: rank 0 reports
        return
    if not quiet:
        click.echo(describe_phases(tree["phases"]))
        for path in written:
            click.echo(f"wrote {path}")


if __name__ == "__main__":  # pragma: no cover - torchrun entry
    phases()
