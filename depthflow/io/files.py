"""Safe file output: atomic writes, overwrite guards, and temporary files that a crash
cannot leave behind for good.

Nothing depthflow writes is ever half-written: every file (and every figure directory) goes
to a hidden temporary name beside its target and is renamed into place only once complete.
Temporary names carry the host name and process id,
``.<target>.depthflow-<host>-<pid>-<random>.tmp``; when a later run writes the same target
it removes the temporaries of that target whose process (on this host) is gone, e.g. after
``kill -9`` or an out-of-memory kill. Temporaries of other hosts (a shared file system) are
left alone, since their process cannot be checked from here.

Symbolic links: an output path that is a link, dangling or not, counts as existing (it is
never replaced without ``overwrite``); with ``overwrite`` the file the link points to is
written (the link stays a link).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from depthflow.errors import ConfigError, OutputError

__all__ = ["check_output_path", "atomic_path", "atomic_dir", "temp_name", "remove_stale_temps",
           "umask", "sha256_file"]

_TEMP = re.compile(r"^\.(?P<target>.+)\.depthflow-(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)-"
                   r"[0-9a-f]+\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"


def temp_name(target_name: str) -> str:
    """A hidden temporary name for ``target_name``: host, pid and a random part."""
    return f".{target_name}.depthflow-{_host()}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike[str], target_name: str | None = None
                       ) -> list[Path]:
    """Remove the temporaries (files or directories) in ``directory`` left by depthflow
    processes of this host that no longer run (of ``target_name`` only, when given).
    Returns what was removed; errors are ignored (another run may be removing them too)."""
    removed = []
    host = _host()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or match["host"] != host:
            continue
        if target_name is not None and _root_target(match["target"]) != target_name:
            continue
        if _alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _root_target(name: str) -> str:
    """The target a (possibly nested: a temporary of a temporary) temporary name is for."""
    while (match := _TEMP.match(name)) is not None:
        name = match["target"]
    return name


def _final(target: Path) -> Path:
    """Where the bytes of ``target`` go: the file a symbolic link points to."""
    return Path(os.path.realpath(target)) if target.is_symlink() else target


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Validate an output file path before any work is done.

    Raises :class:`ConfigError` for an empty path, :class:`OutputError` when the directory
    is missing or cannot be written (tried with a temporary file, so a read-only file
    system or a full quota is found now, not after the model has run), when the path is a
    directory, or when the file (or a symbolic link, even a dangling one) exists and
    ``overwrite`` is false.
    """
    if str(path).strip() == "":
        raise ConfigError("the output path is empty; give a file name (e.g. -o run.nc)")
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"output path {str(target)!r} is a directory; give a file name")
    if os.path.lexists(target) and not overwrite:
        what = "is a symbolic link" if target.is_symlink() else "exists"
        raise OutputError(
            f"output {str(target)!r} {what}; pass --overwrite (overwrite=True) to replace it")
    final = _final(target)
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(
            f"output directory {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {str(parent)!r} is not writable")
    _probe(parent)
    return target


def _probe(directory: Path) -> None:
    probe = directory / temp_name("probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        raise OutputError(f"output directory {str(directory)!r} is not writable: "
                          f"{exc.strerror or exc}") from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        probe.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched; stale
    temporaries of ``path`` from dead processes are removed first. When ``path`` is a
    symbolic link (and ``overwrite`` is set) the file it points to is replaced.
    """
    target = check_output_path(path, overwrite=overwrite)
    final = _final(target)
    parent = final.parent if str(final.parent) else Path(".")
    remove_stale_temps(parent, final.name)
    tmp = parent / temp_name(final.name)
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~umask())
    except OSError as exc:
        raise OutputError(f"cannot write in {str(parent)!r}: "
                          f"{exc.strerror or exc}") from exc
    os.close(fd)
    try:
        yield tmp
        if os.path.lexists(target) and not overwrite:
            raise OutputError(
                f"output {str(target)!r} appeared while writing; pass --overwrite to replace it")
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False,
               replace=None) -> Iterator[Path]:
    """Yield a temporary directory beside ``path`` (mode from the umask); on success it
    replaces ``path`` (an existing directory is removed first, only with ``overwrite``;
    ``replace(tmp, final)``, when given, does that instead, e.g. keeping files depthflow
    did not write). On any exception it is removed and ``path`` is left untouched."""
    target = Path(path)
    if str(path).strip() == "":
        raise ConfigError("the figure directory is empty; give a directory name")
    if os.path.lexists(target) and not overwrite:
        raise OutputError(f"directory {str(target)!r} exists; pass --overwrite to replace it")
    if os.path.lexists(target) and not target.is_dir():
        raise OutputError(f"{str(target)!r} exists and is not a directory")
    final = _final(target)
    parent = final.parent if str(final.parent) else Path(".")
    remove_stale_temps(parent, final.name)
    tmp = parent / temp_name(final.name)
    try:
        os.mkdir(tmp, 0o777 & ~umask())
    except OSError as exc:
        raise OutputError(f"cannot write in {str(parent)!r}: {exc.strerror or exc}") from exc
    try:
        yield tmp
        if final.exists() and replace is not None:
            replace(tmp, final)
        elif final.exists():
            old = parent / temp_name(final.name)
            os.replace(final, old)               # a rename: the old set stays whole until
            os.replace(tmp, final)               # the new one is in place
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def umask() -> int:
    """The process umask (read without changing it for long)."""
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
