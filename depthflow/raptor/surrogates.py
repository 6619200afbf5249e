"""Baseline surrogates, the image-specific R^2 and the three probe readouts (docs/methods.md).

A *surrogate* maps the teacher's trajectory ``(B, L+1, T, D)`` of a batch to a predicted
trajectory of the same shape, rolled out from the teacher's depth-0 state (depth 0 is the
teacher's own embedding for every rolled-out surrogate). Besides the fitted Raptor:

* ``identity``: the state never moves (``x_l = x_0``);
* ``mean_trajectory``: each depth's mean state over the training images (image-independent:
  its ``r2_image`` is <= 0 by construction);
* ``linear``: one affine map per phase (Raptor block) and token kind, ``x_l = A x_(l-1) + b``,
  fitted in closed form (ridge least squares) on consecutive teacher states of the training
  images and rolled out (a depth-DMD operator);
* ``init``: the Raptor before training (the same seed and options);
* ``loop``: one teacher layer of each phase (the one the teacher initialisation would copy)
  repeated across the phase, no training.

The image-specific R^2 (:class:`ImageR2`) treats every ``(depth, token, feature)`` entry as
an output and the images as samples: per entry ``1 - SSE_j / SST_j`` with ``SST_j`` the
teacher's sum of squares around its mean over the evaluation images, averaged uniformly
(``r2_image``) or weighted by ``SST_j`` (``r2_image_vw``) over the entries of a token group,
exactly scikit-learn's ``r2_score(..., multioutput="uniform_average" / "variance_weighted")``
on the entries whose teacher variance is not zero (constant entries, e.g. the cls token at
depth 0, carry no image information and are left out; a group without any is NaN). Two
streaming passes in float64: the teacher's moments, then the errors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from depthflow.core import vocabulary as D
from depthflow.data.tokens import token_groups
from depthflow.raptor.model import (INIT_LAYERS, best_loop_layers, middle_layers,  # noqa: F401
                                    phase_layers, runs_of)

BASELINES = ("identity", "mean_trajectory", "linear", "init", "loop")
Batches = Callable[[], Iterable[tuple[Tensor, Tensor]]]     # () -> (states, labels) batches
VALID_RTOL = 1e-12


# --------------------------------------------------------------------------- surrogates
PAPER_EPS = 1e-6
GROUPS = ("all", *D.TOKEN_KINDS)


class FidelityAccumulator:
    """Streaming sums for R^2 (both forms), MSE and cosine per depth and token group."""

    def __init__(self, depth: int, kinds: list[str]) -> None:
        self.groups = [g for g in GROUPS if g == "all" or g in kinds]
        groups = token_groups(kinds)
        self.index = {g: torch.arange(len(kinds)) if g == "all" else groups[g]
                      for g in self.groups}
        shape = (depth + 1, len(self.groups))
        self.sums = {name: torch.zeros(shape, dtype=torch.float64)
                     for name in ("n", "x", "x2", "p", "p2", "sse", "cos", "tokens")}
        self.batch_paper = 0.0          # sum over batches of batch size x paper R^2
        self.batch_samples = 0
        self.batch_sizes: list[int] = []

    @torch.no_grad()
    def update(self, teacher: Tensor, pred: Tensor) -> None:
        """``teacher``, ``pred``: ``(B, L+1, T, D)``."""
        x, p = teacher.double().cpu(), pred.double().cpu()
        # The paper's notebook: one R^2 per batch over every entry of every depth 0..L,
        # variance from the prediction, averaged over batches weighted by batch size.
        err = (p - x).square().mean()
        self.batch_paper += len(x) * float(1.0 - err / (p.var(unbiased=False) + PAPER_EPS))
        self.batch_samples += len(x)
        self.batch_sizes.append(len(x))
        cos = torch.nn.functional.cosine_similarity(x, p, dim=-1, eps=1e-8)   # (B, L+1, T)
        for g, group in enumerate(self.groups):
            xi, pi = x[:, :, self.index[group]], p[:, :, self.index[group]]
            s = self.sums
            s["n"][:, g] += xi[:, 0].numel()
            s["x"][:, g] += xi.sum(dim=(0, 2, 3))
            s["x2"][:, g] += xi.square().sum(dim=(0, 2, 3))
            s["p"][:, g] += pi.sum(dim=(0, 2, 3))
            s["p2"][:, g] += pi.square().sum(dim=(0, 2, 3))
            s["sse"][:, g] += (xi - pi).square().sum(dim=(0, 2, 3))
            s["cos"][:, g] += cos[:, :, self.index[group]].sum(dim=(0, 2))
            s["tokens"][:, g] += cos[:, 0, self.index[group]].numel()

    def result(self) -> dict[str, np.ndarray]:
        s = {k: v.numpy() for k, v in self.sums.items()}
        n = np.maximum(s["n"], 1)
        mse = s["sse"] / n
        var_x = s["x2"] / n - (s["x"] / n) ** 2
        var_p = s["p2"] / n - (s["p"] / n) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(var_x > 0, 1.0 - mse / var_x, np.nan)
        return {"mse": mse, "r2": r2, "r2_paper": 1.0 - mse / (var_p + PAPER_EPS),
                "cosine": s["cos"] / np.maximum(s["tokens"], 1)}

    def pooled(self) -> dict[str, float]:
        """R^2 pooled over all depths 0..L and all tokens: the standard form over the whole
        data set (variance of the teacher around its grand mean), the same in the paper's
        form (variance of the prediction + 1e-6), and the paper notebook's batch-by-batch
        paper form (depends slightly on the batch size, recorded)."""
        s = {k: v[:, 0].numpy() for k, v in self.sums.items()}     # group "all"
        n = s["n"].sum()
        if n == 0:
            return {"r2_pooled": float("nan"), "r2_paper_pooled": float("nan"),
                    "r2_paper_pooled_batches": float("nan")}
        mse = s["sse"].sum() / n
        var_x = s["x2"].sum() / n - (s["x"].sum() / n) ** 2
        var_p = s["p2"].sum() / n - (s["p"].sum() / n) ** 2
        return {"r2_pooled": float(1.0 - mse / var_x) if var_x > 0 else float("nan"),
                "r2_paper_pooled": float(1.0 - mse / (var_p + PAPER_EPS)),
                "r2_paper_pooled_batches": self.batch_paper / max(self.batch_samples, 1)}


class Surrogate:
    """``surrogate(states) -> predicted states`` (same shape, float32, no grad)."""

    name = "surrogate"

    def __call__(self, states: Tensor) -> Tensor:        # pragma: no cover - interface
        raise NotImplementedError


class ModelSurrogate(Surrogate):
    """Any depth model with ``step(layer, state)`` rolled out from the teacher's ``a_0``."""

    def __init__(self, name: str, model, depth: int) -> None:
        self.name, self.model, self.depth = name, model, depth

    @torch.no_grad()
    def __call__(self, states: Tensor) -> Tensor:
        x = states[:, 0]
        out = [x]
        for layer in range(1, self.depth + 1):
            x = self.model.step(layer, x)
            out.append(x)
        return torch.stack(out, dim=1)


