"""Token dynamics along depth (docs/methods.md), as pure tensor functions.

All functions take a batch of trajectories ``traj`` of shape ``(B, L+1, T, D)`` (depth 0 =
embedded input) and return per-sample quantities; the streaming accumulators at the end
gather population quantities (update ranks over images, class structure of cls
directions) batch by batch with memory independent of the number of images.

Definitions (x_hat = x / ||x||, angles in radians):

* ``gamma_l = <x_hat_l, x_hat_L>``: directional convergence to the final direction;
* ``s_l = arccos <x_hat_l, x_hat_{l-1}>``: angular speed of step l (block l);
* ``kappa_l = mean_i <x_hat_l^i, m_hat_l>`` over patch tokens i, ``m`` their mean:
  patch coherence;
* for an update matrix ``U_l = a_l - a_{l-1}`` with singular values sigma: stable rank
  ``sum sigma^2 / max sigma^2``, effective rank ``exp(H(p))`` with ``p = sigma / sum sigma``,
  participation ratio ``(sum sigma^2)^2 / sum sigma^4``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from depthflow.errors import InputError
from depthflow.core.vocabulary import TOKEN_KINDS

EPS = 1e-12


def token_groups(token_kinds: Sequence[str]) -> dict[str, Tensor]:
    """Token indices of each token kind present, in :data:`TOKEN_KINDS` order.

    ``token_kinds`` names the kind of every token position (``"cls"``, ``"distillation"``
    (DeiT), ``"register"``, ``"patch"``, or a kind of its own); kinds outside
    :data:`TOKEN_KINDS` follow, sorted. Kinds a model lacks (no cls token: SigLIP) are
    simply absent.
    """
    kinds = list(token_kinds)
    order = [k for k in TOKEN_KINDS if k in kinds] + sorted(set(kinds) - set(TOKEN_KINDS))
    return {kind: torch.tensor([i for i, k in enumerate(kinds) if k == kind],
                               dtype=torch.long) for kind in order}


def cls_position(token_kinds: Sequence[str]) -> int | None:
    """Position of the cls token, or ``None`` for models without one (SigLIP)."""
    kinds = list(token_kinds)
    if kinds.count("cls") > 1:
        raise InputError(f"a token layout has at most one cls token, got {kinds.count('cls')}")
    return kinds.index("cls") if "cls" in kinds else None


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run LAPACK eigensolvers on one thread.

    Measured here: torch's multi-threaded ``eigvalsh`` on 24 matrices of 384 x 384 took
    55 s with 2 threads on a loaded 2-core machine and 0.2 s with 1 thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def eigvalsh(matrices: Tensor) -> Tensor:
    """Eigenvalues of symmetric matrices (CPU: single-threaded LAPACK, see above)."""
    if matrices.device.type != "cpu":
        return torch.linalg.eigvalsh(matrices)
    with _single_threaded():
        return torch.linalg.eigvalsh(matrices)


def normalize(x: Tensor, *, dim: int = -1, eps: float = EPS) -> Tensor:
    """Unit vectors along ``dim``; zero vectors stay zero."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def cosine(a: Tensor, b: Tensor, *, dim: int = -1) -> Tensor:
    """Cosine similarity, clamped to [-1, 1]."""
    return (normalize(a, dim=dim) * normalize(b, dim=dim)).sum(dim).clamp(-1.0, 1.0)


def angle(a: Tensor, b: Tensor, *, dim: int = -1) -> Tensor:
    """Angle between vectors in [0, pi], accurate for small angles too.

    Uses ``2 atan2(|a_hat - b_hat|, |a_hat + b_hat|)``, which keeps precision where
    ``arccos`` of a cosine near 1 loses it.
    """
    ua, ub = normalize(a, dim=dim), normalize(b, dim=dim)
    # atan2 in float64, rounded back: float32 atan2 differs by an ulp between the SIMD and
    # the scalar (remainder) path, which would make a sample's value depend on its batch
    num, den = (ua - ub).norm(dim=dim), (ua + ub).norm(dim=dim)
    wide = torch.float64 if num.dtype in (torch.float32, torch.float16, torch.bfloat16) \
        else num.dtype
    return (2.0 * torch.atan2(num.to(wide), den.to(wide))).to(num.dtype)


