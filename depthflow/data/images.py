"""Image sources: the bundled digits, folders of images, array files.

Every source yields batches of float images in [0, 1] with shape ``(B, C, H, W)`` plus
integer labels (-1 where unknown) and a name per sample; the model's
:class:`~depthflow.models.preprocessing.Preprocessing` is applied afterwards. Sources are lazy:
folders decode one batch at a time, arrays are memory-mapped.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import os
import struct
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from depthflow.core.config import check_int
from depthflow.errors import ConfigError, InputError

DIGITS_TEST_SIZE = 0.25
DIGITS_SPLIT_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
ARRAY_SUFFIXES = (".npy", ".npz")
MAX_IMAGE_PIXELS = 1 << 26          # 8192 x 8192; larger images are refused before decoding
MAX_PIXELS_ENV = "DEPTHFLOW_MAX_IMAGE_PIXELS"


@dataclasses.dataclass
class Batch:
    images: Tensor            # (B, C, H, W) float in [0, 1]
    labels: Tensor            # (B,) int64, -1 = unknown
    names: list[str]


def digits_split(*, test_size: float = DIGITS_TEST_SIZE,
                 seed: int = DIGITS_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices into scikit-learn's 1,797 digits (fixed by ``seed``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    train, test = train_test_split(np.arange(len(labels)), test_size=test_size,
                                   random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def load_digits_arrays(split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits images in [0, 1] ``(N, 1, 8, 8)`` float32, labels, and dataset indices.

    ``split`` is ``"train"``, ``"test"`` (the held-out quarter) or ``"all"``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    if split == "all":
        index = np.arange(len(images))
    elif split in ("train", "test"):
        train, test = digits_split()
        index = train if split == "train" else test
    else:
        raise InputError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
    return images[index], digits.target[index].astype(np.int64), index


class ImageSource:
    """A sized, lazily read collection of images with labels.

    Subclasses implement :meth:`_read` (raw images in [0, 1], any size, as a list of
    ``(C, H, W)`` tensors or one ``(B, C, H, W)`` tensor) for a slice of indices.
    """

    kind = "images"

    def __init__(self, labels: np.ndarray, names: Sequence[str], *,
                 class_names: Sequence[str] = ()) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.names = unique_names(names)
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> str:  # pragma: no cover - overridden
        return self.kind

    def input_paths(self) -> list[Path]:
        """The files and folders this source reads (outputs must stay clear of them)."""
        return []

    def _read(self, start: int, stop: int) -> list[Tensor] | Tensor:  # pragma: no cover
        raise NotImplementedError

    def batches(self, batch_size: int, *, preprocessing=None) -> Iterator[Batch]:
        """Yield model-ready batches; ``preprocessing`` (a Preprocessing) is applied here."""
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            raw = self._read(start, stop)
            images = _prepare(raw, preprocessing, self.names[start:stop])
            yield Batch(images=images, labels=torch.from_numpy(self.labels[start:stop]),
                        names=self.names[start:stop])

    def head(self, n: int | None) -> ImageSource:
        """The first ``n`` images as a new source (all when ``n`` is None); ``self`` is
        unchanged."""
        if n is None or n >= len(self):
            return self
        check_int(n, "limit")
        subset = copy.copy(self)
        subset.labels, subset.names = self.labels[:n], self.names[:n]
        return subset


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` made unique by suffixing repeats (``a``, ``a#2``, ...), order kept, so that
    a result file can index its samples by name."""
    seen: dict[str, int] = {}
    taken = set(map(str, names))
    out = []
    for name in map(str, names):
        count = seen.get(name, 0) + 1
        seen[name] = count
        new = name
        while count > 1 and (new := f"{name}#{count}") in taken:
            count += 1
        if new != name:
            seen[name] = count
            taken.add(new)
        out.append(new)
    return out


def _prepare(raw: list[Tensor] | Tensor, preprocessing, names: Sequence[str]) -> Tensor:
    if preprocessing is None:
        if isinstance(raw, list):
            raw = _stack(raw, names)
        return raw.float()
    if isinstance(raw, Tensor):
        return preprocessing.apply(_match_channels(raw, preprocessing.channels))
    out = [preprocessing.apply(_match_channels(img[None], preprocessing.channels))
           for img in raw]
    return _stack([o[0] for o in out], names)


def _stack(images: list[Tensor], names: Sequence[str]) -> Tensor:
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) > 1:
        raise InputError(
            f"images in one batch have different sizes {sorted(shapes)[:3]} "
            f"(e.g. {names[0]!r}); set a resize and crop in the preprocessing")
    return torch.stack(images)


