"""Directional fixed points of autonomous depth maps: ``F_hat(u*) = u*``.

:func:`find_fixed_points` runs a batched inexact Newton-Krylov method from many starts at
once: at each iterate ``u`` (unit per token) it solves ``(P_u J_hat P_u - I) d = -P_u
(F_hat(u) - u)`` on the tangent space by GMRES on JVPs, retracts ``u <- normalize(u + d)``
with a backtracking line search on ``||F_hat(u) - u||``, and falls back to one damped
fixed-point step ``u <- normalize(u + damping (F_hat(u) - u))`` where Newton fails. A
Euclidean map (not a :class:`~depthflow.maps.SphereMap`) is solved for ``F(x) = x`` the same
way without projections. Converged points are deduplicated by angle and classified by the
spectral radius of their tangent Jacobian (:func:`depthflow.dynamics.spectra.eigvals`).

Evaluation counts: ``nfev`` counts map evaluations *and* JVPs (each JVP costs about one
forward pass); ``njev`` counts the JVPs alone.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from depthflow import vocabulary as dims
from depthflow.errors import ConfigError, InputError
from depthflow.maps import DepthMap, FunctionMap, SphereMap, check_states, require_autonomous
from depthflow.maps import tangent_project
from depthflow.dynamics import _newton
from depthflow.dynamics._newton import Problem, solve
from depthflow.dynamics.spectra import eigvals

__all__ = ["FixedPointStatus", "FixedPointResult", "find_fixed_points", "starts_from",
           "restrict_token"]

SCOPES = ("state", "token")


class FixedPointStatus(enum.IntEnum):
    """Outcome per start; ``message`` says what to do about it."""

    CONVERGED = _newton.CONVERGED
    CONVERGED_FALLBACK = _newton.CONVERGED_FALLBACK
    MAX_ITER = _newton.MAX_ITER
    BUDGET_EXHAUSTED = _newton.BUDGET_EXHAUSTED
    NONFINITE = _newton.NONFINITE

    @property
    def success(self) -> bool:
        return self in (FixedPointStatus.CONVERGED, FixedPointStatus.CONVERGED_FALLBACK)

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    FixedPointStatus.CONVERGED: "converged: angular residual below tol by Newton-Krylov",
    FixedPointStatus.CONVERGED_FALLBACK: (
        "converged, but some steps were damped fixed-point iterations because Newton steps "
        "failed the line search; the point is fine, check its stability"),
    FixedPointStatus.MAX_ITER: (
        "not converged within max_iter iterations: raise max_iter or krylov_dim, loosen tol, "
        "or add starts nearer the fixed point (starts_from(..., perturb=...))"),
    FixedPointStatus.BUDGET_EXHAUSTED: (
        "map-evaluation budget max_evals (evaluations + JVPs) ran out before convergence: "
        "raise max_evals"),
    FixedPointStatus.NONFINITE: (
        "the map returned NaN/inf at or near this start: check the map, its reference norms "
        "and the start; other starts are unaffected"),
}


# ----------------------------------------------------------------------------- result


@dataclasses.dataclass
class FixedPointResult:
    """Fixed points found from a batch of starts (scipy ``OptimizeResult``-like, per start).

    Attributes
    ----------
    x : Tensor (N, T, D)
        Final iterate per start (full state; token scope: the moved token inside its frozen
        context).
    residual : Tensor (N,)
        Angular residual ``max_i angle(F_hat(u)_i, u_i)`` in radians over the moving tokens
        (Euclidean maps: ``max_i ||F(x)_i - x_i||``).
    status : Tensor (N,) of :class:`FixedPointStatus` values
    nit, nfev, njev : Tensor (N,)
        Newton iterations; map evaluations + JVPs; JVPs alone.
    label : Tensor (N,)
        Index of the unique fixed point each start converged to (-1: not converged).
    points : Tensor (K, T, D)
        Unique fixed points (best residual of each cluster).
    count : Tensor (K,)
        Starts that converged to each point.
    eigenvalues : complex Tensor (K, k)
        Top tangent Jacobian eigenvalues at each point (largest magnitude first).
    spectral_radius : Tensor (K,)
    stable : bool Tensor (K,)
        ``spectral_radius < 1`` (attracting).
    scope, token, tol, dedup_tol, map_json, config
    """

    x: Tensor
    residual: Tensor
    status: Tensor
    nit: Tensor
    nfev: Tensor
    njev: Tensor
    label: Tensor
    points: Tensor
    count: Tensor
    eigenvalues: Tensor
    spectral_radius: Tensor
    stable: Tensor
    scope: str
    token: int
    tol: float
    dedup_tol: float
    map_json: str
    config: dict

    @property
    def success(self) -> Tensor:
        return self.status <= FixedPointStatus.CONVERGED_FALLBACK

    @property
    def messages(self) -> list[str]:
        return [FixedPointStatus(int(s)).message for s in self.status]

    def to_dataset(self, *, points: bool = True) -> xr.Dataset:
        """Labelled output (dims ``start``, ``fixed_point``, ``eig``, ``token``,
        ``feature``); NetCDF-plain attrs; the map's ``describe()`` as JSON."""
        def da(v, d, long_name, units="1", **attrs):
            v = v.detach().cpu().numpy() if isinstance(v, Tensor) else v
            return xr.DataArray(v, dims=d, attrs={"long_name": long_name, "units": units,
                                                  **attrs})

        S, P, E = dims.START, dims.FIXED_POINT, dims.EIG
        unit = "rad" if self.config.get("sphere") else "1"
        ev = self.eigenvalues.detach().cpu().to(torch.complex128).numpy()
        data = {
            "status": da(self.status.to(torch.int8), S, "fixed-point search status",
                         flag_values=np.array([int(s) for s in FixedPointStatus], np.int8),
                         flag_meanings=" ".join(s.name.lower() for s in FixedPointStatus)),
            "residual": da(self.residual.double(), S, "final residual ||F(u) - u|| as an "
                           "angle per token, max over moving tokens", unit),
            "nit": da(self.nit.to(torch.int32), S, "Newton iterations"),
            "nfev": da(self.nfev.to(torch.int32), S, "map evaluations including JVPs"),
            "njev": da(self.njev.to(torch.int32), S, "Jacobian-vector products"),
            "label": da(self.label.to(torch.int32), S, "index of the unique fixed point "
                        "reached (-1: none)"),
            "count": da(self.count.to(torch.int32), P, "starts converged to this point"),
            "spectral_radius": da(self.spectral_radius.double(), P,
                                  "largest |eigenvalue| of the tangent Jacobian"),
            "stable": da(self.stable.to(torch.int8), P, "attracting (spectral radius < 1)",
                         flag_values=np.array([0, 1], np.int8),
                         flag_meanings="unstable attracting"),
            "eig_real": da(ev.real, (P, E), "real part of top tangent Jacobian eigenvalues"),
            "eig_imag": da(ev.imag, (P, E), "imaginary part of top tangent Jacobian "
                           "eigenvalues"),
        }
        if points:
            what = "direction" if self.config.get("sphere") else "state"
            data["point"] = da(self.points.double(), (P, dims.TOKEN, dims.FEATURE),
                               f"unique fixed point ({what})")
            data["final"] = da(self.x.double(), (S, dims.TOKEN, dims.FEATURE),
                               f"final iterate per start ({what})")
        attrs = {"analysis": "fixed_points", "scope": self.scope, "token": int(self.token),
                 "tol": float(self.tol), "dedup_tol": float(self.dedup_tol),
                 "map": self.map_json, "config": json.dumps(self.config, sort_keys=True),
                 "nfev_note": "nfev counts map evaluations and JVPs (one JVP ~ one forward)"}
        return xr.Dataset(data, attrs=attrs)


