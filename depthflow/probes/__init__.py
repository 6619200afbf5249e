"""Per-depth linear probes: which depth (and token readout) of a model carries the labels.

:func:`probe_depths` fits, per depth and readout, a standardised logistic regression (C by
inner cross-validation) and a k-nearest-neighbour classifier under outer k-fold
cross-validation; :class:`ProbeAnalysis` is the ``depthflow analyze`` plug-in (group
``probes``, ``--set probes.KEY=VALUE``) that streams the features into bounded per-depth
buffers. Definitions: ``docs/methods.md`` (per-depth linear probes).
"""

from depthflow.probes.analysis import ProbeAnalysis, ProbeConfig
from depthflow.probes.features import READOUTS, FeatureBuffer, readout_features
from depthflow.probes.fit import ProbeScores, fit_probe, probe_depths, probe_scores

__all__ = ["ProbeAnalysis", "ProbeConfig", "READOUTS", "FeatureBuffer", "readout_features",
           "ProbeScores", "fit_probe", "probe_depths", "probe_scores"]
