"""Model vs model: stream the same images through two models (or read two result files
with kept states) into :class:`~depthflow.compare.cka.CrossCKA` per token view, and the
image-specific R^2 when the two have the same layout; return the ``compare`` group."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from depthflow.core import vocabulary as D
from depthflow.compare.cka import CrossCKA
from depthflow.errors import ConfigError, InputError
from depthflow.core.vocabulary import attrs

__all__ = ["VIEWS", "DEPTH_A", "DEPTH_B", "observations", "compare_states", "compare_models",
           "compare_files", "random_copy"]

VIEWS = ("cls", "mean_patch", "registers", "patch")
DEPTH_A, DEPTH_B, VIEW = "depth_a", "depth_b", "view"


def observations(states: Tensor, kinds: Sequence[str], view: str) -> Tensor | None:
    """``(n, L+1, D)`` observations of a view from states ``(B, L+1, T, D)`` (``None`` when
    the layout lacks its tokens): the cls token, the mean patch, the mean register, or every
    patch token as one observation."""
    kinds = list(kinds)
    idx = [i for i, k in enumerate(kinds) if k == {"cls": "cls", "registers": "register"}
           .get(view, "patch")]
    if not idx:
        return None
    sel = states[:, :, idx]                                          # (B, L+1, t, D)
    if view == "cls":
        return sel[:, :, 0]
    if view in ("mean_patch", "registers"):
        return sel.mean(2)
    if view == "patch":
        return sel.permute(0, 2, 1, 3).reshape(-1, sel.shape[1], sel.shape[-1])
    raise ConfigError(f"view must be one of {VIEWS}, got {view!r}")


class _R2:
    """Image-specific R^2 of B against A per depth: ``1 - sum (y - x)^2 / sum (x - xbar)^2``
    with ``xbar`` A's mean over images at that depth (its image-independent part)."""

    def __init__(self) -> None:
        self.sse = self.tot = self.tot2 = self.shift = None
        self.n = 0

    def update(self, x: Tensor, y: Tensor) -> None:
        x, y = x.double(), y.double()
        if self.shift is None:
            self.shift = x.mean(0, keepdim=True)
            self.sse = torch.zeros(x.shape[1], dtype=torch.float64)
            self.tot = torch.zeros(x.shape[1:], dtype=torch.float64)
            self.tot2 = torch.zeros(x.shape[1], dtype=torch.float64)
        xs = x - self.shift
        self.sse += (y - x).square().sum(dim=(0, 2)).cpu()
        self.tot += xs.sum(0).cpu()
        self.tot2 += xs.square().sum(dim=(0, 2)).cpu()
        self.n += x.shape[0]

    def result(self) -> np.ndarray:
        sst = (self.tot2 - self.tot.square().sum(-1) / self.n).numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sst > 0, 1.0 - self.sse.numpy() / np.where(sst > 0, sst, 1), np.nan)


