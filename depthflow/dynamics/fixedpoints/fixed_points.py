"""Directional fixed points of autonomous depth maps: ``F_hat(u*) = u*``.

:func:`find_fixed_points` runs a batched inexact Newton-Krylov method from many starts at
once: at each iterate ``u`` (unit per token) it solves ``(P_u J_hat P_u - I) d = -P_u
(F_hat(u) - u)`` on the tangent space by GMRES on JVPs, retracts ``u <- normalize(u + d)``
with a backtracking line search on ``||F_hat(u) - u||``, and falls back to one damped
fixed-point step ``u <- normalize(u + damping (F_hat(u) - u))`` where Newton fails. A
Euclidean map (not a :class:`~depthflow.dynamics.maps.SphereMap`) is solved for ``F(x) = x`` the same
way without projections. Converged points are deduplicated by angle (each distinct point
reports ``n_starts_found``, the number of starts that reached it) and classified from their
CONVERGED tangent spectrum (:class:`Stability`; the definitions are in
:mod:`depthflow.dynamics.fixedpoints._stability`): the top eigenvalues always, the smallest moduli
(``which="SM"``) only when the top lies above the unit circle.

At a fixed point the input and output tangent spaces coincide, so these eigenvalues need no
transport convention. An iterated frozen layer or Raptor block keeps its depth index frozen
(``frozen_depth_index`` in the output): iterating block ``L`` beyond depth ``L`` applies
``F_L`` again and again.

:func:`scan_reference_norms` reruns the search for a sphere map ``F(r u) / ||F(r u)||`` with
the reference norms ``r`` scaled (0.5, 1, 2 by default): how much the answer depends on
that free choice.

Evaluation counts: ``nfev`` counts map evaluations *and* JVPs (each JVP costs about one
forward pass); ``njev`` counts the JVPs alone.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from depthflow.core import vocabulary as dims
from depthflow.errors import ConfigError, InputError
from depthflow.dynamics.maps import (ComposedMap, DepthMap, FrozenMap, FunctionMap, SphereMap,
                                     check_states)
from depthflow.dynamics.maps import require_autonomous, tangent_project
from depthflow.dynamics.fixedpoints import _newton
from depthflow.dynamics.fixedpoints._newton import Problem, solve
from depthflow.dynamics.fixedpoints._stability import (NON_HYPERBOLIC, Stability, classify,
                                                       needs_bottom)
from depthflow.dynamics.fixedpoints._stability import non_hyperbolic as _non_hyperbolic
from depthflow.dynamics.tangent.spectra import eigvals
from depthflow.core.vocabulary import flags

__all__ = ["FixedPointStatus", "FixedPointResult", "Stability", "EigStatus",
           "find_fixed_points", "starts_from", "restrict_token", "frozen_depth_index",
           "depth_index_attrs"]

SCOPES = ("state", "token")
EIG_BOTTOM = "eig_bottom"      # index of a smallest-modulus eigenvalue (smallest first)


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


class EigStatus(enum.IntEnum):
    """Eigensolver outcome for one end of a fixed point's tangent spectrum."""

    CONVERGED = 0
    NOT_CONVERGED = 1
    NOT_COMPUTED = 2

    @property
    def message(self) -> str:
        return {EigStatus.CONVERGED: "converged: every reported Ritz pair met eig_tol",
                EigStatus.NOT_CONVERGED: ("not converged: raise eig_max_restarts or eig_ncv, "
                                          "or use eig_method='dense' when small"),
                EigStatus.NOT_COMPUTED: ("not computed (not needed to decide the stability, "
                                         "or stability/bottom switched off)")}[self]


def _eig_flags() -> dict:
    return flags(EigStatus)


def frozen_depth_index(f: DepthMap) -> int:
    """The depth index ``t`` at which an iterated map is frozen (``maps.frozen(F, t)``,
    possibly wrapped by ``maps.sphere``), or -1 when the map is not a frozen layer."""
    while isinstance(f, SphereMap):
        f = f.base
    return int(f.t) if isinstance(f, FrozenMap) and f.t is not None else -1


