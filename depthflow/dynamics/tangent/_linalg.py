"""Small linear-algebra kernels in torch: tangent bases, Krylov-Schur, block subspace SVD.

Everything large (Krylov bases, blocks of tangent vectors) stays on the tensors' device; only
the small projected matrices (Hessenberg / Rayleigh quotient, a few dozen rows) visit the CPU
for a Schur or eigen decomposition. Private: the public entry points are in
:mod:`depthflow.dynamics.tangent.spectra`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

# ----------------------------------------------------------------------------- tangent bases


def _householder(u: Tensor) -> tuple[Tensor, Tensor]:
    """``w`` and ``2 / ||w||^2`` of the reflection ``H = I - 2 w w^T / ||w||^2`` with
    ``H e_D = -s u`` (``s = sign(u_D)``), so columns ``0..D-2`` of ``H`` are an orthonormal
    basis of the tangent space at the unit vector ``u``."""
    s = torch.where(u[..., -1:] >= 0, 1.0, -1.0).to(u.dtype)
    w = torch.cat([u[..., :-1], u[..., -1:] + s], dim=-1)
    return w, 2.0 / (w * w).sum(-1, keepdim=True)


def to_tangent(u: Tensor, c: Tensor) -> Tensor:
    """Tangent vector at unit ``u`` (..., D) from its coordinates ``c`` (..., D-1)."""
    w, beta = _householder(u)
    v = torch.cat([c, torch.zeros_like(c[..., :1])], dim=-1)
    return v - beta * (w * v).sum(-1, keepdim=True) * w


def from_tangent(u: Tensor, v: Tensor) -> Tensor:
    """Coordinates (..., D-1) of the tangent part of ``v`` (..., D) at unit ``u``."""
    w, beta = _householder(u)
    return (v - beta * (w * v).sum(-1, keepdim=True) * w)[..., :-1]


def transport(y: Tensor, u: Tensor, w: Tensor) -> Tensor:
    """Carry ``w`` tangent at unit ``y`` to the tangent space at unit ``u`` by the rotation in
    the plane of ``(y, u)`` taking ``y`` to ``u`` (per token; identity when ``y = u``;
    undefined for antipodal ``y = -u``)."""
    s = u + y
    denom = (1.0 + (u * y).sum(-1, keepdim=True)).clamp_min(1e-12)
    return w - (s * w).sum(-1, keepdim=True) / denom * s + 2.0 * (y * w).sum(-1, keepdim=True) * u


# ----------------------------------------------------------------------------- ordering


def order(values: np.ndarray, which: str) -> np.ndarray:
    """Indices sorting ``values`` largest first by magnitude (LM) or real part (LR)."""
    key = np.abs(values) if which == "LM" else values.real
    return np.argsort(-key, kind="stable")


# ----------------------------------------------------------------------------- Krylov-Schur


def _orthogonalize(V: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Classical Gram-Schmidt with one re-orthogonalisation (CGS2) of ``w`` against the
    orthonormal rows of ``V`` (j, n). Returns the coefficients (j,) and the remainder."""
    h = V @ w
    w = w - V.T @ h
    h2 = V @ w
    return h + h2, w - V.T @ h2


