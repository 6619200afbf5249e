"""SIGTERM and SIGINT handled like errors: the same clean-up, then one line and 128 + N.

:func:`signals_as_errors` (what every ``depthflow`` command runs under) turns SIGTERM --
what schedulers, ``timeout`` and ``kill`` send -- and SIGINT (Ctrl-C) into an
:class:`Interrupted` exception raised where the program is. It is a ``KeyboardInterrupt``,
so it passes through the ``except Exception`` of the library and runs every ``finally``
block and context manager on the way out: temporary files are removed, an existing output
is left as it was, ``fit`` keeps its last complete checkpoint. Further signals are ignored
while that clean-up runs. The CLI then prints one ``Error: interrupted by SIGTERM ...`` line
and exits with 143 (SIGTERM) or 130 (SIGINT), as a shell reports a signal death.

:func:`deferred_signals` holds a signal back for the length of a block that must not be
cut (writing a checkpoint and its resume record as a pair); it is raised when the block
ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Interrupted", "signals_as_errors", "deferred_signals", "HANDLED"]

HANDLED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT") if hasattr(signal, name))
_state = {"active": False, "deferring": 0, "pending": None}


class Interrupted(KeyboardInterrupt):
    """The process received ``signum`` (SIGTERM or SIGINT)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal_name(signum)}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _handler(signum, frame) -> None:
    if _state["deferring"]:
        _state["pending"] = signum
        return
    for sig in HANDLED:                       # the clean-up runs undisturbed
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_as_errors() -> Iterator[None]:
    """Within the block SIGTERM / SIGINT raise :class:`Interrupted` (main thread only;
    elsewhere, or nested, it does nothing). The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread() or _state["active"]:
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in HANDLED}
    _state.update(active=True, deferring=0, pending=None)
    try:
        for sig in HANDLED:
            signal.signal(sig, _handler)
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        _state.update(active=False, deferring=0, pending=None)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """A signal arriving inside the block is raised (as :class:`Interrupted`) only when the
    block has finished."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
    pending = _state["pending"]
    if pending is not None and not _state["deferring"] and _state["active"]:
        _state["pending"] = None
        _handler(pending, None)
