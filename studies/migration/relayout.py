#!/usr/bin/env python3
"""relayout: move depthflow's modules into folders named for what they do (issue 22, req. 2).

Run from the root of a checkout of the depthflow repository (the script is also kept in the
repository as ``studies/migration/relayout.py``)::

    python relayout.py               # apply the layout (idempotent: a second run changes nothing)
    python relayout.py --dry-run     # print the plan and the files that name old paths
    python relayout.py --move depthflow.seeds=depthflow.core.seeds   # one more move

What it does, in this order, printing each step:

1. relative imports in ``depthflow/`` and ``cli/`` become absolute (resolved where the file
   is now, before anything moves);
2. ``git mv`` of every module of :data:`MOVES` whose old file exists (new packages get an
   ``__init__.py`` with a docstring unless one is there already; files it does not know
   stay where they are);
3. every ``.py`` of the repository (depthflow/, cli/, tests/, studies/, docs/ ...) gets its
   imports rewritten: ``from depthflow.images import X`` -> ``from depthflow.data.images
   import X``, ``from depthflow import maps`` -> ``from depthflow.dynamics import maps``
   (split when one statement names modules that now live in different packages); then
   every dotted old path anywhere in the text (strings: monkeypatch targets,
   ``python -m ...``, ``import_module("...")``; comments, docstrings) and every
   ``depthflow/<old>.py`` file path, word-boundary safe, in ``.py``, ``.md``, ``.toml``,
   ``.cfg``, ``.ini``, ``.txt`` and ``Makefile`` files. A file containing the marker
   ``relayout: keep`` is left untouched (this script, the alias table, its test and the
   architecture page written for the new layout);
4. ``depthflow/_aliases.py`` (the table old path -> new path and a meta-path finder that
   makes ``import depthflow.images`` give the module ``depthflow.data.images`` itself, with
   a DeprecationWarning), its import in ``depthflow/__init__.py`` and ``tests/test_layout.py``
   are (re)written;
5. ``[tool.setuptools] packages`` of ``pyproject.toml`` is regenerated from the folders on
   disk.

Nothing is committed: review with ``git status`` / ``git diff -M --stat`` and commit.
relayout: keep
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

MARKER = "relayout: " + "keep"        # split so that this line alone does not carry it

# old dotted module path -> new dotted module path (modules only; packages stay)
MOVES: dict[str, str] = {
    # data in and out of the model
    "depthflow.images": "depthflow.data.images",
    "depthflow.collections": "depthflow.data.collections",
    "depthflow.trajectory": "depthflow.data.trajectory",
    "depthflow.tokens": "depthflow.data.tokens",
    # shared foundations
    "depthflow.config": "depthflow.core.config",
    "depthflow.limits": "depthflow.core.limits",
    "depthflow.vocabulary": "depthflow.core.vocabulary",
    "depthflow.distributed": "depthflow.core.distributed",
    "depthflow._crash": "depthflow.core._crash",
    "depthflow._memory": "depthflow.core._memory",
    # entry points resolving what a user named
    "depthflow.loader": "depthflow.api.loader",
    "depthflow.workflows": "depthflow.api.workflows",
    # reports on result files (`depthflow info`)
    "depthflow.report": "depthflow.reporting.info",
    # the depth-map abstraction lives with what is computed on it
    "depthflow.maps": "depthflow.dynamics.maps",
    # dynamics: tangent maps and exponents
    "depthflow.dynamics.finite_depth": "depthflow.dynamics.tangent.finite_depth",
    "depthflow.dynamics.stretching": "depthflow.dynamics.tangent.stretching",
    "depthflow.dynamics._bidiag": "depthflow.dynamics.tangent._bidiag",
    "depthflow.dynamics._propagator": "depthflow.dynamics.tangent._propagator",
    "depthflow.dynamics.spectra": "depthflow.dynamics.tangent.spectra",
    "depthflow.dynamics._linalg": "depthflow.dynamics.tangent._linalg",
    "depthflow.dynamics.lyapunov": "depthflow.dynamics.tangent.lyapunov",
    # dynamics: fixed points and their stability
    "depthflow.dynamics.fixed_points": "depthflow.dynamics.fixedpoints.fixed_points",
    "depthflow.dynamics._newton": "depthflow.dynamics.fixedpoints._newton",
    "depthflow.dynamics._stability": "depthflow.dynamics.fixedpoints._stability",
    "depthflow.dynamics.norm_sensitivity": "depthflow.dynamics.fixedpoints.norm_sensitivity",
    # dynamics: basins of attraction (Attractors.jl's word)
    "depthflow.dynamics.basins": "depthflow.dynamics.attractors.basins",
    "depthflow.dynamics.class_basins": "depthflow.dynamics.attractors.class_basins",
    "depthflow.dynamics.basin_robustness": "depthflow.dynamics.attractors.basin_robustness",
    "depthflow.dynamics._class_stats": "depthflow.dynamics.attractors._class_stats",
}

# docstrings of the packages the layout creates (written only where no __init__.py exists)
PACKAGE_DOCS: dict[str, str] = {
    "depthflow.data": (
        "Data in and out of a model: image sources (:mod:`~depthflow.data.images`; large "
        "collections\nread in place, :mod:`~depthflow.data.collections`), trajectories "
        "streamed through a model\n(:mod:`~depthflow.data.trajectory`) and the token "
        "measures computed on them\n(:mod:`~depthflow.data.tokens`)."),
    "depthflow.core": (
        "Shared foundations every other package may import: options dataclasses\n"
        "(:mod:`~depthflow.core.config`), resource limits (:mod:`~depthflow.core.limits`), "
        "the results\nvocabulary (:mod:`~depthflow.core.vocabulary`), torchrun helpers\n"
        "(:mod:`~depthflow.core.distributed`) and the crash and memory helpers "
        "(``_crash``, ``_memory``).\nNothing here imports anything of depthflow above "
        ":mod:`depthflow.errors`."),
    "depthflow.api": (
        "Entry points that resolve what a user named: :func:`~depthflow.api.loader.load_model`"
        "\n(checkpoints, named models, modules, Raptor directories) and one library call per "
        "CLI\ncommand (:mod:`~depthflow.api.workflows`). ``depthflow/__init__.py`` re-exports "
        "the public\nnames."),
    "depthflow.reporting": (
        "Reports on result files: the text summary of ``depthflow info``\n"
        "(:mod:`~depthflow.reporting.info`)."),
    "depthflow.dynamics.tangent": (
        "Tangent dynamics: finite-depth Lyapunov spectra of the real model and per-layer\n"
        "stretching (``finite_depth``, ``stretching``, with ``_bidiag`` and "
        "``_propagator``), tangent\nspectra of one map (``spectra``, ``_linalg``) and "
        "asymptotic QR spectra of iterated maps\n(``lyapunov``)."),
    "depthflow.dynamics.fixedpoints": (
        "Fixed points of depth maps: Newton-Krylov search (``fixed_points``, ``_newton``), "
        "their\nstability labels (``_stability``) and their sensitivity to the reference "
        "norm\n(``norm_sensitivity``)."),
    "depthflow.dynamics.attractors": (
        "Basins of attraction of iterated maps (``basins``), class-dependent basins\n"
        "(``class_basins``) and their robustness (``basin_robustness``), with the shared "
        "statistics\n(``_class_stats``)."),
}

SOURCE_ROOTS = {"depthflow": Path("depthflow"), "depthflow.cli": Path("cli")}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".ini", ".txt", ".rst"}
TEXT_NAMES = {"Makefile"}
WIDTH = 100                      # the house's line length
TOP_LEVEL_LIMIT = 6


def say(msg: str) -> None:
    print(msg, flush=True)


def git(*args: str, check: bool = True) -> str:
    run = subprocess.run(["git", *args], capture_output=True, text=True)
    if check and run.returncode:
        sys.exit(f"relayout: git {' '.join(args)} failed: {run.stderr.strip()}")
    return run.stdout


# ------------------------------------------------------------------ paths and module names

def module_file(dotted: str) -> Path:
    """The file of a module path (``depthflow.data.images`` -> depthflow/data/images.py)."""
    for package, root in sorted(SOURCE_ROOTS.items(), key=lambda kv: -len(kv[0])):
        if dotted == package or dotted.startswith(package + "."):
            rest = dotted[len(package):].lstrip(".").split(".") if dotted != package else []
            return root.joinpath(*rest).with_suffix(".py") if rest else root / "__init__.py"
    raise ValueError(dotted)


def package_init(dotted: str) -> Path:
    """The ``__init__.py`` of a package path (``depthflow.data`` -> depthflow/data/...)."""
    return module_file(dotted).with_suffix("") / "__init__.py"


def module_name(path: Path) -> tuple[str, bool] | None:
    """(dotted name, is a package) of a source file, or None outside the packages."""
    for package, root in SOURCE_ROOTS.items():
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        parts = list(rel.with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        return ".".join([package, *parts]), is_pkg
    return None


def tracked_files() -> list[Path]:
    out = git("ls-files", "-co", "--exclude-standard", "-z")
    return sorted(Path(p) for p in out.split("\0") if p and Path(p).is_file())


def is_text(path: Path) -> bool:
    return path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES


# ------------------------------------------------------------------ source editing helpers

def _offsets(src: str) -> list[int]:
    starts, pos = [], 0
    for line in src.splitlines(keepends=True):
        starts.append(pos)
        pos += len(line)
    starts.append(pos)
    return starts


def _char_index(src: str, starts: list[int], lineno: int, col_bytes: int) -> int:
    line = src[starts[lineno - 1]:starts[lineno] if lineno < len(starts) else len(src)]
    return starts[lineno - 1] + len(line.encode()[:col_bytes].decode(errors="ignore"))


def _span(src: str, starts: list[int], node: ast.AST) -> tuple[int, int]:
    return (_char_index(src, starts, node.lineno, node.col_offset),
            _char_index(src, starts, node.end_lineno, node.end_col_offset))


def _indent_of(src: str, start: int) -> str | None:
    """The indentation before ``start`` if only whitespace precedes it on its line."""
    line_start = src.rfind("\n", 0, start) + 1
    before = src[line_start:start]
    return before if before.strip() == "" else None


def format_from(module: str, names: list[tuple[str, str | None]], indent: str) -> str:
    """``from module import a, b as c`` wrapped house-style (hanging, aligned to the paren)
    at WIDTH; the first line carries no indentation (it replaces a span that starts after
    it)."""
    items = [n if a is None else f"{n} as {a}" for n, a in names]
    one = f"from {module} import {', '.join(items)}"
    if len(indent) + len(one) <= WIDTH:
        return one
    head = f"from {module} import ("
    pad = indent + " " * len(head)
    lines, cur = [], head
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else ")")
        if cur == head:
            cur += piece
        elif (len(indent) if not lines else 0) + len(cur) + 1 + len(piece) <= WIDTH:
            cur += " " + piece
        else:
            lines.append(cur)
            cur = pad + piece
    lines.append(cur)
    return "\n".join(lines)


def replace_spans(src: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, text in sorted(edits, reverse=True):
        src = src[:start] + text + src[end:]
    return src


# ------------------------------------------------------------------ step 1: relative imports

_REL = re.compile(r"^from\s+(\.+)\s*([\w.]*)\s+import\b")


def absolute_imports(path: Path) -> int:
    """Rewrite the relative imports of a package file as absolute ones (the prefix
    ``from .x import`` only: formatting and comments stay)."""
    named = module_name(path)
    if named is None:
        return 0
    name, is_pkg = named
    src = path.read_text()
    try:
        tree = ast.parse(src)
    except SyntaxError as exc:
        say(f"  ! {path}: not parsed ({exc.msg}, line {exc.lineno}); relative imports kept")
        return 0
    starts, edits = _offsets(src), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = name.split(".") if is_pkg else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            start, end = _span(src, starts, node)
            text = src[start:end]
            match = _REL.match(text)
            if not match:
                say(f"  ! {path}:{node.lineno}: relative import not rewritten")
                continue
            edits.append((start, start + match.end(), f"from {target} import"))
    if edits:
        path.write_text(replace_spans(src, edits))
    return len(edits)


# ------------------------------------------------------------------ step 3: import rewriting

def map_dotted(dotted: str, moves: dict[str, str]) -> str:
    for old in sorted(moves, key=len, reverse=True):
        if dotted == old or dotted.startswith(old + "."):
            return moves[old] + dotted[len(old):]
    return dotted


def rewrite_from_imports(src: str, moves: dict[str, str]) -> tuple[str, int]:
    """Rewrite ``from M import names`` statements whose module moved or which import a
    moved module by name from its package; returns (new source, statements changed)."""
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return src, 0
    starts, edits = _offsets(src), []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                and node.module.split(".")[0] == "depthflow"):
            continue
        new_module = map_dotted(node.module, moves)
        groups: dict[str, list[tuple[str, str | None]]] = {new_module: []}
        for alias in node.names:
            full = f"{node.module}.{alias.name}"
            if alias.name != "*" and full in moves:
                parent, base = moves[full].rsplit(".", 1)
                asname = alias.asname or (alias.name if base != alias.name else None)
                groups.setdefault(parent, []).append((base, asname))
            else:
                groups[new_module].append((alias.name, alias.asname))
        groups = {m: names for m, names in groups.items() if names}
        if list(groups) == [node.module]:
            continue
        start, end = _span(src, starts, node)
        text = src[start:end]
        indent = _indent_of(src, start)
        if "#" not in text and indent is not None:
            sep = "\n" + indent
            new = sep.join(format_from(m, names, indent) for m, names in groups.items())
        elif len(groups) == 1:          # comments inside: change the module, shift the rest
            head = re.match(r"from\s+[\w.]+", text)
            delta = len(new_module) - len(node.module)
            new = f"from {new_module}" + text[head.end():]
            if "(" in text and delta:
                col = _char_index(src, starts, node.lineno, 0)
                paren = start - col + text.index("(") + 1
                new = re.sub(rf"\n {{{paren}}}(?=\S)", "\n" + " " * (paren + delta), new)
        else:
            say(f"  ! cannot split an import with comments inside (line {node.lineno}); "
                "edit by hand")
            continue
        edits.append((start, end, new))
    return replace_spans(src, edits), len(edits)


def path_patterns(moves: dict[str, str]) -> tuple[re.Pattern, dict[str, str]]:
    """One regex for every old dotted path and every old file path ``depthflow/x.py``."""
    table = dict(moves)
    for old, new in moves.items():
        table[module_file(old).as_posix()] = module_file(new).as_posix()
    alternatives = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
    return re.compile(rf"(?<![\w./])(?:{alternatives})(?!\w)"), table


def rewrite_text(src: str, pattern: re.Pattern, table: dict[str, str]) -> tuple[str, int]:
    return pattern.subn(lambda m: table[m.group(0)], src)


def split_paths(src: str, pattern: re.Pattern) -> list[str]:
    """Old paths a text rewrite cannot see: inside one string value made of several
    adjacent literals (``"(depthflow.dynamics" ".finite_depth)"``); 'line: path' each."""
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            segment = ast.get_source_segment(src, node) or ""
            out += [f"{node.lineno}: {m.group(0)}" for m in pattern.finditer(node.value)
                    if m.group(0) not in segment]
    return out


# ------------------------------------------------------------------ step 4: generated files

def aliases_source(moves: dict[str, str]) -> str:
    rows = "\n".join(f"    {old!r}: {new!r}," for old, new in sorted(moves.items()))
    return f'''"""Old import paths of depthflow's modules, kept for one release after the package layout
