"""Basins of attraction and basin fractions of autonomous maps on token directions.

:func:`basins_fractions` iterates an autonomous map (a frozen layer or a phase, usually on the
sphere) from many initial states, then labels every end point by the attractor it reached:

* ``scope="token"``: a point is one token of one start; its end direction is compared with
  attractor directions ``(M, D)`` (shared by all tokens) or ``(M, T, D)`` (per token);
* ``scope="state"``: a point is a whole start; the distance to an attractor ``(M, T, D)`` is
  the largest angle over the (selected) tokens.

Label ``-1`` means: not converged (the largest per-step angle over the last ``window`` steps
exceeds ``converge_tol``), no attractor within ``tol_angle``, non-finite, or a cluster beyond
``max_clusters``; the status variable says which.

Without ``attractors`` the end points are clustered (deterministic leader clustering by
angle): the first converged unassigned point (in start, then token order) seeds a cluster
that takes every unassigned point within ``tol_angle``; repeat until all are taken. Centres
are then the normalised member means, every point is reassigned to its nearest centre within
``tol_angle`` and clusters are numbered by size (largest first, ties by first appearance).

Fractions count labels (``-1`` included, so they sum to one) with binomial standard errors
``sqrt(p (1 - p) / n)``, overall, per class (``labels`` of the starts) and per token kind
(token scope). Tokens of one start are counted as independent points.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from depthflow.core import vocabulary as D
from depthflow.errors import ConfigError, InputError
from depthflow.dynamics.maps import DepthMap, check_states, require_autonomous
from depthflow.data.tokens import angle
from depthflow.core.vocabulary import attrs
from depthflow.core.vocabulary import Status, flags
from depthflow.data.tokens import token_groups

__all__ = ["BasinResult", "basins_fractions", "random_directions", "BASIN_STATUS"]

START, BASIN, ATTRACTOR = D.BASIN_START, D.BASIN, D.ATTRACTOR

class BasinStatus(Status):
    """Outcome per end point of a basin run."""

    ASSIGNED = 0            # within tol_angle of an attractor
    NOT_CONVERGED = 1       # still moving after the iterations
    UNASSIGNED = 2          # converged but near no attractor (label -1)
    NONFINITE = 3           # the map returned NaN/inf
    MINOR_CLUSTER = 4       # its cluster was beyond max_clusters (label -1)


BASIN_STATUS = {int(s): s.meaning for s in BasinStatus}
SCOPES = ("token", "state")


def random_directions(n: int, shape: Sequence[int], *, seed: int = 0,
                      dtype: torch.dtype = torch.float64) -> Tensor:
    """``n`` states of unit token directions, uniform on each token's sphere: ``(n, T, D)``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=gen, dtype=torch.float64)
    return (x / x.norm(dim=-1, keepdim=True)).to(dtype)


