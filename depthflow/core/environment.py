"""The environment variables depthflow reads, validated before any work starts.

:func:`check_environment` (run by every ``depthflow`` command first) checks them all and
stops with one :class:`~depthflow.errors.ConfigError` line naming the variable and its
value:

* ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (set by ``torchrun``): integers, ``WORLD_SIZE``
  >= 1, ``0 <= RANK < WORLD_SIZE``, ``LOCAL_RANK >= 0``; ``RANK`` / ``LOCAL_RANK`` without
  ``WORLD_SIZE`` are checked as integers >= 0;
* ``DEPTHFLOW_MAX_IMAGE_PIXELS``, ``DEPTHFLOW_MEMORY_BUDGET``: positive integers (bytes for
  the budget; ``1e9`` and ``1_000_000`` are accepted);
* ``DEPTHFLOW_DIST_TIMEOUT``: a positive number of seconds;
* ``DEPTHFLOW_CACHE``: not an existing non-directory;
* ``DEPTHFLOW_DYNAMICS_WORKERS``: 1 (every dynamics analysis in one process) or 2 (the
  default: a second process where a core would idle);
* ``DEPTHFLOW_CRASH_AT`` / ``DEPTHFLOW_CRASH_SIGNAL`` (the test hook of
  :mod:`depthflow.core._crash`): known point names and signal names;
* any other ``DEPTHFLOW_*`` name gets a one-line warning (a misspelt variable would
  otherwise be ignored silently).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from depthflow.errors import ConfigError

__all__ = ["KNOWN", "check_environment"]

KNOWN = ("DEPTHFLOW_MAX_IMAGE_PIXELS", "DEPTHFLOW_MEMORY_BUDGET", "DEPTHFLOW_DIST_TIMEOUT",
         "DEPTHFLOW_CACHE", "DEPTHFLOW_CRASH_AT", "DEPTHFLOW_CRASH_SIGNAL",
         "DEPTHFLOW_DYNAMICS_WORKERS")


def _int(env: Mapping[str, str], name: str, *, low: int) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip().replace("_", "")
    try:
        value = int(text) if text.lstrip("+-").isascii() and text.lstrip("+-").isdigit() \
            else None
        if value is None:
            as_float = float(text)
            if not math.isfinite(as_float) or as_float != int(as_float):
                raise ValueError
            value = int(as_float)
    except (ValueError, OverflowError):
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < low:
        raise ConfigError(f"environment variable {name}={raw!r} must be >= {low}")
    return value


def check_environment(env: Mapping[str, str] | None = None) -> None:
    """Validate the variables of the module docstring (``env`` defaults to
    ``os.environ``); :class:`ConfigError` for the first bad one."""
    env = os.environ if env is None else env
    world = _int(env, "WORLD_SIZE", low=1)
    rank = _int(env, "RANK", low=0)
    _int(env, "LOCAL_RANK", low=0)
    if world is not None and rank is not None and rank >= world:
        raise ConfigError(f"environment variable RANK={rank} must be below WORLD_SIZE={world}")
    _int(env, "DEPTHFLOW_MAX_IMAGE_PIXELS", low=1)
    _int(env, "DEPTHFLOW_MEMORY_BUDGET", low=1)
    raw = env.get("DEPTHFLOW_DIST_TIMEOUT", "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"environment variable DEPTHFLOW_DIST_TIMEOUT={raw!r} must be a "
                              "positive number of seconds")
    cache = env.get("DEPTHFLOW_CACHE", "").strip()
    if cache and os.path.exists(os.path.expanduser(cache)) and \
            not os.path.isdir(os.path.expanduser(cache)):
        raise ConfigError(f"environment variable DEPTHFLOW_CACHE={cache!r} is not a directory")
    workers = env.get("DEPTHFLOW_DYNAMICS_WORKERS", "").strip()
    if workers and workers not in ("1", "2"):
        raise ConfigError(f"environment variable DEPTHFLOW_DYNAMICS_WORKERS={workers!r} must "
                          "be 1 or 2")
    crash = env.get("DEPTHFLOW_CRASH_AT", "").strip()
    if crash:
        from depthflow.core._crash import POINTS
        for item in crash.split(","):
            point = item.strip().partition("@")[0].partition(":")[0]
            if point and point not in POINTS:
                raise ConfigError(f"environment variable DEPTHFLOW_CRASH_AT names the unknown "
                                  f"point {point!r} (known: {', '.join(POINTS)})")
    sig = env.get("DEPTHFLOW_CRASH_SIGNAL", "").strip()
    if sig and sig.upper().removeprefix("SIG") not in ("KILL", "TERM", "INT"):
        raise ConfigError(f"environment variable DEPTHFLOW_CRASH_SIGNAL={sig!r} must be KILL, "
                          "TERM or INT")
    unknown = sorted(k for k in env if k.startswith("DEPTHFLOW_") and k not in KNOWN)
    if unknown:
        import logging
        logging.getLogger("depthflow").warning(
            "depthflow: ignoring the unknown environment variable %s (depthflow reads %s)",
            unknown[0], ", ".join(KNOWN))
