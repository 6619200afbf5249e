"""The package layout (issue 22): the top of ``depthflow/`` holds at most 6
modules, every package folder is installed, no source names an old module path, and every
old path of ``depthflow._aliases.ALIASES`` still imports, as the new module itself.

Written by the layout migration (``studies/migration/relayout.py``); relayout: keep.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from depthflow._aliases import ALIASES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "depthflow"
MARKER = "relayout: " + "keep"


def test_the_top_level_holds_the_public_api_and_few_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 6, modules
    assert {"__init__.py", "errors.py", "_version.py"} <= set(modules)


def test_no_module_file_remains_at_an_old_path():
    for old in ALIASES:
        path = ROOT.joinpath(*old.split(".")).with_suffix(".py")
        assert not path.exists(), f"{path} is back: move it to {ALIASES[old]}"


@pytest.mark.parametrize("old", sorted(ALIASES))
def test_an_old_path_imports_the_new_module_itself(old):
    new = importlib.import_module(ALIASES[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=re.escape(ALIASES[old])) as record:
        module = importlib.import_module(old)
    assert module is new
    assert record[0].filename == __file__          # the warning points at the importer
    assert module.__name__ == ALIASES[old] and module.__spec__.name == ALIASES[old]


def test_old_import_statements_work_in_a_fresh_interpreter():
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "import depthflow.data.images as new, depthflow.dynamics.attractors.basins as nb\n"
            "warnings.simplefilter('ignore', DeprecationWarning)\n"
            "import depthflow.images as old\n"
            "from depthflow.images import open_images\n"
            "from depthflow.dynamics.basins import basins_fractions\n"
            "from depthflow import maps, dynamics\n"
            "assert old is new and open_images is new.open_images\n"
            "assert basins_fractions is nb.basins_fractions\n"
            "assert maps is dynamics.maps and maps.__name__ == 'depthflow.dynamics.maps'\n"
            "print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_an_unknown_module_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("depthflow.no_such_module")


def test_every_package_folder_is_installed():
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"([\w.]+)"', re.search(r"^packages\s*=\s*\[[^\]]*\]",
                                                       text, re.M).group(0)))
    on_disk = {".".join(["depthflow", *p.parent.relative_to(PACKAGE).parts])
               for p in PACKAGE.rglob("__init__.py")}
    assert listed == on_disk | {"depthflow.cli"}


def _relayout():
    spec = importlib.util.spec_from_file_location("relayout",
                                                  ROOT / "studies/migration/relayout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_migration_rewrites_imports_and_paths_word_by_word():
    R = _relayout()
    src = ("from depthflow import dynamics, maps, phases\n"
           "from depthflow import report\n"
           "from depthflow.dynamics import oracles, basins as b\n"
           "x = 'depthflow.config.Options', 'depthflow.configs', 'depthflow.raptor.config'\n"
           "y = 'depthflow/images.py', 'my.depthflow.images', 'depthflow.images_old'\n")
    out, n = R.rewrite_from_imports(src, R.MOVES)
    pattern, table = R.path_patterns(R.MOVES)
    out, paths = R.rewrite_text(out, pattern, table)
    assert out == ("from depthflow import dynamics, phases\n"
                   "from depthflow.dynamics import maps\n"
                   "from depthflow.reporting import info as report\n"
                   "from depthflow.dynamics import oracles\n"
                   "from depthflow.dynamics.attractors import basins as b\n"
                   "x = 'depthflow.core.config.Options', 'depthflow.configs', "
                   "'depthflow.raptor.config'\n"
                   "y = 'depthflow/data/images.py', 'my.depthflow.images', "
                   "'depthflow.images_old'\n")
    assert (n, paths) == (3, 2)
    assert R.rewrite_from_imports(out, R.MOVES) == (out, 0)          # idempotent
    assert R.split_paths("x = ('depthflow.dynamics' '.basins')\n", pattern) == [
        "1: depthflow.dynamics.basins"]


def test_the_migration_has_nothing_left_to_do():
    run = subprocess.run([sys.executable, "studies/migration/relayout.py", "--dry-run"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert " 0 module(s) to move" in run.stdout, run.stdout
    assert "files naming old paths: 0" in run.stdout, run.stdout


def test_no_source_names_an_old_module_path():
    pattern = re.compile(r"(?<![\w./])(?:" + "|".join(
        re.escape(k) for k in sorted(ALIASES, key=len, reverse=True)) + r")(?!\w)")
    files = [p for folder in ("depthflow", "cli", "tests", "studies", "docs")
             for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md")]
    bad = []
    for path in files:
        text = path.read_text(errors="ignore")
        if MARKER in text:
            continue
        bad += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in pattern.finditer(text)]
    assert not bad, "old module paths (run studies/migration/relayout.py): " + ", ".join(bad)