@dataclasses.dataclass
class BasinResult:
    """Labels of end points and basin fractions (see the module docstring).

    ``labels``, ``status``, ``distance``, ``change``: ``(N, T')`` (token scope) or ``(N,)``.
    ``attractors``: ``(M, D)`` or ``(M, T, D)``. ``fractions``/``stderr``: ``(M + 1,)`` over
    basin labels ``-1, 0, .., M-1``; ``*_by_class``: ``(C, M + 1)`` over ``classes``;
    ``*_by_kind``: ``(K, M + 1)`` over ``kinds``.
    """

    labels: Tensor
    status: Tensor
    distance: Tensor
    change: Tensor
    attractors: Tensor
    end_states: Tensor
    fractions: Tensor
    stderr: Tensor
    counts: Tensor
    classes: list[int]
    fractions_by_class: Tensor
    stderr_by_class: Tensor
    kinds: list[str]
    fractions_by_kind: Tensor
    stderr_by_kind: Tensor
    scope: str
    tokens: list[int]
    found: str
    settings: dict[str, Any]
    map_info: dict[str, Any]

    @property
    def num_attractors(self) -> int:
        return int(self.attractors.shape[0])

    def to_dataset(self):
        """Plain names (the caller chooses the group); the attractor directions are
        ``attractors`` (``attractor`` is their index)."""
        import xarray as xr

        p = ""
        pts = (START, D.TOKEN) if self.scope == "token" else (START,)
        basin = np.arange(-1, self.num_attractors)
        att_dims = (ATTRACTOR, D.FEATURE) if self.attractors.ndim == 2 else (
            ATTRACTOR, D.TOKEN, D.FEATURE)
        status_flags = flags(BasinStatus)
        v = {f"{p}label": (pts, self.labels.numpy().astype(np.int32), attrs(
                 "basin label of the end point (-1 = none)", "")),
             f"{p}status": (pts, self.status.numpy().astype(np.int8), attrs(
                 "basin assignment status", "", **status_flags)),
             f"{p}distance": (pts, self.distance.numpy(), attrs(
                 "angle of the end point to its nearest attractor", "rad")),
             f"{p}change": (pts, self.change.numpy(), attrs(
                 "largest per-step angle over the last steps (convergence)", "rad")),
             f"{p}attractors": (att_dims, self.attractors.double().numpy(), attrs(
                 f"attractor directions ({self.found})", "1")),
             f"{p}fraction": ((BASIN,), self.fractions.numpy(), attrs("basin fraction")),
             f"{p}fraction_stderr": ((BASIN,), self.stderr.numpy(), attrs(
                 "binomial standard error sqrt(p(1-p)/n) of the basin fraction")),
             f"{p}count": ((BASIN,), self.counts.numpy().astype(np.int64), attrs(
                 "number of end points in the basin", ""))}
        coords: dict[str, Any] = {BASIN: (BASIN, basin, attrs("basin label (-1 = none)", "")),
                                  ATTRACTOR: (ATTRACTOR, np.arange(self.num_attractors),
                                              attrs("attractor index", ""))}
        if self.scope == "token":
            coords[D.TOKEN] = (D.TOKEN, np.asarray(self.tokens), attrs("token position"))
        if self.classes:
            coords[D.CLASS] = (D.CLASS, np.asarray(self.classes), attrs("class label index", ""))
            v[f"{p}fraction_by_class"] = ((D.CLASS, BASIN), self.fractions_by_class.numpy(),
                                          attrs("basin fraction per class of the start"))
            v[f"{p}fraction_by_class_stderr"] = ((D.CLASS, BASIN),
                                                 self.stderr_by_class.numpy(),
                                                 attrs("binomial standard error per class"))
        if self.kinds:
            coords[D.KIND] = (D.KIND, np.asarray(self.kinds), attrs("token kind group", ""))
            v[f"{p}fraction_by_kind"] = ((D.KIND, BASIN), self.fractions_by_kind.numpy(),
                                         attrs("basin fraction per token kind"))
            v[f"{p}fraction_by_kind_stderr"] = ((D.KIND, BASIN), self.stderr_by_kind.numpy(),
                                                attrs("binomial standard error per token kind"))
        ds = xr.Dataset(v, coords=coords)
        ds.attrs.update({f"{p}map": json.dumps(self.map_info, sort_keys=True),
                         f"{p}scope": self.scope, f"{p}attractors_from": self.found,
                         f"{p}settings": json.dumps(self.settings, sort_keys=True)})
        return ds