# ----------------------------------------------------------------------------- starts


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def starts_from(states: Tensor, *, perturb: int = 0, angle: float = 0.1, random: int = 0,
                token: int | None = None, seed: int = 0) -> Tensor:
    """Reproducible starting directions ``(N, T, D)`` (unit per token).

    The directions of ``states`` ((T, D) or (N0, T, D)), then ``perturb`` copies of each
    rotated by ``angle`` radians per token along a random tangent direction, then ``random``
    uniformly random directions (contexts cycling through the states). With ``token`` set,
    only that token is perturbed or randomised, so every start shares its context with a
    data state (what the token scope needs). Multiply by norms for a Euclidean map.
    """
    check_states(states, name="states", unit=True)
    base = _unit(states.detach().reshape(-1, *states.shape[-2:]))   # (N0, T, D)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(base.shape[-2], 1, dtype=base.dtype, device=base.device)
    if token is not None:
        mask = torch.zeros_like(mask)
        mask[token] = 1.0

    def noise(n: int) -> Tensor:
        return torch.randn((n, *base.shape[1:]), generator=gen, dtype=torch.float64).to(base)

    out = [base]
    for _ in range(perturb):
        w = _unit(tangent_project(base, noise(len(base))))
        moved = math.cos(angle) * base + math.sin(angle) * w
        out.append(mask * moved + (1 - mask) * base)
    if random:
        ctx = base[torch.arange(random) % len(base)]
        out.append(mask * _unit(noise(random)) + (1 - mask) * ctx)
    return torch.cat(out)


# ----------------------------------------------------------------------------- token scope


