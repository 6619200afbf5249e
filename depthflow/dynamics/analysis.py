"""The dynamics plug-in of ``depthflow analyze``: spectra, Lyapunov exponents, fixed points,
basins and perturbation recovery of a model's layers, as the ``dynamics`` group of the
result file (one child group per analysis).

:class:`DynamicsAnalysis` keeps the trajectories of the first ``samples`` streamed images
(detached, on the CPU) and in :meth:`~DynamicsAnalysis.finish` treats the layers as maps on
token directions:

* layer ``t`` at the trajectory's own norms: ``F_hat_t(u) = F_t(r u) / ||F_t(r u)||`` with
  ``r`` the per-sample token norms at depth ``t-1`` (so the real trajectory is an orbit of the
  sphere maps); its tangent spectrum (top-``k`` eigenvalues, and per-token block spectral
  radii when ``D`` is small) at every layer, and the non-autonomous Lyapunov spectrum along
  the trajectory;
* frozen late layers as autonomous maps at the mean token norms of their input depth
  (``maps.sphere(maps.frozen(F, t), r_mean)``): Lyapunov spectra of long iteration, fixed
  points (Newton-Krylov, :mod:`depthflow.dynamics.fixed_points`) with stability, and basins
  of the real directions and perturbations of them (per class and per token kind);
* recovery of tangent perturbations injected along the real trajectories.

Everything is matrix-free except the optional per-token blocks, so the same code runs on
DINOv2-S (``T = 257``, ``D = 384``) with a reduced budget.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from depthflow import vocabulary as D
from depthflow import maps
from depthflow.config import Options
from depthflow.errors import ConfigError
from depthflow.vocabulary import attrs
from depthflow.dynamics.basins import basins_fractions
from depthflow.dynamics.lyapunov import lyapunov_spectrum
from depthflow.dynamics.recovery import DIRECTIONS, perturbation_recovery

__all__ = ["DynamicsConfig", "DynamicsAnalysis", "ANALYSES", "trajectory_sphere_map"]

ANALYSES = ("spectra", "lyapunov", "fixed_points", "basins", "recovery")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclasses.dataclass
class DynamicsConfig(Options):
    """What the dynamics plugin computes and its budget (layers are 1-based blocks; ``None``
    picks the default named in each comment; negative layers count from the last)."""

    _what = "dynamics option"

    analyses: tuple[str, ...] = ANALYSES
    samples: int = 8                           # trajectories kept (first streamed images)
    k: int = 8                                 # eigenvalues / Lyapunov exponents
    dtype: str = "float64"                     # compute dtype of the analysis
    spectra_layers: tuple[int, ...] | None = None        # None: 4 layers, L/4 .. L
    spectra_samples: int = 1                   # samples whose layer spectra are computed
    spectra_method: str = "auto"               # eigvals route (dense when small, else matrix-free)
    spectra_tol: float = 1e-6
    token_blocks: bool = False                 # per-token D x D blocks (only when D <= 128)
    lyapunov_layers: tuple[int, ...] = (-2, -1)          # frozen layers iterated
    lyapunov_steps: int = 20
    lyapunov_transient: int = 10
    fixed_point_layer: int = -1
    fixed_point_samples: int = 1               # samples whose directions seed the search
    fixed_point_starts: int = 2                # per sample: the direction + perturbed copies
    fixed_point_max_iter: int = 20
    fixed_point_token: int = 0                 # token of the one-token scope (0 = cls)
    basin_layer: int = -1
    basin_starts: int = 4                      # per sample: the real direction + perturbed
    basin_perturbation: float = 0.5            # rad, rotation of the perturbed starts
    basin_steps: int = 100
    basin_tol: float = 0.1                     # rad
    recovery_depths: tuple[int, ...] | None = None       # None: L/4, L/2, 3L/4
    recovery_angles: tuple[float, ...] = (0.05, 0.2)
    recovery_directions: tuple[str, ...] = DIRECTIONS
    recovery_draws: int = 2
    seed: int = 0

    def validate(self) -> DynamicsConfig:
        bad = [a for a in self.analyses if a not in ANALYSES]
        if bad:
            raise ConfigError(f"unknown dynamics analyses {bad}; choose from {ANALYSES}")
        for name in ("samples", "k", "spectra_samples", "lyapunov_steps", "basin_starts",
                     "fixed_point_samples", "fixed_point_starts",
                     "basin_steps", "fixed_point_max_iter", "recovery_draws"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not 0 < self.basin_tol <= math.pi / 2:
            raise ConfigError(f"basin_tol must be in (0, pi/2] rad, got {self.basin_tol}")
        if any(d not in DIRECTIONS for d in self.recovery_directions):
            raise ConfigError(f"recovery_directions must be from {DIRECTIONS}, got "
                              f"{self.recovery_directions}")
        return self


def _layer(t: int, L: int, what: str) -> int:
    layer = L + 1 + t if t < 0 else t
    if not 1 <= layer <= L:
        raise ConfigError(f"{what}: layer {t} outside 1..{L} (negative counts from the end)")
    return layer


def trajectory_sphere_map(f: maps.DepthMap, states: torch.Tensor) -> maps.DepthMap:
    """The layers of ``f`` on token directions at the norms of a trajectory ``states``
    ``(N, L+1, T, D)``: ``F_hat_t(u) = F_t(r_(t-1) u) / ||.||`` with ``r_(t-1)`` the per-sample
    token norms at depth ``t-1``. The real trajectory is an orbit of these maps. Tangent
    dynamics need ``tangent=True`` in :func:`lyapunov_spectrum` (a function map)."""
    norms = states.norm(dim=-1)                                     # (N, L+1, T)

    def step(t: int, u: torch.Tensor) -> torch.Tensor:
        y = f(t, norms[:, t - 1].unsqueeze(-1).to(u) * u)
        return y / y.norm(dim=-1, keepdim=True)

    return maps.from_function(step, depths=f.depths,
                              name=f"sphere({f.name}) at trajectory norms")


class DynamicsAnalysis:
    """``depthflow analyze`` plugin: ``update`` per streamed batch, ``finish`` once."""

    name = "dynamics"
    group = "dynamics"

    def __init__(self, config: DynamicsConfig | None = None) -> None:
        self.config = config or DynamicsConfig()
        self._states: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._names: list[list[str]] = []
        self._kept = 0
        self._root_attrs: dict[str, Any] = {}

    def update(self, tb, ctx) -> None:
        """Keep the trajectories of the first ``samples`` images (detached, CPU)."""
        need = self.config.samples - self._kept
        if need <= 0:
            return
        states = tb.states[:need].detach().to("cpu").clone()
        self._states.append(states)
        self._labels.append(torch.as_tensor(tb.batch.labels)[:need].clone())
        self._names.append(list(tb.batch.names[:need]))
        self._kept += states.shape[0]

    # ------------------------------------------------------------------ finish
    def finish(self, ctx) -> xr.DataTree:
        if not self._states:
            raise ConfigError("the dynamics analysis saw no trajectories")
        cfg = self.config
        model = ctx.loaded.model
        dtype = DTYPES[cfg.dtype]
        device = torch.device(ctx.device)
        work = model
        if hasattr(model, "to"):
            param = next(iter(model.parameters()), None)
            if param is not None and (param.dtype != dtype or param.device != device):
                work = copy.deepcopy(model).to(device=device, dtype=dtype)
        F = maps.from_model(work)
        states = torch.cat(self._states).to(device=device, dtype=dtype)
        labels = torch.cat(self._labels)
        names = [n for batch in self._names for n in batch]
        groups = self._run(F, states, labels, ctx)
        # the kept trajectories are the first N samples of the run: their own dimension,
        # labelled with their global index, label and name
        keep = {D.SAMPLE_INDEX: (D.SUBSAMPLE, np.arange(len(names)), attrs(
                    "index on the root group's sample dimension", "")),
                D.LABEL: (D.SUBSAMPLE, labels.numpy().astype(np.int32), attrs(
                    "class label index (-1 = unknown)", "")),
                D.SAMPLE_NAME: (D.SUBSAMPLE, names, attrs("image name", ""))}
        children = {}
        for name, ds in groups.items():
            if D.SAMPLE in ds.dims:
                ds = ds.rename({D.SAMPLE: D.SUBSAMPLE})
                ds = ds.drop_vars(D.SUBSAMPLE, errors="ignore").assign_coords(keep)
            children[name] = xr.DataTree(ds)
        root = xr.Dataset(attrs={"config": cfg.to_json(), "analyses": ",".join(cfg.analyses),
                                 **self._root_attrs})
        return xr.DataTree(root, children=children)

    def _run(self, F, states, labels, ctx) -> dict[str, xr.Dataset]:
        cfg, L = self.config, F.depths[-1]
        N, _, T, Dm = states.shape
        kinds_of = list(ctx.layout.token_kinds or ["all"] * T)
        bar = _Progress(ctx.progress, len(cfg.analyses))
        norms = states.norm(dim=-1)                                 # (N, L+1, T)
        out = {"trajectories": xr.Dataset(
            {"reference_norm": ((D.SAMPLE, D.DEPTH, D.TOKEN), norms.double().cpu().numpy(),
                                attrs("token norms r of the kept trajectories: reference "
                                      "norms of the sphere maps", "activation units"))},
            attrs={"sphere_wrapper": json.dumps({
                "wrapper": "F_hat_t(u) = F_t(r u) / ||F_t(r u)|| per token",
                "layer_maps": "r = per-sample token norms of the trajectory at depth t-1",
                "frozen_maps": "r = mean token norms over kept samples at depth t-1",
                "map": F.describe()}, sort_keys=True)})}
        if "spectra" in cfg.analyses:
            out["spectra"] = self._spectra(F, states, kinds_of)
            bar.step("spectra")
        if "lyapunov" in cfg.analyses:
            out["lyapunov"], frozen = self._lyapunov(F, states)
            if frozen is not None:
                out["lyapunov_frozen"] = frozen
            bar.step("lyapunov")
        if "fixed_points" in cfg.analyses:
            out["fixed_points"] = self._fixed_points(F, states, scope="state")
            out["fixed_points_token"] = self._fixed_points(F, states, scope="token")
            bar.step("fixed points")
        if "basins" in cfg.analyses:
            out["basins"] = self._basins(F, states, labels, kinds_of, ctx)
            bar.step("basins")
        if "recovery" in cfg.analyses:
            depths = cfg.recovery_depths or tuple(sorted({max(1, L // 4), L // 2,
                                                          (3 * L) // 4}))
            res = perturbation_recovery(F, states[:, 0], depths=depths,
                                        angles=cfg.recovery_angles,
                                        direction=cfg.recovery_directions,
                                        n_directions=cfg.recovery_draws, token_kinds=kinds_of,
                                        seed=cfg.seed)
            out["recovery"] = res.to_dataset(prefix="")
            bar.step("recovery")
        bar.close()
        self._root_attrs["seconds"] = json.dumps(bar.seconds)
        return out

    def _frozen(self, F, states, t: int) -> maps.DepthMap:
        return maps.sphere(maps.frozen(F, t), maps.norms_from_states(states[:, t - 1]),
                           source=f"mean token norms of the kept trajectories at depth {t - 1}")

    def _spectra(self, F, states, kinds_of) -> xr.Dataset:
        from depthflow.dynamics.spectra import eigvals, token_jacobians

        cfg, L = self.config, F.depths[-1]
        default = sorted({max(1, L // 4), max(1, L // 2), max(1, (3 * L) // 4), L})
        layers = [_layer(t, L, "spectra_layers") for t in (cfg.spectra_layers or default)]
        N, n = states.shape[0], min(cfg.spectra_samples, states.shape[0])
        T, Dm = states.shape[-2:]
        k = min(cfg.k, T * (Dm - 1) - 2)
        ev = np.full((N, len(layers), k), np.nan + 0j)
        conv = np.full((N, len(layers)), 2, np.int8)
        blocks = cfg.token_blocks and Dm <= 128
        kinds = [kd for kd in D.TOKEN_KINDS if kd in kinds_of] or sorted(set(kinds_of))
        block_rho = np.full((N, len(layers), len(kinds)), np.nan)
        for j, t in enumerate(layers):
            for s in range(n):
                x = states[s, t - 1]
                g = maps.sphere(F, x.norm(dim=-1), source="trajectory")
                u = x / x.norm(dim=-1, keepdim=True)
                res = eigvals(g, t, u, k=k, method=cfg.spectra_method, tol=cfg.spectra_tol,
                              seed=cfg.seed)
                vals = res.eigenvalues.detach().cpu().numpy()
                ev[s, j, :len(vals)] = vals
                conv[s, j] = 0 if res.converged else 1
                if blocks:
                    J = token_jacobians(g, t, u)                       # (T, D, D)
                    rho = torch.linalg.eigvals(J.cpu()).abs().amax(-1).double()
                    for m, kd in enumerate(kinds):
                        idx = [i for i, kk in enumerate(kinds_of) if kk == kd]
                        block_rho[s, j, m] = float(rho[idx].mean())
        radius = np.abs(ev).max(-1)
        v = {"eig_real": ((D.SAMPLE, D.LAYER, D.EIG), ev.real, attrs(
                 "real part of the top eigenvalues of the tangent Jacobian of layer t on the "
                 "sphere at the sample's state")),
             "eig_imag": ((D.SAMPLE, D.LAYER, D.EIG), ev.imag, attrs(
                 "imaginary part of the top tangent Jacobian eigenvalues")),
             "spectral_radius": ((D.SAMPLE, D.LAYER), radius, attrs(
                 "spectral radius of the tangent Jacobian of layer t (< 1: contracting)")),
             "eig_status": ((D.SAMPLE, D.LAYER), conv, attrs(
                 "eigensolver status", "", flag_values=np.array([0, 1, 2], np.int8),
                 flag_meanings="converged not_converged not_computed"))}
        if blocks:
            v["token_block_radius"] = ((D.SAMPLE, D.LAYER, D.KIND), block_rho, attrs(
                "spectral radius of the per-token tangent block dF_i/du_i (other tokens "
                "fixed), mean over tokens of a kind"))
        coords = {D.LAYER: (D.LAYER, np.asarray(layers), attrs("block l (1-based)")),
                  D.EIG: np.arange(k)}
        if blocks:
            coords[D.KIND] = kinds
        return xr.Dataset(v, coords=coords)

    def _lyapunov(self, F, states) -> tuple[xr.Dataset, xr.Dataset | None]:
        cfg, L = self.config, F.depths[-1]
        T, Dm = states.shape[-2:]
        k = min(cfg.k, T * (Dm - 1))
        u0 = states[:, 0] / states[:, 0].norm(dim=-1, keepdim=True)
        res = lyapunov_spectrum(trajectory_sphere_map(F, states), u0, k=k, tangent=True,
                                seed=cfg.seed)
        ds = _plain(res.to_dataset(prefix="lyapunov_"))
        ds["exponents"].attrs["long_name"] = (
            "finite-time Lyapunov exponent along the real trajectory through all layers "
            "(sphere maps at the trajectory norms): mean log|R_jj| per layer")
        frozen = []
        layers = [_layer(t, L, "lyapunov_layers") for t in cfg.lyapunov_layers]
        for t in layers:
            g = self._frozen(F, states, t)
            u = states[:, t - 1] / states[:, t - 1].norm(dim=-1, keepdim=True)
            r = lyapunov_spectrum(g, u, k=k, steps=cfg.lyapunov_steps,
                                  transient=cfg.lyapunov_transient, seed=cfg.seed)
            frozen.append(_plain(r.to_dataset(prefix="lyapunov_")).drop_vars(D.ITERATION))
        if not frozen:
            return ds, None
        fz = xr.concat(frozen, dim=D.FROZEN_LAYER, combine_attrs="override")
        fz = fz.assign_coords({D.FROZEN_LAYER: (D.FROZEN_LAYER, layers, attrs(
            "layer t iterated as an autonomous sphere map"))})
        fz.attrs["map"] = json.dumps(
            {"maps": [self._frozen(F, states, t).describe() for t in layers]})
        return ds, fz

    def _fixed_points(self, F, states, *, scope: str) -> xr.Dataset:
        """Fixed points of the frozen layer's sphere map: the full state (``dyn_fp_*``) or
        one token moving with the others frozen at their data state (``dyn_fpt_*``)."""
        from depthflow.dynamics.fixed_points import find_fixed_points, starts_from

        cfg, L = self.config, F.depths[-1]
        t = _layer(cfg.fixed_point_layer, L, "fixed_point_layer")
        g = self._frozen(F, states, t)
        starts = starts_from(states[:cfg.fixed_point_samples, t - 1],
                             perturb=cfg.fixed_point_starts - 1,
                             angle=0.2, seed=cfg.seed)
        moving = starts.shape[-2] if scope == "state" else 1
        token = min(cfg.fixed_point_token, starts.shape[-2] - 1)
        res = find_fixed_points(g, starts, scope=scope, token=token,
                                max_iter=cfg.fixed_point_max_iter,
                                k=min(cfg.k, moving * (starts.shape[-1] - 1) - 2),
                                seed=cfg.seed)
        ds = res.to_dataset(points=False)
        ds.attrs["layer"] = t
        if scope == "token":
            ds.attrs["moving_token"] = token
        return ds

    def _basins(self, F, states, labels, kinds_of, ctx) -> xr.Dataset:
        from depthflow.dynamics.fixed_points import starts_from

        cfg, L = self.config, F.depths[-1]
        t = _layer(cfg.basin_layer, L, "basin_layer")
        g = self._frozen(F, states, t)
        N = states.shape[0]
        starts = starts_from(states[:, t - 1], perturb=cfg.basin_starts - 1,
                             angle=cfg.basin_perturbation, seed=cfg.seed + 1)
        start_labels = labels.repeat(cfg.basin_starts)        # starts_from: copies in blocks
        res = basins_fractions(g, starts, steps=cfg.basin_steps, tol_angle=cfg.basin_tol,
                               labels=start_labels, token_kinds=kinds_of, scope="token")
        ds = _plain(res.to_dataset(prefix="basin_"), "basin_", {"basin_attractor": "attractors"})
        names = list(ctx.source.class_names) if ctx.source is not None else []
        if names and D.CLASS in ds.dims:
            ds = ds.reindex({D.CLASS: np.arange(len(names))}).assign_coords(
                {D.CLASS: names})
        ds = ds.assign_coords({"start_sample": (
            D.BASIN_START, np.tile(np.arange(N), cfg.basin_starts),
            attrs("kept sample the start was taken from", ""))})
        ds.attrs["layer"] = t
        return ds

    # ------------------------------------------------------------------ figures
    def plot(self, tree: xr.DataTree, out_dir: Path) -> list[Path]:
        from depthflow.plots.dynamics import plot_dynamics

        return plot_dynamics(tree[self.group], Path(out_dir))


def _plain(ds: xr.Dataset, prefix: str = "lyapunov_",
           special: dict[str, str] | None = None) -> xr.Dataset:
    """Plain names for datasets whose variables would clash with their own dimensions
    (the Lyapunov ``exponent``, the basins' ``attractor``)."""
    special = special or {"lyapunov_exponent": "exponents"}
    names = {n: special.get(n, n.removeprefix(prefix)) for n in ds.variables
             if n.startswith(prefix)}
    ds = ds.rename(names)
    ds.attrs = {k.removeprefix(prefix): v for k, v in ds.attrs.items()}
    return ds


class _Progress:
    def __init__(self, show: bool, total: int) -> None:
        self.bar, self.seconds, self.last = None, {}, time.perf_counter()
        if show:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc="dynamics", leave=False)

    def step(self, what: str) -> None:
        now = time.perf_counter()
        self.seconds[what] = round(now - self.last, 3)
        self.last = now
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

