"""Every figure of a result file, drawn into a folder and sorted into report sections."""

from __future__ import annotations

from pathlib import Path

__all__ = ["draw_all", "section_of"]

_PREFIXES = (("phase_", "phases"), ("probes_", "probes"), ("dynamics_basins", "basins"),
             ("dynamics_recovery", "recovery"), ("dynamics_", "dynamics"),
             ("compare", "compare"), ("raptor", "raptor"), ("fidelity", "raptor"))
_TOKEN = {"overview"}


def section_of(name: str) -> str | None:
    """The report section of a figure file name (``None``: not shown, e.g. single panels
    that ``overview.png`` already holds)."""
    stem = Path(name).stem
    if stem in _TOKEN:
        return "tokens"
    for prefix, section in _PREFIXES:
        if stem.startswith(prefix):
            return section
    return None if stem in {"gamma", "norm", "angular_speed", "patch_coherence", "update_rank",
                            "class_separation"} else "other"


def draw_all(tree, out_dir: Path) -> list[Path]:
    """Draw every figure the groups of ``tree`` support into ``out_dir`` (existing)."""
    from depthflow.compare.plot import plot_compare
    from depthflow.plots.branches import plot_branches
    from depthflow.plots.dynamics import plot_dynamics
    from depthflow.plots.phases import plot_phases
    from depthflow.plots.trajectories import available_panels, draw_token_dynamics
    from depthflow.probes.plot import plot_probes

    out: list[Path] = []
    children = tree.children
    if available_panels(tree.to_dataset(inherit=False)):
        out += draw_token_dynamics(tree, out_dir)
    if "phases" in children:
        out += plot_phases(tree["phases"], out_dir)
    if "probes" in children:
        out += plot_probes(tree, out_dir)
    if "dynamics" in children:
        out += plot_dynamics(tree["dynamics"], out_dir)
        if "branches" in tree["dynamics"].children:
            out += plot_branches(tree["dynamics"]["branches"], out_dir)
    if "compare" in children:
        out += plot_compare(tree, out_dir)
    return out