def restrict_token(f: DepthMap, context: Tensor, token: int) -> DepthMap:
    """``f`` acting on token ``token`` alone, the others frozen at ``context`` (..., T, D)
    (directions for a sphere map). The result maps (..., 1, D) to (..., 1, D) and is a
    :class:`~depthflow.maps.SphereMap` when ``f`` is one."""
    T = context.shape[-2]
    if not 0 <= token < T:
        raise ConfigError(f"token must be in 0..{T - 1}, got {token}")

    def put(ctx: Tensor, y: Tensor) -> Tensor:
        ctx = ctx.to(y.dtype).expand(*y.shape[:-2], *ctx.shape[-2:])
        return torch.cat([ctx[..., :token, :], y, ctx[..., token + 1:, :]], dim=-2)

    if isinstance(f, SphereMap):
        r = f.norms.to(context)
        r = r.expand(T) if r.ndim == 0 else r
        raw_ctx = context * r.unsqueeze(-1)

        def raw(y: Tensor) -> Tensor:
            return f.base._apply(None, put(raw_ctx, y))[..., token:token + 1, :]

        base = FunctionMap(raw, name=f"{f.base.name} token {token}")
        return SphereMap(base, r[..., token:token + 1], source=f.source)

    def fn(y: Tensor) -> Tensor:
        return f._apply(None, put(context, y))[..., token:token + 1, :]

    return FunctionMap(fn, name=f"{f.name} token {token}")


# ----------------------------------------------------------------------------- public


def _distance(sphere: bool, a: Tensor, b: Tensor) -> Tensor:
    """Max over tokens of the angle (sphere) or distance between ``a`` (K, T, D) and
    ``b`` (T, D)."""
    dist = (a - b).norm(dim=-1)
    if sphere:
        dist = 2 * torch.asin((dist / 2).clamp(max=1.0))
    return dist.amax(dim=-1)


def find_fixed_points(f: DepthMap, starts: Tensor, *, scope: str = "state", token: int = 0,
                      tol: float = 1e-8, max_iter: int = 50, max_evals: int | None = None,
                      damping: float = 0.5, krylov_dim: int = 30, backtracks: int = 4,
                      fallback_steps: int = 10, max_step: float = 0.5,
                      dedup_tol: float = 1e-4, k: int = 8,
                      stability: bool = True, batch_size: int | None = None,
                      seed: int = 0) -> FixedPointResult:
    """Fixed points ``F(u*) = u*`` of an autonomous map from a batch of starts.

    Parameters
    ----------
    f : DepthMap
        Autonomous (``frozen(F, t)``, ``compose(F, s, e)``, an oracle); normally a
        :class:`~depthflow.maps.SphereMap`, whose fixed points are directions
        (``F(r u*) = c u*``, ``c > 0``). Other maps are solved for ``F(x) = x``.
    starts : Tensor (N, T, D)
        Initial points (normalised per token for sphere maps); see :func:`starts_from`.
    scope : {"state", "token"}
        ``"state"``: all tokens move jointly. ``"token"``: only ``token`` moves, the others
        stay frozen at their start (each start defines its own context).
    tol : float
        Angular residual (radians, max over moving tokens) for convergence.
    max_iter : int
        Newton iterations (GMRES solves) per start; fallback steps are not counted here
        but in ``nfev``.
    max_evals : int, optional
        Budget of map evaluations + JVPs per start (default ``max_iter * (krylov_dim + 8)``).
    damping : float
        Step of the fallback iteration ``u <- normalize(u + damping (F(u) - u))``.
    krylov_dim : int
        GMRES subspace size per Newton step (inexact: stops at relative residual
        ``min(0.1, ||F(u) - u||)``).
    backtracks : int
        Step halvings of the line search before falling back.
    fallback_steps : int
        Damped fixed-point steps taken after a Newton step fails its line search, before
        the next Newton attempt (they converge to attractors from far away, where Newton's
        local model does not hold).
    max_step : float
        Trust radius per token (radians) of a Newton step on the sphere.
    dedup_tol : float
        Two converged starts are the same fixed point when their max-over-tokens angle is
        below this.
    k : int
        Tangent eigenvalues computed per unique point (largest magnitude first).
    stability : bool
        Compute the tangent spectra (``False``: NaN radius, all unstable).
    batch_size : int, optional
        Starts solved together (default all).
    seed : int
        Start vector of the matrix-free eigen solver.

    Returns
    -------
    FixedPointResult

    Raises
    ------
    ConfigError
        Non-autonomous map, unknown scope, bad token or options.
    InputError
        Starts that are not (N, T, D), not finite, or with zero-norm tokens (sphere maps).
    """
    require_autonomous(f, "find_fixed_points")
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {SCOPES}, got {scope!r}")
    sphere = isinstance(f, SphereMap)
    check_states(starts, name="starts", unit=sphere)
    if starts.ndim != 3:
        raise InputError(f"starts must have shape (N, T, D), got {tuple(starts.shape)}; "
                         "use starts[None] for one start")
    T = starts.shape[1]
    if scope == "token" and not 0 <= token < T:
        raise ConfigError(f"token must be in 0..{T - 1}, got {token}")
    for name, value in (("tol", tol), ("dedup_tol", dedup_tol), ("max_step", max_step)):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if not 0 < damping <= 1:
        raise ConfigError(f"damping must be in (0, 1], got {damping}")
    if min(max_iter, krylov_dim, fallback_steps) < 1:
        raise ConfigError(f"max_iter, krylov_dim and fallback_steps must be >= 1, got "
                          f"{max_iter}, {krylov_dim}, {fallback_steps}")
    max_evals = int(max_evals) if max_evals is not None else max_iter * (krylov_dim + 8)
    starts = starts.detach()
    x0 = _unit(starts) if sphere else starts
    bs = batch_size or len(x0)
    parts = []
    for lo in range(0, len(x0), bs):
        chunk = x0[lo:lo + bs]
        context = chunk if scope == "token" else None
        z0 = chunk[:, token:token + 1] if scope == "token" else chunk
        prob = Problem(f, context=context, token=token, max_step=max_step,
                       restrict=restrict_token)
        out = solve(prob, z0, tol=tol, max_iter=max_iter,
                     max_evals=max_evals, damping=damping, krylov_dim=krylov_dim,
                     backtracks=backtracks, fallback_steps=fallback_steps)
        if scope == "token":
            full = chunk.clone()
            full[:, token:token + 1] = out["z"]
            out["z"] = full
        parts.append(out)
    out = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    label, points, count = _deduplicate(out["z"], out["residual"], out["status"], sphere,
                                        dedup_tol)
    ev, radius, stable = _stability(f, points, scope, token, k, stability, seed)
    config = {"scope": scope, "token": token, "tol": tol, "max_iter": max_iter,
              "max_evals": max_evals, "damping": damping, "krylov_dim": krylov_dim,
              "backtracks": backtracks, "fallback_steps": fallback_steps,
              "max_step": max_step, "dedup_tol": dedup_tol,
              "k": k, "stability": stability, "sphere": sphere, "seed": seed,
              "method": "newton-krylov (GMRES on JVPs), damped fixed-point fallback"}
    return FixedPointResult(
        x=out["z"], residual=out["residual"], status=out["status"], nit=out["nit"],
        nfev=out["nfev"], njev=out["njev"], label=label, points=points, count=count,
        eigenvalues=ev, spectral_radius=radius, stable=stable, scope=scope, token=token,
        tol=tol, dedup_tol=dedup_tol, map_json=f.to_json(), config=config)


