"""Fit Raptor surrogates of the embedded digits ViT: the default fit and the ablation ladder.

    python studies/raptor_digits/run.py [--out-dir DIR] [--rungs 0,1,...] [--overwrite]

Writes ``config.json`` (the whole configuration and versions) into ``--out-dir`` (default
``outputs/``), one fit directory per rung (``rung0`` ... ``rung4``: checkpoint, evaluation,
curves, logs) and ``ladder.json`` + ``ladder.md`` with the held-out numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from config import get_config  # noqa: E402

from depthflow.api.loader import load_model  # noqa: E402
from depthflow.data.images import open_images  # noqa: E402
from depthflow.io.provenance import versions  # noqa: E402
from depthflow.raptor import FitConfig, fit_raptor  # noqa: E402


def run_rung(index: int, name: str, overrides: dict, config: dict, out_dir: Path,
             thresholds, overwrite: bool) -> dict:
    options = {**config["base"], **overrides}
    if thresholds is not None and options.get("thresholds") is None:
        options["thresholds"] = thresholds
    options.setdefault("cache_dir", str(out_dir / "teacher-cache"))    # shared by the rungs
    options.setdefault("cache_dtype", "float32")
    fit_config = FitConfig(**options)
    tic = time.perf_counter()
    result = fit_raptor(load_model(config["teacher"]), open_images(config["images"]),
                        out_dir / f"rung{index}", config=fit_config,
                        eval_source=open_images(config["eval_images"]), overwrite=overwrite,
                        progress=True, command=sys.argv)
    fid = result.fidelity
    return {"rung": index, "name": name, "overrides": overrides,
            "thresholds": list(result.thresholds), "teacher_accuracy": fid.teacher_accuracy,
            "raptor_accuracy": fid.raptor_accuracy, "accuracy_ratio": fid.accuracy_ratio,
            "agreement": fid.agreement, "r2_last": fid.last("r2"),
            "r2_paper_last": fid.last("r2_paper"), "r2_cls_last": fid.last("r2", "cls"),
            "r2_patch_last": fid.last("r2", "patch"), "cosine_cls_last":
            fid.last("cosine", "cls"), **image_fidelity(fid),
            "seconds": round(time.perf_counter() - tic, 1)}


def image_fidelity(fid) -> dict:
    """r2_image and the baselines (docs/methods.md section 16), as study 1-4's ``lib``."""
    sys.path.insert(0, str(HERE.parent / "stochastic_depth"))
    import lib
    return lib.image_fidelity(fid)


def table(rows: list[dict]) -> str:
    def f(v, d=3):
        return "n/a" if v is None or v != v else f"{v:.{d}f}"

    lines = ["| rung | r2_image cls (last) | r2_image all (last) | best baseline r2_image cls "
             "| above best baseline at every depth (cls) | raptor acc | ratio | refit / "
             "fine-tuned ratio | R^2 last (std) | R^2 last (paper) | R^2 cls | time s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r.get("baselines", {})
        best = max(base.items(), key=lambda kv: kv[1]["r2_image_cls_last"]) if base else None
        beats = r.get("beats_best_baseline", {})
        lines.append(
            f"| {r['name']} | {f(r.get('r2_image_cls_last'))} | {f(r.get('r2_image_last'))} | "
            + (f"{f(best[1]['r2_image_cls_last'])} ({best[0]})" if best else "n/a") + " | "
            + (f"{'yes' if beats.get('every_depth') else 'no'} ({beats.get('depths_beaten')}"
               f"/{beats.get('depths')})" if beats else "n/a") + " | "
            f"{r['raptor_accuracy']:.4f} | {r['accuracy_ratio']:.3f} | "
            f"{f(r.get('refit_ratio'))} / {f(r.get('finetuned_ratio'))} | "
            f"{r['r2_last']:.3f} | {r['r2_paper_last']:.3f} | "
            f"{r['r2_cls_last']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE / "outputs")
    parser.add_argument("--rungs", default=None, help="comma-separated rung indices")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    config = get_config()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "config.json").write_text(json.dumps(
        {"config": config, "versions": versions()}, indent=2, default=str) + "\n")
    wanted = range(len(config["ladder"])) if args.rungs is None else \
        [int(i) for i in args.rungs.split(",")]
    results_path = args.out_dir / "ladder.json"
    rows = json.loads(results_path.read_text()) if results_path.is_file() else []
    thresholds = next((r["thresholds"] for r in rows), None)
    for index in wanted:
        name, overrides = config["ladder"][index]
        row = run_rung(index, name, overrides, config, args.out_dir, thresholds,
                       args.overwrite)
        thresholds = row["thresholds"]
        if results_path.is_file():        # another run.py may have added rungs meanwhile
            rows = json.loads(results_path.read_text())
        rows = [r for r in rows if r["rung"] != index] + [row]
        rows.sort(key=lambda r: r["rung"])
        results_path.write_text(json.dumps(rows, indent=2) + "\n")
        (args.out_dir / "ladder.md").write_text(table(rows))
        print(table(rows))


if __name__ == "__main__":
    main()
