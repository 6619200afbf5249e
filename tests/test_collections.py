"""Large image collections read in place: file lists, tar shards, Hugging Face datasets,
and batch loading in worker processes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from depthflow.data import collections as C
from depthflow.errors import InputError
from depthflow.data.images import FolderSource, open_images


def _pngs(root: Path, n: int = 7) -> list[tuple[Path, str, np.ndarray]]:
    from PIL import Image

    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        label = "cat" if i % 3 else "dog"
        arr = rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)
        path = root / label / f"im{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
        out.append((path, label, arr))
    return out


def _pixels(source, start=0, stop=None):
    stop = len(source) if stop is None else stop
    return [img.numpy() for img in source._read(start, stop)]


# --------------------------------------------------------------------------- braces
def test_brace_expansion_known_answers():
    assert C.expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert C.expand_braces("{x,y}/{1..2}") == ["x/1", "x/2", "y/1", "y/2"]
    assert C.expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(InputError, match="backwards"):
        C.expand_braces("{3..1}")
    with pytest.raises(InputError, match="cannot expand"):
        C.expand_braces("{abc}")


@given(st.integers(0, 500), st.integers(0, 40), st.integers(1, 6))
def test_brace_ranges_give_every_number_once_with_the_padding(lo, count, width):
    hi = lo + count
    first = str(lo).zfill(width)
    got = C.expand_braces(f"s{{{first}..{hi}}}.tar")
    assert len(got) == count + 1
    assert [int(g[1:-4]) for g in got] == list(range(lo, hi + 1))
    if first.startswith("0"):
        assert all(len(g) - 5 >= width for g in got)


# --------------------------------------------------------------------------- lists
def test_file_list_with_header_labels_and_relative_paths(tmp_path):
    items = _pngs(tmp_path / "img")
    lines = ["path,label"] + [f"{p.relative_to(tmp_path)},{lab}" for p, lab, _ in items]
    lines.append(f"{items[0][0]},")                      # absolute, unlabelled
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    src = open_images(str(tmp_path / "list.csv"))
    assert isinstance(src, C.FileListSource) and len(src) == len(items) + 1
    assert src.class_names == ["cat", "dog"]
    assert src.labels.tolist() == [1 if lab == "dog" else 0 for _, lab, _ in items] + [-1]
    for got, (_, _, arr) in zip(_pixels(src), items):
        np.testing.assert_array_equal(got, np.moveaxis(arr, -1, 0) / np.float32(255))
    folder = FolderSource(tmp_path / "img")          # the same decoding as a folder
    by_name = dict(zip(folder.names, _pixels(folder)))
    for name, got in zip(src.names, _pixels(src)):
        np.testing.assert_array_equal(got, by_name[str(Path(name).relative_to("img"))]
                                      if not Path(name).is_absolute() else got)


def test_file_list_errors_are_one_line(tmp_path):
    (tmp_path / "bad.txt").write_text("a.png,x,y\n")
    with pytest.raises(InputError, match="line 1 has more than two fields"):
        open_images(str(tmp_path / "bad.txt"))
    (tmp_path / "empty.txt").write_text("path,label\n")
    with pytest.raises(InputError, match="lists no images"):
        open_images(str(tmp_path / "empty.txt"))
    with pytest.raises(InputError, match="not found"):
        open_images(str(tmp_path / "missing.txt"))
    (tmp_path / "gone.txt").write_text("nothere.png\n")
    src = open_images(str(tmp_path / "gone.txt"))
    with pytest.raises(InputError, match="cannot read image"):
        src._read(0, 1)


# --------------------------------------------------------------------------- tar shards
def _shards(root: Path, items, per_shard: int = 3) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(items), per_shard):
        with tarfile.open(root / f"data-{s // per_shard:06d}.tar", "w") as tar:
            for i, (path, label, _) in enumerate(items[s:s + per_shard], start=s):
                for name, data in ((f"k{i:04d}.png", path.read_bytes()),
                                   (f"k{i:04d}.cls", str(int(label == "dog")).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    last = (len(items) - 1) // per_shard
    return str(root / f"data-{{000000..{last:06d}}}.tar")


def test_tar_shards_read_in_place_with_labels(tmp_path):
    items = _pngs(tmp_path / "img")
    pattern = _shards(tmp_path / "shards", items)
    src = open_images(pattern)
    assert isinstance(src, C.TarShardSource) and len(src) == len(items)
    assert len(src.shards) == 3 and src.class_names == ["0", "1"]
    assert src.labels.tolist() == [int(lab == "dog") for _, lab, _ in items]
    for got, (_, _, arr) in zip(_pixels(src), items):
        np.testing.assert_array_equal(got, np.moveaxis(arr, -1, 0) / np.float32(255))


def test_a_batch_reads_only_its_own_shard(tmp_path, monkeypatch):
    items = _pngs(tmp_path / "img")
    src = open_images(_shards(tmp_path / "shards", items))
    opened = []
    real = C.TarShardSource._handle
    monkeypatch.setattr(C.TarShardSource, "_handle",
                        lambda self, shard: opened.append(shard) or real(self, shard))
    C.read_batch(src, 3, 6)                              # the second shard's images
    assert set(opened) == {1}


def test_tar_shard_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_images(str(tmp_path / "x-{000..001}.tar"))
    (tmp_path / "junk.tar").write_bytes(b"\0" * 10 + b"junk")
    with pytest.raises(InputError, match="cannot read tar shard|hold no images"):
        open_images(str(tmp_path / "junk.tar"))


# --------------------------------------------------------------------------- HF datasets
def test_hugging_face_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    items = _pngs(tmp_path / "img")
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["cat", "dog"])})
    ds = datasets.Dataset.from_dict(
        {"image": [Image.open(p) for p, _, _ in items],
         "label": [int(lab == "dog") for _, lab, _ in items]}, features=features)
    ds.save_to_disk(str(tmp_path / "hf"))
    for spec in (f"hf:{tmp_path / 'hf'}", str(tmp_path / "hf")):
        src = open_images(spec)
        assert isinstance(src, C.HFDatasetSource) and len(src) == len(items)
        assert src.class_names == ["cat", "dog"]
        assert src.labels.tolist() == [int(lab == "dog") for _, lab, _ in items]
        for got, (_, _, arr) in zip(_pixels(src, 2, 5), items[2:5]):
            np.testing.assert_array_equal(got, np.moveaxis(arr, -1, 0) / np.float32(255))
    with pytest.raises(InputError, match="Hugging Face dataset"):
        open_images(f"hf:{tmp_path / 'nothing'}")


# --------------------------------------------------------------------------- workers
def test_workers_give_the_same_batches_and_one_line_errors(tmp_path):
    items = _pngs(tmp_path / "img", n=9)
    src = open_images(_shards(tmp_path / "shards", items))
    spans = [(0, 2), (2, 4), (4, 9)]
    plain = list(C.load_batches(src, spans))
    ahead = list(C.load_batches(src, spans, workers=2))
    for a, b in zip(plain, ahead, strict=True):
        assert a.names == b.names
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
        assert torch.equal(a.labels, b.labels)
    items[4][0].write_bytes(b"broken")
    broken = open_images(str(tmp_path / "img"))
    with pytest.raises(InputError, match="cannot read image") as err:
        list(C.load_batches(broken, spans, workers=2))
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
