"""Token layouts beyond [cls, registers, patches]: models without a cls token (SigLIP) and
with DeiT's distillation token, through token dynamics, phases and layer swaps.

Closed-form checks: the phase ``paper`` view of a model without a cls token is the cosine
distance matrix of the mean patch token; the layer-swap readout is the mean over patch tokens
of the final normed tokens; an unswapped "trial" has cosine 1 and R^2 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import depthflow as df
from depthflow.data import tokens
from depthflow.core import vocabulary as D
from depthflow.analysis.context import TokenLayout
from depthflow.errors import ConfigError, InputError
from depthflow.phases import similarity as sim
from depthflow.phases.analysis import PhaseAnalysis, PhaseConfig
from depthflow.phases.swap import SwapTrial, readout_features, run_swaps
from depthflow.data.images import open_images
from depthflow.models.vit import ViT

from _models import DIGITS_PRE, tiny_loaded, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

NO_CLS = dict(cls_token=False, head_input="mean")
DEIT = dict(num_distillation_tokens=1, head_input="cls+distillation", num_register_tokens=0)


# --------------------------------------------------------------------------- layouts
@given(n_cls=st.integers(0, 1), n_dist=st.integers(0, 1), n_reg=st.integers(0, 4),
       n_patches=st.integers(0, 9))
def test_layout_from_counts(n_cls, n_dist, n_reg, n_patches):
    layout = TokenLayout.from_counts(n_cls=n_cls, n_distillation=n_dist, n_registers=n_reg,
                                     n_patches=n_patches)
    assert layout.num_tokens == n_cls + n_dist + n_reg + n_patches
    assert layout.cls_index == (0 if n_cls else None) and layout.has_cls == bool(n_cls)
    assert layout.distillation_index == (n_cls if n_dist else None)
    assert layout.num_prefix_tokens == n_cls + n_dist + n_reg
    assert layout.patch_slice == slice(n_cls + n_dist + n_reg, layout.num_tokens)
    groups = layout.groups
    # the groups partition the positions, in TOKEN_KINDS order, absent kinds left out
    assert sorted(i for idx in groups.values() for i in idx.tolist()) == list(
        range(layout.num_tokens))
    present = [k for k, n in zip(D.TOKEN_KINDS, (n_cls, n_dist, n_reg, n_patches)) if n]
    assert layout.kinds == present
    for kind, idx in groups.items():
        assert all(layout.token_kinds[i] == kind for i in idx.tolist())


@pytest.mark.parametrize("changes, kinds", [
    (dict(NO_CLS, num_register_tokens=0), ["patch"] * 16),
    (dict(NO_CLS, num_register_tokens=2), ["register"] * 2 + ["patch"] * 16),
    (DEIT, ["cls", "distillation"] + ["patch"] * 16),
])
def test_model_layouts_match_the_counts(changes, kinds):
    model = tiny_vit(**changes)
    layout = TokenLayout.of(model, 8, 8)
    assert list(layout.token_kinds) == kinds
    cfg = model.cfg
    assert layout == TokenLayout.from_counts(
        n_cls=int(cfg.cls_token), n_distillation=cfg.num_distillation_tokens,
        n_registers=cfg.num_register_tokens, n_patches=16, height=8, width=8)


def test_bad_layouts():
    with pytest.raises(InputError, match="at most one cls token"):
        TokenLayout(("cls", "cls", "patch"), 8, 8)
    with pytest.raises(InputError, match="patch tokens must come last"):
        TokenLayout(("patch", "cls"), 8, 8)
    with pytest.raises(InputError, match="number of register tokens"):
        TokenLayout.from_counts(n_registers=-1, n_patches=4)
    with pytest.raises(InputError, match="empty"):
        sim.view_tokens([])


# --------------------------------------------------------------------------- phases
def _cosine_distance(x: torch.Tensor) -> torch.Tensor:
    """``(n, L+1, D)`` -> mean over n of ``1 - cos(x_i, x_j)`` (float64)."""
    u = x / x.norm(dim=-1, keepdim=True)
    return (1 - (u @ u.transpose(-1, -2)).clamp(-1, 1)).mean(0)


def test_paper_view_without_cls_is_the_mean_patch_matrix():
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(6, 4, 2 + 5, 8, generator=gen, dtype=torch.float64)
    kinds = ["register"] * 2 + ["patch"] * 5
    acc = sim.DepthSimilarity(kinds, views=("paper", "cls", "patch"), cka_views=("paper",))
    acc.update(states[:4])
    acc.update(states[4:])                   # batches must not matter
    result = acc.result()
    mean_patch = states[:, :, 2:].mean(2)
    torch.testing.assert_close(result["cosine"]["paper"], _cosine_distance(mean_patch),
                               rtol=0, atol=1e-12)
    assert "cls" not in result["cosine"] and acc.not_defined == {"cls": D.NO_CLS}
    assert result["cka"]["paper"].shape == (4, 4)
    # with a cls token the paper view averages the cls and mean-patch matrices
    with_cls = sim.DepthSimilarity(["cls"] + ["patch"] * 5, views=("paper",), cka_views=())
    with_cls.update(states[:, :, 1:])          # the second register plays the cls token
    expected = (_cosine_distance(states[:, :, 1]) + _cosine_distance(mean_patch)) / 2
    torch.testing.assert_close(with_cls.result()["cosine"]["paper"], expected, rtol=0,
                               atol=1e-12)


def test_distillation_token_is_its_own_view():
    tokens_ = sim.view_tokens(["cls", "distillation", "patch", "patch"])
    assert tokens_["distillation"].tolist() == [1]
    assert tokens_["cls"].tolist() == [0] and tokens_["paper"].tolist() == [2, 3]


def test_segmenting_on_an_undefined_view_is_one_line():
    analysis = PhaseAnalysis(PhaseConfig(views=("cls", "paper"), segment_view="cls",
                                         metrics=("cosine",), swap_trials=0))
    analysis.update_states(torch.randn(3, 5, 4, 6), ["patch"] * 4)
    with pytest.raises(ConfigError, match="segment_view='cls' is not defined: this model "
                                          "has no cls token"):
        analysis.finish(df.analysis.context.AnalysisContext(
            TokenLayout(("patch",) * 4, 0, 0)))


# --------------------------------------------------------------------------- layer swaps
def test_swap_readout_without_cls_is_the_mean_normed_patch():
    model = tiny_vit(1, **NO_CLS).double()
    state = torch.randn(3, model.cfg.num_prefix_tokens + 16, 32, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    normed = torch.nn.functional.layer_norm(state, (32,), model.norm.weight, model.norm.bias,
                                            model.cfg.norm_eps)
    torch.testing.assert_close(readout_features(model, state), normed[:, 2:].mean(1))
    deit = tiny_vit(1, **DEIT).double()
    state = state[:, 1:]                      # cls, distillation, 16 patches
    torch.testing.assert_close(readout_features(deit, state), deit.norm(state)[:, 0])


@pytest.mark.parametrize("changes", [NO_CLS, DEIT])
def test_identity_swap_is_perfect(changes):
    model = tiny_vit(2, **changes, depth=4)
    batches = list(open_images("digits", limit=12).batches(6, preprocessing=DIGITS_PRE))
    same = SwapTrial("same", (2,), (2,))              # block 2 run at position 2
    other = SwapTrial("different", (1, 2), (4, 3))
    out = run_swaps(model, batches, [same, other], probe=False)
    assert out["feature"] == ("cls" if model.cfg.cls_token else "mean_patch")
    assert out["cosine"][0] == pytest.approx(1.0, abs=1e-6)
    assert out["r2"][0] == pytest.approx(1.0, abs=1e-6)
    assert out["cosine"][1] < 1 - 1e-4 and out["r2"][1] < 1 - 1e-4
    assert out["agreement"][0] == 1.0 and out["scorer"] == "head"


# --------------------------------------------------------------------------- end to end
BUDGET = ["phases.swap_trials=2", "phases.min_size=1", "phases.swap_samples=8", "phases.cka_views=paper,cls",
          "dynamics.samples=2", "dynamics.min_per_class=0", "dynamics.k=1", "dynamics.class_samples=40",
          "dynamics.n_perm=5", "dynamics.n_boot=5", "dynamics.robustness_samples=8", "dynamics.robustness_angles=0.1",
          "dynamics.attractor_steps=3", "dynamics.frozen_samples=1", "dynamics.frozen_steps=4",
          "dynamics.frozen_transient=1"]


@pytest.mark.parametrize("changes", [NO_CLS, DEIT], ids=["no-cls", "deit"])
def test_analyze_runs_and_records_what_is_not_defined(tmp_path, changes):
    loaded = tiny_loaded(0, depth=3, **changes)
    dynamics = "lyapunov,basins" if changes is NO_CLS else "basins"
    options, limit = BUDGET, 40
    if changes is DEIT:     # few labels: classes with one image drop out of the basins
        options = [o for o in BUDGET if not o.startswith(("dynamics.class_samples",
                                                           "dynamics.robustness_samples"))]
        options += ["dynamics.class_samples=12", "dynamics.robustness_samples=12"]
        limit = 16
    analyses = df.build_analyses(dynamics=dynamics, options=options)
    path = df.analyze(loaded, df.open_images("digits"), tmp_path / "r.nc",
                      config=df.AnalyzeConfig(limit=limit, batch_size=8), analyses=analyses)
    tree = df.open_result(path)
    root = tree.to_dataset()
    phases = tree["phases"].to_dataset()
    if changes is NO_CLS:
        lyap = tree["dynamics/lyapunov"].to_dataset()
        assert list(root["kind"].values) == ["register", "patch"]
        assert "cls_state" not in root and "cls_class_separation" not in root
        assert D.NO_CLS in root.attrs["not_defined"]
        assert phases.attrs["paper_view"].startswith("mean patch token only")
        assert phases.attrs["views_not_defined"] == f"cls: {D.NO_CLS}"
        assert "cls" not in phases["cosine_distance"].coords[phases["cosine_distance"]
                                                              .dims[0]].values
        assert tree["phases/swap"].attrs["feature"] == "mean_patch"
        assert tree["dynamics/basins"].attrs["skipped"] == D.NO_CLS
        assert list(lyap["restriction"].values) == ["all->all"]
        assert D.NO_CLS in lyap.attrs["not_defined"]
    else:
        assert list(root["kind"].values) == ["cls", "distillation", "patch"]
        assert list(root["token_kind"].values[:3]) == ["cls", "distillation", "patch"]
        assert "cls_state" in root and "not_defined" not in root.attrs
        views = phases["cosine_distance"].coords[phases["cosine_distance"].dims[0]].values
        assert {"cls", "distillation", "paper"} <= set(views)
        assert tree["phases/swap"].attrs["feature"] == "cls"
        assert "classes" in tree["dynamics/basins"].children
        rob = tree["dynamics/basins/robustness"].to_dataset()   # only the images it used
        assert (rob["label"].values >= 0).all() and rob.sizes["subsample"] <= 12
    for name in ("norm", "gamma"):
        assert np.isfinite(root[name].values).all()
