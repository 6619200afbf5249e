"""Losses of the Raptor recipe (docs/methods.md).

* Stage 1, per block ``j`` on its own segment ``start_j -> stop_j``, fed the teacher state at
  the segment start: ``r L_TF + (1 - r) L_AR``; ``L_TF`` predicts every ``a_l`` from the
  teacher's ``a_(l-1)``, ``L_AR`` rolls the block out from ``a_start`` with gradients
  through the whole rollout, MSE averaged over the steps. The k block losses are summed
  (the blocks share no parameters, so this trains them independently in one pass).
  A block whose layers are not contiguous (an arbitrary layer -> block assignment) owns
  several maximal runs of consecutive layers; each run is trained exactly like a segment
  (fed the teacher state at the run's start), and the block's loss is the mean of its run
  losses weighted by run length, so every layer of the block counts equally. For a
  contiguous routing this is the segment loss above.
* Stage-1 token weights (``paper`` recipe, as the official runs): one plain MSE over all
  tokens for runs ending before the last layer, ``0.34 / 0.33 / 0.33`` (cls / registers /
  patches) for the run ending at the last layer; the ``depthflow`` recipe weights every run
  like stage 2.
* Stage 2: all blocks chained from ``a_0``, pure autoregressive over all ``L`` layers.
* Token weighting: ``w_cls MSE(cls) + w_reg MSE(registers) + w_patch MSE(patches)``
  (0.45 / 0.10 / 0.45), each an MSE over the tokens of its kind; weights of kinds a model
  lacks (no registers, no cls token) are dropped and the rest renormalised to sum to 1;
  the class tokens (cls and DeiT's distillation token) share the cls weight, one MSE over
  both, so the paper's class / register / patch proportions are kept. Without
  weighting, one MSE over all tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from depthflow.errors import ConfigError
from depthflow.raptor.model import Raptor


def kind_weights(kinds: Sequence[str], *, cls: float, register: float,
                 patch: float) -> Tensor:
    """Per-token weights ``(T,)`` such that ``sum_t w_t mse_t`` is the kind-weighted MSE."""
    given = {"cls": cls, "register": register, "patch": patch}
    if any(v < 0 for v in given.values()):
        raise ConfigError(f"token weights must be >= 0, got {given}")
    group = [_WEIGHT_GROUP.get(k, k) for k in kinds]
    unknown = sorted(set(group) - set(given))
    if unknown:
        raise ConfigError(f"no loss weight for token kind(s) {unknown}")
    counts = {kind: group.count(kind) for kind in given}
    present = {kind: w for kind, w in given.items() if counts[kind]}
    total = sum(present.values())
    if total <= 0:
        raise ConfigError(f"token weights {given} give zero weight to every token kind present")
    return torch.tensor([present.get(g, 0.0) / total / counts[g] for g in group])


# Class tokens share the cls weight: DeiT's distillation token is a second class token.
_WEIGHT_GROUP = {"distillation": "cls"}


def token_mse(pred: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
    """MSE over ``(..., T, D)`` states: plain, or token-weighted by ``weights (T,)``.

    Computed in the target's dtype (float32 under bf16 autocast).
    """
    err = (pred.to(target.dtype) - target).square()
    if weights is None:
        return err.mean()
    per_token = err.mean(dim=-1).reshape(-1, err.shape[-2]).mean(dim=0)      # (T,)
    return (per_token * weights.to(per_token.dtype)).sum()


class RaptorObjective(nn.Module):
    """The training loss as a module (so that DDP can wrap it).

    ``forward(states, stage=, ratio=, noise=)`` with teacher states ``(B, L+1, T, D)``
    returns the scalar loss; ``noise`` (same shape as states or None) is added to the
    inputs the blocks are fed (teacher-forced inputs and rollout starts).
    """

    def __init__(self, raptor: Raptor, *, weights: Tensor | None,
                 stage1_weights: Tensor | None | str = "same",
                 final_weights: Tensor | None | str = "same") -> None:
        """``weights``: stage 2 (None: plain MSE); ``stage1_weights``: stage-1 runs ending
        before the last layer; ``final_weights``: the stage-1 run ending at the last layer
        (``"same"``: as ``weights``)."""
        super().__init__()
        self.raptor = raptor
        s1 = weights if isinstance(stage1_weights, str) else stage1_weights
        fin = weights if isinstance(final_weights, str) else final_weights
        for name, value in (("weights", weights), ("stage1_weights", s1),
                            ("final_weights", fin)):
            if value is None:
                setattr(self, name, None)
            else:
                self.register_buffer(name, value, persistent=False)

    def forward(self, states: Tensor, *, stage: int, ratio: float = 0.0,
                noise: Tensor | None = None) -> Tensor:
        inputs = states if noise is None else states + noise
        if stage == 2:
            return self.rollout_loss(inputs, states, 0, self.raptor.depth)
        counts = self.raptor.counts
        losses = []
        for j, start, stop in self.raptor.runs():
            weights = self.final_weights if stop == self.raptor.depth else self.stage1_weights
            loss = states.new_zeros(())
            if ratio > 0:
                loss = loss + ratio * self.forced_loss(j, inputs, states, start, stop,
                                                       weights=weights)
            if ratio < 1:
                loss = loss + (1 - ratio) * self.rollout_loss(inputs, states, start, stop,
                                                              weights=weights)
            losses.append(loss * ((stop - start) / counts[j]))
        return torch.stack(losses).sum()

    def forced_loss(self, j: int, inputs: Tensor, states: Tensor, start: int,
                    stop: int, *, weights: Tensor | None | str = "stage2") -> Tensor:
        """Teacher forcing: block j maps every teacher ``a_(l-1)`` to ``a_l`` in one batch."""
        n, batch = stop - start, states.shape[0]
        x = inputs[:, start:stop].transpose(0, 1).reshape(n * batch, *states.shape[2:])
        t = torch.arange(start + 1, stop + 1, dtype=states.dtype,
                         device=states.device).repeat_interleave(batch)         # (n*B,)
        pred = self.raptor.blocks[j](x, t)
        target = states[:, start + 1:stop + 1].transpose(0, 1).reshape_as(pred)
        return token_mse(pred, target, self.weights if isinstance(weights, str) else weights)

    def rollout_loss(self, inputs: Tensor, states: Tensor, start: int, stop: int, *,
                     weights: Tensor | None | str = "stage2") -> Tensor:
        """Autoregressive: roll out from ``a_start``, MSE at every step, mean over steps."""
        w = self.weights if isinstance(weights, str) else weights
        x = inputs[:, start]
        total = states.new_zeros(())
        for layer in range(start + 1, stop + 1):
            x = self.raptor.step(layer, x)
            total = total + token_mse(x, states[:, layer], w)
        return total / (stop - start)
