"""Layer-swap test: trial drawing rules and the effect measures, against direct forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _models import DIGITS_PRE, tiny_vit

from depthflow.phases import swap
from depthflow.data.images import open_images
from depthflow.errors import ConfigError

LABELS = [0, 0, 0, 1, 1, 2]


@pytest.mark.parametrize("family", swap.FAMILIES)
def test_draw_trials_rules(family):
    rng = np.random.default_rng(0)
    trials = swap.draw_trials(LABELS, family=family, trials=200, max_layers=3, rng=rng)
    assert len(trials) == 200
    counts = set()
    for t in trials:
        counts.add(len(t.targets))
        assert len(set(t.targets)) == len(t.targets)
        for target, donor in zip(t.targets, t.donors):
            same = LABELS[target - 1] == LABELS[donor - 1]
            assert same == (family == "same")
            assert donor != target
            if family == "same":
                assert target != 6                 # block 6 is alone in its phase
    assert counts == {1, 2, 3}
    again = swap.draw_trials(LABELS, family=family, trials=200, max_layers=3,
                             rng=np.random.default_rng(0))
    assert again == trials


def test_draw_trials_impossible_and_bad_input():
    rng = np.random.default_rng(0)
    assert swap.draw_trials([0, 0, 0], family="different", trials=4, rng=rng) == []
    assert swap.draw_trials([0, 1, 2], family="same", trials=4, rng=rng) == []
    with pytest.raises(ConfigError, match="family"):
        swap.draw_trials(LABELS, family="other", trials=1, rng=rng)
    with pytest.raises(ConfigError, match="max_layers"):
        swap.draw_trials(LABELS, family="same", trials=1, max_layers=0, rng=rng)


def _batches(n: int = 12):
    return list(open_images("digits").head(n).batches(5,
                                     preprocessing=DIGITS_PRE))


def test_limited_batches_trims_without_changing_the_source():
    source = open_images("digits")
    batches = list(source.head(12).batches(5,
                                        preprocessing=DIGITS_PRE))
    assert [len(b.labels) for b in batches] == [5, 5, 2]
    assert len(source) > 12


def test_identical_blocks_swap_without_effect(one_thread):
    model = tiny_vit(0, dtype=torch.float64, depth=4)
    with torch.no_grad():
        for block in model.blocks[1:]:
            block.load_state_dict(model.blocks[0].state_dict())
    trials = swap.draw_trials([0, 0, 1, 1], family="different", trials=5,
                              rng=np.random.default_rng(1))
    out = swap.run_swaps(model, _batches(), trials, dtype="float64")
    np.testing.assert_allclose(out["cosine"], 1.0, atol=1e-12)
    np.testing.assert_allclose(out["r2"], 1.0, atol=1e-12)
    np.testing.assert_allclose(out["agreement"], 1.0)
    np.testing.assert_allclose(out["accuracy"], out["baseline_accuracy"])


def test_swap_measures_match_a_direct_forward(one_thread):
    model = tiny_vit(1, dtype=torch.float64, depth=4)
    trial = swap.SwapTrial("different", (2, 4), (3, 1))
    batches = _batches()
    out = swap.run_swaps(model, batches, [trial], dtype="float64")
    images = torch.cat([b.images for b in batches]).double()
    labels = torch.cat([b.labels for b in batches])
    with torch.inference_mode():
        ref_state = model.rollout(model.embed(images))
        state = model.embed(images)
        for block in (1, 3, 3, 1):
            state = model.step(block, state)
        ref, got = model.norm(ref_state)[:, 0], model.norm(state)[:, 0]
        cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1).mean()
        r2 = 1 - (ref - got).square().sum() / (ref - ref.mean(0)).square().sum()
        acc = (model.readout(state).argmax(-1) == labels).double().mean()
    assert out["cosine"][0] == pytest.approx(float(cos), abs=1e-12)
    assert out["r2"][0] == pytest.approx(float(r2), rel=1e-9)
    assert out["accuracy"][0] == pytest.approx(float(acc))
    assert out["samples"] == 12 and out["labelled"] == 12
    assert out["cosine"][0] < 0.999                        # the swap does change the output


def test_summarize():
    stats = dict(zip(swap.STATISTICS, swap.summarize(np.array([1.0, 2.0, 3.0, np.nan]))))
    assert stats["mean"] == 2.0 and stats["std"] == 1.0 and stats["q50"] == 2.0
    assert stats["min"] == 1.0 and stats["max"] == 3.0
    assert np.isnan(swap.summarize(np.array([np.nan]))).all()


def test_headless_models_are_scored_by_a_cross_fitted_probe(one_thread):
    model = tiny_vit(2, dtype=torch.float64, depth=4, num_classes=0)
    identity = swap.SwapTrial("same", (2,), (2,))         # runs the unswapped model
    changed = swap.SwapTrial("different", (2, 4), (3, 1))
    batches = list(open_images("digits").head(60).batches(20,
                                        preprocessing=DIGITS_PRE))
    out = swap.run_swaps(model, batches, [identity, changed], dtype="float64")
    assert out["scorer"] == "probe"
    # the probe sees identical features for the identity trial: same predictions
    assert out["agreement"][0] == 1.0
    assert out["accuracy"][0] == pytest.approx(out["baseline_accuracy"])
    assert 0.0 <= out["accuracy"][1] <= 1.0 and out["agreement"][1] < 1.0


def test_unlabelled_headless_models_have_no_accuracy(one_thread):
    model = tiny_vit(2, dtype=torch.float64, depth=4, num_classes=0)
    batches = [b for b in _batches()]
    for b in batches:
        b.labels[:] = -1
    out = swap.run_swaps(model, batches, [swap.SwapTrial("same", (2,), (1,))],
                         dtype="float64")
    assert out["scorer"] == "none" and np.isnan(out["accuracy"]).all()


def test_probe_halves_are_stratified_even_for_alternating_labels():
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 20)                       # class = index parity
    ref = rng.normal(size=(40, 3)) + labels[:, None] * 3.0
    base, acc, agree = swap._probe_scores(ref, [ref, ref[::-1].copy()], labels)
    assert base == 1.0 and acc[0] == 1.0 and agree[0] == 1.0
    assert acc[1] < 0.5                                 # reversed features: wrong classes
