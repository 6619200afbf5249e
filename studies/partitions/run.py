"""Study 2: Raptor fidelity with max-cut phases vs random layer -> block assignments.

    python studies/partitions/run.py [--tiny] [--seeds N] [--steps S1,S2] [--ks 2,3,4]
                                     [--models embedded,study1] [--out DIR] [--work DIR]

For each teacher (the embedded digits ViT; a study-1 tiny ViT with p = 0.5, seed 0) and
k in {2, 3, 4}: one Raptor on the max-cut phases (``segment_into``, fit seeds 0..m-1), and
Raptors on random CONTIGUOUS assignments (k - 1 thresholds drawn uniformly among all
compositions of L into k parts, the max-cut one excluded) and random NON-CONTIGUOUS
assignments (a uniformly random permutation of the max-cut phase labels, so the block
sizes are the max-cut ones, contiguous draws rejected), one per seed. Every fit has the same
step budget and recipe (paper). Reports the held-out R^2 (last layer, standard; paper
pooled form) and accuracy ratio, the max-cut minus random difference with a bootstrap 95%
interval over random seeds, and the share of random assignments max-cut beats.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "stochastic_depth"))

import lib  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT = {
    "models": {"embedded": {"path": None, "seeds": 10, "steps": [30, 30]},
               "study1_p0.5_s0": {"path": "study1", "seeds": 10, "steps": [60, 60]}},
    "ks": [2, 3, 4], "maxcut_seeds": 2, "batch_size": 32, "lr": 1e-3, "recipe": "paper",
    "bootstrap": 2000,
}
TINY = {"models": {"study1_p0.5_s0": {"path": "study1", "seeds": 1, "steps": [2, 2]}},
        "ks": [2], "maxcut_seeds": 1, "batch_size": 32, "lr": 1e-3, "recipe": "paper",
        "bootstrap": 50}


def study1_teacher(work: Path, tiny: bool) -> Path:
    """The study-1 model with p = 0.5, seed 0 (trained here with study 1's settings when
    study 1's work folder does not have it)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "study1_run", HERE.parent / "stochastic_depth" / "run.py")
    study1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study1)
    cfg = study1.TINY if tiny else study1.DEFAULT
    existing = HERE.parent / "stochastic_depth" / "work" / "p0.5_s0.safetensors"
    if existing.is_file() and not tiny:
        return existing
    path = work / ("p0.5_s0_tiny.safetensors" if tiny else "p0.5_s0.safetensors")
    if not path.is_file():
        model, _ = lib.train_vit({**cfg["vit"], "seed": 0, "drop_path": 0.5})
        lib.save_vit(model, path, {"drop_path": 0.5, "seed": 0, "study": "partitions"})
    return path


def random_contiguous(depth: int, k: int, rng, exclude) -> list[int]:
    options = [c for c in itertools.combinations(range(1, depth), k - 1)
               if list(c) != list(exclude or [])]
    cuts = options[rng.integers(len(options))]
    edges = [0, *cuts, depth]
    return [j for j in range(k) for _ in range(edges[j + 1] - edges[j])]


def random_noncontiguous(labels: list[int], rng) -> list[int]:
    from depthflow.phases.segmentation import canonical_labels, is_contiguous
    for _ in range(10000):
        draw = list(rng.permutation(labels))
        if not is_contiguous(draw):
            return [int(v) for v in canonical_labels(draw)]
    raise RuntimeError("no non-contiguous permutation found")