class IdentitySurrogate(Surrogate):
    name = "identity"

    def __call__(self, states: Tensor) -> Tensor:
        return states[:, :1].expand_as(states).clone()


class MeanTrajectory(Surrogate):
    """Each depth's mean state (per token position) over the training images."""

    name = "mean_trajectory"

    def __init__(self, mean: Tensor) -> None:
        self.mean = mean.float()                              # (L+1, T, D)

    def __call__(self, states: Tensor) -> Tensor:
        return self.mean.to(states.device).expand_as(states).clone()


class LinearSurrogate(Surrogate):
    """Per-phase, per-token-kind affine maps ``x -> [x, 1] @ A`` rolled out."""

    name = "linear"

    def __init__(self, maps: dict[tuple[int, str], Tensor], assignment: Sequence[int],
                 kinds: Sequence[str]) -> None:
        self.maps, self.assignment = maps, list(assignment)
        self.groups = token_groups(kinds)

    @torch.no_grad()
    def __call__(self, states: Tensor) -> Tensor:
        x = states[:, 0].double()
        out = [x]
        for layer, block in enumerate(self.assignment, start=1):
            nxt = torch.empty_like(x)
            for kind, index in self.groups.items():
                a = self.maps[(block, kind)].to(x.device)
                xi = x[:, index]
                nxt[:, index] = xi @ a[:-1] + a[-1]
            x = nxt
            out.append(x)
        return torch.stack(out, dim=1).float()