def token_norms(traj: Tensor) -> Tensor:
    """``(B, L+1, T)`` Euclidean norms."""
    return traj.norm(dim=-1)


def gamma(traj: Tensor) -> Tensor:
    """``(B, L+1, T)`` cosine of each token's direction to its final direction."""
    return cosine(traj, traj[:, -1:].expand_as(traj))


def angular_speed(traj: Tensor) -> Tensor:
    """``(B, L, T)`` angle moved by each token in each step (radians)."""
    return angle(traj[:, 1:], traj[:, :-1])


def patch_coherence(traj: Tensor, patch_slice: slice) -> Tensor:
    """``(B, L+1)`` mean cosine of patch tokens to the mean patch direction."""
    patches = traj[:, :, patch_slice]                       # (B, L+1, N, D)
    mean = patches.mean(dim=2, keepdim=True)
    return cosine(patches, mean.expand_as(patches)).mean(dim=-1)


def rank_measures(sq_singular: Tensor) -> dict[str, Tensor]:
    """Stable rank, effective rank and participation ratio from squared singular values.

    ``sq_singular``: ``(..., k)`` non-negative (eigenvalues of ``U^T U``). Zero matrices get
    NaN (the rank of no update is undefined).
    """
    lam = sq_singular.clamp_min(0.0)
    total = lam.sum(-1)
    top = lam.max(-1).values
    sigma = lam.sqrt()
    p = sigma / sigma.sum(-1, keepdim=True).clamp_min(EPS)
    entropy = -(p * torch.log(p.clamp_min(EPS))).sum(-1)
    zero = total <= EPS * (1 + top)
    nan = torch.full_like(total, float("nan"))
    return {
        "stable_rank": torch.where(zero, nan, total / top.clamp_min(EPS)),
        "effective_rank": torch.where(zero, nan, torch.exp(entropy)),
        "participation_ratio": torch.where(zero, nan, total**2 / (lam**2).sum(-1).clamp_min(EPS)),
    }


def update_ranks(traj: Tensor) -> dict[str, Tensor]:
    """Rank measures of each sample's update matrix (tokens stacked): ``(B, L)`` each."""
    return update_ranks_of(traj[:, 1:] - traj[:, :-1])


def update_ranks_of(updates: Tensor) -> dict[str, Tensor]:
    """Rank measures of update matrices ``(..., T, D)``: one value per matrix.

    Squared singular values are the eigenvalues of the smaller Gram matrix (much cheaper
    than an SVD), formed and diagonalised in float64.
    """
    dtype = updates.dtype
    u = updates.double()                  # a float32 Gram would floor small singular values
    if u.shape[-2] <= u.shape[-1]:
        gram = u @ u.transpose(-1, -2)                       # (..., T, T)
    else:
        gram = u.transpose(-1, -2) @ u                       # (..., D, D)
    sq = eigvalsh(gram)
    return {k: v.to(dtype) for k, v in rank_measures(sq).items()}


def summarize_batch(traj: Tensor, groups: Sequence[Tensor], patch_slice: slice, *,
                    image_ranks: bool = True) -> tuple[dict[str, Tensor], Tensor]:
    """Every per-sample measure of a batch in few passes over the states.

    Returns the measures (token axis averaged within each group: ``norm``, ``gamma``
    ``(B, L+1, K)``, ``angular_speed`` ``(B, L, K)``, ``patch_coherence`` ``(B, L+1)`` when
    there are patches, and with ``image_ranks`` the ``update_*`` ranks ``(B, L)``) and the
    updates ``(B, L, T, D)`` for the population accumulators. Equal to the one-measure
    functions above, computed once. Per-image ranks need a float64 ``min(T, D)``-square
    eigenproblem per image and step, which costs more than the forward pass at
    ``T = 257``: they are optional.
    """
    norms = traj.norm(dim=-1)                                 # (B, L+1, T)
    units = traj / norms.unsqueeze(-1).clamp_min(EPS)
    out = {
        "norm": kind_mean(norms, groups),
        "gamma": kind_mean(torch.einsum("bltd,btd->blt", units, units[:, -1]).clamp(-1, 1),
                           groups),
    }
    # angle between unit vectors a, b: 2 atan2(|a - b|, |a + b|), |a + b|^2 = 4 - |a - b|^2
    chord = (units[:, 1:] - units[:, :-1]).norm(dim=-1)
    speed = 2.0 * torch.atan2(chord, (4.0 - chord**2).clamp_min(0.0).sqrt())
    out["angular_speed"] = kind_mean(speed, groups)
    if patch_slice.stop > patch_slice.start:
        mean_dir = normalize(traj[:, :, patch_slice].mean(dim=2))          # (B, L+1, D)
        mean_unit = units[:, :, patch_slice].mean(dim=2)
        out["patch_coherence"] = (mean_unit * mean_dir).sum(-1)
    updates = traj[:, 1:] - traj[:, :-1]                      # (B, L, T, D)
    if image_ranks:
        for name, value in update_ranks_of(updates).items():
            out[f"update_{name}"] = value
    return out, updates