def run_model(name: str, spec: dict, config: dict, work: Path, tiny: bool,
              report: bool = False) -> list[dict]:
    from depthflow.api.loader import load_model
    from depthflow.phases.segmentation import phase_metrics

    path = spec["path"]
    if path == "study1":
        path = study1_teacher(work, tiny)
    model = load_model(str(path) if path else None).model.eval()
    distance = lib.layer_distance(model)
    depth = len(distance)
    rows = []
    for k in config["ks"]:
        st = lib.structure(distance, k)
        maxcut = st["labels"]
        thresholds = st["thresholds"]
        jobs = [("max-cut", s, maxcut) for s in range(config["maxcut_seeds"])]
        rng = np.random.default_rng(1000 * k + 7)
        for s in range(spec["seeds"]):
            jobs.append(("random contiguous", s, random_contiguous(depth, k, rng, thresholds)))
        for s in range(spec["seeds"]):
            jobs.append(("random non-contiguous", s, random_noncontiguous(maxcut, rng)))
        for family, seed, labels in jobs:
            fit_spec = {key: v for key, v in spec.items() if key != "seeds"}  # not per fit
            key = hashlib.sha1(json.dumps([name, k, family, seed, labels, fit_spec,
                                           config["lr"], config["batch_size"],
                                           config["recipe"]],
                                          sort_keys=True).encode()).hexdigest()[:10]
            cache = work / f"{name}_k{k}_{family.replace(' ', '_')}_{seed}_{key}.json"
            if cache.is_file():
                rows.append(json.loads(cache.read_text()))
                continue
            if report:
                continue
            contiguous_labels = _is_sorted(labels)       # blocks 0, 1, ... in layer order
            fit = lib.fit(path, workdir=work / f"fit_{name}_k{k}", k=k,
                          steps=tuple(spec["steps"]), seed=seed,
                          thresholds=_thresholds(labels) if contiguous_labels else None,
                          assignment=None if contiguous_labels else labels,
                          batch_size=config["batch_size"], lr=config["lr"],
                          overrides={"recipe": config["recipe"]})
            fit.update({"model": name, "family": family, "labels": labels,
                        "modularity": phase_metrics(distance, labels)["modularity"]})
            lib.write_json(cache, fit)
            rows.append(fit)
            print(f"{name} k={k} {family} seed {seed}: R2 {fit['r2_last']:.3f} ratio "
                  f"{fit['accuracy_ratio']:.3f} ({fit['seconds']:.0f} s)", flush=True)
    return rows


def _is_sorted(labels) -> bool:
    return all(b >= a for a, b in zip(labels[:-1], labels[1:]))


def _thresholds(labels) -> list[int]:
    return [i + 1 for i in range(len(labels) - 1) if labels[i + 1] != labels[i]]


def analyse(rows: list[dict], config: dict) -> list[dict]:
    reps = config["bootstrap"]
    out = []
    for name in config["models"]:
        for k in config["ks"]:
            sel = [r for r in rows if r["model"] == name and r["k"] == k]
            mc = [r for r in sel if r["family"] == "max-cut"]
            for metric in ("r2_last", "r2_paper_pooled", "accuracy_ratio"):
                m = float(np.mean([r[metric] for r in mc]))
                entry = {"model": name, "k": k, "metric": metric, "maxcut": m,
                         "maxcut_values": [r[metric] for r in mc]}
                for family in ("random contiguous", "random non-contiguous"):
                    vals = np.array([r[metric] for r in sel if r["family"] == family])
                    d = lib.mean_ci(m - vals, reps=reps)
                    entry[family] = {"mean": lib.mean_ci(vals, reps=reps),
                                     "difference": d,
                                     "share_beaten": float(np.mean(m > vals)) if len(vals)
                                     else float("nan"), "values": vals.tolist()}
                out.append(entry)
    return out


