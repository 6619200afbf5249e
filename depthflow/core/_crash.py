"""A test hook that kills the process at a named point (crash-safety tests).

Set ``DEPTHFLOW_CRASH_AT=<point>`` (or ``<point>:<n>`` for the n-th time the point is
reached, counting from 1; ``<point>:<n>@<rank>`` only in that process of a ``torchrun``
run) and the process sends itself ``SIGKILL`` when it gets there: no
``finally`` block, no ``atexit`` handler and no context manager runs, exactly as after
``kill -9`` or an out-of-memory kill. Several points may be given, comma-separated. Unset
(the normal case) the hook costs one dictionary lookup.

Named points (see the calls of :func:`crash_point`):

``analyze.start``
    model loaded and images opened, nothing written yet (``depthflow analyze``);
``analyze.batch``
    after a batch of trajectories was appended to the temporary file (mid-stream; with
    ``:n`` after the n-th batch);
``analyze.analyses``
    after the per-sample stream, while the analyses write their groups;
``analyze.written``
    the result file is in place, the figures are not yet;
``fit.step``
    after a training step of ``depthflow fit`` (``:n``: after the n-th step of this process).

``DEPTHFLOW_CRASH_SIGNAL=TERM`` (or ``INT``) sends that signal instead of ``SIGKILL``: the
process then runs its clean-up as for an error (:mod:`depthflow.core._signals`), which
``tests/test_reliability.py`` checks at the same points.

The tests in ``tests/test_crash.py`` use it so that kills land at deterministic places on
a loaded machine; it is harmless to leave in production code.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "SIGNAL_ENV", "POINTS", "crash_point"]

ENV = "DEPTHFLOW_CRASH_AT"
SIGNAL_ENV = "DEPTHFLOW_CRASH_SIGNAL"
POINTS = ("analyze.start", "analyze.batch", "analyze.analyses", "analyze.written", "fit.step")
_counts: dict[str, int] = {}


def _targets(spec: str, rank: int) -> dict[str, int]:
    out = {}
    for item in spec.split(","):
        item, _, where = item.strip().partition("@")
        if where.strip() and where.strip() != str(rank):
            continue
        name, _, count = item.partition(":")
        if name:
            out[name] = int(count) if count.strip().isdigit() else 1
    return out


def crash_point(name: str, rank: int | None = None) -> None:
    """Kill this process with SIGKILL when ``DEPTHFLOW_CRASH_AT`` names ``name`` (and this
    is the requested occurrence, on the requested rank); otherwise do nothing."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    if rank is None:
        rank = int(os.environ.get("RANK", "0") or 0)
    wanted = _targets(spec, rank).get(name)
    if wanted is None:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == wanted:
        kind = os.environ.get(SIGNAL_ENV, "KILL").strip().upper().removeprefix("SIG") or "KILL"
        os.kill(os.getpid(), getattr(signal, f"SIG{kind}", None) or
                getattr(signal, "SIGKILL", signal.SIGTERM))