def _match_channels(images: Tensor, channels: int) -> Tensor:
    """Grey -> RGB by repetition, RGB -> grey by ITU-R 601 luma."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)
    if have == 4 and channels in (1, 3):
        return _match_channels(images[:, :3], channels)
    raise InputError(f"cannot convert images with {have} channels to {channels}")


class DigitsSource(ImageSource):
    """scikit-learn's 8x8 digits (bundled with scikit-learn, no download)."""

    kind = "digits"

    def __init__(self, split: str = "test") -> None:
        images, labels, index = load_digits_arrays(split)
        super().__init__(labels, [f"digits[{i}]" for i in index],
                         class_names=[str(c) for c in range(10)])
        self.split = split
        self._images = torch.from_numpy(images)

    def describe(self) -> str:
        return (f"scikit-learn digits, split={self.split} (stratified {DIGITS_TEST_SIZE:.0%} "
                f"held out, seed {DIGITS_SPLIT_SEED}), {len(self)} images")

    def _read(self, start: int, stop: int) -> Tensor:
        return self._images[start:stop]


class FolderSource(ImageSource):
    """Images in a folder; images in sub-folders are labelled by sub-folder name."""

    kind = "folder"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"image folder {str(self.root)!r} does not exist")
        files = sorted(p for p in self.root.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(self.root).parts))
        if not files:
            raise InputError(
                f"image folder {str(self.root)!r} holds no images "
                f"(looked for {', '.join(IMAGE_SUFFIXES)})")
        classes = sorted({p.relative_to(self.root).parts[0] for p in files
                          if len(p.relative_to(self.root).parts) > 1})
        index = {c: i for i, c in enumerate(classes)}
        labels = [index.get(p.relative_to(self.root).parts[0], -1)
                  if len(p.relative_to(self.root).parts) > 1 else -1 for p in files]
        super().__init__(np.array(labels), [str(p.relative_to(self.root)) for p in files],
                         class_names=classes)
        self.files = files

    def input_paths(self) -> list[Path]:
        return [self.root]

    def describe(self) -> str:
        return (f"folder {str(self.root)!r}, {len(self)} images, "
                f"{len(self.class_names)} classes")

    def _read(self, start: int, stop: int) -> list[Tensor]:
        return [read_image(path, str(path)) for path in self.files[start:stop]]


def max_image_pixels() -> int:
    """The pixel limit of :func:`read_image`: ``DEPTHFLOW_MAX_IMAGE_PIXELS`` when set (the
    CLI's ``depthflow --max-image-pixels N`` sets it), else :data:`MAX_IMAGE_PIXELS`."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{MAX_PIXELS_ENV} must be a positive integer, got {text!r}")
    return value


def read_image(source: str | os.PathLike[str] | BinaryIO | bytes, name: str | None = None, *,
               max_pixels: int | None = None) -> Tensor:
    """Decode one image (a path, a binary file object or the bytes of a file) into a
    ``(C, H, W)`` float32 tensor in [0, 1], faithfully or not at all. It is the one decoder
    of every image source: folders, file lists, tar shards and Hugging Face datasets.

    * A path must name a regular file: FIFOs, devices and sockets are refused before they
      are opened (reading a FIFO would wait forever).
    * The header is read first: an image of more than ``max_pixels`` pixels (default
      :func:`max_image_pixels`, 67,108,864 = 8192 x 8192) is refused before anything is
      decoded (decompression bombs).
    * 8-bit grey/RGB are divided by 255; 16-bit grey (``I;16``) by 65,535; 32-bit integer
      grey (``I``) by 65,535 when its values fit 16 bits (how 16-bit PNGs are often
      read), refused otherwise; 32-bit float grey (``F``, e.g. float TIFF) is kept as is and
      must lie in [0, 1]. Palette, bilevel, CMYK, YCbCr and alpha images become RGB (alpha
      dropped); grey+alpha becomes grey.
    * EXIF orientation is applied (the image is turned upright, as Hugging Face's
      ``load_image`` and most viewers do): the pixels the model sees are the picture as it
      is shown, whatever the camera stored.

    Raises :class:`InputError` naming ``name`` (default: the path) for anything unreadable,
    too large, out of range or of an unsupported mode.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    label = name if name is not None else str(getattr(source, "name", source))
    if isinstance(source, (str, os.PathLike)):
        check_regular_file(source, label)
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)
    try:
        with _pil_limit_off(Image):
            img = Image.open(source)                 # reads the header only
        with img:
            width, height = img.size
            if width * height > limit:
                raise InputError(_too_large(label, width, height, limit))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                arr = _decode(_upright(img), label)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"image {label!r}: {exc}".splitlines()[0]) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
            MemoryError, TypeError, struct.error, IndexError, KeyError,
            ZeroDivisionError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read image {label!r}: {text}") from exc
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    return torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))


