"""Study 3: training duration and overfitting vs block structure and Raptor fidelity.

    python studies/overfitting/run.py [--tiny] [--seeds N] [--max-epochs N] [--subset N]
                                      [--steps S1,S2] [--out DIR] [--work DIR]

A 12-block tiny ViT (width 16, 4x4-pixel patches) trained on a SMALL subset of the digits training images
(``subset``, default 100), without augmentation, stochastic depth, label smoothing or weight
decay, so that it can overfit. Three states per seed:

* untrained: the initialisation (epoch 0);
* well-trained: the first epoch with the highest held-out accuracy (450 test digits);
* over-trained: training continues until the stopping rule fires: held-out accuracy at
  least ``drop`` (default 0.03) below its peak after the training accuracy has reached 1.0,
  or ``max_epochs`` (then reported as "drop not reached"; the state is the last epoch).

Per state: layer x layer similarity, phase metrics of the max-cut phases (k = 2, 3) and
Raptor k = 2, 3 fits (paper recipe, trained on all 1,347 training digits, evaluated on the
450 held-out ones). The paper: overfitting degrades both block structure and Raptor
fidelity, and an untrained ViT is easier to fit than an overfitted one.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "stochastic_depth"))

import lib  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT = {
    "seeds": [0, 1, 2, 3, 4],
    "vit": {"arch": lib.TINY_ARCH, "epochs": 200, "lr": 2e-3, "min_lr": 2e-3,
            "warmup_epochs": 2, "weight_decay": 0.0, "batch_size": 25, "translate": 0,
            "label_smoothing": 0.0, "layerscale_init": 0.01, "subset": 100, "drop_path": 0.0},
    "drop": 0.03, "ks": [2, 3],
    "raptor": {"steps": [40, 40], "batch_size": 32, "lr": 1e-3, "recipe": "paper"},
    "bootstrap": 2000,
}
TINY = {**DEFAULT, "seeds": [0], "vit": {**DEFAULT["vit"], "epochs": 3}, "ks": [2],
        "raptor": {**DEFAULT["raptor"], "steps": [2, 2]}, "bootstrap": 50}
STATES = ("untrained", "well-trained", "over-trained")


def train_states(seed: int, config: dict, work: Path) -> dict:
    """Train once, keeping the three states; returns their paths and the curve."""
    vit = {**config["vit"], "seed": seed}
    keep: dict = {}
    peak = {"acc": -1.0, "epoch": None}
    stop = {"reached": False, "epoch": None}

    def on_epoch(epoch, model, row):
        if epoch == 0:
            keep["untrained"] = copy.deepcopy(model.state_dict())
        if row["test_acc"] > peak["acc"]:
            peak.update(acc=row["test_acc"], epoch=epoch)
            keep["well-trained"] = copy.deepcopy(model.state_dict())
        if row["train_acc"] >= 1.0 and row["test_acc"] <= peak["acc"] - config["drop"]:
            stop.update(reached=True, epoch=epoch)
            return True
        return False

    model, rows = lib.train_vit(vit, on_epoch=on_epoch)
    keep["over-trained"] = copy.deepcopy(model.state_dict())
    paths = {}
    for name in STATES:
        model.load_state_dict(keep[name])
        paths[name] = str(lib.save_vit(model, work / f"s{seed}_{name}.safetensors",
                                       {"state": name, "seed": seed}))
    losses = [r for r in rows if r["epoch"] > 0]
    return {"paths": paths, "curve": rows, "peak_epoch": peak["epoch"],
            "peak_test_acc": peak["acc"], "stop_reached": stop["reached"],
            "stop_epoch": stop["epoch"] if stop["reached"] else rows[-1]["epoch"],
            "final_test_acc": rows[-1]["test_acc"], "final_train_acc": rows[-1]["train_acc"],
            "final_train_loss": losses[-1]["loss"] if losses else float("nan")}


def run_seed(seed: int, config: dict, work: Path, report: bool = False):
    key = hashlib.sha1(json.dumps([seed, config], sort_keys=True).encode()).hexdigest()[:10]
    cache = work / f"seed{seed}_{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    if report:
        return None
    from depthflow.api.loader import load_model
    tic = time.perf_counter()
    out = train_states(seed, config, work)
    out["seed"] = seed
    out["states"] = {}
    for name in STATES:
        model = load_model(out["paths"][name]).model.eval()
        distance = lib.layer_distance(model)
        state = {"distance": distance.tolist(), "structure": {}, "fits": {}}
        for k in config["ks"]:
            st = lib.structure(distance, k)
            state["structure"][str(k)] = st
            rc = config["raptor"]
            state["fits"][str(k)] = lib.fit(
                out["paths"][name], workdir=work / f"fit_s{seed}_{name}_k{k}", k=k,
                steps=tuple(rc["steps"]), seed=seed, thresholds=st["thresholds"],
                assignment=None if st["thresholds"] is not None else st["labels"],
                batch_size=rc["batch_size"], lr=rc["lr"], overrides={"recipe": rc["recipe"]})
        out["states"][name] = state
        print(f"seed {seed} {name}: teacher acc "
              f"{state['fits'][str(config['ks'][0])]['teacher_accuracy']:.3f}, " + ", ".join(
                  f"k={k} R2 {state['fits'][str(k)]['r2_last']:.3f}" for k in config["ks"]),
              flush=True)
    out["seconds"] = round(time.perf_counter() - tic, 1)
    lib.write_json(cache, out)
    return out


def write_outputs(runs: list[dict], config: dict, out: Path) -> None:
    import xarray as xr

    ks = config["ks"]
    reps = config["bootstrap"]
    seeds = [r["seed"] for r in runs]
    L = len(runs[0]["states"]["untrained"]["distance"])
    data = {"distance": (("seed", "state", "layer_i", "layer_j"), np.array(
        [[r["states"][s]["distance"] for s in STATES] for r in runs]))}
    for name in ("mean_similarity", "contrast", "normalized_cut", "modularity"):
        data[name] = (("seed", "state", "k"), np.array(
            [[[r["states"][s]["structure"][str(k)][name] for k in ks] for s in STATES]
             for r in runs]))
    for name in ("r2_last", "r2_paper_pooled", "accuracy_ratio", "teacher_accuracy"):
        data[name] = (("seed", "state", "k"), np.array(
            [[[r["states"][s]["fits"][str(k)][name] for k in ks] for s in STATES]
             for r in runs]))
    ds = xr.Dataset(data, coords={"seed": seeds, "state": list(STATES), "k": ks,
                                  "layer_i": np.arange(1, L + 1),
                                  "layer_j": np.arange(1, L + 1)})
    runtime = sum(r["seconds"] for r in runs)
    ds.attrs.update({"title": "Study 3: training duration and overfitting",
                     "config": json.dumps(config), "compute_s": round(runtime, 1)})
    lib.write_netcdf(ds, out / "results.nc")
    lib.write_json(out / "runs.json", [{k: v for k, v in r.items() if k != "paths"}
                                       for r in runs])
    n = len(runs)
    stops = ", ".join(f"seed {r['seed']}: peak {r['peak_test_acc']:.3f} at epoch "
                      f"{r['peak_epoch']}, " + (f"drop reached at epoch {r['stop_epoch']}"
                                                if r["stop_reached"] else
                                                f"drop not reached by epoch {r['stop_epoch']}")
                      + f" (final test {r['final_test_acc']:.3f}, train "
                        f"{r['final_train_acc']:.3f})" for r in runs)
    lines = [f"# Study 3: training duration and overfitting (n = {n} seeds; compute "
             f"{runtime / 60:.1f} min)", "",
             f"Teacher trained on {config['vit']['subset']} digits. Stopping rule: held-out "
             f"accuracy {config['drop']:.2f} below its peak after 100% training accuracy, or "
             f"{config['vit']['epochs']} epochs. {stops}.", "",
             "Mean over seeds [bootstrap 95% interval of the mean].", "",
             "| state | teacher acc | mean similarity | " + " | ".join(
                 f"modularity k={k} | R^2 last k={k} | paper R^2 pooled k={k}" for k in ks)
             + " |", "|---|---|---|" + "---|" * (3 * len(ks))]
    stats: dict = {}
    for s in STATES:
        row = [s, lib.ci_text(lib.mean_ci([r["states"][s]["fits"][str(ks[0])]
                                           ["teacher_accuracy"] for r in runs], reps=reps)),
               lib.ci_text(lib.mean_ci([r["states"][s]["structure"][str(ks[0])]
                                        ["mean_similarity"] for r in runs], reps=reps))]
        for k in ks:
            for name, src in (("modularity", "structure"), ("r2_last", "fits"),
                              ("r2_paper_pooled", "fits")):
                d = lib.mean_ci([r["states"][s][src][str(k)][name] for r in runs], reps=reps)
                stats[(s, k, name)] = d
                row.append(lib.ci_text(d))
        lines.append("| " + " | ".join(row) + " |")
    lib.write_text(out / "table.md", "\n".join(lines) + "\n")
    figures(runs, config, out / "figures")
    k = ks[-1]
    diff = lib.mean_ci([r["states"]["untrained"]["fits"][str(k)]["r2_last"] -
                        r["states"]["over-trained"]["fits"][str(k)]["r2_last"] for r in runs],
                       reps=reps)
    diff_w = lib.mean_ci([r["states"]["well-trained"]["fits"][str(k)]["r2_last"] -
                          r["states"]["over-trained"]["fits"][str(k)]["r2_last"]
                          for r in runs], reps=reps)
    reached = sum(r["stop_reached"] for r in runs)
    note = (f"overfitting drop reached in {reached} of {n} seeds"
            + ("" if reached == n else "; where not reached the 'over-trained' state is the "
               "last epoch"))

    def verdict(d):
        if d["lo"] > 0:
            return "yes"
        return "partly" if d["mean"] > 0 else "no"

    summary = [
        lib.summary_record(
            study="overfitting", claim="an untrained ViT is easier to fit than an "
            "overfitted one", paper="untrained easier to fit than overfitted",
            ours=f"R^2 last (k={k}) untrained minus over-trained = {lib.fmt(diff['mean'])}",
            interval=f"[{lib.fmt(diff['lo'])}, {lib.fmt(diff['hi'])}]", n=f"{n} seeds",
            agrees=verdict(diff), note=note),
        lib.summary_record(
            study="overfitting", claim="overfitting degrades Raptor fidelity",
            paper="fidelity falls with overfitting",
            ours=f"R^2 last (k={k}) well-trained minus over-trained = "
                 f"{lib.fmt(diff_w['mean'])}",
            interval=f"[{lib.fmt(diff_w['lo'])}, {lib.fmt(diff_w['hi'])}]", n=f"{n} seeds",
            agrees=verdict(diff_w), note=note)]
    lib.write_json(out / "summary.json", summary)


def figures(runs, config, out: Path) -> None:
    from depthflow.plots import pyplot
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    r = runs[0]
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.9))
    for ax, s in zip(axes[:3], STATES):
        im = ax.imshow(1 - np.array(r["states"][s]["distance"]), vmin=0, vmax=1)
        ax.set_title(f"{s} (seed {r['seed']})", fontsize=9)
    fig.colorbar(im, ax=list(axes[:3]), shrink=0.8)
    for run in runs:
        e = [row["epoch"] for row in run["curve"]]
        axes[3].plot(e, [row["test_acc"] for row in run["curve"]], label=f"test s{run['seed']}")
        axes[3].plot(e, [row["train_acc"] for row in run["curve"]], "--",
                     label=f"train s{run['seed']}")
    axes[3].set_xlabel("epoch")
    axes[3].legend(fontsize=6)
    fig.savefig(out / "states.png", dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--steps", default=None)
    parser.add_argument("--report", action="store_true",
                        help="write the outputs from the finished seeds only")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    lib.setup_threads(1)
    config = json.loads(json.dumps(TINY if args.tiny else DEFAULT))
    if args.seeds:
        config["seeds"] = list(range(args.seeds))
    if args.max_epochs:
        config["vit"]["epochs"] = args.max_epochs
    if args.subset:
        config["vit"]["subset"] = args.subset
    if args.steps:
        config["raptor"]["steps"] = [int(s) for s in args.steps.split(",")]
    out, work = args.out, args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    lib.write_json(out / "config.json", {"config": config, "versions": lib.versions(),
                                         "command": sys.argv})
    runs = [r for r in (run_seed(seed, config, work, args.report) for seed in config["seeds"])
            if r is not None]
    if not runs:
        raise SystemExit("Error: no finished seeds to report")
    config = {**config, "seeds": [r["seed"] for r in runs]}
    write_outputs(runs, config, out)
    print(f"wrote {out}/table.md, summary.json, results.nc, figures/")


if __name__ == "__main__":
    main()
