"""Layer x layer matrices: known answers, invariances, streaming equals one batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from depthflow.phases import similarity as sim
from depthflow.errors import ConfigError, InputError

KINDS = ["cls", "register", "register"] + ["patch"] * 5      # T = 8


def trajectories(seed: int, batch: int = 6, depths: int = 4, dim: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, depths, len(KINDS), dim, generator=gen, dtype=torch.float64) + 0.3


def rotation(dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return q


def paper_cosine_reference(states: torch.Tensor) -> torch.Tensor:
    """The notebook's definition, written as loops over samples and summaries."""
    n, depths = states.shape[:2]
    out = torch.zeros(depths, depths, dtype=torch.float64)
    patch = [i for i, k in enumerate(KINDS) if k == "patch"]
    for b in range(n):
        summaries = [states[b, :, 0], states[b][:, patch].mean(1)]
        for s in summaries:
            for i in range(depths):
                for j in range(depths):
                    c = torch.nn.functional.cosine_similarity(s[i], s[j], dim=0, eps=1e-8)
                    out[i, j] += (1 - c.clamp(-1, 1)) / (2 * n)
    return out


def run(states: torch.Tensor, *, batch: int = 2, **kwargs):
    acc = sim.DepthSimilarity(KINDS, **kwargs)
    for start in range(0, states.shape[0], batch):
        acc.update(states[start:start + batch])
    return acc.result()


def test_paper_cosine_distance_known_answer():
    states = trajectories(0)
    result = run(states, views=("paper",), cka_views=())
    torch.testing.assert_close(result["cosine"]["paper"], paper_cosine_reference(states),
                               atol=1e-12, rtol=0)


def test_mse_and_cosine_per_token_views_known_answer():
    states = trajectories(1)
    result = run(states, views=("register", "all"), cka_views=())
    regs = states[:, :, 1:3]                                     # (B, L+1, 2, D)
    diff = regs[:, :, None] - regs[:, None, :]                   # (B, L+1, L+1, 2, D)
    torch.testing.assert_close(result["mse"]["register"], diff.square().mean((-1, -2, 0)),
                               atol=1e-12, rtol=0)
    u = states / states.norm(dim=-1, keepdim=True)
    cos = torch.einsum("bitd,bjtd->ijt", u, u) / states.shape[0]
    torch.testing.assert_close(result["cosine"]["all"], 1 - cos.mean(-1), atol=1e-12, rtol=0)


@given(seed=st.integers(0, 1000), batch=st.integers(1, 6))
def test_matrices_symmetric_zero_diagonal_and_batch_independent(seed, batch):
    states = trajectories(seed)
    whole = run(states, batch=6, views=sim.VIEWS, cka_views=("cls", "all"))
    parts = run(states, batch=batch, views=sim.VIEWS, cka_views=("cls", "all"))
    for metric in ("cosine", "mse", "cka"):
        for view, m in whole[metric].items():
            torch.testing.assert_close(m, m.T, atol=0, rtol=0)
            torch.testing.assert_close(parts[metric][view], m, atol=1e-10, rtol=1e-10)
            if metric == "cka":
                torch.testing.assert_close(m.diagonal(), torch.ones(len(m), dtype=m.dtype))
            else:
                assert (m.diagonal() == 0).all()
                assert (m >= 0).all()


@given(seed=st.integers(0, 1000), scale=st.floats(0.01, 100.0))
def test_cka_invariant_to_rotation_and_isotropic_scaling(seed, scale):
    states = trajectories(seed, batch=12)
    q = rotation(states.shape[-1], seed)
    base = run(states, batch=6, views=(), cka_views=("cls", "patch"))
    moved = run(scale * states @ q, batch=6, views=(), cka_views=("cls", "patch"))
    for metric in ("cka", "cka_debiased"):
        for view in ("cls", "patch"):
            torch.testing.assert_close(moved[metric][view], base[metric][view],
                                       atol=1e-9, rtol=1e-9)


def test_cosine_invariant_to_rotation():
    states = trajectories(3)
    q = rotation(states.shape[-1], 3)
    a = run(states, views=("paper", "all"), cka_views=())
    b = run(states @ q, views=("paper", "all"), cka_views=())
    for view in ("paper", "all"):
        torch.testing.assert_close(a["cosine"][view], b["cosine"][view], atol=1e-12, rtol=0)


def test_cka_known_answers():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    q = rotation(6, 1)
    assert float(sim.linear_cka(x, x)) == pytest.approx(1.0)
    assert float(sim.linear_cka(x, 3 * x @ q + 2)) == pytest.approx(1.0)
    y = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    assert float(sim.linear_cka(x, y)) == pytest.approx(float(sim.linear_cka_gram(x, y)))
    # identical depths in a stream: CKA exactly 1 off the diagonal too
    states = torch.randn(10, 1, len(KINDS), 6, generator=gen, dtype=torch.float64)
    result = run(states.expand(-1, 3, -1, -1), views=(), cka_views=("cls",))
    torch.testing.assert_close(result["cka"]["cls"], torch.ones(3, 3, dtype=torch.float64))


def test_streaming_cka_equals_gram_form_and_debiased_estimator():
    states = trajectories(5, batch=24)
    result = run(states, batch=8, views=(), cka_views=("cls",))
    cls = states[:, :, 0]
    depths = cls.shape[1]
    gram = torch.tensor([[float(sim.linear_cka_gram(cls[:, i], cls[:, j]))
                          for j in range(depths)] for i in range(depths)], dtype=torch.float64)
    torch.testing.assert_close(result["cka"]["cls"], gram, atol=1e-10, rtol=0)

    def hsic1(k, m):                     # Song et al. 2012, written with n x n matrices
        n = k.shape[0]
        k, m = k.clone().fill_diagonal_(0), m.clone().fill_diagonal_(0)
        one = torch.ones(n, dtype=k.dtype)
        return (torch.trace(k @ m) + (one @ k @ one) * (one @ m @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * (one @ k @ m @ one)) / (n * (n - 3))

    h = torch.zeros(depths, depths, dtype=torch.float64)
    for start in range(0, 24, 8):
        xb = cls[start:start + 8]
        for i in range(depths):
            for j in range(depths):
                h[i, j] += hsic1(xb[:, i] @ xb[:, i].T, xb[:, j] @ xb[:, j].T)
    d = h.diagonal().sqrt()
    torch.testing.assert_close(result["cka_debiased"]["cls"], h / d[:, None] / d[None, :],
                               atol=1e-10, rtol=0)


def test_views_and_bad_input():
    assert set(sim.view_tokens(["cls", "patch", "patch"])) == {"cls", "all", "patch", "paper"}
    acc = sim.DepthSimilarity(["cls", "patch", "patch"])      # no registers: view skipped
    assert "register" not in acc.views
    with pytest.raises(ConfigError, match="views must be distinct entries"):
        sim.DepthSimilarity(KINDS, views=("pixels",))
    with pytest.raises(InputError, match="neither a cls token nor patches"):
        sim.view_tokens(["register", "register"])
    with pytest.raises(InputError, match=r"shape \(batch, depth, token, feature\)"):
        acc.update(torch.zeros(2, 3, 4))
    with pytest.raises(InputError, match="no observations"):
        sim.PairwiseAccumulator("cls").result()


def test_float32_states_accumulate_in_float64():
    states = trajectories(7).float()
    result = run(states, views=("cls",), cka_views=("cls",))
    assert result["cosine"]["cls"].dtype == torch.float64
    ref = run(states.double(), views=("cls",), cka_views=("cls",))
    np.testing.assert_allclose(result["cka"]["cls"], ref["cka"]["cls"], atol=1e-5)
