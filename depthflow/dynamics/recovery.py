"""Perturbation recovery (self-correction) along real trajectories of a depth-indexed map.

Protocol (SCIENCE.md section 5; magnitudes are parameters): run the reference trajectory
``x_l`` from ``x0`` through the layers of ``f``; at an injection depth ``l0`` rotate every
token's direction by the angle ``theta`` in a tangent direction ``w_i`` while keeping its norm,

    x'_l0,i = ||x_l0,i|| (cos(theta) x_hat_l0,i + sin(theta) w_i),

run the remaining layers ``l0+1..L`` and record the angle between ``x'_l,i`` and ``x_l,i`` at
every later depth. The recovery ratio is ``angle_L / theta`` (< 1: the perturbation shrank).

Directions: ``"random"`` (per token, uniform on the tangent sphere, ``n_directions`` draws)
or ``"adversarial"``: the top ``n_directions`` right singular vectors of the tangent Jacobian
of layer ``l0+1`` as a sphere map at the trajectory's own token norms (the input directions
whose angle grows most in that layer; block subspace iteration on JVPs/VJPs),
restricted per token to its tangent space and normalised per token (a token whose part is
zero gets a random direction). Where the top singular value is degenerate across tokens the
per-token directions are a mix, not each token's own worst direction.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from depthflow import vocabulary as D
from depthflow.errors import ConfigError
from depthflow.maps import DepthMap, check_states, sphere, tangent_project
from depthflow.tokens import angle

__all__ = ["RecoveryResult", "perturbation_recovery", "DIRECTIONS"]

INJECT_DEPTH, PERTURB_ANGLE, DIRECTION, DRAW = (D.INJECT_DEPTH, D.PERTURB_ANGLE, D.DIRECTION,
                                                D.DRAW)

DIRECTIONS = ("random", "adversarial")


@dataclasses.dataclass
class RecoveryResult:
    """Angles to the unperturbed trajectory.

    ``angle``: (N, I, A, R, n, L+1, T) per token, NaN before the injection depth, over
    samples, injection depths, angles, direction kinds, draws, depths and tokens.
    ``kind_angle``: (N, I, A, R, n, L+1, K) mean over the tokens of each kind.
    """

    angle: Tensor
    kind_angle: Tensor
    inject_depths: list[int]
    angles: list[float]
    directions: list[str]
    depths: list[int]
    kinds: list[str]
    map_info: dict[str, Any]
    singular_values: Tensor | None     # (N, I, n) top tangent singular values (adversarial)

    @property
    def ratio(self) -> Tensor:
        """(N, I, A, R, n, T) final angle / theta."""
        theta = torch.tensor(self.angles, dtype=torch.float64)[:, None, None, None]
        return self.angle[..., -1, :] / theta

    @property
    def kind_ratio(self) -> Tensor:
        theta = torch.tensor(self.angles, dtype=torch.float64)[:, None, None, None]
        return self.kind_angle[..., -1, :] / theta

    def to_dataset(self, *, prefix: str = "dyn_recovery_"):
        import xarray as xr

        p = prefix
        lead = (D.SAMPLE, INJECT_DEPTH, PERTURB_ANGLE, DIRECTION, DRAW)
        coords = {INJECT_DEPTH: (INJECT_DEPTH, np.asarray(self.inject_depths), _a(
                      "injection depth l0 (perturbed state after block l0)")),
                  PERTURB_ANGLE: (PERTURB_ANGLE, np.asarray(self.angles), _a(
                      "injected angle theta", "rad")),
                  DIRECTION: (DIRECTION, np.asarray(self.directions), _a(
                      "perturbation direction", "")),
                  DRAW: (DRAW, np.arange(self.angle.shape[4]), _a(
                      "random draw / singular vector index", "")),
                  D.DEPTH: (D.DEPTH, np.asarray(self.depths), _a("depth")),
                  D.KIND: (D.KIND, np.asarray(self.kinds), _a("token kind group", ""))}
        v = {f"{p}angle": ((*lead, D.DEPTH, D.KIND), self.kind_angle.numpy(), _a(
                 "angle to the unperturbed trajectory, mean over tokens of a kind "
                 "(NaN before injection)", "rad")),
             f"{p}ratio": ((*lead, D.KIND), self.kind_ratio.numpy(), _a(
                 "recovery ratio: final angle / injected angle, mean over tokens of a kind")),
             f"{p}token_ratio": ((*lead, D.TOKEN), self.ratio.numpy(), _a(
                 "recovery ratio per token: final angle / injected angle"))}
        if self.singular_values is not None:
            v[f"{p}singular_value"] = ((D.SAMPLE, INJECT_DEPTH, DRAW),
                                       self.singular_values.numpy(), _a(
                "top tangent singular values of block l0+1 (adversarial directions)"))
        ds = xr.Dataset(v, coords=coords)
        ds.attrs[f"{p}map"] = json.dumps(self.map_info, sort_keys=True)
        ds.attrs[f"{p}protocol"] = ("rotate every token by theta at depth l0 keeping its "
                                    "norm; run blocks l0+1..L; angle per token to the "
                                    "unperturbed trajectory")
        return ds


def _a(long_name: str, units: str = "1", **extra: Any) -> dict[str, Any]:
    return {"long_name": long_name, "units": units, **extra}


def _check(f: DepthMap, inject: Sequence[int] | None, angles: Sequence[float],
           direction: str | Sequence[str], n_directions: int) -> tuple[list[int], list[str]]:
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
    if not dirs or any(d not in DIRECTIONS for d in dirs):
        raise ConfigError(f"direction must be one or more of {DIRECTIONS}, got {direction!r}")
    if n_directions < 1:
        raise ConfigError(f"n_directions must be >= 1, got {n_directions}")
    return inject, dirs


def perturbation_recovery(f: DepthMap, x0: Tensor, *, depths: Sequence[int] | None = None,
                          angles: Sequence[float] = (0.05, 0.2),
                          direction: str | Sequence[str] = "random", n_directions: int = 1,
                          token_kinds: Sequence[str] | None = None,
                          seed: int = 0) -> RecoveryResult:
    """Inject tangent perturbations along the trajectory of ``f`` from ``x0`` (see module).

    Parameters
    ----------
    f : depth-indexed DepthMap with consecutive layers ``d0+1..L`` (``maps.from_model``).
    x0 : (T, D) or (N, T, D) states at depth ``d0``; tokens must be non-zero.
    depths : injection depths ``l0`` in ``d0..L-1`` (default: all).
    angles : injected angles ``theta`` (rad), in (0, pi/2).
    direction : ``"random"``, ``"adversarial"`` or both (a sequence).
    n_directions : random draws, or number of top singular vectors (adversarial).
    token_kinds : kind of every token (default: all tokens one kind, ``"all"``).
    """
    inject, dirs = _check(f, depths, angles, direction, n_directions)
    x = check_states(x0, name="x0", unit=True)
    x = x.unsqueeze(0) if x.ndim == 2 else x
    N, T, Dm = x.shape
    kinds_of = list(token_kinds) if token_kinds is not None else ["all"] * T
    if len(kinds_of) != T:
        raise ConfigError(f"token_kinds must name every token ({T}), got {len(kinds_of)}")
    kinds = [k for k in D.TOKEN_KINDS if k in kinds_of]
    kinds += [k for k in dict.fromkeys(kinds_of) if k not in kinds]
    first, last = f.depths[0] - 1, f.depths[-1]
    with torch.no_grad():
        ref = [x]
        for t in f.depths:
            ref.append(f(t, ref[-1]))
    A, R, n = len(angles), len(dirs), n_directions
    out = torch.full((N, len(inject), A, R, n, last - first + 1, T), float("nan"),
                     dtype=torch.float64)
    svals = torch.full((N, len(inject), n), float("nan"), dtype=torch.float64) \
        if "adversarial" in dirs else None
    theta = torch.tensor([float(a) for a in angles], dtype=x.dtype, device=x.device)
    for i, l0 in enumerate(inject):
        base = ref[l0 - first]                                     # (N, T, D)
        w = []
        for d in dirs:
            if d == "random":
                w.append(_random(base, n, seed + 7919 * i))
            else:
                wd, s = _adversarial(f, l0 + 1, base, n, seed)
                w.append(wd)
                svals[:, i] = s
        w = torch.stack(w, 1)                                      # (N, R, n, T, D)
        pert = _rotate(base, w, theta)                             # (N, A, R, n, T, D)
        with torch.no_grad():
            state = pert.reshape(-1, T, Dm)
            for layer in range(l0, last + 1):
                if layer > l0:
                    state = f(layer, state)
                target = ref[layer - first].unsqueeze(1).expand(N, A * R * n, T, Dm)
                ang = angle(state.reshape(N, A * R * n, T, Dm), target)
                out[:, i, ..., layer - first, :] = ang.double().cpu().reshape(N, A, R, n, T)
    kind_idx = [[j for j, k in enumerate(kinds_of) if k == kind] for kind in kinds]
    kind_angle = torch.stack([out[..., idx].mean(-1) for idx in kind_idx], -1)
    return RecoveryResult(out, kind_angle, inject, [float(a) for a in angles], dirs,
                          list(range(first, last + 1)), kinds, f.describe(), svals)


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def _random(x: Tensor, n: int, seed: int) -> Tensor:
    """(N, n, T, D) unit tangent directions per token at ``x`` (N, T, D)."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn((x.shape[0], n, *x.shape[1:]), generator=gen, dtype=torch.float64)
    return _unit(tangent_project(_unit(x).unsqueeze(1), g.to(x)))


