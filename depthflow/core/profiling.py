"""Seconds per stage of a run (``depthflow analyze --profile``).

A :class:`Profile` adds up wall-clock seconds under stage names (``load``, ``images``,
``forward``, ``summaries``, ``phases.update``, ``dynamics.lyapunov``, ``figures``,
``write``, ...). Library code marks its stages with :func:`stage`, which costs nothing when
no profile is active; :func:`profiling` activates one for the duration of a call. On CUDA
each stage synchronises the device at its ends, so a stage's seconds include its kernels.

Stages may nest (``dynamics`` holds ``dynamics.lyapunov``); :meth:`Profile.table` prints
them in the order they were first entered, with the share of the total wall time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import torch

__all__ = ["Profile", "profiling", "stage", "active"]

_STATE = threading.local()


class Profile:
    """Wall-clock seconds and entry counts per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.start = time.perf_counter()
        self.total: float | None = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.seconds.setdefault(name, 0.0)        # listed in the order first entered
        self.calls.setdefault(name, 0)
        _sync()
        tic = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.seconds[name] += time.perf_counter() - tic
            self.calls[name] += 1

    def stop(self) -> None:
        """Fix the total wall time (from creation)."""
        self.total = time.perf_counter() - self.start

    def to_dict(self) -> dict[str, float]:
        """Stage -> seconds (rounded to ms), plus ``total`` once stopped."""
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        if self.total is not None:
            out["total"] = round(self.total, 3)
        return out

    def table(self) -> str:
        """A plain-text table: stage, seconds, calls, share of the total wall time."""
        total = self.total if self.total is not None else time.perf_counter() - self.start
        width = max([len(k) for k in self.seconds] + [len("total (wall)")])
        lines = [f"{'stage':<{width}}  {'seconds':>8}  {'calls':>5}  {'share':>6}"]
        for name, sec in self.seconds.items():
            lines.append(f"{name:<{width}}  {sec:8.2f}  {self.calls[name]:5d}  "
                         f"{100 * sec / max(total, 1e-9):5.1f}%")
        lines.append(f"{'total (wall)':<{width}}  {total:8.2f}")
        return "\n".join(lines)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def active() -> Profile | None:
    """The profile of the current call, if any."""
    return getattr(_STATE, "profile", None)


def stage(name: str) -> contextlib.AbstractContextManager[None]:
    """Add the enclosed wall time to stage ``name`` of the active profile (no-op when none
    is active)."""
    profile = active()
    return profile.stage(name) if profile is not None else contextlib.nullcontext()


@contextlib.contextmanager
def profiling(profile: Profile | None = None) -> Iterator[Profile]:
    """Activate ``profile`` (a new one by default) for the enclosed code; stops it at the
    end."""
    profile = profile if profile is not None else Profile()
    previous = active()
    _STATE.profile = profile
    try:
        yield profile
    finally:
        profile.stop()
        _STATE.profile = previous
