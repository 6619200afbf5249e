"""Readable summaries of result files (``depthflow info``): provenance, the root group's
curves, and a short block per analysis group."""

from __future__ import annotations

import json
import os

import numpy as np

from depthflow import vocabulary as D
from depthflow.io.results import open_result
from depthflow.phases.datasets import describe_phases


def _fmt(values) -> str:
    return " ".join(f"{v:6.3f}" for v in np.asarray(values, dtype=float))


def describe(path: str | os.PathLike[str]) -> str:
    """A few screens of text: provenance, groups, variables and headline curves."""
    with open_result(path) as tree:
        ds = tree.to_dataset(inherit=False)
        a = tree.attrs
        lines = [f"{path}: {a.get('title', 'NetCDF file')}"]
        for key in ("checkpoint", "checkpoint_format", "checkpoint_sha256", "images",
                    "num_samples", "compute_dtype", "device", "head_accuracy", "history",
                    "depthflow_version", "torch_version"):
            if key in a:
                lines.append(f"  {key:18s} {a[key]}")
        lines += _architecture(a)
        lines.append("groups: " + ", ".join(["/", *(n.path for n in tree.subtree
                                                    if n is not tree)]))
        lines.append("root dimensions: " + ", ".join(f"{k}={v}" for k, v in ds.sizes.items()))
        lines.append("root variables:")
        for name, var in ds.data_vars.items():
            lines.append(f"  {name:32s} ({', '.join(var.dims)})  "
                         f"{var.attrs.get('long_name', '')}")
        lines += _curves(ds)
        if "phases" in tree.children:
            lines += ["phases:", *("  " + line for line in
                                   describe_phases(tree["phases"]).splitlines())]
        if "dynamics" in tree.children:
            lines += _dynamics(tree["dynamics"])
    return "\n".join(lines)


def _architecture(a) -> list[str]:
    """The architecture line: a Raptor's own (k blocks and thresholds) when the file was
    written from a Raptor, else the ViT's."""
    if "architecture" not in a:
        return []
    arch = json.loads(a["architecture"])
    line = "  architecture       " + ", ".join(
        f"{k}={arch[k]}" for k in ("depth", "embed_dim", "num_heads", "patch_size",
                                   "num_register_tokens", "mlp") if k in arch)
    info = a.get("model_info")
    raptor = None
    if info:
        try:
            raptor = json.loads(json.loads(info).get("raptor") or "null")
        except (TypeError, ValueError, AttributeError):
            raptor = None
    if raptor:
        return [f"  raptor             k={len(raptor['thresholds']) + 1} blocks, thresholds "
                f"{raptor['thresholds']}, mlp={raptor.get('mlp')} (teacher: "
                f"{line.strip().removeprefix('architecture').strip()})"]
    return [line]


def _dynamics(node) -> list[str]:
    """Headline numbers of the dynamics groups (means over the kept trajectories)."""
    out = []
    n = D.SUBSAMPLE
    if "spectra" in node.children:
        sp = node["spectra"].to_dataset()
        rho = sp["spectral_radius"].mean(n)
        out.append("  tangent spectral radius, layer: " + ", ".join(
            f"{int(t)}: {float(v):.3f}" for t, v in zip(rho[D.LAYER].values, rho.values)))
    if "lyapunov" in node.children:
        out.append("  Lyapunov exponents along the trajectory (top): "
                   + _fmt(node["lyapunov"]["exponents"].mean(n).values[:4]))
    if "lyapunov_frozen" in node.children:
        top = node["lyapunov_frozen"]["exponents"].mean(n).isel({D.EXPONENT: 0})
        out.append("  top Lyapunov exponent of frozen layer: " + ", ".join(
            f"{int(t)}: {float(v):+.4f}" for t, v in zip(top[D.FROZEN_LAYER].values,
                                                         top.values)))
    for group, what in (("fixed_points", "full state"), ("fixed_points_token", "one token")):
        if group not in node.children:
            continue
        fp = node[group]
        meanings = str(fp["status"].attrs.get("flag_meanings", "")).split()
        counts = np.bincount(fp["status"].values.astype(int), minlength=len(meanings))
        radius = fp["spectral_radius"].values if "spectral_radius" in fp else []
        out.append(f"  fixed points (layer {fp.attrs.get('layer', '?')}, {what}): "
                   + ", ".join(f"{m} {c}" for m, c in zip(meanings, counts) if c)
                   + f"; {len(radius)} unique, spectral radius " + _fmt(radius[:4]))
    if "basins" in node.children:
        frac = np.sort(node["basins"]["fraction"].values)[::-1]
        out.append(f"  basins (layer {node['basins'].attrs.get('layer', '?')}): {len(frac)}, "
                   f"largest fractions " + _fmt(frac[:4]))
    if "recovery" in node.children:
        ratio = node["recovery"]["ratio"].mean([n, "draw", "perturb_angle"])
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