def _adversarial(f: DepthMap, t: int, x: Tensor, n: int, seed: int, *,
                 iters: int = 12) -> tuple[Tensor, Tensor]:
    """Top-``n`` right singular vectors of the tangent Jacobian of block ``t`` at ``x``
    (N, T, D), the sphere map taken at each sample's own token norms: block subspace
    iteration on ``J^T J`` (batched JVPs/VJPs for all samples at once), then restricted and
    normalised per token; returns (N, n, T, D) directions and (N, n) singular values."""
    u = _unit(x)
    g = sphere(f, x.norm(dim=-1), source="trajectory")              # norms (N, T)
    q = _random(x, n, seed + 1)                                      # (N, n, T, D)
    for _ in range(iters):
        z = torch.stack([g.tangent_vjp(t, u, g.tangent_jvp(t, u, q[:, j])[1])[1]
                         for j in range(n)], 1)
        q = _orth(z.detach())
    jq = torch.stack([g.tangent_jvp(t, u, q[:, j])[1] for j in range(n)], 1).detach()
    values = jq.flatten(2).norm(dim=-1)                              # (N, n)
    order = values.argsort(dim=1, descending=True)
    q = torch.take_along_dim(q, order[:, :, None, None], 1)
    values = torch.take_along_dim(values, order, 1)
    v = tangent_project(u.unsqueeze(1), q)
    norm = v.norm(dim=-1, keepdim=True)
    fallback = _random(x, n, seed)
    return torch.where(norm > 1e-12, v / norm.clamp_min(1e-300), fallback), \
        values.double().cpu()


def _orth(z: Tensor) -> Tensor:
    """Orthonormalise (N, n, T, D) along n in the flattened state space."""
    Q = torch.linalg.qr(z.flatten(2).transpose(1, 2)).Q                # (N, T*D, n)
    return Q.transpose(1, 2).reshape(z.shape)


def _rotate(x: Tensor, w: Tensor, theta: Tensor) -> Tensor:
    """Rotate every token of ``x`` (N, T, D) by ``theta`` (A,) towards ``w`` (N, R, n, T, D),
    keeping its norm: (N, A, R, n, T, D)."""
    r = x.norm(dim=-1, keepdim=True)
    u = (x / r)[:, None, None, None]
    c = theta.cos()[None, :, None, None, None, None]
    s = theta.sin()[None, :, None, None, None, None]
    return r[:, None, None, None] * (c * u + s * w[:, None])
