"""Files of a fit beside the checkpoint: the output directory, ``log.csv``, ``curves.png``."""

from __future__ import annotations

import contextlib
import csv
import io
import os
from pathlib import Path
from typing import Any

from depthflow.errors import OutputError
from depthflow.io.files import atomic_path
from depthflow.raptor.io import CONFIG_FILE, MODEL_FILE, STATE_FILE

#: Every file ``depthflow fit`` writes in its output directory; ``--overwrite`` removes
#: these (and only these) of an earlier fit before the new one starts.
FIT_FILES = (MODEL_FILE, CONFIG_FILE, STATE_FILE, "fit_config.json", "evaluation.json",
             "evaluation.nc", "log.csv", "fit.log", "curves.png")
_FIT_MARKERS = (STATE_FILE, "fit_config.json")


def prepare_output(directory: str | os.PathLike[str], *, overwrite: bool,
                   resume: bool, create: bool = True) -> Path:
    """Check (and with ``create``, make) the output directory before any work is done."""
    path = Path(directory)
    if resume:
        if not (path / STATE_FILE).is_file():
            raise OutputError(f"nothing to resume in {str(path)!r}: no {STATE_FILE}")
    elif path.exists():
        if not path.is_dir():
            raise OutputError(f"output {str(path)!r} exists and is not a directory")
        entries = [e.name for e in path.iterdir()]
        if entries and not overwrite:
            raise OutputError(
                f"output directory {str(path)!r} exists and is not empty; pass --overwrite "
                "to replace it or --resume to continue it")
        foreign = sorted(n for n in entries if n not in FIT_FILES and not n.startswith("."))
        if entries and (foreign or not any(n in entries for n in _FIT_MARKERS)):
            what = (f"holds {foreign[0]!r}, which depthflow fit did not write" if foreign
                    else "is not the output of a depthflow fit")
            raise OutputError(f"output directory {str(path)!r} {what}; --overwrite only "
                              "replaces an earlier fit: choose another directory")
        if entries and create:          # the old run's files go before the new run writes
            for name in (*FIT_FILES[3:], *FIT_FILES[:3]):       # its resume record last
                with contextlib.suppress(FileNotFoundError):
                    (path / name).unlink()
    else:
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise OutputError(f"output directory {str(parent)!r} does not exist; create it "
                              "first")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"output directory {str(parent)!r} is not writable")
        if not create:
            return path
        try:
            path.mkdir()
        except OSError as exc:
            raise OutputError(f"cannot create output directory {str(path)!r}: "
                              f"{exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {str(path)!r} is not writable")
    return path


def write_log_csv(directory: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    fields = sorted({k for row in rows for k in row},
                    key=["step", "stage", "lr", "tf_ratio", "loss", "r2_image_last",
                         "r2_image_cls_last", "r2_last", "r2_mean", "time_s"].index)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(directory / "log.csv", overwrite=True) as tmp:
        tmp.write_text(buffer.getvalue())


def plot_curves(directory: Path, rows: list[dict[str, Any]], config) -> None:
    """``curves.png``: training loss (log) and the held-out fidelity of the last depth vs
    step: ``r2_image`` first (all tokens, cls), then the standard R^2 (dashed)."""
    from depthflow.plots import pyplot

    if not rows:
        return
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    ax1.plot(steps, losses, color="tab:blue")
    if min(losses) > 0:                    # an exact surrogate's loss is 0: linear axis then
        ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.set_title("loss")
    evals = [r for r in rows if "r2_last" in r]
    if evals:
        at = [r["step"] for r in evals]
        for key, label, style in (
                ("r2_image_last", "r2_image, all tokens", "-"),
                ("r2_image_cls_last", "r2_image, cls", "-"),
                ("r2_last", "standard R^2 (pooled variance)", "--"),
                ("r2_mean", "standard R^2, mean over depths", ":")):
            if all(key in r for r in evals):
                ax2.plot(at, [r[key] for r in evals], style, marker="o", ms=3, label=label)
        ax2.axhline(0.0, color="grey", lw=0.8)
        ax2.legend(fontsize=7)
        low = min(min(r.get("r2_image_last", 0.0), r.get("r2_image_cls_last", 0.0))
                  for r in evals)
        ax2.set_ylim(max(low, -1.0) - 0.05, 1.02)
    ax2.set_xlabel("step")
    ax2.set_ylabel("fidelity (held-out batch; last depth)")
    ax2.set_title("fidelity: r2_image 0 = the image-independent mean")
    for ax in (ax1, ax2):
        if 0 < config.stage1_steps < steps[-1]:
            ax.axvline(config.stage1_steps, color="grey", ls=":", lw=1)
    fig.tight_layout()
    with atomic_path(directory / "curves.png", overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
