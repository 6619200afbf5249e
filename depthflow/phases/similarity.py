"""Layer x layer similarity and distance matrices over depth, accumulated batch by batch.

Matrices run over depths ``0..L`` (0 = embedded input, l = after block l); memory never
depends on the number of images. A *view* says which vectors represent a depth:

* ``paper``: the paper's two summaries, the cls token and the mean of the patch tokens
  (registers and distillation token excluded); a metric is computed for each summary and
  the two are averaged. A model without a cls token (SigLIP) has one summary, the mean
  patch token, and the view is that summary's matrix (docs/methods.md);
* ``cls``: the cls token (not defined without one); ``distillation``: DeiT's
  distillation token;
* ``register`` / ``patch`` / ``all``: every register / patch / token is one observation.

Metrics (all matrices symmetric):

* cosine distance ``1 - cos(a_i, a_j)`` (cosine clamped to [-1, 1], norms floored at
  1e-8), averaged over observations: with the ``paper`` view this is exactly the official
  notebook's matrix (docs/methods.md); zero on the diagonal;
* MSE ``mean_features (a_i - a_j)^2``, averaged over observations (activation units^2);
* linear CKA in feature space: ``||C_ij||_F^2 / (||C_ii||_F ||C_jj||_F)`` with ``C_ij`` the
  cross-covariance of depths i and j over all observations, from streaming float64 sums
  ``sum x_i^T x_j`` and ``sum x_i`` (``O(D^2)`` per depth pair, never the n x n Gram);
* debiased minibatch CKA (Nguyen, Raghu, Kornblith 2021): unbiased HSIC (Song et al. 2012)
  of every batch, averaged over batches, then normalised; computed in feature space from
  the same products. Batches of fewer than 4 observations are skipped.

Gram products are formed in the states' dtype (float32 normally, float64 in tests) and
summed in float64; CKA data are shifted by the first batch's mean first, which keeps the
centring in the sums accurate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from depthflow.errors import ConfigError, InputError
from depthflow.data.tokens import cls_position, token_groups
from depthflow.core.vocabulary import NO_CLS

VIEWS = ("paper", "cls", "distillation", "register", "patch", "all")
METRICS = ("cosine", "mse", "cka")
COSINE_EPS = 1e-8


def check_views(views: Sequence[str], *, name: str = "views") -> tuple[str, ...]:
    views = tuple(views)
    bad = [v for v in views if v not in VIEWS]
    if bad or not views or len(set(views)) != len(views):
        raise ConfigError(f"{name} must be distinct entries of {VIEWS}, got {list(views)}")
    return views


def view_tokens(token_kinds: Sequence[str]) -> dict[str, Tensor]:
    """Token indices of every view present in a token layout
    ``[cls?, distillation?, registers..., patches...]``.

    ``paper`` maps to the patch indices (its other summary, the cls token, is found by
    :func:`depthflow.data.tokens.cls_position`; a model without a cls token has none).
    Views whose tokens are absent are left out.
    """
    kinds = list(token_kinds)
    if not kinds:
        raise InputError("token kinds are empty; a layout needs at least one token")
    groups = token_groups(kinds)
    out = {kind: groups[kind] for kind in ("cls", "distillation", "register", "patch")
           if kind in groups}
    out["all"] = torch.arange(len(kinds))
    if "patch" in groups:
        out["paper"] = groups["patch"]
    elif "cls" not in groups:
        raise InputError(f"token kinds {kinds[:4]} have neither a cls token nor patches")
    return out


def view_observations(states: Tensor, view: str, tokens: Tensor, *,
                      cls_index: int | None = 0) -> Tensor:
    """``(n, S, L+1, D)``: observations of a view, S summaries (``paper``: 2, the cls token
    at ``cls_index`` and the mean patch, or 1, the mean patch, when ``cls_index`` is None;
    other views: 1).

    ``states``: ``(B, L+1, T, D)``.
    """
    if view == "paper":
        mean = states[:, :, tokens.to(states.device)].mean(dim=2)
        if cls_index is None:
            return mean[:, None]                                   # (B, 1, L+1, D)
        return torch.stack([states[:, :, cls_index], mean], dim=1)  # (B, 2, L+1, D)
    x = states[:, :, tokens.to(states.device)]                     # (B, L+1, n, D)
    return x.permute(0, 2, 1, 3).reshape(-1, 1, x.shape[1], x.shape[-1])


def depth_grams(obs: Tensor) -> Tensor:
    """Per-observation Gram over depths ``(n, S, L+1, L+1)`` from ``(n, S, L+1, D)``."""
    return obs @ obs.transpose(-1, -2)


class PairwiseAccumulator:
    """Streaming cosine distance and MSE between depths for one view.

    Memory ``O(L^2)``; one ``(n, S, L+1, L+1)`` Gram per batch.
    """

    def __init__(self, view: str) -> None:
        self.view = view
        self.cosine: Tensor | None = None
        self.mse: Tensor | None = None
        self.count = 0

    def update(self, obs: Tensor) -> None:
        """Add observations ``(n, S, L+1, D)`` (see :func:`view_observations`)."""
        gram = depth_grams(obs)                                    # (n, S, L+1, L+1)
        sq = gram.diagonal(dim1=-2, dim2=-1)                       # (n, S, L+1)
        norms = sq.clamp_min(0).sqrt().clamp_min(COSINE_EPS)
        cos = (gram / (norms[..., :, None] * norms[..., None, :])).clamp(-1.0, 1.0)
        mse = (sq[..., :, None] + sq[..., None, :] - 2 * gram).clamp_min(0) / obs.shape[-1]
        dist = (1.0 - cos).double().mean(1).sum(0)
        err = mse.double().mean(1).sum(0)
        if self.cosine is None:
            self.cosine, self.mse = dist, err
        else:
            self.cosine += dist
            self.mse += err
        self.count += obs.shape[0]

    def result(self) -> dict[str, Tensor]:
        if not self.count:
            raise InputError("no observations were accumulated")
        cos = self.cosine / self.count
        cos = (cos + cos.T) / 2
        cos.fill_diagonal_(0.0)
        mse = self.mse / self.count
        mse = (mse + mse.T) / 2
        mse.fill_diagonal_(0.0)
        return {"cosine": cos.cpu(), "mse": mse.cpu()}


def unbiased_hsic(products: Tensor, flat: Tensor, depths: int) -> Tensor:
    """Unbiased HSIC of the linear kernels of every pair of depths, ``(L+1, L+1)``.

    ``flat``: ``(n, (L+1) D)`` observations, ``products = flat^T flat``. With
    ``K~`` the Gram with zeroed diagonal (Song et al. 2012)::

        HSIC_1 = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))

    where every term has a feature-space form: ``tr(K~L~) = ||X'Y||_F^2 - sum_a
    |x_a|^2 |y_a|^2``, ``1'K~1 = |sum x|^2 - sum |x_a|^2``, ``(K~1)_a = x_a . sum x - |x_a|^2``.
    """
    n = flat.shape[0]
    x = flat.reshape(n, depths, -1).double()                       # (n, L+1, D)
    dim = x.shape[-1]
    p = products.double().reshape(depths, dim, depths, dim)
    frob = p.square().sum(dim=(1, 3))                              # (L+1, L+1)
    sq = x.square().sum(-1)                                        # (n, L+1)
    total = x.sum(0)                                               # (L+1, D)
    trace = frob - sq.T @ sq
    ones = total.square().sum(-1) - sq.sum(0)                      # (L+1,)
    row = torch.einsum("nld,ld->nl", x, total) - sq                # (n, L+1)
    mixed = row.T @ row
    return (trace + ones[:, None] * ones[None, :] / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * mixed) / (n * (n - 3))


class LinearCKAAccumulator:
    """Streaming linear CKA between all depths, feature-space form, plus the debiased
    minibatch estimator, for observations ``(n, L+1, D)``.

    Memory: ``((L+1) D)^2`` float64 numbers (``D^2`` per ordered depth pair), e.g. 200 MB
    for 13 depths of D = 384; one product ``flat^T flat`` per batch in the data's dtype.
    """

    def __init__(self) -> None:
        self.shift: Tensor | None = None
        self.cross: Tensor | None = None
        self.total: Tensor | None = None
        self.hsic: Tensor | None = None
        self.count = 0
        self.batches = 0

    def update(self, obs: Tensor) -> None:
        n, depths, dim = obs.shape
        if self.cross is None:
            if self.shift is None:     # preset in distributed runs: rank 0's first batch
                self.shift = obs.mean(0, keepdim=True).detach()
            size = depths * dim
            self.cross = torch.zeros(size, size, dtype=torch.float64, device=obs.device)
            self.total = torch.zeros(size, dtype=torch.float64, device=obs.device)
            self.hsic = torch.zeros(depths, depths, dtype=torch.float64, device=obs.device)
        flat = (obs - self.shift).reshape(n, depths * dim)         # (n, (L+1) D)
        products = flat.T @ flat
        self.cross += products.double()
        self.total += flat.sum(0).double()
        self.count += n
        if n >= 4:
            self.hsic += unbiased_hsic(products, flat, depths)
            self.batches += 1

    def result(self) -> dict[str, Tensor]:
        """``cka`` and ``cka_debiased`` (NaN when no batch had 4 observations)."""
        if not self.count:
            raise InputError("no observations were accumulated")
        depths = self.hsic.shape[0]
        mean = self.total / self.count
        dim = mean.numel() // depths
        hsic = torch.empty(depths, depths, dtype=torch.float64, device=self.cross.device)
        for i in range(depths):            # one block row at a time: no second D^2 matrix
            rows = slice(i * dim, (i + 1) * dim)
            cov = self.cross[rows] / self.count - mean[rows, None] * mean[None, :]
            hsic[i] = cov.reshape(dim, depths, dim).square().sum(dim=(0, 2))
        out = {"cka": _normalise_hsic(hsic).cpu()}
        if self.batches:
            out["cka_debiased"] = _normalise_hsic(self.hsic / self.batches).cpu()
        else:
            out["cka_debiased"] = torch.full_like(out["cka"], float("nan"))
        return out


def _normalise_hsic(hsic: Tensor) -> Tensor:
    hsic = (hsic + hsic.T) / 2
    diag = hsic.diagonal().clamp_min(0).sqrt()
    denom = diag[:, None] * diag[None, :]
    cka = torch.where(denom > 0, hsic / denom.clamp_min(1e-300),
                      torch.full_like(hsic, float("nan")))
    return cka


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA of two representations ``(n, D1)``, ``(n, D2)``, feature-space form."""
    x = (x - x.mean(0)).double()
    y = (y - y.mean(0)).double()
    xy = (x.T @ y).square().sum()
    return xy / ((x.T @ x).square().sum().sqrt() * (y.T @ y).square().sum().sqrt())