def depth_index_attrs(f: DepthMap) -> dict[str, Any]:
    """NetCDF attrs ``frozen_depth_index`` and ``depth_index_note`` stating which depth index
    an iterated map applies (a frozen layer keeps its index beyond the model's depth)."""
    t, g = frozen_depth_index(f), f
    while isinstance(g, SphereMap):
        g = g.base
    if t >= 0:
        note = (f"the map is layer/block t={t} with its depth index frozen at {t}: every "
                f"iteration (also beyond the model's depth) applies F_{t} again")
    elif isinstance(g, ComposedMap):
        note = (f"the map is the composed phase of layers {g.start + 1}..{g.stop}, iterated "
                "as a whole; its depth indices are fixed")
    else:
        note = "autonomous map without a depth index"
    return {"frozen_depth_index": t, "depth_index_note": note}


# ----------------------------------------------------------------------------- result


def _da(v, d, long_name: str, units: str = "1", **attrs) -> xr.DataArray:
    v = v.detach().cpu().numpy() if isinstance(v, Tensor) else v
    return xr.DataArray(v, dims=d, attrs={"long_name": long_name, "units": units, **attrs})


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
        Index of the distinct fixed point each start converged to (-1: not converged).
    points : Tensor (K, T, D)
        Distinct fixed points (best residual of each cluster of converged starts).
    n_starts_found : Tensor (K,)
        Starts that converged to each distinct point.
    eigenvalues : complex Tensor (K, k)
        Top tangent Jacobian eigenvalues at each point (largest magnitude first; NaN padded).
    eig_status : Tensor (K,) of :class:`EigStatus`
        Eigensolver outcome of the top eigenvalues.
    bottom_eigenvalues : complex Tensor (K, k_bottom)
        Smallest-modulus eigenvalues (smallest first; NaN where not computed).
    bottom_status : Tensor (K,) of :class:`EigStatus`
    spectral_radius, min_modulus : Tensor (K,)
        ``max |eig|`` from the top, ``min |eig|`` from the bottom (NaN: not computed).
    stability : Tensor (K,) of :class:`Stability`
        From converged spectra only (otherwise ``unknown`` / ``unstable``).
    non_hyperbolic : bool Tensor (K,)
        Some computed, converged multiplier lies within ``marginal_tol`` of 1 (always for
        ``marginal``; see :mod:`depthflow.dynamics.fixedpoints._stability`).
    scope, token, tol, dedup_tol, marginal_tol, map_json, config, depth_attrs
    """

    x: Tensor
    residual: Tensor
    status: Tensor
    nit: Tensor
    nfev: Tensor
    njev: Tensor
    label: Tensor
    points: Tensor
    n_starts_found: Tensor
    eigenvalues: Tensor
    eig_status: Tensor
    bottom_eigenvalues: Tensor
    bottom_status: Tensor
    spectral_radius: Tensor
    min_modulus: Tensor
    stability: Tensor
    non_hyperbolic: Tensor
    scope: str
    token: int
    tol: float
    dedup_tol: float
    marginal_tol: float
    map_json: str
    config: dict
    reference_norms: Tensor | None = None
    depth_attrs: dict = dataclasses.field(default_factory=dict)

    @property
    def success(self) -> Tensor:
        return self.status <= FixedPointStatus.CONVERGED_FALLBACK

    @property
    def messages(self) -> list[str]:
        return [FixedPointStatus(int(s)).message for s in self.status]

    @property
    def n_distinct(self) -> int:
        """Number of distinct fixed points (deduplicated by angle)."""
        return int(self.points.shape[0])

    @property
    def stable(self) -> Tensor:
        """Bool (K,): attracting (from a converged spectrum)."""
        return self.stability == Stability.ATTRACTING

    @property
    def stability_messages(self) -> list[str]:
        return [Stability(int(s)).message for s in self.stability]

    def to_dataset(self, *, points: bool = True) -> xr.Dataset:
        """Labelled output (dims ``start``, ``fixed_point``, ``eig``, ``eig_bottom``,
        ``token``, ``feature``); plain variable names; NetCDF-plain attrs; the map's
        ``describe()`` as JSON."""
        S, P, E = dims.START, dims.FIXED_POINT, dims.EIG
        unit = "rad" if self.config.get("sphere") else "1"
        ev = self.eigenvalues.detach().cpu().to(torch.complex128).numpy()
        bev = self.bottom_eigenvalues.detach().cpu().to(torch.complex128).numpy()
        data = {
            "status": _da(self.status.to(torch.int8), S, "fixed-point search status",
                          **flags(FixedPointStatus)),
            "residual": _da(self.residual.double(), S, "final residual ||F(u) - u|| as an "
                            "angle per token, max over moving tokens", unit),
            "nit": _da(self.nit.to(torch.int32), S, "Newton iterations"),
            "nfev": _da(self.nfev.to(torch.int32), S, "map evaluations including JVPs"),
            "njev": _da(self.njev.to(torch.int32), S, "Jacobian-vector products"),
            "label": _da(self.label.to(torch.int32), S, "index of the distinct fixed point "
                         "reached (-1: none)"),
            "n_distinct": _da(np.int32(self.n_distinct), (), "number of distinct fixed "
                              "points (deduplicated by angle)"),
            "n_converged": _da(np.int32(int(self.success.sum())), (), "starts that "
                               "converged to a fixed point"),
            "n_starts_found": _da(self.n_starts_found.to(torch.int32), P,
                                  "starts that converged to this fixed point"),
            "stability": _da(self.stability.to(torch.int8), P, "linear stability from the "
                             "converged tangent spectrum", **flags(Stability)),
            "non_hyperbolic": _da(self.non_hyperbolic.to(torch.int8), P, "1: some computed, "
                                  "converged tangent |eigenvalue| within marginal_tol of 1",
                                  flag_values=np.array([0, 1], np.int8),
                                  flag_meanings="hyperbolic non_hyperbolic"),
            "spectral_radius": _da(self.spectral_radius.double(), P,
                                   "largest |eigenvalue| of the tangent Jacobian"),
            "min_modulus": _da(self.min_modulus.double(), P, "smallest |eigenvalue| of the "
                               "tangent Jacobian (NaN: not computed)"),
            "eig_status": _da(self.eig_status.to(torch.int8), P, "eigensolver status of the "
                              "largest-modulus eigenvalues", **_eig_flags()),
            "bottom_status": _da(self.bottom_status.to(torch.int8), P, "eigensolver status "
                                 "of the smallest-modulus eigenvalues", **_eig_flags()),
            "eig_real": _da(ev.real, (P, E), "real part of the largest-modulus tangent "
                            "Jacobian eigenvalues"),
            "eig_imag": _da(ev.imag, (P, E), "imaginary part of the largest-modulus tangent "
                            "Jacobian eigenvalues"),
            "bottom_eig_real": _da(bev.real, (P, EIG_BOTTOM), "real part of the "
                                   "smallest-modulus tangent Jacobian eigenvalues"),
            "bottom_eig_imag": _da(bev.imag, (P, EIG_BOTTOM), "imaginary part of the "
                                   "smallest-modulus tangent Jacobian eigenvalues"),
        }
        r = self.reference_norms
        if r is not None and r.ndim <= 1:
            T = self.x.shape[-2]
            data["reference_norm"] = _da(r.double().expand(T), dims.TOKEN, "reference token "
                                         "norms r of the sphere map F(r u)/||F(r u)||",
                                         "activation units")
        if points:
            what = "direction" if self.config.get("sphere") else "state"
            data["point"] = _da(self.points.double(), (P, dims.TOKEN, dims.FEATURE),
                                f"distinct fixed point ({what})")
            data["final"] = _da(self.x.double(), (S, dims.TOKEN, dims.FEATURE),
                                f"final iterate per start ({what})")
        attrs = {"analysis": "fixed_points", "scope": self.scope, "token": int(self.token),
                 "tol": float(self.tol), "dedup_tol": float(self.dedup_tol),
                 "marginal_tol": float(self.marginal_tol),
                 "stability_definition": "; ".join([*(s.message for s in Stability),
                                                    NON_HYPERBOLIC]),
                 "map": self.map_json, "config": json.dumps(self.config, sort_keys=True),
                 **self.depth_attrs,
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
    :class:`~depthflow.dynamics.maps.SphereMap` when ``f`` is one."""
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
                      dedup_tol: float = 1e-4, k: int = 8, stability: bool = True,
                      bottom: bool = True, k_bottom: int | None = None,
                      marginal_tol: float = 1e-3, eig_method: str = "auto",
                      eig_tol: float = 1e-10, eig_ncv: int | None = None,
                      eig_max_restarts: int = 300, batch_size: int | None = None,
                      seed: int = 0) -> FixedPointResult:
    """Fixed points ``F(u*) = u*`` of an autonomous map from a batch of starts.

    Parameters
    ----------
    f : DepthMap
        Autonomous (``frozen(F, t)``, ``compose(F, s, e)``, an oracle); normally a
        :class:`~depthflow.dynamics.maps.SphereMap`, whose fixed points are directions
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
        Damped fixed-point steps taken after a Newton step fails its line search.
    max_step : float
        Trust radius per token (radians) of a Newton step on the sphere.
    dedup_tol : float
        Two converged starts are the same fixed point when their max-over-tokens angle is
        below this.
    k : int
        Largest-modulus tangent eigenvalues computed per distinct point.
    stability : bool
        Compute the tangent spectra (``False``: every point ``unknown``).
    bottom : bool
        Compute the ``k_bottom`` smallest-modulus eigenvalues where the top lies above
        ``1 + marginal_tol`` (needed to tell saddle, repelling and marginal apart; without
        them such a point is ``unstable``).
    k_bottom : int, optional
        Smallest-modulus eigenvalues per point (default ``k``).
    marginal_tol : float
        Half-width of the band around ``|eig| = 1`` that counts as marginal (see
        :class:`Stability`).
    eig_method, eig_tol, eig_ncv, eig_max_restarts
        Eigensolver route and budget (:func:`depthflow.dynamics.tangent.spectra.eigvals`; ``auto``
        is dense up to 1024 tangent dimensions). Unconverged spectra give ``unknown``.
    batch_size : int, optional
        Starts solved together (default all).
    seed : int
        Start vector of the matrix-free eigensolver.

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
    sphere = f.on_sphere
    check_states(starts, name="starts", unit=sphere)
    if starts.ndim != 3:
        raise InputError(f"starts must have shape (N, T, D), got {tuple(starts.shape)}; "
                         "use starts[None] for one start")
    T = starts.shape[1]
    if scope == "token" and not 0 <= token < T:
        raise ConfigError(f"token must be in 0..{T - 1}, got {token}")
    for name, value in (("tol", tol), ("dedup_tol", dedup_tol), ("max_step", max_step),
                        ("marginal_tol", marginal_tol), ("eig_tol", eig_tol)):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if not 0 < damping <= 1:
        raise ConfigError(f"damping must be in (0, 1], got {damping}")
    if min(max_iter, krylov_dim, fallback_steps, k) < 1:
        raise ConfigError(f"max_iter, krylov_dim, fallback_steps and k must be >= 1, got "
                          f"{max_iter}, {krylov_dim}, {fallback_steps}, {k}")
    k_bottom = k if k_bottom is None else int(k_bottom)
    if k_bottom < 1:
        raise ConfigError(f"k_bottom must be >= 1, got {k_bottom}")
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
    eig = dict(method=eig_method, tol=eig_tol, ncv=eig_ncv, max_restarts=eig_max_restarts,
               seed=seed)
    spec = _spectra(f, points, scope, token, k, k_bottom if bottom else 0,
                    marginal_tol, stability, eig)
    config = {"scope": scope, "token": token, "tol": tol, "max_iter": max_iter,
              "max_evals": max_evals, "damping": damping, "krylov_dim": krylov_dim,
              "backtracks": backtracks, "fallback_steps": fallback_steps,
              "max_step": max_step, "dedup_tol": dedup_tol, "k": k, "k_bottom": k_bottom,
              "stability": stability, "bottom": bottom, "marginal_tol": marginal_tol,
              "eig_method": eig_method, "eig_tol": eig_tol, "eig_ncv": eig_ncv or 0,
              "eig_max_restarts": eig_max_restarts, "sphere": sphere, "seed": seed,
              "n_starts": int(len(x0)),
              "method": "newton-krylov (GMRES on JVPs), damped fixed-point fallback"}
    return FixedPointResult(
        x=out["z"], residual=out["residual"], status=out["status"], nit=out["nit"],
        nfev=out["nfev"], njev=out["njev"], label=label, points=points, n_starts_found=count,
        **spec, scope=scope, token=token, tol=tol, dedup_tol=dedup_tol,
        marginal_tol=marginal_tol, map_json=f.to_json(), config=config,
        reference_norms=f.norms.detach().cpu() if sphere else None,
        depth_attrs=depth_index_attrs(f))


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


def _spectrum(g: DepthMap, x: Tensor, k: int, which: str,
              eig: dict) -> tuple[Tensor, EigStatus]:
    """``k`` eigenvalues (NaN padded) of ``g``'s tangent Jacobian at ``x`` and the status."""
    n = x.shape[0] * (x.shape[1] - (1 if g.on_sphere else 0))
    kk = min(k, n)
    res = eigvals(g, None, x, k=kk, which=which, method=eig["method"], tol=eig["tol"],
                  ncv=eig["ncv"], max_restarts=eig["max_restarts"], seed=eig["seed"])
    ev = res.eigenvalues.detach().cpu().to(torch.complex128)
    ok = res.converged and bool(torch.isfinite(ev.abs()).all())
    pad = torch.full((k - len(ev),), complex("nan"), dtype=torch.complex128)
    return torch.cat([ev, pad]), EigStatus.CONVERGED if ok else EigStatus.NOT_CONVERGED