class LoopSurrogate(Surrogate):
    """Teacher layer ``layers[j]`` (1-based) repeated over every layer of block ``j``."""

    name = "loop"

    def __init__(self, teacher, layers: Sequence[int], assignment: Sequence[int]) -> None:
        self.teacher, self.layers, self.assignment = teacher, list(layers), list(assignment)

    @torch.no_grad()
    def __call__(self, states: Tensor) -> Tensor:
        x = states[:, 0]
        out = [x]
        for block in self.assignment:
            x = self.teacher.step(self.layers[block], x)
            out.append(x)
        return torch.stack(out, dim=1)


# --------------------------------------------------------------------------- fitted baselines
class TrainStatistics:
    """One streaming pass over training states: per-depth mean and the normal equations of
    the per-block, per-kind affine maps (float64)."""

    def __init__(self, assignment: Sequence[int], kinds: Sequence[str]) -> None:
        self.assignment, self.kinds = list(assignment), list(kinds)
        self.groups = token_groups(kinds)
        self.n = 0
        self.sum: Tensor | None = None
        self.gram: dict[tuple[int, str], Tensor] = {}
        self.cross: dict[tuple[int, str], Tensor] = {}

    @torch.no_grad()
    def update(self, states: Tensor) -> None:
        x = states.detach().to("cpu", torch.float64)
        if self.sum is None:
            self.sum = torch.zeros(x.shape[1:], dtype=torch.float64)
        self.sum += x.sum(dim=0)
        self.n += len(x)
        ones = torch.ones(*x.shape[:1], x.shape[2], 1, dtype=torch.float64)
        for layer, block in enumerate(self.assignment, start=1):
            z = torch.cat([x[:, layer - 1], ones], dim=-1)            # (B, T, D+1)
            y = x[:, layer]
            for kind, index in self.groups.items():
                zi = z[:, index].reshape(-1, z.shape[-1])
                yi = y[:, index].reshape(-1, y.shape[-1])
                key = (block, kind)
                g, c = zi.T @ zi, zi.T @ yi
                if key in self.gram:
                    self.gram[key] += g
                    self.cross[key] += c
                else:
                    self.gram[key], self.cross[key] = g, c

    def mean_trajectory(self) -> MeanTrajectory:
        return MeanTrajectory(self.sum / max(self.n, 1))

    def linear(self, ridge: float = 1e-2) -> LinearSurrogate:
        """Ridge least squares, ``lambda = ridge * trace(G) / (D + 1)`` per map."""
        maps = {}
        for key, g in self.gram.items():
            lam = ridge * float(torch.trace(g)) / g.shape[0] + 1e-12
            maps[key] = torch.linalg.solve(g + lam * torch.eye(g.shape[0], dtype=g.dtype),
                                           self.cross[key])
        return LinearSurrogate(maps, self.assignment, self.kinds)