def kind_mean(values: Tensor, groups: Sequence[Tensor]) -> Tensor:
    """Average the token axis (last) within each token-kind group: ``(..., K)``."""
    return torch.stack([values[..., idx].mean(dim=-1) for idx in groups], dim=-1)


class GramAccumulator:
    """Streaming ``sum U^T U`` per (step, kind): update ranks with images stacked.

    Memory is ``L * K * D^2`` float64 numbers, independent of the number of images.
    """

    def __init__(self, steps: int, kinds: int, dim: int, device: torch.device | str = "cpu"):
        self.gram = torch.zeros(steps, kinds, dim, dim, dtype=torch.float64, device=device)
        self.rows = torch.zeros(steps, kinds, dtype=torch.int64)

    def update(self, traj: Tensor, groups: Sequence[Tensor]) -> None:
        """Add a batch of trajectories ``(B, L+1, T, D)``."""
        self.add_updates(traj[:, 1:] - traj[:, :-1], groups)

    def add_updates(self, updates: Tensor, groups: Sequence[Tensor]) -> None:
        """Add a batch of updates ``(B, L, T, D)`` (Gram in their dtype, sum in float64)."""
        updates = updates.to(self.gram.device)
        for k, idx in enumerate(groups):
            u = updates[:, :, idx].transpose(0, 1).flatten(1, 2)      # (L, B*n, D)
            self.gram[:, k] += (u.transpose(1, 2) @ u).double()
            self.rows[:, k] += u.shape[1]

    def ranks(self) -> dict[str, Tensor]:
        sq = eigvalsh(self.gram).clamp_min(0.0)          # (L, K, D)
        return {k: v.cpu() for k, v in rank_measures(sq).items()}


class ClassDirectionAccumulator:
    """Streaming class structure of one token's directions (the cls token) per depth.

    Keeps per-class sums of unit vectors; reports, per depth, the mean cosine of a
    direction to its class-mean direction (within), the mean cosine between class-mean
    directions (between) and their difference (separation, in [-2, 2]; > 0 when
    directions cluster by class).
    """

    def __init__(self, depths: int, num_classes: int, dim: int,
                 device: torch.device | str = "cpu"):
        self.sums = torch.zeros(depths, num_classes, dim, dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.float64, device=device)

    def update(self, states: Tensor, labels: Tensor) -> None:
        """``states``: ``(B, L+1, D)`` for one token; labels ``(B,)``, -1 ignored."""
        keep = labels >= 0
        if not bool(keep.any()):
            return
        units = normalize(states[keep].double())                      # (b, L+1, D)
        onehot = torch.nn.functional.one_hot(labels[keep].to(self.sums.device),
                                             self.counts.numel()).double()  # (b, C)
        self.sums += torch.einsum("bc,bld->lcd", onehot, units.to(self.sums.device))
        self.counts += onehot.sum(0)

    def result(self) -> dict[str, Tensor]:
        present = self.counts > 0
        sums, counts = self.sums[:, present], self.counts[present]
        within = (sums.norm(dim=-1).sum(-1) / counts.sum())          # (L+1,)
        means = normalize(sums)                                       # (L+1, C, D)
        c = means.shape[1]
        if c < 2:
            between = torch.full_like(within, float("nan"))
        else:
            cos = means @ means.transpose(-1, -2)                     # (L+1, C, C)
            off = ~torch.eye(c, dtype=torch.bool, device=cos.device)
            between = cos[:, off].mean(-1)
        return {"within": within.cpu(), "between": between.cpu(),
                "separation": (within - between).cpu()}
