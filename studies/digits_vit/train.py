"""Train depthflow's default model: a 12-block ViT (cls + registers) on scikit-learn digits.

    python studies/digits_vit/train.py [--out-dir DIR] [--epochs N] [--seed S] [--install]

Writes ``config.json``, ``log.csv`` and ``digits_vit.safetensors`` into the output folder;
``--install`` copies the checkpoint to ``depthflow/assets/digits_vit.safetensors``.
Deterministic on CPU with one thread: seeds python, numpy and torch, and draws batches,
shifts and stochastic-depth masks from seeded generators.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import platform
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from config import get_config  # noqa: E402

import depthflow  # noqa: E402
from depthflow.models.checkpoints import load_depthflow, save_checkpoint  # noqa: E402
from depthflow.data.images import load_digits_arrays  # noqa: E402
from depthflow.io.files import atomic_path  # noqa: E402
from depthflow.models.preprocessing import Preprocessing  # noqa: E402
from depthflow.models.vit import ViT, ViTConfig, count_parameters  # noqa: E402

CHECKPOINT_NAME = "digits_vit.safetensors"
ASSET = REPO / "depthflow" / "assets" / CHECKPOINT_NAME
NO_DECAY = ("cls_token", "register_tokens", "pos_embed")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def digits_preprocessing(train_images: np.ndarray) -> Preprocessing:
    """Identity resize/crop plus normalisation by the train-set pixel mean/std (4 decimals)."""
    mean = round(float(train_images.mean(dtype=np.float64)), 4)
    std = round(float(train_images.std(dtype=np.float64)), 4)
    return Preprocessing(resize=8, crop=8, mean=(mean,), std=(std,),
                         interpolation="bilinear", mode="L")


def random_translate(images: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``shift`` pixels in x and y, filling with zeros (background)."""
    if shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (shift, shift, shift, shift))            # (B, C, H+2s, W+2s)
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]        # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]        # (B, 1, 1, W)
    batch = torch.arange(b)[:, None, None, None]
    chans = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, chans, rows, cols]