# --------------------------------------------------------------------------- image R^2
class TeacherMoments:
    """Pass 1: the teacher's mean and sum of squares over images per entry (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.shift = self.s1 = self.s2 = None

    @torch.no_grad()
    def update(self, states: Tensor) -> None:
        x = states.detach().to("cpu", torch.float64)
        if self.shift is None:
            self.shift = x.mean(dim=0)
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros_like(self.shift)
        d = x - self.shift
        self.s1 += d.sum(dim=0)
        self.s2 += d.square().sum(dim=0)
        self.n += len(x)

    def mean_sst(self) -> tuple[Tensor, Tensor]:
        n = max(self.n, 1)
        mean = self.shift + self.s1 / n
        sst = (self.s2 - self.s1.square() / n).clamp_min(0.0)
        return mean, sst


class ImageR2:
    """Pass 2: per-entry squared errors of one surrogate, and per-image error shares.

    ``sst``: the teacher's per-entry sums of squares ``(L+1, T, D)`` from pass 1; entries
    with ``sst <= 1e-12 * max(sst at that depth)`` are constant over images and left out.
    """

    def __init__(self, sst: Tensor, kinds: Sequence[str]) -> None:
        self.groups = [g for g in ("all", *D.TOKEN_KINDS) if g == "all" or g in kinds]
        by_kind = token_groups(kinds)
        self.index = {g: torch.arange(len(kinds)) if g == "all" else by_kind[g]
                      for g in self.groups}
        top = sst.flatten(1).amax(dim=1).reshape(-1, 1, 1)
        self.valid = sst > VALID_RTOL * top
        self.sst = sst
        self.inv = torch.where(self.valid, 1.0 / sst.clamp_min(1e-300), torch.zeros_like(sst))
        self.sse = torch.zeros_like(sst)
        self.count = {g: self.valid[:, self.index[g]].flatten(1).sum(dim=1).double()
                      for g in self.groups}
        self.shares: list[Tensor] = []            # (B, L+1, groups) per batch

    @torch.no_grad()
    def update(self, teacher: Tensor, pred: Tensor) -> None:
        err = (pred.detach().to("cpu", torch.float64) -
               teacher.detach().to("cpu", torch.float64)).square()        # (B, L+1, T, D)
        self.sse += err.sum(dim=0)
        scaled = err * self.inv
        cols = []
        for g in self.groups:
            total = scaled[:, :, self.index[g]].flatten(2).sum(dim=2)     # (B, L+1)
            cols.append(total / self.count[g].clamp_min(1.0))
        self.shares.append(torch.stack(cols, dim=-1))

    def result(self) -> dict[str, np.ndarray]:
        """``r2_image`` and ``r2_image_vw`` ``(L+1, groups)``."""
        uniform = np.full((self.sst.shape[0], len(self.groups)), np.nan)
        weighted = uniform.copy()
        for i, g in enumerate(self.groups):
            valid = self.valid[:, self.index[g]].flatten(1)
            sse = self.sse[:, self.index[g]].flatten(1)
            sst = self.sst[:, self.index[g]].flatten(1)
            for depth in range(len(uniform)):
                v = valid[depth]
                if not bool(v.any()):
                    continue
                uniform[depth, i] = float((1.0 - sse[depth][v] / sst[depth][v]).mean())
                weighted[depth, i] = float(1.0 - sse[depth][v].sum() / sst[depth][v].sum())
        return {"r2_image": uniform, "r2_image_vw": weighted}

    def image_shares(self) -> np.ndarray:
        """``(N, L+1, groups)``: ``r2_image = 1 - shares.sum(0)`` on the valid entries."""
        return torch.cat(self.shares).numpy() if self.shares else np.zeros((0, 0, 0))


def r2_image_reference(teacher: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """The same two numbers for one depth and group from whole arrays ``(N, T, D)`` (tests)."""
    from sklearn.metrics import r2_score
    y, p = teacher.reshape(len(teacher), -1), pred.reshape(len(pred), -1)
    keep = y.var(axis=0) > 0
    return (float(r2_score(y[:, keep], p[:, keep], multioutput="uniform_average")),
            float(r2_score(y[:, keep], p[:, keep], multioutput="variance_weighted")))


def bootstrap_counts(n: int, *, replicates: int = 1000, seed: int = 0) -> np.ndarray:
    """``(replicates, n)`` multinomial resampling counts of ``n`` images (seeded)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                     for _ in range(replicates)]).astype(np.float64)


def bootstrap_difference(shares_a: np.ndarray, shares_b: np.ndarray, counts: np.ndarray, *,
                         level: float = 0.95) -> tuple[float, float, float]:
    """``r2_image(a) - r2_image(b)`` of one depth and group from per-image shares ``(N,)``,
    with a percentile bootstrap over images (``counts`` from :func:`bootstrap_counts`; the
    entries' teacher variances held at their full-sample values)."""
    diff = shares_b - shares_a                    # a's gain per image
    reps = counts @ diff
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return float(diff.sum()), float(lo), float(hi)


# --------------------------------------------------------------------------- probes
def head_input(teacher, state: Tensor) -> Tensor:
    """What the teacher's head reads from a final state (its readout without a head)."""
    cfg = teacher.cfg
    normed = teacher.norm(state)
    mean = normed[..., cfg.num_prefix_tokens:, :].mean(dim=-2)
    if teacher.head is None:
        return normed[..., 0, :] if cfg.cls_token else mean
    if cfg.head_input == "mean":
        return mean
    cls = normed[..., 0, :]
    if cfg.head_input == "cls+mean":
        return torch.cat([cls, mean], dim=-1)
    if cfg.head_input == "cls+distillation":
        return torch.cat([cls, normed[..., 1, :]], dim=-1)
    return cls


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float, float]:
    """Proportion with its Wilson score interval."""
    if n <= 0:
        return (math.nan, math.nan, math.nan)
    p = correct / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (p, max(0.0, min(p, c - h)), min(1.0, max(p, c + h)))


