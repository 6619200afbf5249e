"""The reproducibility contract of the batched extraction path (docs/methods.md,
"Reproducibility"): per-sample values computed on a whole batch agree with the same values
computed on any other split of the samples into batches within relative 1e-5 (float32) /
1e-12 (float64) of the variable's scale, and are bit-identical for the same split.

Hypothesis draws the split; the values are the root group's summaries
(:meth:`TrajectorySummaries.values`) and the head's logits (:func:`forward_batch`).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from depthflow.analysis.context import TokenLayout
from depthflow.analysis.summaries import TrajectorySummaries
from depthflow.data.images import Batch
from depthflow.data.trajectory import TrajectoryBatch, forward_batch

from _models import tiny_vit
from test_distributed import assert_within_contract

N = 13
FLOATS = ("norm", "gamma", "angular_speed", "patch_coherence", "update_stable_rank",
          "update_effective_rank", "update_participation_ratio", "logits", "cls_state")


def _trajectories(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    L, T, D = 4, 1 + 2 + 9, 24                      # cls, 2 registers, 9 patches
    steps = torch.randn(N, L + 1, T, D, generator=gen, dtype=torch.float64)
    traj = (3.0 * steps.cumsum(1)).to(dtype)     # a random walk: norms grow with depth
    logits = torch.randn(N, 10, generator=gen, dtype=torch.float64).to(dtype)
    return traj, logits


class _Model:
    class cfg:          # noqa: N801 - the attributes TrajectorySummaries reads
        depth, embed_dim = 4, 24

    head = object()


def _values(traj: torch.Tensor, logits: torch.Tensor, sizes: list[int]) -> dict:
    layout = TokenLayout.from_counts(n_cls=1, n_registers=2, n_patches=9)
    s = TrajectorySummaries(_Model, layout, [str(i) for i in range(10)], states="cls",
                            image_ranks=True, device=traj.device)
    s.num_logits = 10
    labels = torch.arange(N) % 10
    parts, start = [], 0
    for size in sizes:
        sl = slice(start, start + size)
        batch = Batch(images=torch.zeros(size, 1), labels=labels[sl],
                      names=[f"img{i}" for i in range(start, start + size)])
        parts.append(s.values(TrajectoryBatch(batch, traj[sl], logits[sl]), start=start))
        start += size
    out = {k: (np.concatenate([p[k] for p in parts]) if isinstance(parts[0][k], np.ndarray)
               else sum((list(p[k]) for p in parts), [])) for k in parts[0]}
    out["population"] = s.grams.ranks()["stable_rank"].numpy()
    return out


def _split(draw_sizes: list[int]) -> list[int]:
    sizes, left = [], N
    for size in draw_sizes:
        if left == 0:
            break
        sizes.append(min(size, left))
        left -= sizes[-1]
    if left:
        sizes.append(left)
    return sizes


@settings(max_examples=8, deadline=None)
@given(st.lists(st.integers(1, N), min_size=1, max_size=N),
       st.sampled_from([torch.float32, torch.float64]))
def test_summaries_agree_across_batch_sizes_within_the_contract(draw, dtype):
    traj, logits = _trajectories(dtype)
    whole = _values(traj, logits, [N])
    split = _values(traj, logits, _split(draw))
    again = _values(traj, logits, _split(draw))
    for name in FLOATS:
        assert whole[name].dtype == (np.float32 if dtype == torch.float32 else np.float64)
        assert_within_contract(whole[name], split[name], name)
        np.testing.assert_array_equal(split[name], again[name], err_msg=name)  # same split
    for name in ("sample", "label", "sample_name", "class_name"):
        assert list(whole[name]) == list(split[name]), name
    assert list(split["sample"]) == list(range(N))
    # population ranks: float64 sums of per-batch products in the states' dtype
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(split["population"], whole["population"], rtol=rtol)


def test_the_summaries_of_a_batch_are_those_of_each_image_alone():
    """Batched values equal the one-image values (the definition) within the contract."""
    traj, logits = _trajectories(torch.float32)
    assert_within_contract(_values(traj, logits, [N])["gamma"],
                           _values(traj, logits, [1] * N)["gamma"], "gamma")


@settings(max_examples=6, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=9))
def test_head_logits_agree_across_batch_sizes_within_the_contract(draw):
    model = tiny_vit(seed=3)
    images = torch.randn(9, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def run(sizes):
        out, start = [], 0
        for size in sizes:
            batch = Batch(images=images[start:start + size], labels=torch.zeros(size,
                          dtype=torch.long), names=[str(i) for i in range(size)])
            with torch.inference_mode():
                tb = forward_batch(model, batch, torch.device("cpu"), torch.float32)
            out.append((tb.logits.numpy(), tb.states.numpy()))
            start += size
        return [np.concatenate([o[i] for o in out]) for i in range(2)]

    sizes, left = [], 9
    for size in draw:
        if left:
            sizes.append(min(size, left))
            left -= sizes[-1]
    sizes += [left] if left else []
    logits, states = run([9])
    logits2, states2 = run(sizes)
    assert_within_contract(logits, logits2, "logits")
    assert_within_contract(states, states2, "state")
