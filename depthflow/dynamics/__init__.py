"""Dynamics of depth maps: spectra, fixed points, oracles (and, from part B, Lyapunov
spectra, basins and perturbation recovery). Public names are re-exported here."""

from depthflow.dynamics.fixed_points import (FixedPointResult, FixedPointStatus, find_fixed_points,
                           restrict_token, starts_from)
from depthflow.dynamics.spectra import SpectrumResult, TangentOperator, eigvals, singular_values, token_jacobians
from depthflow.dynamics import oracles
from depthflow.dynamics.basins import BASIN_STATUS, BasinResult, basins_fractions, random_directions
from depthflow.dynamics.lyapunov import LYAP_STATUS, LyapunovResult, lyapunov_spectrum
from depthflow.dynamics.recovery import RecoveryResult, perturbation_recovery

__all__ = [
    "FixedPointResult", "FixedPointStatus", "find_fixed_points", "restrict_token",
    "starts_from", "SpectrumResult", "TangentOperator", "eigvals", "singular_values",
    "token_jacobians", "oracles",
    "LyapunovResult", "lyapunov_spectrum", "LYAP_STATUS",
    "BasinResult", "basins_fractions", "random_directions", "BASIN_STATUS",
    "RecoveryResult", "perturbation_recovery",
]
