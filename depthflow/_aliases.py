"""Old import paths of depthflow's modules, kept for one release after the package layout
moved them into folders named for what they do (``docs/architecture.md``, "Packages").

``import depthflow.images`` and ``from depthflow.images import open_images`` give the module
``depthflow.data.images`` itself (the same object: monkeypatching either name patches both)
and warn once with a ``DeprecationWarning`` naming the new path. No file remains at an old
path and nothing is added to the top of the package: a meta-path finder, installed by
``depthflow/__init__.py``, answers for the names of :data:`ALIASES` only (after every other
finder, so a real module of that name would win).

Written by the layout migration (``studies/migration/relayout.py``), with the test
``tests/test_layout.py``; relayout: keep (the migration never rewrites this file).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import warnings

ALIASES: dict[str, str] = {
    'depthflow._crash': 'depthflow.core._crash',
    'depthflow._memory': 'depthflow.core._memory',
    'depthflow._signals': 'depthflow.core._signals',
    'depthflow.collections': 'depthflow.data.collections',
    'depthflow.config': 'depthflow.core.config',
    'depthflow.distributed': 'depthflow.core.distributed',
    'depthflow.dynamics._bidiag': 'depthflow.dynamics.tangent._bidiag',
    'depthflow.dynamics._class_stats': 'depthflow.dynamics.attractors._class_stats',
    'depthflow.dynamics._linalg': 'depthflow.dynamics.tangent._linalg',
    'depthflow.dynamics._newton': 'depthflow.dynamics.fixedpoints._newton',
    'depthflow.dynamics._propagator': 'depthflow.dynamics.tangent._propagator',
    'depthflow.dynamics._stability': 'depthflow.dynamics.fixedpoints._stability',
    'depthflow.dynamics.basin_robustness': 'depthflow.dynamics.attractors.basin_robustness',
    'depthflow.dynamics.basins': 'depthflow.dynamics.attractors.basins',
    'depthflow.dynamics.class_basins': 'depthflow.dynamics.attractors.class_basins',
    'depthflow.dynamics.finite_depth': 'depthflow.dynamics.tangent.finite_depth',
    'depthflow.dynamics.fixed_points': 'depthflow.dynamics.fixedpoints.fixed_points',
    'depthflow.dynamics.lyapunov': 'depthflow.dynamics.tangent.lyapunov',
    'depthflow.dynamics.norm_sensitivity': 'depthflow.dynamics.fixedpoints.norm_sensitivity',
    'depthflow.dynamics.spectra': 'depthflow.dynamics.tangent.spectra',
    'depthflow.dynamics.stretching': 'depthflow.dynamics.tangent.stretching',
    'depthflow.environment': 'depthflow.core.environment',
    'depthflow.images': 'depthflow.data.images',
    'depthflow.limits': 'depthflow.core.limits',
    'depthflow.loader': 'depthflow.api.loader',
    'depthflow.maps': 'depthflow.dynamics.maps',
    'depthflow.profiling': 'depthflow.core.profiling',
    'depthflow.report': 'depthflow.reporting.info',
    'depthflow.threads': 'depthflow.core.threads',
    'depthflow.tokens': 'depthflow.data.tokens',
    'depthflow.trajectory': 'depthflow.data.trajectory',
    'depthflow.vocabulary': 'depthflow.core.vocabulary',
    'depthflow.workflows': 'depthflow.api.workflows',
}


class AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new path."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in ALIASES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        new = ALIASES[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there (the old path "
                      "goes in the next release)", DeprecationWarning, stacklevel=_caller())
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # the import system set the old name's spec on the real module: give its own back
        spec = module.__spec__
        if spec is not None and spec.name in self._specs:
            module.__spec__ = self._specs.pop(spec.name)


def _caller() -> int:
    """The stack level (for ``warnings.warn`` in a caller of this function) of the first
    frame outside the import machinery, this module and ``depthflow/__init__.py``."""
    here = {__file__, os.path.join(os.path.dirname(__file__), "__init__.py"),
            importlib.__file__}
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_code.co_filename
        internal = "importlib" in name and "_bootstrap" in name   # warnings skips these
        if not internal and name not in here:
            return level
        level += not internal
        frame = frame.f_back
    return level


def attribute(name: str):
    """``depthflow.<name>`` for an old module path reached as an attribute of the package
    (``import depthflow; depthflow.images``), or None: ``depthflow.__getattr__`` asks."""
    old = f"{__package__}.{name}"
    return importlib.import_module(old) if old in ALIASES else None


def install() -> None:
    """Append the finder to ``sys.meta_path`` once."""
    if not any(type(f).__name__ == "AliasFinder" and type(f).__module__ == __name__
               for f in sys.meta_path):
        sys.meta_path.append(AliasFinder())


install()
