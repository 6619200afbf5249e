"""Basin fractions: closed-form oracle basins, invariants, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from depthflow.dynamics import maps
from depthflow.dynamics import oracles
from depthflow.dynamics.attractors.basins import basins_fractions, random_directions
from depthflow.errors import ConfigError, InputError

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _circle_starts(n, tokens=1):
    theta = 2 * math.pi * (torch.arange(n, dtype=F64) + 0.5) / n
    u = torch.stack([theta.cos(), theta.sin()], -1)               # (n, 2)
    return u[:, None, :].expand(n, tokens, 2).clone()


def test_two_attractor_circle_map_fractions_are_arc_lengths():
    orc = oracles.two_attractors(tokens=1)
    n = 720
    res = basins_fractions(orc.map, _circle_starts(n), steps=300, tol_angle=0.05,
                           attractors=orc.fixed_points[[0, 2]])
    expected = orc.basin_fractions[[0, 2]]
    assert float(res.fractions[0]) == 0.0                        # nothing unassigned
    assert torch.allclose(res.fractions[1:], expected, atol=2.0 / n)
    # clustering without attractors finds the same two basins (largest first)
    found = basins_fractions(orc.map, _circle_starts(n), steps=300, tol_angle=0.05)
    assert found.num_attractors == 2
    assert torch.allclose(found.fractions[1:], expected.sort(descending=True).values,
                          atol=2.0 / n)


def test_power_map_random_directions_split_in_halves_with_binomial_errors():
    orc = oracles.power([2.0, 1.0, 0.8, 0.5], tokens=2)
    n = 300
    labels = torch.arange(n) % 3
    res = basins_fractions(orc.map, n, state_shape=(2, 4), steps=60, tol_angle=0.05,
                           attractors=orc.fixed_points[:2], labels=labels,
                           token_kinds=["cls", "patch"], seed=1)
    p = res.fractions[1:]
    se = torch.sqrt(p * (1 - p) / (2 * n))
    assert torch.allclose(res.stderr[1:], se)
    assert ((p - 0.5).abs() < 4 * se).all()
    assert res.fractions_by_class.shape == (3, 3) and res.fractions_by_kind.shape == (2, 3)
    ds = res.to_dataset()
    assert ds["fraction_by_kind"].sel(kind="cls").sum() == pytest.approx(1.0)
    # state scope: 2 tokens -> 4 state attractors (+-q1 per token)
    state = basins_fractions(orc.map, n, state_shape=(2, 4), steps=60, tol_angle=0.05,
                             scope="state", seed=1)
    assert state.num_attractors == 4 and state.labels.shape == (n,)


@settings(max_examples=15)
@given(st.integers(0, 1000), st.integers(1, 3), st.sampled_from(["token", "state"]))
def test_fractions_sum_to_one(seed, tokens, scope):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(3, 3, generator=gen, dtype=F64)
    f = maps.sphere(maps.from_function(lambda x: x @ A.T), torch.ones(tokens))
    labels = torch.randint(0, 3, (20,), generator=gen)
    res = basins_fractions(f, 20, state_shape=(tokens, 3), steps=8, tol_angle=0.3,
                           labels=labels, token_kinds=["patch"] * tokens, scope=scope,
                           seed=seed)
    assert float(res.fractions.sum()) == pytest.approx(1.0)
    assert torch.allclose(res.fractions_by_class.sum(1), torch.ones(len(res.classes),
                                                                    dtype=F64))
    assert ((res.labels >= -1) & (res.labels < res.num_attractors)).all()
    assert ((res.labels == -1) == (res.status != 0)).all()


def test_not_converged_and_nonfinite_are_label_minus_one():
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64)      # rotation by pi/2
    f = maps.sphere(maps.from_function(lambda x: x @ rot.T), torch.ones(1))
    res = basins_fractions(f, _circle_starts(8), steps=10, tol_angle=0.1)
    assert (res.labels == -1).all() and (res.status == 1).all()
    bad = maps.from_function(lambda x: x * float("nan"))
    res = basins_fractions(bad, torch.ones(3, 1, 2, dtype=F64), steps=2, window=1)
    assert (res.status == 3).all() and (res.labels == -1).all()


def test_bad_inputs():
    fam = oracles.linear_family(torch.eye(2, dtype=F64).expand(2, 2, 2), tokens=1).map
    with pytest.raises(ConfigError, match="autonomous"):
        basins_fractions(fam, torch.ones(2, 1, 2, dtype=F64), steps=3)
    orc = oracles.power([2.0, 1.0], tokens=1)
    with pytest.raises(InputError, match="zero-norm"):
        basins_fractions(orc.map, torch.zeros(2, 1, 2, dtype=F64), steps=3)
    with pytest.raises(ConfigError, match="tol_angle"):
        basins_fractions(orc.map, random_directions(2, (1, 2)), steps=3, tol_angle=2.0)
    with pytest.raises(InputError, match="attractors"):
        basins_fractions(orc.map, random_directions(2, (1, 2)), steps=3,
                         attractors=torch.ones(2, 5, dtype=F64))
