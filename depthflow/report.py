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
        if "phase_label" in ds:
            from .phases import describe_phases

            lines += ["phases:", *("  " + line for line in describe_phases(ds).splitlines())]
        lines += _dynamics(ds)
    return "\n".join(lines)


def _dynamics(ds) -> list[str]:
    """Headline numbers of the dynamics analyses (means over the kept trajectories)."""
    out = []
    n = D.DYN_SAMPLE
    if "dyn_spectral_radius" in ds:
        rho = ds["dyn_spectral_radius"].mean(n).dropna(D.STEP)
        out.append("  tangent spectral radius, layer: " + ", ".join(
            f"{int(t)}: {float(v):.3f}" for t, v in zip(rho[D.STEP].values, rho.values)))
    if "dyn_lyap_exponent_depth" in ds:
        out.append("  Lyapunov exponents along the trajectory (top): "
                   + _fmt(ds["dyn_lyap_exponent_depth"].mean(n).values[:4]))
    if "dyn_lyap_frozen_exponent" in ds:
        top = ds["dyn_lyap_frozen_exponent"].mean(n).isel({D.EXPONENT: 0})
        out.append("  top Lyapunov exponent of frozen layer: " + ", ".join(
            f"{int(t)}: {float(v):+.4f}" for t, v in zip(top[D.FROZEN_LAYER].values,
                                                         top.values)))
    for pre, what in (("dyn_fp_", "full state"), ("dyn_fpt_", "one token")):
        if f"{pre}status" not in ds:
            continue
        meanings = str(ds[f"{pre}status"].attrs.get("flag_meanings", "")).split()
        counts = np.bincount(ds[f"{pre}status"].values.astype(int), minlength=len(meanings))
        radius = ds[f"{pre}spectral_radius"].values if f"{pre}spectral_radius" in ds else []
        out.append(f"  fixed points (layer {ds.attrs.get(f'{pre}layer', '?')}, {what}): "
                   + ", ".join(f"{m} {c}" for m, c in zip(meanings, counts) if c)
                   + f"; {len(radius)} unique, spectral radius " + _fmt(radius[:4]))
    if "dyn_basin_fraction" in ds:
        frac = np.sort(ds["dyn_basin_fraction"].values)[::-1]
        out.append(f"  basins (layer {ds.attrs.get('dyn_basin_layer', '?')}): {len(frac)}, "
                   f"largest fractions " + _fmt(frac[:4]))
    if "dyn_recovery_ratio" in ds and "direction" in ds["dyn_recovery_ratio"].dims:
        ratio = ds["dyn_recovery_ratio"].mean([n, "draw", "perturb_angle"])
        for direction in ratio["direction"].values:
            r = ratio.sel(direction=direction).mean("inject_depth")
            out.append(f"  recovery ratio final/injected angle ({direction}): " + ", ".join(
                f"{k} {float(v):.2f}" for k, v in zip(r[D.KIND].values, r.values)))
    return ["dynamics (means over the kept trajectories):", *out] if out else []


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
