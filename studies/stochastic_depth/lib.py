"""Shared pieces of the Raptor studies 1-4 (stochastic depth, partitions, overfitting,
ablation): tiny digits ViTs, layer x layer similarity and phase metrics, Raptor fits, rank
correlations with bootstrap intervals, and the output writers (NetCDF, markdown, summary).

Every study imports this file (``sys.path``) so that they measure the same things the same
way. Definitions (docs/methods.md "Raptor studies"):

* layer distance ``D[i, j]`` (block outputs 1..L) = mean over images of the mean over the
  two summaries {cls token, mean patch token} of ``1 - cos``; similarity ``S = 1 - D``;
  ``mean_similarity`` = mean of ``S`` over pairs ``i < j``.
* phase metrics of the max-cut segmentation into k phases (``segment_into``):
  ``contrast`` (mean between-phase minus mean within-phase distance), ``normalized_cut``
  (share of the total distance between phases) and ``modularity`` (the normalised cut in
  excess of a structureless matrix's), all from :func:`depthflow.phases.segmentation.phase_metrics`.
* fidelity: held-out (digits:test, 450 images) standard R^2 at the last layer and the
  paper's pooled R^2 (all depths, batch by batch), accuracy ratio Raptor / teacher with the
  teacher's frozen head.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "studies" / "digits_vit"))

from train import (digits_preprocessing, lr_at, param_groups,  # noqa: E402
                   random_translate)

import depthflow  # noqa: E402
from depthflow.data.images import load_digits_arrays, open_images  # noqa: E402
from depthflow.models.checkpoints import save_checkpoint  # noqa: E402
from depthflow.models.vit import ViT, ViTConfig  # noqa: E402
from depthflow.phases.segmentation import (phase_metrics, segment_into,  # noqa: E402
                                           thresholds_from_labels)

# 12 blocks, width 16, 2x2 patches of 4x4 pixels + cls = 5 tokens (chosen for the CPU budget:
# a pilot reached 42% held-out accuracy in 6 epochs against 18-37% for 2x2-pixel patches).
TINY_ARCH = {"img_size": 8, "patch_size": 4, "in_chans": 1, "embed_dim": 16, "depth": 12,
             "num_heads": 2, "mlp": "gelu", "mlp_hidden_dim": 64, "num_register_tokens": 0,
             "layerscale": True, "num_classes": 10, "head_input": "cls"}


def versions() -> dict[str, str]:
    import sklearn
    return {"depthflow": depthflow.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "sklearn": sklearn.__version__,
            "python": platform.python_version()}


def setup_threads(n: int = 1) -> None:
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------ data
_DIGITS: dict[str, Any] = {}


def digits() -> dict[str, Any]:
    """Train/test digits in [0, 1], their labels, and the train-set normalisation."""
    if not _DIGITS:
        tr, ytr, _ = load_digits_arrays("train")
        te, yte, _ = load_digits_arrays("test")
        _DIGITS.update(train=torch.from_numpy(tr), train_y=torch.from_numpy(ytr),
                       test=torch.from_numpy(te), test_y=torch.from_numpy(yte),
                       pre=digits_preprocessing(tr))
    return _DIGITS


# ------------------------------------------------------------------------------ ViTs
@torch.no_grad()
def accuracy(model: ViT, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    acc = float((model(x).argmax(-1) == y).double().mean())
    model.train(was)
    return acc


def train_vit(cfg: dict[str, Any], *, on_epoch=None) -> tuple[ViT, list[dict[str, Any]]]:
    """Train a tiny digits ViT; ``cfg`` keys: arch (dict), seed, epochs, lr, min_lr,
    warmup_epochs, weight_decay, batch_size, drop_path, translate, label_smoothing,
    layerscale_init, subset (first N train images of a seeded permutation, or None).
    ``on_epoch(epoch, model, row)`` is called after every epoch (epoch 0 = untrained) and
    may return True to stop. Returns the model and the per-epoch rows."""
    d = digits()
    pre = d["pre"]
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    train_x, train_y = d["train"], d["train_y"]
    if cfg.get("subset"):
        keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(
            1000 + cfg["seed"]))[:cfg["subset"]]
        train_x, train_y = train_x[keep], train_y[keep]
    test_in = pre(d["test"])
    train_in = pre(train_x)
    model = ViT(ViTConfig(**cfg["arch"])).init_weights(seed=cfg["seed"],
                                                       layerscale_init=cfg["layerscale_init"])
    model.set_drop_path(cfg["drop_path"]).train()
    opt = torch.optim.AdamW(param_groups(model, cfg["weight_decay"]), lr=cfg["lr"])
    n, bs = len(train_x), cfg["batch_size"]
    per_epoch = math.ceil(n / bs)
    total, warmup = cfg["epochs"] * per_epoch, cfg["warmup_epochs"] * per_epoch
    rows = []
    row0 = {"epoch": 0, "train_acc": accuracy(model, train_in, train_y),
            "test_acc": accuracy(model, test_in, d["test_y"]), "loss": float("nan")}
    rows.append(row0)
    if on_epoch is not None and on_epoch(0, model, row0):
        return model, rows
    step = 0
    for epoch in range(1, cfg["epochs"] + 1):
        order = torch.randperm(n, generator=gen)
        total_loss = 0.0
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            images = random_translate(train_x[idx], cfg["translate"], gen)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total=total, warmup=warmup, lr=cfg["lr"],
                                    min_lr=cfg["min_lr"])
            loss = F.cross_entropy(model(pre(images)), train_y[idx],
                                   label_smoothing=cfg["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            total_loss += float(loss.detach()) * len(idx)
        row = {"epoch": epoch, "train_acc": accuracy(model, train_in, train_y),
               "test_acc": accuracy(model, test_in, d["test_y"]), "loss": total_loss / n}
        rows.append(row)
        if on_epoch is not None and on_epoch(epoch, model, row):
            break
    model.eval()
    return model, rows


def save_vit(model: ViT, path: Path, info: dict[str, Any]) -> Path:
    return save_checkpoint(model, path, preprocessing=digits()["pre"],
                           info={k: json.dumps(v) if not isinstance(v, (str, int, float))
                                 else v for k, v in info.items()}, overwrite=True)


# ------------------------------------------------------------------------------ structure
@torch.no_grad()
def layer_distance(model: ViT, n_images: int = 500) -> np.ndarray:
    """``D`` over block outputs 1..L on the first ``n_images`` training digits."""
    d = digits()
    x = d["pre"](d["train"][:n_images])
    model.eval()
    states = [s for _, s in model.iter_states(x)][1:]                # L x (B, T, D)
    prefix = model.cfg.num_prefix_tokens
    summaries = []
    for s in states:
        summaries.append(torch.stack([s[:, 0], s[:, prefix:].mean(1)], dim=1))  # (B, 2, D)
    z = F.normalize(torch.stack(summaries).double(), dim=-1, eps=1e-8)  # (L, B, 2, D)
    cos = torch.einsum("ibkd,jbkd->ijbk", z, z).clamp(-1, 1)
    return (1 - cos).mean(dim=(2, 3)).numpy()


def structure(distance: np.ndarray, k: int) -> dict[str, Any]:
    """Max-cut phases into k and their metrics (+ the label-free mean similarity)."""
    seg = segment_into(distance, k)
    metrics = phase_metrics(distance, seg.labels)
    iu = np.triu_indices(len(distance), 1)
    out = {key: metrics[key] for key in ("contrast", "normalized_cut", "modularity")}
    out["mean_similarity"] = float(1 - distance[iu].mean())
    out["labels"] = [int(v) for v in seg.labels]
    out["thresholds"] = thresholds_from_labels(seg.labels) if seg.contiguous else None
    return out


# ------------------------------------------------------------------------------ Raptor
def fit(teacher_path, *, workdir: Path, k: int, steps: tuple[int, int], seed: int,
        thresholds=None, assignment=None, overrides: dict[str, Any] | None = None,
        batch_size: int = 32, lr: float = 1e-3) -> dict[str, Any]:
    """Fit one Raptor (``--recipe paper``) and return its held-out fidelity numbers."""
    from depthflow.api.loader import load_model
    from depthflow.raptor import FitConfig, fit_raptor

    options = dict(k=k, stage1_steps=steps[0], stage2_steps=steps[1], seed=seed,
                   batch_size=batch_size, lr=lr, num_threads=1, log_every=max(1, sum(steps)),
                   checkpoint_every=10 ** 9, eval_every=10 ** 9, eval_batch_size=450)
    if assignment is not None:
        options["assignment"] = tuple(int(a) for a in assignment)
    else:
        options["thresholds"] = tuple(int(t) for t in thresholds)
    # one lossless teacher-state cache per study folder serves every fit of the same
    # teacher (keyed by its weights, preprocessing and image set: docs/methods.md 16)
    options.setdefault("cache_dir", str(Path(workdir).parent / "teacher-cache"))
    options.setdefault("cache_dtype", "float32")
    options.update(overrides or {})
    tic = time.perf_counter()
    result = fit_raptor(load_model(str(teacher_path) if teacher_path else None),
                        open_images("digits:train"), workdir, config=FitConfig(**options),
                        eval_source=open_images("digits:test"), overwrite=True)
    fid = result.fidelity
    return {"k": k, "seed": seed,
            "assignment": [int(a) for a in assignment] if assignment is not None else None,
            "thresholds": [int(t) for t in thresholds] if thresholds is not None else None,
            "teacher_accuracy": fid.teacher_accuracy,
        "raptor_accuracy": fid.raptor_accuracy, "accuracy_ratio": fid.accuracy_ratio,
        "r2_last": fid.last("r2"), "r2_paper_last": fid.last("r2_paper"),
        "r2_cls_last": fid.last("r2", "cls"), "r2_patch_last": fid.last("r2", "patch"),
        "r2_pooled": fid.pooled["r2_pooled"],
        "r2_paper_pooled": fid.pooled["r2_paper_pooled_batches"],
        "r2_by_depth": [float(v) for v in fid.arrays["r2"][:, 0]],
        **image_fidelity(fid),
        "seconds": round(time.perf_counter() - tic, 1)}


def image_fidelity(fid) -> dict[str, Any]:
    """The image-specific R^2 of a fit and of its baselines (docs/methods.md section 16)."""
    def last(f, group):
        return float(f.last("r2_image", group)) if group in f.groups else float("nan")

    def ratio(f, way):
        value = (f.probes or {}).get(way, {}).get("ratio")
        return float("nan") if value is None else float(value)

    out: dict[str, Any] = {}
    if "r2_image" not in fid.arrays:
        return out
    out.update({"r2_image_last": last(fid, "all"), "r2_image_cls_last": last(fid, "cls"),
                "r2_image_by_depth": [float(v) for v in fid.arrays["r2_image"][:, 0]],
                "refit_ratio": ratio(fid, "refit_probe"),
                "finetuned_ratio": ratio(fid, "finetuned_probe")})
    if fid.baselines:
        out["baselines"] = {name: {"r2_image_last": last(b, "all"),
                                   "r2_image_cls_last": last(b, "cls"),
                                   "r2_last": float(b.last("r2")),
                                   "teacher_probe_ratio": ratio(b, "teacher_probe")}
                            for name, b in fid.baselines.items()}
        group = "cls" if "cls" in fid.comparison else "all"
        c = fid.comparison.get(group, {})
        out["beats_best_baseline"] = {"group": group, "every_depth": c.get("beats_every_depth"),
                                      "depths_beaten": c.get("depths_beaten"),
                                      "depths": c.get("depths")}
    return out


# ------------------------------------------------------------------------------ statistics
def spearman(a, b) -> float:
    from scipy.stats import spearmanr
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def bootstrap_spearman(a, b, *, strata=None, within=False, reps: int = 2000,
                       seed: int = 0) -> dict[str, float]:
    """Spearman rank correlation with a percentile bootstrap 95% interval over models.

    ``within=True``: the correlation after subtracting each stratum's mean from both
    variables (the association within a level of ``strata``, e.g. within one p), with the
    bootstrap resampling models within each stratum.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    strata = np.zeros(len(a), int) if strata is None else np.asarray(strata)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]

    def stat(idx):
        x, y = a[idx], b[idx]
        if within:
            s = strata[idx]
            x = x - np.array([x[s == v].mean() for v in s])
            y = y - np.array([y[s == v].mean() for v in s])
        return spearman(x, y)

    full = np.arange(len(a))
    value = stat(full)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(reps):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        draws.append(stat(idx))
    draws = np.array(draws)
    draws = draws[np.isfinite(draws)]
    lo, hi = (np.percentile(draws, [2.5, 97.5]) if len(draws) else (np.nan, np.nan))
    return {"rho": value, "lo": float(lo), "hi": float(hi), "n": int(len(a))}