def katz(k1: int, n1: int, k2: int, n2: int, z: float = 1.959964) -> tuple[float, float, float]:
    """Ratio ``(k1/n1) / (k2/n2)`` with the Katz log interval (independent samples:
    conservative for paired accuracies)."""
    if min(n1, n2) <= 0 or k2 <= 0:
        return (math.nan, math.nan, math.nan)
    if k1 <= 0:
        return (0.0, 0.0, math.nan)
    r = (k1 / n1) / (k2 / n2)
    se = math.sqrt(max(0.0, 1 / k1 - 1 / n1 + 1 / k2 - 1 / n2))
    return (r, r * math.exp(-z * se), r * math.exp(z * se))


@dataclasses.dataclass
class LinearHead:
    """A linear classifier ``x @ w.T + b`` over ``classes`` (labels)."""

    weight: Tensor
    bias: Tensor
    classes: np.ndarray

    def predict(self, x: Tensor) -> np.ndarray:
        logits = x.double() @ self.weight.double().T + self.bias.double()
        return self.classes[logits.argmax(-1).numpy()]


def fit_logistic(x: Tensor, y: np.ndarray, seed: int = 0) -> LinearHead | None:
    from sklearn.linear_model import LogisticRegression
    if len(np.unique(y)) < 2:
        return None
    model = LogisticRegression(max_iter=2000, random_state=seed).fit(x.double().numpy(), y)
    coef, bias = model.coef_, model.intercept_
    if coef.shape[0] == 1:                          # binary: sklearn keeps one row
        coef, bias = np.concatenate([-coef, coef]) / 2, np.concatenate([-bias, bias]) / 2
    return LinearHead(torch.from_numpy(coef), torch.from_numpy(bias), model.classes_)


def teacher_head(teacher) -> LinearHead | None:
    head = getattr(teacher, "head", None)
    if head is None:
        return None
    w = head.weight.detach().cpu().double()
    b = head.bias.detach().cpu().double() if head.bias is not None else \
        torch.zeros(len(w), dtype=torch.float64)
    return LinearHead(w, b, np.arange(len(w)))


def finetune_head(start: LinearHead, x: Tensor, y: np.ndarray, *, epochs: int = 30,
                  lr: float = 1e-3, weight_decay: float = 1e-2, batch_size: int = 64,
                  val_fraction: float = 0.2, seed: int = 0) -> LinearHead:
    """Fine-tune a copy of ``start`` on features ``x`` (cross-entropy, AdamW, cosine), the
    epoch with the best accuracy on a held-out part of ``x`` kept (epoch 0: ``start``)."""
    with torch.enable_grad():
        return _finetune_head(start, x, y, epochs=epochs, lr=lr, weight_decay=weight_decay,
                              batch_size=batch_size, val_fraction=val_fraction, seed=seed)


