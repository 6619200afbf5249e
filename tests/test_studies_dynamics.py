"""Smoke test of ``studies/tables.py``: a tiny ViT analysed with a tiny dynamics budget, then
the markdown tables: the expected rows, a verdict on every row, an n and an interval for
every number, and the README block replaced only between its markers."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

import depthflow

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY_DYNAMICS = [
    "samples=4", "min_per_class=0", "k=2", "stretching_k=2", "tol=1e-3", "n_boot=20",
    "n_perm=20", "robustness_samples=12", "robustness_angles=0.1,0.8", "frozen_samples=2",
    "frozen_steps=10", "frozen_transient=5", "attractor_steps=5", "fixed_point_starts=2",
    "fixed_point_max_iter=2", "norm_scan_starts=1", "recovery_draws=1", "recovery_angles=0.1",
]
TITLES = ["Trajectory measures", "Finite-depth Lyapunov exponents", "Per-layer stretching",
          "Class dependence of the cls direction", "Basin entry depth", "Basin robustness",
          "Attractor view", "Directional fixed points", "Recovery",
          "Asymptotic exponent of the frozen late layer"]
VERDICTS = {"yes", "partly", "no", "not comparable"}
# columns whose numbers are themselves statistics without an interval (n, p, null means),
# labels (depths, layers, angles), counts, or the text of the verdict's reason
EXEMPT = re.compile(r"^(model|n|n placed|n starts|(NCM |AMI )?(p|p \(Holm\)|null)|depth|"
                    r"depths|layer|inject depth|theta|norm scale|distinct points|attractors|"
                    r"agrees|why|status counts|scope|kind|direction|restriction|measure)$")
N_COLUMNS = {"n", "n placed", "n starts"}
DECIMAL = re.compile(r"-?\d+\.\d+")


def _tables_module():
    spec = importlib.util.spec_from_file_location("study_tables", ROOT / "studies/tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result_file(tmp_path_factory) -> Path:
    from _models import tiny_loaded

    out = tmp_path_factory.mktemp("study") / "tiny.nc"
    analyses = depthflow.build_analyses(options=["phases.swap_trials=0"] +
                                        [f"dynamics.{o}" for o in TINY_DYNAMICS])
    images = depthflow.open_images("digits:test")          # the first 40: >= 2 per class
    depthflow.analyze(tiny_loaded(0), images, out, analyses=analyses,
                      config=depthflow.AnalyzeConfig(limit=40, image_ranks=True))
    return out


def _tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Markdown tables by title: a list of {column: cell} rows."""
    out, title, header = {}, None, None
    for line in text.splitlines():
        if line.startswith("#### "):
            title, header = line[5:], None
        elif line.startswith("|") and title is not None:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if header is None:
                header = [c.strip() for c in line.strip().strip("|").split("|")]
            elif not set(line) <= set("|-"):
                out.setdefault(title, []).append(dict(zip(header, cells, strict=True)))
    return out


def test_tables_have_rows_verdicts_n_and_intervals(result_file, tmp_path):
    tables = _tables_module()
    md = tmp_path / "out.md"
    assert tables.main([str(result_file), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "What agrees with the paper and what does not" in text
    assert "#### Rules" in text and "`rule_recovery`" in text
    parsed = _tables(text)
    for title in TITLES:
        matches = [t for t in parsed if t.startswith(title)]
        assert matches and parsed[matches[0]], f"no rows in table {title!r}"
    lyap = parsed[next(t for t in parsed if t.startswith("Finite-depth"))]
    assert {r["restriction"] for r in lyap} >= {"all->all", "cls->cls", "all->cls"}
    assert any(r["depths"].startswith("whole depth") for r in lyap)
    recovery = parsed[next(t for t in parsed if t.startswith("Recovery"))]
    assert {r["direction"] for r in recovery} == {"random", "adversarial"}
    classes = parsed[next(t for t in parsed if t.startswith("Class dependence"))]
    assert {r["depth"] for r in classes} >= {"1", "3"}
    n_rows = 0
    for title, rows in parsed.items():
        for row in rows:
            n_rows += 1
            assert row["model"] == "tiny"
            assert row["agrees"] in VERDICTS, (title, row)
            n_cells = [v for k, v in row.items() if k in N_COLUMNS]
            assert n_cells and all(re.fullmatch(r"\d+", v) and int(v) > 0 for v in n_cells), \
                (title, row)
            for column, cell in row.items():
                if EXEMPT.match(column) or not DECIMAL.search(cell) or cell.startswith("> "):
                    continue                    # "> theta_max": a censored half angle
                # every number carries an interval [low, high] (or, for fractions, k/n)
                assert "[" in cell and "]" in cell, (title, column, cell)
    assert n_rows >= 30


def test_readme_block_replaced_only_between_markers(result_file, tmp_path, capsys):
    tables = _tables_module()
    readme = tmp_path / "README.md"
    head, tail = "# title\n\nintro\n", "\n## after\n\nkept\n"
    readme.write_text(f"{head}{tables.START}\nold tables\n{tables.END}{tail}")
    assert tables.main([str(result_file), "--readme", str(readme)]) == 0
    new = readme.read_text()
    assert new.startswith(head + tables.START) and new.endswith(tables.END + tail)
    assert "old tables" not in new and "#### Finite-depth Lyapunov exponents" in new
    bare = tmp_path / "BARE.md"
    bare.write_text("no markers here\n")
    assert tables.main([str(result_file), "--readme", str(bare)]) == 0
    assert bare.read_text() == "no markers here\n"
    assert "left unchanged" in capsys.readouterr().out
