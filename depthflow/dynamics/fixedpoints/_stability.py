"""Linear stability of a fixed point from its converged tangent spectrum (private; see
:mod:`depthflow.dynamics.fixedpoints.fixed_points`).

With ``rho = max |eig|`` (top, always computed), ``m = min |eig|`` (bottom, computed only
when the top lies above the band) and the band ``[1 - tol, 1 + tol]`` around the unit
circle (``tol = marginal_tol``, default ``1e-3``). Any multiplier beyond ``1 + tol`` makes
the point unstable whatever the others are; the linearisation fails to decide only when
nothing lies beyond ``1 + tol``:

==============  ================================================================
attracting      ``rho < 1 - tol`` (every multiplier strictly inside the band)
marginal        ``rho`` in the band (nothing expanding beyond it; the linearisation does
                not decide: always non-hyperbolic)
repelling       ``rho > 1 + tol`` and ``m > 1 + tol`` (every multiplier beyond the band)
saddle          ``rho > 1 + tol`` and ``m < 1 - tol`` (expanding and contracting
                directions beyond the band)
unstable        ``rho > 1 + tol`` and the bottom in the band, not computed or not
                converged (an expanding direction; saddle or repelling not decided by the
                bottom)
unknown         the top of the spectrum not computed, not converged or not finite
==============  ================================================================

Separately, a point is flagged **non-hyperbolic** when some computed, converged multiplier
lies inside the band (:func:`non_hyperbolic`): always for ``marginal``; for ``unstable``
when the bottom is in the band; possibly for ``saddle`` (a multiplier in the band between
the two extremes). Multipliers between the top ``k`` and the bottom ``k_bottom`` are not
computed, so a ``False`` flag is exact only when those cover the whole spectrum.

A spectrum counts only when its eigensolver converged (``SpectrumResult.converged``); a
converged Newton iterate alone is not enough.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable


class Stability(enum.IntEnum):
    """Linear stability of a fixed point; ``message`` gives the definition used (the codes
    are those of file format 0.2 and earlier; only the rules changed)."""

    ATTRACTING = 0
    REPELLING = 1
    SADDLE = 2
    MARGINAL = 3
    UNSTABLE = 4
    UNKNOWN = 5

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Stability.ATTRACTING: "attracting: every tangent |eigenvalue| < 1 - marginal_tol",
    Stability.REPELLING: "repelling: every tangent |eigenvalue| > 1 + marginal_tol",
    Stability.SADDLE: ("saddle: some tangent |eigenvalue| > 1 + marginal_tol and the "
                       "smallest < 1 - marginal_tol"),
    Stability.MARGINAL: (
        "marginal (non-hyperbolic): the largest |eigenvalue| within marginal_tol of 1, none "
        "beyond 1 + marginal_tol; the linearisation does not decide"),
    Stability.UNSTABLE: (
        "unstable: the largest |eigenvalue| > 1 + marginal_tol and the smallest within "
        "marginal_tol of 1 (non-hyperbolic), not computed or not converged, so saddle or "
        "repelling is not decided; pass bottom=True or raise the eigensolver budget for the "
        "latter two"),
    Stability.UNKNOWN: (
        "unknown: the tangent eigensolver did not converge (or stability was not computed); "
        "raise eig_max_restarts / eig_ncv, loosen eig_tol, or use eig_method='dense'"),
}

NON_HYPERBOLIC = ("non-hyperbolic: some computed, converged tangent |eigenvalue| within "
                  "marginal_tol of 1 (a lower bound: eigenvalues between the top k and the "
                  "bottom k_bottom are not computed)")


def needs_bottom(top_modulus: float, top_converged: bool, tol: float) -> bool:
    """Whether the smallest moduli are needed to decide (the top is above the band)."""
    return bool(top_converged) and math.isfinite(top_modulus) and top_modulus > 1 + tol


def classify(top_modulus: float, top_converged: bool, bottom_modulus: float,
             bottom_converged: bool, tol: float) -> Stability:
    """Stability from the largest and smallest tangent eigenvalue moduli (module table);
    ``bottom_modulus`` NaN means not computed."""
    rho, m = float(top_modulus), float(bottom_modulus)
    if not top_converged or not math.isfinite(rho):
        return Stability.UNKNOWN
    if rho < 1 - tol:
        return Stability.ATTRACTING
    if rho <= 1 + tol:
        return Stability.MARGINAL
    if not bottom_converged or not math.isfinite(m):
        return Stability.UNSTABLE
    if m > 1 + tol:
        return Stability.REPELLING
    if m < 1 - tol:
        return Stability.SADDLE
    return Stability.UNSTABLE                        # expanding, and the bottom in the band


def non_hyperbolic(moduli: Iterable[float], tol: float) -> bool:
    """Whether some of the (computed, converged) multiplier moduli lie in the band
    ``[1 - tol, 1 + tol]``; NaN (not computed) entries are ignored."""
    return any(math.isfinite(v) and abs(v - 1.0) <= tol for v in map(float, moduli))
