"""Options shared by depthflow commands."""

from __future__ import annotations

import click

overwrite = click.option("--overwrite", is_flag=True,
                         help="Replace existing output files (otherwise they are kept).")
device = click.option("--device", default="cpu", show_default=True,
                      help="Torch device: cpu, cuda, cuda:1, ...")
batch_size = click.option("--batch-size", type=click.IntRange(min=1), default=None,
                          help="Images per batch [default: automatic, so that one batch of "
                               "states takes about 256 MiB].")
seed = click.option("--seed", type=int, default=0, show_default=True,
                    help="Seed for every random path (recorded in the output).")
arch = click.option("--arch", default=None,
                    help="Architecture override: preset (e.g. dinov2_vits14_reg4), JSON, or "
                         "key=value,... (e.g. num_heads=6).")
quiet = click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
dtype = click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float64"]),
                     default="float32", show_default=True, help="Compute dtype.")


def model_run(func):
    """The options every command that runs a model over images shares (``--arch`` ...
    ``--quiet``), in this order."""
    for option in reversed((arch, batch_size, device, seed, overwrite, quiet)):
        func = option(func)
    return func