moved them into folders named for what they do (``docs/architecture.md``, "Packages").

``import depthflow.images`` and ``from depthflow.images import open_images`` give the module
``depthflow.data.images`` itself (the same object: monkeypatching either name patches both)
and warn once with a ``DeprecationWarning`` naming the new path. No file remains at an old
path and nothing is added to the top of the package: a meta-path finder, installed by
``depthflow/__init__.py``, answers for the names of :data:`ALIASES` only (after every other
finder, so a real module of that name would win).

Written by the layout migration (``studies/migration/relayout.py``), with the test
``tests/test_layout.py``; {MARKER} (the migration never rewrites this file).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import warnings

ALIASES: dict[str, str] = {{
{rows}
}}


class AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new path."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {{}}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in ALIASES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        new = ALIASES[spec.name]
        warnings.warn(f"{{spec.name}} moved to {{new}}; import it from there (the old path "
                      "goes in the next release)", DeprecationWarning, stacklevel=_caller())
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # the import system set the old name's spec on the real module: give its own back
        spec = module.__spec__
        if spec is not None and spec.name in self._specs:
            module.__spec__ = self._specs.pop(spec.name)


def _caller() -> int:
    """The stack level (for ``warnings.warn`` in a caller of this function) of the first
    frame outside the import machinery, this module and ``depthflow/__init__.py``."""
    here = {{__file__, os.path.join(os.path.dirname(__file__), "__init__.py"),
            importlib.__file__}}
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_code.co_filename
        internal = "importlib" in name and "_bootstrap" in name   # warnings skips these
        if not internal and name not in here:
            return level
        level += not internal
        frame = frame.f_back
    return level


