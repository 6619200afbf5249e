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

__all__ = ["KIND_COLORS", "pyplot", "save_figure", "write_figures", "check_figure_dir",
           "figure_manifest"]

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
    """Run every ``drawer(tree, tmp_dir)`` into a temporary directory, then move it onto
    ``out_dir``: a new figure directory appears complete or not at all (mode from the
    umask, like the NetCDF file). ``depthflow-figures.json`` inside it is the manifest: the
    files depthflow wrote there (``files``) and ``record`` (e.g. the SHA-256 of the result
    file the figures were drawn from), so that a figure set can be matched to its file.

    With ``overwrite``, an existing figure directory must hold depthflow's manifest; only
    the files it lists are replaced or removed, never others (a file of the new set whose
    name is taken by a file depthflow did not write is refused, nothing changed)."""
    check_figure_dir(out_dir, overwrite=overwrite)
    with atomic_dir(out_dir, overwrite=overwrite, replace=_merge_figures) as tmp:
        for drawer in drawers:
            drawer(tree, tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")
                       if p.is_file() and p.name != FIGURE_RECORD)
        manifest = {**dict(record or {}), "files": files}
        (tmp / FIGURE_RECORD).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return sorted(Path(out_dir).glob("*.png"))


def figure_manifest(out_dir: str | os.PathLike[str]) -> list[str] | None:
    """The files depthflow wrote in figure directory ``out_dir`` (None: no manifest).
    A manifest of an older depthflow (no ``files`` list) counts the top-level PNG files,
    the only files it wrote."""
    path = Path(out_dir) / FIGURE_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    files = record.get("files")
    if files is None:
        return sorted(p.name for p in Path(out_dir).glob("*.png"))
    return [str(f) for f in files if isinstance(f, str)]


def _merge_figures(tmp: Path, final: Path) -> None:
    """Move the new figure set ``tmp`` onto the existing directory ``final``: when
    ``final`` holds only depthflow's files, by swapping the directories (atomic); else
    file by file, keeping every file depthflow did not write."""
    import shutil

    from depthflow.io.files import temp_name

    listed = set(figure_manifest(final) or []) | {FIGURE_RECORD}
    present = {str(p.relative_to(final)) for p in final.rglob("*") if not p.is_dir()}
    new = {str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir()}
    foreign = sorted(present - listed)
    clash = sorted(name for name in new if name in foreign)
    if clash:
        raise OutputError(f"figure directory {str(final)!r} holds {clash[0]!r}, which "
                          "depthflow did not write; choose another figure directory")
    if not foreign:
        old = final.parent / temp_name(final.name)
        os.replace(final, old)          # a rename: the old set stays whole until the new
        os.replace(tmp, final)          # one is in place
        shutil.rmtree(old, ignore_errors=True)
        return
    for name in sorted(new - {FIGURE_RECORD}):
        (final / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / name, final / name)
    for name in sorted(listed & present - new - {FIGURE_RECORD}):
        (final / name).unlink(missing_ok=True)
    os.replace(tmp / FIGURE_RECORD, final / FIGURE_RECORD)
    shutil.rmtree(tmp, ignore_errors=True)


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
    if target.is_dir() and figure_manifest(target) is None and any(target.iterdir()):
        raise OutputError(
            f"figure directory {str(target)!r} exists and was not written by depthflow (no "
            f"{FIGURE_RECORD}); --overwrite only replaces depthflow's own figures: choose "
            "another directory")
    return target
