"""Recipe parity with the official Raptor code: defaults pinned to the official values,
stage-1 weighting, arbitrary layer -> block routing, pooled R^2, the fine-tuned probe."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from depthflow.errors import ConfigError, InputError
from depthflow.raptor import FitConfig, RaptorConfig, build_raptor, load_raptor, save_raptor
from depthflow.raptor.config import RECIPE_VALUES
from depthflow.raptor.evaluate import FidelityAccumulator
from depthflow.raptor.losses import RaptorObjective, kind_weights, token_mse
from depthflow.raptor.model import check_assignment, runs_of
from depthflow.raptor.probe import (ProbeConfig, accuracy_interval, finetune_probe,
                                    random_resized_crop)
from depthflow.raptor.teacher import teacher_states

from _models import tiny_vit


def test_paper_recipe_is_the_default_and_every_official_value_is_pinned():
    cfg = FitConfig()
    assert cfg.recipe == "paper"
    # KempnerInstitute/raptor: stage 1 plain MSE except the last segment (0.34/0.33/0.33),
    # stage 2 0.45/0.10/0.45, b2 and W2 ~ N(0, 1e-4), nn.LayerNorm eps 1e-5, PyTorch init,
    # sigma 0 in the released runs, LayerScale 1e-5, SwiGLU, t-conditioning width 16,
    # AdamW wd 1e-4, clip 1.0, teacher forcing annealed over 25%, cosine to 1e-6.
    assert cfg.setting("stage1_weighting") == "final"
    assert (cfg.final_cls_weight, cfg.final_register_weight, cfg.final_patch_weight) == \
        (0.34, 0.33, 0.33)
    assert (cfg.cls_weight, cfg.register_weight, cfg.patch_weight) == (0.45, 0.10, 0.45)
    assert cfg.setting("cond_bias_init_std") == 1e-4 and cfg.cond_init_std == 1e-4
    assert cfg.setting("norm_eps") == 1e-5
    assert cfg.setting("block_init") == "pytorch"
    assert cfg.input_noise == 0.0
    assert cfg.layerscale_init == 1e-5 and cfg.mlp == "swiglu" and cfg.cond_hidden == 16
    assert cfg.weight_decay == 1e-4 and cfg.grad_clip == 1.0 and cfg.min_lr == 1e-6
    assert cfg.tf_mode == "anneal" and cfg.anneal_fraction == 0.25
    assert cfg.depth_conditioning and cfg.token_weighting and cfg.init == "random"
    old = FitConfig(recipe="depthflow")
    assert old.effective() == {"stage1_weighting": "all", "cond_bias_init_std": 0.0,
                               "norm_eps": 1e-6, "block_init": "trunc_normal"}
    # an explicit option wins over the recipe; the recipe is not baked in by replace()
    assert FitConfig(recipe="depthflow", norm_eps=1e-5).setting("norm_eps") == 1e-5
    assert FitConfig().replace(recipe="depthflow").setting("block_init") == "trunc_normal"
    assert set(RECIPE_VALUES["paper"]) == set(RECIPE_VALUES["depthflow"])


def test_recipe_options_are_checked():
    for bad in ({"recipe": "mine"}, {"stage1_weighting": "some"}, {"block_init": "zeros"},
                {"norm_eps": 0.0}, {"cond_bias_init_std": -1.0}, {"final_cls_weight": -0.1},
                {"probe_epochs": -1}):
        with pytest.raises(ConfigError):
            FitConfig(**bad)


def test_paper_init_b2_eps_and_pytorch_defaults():
    teacher = tiny_vit(0, depth=4, num_register_tokens=0)
    paper = FitConfig(thresholds=(2,)).raptor_config()
    raptor = build_raptor(teacher, paper, seed=3, block_init="pytorch")
    block = raptor.blocks[0]
    assert block.norm1.eps == 1e-5 and block.norm2.eps == 1e-5
    b2 = block.scale.fc2.bias
    assert 0 < b2.std().item() < 3e-4                   # N(0, 1e-4), not zero
    assert torch.all(block.ls1.gamma == 1e-5)
    # nn.MultiheadAttention: Xavier-uniform input projection, zero biases
    dim = teacher.cfg.embed_dim
    bound = (6 / (dim + 3 * dim)) ** 0.5
    assert block.attn.qkv.weight.abs().max() <= bound and block.attn.qkv.bias.abs().sum() == 0
    # nn.Linear defaults: uniform(+-1/sqrt(fan_in)) weights and biases
    fc = block.mlp.w12
    assert fc.weight.abs().max() <= fc.weight.shape[1] ** -0.5 and fc.bias.abs().sum() > 0
    old = build_raptor(teacher, FitConfig(thresholds=(2,), recipe="depthflow").raptor_config(),
                       seed=3, block_init="trunc_normal")
    assert old.blocks[0].norm1.eps == 1e-6 and old.blocks[0].scale.fc2.bias.abs().sum() == 0
    assert old.blocks[0].mlp.w12.bias.abs().sum() == 0
    # same seed, same weights
    again = build_raptor(teacher, paper, seed=3, block_init="pytorch")
    for a, b in zip(raptor.blocks.parameters(), again.blocks.parameters()):
        assert torch.equal(a, b)


def test_stage1_paper_weighting_plain_mse_then_final_segment_weighted():
    teacher = tiny_vit(0, dtype=torch.float64, depth=4, num_register_tokens=2)
    raptor = build_raptor(teacher, RaptorConfig(thresholds=(2,), layerscale_init=0.2)).double()
    states = teacher_states(teacher, torch.randn(2, 1, 8, 8, dtype=torch.float64))
    kinds = teacher.token_kinds(8, 8)
    w2 = kind_weights(kinds, cls=0.45, register=0.10, patch=0.45).double()
    wf = kind_weights(kinds, cls=0.34, register=0.33, patch=0.33).double()
    obj = RaptorObjective(raptor, weights=w2, stage1_weights=None, final_weights=wf)

    def rollout(start, stop, w):
        x, total = states[:, start], 0.0
        for n in range(start + 1, stop + 1):
            x = raptor.step(n, x)
            total = total + token_mse(x, states[:, n], w)
        return total / (stop - start)

    expected = rollout(0, 2, None) + rollout(2, 4, wf)
    torch.testing.assert_close(obj(states, stage=1, ratio=0.0), expected)
    torch.testing.assert_close(obj(states, stage=2), rollout(0, 4, w2))
    # the depthflow recipe weights every segment like stage 2
    old = RaptorObjective(raptor, weights=w2)
    torch.testing.assert_close(old(states, stage=1, ratio=0.0),
                               rollout(0, 2, w2) + rollout(2, 4, w2))


def test_kind_weights_renormalise_when_a_kind_is_absent():
    # no registers
    w = kind_weights(["cls", "patch", "patch"], cls=0.34, register=0.33, patch=0.33)
    assert w.tolist() == pytest.approx([0.34 / 0.67, 0.33 / 0.67 / 2, 0.33 / 0.67 / 2])
    # no cls token
    w = kind_weights(["patch"] * 4, cls=0.45, register=0.10, patch=0.45)
    assert w.tolist() == pytest.approx([0.25] * 4)
    assert float(w.sum()) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        kind_weights(["register", "register"], cls=0.5, register=0.0, patch=0.5)
    # DeiT: cls and distillation tokens share the cls weight (one class-token MSE)
    w = kind_weights(["cls", "distillation", "patch", "patch"], cls=0.45, register=0.10,
                     patch=0.45)
    assert w.tolist() == pytest.approx([0.25, 0.25, 0.25, 0.25])
    with pytest.raises(ConfigError, match="no loss weight"):
        kind_weights(["cls", "mystery"], cls=0.5, register=0.0, patch=0.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=14))
def test_runs_cover_every_layer_once_and_are_maximal(assignment):
    runs = runs_of(assignment)
    layers = [layer for _, start, stop in runs for layer in range(start + 1, stop + 1)]
    assert layers == list(range(1, len(assignment) + 1))
    for block, start, stop in runs:
        assert all(assignment[layer - 1] == block for layer in range(start + 1, stop + 1))
    for (b1, _, e1), (b2, s2, _) in zip(runs[:-1], runs[1:]):
        assert e1 == s2 and b1 != b2                    # maximal: neighbours differ


def test_runs_examples_and_bad_assignments():
    assert runs_of((0, 0, 1, 1, 0)) == [(0, 0, 2), (1, 2, 4), (0, 4, 5)]
    assert check_assignment((1, 1, 0), 3) == (1, 1, 0)
    for bad, depth in (((0, 2, 2), 3), ((0, 1), 3), ((-1, 0, 0), 3), ((0.5, 0, 0), 3)):
        with pytest.raises(ConfigError):
            check_assignment(bad, depth)
    with pytest.raises(ConfigError):
        FitConfig(k=3, assignment=(0, 1, 1, 0))          # uses 2 blocks
    with pytest.raises(ConfigError):
        FitConfig(k=2, thresholds=(2,), assignment=(0, 1, 1, 0))


def test_assignment_routing_and_noncontiguous_stage1_loss(tmp_path):
    teacher = tiny_vit(1, dtype=torch.float64, depth=5)
    assign = (0, 0, 1, 1, 0)
    cfg = RaptorConfig(thresholds=(), assignment=assign, layerscale_init=0.2)
    raptor = build_raptor(teacher, cfg, block_init="pytorch").double()
    assert raptor.k == 2 and raptor.counts == (3, 2) and not raptor.contiguous
    assert [raptor.block_for(n) for n in range(1, 6)] == list(assign)
    with pytest.raises(ConfigError):
        raptor.segments()
    states = teacher_states(teacher, torch.randn(2, 1, 8, 8, dtype=torch.float64))
    obj = RaptorObjective(raptor, weights=None)
    mse = lambda a, b: (a - b).square().mean()  # noqa: E731

    def ar(start, stop):
        x, total = states[:, start], 0.0
        for n in range(start + 1, stop + 1):
            x = raptor.step(n, x)
            total = total + mse(x, states[:, n])
        return total / (stop - start)

    # block 0 owns runs 1-2 and 5 (weights 2/3, 1/3); block 1 owns 3-4
    expected = ar(0, 2) * 2 / 3 + ar(4, 5) / 3 + ar(2, 4)
    torch.testing.assert_close(obj(states, stage=1, ratio=0.0), expected)
    # thresholds are the contiguous special case
    contiguous = RaptorConfig(thresholds=(), assignment=(0, 0, 1, 1, 1))
    assert build_raptor(teacher, contiguous).segments() == [(0, 2), (2, 5)]
    # the assignment survives a save / load round trip
    save_raptor(raptor, tmp_path / "r")
    back = load_raptor(tmp_path / "r")
    model = back.model if hasattr(back, "model") else back
    assert tuple(model.assignment) == assign


def test_pooled_r2_forms_on_a_known_case():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 3, 5, generator=gen, dtype=torch.float64)
    p = x + 0.5 * torch.randn(6, 4, 3, 5, generator=gen, dtype=torch.float64)
    acc = FidelityAccumulator(3, ["cls", "patch", "patch"])
    acc.update(x[:4], p[:4])
    acc.update(x[4:], p[4:])
    pooled = acc.pooled()
    mse = (x - p).square().mean()
    assert pooled["r2_pooled"] == pytest.approx(float(1 - mse / x.var(unbiased=False)))
    assert pooled["r2_paper_pooled"] == pytest.approx(
        float(1 - mse / (p.var(unbiased=False) + 1e-6)))
    per_batch = [float(1 - (x[s] - p[s]).square().mean() / (p[s].var(unbiased=False) + 1e-6))
                 for s in (slice(0, 4), slice(4, 6))]
    assert pooled["r2_paper_pooled_batches"] == pytest.approx(
        (4 * per_batch[0] + 2 * per_batch[1]) / 6)
    exact = FidelityAccumulator(3, ["cls", "patch", "patch"])
    exact.update(x, x)
    assert exact.pooled()["r2_pooled"] == pytest.approx(1.0)


def test_random_resized_crop_full_scale_is_identity_and_is_seeded():
    images = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    same = random_resized_crop(images, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                               gen=torch.Generator().manual_seed(1))
    torch.testing.assert_close(same, images, atol=1e-5, rtol=0)
    a = random_resized_crop(images, scale=(0.08, 1.0), ratio=(0.75, 4 / 3),
                            gen=torch.Generator().manual_seed(2))
    b = random_resized_crop(images, scale=(0.08, 1.0), ratio=(0.75, 4 / 3),
                            gen=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, images)


def test_finetuned_probe_starts_from_the_head_and_reports_the_best_epoch():
    teacher = tiny_vit(0, depth=2).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(60, 1, 8, 8, generator=gen)
    labels = torch.randint(0, 10, (60,), generator=gen)
    out = finetune_probe(teacher, images[:40], labels[:40], images[40:], labels[40:],
                         ProbeConfig(epochs=2, batch_size=16, lr=1e-2, val_fraction=0.25))
    with torch.no_grad():
        frozen = float((teacher(images[40:]).argmax(-1) == labels[40:]).double().mean())
    assert out["frozen_accuracy"] == pytest.approx(frozen)
    assert len(out["curve"]) == 3 and out["n_val"] == 10 and out["n_fit"] == 30
    best = max(out["curve"], key=lambda r: r["val_accuracy"])
    assert out["best_val_accuracy"] == best["val_accuracy"]
    assert out["probe_accuracy"] == out["curve"][out["best_epoch"]]["eval_accuracy"]
    headless = tiny_vit(0, depth=2, num_classes=0)
    with pytest.raises(InputError):
        finetune_probe(headless, images[:40], labels[:40], images[40:], labels[40:])


def test_wilson_interval_known_values():
    lo, hi = accuracy_interval(442, 450)
    assert lo < 442 / 450 < hi and hi < 1
    assert accuracy_interval(10, 10)[1] == pytest.approx(1.0)
    # textbook value: 8 of 10 -> (0.490, 0.943)
    lo, hi = accuracy_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
