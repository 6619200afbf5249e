"""Study 5b (``studies/raptor_dinov2s/curves.py``): the plan, the extrapolation and the
summary records, on synthetic points (the fits themselves run in the study)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("raptor_curves",
                                                  ROOT / "studies/raptor_dinov2s/curves.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


C = _module()


def point(budget, cls, ratio, beaten=3):
    return {"k": 2, "init": "mean", "budget": budget, "seconds": 1.0, "fit_dir": "x",
            "r2_image_by_depth": {"cls": [None, 0.1, cls], "all": [1.0, 0.2, cls]},
            "probes": {"teacher_probe": {"ratio": ratio, "ratio_interval": [0.1, 0.9],
                                         "n": 100}},
            "comparison": {"cls": {"depths_beaten": beaten, "depths": 12,
                                   "beats_every_depth": beaten == 12}}}


def test_extrapolation_is_a_line_in_log_budget():
    pts = [point(100, 0.2, 0.1), point(1000, 0.4, 0.2)]
    ext = C.extrapolate(pts, 0.8, lambda p: p["r2_image_by_depth"]["cls"][-1])
    assert ext["slope_per_decade"] == pytest.approx(0.2)
    assert ext["budget_for_target"] == pytest.approx(10 ** 5)
    flat = C.extrapolate([point(100, 0.4, 0.1), point(1000, 0.3, 0.1)], 0.8,
                         lambda p: p["r2_image_by_depth"]["cls"][-1])
    assert flat["budget_for_target"] is None


def test_records_say_not_reached_and_the_plan_runs_small_budgets_first():
    rows = C.records([point(400, 0.3, 0.2), point(1600, 0.5, 0.4)])
    assert len(rows) == 1 and rows[0]["ours"].startswith("not reached at this budget")
    assert rows[0]["agrees"] == "not comparable" and "1,600" in rows[0]["note"]
    done = C.records([point(400, 0.85, 0.95, beaten=12)])
    assert done[0]["agrees"] == "yes"
    cfg = C.get_config()
    plan = C.schedule(cfg)
    assert plan[0] == (2, "mean", 800) and len(set(plan)) == len(plan)
    assert {init for _, init, _ in plan} == {"mean", "random"} and max(
        b for _, _, b in plan) >= 30 * C.OLD_BUDGET
    for k, init, budget in plan:                     # every stop within its run and schedule
        assert budget <= cfg["runs"][f"{k}-{init}"] <= cfg["total"]
    # in turns: every configuration reaches the first turn's limit before any goes beyond
    first = cfg["plan_turns"][0]
    beyond = next(i for i, (_, _, b) in enumerate(plan) if b > first)
    assert {(k, i) for k, i, b in plan[:beyond] if b == first} == \
        {tuple((int(key.split("-")[0]), key.split("-")[1])) for key in cfg["runs"]}