def _deduplicate(z: Tensor, residual: Tensor, status: Tensor, sphere: bool,
                 dedup_tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy clustering of converged starts (best residual first) by max token angle."""
    label = torch.full((len(z),), -1, dtype=torch.long, device=z.device)
    ok = (status <= FixedPointStatus.CONVERGED_FALLBACK).nonzero().squeeze(1)
    ok = ok[torch.argsort(residual[ok], stable=True)]
    reps: list[int] = []
    for i in ok.tolist():
        if reps:
            dist = _distance(sphere, z[reps], z[i])
            j = int(torch.argmin(dist))
            if float(dist[j]) < dedup_tol:
                label[i] = j
                continue
        label[i] = len(reps)
        reps.append(i)
    points = z[reps] if reps else z[:0]
    count = torch.bincount(label[label >= 0], minlength=len(reps))
    return label, points, count


def _stability(f: DepthMap, points: Tensor, scope: str, token: int, k: int, stability: bool,
               seed: int) -> tuple[Tensor, Tensor, Tensor]:
    K = len(points)
    if not stability or K == 0:
        return (torch.full((K, k), complex("nan"), dtype=torch.complex128),
                torch.full((K,), math.nan, dtype=torch.float64),
                torch.zeros(K, dtype=torch.bool))
    evs = []
    for p in points:
        if scope == "token":
            g, x = restrict_token(f, p, token), p[token:token + 1]
        else:
            g, x = f, p
        n = x.shape[0] * (x.shape[1] - (1 if isinstance(g, SphereMap) else 0))
        kk = min(k, n)
        res = eigvals(g, None, x, k=kk, seed=seed)
        ev = res.eigenvalues.detach().cpu().to(torch.complex128)
        evs.append(torch.cat([ev, torch.full((k - kk,), complex("nan"),
                                             dtype=torch.complex128)]))
    ev = torch.stack(evs)
    radius = torch.nan_to_num(ev.abs(), nan=0.0).amax(dim=1)
    return ev, radius, radius < 1
