"""The plug-ins of ``depthflow analyze``, built from CLI-style choices.

Each entry of :data:`PLUGINS` names an analysis, its options dataclass and its class;
``--set NAME.KEY=VALUE`` overrides a field of that dataclass (``--set phases.swap_trials=64``,
``--set dynamics.samples=16``).
"""

from __future__ import annotations

from collections.abc import Sequence

from depthflow.analysis.context import Analysis
from depthflow.core.config import parse_assignments
from depthflow.dynamics.analysis import ANALYSES, DynamicsAnalysis, DynamicsConfig
from depthflow.errors import ConfigError
from depthflow.phases.analysis import PhaseAnalysis, PhaseConfig
from depthflow.probes.analysis import ProbeAnalysis, ProbeConfig

__all__ = ["PLUGINS", "build_analyses", "split_options"]

PLUGINS = {"phases": (PhaseConfig, PhaseAnalysis), "dynamics": (DynamicsConfig, DynamicsAnalysis),
           "probes": (ProbeConfig, ProbeAnalysis)}


def split_options(options: Sequence[str]) -> dict[str, list[str]]:
    """``["phases.k_max=3", "dynamics.samples=4"]`` -> per-plug-in ``key=value`` lists."""
    out: dict[str, list[str]] = {name: [] for name in PLUGINS}
    for key, value in parse_assignments(options, what="--set option").items():
        plugin, dot, field = key.partition(".")
        if not dot or plugin not in PLUGINS:
            raise ConfigError(f"--set {key}={value}: expected ANALYSIS.KEY=VALUE with ANALYSIS "
                              f"one of {', '.join(PLUGINS)} (e.g. phases.swap_trials=64)")
        out[plugin].append(f"{field}={value}")
    return out


def _check_read(assignments: Sequence[str], chosen: Sequence[str]) -> None:
    """``--set dynamics.KEY`` of a known key that no analysis reads: an error (it would be
    recorded in the result without any effect); of a key read only by an analysis that is
    not run this time: a one-line warning (budgets are often shared between runs)."""
    owner = {key: name for name, keys in DynamicsConfig.READ_BY.items() for key in keys}
    for item in assignments:
        key = item.partition("=")[0].strip()
        if key not in owner:
            continue
        if owner[key] is None:
            raise ConfigError(f"--set dynamics.{key}: no analysis of this version reads "
                              f"{key}; drop it (it would be recorded without effect)")
        if owner[key] not in chosen:
            import logging
            logging.getLogger("depthflow").warning(
                "depthflow: --set dynamics.%s has no effect: only the %s analysis reads it, "
                "and it is not run (--dynamics %s)", key, owner[key], ",".join(chosen))


def build_analyses(*, phases: bool = True, dynamics: str | Sequence[str] = "all",
                   options: Sequence[str] = (), seed: int = 0,
                   probes: bool | None = None, quiet: Sequence[str] = ()) -> list[Analysis]:
    """The plug-ins of ``depthflow analyze``.

    ``dynamics``: ``"all"``, ``"none"`` or a comma list of
    :data:`depthflow.dynamics.analysis.ANALYSES`; ``options``: ``ANALYSIS.KEY=VALUE``
    overrides of :class:`~depthflow.phases.analysis.PhaseConfig` /
    :class:`~depthflow.dynamics.analysis.DynamicsConfig` /
    :class:`~depthflow.probes.analysis.ProbeConfig` fields. Seeds default to ``seed``.
    ``probes``: run the per-depth probes (``None``: when a ``probes.*`` option is given).
    ``quiet``: options among ``options`` that are defaults of the caller (the demo's
    budgets), not the user's: no warning when the analysis that reads them is not run.
    """
    quiet = {q.split(".", 1)[1].replace(" ", "") for q in quiet if "." in q}
    per = split_options(options)
    out: list[Analysis] = []
    if probes is None:
        probes = bool(per["probes"])
    extra: list[Analysis] = []
    if probes:
        extra.append(ProbeAnalysis(ProbeConfig(seed=seed).with_overrides(per["probes"])))
    elif per["probes"]:
        raise ConfigError("probes options were given but probes are switched off")
    if phases:
        out.append(PhaseAnalysis(PhaseConfig(seed=seed).with_overrides(per["phases"])))
    elif per["phases"]:
        raise ConfigError("phase options were given but phases are switched off")
    chosen = dynamics.split(",") if isinstance(dynamics, str) else list(dynamics)
    chosen = [c.strip() for c in chosen if c.strip()]
    if chosen == ["all"]:
        chosen = list(ANALYSES)
    if chosen in ([], ["none"]):
        if per["dynamics"]:
            raise ConfigError("dynamics options were given but --dynamics is none")
        return out + extra
    unknown = [c for c in chosen if c not in ANALYSES]
    if unknown:
        raise ConfigError(f"--dynamics: unknown analyses {unknown}; give 'all', 'none' or a "
                          f"comma list of {', '.join(ANALYSES)}")
    _check_read([a for a in per["dynamics"] if a not in quiet], chosen)
    cfg = DynamicsConfig(analyses=tuple(chosen), seed=seed).with_overrides(per["dynamics"])
    out.append(DynamicsAnalysis(cfg))
    return out + extra
