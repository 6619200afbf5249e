"""Token-dynamics measures: known answers and invariants."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from depthflow.data import tokens

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


def vectors(n=4, d=5):
    return arrays(np.float64, (n, d), elements=finite).filter(
        lambda a: (np.linalg.norm(a, axis=-1) > 1e-3).all())


@given(vectors())
def test_normalize_is_idempotent_and_unit(a):
    x = torch.from_numpy(a)
    u = tokens.normalize(x)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(len(a), dtype=u.dtype))
    torch.testing.assert_close(tokens.normalize(u), u)


@given(vectors(), vectors())
def test_angle_symmetric_and_in_range(a, b):
    x, y = torch.from_numpy(a), torch.from_numpy(b)
    ang = tokens.angle(x, y)
    torch.testing.assert_close(ang, tokens.angle(y, x))
    assert bool(((ang >= 0) & (ang <= math.pi + 1e-12)).all())
    torch.testing.assert_close(tokens.angle(x, x), torch.zeros(len(a), dtype=x.dtype))


@given(st.floats(1e-6, math.pi - 1e-6), st.floats(0.1, 10.0))
def test_angle_known_answer(theta, scale):
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    b = scale * torch.tensor([math.cos(theta), math.sin(theta), 0.0], dtype=torch.float64)
    assert tokens.angle(a, b).item() == pytest.approx(theta, rel=1e-9, abs=1e-12)
    assert tokens.cosine(a, b).item() == pytest.approx(math.cos(theta), abs=1e-12)


def rotating_trajectory(theta: float, depth: int = 5, tokens_: int = 3) -> torch.Tensor:
    """Every token turns by theta per step in the (e0, e1) plane, norms grow."""
    angles = torch.arange(depth + 1, dtype=torch.float64) * theta
    states = torch.zeros(1, depth + 1, tokens_, 4, dtype=torch.float64)
    for t in range(tokens_):
        radius = (1.0 + t) * (1.5 ** torch.arange(depth + 1, dtype=torch.float64))
        states[0, :, t, 0] = radius * torch.cos(angles)
        states[0, :, t, 1] = radius * torch.sin(angles)
    return states


def test_speed_gamma_norms_on_rotation():
    theta = 0.3
    traj = rotating_trajectory(theta)
    torch.testing.assert_close(tokens.angular_speed(traj), torch.full((1, 5, 3), theta,
                                                                      dtype=torch.float64))
    expected_gamma = torch.cos(theta * (5 - torch.arange(6, dtype=torch.float64)))
    torch.testing.assert_close(tokens.gamma(traj)[0, :, 0], expected_gamma)
    torch.testing.assert_close(tokens.gamma(traj)[:, -1], torch.ones(1, 3, dtype=torch.float64))
    torch.testing.assert_close(tokens.token_norms(traj)[0, 2, 1],
                               torch.tensor(2 * 1.5**2, dtype=torch.float64))


def test_patch_coherence_known_answers():
    parallel = torch.zeros(1, 2, 4, 3, dtype=torch.float64)
    parallel[..., 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(tokens.patch_coherence(parallel, slice(0, 4)),
                               torch.ones(1, 2, dtype=torch.float64))
    cross = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]],
                         dtype=torch.float64)
    traj = cross.expand(1, 2, 4, 3)
    torch.testing.assert_close(tokens.patch_coherence(traj, slice(0, 4)),
                               torch.zeros(1, 2, dtype=torch.float64))
    # cls token at position 0 is excluded by the slice
    traj = torch.cat([torch.full((1, 2, 1, 3), 5.0, dtype=torch.float64), parallel], dim=2)
    torch.testing.assert_close(tokens.patch_coherence(traj, slice(1, 5)),
                               torch.ones(1, 2, dtype=torch.float64))


def test_rank_measures_known_answers():
    sigma = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    r = tokens.rank_measures(sigma**2)
    assert r["stable_rank"].item() == pytest.approx(14 / 9)
    assert r["participation_ratio"].item() == pytest.approx(14**2 / 98)
    p = torch.tensor([3, 2, 1], dtype=torch.float64) / 6
    assert r["effective_rank"].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    eye = tokens.rank_measures(torch.ones(7, dtype=torch.float64))
    for value in eye.values():
        assert value.item() == pytest.approx(7.0)
    zero = tokens.rank_measures(torch.zeros(3, dtype=torch.float64))
    assert all(math.isnan(v.item()) for v in zero.values())


def test_update_ranks_of_rank_one_updates():
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(2, 6, 1, generator=gen), torch.randn(2, 1, 5, generator=gen)
    start = torch.randn(2, 6, 5, generator=gen)
    traj = torch.stack([start, start + u @ v, start + 3 * (u @ v)], dim=1)   # (2, 3, 6, 5)
    ranks = tokens.update_ranks(traj)
    for value in ranks.values():
        torch.testing.assert_close(value, torch.ones(2, 2), rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 6), st.integers(0, 1000))
def test_gram_accumulator_is_batch_invariant_and_matches_svd(split, seed):
    gen = torch.Generator().manual_seed(seed)
    traj = torch.randn(7, 4, 5, 3, generator=gen, dtype=torch.float64)
    groups = [torch.tensor([0]), torch.tensor([1, 2, 3, 4])]
    whole = tokens.GramAccumulator(3, 2, 3)
    whole.update(traj, groups)
    parts = tokens.GramAccumulator(3, 2, 3)
    parts.update(traj[:split], groups)
    parts.update(traj[split:], groups)
    torch.testing.assert_close(parts.gram, whole.gram)
    updates = (traj[:, 1:] - traj[:, :-1])[:, :, groups[1]]           # (7, 3, 4, 3)
    stacked = updates.permute(1, 0, 2, 3).reshape(3, -1, 3)
    sq = torch.linalg.svdvals(stacked) ** 2
    torch.testing.assert_close(whole.ranks()["stable_rank"][:, 1],
                               tokens.rank_measures(sq)["stable_rank"])


def test_class_direction_accumulator_known_answer():
    acc = tokens.ClassDirectionAccumulator(depths=2, num_classes=3, dim=3)
    e = torch.eye(3, dtype=torch.float64)
    states = torch.stack([torch.stack([e[0], 2 * e[0]]), torch.stack([e[1], 5 * e[1]]),
                          torch.stack([e[0], e[0]]), torch.stack([e[2], e[2]])])  # (4, 2, 3)
    acc.update(states[:2], torch.tensor([0, 1]))
    acc.update(states[2:], torch.tensor([0, -1]))       # unlabelled sample ignored
    res = acc.result()
    torch.testing.assert_close(res["within"], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(res["between"], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(res["separation"], torch.ones(2, dtype=torch.float64))


def test_kind_mean():
    values = torch.arange(10.0).view(2, 5)
    out = tokens.kind_mean(values, [torch.tensor([0]), torch.tensor([1, 2, 3, 4])])
    torch.testing.assert_close(out, torch.tensor([[0.0, 2.5], [5.0, 7.5]]))


@given(st.integers(0, 10_000), st.booleans())
def test_summarize_batch_equals_the_single_measures(seed, wide):
    gen = torch.Generator().manual_seed(seed)
    tokens_, dim = (5, 9) if wide else (9, 4)
    traj = torch.randn(3, 4, tokens_, dim, generator=gen, dtype=torch.float64)
    groups = [torch.tensor([0]), torch.arange(1, tokens_)]
    patch = slice(1, tokens_)
    out, blocks = tokens.summarize_batch(traj, groups, patch)
    updates = traj[:, 1:] - traj[:, :-1]
    for idx, block in zip(groups, blocks):
        torch.testing.assert_close(block, updates[:, :, idx].transpose(0, 1).flatten(1, 2))
    torch.testing.assert_close(out["norm"], tokens.kind_mean(tokens.token_norms(traj), groups))
    torch.testing.assert_close(out["gamma"], tokens.kind_mean(tokens.gamma(traj), groups))
    torch.testing.assert_close(out["angular_speed"],
                               tokens.kind_mean(tokens.angular_speed(traj), groups))
    torch.testing.assert_close(out["patch_coherence"], tokens.patch_coherence(traj, patch))
    for name, value in tokens.update_ranks(traj).items():
        torch.testing.assert_close(out[f"update_{name}"], value)
        svd = tokens.rank_measures(torch.linalg.svdvals(traj[:, 1:] - traj[:, :-1]) ** 2)
        torch.testing.assert_close(value, svd[name])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([torch.float32, torch.float64]))
def test_summarize_batch_with_scattered_groups_and_small_steps(seed, dtype):
    # a group whose positions are not one run (index_select path), tiny angular steps,
    # norms growing 30x with depth, and a workspace reused across batch shapes
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(2, 1, 7, 16, generator=gen, dtype=torch.float64)
    steps = 1e-3 * torch.randn(2, 4, 7, 16, generator=gen, dtype=torch.float64)
    traj = torch.cat([base, base + steps.cumsum(1)], dim=1)
    traj = traj * torch.linspace(1.0, 30.0, 5, dtype=torch.float64).view(1, 5, 1, 1)
    groups = [torch.tensor([0]), torch.tensor([1, 4]), torch.tensor([2, 3, 5, 6])]
    patch = slice(2, 7)
    work = tokens.Workspace()
    tokens.summarize_batch(traj[:1].to(dtype), groups, patch, workspace=work)
    out, blocks = tokens.summarize_batch(traj.to(dtype), groups, patch, workspace=work)
    updates = traj[:, 1:] - traj[:, :-1]
    for idx, block in zip(groups, blocks):
        torch.testing.assert_close(block.double(),
                                   updates[:, :, idx].transpose(0, 1).flatten(1, 2),
                                   rtol=1e-5, atol=1e-5 * 30)
    exact_speed = tokens.kind_mean(tokens.angular_speed(traj), groups)
    # float32: the contract of docs/methods.md (relative 1e-5 of the value's scale) is met
    # by the states' own rounding (eps * |x| / step = 6e-8 / 1e-3 here) with room to spare
    rtol = 1e-12 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(out["angular_speed"].double(), exact_speed, rtol=rtol, atol=0)
    torch.testing.assert_close(out["gamma"].double(),
                               tokens.kind_mean(tokens.gamma(traj), groups),
                               rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-6)
    torch.testing.assert_close(out["patch_coherence"].double(),
                               tokens.patch_coherence(traj, patch),
                               rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-6)
    torch.testing.assert_close(out["norm"].double(),
                               tokens.kind_mean(tokens.token_norms(traj), groups),
                               rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)


def test_summarize_batch_zero_vectors_follow_the_single_measures():
    traj = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    traj[0, 1, 2] = 0.0                      # a zero state mid-trajectory
    traj[1, 2, 3] = 0.0                      # a zero final state
    groups = [torch.tensor([0]), torch.arange(1, 4)]
    out, _ = tokens.summarize_batch(traj, groups, slice(1, 4))
    torch.testing.assert_close(out["gamma"], tokens.kind_mean(tokens.gamma(traj), groups))
    torch.testing.assert_close(out["angular_speed"],
                               tokens.kind_mean(tokens.angular_speed(traj), groups))
    torch.testing.assert_close(out["patch_coherence"], tokens.patch_coherence(traj, slice(1, 4)))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.integers(1, 6), st.integers(0, 99))
def test_gram_panels_give_the_whole_product(rows, dim, panels, seed):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(2, rows, dim, generator=gen, dtype=torch.float64)
    lower = torch.zeros(2, dim, dim, dtype=torch.float64)
    for lo, hi, panel in tokens.gram_panels(u, panels=min(panels, dim)):
        lower[:, lo:, lo:hi] = panel
    torch.testing.assert_close(tokens.symmetric_from_lower(lower), u.transpose(1, 2) @ u)


def test_gram_accumulator_uses_panels_at_width_256():
    gen = torch.Generator().manual_seed(0)
    traj = torch.randn(3, 2, 4, 260, generator=gen, dtype=torch.float64)
    groups = [torch.tensor([0]), torch.arange(1, 4)]
    acc = tokens.GramAccumulator(1, 2, 260)
    acc.update(traj, groups)
    u = (traj[:, 1] - traj[:, 0])[:, 1:].reshape(-1, 260)
    torch.testing.assert_close(tokens.symmetric_from_lower(acc.gram[0, 1]), u.T @ u)