def linear_cka_gram(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA the textbook way, from centred ``n x n`` Gram matrices (reference and
    benchmark baseline: ``O(n^2)`` memory)."""
    def centred_gram(a: Tensor) -> Tensor:
        k = a @ a.T
        return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()

    k, m = centred_gram(x), centred_gram(y)
    return (k * m).sum() / ((k * k).sum().sqrt() * (m * m).sum().sqrt())


class DepthSimilarity:
    """All requested matrices of a stream of trajectories ``(B, L+1, T, D)``.

    ``views``: views for cosine distance and MSE; ``cka_views``: views for linear CKA
    (each costs ``((L+1) D)^2`` float64 numbers, twice for ``paper``). Views whose tokens
    are absent (e.g. registers) are skipped.
    """

    def __init__(self, token_kinds: Sequence[str], *, views: Sequence[str] = VIEWS,
                 cka_views: Sequence[str] = ("cls",)) -> None:
        tokens = view_tokens(token_kinds)
        self.tokens = tokens
        self.cls_index = cls_position(token_kinds)
        views = check_views(views) if len(views) else ()
        self.views = [v for v in views if v in tokens]
        cka_views = check_views(cka_views, name="cka_views") if len(cka_views) else ()
        self.cka_views = [v for v in cka_views if v in tokens]
        # the cls view requested from a model without one (recorded in the results; views
        # of absent registers or distillation tokens are skipped silently, as before)
        self.not_defined = {"cls": NO_CLS} if "cls" in (*views, *cka_views) and \
            "cls" not in tokens else {}
        self.pairwise = {v: PairwiseAccumulator(v) for v in self.views}
        summaries = 1 if self.cls_index is None else 2
        self.cka: dict[str, list[LinearCKAAccumulator]] = {
            v: [LinearCKAAccumulator() for _ in range(summaries if v == "paper" else 1)]
            for v in self.cka_views}
        self.depths: int | None = None

    def update(self, states: Tensor) -> None:
        if states.ndim != 4:
            raise InputError(f"states must have shape (batch, depth, token, feature), "
                             f"got {tuple(states.shape)}")
        if self.depths is None:
            self.depths = states.shape[1]
        for view in self.views:
            self.pairwise[view].update(view_observations(states, view, self.tokens[view],
                                                         cls_index=self.cls_index))
        for view, accs in self.cka.items():
            obs = view_observations(states, view, self.tokens[view], cls_index=self.cls_index)
            for s, acc in enumerate(accs):
                acc.update(obs[:, s])

    def result(self) -> Mapping[str, Mapping[str, Tensor]]:
        """``{metric: {view: (L+1, L+1) float64}}`` for cosine, mse, cka, cka_debiased."""
        out: dict[str, dict[str, Tensor]] = {"cosine": {}, "mse": {}, "cka": {},
                                             "cka_debiased": {}}
        for view, acc in self.pairwise.items():
            for metric, value in acc.result().items():
                out[metric][view] = value
        for view, accs in self.cka.items():
            parts = [acc.result() for acc in accs]
            for metric in ("cka", "cka_debiased"):
                out[metric][view] = sum(p[metric] for p in parts) / len(parts)
        return out
