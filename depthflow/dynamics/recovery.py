"""Perturbation recovery (self-correction) along real trajectories of a depth-indexed map.

Protocol (docs/methods.md; magnitudes are parameters). Run the reference trajectory
``x_l`` from ``x0``; at an injection depth ``l0`` rotate token ``i``'s direction by the angle
``theta * rho_i`` towards the unit tangent ``w_i / rho_i`` (``rho_i = ||w_i||``), keeping its
norm::

    x'_l0,i = ||x_l0,i|| (cos(theta rho_i) u_l0,i + sin(theta rho_i) w_i / rho_i),

run the real blocks ``l0+1..L`` and measure, at every later depth, the angle of each token to
the unperturbed trajectory. Definitions:

* a kind's angle ``a_K(l)`` is the root-mean-square over its tokens of the per-token angles
  (for one token, its angle);
* directions ``w`` are normalised so that the RMS of ``rho_i`` over ALL tokens is 1: the
  RMS injected angle over all tokens is ``theta`` (the perturbation's budget);
* the perturbation's own angle on kind ``K`` is ``theta_K = RMS_{i in K} theta rho_i``
  (``theta`` for a random direction, where every ``rho_i = 1``);
* the recovery curve of kind ``K`` is ``a_K(l) / theta_K`` for ``l = l0..L`` (NaN before
  ``l0``, and where ``theta_K = 0``): each kind's response over the perturbation's own norm
  on that kind, so that a perturbation of the cls token alone gives the same cls curve at
  any number of tokens T (normalising by ``theta``, the RMS over all T tokens, inflated it
  by up to ``sqrt(T)``). Curves are summarised as the MEDIAN over images with a bootstrap
  percentile interval over images (random draws are first averaged per image) -- never an
  average of per-layer rates, which telescopes back to the final ratio.

Directions: ``"random"``: every token rotated by exactly ``theta`` (``rho_i = 1``) along an
independent uniform tangent direction, drawn from a generator keyed by
``(seed, sample_index, l0)``, so results do not depend on batching. ``"adversarial"`` (one per
kind): ``w = sqrt(T) v_K`` with ``v_K`` the top right singular vector of the all-tokens-in ->
kind-out directional propagator ``P_K`` from ``l0`` to ``L`` (:class:`DirectionalPropagator`),
from a pluggable solver (default :func:`top_singular_direction`) whose convergence is recorded
per sample (``adversarial_status``). In the linear limit the adversarial curve ends at
``s_1(P_K) / ||v_K|_K||`` (``v_K`` restricted to the kind's tokens; 1 for a kind that is
the whole input), and ``v_K`` gives the largest final ``a_K`` over all perturbations with
RMS angle ``theta``; its tokens can turn by more than ``theta`` (all of the budget may sit
on a few tokens), which ``adversarial_inject_angle`` (``theta_K``) records.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from depthflow.core import vocabulary as D
from depthflow.errors import ConfigError, InputError
from depthflow.dynamics.maps import DepthMap, check_states, tangent_project
from depthflow.data.tokens import angle
from depthflow.dynamics.tangent._propagator import (DirectionalPropagator, start_seed,
                                                    top_singular_direction)
from depthflow.core.vocabulary import attrs
from depthflow.core.vocabulary import flag_attrs
from depthflow.dynamics.attractors._class_stats import median_interval

__all__ = ["RecoveryResult", "AdversarialStatus", "perturbation_recovery",
           "top_singular_direction", "DirectionalPropagator", "DIRECTIONS"]

INJECT_DEPTH, PERTURB_ANGLE, DIRECTION, DRAW = (D.INJECT_DEPTH, D.PERTURB_ANGLE, D.DIRECTION,
                                                D.DRAW)
DIRECTIONS = ("random", "adversarial")
Adversarial = Callable[..., tuple[Tensor, bool]]


class AdversarialStatus(enum.IntEnum):
    """Outcome of the adversarial-direction solver per sample, depth and kind."""

    CONVERGED = 0
    NOT_CONVERGED = 1
    NONFINITE = 2
    NOT_COMPUTED = 3

    @property
    def message(self) -> str:
        return {AdversarialStatus.CONVERGED: "converged: residual test of the solver met",
                AdversarialStatus.NOT_CONVERGED: (
                    "the singular-vector solver did not converge: the direction is not the "
                    "top singular vector (excluded from summaries); raise its max_iter"),
                AdversarialStatus.NONFINITE: "the solver returned NaN/inf (excluded)",
                AdversarialStatus.NOT_COMPUTED: "adversarial directions not requested"}[self]


@dataclasses.dataclass
class RecoveryResult:
    """Recovery curves ``a_K(l) / theta`` per sample (see the module docstring).

    ``ratio_random``: (N, I, A, n, L+1, K); ``ratio_adversarial``: (N, I, A, L+1, K);
    ``adversarial_status``/``adversarial_gain``: (N, I, K) (gain ``||P_K v||``, the top
    singular value when converged); ``adversarial_direction``: (N, I, K, T, D) unit ``v_K``;
    ``adversarial_inject_angle``: (N, I, A, K) the adversarial perturbation's own RMS angle
    ``theta_K`` on its kind (the curve's denominator).
    """

    ratio_random: Tensor | None
    ratio_adversarial: Tensor | None
    adversarial_status: Tensor
    adversarial_gain: Tensor
    adversarial_direction: Tensor | None
    sample_index: list[int]
    inject_depths: list[int]
    angles: list[float]
    depths: list[int]
    kinds: dict[str, list[int]]
    map_info: dict[str, Any]
    config: dict[str, Any]
    adversarial_inject_angle: Tensor | None = None

    @classmethod
    def concat(cls, results: Sequence[RecoveryResult]) -> RecoveryResult:
        """Join results of batches of samples (same settings) along the sample axis."""
        first = results[0]

        def cat(name):
            parts = [getattr(r, name) for r in results]
            return None if parts[0] is None else torch.cat(parts)

        return dataclasses.replace(
            first, **{n: cat(n) for n in ("ratio_random", "ratio_adversarial",
                                          "adversarial_status", "adversarial_gain",
                                          "adversarial_direction",
                                          "adversarial_inject_angle")},
            sample_index=[i for r in results for i in r.sample_index])

    def per_image(self, direction: str) -> Tensor:
        """(N, I, A, L+1, K) per-image curves: random draws averaged; adversarial samples
        whose solver did not converge set to NaN."""
        if direction == "random" and self.ratio_random is not None:
            return self.ratio_random.mean(3)
        if direction == "adversarial" and self.ratio_adversarial is not None:
            ok = self.adversarial_status == AdversarialStatus.CONVERGED     # (N, I, K)
            return torch.where(ok[:, :, None, None, :], self.ratio_adversarial, math.nan)
        raise ConfigError(f"no {direction!r} curves in this result")

    def summary(self, *, n_boot: int | None = None, ci: float | None = None,
                seed: int | None = None) -> xr.Dataset:
        """Median over images and bootstrap percentile interval over images, per direction,
        injection depth, angle, depth and kind (``median``, ``median_low``,
        ``median_high``, ``n_images``)."""
        n_boot = int(self.config["n_boot"] if n_boot is None else n_boot)
        ci = float(self.config["ci"] if ci is None else ci)
        seed = int(self.config["seed"] if seed is None else seed)
        dirs = self.config["directions"]
        I, A, Lp, K = len(self.inject_depths), len(self.angles), len(self.depths), len(self.kinds)
        med = np.full((len(dirs), I, A, Lp, K), np.nan)
        lo, hi = med.copy(), med.copy()
        count = np.zeros((len(dirs), I, K), np.int32)
        for r, d in enumerate(dirs):
            vals = self.per_image(d).numpy()                            # (N, I, A, Lp, K)
            for i in range(I):
                for k in range(K):
                    cell = vals[:, i, :, :, k]                          # (N, A, Lp)
                    ok = ~np.isnan(cell).all(axis=(1, 2))
                    count[r, i, k] = int(ok.sum())
                    if ok.any():
                        stats = median_interval(cell[ok], n_boot=n_boot, level=ci,
                                                seed=start_seed(seed, r, i, k))
                        med[r, i, :, :, k], lo[r, i, :, :, k], hi[r, i, :, :, k] = stats
        dims5 = (DIRECTION, INJECT_DEPTH, PERTURB_ANGLE, D.DEPTH, D.KIND)
        what = "recovery curve a_K(l) / theta_K"
        return xr.Dataset(
            {"median": (dims5, med, attrs(f"median over images of the {what}")),
             "median_low": (dims5, lo, attrs(f"lower end of the {ci:.0%} bootstrap percentile "
                                          "interval (over images) of the median")),
             "median_high": (dims5, hi, attrs(f"upper end of the {ci:.0%} bootstrap percentile "
                                           "interval (over images) of the median")),
             "n_images": ((DIRECTION, INJECT_DEPTH, D.KIND), count, attrs(
                 "images in the median (adversarial: converged solver only)"))},
            coords={DIRECTION: list(dirs)},
            attrs={"n_boot": n_boot, "ci": ci, "bootstrap_seed": seed})

    def to_dataset(self, *, directions: bool = False) -> xr.Dataset:
        """Per-sample curves and their summary, plain variable names (dims ``sample``,
        ``inject_depth``, ``perturb_angle``, ``draw``, ``depth``, ``kind``, ``direction``)."""
        N, I, K = self.adversarial_status.shape
        lead = (D.SAMPLE, INJECT_DEPTH, PERTURB_ANGLE)
        v: dict[str, Any] = {
            "adversarial_status": ((D.SAMPLE, INJECT_DEPTH, D.KIND),
                                   self.adversarial_status.numpy().astype(np.int8),
                                   flag_attrs(AdversarialStatus,
                                              "adversarial-direction solver status")),
            "adversarial_gain": ((D.SAMPLE, INJECT_DEPTH, D.KIND),
                                 self.adversarial_gain.numpy(), attrs(
                "||P_K v_K||: top singular value of the all-tokens-in -> kind-out "
                "directional propagator from l0 to L (when converged)"))}
        if self.ratio_random is not None:
            v["ratio_random"] = ((*lead, DRAW, D.DEPTH, D.KIND), self.ratio_random.numpy(),
                                 attrs("recovery curve a_K(l) / theta_K, random tangent "
                                    "direction (theta_K = theta; NaN before l0)"))
        if self.ratio_adversarial is not None:
            v["ratio_adversarial"] = ((*lead, D.DEPTH, D.KIND),
                                      self.ratio_adversarial.numpy(), attrs(
                "recovery curve a_K(l) / theta_K, adversarial direction of kind K, theta_K its "
                "own RMS injected angle on kind K (NaN before l0 or where theta_K = 0)"))
        if self.adversarial_inject_angle is not None:
            v["adversarial_inject_angle"] = ((*lead, D.KIND),
                                             self.adversarial_inject_angle.numpy(), attrs(
                "theta_K: RMS over kind K's tokens of the injected angles theta rho_i of "
                "the adversarial direction of kind K (theta sqrt(T / |K|) for a direction "
                "on K alone)", "rad"))
        if directions and self.adversarial_direction is not None:
            v["adversarial_direction"] = ((D.SAMPLE, INJECT_DEPTH, D.KIND, D.TOKEN,
                                           D.FEATURE),
                                          self.adversarial_direction.double().numpy(), attrs(
                "unit top right singular vector v_K (input tangent at depth l0)"))
        n = self.ratio_random.shape[3] if self.ratio_random is not None else 0
        coords = {
            D.SAMPLE: (D.SAMPLE, np.asarray(self.sample_index, np.int64), attrs(
                "global sample index (keys the random directions)")),
            INJECT_DEPTH: (INJECT_DEPTH, np.asarray(self.inject_depths), attrs(
                "injection depth l0 (perturbed state after block l0)")),
            PERTURB_ANGLE: (PERTURB_ANGLE, np.asarray(self.angles), attrs(
                "RMS injected angle theta over all tokens", "rad")),
            DRAW: (DRAW, np.arange(n), attrs("random draw")),
            D.DEPTH: (D.DEPTH, np.asarray(self.depths), attrs("depth")),
            D.KIND: (D.KIND, list(self.kinds), attrs("token kind")),
            "kind_size": (D.KIND, np.array([len(t) for t in self.kinds.values()], np.int32),
                          attrs("tokens of the kind"))}
        ds = xr.Dataset(v, coords=coords)
        ds = xr.merge([ds, self.summary()], combine_attrs="override")
        ds.attrs = {"analysis": "recovery", "map": json.dumps(self.map_info, sort_keys=True),
                    "config": json.dumps(self.config, sort_keys=True),
                    "kind_tokens": json.dumps(self.kinds),
                    "protocol": (
                        "rotate token i by theta*rho_i towards w_i/rho_i at depth l0 keeping "
                        "its norm (RMS of rho over all tokens = 1; random: rho_i = 1; "
                        "adversarial: w = sqrt(T) v_K); run blocks l0+1..L; a_K(l) = RMS over "
                        "the kind's tokens of the angle to the unperturbed trajectory; "
                        "theta_K = RMS over the kind's tokens of theta*rho_i (the "
                        "perturbation's own angle on kind K); curve a_K(l)/theta_K; median "
                        "over images, bootstrap percentile interval over images"),
                    "normalisation": "per_kind"}
        return ds


# ----------------------------------------------------------------------------- inputs


def _check(f: DepthMap, inject: Sequence[int] | None, angles: Sequence[float],
           direction: str | Sequence[str], n_draws: int, n_boot: int,
           ci: float) -> tuple[list[int], list[str]]:
    if not isinstance(f, DepthMap) or f.autonomous:
        raise ConfigError("perturbation_recovery needs a depth-indexed map (the layers of a "
                          "model: maps.from_model), got "
                          f"{getattr(f, 'name', type(f).__name__)}")
    steps = list(f.depths)
    if steps != list(range(steps[0], steps[-1] + 1)):
        raise ConfigError(f"perturbation_recovery needs consecutive layers, got {steps}")
    first, last = steps[0] - 1, steps[-1]
    inject = list(range(first, last)) if inject is None else [int(d) for d in inject]
    if not inject or any(not first <= d < last for d in inject):
        raise ConfigError(f"injection depths must lie in {first}..{last - 1} (at least one "
                          f"block must follow), got {inject}")
    if not angles or any(not 0 < float(a) < np.pi / 2 for a in angles):
        raise ConfigError(f"angles must be in (0, pi/2) radians, got {list(angles)}")
    dirs = [direction] if isinstance(direction, str) else list(direction)
    if not dirs or any(d not in DIRECTIONS for d in dirs) or len(set(dirs)) != len(dirs):
        raise ConfigError(f"direction must be one or more of {DIRECTIONS}, got {direction!r}")
    if n_draws < 1:
        raise ConfigError(f"n_draws must be >= 1, got {n_draws}")
    if n_boot < 0 or not 0 < ci < 1:
        raise ConfigError(f"need n_boot >= 0 and 0 < ci < 1, got n_boot={n_boot}, ci={ci}")
    return inject, [d for d in DIRECTIONS if d in dirs]


def _kinds(kinds: Mapping[str, Sequence[int]] | None, T: int) -> dict[str, list[int]]:
    if kinds is None:
        return {"all": list(range(T))}
    out = {str(k): [int(i) for i in v] for k, v in dict(kinds).items()}
    bad = {k: v for k, v in out.items() if not v or any(not 0 <= i < T for i in v)}
    if not out or bad:
        raise ConfigError(f"kinds must map kind names to non-empty token positions in "
                          f"0..{T - 1}, got {dict(kinds) if kinds else kinds}")
    return out


def _sample_index(sample_index, N: int) -> list[int]:
    if sample_index is None:
        return list(range(N))
    idx = [int(i) for i in torch.as_tensor(sample_index).reshape(-1).tolist()]
    if len(idx) != N or len(set(idx)) != N or min(idx) < 0:
        raise InputError(f"sample_index must give {N} distinct non-negative global indices "
                         f"(one per sample of x0), got {idx[:8]}...")
    return idx


# ----------------------------------------------------------------------------- public


def perturbation_recovery(f: DepthMap, x0: Tensor, *, depths: Sequence[int] | None = None,
                          angles: Sequence[float] = (0.05, 0.2),
                          direction: str | Sequence[str] = DIRECTIONS, n_draws: int = 1,
                          kinds: Mapping[str, Sequence[int]] | None = None,
                          sample_index: Sequence[int] | Tensor | None = None,
                          adversarial: Adversarial | None = None, n_boot: int = 1000,
                          ci: float = 0.95, seed: int = 0) -> RecoveryResult:
    """Recovery curves of tangent perturbations along the trajectories of ``f`` from ``x0``.

    Parameters
    ----------
    f : depth-indexed DepthMap with consecutive layers ``d0+1..L`` (``maps.from_model``).
    x0 : (T, D) or (N, T, D) states at depth ``d0``; tokens must be non-zero.
    depths : injection depths ``l0`` in ``d0..L-1`` (default: all).
    angles : RMS injected angles ``theta`` (rad), in (0, pi/2).
    direction : ``"random"``, ``"adversarial"`` or both.
    n_draws : random directions per sample and injection depth.
    kinds : token positions of each kind, e.g. ``{"cls": [0], "patch": range(5, 261)}``
        (default: one kind ``"all"``).
    sample_index : (N,) global index of each sample (default ``0..N-1``); keys the random
        directions and solver starts, so that splitting the batch changes nothing.
    adversarial : ``adversarial(f, x_l0, start, stop, out_tokens, *, seed) -> (v, converged)``
        with ``v`` (T, D) the top right singular vector of the all-tokens-in ->
        ``out_tokens``-out directional propagator (default :func:`top_singular_direction`);
        a solver with ``batched = True`` takes all samples at once ((N, T, D) -> (N, T, D),
        (N,)); its answers must not depend on the batch beyond the solver tolerance.
    n_boot, ci : bootstrap resamples over images and interval level of the summaries.
    seed : seeds the random directions, solver starts and bootstrap.
    """
    inject, dirs = _check(f, depths, angles, direction, n_draws, n_boot, ci)
    x = check_states(x0, name="x0", unit=True)
    x = x.unsqueeze(0) if x.ndim == 2 else x
    N, T, Dm = x.shape
    kind_tok = _kinds(kinds, T)
    index = _sample_index(sample_index, N)
    solver = adversarial or top_singular_direction
    first, last = f.depths[0] - 1, f.depths[-1]
    with torch.no_grad():
        ref = [x]
        for t in f.depths:
            ref.append(f(t, ref[-1]))
    I, A, K, Lp = len(inject), len(angles), len(kind_tok), last - first + 1
    theta = torch.tensor([float(a) for a in angles], dtype=x.dtype, device=x.device)
    rand = torch.full((N, I, A, n_draws, Lp, K), math.nan, dtype=torch.float64) \
        if "random" in dirs else None
    adv = torch.full((N, I, A, Lp, K), math.nan, dtype=torch.float64) \
        if "adversarial" in dirs else None
    status = torch.full((N, I, K), int(AdversarialStatus.NOT_COMPUTED), dtype=torch.int8)
    gain = torch.full((N, I, K), math.nan, dtype=torch.float64)
    own_angle = torch.full((N, I, A, K), math.nan, dtype=torch.float64) \
        if adv is not None else None
    vecs = torch.zeros(N, I, K, T, Dm, dtype=x.dtype) if adv is not None else None
    for i, l0 in enumerate(inject):
        base = ref[l0 - first]                                       # (N, T, D)
        if rand is not None:
            w = _random(base, n_draws, [start_seed(seed, s, l0) for s in index])
            curves = _run(f, ref, first, l0, last, base, w, theta)   # (N, A, n, Lp, T)
            tk = _injected(w, theta, kind_tok)                       # (N, A, n, K)
            rand[:, i] = _kind_rms(curves, kind_tok) / tk[:, :, :, None, :]
        if adv is not None:
            for k, toks in enumerate(kind_tok.values()):
                found = _directions(solver, f, base, l0, last, toks, index, seed, k)
                for s, (v, ok) in enumerate(found):
                    v, st, gn = _adversarial_check(f, base[s], l0, last, toks, v, ok)
                    vecs[s, i, k], status[s, i, k], gain[s, i, k] = v, int(st), gn
            w = math.sqrt(T) * vecs[:, i].to(base)                   # (N, K, T, D)
            curves = _run(f, ref, first, l0, last, base, w, theta)   # (N, A, K, Lp, T)
            own = torch.stack([_kind_rms(curves[:, :, k], {n: t})[..., 0]
                               for k, (n, t) in enumerate(kind_tok.items())], -1)
            tk = _injected(w, theta, kind_tok)                       # (N, A, K(dir), K)
            tk = torch.diagonal(tk, dim1=-2, dim2=-1)                # (N, A, K): own kind
            own_angle[:, i] = tk
            adv[:, i] = own / tk[:, :, None, :]
    config = {"directions": dirs, "n_draws": n_draws, "n_boot": n_boot, "ci": ci,
              "seed": seed, "adversarial_solver": getattr(solver, "__name__", repr(solver))}
    return RecoveryResult(rand, adv, status, gain, vecs, index, inject,
                          [float(a) for a in angles], list(range(first, last + 1)), kind_tok,
                          f.describe(), config, own_angle)


def _directions(solver, f, base, l0, last, toks, index, seed, k):
    """``[(v, converged)]`` per sample: one call per sample, or one batched call when the
    solver says ``batched = True`` (it then takes (N, T, D) and returns (N, T, D), (N,))."""
    if getattr(solver, "batched", False):
        V, ok = solver(f, base, l0, last, toks, seed=start_seed(seed, l0, k))
        return [(V[s], bool(ok[s])) for s in range(base.shape[0])]
    return [solver(f, base[s], l0, last, toks, seed=start_seed(seed, g, l0, k))
            for s, g in enumerate(index)]


def _adversarial_check(f, x, l0, last, toks, v, ok):
    """Project/normalise a solver's direction and measure its gain ``||P_K v||``."""
    v = torch.as_tensor(v).to(x).reshape(x.shape)
    u = x / x.norm(dim=-1, keepdim=True)
    v = tangent_project(u, v)
    if not bool(torch.isfinite(v).all()) or float(v.norm()) == 0:
        return torch.zeros_like(x), AdversarialStatus.NONFINITE, math.nan
    v = v / v.norm()
    with torch.no_grad():
        g = float(DirectionalPropagator(f, x, l0, last, toks).matmat(v[None]).norm())
    st = AdversarialStatus.CONVERGED if ok else AdversarialStatus.NOT_CONVERGED
    return v, st, g


def _random(x: Tensor, n: int, seeds: list[int]) -> Tensor:
    """(N, n, T, D) unit tangent directions per token at ``x`` (N, T, D), sample ``s`` drawn
    from its own generator ``seeds[s]``."""
    g = torch.stack([torch.randn((n, *x.shape[1:]), dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(sd)) for sd in seeds])
    u = (x / x.norm(dim=-1, keepdim=True)).unsqueeze(1)
    g = tangent_project(u, g.to(x))
    return g / g.norm(dim=-1, keepdim=True)


def _run(f: DepthMap, ref: list[Tensor], first: int, l0: int, last: int, base: Tensor,
         w: Tensor, theta: Tensor) -> Tensor:
    """Inject ``w`` (N, R, T, D) at angles ``theta`` (A,) into ``base`` (N, T, D), run to
    ``last``: per-token angles (N, A, R, L+1, T), NaN before ``l0``."""
    N, R, T, Dm = w.shape
    A = theta.shape[0]
    r = base.norm(dim=-1, keepdim=True)[:, None, None]                 # (N, 1, 1, T, 1)
    u = (base / base.norm(dim=-1, keepdim=True))[:, None, None]
    rho = w.norm(dim=-1, keepdim=True)[:, None]                       # (N, 1, R, T, 1)
    th = theta[None, :, None, None, None]
    scale = torch.where(rho > 0, torch.sin(th * rho) / rho.clamp_min(1e-300), th)
    state = (r * (torch.cos(th * rho) * u + scale * w[:, None])).reshape(-1, T, Dm)
    out = torch.full((N, A, R, last - first + 1, T), math.nan, dtype=torch.float64)
    with torch.no_grad():
        for layer in range(l0, last + 1):
            if layer > l0:
                state = f(layer, state)
            target = ref[layer - first][:, None].expand(N, A * R, T, Dm)
            ang = angle(state.reshape(N, A * R, T, Dm), target)
            out[:, :, :, layer - first] = ang.double().cpu().reshape(N, A, R, T)
    return out


def _injected(w: Tensor, theta: Tensor, kinds: Mapping[str, list[int]]) -> Tensor:
    """The perturbation's own RMS angle per kind: ``w`` (N, R, T, D) at angles ``theta``
    (A,) -> (N, A, R, K) ``RMS_{i in K} theta rho_i``; 0 becomes NaN (no ratio defined)."""
    rho = w.norm(dim=-1).double().cpu()                               # (N, R, T)
    ang = theta.double().cpu()[None, :, None, None] * rho[:, None]    # (N, A, R, T)
    out = _kind_rms(ang, kinds)
    return torch.where(out > 0, out, math.nan)


def _kind_rms(curves: Tensor, kinds: Mapping[str, list[int]]) -> Tensor:
    """RMS over each kind's tokens of (..., T) angles: (..., K)."""
    return torch.stack([curves[..., t].pow(2).mean(-1).sqrt() for t in kinds.values()], -1)
