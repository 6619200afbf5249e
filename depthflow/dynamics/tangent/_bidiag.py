"""Batched Golub-Kahan-Lanczos bidiagonalisation with full reorthogonalisation (private).

Used by :mod:`depthflow.dynamics.tangent.finite_depth`. The operator ``A`` is given by two callables
on flat batches, ``matvec: (N, n_in) -> (N, n_out)`` and ``rmatvec: (N, n_out) -> (N, n_in)``,
acting independently on each of the ``N`` samples (block-diagonal over samples), so that all
samples run in lockstep through one batched product per step.

After ``m`` steps (``m`` products with ``A`` and ``m`` with ``A^T``)::

    A V_m = U_m B_m,    A^T U_m = V_m B_m^T + beta_m v_(m+1) e_m^T,

``B_m`` upper bidiagonal (``alpha`` on the diagonal, ``beta`` above it). With
``B_m = X S Y^T`` the Ritz triplets ``(s_i, U_m x_i, V_m y_i)`` satisfy ``A (V y_i) = s_i
(U x_i)`` exactly and ``||A^T (U x_i) - s_i (V y_i)|| = beta_m |x_i[m]|``: that is the
residual of the convergence test (relative to ``s_1``). Breakdowns (an exhausted Krylov
space: ``beta_j`` or ``alpha_j`` at round-off level) continue from a random vector orthogonal
to the basis, so repeated singular values (an isometry) are found with their multiplicity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

CONVERGED, MAX_ITER, NONFINITE = 0, 1, 2

BREAKDOWN = 1e-12
"""A new basis vector shorter than this times the running operator-norm estimate counts as a
breakdown (the Krylov space is invariant): the recurrence restarts from a random vector."""


def _reorth(w: Tensor, Q: Tensor) -> Tensor:
    """Remove the components of ``w`` (N, n) along the orthonormal rows of ``Q`` (N, j, n):
    classical Gram-Schmidt twice (numerically as good as modified Gram-Schmidt here)."""
    if Q.shape[1] == 0:
        return w
    for _ in range(2):                      # batched products on the strided view: no copy
        c = torch.bmm(Q, w.unsqueeze(-1))                           # (N, j, 1)
        w = w - torch.bmm(c.transpose(1, 2), Q).squeeze(1)
    return w


def _fresh(gen: torch.Generator, like: Tensor, Q: Tensor, project: Callable[[Tensor], Tensor]
           ) -> Tensor:
    """Random unit vectors in the range of ``project``, orthogonal to ``Q`` (N, j, n)."""
    z = torch.randn(like.shape, generator=gen, dtype=torch.float64).to(like)
    z = _reorth(project(z), Q)
    return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def bidiagonalize(matvec: Callable[[Tensor], Tensor], rmatvec: Callable[[Tensor], Tensor],
                  v0: Tensor, *, k: int, tol: float, max_iter: int, gen: torch.Generator,
                  project_in: Callable[[Tensor], Tensor],
                  project_out: Callable[[Tensor], Tensor], n_out: int,
                  bad: Tensor | None = None, vectors: bool = False) -> dict:
    """Top-``k`` singular triplets of ``A`` per sample.

    ``v0`` (N, n_in) are the start vectors (in the range of ``project_in``); ``bad`` (N,)
    marks samples that are already non-finite. Returns a dict of tensors: ``values`` (N, k),
    ``residuals`` (N, k) (relative to ``s_1``), ``status`` (N,), ``steps`` (N,) (products
    with ``A`` and with ``A^T`` each), and with ``vectors`` also ``right`` (N, k, n_in) and
    ``left`` (N, k, n_out).
    """
    N, n_in = v0.shape
    dev, dt = v0.device, v0.dtype
    V = torch.zeros(N, max_iter + 1, n_in, dtype=dt, device=dev)
    U = torch.zeros(N, max_iter, n_out, dtype=dt, device=dev)
    alpha = torch.zeros(N, max_iter, dtype=torch.float64)
    beta = torch.zeros(N, max_iter, dtype=torch.float64)
    V[:, 0] = v0 / v0.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    bad = torch.zeros(N, dtype=torch.bool) if bad is None else bad.cpu().clone()
    done = bad.clone()
    status = torch.where(bad, NONFINITE, MAX_ITER).to(torch.int8)
    values = torch.full((N, k), float("nan"), dtype=torch.float64)
    residuals = torch.full((N, k), float("nan"), dtype=torch.float64)
    steps = torch.zeros(N, dtype=torch.int64)
    right = torch.full((N, k, n_in), float("nan"), dtype=dt, device=dev) if vectors else None
    left = torch.full((N, k, n_out), float("nan"), dtype=dt, device=dev) if vectors else None
    scale = torch.zeros(N, dtype=torch.float64)

    def finish(mask: Tensor, m: Tensor, X: Tensor, s: Tensor, Y: Tensor, res: Tensor,
               code: int | None) -> None:
        idx = mask.nonzero().flatten()
        if not len(idx):
            return
        values[idx], residuals[idx], steps[idx] = s[idx, :k], res[idx], m
        if code is not None:
            status[idx] = code
        if vectors:
            i = idx.to(dev)
            right[i] = torch.einsum("nmd,nmk->nkd", V[i, :m], Y[idx, :, :k].to(V))
            left[i] = torch.einsum("nmd,nmk->nkd", U[i, :m], X[idx, :, :k].to(U))

    for j in range(max_iter):
        m = j + 1
        p = matvec(V[:, j])                                       # (N, n_out)
        if j > 0:
            p = p - beta[:, j - 1, None].to(p) * U[:, j - 1]
        p = _reorth(project_out(p), U[:, :j])
        a = p.norm(dim=-1).double().cpu()
        scale = torch.maximum(scale, a)
        short = a <= BREAKDOWN * scale.clamp_min(1e-300)
        p = p / a.clamp_min(1e-300).to(p)[:, None]
        if bool(short.any()):             # a breakdown: restart those samples at random
            p = torch.where(short.to(dev)[:, None], _fresh(gen, p, U[:, :j], project_out), p)
        alpha[:, j] = torch.where(short, 0.0, a)
        U[:, j] = p
        w = rmatvec(U[:, j]) - alpha[:, j, None].to(p) * V[:, j]  # (N, n_in)
        w = _reorth(project_in(w), V[:, :m])
        b = w.norm(dim=-1).double().cpu()
        scale = torch.maximum(scale, b)
        beta[:, j] = b
        short = b <= BREAKDOWN * scale.clamp_min(1e-300)
        if m < max_iter:
            w = w / b.clamp_min(1e-300).to(w)[:, None]
            if bool(short.any()):
                w = torch.where(short.to(dev)[:, None], _fresh(gen, w, V[:, :m], project_in),
                                w)
            beta[:, j] = torch.where(short, 0.0, b)   # restart: the coupling is dropped
            V[:, m] = w
        nonfinite = ~(torch.isfinite(alpha[:, j]) & torch.isfinite(b))
        if nonfinite.any():               # flag once; keep NaNs out of the batched SVD
            new = nonfinite & ~done
            status[new] = NONFINITE
            steps[new] = m
            done |= nonfinite
            V[nonfinite.to(dev)] = 0.0
            U[nonfinite.to(dev)] = 0.0
            alpha[nonfinite], beta[nonfinite] = 0.0, 0.0
        if m < k:
            continue
        B = torch.diag_embed(alpha[:, :m]) + torch.diag_embed(beta[:, :m - 1], offset=1)
        X, s, Yh = torch.linalg.svd(B)                            # B = X diag(s) Y^T
        Y = Yh.transpose(-1, -2)
        res = b[:, None] * X[:, m - 1, :k].abs() / s[:, :1].clamp_min(1e-300)
        conv = ~done & (res <= tol).all(1)
        finish(conv, m, X, s, Y, res, CONVERGED)
        done |= conv
        if bool(done.all()):
            break
        if m == max_iter:
            finish(~done, m, X, s, Y, res, None)
    return {"values": values, "residuals": residuals, "status": status, "steps": steps,
            "right": right, "left": left}