def check_regular_file(path: str | os.PathLike[str], label: str | None = None, *,
                       what: str = "image") -> None:
    """:class:`InputError` unless ``path`` is an existing regular file (after symbolic
    links): FIFOs, character/block devices, sockets and directories are refused without
    being opened."""
    import stat

    label = str(path) if label is None else label
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"cannot read {what} {label!r}: not found") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {label!r}: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a directory" if stat.S_ISDIR(mode) else "not a regular file")
    raise InputError(f"{what} {label!r} is {kind}, not a file; refused without reading it")


def _upright(img):
    """``img`` turned by its EXIF orientation (2..8); itself when it has none."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:           # noqa: BLE001 - a damaged EXIF block: keep the pixels as stored
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        from PIL import ImageOps
        return ImageOps.exif_transpose(img)
    return img


_PIL_LOCK = threading.Lock()


@contextlib.contextmanager
def _pil_limit_off(image_module) -> Iterator[None]:
    """PIL's own bomb check off while a header is read (ours, with the size, decides);
    restored afterwards so that other users of PIL in the process keep theirs."""
    with _PIL_LOCK:
        saved = image_module.MAX_IMAGE_PIXELS
        image_module.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            image_module.MAX_IMAGE_PIXELS = saved


def _too_large(label: str, width: int, height: int, limit: int) -> str:
    return (f"image {label!r} declares {width}x{height} = {width * height:,} pixels, more than "
            f"the limit of {limit:,} (a decompression bomb?); raise it with depthflow "
            f"--max-image-pixels N or {MAX_PIXELS_ENV}=N if the image is genuine")


def _decode(img, label: str) -> np.ndarray:
    """Pixels of an opened PIL image as float32 in [0, 1], ``(H, W)`` or ``(H, W, C)``."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return np.asarray(img, dtype=np.float32) / 255.0
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.float32) / 65535.0
    if mode == "I":
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise InputError(f"image {label!r} is 32-bit integer with values "
                             f"{arr.min()}..{arr.max()} beyond 16 bits; store it as 8- or "
                             "16-bit, or as float in [0, 1]")
        return arr.astype(np.float32) / 65535.0
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise InputError(f"float image {label!r} holds NaN or inf values")
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise InputError(f"float image {label!r} must lie in [0, 1] (found "
                             f"{arr.min():.3g}..{arr.max():.3g}); rescale it")
        return arr
    if mode in ("LA", "La"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if mode in ("1", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    raise InputError(f"image {label!r} has the unsupported pixel mode {mode!r}")


class ArraySource(ImageSource):
    """Images in a ``.npy`` (memory-mapped) or ``.npz`` (keys ``images``, ``labels``) file.

    Layouts ``(N, H, W)``, ``(N, H, W, C)`` and ``(N, C, H, W)`` (C in 1, 3, 4); uint8
    values are divided by 255, uint16 by 65,535, float values must already lie in [0, 1];
    complex arrays are refused. Labels: integers (-1 = unknown), integral floats, or
    strings (classes = their sorted distinct values); see :func:`check_labels`.
    """

    kind = "array"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        labels = None
        try:
            if self.path.suffix == ".npz":
                with np.load(self.path, allow_pickle=False) as data:
                    if "images" not in data:
                        raise InputError(
                            f"{str(self.path)!r} has no 'images' array (found {list(data)})")
                    array = data["images"]
                    labels = data["labels"] if "labels" in data else None
            else:
                array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except InputError:
            raise
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"cannot read array file {str(self.path)!r}: {exc}") from exc
        self._array, self._layout = array, _array_layout(array, self.path)
        _check_pixel_dtype(array.dtype, self.path)
        n = array.shape[0]
        if labels is not None and np.asarray(labels).shape != (n,):
            raise InputError(f"labels in {str(self.path)!r} must have shape ({n},)")
        classes: list[str] = []
        if labels is None:
            labels = np.full(n, -1)
        elif np.asarray(labels).dtype.kind in "US":
            labels, classes = _string_labels(np.asarray(labels))
        else:
            labels = check_labels(labels, str(self.path))
            classes = [str(c) for c in range(int(labels.max()) + 1)] if (labels >= 0).any() \
                else []
        super().__init__(labels, [f"{self.path.name}[{i}]" for i in range(n)],
                         class_names=classes)

    def input_paths(self) -> list[Path]:
        return [self.path]

    def describe(self) -> str:
        return f"array file {str(self.path)!r}, {len(self)} images, layout {self._layout}"

    def _read(self, start: int, stop: int) -> Tensor:
        chunk = np.asarray(self._array[start:stop])
        if chunk.dtype == np.uint8:
            chunk = chunk.astype(np.float32) / 255.0
        elif chunk.dtype == np.uint16:
            chunk = chunk.astype(np.float32) / 65535.0
        elif chunk.dtype == np.bool_:
            chunk = chunk.astype(np.float32)
        else:
            chunk = chunk.astype(np.float32)
            if not np.isfinite(chunk).all():
                raise InputError(f"array file {str(self.path)!r} holds NaN or inf values")
            if chunk.min() < -1e-6 or chunk.max() > 1 + 1e-6:
                raise InputError(
                    f"float images in {str(self.path)!r} must lie in [0, 1] "
                    f"(found {chunk.min():.3g}..{chunk.max():.3g}); store uint8 or rescale")
        if self._layout == "NHW":
            chunk = chunk[:, None]
        elif self._layout == "NHWC":
            chunk = np.moveaxis(chunk, -1, 1)
        return torch.from_numpy(np.ascontiguousarray(chunk))


MAX_CLASSES = 100_000     # class indices beyond this are refused (per-class accumulators)


def check_labels(labels, name: str = "labels") -> np.ndarray:
    """Integer class labels (``-1`` = unknown) as int64, or :class:`InputError`.

    Accepted: integer or boolean arrays, and float arrays whose values are all integral
    (e.g. ``1.0``); refused: fractional, NaN/inf or complex values, labels below -1, and
    labels of :data:`MAX_CLASSES` or more (a class table that large would need
    ``(depth + 1) x classes x width x 8`` bytes per accumulator: 6.7 GB for label
    1,000,000 on a 64-wide, 12-deep ViT).
    """
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"labels in {name!r} must be integers (or strings naming classes), "
                         f"got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(f"labels in {name!r} hold NaN or inf values")
        if (arr != np.round(arr)).any():
            bad = arr[arr != np.round(arr)][0]
            raise InputError(f"labels in {name!r} must be whole numbers, found {bad:g} "
                             "(float labels are only accepted when integral)")
    if arr.size and arr.min() < -1:
        raise InputError(f"labels in {name!r} must be >= -1 (-1 = unknown), found "
                         f"{arr.min():g}")
    if arr.size and arr.max() >= MAX_CLASSES:
        top = int(arr.max())
        estimate = (12 + 1) * (top + 1) * 64 * 8
        raise InputError(f"label {top} in {name!r} implies {top + 1:,} classes (limit "
                         f"{MAX_CLASSES:,}): the per-class accumulators would need about "
                         f"{estimate / 1e9:.1f} GB even for a 64-wide, 12-deep model; "
                         "renumber the classes 0..C-1")
    return arr.astype(np.int64)


def _string_labels(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """String labels -> indices into their sorted distinct values ('' = unknown, -1)."""
    text = labels.astype(str)
    classes = sorted({t for t in text if t != ""})
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(t, -1) for t in text], dtype=np.int64), classes


