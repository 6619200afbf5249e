"""The attention / MLP split of each layer: residual updates, stretching, non-normality.

A pre-norm block is two residual half-steps, each exactly the model's own code
(:meth:`depthflow.models.vit.Block.attention_update` / ``mlp_update``)::

    y = A_l(x) = x + a_l(x)        a_l = ls1(attn(norm1 .))   (attention half-step)
    z = M_l(y) = y + m_l(y)        m_l = ls2(mlp(norm2 .))    (MLP half-step)

so the layer is ``F_l = M_l o A_l`` and its update ``z - x = a_l(x) + m_l(y)`` (the same
floating-point operations as the block). Per layer this module measures

* the norm of each branch's update per token kind (mean over the kind's tokens), raw and
  relative to the input token norm;
* the top singular values ``sigma`` of each half-step's directional tangent map (norms
  held, as :func:`depthflow.dynamics.tangent.stretching.layer_stretching`) and of the whole layer;
* the departure from normality of the state tangent map ``J`` of each half-step and of
  the layer, ``||J^T J - J J^T||_F / ||J||_F^2``, and of its update part, the same
  numerator over ``||J - I||_F^2``, by random projections (``docs/methods.md``).

With the MLP zeroed, ``M_l`` is the identity: all stretching is the attention half-step's
(and vice versa); the half-step spectra do not compose into the layer's in general.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from depthflow.errors import ArchitectureError, ConfigError
from depthflow.dynamics.maps import DepthMap, FunctionMap, from_model
from depthflow.dynamics.tangent.stretching import layer_stretching
from depthflow.data.tokens import token_groups

__all__ = ["BRANCHES", "half_step_maps", "branch_updates", "non_normality", "BranchSplit",
           "branch_split"]

BRANCHES = ("attention", "mlp", "layer")


def _block(model, layer: int):
    from depthflow.models.vit import Block

    blocks = getattr(model, "blocks", None)
    block = blocks[layer - 1] if blocks is not None and 1 <= layer <= len(blocks) else None
    if block is None or not isinstance(block, Block) or type(block).forward is not Block.forward:
        raise ArchitectureError(
            f"the attention/MLP split needs a depthflow ViT whose layer {layer} is a plain "
            f"pre-norm block, got {type(block).__name__}; a Raptor's depth-conditioned blocks "
            "are not split")
    if model.training:
        raise ConfigError("the attention/MLP split needs a model in eval mode; call .eval()")
    return block


def half_step_maps(model, *, attention: str = "math") -> tuple[DepthMap, DepthMap]:
    """``(A, M)``: the attention half-step ``A_l(x) = x + a_l(x)`` and the MLP half-step
    ``M_l(y) = y + m_l(y)`` of every layer as depth maps (``F_l = M_l o A_l`` exactly)."""
    depths = list(range(1, int(model.depth) + 1))
    for t in depths:
        _block(model, t)

    def attn_half(t: int, x: Tensor) -> Tensor:
        return x + model.blocks[t - 1].attention_update(x, attention)

    def mlp_half(t: int, y: Tensor) -> Tensor:
        return y + model.blocks[t - 1].mlp_update(y)

    return (FunctionMap(attn_half, depths=depths, name="attention half-steps x + a_l(x)"),
            FunctionMap(mlp_half, depths=depths, name="MLP half-steps y + m_l(y)"))


def branch_updates(model, layer: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(a, m, y)`` at layer ``layer`` from states ``x`` (..., T, D): the attention update,
    the MLP update and the half-step state ``y = x + a`` (``x + a + m`` is the layer's
    output, bit for bit)."""
    block = _block(model, layer)
    with torch.no_grad():
        a = block.attention_update(x, "math")
        y = x + a
        return a, block.mlp_update(y), y


