"""Per-layer stretching and per-segment (phase) spectra along trajectories.

``layer_stretching`` gives, per sample and layer ``l``, the top-k singular values ``sigma`` of
the one-layer directional propagator ``d u_l / d u_(l-1)`` (norms held): ``log sigma_1 < 0``
means the layer shrinks every direction perturbation. ``segment_spectra`` does the same for
any ``(start, stop)`` segments, e.g. the phases of a segmentation. Neither composes into the
whole-depth spectrum: a direction perturbation changes intermediate token norms, and later
layers turn norm changes into direction changes (``docs/methods.md`` (finite-depth spectra)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from depthflow.errors import ConfigError, InputError
from depthflow.dynamics.maps import DepthMap
from depthflow.core.vocabulary import attrs
from depthflow.dynamics.tangent.finite_depth import (LAYER, MODE, SAMPLE, SEGMENT,
                                                     FiniteDepthResult, FiniteDepthStatus,
                                                     _status_attrs, finite_depth_spectrum)

__all__ = ["SegmentSpectra", "segment_spectra", "layer_stretching"]


@dataclasses.dataclass
class SegmentSpectra:
    """Finite-depth spectra of several depth segments (layers or phases) along trajectories.

    Attributes
    ----------
    sigma : (N, S, k) float64, top-k singular values per sample and segment (largest first).
    exponents : (N, S, k) float64, ``log(sigma) / (stop - start)``.
    residuals : (N, S, k) float64; status (N, S) int8; applications (N, S) int64.
    starts, stops : (S,) segment boundaries (depths).
    per_layer : whether every segment is one layer (the dataset dim is then ``layer``).
    """

    sigma: Tensor
    exponents: Tensor
    residuals: Tensor
    status: Tensor
    applications: Tensor
    starts: np.ndarray
    stops: np.ndarray
    per_layer: bool
    results: list[FiniteDepthResult]

    @property
    def success(self) -> Tensor:
        return self.status == int(FiniteDepthStatus.CONVERGED)

    def to_dataset(self):
        """``xr.Dataset`` with dims ``sample``, ``layer`` (or ``segment``), ``mode``."""
        import xarray as xr

        first = self.results[0]
        seg = LAYER if self.per_layer else SEGMENT
        what = "direction" if first.kind == "direction" else "state"
        held = ", norms held" if first.kind == "direction" else ""
        where = "this layer" if self.per_layer else "this segment"
        k = self.sigma.shape[-1]
        dims = (SAMPLE, seg, MODE)
        ds = xr.Dataset(
            {"sigma": (dims, self.sigma.numpy(), attrs(
                f"largest stretch of a {what} perturbation by {where}{held}", "1",
                comment="mode i is the i-th largest singular value of the propagator; "
                        "log sigma_1 < 0: every perturbation shrinks")),
             "lyapunov_exponent": (dims, self.exponents.numpy(), attrs(
                 "finite-depth Lyapunov exponent log(sigma)/(stop - start)", "1/layer")),
             "residual": (dims, self.residuals.numpy(), attrs(
                 "relative residual ||A^T u_i - s_i v_i|| / s_1 of the singular triplet")),
             "status": ((SAMPLE, seg), self.status.numpy().astype(np.int8),
                        _status_attrs("finite-depth spectrum solver status")),
             "applications": ((SAMPLE, seg), self.applications.numpy(), attrs(
                 "propagator applications used (one JVP chain + one VJP chain each)"))},
            coords={seg: (seg, self.stops if self.per_layer else np.arange(len(self.stops)),
                          attrs("layer l (depth l-1 -> l)" if self.per_layer
                             else "segment index")),
                    "start": (seg, self.starts, attrs("first depth of the segment")),
                    "stop": (seg, self.stops, attrs("last depth of the segment")),
                    MODE: (MODE, np.arange(1, k + 1), attrs("singular value index (1 = largest)"))})
        meta = first.attrs()
        for key in ("start", "stop"):
            meta.pop(key)
        meta["composition"] = ("per-layer and per-segment spectra do not compose into the "
                                "spectrum over the whole depth")
        ds.attrs.update(meta)
        return ds


def _trajectory(trajectory: Tensor) -> Tensor:
    if not isinstance(trajectory, Tensor) or trajectory.ndim not in (3, 4):
        raise InputError(f"trajectory must be states (depth, T, D) or (N, depth, T, D) with "
                         f"index d = depth d, got "
                         f"{getattr(trajectory, 'shape', type(trajectory).__name__)}")
    return trajectory.unsqueeze(0) if trajectory.ndim == 3 else trajectory


def segment_spectra(f: DepthMap, trajectory: Tensor, *,
                    segments: Sequence[tuple[int, int]], kind: str = "direction",
                    k: int = 8, **options: Any) -> SegmentSpectra:
    """Finite-depth spectra of each ``(start, stop)`` segment (a phase, a layer) along the
    trajectories (``trajectory[:, d]`` = states at depth ``d``).

    ``options`` are those of :func:`finite_depth_spectrum` (``in_tokens``, ``out_tokens``,
    ``tol``, ``max_iter``, ``seed``, ``jvp``, ``batch``). The spectra of consecutive
    segments do not compose into that of their union (see the docs).
    """
    traj = _trajectory(trajectory)
    segs = [(int(a), int(b)) for a, b in segments]
    if not segs:
        raise ConfigError("segments must hold at least one (start, stop) pair")
    for a, b in segs:
        if not 0 <= a < b < traj.shape[1]:
            raise ConfigError(f"segments: need 0 <= start < stop <= {traj.shape[1] - 1} (the "
                              f"trajectory's last depth), got ({a}, {b})")
    results = [finite_depth_spectrum(f, traj[:, a], start=a, stop=b, kind=kind, k=k,
                                     **options) for a, b in segs]
    stack = lambda name: torch.stack([getattr(r, name) for r in results], 1)  # noqa: E731
    return SegmentSpectra(sigma=stack("singular_values"), exponents=stack("exponents"),
                          residuals=stack("residuals"), status=stack("status"),
                          applications=stack("applications"),
                          starts=np.array([a for a, _ in segs]),
                          stops=np.array([b for _, b in segs]),
                          per_layer=all(b - a == 1 for a, b in segs), results=results)


def layer_stretching(f: DepthMap, trajectory: Tensor, *, layers: Sequence[int] | None = None,
                     k: int = 8, kind: str = "direction", **options: Any) -> SegmentSpectra:
    """Per-layer stretching: the top-k singular values ``sigma`` of the one-layer
    propagator ``d u_l / d u_(l-1)`` (norms held) for each layer ``l`` in ``layers``
    (default: every layer the trajectory covers). ``log sigma_1 < 0`` means the layer
    shrinks every direction perturbation; eigenvalues are not defined here (the layer maps
    the tangent space at ``u_(l-1)`` to a different one, at ``u_l``)."""
    traj = _trajectory(trajectory)
    layers = list(range(1, traj.shape[1])) if layers is None else [int(t) for t in layers]
    return segment_spectra(f, traj, segments=[(t - 1, t) for t in layers], kind=kind, k=k,
                           **options)
