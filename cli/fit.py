"""``depthflow fit``: fit a Raptor surrogate (k recurrent blocks) to a ViT.

Also the torchrun entry point for several processes (DDP)::

    torchrun --nproc-per-node 4 -m depthflow.cli.fit ckpt.pth --images train/ --k 2 -o r2/
"""

from __future__ import annotations

import functools
import os

import click

from depthflow.errors import ConfigError
from depthflow.raptor.config import FitConfig

from . import options

_D = FitConfig()


def one_line_errors(func):
    """``main.one_line_errors``, looked up at call time: ``main`` imports this module."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from .main import one_line_errors as wrap

        return wrap(func)(*args, **kwargs)

    return wrapper


def _ints(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    if text.strip() in ("", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--thresholds: expected comma-separated layer numbers like 7,10, "
                          f"got {text!r}") from None


def _weights(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ConfigError(f"--token-weights: expected three numbers cls,register,patch like "
                          f"0.45,0.10,0.45, got {text!r}")
    return values


@click.command()
@click.argument("checkpoint", required=False)
@click.option("--images", default=None,
              help="Training images: 'digits:train', a folder or a .npy/.npz file "
                   "[default: digits:train, or the run's own when resuming].")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Train on the first N training images only (pilots).")
@click.option("--eval-images", default=None,
              help="Held-out images for the evaluation [default: digits:test for the digits, "
                   "else the training images (in-sample)].")
@click.option("-o", "--output", default=None,
              help="Output directory [default: raptor<k>, or the --resume directory].")
@click.option("--k", type=click.IntRange(min=1), default=_D.k, show_default=True,
              help="Number of Raptor blocks.")
@click.option("--thresholds", default=None,
              help="Last layer of every phase but the final one, e.g. 7,10 for k=3 "
                   "[default: max-cut phases of the training images].")
@click.option("--stage1-steps", type=click.IntRange(min=0), default=_D.stage1_steps,
              show_default=True, help="Stage 1 steps (each block on its own segment).")
@click.option("--stage2-steps", type=click.IntRange(min=0), default=_D.stage2_steps,
              show_default=True, help="Stage 2 steps (all blocks chained, autoregressive).")
@click.option("--batch-size", type=click.IntRange(min=1), default=_D.batch_size,
              show_default=True, help="Global batch (split over DDP processes).")
@click.option("--lr", type=float, default=_D.lr, show_default=True,
              help="Peak AdamW learning rate (paper: 3e-4).")
@click.option("--min-lr", type=float, default=_D.min_lr, show_default=True,
              help="End of the cosine.")
@click.option("--weight-decay", type=float, default=_D.weight_decay, show_default=True)
@click.option("--warmup-fraction", type=float, default=_D.warmup_fraction, show_default=True,
              help="Linear warmup, as a fraction of each stage (paper: 10k of 312.5k).")
@click.option("--grad-clip", type=float, default=_D.grad_clip, show_default=True,
              help="Gradient-norm clip (per block in stage 1).")
@click.option("--tf-mode", type=click.Choice(["anneal", "teacher", "autoregressive"]),
              default=_D.tf_mode, show_default=True,
              help="Stage 1 loss: teacher forcing annealed to autoregressive, teacher forcing "
                   "only, or autoregressive only.")
@click.option("--anneal-fraction", type=float, default=_D.anneal_fraction, show_default=True,
              help="Fraction of stage 1 over which teacher forcing fades to 0.")
@click.option("--token-weights", default="0.45,0.10,0.45", show_default=True,
              help="Loss weights cls,register,patch.")
@click.option("--no-token-weighting", is_flag=True,
              help="One MSE over all tokens instead of cls/register/patch weights.")
@click.option("--input-noise", type=float, default=_D.input_noise, show_default=True,
              help="Std of Gaussian noise added to the states fed to the blocks.")
@click.option("--mlp", type=click.Choice(["swiglu", "gelu"]), default=_D.mlp,
              show_default=True, help="Raptor block MLP.")
@click.option("--mlp-hidden-dim", type=click.IntRange(min=1), default=None,
              help="MLP width [default: 4 x width for SwiGLU, the teacher's for GELU].")
@click.option("--layerscale-init", type=float, default=_D.layerscale_init, show_default=True)
@click.option("--no-depth-conditioning", is_flag=True,
              help="Autonomous blocks (no S(t) scales).")
@click.option("--init", "init", type=click.Choice(["random", "teacher"]), default=_D.init,
              show_default=True, help="Block init: random (paper) or the teacher's mid-phase "
                                      "layer.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default=_D.dtype,
              show_default=True, help="bfloat16 = autocast (GPU speed path).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the blocks (GPU).")
@click.option("--log-every", type=click.IntRange(min=1), default=_D.log_every,
              show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=_D.checkpoint_every,
              show_default=True)
@click.option("--eval-every", type=click.IntRange(min=1), default=_D.eval_every,
              show_default=True, help="Steps between held-out R^2 points of the curve.")
@click.option("--cache-dir", default=None,
              help="Cache teacher states here (compressed, bounded by --cache-gb).")
@click.option("--cache-gb", type=float, default=_D.cache_gb, show_default=True)
@click.option("--resume", default=None,
              help="Continue the run in this directory exactly where it stopped.")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Stop after this many steps in all (resumable, no evaluation).")
@options.arch
@options.device
@options.seed
@options.overwrite
@options.quiet
@one_line_errors
def fit(checkpoint, images, limit, eval_images, output, k, thresholds, stage1_steps,
        stage2_steps, batch_size, lr, min_lr, weight_decay, warmup_fraction, grad_clip, tf_mode,
        anneal_fraction, token_weights, no_token_weighting, input_noise, mlp,
        mlp_hidden_dim, layerscale_init, no_depth_conditioning, init, dtype, compile_,
        log_every, checkpoint_every, eval_every, cache_dir, cache_gb, resume, stop_after,
        arch, device, seed, overwrite, quiet):
    """Fit a Raptor surrogate: k recurrent blocks that reproduce every teacher layer.

    CHECKPOINT: any checkpoint 'depthflow analyze' reads. Default: the embedded digits ViT.
    Writes the surrogate (safetensors + JSON), evaluation.json/.nc, curves.png and logs.
    """
    from depthflow.raptor.fit import fit_checkpoint

    from .main import _command_line

    cls_w, reg_w, patch_w = _weights(token_weights)
    config = FitConfig(
        k=k, thresholds=_ints(thresholds), mlp=mlp, mlp_hidden_dim=mlp_hidden_dim,
        layerscale_init=layerscale_init, depth_conditioning=not no_depth_conditioning,
        init=init, stage1_steps=stage1_steps, stage2_steps=stage2_steps,
        batch_size=batch_size, lr=lr, min_lr=min_lr, weight_decay=weight_decay,
        warmup_fraction=warmup_fraction, grad_clip=grad_clip, tf_mode=tf_mode,
        anneal_fraction=anneal_fraction, token_weighting=not no_token_weighting,
        cls_weight=cls_w, register_weight=reg_w, patch_weight=patch_w,
        input_noise=input_noise, seed=seed, device=device, dtype=dtype, compile=compile_,
        log_every=log_every, checkpoint_every=checkpoint_every, eval_every=eval_every,
        cache_dir=cache_dir, cache_gb=cache_gb)
    output = output or resume or f"raptor{k}"
    if resume and os.path.abspath(output) != os.path.abspath(resume):
        raise ConfigError(f"--resume continues in its own directory {resume!r}; drop -o "
                          f"{output!r} or give the same directory")
    main_rank = os.environ.get("RANK", "0") == "0"
    result = fit_checkpoint(checkpoint, output, images=images, limit=limit,
                            eval_images=eval_images,
                            arch=arch, config=config, overwrite=overwrite,
                            resume=resume is not None, progress=not quiet and main_rank,
                            stop_after=stop_after, command=_command_line())
    if quiet or not main_rank:
        return
    where = result.directory
    if not result.complete:
        click.echo(f"stopped at step {result.steps}; continue with --resume {where}")
        return
    fid = result.fidelity
    click.echo(f"wrote {where}/ (k={result.config.k}, thresholds "
               f"{list(result.thresholds)}, {result.steps} steps)")
    if fid is not None and fid.task != "none":
        click.echo(f"accuracy: teacher {fid.teacher_accuracy:.4f}, raptor "
                   f"{fid.raptor_accuracy:.4f} (ratio {fid.accuracy_ratio:.3f}, {fid.task})")
    if fid is not None:
        click.echo(f"last-layer R^2 {fid.last('r2'):.4f} (paper form "
                   f"{fid.last('r2_paper'):.4f})")


if __name__ == "__main__":  # pragma: no cover - torchrun entry
    fit()
