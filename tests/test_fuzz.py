"""Property-based fuzzing of the public API: for inputs drawn within the bounds below, each
call returns a valid result or raises a :class:`~depthflow.errors.DepthflowError` subclass
with a message; nothing else escapes.

Bounds (fixed example counts, about a minute in all on one core): arrays of 0..6 images of
1..12 px, 1..5 channels/axes, dtypes uint8/uint16/int64/float16/float32/float64/complex/
bool, values incl. NaN/inf; labels of any of those dtypes; image files of PIL modes L, I;16,
I, F, RGB, RGBA, P, 1 and random bytes; checkpoint files of random bytes or random
tensors; ``analyze`` on a 3-block, 32-wide ViT with batch sizes 1..6, limits 1..6, states,
dtypes, devices (cpu/cuda/mps/meta/bogus) and seeds drawn; the maps' states of 1..4 tokens
with NaN/inf; max-cut and segmentation on 1..7-node matrices with NaN/negative entries.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from depthflow.errors import DepthflowError

from _models import tiny_loaded

pytestmark = pytest.mark.usefixtures("one_thread")

FEW = settings(max_examples=25, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

DTYPES = st.sampled_from([np.uint8, np.uint16, np.int64, np.float16, np.float32, np.float64,
                          np.complex64, np.bool_])


def ok_or_depthflow_error(call):
    """Run ``call``; a DepthflowError with a message is fine, anything else fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return call()
        except DepthflowError as exc:
            assert str(exc).strip(), f"{type(exc).__name__} without a message"
            return None


@st.composite
def arrays(draw):
    dtype = draw(DTYPES)
    shape = draw(st.lists(st.integers(0, 12), min_size=1, max_size=5).map(tuple))
    if int(np.prod(shape)) > 3000:
        shape = shape[:2]
    elements = None
    if np.dtype(dtype).kind == "f":
        width = 16 if dtype == np.float16 else 32
        elements = st.one_of(st.floats(-2, 2, width=width),
                             st.sampled_from([float("nan"), float("inf"), 0.0, 1.0]))
    return draw(hnp.arrays(dtype, shape, elements=elements))


@FEW
@given(images=arrays(), labels=st.one_of(st.none(), arrays()))
def test_open_images_on_any_array(tmp_path_factory, images, labels):
    from depthflow.data.images import open_images

    path = tmp_path_factory.mktemp("a") / "x.npz"
    np.savez(path, images=images, **({} if labels is None else {"labels": labels}))

    def call():
        source = open_images(path)
        for batch in source.batches(3):
            assert batch.images.dtype == torch.float32 and batch.images.ndim == 4
            assert batch.images.numel() > 0
            assert torch.isfinite(batch.images).all()
            assert float(batch.images.min()) >= 0 and float(batch.images.max()) <= 1
            assert batch.labels.dtype == torch.int64 and (batch.labels >= -1).all()
        return source

    ok_or_depthflow_error(call)


@st.composite
def image_files(draw):
    kind = draw(st.sampled_from(["L", "I;16", "I", "F", "RGB", "RGBA", "P", "1", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    from PIL import Image

    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    if kind == "F":
        arr = rng.uniform(-0.5, 1.5, (h, w)).astype(np.float32)
        img = Image.fromarray(arr)
    elif kind == "I":
        img = Image.fromarray(rng.integers(-10, 80000, (h, w)).astype(np.int32))
    elif kind == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).convert(kind)
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if kind in ("F", "I") else "PNG")
    data = buf.getvalue()
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


@FEW
@given(data=image_files())
def test_read_image_on_any_file(data):
    from depthflow.data.images import read_image

    def call():
        t = read_image(io.BytesIO(data), "fuzz")
        assert t.dtype == torch.float32 and t.ndim == 3 and t.shape[0] in (1, 3)
        assert torch.isfinite(t).all() and float(t.min()) >= 0 and float(t.max()) <= 1

    ok_or_depthflow_error(call)


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(st.binary(max_size=300),
                         st.dictionaries(st.sampled_from(["cls_token", "pos_embed", "x.weight"]),
                                         st.integers(0, 3).map(lambda n: torch.zeros(n, 2)),
                                         max_size=3)),
       suffix=st.sampled_from([".pth", ".safetensors", ".pt", ".bin"]))
