"""Reliability, second round (issue 20): the second bad-input corpus and its classes.

* ``CASES``: every case through the CLI in-process, held to the contract of
  ``tests/test_bad_inputs.py`` (one ``Error: ...`` line, exit 1 for data / 2 for usage,
  no traceback, the folder byte-identical). Classes: ``out`` (outputs that overlap inputs
  or each other, foreign directories), ``env`` (environment variables), ``opt`` (options,
  ``--set`` values incl. known-but-unused keys), ``arch`` (shapes and resources checked
  before allocating), ``ckpt`` (integer weights), ``img`` (special files, long images,
  decoder errors through collections), ``lbl`` (labels in ``.cls`` members).
* One image corpus through every source kind (folder, file list, tar shards, HF dataset,
  ``hf-imagefolder:``): the same tensors or the same error everywhere.
* Real signals at deterministic points (``DEPTHFLOW_CRASH_SIGNAL``), locks, the figure
  manifest, ``fit --overwrite`` / ``--resume`` guards, file lists, a hypothesis test of
  option parsing.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depthflow.cli.main import main
from depthflow.errors import DepthflowError, InputError

from _cli import assert_one_line_error, run, snapshot
from _models import tiny_checkpoint, tiny_config, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

CHEAP = ["--no-phases", "--dynamics", "none", "--limit", "4", "--quiet", "--no-figures"]
O = "o.nc"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.safetensors")


# ------------------------------------------------------------------ builders
def png(array: np.ndarray, *, mode: str | None = None, exif_orientation: int | None = None,
        fmt: str = "PNG") -> bytes:
    from PIL import Image

    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buf = io.BytesIO()
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, format=fmt, exif=exif.tobytes())
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def folder(d: Path, files: dict[str, bytes], name: str = "imgs") -> Path:
    root = d / name
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def tar_shard(d: Path, members: dict[str, bytes], name: str = "s-000.tar") -> Path:
    path = d / name
    with tarfile.open(path, "w") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def fifo_list(d: Path) -> Path:
    os.mkfifo(d / "pipe.png")
    (d / "list.txt").write_text("pipe.png\n")
    return d / "list.txt"


def int_weights(d: Path) -> Path:
    sd = {k: (v * 100).to(torch.int32) for k, v in tiny_vit().state_dict().items()}
    torch.save(sd, d / "int.pth")
    return d / "int.pth"


def hf_dir(d: Path, **changes) -> Path:
    """A small transformers DeiT saved with save_pretrained, its config.json edited."""
    T = pytest.importorskip("transformers")
    model = T.DeiTModel(T.DeiTConfig(hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, patch_size=4, image_size=16,
                                     intermediate_size=48))
    model.save_pretrained(d / "hf")
    cfg = json.loads((d / "hf" / "config.json").read_text())
    (d / "hf" / "config.json").write_text(json.dumps({**cfg, **changes}))
    return d / "hf"


def nan_std(d: Path, c: Path) -> Path:
    """A depthflow checkpoint whose recorded preprocessing has std NaN."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(c), "pt") as handle:
        meta = dict(handle.metadata())
    pre = json.loads(meta["preprocessing"])
    meta["preprocessing"] = json.dumps({**pre, "std": [float("nan")] * len(pre["std"])})
    save_file(load_file(str(c)), str(d / "nanstd.safetensors"), metadata=meta)
    return d / "nanstd.safetensors"


