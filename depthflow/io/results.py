"""Reading result files back: :func:`open_result` returns the whole file as an
``xr.DataTree`` after checking that it is a depthflow file of the current layout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from depthflow.errors import InputError
from depthflow.io.files import sha256_file
from depthflow.core.vocabulary import FORMAT_VERSION

__all__ = ["open_result", "check_result", "FIGURE_RECORD", "figure_record", "figures_match"]

FIGURE_RECORD = "depthflow-figures.json"      # inside a figure folder: the file it shows


def open_result(path: str | os.PathLike[str]) -> Any:
    """Open a depthflow result file as an ``xr.DataTree`` (root = trajectory summaries,
    one child group per analysis).

    Raises
    ------
    InputError
        The path is missing, a directory, not NetCDF, not a depthflow file, or a file of
        an earlier layout (re-run ``depthflow analyze``).
    """
    import xarray as xr

    p = Path(path)
    if p.is_dir():
        raise InputError(f"{str(p)!r} is a directory, not a result file; give the .nc file "
                         "that depthflow analyze wrote")
    if not p.is_file():
        raise InputError(f"result file {str(p)!r} not found")
    try:
        tree = xr.open_datatree(p)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise InputError(f"{str(p)!r} is not a readable NetCDF file: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                         ) from exc
    try:
        check_result(tree, str(p))
    except InputError:
        tree.close()
        raise
    return tree


def check_result(tree: Any, name: str = "result") -> None:
    """Raise :class:`InputError` unless ``tree`` is a depthflow file of this layout."""
    attrs = tree.attrs
    if "depthflow_version" not in attrs:
        raise InputError(f"{name!r} is a NetCDF file but not a depthflow result (no "
                         "depthflow_version attribute)")
    version = str(attrs.get("depthflow_format_version", "1"))
    if version != FORMAT_VERSION:
        raise InputError(f"{name!r} was written in depthflow's result layout {version} "
                         f"(this depthflow reads layout {FORMAT_VERSION}: one group per "
                         "analysis); re-run depthflow analyze to get a readable file")


def figure_record(result: str | os.PathLike[str], name: str | os.PathLike[str]
                  ) -> dict[str, Any]:
    """What a figure folder records of the result file it was drawn from: the file's name
    and SHA-256 (``depthflow info`` compares them with the file next to it)."""
    from depthflow._version import __version__

    return {"result": Path(name).name, "result_sha256": sha256_file(result),
            "depthflow_version": __version__}


def figures_match(result: str | os.PathLike[str], figures: str | os.PathLike[str]
                  ) -> bool | None:
    """Whether the figure folder ``figures`` was drawn from ``result`` (None: the folder
    records nothing, e.g. figures of an older depthflow, or does not exist)."""
    try:
        record = json.loads((Path(figures) / FIGURE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record.get("result_sha256") == sha256_file(result)
