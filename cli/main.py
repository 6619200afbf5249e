"""The ``depthflow`` command: thin wrappers over one library call each.

``analyze`` (:mod:`depthflow.cli.analyze`), ``phases`` (:mod:`depthflow.cli.phases`),
``fit`` (:mod:`depthflow.cli.fit`), ``models`` (:mod:`depthflow.cli.models`), ``probe``
(:mod:`depthflow.cli.probe`), ``compare`` (:mod:`depthflow.cli.compare`), ``report``
(:mod:`depthflow.cli.report`) and ``info`` are registered here; no command imports
anything back from this module.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from depthflow.cli import options
from depthflow.cli.analyze import analyze
from depthflow.cli.compare import compare
from depthflow.cli.fit import fit
from depthflow.cli.models import models
from depthflow.cli.phases import phases
from depthflow.cli.probe import probe
from depthflow.cli.report import report


class _Group(click.Group):
    """Keeps the raw arguments so results can record the exact command line."""

    def make_context(self, info_name, args, parent=None, **extra):
        argv = list(args)
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["depthflow.argv"] = ["depthflow", *argv]
        return ctx

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        """Usage errors (an unknown option, a value click cannot convert) as one
        ``Error: ...`` line with exit code 2, like every other depthflow error."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            click.echo(f"Error: {exc.format_message().splitlines()[0]}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="depthflow")
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=None, metavar="N",
              help="Refuse image files of more than N pixels before decoding them "
                   "[default: 67108864 = 8192x8192, or $DEPTHFLOW_MAX_IMAGE_PIXELS].")
def main(max_image_pixels) -> None:
    """depthflow: a Vision Transformer as a dynamical system over depth."""
    if max_image_pixels is not None:        # for this command only (also in-process)
        saved = os.environ.get("DEPTHFLOW_MAX_IMAGE_PIXELS")
        os.environ["DEPTHFLOW_MAX_IMAGE_PIXELS"] = str(max_image_pixels)
        click.get_current_context().call_on_close(functools.partial(_restore, saved))


def _restore(saved: str | None) -> None:
    if saved is None:
        os.environ.pop("DEPTHFLOW_MAX_IMAGE_PIXELS", None)
    else:
        os.environ["DEPTHFLOW_MAX_IMAGE_PIXELS"] = saved


@click.command()
@click.argument("file")
@options.one_line_errors
def info(file):
    """Print a readable summary of a depthflow result file."""
    from depthflow.reporting.info import describe

    click.echo(describe(file))


for _command in (analyze, phases, fit, info, models, probe, compare, report):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
