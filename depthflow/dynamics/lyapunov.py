"""Finite-time Lyapunov spectra of depth maps (``lyapunovspectrum`` by QR).

``k`` tangent vectors ``Q`` (orthonormal in the flattened ``T*D`` state space) ride along a
trajectory ``x_{n} = F_{t_n}(x_{n-1})``: each step pushes them through the Jacobian with
batched forward-mode JVPs (:func:`torch.func.vmap` over the tangents), then re-orthonormalises
them by a thin QR decomposition ``J Q = Q' R``. The exponents are the means of ``log |R_ii|``
per step (natural log, per layer or per iteration), largest first as they come out of QR.

* Non-autonomous (a depth-indexed family): ``t`` runs over ``F.depths`` (or ``depths``), one
  step per layer, along the real trajectory from ``x0``: a finite-time spectrum over depth.
* Autonomous (a frozen layer, a phase, a Raptor block): ``steps`` iterations.

On sphere maps (:func:`depthflow.maps.sphere`, or ``tangent=True``) the states are unit token
directions and the tangents live in the tangent space: initial tangents are projected with
``(I - u u^T)`` per token, so no spurious radial exponent appears.

Convergence: the running estimate after every step is kept; ``change`` is the largest change
of any exponent over the last ``window`` steps and a sample counts as converged when
``change <= tol``. Non-finite maps or tangents are flagged per sample (status), never raised.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from depthflow import vocabulary as D
from depthflow.errors import ConfigError
from depthflow.maps import ComposedMap, DepthMap, FrozenMap, SphereMap, check_states, tangent_project

__all__ = ["LyapunovResult", "lyapunov_spectrum", "is_sphere_map", "LYAP_STATUS"]

EXPONENT, ITERATION = D.EXPONENT, D.ITERATION

LYAP_STATUS = {0: "converged", 1: "not_converged", 2: "nonfinite", 3: "collapsed"}
"""Status flags: ``collapsed`` = some ``R_ii`` is exactly zero (a rank-deficient Jacobian:
the exponent is ``-inf``, which is an answer, not an error)."""


def is_sphere_map(f: DepthMap) -> bool:
    """Whether ``f`` acts on unit token directions (a sphere wrapper, possibly frozen or
    composed)."""
    while isinstance(f, (FrozenMap, ComposedMap)):
        f = f.base
    return isinstance(f, SphereMap)


@dataclasses.dataclass
class LyapunovResult:
    """Finite-time Lyapunov spectrum of ``N`` starts.

    Attributes
    ----------
    exponents : (N, k) float64, mean ``log |R_ii|`` per step after the transient.
    running : (N, S, k) float64, the estimate after each averaged step.
    stretch : (N, S, k) float64, the per-step ``log |R_ii|`` (local exponents).
    change : (N,) largest change of an exponent over the last ``window`` steps.
    status : (N,) int8, see :data:`LYAP_STATUS`.
    step_index : (S,) the depth index ``t`` (non-autonomous) or iteration of each step.
    final_state, final_tangents : (N, T, D), (N, k, T, D) where the run ended.
    """

    exponents: Tensor
    running: Tensor
    stretch: Tensor
    change: Tensor
    status: Tensor
    step_index: np.ndarray
    autonomous: bool
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
        return self.status == 0

    @property
    def criterion(self) -> str:
        return (f"converged when max_j |lambda_j(S) - lambda_j(S - {self.window})| <= "
                f"{self.tol:g} (running means of log|R_jj| per step)")

    def to_dataset(self, *, prefix: str = "dyn_lyap_"):
        """``xr.Dataset``: exponents, running estimates, local stretches, status."""
        import xarray as xr

        it = ITERATION if self.autonomous else D.STEP
        k = self.exponents.shape[1]
        step_name = "iteration" if self.autonomous else "step (layer t)"
        coords = {EXPONENT: (EXPONENT, np.arange(1, k + 1), _a("Lyapunov exponent index "
                                                               "(1 = largest)")),
                  it: (it, np.asarray(self.step_index), _a(step_name))}
        p = prefix
        ds = xr.Dataset(
            {f"{p}exponent": ((D.SAMPLE, EXPONENT), self.exponents.numpy(), _a(
                "finite-time Lyapunov exponent: mean log|R_jj| per step", "1/step")),
             f"{p}running": ((D.SAMPLE, it, EXPONENT), self.running.numpy(), _a(
                 "running Lyapunov estimate after each step", "1/step")),
             f"{p}stretch": ((D.SAMPLE, it, EXPONENT), self.stretch.numpy(), _a(
                 "local stretch log|R_jj| of one step", "1")),
             f"{p}change": ((D.SAMPLE,), self.change.numpy(), _a(
                 f"largest change of an exponent over the last {self.window} steps",
                 "1/step")),
             f"{p}status": ((D.SAMPLE,), self.status.numpy().astype(np.int8), _a(
                 "Lyapunov run status", "", flag_values=np.arange(len(LYAP_STATUS),
                                                                  dtype=np.int8),
                 flag_meanings=" ".join(LYAP_STATUS.values())))},
            coords=coords)
        ds.attrs.update({f"{p}map": json.dumps(self.map_info, sort_keys=True),
                         f"{p}tangent_space": int(self.tangent),
                         f"{p}autonomous": int(self.autonomous),
                         f"{p}transient": self.transient,
                         f"{p}criterion": self.criterion,
                         f"{p}method": "QR re-orthonormalisation of "
                                       + ("vmapped" if self.batch else "looped") + " JVPs"})
        return ds


def _a(long_name: str, units: str = "1", **extra: Any) -> dict[str, Any]:
    return {"long_name": long_name, "units": units, **extra}


def _schedule(f: DepthMap, depths: Sequence[int] | None, steps: int | None,
              transient: int) -> list[int | None]:
    if not isinstance(f, DepthMap):
        raise ConfigError(f"lyapunov_spectrum needs a depthflow.maps.DepthMap, got "
                          f"{type(f).__name__}; wrap functions with maps.from_function")
    if transient < 0:
        raise ConfigError(f"transient must be >= 0, got {transient}")
    if f.autonomous:
        if depths is not None:
            raise ConfigError(f"{f.name} is autonomous: give steps=N, not depths")
        if steps is None or int(steps) < 1:
            raise ConfigError(f"an autonomous map needs steps >= 1 iterations, got {steps!r}")
        return [None] * (int(steps) + transient)
    if steps is not None:
        raise ConfigError(f"{f.name} is depth-indexed: its steps are its layers; to iterate "
                          "one layer use maps.frozen(F, t) (or maps.compose for a phase)")
    seq = list(f.depths if depths is None else depths)
    for t in seq:
        f.check_depth(t)
    if len(seq) <= transient:
        raise ConfigError(f"transient={transient} leaves no layer of {len(seq)} to average")
    return seq


def _flat(q: Tensor) -> Tensor:
    """(N, k, T, D) -> (N, T*D, k)."""
    return q.flatten(2).transpose(1, 2)


def _unflat(m: Tensor, shape: torch.Size) -> Tensor:
    """(N, T*D, k) -> (N, k, T, D)."""
    return m.transpose(1, 2).reshape(shape)


def lyapunov_spectrum(f: DepthMap, x0: Tensor, *, k: int = 8,
                      depths: Sequence[int] | None = None, steps: int | None = None,
                      transient: int = 0, seed: int = 0, batch: bool = True,
                      tangent: bool | None = None, window: int | None = None,
                      tol: float = 1e-3) -> LyapunovResult:
    """Top-``k`` finite-time Lyapunov exponents of ``f`` from ``x0``.

    Parameters
    ----------
    f : DepthMap
        Depth-indexed (``t`` runs over ``depths`` or ``f.depths``) or autonomous (``steps``).
    x0 : (T, D) or (N, T, D) tensor
        Start state(s); unit token directions for sphere maps (normalised here).
    k : number of exponents (at most the state or tangent-space dimension).
    transient : first steps that move the state and align the tangents, not averaged.
    seed : seed of the random initial tangents.
    batch : vmapped JVPs over the ``k`` tangents (``False``: one JVP per tangent, a loop).
    tangent : project on the sphere's tangent space (default: when ``f`` is a sphere map).
    window, tol : convergence criterion (default window: a quarter of the averaged steps).
    """
    schedule = _schedule(f, depths, steps, transient)
    x = check_states(x0, name="x0", unit=bool(tangent) or is_sphere_map(f))
    single = x.ndim == 2
    x = x.unsqueeze(0) if single else x
    if x.ndim != 3:
        raise ConfigError(f"x0 must be (T, D) or (N, T, D), got shape {tuple(x0.shape)}")
    tangent = is_sphere_map(f) if tangent is None else bool(tangent)
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
    n_avg = len(schedule) - transient
    stretch = torch.zeros(N, n_avg, k, dtype=torch.float64)
    bad = torch.zeros(N, dtype=torch.bool)
    with torch.no_grad():
        for n, t in enumerate(schedule):
            y, jq = _push(f, t, x, q, tangent, batch)
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
    return _summarise(stretch, bad, schedule[transient:], f, tangent, transient, window, tol,
                      x, q, batch)


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


def _summarise(stretch: Tensor, bad: Tensor, schedule: list[int | None], f: DepthMap,
               tangent: bool, transient: int, window: int | None, tol: float, x: Tensor,
               q: Tensor, batch: bool) -> LyapunovResult:
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
    status = torch.where(change <= tol, 0, 1)
    status = torch.where(collapsed, 3, status)
    status = torch.where(bad, 2, status).to(torch.int8)
    running[bad] = float("nan")
    stretch[bad] = float("nan")
    exponents = running[:, -1].clone()
    change[bad] = float("nan")
    autonomous = f.autonomous
    index = np.arange(1, n_avg + 1) + (transient if autonomous else 0)
    if not autonomous:
        index = np.asarray(schedule, dtype=np.int64)
    return LyapunovResult(exponents, running, stretch, change, status, index, autonomous,
                          tangent, transient, window, float(tol), f.describe(),
                          x.detach(), q.detach(), batch)
