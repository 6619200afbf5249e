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


def assert_one_line_error(folder: Path, argv: list, *, code: int, match: str):
    """Run ``depthflow ARGV`` inside ``folder`` (a trailing dict is the environment) and
    check the bad-input contract: exit ``code``, one ``Error:`` line containing ``match``,
    no traceback, and ``folder`` byte-identical afterwards. Returns the click result."""
    env = argv.pop() if isinstance(argv[-1], dict) else None
    before = snapshot(folder)
    cwd = os.getcwd()
    os.chdir(folder)                            # a default output would land here
    try:
        result = run(*argv, env=env)
    finally:
        os.chdir(cwd)
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    assert match.lower() in lines[0].lower(), lines[0]
    assert snapshot(folder) == before, "files were created, changed or left behind"
    return result
