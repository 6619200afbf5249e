"""``depthflow compare``: two models layer by layer (CKA, phase alignment, R^2)."""

from __future__ import annotations

from pathlib import Path

import click

from depthflow.cli import options


@click.command()
@click.argument("a")
@click.argument("b")
@options.images
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N images.")
@click.option("-o", "--output", default="compare.nc", show_default=True,
              help="NetCDF result (group 'compare').")
@click.option("--figures", default=None,
              help="Directory for the figure [default: <output stem>-figures].")
@click.option("--no-figures", is_flag=True, help="Write no figures.")
@click.option("--views", default="cls,mean_patch", show_default=True,
              help="Token views: a comma list of cls, mean_patch, registers, patch.")
@click.option("--batch-size", type=click.IntRange(min=4), default=32, show_default=True,
              help="Images per batch (the debiased CKA's unit; its interval resamples them).")
@click.option("--device", default="cpu", show_default=True, help="Torch device.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float64"]),
              default="float32", show_default=True, help="Compute dtype.")
@click.option("--n-boot", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Batch resamples of the debiased CKA's interval.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the resamples, the null and of B = random.")
@options.arch
@options.overwrite
@options.quiet
@options.one_line_errors
def compare(a, b, images, limit, output, figures, no_figures, views, batch_size, device,
            dtype, n_boot, seed, arch, overwrite, quiet):
    """Compare model A with model B depth by depth on the same images.

    A, B: anything `depthflow analyze` reads (checkpoints, named models, Raptor
    directories; A = default: the embedded digits ViT), B = random: A's random-weight copy;
    or two result files written with `depthflow analyze --states all`.
    """
    from depthflow.compare.text import describe_compare
    from depthflow.compare.workflow import compare_checkpoints

    a = None if a == "default" else a
    figures = None if no_figures else (f"{Path(output).with_suffix('')}-figures"
                                       if figures is None else figures)
    chosen = tuple(v.strip() for v in views.split(",") if v.strip())
    path, drawn = compare_checkpoints(a, b, output, images=images, limit=limit, views=chosen,
                                      arch=arch, batch_size=batch_size, device=device,
                                      dtype=dtype, n_boot=n_boot, seed=seed, figures=figures,
                                      overwrite=overwrite, progress=not quiet,
                                      command=options.command_line())
    if quiet:
        return
    from depthflow.io.results import open_result

    with open_result(path) as tree:
        click.echo(describe_compare(tree["compare"].to_dataset()))
    click.echo(f"wrote {path}")
    if drawn:
        click.echo(f"wrote {len(drawn)} figures to {figures}/")
