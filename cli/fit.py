"""``depthflow fit``: fit a Raptor surrogate (k recurrent blocks) to a ViT.

Also the torchrun entry point for several processes (DDP)::

    torchrun --nproc-per-node 4 -m depthflow.cli.fit ckpt.pth --images train/ --k 2 -o r2/
"""

from __future__ import annotations

import os

import click

from depthflow.cli import options
from depthflow.errors import ConfigError
from depthflow.raptor.config import FitConfig


@click.command()
@click.argument("checkpoint", required=False)
@click.option("--images", default=None,
              help=f"Training images: {options.IMAGE_SOURCES} [default: digits:train, or the "
                   "run's own when resuming].")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Train on the first N training images only (pilots).")
@click.option("--eval-images", default=None,
              help="Held-out images for the evaluation [default: digits:test for the digits, "
                   "else the training images (in-sample)].")
@click.option("-o", "--output", default=None,
              help="Output directory [default: raptor<k>, or the --resume directory].")
@click.option("--resume", default=None,
              help="Continue the run in this directory exactly where it stopped.")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Stop after this many steps in all (resumable, no evaluation).")
@options.config_options(FitConfig)
@options.arch
@options.overwrite
@options.quiet
@options.one_line_errors
def fit(checkpoint, images, limit, eval_images, output, resume, stop_after, arch, overwrite,
        quiet, **fit_options):
    """Fit a Raptor surrogate: k recurrent blocks that reproduce every teacher layer.

    CHECKPOINT: any checkpoint 'depthflow analyze' reads. Default: the embedded digits ViT.
    Writes the surrogate (safetensors + JSON), evaluation.json/.nc, curves.png and logs.
    """
    from depthflow.api.workflows import fit_checkpoint

    config = options.build_config(FitConfig, fit_options)
    k = config.k
    if output is not None and not output.strip():
        raise ConfigError("the output directory is empty; give a name (e.g. -o raptor2)")
    output = (resume or f"raptor{k}") if output is None else output
    if resume and os.path.abspath(output) != os.path.abspath(resume):
        raise ConfigError(f"--resume continues in its own directory {resume!r}; drop -o "
                          f"{output!r} or give the same directory")
    main_rank = os.environ.get("RANK", "0") == "0"
    result = fit_checkpoint(checkpoint, output, images=images, limit=limit,
                            eval_images=eval_images,
                            arch=arch, config=config, overwrite=overwrite,
                            resume=resume is not None, progress=not quiet and main_rank,
                            stop_after=stop_after, command=options.command_line())
    if quiet or not main_rank:
        return
    where = result.directory
    if not result.complete:
        click.echo(f"stopped at step {result.steps}; continue with --resume {where}")
        return
    fid = result.fidelity
    click.echo(f"wrote {where}/ (k={result.config.k}, thresholds "
               f"{list(result.thresholds)}, {result.steps} steps)")
    if fid is None:
        return
    for line in fidelity_lines(fid):
        click.echo(line)


def fidelity_lines(fid) -> list[str]:
    """The printed summary: r2_image first, every baseline beside the Raptor."""
    def f(v):
        return "n/a" if v is None or v != v else f"{v:.3f}"

    lines = []
    rows = [("raptor", fid), *fid.baselines.items()]
    has_cls = "cls" in fid.groups
    if "r2_image" in fid.arrays:
        lines.append("last layer:      r2_image all" + ("   cls" if has_cls else "") +
                     "   R^2 (pooled)  probe acc (teacher / refit / fine-tuned)")
        for name, r in rows:
            probes = r.probes or {}
            acc = " / ".join(f(probes.get(w, {}).get("accuracy")) for w in
                             ("teacher_probe", "refit_probe", "finetuned_probe"))
            lines.append(f"  {name:<15} {f(r.last('r2_image')):>9}" +
                         (f" {f(r.last('r2_image', 'cls')):>6}" if has_cls else "") +
                         f"   {f(r.last('r2')):>11}  {acc if probes else 'n/a'}")
        if fid.baselines:
            lines.append(fid.verdict())
    if fid.task != "none":
        lines.append(f"accuracy: teacher {fid.teacher_accuracy:.4f}, raptor "
                     f"{fid.raptor_accuracy:.4f} (ratio {fid.accuracy_ratio:.3f}, {fid.task})")
    lines.append(f"last-layer R^2 {fid.last('r2'):.4f} (paper form "
                 f"{fid.last('r2_paper'):.4f})")
    return lines


if __name__ == "__main__":  # pragma: no cover - torchrun entry
    fit()