def compare_states(pairs: Iterable[tuple[Tensor, Tensor]], kinds_a: Sequence[str],
                   kinds_b: Sequence[str], *, views: Sequence[str] = ("cls", "mean_patch"),
                   n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> xr.Dataset:
    """The ``compare`` group from paired state batches ``(xa (B, La+1, Ta, Da), xb (B, Lb+1,
    Tb, Db))`` of the same images."""
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise ConfigError(f"views must be from {VIEWS}, got {list(views)}")
    accs: dict[str, CrossCKA] = {}
    r2s: dict[str, _R2] = {}
    skipped: dict[str, str] = {}
    n = 0
    shapes = None
    for xa, xb in pairs:
        if xa.shape[0] != xb.shape[0]:
            raise InputError(f"batches of A and B hold {xa.shape[0]} and {xb.shape[0]} images")
        n += xa.shape[0]
        shapes = (tuple(xa.shape[1:]), tuple(xb.shape[1:]))
        same = shapes[0] == shapes[1] and list(kinds_a) == list(kinds_b)
        for v in views:
            oa, ob = observations(xa, kinds_a, v), observations(xb, kinds_b, v)
            if oa is None or ob is None:
                skipped[v] = "not defined: a model lacks the view's tokens"
                continue
            if oa.shape[0] != ob.shape[0]:
                skipped[v] = "not defined: the models have different numbers of patches"
                continue
            accs.setdefault(v, CrossCKA(seed=seed)).update(oa, ob)
            if same:
                r2s.setdefault(v, _R2()).update(oa, ob)
    if n == 0:
        raise InputError("no images to compare")
    kept = [v for v in views if v in accs]
    if not kept:
        raise InputError(f"none of the views {list(views)} is defined for both models")
    res = {v: accs[v].result(n_boot=n_boot, level=level) for v in kept}
    pa, pb = res[kept[0]]["cka"].shape
    stack = lambda key: np.stack([res[v][key] for v in kept])          # noqa: E731
    dims = (VIEW, DEPTH_A, DEPTH_B)
    lvl = f"{100 * level:g}%"
    cka, deb = stack("cka"), stack("cka_debiased")
    v = {"cka": (dims, cka, attrs("linear CKA between depth_a of A and depth_b of B", "1")),
         "cka_debiased": (dims, deb, attrs("debiased linear CKA (unbiased HSIC per batch, "
                                           "averaged over batches)", "1")),
         "cka_debiased_low": (dims, stack("cka_debiased_low"), attrs(
             f"percentile {lvl} lower bound over batch resamples", "1")),
         "cka_debiased_high": (dims, stack("cka_debiased_high"), attrs(
             f"percentile {lvl} upper bound over batch resamples", "1")),
         "cka_debiased_null": (dims, stack("cka_debiased_null"), attrs(
             "debiased CKA with the images of B permuted within each batch (no pairing)",
             "1"))}
    m = min(pa, pb)
    diag = lambda a: np.stack([np.diagonal(a[i])[:m] for i in range(len(kept))])  # noqa: E731
    v["matched_cka"] = ((VIEW, D.DEPTH), diag(cka), attrs(
        "linear CKA of A and B at the same depth", "1"))
    for key in ("cka_debiased", "cka_debiased_low", "cka_debiased_high",
                "cka_debiased_null"):
        v[f"matched_{key}"] = ((VIEW, D.DEPTH), diag(stack(key)), attrs(
            f"{key.replace('_', ' ')} of A and B at the same depth", "1"))
    undefined = np.isnan(cka).all(axis=2)
    best = np.where(undefined, -1, np.argmax(np.nan_to_num(cka, nan=-np.inf), axis=2))
    v["best_match"] = ((VIEW, DEPTH_A), best.astype(np.int64), attrs(
        "depth of B whose linear CKA with depth_a of A is highest (phase alignment; -1: "
        "not defined)", ""))
    top = np.take_along_axis(cka, np.maximum(best, 0)[..., None], 2)[..., 0]
    v["best_match_cka"] = ((VIEW, DEPTH_A), np.where(undefined, np.nan, top),
                           attrs("that highest linear CKA", "1"))
    if r2s and pa == pb:
        r2 = np.stack([r2s[k].result() if k in r2s else np.full(pa, np.nan) for k in kept])
        v["r2_image_specific"] = ((VIEW, D.DEPTH), r2, attrs(
            "image-specific R^2 of B's states against A's: 1 - sum (y - x)^2 / sum (x - "
            "mean over images of x)^2, per depth", "1"))
    ds = xr.Dataset(v, coords={
        VIEW: (VIEW, kept, attrs("token view: cls token, mean patch, mean register, or every "
                                 "patch token as one observation", "")),
        DEPTH_A: (DEPTH_A, np.arange(pa), attrs("depth of model A (0 = embedded input)", "")),
        DEPTH_B: (DEPTH_B, np.arange(pb), attrs("depth of model B (0 = embedded input)", "")),
        D.DEPTH: (D.DEPTH, np.arange(m), attrs("depth of both models (matched)", ""))})
    ds.attrs.update(n_images=n, n_batches=min(len(a.batches) for a in accs.values()),
                    level=level, n_boot=n_boot, seed=seed,
                    skipped_views=json.dumps(skipped, sort_keys=True),
                    method="feature-space linear CKA from streamed float64 sums (never the "
                           "n x n Gram); debiased: unbiased HSIC per batch (Song et al. 2012) "
                           "averaged over batches; interval: batches resampled")
    return ds


def random_copy(loaded, *, seed: int = 0, layerscale: float = 1.0):
    """The same architecture with every weight drawn by ``ViT.init_weights`` (seeded), same
    preprocessing: the random-weight control of ``loaded``."""
    model = copy.deepcopy(loaded.model).init_weights(seed=seed, layerscale_init=layerscale)
    info = dict(loaded.info, control=f"random init (seed {seed}, LayerScale {layerscale:g}) "
                                     f"of the architecture of {loaded.source}")
    return dataclasses.replace(loaded, model=model.eval(), sha256=None, info=info,
                               source=f"{loaded.source} [random init seed {seed}]")


def _model_pairs(a, b, source, *, batch_size: int, device: str, dtype: str,
                 progress: bool) -> Iterator[tuple[Tensor, Tensor]]:
    from depthflow.models.preprocessing import model_preprocessing
    from depthflow.data.trajectory import iter_trajectories

    it_a = iter_trajectories(a.model, source, preprocessing=model_preprocessing(a),
                             batch_size=batch_size, device=device, dtype=dtype,
                             progress=progress)
    it_b = iter_trajectories(b.model, source, preprocessing=model_preprocessing(b),
                             batch_size=batch_size, device=device, dtype=dtype)
    for ta, tb in zip(it_a, it_b):
        if list(ta.batch.names) != list(tb.batch.names):
            raise InputError("the two models saw different images")
        yield ta.states, tb.states


def compare_models(a, b, source, *, views: Sequence[str] = ("cls", "mean_patch"),
                   batch_size: int = 32, device: str = "cpu", dtype: str = "float32",
                   n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                   progress: bool = False) -> xr.Dataset:
    """Compare two loaded models (:class:`~depthflow.models.checkpoints.LoadedModel`, a
    Raptor included) on the same images ``source``, each with its own preprocessing."""
    if batch_size < 4:
        raise ConfigError(f"batch_size must be >= 4 (the debiased CKA needs 4 images per "
                          f"batch), got {batch_size}")
    for m in (a, b):
        m.model.eval()
    kinds_a = a.model.token_kinds(*_size(a))
    kinds_b = b.model.token_kinds(*_size(b))
    ds = compare_states(_model_pairs(a, b, source, batch_size=batch_size, device=device,
                                     dtype=dtype, progress=progress),
                        kinds_a, kinds_b, views=views, n_boot=n_boot, level=level, seed=seed)
    ds.attrs.update(model_a=str(a.source), model_b=str(b.source),
                    model_a_sha256=a.sha256 or "", model_b_sha256=b.sha256 or "",
                    images=source.describe())
    return ds


def _size(loaded) -> tuple[int, int]:
    from depthflow.models.preprocessing import model_preprocessing

    pre = model_preprocessing(loaded)
    side = int(pre.crop or pre.resize)
    return side, side


def _file_states(path: str | Path, batch_size: int):
    import netCDF4

    p = Path(path)
    if not p.is_file():
        raise InputError(f"result file {str(p)!r} not found")
    try:
        nc = netCDF4.Dataset(p)
    except OSError as exc:
        raise InputError(f"{str(p)!r} is not a readable NetCDF file: {exc}") from exc
    if "state" not in nc.variables or D.TOKEN_KIND not in nc.variables:
        nc.close()
        raise InputError(f"{str(p)!r} has no 'state' variable; rerun depthflow analyze with "
                         "--states all (or give the model instead)")
    return nc


def compare_files(path_a: str | Path, path_b: str | Path, *, batch_size: int = 32,
                  views: Sequence[str] = ("cls", "mean_patch"), n_boot: int = 1000,
                  level: float = 0.95, seed: int = 0) -> xr.Dataset:
    """Compare the kept states of two result files (``depthflow analyze --states all``) of
    the same images (checked by ``sample_name``)."""
    na, nb = _file_states(path_a, batch_size), _file_states(path_b, batch_size)
    with na, nb:
        names_a = [str(s) for s in na.variables[D.SAMPLE_NAME][:]]
        names_b = [str(s) for s in nb.variables[D.SAMPLE_NAME][:]]
        if names_a != names_b:
            raise InputError(f"{path_a} and {path_b} hold different images (sample_name "
                             "differs); analyse the same images with both models")
        kinds_a = [str(k) for k in na.variables[D.TOKEN_KIND][:]]
        kinds_b = [str(k) for k in nb.variables[D.TOKEN_KIND][:]]
        sa, sb = na.variables["state"], nb.variables["state"]

        def pairs():
            for start in range(0, len(names_a), batch_size):
                stop = start + batch_size
                yield (torch.from_numpy(np.asarray(sa[start:stop], dtype=np.float32)),
                       torch.from_numpy(np.asarray(sb[start:stop], dtype=np.float32)))

        ds = compare_states(pairs(), kinds_a, kinds_b, views=views, n_boot=n_boot,
                            level=level, seed=seed)
        ds.attrs.update(model_a=str(getattr(na, "checkpoint", path_a)),
                        model_b=str(getattr(nb, "checkpoint", path_b)),
                        images=str(getattr(na, "images", "")))
    return ds