def basins_fractions(f: DepthMap, starts: Tensor | int, *, steps: int,
                     attractors: Tensor | None = None, tol_angle: float = 0.1,
                     labels: Sequence[int] | Tensor | None = None,
                     token_kinds: Sequence[str] | None = None, scope: str = "token",
                     tokens: Sequence[int] | None = None, state_shape: Sequence[int] | None = None,
                     window: int | None = None, converge_tol: float | None = None,
                     max_clusters: int = 32, seed: int = 0) -> BasinResult:
    """Iterate the autonomous map ``f`` ``steps`` times from ``starts`` and label the basins.

    Parameters
    ----------
    f : autonomous DepthMap (``maps.frozen``/``maps.compose``, usually wrapped by
        ``maps.sphere``); a depth-indexed family raises ConfigError.
    starts : (N, T, D) initial states, or an int ``N`` of random directions
        (:func:`random_directions` with ``state_shape=(T, D)`` and ``seed``).
    attractors : known attractor directions ``(M, D)`` / ``(M, T, D)`` (token scope) or
        ``(M, T, D)`` (state scope), e.g. attracting fixed points; None: cluster end points.
    tol_angle : angular tolerance (rad) for assignment and clustering, in (0, pi/2].
    labels : (N,) class label of each start (-1 = unknown) for per-class fractions.
    token_kinds : kind of every token (length T) for per-kind fractions (token scope).
    tokens : token positions to label (default: all); the whole state is still iterated.
    window, converge_tol : converged when the largest per-step angle over the last
        ``window`` steps (default ``min(5, steps)``) is at most ``converge_tol`` (default
        ``tol_angle / 10``).
    """
    f = require_autonomous(f, "basins_fractions")
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not 0 < tol_angle <= math.pi / 2:
        raise ConfigError(f"tol_angle must be in (0, pi/2] radians, got {tol_angle}")
    window = min(5, steps) if window is None else int(window)
    if steps < 1 or window < 1 or window > steps:
        raise ConfigError(f"need steps >= window >= 1, got steps={steps}, window={window}")
    if isinstance(starts, int):
        if state_shape is None:
            raise ConfigError("starts given as a number needs state_shape=(T, D)")
        starts = random_directions(starts, state_shape, seed=seed)
    x = check_states(starts, name="starts", unit=f.on_sphere)
    if x.ndim != 3:
        raise InputError(f"starts must be (N, T, D), got shape {tuple(x.shape)}")
    N, T, _ = x.shape
    tokens = list(range(T)) if tokens is None else [int(i) for i in tokens]
    if not tokens or any(not 0 <= i < T for i in tokens):
        raise ConfigError(f"tokens must be positions in 0..{T - 1}, got {tokens}")
    converge_tol = tol_angle / 10 if converge_tol is None else float(converge_tol)
    end, change, finite = _iterate(f, x, steps, window)
    sel = end[:, tokens]                                       # (N, T', D)
    if scope == "token":
        change, finite = change[:, tokens], finite[:, None].expand(N, len(tokens))
    else:
        change = change[:, tokens].amax(1)
    ok = finite & (change <= converge_tol)
    if attractors is None:
        found = "clusters of end points"
        attractors = _cluster(sel, ok, scope, tol_angle)
    else:
        found = "given"
        attractors = _check_attractors(attractors, scope, sel.shape, tokens)
    label, dist = _assign(sel, attractors, scope, tokens, tol_angle)
    status = torch.full(label.shape, 0, dtype=torch.int8)
    status[label < 0] = 2
    status[~ok & finite] = 1
    status[~finite] = 3
    label = torch.where(ok, label, torch.full_like(label, -1))
    label, status, attractors = _limit(label, status, attractors, max_clusters,
                                       found != "given")
    result = _fractions(label, attractors.shape[0], labels, token_kinds, scope, tokens, N, T)
    settings = dict(steps=steps, tol_angle=tol_angle, window=window,
                    converge_tol=converge_tol, max_clusters=max_clusters, num_starts=N)
    return BasinResult(label, status, dist, change, attractors.cpu(), end.cpu(), *result,
                       scope, tokens, found, settings, f.describe())


def _iterate(f: DepthMap, x: Tensor, steps: int, window: int) -> tuple[Tensor, Tensor, Tensor]:
    """End states, largest per-token step angle over the last ``window`` steps, finiteness."""
    change = torch.zeros(x.shape[:2], dtype=torch.float64)
    with torch.no_grad():
        for n in range(steps):
            y = f(None, x)
            if n >= steps - window:
                change = torch.maximum(change, angle(y, x).double().cpu())
            x = y
    finite = torch.isfinite(x).flatten(1).all(1).cpu()
    change = torch.where(torch.isnan(change), torch.inf, change)
    return x, change, finite


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def _distance(points: Tensor, centres: Tensor, scope: str) -> Tensor:
    """Angles (P, M) between points (P, T', D) and centres (M, T', D): per token (token
    scope, T' = 1) or the largest over tokens (state scope)."""
    return angle(points[:, None], centres[None]).amax(-1)


def _points(sel: Tensor, scope: str) -> Tensor:
    """(P, T'', D) points: one per start and token (token scope) or per start."""
    return sel.reshape(-1, 1, sel.shape[-1]) if scope == "token" else sel


def _cluster(sel: Tensor, ok: Tensor, scope: str, tol: float) -> Tensor:
    pts = _points(sel.double().cpu(), scope)
    good = torch.nonzero(ok.reshape(-1)).flatten()
    member = torch.full((pts.shape[0],), -1, dtype=torch.long)
    centres = []
    free = good
    while free.numel():
        seed_pt = pts[free[0]]
        near = _distance(pts[free], seed_pt[None], scope)[:, 0] <= tol
        member[free[near]] = len(centres)
        centres.append(seed_pt)
        free = free[~near]
    if not centres:
        shape = (0, sel.shape[-1]) if scope == "token" else (0, *sel.shape[1:])
        return torch.zeros(shape, dtype=torch.float64)
    means = torch.stack([_unit(pts[member == m].mean(0)) for m in range(len(centres))])
    return means[:, 0] if scope == "token" else means