def attribute(name: str):
    """``depthflow.<name>`` for an old module path reached as an attribute of the package
    (``import depthflow; depthflow.images``), or None: ``depthflow.__getattr__`` asks."""
    old = f"{{__package__}}.{{name}}"
    return importlib.import_module(old) if old in ALIASES else None


def install() -> None:
    """Append the finder to ``sys.meta_path`` once."""
    if not any(type(f).__name__ == "AliasFinder" and type(f).__module__ == __name__
               for f in sys.meta_path):
        sys.meta_path.append(AliasFinder())


install()
'''


INIT_IMPORT = ("from depthflow import _aliases  # noqa: F401 - old import paths for one "
               "release")


GETATTR_HOOK = ("    module = _aliases.attribute(name)      # an old module path, for one release\n"
                "    if module is not None:\n"
                "        return module\n")


def ensure_getattr_hook(path: Path) -> bool:
    """Let ``depthflow.<old module>`` as an attribute reach the alias table: insert a call at
    the top of the package's ``__getattr__`` (after its docstring)."""
    src = path.read_text()
    if "_aliases.attribute(" in src:
        return False
    tree = ast.parse(src)
    hook = next((n for n in tree.body if isinstance(n, ast.FunctionDef)
                 and n.name == "__getattr__"), None)
    if hook is None:
        lines = src.rstrip("\n") + "\n\n\ndef __getattr__(name: str):\n" + GETATTR_HOOK + (
            "    raise AttributeError(f\"module 'depthflow' has no attribute {name!r}\")\n")
        path.write_text(lines)
        return True
    first = hook.body[0]
    is_doc = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
              and isinstance(first.value.value, str))
    at = first.end_lineno if is_doc else first.lineno - 1
    if not is_doc and first.col_offset != 4:
        say("  ! depthflow.__getattr__ is not indented by 4 spaces: add the alias hook by hand")
        return False
    lines = src.splitlines(keepends=True)
    lines.insert(at, GETATTR_HOOK)
    path.write_text("".join(lines))
    return True


def ensure_init_import(path: Path) -> bool:
    src = path.read_text()
    if "import _aliases" in src:
        return False
    tree = ast.parse(src)
    body = tree.body
    first = next((n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))
                  and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")), None)
    lines = src.splitlines(keepends=True)
    at = (first.lineno - 1) if first is not None else len(lines)
    lines.insert(at, INIT_IMPORT + "\n")
    path.write_text("".join(lines))
    return True


def layout_test_source() -> str:
    return f'''"""The package layout (issue 22): the top of ``depthflow/`` holds at most {TOP_LEVEL_LIMIT}
modules, every package folder is installed, no source names an old module path, and every
old path of ``depthflow._aliases.ALIASES`` still imports, as the new module itself.

Written by the layout migration (``studies/migration/relayout.py``); {MARKER}.
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
    assert len(modules) <= {TOP_LEVEL_LIMIT}, modules
    assert {{"__init__.py", "errors.py", "_version.py"}} <= set(modules)


def test_no_module_file_remains_at_an_old_path():
    for old in ALIASES:
        path = ROOT.joinpath(*old.split(".")).with_suffix(".py")
        assert not path.exists(), f"{{path}} is back: move it to {{ALIASES[old]}}"


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
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\\n"
            "import depthflow.data.images as new, depthflow.dynamics.attractors.basins as nb\\n"
            "warnings.simplefilter('ignore', DeprecationWarning)\\n"
            "import depthflow.images as old\\n"
            "from depthflow.images import open_images\\n"
            "from depthflow.dynamics.basins import basins_fractions\\n"
            "from depthflow import maps, dynamics\\n"
            "assert old is new and open_images is new.open_images\\n"
            "assert basins_fractions is nb.basins_fractions\\n"
            "assert maps is dynamics.maps and maps.__name__ == 'depthflow.dynamics.maps'\\n"
            "print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_an_unknown_module_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("depthflow.no_such_module")


def test_every_package_folder_is_installed():
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"([\\w.]+)"', re.search(r"^packages\\s*=\\s*\\[[^\\]]*\\]",
                                                       text, re.M).group(0)))
    on_disk = {{".".join(["depthflow", *p.parent.relative_to(PACKAGE).parts])
               for p in PACKAGE.rglob("__init__.py")}}
    assert listed == on_disk | {{"depthflow.cli"}}


def _relayout():
    spec = importlib.util.spec_from_file_location("relayout",
                                                  ROOT / "studies/migration/relayout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_migration_rewrites_imports_and_paths_word_by_word():
    R = _relayout()
    src = ("from depthflow import dynamics, maps, phases\\n"
           "from depthflow import report\\n"
           "from depthflow.dynamics import oracles, basins as b\\n"
           "x = 'depthflow.config.Options', 'depthflow.configs', 'depthflow.raptor.config'\\n"
           "y = 'depthflow/images.py', 'my.depthflow.images', 'depthflow.images_old'\\n")
    out, n = R.rewrite_from_imports(src, R.MOVES)
    pattern, table = R.path_patterns(R.MOVES)
    out, paths = R.rewrite_text(out, pattern, table)
    assert out == ("from depthflow import dynamics, phases\\n"
                   "from depthflow.dynamics import maps\\n"
                   "from depthflow.reporting import info as report\\n"
                   "from depthflow.dynamics import oracles\\n"
                   "from depthflow.dynamics.attractors import basins as b\\n"
                   "x = 'depthflow.core.config.Options', 'depthflow.configs', "
                   "'depthflow.raptor.config'\\n"
                   "y = 'depthflow/data/images.py', 'my.depthflow.images', "
                   "'depthflow.images_old'\\n")
    assert (n, paths) == (3, 2)
    assert R.rewrite_from_imports(out, R.MOVES) == (out, 0)          # idempotent
    assert R.split_paths("x = ('depthflow.dynamics' '.basins')\\n", pattern) == [
        "1: depthflow.dynamics.basins"]


def test_the_migration_has_nothing_left_to_do():
    run = subprocess.run([sys.executable, "studies/migration/relayout.py", "--dry-run"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert " 0 module(s) to move" in run.stdout, run.stdout
    assert "files naming old paths: 0" in run.stdout, run.stdout


def test_no_source_names_an_old_module_path():
    pattern = re.compile(r"(?<![\\w./])(?:" + "|".join(
        re.escape(k) for k in sorted(ALIASES, key=len, reverse=True)) + r")(?!\\w)")
    files = [p for folder in ("depthflow", "cli", "tests", "studies", "docs")
             for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md")]
    bad = []
    for path in files:
        text = path.read_text(errors="ignore")
        if MARKER in text:
            continue
        bad += [f"{{path.relative_to(ROOT)}}: {{m.group(0)}}" for m in pattern.finditer(text)]
    assert not bad, "old module paths (run studies/migration/relayout.py): " + ", ".join(bad)
'''


def init_source(package: str) -> str:
    return f'"""{PACKAGE_DOCS.get(package, package + ".")}"""\n'


# ------------------------------------------------------------------ step 5: pyproject

def package_list() -> list[str]:
    names = set()
    for package, root in SOURCE_ROOTS.items():
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(root).parts
            names.add(".".join([package, *rel]))
    return sorted(names)


def rewrite_pyproject(path: Path) -> bool:
    src = path.read_text()
    match = re.search(r"^packages\s*=\s*\[[^\]]*\]", src, re.M)
    if not match:
        say("  ! pyproject.toml: no 'packages = [...]' under [tool.setuptools]; add the "
            "packages by hand")
        return False
    head = "packages = ["
    lines, cur = [], head
    names = [f'"{n}"' for n in package_list()]
    for i, name in enumerate(names):
        piece = name + ("," if i < len(names) - 1 else "]")
        if cur == head:
            cur += piece
        elif len(cur) + 1 + len(piece) <= WIDTH:
            cur += " " + piece
        else:
            lines.append(cur)
            cur = " " * len(head) + piece
    lines.append(cur)
    new = src[:match.start()] + "\n".join(lines) + src[match.end():]
    if new != src:
        path.write_text(new)
        return True
    return False


# ------------------------------------------------------------------ main

def plan(moves: dict[str, str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(moves to do now, every move whose new module exists or will exist)."""
    todo, active = [], {}
    for old, new in moves.items():
        src, dst = module_file(old), module_file(new)
        if src.exists() and dst.exists():
            sys.exit(f"relayout: both {src} and {dst} exist; merge them by hand, then rerun")
        if src.exists():
            todo.append((old, new))
            active[old] = new
        elif dst.exists():
            active[old] = new
        else:
            say(f"  ! neither {src} nor {dst} exists: {old} skipped")
    return todo, active


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and the files naming old paths; change nothing")
    parser.add_argument("--move", action="append", default=[], metavar="OLD=NEW",
                        help="one more module move (dotted paths), repeatable")
    args = parser.parse_args(argv)
    if not (Path("depthflow/__init__.py").is_file() and Path("pyproject.toml").is_file()):
        sys.exit("relayout: run it from the root of a depthflow checkout")
    moves = dict(MOVES)
    for item in args.move:
        old, _, new = item.partition("=")
        if not (old.startswith("depthflow.") and new.startswith("depthflow.")):
            sys.exit(f"relayout: --move wants depthflow.OLD=depthflow.NEW, got {item!r}")
        moves[old] = new
    if git("status", "--porcelain"):
        say("note: the working tree has uncommitted changes (they are rewritten too)")

    todo, active = plan(moves)
    say(f"1. plan: {len(todo)} module(s) to move, {len(active) - len(todo)} already moved")
    for old, new in todo:
        say(f"   {module_file(old)} -> {module_file(new)}")
    pattern, table = path_patterns(active) if active else (None, {})
    if args.dry_run:
        hits = []
        for path in tracked_files():
            if is_text(path) and pattern is not None:
                text = path.read_text(errors="ignore")
                if MARKER not in text:
                    n = len(pattern.findall(text))
                    if n:
                        hits.append(f"   {path}: {n}")
        say(f"   files naming old paths: {len(hits)}")
        say("\n".join(hits))
        return 0

    files = tracked_files()
    py_sources = [p for p in files if p.suffix == ".py" and module_name(p) is not None]
    n_rel = 0
    for path in py_sources:
        if MARKER not in path.read_text(errors="ignore"):
            n_rel += absolute_imports(path)
    say(f"2. relative imports made absolute: {n_rel}")

    created = []
    for old, new in todo:
        dst = module_file(new)
        parts = new.split(".")[:-1]
        for i in range(2, len(parts) + 1):          # new packages on the way
            package = ".".join(parts[:i])
            init = package_init(package)
            if not init.exists():
                init.parent.mkdir(parents=True, exist_ok=True)
                init.write_text(init_source(package))
                git("add", init.as_posix())
                created.append(init.as_posix())
        src = module_file(old)
        if git("ls-files", "--error-unmatch", src.as_posix(), check=False):
            git("mv", src.as_posix(), dst.as_posix())
        else:
            src.rename(dst)
    say(f"3. moved {len(todo)} module(s) with git mv; new packages: "
        f"{', '.join(created) if created else 'none'}")

    changed, split = [], []
    files = tracked_files()                        # after the moves
    for path in files:
        if not is_text(path) or pattern is None:
            continue
        text = path.read_text(errors="ignore")
        if MARKER in text:
            continue
        new, n_imports = (rewrite_from_imports(text, active) if path.suffix == ".py"
                          else (text, 0))
        new, n_paths = rewrite_text(new, pattern, table)
        if new != text:
            path.write_text(new)
            changed.append(f"   {path}: {n_imports} import statement(s), {n_paths} path(s)")
        if path.suffix == ".py":
            split += [f"{path}:{where}" for where in split_paths(new, pattern)]
    say(f"4. rewrote {len(changed)} file(s)")
    if changed:
        say("\n".join(changed))
    if split:
        say("   ! old paths split over adjacent string literals, not rewritten (join the "
            "literals, then rerun): " + ", ".join(split))
    others = []
    for path in files:
        if not is_text(path) and path.suffix in (".json", ".yaml", ".yml", ".csv"):
            text = path.read_text(errors="ignore")
            if pattern is not None and pattern.search(text):
                others.append(path.as_posix())
    if others:
        say(f"   ! data files naming old paths, left as they are: {', '.join(others)}")

    generated = []
    if active:
        for path, text in ((Path("depthflow/_aliases.py"), aliases_source(active)),
                           (Path("tests/test_layout.py"), layout_test_source())):
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                generated.append(path.as_posix())
        if ensure_init_import(Path("depthflow/__init__.py")):
            generated.append("depthflow/__init__.py (imports _aliases)")
        if ensure_getattr_hook(Path("depthflow/__init__.py")):
            generated.append("depthflow/__init__.py (__getattr__ asks _aliases)")
    if rewrite_pyproject(Path("pyproject.toml")):
        generated.append("pyproject.toml (packages)")
    say(f"5. generated: {', '.join(generated) if generated else 'nothing to change'}")

    top = sorted(p.name for p in Path("depthflow").glob("*.py"))
    known_old = {module_file(o).name for o in moves if module_file(o).parent == Path("depthflow")}
    say(f"6. depthflow/ top level: {len(top)} module(s): {', '.join(top)}")
    if len(top) > TOP_LEVEL_LIMIT:
        extra = [t for t in top if t not in known_old and t not in
                 ("__init__.py", "errors.py", "_version.py", "_aliases.py")]
        say(f"   ! more than {TOP_LEVEL_LIMIT}: give {', '.join(extra)} a home with "
            "--move depthflow.NAME=depthflow.PACKAGE.NAME")
    left = sorted(p.name for p in Path("depthflow/dynamics").glob("*.py"))
    say(f"   depthflow/dynamics/: {', '.join(left)}")
    if not todo and not changed and not generated and not n_rel:
        say("nothing to do: the layout is already applied")
    else:
        say("next: pytest tests/test_architecture.py tests/test_layout.py, review "
            "`git status`, commit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
