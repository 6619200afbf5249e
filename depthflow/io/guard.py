"""Outputs that can never destroy inputs: overlap checks and output locks.

:func:`check_disjoint` refuses, before any work starts, an output (result file, figure
directory, fit directory) that resolves -- after symbolic links -- to an input (checkpoint,
image source, a file an image list names, a resume directory), lies inside an input
directory, contains an input, or overlaps another output. ``--overwrite`` never widens
this: it replaces earlier *outputs*, never inputs.

:func:`output_lock` serialises concurrent runs on one output: an exclusive ``flock`` on a
hidden file ``.<name>.depthflow-lock`` beside the output, held for the whole run; a second
run writing the same output stops at once with one line, changing nothing. The lock file
is removed when the run ends (a killed run's lock file is free again, since the kernel drops
the lock with the process, and the next run on that output removes it).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from depthflow.errors import OutputError

__all__ = ["resolved", "check_disjoint", "output_lock", "lock_path", "LOCK_SUFFIX"]

LOCK_SUFFIX = ".depthflow-lock"
Pathish = "str | os.PathLike[str]"


def resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute with every symbolic link resolved (also for paths that do
    not exist yet: their existing ancestors are resolved)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def _entries(named: Mapping[str, object]) -> list[tuple[str, Path]]:
    out = []
    for label, value in named.items():
        if value is None:
            continue
        paths = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
        out += [(label, resolved(p)) for p in paths if str(p).strip()]
    return out


def check_disjoint(outputs: Mapping[str, object], inputs: Mapping[str, object]) -> None:
    """Raise :class:`OutputError` when an output resolves to, lies inside, or contains an
    input, or two outputs overlap.

    ``outputs`` and ``inputs`` map a label (``"-o"``, ``"--figures"``, ``"checkpoint"``,
    ``"--images"``) to a path, a list of paths, or None (skipped). Only existing inputs
    matter (a named model or ``digits`` is no path)."""
    outs = _entries(outputs)
    ins = [(label, p) for label, p in _entries(inputs) if os.path.lexists(p)]
    for olabel, out in outs:
        for ilabel, inp in ins:
            if out == inp:
                raise OutputError(f"output {olabel} {str(out)!r} is the input {ilabel}; "
                                  "choose another output path (--overwrite never replaces "
                                  "an input)")
            if _inside(out, inp):
                raise OutputError(f"output {olabel} {str(out)!r} lies inside the input "
                                  f"{ilabel} {str(inp)!r}; write it elsewhere")
            if _inside(inp, out):
                raise OutputError(f"output {olabel} {str(out)!r} contains the input "
                                  f"{ilabel} {str(inp)!r}; write it elsewhere")
    for i, (alabel, a) in enumerate(outs):
        for blabel, b in outs[i + 1:]:
            if a == b or _inside(a, b) or _inside(b, a):
                raise OutputError(f"outputs {alabel} {str(a)!r} and {blabel} {str(b)!r} "
                                  "overlap; give them separate paths")


def lock_path(output: str | os.PathLike[str]) -> Path:
    """The lock file of ``output``: ``.<name>.depthflow-lock`` in its (resolved) folder."""
    target = resolved(output)
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def output_lock(outputs: Iterable[str | os.PathLike[str] | None]) -> Iterator[None]:
    """Hold an exclusive lock on each output for the duration of the block (see the module
    docstring); :class:`OutputError` when another run holds one. Without ``fcntl`` (not
    POSIX) nothing is locked."""
    try:
        import fcntl
    except ImportError:             # pragma: no cover - Windows
        yield
        return
    held: list[tuple[Path, int]] = []
    try:
        for output in outputs:
            if output is None or not str(output).strip():
                continue
            path = lock_path(output)
            if not path.parent.is_dir():     # the run's own output check says what is wrong
                continue
            held.append(_acquire(fcntl, path, output))
        yield
    finally:
        for path, fd in reversed(held):
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)


def _acquire(fcntl, path: Path, output) -> tuple[Path, int]:
    for _ in range(20):
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise OutputError(f"cannot create the lock file {str(path)!r} for output "
                              f"{str(output)!r}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"another depthflow run is writing {str(output)!r} (lock "
                                  f"{path.name}); wait for it to finish or choose another "
                                  "output") from None
            raise OutputError(f"cannot lock output {str(output)!r}: "
                              f"{exc.strerror or exc}") from exc
        try:                        # the file may have been removed by the previous holder
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if same:
            os.write(fd, f"{os.getpid()}\n".encode())
            return path, fd
        os.close(fd)
    raise OutputError(f"cannot lock output {str(output)!r}: the lock file keeps changing")