def krylov_schur(matvec: Callable[[Tensor], Tensor], v0: Tensor, k: int, *, which: str = "LM",
                 tol: float = 1e-10, ncv: int | None = None, max_restarts: int = 200,
                 vectors: bool = False) -> dict:
    """Top-``k`` eigenpairs of a real linear operator by the Krylov-Schur method (Stewart 2001).

    ``matvec`` maps a vector (n,) to (n,); ``v0`` (n,) sets the device, dtype and start.
    Converged when every wanted Ritz pair has residual ``||A y - theta y|| <= tol |theta|``
    (``tol`` absolute when ``theta = 0``). Returns a dict: ``eigenvalues`` (complex numpy,
    (k,)), ``vectors`` (complex tensor (k, n) or None), ``nmatvec``, ``converged``,
    ``residuals`` (relative, (k,)), ``nit`` (restarts).
    """
    n = v0.numel()
    m = min(n, ncv or max(2 * k + 1, 20))
    V = torch.zeros(m + 1, n, dtype=v0.dtype, device=v0.device)
    H = np.zeros((m + 1, m))
    V[0] = v0 / v0.norm()
    p, nmatvec, restarts = 0, 0, 0
    while True:
        for j in range(p, m):                                  # expand to m columns
            w = matvec(V[j])
            nmatvec += 1
            h, w = _orthogonalize(V[: j + 1], w)
            H[: j + 1, j] = h.cpu().numpy()
            beta = float(w.norm())
            H[j + 1, j] = beta
            if beta <= 1e-12 * max(1.0, np.abs(H[: j + 2, : j + 1]).max()):
                if j + 1 >= n:                                 # the whole space: exact
                    m_eff = j + 1
                    break
                # invariant subspace: continue with a fresh random direction (finds
                # repeated eigenvalues, which a single Krylov sequence cannot)
                H[j + 1, j] = 0.0
                gen = torch.Generator().manual_seed(1000 + j + restarts)
                r = torch.randn(n, generator=gen, dtype=torch.float64).to(v0)
                _, r = _orthogonalize(V[: j + 1], r)
                _, r = _orthogonalize(V[: j + 1], r)
                V[j + 1] = r / r.norm()
                continue
            V[j + 1] = w / beta
        else:
            m_eff = m
        Hm = H[:m_eff, :m_eff]
        theta, S = np.linalg.eig(Hm)
        idx = order(theta, which)
        theta, S = theta[idx], S[:, idx]
        b = H[m_eff, m_eff - 1] if m_eff < n else 0.0
        if m_eff < m:                                          # exact: no residual
            b = 0.0
        res = np.abs(b * S[m_eff - 1, :]) / np.maximum(np.abs(theta), 1e-300)
        res = np.where(np.abs(theta) > 0, res, np.abs(b * S[m_eff - 1, :]))
        kk = min(k, m_eff)
        converged = bool(np.all(res[:kk] <= tol))
        if converged or restarts >= max_restarts or m_eff < m:
            out = {"eigenvalues": theta[:kk], "nmatvec": nmatvec, "nit": restarts,
                   "converged": converged or m_eff < m, "residuals": res[:kk], "vectors": None}
            if vectors:
                Sk = torch.from_numpy(S[:, :kk]).to(device=V.device)
                out["vectors"] = (Sk.T @ V[:m_eff].to(Sk.dtype))
            return out
        restarts += 1
        keep = min(max(k + (m - k) // 2, k + 1), m - 1)        # thick restart size
        T, Z, p = _sorted_schur(Hm, theta, keep, which)
        Zt = torch.from_numpy(Z[:, :p]).to(device=V.device, dtype=V.dtype)
        V[:p] = Zt.T @ V[:m]
        V[p] = V[m].clone()
        V[p + 1:] = 0.0
        H[:] = 0.0
        H[:p, :p] = T[:p, :p]
        H[p, :p] = b * Z[m - 1, :p]


def _sorted_schur(Hm: np.ndarray, theta: np.ndarray, keep: int,
                  which: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Real Schur form with the ``keep`` wanted Ritz values first (conjugate pairs kept
    together, so the block may be one larger)."""
    key = np.abs(theta) if which == "LM" else theta.real
    thresh = np.sort(key)[::-1][keep - 1]
    scale = max(1.0, np.abs(key).max())

    def select(re, im):
        v = np.abs(re + 1j * im) if which == "LM" else re
        return v >= thresh - 1e-12 * scale

    T, Z, sdim = scipy.linalg.schur(Hm, output="real", sort=select)
    return T, Z, min(max(int(sdim), 1), Hm.shape[0] - 1)


# ----------------------------------------------------------------------------- block SVD


def subspace_svd(matmat: Callable[[Tensor], Tensor], rmatmat: Callable[[Tensor], Tensor],
                 q0: Tensor, k: int, *, tol: float = 1e-8, max_iter: int = 200) -> dict:
    """Top-``k`` singular triplets of ``A`` by block subspace iteration on ``A^T A``.

    ``matmat`` maps a block (b, n_in) to (b, n_out) (rows are vectors), ``rmatmat`` the
    transpose; ``q0`` (b, n_in) with ``b > k`` is the random start block (oversampling speeds
    convergence: rate ``(s_(b+1) / s_k)^2`` per iteration). Converged when
    ``||A^T u_i - s_i v_i|| <= tol s_1`` for the top ``k``. Returns a dict with
    ``singular_values`` (k,), ``right`` (k, n_in), ``left`` (k, n_out), ``nmatvec`` (products
    with A or A^T, counted per vector), ``converged``, ``residuals``, ``nit``.
    """
    Q = torch.linalg.qr(q0.T).Q.T                               # (b, n_in)
    b = Q.shape[0]
    nmatvec = 0
    for it in range(1, max_iter + 1):
        AQ = matmat(Q)                                          # (b, n_out)
        U, s, Wt = torch.linalg.svd(AQ.T, full_matrices=False)  # AQ^T = U s Wt
        left = U.T                                              # (b, n_out)
        right = Wt @ Q                                          # (b, n_in)
        AtU = rmatmat(left)                                     # (b, n_in)
        nmatvec += 2 * b
        res = (AtU - s[:, None] * right).norm(dim=1) / s[0].clamp_min(1e-300)
        if bool((res[:k] <= tol).all()) or it == max_iter:
            return {"singular_values": s[:k], "right": right[:k], "left": left[:k],
                    "nmatvec": nmatvec, "converged": bool((res[:k] <= tol).all()),
                    "residuals": res[:k], "nit": it}
        Q = torch.linalg.qr(AtU.T).Q.T
    raise AssertionError("unreachable")
