"""Readable summaries of result files (``depthflow info``): provenance, the root group's
curves, and a short block per analysis group."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from depthflow.core import vocabulary as D
from depthflow.errors import InputError
from depthflow.io.results import figures_match, open_result
from depthflow.phases.datasets import describe_phases


def _fmt(values) -> str:
    return " ".join(f"{v:6.3f}" for v in np.asarray(values, dtype=float))


def describe(path: str | os.PathLike[str]) -> str:
    """A few screens of text: provenance, groups, variables and headline curves. A file
    that opens but is damaged (a variable or attribute missing or malformed) is one
    :class:`~depthflow.errors.InputError`, never a traceback."""
    try:
        return _describe(path)
    except InputError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, ArithmeticError,
            RuntimeError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(f"{str(path)!r} is a damaged depthflow result ({type(exc).__name__}"
                         f"{': ' + text if text else ''}); re-run depthflow analyze") from exc


def _describe(path: str | os.PathLike[str]) -> str:
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
        lines += _figures(path)
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
        if "probes" in tree.children:
            from depthflow.probes.text import describe_probes

            lines += describe_probes(tree["probes"].to_dataset()).splitlines()
        if "compare" in tree.children:
            from depthflow.compare.text import describe_compare

            lines += describe_compare(tree["compare"].to_dataset()).splitlines()
    return "\n".join(lines)


def _figures(path: str | os.PathLike[str]) -> list[str]:
    """Whether the default figure folder next to the file was drawn from it."""
    folder = Path(path).with_suffix("")
    folder = folder.with_name(folder.name + "-figures")
    if not folder.is_dir():
        return []
    match = figures_match(path, folder)
    if match is None:
        return [f"  figures            {folder} (records no result file)"]
    if match:
        return [f"  figures            {folder} (drawn from this file)"]
    return [f"  figures            {folder} WERE DRAWN FROM ANOTHER FILE (an interrupted "
            "run?); re-run depthflow analyze --overwrite"]


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


def _interval(ds, name: str, **sel) -> str:
    """``median [low, high]`` of a summary triple."""
    get = (lambda suffix: float(ds[f"{name}_{suffix}"].sel(sel).values))
    return f"{get('median'):+.3f} [{get('low'):+.3f}, {get('high'):+.3f}]"


def _group(node, path: str):
    try:
        ds = node[path].to_dataset()
    except KeyError:
        return None
    return ds if ds.data_vars else None


def _dynamics(node) -> list[str]:
    """Headline numbers of the dynamics groups: medians over images with their intervals."""
    out = []
    ly = _group(node, "lyapunov")
    if ly is not None:
        out.append(f"  finite-depth top Lyapunov exponent (direction; median [interval], n = "
                   f"{ly.sizes[D.SUBSAMPLE]} images):")
        for seg in ly["segment"].values:
            cells = [f"{r} {_interval(ly, 'lyapunov_exponent', segment=seg, restriction=r, exponent=1)}"
                     for r in ly["restriction"].values]
            out.append(f"    {seg:12s} " + "; ".join(cells))
        if "state_exponent_median" in ly:
            out.append("    state propagator, whole depth: "
                       + _interval(ly, "state_exponent", exponent=1))
    st = _group(node, "stretching")
    if st is not None:
        med = st["log_sigma1_median"].values
        out.append(f"  per-layer log sigma_1 (median over n = {st.sizes[D.SUBSAMPLE]}): "
                   + _fmt(med) + "; layers contracting every direction for most images: "
                   + str([int(l) for l, f in zip(st[D.LAYER].values,
                                                   st["contracting_fraction"].values) if f > 0.5]))
    cl = _group(node, "basins/classes")
    if cl is not None:
        last = cl[D.DEPTH].values[-1]
        out.append(f"  class basins (n = {cl.attrs.get('n_images')}): NCM accuracy at depth "
                   f"{last} {float(cl['ncm_accuracy'].sel(depth=last)):.3f} [null "
                   f"{float(cl['ncm_null_mean'].sel(depth=last)):.3f}, p "
                   f"{float(cl['ncm_p_value'].sel(depth=last)):.3g}], AMI "
                   f"{float(cl['ami'].sel(depth=last)):.3f} [p "
                   f"{float(cl['ami_p_value'].sel(depth=last)):.3g}]")
    rob = _group(node, "basins/robustness")
    if rob is not None:
        half = rob["half_angle"].transpose("inject_depth", "scope").values
        top = float(rob["theta"].max())
        out.append("  robustness: angle at which half the images leave their basin (rad), "
                   "rotated " + "/".join(map(str, rob["scope"].values)) + ": " + "; ".join(
                       f"depth {int(d)}: " + ", ".join(
                           f"{v:.2f}" if np.isfinite(v) else f"> {top:g}" for v in row)
                       for d, row in zip(rob["inject_depth"].values, half)))
    att = _group(node, "basins/attractors")
    if att is not None:
        out.append(f"  attractors of the frozen layer vs class: AMI {float(att['ami']):.3f} "
                   f"[{float(att['ami_low']):.3f}, {float(att['ami_high']):.3f}], p "
                   f"{float(att['ami_p_value']):.3g}")
    for group, what in (("fixed_points/state", "all tokens"), ("fixed_points/cls", "cls token")):
        fp = _group(node, group)
        if fp is None:
            continue
        meanings = str(fp["stability"].attrs.get("flag_meanings", "")).split()
        counts = np.bincount(fp["stability"].values.astype(int), minlength=len(meanings))
        flat = int((fp["non_hyperbolic"].values == 1).sum()) if "non_hyperbolic" in fp else 0
        out.append(f"  fixed points ({what}): {int(fp['n_converged'])} of {fp.sizes['start']} "
                   f"starts converged, {int(fp['n_distinct'])} distinct: "
                   + ", ".join(f"{m} {c}" for m, c in zip(meanings, counts) if c)
                   + (f" ({flat} non-hyperbolic)" if flat else ""))
    rec = _group(node, "recovery")
    if rec is not None:
        last = rec[D.DEPTH].values[-1]
        for direction in rec["direction"].values:
            sel = rec.sel(direction=direction, depth=last).isel(perturb_angle=0)
            out.append(f"  recovery at depth {last} ({direction}, median angle/theta_K): " + "; ".join(
                f"l0={int(l0)} " + ", ".join(
                    f"{k} {float(sel['median'].sel(inject_depth=l0, kind=k)):.2f}"
                    for k in rec[D.KIND].values) for l0 in rec["inject_depth"].values))
    return ["dynamics:", *out] if out else []


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
