"""A short text table of a ``probes`` group (``depthflow probe``, ``depthflow info``)."""

from __future__ import annotations

__all__ = ["describe_probes"]


def describe_probes(ds) -> str:
    """Per readout: best depth and accuracy with its Wilson interval, depth 0 and the last
    depth beside it, k-NN at the best depth, and the chance level."""
    n, lvl = ds.attrs.get("n_images"), "95%"
    lines = [f"probes: {n} labelled images, {ds.attrs.get('n_classes')} classes, "
             f"{ds.attrs.get('folds')}-fold CV; chance (majority class) "
             f"{float(ds['chance']):.3f}; intervals: Wilson {lvl} over images"]
    last = int(ds["depth"].values[-1])
    for r in ds["readout"].values:
        s = ds.sel(readout=r)
        b = int(s["best_depth"])
        acc = lambda d, p="": (f"{float(s[p + 'accuracy'][d]):.3f} "  # noqa: E731
                               f"[{float(s[p + 'accuracy_low'][d]):.3f}, "
                               f"{float(s[p + 'accuracy_high'][d]):.3f}]")
        lines.append(f"  {r:<15} best depth {b:>2}: {acc(b)} (k-NN {acc(b, 'knn_')}); "
                     f"depth 0: {acc(0)}; depth {last}: {acc(last)}; earliest within the "
                     f"best's interval: {int(s['earliest_good_depth'])}")
    return "\n".join(lines)
