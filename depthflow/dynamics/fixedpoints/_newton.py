"""Batched Newton-Krylov for fixed points on the sphere (private; see
:mod:`depthflow.dynamics.fixedpoints.fixed_points`).

Per start: inexact Newton steps (GMRES on JVPs, forcing term ``min(0.1, ||r||)``) with a
backtracking line search on ``||F(u) - u||``; where a step fails or gains less than half,
``fallback_steps`` damped fixed-point steps follow (a weak Newton step is kept only when it
beats the damped step). Every start has its own counters; converged, failed or
out-of-budget starts drop out of the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from depthflow.dynamics.maps import DepthMap, tangent_project

CONVERGED, CONVERGED_FALLBACK, MAX_ITER, BUDGET_EXHAUSTED, NONFINITE = range(5)


def unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class Problem:
    """``g`` on a batch of variables ``z`` (N, T', D): residual, projections, retraction."""

    def __init__(self, f: DepthMap, *, context: Tensor | None, token: int, max_step: float,
                 restrict: Callable[[DepthMap, Tensor, int], DepthMap]) -> None:
        self.f, self.context, self.token, self.max_step = f, context, token, max_step
        self.restrict = restrict
        self.sphere = f.on_sphere

    def map_for(self, idx: Tensor) -> DepthMap:
        """The map of starts ``idx`` (token scope: each start has its own frozen context)."""
        if self.context is None:
            return self.f
        return self.restrict(self.f, self.context[idx], self.token)

    def __call__(self, idx: Tensor, z: Tensor) -> Tensor:
        with torch.no_grad():
            return self.map_for(idx)(None, z).detach()

    def jvp(self, idx: Tensor, z: Tensor, v: Tensor) -> Tensor:
        with torch.no_grad():
            return self.map_for(idx).jvp(None, z, v)[1].detach()

    def proj(self, z: Tensor, v: Tensor) -> Tensor:
        return tangent_project(z, v) if self.sphere else v

    def retract(self, z: Tensor, d: Tensor) -> Tensor:
        if not self.sphere:
            return z + d
        step = d.norm(dim=-1, keepdim=True)
        d = d * (self.max_step / step.clamp_min(self.max_step))          # trust region
        return unit(z + d)

    def residual(self, z: Tensor, gz: Tensor) -> Tensor:
        """Per start: angle (sphere) or distance, max over tokens; NaN stays NaN."""
        dist = (gz - z).norm(dim=-1)
        if self.sphere:
            dist = 2 * torch.asin((dist / 2).clamp(max=1.0))
        return dist.amax(dim=-1)

    def merit(self, z: Tensor, gz: Tensor) -> Tensor:
        return (gz - z).flatten(1).norm(dim=1)


def _gmres(apply, b: Tensor, m: int, eta: Tensor, budget: Tensor) -> tuple[Tensor, Tensor]:
    """Batched GMRES from zero for ``A d = b`` (rows of ``b`` (N, n) independent), each row
    stopping at relative residual ``eta`` or after ``budget`` products. ``apply(idx, V)``
    applies ``A`` to rows ``idx``. Returns ``d`` (N, n) and products used (N,)."""
    N, n = b.shape
    m = max(1, min(m, n))
    beta = b.norm(dim=1)
    V = b.new_zeros(N, m + 1, n)
    H = b.new_zeros(N, m + 1, m)
    V[:, 0] = b / beta.clamp_min(1e-300)[:, None]
    cols = torch.zeros(N, dtype=torch.long, device=b.device)
    active = (beta > 0) & (budget > 0)
    for j in range(m):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        w = apply(idx, V[idx, j])                                       # (a, n)
        Vi = V[idx, : j + 1]
        h = torch.einsum("akn,an->ak", Vi, w)
        w = w - torch.einsum("akn,ak->an", Vi, h)
        h2 = torch.einsum("akn,an->ak", Vi, w)
        w, h = w - torch.einsum("akn,ak->an", Vi, h2), h + h2
        hn = w.norm(dim=1)
        H[idx, : j + 1, j] = h
        H[idx, j + 1, j] = hn
        V[idx, j + 1] = w / hn.clamp_min(1e-300)[:, None]
        cols[idx] = j + 1
        rhs = torch.zeros(idx.numel(), j + 2, dtype=b.dtype, device=b.device)
        rhs[:, 0] = beta[idx]
        Hs = H[idx, : j + 2, : j + 1]
        y = torch.linalg.pinv(Hs) @ rhs.unsqueeze(-1)
        rel = (Hs @ y - rhs.unsqueeze(-1)).norm(dim=(1, 2)) / beta[idx]
        stop = (rel <= eta[idx]) | (hn <= 1e-13 * beta[idx]) | ~torch.isfinite(rel) \
            | (cols[idx] >= budget[idx])
        active[idx[stop]] = False
    d = torch.zeros_like(b)
    for c in cols.unique().tolist():
        if c == 0:
            continue
        idx = (cols == c).nonzero().squeeze(1)
        rhs = torch.zeros(idx.numel(), c + 1, 1, dtype=b.dtype, device=b.device)
        rhs[:, 0, 0] = beta[idx]
        y = torch.linalg.pinv(H[idx, : c + 1, :c]) @ rhs                 # (a, c, 1)
        d[idx] = torch.einsum("akn,ak->an", V[idx, :c], y[..., 0])
    return d, cols


def solve(prob: Problem, z0: Tensor, *, tol: float, max_iter: int, max_evals: int,
           damping: float, krylov_dim: int, backtracks: int,
           fallback_steps: int) -> dict[str, Tensor]:
    """Newton-Krylov with line search on a batch ``z0`` (N, T', D); where a Newton step
    fails its line search, ``fallback_steps`` damped fixed-point steps follow before the next
    Newton attempt (a failed attempt costs up to ``krylov_dim`` JVPs, a fallback step one
    evaluation)."""
    N, dev = z0.shape[0], z0.device
    everyone = torch.arange(N, device=dev)
    z = z0.clone()
    gz = prob(everyone, z)
    nfev = torch.ones(N, dtype=torch.long, device=dev)
    njev = torch.zeros(N, dtype=torch.long, device=dev)
    nit = torch.zeros(N, dtype=torch.long, device=dev)
    pending = torch.zeros(N, dtype=torch.long, device=dev)      # fallback steps still due
    fallback = torch.zeros(N, dtype=torch.bool, device=dev)
    status = torch.full((N,), int(MAX_ITER), dtype=torch.long, device=dev)
    res = prob.residual(z, gz)
    finite = torch.isfinite(gz).flatten(1).all(1)
    status[~finite] = NONFINITE
    done = ~finite | (res <= tol)
    status[finite & (res <= tol)] = CONVERGED
    shape = z.shape[1:]
    while True:
        out = (nfev + 2 > max_evals) & ~done
        status[out] = BUDGET_EXHAUSTED
        done |= out | ((nit >= max_iter) & (pending == 0))
        idx = (~done).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        zi, gi = z[idx], gz[idx]
        r = prob.proj(zi, gi - zi)                                       # (a, T', D)
        new_z, new_g = zi.clone(), gi.clone()
        newton = (pending[idx] == 0).nonzero().squeeze(1)
        accepted = torch.zeros(idx.numel(), dtype=torch.bool, device=dev)
        moved = torch.zeros(idx.numel(), dtype=torch.bool, device=dev)   # weak Newton step
        if newton.numel():
            nidx, zn = idx[newton], zi[newton]

            def apply(sub: Tensor, v: Tensor) -> Tensor:
                zz = zn[sub]
                v = prob.proj(zz, v.reshape(-1, *shape))
                jv = prob.jvp(nidx[sub], zz, v)
                return (prob.proj(zz, jv) - v).flatten(1)

            merit = prob.merit(zn, gi[newton])
            eta = merit.clamp(min=1e-10, max=0.1)               # forcing term: quadratic
            d, used = _gmres(apply, -r[newton].flatten(1), krylov_dim, eta,
                             max_evals - nfev[nidx] - 2)
            d = d.reshape(-1, *shape)
            nfev[nidx] += used
            njev[nidx] += used
            nit[nidx] += 1
            alpha = 1.0
            for _bt in range(backtracks + 1):               # backtracking line search
                todo = newton[~accepted[newton]]
                todo = todo[nfev[idx[todo]] < max_evals]
                if todo.numel() == 0:
                    break
                pos = torch.searchsorted(newton, todo)
                zt = prob.retract(zi[todo], alpha * d[pos])
                gt = prob(idx[todo], zt)
                nfev[idx[todo]] += 1
                mt = prob.merit(zt, gt)
                ok = torch.isfinite(mt) & (mt <= (1 - 1e-4 * alpha) * merit[pos])
                ok |= torch.isfinite(mt) & (prob.residual(zt, gt) <= tol)
                new_z[todo[ok]], new_g[todo[ok]] = zt[ok], gt[ok]
                accepted[todo[ok]] = True
                alpha *= 0.5
            # a failed or weak Newton step (outside the quadratic region): iterate first
            gained = prob.merit(new_z[newton], new_g[newton]) / merit.clamp_min(1e-300)
            weak = newton[~accepted[newton] | (gained > 0.5)]
            pending[idx[weak]] = fallback_steps
            moved[newton[accepted[newton] & (gained > 0.5)]] = True
            accepted[weak] = False                 # compared with a damped step below
        fb = (~accepted & (pending[idx] > 0)).nonzero().squeeze(1)
        fb = fb[nfev[idx[fb]] < max_evals]
        if fb.numel():                                      # damped fixed-point steps
            zf = prob.retract(zi[fb], damping * r[fb]) if prob.sphere else \
                zi[fb] + damping * (gi[fb] - zi[fb])
            gf = prob(idx[fb], zf)
            nfev[idx[fb]] += 1
            mf = prob.merit(zf, gf)
            pending[idx[fb]] -= 1       # iterate on even where ||F(u) - u|| grows for a while
            # a weak Newton step is kept when it beats the damped step
            better = ~moved[fb] | (mf < prob.merit(new_z[fb], new_g[fb]))
            take = fb[better]
            fallback[idx[take]] = True
            new_z[take], new_g[take] = zf[better], gf[better]
        z[idx], gz[idx] = new_z, new_g
        res[idx] = prob.residual(new_z, new_g)
        bad = ~torch.isfinite(new_g).flatten(1).all(1)
        status[idx[bad]] = NONFINITE
        conv = ~bad & (res[idx] <= tol)
        status[idx[conv]] = torch.where(fallback[idx[conv]],
                                        int(CONVERGED_FALLBACK),
                                        int(CONVERGED))
        done[idx[bad | conv]] = True
    out = ~done & (nfev + 2 > max_evals)
    status[out] = BUDGET_EXHAUSTED
    return {"z": z, "residual": res, "status": status, "nit": nit, "nfev": nfev,
            "njev": njev}
