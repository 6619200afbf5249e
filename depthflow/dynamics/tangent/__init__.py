"""Tangent dynamics: finite-depth Lyapunov spectra of the real model and per-layer
stretching (``finite_depth``, ``stretching``, with ``_bidiag`` and ``_propagator``), tangent
spectra of one map (``spectra``, ``_linalg``) and asymptotic QR spectra of iterated maps
(``lyapunov``)."""
