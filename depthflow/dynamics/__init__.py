"""Dynamics of depth maps (``docs/methods.md``, section "Dynamics"): finite-depth Lyapunov
spectra and per-layer stretching of the real model, fixed points with their stability,
class-dependent basins and their robustness, perturbation recovery, asymptotic spectra of
iterated maps, and oracle maps with known answers. Public names are re-exported here; the
``depthflow analyze`` plug-in is :mod:`depthflow.dynamics.analysis`."""

from depthflow.dynamics import oracles
from depthflow.dynamics.attractors.basin_robustness import (AttractorClassResult, RobustnessResult,
                                                            attractor_classes, basin_robustness)
from depthflow.dynamics.attractors.basins import (BASIN_STATUS, BasinResult, BasinStatus,
                                                  basins_fractions, random_directions)
from depthflow.dynamics.attractors.class_basins import ClassBasinResult, class_basins
from depthflow.dynamics.tangent.finite_depth import (FiniteDepthResult, FiniteDepthStatus,
                                                     Propagator, finite_depth_spectrum)
from depthflow.dynamics.fixedpoints.fixed_points import (EigStatus, FixedPointResult,
                                                         FixedPointStatus, Stability,
                                                         find_fixed_points, restrict_token,
                                                         starts_from)
from depthflow.dynamics.tangent.lyapunov import (LYAP_STATUS, LyapunovResult, LyapunovStatus,
                                                 lyapunov_spectrum)
from depthflow.dynamics.fixedpoints.norm_sensitivity import NormScanResult, scan_reference_norms
from depthflow.dynamics.recovery import (AdversarialStatus, RecoveryResult,
                                         perturbation_recovery)
from depthflow.dynamics.tangent.spectra import (SpectrumResult, TangentOperator, eigvals,
                                                singular_values, token_jacobians)
from depthflow.dynamics.tangent.stretching import SegmentSpectra, layer_stretching, segment_spectra

__all__ = [
    "oracles", "finite_depth_spectrum", "FiniteDepthResult", "FiniteDepthStatus", "Propagator",
    "layer_stretching", "segment_spectra", "SegmentSpectra",
    "find_fixed_points", "starts_from", "restrict_token", "FixedPointResult",
    "FixedPointStatus", "Stability", "EigStatus", "scan_reference_norms", "NormScanResult",
    "class_basins", "ClassBasinResult", "basin_robustness", "RobustnessResult",
    "attractor_classes", "AttractorClassResult", "basins_fractions", "BasinResult",
    "BasinStatus", "BASIN_STATUS", "random_directions",
    "perturbation_recovery", "RecoveryResult", "AdversarialStatus",
    "lyapunov_spectrum", "LyapunovResult", "LyapunovStatus", "LYAP_STATUS",
    "eigvals", "singular_values", "token_jacobians", "SpectrumResult", "TangentOperator",
]