def write_outputs(rows, res, config, out: Path) -> None:
    import xarray as xr

    runtime = sum(r["seconds"] for r in rows)
    ds = xr.Dataset({
        name: (("fit",), np.array([r[name] for r in rows], dtype=float))
        for name in ("r2_last", "r2_paper_pooled", "accuracy_ratio", "modularity", "k", "seed")},
        coords={"fit": np.arange(len(rows)), "model": ("fit", [r["model"] for r in rows]),
                "family": ("fit", [r["family"] for r in rows]),
                "labels": ("fit", [",".join(map(str, r["labels"])) for r in rows])})
    ds.attrs.update({"title": "Study 2: max-cut vs random partitions",
                     "config": json.dumps(config), "compute_s": round(runtime, 1)})
    lib.write_netcdf(ds, out / "results.nc")
    lib.write_json(out / "fits.json", rows)
    lib.write_json(out / "analysis.json", res)
    lines = [f"# Study 2: max-cut vs random partitions (compute {runtime / 60:.1f} min)", "",
             "Held-out digits (450). Max-cut = mean over its fit seeds; random = mean over "
             "random assignments (one fit each); difference = max-cut minus random with a "
             "bootstrap 95% interval over random assignments; beaten = share of random "
             "assignments with a lower value.", "",
             "| model | k | metric | max-cut | random contiguous | diff [95%] | beaten | "
             "random non-contiguous | diff [95%] | beaten | n random |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in res:
        c, nc = e["random contiguous"], e["random non-contiguous"]
        lines.append(
            f"| {e['model']} | {e['k']} | {e['metric']} | {lib.fmt(e['maxcut'])} | "
            f"{lib.fmt(c['mean']['mean'])} | {lib.ci_text(c['difference'])} | "
            f"{lib.fmt(c['share_beaten'], 2)} | {lib.fmt(nc['mean']['mean'])} | "
            f"{lib.ci_text(nc['difference'])} | {lib.fmt(nc['share_beaten'], 2)} | "
            f"{c['mean']['n']} / {nc['mean']['n']} |")
    lib.write_text(out / "table.md", "\n".join(lines) + "\n")
    figures(rows, config, out / "figures")
    lib.write_json(out / "summary.json", summary(res))


def summary(res) -> list[dict]:
    out = []
    for family in ("random contiguous", "random non-contiguous"):
        sel = [e for e in res if e["metric"] == "r2_last"]
        wins = sum(1 for e in sel if e[family]["difference"]["lo"] > 0)
        losses = sum(1 for e in sel if e[family]["difference"]["hi"] < 0)
        diffs = ", ".join(f"{e['model']} k={e['k']}: {lib.fmt(e[family]['difference']['mean'])}"
                          for e in sel)
        ints = ", ".join(f"[{lib.fmt(e[family]['difference']['lo'])}, "
                         f"{lib.fmt(e[family]['difference']['hi'])}]" for e in sel)
        agrees = "yes" if wins == len(sel) else ("no" if wins == 0 and losses > 0 else
                                                 "partly")
        out.append(lib.summary_record(
            study="partitions", claim=f"max-cut phases give a better Raptor than {family} "
            "assignments", paper="max-cut beats random contiguous and non-contiguous "
            "(10 seeds)", ours=f"R^2 (last layer) max-cut minus random: {diffs}",
            interval=ints, n=f"{len(sel)} model x k cells; "
            f"{sel[0][family]['mean']['n'] if sel else 0}+ random assignments each",
            agrees=agrees, note=f"interval above 0 in {wins} of {len(sel)} cells"))
    return out


def figures(rows, config, out: Path) -> None:
    from depthflow.plots import pyplot
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    names = list(config["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2), squeeze=False)
    colors = {"max-cut": "C3", "random contiguous": "C0", "random non-contiguous": "C2"}
    for ax, name in zip(axes[0], names):
        for i, k in enumerate(config["ks"]):
            for j, family in enumerate(colors):
                vals = [r["r2_last"] for r in rows if r["model"] == name and r["k"] == k
                        and r["family"] == family]
                x = i + (j - 1) * 0.25
                ax.scatter(np.full(len(vals), x), vals, color=colors[family], s=12,
                           label=family if i == 0 else None)
        ax.set_xticks(range(len(config["ks"])), [f"k={k}" for k in config["ks"]])
        ax.set_ylabel("held-out R^2, last layer")
        ax.set_title(name, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "partitions.png", dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--seeds", type=int, default=None, help="random assignments per "
                        "family, k and model")
    parser.add_argument("--steps", default=None, help="Raptor steps per stage, e.g. 200,200")
    parser.add_argument("--ks", default=None)
    parser.add_argument("--report", action="store_true",
                        help="write the outputs from the finished fits only")
    parser.add_argument("--only-model", default=None, help="compute this model only")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    lib.setup_threads(1)
    config = json.loads(json.dumps(TINY if args.tiny else DEFAULT))
    for spec in config["models"].values():
        if args.seeds:
            spec["seeds"] = args.seeds
        if args.steps:
            spec["steps"] = [int(s) for s in args.steps.split(",")]
    if args.ks:
        config["ks"] = [int(k) for k in args.ks.split(",")]
    out, work = args.out, args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    lib.write_json(out / "config.json", {"config": config, "versions": lib.versions(),
                                         "command": sys.argv})
    rows = []
    for name, spec in config["models"].items():
        if args.only_model and name != args.only_model:
            continue
        rows += run_model(name, spec, config, work, args.tiny, report=args.report)
    models = [n for n in config["models"] if any(r["model"] == n and r["family"] == "max-cut"
                                                 for r in rows)]
    config = {**config, "models": {n: config["models"][n] for n in models}}
    config["ks"] = [k for k in config["ks"] if any(r["k"] == k for r in rows)]
    write_outputs(rows, analyse(rows, config), config, out)
    print(f"wrote {out}/table.md, summary.json, results.nc, figures/")


if __name__ == "__main__":
    main()