def _check_pixel_dtype(dtype: np.dtype, path: Path) -> None:
    if dtype.kind not in "biuf":
        raise InputError(f"array {str(path)!r} has dtype {dtype}; images must be uint8, "
                         "uint16 or float in [0, 1]" +
                         (" (complex values are refused, not truncated to their real part)"
                          if dtype.kind == "c" else ""))


def _array_layout(array: np.ndarray, path: Path) -> str:
    layout = _layout_of(array, path)
    height, width = (array.shape[1:3] if layout in ("NHW", "NHWC") else array.shape[2:4])
    if height == 0 or width == 0:
        raise InputError(f"array {str(path)!r} holds images of {height}x{width} pixels; "
                         "images need at least one pixel")
    return layout


def _layout_of(array: np.ndarray, path: Path) -> str:
    if array.ndim == 3:
        return "NHW"
    if array.ndim == 4 and array.shape[1] in (1, 3, 4):
        return "NCHW"
    if array.ndim == 4 and array.shape[-1] in (1, 3, 4):
        return "NHWC"
    raise InputError(
        f"array {str(path)!r} has shape {array.shape}; expected (N, H, W), (N, H, W, C) "
        "or (N, C, H, W) with C in 1, 3, 4")


class LfwSource(ImageSource):
    """scikit-image's ``lfw_subset``: 200 greyscale 25x25 crops, 100 faces and 100 non-faces
    (labels ``face`` / ``non-face``), interleaved face, non-face, ... so that the first N
    images (``--limit``, swap samples) hold both classes. Bundled with scikit-image."""

    kind = "lfw"

    def __init__(self) -> None:
        skdata = _skimage_data("lfw")
        images = np.asarray(skdata.lfw_subset(), dtype=np.float32)     # (200, 25, 25)
        half = len(images) // 2                  # the file holds 100 faces, then non-faces
        order = np.stack([np.arange(half), np.arange(half, 2 * half)], 1).ravel()
        labels = (order >= half).astype(np.int64)
        super().__init__(labels, [f"lfw_subset[{i}]" for i in order],
                         class_names=["face", "non-face"])
        self._images = torch.from_numpy(images[order][:, None])

    def describe(self) -> str:
        return f"scikit-image lfw_subset (100 faces, 100 non-faces, 25x25 grey), {len(self)} images"

    def _read(self, start: int, stop: int) -> Tensor:
        return self._images[start:stop]


