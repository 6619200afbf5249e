"""``depthflow report``: one self-contained HTML page of a result file."""

from __future__ import annotations

from pathlib import Path

import click

from depthflow.cli import options


@click.command()
@click.argument("file")
@click.option("-o", "--output", default=None,
              help="HTML page [default: the result file's name with .html].")
@options.overwrite
@options.quiet
@options.one_line_errors
def report(file, output, overwrite, quiet):
    """One HTML page (figures embedded, no network) of a depthflow result file: model,
    data, provenance, every group's key numbers with intervals, and the figures."""
    from depthflow.reporting import write_report

    output = Path(file).with_suffix(".html") if output is None else output
    path = write_report(file, output, overwrite=overwrite)
    if not quiet:
        click.echo(f"wrote {path}")
