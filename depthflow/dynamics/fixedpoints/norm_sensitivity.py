"""How fixed points and basins of an iterated sphere map depend on its reference norms.

A sphere map ``F_hat(u) = F(r u) / ||F(r u)||`` (:func:`depthflow.dynamics.maps.sphere`) depends on the
reference token norms ``r``, a free choice (docs/methods.md): a residual block is not
homogeneous, so its directional dynamics at ``r / 2`` and ``2 r`` differ.
:func:`scan_reference_norms` reruns the fixed-point search (and, when starts are given, the basin iteration) with ``r``
scaled by each factor in ``scales`` and reports per scale the number of distinct fixed
points, how many starts found each, their stability, and the basin fractions. The scaled
norms are recorded in the output (``reference_norm``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from depthflow.core import vocabulary as dims
from depthflow.errors import ConfigError
from depthflow.dynamics.maps import SphereMap, require_autonomous, sphere
from depthflow.dynamics.fixedpoints._stability import Stability
from depthflow.dynamics.attractors.basins import basins_fractions
from depthflow.dynamics.fixedpoints.fixed_points import (FixedPointResult, depth_index_attrs,
                                                         find_fixed_points)
from depthflow.core.vocabulary import flags

__all__ = ["NormScanResult", "scan_reference_norms"]

NORM_SCALE = "norm_scale"      # factor applied to the reference norms r


@dataclasses.dataclass
class NormScanResult:
    """Per scale: a :class:`~depthflow.dynamics.fixedpoints.fixed_points.FixedPointResult` and, when
    basin starts were given, the basin fractions (``(M + 1,)`` over labels ``-1..M-1``)."""

    scales: list[float]
    results: list[FixedPointResult]
    basin_fractions: list[Tensor] | None
    basin_steps: int
    basin_tol: float
    map_info: dict[str, Any]
    depth_attrs: dict[str, Any]

    @property
    def n_distinct(self) -> list[int]:
        return [r.n_distinct for r in self.results]

    def to_dataset(self) -> xr.Dataset:
        """Dims ``norm_scale``, ``fixed_point`` (padded with NaN / -1 to the largest count
        over scales), ``token``, ``basin``; plain variable names."""
        S, P = NORM_SCALE, dims.FIXED_POINT
        K = max([r.n_distinct for r in self.results] + [1])
        n = len(self.scales)

        def pad(values: list[Tensor], fill: float, dtype) -> np.ndarray:
            out = np.full((n, K), fill, dtype=dtype)
            for i, v in enumerate(values):
                out[i, :len(v)] = v.cpu().numpy()
            return out

        def da(v, d, long_name, units="1", **attrs):
            return xr.DataArray(v, dims=d, attrs={"long_name": long_name, "units": units,
                                                  **attrs})

        res = self.results
        T = res[0].x.shape[-2]
        norms = np.stack([r.reference_norms.double().expand(T).numpy() if
                          r.reference_norms.ndim <= 1 else np.full(T, np.nan) for r in res])
        data = {
            "reference_norm": da(norms, (S, dims.TOKEN), "reference token norms r of the "
                                 "sphere map at this scale", "activation units"),
            "n_distinct": da(np.array(self.n_distinct, np.int32), S,
                             "number of distinct fixed points"),
            "n_converged": da(np.array([int(r.success.sum()) for r in res], np.int32), S,
                              "starts that converged to a fixed point"),
            "n_starts_found": da(pad([r.n_starts_found for r in res], -1, np.int32), (S, P),
                                 "starts that converged to this fixed point (-1: padding)"),
            "stability": da(pad([r.stability for r in res], -1, np.int8), (S, P),
                            "linear stability from the converged tangent spectrum "
                            "(-1: padding)", **flags(Stability)),
            "non_hyperbolic": da(pad([r.non_hyperbolic.to(torch.int8) for r in res], -1,
                                     np.int8), (S, P), "1: some computed, converged tangent "
                                 "|eigenvalue| within marginal_tol of 1 (-1: padding)"),
            "spectral_radius": da(pad([r.spectral_radius for r in res], np.nan, np.float64),
                                  (S, P), "largest |eigenvalue| of the tangent Jacobian"),
            "min_modulus": da(pad([r.min_modulus for r in res], np.nan, np.float64), (S, P),
                              "smallest |eigenvalue| of the tangent Jacobian (NaN: not "
                              "computed)"),
        }
        coords = {S: (S, np.asarray(self.scales, np.float64),
                      {"long_name": "factor applied to the reference norms r", "units": "1"})}
        if self.basin_fractions is not None:
            M = max(len(b) for b in self.basin_fractions)
            frac = np.full((n, M), np.nan)
            for i, b in enumerate(self.basin_fractions):
                frac[i, :len(b)] = b.numpy()
            data["basin_fraction"] = da(frac, (S, dims.BASIN), "fraction of basin starts "
                                        "whose end point is in this basin (label -1: none)")
            data["n_basins"] = da(np.array([len(b) - 1 for b in self.basin_fractions],
                                           np.int32), S, "attractors found by iteration")
            coords[dims.BASIN] = (dims.BASIN, np.arange(-1, M - 1),
                                  {"long_name": "basin label (-1 = none)", "units": "1"})
        attrs = {"analysis": "reference_norm_scan", "map": json.dumps(self.map_info,
                                                                      sort_keys=True),
                 "fixed_point_config": json.dumps(res[0].config, sort_keys=True),
                 "basin_steps": int(self.basin_steps), "basin_tol": float(self.basin_tol),
                 **self.depth_attrs}
        return xr.Dataset(data, coords=coords, attrs=attrs)


def scan_reference_norms(f: SphereMap, starts: Tensor, *,
                         scales: Sequence[float] = (0.5, 1.0, 2.0),
                         basin_starts: Tensor | None = None, basin_steps: int = 100,
                         basin_tol: float = 0.1, **options: Any) -> NormScanResult:
    """Fixed points (and basins) of ``f`` with its reference norms ``r`` scaled.

    Parameters
    ----------
    f : SphereMap
        An autonomous sphere map ``maps.sphere(maps.frozen(F, t), r)``.
    starts : Tensor (N, T, D)
        Fixed-point starts (unit per token), the same for every scale.
    scales : factors applied to ``r`` (positive; 1 reproduces ``f``).
    basin_starts : Tensor (M, T, D), optional
        Directions iterated ``basin_steps`` times per scale (state scope); their end points
        are clustered at ``basin_tol`` rad (:func:`~depthflow.dynamics.attractors.basins.basins_fractions`).
    **options
        Passed to :func:`~depthflow.dynamics.fixedpoints.fixed_points.find_fixed_points`.
    """
    if not isinstance(f, SphereMap):
        raise ConfigError(f"scan_reference_norms needs a sphere map (maps.sphere(F, r)), got "
                          f"{getattr(f, 'name', type(f).__name__)}")
    require_autonomous(f, "scan_reference_norms")
    scales = [float(s) for s in scales]
    if not scales or any(not (s > 0 and math.isfinite(s)) for s in scales):
        raise ConfigError(f"scales must be positive finite factors, got {scales}")
    results, fractions = [], [] if basin_starts is not None else None
    for s in scales:
        g = sphere(f.base, f.norms * s, source=f"{f.source}, scaled by {s:g}")
        results.append(find_fixed_points(g, starts, **options))
        if fractions is not None:
            b = basins_fractions(g, basin_starts, steps=basin_steps, tol_angle=basin_tol,
                                 scope="state")
            fractions.append(b.fractions.double().cpu())
    return NormScanResult(scales, results, fractions, basin_steps, basin_tol, f.describe(),
                          depth_index_attrs(f))
