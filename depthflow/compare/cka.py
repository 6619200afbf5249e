"""Streaming linear CKA between every depth of one model and every depth of another.

Feature-space form (never the ``n x n`` Gram): for observations ``x`` (n, Pa, Da) of model
A and ``y`` (n, Pb, Db) of model B, float64 sums of ``x_i^T y_j`` over all depth pairs
(``(Pa Da) x (Pb Db)`` numbers), of ``x_i^T x_i`` and ``y_j^T y_j`` (diagonal blocks only)
and of ``x``, ``y`` give the standard CKA
``||C_ij||_F^2 / (||C_ii^A||_F ||C_jj^B||_F)``. The debiased CKA averages the unbiased
HSIC (Song et al. 2012) of every batch of at least 4 observations, then normalises
(Nguyen, Raghu, Kornblith 2021); its percentile interval resamples batches (groups of
images) with replacement, and its null pairs each image of A with another image of B of
the same batch (a seeded permutation), which keeps every marginal and breaks the pairing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from depthflow.errors import InputError

__all__ = ["CrossCKA", "cross_linear_cka"]


def _cross_hsic(x: Tensor, y: Tensor, prod: Tensor) -> Tensor:
    """Unbiased HSIC ``(Pa, Pb)`` of every depth pair, linear kernels, one batch."""
    n, pa, da = x.shape
    pb, db = y.shape[1], y.shape[2]
    frob = prod.double().reshape(pa, da, pb, db).square().sum(dim=(1, 3))
    sqx, sqy = x.square().sum(-1), y.square().sum(-1)                  # (n, P)
    tx, ty = x.sum(0), y.sum(0)                                        # (P, D)
    trace = frob - sqx.T @ sqy
    onesx = tx.square().sum(-1) - sqx.sum(0)
    onesy = ty.square().sum(-1) - sqy.sum(0)
    rowx = torch.einsum("npd,pd->np", x, tx) - sqx
    rowy = torch.einsum("npd,pd->np", y, ty) - sqy
    return (trace + onesx[:, None] * onesy[None, :] / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (rowx.T @ rowy)) / (n * (n - 3))


def _self_hsic(x: Tensor, gram: Tensor) -> Tensor:
    """Unbiased HSIC ``(P,)`` of every depth with itself; ``gram``: (P, D, D) = x_p^T x_p."""
    n = x.shape[0]
    sq = x.square().sum(-1)                                            # (n, P)
    t = x.sum(0)
    trace = gram.square().sum(dim=(1, 2)) - sq.square().sum(0)
    ones = t.square().sum(-1) - sq.sum(0)
    row = torch.einsum("npd,pd->np", x, t) - sq
    return (trace + ones.square() / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * row.square().sum(0)) / (n * (n - 3))


class CrossCKA:
    """Streaming cross-model CKA for one token view (see the module docstring)."""

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed
        self.count = 0
        self.shift_x = self.shift_y = None
        self.cross = self.gram_x = self.gram_y = self.tot_x = self.tot_y = None
        self.batches: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add paired observations ``x`` (n, Pa, Da) of A and ``y`` (n, Pb, Db) of B."""
        if x.ndim != 3 or y.ndim != 3 or x.shape[0] != y.shape[0]:
            raise InputError(f"observations must be (n, depths, features) with the same n, "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        x, y = x.detach().double(), y.detach().double()
        if self.cross is None:
            self.shift_x, self.shift_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
            (n, pa, da), (_, pb, db) = x.shape, y.shape
            self.cross = torch.zeros(pa * da, pb * db, dtype=torch.float64, device=x.device)
            self.gram_x = torch.zeros(pa, da, da, dtype=torch.float64, device=x.device)
            self.gram_y = torch.zeros(pb, db, db, dtype=torch.float64, device=x.device)
            self.tot_x = torch.zeros(pa, da, dtype=torch.float64, device=x.device)
            self.tot_y = torch.zeros(pb, db, dtype=torch.float64, device=x.device)
        x, y = x - self.shift_x, y - self.shift_y
        n = x.shape[0]
        prod = x.reshape(n, -1).T @ y.reshape(n, -1)
        gx = torch.einsum("npd,npe->pde", x, x)
        gy = torch.einsum("npd,npe->pde", y, y)
        self.cross += prod
        self.gram_x += gx
        self.gram_y += gy
        self.tot_x += x.sum(0)
        self.tot_y += y.sum(0)
        self.count += n
        if n >= 4:
            gen = torch.Generator().manual_seed(self.seed + len(self.batches))
            perm = torch.randperm(n, generator=gen)
            while n > 1 and bool((perm == torch.arange(n)).any()):   # no image kept paired
                perm = torch.randperm(n, generator=gen)
            yp = y[perm.to(y.device)]
            null_prod = x.reshape(n, -1).T @ yp.reshape(n, -1)
            self.batches.append((_cross_hsic(x, y, prod).cpu().numpy(),
                                 _self_hsic(x, gx).cpu().numpy(),
                                 _self_hsic(y, gy).cpu().numpy(),
                                 _cross_hsic(x, yp, null_prod).cpu().numpy()))

    def result(self, *, n_boot: int = 1000, level: float = 0.95) -> dict[str, np.ndarray]:
        """``cka``, ``cka_debiased`` (+ ``_low``/``_high``, percentile over batch
        resamples), ``cka_debiased_null`` (Pa, Pb); NaN where undefined."""
        if not self.count:
            raise InputError("no observations were accumulated")
        pa, da = self.tot_x.shape
        pb, db = self.tot_y.shape
        mx, my = self.tot_x / self.count, self.tot_y / self.count
        hx = torch.stack([(self.gram_x[i] / self.count - torch.outer(mx[i], mx[i])).square().sum()
                          for i in range(pa)])
        hy = torch.stack([(self.gram_y[j] / self.count - torch.outer(my[j], my[j])).square().sum()
                          for j in range(pb)])
        hxy = torch.empty(pa, pb, dtype=torch.float64)
        for i in range(pa):                  # one block row at a time
            block = self.cross[i * da:(i + 1) * da] / self.count \
                - mx[i][:, None] * my.reshape(1, -1)
            hxy[i] = block.reshape(da, pb, db).square().sum(dim=(0, 2)).cpu()
        out = {"cka": _normalise(hxy.numpy(), hx.cpu().numpy(), hy.cpu().numpy())}
        nan = np.full((pa, pb), np.nan)
        if not self.batches:
            out.update(cka_debiased=nan, cka_debiased_low=nan.copy(),
                       cka_debiased_high=nan.copy(), cka_debiased_null=nan.copy())
            return out
        cross, sx, sy, null = (np.stack(parts) for parts in zip(*self.batches))
        out["cka_debiased"] = _normalise(cross.mean(0), sx.mean(0), sy.mean(0))
        out["cka_debiased_null"] = _normalise(null.mean(0), sx.mean(0), sy.mean(0))
        rng = np.random.default_rng(self.seed)
        m = len(cross)
        draws = np.stack([_normalise(cross[idx].mean(0), sx[idx].mean(0), sy[idx].mean(0))
                          for idx in rng.integers(0, m, size=(max(n_boot, 1), m))])
        a = (1 - level) / 2
        import warnings

        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)        # all-NaN entries
            out["cka_debiased_low"], out["cka_debiased_high"] = np.nanquantile(
                draws, [a, 1 - a], axis=0) if m > 1 else (nan.copy(), nan.copy())
        return out


def _normalise(hxy: np.ndarray, hx: np.ndarray, hy: np.ndarray) -> np.ndarray:
    denom = np.sqrt(np.clip(hx, 0, None))[:, None] * np.sqrt(np.clip(hy, 0, None))[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, hxy / np.where(denom > 0, denom, 1.0), np.nan)


def cross_linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA of two representations ``(n, Dx)``, ``(n, Dy)`` (reference form)."""
    x = (x - x.mean(0)).double()
    y = (y - y.mean(0)).double()
    return (x.T @ y).square().sum() / ((x.T @ x).square().sum().sqrt()
                                       * (y.T @ y).square().sum().sqrt())
