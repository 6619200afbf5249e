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

__all__ = ["open_result", "check_result", "check_complete", "FIGURE_RECORD", "figure_record",
           "figures_match"]

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
    check_complete(tree, name)


def check_complete(tree: Any, name: str = "result") -> None:
    """Raise :class:`InputError` when a group or variable that the file lists in its
    ``depthflow_variables`` attribute (written when the file was committed) is missing, or
    when that record is malformed: the file was changed after depthflow wrote it. Files
    written before the record existed are not checked."""
    from depthflow.io.netcdf import VARIABLES_ATTR

    raw = tree.attrs.get(VARIABLES_ATTR)
    if raw is None:
        return
    try:
        listed = json.loads(str(raw))
        if not isinstance(listed, dict) or not all(
                isinstance(g, str) and isinstance(v, list) for g, v in listed.items()):
            raise ValueError("not a mapping of groups to variable lists")
    except ValueError as exc:
        raise InputError(f"{name!r} is damaged: its {VARIABLES_ATTR} attribute is not the "
                         f"record depthflow writes ({exc}); re-run depthflow analyze") from None
    for group, variables in sorted(listed.items()):
        path = group.strip("/")
        try:
            node = tree[path] if path else tree
        except KeyError:
            raise InputError(f"{name!r} is damaged: group {group!r} is missing (the file "
                             "lists it); re-run depthflow analyze") from None
        have = set(node.dataset.variables)
        missing = [v for v in variables if v not in have]
        if missing:
            raise InputError(f"{name!r} is damaged: variable {missing[0]!r} of group "
                             f"{group!r} is missing"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                             + "; re-run depthflow analyze")


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
