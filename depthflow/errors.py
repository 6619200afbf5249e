"""Error hierarchy.

Every error depthflow raises for bad input derives from :class:`DepthflowError`, and
also from the builtin that fits it, so ``except ValueError`` keeps working. Only the CLI
turns these into one-line messages; the library never prints.
"""

from __future__ import annotations


class DepthflowError(Exception):
    """Root of all depthflow errors."""


class CheckpointError(DepthflowError, ValueError):
    """A checkpoint is missing, unreadable, unsafe, corrupt or not a supported ViT."""


class ArchitectureError(CheckpointError):
    """Weights do not match any supported architecture (or the requested one)."""


class InputError(DepthflowError, ValueError):
    """Images, arrays or labels that cannot be used as model input."""


class OutputError(DepthflowError, OSError):
    """An output path that cannot be written (missing directory, read-only, exists)."""


class ConfigError(DepthflowError, ValueError):
    """An option or configuration value outside its allowed range."""