def _spectra(f: DepthMap, points: Tensor, scope: str, token: int, k: int, k_bottom: int,
             marginal_tol: float, stability: bool, eig: dict) -> dict[str, Tensor]:
    """Top (and where needed bottom) tangent spectra and the stability of each point."""
    K, kb = len(points), max(k_bottom, 1)
    nan = complex("nan")
    top = torch.full((K, k), nan, dtype=torch.complex128)
    low = torch.full((K, kb), nan, dtype=torch.complex128)
    top_st = torch.full((K,), int(EigStatus.NOT_COMPUTED), dtype=torch.int8)
    low_st = top_st.clone()
    stab = torch.full((K,), int(Stability.UNKNOWN), dtype=torch.int8)
    flat = torch.zeros((K,), dtype=torch.bool)
    for i, p in enumerate(points if stability else []):
        if scope == "token":
            g, x = restrict_token(f, p, token), p[token:token + 1]
        else:
            g, x = f, p
        top[i], st = _spectrum(g, x, k, "LM", eig)
        top_st[i] = int(st)
        rho = float(top[i].abs().nan_to_num(nan=-1.0).max())
        ok = st == EigStatus.CONVERGED
        n = x.shape[0] * (x.shape[1] - (1 if g.on_sphere else 0))
        if k_bottom and needs_bottom(rho, ok, marginal_tol):
            if k >= n:                              # the top already is the whole spectrum
                full = top[i][:n]
                low[i] = torch.cat([full[torch.argsort(full.abs(), stable=True)][:kb],
                                    torch.full((max(kb - n, 0),), nan,
                                               dtype=torch.complex128)])
                bst = st
            else:
                low[i], bst = _spectrum(g, x, kb, "SM", eig)
            low_st[i] = int(bst)
        m = float(low[i].abs().nan_to_num(nan=math.inf).min())
        low_ok = low_st[i] == EigStatus.CONVERGED
        stab[i] = int(classify(rho, ok, m if math.isfinite(m) else math.nan,
                               low_ok, marginal_tol))
        seen = (top[i].abs().tolist() if ok else []) + (low[i].abs().tolist() if low_ok else [])
        flat[i] = _non_hyperbolic(seen, marginal_tol)
    radius = torch.nan_to_num(top.abs(), nan=-1.0).amax(dim=1) if K else torch.zeros(0)
    radius = torch.where(radius < 0, math.nan, radius).double()
    mmin = torch.nan_to_num(low.abs(), nan=math.inf).amin(dim=1) if K else torch.zeros(0)
    mmin = torch.where(torch.isinf(mmin), math.nan, mmin).double()
    return {"eigenvalues": top, "eig_status": top_st, "bottom_eigenvalues": low,
            "bottom_status": low_st, "spectral_radius": radius, "min_modulus": mmin,
            "stability": stab, "non_hyperbolic": flat}
