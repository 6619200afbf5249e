"""Provenance attributes recorded in every result file."""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from depthflow._version import __version__


def versions() -> dict[str, str]:
    import numpy
    import torch
    import xarray

    return {"depthflow": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "xarray": xarray.__version__, "python": platform.python_version()}


def provenance(*, config: Mapping[str, Any], command: Sequence[str] | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Global attributes: versions, JSON config, command line, creation time."""
    v = versions()
    attrs: dict[str, Any] = {
        "Conventions": "CF-1.11",
        "source": "depthflow " + v["depthflow"],
        "history": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ") + " " + shlex.join(command if command is not None
                                                     else sys.argv),
        "command": shlex.join(command if command is not None else sys.argv),
        "config": json.dumps(dict(config), sort_keys=True, default=str),
        "platform": platform.platform(),
    }
    attrs.update({f"{k}_version": val for k, val in v.items()})
    attrs.update(extra or {})
    return attrs


def resumed_provenance(original: Mapping[str, Any] | None, current: Mapping[str, Any]
                       ) -> dict[str, Any]:
    """Provenance of a resumed run: the ``original`` run's (its command line and creation
    time kept), with ``resume_history`` listing every resume (time and command line) after
    it, the ``current`` one last. Without an original record, ``current`` is returned."""
    if not original or "command" not in original:
        return dict(current)
    history = list(original.get("resume_history") or [])
    history.append({"time": str(current.get("history", "")).split(" ", 1)[0],
                    "command": current.get("command", "")})
    return {**original, "resume_history": history}
