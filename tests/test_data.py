"""Image sources and preprocessing."""

import numpy as np
import pytest
import torch
from PIL import Image

from depthflow.data.images import (ArraySource, FolderSource, digits_split, load_digits_arrays,
                                   open_images)
from depthflow.errors import ConfigError, InputError
from depthflow.models.preprocessing import Preprocessing

from _models import DIGITS_PRE


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, test = digits_split()
    assert len(train) == 1347 and len(test) == 450
    assert not set(train) & set(test)
    again = digits_split()
    np.testing.assert_array_equal(again[1], test)
    _, labels, _ = load_digits_arrays("test")
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47       # about 45 per class


def test_digits_source_batches():
    source = open_images("digits:test", limit=10)
    batches = list(source.batches(4, preprocessing=DIGITS_PRE))
    assert [len(b.labels) for b in batches] == [4, 4, 2]
    images, labels, _ = load_digits_arrays("test")
    torch.testing.assert_close(batches[0].images, (torch.from_numpy(images[:4]) - 0.3) / 0.4)
    assert batches[1].labels.tolist() == labels[4:8].tolist()
    assert open_images(None).describe().startswith("scikit-learn digits, split=test")
    with pytest.raises(InputError, match="split"):
        open_images("digits:val")


def _png(path, value, size=(10, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value,
                  dtype=np.uint8)
    Image.fromarray(arr).save(path)


def test_folder_with_class_subfolders(tmp_path):
    _png(tmp_path / "cat" / "a.png", 10)
    _png(tmp_path / "cat" / "b.png", 20)
    _png(tmp_path / "dog" / "c.jpg", 30, mode="L")
    source = open_images(tmp_path)
    assert isinstance(source, FolderSource)
    assert source.class_names == ["cat", "dog"]
    assert source.labels.tolist() == [0, 0, 1]
    pre = Preprocessing(resize=8, crop=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    (batch,) = list(source.batches(8, preprocessing=pre))
    assert batch.images.shape == (3, 3, 8, 8)
    assert batch.images[0].mean().item() == pytest.approx(10 / 255, abs=1e-6)
    assert batch.names == ["cat/a.png", "cat/b.png", "dog/c.jpg"]


def test_flat_folder_is_unlabelled(tmp_path):
    _png(tmp_path / "x.png", 5)
    source = open_images(tmp_path)
    assert source.labels.tolist() == [-1] and source.class_names == []


def test_empty_and_unreadable_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(InputError, match="holds no images"):
        open_images(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    source = open_images(bad)
    with pytest.raises(InputError, match="cannot read image .*broken.png"):
        list(source.batches(2, preprocessing=DIGITS_PRE))
    with pytest.raises(InputError, match="not found"):
        open_images(tmp_path / "missing")


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_array_layouts(tmp_path, layout):
    base = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    array = {"NHW": base, "NHWC": base[..., None].repeat(3, -1),
             "NCHW": base[:, None].repeat(3, 1)}[layout]
    np.save(tmp_path / "x.npy", array)
    source = open_images(tmp_path / "x.npy")
    assert isinstance(source, ArraySource) and len(source) == 5
    (batch,) = list(source.batches(5, preprocessing=DIGITS_PRE))
    expected = (torch.from_numpy(base).float()[:, None] / 255 - 0.3) / 0.4
    torch.testing.assert_close(batch.images, expected, rtol=1e-5, atol=1e-5)


def test_npz_with_labels_and_bad_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 8, 8), np.float32), labels=[0, 2, 1])
    source = open_images(tmp_path / "d.npz")
    assert source.labels.tolist() == [0, 2, 1] and source.class_names == ["0", "1", "2"]
    np.savez(tmp_path / "nolabel.npz", pixels=np.zeros((3, 8, 8)))
    with pytest.raises(InputError, match="no 'images'"):
        open_images(tmp_path / "nolabel.npz")
    np.save(tmp_path / "big.npy", np.full((2, 8, 8), 3.0, np.float32))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        list(open_images(tmp_path / "big.npy").batches(2, preprocessing=DIGITS_PRE))
    np.save(tmp_path / "shape.npy", np.zeros((2, 5, 8, 8, 2)))
    with pytest.raises(InputError, match="expected"):
        open_images(tmp_path / "shape.npy")
    (tmp_path / "trunc.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="cannot read array"):
        open_images(tmp_path / "trunc.npy")


def test_preprocessing_resize_crop_normalise_and_channels():
    pre = Preprocessing(resize=16, crop=14, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = pre(torch.full((2, 3, 32, 48), 0.75))
    assert out.shape == (2, 3, 14, 14)
    torch.testing.assert_close(out, torch.ones_like(out))
    grey = Preprocessing(resize=None, crop=None, mean=(0.0,), std=(1.0,), mode="L")
    source = open_images("digits", limit=2)
    (batch,) = list(source.batches(2, preprocessing=pre))
    assert batch.images.shape == (2, 3, 14, 14)                 # grey -> RGB
    assert grey.to_dict()["mode"] == "L"
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    with pytest.raises(ConfigError):
        Preprocessing(mean=(0.5,), std=(0.5,))                  # RGB needs 3 values
    with pytest.raises(InputError, match="smaller than the crop"):
        Preprocessing(resize=None, crop=10, mean=(0.0,), std=(1.0,), mode="L")(
            torch.zeros(1, 1, 8, 8))


def test_lfw_subset_is_labelled_faces_then_non_faces():
    source = open_images("lfw")
    assert len(source) == 200 and source.class_names == ["face", "non-face"]
    assert (source.labels[0::2] == 0).all() and (source.labels[1::2] == 1).all()
    assert source.names[:3] == ["lfw_subset[0]", "lfw_subset[100]", "lfw_subset[1]"]
    batch = next(source.batches(200))
    assert batch.images.shape == (200, 1, 25, 25)
    assert 0.0 <= float(batch.images.min()) and float(batch.images.max()) <= 1.0


def test_skimage_photos_load_offline_as_rgb_in_unit_range():
    source = open_images("skimage", limit=6)
    assert len(source) == 6 and (source.labels == -1).all()
    pre = Preprocessing(resize=32, crop=32, mean=(0.0,) * 3, std=(1.0,) * 3,
                        interpolation="bilinear")
    batch = next(source.batches(6, preprocessing=pre))
    assert batch.images.shape == (6, 3, 32, 32)
    assert 0.0 <= float(batch.images.min()) and float(batch.images.max()) <= 1.0 + 1e-6
