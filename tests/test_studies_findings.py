"""The README's findings table is generated from the studies' ``summary.json`` files by
``studies/tables.py --findings``: the block in README.md must equal a fresh rendering, every
record must be complete, and the renderer must keep every row (a few milliseconds)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    spec = importlib.util.spec_from_file_location("findings_tables", ROOT / "studies/tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


T = _tables()


def _block(text: str) -> str:
    i, j = text.index(T.FINDINGS_START), text.index(T.FINDINGS_END)
    return text[i + len(T.FINDINGS_START):j].strip()


def test_readme_findings_block_is_in_sync():
    rows = T.collect_findings(ROOT / "studies")
    readme = (ROOT / "README.md").read_text()
    assert _block(readme) == T.render_findings(rows).strip(), (
        "README findings table out of date: run "
        "`python studies/tables.py --findings --readme README.md`")


def test_every_record_is_complete():
    for row in T.collect_findings(ROOT / "studies"):
        assert row["agrees"] in {T.YES, T.PARTLY, T.NO, T.NC}, row
        assert row["claim"] and row["paper"] and row["ours"], row


def test_render_and_collect(tmp_path):
    rec = dict(zip(T.RECORD_KEYS, ["6", "claim | a", "paper", "0.5", "[0.4, 0.6]", "10",
                                   "yes", "note"], strict=True))
    for name, study in (("b", "10"), ("a", "2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps([dict(rec, study=study)]))
    rows = T.collect_findings(tmp_path)
    assert [r["study"] for r in rows] == ["2", "10"]                  # numeric order
    text = T.render_findings(rows)
    assert text.count("\n| ") == 3 and "claim \\| a" in text           # header + 2 rows
    assert "2 rows" in text and "2 yes" in text
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError):
        T.collect_findings(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{T.FINDINGS_START}\nold\n{T.FINDINGS_END}\ny\n")
    assert T.replace_block(readme, "new", T.FINDINGS_START, T.FINDINGS_END)
    assert readme.read_text() == f"x\n{T.FINDINGS_START}\nnew\n{T.FINDINGS_END}\ny\n"
