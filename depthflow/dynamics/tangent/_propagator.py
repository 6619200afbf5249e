"""(Private; public names are re-exported by :mod:`depthflow.dynamics.recovery`.) The
directional propagator of a depth-indexed map, matrix-free, and its top right singular
vector (dense SVD when small, else block subspace iteration: the default adversarial direction of
:func:`depthflow.dynamics.recovery.perturbation_recovery`).

``P = d(u_stop[out]) / d(u_start)`` at one state ``x_start`` (T, D): an input tangent ``v``
(per token orthogonal to ``u_start``) enters as the state perturbation ``r_start * v``
(per-token norms held), runs through the real blocks ``start+1..stop`` by full-state JVPs,
and the output tokens ``out`` are projected per token by ``(I - u u^T) / ||x_stop||``. The
adjoint runs the VJP chain backwards. All tokens in, the ``out`` tokens out (``out`` = all
tokens gives the whole directional propagator).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from depthflow.errors import ConfigError
from depthflow.dynamics.maps import DepthMap, tangent_project
from depthflow.dynamics.tangent import _linalg

__all__ = ["DirectionalPropagator", "top_singular_direction", "start_seed"]


def start_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and integer keys (e.g. a global sample index and
    an injection depth), so that random draws never depend on batch position."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(k) & 0xFFFFFFFF for k in keys)])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


class DirectionalPropagator:
    """``P`` (module docstring) as batched ``matmat``/``rmatmat`` on blocks of vectors.

    ``matmat`` maps (b, T, D) input tangents to (b, |out|, D) output tangents; ``rmatmat``
    the transpose. ``nmatvec`` counts single-vector JVP and VJP chains.
    """

    def __init__(self, f: DepthMap, x: Tensor, start: int, stop: int,
                 out_tokens: Sequence[int]) -> None:
        if f.autonomous:
            raise ConfigError("a directional propagator needs a depth-indexed map")
        self.f, self.steps = f, list(range(start + 1, stop + 1))
        for t in self.steps:
            f.check_depth(t)
        if not self.steps:
            raise ConfigError(f"need start < stop, got start={start}, stop={stop}")
        x = x.detach()
        self.T, self.D = x.shape
        self.out = [int(i) for i in out_tokens]
        if not self.out or any(not 0 <= i < self.T for i in self.out):
            raise ConfigError(f"out_tokens must be positions in 0..{self.T - 1}, got "
                              f"{list(out_tokens)}")
        with torch.no_grad():
            self.states = [x]
            for t in self.steps:
                self.states.append(f(t, self.states[-1]))
        self.r_in = x.norm(dim=-1, keepdim=True)                       # (T, 1)
        self.u_in = x / self.r_in
        xe = self.states[-1][self.out]                                  # (K, D)
        self.r_out = xe.norm(dim=-1, keepdim=True)
        self.u_out = xe / self.r_out
        self.nmatvec = 0

    def matmat(self, v: Tensor) -> Tensor:
        """(b, T, D) -> (b, K, D)."""
        b = v.shape[0]
        v = tangent_project(self.u_in, v) * self.r_in
        for t, xs in zip(self.steps, self.states[:-1]):
            _, v = self.f.jvp(t, xs.expand(b, self.T, self.D).contiguous(), v)
        self.nmatvec += b
        return (tangent_project(self.u_out, v[:, self.out]) / self.r_out).detach()

    def rmatmat(self, w: Tensor) -> Tensor:
        """(b, K, D) -> (b, T, D)."""
        b = w.shape[0]
        g = w.new_zeros(b, self.T, self.D)
        g[:, self.out] = tangent_project(self.u_out, w) / self.r_out
        for t, xs in zip(reversed(self.steps), reversed(self.states[:-1])):
            _, g = self.f.vjp(t, xs.expand(b, self.T, self.D).contiguous(), g)
        self.nmatvec += b
        return tangent_project(self.u_in, g * self.r_in).detach()


def top_singular_direction(f: DepthMap, x: Tensor, start: int, stop: int,
                          out_tokens: Sequence[int], *, seed: int = 0, method: str = "auto",
                          tol: float = 1e-6, max_iter: int = 300, oversample: int = 8,
                          max_dense: int = 2048) -> tuple[Tensor, bool]:
    """Top right singular vector (T, D) of the all-tokens-in -> ``out_tokens``-out directional
    propagator from depth ``start`` to ``stop`` at ``x`` (T, D).

    ``method="dense"`` builds ``P`` from ``T*D`` batched JVP chains and takes its SVD (exact,
    always converged); ``"subspace"`` runs block subspace iteration on ``P^T P``
    (``1 + oversample`` vectors, JVP chain forward, VJP chain backward), converged when
    ``||P^T u_1 - s_1 v_1|| <= tol s_1``; ``"auto"`` is dense up to ``max_dense`` inputs.
    Returns ``(v, converged)`` with ``||v|| = 1``, tangent per token, sign fixed (largest
    entry positive).
    """
    if method not in ("auto", "dense", "subspace"):
        raise ConfigError(f"method must be 'auto', 'dense' or 'subspace', got {method!r}")
    P = DirectionalPropagator(f, x, start, stop, out_tokens)
    T, D, K = P.T, P.D, len(P.out)
    if method == "dense" or (method == "auto" and T * D <= max_dense):
        eye = torch.eye(T * D, dtype=x.dtype, device=x.device).reshape(T * D, T, D)
        M = P.matmat(eye).reshape(T * D, K * D).T                       # (K D, T D)
        _, _, Vh = torch.linalg.svd(M, full_matrices=False)
        v, ok = Vh[0], True
    else:
        b = max(1, min(1 + int(oversample), T * (D - 1)))
        gen = torch.Generator().manual_seed(int(seed))
        q0 = torch.randn(b, T, D, generator=gen, dtype=torch.float64).to(x)
        q0 = tangent_project(P.u_in, q0).reshape(b, -1)
        out = _linalg.subspace_svd(
            lambda V: P.matmat(V.reshape(-1, T, D)).reshape(-1, K * D),
            lambda W: P.rmatmat(W.reshape(-1, K, D)).reshape(-1, T * D),
            q0, 1, tol=tol, max_iter=max_iter)
        v, ok = out["right"][0], bool(out["converged"])
    v = tangent_project(P.u_in, v.reshape(T, D))
    v = v / v.norm()
    flat = v.reshape(-1)
    return (v * torch.sign(flat[flat.abs().argmax()])).detach(), ok
