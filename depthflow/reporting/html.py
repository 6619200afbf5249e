"""The HTML page: sections in reading order, key numbers as text, figures as base64 PNG.

The page is one file with inline CSS, no script and no external reference (no URL at all),
so it opens from disk, offline, in any browser; ``depthflow report`` writes it atomically.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from depthflow.core import vocabulary as D
from depthflow.io.files import atomic_path, check_output_path
from depthflow.io.results import open_result
from depthflow.reporting.figures import draw_all, section_of

__all__ = ["SECTIONS", "render_report", "write_report"]

# (id, title, what it answers), in the order a reader needs them
SECTIONS = (
    ("phases", "Phases", "which depths belong together (layer x layer similarity, "
                         "segmentations, layer swaps)"),
    ("tokens", "Token dynamics", "how every token kind moves through depth (norms, angular "
                                 "speed, coherence, update rank, class separation)"),
    ("probes", "Per-depth probes", "which depth and readout carries the labels"),
    ("dynamics", "Dynamics", "spectra, per-layer stretching, the attention / MLP split, "
                             "fixed points"),
    ("basins", "Basins", "whether the classes form angular basins, and how robust they are"),
    ("recovery", "Recovery", "whether perturbations die out with depth"),
    ("raptor", "Raptor fidelity", "how well a block-recurrent surrogate reproduces its "
                                  "teacher"),
    ("compare", "Model vs model", "how two models differ depth by depth"),
    ("other", "Other groups", "groups this page has no dedicated section for"),
)

CSS = """body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
pre{background:#f6f6f6;padding:.7em;overflow-x:auto;font-size:12.5px;line-height:1.35}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top}figure{margin:1em 0}img{max-width:100%;height:auto;
border:1px solid #eee}figcaption{font-size:12px;color:#555}.what{color:#555;font-style:italic}
nav ol{columns:2}"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _pre(text: str) -> str:
    return f"<pre>{_esc(text)}</pre>" if text.strip() else ""


def _png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_esc(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_esc(path.name)}</figcaption></figure>")


def _provenance(tree, path: Path) -> str:
    from depthflow.reporting.info import _architecture

    a = tree.attrs
    rows = [("file", path.name)]
    for key in ("title", "checkpoint", "checkpoint_format", "checkpoint_sha256", "model_a",
                "model_b", "images", "num_samples", "compute_dtype", "device", "seed",
                "head_accuracy", "command", "history", "depthflow_version", "torch_version",
                "depthflow_format_version", "platform"):
        if key in a and str(a[key]) != "":
            rows.append((key, a[key]))
    for line in _architecture(a):
        key, _, value = line.strip().partition(" ")
        rows.append((key, value.strip()))
    if "config" in a:
        rows.append(("config", a["config"]))
    groups = [n.path for n in tree.subtree if n is not tree]
    rows.append(("groups", ", ".join(groups) or "(none)"))
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<h2 id="provenance">Model, data and provenance</h2><table>{body}</table>'


def _interval_table(ds, *, limit: int = 40) -> str:
    """Every ``X_median`` with ``X_low``/``X_high`` and every scalar variable of a group."""
    rows = []
    for name in ds.data_vars:
        if name.endswith("_median") and f"{name[:-7]}_low" in ds and f"{name[:-7]}_high" in ds:
            base = name[:-7]
            med, lo, hi = (ds[f"{base}_{s}"] for s in ("median", "low", "high"))
            flat = [(idx, float(m), float(a), float(b)) for idx, m, a, b in zip(
                np.ndindex(med.shape), med.values.ravel(), lo.values.ravel(), hi.values.ravel())]
            n = med.attrs.get("n_images", ds.attrs.get("n_images", ""))
            for idx, m, a, b in flat[:limit]:
                where = ", ".join(f"{d}={_coord(ds, d, i)}" for d, i in zip(med.dims, idx))
                rows.append((base, where, f"{m:.4g} [{a:.4g}, {b:.4g}]", n))
            if len(flat) > limit:
                rows.append((base, f"... {len(flat) - limit} more", "", n))
        elif ds[name].ndim == 0 and ds[name].dtype.kind in "fiu":
            rows.append((name, "", f"{float(ds[name]):.4g}",
                         ds[name].attrs.get("n_images", ds.attrs.get("n_images", ""))))
    if not rows:
        return ""
    body = "".join(f"<tr><td>{_esc(a)}</td><td>{_esc(b)}</td><td>{_esc(c)}</td>"
                   f"<td>{_esc(d)}</td></tr>" for a, b, c, d in rows)
    return ("<table><tr><th>quantity</th><th>at</th><th>median [interval]</th><th>n</th></tr>"
            f"{body}</table>")


def _coord(ds, dim: str, i: int) -> str:
    return str(ds[dim].values[i]) if dim in ds.coords else str(i)


def _texts(tree) -> dict[str, list[str]]:
    """Key numbers per section, from the describers of each group."""
    from depthflow.compare.text import describe_compare
    from depthflow.phases.datasets import describe_phases
    from depthflow.probes.text import describe_probes
    from depthflow.reporting.info import _curves, _dynamics

    out: dict[str, list[str]] = {s: [] for s, _, _ in SECTIONS}
    children = tree.children
    root = tree.to_dataset(inherit=False)
    if root.data_vars:
        out["tokens"].append(_pre("\n".join(_curves(root))))
    if "phases" in children:
        out["phases"].append(_pre(describe_phases(tree["phases"])))
    if "probes" in children:
        out["probes"].append(_pre(describe_probes(tree["probes"].to_dataset())))
    if "dynamics" in children:
        lines = _dynamics(tree["dynamics"])[1:]
        route = {"  class basins": "basins", "  robustness": "basins", "  attractors": "basins",
                 "  recovery": "recovery"}
        per: dict[str, list[str]] = {"dynamics": [], "basins": [], "recovery": []}
        current = "dynamics"
        for line in lines:
            if not line.startswith("    "):
                current = next((s for p, s in route.items() if line.startswith(p)), "dynamics")
            per[current].append(line)
        for section, lines in per.items():
            if lines:
                out[section].append(_pre("\n".join(lines)))
        for child in tree["dynamics"].subtree:
            ds = child.to_dataset(inherit=False)
            if child is tree["dynamics"] or not ds.data_vars:
                continue
            name = child.relative_to(tree["dynamics"])
            section = "basins" if name.startswith("basins") else (
                "recovery" if name.startswith("recovery") else "dynamics")
            table = _interval_table(ds)
            if table:
                out[section].append(f"<h3>dynamics/{_esc(name)}: medians over images with "
                                    f"intervals</h3>{table}")
    if "compare" in children:
        ds = tree["compare"].to_dataset()
        out["compare"].append(_pre(describe_compare(ds)))
        if "r2_image_specific" in ds:
            out["raptor"].append(_pre(
                "image-specific R^2 of B against A per depth (views: "
                f"{', '.join(map(str, ds['view'].values))}):\n" + "\n".join(
                    f"  {v:<11}" + " ".join(f"{x:6.3f}" for x in ds["r2_image_specific"].sel(
                        view=v).values) for v in ds["view"].values)))
    info = tree.attrs.get("model_info")
    if info and "raptor" in str(info):
        from depthflow.reporting.info import _architecture

        out["raptor"].append(_pre("\n".join(_architecture(tree.attrs))))
    known = {"phases", "probes", "dynamics", "compare"}
    for name in children:
        if name not in known:
            for node in tree[name].subtree:
                ds = node.to_dataset(inherit=False)
                table = _interval_table(ds)
                text = f"<h3>{_esc(node.path)}</h3>" + (table or _pre(
                    "\n".join(f"{k} {tuple(v.dims)}: {v.attrs.get('long_name', '')}"
                              for k, v in ds.data_vars.items())))
                out["raptor" if "raptor" in name or "fidelity" in name else "other"].append(text)
    return out


def render_report(path: str | os.PathLike[str]) -> str:
    """The HTML page of result file ``path`` (a string)."""
    path = Path(path)
    with open_result(path) as tree, tempfile.TemporaryDirectory() as tmp:
        figures = draw_all(tree, Path(tmp))
        texts = _texts(tree)
        by_section: dict[str, list[str]] = {s: [] for s, _, _ in SECTIONS}
        for fig in sorted(figures, key=lambda p: p.name):
            section = section_of(fig.name)
            if section is not None:
                by_section[section].append(_png(fig))
        head = _provenance(tree, path)
        title = tree.attrs.get("title", path.name)
    parts, nav = [], []
    for sid, name, what in SECTIONS:
        if not texts[sid] and not by_section[sid]:
            continue
        nav.append(f'<li><a href="#{sid}">{_esc(name)}</a></li>')
        parts.append(f'<h2 id="{sid}">{_esc(name)}</h2><p class="what">{_esc(what)}</p>'
                     + "".join(texts[sid]) + "".join(by_section[sid]))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{_esc(title)}</h1><p>depthflow report of <code>{_esc(path.name)}</code>, "
            f"written {stamp}. Every number is defined in docs/methods.md; intervals are "
            "95% unless stated.</p>"
            f'<nav><ol><li><a href="#provenance">Model, data and provenance</a></li>'
            f"{''.join(nav)}</ol></nav>{head}{''.join(parts)}</body></html>\n")


def write_report(path: str | os.PathLike[str], output: str | os.PathLike[str], *,
                 overwrite: bool = False) -> Path:
    """Write the page of result file ``path`` to ``output`` (temp file + rename)."""
    check_output_path(output, overwrite=overwrite)
    page = render_report(path)
    with atomic_path(output, overwrite=overwrite) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return Path(output)
