"""``depthflow phases``: a quick look at a model's phase structure."""

from __future__ import annotations

import click

from . import options
from .main import one_line_errors


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@click.command()
@click.argument("checkpoint", required=False)
@click.option("--images", default=None,
              help="'digits[:test|train|all]', an image folder or a .npy/.npz array "
                   "[default: the held-out digits].")
@click.option("--limit", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Use only the first N images.")
@click.option("--metric", type=click.Choice(["cosine", "mse", "cka", "cka_debiased"]),
              default="cosine", show_default=True,
              help="Matrix to segment (cosine: the paper's distance on {cls, mean patch}).")
@click.option("--view", type=click.Choice(["paper", "cls", "register", "patch", "all"]),
              default=None, help="Token view of that matrix [default: paper; cls for CKA].")
@click.option("--fractions", default="0.2,0.1,0.09", show_default=True,
              help="Max-cut fractions f (eps = f * total distance).")
@click.option("--k-max", type=click.IntRange(min=1), default=4, show_default=True,
              help="Largest number of phases of the contiguous (DP) segmentation.")
@click.option("--min-size", type=click.IntRange(min=1), default=2, show_default=True,
              help="Fewest blocks per phase.")
@click.option("--swap-trials", type=click.IntRange(min=0), default=32, show_default=True,
              help="Random layer swaps per family (0: no swap test).")
@click.option("--swap-samples", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images used by the swap test.")
@click.option("--figure", "figure", default=None,
              help="Directory for the heatmaps with phase boundaries.")
@click.option("-o", "--output", default=None, help="Also write the result as NetCDF.")
@options.dtype
@options.model_run
@one_line_errors
def phases(checkpoint, images, limit, metric, view, fractions, k_max, min_size, swap_trials,
           swap_samples, figure, output, dtype, arch, batch_size, device, seed, overwrite,
           quiet):
    """Similarity matrices, max-cut and contiguous phases, metrics and the layer-swap test.

    CHECKPOINT: anything `depthflow analyze` reads, or an analysis file written with
    `depthflow analyze --states all` (matrices and segmentations only). Default: the
    embedded digits ViT.
    """
    from depthflow.phases import PhaseConfig, describe_phases, run_phases

    view = view or ("cls" if metric.startswith("cka") else "paper")
    config = PhaseConfig(
        metrics=("cosine", "mse", "cka") if metric.startswith("cka") else ("cosine", "mse"),
        cka_views=(view,) if metric.startswith("cka") else ("cls",),
        segment_metric=metric, segment_view=view, fractions=_floats(fractions), k_max=k_max,
        min_size=min_size, swap_trials=swap_trials, swap_samples=swap_samples)
    ds, written = run_phases(checkpoint, images=images, limit=limit, arch=arch, config=config,
                             batch_size=batch_size or 64, device=device, dtype=dtype,
                             seed=seed, output=output, figures=figure, overwrite=overwrite,
                             progress=not quiet)
    if not quiet:
        click.echo(describe_phases(ds))
        for path in written:
            click.echo(f"wrote {path}")
