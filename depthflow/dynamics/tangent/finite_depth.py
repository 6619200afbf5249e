"""Finite-depth Lyapunov spectra of depth-indexed maps: singular values of propagators.

For a depth map ``F`` (layers ``t = start+1..stop``) and states ``x`` at depth ``start``, two
propagators (definitions in ``docs/methods.md`` (finite-depth spectra)):

* ``kind="state"``: ``Phi = d x_stop / d x_start``, the state propagator on ``R^(T x D)``;
* ``kind="direction"``: ``P = d u_stop / d u_start``, the directional propagator: a tangent
  perturbation ``v`` of the token directions at ``start`` (per token orthogonal to ``u``)
  enters the blocks as the state perturbation ``r_start * v`` (token norms held), the blocks'
  full-state Jacobians carry it to ``stop``, and the output is projected per token by
  ``(I - u u^T) / ||x_stop||``.

Both act on ambient ``(T, D)`` arrays: the direction kind composes the tangent projections
into the operator, so its nonzero singular values do not depend on any basis of the tangent
spaces. Token restrictions (``in_tokens``, ``out_tokens``) zero the input outside the given
tokens and keep only the given output tokens. The exponents are ``log(s_i) / (stop - start)``
(natural log, per layer), largest first.

The top ``k`` singular triplets come from Golub-Kahan-Lanczos bidiagonalisation with full
reorthogonalisation (:mod:`._bidiag`): the forward operator is a chain of JVPs through the
layers, its adjoint a chain of VJPs; each layer is linearised once per call
(the VJP pullback of :func:`torch.func.vjp` is kept; the JVP is by default the VJP of that
pullback, which is linear in its argument, built once: measured 3-4x cheaper than
forward-mode JVPs or :func:`torch.func.linearize` on DINOv2-S), so a product re-runs no
forward pass. One *application* is one JVP chain plus one VJP chain. A sample converges when every
one of its top ``k`` triplets has ``||A^T u_i - s_i v_i|| <= tol * s_1`` (``A v_i = s_i u_i``
holds exactly by construction). All samples run in lockstep through batched products.

Per-layer stretching and per-phase spectra along a trajectory: :mod:`.stretching`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import jvp as _jvp
from torch.func import linearize as _linearize
from torch.func import vjp as _vjp

from depthflow.errors import ConfigError, InputError
from depthflow.dynamics.maps import DepthMap, tangent_project
from depthflow.dynamics.tangent import _bidiag
from depthflow.core.vocabulary import attrs, flag_attrs

__all__ = ["KINDS", "JVP_MODES", "FiniteDepthStatus", "Propagator", "FiniteDepthResult",
           "finite_depth_spectrum"]

KINDS = ("state", "direction")
JVP_MODES = ("transpose", "linearize", "plain")
SAMPLE, EXPONENT, MODE, LAYER, SEGMENT = "sample", "exponent", "mode", "layer", "segment"


class FiniteDepthStatus(enum.IntEnum):
    """Outcome per sample; ``message`` says what to do about it."""

    CONVERGED = _bidiag.CONVERGED
    MAX_ITER = _bidiag.MAX_ITER
    NONFINITE = _bidiag.NONFINITE

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    FiniteDepthStatus.CONVERGED: (
        "converged: every one of the top-k singular triplets has relative residual <= tol"),
    FiniteDepthStatus.MAX_ITER: (
        "not converged within max_iter applications: the values are Ritz estimates (look at "
        "`residuals`); raise max_iter, lower k, or loosen tol"),
    FiniteDepthStatus.NONFINITE: (
        "the map, its JVP/VJP or a token norm at the last depth is NaN/inf (or zero) for this "
        "sample: check the model and the input; other samples are unaffected"),
}
FLAG_MEANINGS = " ".join(s.name.lower() for s in FiniteDepthStatus)


# ----------------------------------------------------------------------------- operator


def _token_list(tokens: Sequence[int] | None, name: str, T: int) -> tuple[int, ...]:
    if tokens is None:
        return tuple(range(T))
    try:
        out = tuple(int(i) for i in tokens)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a sequence of token indices or None (all), got "
                          f"{tokens!r}") from None
    if not out or len(set(out)) != len(out) or min(out) < 0 or max(out) >= T:
        raise ConfigError(f"{name} must be distinct token indices in 0..{T - 1} (T = {T}), "
                          f"got {list(out)}; e.g. [0] for the cls token, None for all")
    return tuple(sorted(out))


def _layers(f: DepthMap, start: int, stop: int | None) -> tuple[list[int | None], int]:
    if not isinstance(f, DepthMap):
        raise ConfigError(f"finite-depth spectra need a depthflow.dynamics.maps.DepthMap, got "
                          f"{type(f).__name__}; wrap functions with maps.from_function")
    if f.autonomous:
        if stop is None:
            raise ConfigError(f"{f.name} is autonomous: give stop (start + iterations)")
        steps = int(stop) - int(start)
        if start < 0 or steps < 1:
            raise ConfigError(f"need 0 <= start < stop, got start={start}, stop={stop}")
        return [None] * steps, int(stop)
    stop = max(f.depths) if stop is None else int(stop)
    layers = list(range(int(start) + 1, stop + 1))
    if start < 0 or not layers or any(t not in f.depths for t in layers):
        raise ConfigError(f"need start < stop with layers start+1..stop among the map's depth "
                          f"indices {min(f.depths)}..{max(f.depths)}; got start={start}, "
                          f"stop={stop}")
    return layers, stop


class Propagator:
    """The state or directional propagator of ``f`` from depth ``start`` to ``stop`` at
    states ``x`` (N, T, D) (or (T, D)) at depth ``start``, as a batched linear operator on
    ambient ``(N, T, D)`` arrays.

    ``matvec(v)`` applies ``A`` (a JVP chain), ``rmatvec(w)`` its adjoint (a VJP chain); both
    are block-diagonal over samples. Each layer is linearised once here: its VJP pullback
    is kept, and ``jvp`` selects the forward product: ``"transpose"`` (the VJP of the
    pullback, built once; the fastest), ``"linearize"`` (:func:`torch.func.linearize`) or
    ``"plain"`` (:func:`torch.func.jvp`, re-running the layer each time). Maps that cannot
    be traced or differentiated twice fall back to ``"plain"`` (recorded in ``jvp``).
    """

    def __init__(self, f: DepthMap, x: Tensor, *, start: int = 0, stop: int | None = None,
                 kind: str = "direction", in_tokens: Sequence[int] | None = None,
                 out_tokens: Sequence[int] | None = None, jvp: str = "transpose") -> None:
        if kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
        if jvp not in JVP_MODES:
            raise ConfigError(f"jvp must be one of {JVP_MODES}, got {jvp!r}")
        self.layers, self.stop = _layers(f, start, stop)
        self.f, self.start, self.kind = f, int(start), kind
        if not isinstance(x, Tensor) or x.ndim not in (2, 3):
            raise InputError(f"x must be states (T, D) or (N, T, D) at depth start, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        x = (x.unsqueeze(0) if x.ndim == 2 else x).detach()
        if not torch.isfinite(x).all():
            raise InputError("x contains NaN or inf; pass finite states at depth start")
        self.N, self.T, self.D = x.shape
        self.in_tokens = _token_list(in_tokens, "in_tokens", self.T)
        self.out_tokens = _token_list(out_tokens, "out_tokens", self.T)
        self.direction = kind == "direction"
        d = self.D - 1 if self.direction else self.D
        self.n_in, self.n_out = len(self.in_tokens) * d, len(self.out_tokens) * d
        self._mask_in = self._mask(self.in_tokens, x)
        self._mask_out = self._mask(self.out_tokens, x)
        self.x = x
        self.r_in = x.norm(dim=-1, keepdim=True)                        # (N, T, 1)
        if self.direction and (self.r_in[:, list(self.in_tokens)] == 0).any():
            raise InputError("x has zero-norm tokens among in_tokens at depth start: a "
                             "zero token has no direction; drop it from in_tokens or use "
                             "kind='state'")
        self.u_in = x / self.r_in.clamp_min(1e-300)
        self._build(jvp)

    def _mask(self, tokens: tuple[int, ...], x: Tensor) -> Tensor:
        m = torch.zeros(self.T, 1, dtype=x.dtype, device=x.device)
        m[list(tokens)] = 1.0
        return m

    def _build(self, jvp: str) -> None:
        self._jvps: list[Callable[[Tensor], Tensor]] = []
        self._vjps: list[Callable] = []
        self.jvp = jvp
        z = self.x
        for t in self.layers:
            g = (lambda z, t=t: self.f(t, z))
            y, pullback = _vjp(g, z)
            self._vjps.append(pullback)
            self._jvps.append(self._forward(g, z, y, pullback))
            z = y.detach()
        self.x_stop = z
        self.r_out = z.norm(dim=-1, keepdim=True)
        self.u_out = z / self.r_out.clamp_min(1e-300)
        out = z[:, list(self.out_tokens)]
        self.bad = ~torch.isfinite(out).flatten(1).all(1).cpu()
        if self.direction:
            self.bad |= (self.r_out[:, list(self.out_tokens)] == 0).flatten(1).any(1).cpu()

    def _forward(self, g: Callable, z: Tensor, y: Tensor, pullback: Callable
                 ) -> Callable[[Tensor], Tensor]:
        """``v -> J v`` of one layer at ``z`` in the chosen mode (falls back to plain JVPs
        when the map cannot be traced or differentiated twice)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self.jvp == "transpose":      # J v = the VJP of w -> J^T w (linear in w)
                    _, pull2 = _vjp(lambda w: pullback(w)[0], torch.zeros_like(y))
                    return lambda v: pull2(v)[0]
                if self.jvp == "linearize":
                    return _linearize(g, z)[1]
        except Exception:
            self.jvp = "plain"
        return lambda v: _jvp(g, (z,), (v,))[1]

    # projections onto the input / output subspaces (ambient (N, T, D) arrays)
    def project_in(self, v: Tensor) -> Tensor:
        v = v * self._mask_in
        return tangent_project(self.u_in, v) if self.direction else v

    def project_out(self, w: Tensor) -> Tensor:
        w = w * self._mask_out
        return tangent_project(self.u_out, w) if self.direction else w

    def _check(self, v: Tensor, name: str) -> Tensor:
        if not isinstance(v, Tensor) or v.shape[-2:] != (self.T, self.D):
            raise InputError(f"{name} must have shape (N, T, D) = {(self.N, self.T, self.D)}, "
                             f"got {getattr(v, 'shape', type(v).__name__)}")
        return v.to(self.x).expand(self.N, self.T, self.D) if v.ndim == 2 else v.to(self.x)

    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for ambient ``v`` (N, T, D); the input is first projected onto the input
        subspace (in_tokens, tangent at ``u_start`` for the direction kind)."""
        v = self.project_in(self._check(v, "v"))
        if self.direction:
            v = self.r_in * v
        for jvp_fn in self._jvps:
            v = jvp_fn(v)
        if self.direction:
            v = v / self.r_out.clamp_min(1e-300)
        return self.project_out(v).detach()

    def rmatvec(self, w: Tensor) -> Tensor:
        """``A^T w`` for ambient ``w`` (N, T, D) (the adjoint of :meth:`matvec`)."""
        w = self.project_out(self._check(w, "w"))
        if self.direction:
            w = w / self.r_out.clamp_min(1e-300)
        for pullback in reversed(self._vjps):
            (w,) = pullback(w)
        if self.direction:
            w = self.r_in * w
        return self.project_in(w).detach()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "stop": self.stop,
                "in_tokens": list(self.in_tokens), "out_tokens": list(self.out_tokens),
                "jvp": self.jvp, "map": self.f.describe()}


# ----------------------------------------------------------------------------- results


def _status_attrs(long_name: str) -> dict[str, Any]:
    return flag_attrs(FiniteDepthStatus, long_name)


DEFINITIONS = {
    "state": "Phi = d x_stop / d x_start (full state); exponent_i = log(s_i(Phi)) / "
             "(stop - start)",
    "direction": "P = d u_stop / d u_start: tangent token-direction perturbations v at start "
                 "enter as r_start * v (norms held), full-state JVPs through the blocks, "
                 "output projected per token by (I - u u^T) / ||x_stop||; exponent_i = "
                 "log(s_i(P)) / (stop - start); ambient coordinates, so basis-free",
}


@dataclasses.dataclass
class FiniteDepthResult:
    """Top-``k`` finite-depth spectrum of one propagator for ``N`` samples.

    Attributes
    ----------
    exponents : (N, k) float64, ``log(s_i) / (stop - start)``, largest first.
    singular_values : (N, k) float64, ``s_i`` of the propagator.
    residuals : (N, k) float64, ``||A^T u_i - s_i v_i|| / s_1`` of each Ritz triplet.
    status : (N,) int8, see :class:`FiniteDepthStatus`.
    applications : (N,) int64, JVP-chain + VJP-chain pairs used until the sample stopped.
    right, left : (N, k, T, D) or None, right singular vectors (input perturbations: tangent
        at ``u_start`` and zero outside ``in_tokens`` for the direction kind) and left ones
        (output), with ``vectors=True``.
    """

    exponents: Tensor
    singular_values: Tensor
    residuals: Tensor
    status: Tensor
    applications: Tensor
    kind: str
    start: int
    stop: int
    in_tokens: tuple[int, ...]
    out_tokens: tuple[int, ...]
    tol: float
    max_iter: int
    seed: int
    jvp: str
    map_info: dict[str, Any]
    right: Tensor | None = None
    left: Tensor | None = None

    @property
    def success(self) -> Tensor:
        return self.status == int(FiniteDepthStatus.CONVERGED)

    @property
    def messages(self) -> list[str]:
        return [FiniteDepthStatus(int(s)).message for s in self.status]

    @property
    def criterion(self) -> str:
        return (f"converged when ||A^T u_i - s_i v_i|| <= {self.tol:g} s_1 for i = 1..k "
                "(Lanczos estimate beta_m |x_i[m]|; A v_i = s_i u_i holds exactly)")

    def attrs(self) -> dict[str, Any]:
        return {"kind": self.kind, "definition": DEFINITIONS[self.kind],
                "start": self.start, "stop": self.stop,
                "in_tokens": json.dumps(list(self.in_tokens)),
                "out_tokens": json.dumps(list(self.out_tokens)),
                "criterion": self.criterion, "tol": self.tol, "max_iter": self.max_iter,
                "seed": self.seed,
                "method": "Golub-Kahan-Lanczos bidiagonalisation, full reorthogonalisation; "
                          + f"forward products by '{self.jvp}' JVPs, adjoint by VJPs",
                "application": "one JVP chain and one VJP chain through layers start+1..stop",
                "map": json.dumps(self.map_info, sort_keys=True, default=str)}

    def to_dataset(self):
        """``xr.Dataset`` with dims ``sample``, ``exponent`` (1 = largest)."""
        import xarray as xr

        k = self.exponents.shape[1]
        what = "state" if self.kind == "state" else "directional"
        ds = xr.Dataset(
            {"lyapunov_exponent": ((SAMPLE, EXPONENT), self.exponents.numpy(), attrs(
                f"finite-depth Lyapunov exponent log(s_i)/(stop - start) of the {what} "
                "propagator", "1/layer")),
             "singular_value": ((SAMPLE, EXPONENT), self.singular_values.numpy(), attrs(
                 f"singular value s_i of the {what} propagator")),
             "residual": ((SAMPLE, EXPONENT), self.residuals.numpy(), attrs(
                 "relative residual ||A^T u_i - s_i v_i|| / s_1 of the singular triplet")),
             "status": ((SAMPLE,), self.status.numpy().astype(np.int8),
                        _status_attrs("finite-depth spectrum solver status")),
             "applications": ((SAMPLE,), self.applications.numpy(), attrs(
                 "propagator applications used (one JVP chain + one VJP chain each)"))},
            coords={EXPONENT: (EXPONENT, np.arange(1, k + 1),
                               attrs("exponent index (1 = largest)"))})
        ds.attrs.update(self.attrs())
        return ds


# ----------------------------------------------------------------------------- solver


def _flat_op(op: Propagator, transpose: bool):
    shape = (op.N, op.T, op.D)

    def wrap(fn):
        return lambda z: fn(z.reshape(shape)).reshape(op.N, -1)
    fwd, adj = wrap(op.matvec), wrap(op.rmatvec)
    pin, pout = wrap(op.project_in), wrap(op.project_out)
    return (adj, fwd, pout, pin) if transpose else (fwd, adj, pin, pout)


def _start(gen: torch.Generator, op: Propagator, project: Callable[[Tensor], Tensor]
           ) -> Tensor:
    """Random start vectors (N, T*D) in the input subspace; a draw that the projection
    nearly annihilates (e.g. one parallel to the state) is drawn again."""
    v = torch.zeros(op.N, op.T * op.D, dtype=op.x.dtype, device=op.x.device)
    todo = torch.ones(op.N, dtype=torch.bool, device=op.x.device)
    for _ in range(10):
        z = torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v)
        p = project(z)
        ok = todo & (p.norm(dim=-1) > 1e-3 * z.norm(dim=-1))
        v[ok] = p[ok]
        todo &= ~ok
        if not todo.any():
            break
    return project(v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300))


def _spectrum(op: Propagator, *, k: int, tol: float, max_iter: int | None, seed: int,
              vectors: bool) -> dict:
    n_small = min(op.n_in, op.n_out)
    if not 1 <= int(k) <= n_small:
        raise ConfigError(f"k must be in 1..{n_small} (the dimension of the smaller of the "
                          f"input and output {'tangent ' if op.direction else ''}spaces: "
                          f"{len(op.in_tokens)} in / {len(op.out_tokens)} out tokens), "
                          f"got {k}")
    if not 0 < tol < 1:
        raise ConfigError(f"tol must be in (0, 1) (relative to s_1), got {tol}")
    if max_iter is None:
        max_iter = 10 * k + 40
    if int(max_iter) < k:
        raise ConfigError(f"max_iter must be >= k = {k}, got {max_iter}")
    max_iter = min(int(max_iter), n_small)
    # Run on the operator whose input space is the smaller one: its Krylov space can then be
    # exhausted exactly (a restriction to one output token converges in D - 1 steps at most).
    transpose = op.n_out < op.n_in
    fwd, adj, pin, pout = _flat_op(op, transpose)
    gen = torch.Generator().manual_seed(int(seed))
    out = _bidiag.bidiagonalize(fwd, adj, _start(gen, op, pin), k=int(k), tol=float(tol),
                                max_iter=max_iter, gen=gen, project_in=pin, project_out=pout,
                                n_out=op.T * op.D, bad=op.bad, vectors=vectors)
    if transpose:
        out["right"], out["left"] = out["left"], out["right"]
    out["max_iter"] = max_iter
    return out


def _as_result(op: Propagator, out: dict, *, tol: float, seed: int) -> FiniteDepthResult:
    s = out["values"]
    with np.errstate(divide="ignore"):
        exps = torch.log(s) / (op.stop - op.start)
    shape = (op.N, -1, op.T, op.D)
    vec = (lambda v: None if v is None else v.reshape(shape).detach())  # noqa: E731
    return FiniteDepthResult(
        exponents=exps, singular_values=s, residuals=out["residuals"],
        status=out["status"], applications=out["steps"], kind=op.kind, start=op.start,
        stop=op.stop, in_tokens=op.in_tokens, out_tokens=op.out_tokens, tol=float(tol),
        max_iter=out["max_iter"], seed=int(seed), jvp=op.jvp,
        map_info=op.f.describe(), right=vec(out["right"]), left=vec(out["left"]))


def finite_depth_spectrum(f: DepthMap, x: Tensor, *, start: int = 0, stop: int | None = None,
                          kind: str = "direction", k: int = 8,
                          in_tokens: Sequence[int] | None = None,
                          out_tokens: Sequence[int] | None = None, tol: float = 1e-6,
                          max_iter: int | None = None, seed: int = 0, vectors: bool = False,
                          jvp: str = "transpose", batch: bool = True) -> FiniteDepthResult:
    """Top-``k`` finite-depth Lyapunov exponents of ``f`` from depth ``start`` to ``stop``.

    Parameters
    ----------
    f : DepthMap
        Depth-indexed (layers ``start+1..stop``; a ViT via ``maps.from_model``) or autonomous
        (iterated ``stop - start`` times).
    x : (T, D) or (N, T, D) tensor
        States at depth ``start`` (raw residual stream, not normalised).
    start, stop : depths (``stop`` defaults to the last layer).
    kind : ``"direction"`` (``d u_stop / d u_start``, norms held) or ``"state"``.
    k : number of exponents (at most the smaller of the input and output dimensions).
    in_tokens, out_tokens : token indices the perturbation enters / is read at (None = all);
        e.g. ``in_tokens=[0], out_tokens=[0]`` (cls -> cls), ``out_tokens=[0]`` (all -> cls).
    tol : relative residual ``||A^T u_i - s_i v_i|| / s_1`` every top-k triplet must reach;
        to first order the exponent error is at most ``tol * s_1 / s_i / (stop - start)``.
    max_iter : most applications (default ``10 k + 40``, capped at the dimension).
    seed : seed of the random start vector (the answer does not depend on it, to ``tol``).
    vectors : also return the top-k right/left singular vectors (ambient (N, k, T, D)).
    jvp : forward products: ``"transpose"`` (VJP of the stored pullback; fastest),
        ``"linearize"`` or ``"plain"`` (see :class:`Propagator`).
    batch : all samples in lockstep through batched products (else one sample at a time).
    """
    if batch or x.ndim == 2:
        op = Propagator(f, x, start=start, stop=stop, kind=kind, in_tokens=in_tokens,
                        out_tokens=out_tokens, jvp=jvp)
        out = _spectrum(op, k=k, tol=tol, max_iter=max_iter, seed=seed, vectors=vectors)
        return _as_result(op, out, tol=tol, seed=seed)
    parts = [finite_depth_spectrum(f, xi, start=start, stop=stop, kind=kind, k=k,
                                   in_tokens=in_tokens, out_tokens=out_tokens, tol=tol,
                                   max_iter=max_iter, seed=seed, vectors=vectors,
                                   jvp=jvp, batch=True) for xi in x]
    cat = (lambda name: None if getattr(parts[0], name) is None  # noqa: E731
           else torch.cat([getattr(p, name) for p in parts]))
    return dataclasses.replace(parts[0], **{name: cat(name) for name in (
        "exponents", "singular_values", "residuals", "status", "applications", "right",
        "left")})
