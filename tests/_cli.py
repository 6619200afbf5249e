"""Helpers shared by the bad-input corpora: run the CLI in-process, snapshot a folder."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner

from depthflow.cli.main import main


def run(*args, env=None):
    """``depthflow ARGS`` through click's runner (exceptions propagate: a traceback fails)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry below ``root``: file bytes, link targets, 'fifo' or 'dir'."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_fifo():
                out[rel] = "fifo"
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "dir"
    return out
