"""Resource limits checked before a run starts: memory and disk a request would need.

:func:`check_analyze_resources` estimates, from the model's shape and the number of
images, what ``depthflow analyze`` will hold in memory and write to disk, and refuses a
request that cannot fit *before* the model runs, naming the estimate:

* the per-class accumulators of the cls-direction statistics:
  ``(L + 1) x C x D x 8`` bytes (float64 sums, ``C`` classes);
* what the dynamics plug-in keeps of the stream (float32) plus its float64 working copy:
  ``n_jvp x (L + 1) x T x D x (4 + 8)`` bytes for the JVP subset (``n_jvp`` = the
  ``samples`` budget, up to 4x that when classes are short of ``min_per_class``, never more
  than the images), ``n_cls x (L + 1) x D x 4`` for the class subset and
  ``n_rob x depths x T x D x 4`` for the robustness subset;
* the trajectories of one batch: ``B x (L + 1) x T x D x 4`` bytes (8 for float64), with
  ``B`` the batch size (at most the number of images);
* inside one block of that batch (plain-math attention, which analysis runs):
  ``B x (2 x H x T^2 + T x M + 4 x T x D) x 4`` bytes (the attention scores and their
  softmax over ``H`` heads, the MLP's hidden layer of width ``M``, the block's residual
  copies), plus the model's parameters ``P x 4``: the batch is refused when trajectories,
  block activations and parameters together exceed the budget;
* the result file: ``n x (L + 1) x T x D x 4`` bytes of raw states with ``--states all``
  (``x 1`` token with ``cls``), compared with the free space of the output's file system:
  a warning (one line on stderr, through the ``depthflow`` logger) above
  :data:`WARN_FILE_BYTES`, a refusal beyond the free space.

The memory budget is ``$DEPTHFLOW_MEMORY_BUDGET`` (bytes) when set, else the memory
available now (``MemAvailable`` of ``/proc/meminfo``; no memory check where that is not
readable). Estimates are lower bounds of the true peak (the model, one batch and the
summaries come on top), so a refusal is never a false alarm.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from depthflow.errors import ConfigError, InputError, OutputError

__all__ = ["MEMORY_ENV", "WARN_FILE_BYTES", "memory_budget", "analyze_estimates",
           "check_analyze_resources", "format_bytes"]

MEMORY_ENV = "DEPTHFLOW_MEMORY_BUDGET"
WARN_FILE_BYTES = 1 << 30

log = logging.getLogger("depthflow")


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def memory_budget() -> int | None:
    """Bytes a run may hold: ``$DEPTHFLOW_MEMORY_BUDGET``, else the available memory (None
    when unknown)."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        try:
            value = int(float(text))
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"{MEMORY_ENV} must be a positive number of bytes, got {text!r}")
        return value
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def analyze_estimates(*, n: int, depth: int, tokens: int, dim: int, classes: int,
                      states: str, dynamics: Any = None, batch_size: int = 0,
                      itemsize: int = 4, heads: int = 0, mlp_hidden: int = 0,
                      parameters: int = 0) -> dict[str, int]:
    """Bytes per item (see the module docstring) for ``n`` images through a model of
    ``depth`` blocks, ``tokens`` tokens of width ``dim`` (``heads`` attention heads, MLP
    width ``mlp_hidden``, ``parameters`` weights); ``dynamics`` is a
    :class:`~depthflow.dynamics.analysis.DynamicsConfig` or None."""
    out = {"class accumulators": (depth + 1) * classes * dim * 8,
           "batch trajectories": batch_size * (depth + 1) * tokens * dim * itemsize,
           "block activations": batch_size * (2 * heads * tokens * tokens
                                              + tokens * mlp_hidden
                                              + 4 * tokens * dim) * itemsize,
           "model parameters": parameters * itemsize,
           "result file": n * (depth + 1) * dim * 4 * (tokens if states == "all" else
                                                       1 if states == "cls" else 0)}
    if dynamics is not None:
        cap = dynamics.samples * (4 if dynamics.min_per_class else 1)
        jvp = min(n, cap) * (depth + 1) * tokens * dim * 12
        cls = min(n, dynamics.class_samples) * (depth + 1) * dim * 4
        rob = 0
        if "basins" in dynamics.analyses:
            rob = min(n, dynamics.robustness_samples) * 3 * tokens * dim * 4
        out["dynamics subsets"] = jvp + cls + rob
    return out


def check_analyze_resources(loaded: Any, source: Any, preprocessing: Any, config: Any,
                            analyses: Sequence[Any], output: str | os.PathLike[str]) -> None:
    """Refuse an ``analyze`` request whose memory or disk estimate cannot fit (see the
    module docstring); warn when the result file will be large."""
    cfg = loaded.config
    side = preprocessing.crop or preprocessing.resize or cfg.img_size
    tokens = loaded.model.num_tokens(side, side)
    dynamics = next((getattr(a, "config", None) for a in analyses
                     if getattr(a, "name", "") == "dynamics"), None)
    batch = int(getattr(config, "batch_size", 0) or 0)
    itemsize = 8 if str(getattr(config, "dtype", "")) == "float64" else 4
    est = analyze_estimates(n=len(source), depth=cfg.depth, tokens=tokens, dim=cfg.embed_dim,
                            classes=len(source.class_names), states=config.states,
                            dynamics=dynamics, batch_size=min(batch, len(source)),
                            itemsize=itemsize, heads=cfg.num_heads,
                            mlp_hidden=cfg.mlp_hidden_dim * (2 if cfg.mlp == "swiglu" else 1),
                            parameters=sum(p.numel() for p in loaded.model.parameters()))
    budget = memory_budget()
    if budget is not None:
        peak = (est["batch trajectories"] + est["block activations"]
                + est["model parameters"])
        if peak > budget:
            raise ConfigError(
                f"--batch-size {batch} would hold about {format_bytes(peak)} in memory "
                f"(trajectories {format_bytes(est['batch trajectories'])}: "
                f"{cfg.depth + 1} depths x {tokens} tokens x {cfg.embed_dim} wide; one "
                f"block's activations {format_bytes(est['block activations'])}; parameters "
                f"{format_bytes(est['model parameters'])}; memory available: "
                f"{format_bytes(budget)}); lower --batch-size")
        if est["class accumulators"] > budget:
            raise InputError(
                f"{len(source.class_names):,} classes would need about "
                f"{format_bytes(est['class accumulators'])} of per-class accumulators "
                f"(memory available: {format_bytes(budget)}); renumber the labels 0..C-1")
        if est.get("dynamics subsets", 0) > budget:
            raise ConfigError(
                f"the dynamics budgets (samples={dynamics.samples}, class_samples="
                f"{dynamics.class_samples}, robustness_samples={dynamics.robustness_samples}) "
                f"would keep about {format_bytes(est['dynamics subsets'])} in memory for "
                f"{len(source)} images (available: {format_bytes(budget)}); lower "
                "--set dynamics.samples=N")
    size = est["result file"]
    parent = Path(os.path.realpath(output)).parent
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        free = None
    if free is not None and size > free:
        raise OutputError(
            f"--states {config.states} for {len(source)} images would write about "
            f"{format_bytes(size)} to {str(output)!r}, more than the {format_bytes(free)} free "
            "there; use --states cls (or none), --limit, or another disk")
    if size > WARN_FILE_BYTES:
        log.warning("depthflow: --states %s will write about %s to %s (%s free)",
                    config.states, format_bytes(size), output,
                    format_bytes(free) if free is not None else "unknown space")
