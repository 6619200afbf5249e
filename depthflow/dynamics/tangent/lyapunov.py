"""Asymptotic Lyapunov spectra of ITERATED AUTONOMOUS maps (``lyapunovspectrum`` by QR).

``k`` tangent vectors ``Q`` (orthonormal in the flattened ``T*D`` state space) ride along an
orbit ``x_{n+1} = F(x_n)`` of an autonomous map (a frozen layer ``maps.frozen(F, t)``, a
Raptor block at a frozen depth index, a composed phase): each step pushes them through the
Jacobian with batched forward-mode JVPs (:func:`torch.func.vmap` over the tangents) and
re-orthonormalises them by a thin QR decomposition ``J Q = Q' R``. The first ``transient``
steps move the state towards its attractor and align the frame with the Oseledets
directions; they are not averaged. The exponents are then the means of ``log |R_jj|`` over
the ``steps`` averaged iterations (natural log, per iteration).

This is the standard ASYMPTOTIC method and only that: over a finite number of steps from a
random frame it does not give the singular values of the propagator (it gives roughly the
RMS stretch of a random direction, unsorted and seed-dependent). Depth-indexed maps (the
real model over its layers) are refused: use the finite-depth spectra
(:mod:`depthflow.dynamics.tangent.finite_depth`).

Convergence (reported, never assumed): the running estimate after every averaged step is
kept; ``change`` is the largest change of any exponent over the last ``window`` steps and a
sample is ``converged`` when ``change <= tol``. Only converged spectra are sorted (largest
first); the others stay in QR column order and are flagged (``sorted = 0``). On sphere maps
(:func:`depthflow.dynamics.maps.sphere`, or ``tangent=True``) the tangents live in the tangent space
(projected with ``(I - u u^T)`` per token), so no spurious radial exponent appears.
Non-finite maps or tangents are flagged per sample (status), never raised.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from depthflow.core import vocabulary as D
from depthflow.errors import ConfigError
from depthflow.dynamics.maps import DepthMap, check_states, tangent_project
from depthflow.core.vocabulary import attrs
from depthflow.core.vocabulary import flags

__all__ = ["LyapunovResult", "LyapunovStatus", "lyapunov_spectrum", "LYAP_STATUS"]

EXPONENT, ITERATION = D.EXPONENT, D.ITERATION


class LyapunovStatus(enum.IntEnum):
    """Outcome per sample; ``message`` says what to do about it."""

    CONVERGED = 0
    NOT_CONVERGED = 1
    NONFINITE = 2
    COLLAPSED = 3

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    LyapunovStatus.CONVERGED: ("converged: no exponent changed by more than tol over the "
                               "last window iterations; exponents sorted"),
    LyapunovStatus.NOT_CONVERGED: (
        "not converged: an exponent still changed by more than tol over the last window "
        "iterations; exponents left in QR order (unsorted). Raise steps or transient"),
    LyapunovStatus.NONFINITE: ("the map or its JVP returned NaN/inf along this orbit: check "
                               "the map and the start"),
    LyapunovStatus.COLLAPSED: (
        "some |R_jj| is exactly zero (a rank-deficient Jacobian): that exponent is -inf, an "
        "answer rather than an error; exponents left in QR order"),
}

LYAP_STATUS = {int(s): s.name.lower() for s in LyapunovStatus}
"""``{value: name}`` of :class:`LyapunovStatus` (kept for older callers)."""

FINITE_DEPTH_HINT = ("finite-depth spectra (depthflow.dynamics.tangent.finite_depth): "
                     "lyapunov_spectrum_finite gives log(s_i(Phi)) / (e - s) of the "
                     "propagator of a depth-indexed map")


@dataclasses.dataclass
class LyapunovResult:
    """Asymptotic Lyapunov spectrum of ``N`` orbits of an autonomous map.

    Attributes
    ----------
    exponents : (N, k) float64
        Mean ``log |R_jj|`` per iteration after the transient: sorted (largest first) where
        ``sorted`` is True (converged), in QR column order elsewhere.
    running : (N, S, k) float64
        The estimate after each averaged iteration (QR column order).
    stretch : (N, S, k) float64
        The per-iteration ``log |R_jj|`` (QR column order).
    change : (N,)
        Largest change of an exponent over the last ``window`` iterations.
    status : (N,) int8 of :class:`LyapunovStatus`
    sorted : (N,) bool
    iteration : (S,) index of each averaged iteration (``transient + 1 ..``).
    final_state, final_tangents : (N, T, D), (N, k, T, D) where the run ended.
    """

    exponents: Tensor
    running: Tensor
    stretch: Tensor
    change: Tensor
    status: Tensor
    sorted: Tensor
    iteration: np.ndarray
    tangent: bool
    transient: int
    window: int
    tol: float
    map_info: dict[str, Any]
    final_state: Tensor
    final_tangents: Tensor
    batch: bool = True

    @property
    def success(self) -> Tensor:
        return self.status == LyapunovStatus.CONVERGED

    @property
    def messages(self) -> list[str]:
        return [LyapunovStatus(int(s)).message for s in self.status]

    @property
    def criterion(self) -> str:
        return (f"converged when max_j |lambda_j(S) - lambda_j(S - {self.window})| <= "
                f"{self.tol:g} (running means of log|R_jj| per iteration)")

    def to_dataset(self):
        """``xr.Dataset`` with plain names: ``lyapunov_exponent``, ``running``, ``stretch``,
        ``change``, ``status``, ``sorted`` (dims ``sample``, ``iteration``, ``exponent``)."""
        import xarray as xr

        k = self.exponents.shape[1]
        coords = {EXPONENT: (EXPONENT, np.arange(1, k + 1), attrs(
                      "exponent index (1 = largest where sorted = 1; QR column otherwise)")),
                  ITERATION: (ITERATION, np.asarray(self.iteration), attrs(
                      "iteration of the autonomous map (after the transient)"))}
        status_flags = flags(LyapunovStatus)
        ds = xr.Dataset(
            {"lyapunov_exponent": ((D.SAMPLE, EXPONENT), self.exponents.numpy(), attrs(
                "asymptotic Lyapunov exponent: mean log|R_jj| per iteration after the "
                "transient", "1/iteration")),
             "running": ((D.SAMPLE, ITERATION, EXPONENT), self.running.numpy(), attrs(
                 "running Lyapunov estimate after each iteration (QR column order)",
                 "1/iteration")),
             "stretch": ((D.SAMPLE, ITERATION, EXPONENT), self.stretch.numpy(), attrs(
                 "local stretch log|R_jj| of one iteration (QR column order)")),
             "change": ((D.SAMPLE,), self.change.numpy(), attrs(
                 f"largest change of an exponent over the last {self.window} iterations",
                 "1/iteration")),
             "status": ((D.SAMPLE,), self.status.numpy().astype(np.int8), attrs(
                 "Lyapunov run status", "1", **status_flags)),
             "sorted": ((D.SAMPLE,), self.sorted.numpy().astype(np.int8), attrs(
                 "exponents sorted largest first (only when converged)", "1",
                 flag_values=np.array([0, 1], np.int8), flag_meanings="qr_order sorted"))},
            coords=coords)
        ds.attrs.update({"analysis": "lyapunov_asymptotic",
                         "map": json.dumps(self.map_info, sort_keys=True),
                         "tangent_space": int(self.tangent), "transient": int(self.transient),
                         "window": int(self.window), "tol": float(self.tol),
                         "criterion": self.criterion,
                         "method": "QR re-orthonormalisation of "
                                   + ("vmapped" if self.batch else "looped")
                                   + " JVPs along an orbit of an autonomous map, after a "
                                     "transient that aligns the frame"})
        return ds


def _check_map(f: DepthMap, steps: int, transient: int) -> None:
    if not isinstance(f, DepthMap):
        raise ConfigError(f"lyapunov_spectrum needs a depthflow.dynamics.maps.DepthMap, got "
                          f"{type(f).__name__}; wrap functions with maps.from_function")
    if not f.autonomous:
        raise ConfigError(
            f"lyapunov_spectrum is the asymptotic QR method for iterated autonomous maps; "
            f"{f.name} is depth-indexed (t in {f.describe()['depths']}). For the real model "
            f"over its layers use {FINITE_DEPTH_HINT}; to iterate one layer or Raptor block "
            "use maps.frozen(F, t)")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps (averaged iterations) must be an integer >= 1, got "
                          f"{steps!r}")
    if not isinstance(transient, int) or transient < 0:
        raise ConfigError(f"transient must be an integer >= 0, got {transient!r}")


def _flat(q: Tensor) -> Tensor:
    """(N, k, T, D) -> (N, T*D, k)."""
    return q.flatten(2).transpose(1, 2)


def _unflat(m: Tensor, shape: torch.Size) -> Tensor:
    """(N, T*D, k) -> (N, k, T, D)."""
    return m.transpose(1, 2).reshape(shape)


def lyapunov_spectrum(f: DepthMap, x0: Tensor, *, steps: int, k: int = 8,
                      transient: int = 100, seed: int = 0, batch: bool = True,
                      tangent: bool | None = None, window: int | None = None,
                      tol: float = 1e-3) -> LyapunovResult:
    """Top-``k`` asymptotic Lyapunov exponents of an autonomous map ``f`` from ``x0``.

    Parameters
    ----------
    f : DepthMap
        Autonomous (``maps.frozen(F, t)``, ``maps.compose(F, s, e)``, a sphere wrapper of
        one). Depth-indexed maps raise :class:`~depthflow.errors.ConfigError`.
    x0 : (T, D) or (N, T, D) tensor
        Start state(s); unit token directions for sphere maps (normalised here).
    steps : iterations averaged after the transient.
    k : number of exponents (at most the state or tangent-space dimension).
    transient : first iterations that move the state and align the frame, not averaged.
    seed : seed of the random initial frame (converged exponents do not depend on it).
    batch : vmapped JVPs over the ``k`` tangents (``False``: one JVP per tangent).
    tangent : project on the sphere's tangent space (default: when ``f`` is a sphere map).
    window, tol : convergence criterion (default window: a quarter of ``steps``).
    """
    _check_map(f, steps, transient)
    x = check_states(x0, name="x0", unit=bool(tangent) or f.on_sphere)
    x = x.unsqueeze(0) if x.ndim == 2 else x
    if x.ndim != 3:
        raise ConfigError(f"x0 must be (T, D) or (N, T, D), got shape {tuple(x0.shape)}")
    tangent = f.on_sphere if tangent is None else bool(tangent)
    if tangent:
        x = x / x.norm(dim=-1, keepdim=True)
    N, T, Dm = x.shape
    dim = T * (Dm - 1) if tangent else T * Dm
    if not 1 <= k <= dim:
        raise ConfigError(f"k must be in 1..{dim} (the {'tangent ' if tangent else ''}state "
                          f"dimension), got {k}")
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn((N, k, T, Dm), generator=gen, dtype=torch.float64).to(x)
    if tangent:
        q = tangent_project(x.unsqueeze(1), q)
    q = _unflat(torch.linalg.qr(_flat(q)).Q, q.shape)
    stretch = torch.zeros(N, steps, k, dtype=torch.float64)
    bad = torch.zeros(N, dtype=torch.bool)
    with torch.no_grad():
        for n in range(transient + steps):
            y, jq = _push(f, None, x, q, tangent, batch)
            if tangent:
                jq = tangent_project(y.unsqueeze(1), jq)
            fin = torch.isfinite(y).flatten(1).all(1) & torch.isfinite(jq).flatten(1).all(1)
            bad |= ~fin.cpu()
            jq = torch.where(fin[:, None, None, None], jq, q)        # keep QR well-defined
            qr = torch.linalg.qr(_flat(jq))
            q = _unflat(qr.Q, q.shape)
            if n >= transient:
                diag = torch.diagonal(qr.R, dim1=-2, dim2=-1).abs().double().cpu()
                stretch[:, n - transient] = diag.log()
            x = torch.where(fin[:, None, None], y, x)
    return _summarise(stretch, bad, f, tangent, transient, window, tol, x, q, batch)


def _push(f: DepthMap, t: int | None, x: Tensor, q: Tensor, tangent: bool,
          batch: bool) -> tuple[Tensor, Tensor]:
    """``(F_t(x), J_t(x) q)`` for ``q`` (N, k, T, D): vmapped over k, or a loop."""
    if tangent:
        q = tangent_project(x.unsqueeze(1), q)
    if batch:
        y, jq = vmap(lambda v: f.jvp(t, x, v), in_dims=1)(q)        # (k, N, T, D)
        return y[0], jq.transpose(0, 1)
    outs = [f.jvp(t, x, q[:, j]) for j in range(q.shape[1])]
    return outs[0][0], torch.stack([o[1] for o in outs], dim=1)


def _summarise(stretch: Tensor, bad: Tensor, f: DepthMap, tangent: bool, transient: int,
               window: int | None, tol: float, x: Tensor, q: Tensor,
               batch: bool) -> LyapunovResult:
    n_avg = stretch.shape[1]
    count = torch.arange(1, n_avg + 1, dtype=torch.float64)[None, :, None]
    with np.errstate(invalid="ignore"):
        running = stretch.cumsum(1) / count
    window = max(1, n_avg // 4) if window is None else int(window)
    if window < 1:
        raise ConfigError(f"window must be >= 1, got {window}")
    if n_avg > window:
        change = (running[:, -1] - running[:, -1 - window]).abs().amax(1)
    else:
        change = torch.full((stretch.shape[0],), float("nan"), dtype=torch.float64)
    collapsed = torch.isneginf(stretch).flatten(1).any(1)
    status = torch.where(change <= tol, int(LyapunovStatus.CONVERGED),
                         int(LyapunovStatus.NOT_CONVERGED))
    status = torch.where(collapsed, int(LyapunovStatus.COLLAPSED), status)
    status = torch.where(bad, int(LyapunovStatus.NONFINITE), status).to(torch.int8)
    running[bad] = float("nan")
    stretch[bad] = float("nan")
    change[bad] = float("nan")
    exponents = running[:, -1].clone()
    ok = status == LyapunovStatus.CONVERGED
    exponents[ok] = exponents[ok].sort(dim=1, descending=True).values
    index = np.arange(transient + 1, transient + n_avg + 1)
    return LyapunovResult(exponents, running, stretch, change, status, ok.clone(), index,
                          tangent, transient, window, float(tol), f.describe(), x.detach(),
                          q.detach(), batch)
