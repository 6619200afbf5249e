"""The package's architecture as tests: no import cycles (function-level and type-only
``if TYPE_CHECKING:`` imports included), no imports through importlib, and loading a ViT does
not import the Raptor stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"depthflow": ROOT / "depthflow", "depthflow.cli": ROOT / "cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(name: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = name.split(".") if _is_package(name) else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(name: str, tree: ast.AST) -> set[str]:
    """Every depthflow module ``name`` imports (at any level of the code, ``if
    TYPE_CHECKING:`` blocks included: a cycle through annotations is still a cycle a reader
    has to untangle, and breaks as soon as one of its imports is needed at run time), with
    the parent packages Python imports on the way, except the importer's own ancestors (they
    are initialised before it) and the root package (it aggregates)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(name, node)
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    out = set()
    for target in found:
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            candidate = ".".join(parts[:i])
            own_ancestor = name.startswith(candidate + ".")
            if candidate in MODULES and candidate != name and not own_ancestor:
                out.add(candidate)
    return out


def import_graph() -> dict[str, set[str]]:
    return {name: _targets(name, ast.parse(path.read_text())) for name, path in MODULES.items()
            if name != "depthflow"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph, or None (iterative DFS with colours)."""
    colour: dict[str, int] = {}
    for start in sorted(graph):
        if colour.get(start):
            continue
        stack = [(start, iter(sorted(graph.get(start, ()))))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            if child not in graph:
                continue
            if colour.get(child) == 1:
                return path[path.index(child):] + [child]
            if not colour.get(child):
                colour[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "depthflow.raptor.io" in graph["depthflow.api.loader"]          # a function-level one
    assert "depthflow.analysis.context" in graph["depthflow.phases.analysis"]


def test_the_graph_sees_type_only_imports():
    graph = import_graph()
    assert "depthflow.io.netcdf" in graph["depthflow.analysis.summaries"]   # TYPE_CHECKING
    planted = ast.parse("from typing import TYPE_CHECKING\n"
                        "if TYPE_CHECKING:\n    from depthflow.phases.analysis import X\n")
    assert "depthflow.phases.analysis" in _targets("depthflow.phases.datasets", planted)


def test_phase_options_live_below_both_their_users():
    """The former type-only cycle datasets -> analysis -> datasets: ``PhaseConfig`` and its
    default k are defined once, in ``phases.config``, which imports neither."""
    from depthflow.phases import analysis, config, datasets

    assert analysis.PhaseConfig is config.PhaseConfig
    assert config.PhaseConfig().k_max == config.DEFAULT_K_MAX
    graph = import_graph()
    assert "depthflow.phases.config" in graph["depthflow.phases.datasets"]
    assert not graph["depthflow.phases.config"] & {"depthflow.phases.analysis",
                                                    "depthflow.phases.datasets"}


# The table of old import paths (written by the package-layout migration) imports its
# targets by name on purpose; tests/test_layout.py checks every target.
DYNAMIC_IMPORTERS = {"depthflow._aliases"}


@pytest.mark.parametrize("name", sorted(set(MODULES) - DYNAMIC_IMPORTERS))
def test_no_imports_through_importlib(name):
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = getattr(func, "attr", getattr(func, "id", ""))
            assert called not in ("import_module", "__import__"), \
                f"{name}:{node.lineno} imports a module through importlib"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("depthflow.cli.")))
def test_commands_import_nothing_from_cli_main(name):
    if name == "depthflow.cli.main":
        return
    assert "depthflow.cli.main" not in _targets(name, ast.parse(MODULES[name].read_text()))


def test_every_module_says_what_it_is_for():
    for name, path in MODULES.items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{name} has no module docstring"


def test_loading_a_vit_does_not_import_the_raptor_stack():
    code = ("import sys, depthflow; depthflow.load_model(); "
            "bad = sorted(m for m in sys.modules if m.startswith('depthflow.raptor')); "
            "print(bad); assert not bad")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_public_api_is_at_the_top():
    import depthflow

    for name in ("load_model", "open_images", "analyze", "AnalyzeConfig", "open_result",
                 "maps", "dynamics", "phases", "raptor", "DepthflowError"):
        assert getattr(depthflow, name) is not None
    assert depthflow.raptor.fit_raptor is not None
