"""Linear stability of a fixed point from its converged tangent spectrum (private; see
:mod:`depthflow.dynamics.fixed_points`).

Only the extreme moduli matter: with ``rho = max |eig|`` (top, always computed) and
``m = min |eig|`` (bottom, computed only when the top does not decide) and the band
``[1 - tol, 1 + tol]`` around the unit circle (``tol = marginal_tol``, default ``1e-3``):

==============  ================================================================
attracting      ``rho < 1 - tol`` (every eigenvalue strictly inside the band)
repelling       ``m > 1 + tol`` (every eigenvalue strictly outside)
saddle          ``rho > 1 + tol`` and ``m < 1 - tol`` (both kinds of directions)
marginal        some ``|eig|`` in the band and not both kinds beyond it: ``rho`` in the
                band, or ``rho > 1 + tol`` with ``m`` in the band (non-hyperbolic: the
                linearisation does not decide)
unstable        ``rho > 1 + tol`` and the bottom of the spectrum not computed or not
                converged (an expanding direction; saddle or repelling undecided)
unknown         the top of the spectrum not computed, not converged or not finite
==============  ================================================================

A spectrum counts only when its eigensolver converged (``SpectrumResult.converged``); a
converged Newton iterate alone is not enough.
"""

from __future__ import annotations

import enum
import math



class Stability(enum.IntEnum):
    """Linear stability of a fixed point; ``message`` gives the definition used."""

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
    Stability.SADDLE: ("saddle: some tangent |eigenvalue| > 1 + marginal_tol and some "
                       "< 1 - marginal_tol"),
    Stability.MARGINAL: (
        "marginal (non-hyperbolic): some |eigenvalue| within marginal_tol of 1 and not both "
        "expanding and contracting directions beyond it; the linearisation does not decide"),
    Stability.UNSTABLE: (
        "unstable: the largest |eigenvalue| > 1 + marginal_tol, the smallest not computed or "
        "not converged (saddle or repelling undecided): pass bottom=True or raise the "
        "eigensolver budget"),
    Stability.UNKNOWN: (
        "unknown: the tangent eigensolver did not converge (or stability was not computed); "
        "raise eig_max_restarts / eig_ncv, loosen eig_tol, or use eig_method='dense'"),
}


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
    return Stability.MARGINAL