class SkimagePhotoSource(ImageSource):
    """The natural photos bundled with scikit-image (unlabelled, various sizes)."""

    kind = "skimage"
    PHOTOS = ("astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee",
              "coins", "colorwheel", "grass", "gravel", "hubble_deep_field",
              "immunohistochemistry", "microaneurysms", "moon", "page", "retina", "rocket",
              "text")     # those that load offline (no pooch download)

    def __init__(self) -> None:
        self._data = _skimage_data("skimage")
        names = [n for n in self.PHOTOS if hasattr(self._data, n)]
        super().__init__(np.full(len(names), -1), names)

    def describe(self) -> str:
        return f"scikit-image photos ({', '.join(self.names)}), {len(self)} images"

    def _read(self, start: int, stop: int) -> list[Tensor]:
        out = []
        for name in self.names[start:stop]:
            array = np.asarray(getattr(self._data, name)())
            if array.ndim == 2:
                array = array[..., None]
            scale = 255.0 if array.dtype == np.uint8 else 1.0
            array = array.astype(np.float32) / scale
            out.append(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1))
        return out


def _skimage_data(spec: str):
    try:
        import skimage.data
    except ImportError as exc:
        raise InputError(f"images {spec!r} need scikit-image: pip install scikit-image") from exc
    return skimage.data


_COLLECTION_OPENERS: list = []     # spec -> ImageSource | None; see depthflow.data.collections


def register_collection(opener) -> None:
    """Let :func:`open_images` try ``opener(spec)`` (file lists, tar shards, datasets)."""
    if opener not in _COLLECTION_OPENERS:
        _COLLECTION_OPENERS.append(opener)


def _open_collection(spec: str) -> ImageSource | None:
    for opener in _COLLECTION_OPENERS:
        found = opener(spec)
        if found is not None:
            return found
    return None


def open_images(spec: str | os.PathLike[str] | None, *, limit: int | None = None) -> ImageSource:
    """Open an image source from a CLI-style spec.

    ``"digits"`` / ``"digits:test"`` / ``"digits:train"`` / ``"digits:all"``, ``"lfw"``
    (scikit-image faces / non-faces), ``"skimage"`` (scikit-image photos), a folder, a
    ``.npy``/``.npz`` file, or a large collection (a file list, tar shards, a Hugging Face
    dataset: :mod:`depthflow.data.collections`). ``None`` means the held-out digits.
    """
    spec = "digits" if spec is None else str(spec)
    if spec == "digits" or spec.startswith("digits:"):
        source: ImageSource = DigitsSource(spec.partition(":")[2] or "test")
    elif spec == "lfw":
        source = LfwSource()
    elif spec == "skimage":
        source = SkimagePhotoSource()
    elif (found := _open_collection(spec)) is not None:      # depthflow.data.collections
        source = found
    else:
        path = Path(spec)
        if path.is_dir():
            source = FolderSource(path)
        elif path.suffix.lower() in ARRAY_SUFFIXES:
            if path.exists() and not path.is_file():
                check_regular_file(path, spec, what="array file")
            if not path.is_file():
                raise InputError(f"array file {spec!r} does not exist")
            source = ArraySource(path)
        elif not path.exists():
            raise InputError(
                f"images {spec!r} not found; give a folder, a .npy/.npz file or 'digits'")
        else:
            raise InputError(
                f"images {spec!r} is neither a folder nor a .npy/.npz array file")
    return source.head(limit)
