"""``depthflow compare``: two models (or two result files with kept states) in one call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import xarray as xr

from depthflow.core import vocabulary as D
from depthflow.compare.run import compare_files, compare_models, random_copy
from depthflow.errors import ConfigError
from depthflow.data.images import open_images
from depthflow.io.files import check_output_path
from depthflow.io.netcdf import write_tree
from depthflow.io.provenance import provenance
from depthflow.io.results import open_result
from depthflow.api.loader import load_model
from depthflow.plots import check_figure_dir, write_figures

__all__ = ["RANDOM", "compare_checkpoints"]

RANDOM = "random"          # as model B: the random-weight copy of model A


def compare_checkpoints(a: str | None, b: str, output: str | os.PathLike[str], *,
                        images: str | None = None, limit: int | None = None,
                        views: Sequence[str] = ("cls", "mean_patch"), arch: str | None = None,
                        batch_size: int = 32, device: str = "cpu", dtype: str = "float32",
                        n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                        figures: str | os.PathLike[str] | None = None,
                        overwrite: bool = False, progress: bool = False,
                        command: Sequence[str] | None = None) -> tuple[Path, list[Path]]:
    """Compare ``a`` and ``b`` (checkpoints, named models, Raptor directories; ``b =
    "random"``: the random-weight copy of ``a`` with seed ``seed``; or two ``.nc`` result
    files with kept states) and write the ``compare`` group to ``output``."""
    check_output_path(output, overwrite=overwrite)
    if figures is not None:
        check_figure_dir(figures, overwrite=overwrite)
    files = [str(x).endswith(".nc") for x in (a, b) if x is not None]
    if any(files):
        if not (all(files) and len(files) == 2):
            raise ConfigError("give two models or two result files (.nc with kept states), "
                              "not one of each")
        if images is not None or limit is not None:
            raise ConfigError("--images/--limit cannot be used with result files: their "
                              "images are already in them")
        ds = compare_files(a, b, batch_size=batch_size, views=views, n_boot=n_boot,
                           level=level, seed=seed)
    else:
        loaded_a = load_model(a, arch=arch)
        loaded_b = random_copy(loaded_a, seed=seed) if b == RANDOM else load_model(b, arch=arch)
        source = open_images(images).head(limit)
        ds = compare_models(loaded_a, loaded_b, source, views=views, batch_size=batch_size,
                            device=device, dtype=dtype, n_boot=n_boot, level=level, seed=seed,
                            progress=progress)
    tree = xr.DataTree(children={"compare": xr.DataTree(ds)})
    tree.attrs = provenance(config={"a": a, "b": b, "images": images, "limit": limit,
                                    "views": list(views), "batch_size": batch_size,
                                    "dtype": dtype, "n_boot": n_boot, "level": level,
                                    "seed": seed}, command=command, extra={
        "title": f"depthflow compare {a or 'default'} vs {b}",
        "depthflow_format_version": D.FORMAT_VERSION})
    path = write_tree(tree, output, overwrite=overwrite)
    drawn: list[Path] = []
    if figures is not None:
        from depthflow.compare.plot import plot_compare

        with open_result(path) as saved:
            drawn = write_figures(saved, figures, [plot_compare], overwrite=overwrite)
    return path, drawn