def _finetune_head(start: LinearHead, x: Tensor, y: np.ndarray, *, epochs: int, lr: float,
                   weight_decay: float, batch_size: int, val_fraction: float,
                   seed: int) -> LinearHead:
    gen = torch.Generator().manual_seed(seed)
    lookup = {c: i for i, c in enumerate(start.classes.tolist())}
    keep = np.array([c in lookup for c in y.tolist()])
    x, y = x[torch.from_numpy(keep)].float(), y[keep]
    if len(x) < 5:
        return start
    target = torch.tensor([lookup[c] for c in y.tolist()], dtype=torch.long)
    order = torch.randperm(len(x), generator=gen)
    n_val = max(1, int(round(val_fraction * len(x))))
    val, fit = order[:n_val], order[n_val:]
    w = start.weight.float().clone().requires_grad_(True)
    b = start.bias.float().clone().requires_grad_(True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs * math.ceil(len(fit) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 1e-2)

    def val_acc() -> float:
        with torch.no_grad():
            return float(((x[val] @ w.T + b).argmax(-1) == target[val]).double().mean())

    best, best_state = val_acc(), (w.detach().clone(), b.detach().clone())
    for _ in range(epochs):
        perm = fit[torch.randperm(len(fit), generator=gen)]
        for lo in range(0, len(perm), batch_size):
            idx = perm[lo:lo + batch_size]
            loss = torch.nn.functional.cross_entropy(x[idx] @ w.T + b, target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = val_acc()
        if acc > best:
            best, best_state = acc, (w.detach().clone(), b.detach().clone())
    return LinearHead(best_state[0].double(), best_state[1].double(), start.classes)


PROBE_WAYS = ("teacher_probe", "refit_probe", "finetuned_probe")


def probe_readouts(features: dict[str, tuple[Tensor, Tensor]], train_y: np.ndarray,
                   eval_y: np.ndarray, *, head: LinearHead | None, seed: int = 0,
                   epochs: int = 30) -> dict[str, dict[str, Any]]:
    """The three probe readouts of every surrogate (``features[name] = (train, eval)``,
    ``features["teacher"]`` the teacher's own), on labelled images only.

    * ``teacher_probe``: the teacher's head (or a logistic probe fitted on the teacher's
      training features) applied to the surrogate's features (the paper's ratio);
    * ``refit_probe``: a logistic probe fitted on the surrogate's own training features;
    * ``finetuned_probe``: the teacher's head / probe fine-tuned on the surrogate's
      training features (the official code's readout, without its image crops).

    Each: accuracy with its Wilson interval and the ratio to the teacher's accuracy in the
    same way with the Katz interval; ``agreement``: the teacher probe's predictions on the
    surrogate vs on the teacher, over the labelled evaluation images.
    """
    tl, el = train_y >= 0, eval_y >= 0
    ty, ey = train_y[tl], eval_y[el]
    if el.sum() == 0 or (head is None and len(np.unique(ty)) < 2):
        return {}
    t_train, t_eval = (f[torch.from_numpy(m)] for f, m in zip(features["teacher"], (tl, el)))
    first = head if head is not None else fit_logistic(t_train, ty, seed)
    if first is None:
        return {}
    heads: dict[str, Callable[[Tensor], LinearHead | None]] = {
        "teacher_probe": lambda train: first,
        "refit_probe": lambda train: fit_logistic(train, ty, seed),
        "finetuned_probe": lambda train: finetune_head(first, train, ty, epochs=epochs,
                                                       seed=seed)}
    out: dict[str, dict[str, Any]] = {name: {} for name in features}
    n = int(el.sum())
    for way, make in heads.items():
        ref = make(t_train)
        ref_correct = int((ref.predict(t_eval) == ey).sum()) if ref is not None else 0
        for name, (train, evals) in features.items():
            h = ref if name == "teacher" else make(train[torch.from_numpy(tl)])
            if h is None:
                continue
            pred = h.predict(evals[torch.from_numpy(el)])
            correct = int((pred == ey).sum())
            acc = wilson(correct, n)
            out[name][way] = {"accuracy": acc[0], "interval": [acc[1], acc[2]],
                              "correct": correct, "n": n,
                              "ratio": katz(correct, n, ref_correct, n)[0],
                              "ratio_interval": list(katz(correct, n, ref_correct, n)[1:])}
            if way == "teacher_probe":
                out[name]["agreement"] = float(
                    (pred == first.predict(t_eval)).mean())
    return out


# --------------------------------------------------------------------------- driver
@dataclasses.dataclass
class SurrogateResult:
    """Every number of one surrogate on the evaluation images."""

    arrays: dict[str, np.ndarray]             # (L+1, groups): r2_image, r2_image_vw, r2, ...
    pooled: dict[str, float]
    shares: np.ndarray                        # (N, L+1, groups)
    probes: dict[str, Any]
    batch_sizes: list[int]


@torch.no_grad()
def evaluate_surrogates(surrogates: Sequence[Surrogate], eval_batches: Batches, *,
                        kinds: Sequence[str], teacher, train_batches: Batches | None = None,
                        head: LinearHead | None = None, seed: int = 0, epochs: int = 30,
                        ) -> tuple[dict[str, SurrogateResult], list[str], int]:
    """Every surrogate on the same evaluation images (two passes over ``eval_batches``),
    with the probe features of ``train_batches`` (labelled training images) when given.

    Returns ``({name: SurrogateResult}, groups, num_images)``.
    """

    moments = TeacherMoments()
    for states, _ in eval_batches():
        moments.update(states)
    if moments.n == 0:
        from depthflow.errors import InputError
        raise InputError("no evaluation images")
    _, sst = moments.mean_sst()
    depth = sst.shape[0] - 1
    image = {s.name: ImageR2(sst, kinds) for s in surrogates}
    fid = {s.name: FidelityAccumulator(depth, list(kinds)) for s in surrogates}
    feats: dict[str, list[Tensor]] = {name: [] for name in ["teacher", *image]}
    labels = []
    for states, y in eval_batches():
        feats["teacher"].append(head_input(teacher, states[:, -1]).cpu())
        for s in surrogates:
            pred = s(states)
            image[s.name].update(states, pred)
            fid[s.name].update(states, pred)
            feats[s.name].append(head_input(teacher, pred[:, -1]).cpu())
        labels.append(np.asarray(y))
    eval_y = np.concatenate(labels)
    probes: dict[str, Any] = {}
    if train_batches is not None and (eval_y >= 0).any():
        train_feats: dict[str, list[Tensor]] = {name: [] for name in feats}
        train_labels = []
        for states, y in train_batches():
            train_feats["teacher"].append(head_input(teacher, states[:, -1]).cpu())
            for s in surrogates:
                train_feats[s.name].append(head_input(teacher, s(states)[:, -1]).cpu())
            train_labels.append(np.asarray(y))
        if train_labels:
            features = {name: (torch.cat(train_feats[name]), torch.cat(feats[name]))
                        for name in feats}
            probes = probe_readouts(features, np.concatenate(train_labels), eval_y,
                                    head=head, seed=seed, epochs=epochs)
    out = {}
    for s in surrogates:
        arrays = {**image[s.name].result(), **fid[s.name].result()}
        out[s.name] = SurrogateResult(arrays, fid[s.name].pooled(),
                                      image[s.name].image_shares(),
                                      {**probes.get(s.name, {}),
                                       "teacher": probes.get("teacher", {})}
                                      if probes else {}, fid[s.name].batch_sizes)
    groups = next(iter(image.values())).groups
    return out, groups, int(moments.n)


def compare_to_baselines(results: dict[str, SurrogateResult], groups: Sequence[str], *,
                         name: str = "raptor", replicates: int = 1000,
                         seed: int = 0) -> dict[str, Any]:
    """Does ``name`` beat the best baseline at every depth 1..L (``r2_image``)? Per group:
    the best baseline per depth, the difference with its bootstrap interval over images,
    and ``beats_every_depth`` (the interval's lower end above 0 at every depth)."""
    others = [b for b in results if b != name]
    if not others:
        return {}
    ours = results[name]
    counts = bootstrap_counts(len(ours.shares), replicates=replicates, seed=seed)
    out: dict[str, Any] = {}
    for g, group in enumerate(groups):
        table = np.stack([results[b].arrays["r2_image"][:, g] for b in others])  # (B, L+1)
        best_idx = np.where(np.isnan(table), -np.inf, table).argmax(axis=0)
        point, lo, hi, best_names = [], [], [], []
        for depth in range(table.shape[1]):
            other = others[best_idx[depth]]
            best_names.append(other)
            if depth == 0 or not len(ours.shares) or np.isnan(ours.arrays["r2_image"][depth, g]):
                point.append(None), lo.append(None), hi.append(None)
                continue
            p, a, b = bootstrap_difference(ours.shares[:, depth, g],
                                           results[other].shares[:, depth, g], counts)
            point.append(p), lo.append(a), hi.append(b)
        usable = [x for x in lo if x is not None]
        out[group] = {"best_baseline": best_names, "difference": point, "low": lo, "high": hi,
                      "beats_every_depth": bool(usable) and all(x > 0 for x in usable),
                      "depths_beaten": int(sum(x > 0 for x in usable)),
                      "depths": len(usable), "replicates": replicates}
    return out


__all__ = ["BASELINES", "INIT_LAYERS", "Surrogate", "ModelSurrogate", "IdentitySurrogate",
           "MeanTrajectory", "LinearSurrogate", "LoopSurrogate", "TrainStatistics",
           "ImageR2", "TeacherMoments", "evaluate_surrogates", "compare_to_baselines",
           "probe_readouts", "wilson", "katz", "head_input", "middle_layers",
           "best_loop_layers", "r2_image_reference", "phase_layers"]
