"""Study 1: does stochastic depth promote block recurrence? (paper section 4)

    python studies/stochastic_depth/run.py [--tiny] [--seeds N] [--epochs N] [--steps S1,S2]
                                           [--set KEY=JSON] [--out DIR] [--work DIR]

12-block tiny ViTs (width 16, 4x4-pixel patches) on digits with +-1 pixel shifts, one drop probability p for
every block, p in {0, .1, .2, .3, .5, .7} x seeds. Per model: held-out accuracy, the layer x
layer similarity, phase-structure metrics of the max-cut phases (k = 2, 3), and Raptor k = 2
and 3 fits (paper recipe; standard and paper R^2, accuracy ratio). Reports Spearman trends
with p and the Spearman correlation of every phase metric with Raptor fidelity, pooled and
within p, with bootstrap 95% intervals. Writes ``config.json``, ``results.nc`` (no raw
states), ``models.json``, ``table.md``, ``summary.json`` and ``figures/`` into ``--out``;
checkpoints and fit directories go to ``--work`` (not committed). Finished models are
reused from ``--work`` when the run is repeated with the same configuration.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lib  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT = {
    "ps": [0.0, 0.1, 0.2, 0.3, 0.5, 0.7],
    "seeds": [0, 1, 2],
    "vit": {"arch": lib.TINY_ARCH, "epochs": 30, "lr": 3e-3, "min_lr": 1e-5,
            "warmup_epochs": 1, "weight_decay": 0.05, "batch_size": 32, "translate": 1,
            "label_smoothing": 0.1, "layerscale_init": 0.01, "subset": None},
    "ks": [2, 3],
    "raptor": {"steps": [40, 40], "batch_size": 32, "lr": 1e-3, "recipe": "paper"},
    "distance_images": 256,
    "bootstrap": 2000,
}
TINY = {**DEFAULT, "ps": [0.0, 0.5], "seeds": [0],
        "vit": {**DEFAULT["vit"], "epochs": 1}, "ks": [2],
        "raptor": {**DEFAULT["raptor"], "steps": [3, 2]}, "distance_images": 64,
        "bootstrap": 50}
METRICS = ("mean_similarity", "contrast", "normalized_cut", "modularity")
FIDELITY = ("r2_last", "r2_paper_pooled", "accuracy_ratio")


def run_model(p: float, seed: int, config: dict, work: Path, report: bool = False):
    key = hashlib.sha1(json.dumps([p, seed, config["vit"], config["ks"], config["raptor"],
                                   config["distance_images"]], sort_keys=True)
                       .encode()).hexdigest()[:10]
    cache = work / f"p{p:g}_s{seed}_{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    if report:
        return None
    tic = time.perf_counter()
    model, rows = lib.train_vit({**config["vit"], "seed": seed, "drop_path": p})
    ckpt = lib.save_vit(model, work / f"p{p:g}_s{seed}.safetensors",
                        {"drop_path": p, "seed": seed, "study": "stochastic_depth"})
    distance = lib.layer_distance(model, config["distance_images"])
    out = {"p": p, "seed": seed, "test_acc": rows[-1]["test_acc"],
           "train_acc": rows[-1]["train_acc"], "distance": distance.tolist(),
           "train_seconds": round(time.perf_counter() - tic, 1), "structure": {}, "fits": {},
           "checkpoint": str(ckpt)}
    for k in config["ks"]:
        st = lib.structure(distance, k)
        out["structure"][str(k)] = st
        rc = config["raptor"]
        fit = lib.fit(ckpt, workdir=work / f"fit_p{p:g}_s{seed}_k{k}", k=k,
                      steps=tuple(rc["steps"]), seed=seed, thresholds=st["thresholds"],
                      assignment=None if st["thresholds"] is not None else st["labels"],
                      batch_size=rc["batch_size"], lr=rc["lr"],
                      overrides={"recipe": rc["recipe"]})
        out["fits"][str(k)] = fit
    out["seconds"] = round(time.perf_counter() - tic, 1)
    lib.write_json(cache, out)
    return out


def analyse(models: list[dict], config: dict) -> dict:
    ks = [str(k) for k in config["ks"]]
    reps = config["bootstrap"]
    p = np.array([m["p"] for m in models])
    res: dict = {"trends": {}, "correlations": {}, "by_p": {}}
    series = {"test_acc": [m["test_acc"] for m in models]}
    for k in ks:
        for name in METRICS:
            series[f"{name}_k{k}"] = [m["structure"][k][name] for m in models]
        for name in FIDELITY:
            series[f"{name}_k{k}"] = [m["fits"][k][name] for m in models]
    for name, values in series.items():
        res["trends"][name] = lib.bootstrap_spearman(p, values, reps=reps)
        res["by_p"][name] = {f"{v:g}": lib.mean_ci([x for x, q in zip(values, p) if q == v],
                                                   reps=reps) for v in sorted(set(p))}
    for k in ks:
        for metric in METRICS:
            for fid in FIDELITY:
                a, b = series[f"{metric}_k{k}"], series[f"{fid}_k{k}"]
                res["correlations"][f"{metric}|{fid}|k{k}"] = {
                    "pooled": lib.bootstrap_spearman(a, b, reps=reps),
                    "within_p": lib.bootstrap_spearman(a, b, strata=p, within=True,
                                                       reps=reps)}
    return res


def write_outputs(models: list[dict], res: dict, config: dict, out: Path,
                  runtime: float) -> None:
    import xarray as xr

    ks = config["ks"]
    L = len(models[0]["distance"])
    mid = [f"p{m['p']:g}_s{m['seed']}" for m in models]
    data = {
        "p": (("model",), np.array([m["p"] for m in models]), {"long_name": "drop prob."}),
        "seed": (("model",), np.array([m["seed"] for m in models])),
        "test_accuracy": (("model",), np.array([m["test_acc"] for m in models])),
        "distance": (("model", "layer_i", "layer_j"),
                     np.array([m["distance"] for m in models]),
                     {"long_name": "1 - cos over {cls, mean patch}, block outputs 1..L"}),
    }
    for name in METRICS:
        data[name] = (("model", "k"), np.array([[m["structure"][str(k)][name] for k in ks]
                                                for m in models]))
    for name in (*FIDELITY, "r2_paper_last", "r2_cls_last", "r2_patch_last", "r2_pooled",
                 "raptor_accuracy"):
        data[name] = (("model", "k"), np.array([[m["fits"][str(k)][name] for k in ks]
                                                for m in models]))
    data["r2_by_depth"] = (("model", "k", "depth"), np.array(
        [[m["fits"][str(k)]["r2_by_depth"] for k in ks] for m in models]))
    ds = xr.Dataset(data, coords={"model": mid, "k": ks, "layer_i": np.arange(1, L + 1),
                                  "layer_j": np.arange(1, L + 1),
                                  "depth": np.arange(L + 1)})
    ds.attrs.update({"title": "Study 1: stochastic depth and block recurrence",
                     "config": json.dumps(config), "runtime_s": round(runtime, 1)})
    lib.write_netcdf(ds, out / "results.nc")
    lib.write_json(out / "models.json", [{k: v for k, v in m.items()
                                         if k not in ("distance", "checkpoint")}
                                        for m in models])
    lib.write_json(out / "analysis.json", res)
    figures(models, res, config, out / "figures")
    lib.write_text(out / "table.md", table(models, res, config, runtime))
    lib.write_json(out / "summary.json", summary(models, res, config))


def table(models, res, config, runtime) -> str:
    ks = [str(k) for k in config["ks"]]
    ps = sorted({m["p"] for m in models})
    n_seeds = len(config["seeds"])
    lines = [f"# Study 1: stochastic depth (n = {n_seeds} seeds per p, {len(models)} models; "
             f"compute {runtime / 60:.1f} min summed over models)", "",
             "Mean [bootstrap 95% interval of the mean] over seeds. R^2 on 450 held-out "
             "digits; accuracy ratio = Raptor / teacher with the teacher's frozen head.", "",
             "| p | test acc | mean similarity | " + " | ".join(
                 f"modularity k={k} | R^2 last k={k} | paper R^2 pooled k={k} | acc ratio k={k}"
                 for k in ks) + " |",
             "|---|---|---|" + "---|" * (4 * len(ks))]
    for v in ps:
        key = f"{v:g}"
        row = [key, lib.ci_text(res["by_p"]["test_acc"][key]),
               lib.ci_text(res["by_p"][f"mean_similarity_k{ks[0]}"][key])]
        for k in ks:
            for name in ("modularity", "r2_last", "r2_paper_pooled", "accuracy_ratio"):
                row.append(lib.ci_text(res["by_p"][f"{name}_k{k}"][key]))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Trends with p (Spearman rho over models, bootstrap 95% interval)", "",
              "| quantity | rho | interval | n |", "|---|---|---|---|"]
    for name, d in res["trends"].items():
        lines.append(f"| {name} | {lib.fmt(d['rho'])} | [{lib.fmt(d['lo'])}, "
                     f"{lib.fmt(d['hi'])}] | {d['n']} |")
    lines += ["", "## Phase metric vs Raptor fidelity (Spearman rho; within p = after "
              "removing each p's mean, bootstrap within p)", "",
              "| metric | fidelity | k | pooled rho [95%] | within-p rho [95%] | n |",
              "|---|---|---|---|---|---|"]
    for key, d in res["correlations"].items():
        metric, fid, k = key.split("|")
        a, b = d["pooled"], d["within_p"]
        lines.append(f"| {metric} | {fid} | {k[1:]} | {lib.fmt(a['rho'])} [{lib.fmt(a['lo'])}, "
                     f"{lib.fmt(a['hi'])}] | {lib.fmt(b['rho'])} [{lib.fmt(b['lo'])}, "
                     f"{lib.fmt(b['hi'])}] | {a['n']} |")
    return "\n".join(lines) + "\n"


def _agree(d, sign=1) -> str:
    if not np.isfinite(d["rho"]):
        return "not comparable"
    if sign * d["lo"] > 0 or sign * d["hi"] < 0:      # interval excludes 0
        return "yes" if sign * d["rho"] > 0 else "no"
    return "partly" if sign * d["rho"] > 0 else "no"


def summary(models, res, config) -> list[dict]:
    k = str(config["ks"][-1])
    n = f"{len(models)} models ({len(config['seeds'])} seeds x {len(config['ps'])} p)"
    rows = []
    for claim, key, paper in (
            ("higher stochastic depth p -> higher layer x layer similarity",
             f"mean_similarity_k{k}", "rises with p (CIFAR-100 tiny ViTs)"),
            ("higher p -> crisper phases (max-cut modularity)", f"modularity_k{k}",
             "crisper with p"),
            (f"higher p -> higher Raptor R^2 (k={k}, last layer)", f"r2_last_k{k}",
             "higher with p"),
            ("higher p -> higher accuracy", "test_acc", "higher with p (erratic at p >= 0.7)")):
        d = res["trends"][key]
        rows.append(lib.summary_record(
            study="stochastic_depth", claim=claim, paper=paper,
            ours=f"Spearman rho(p, {key}) = {lib.fmt(d['rho'])}",
            interval=f"[{lib.fmt(d['lo'])}, {lib.fmt(d['hi'])}]", n=n, agrees=_agree(d)))
    for metric in ("modularity", "contrast", "normalized_cut"):
        d = res["correlations"][f"{metric}|r2_last|k{k}"]
        pooled, within = d["pooled"], d["within_p"]
        verdict = _agree(pooled)
        if verdict == "yes" and _agree(within) != "yes":
            verdict = "partly"
        rows.append(lib.summary_record(
            study="stochastic_depth",
            claim=f"phase structure ({metric}, k={k}) correlates with Raptor fidelity",
            paper="correlated (metric not named)",
            ours=f"Spearman pooled {lib.fmt(pooled['rho'])}, within p "
                 f"{lib.fmt(within['rho'])}",
            interval=f"pooled [{lib.fmt(pooled['lo'])}, {lib.fmt(pooled['hi'])}], within p "
                     f"[{lib.fmt(within['lo'])}, {lib.fmt(within['hi'])}]",
            n=n, agrees=verdict,
            note="within p: after subtracting each p's mean (p drives both)"))
    n_p = len({m["p"] for m in models})
    if n_p < 3 or len(models) < 9:                 # a partial run: no verdict
        for row in rows:
            row["agrees"] = "not comparable"
            row["note"] = (row["note"] + "; " if row["note"] else "") + \
                f"partial run: {len(models)} models, {n_p} p values (planned " \
                f"{len(config.get('planned_seeds', config['seeds'])) * len(config['ps'])})"
    return rows


def figures(models, res, config, out: Path) -> None:
    from depthflow.plots import pyplot
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    ps = sorted({m["p"] for m in models})
    first = {m["p"]: m for m in sorted(models, key=lambda m: m["seed"], reverse=True)}
    fig, axes = plt.subplots(1, len(ps), figsize=(2.6 * len(ps), 2.8))
    axes = np.atleast_1d(axes)
    for ax, v in zip(axes, ps):
        sim = 1 - np.array(first[v]["distance"])
        im = ax.imshow(sim, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"p = {v:g}")
        ax.set_xticks([0, len(sim) - 1], [1, len(sim)])
        ax.set_yticks([0, len(sim) - 1], [1, len(sim)])
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="1 - distance")
    fig.savefig(out / "similarity_by_p.png", dpi=90)
    plt.close(fig)
    ks = [str(k) for k in config["ks"]]
    names = ["test_acc", f"mean_similarity_k{ks[0]}"] + \
        [f"{n}_k{k}" for k in ks for n in ("modularity", "r2_last", "accuracy_ratio")]
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.6))
    for ax, name in zip(np.atleast_1d(axes), names):
        d = res["by_p"][name]
        means = [d[f"{v:g}"]["mean"] for v in ps]
        lo = [d[f"{v:g}"]["lo"] for v in ps]
        hi = [d[f"{v:g}"]["hi"] for v in ps]
        ax.fill_between(ps, lo, hi, alpha=0.3)
        ax.plot(ps, means, "o-")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("p")
    fig.tight_layout()
    fig.savefig(out / "trends.png", dpi=90)
    plt.close(fig)
    k = ks[-1]
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.8))
    for ax, metric in zip(axes, ("contrast", "normalized_cut", "modularity")):
        x = [m["structure"][k][metric] for m in models]
        y = [m["fits"][k]["r2_last"] for m in models]
        sc = ax.scatter(x, y, c=[m["p"] for m in models], cmap="plasma")
        ax.set_xlabel(f"{metric} (k={k})")
        ax.set_ylabel(f"R^2 last (k={k})")
    fig.colorbar(sc, ax=list(axes), label="p")
    fig.savefig(out / "metric_vs_fidelity.png", dpi=90)
    plt.close(fig)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke-test size (make test)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds per p")
    parser.add_argument("--epochs", type=int, default=None, help="ViT training epochs")
    parser.add_argument("--steps", default=None, help="Raptor steps per stage, e.g. 400,400")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=JSON",
                        help="override a top-level config entry, e.g. --set ps=[0,0.5]")
    parser.add_argument("--only-seed", type=int, default=None,
                        help="compute this seed only (to spread seeds over processes); "
                        "no outputs are written")
    parser.add_argument("--jobs", default=None,
                        help="compute these p:seed pairs only, in this order, e.g. "
                        "0.7:0,0.5:0 (to spread models over processes); no outputs written")
    parser.add_argument("--report", action="store_true",
                        help="write the outputs from the finished models only")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--work", type=Path, default=None,
                        help="checkpoints and fits [default: OUT/work]")
    return parser.parse_args(argv)


def build_config(args) -> dict:
    config = json.loads(json.dumps(TINY if args.tiny else DEFAULT))
    for item in args.sets:
        key, _, value = item.partition("=")
        if key not in config:
            raise SystemExit(f"Error: unknown config key {key!r}; known: {sorted(config)}")
        config[key] = json.loads(value)
    if args.seeds:
        config["seeds"] = list(range(args.seeds))
    if args.epochs:
        config["vit"]["epochs"] = args.epochs
    if args.steps:
        config["raptor"]["steps"] = [int(s) for s in args.steps.split(",")]
    return config


def main(argv=None) -> None:
    args = parse(argv)
    lib.setup_threads(1)
    config = build_config(args)
    out = args.out
    work = args.work or out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if args.jobs:
        for item in args.jobs.split(","):
            p, seed = item.split(":")
            m = run_model(float(p), int(seed), config, work)
            print(f"p={float(p):g} seed={seed}: done ({m['seconds']:.0f} s)", flush=True)
        return
    tic = time.perf_counter()
    models = []
    for seed in config["seeds"]:
        if args.only_seed is not None and seed != args.only_seed:
            continue
        for p in config["ps"]:
            m = run_model(p, seed, config, work, report=args.report)
            if m is None:
                continue
            models.append(m)
            print(f"p={p:g} seed={seed}: acc {m['test_acc']:.3f}, " + ", ".join(
                f"k={k} R2 {m['fits'][k]['r2_last']:.3f} ratio "
                f"{m['fits'][k]['accuracy_ratio']:.3f}" for k in m["fits"]) +
                f" ({m['seconds']:.0f} s)", flush=True)
    if args.only_seed is not None:
        return
    if not models:
        raise SystemExit("Error: no finished models to report")
    done = sorted({m["seed"] for m in models})
    if len(models) < len(config["seeds"]) * len(config["ps"]):
        config = {**config, "planned_seeds": config["seeds"], "seeds": done,
                  "finished_models": len(models)}
    lib.write_json(out / "config.json", {"config": config, "versions": lib.versions(),
                                         "command": sys.argv})
    res = analyse(models, config)
    write_outputs(models, res, config, out, sum(m["seconds"] for m in models))
    print(f"wrote {out}/table.md, summary.json, results.nc, figures/")


if __name__ == "__main__":
    main()
