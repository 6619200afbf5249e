"""docs/file-format.md against a result file written now by the library: every group and
variable of the file is documented (with its dims), and every documented group and table
row exists, so the page cannot drift from the code. Regenerate the tables with
``python docs/make_file_format.py RESULT.nc > docs/file-format.md``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _models import tiny_loaded

import depthflow as df

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGE = DOCS / "file-format.md"
BLOCK = re.compile(r"<!-- BEGIN TABLE (/\S*) -->\n(.*?)<!-- END TABLE \1 -->", re.S)
ROW = re.compile(r"^\| `([^`]+)`(?: \(coordinate\))? \| ([^|]*) \|", re.M)

# every analysis, on a budget that runs in seconds (a 4-block ViT of width 16, 40 digits)
BUDGET = ["phases.swap_trials=2", "dynamics.samples=2", "dynamics.min_per_class=0",
          "dynamics.k=2", "dynamics.tol=0.01", "dynamics.stretching_k=1",
          "dynamics.class_samples=40", "dynamics.robustness_samples=12", "dynamics.n_perm=5",
          "dynamics.n_boot=5", "dynamics.frozen_samples=1", "dynamics.frozen_steps=8",
          "dynamics.frozen_transient=2", "dynamics.attractor_steps=5",
          "dynamics.fixed_point_starts=4", "dynamics.fixed_point_max_iter=3",
          "dynamics.norm_scan_starts=2", "dynamics.recovery_depths=1",
          "dynamics.recovery_angles=0.1", "dynamics.recovery_draws=1",
          "dynamics.robustness_angles=0.1,1.0", "dynamics.branch_probes=1",
          "probes.folds=2", "probes.c_grid=1.0"]


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """``{group path: {variable: dims}}`` of a file with every group and optional variable
    (``--states all``, ``--image-ranks``, a head, labels)."""
    import netCDF4
    import torch

    path = tmp_path_factory.mktemp("docs") / "r.nc"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # tiny model: one thread avoids oversubscription
    try:
        loaded = tiny_loaded(0, depth=4, embed_dim=16, mlp_hidden_dim=32)
        df.analyze(loaded, df.open_images("digits"), path,
                   config=df.AnalyzeConfig(limit=40, batch_size=16, states="all",
                                           image_ranks=True),
                   analyses=df.build_analyses(options=BUDGET))
        compare = tmp_path_factory.mktemp("docs") / "c.nc"     # the compare group
        from depthflow.compare.workflow import compare_checkpoints
        from depthflow.models.checkpoints import save_checkpoint

        ck = save_checkpoint(loaded.model, compare.with_suffix(".safetensors"),
                             preprocessing=loaded.preprocessing)
        compare_checkpoints(str(ck), "random", compare, limit=16, batch_size=8, n_boot=5)
    finally:
        torch.set_num_threads(threads)

    def walk(group):
        yield group
        for child in group.groups.values():
            yield from walk(child)

    out = {}
    for i, source in enumerate((path, compare)):
        with netCDF4.Dataset(source) as nc:
            out.update({g.path: {n: tuple(v.dimensions) for n, v in g.variables.items()}
                        for g in walk(nc) if not (i and g.path == "/")})
    return out


@pytest.fixture(scope="module")
def page():
    text = PAGE.read_text()
    tables, prose, last = {}, {}, 0
    for match in BLOCK.finditer(text):
        group, body = match.group(1), match.group(2)
        tables[group] = {name: tuple(d.strip() for d in dims.split(",") if d.strip()
                                     and d.strip() != "(scalar)")
                         for name, dims in ROW.findall(body)}
        prose[group] = text[last:match.start()]       # the hand-written text above it
        last = match.end()
    return text, tables, prose


def test_every_group_of_the_file_is_documented(layout, page):
    _, tables, _ = page
    missing = sorted(set(layout) - set(tables))
    assert not missing, (f"groups without a table in {PAGE.name}: {missing}; add their prose "
                         "to docs/make_file_format.py and regenerate the page")


def test_every_documented_group_exists(layout, page):
    _, tables, _ = page
    stale = sorted(set(tables) - set(layout))
    assert not stale, f"{PAGE.name} documents groups the library no longer writes: {stale}"


def test_every_variable_is_documented_with_its_dims(layout, page):
    _, tables, prose = page
    problems = []
    for group, variables in layout.items():
        rows = tables.get(group, {})
        for name, dims in variables.items():
            if name in rows:
                if rows[name] != dims:
                    problems.append(f"{group}: {name} has dims {dims}, the page says "
                                    f"{rows[name]}")
            elif f"`{name}`" not in prose.get(group, ""):     # optional, described in prose
                problems.append(f"{group}: {name} {dims} is not documented")
    assert not problems, ("\n".join(problems) + "\nregenerate: python docs/make_file_format.py "
                          "RESULT.nc > docs/file-format.md")


def test_every_documented_variable_exists(layout, page):
    _, tables, _ = page
    stale = [f"{group}: {name}" for group, rows in tables.items() for name in rows
             if name not in layout.get(group, {})]
    assert not stale, f"{PAGE.name} documents variables the library no longer writes: {stale}"


def test_the_page_states_the_format_version(page):
    text, _, _ = page
    from depthflow.core.vocabulary import FORMAT_VERSION

    assert f'depthflow_format_version = "{FORMAT_VERSION}"' in text
    assert f"(format {FORMAT_VERSION})" in text.splitlines()[0]


def test_docs_point_nowhere_outside_the_repository():
    for name in ("methods.md", "file-format.md", "architecture.md"):
        text = (DOCS / name).read_text()
        assert "SCIENCE.md" not in text, name
    links = re.findall(r"docs/[\w.-]+\.(?:md|py)", (DOCS / "methods.md").read_text()
                       + (DOCS / "architecture.md").read_text() + PAGE.read_text())
    for link in set(links):
        assert (DOCS.parent / link).is_file(), f"dangling reference to {link}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_is_a_front_page_whose_links_resolve():
    """README.md stays short, every relative link (and #anchor) in it and in the docs
    resolves, and every section of the guide and the findings is reachable from it."""
    root = DOCS.parent
    readme = (root / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    pages = {p: p.read_text() for p in [root / "README.md", *sorted(DOCS.glob("*.md"))]}
    anchors = {p: {_slug(h) for h in re.findall(r"^#+ (.+)$", t, re.M)}
               for p, t in pages.items()}
    for page, text in pages.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue                                    # an absolute URL
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}: dangling link {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in anchors.get(dest, set()), f"{page.name}: no #{anchor} " \
                                                           f"in {dest.name}"
    linked = set(re.findall(r"docs/guide\.md#([\w-]+)", readme))
    for heading in re.findall(r"^## (.+)$", pages[DOCS / "guide.md"], re.M):
        if heading != "Additions from other branches":
            assert _slug(heading) in linked, f"guide section {heading!r} not linked"
    for page in ("guide.md", "findings.md", "security.md", "methods.md", "file-format.md",
                 "families.md", "architecture.md"):
        assert f"docs/{page}" in readme, page
