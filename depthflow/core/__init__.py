"""Shared foundations every other package may import: options dataclasses
(:mod:`~depthflow.core.config`), resource limits (:mod:`~depthflow.core.limits`), the results
vocabulary (:mod:`~depthflow.core.vocabulary`), torchrun helpers
(:mod:`~depthflow.core.distributed`) and the crash and memory helpers (``_crash``, ``_memory``).
Nothing here imports anything of depthflow above :mod:`depthflow.errors`."""