def wrong_positions(d: Path, c: Path) -> Path:
    """The tiny checkpoint (2 register tokens) with a position table of 26 rows, not 17."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(c), "pt") as handle:
        meta = dict(handle.metadata())
    tensors = load_file(str(c))
    tensors["pos_embed"] = torch.zeros(1, 26, tensors["pos_embed"].shape[-1])
    save_file(tensors, str(d / "pos.safetensors"), metadata=meta)
    return d / "pos.safetensors"


def then(word, *effects):
    return word


GREY = np.full((8, 8), 100, np.uint8)
LONG = np.full((1, 300), 100, np.uint8)

# Each case: (id, exit code, expected text, builder(d, ckpt) -> argv [+ env dict]).
CASES = [
    # ----- outputs vs inputs, outputs vs each other, foreign directories
    ("out-is-the-checkpoint", 1, "is the input checkpoint",
     lambda d, c: [then("analyze", (d / "m.safetensors").write_bytes(c.read_bytes())),
                   d / "m.safetensors", "-o", d / "m.safetensors", "--overwrite", *CHEAP]),
    ("out-symlink-to-the-checkpoint", 1, "is the input checkpoint",
     lambda d, c: [then("analyze", (d / "m.safetensors").write_bytes(c.read_bytes()),
                        os.symlink(d / "m.safetensors", d / "link.nc")),
                   d / "m.safetensors", "-o", d / "link.nc", "--overwrite", *CHEAP]),
    ("out-inside-the-image-folder", 1, "inside the input --images",
     lambda d, c: ["analyze", c, "--images", folder(d, {"a.png": png(GREY)}),
                   "-o", d / "imgs" / "r.nc", *CHEAP]),
    ("out-figures-are-the-image-folder", 1, "imgs",
     lambda d, c: ["analyze", c, "--images", folder(d, {"a.png": png(GREY)}), "-o", d / O,
                   "--figures", d / "imgs", "--overwrite", "--limit", "1", "--quiet",
                   "--no-phases", "--dynamics", "none"]),
    ("out-figures-foreign-directory", 1, "not written by depthflow",
     lambda d, c: ["analyze", c, "-o", d / O, "--figures", folder(d, {"mine.txt": b"x"}),
                   "--overwrite", "--limit", "1", "--quiet", "--no-phases", "--dynamics",
                   "none"]),
    ("out-result-inside-figures", 1, "overlap",
     lambda d, c: [then("analyze", (d / "figs").mkdir()), c, "-o", d / "figs" / "r.nc",
                   "--figures", d / "figs", "--overwrite", "--limit", "1", "--quiet",
                   "--no-phases", "--dynamics", "none"]),
    ("out-figures-are-the-result", 1, "overlap",
     lambda d, c: ["analyze", c, "-o", d / O, "--figures", d / O, "--limit", "1", "--quiet",
                   "--no-phases", "--dynamics", "none"]),
    ("out-image-list-names-the-output", 1, "is the input --images",
     lambda d, c: [then("analyze", folder(d, {"a.png": png(GREY)}),
                        (d / "l.txt").write_text("imgs/a.png\n")),
                   c, "--images", d / "l.txt", "-o", d / "imgs" / "a.png", "--overwrite",
                   *CHEAP]),
    ("out-fit-directory-holds-the-teacher", 1, "contains the input checkpoint",
     lambda d, c: [then("fit", (d / "run").mkdir(),
                        (d / "run" / "t.safetensors").write_bytes(c.read_bytes())),
                   d / "run" / "t.safetensors", "-o", d / "run", "--overwrite", "--quiet"]),
    ("out-fit-cache-in-the-image-folder", 1, "--cache-dir",
     lambda d, c: ["fit", c, "--images", folder(d, {"a.png": png(GREY)}), "--cache-dir",
                   d / "imgs", "-o", d / "run", "--quiet"]),
    ("out-fit-overwrite-foreign-directory", 1, "did not write",
     lambda d, c: [then("fit", folder(d, {"config.json": b"{}", "notes.txt": b"x"}, "run")),
                   c, "-o", d / "run", "--overwrite", "--quiet", "--stage1-steps", "1",
                   "--stage2-steps", "0", "--limit", "16", "--batch-size", "8"]),
    ("out-fit-overwrite-not-a-fit", 1, "not the output of a depthflow fit",
     lambda d, c: [then("fit", folder(d, {"config.json": b"{}"}, "run")),
                   c, "-o", d / "run", "--overwrite", "--quiet", "--stage1-steps", "1",
                   "--stage2-steps", "0", "--limit", "16", "--batch-size", "8"]),
    # ----- environment
    ("env-world-size-text", 2, "WORLD_SIZE",
     lambda d, c: ["analyze", c, "-o", d / O, *CHEAP, {"WORLD_SIZE": "abc"}]),
    ("env-rank-beyond-world", 2, "RANK=3",
     lambda d, c: ["analyze", c, "-o", d / O, *CHEAP, {"WORLD_SIZE": "2", "RANK": "3"}]),
    ("env-local-rank-negative", 2, "LOCAL_RANK",
     lambda d, c: ["analyze", c, "-o", d / O, *CHEAP, {"LOCAL_RANK": "-1"}]),
    ("env-max-pixels-text", 2, "DEPTHFLOW_MAX_IMAGE_PIXELS",
     lambda d, c: ["analyze", c, "-o", d / O, *CHEAP, {"DEPTHFLOW_MAX_IMAGE_PIXELS": "lots"}]),
    ("env-dynamics-workers-three", 2, "DEPTHFLOW_DYNAMICS_WORKERS",
     lambda d, c: ["analyze", c, "-o", d / O, *CHEAP, {"DEPTHFLOW_DYNAMICS_WORKERS": "3"}]),
    ("env-memory-budget-nan", 2, "DEPTHFLOW_MEMORY_BUDGET",
     lambda d, c: ["analyze", c, "-o", d / O, *CHEAP, {"DEPTHFLOW_MEMORY_BUDGET": "nan"}]),
    ("env-dist-timeout-negative", 2, "DEPTHFLOW_DIST_TIMEOUT",
     lambda d, c: ["fit", c, "-o", d / "run", "--quiet", {"DEPTHFLOW_DIST_TIMEOUT": "-5"}]),
    ("env-crash-point-unknown", 2, "DEPTHFLOW_CRASH_AT",
     lambda d, c: ["analyze", c, "-o", d / O, *CHEAP, {"DEPTHFLOW_CRASH_AT": "nowhere"}]),
    # ----- options and --set values
    ("opt-betas-out-of-range", 2, "betas",
     lambda d, c: ["fit", c, "-o", d / "run", "--betas", "2,3", "--quiet"]),
    ("opt-betas-single", 2, "two numbers",
     lambda d, c: ["fit", c, "-o", d / "run", "--betas", "0.9", "--quiet"]),
    ("opt-click-value-not-an-integer", 2, "'--k'",
     lambda d, c: ["fit", c, "-o", d / "run", "--k", "two", "--quiet"]),
    ("opt-betas-nan", 2, "betas",
     lambda d, c: ["fit", c, "-o", d / "run", "--betas", "nan,0.9", "--quiet"]),
    ("opt-set-known-unused-key", 2, "fixed_point_token",
     lambda d, c: ["analyze", c, "-o", d / O, "--no-phases", "--set",
                   "dynamics.fixed_point_token=3", "--quiet", "--no-figures"]),
    ("opt-set-recovery-angle-nan", 2, "recovery_angles",
     lambda d, c: ["analyze", c, "-o", d / O, "--no-phases", "--set",
                   "dynamics.recovery_angles=nan", "--quiet", "--no-figures"]),
    ("opt-set-robustness-angle-inf", 2, "robustness_angles",
     lambda d, c: ["analyze", c, "-o", d / O, "--no-phases", "--set",
                   "dynamics.robustness_angles=inf", "--quiet", "--no-figures"]),
    # ----- architectures and resources, before anything is allocated
    ("arch-depth-a-million", 2, "depth=1000000",
     lambda d, c: ["analyze", c, "-o", d / O, "--arch", "depth=1000000", *CHEAP]),
    ("arch-width-a-billion", 2, "embed_dim=1000000000",
     lambda d, c: ["analyze", "-o", d / O, "--arch", "embed_dim=1000000000", *CHEAP]),
    ("arch-beyond-the-memory-budget", 2, "memory",
     lambda d, c: ["analyze", c, "-o", d / O, *CHEAP, {"DEPTHFLOW_MEMORY_BUDGET": "100000"}]),
    ("arch-batch-beyond-the-memory-budget", 2, "--batch-size 450",
     lambda d, c: ["analyze", c, "-o", d / O, "--no-phases", "--dynamics", "none",
                   "--batch-size", "450", "--quiet", "--no-figures",
                   {"DEPTHFLOW_MEMORY_BUDGET": "1000000"}]),
    ("arch-norm-eps-nan", 2, "norm_eps",
     lambda d, c: ["analyze", c, "-o", d / O, "--arch", "norm_eps=nan", *CHEAP]),
    ("ckpt-hf-config-field-of-the-wrong-type", 1, "num_attention_heads='4'",
     lambda d, c: ["analyze", hf_dir(d, num_attention_heads="4"), "-o", d / O, *CHEAP]),
    ("ckpt-hf-config-disagrees-with-the-weights", 1, "num_hidden_layers=5",
     lambda d, c: ["analyze", hf_dir(d, num_hidden_layers=5), "-o", d / O, *CHEAP]),
    ("ckpt-hf-config-eps-nan", 1, "layer_norm_eps",
     lambda d, c: ["analyze", hf_dir(d, layer_norm_eps=float("nan")), "-o", d / O, *CHEAP]),
    ("ckpt-preprocessing-std-nan", 2, "finite",
     lambda d, c: ["analyze", nan_std(d, c), "-o", d / O, *CHEAP]),
    ("ckpt-position-table-wrong-size", 1, "pos_embed (1, 26, 32)",
     lambda d, c: ["analyze", wrong_positions(d, c), "-o", d / O, *CHEAP]),
    ("ckpt-integer-weights", 1, "integer weights",
     lambda d, c: ["analyze", int_weights(d), "--arch", "num_heads=4", "-o", d / O, *CHEAP]),
    # ----- images: special files, long images, one decoder through the collections
    ("img-fifo-in-a-file-list", 1, "FIFO",
     lambda d, c: ["analyze", c, "--images", fifo_list(d), "-o", d / O, *CHEAP]),
    ("img-fifo-as-an-array-file", 1, "FIFO",
     lambda d, c: [then("analyze", os.mkfifo(d / "a.npy")), c, "--images", d / "a.npy",
                   "-o", d / O, *CHEAP]),
    ("ckpt-fifo-as-the-checkpoint", 1, "FIFO",
     lambda d, c: [then("analyze", os.mkfifo(d / "ck.pth")), d / "ck.pth", "-o", d / O,
                   *CHEAP]),
    ("img-device-in-a-file-list", 1, "device",
     lambda d, c: [then("analyze", (d / "l.txt").write_text("/dev/null\n")), c, "--images",
                   d / "l.txt", "-o", d / O, *CHEAP]),
    ("img-very-long-image-resized", 1, "resized",
     lambda d, c: ["--max-image-pixels", "5000", "analyze", c, "--images",
                   folder(d, {"a.png": png(LONG)}), "-o", d / O, *CHEAP]),
    ("img-bomb-in-a-tar-shard", 1, "20000x20000",
     lambda d, c: ["analyze", c, "--images", tar_shard(d, {"s1.png": png_header(20000, 20000)}),
                   "-o", d / O, *CHEAP]),
    ("img-over-the-limit-in-a-tar-shard", 1, "limit",
     lambda d, c: ["--max-image-pixels", "10", "analyze", c, "--images",
                   tar_shard(d, {"s1.png": png(GREY)}), "-o", d / O, *CHEAP]),
    ("img-truncated-in-a-tar-shard", 1, "s1.png",
     lambda d, c: ["analyze", c, "--images", tar_shard(d, {"s1.png": png(GREY)[:30]}),
                   "-o", d / O, *CHEAP]),
    # ----- labels
    ("lbl-cls-double-minus", 1, "--5",
     lambda d, c: ["analyze", c, "--images", tar_shard(d, {"s1.png": png(GREY),
                                                          "s1.cls": b"--5"}),
                   "-o", d / O, *CHEAP]),
    ("lbl-cls-superscript-digit", 1, "integer",
     lambda d, c: ["analyze", c, "--images", tar_shard(d, {"s1.png": png(GREY),
                                                          "s1.cls": "³".encode()}),
                   "-o", d / O, *CHEAP]),
    ("lbl-cls-below-minus-one", 1, "integer",
     lambda d, c: ["analyze", c, "--images", tar_shard(d, {"s1.png": png(GREY),
                                                          "s1.cls": b"-7"}),
                   "-o", d / O, *CHEAP]),
]


def test_corpus_size_and_classes():
    classes = {case[0].split("-")[0] for case in CASES}
    assert classes == {"out", "env", "opt", "arch", "ckpt", "img", "lbl"}
    assert len({case[0] for case in CASES}) == len(CASES) >= 35


@pytest.mark.parametrize("name,code,match,build", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, ckpt, name, code, match, build):
    d = tmp_path / "work"
    d.mkdir()
    argv = build(d, ckpt)
    assert_one_line_error(d, argv, code=code, match=match)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ one decoder
def _corpus() -> dict[str, bytes]:
    grad = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    asym = np.zeros((6, 10), np.uint8)
    asym[0, 0] = 255
    pal = np.arange(64, dtype=np.uint8).reshape(8, 8)
    return {"grey8.png": png(GREY), "grey16.png": png(grad),
            "rotated.png": png(asym, exif_orientation=6),
            "palette.png": png(np.dstack([pal, pal[::-1], pal.T]), mode="P"),
            "rgba.png": png(np.dstack([GREY, GREY, GREY, GREY]))}


def _sources(d: Path, files: dict[str, bytes]) -> dict[str, str]:
    """The same image files as every source kind; spec per kind."""
    datasets = pytest.importorskip("datasets")
    files = dict(sorted(files.items()))              # every source in the order of names
    root = folder(d, files, "folder")
    (d / "list.csv").write_text("".join(f"folder/{n}\n" for n in files))
    tar = tar_shard(d, {f"{Path(n).stem}.{Path(n).suffix[1:]}": b for n, b in files.items()})
    features = datasets.Features({"image": datasets.Image()})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None}
                                               for b in files.values()]}, features=features)
    ds.save_to_disk(str(d / "hf"))
    return {"folder": str(root), "file list": str(d / "list.csv"), "tar shards": str(tar),
            "hf dataset": f"hf:{d / 'hf'}", "hf-imagefolder": f"hf-imagefolder:{root}"}


def _read_all(spec: str) -> dict[str, torch.Tensor]:
    from depthflow.data.images import open_images

    src = open_images(spec)
    out = {}
    for i in range(len(src)):
        out[i] = src._read(i, i + 1)[0]
    return out


def test_one_decoder_for_every_source_kind(tmp_path):
    """16-bit, EXIF-rotated, palette and alpha PNGs decode to the same tensors through a
    folder, a file list, tar shards, a saved HF dataset and hf-imagefolder:."""
    from depthflow.data.images import read_image

    files = _corpus()
    specs = _sources(tmp_path, files)
    expected = [read_image(io.BytesIO(b), n) for n, b in sorted(files.items())]
    rotated = read_image(io.BytesIO(files["rotated.png"]))
    assert rotated.shape[-2:] == (10, 6)                 # EXIF orientation 6 applied
    grey16 = read_image(io.BytesIO(files["grey16.png"]))
    assert torch.allclose(grey16[0, 0, :3], torch.tensor([0, 1000, 2000]) / 65535.0)
    for kind, spec in specs.items():
        got = _read_all(spec)
        assert len(got) == len(expected), kind
        for i, want in enumerate(expected):
            assert got[i].shape == want.shape and torch.equal(got[i], want), (kind, i)


@pytest.mark.parametrize("bad,match", [(png_header(20000, 20000), "20000x20000"),
                                       (png(GREY)[:30], "cannot read image"),
                                       (b"not an image", "cannot read image")])
def test_the_same_error_through_every_source_kind(tmp_path, bad, match):
    specs = _sources(tmp_path, {"bad.png": bad})
    messages = {}
    for kind, spec in specs.items():
        if kind == "hf-imagefolder" and b"PNG" not in bad[:8]:
            continue                    # imagefolder itself skips non-images when indexing
        with pytest.raises(InputError, match=match) as info:
            _read_all(spec)
        messages[kind] = str(info.value).split(":")[0].split("'")[0]
    assert len(set(messages.values())) == 1, messages


def test_webdataset_keys_use_the_first_dot(tmp_path):
    from depthflow.data.collections import webdataset_key
    from depthflow.data.images import open_images

    assert webdataset_key("d/s1.seg.png") == ("d/s1", "seg.png")
    assert webdataset_key("s1.JPG") == ("s1", "jpg")
    shard = tar_shard(tmp_path, {"s1.png": png(GREY), "s1.seg.png": png(GREY),
                                 "s1.cls": b"3", "s2.png": png(GREY), "s2.cls": b"-1"})
    src = open_images(str(shard))
    assert len(src) == 2
    assert list(src.labels) == [0, -1] and src.class_names == ["3"]


def test_file_lists_bom_quoting_and_relative_paths(tmp_path):
    from depthflow.data.images import open_images

    sub = tmp_path / "lists"
    folder(sub, {" lead.png": png(GREY), "a,b.png": png(GREY), "plain.png": png(GREY)})
    (sub / "l.csv").write_bytes("\ufeffpath,label\n\" lead.png\",cat\n\"imgs/a,b.png\",dog\n"
                                "imgs/plain.png, cat\n".replace("\" lead", "\"imgs/ lead")
                                .encode("utf-8"))
    src = open_images(str(sub / "l.csv"))
    assert [p.name for p in src.files] == [" lead.png", "a,b.png", "plain.png"]
    assert all(p.is_file() for p in src.files)
    assert list(src.labels) == [0, 1, 0] and src.class_names == ["cat", "dog"]
    # labels that look numeric but are not ASCII integers are class names, not tracebacks
    (sub / "n.txt").write_text("imgs/plain.png,--5\nimgs/a,b.png,3\n".replace("a,b", "x")
                               + "imgs/plain.png,\u00b3\nimgs/plain.png,-2\n",
                               encoding="utf-8")
    src = open_images(str(sub / "n.txt"))
    assert src.class_names == ["-2", "3", "--5", "\u00b3"]
    assert list(src.labels) == [2, 1, 3, 0]


# ------------------------------------------------------------------ signals
def cli(*args, crash: str | None = None, sig: str = "TERM", timeout: float = 300):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "OMP_NUM_THREADS": "1"}
    env.pop("DEPTHFLOW_CRASH_AT", None)
    if crash:
        env["DEPTHFLOW_CRASH_AT"] = crash
        env["DEPTHFLOW_CRASH_SIGNAL"] = sig
    code = "from depthflow.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def hidden(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


SIG_CHEAP = ["--no-phases", "--dynamics", "stretching", "--set", "dynamics.samples=3",
             "--set", "dynamics.min_per_class=0", "--set", "dynamics.k=2", "--set",
             "dynamics.stretching_k=1", "--batch-size", "4", "--limit", "8", "--quiet"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("point,sig,code,extra", [
    ("analyze.batch:1", "TERM", 143, []), ("analyze.analyses", "INT", 130, []),
    ("analyze.batch:1", "TERM", 143, ["--workers", "2"])])   # with DataLoader workers
def test_signals_run_the_error_clean_up(tmp_path, ckpt, point, sig, code, extra):
    d = tmp_path / "out"
    d.mkdir()
    first = run("analyze", ckpt, "-o", d / "run.nc", *SIG_CHEAP)
    assert first.exit_code == 0, first.output
    before = snapshot(d)
    cut = cli("analyze", ckpt, "-o", d / "run.nc", "--overwrite", *SIG_CHEAP, *extra,
              crash=point, sig=sig, timeout=120)           # no hang on worker processes
    assert cut.returncode == code, (cut.returncode, cut.stderr)
    lines = [line for line in cut.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: interrupted by SIG" + sig), lines
    assert snapshot(d) == before                 # the existing output untouched
    assert hidden(d) == [] and hidden(tmp_path) == []    # no temporary, no lock left


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_analyze_resume_keeps_its_checkpoint_and_resumes_to_the_same_file(
        tmp_path, ckpt):
    import xarray as xr

    args = [*SIG_CHEAP, "--resume", "--checkpoint-every", "1"]
    whole = run("analyze", ckpt, "-o", tmp_path / "whole.nc", *SIG_CHEAP)
    assert whole.exit_code == 0, whole.output
    cut = cli("analyze", ckpt, "-o", tmp_path / "r.nc", *args, crash="analyze.batch:1",
              sig="TERM")
    assert cut.returncode == 143, cut.stderr
    lines = [line for line in cut.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "SIGTERM" in lines[0], lines
    assert not (tmp_path / "r.nc").exists()
    kept = hidden(tmp_path)
    assert kept and not any("lock" in k for k in kept)        # the checkpoint, no lock
    done = cli("analyze", ckpt, "-o", tmp_path / "r.nc", *args)
    assert done.returncode == 0, done.stderr
    assert hidden(tmp_path) == []                             # checkpoint removed when done
    with xr.open_dataset(tmp_path / "r.nc") as a, xr.open_dataset(tmp_path / "whole.nc") as b:
        for name in ("norm", "gamma", "cls_state"):
            np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_fit_keeps_a_resumable_checkpoint_and_overwrite_never_mixes(
        tmp_path, ckpt):
    fit = ["--limit", 32, "--k", 2, "--thresholds", 1, "--stage1-steps", 4, "--stage2-steps",
           2, "--batch-size", 8, "--log-every", 2, "--checkpoint-every", 2, "--eval-every",
           2, "--quiet", "--num-threads", 1]
    done = run("fit", ckpt, "-o", tmp_path / "r", *fit)
    assert done.exit_code == 0 and (tmp_path / "r" / "evaluation.json").is_file()
    (tmp_path / "r" / ".keep-me").write_text("hidden files are not depthflow's either")
    cut = cli("fit", ckpt, "-o", tmp_path / "r", "--overwrite", *fit, crash="fit.step:3")
    assert cut.returncode == 143, cut.stderr
    lines = [line for line in cut.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--resume" in lines[0] and "SIGTERM" in lines[0], lines
    names = {p.name for p in (tmp_path / "r").iterdir()}
    assert "evaluation.json" not in names and "curves.png" not in names   # old run gone
    assert {"training_state.pt", "model.safetensors", "fit_config.json"} <= names
    assert not [n for n in names if ".depthflow-" in n] and ".keep-me" in names
    resumed = run("fit", "--resume", tmp_path / "r", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert (tmp_path / "r" / "evaluation.json").is_file()


def test_fit_resume_refuses_another_teacher_or_training_set(tmp_path, ckpt):
    fit = ["--limit", 16, "--k", 1, "--stage1-steps", 2, "--stage2-steps", 0,
           "--batch-size", 8, "--quiet", "--num-threads", 1, "--checkpoint-every", 1]
    stopped = run("fit", ckpt, "-o", tmp_path / "r", *fit, "--stop-after", 1)
    assert stopped.exit_code == 0, stopped.output
    other = tiny_checkpoint(tmp_path / "other.safetensors", seed=5)
    before = snapshot(tmp_path / "r")
    for args, what in (([other], "teacher"), (["--images", "digits:test"], "training set")):
        r = run("fit", *args, "--resume", tmp_path / "r", "--quiet")
        assert r.exit_code == 2, r.output
        assert f"a different {what}" in r.output and len(r.output.strip().splitlines()) == 1
        assert snapshot(tmp_path / "r") == before


# ------------------------------------------------------------------ locks, manifest
def test_a_second_run_on_a_locked_output_changes_nothing(tmp_path, ckpt):
    from depthflow.io.guard import output_lock

    with output_lock([tmp_path / "r.nc"]):
        before = snapshot(tmp_path)
        r = run("analyze", ckpt, "-o", tmp_path / "r.nc", *CHEAP)
        assert r.exit_code == 1 and "another depthflow run" in r.output, r.output
        assert snapshot(tmp_path) == before
    assert hidden(tmp_path) == []                            # the lock file goes with it
    assert run("analyze", ckpt, "-o", tmp_path / "r.nc", *CHEAP).exit_code == 0


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(tmp_path, ckpt):
    """kill -9 leaves the lock file behind but not the lock (flock dies with the process):
    the next run takes it over, and removes it when done."""
    code = ("import sys, time; from depthflow.io.guard import output_lock\n"
            f"with output_lock([{str(tmp_path / 'r.nc')!r}]):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = run("analyze", ckpt, "-o", tmp_path / "r.nc", *CHEAP)
        assert r.exit_code == 1 and "another depthflow run" in r.output    # alive: refused
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert hidden(tmp_path) != []                         # the dead run's lock file stays
    assert run("analyze", ckpt, "-o", tmp_path / "r.nc", *CHEAP).exit_code == 0
    assert hidden(tmp_path) == [] and (tmp_path / "r.nc").is_file()


def test_overwrite_of_figures_removes_only_what_depthflow_wrote(tmp_path, ckpt):
    args = ["--no-phases", "--dynamics", "none", "--limit", "4", "--quiet"]
    assert run("analyze", ckpt, "-o", tmp_path / "r.nc", *args).exit_code == 0
    figs = tmp_path / "r-figures"
    manifest = json.loads((figs / "depthflow-figures.json").read_text())
    assert sorted(manifest["files"]) == sorted(p.name for p in figs.glob("*.png"))
    (figs / "notes.txt").write_text("mine")
    (figs / "old.png").write_text("mine too")
    assert run("analyze", ckpt, "-o", tmp_path / "r.nc", "--overwrite", *args).exit_code == 0
    assert (figs / "notes.txt").read_text() == "mine" and (figs / "old.png").exists()
    clash = manifest["files"][0]
    (figs / "depthflow-figures.json").write_text(json.dumps(
        {**manifest, "files": manifest["files"][1:]}))       # now a file depthflow did not list
    r = run("analyze", ckpt, "-o", tmp_path / "r.nc", "--overwrite", *args)
    assert r.exit_code == 1 and clash in r.output and "did not write" in r.output, r.output


def test_set_of_a_key_whose_analysis_is_not_run_warns_on_one_line(caplog):
    from depthflow.analysis.registry import build_analyses

    with caplog.at_level("WARNING", logger="depthflow"):
        build_analyses(phases=False, dynamics="stretching",
                       options=["dynamics.recovery_draws=3", "dynamics.stretching_k=2"])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "recovery_draws" in lines[0] and "recovery" in lines[0]


def test_check_disjoint_known_answers(tmp_path):
    from depthflow.errors import OutputError
    from depthflow.io.guard import check_disjoint

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.png").write_bytes(b"x")
    os.symlink(tmp_path / "in", tmp_path / "alias")
    check_disjoint({"-o": tmp_path / "out.nc"}, {"--images": tmp_path / "in"})
    check_disjoint({"-o": tmp_path / "out.nc"}, {"--images": "digits"})      # not a path
    for out in (tmp_path / "in", tmp_path / "alias" / "r.nc", tmp_path / "in" / "x.png"):
        with pytest.raises(OutputError):
            check_disjoint({"-o": out}, {"--images": tmp_path / "in"})
    with pytest.raises(OutputError, match="contains"):
        check_disjoint({"--figures": tmp_path}, {"--images": tmp_path / "in"})
    with pytest.raises(OutputError, match="overlap"):
        check_disjoint({"-o": tmp_path / "a" / "r.nc", "--figures": tmp_path / "a"}, {})


def test_info_gives_one_line_for_damaged_files(tmp_path, ckpt):
    import xarray as xr

    assert run("analyze", ckpt, "-o", tmp_path / "r.nc", *CHEAP).exit_code == 0
    tree = xr.open_datatree(tmp_path / "r.nc")
    root = tree.to_dataset().load()
    tree.close()
    first = next(iter(root.data_vars))
    root.drop_vars(first).to_netcdf(tmp_path / "missing.nc")
    bad_arch = root.copy()
    bad_arch.attrs["architecture"] = "{not json"
    bad_arch.to_netcdf(tmp_path / "arch.nc")
    for name in ("missing.nc", "arch.nc"):
        r = run("info", tmp_path / name)
        assert "Traceback" not in r.output
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert r.exit_code == 0 or (r.exit_code == 1 and len(lines) == 1), r.output


def test_open_result_refuses_a_file_missing_a_variable_it_lists(tmp_path, ckpt):
    import shutil

    import netCDF4

    from depthflow import open_result
    from depthflow.errors import InputError

    good = tmp_path / "r.nc"
    assert run("analyze", ckpt, "-o", good, "--dynamics", "none", "--limit", "8",
               "--quiet", "--no-figures").exit_code == 0
    tree = open_result(good)                                  # untouched: opens
    listed = json.loads(tree.attrs["depthflow_variables"])
    tree.close()
    assert "norm" in listed["/"] and "/phases" in listed
    cases = {"variable.nc": lambda d: d.renameVariable("norm", "norm_renamed"),
             "group-variable.nc": lambda d: d["phases"].renameVariable("cka", "other"),
             "record.nc": lambda d: d.setncattr("depthflow_variables", "[1, 2"),
             "record-type.nc": lambda d: d.setncattr("depthflow_variables", "[1, 2]")}
    for name, damage in cases.items():
        shutil.copy(good, tmp_path / name)
        with netCDF4.Dataset(tmp_path / name, "a") as d:
            damage(d)
        with pytest.raises(InputError, match="damaged"):
            open_result(tmp_path / name)
        r = run("info", tmp_path / name)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and "damaged" in lines[0], r.output


def test_mixed_dtype_weights_are_converted_and_the_conversion_is_recorded(tmp_path, ckpt):
    import torch
    import xarray as xr
    from safetensors.torch import save_file

    from depthflow.models.checkpoints import read_safetensors

    tensors, metadata = read_safetensors(ckpt)
    names = sorted(tensors)
    mixed = {k: (v.half() if i % 2 else v) for i, (k, v) in
             enumerate((k, tensors[k]) for k in names)}
    assert {v.dtype for v in mixed.values()} == {torch.float16, torch.float32}
    save_file(mixed, str(tmp_path / "mixed.safetensors"), metadata=metadata)
    r = run("analyze", tmp_path / "mixed.safetensors", "-o", tmp_path / "r.nc", *CHEAP)
    assert r.exit_code == 0, r.output
    with xr.open_dataset(tmp_path / "r.nc") as ds:
        assert ds.attrs["checkpoint_weight_conversion"] == "float16, float32 -> float32"
    r = run("analyze", ckpt, "-o", tmp_path / "plain.nc", *CHEAP)     # not mixed: no record
    with xr.open_dataset(tmp_path / "plain.nc") as ds:
        assert "checkpoint_weight_conversion" not in ds.attrs


@pytest.mark.parametrize("extra", [-1, 1, 4, 5])
def test_a_position_table_of_the_wrong_size_is_named_as_such(extra):
    """A table with ``extra`` rows too many (registers present) is blamed on its own size,
    never on the registers; the pos_embed_cls hint only where dropping the slot fits."""
    import torch

    from depthflow.errors import ArchitectureError
    from depthflow.models.formats import convert_state_dict
    from depthflow.models.vit import ViT

    sd = dict(ViT(tiny_config(num_register_tokens=4)).state_dict())
    rows = sd["pos_embed"].shape[1] + extra
    sd["pos_embed"] = torch.zeros(1, rows, sd["pos_embed"].shape[2])
    with pytest.raises(ArchitectureError) as info:
        convert_state_dict(sd)
    message = str(info.value)
    assert f"pos_embed has {rows} rows" in message and "register" not in message
    assert ("pos_embed_cls" in message) == (extra == -1)       # no class slot stored


def test_a_small_memory_budget_never_breaks_the_import():
    """The budget is read when a model is built, not when depthflow is imported (a default
    ViTConfig built at import time once raised a traceback from ``import depthflow``)."""
    env = {**os.environ, "DEPTHFLOW_MEMORY_BUDGET": "1000"}
    done = subprocess.run([sys.executable, "-c", "import depthflow, depthflow.cli.main"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_demo_budgets_do_not_warn_about_analyses_that_are_not_run(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="depthflow"):
        r = run("analyze", "-o", tmp_path / "o.nc", "--dynamics", "stretching", "--limit",
                "12", "--no-phases", "--quiet", "--no-figures")
    assert r.exit_code == 0, r.output
    assert not [m for m in caplog.messages if "has no effect" in m], caplog.messages
    with caplog.at_level("WARNING", logger="depthflow"):               # the user's own: warned
        r = run("analyze", "-o", tmp_path / "p.nc", "--dynamics", "stretching", "--limit",
                "12", "--no-phases", "--quiet", "--no-figures", "--set",
                "dynamics.norm_scan_starts=3")
    assert any("norm_scan_starts" in m and "has no effect" in m for m in caplog.messages)


# ------------------------------------------------------------------ property-based
_values = st.one_of(st.text(max_size=12), st.integers(-10**12, 10**12).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["nan", "-1", "0", "1e309", "--5", "³", "", " ", "a,b",
                                     "1,2,3", "none", "true"]))
_analyze_opts = st.sampled_from(["--batch-size", "--limit", "--seed", "--states", "--dtype",
                                 "--device", "--dynamics", "--set", "--arch", "--workers",
                                 "--checkpoint-every"])
_fit_opts = st.sampled_from(["--k", "--lr", "--betas", "--batch-size", "--thresholds",
                             "--stage1-steps", "--stage2-steps", "--weight-decay",
                             "--grad-clip", "--tf-mode", "--seed", "--limit", "--assignment"])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_analyze_opts, _values), min_size=1, max_size=3))
def test_analyze_option_parsing_lets_only_one_line_errors_escape(tmp_path, ckpt, options):
    argv = ["analyze", str(ckpt), "-o", str(tmp_path / "does-not-exist" / "r.nc"),
            "--no-figures", "--quiet"]
    for flag, value in options:
        argv += [flag, value]
    _one_line_or_ok(argv)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_fit_opts, _values), min_size=1, max_size=3))
def test_fit_option_parsing_lets_only_one_line_errors_escape(tmp_path, ckpt, options):
    argv = ["fit", str(ckpt), "-o", str(tmp_path / "no-such-parent" / "run"), "--quiet"]
    for flag, value in options:
        argv += [flag, value]
    _one_line_or_ok(argv)


def _one_line_or_ok(argv):
    """Every run ends before work (the output's folder does not exist): exit 1 or 2 with
    one ``Error:`` line; anything else escaping -- a traceback -- fails the test."""
    try:
        result = CliRunner().invoke(main, argv, catch_exceptions=False)
    except DepthflowError as exc:                     # pragma: no cover - would be a bug
        pytest.fail(f"a DepthflowError escaped the CLI wrapper: {exc}")
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code in (1, 2), (argv, result.output)
    assert len(lines) == 1 and lines[0].startswith("Error: "), (argv, result.output)


@pytest.mark.parametrize("preset", [None, "dinov2_vits14_reg4", "dinov2_vitb14"])
def test_parameter_estimate_is_a_close_lower_bound(preset):
    """methods.md section 17: the estimate never exceeds the true count (a refusal is no
    false alarm) and is within 5% of it."""
    from depthflow.models.arch import PRESETS
    from depthflow.models.vit import ViT, ViTConfig

    if preset is None:
        model = tiny_vit()
    else:
        with torch.device("meta"):
            model = ViT(ViTConfig(**PRESETS[preset]))
    true = sum(p.numel() for p in model.state_dict().values())
    est = model.cfg.parameter_estimate()
    assert 0.95 * true <= est <= true, (est, true)