def param_groups(model: ViT, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim >= 2 and name not in NO_DECAY:
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, *, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warmup from 0 to ``lr`` over ``warmup`` steps, then cosine down to ``min_lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: ViT, inputs: torch.Tensor, labels: torch.Tensor,
             batch_size: int) -> tuple[int, float]:
    """Correct count and mean cross-entropy of ``model`` (eval mode) on normalised inputs."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(inputs), batch_size):
        logits = model(inputs[start:start + batch_size])
        target = labels[start:start + batch_size]
        correct += int((logits.argmax(-1) == target).sum())
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
    model.train(was_training)
    return correct, loss / len(inputs)


def versions() -> dict[str, str]:
    import sklearn

    return {"depthflow": depthflow.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "sklearn": sklearn.__version__,
            "python": platform.python_version()}


def write_text(path: Path, text: str) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text)


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def train(config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Run one training; return the checkpoint ``info``."""
    torch.set_num_threads(config["num_threads"])
    torch.use_deterministic_algorithms(True)
    seed_everything(config["seed"])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "config.json",
               json.dumps({"config": config, "versions": versions()}, indent=2) + "\n")

    train_np, train_y, _ = load_digits_arrays("train")
    test_np, test_y, _ = load_digits_arrays("test")
    pre = digits_preprocessing(train_np)
    train_x, test_x = torch.from_numpy(train_np), torch.from_numpy(test_np)
    train_labels, test_labels = torch.from_numpy(train_y), torch.from_numpy(test_y)
    test_inputs = pre(test_x)

    cfg = ViTConfig(**config["architecture"])
    model = ViT(cfg).init_weights(seed=config["seed"], layerscale_init=config["layerscale_init"])
    model.set_drop_path(config["drop_path"]).train()
    optimizer = torch.optim.AdamW(param_groups(model, config["weight_decay"]), lr=config["lr"],
                                  betas=tuple(config["betas"]))
    gen = torch.Generator().manual_seed(config["seed"])
    n, bs = len(train_x), config["batch_size"]
    steps_per_epoch = math.ceil(n / bs)
    total = config["epochs"] * steps_per_epoch
    warmup = config["warmup_epochs"] * steps_per_epoch
    print(f"ViT {count_parameters(model):,} parameters, {cfg.depth} blocks, "
          f"{model.num_tokens(8, 8)} tokens; {n} train / {len(test_x)} test images; "
          f"normalisation mean {pre.mean[0]} std {pre.std[0]}")

    rows: list[dict[str, Any]] = []
    step, start_time = 0, time.perf_counter()
    bar = tqdm(range(1, config["epochs"] + 1), desc="digits ViT", unit="epoch")
    for epoch in bar:
        order = torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            images = random_translate(train_x[idx], config["translate"], gen)
            lr = lr_at(step, total=total, warmup=warmup, lr=config["lr"],
                       min_lr=config["min_lr"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = model(pre(images))
            loss = F.cross_entropy(logits, train_labels[idx],
                                   label_smoothing=config["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(-1) == train_labels[idx]).sum())
        test_correct, test_loss = evaluate(model, test_inputs, test_labels,
                                           config["eval_batch_size"])
        rows.append({"epoch": epoch, "lr": f"{lr:.3e}", "loss": f"{loss_sum / n:.5f}",
                     "train_acc": f"{correct / n:.5f}", "test_loss": f"{test_loss:.5f}",
                     "test_acc": f"{test_correct / len(test_x):.5f}",
                     "time_s": f"{time.perf_counter() - start_time:.1f}"})
        write_log(out_dir / "log.csv", rows)
        bar.set_postfix(loss=rows[-1]["loss"], train=rows[-1]["train_acc"],
                        test=rows[-1]["test_acc"])
    train_time = time.perf_counter() - start_time

    model.eval()
    train_correct, _ = evaluate(model, pre(train_x), train_labels, config["eval_batch_size"])
    test_correct, _ = evaluate(model, test_inputs, test_labels, config["eval_batch_size"])
    info = {
        "test_accuracy": test_correct / len(test_x),
        "train_accuracy": train_correct / n,
        "test_correct": test_correct,
        "n_train": n,
        "n_test": len(test_x),
        "split": config["split"],
        "seed": config["seed"],
        "epochs": config["epochs"],
        "drop_path": config["drop_path"],
        "config": json.dumps(config, sort_keys=True),
        "torch_version": torch.__version__,
        "versions": json.dumps(versions(), sort_keys=True),
        "train_time_s": round(train_time, 1),
        "trained_by": "studies/digits_vit/train.py",
    }
    path = save_checkpoint(model, out_dir / CHECKPOINT_NAME, preprocessing=pre, info=info,
                           overwrite=True)
    check_reload(path, test_inputs, test_labels, test_correct, config["eval_batch_size"])
    print(f"test accuracy {info['test_accuracy']:.4f} ({test_correct}/{len(test_x)}), "
          f"train accuracy {info['train_accuracy']:.4f}, {train_time:.0f} s -> {path}")
    return info


def check_reload(path: Path, inputs: torch.Tensor, labels: torch.Tensor, expected: int,
                 batch_size: int) -> None:
    """The saved file must reproduce the recorded correct count exactly."""
    loaded = load_depthflow(path)
    correct, _ = evaluate(loaded.model, inputs, labels, batch_size)
    if correct != expected:
        raise RuntimeError(f"reloaded checkpoint gets {correct} correct, recorded {expected}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE / "outputs")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=JSON", help="override a config entry (pilot runs), "
                        "e.g. --set drop_path=0.1; repeatable")
    parser.add_argument("--install", action="store_true",
                        help=f"copy the checkpoint to {ASSET.relative_to(REPO)}")
    args = parser.parse_args(argv)
    config = get_config()
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in config:
            parser.error(f"--set expects KEY=JSON with KEY one of {sorted(config)}, got {item!r}")
        config[key] = json.loads(value)
    for key in ("epochs", "seed"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    train(config, args.out_dir)
    if args.install:
        ASSET.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(ASSET, overwrite=True) as tmp:
            shutil.copyfile(args.out_dir / CHECKPOINT_NAME, tmp)
            tmp.chmod(0o644)          # a packaged file, readable by everyone
        print(f"installed {ASSET.relative_to(REPO)}")


if __name__ == "__main__":
    main()