def test_load_model_on_any_file(tmp_path_factory, payload, suffix):
    from depthflow.api.loader import load_model

    path = tmp_path_factory.mktemp("c") / f"m{suffix}"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    ok_or_depthflow_error(lambda: load_model(path))


LOADED = tiny_loaded()


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(batch=st.one_of(st.none(), st.integers(-1, 6)), limit=st.one_of(st.none(), st.integers(-1, 6)),
       states=st.sampled_from(["none", "cls", "all", "some"]),
       dtype=st.sampled_from(["float32", "float64", "bfloat16", "float16"]),
       device=st.sampled_from(["cpu", "cuda", "mps", "meta", "tpu", "cpu:0"]),
       seed=st.integers(-2, 2**31))
def test_analyze_with_any_options(tmp_path_factory, batch, limit, states, dtype, device, seed):
    import xarray as xr

    from depthflow.analysis.run import AnalyzeConfig, analyze
    from depthflow.data.images import open_images

    out = tmp_path_factory.mktemp("o") / "r.nc"

    def call():
        config = AnalyzeConfig(batch_size=batch, limit=limit, states=states, dtype=dtype,
                               device=device, seed=seed)
        analyze(LOADED, open_images("digits").head(8), out, config=config)
        with xr.open_dataset(out) as ds:
            assert ds.sizes["sample"] == min(8, limit or 8)

    ok_or_depthflow_error(call)
    if not out.exists():
        assert [p for p in out.parent.iterdir()] == []


@FEW
@given(tokens=st.integers(1, 4), bad=st.sampled_from([None, "nan", "inf", "shape"]),
       depth=st.integers(-1, 4))
def test_maps_on_any_states(tokens, bad, depth):
    from depthflow.dynamics import maps

    F = maps.from_model(LOADED.model)
    x = torch.randn(2, tokens, 32, dtype=torch.float32)
    if bad == "nan":
        x[0, 0, 0] = float("nan")
    elif bad == "inf":
        x[0, 0, 0] = float("inf")
    elif bad == "shape":
        x = x[..., :5]

    def call():
        checked = maps.check_states(x)
        y = F(depth, checked)
        if y is not None:
            assert y.shape == x.shape

    ok_or_depthflow_error(call)
    if 1 <= depth <= 3 and bad is None:                      # valid input: a result
        assert F(depth, x).shape == x.shape


@FEW
@given(n=st.integers(1, 7), seed=st.integers(0, 100), bad=st.sampled_from([None, "nan", "neg", "asym"]),
       k=st.integers(0, 8))
def test_segmentation_on_any_matrix(n, seed, bad, k):
    from depthflow.phases.segmentation import max_cut, segment_into

    rng = np.random.default_rng(seed)
    w = rng.uniform(0, 1, (n, n))
    w = (w + w.T) / 2
    np.fill_diagonal(w, 0)
    if bad == "nan":
        w[0, -1] = np.nan
    elif bad == "neg":
        w[0, -1] = w[-1, 0] = -1
    elif bad == "asym":
        w[0, -1] += 1

    def call():
        value, side = max_cut(w)
        assert side.shape == (n,) and np.isfinite(value)
        seg = segment_into(w, k, min_size=1)
        assert seg is not None

    ok_or_depthflow_error(call)


@FEW
@given(seed=st.integers(0, 50), samples=st.integers(1, 3), k=st.integers(-1, 4))
def test_dynamics_layer_stretching(seed, samples, k):
    from depthflow.dynamics import maps
    from depthflow.dynamics import layer_stretching

    import copy

    F = maps.from_model(copy.deepcopy(LOADED.model).double())
    g = torch.Generator().manual_seed(seed)
    traj = torch.randn(samples, 4, 19, 32, generator=g, dtype=torch.float64)

    def call():
        r = layer_stretching(F, traj, k=k, seed=seed)
        assert r is not None

    ok_or_depthflow_error(call)
