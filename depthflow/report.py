"""Readable summaries of result files (``depthflow info``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import dims as D
from .errors import InputError


def open_result(path: str | os.PathLike[str]):
    """Open a depthflow NetCDF file with plain xarray, as a clear error if impossible."""
    import xarray as xr

    p = Path(path)
    if not p.is_file():
        raise InputError(f"result file {str(p)!r} not found")
    try:
        return xr.open_dataset(p)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{str(p)!r} is not a readable NetCDF file: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def _fmt(values) -> str:
    return " ".join(f"{v:6.3f}" for v in np.asarray(values, dtype=float))


def describe(path: str | os.PathLike[str]) -> str:
    """A few screens of text: provenance, dimensions, variables and headline curves."""
    ds = open_result(path)
    with ds:
        a = ds.attrs
        lines = [f"{path}: {a.get('title', 'NetCDF file')}"]
        for key in ("checkpoint", "checkpoint_format", "checkpoint_sha256", "images",
                    "num_samples", "compute_dtype", "device", "head_accuracy", "history",
                    "depthflow_version", "torch_version"):
            if key in a:
                lines.append(f"  {key:18s} {a[key]}")
        if "architecture" in a:
            arch = json.loads(a["architecture"])
            lines.append("  architecture       " + ", ".join(
                f"{k}={arch[k]}" for k in ("depth", "embed_dim", "num_heads", "patch_size",
                                           "num_register_tokens", "mlp") if k in arch))
        lines.append("dimensions: " + ", ".join(f"{k}={v}" for k, v in ds.sizes.items()))
        lines.append("variables:")
        for name, var in ds.data_vars.items():
            lines.append(f"  {name:32s} ({', '.join(var.dims)})  "
                         f"{var.attrs.get('long_name', '')}")
        lines += _curves(ds)
    return "\n".join(lines)


def _curves(ds) -> list[str]:
    out = []
    if D.DEPTH in ds.dims:
        out.append(f"per-depth means (depth {int(ds[D.DEPTH][0])}..{int(ds[D.DEPTH][-1])}):")
    for name in ("norm", "gamma"):
        if name in ds and D.SAMPLE in ds[name].dims:
            for kind in ds[D.KIND].values:
                out.append(f"  {name:8s} {str(kind):9s}"
                           + _fmt(ds[name].sel({D.KIND: kind}).mean(D.SAMPLE).values))
    if "angular_speed" in ds:
        for kind in ds[D.KIND].values:
            out.append(f"  speed    {str(kind):9s}      "
                       + _fmt(ds["angular_speed"].sel({D.KIND: kind}).mean(D.SAMPLE).values))
    if "patch_coherence" in ds:
        out.append("  coherence patch    " + _fmt(ds["patch_coherence"].mean(D.SAMPLE).values))
    if "update_stable_rank" in ds:
        out.append("  stable rank/img          "
                   + _fmt(ds["update_stable_rank"].mean(D.SAMPLE).values))
    if "population_stable_rank" in ds:
        for kind in ds[D.KIND].values:
            out.append(f"  stable rank {str(kind):9s}  "
                       + _fmt(ds["population_stable_rank"].sel({D.KIND: kind}).values))
    if "cls_class_separation" in ds:
        out.append("  cls class sep.     " + _fmt(ds["cls_class_separation"].values))
    return out
