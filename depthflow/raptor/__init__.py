"""Raptor: block-recurrent surrogates of ViTs (docs/methods.md).

``k`` recurrent blocks trained to reproduce EVERY teacher layer. Build and fit with
:func:`fit_raptor` (``depthflow fit`` calls :func:`depthflow.api.workflows.fit_checkpoint`),
load with :func:`load_raptor` (or :func:`depthflow.load_model`), measure with
:func:`evaluate_fidelity`. A :class:`Raptor` is a depth model like the ViT:
``step(layer, state)`` applies block :meth:`Raptor.block_for` ``(layer)`` at depth ``t =
layer``, so ``depthflow.dynamics.maps.from_model(raptor)`` is the non-autonomous map and one block at
frozen ``t`` an autonomous one.
"""

from depthflow.raptor.evaluate import Fidelity, evaluate_fidelity
from depthflow.raptor.fit import FitConfig, FitResult, fit_raptor
from depthflow.raptor.io import load_raptor, save_raptor
from depthflow.raptor.model import (Raptor, RaptorBlock, RaptorConfig, build_raptor,
                                    check_thresholds, counts_from_thresholds)
from depthflow.raptor.train import FitError, FitInterrupted

__all__ = [
    "Raptor", "RaptorBlock", "RaptorConfig", "build_raptor", "check_thresholds",
    "counts_from_thresholds", "FitConfig", "FitResult", "fit_raptor",
    "load_raptor", "save_raptor", "Fidelity", "evaluate_fidelity", "FitError",
    "FitInterrupted",
]
