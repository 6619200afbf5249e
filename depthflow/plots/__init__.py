"""Figures (PNG) from result files: one module per analysis family.

Shared here: :func:`pyplot` (the headless matplotlib setup), :func:`save_figure` (one atomic
save that respects the umask), :func:`write_figures` (a figure directory that appears
complete or not at all, with the same permissions as other outputs) and the colours of
token kinds. :mod:`~depthflow.plots.trajectories` draws the root group,
:mod:`~depthflow.plots.phases` the ``phases`` group, :mod:`~depthflow.plots.dynamics` the
``dynamics`` group.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from depthflow.errors import ConfigError, OutputError
from depthflow.io.files import atomic_dir, atomic_path
from depthflow.io.results import FIGURE_RECORD

__all__ = ["KIND_COLORS", "pyplot", "save_figure", "write_figures", "check_figure_dir"]

KIND_COLORS = {"cls": "tab:red", "distillation": "tab:orange", "register": "tab:green",
               "patch": "tab:blue"}


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Save ``fig`` as a PNG atomically (temporary file + rename, mode from the umask) and
    close it."""
    try:
        with atomic_path(path, overwrite=True) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        pyplot().close(fig)
    return Path(path)


def write_figures(tree: Any, out_dir: str | os.PathLike[str],
                  drawers: Sequence[Callable[[Any, Path], Any]], *,
                  overwrite: bool = False, record: Mapping[str, Any] | None = None
                  ) -> list[Path]:
    """Run every ``drawer(tree, tmp_dir)`` into a temporary directory, then rename it onto
    ``out_dir``: the figure directory appears complete or not at all (mode from the umask,
    like the NetCDF file). ``record`` (e.g. the SHA-256 of the result file the figures
    were drawn from) is written as ``depthflow-figures.json`` inside it, so that a figure
    set can be matched to its file."""
    check_figure_dir(out_dir, overwrite=overwrite)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for drawer in drawers:
            drawer(tree, tmp)
        if record is not None:
            (tmp / FIGURE_RECORD).write_text(json.dumps(dict(record), indent=1,
                                                        sort_keys=True) + "\n")
    return sorted(Path(out_dir).glob("*.png"))


def check_figure_dir(out_dir: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """The figure directory ``out_dir``, checked before any work starts."""
    if str(out_dir).strip() == "":
        raise ConfigError("the figure directory is empty; give a name or --no-figures")
    target = Path(out_dir)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"figure directory parent {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"figure directory parent {str(parent)!r} is not writable")
    if os.path.lexists(target) and not overwrite:
        raise OutputError(
            f"figure directory {str(target)!r} exists; pass --overwrite to replace it")
    if os.path.lexists(target) and not target.is_dir():
        raise OutputError(f"figure path {str(target)!r} exists and is not a directory")
    return target