def mean_ci(values, *, reps: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean, standard deviation and percentile-bootstrap 95% interval of the mean."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if len(v) == 0:
        return {"mean": float("nan"), "sd": float("nan"), "lo": float("nan"),
                "hi": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = rng.choice(v, (reps, len(v))).mean(1) if len(v) > 1 else v
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "lo": float(np.percentile(means, 2.5)), "hi": float(np.percentile(means, 97.5)),
            "n": int(len(v))}


# ------------------------------------------------------------------------------ outputs
def write_json(path: Path, data: Any) -> None:
    from depthflow.io.files import atomic_path
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_plain) + "\n")


def write_text(path: Path, text: str) -> None:
    from depthflow.io.files import atomic_path
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text)


def _plain(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def write_netcdf(ds, path: Path) -> None:
    from depthflow.io.netcdf import write_dataset
    write_dataset(ds, path, overwrite=True)


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def ci_text(d: dict[str, float], digits: int = 3) -> str:
    return f"{fmt(d['mean'], digits)} [{fmt(d['lo'], digits)}, {fmt(d['hi'], digits)}]"


def summary_record(*, study: str, claim: str, paper: str, ours: str, interval: str, n: str,
                   agrees: str, note: str = "") -> dict[str, str]:
    """One row of a study's ``summary.json`` (collected by studies/tables.py)."""
    if agrees not in ("yes", "partly", "no", "not comparable"):
        raise ValueError(agrees)
    return {"study": study, "claim": claim, "paper": paper, "ours": ours,
            "interval": interval, "n": n, "agrees": agrees, "note": note}