def non_normality(f: DepthMap, t: int | None, x: Tensor, *, probes: int = 8,
                  seed: int = 0, sample_ids: Sequence[int] | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Random-projection estimates of the departure from normality of the state tangent
    map ``J`` of ``f_t`` at every state of ``x`` (N, T, D):
    ``||J^T J - J J^T||_F / ||J||_F^2`` and ``||J^T J - J J^T||_F / ||J - I||_F^2``.

    ``||X||_F^2 = E ||X z||^2`` for Gaussian ``z`` (Hutchinson); each probe costs two JVPs
    and two VJPs. The draws of image ``i`` are keyed by ``seed``, ``t`` and
    ``sample_ids[i]`` (default ``i``), so an image's value does not depend on the others.
    Returns two (N,) float64 tensors (0 for a normal map)."""
    if probes < 1:
        raise ConfigError(f"probes must be >= 1, got {probes}")
    from depthflow.dynamics.tangent._propagator import start_seed

    x = x.detach()
    ids = range(x.shape[0]) if sample_ids is None else [int(i) for i in sample_ids]
    draws = torch.stack([torch.randn((probes, *x.shape[1:]), dtype=torch.float64,
                                     generator=torch.Generator().manual_seed(
                                         start_seed(seed, int(t or 0), i)))
                         for i in ids], dim=1)                          # (probes, N, T, D)
    num = torch.zeros(x.shape[0], dtype=torch.float64)
    den = torch.zeros_like(num)
    den_update = torch.zeros_like(num)
    per = lambda v: v.flatten(1).pow(2).sum(1).double().cpu()        # noqa: E731
    for z in draws:
        z = z.to(x)
        _, jz = f.jvp(t, x, z)                               # J z
        _, jtz = f.vjp(t, x, z)                              # J^T z
        _, jtjz = f.vjp(t, x, jz)                            # J^T J z
        _, jjtz = f.jvp(t, x, jtz)                           # J J^T z
        num += per((jtjz - jjtz).detach())
        den += per(jz.detach())
        den_update += per((jz - z).detach())
    return (num.sqrt() * probes ** 0.5 / den, num.sqrt() * probes ** 0.5 / den_update)


@dataclasses.dataclass
class BranchSplit:
    """Per image ``n``, layer ``l``, branch ``b`` (attention, mlp, layer), token kind ``k``.

    ``update_norm`` / ``relative_update`` (n, l, b, k); ``sigma`` (n, l, b, modes),
    ``status`` (n, l, b); ``non_normality`` / ``update_non_normality`` (n, l, b);
    ``layers``; ``kinds``."""

    update_norm: np.ndarray
    relative_update: np.ndarray
    sigma: np.ndarray
    status: np.ndarray
    non_normality: np.ndarray
    update_non_normality: np.ndarray
    layers: list[int]
    kinds: list[str]


def branch_split(model, trajectory: Tensor, token_kinds: Sequence[str], *,
                 layers: Sequence[int] | None = None, k: int = 4, tol: float = 1e-6,
                 probes: int = 8, seed: int = 0,
                 sample_ids: Sequence[int] | None = None,
                 layer_spectra=None) -> BranchSplit:
    """The attention / MLP split (module docstring) along trajectories ``(N, L+1, T, D)``
    (``trajectory[:, d]`` = states at depth ``d``) of ``model`` for ``layers`` (default
    all); ``sample_ids`` (global image indices) key the random projections.
    ``layer_spectra``: the whole layers' :func:`layer_stretching` of the same trajectories
    with the same ``layers``, ``k``, ``tol`` and ``seed`` when already computed (the
    stretching analysis): reused instead of computed again."""
    traj = trajectory.detach()
    L = traj.shape[1] - 1
    layers = list(range(1, L + 1)) if layers is None else [int(t) for t in layers]
    if any(not 1 <= t <= L for t in layers):
        raise ConfigError(f"layers must be in 1..{L}, got {layers}")
    groups = token_groups(token_kinds)
    kinds = list(groups)
    A, M = half_step_maps(model)
    F = from_model(model)
    n, B = traj.shape[0], len(BRANCHES)
    norms = np.zeros((n, len(layers), B, len(kinds)))
    rel = np.zeros_like(norms)
    nn = np.zeros((n, len(layers), B))
    nnu = np.zeros_like(nn)
    mids = traj.clone()
    for i, t in enumerate(layers):
        x = traj[:, t - 1]
        a, m, y = branch_updates(model, t, x)
        mids[:, t - 1] = y
        size = x.norm(dim=-1)                                           # (N, T)
        for b, upd in enumerate((a, m, a + m)):
            un = upd.norm(dim=-1)
            for j, kind in enumerate(kinds):
                idx = groups[kind].to(x.device)
                norms[:, i, b, j] = un[:, idx].mean(-1).double().cpu().numpy()
                rel[:, i, b, j] = (un[:, idx] / size[:, idx]).mean(-1).double().cpu().numpy()
        for b, (f, start) in enumerate(((A, x), (M, y), (F, x))):
            r, ru = non_normality(f, t, start, probes=probes, seed=seed,
                                  sample_ids=sample_ids)
            nn[:, i, b], nnu[:, i, b] = r.numpy(), ru.numpy()
    spectra = [layer_stretching(f, states, layers=layers, k=k, tol=tol, seed=seed)
               for f, states in ((A, traj), (M, mids))]
    spectra.append(layer_spectra if layer_spectra is not None else
                   layer_stretching(F, traj, layers=layers, k=k, tol=tol, seed=seed))
    kk = min(s.sigma.shape[-1] for s in spectra)
    sigma = np.stack([s.sigma[..., :kk].numpy() for s in spectra], axis=2)   # (N, l, B, k)
    status = np.stack([s.status.numpy() for s in spectra], axis=2)
    return BranchSplit(norms, rel, sigma, status, nn, nnu, layers, kinds)