def _check_attractors(att: Tensor, scope: str, shape: torch.Size, tokens: list[int]) -> Tensor:
    att = torch.as_tensor(att).double().cpu()
    if not torch.isfinite(att).all() or (att.norm(dim=-1) == 0).any():
        raise InputError("attractors must be finite, non-zero directions")
    _, Tp, Dm = shape
    if scope == "token" and att.ndim == 2 and att.shape[1] == Dm:
        return _unit(att)
    if att.ndim == 3 and att.shape[2] == Dm and att.shape[1] >= max(tokens) + 1:
        return _unit(att)
    raise InputError(f"attractors must be (M, {Dm}) (token scope) or (M, T, {Dm}) with all "
                     f"T tokens, got shape {tuple(att.shape)}")


def _assign(sel: Tensor, att: Tensor, scope: str, tokens: list[int],
            tol: float) -> tuple[Tensor, Tensor]:
    sel = sel.double().cpu()
    N, Tp, Dm = sel.shape
    if att.shape[0] == 0:
        shape = (N, Tp) if scope == "token" else (N,)
        return torch.full(shape, -1, dtype=torch.long), torch.full(shape, float("nan"),
                                                                   dtype=torch.float64)
    if att.ndim == 3:
        att = att[:, tokens]                                   # (M, T', D)
    if scope == "token":
        a = att if att.ndim == 3 else att[:, None].expand(-1, Tp, -1)
        dist = angle(sel[:, :, None], a.transpose(0, 1)[None]).double()   # (N, T', M)
    else:
        dist = _distance(sel, att, scope)                                  # (N, M)
    best, label = dist.min(-1)
    label = torch.where(best <= tol, label, torch.full_like(label, -1))
    return label, best


def _limit(label: Tensor, status: Tensor, att: Tensor, max_clusters: int,
           renumber: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Number found clusters by size (largest first) and keep ``max_clusters`` of them."""
    if not renumber or att.shape[0] == 0:
        return label, status, att
    counts = torch.bincount(label[label >= 0], minlength=att.shape[0])
    order = sorted(range(att.shape[0]), key=lambda m: (-int(counts[m]), m))
    keep = [m for m in order[:max_clusters] if counts[m] > 0]
    new = torch.full((att.shape[0] + 1,), -1, dtype=torch.long)
    new[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
    relabel = torch.where(label >= 0, new[label.clamp_min(0)], label)
    status = torch.where((label >= 0) & (relabel < 0), torch.tensor(4, dtype=torch.int8),
                         status)
    return relabel, status, att[keep] if keep else att[:0]


def _share(label: Tensor, M: int) -> tuple[Tensor, Tensor, Tensor]:
    counts = torch.bincount((label.reshape(-1) + 1), minlength=M + 1).double()
    n = counts.sum()
    p = counts / n if n > 0 else torch.full_like(counts, float("nan"))
    return p, (p * (1 - p) / n).sqrt() if n > 0 else p.clone(), counts


def _fractions(label: Tensor, M: int, labels, token_kinds, scope: str, tokens: list[int],
               N: int, T: int):
    p, se, counts = _share(label, M)
    classes: list[int] = []
    by_class = se_class = torch.zeros(0, M + 1, dtype=torch.float64)
    if labels is not None:
        lab = torch.as_tensor(labels).long().cpu().reshape(-1)
        if lab.numel() != N:
            raise InputError(f"labels must have one entry per start ({N}), got {lab.numel()}")
        classes = sorted(int(c) for c in torch.unique(lab) if c >= 0)
        rows = [_share(label[lab == c], M)[:2] for c in classes]
        if rows:
            by_class = torch.stack([r[0] for r in rows])
            se_class = torch.stack([r[1] for r in rows])
    kinds: list[str] = []
    by_kind = se_kind = torch.zeros(0, M + 1, dtype=torch.float64)
    if token_kinds is not None and scope == "token":
        if len(token_kinds) != T:
            raise InputError(f"token_kinds must name every token ({T}), got {len(token_kinds)}")
        groups = token_groups([token_kinds[i] for i in tokens])
        kinds = list(groups)
        rows = [_share(label[:, groups[kind]], M)[:2] for kind in kinds]
        by_kind = torch.stack([r[0] for r in rows])
        se_kind = torch.stack([r[1] for r in rows])
    return p, se, counts, classes, by_class, se_class, kinds, by_kind, se_kind
