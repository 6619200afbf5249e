"""Safe file output: atomic writes and overwrite guards.

Nothing depthflow writes is ever half-written: every file goes to a temporary name beside
its target and is renamed into place only once complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from depthflow.errors import OutputError


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Validate an output file path before any work is done.

    Raises :class:`OutputError` when the directory is missing or not writable, or when the
    file exists and ``overwrite`` is false.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise OutputError(f"output path {str(target)!r} is a directory; give a file name")
    if not parent.is_dir():
        raise OutputError(
            f"output directory {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {str(parent)!r} is not writable")
    if target.exists() and not overwrite:
        raise OutputError(
            f"output {str(target)!r} exists; pass --overwrite (overwrite=True) to replace it")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = check_output_path(path, overwrite=overwrite)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent if str(target.parent) else ".")
    except OSError as exc:
        raise OutputError(f"cannot write in {str(target.parent)!r}: "
                          f"{exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if target.exists() and not overwrite:
            raise OutputError(
                f"output {str(target)!r} appeared while writing; pass --overwrite to replace it")
        os.chmod(tmp, 0o666 & ~umask())          # mkstemp makes 0600; use the usual mode
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (or, for a directory, of its files in sorted order)."""
    digest = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            digest.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()
