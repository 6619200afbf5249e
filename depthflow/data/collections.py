"""Large image collections and batch loading for long (and distributed) runs.

Collections, read in place (nothing is unpacked), each an
:class:`~depthflow.data.images.ImageSource` that reads only the images of the batches asked for
(so that a rank of a distributed run reads only its own images):

* a file list: a ``.txt``, ``.csv`` or ``.lst`` file with one ``path[,label]`` per line (a
  first line ``path,label`` is a header; paths relative to the list's folder; labels are
  class names, empty = unlabelled) -> :class:`FileListSource`;
* WebDataset-style tar shards: ``shards-{000000..000099}.tar`` (brace ranges and lists
  expanded), each sample a group of members ``<key>.<image ext>`` and optionally
  ``<key>.cls`` (an integer class) -> :class:`TarShardSource`. Opening indexes the tar
  headers and reads the small ``.cls`` members (every rank needs the labels for the global
  plan); image bytes are read only when their batch is read;
* a Hugging Face ``datasets`` image dataset saved with ``save_to_disk`` (``hf:DIR`` or
  ``hf:DIR:SPLIT``, or a directory holding ``state.json`` / ``dataset_dict.json``) or an
  ``imagefolder`` directory (``hf-imagefolder:DIR``); labels from a ``ClassLabel`` column
  -> :class:`HFDatasetSource`. Needs the optional ``datasets`` package
  (``pip install depthflow[collections]``).

:func:`open_collection` recognises these specs; :func:`depthflow.data.images.open_images` asks it
first.

Loading: :func:`read_batch` reads one span ``[start, stop)`` of any
:class:`~depthflow.data.images.ImageSource` as a model-ready :class:`~depthflow.data.images.Batch`;
:func:`load_batches` yields the spans of one rank in order, in this process
(``workers=0``) or decoded ahead by ``workers`` worker processes (a
``torch.utils.data.DataLoader`` over spans), so that decoding overlaps the forward pass.
A worker's error comes back as the same one-line error, never a worker traceback.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depthflow.errors import ConfigError, InputError
from depthflow.data.images import (IMAGE_SUFFIXES, Batch, FolderSource, ImageSource, _prepare,
                                   check_regular_file, read_image, register_collection)

__all__ = ["read_batch", "load_batches", "open_collection", "FileListSource",
           "TarShardSource", "HFDatasetSource", "expand_braces"]

LIST_SUFFIXES = (".txt", ".csv", ".lst")


def read_batch(source: ImageSource, start: int, stop: int, *, preprocessing=None) -> Batch:
    """Images ``start..stop-1`` of ``source`` as a model-ready batch (what
    ``source.batches`` yields for that span)."""
    raw = source._read(start, stop)
    images = _prepare(raw, preprocessing, source.names[start:stop])
    return Batch(images=images, labels=torch.from_numpy(source.labels[start:stop]),
                 names=list(source.names[start:stop]))


@dataclasses.dataclass
class _Failure:
    """An exception raised in a worker, carried back to be raised again."""

    error: BaseException


class _Spans(torch.utils.data.Dataset):
    def __init__(self, source: ImageSource, spans: Sequence[tuple[int, int]],
                 preprocessing) -> None:
        self.source, self.spans, self.preprocessing = source, list(spans), preprocessing

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> Any:
        start, stop = self.spans[i]
        try:
            return read_batch(self.source, start, stop, preprocessing=self.preprocessing)
        except Exception as exc:        # noqa: BLE001 - re-raised in the main process
            try:
                import pickle

                pickle.dumps(exc)
                return _Failure(exc)
            except Exception:           # noqa: BLE001
                return _Failure(RuntimeError(f"{type(exc).__name__}: {exc}"))


def _identity(item: Any) -> Any:
    return item


def load_batches(source: ImageSource, spans: Sequence[tuple[int, int]], *, preprocessing=None,
                 workers: int = 0, prefetch: int = 2) -> Iterator[Batch]:
    """Yield the batches of ``spans`` (in order). ``workers > 0`` decodes them in that many
    worker processes, ``prefetch`` batches ahead each."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be an integer >= 0, got {workers!r}")
    if workers == 0 or len(spans) == 0:
        for start, stop in spans:
            yield read_batch(source, start, stop, preprocessing=preprocessing)
        return
    loader = torch.utils.data.DataLoader(
        _Spans(source, spans, preprocessing), batch_size=None, shuffle=False,
        num_workers=min(workers, len(spans)), prefetch_factor=prefetch,
        collate_fn=_identity, worker_init_fn=_worker_init)
    for item in loader:
        if isinstance(item, _Failure):
            raise item.error
        yield item


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)          # decoding only: leave the cores to the forward pass


# --------------------------------------------------------------------------- specs
def open_collection(spec: str) -> ImageSource | None:
    """The collection a spec names, or ``None`` when it names none of them."""
    if spec.startswith("hf:") or spec.startswith("hf-imagefolder:"):
        kind, _, rest = spec.partition(":")
        return HFDatasetSource(rest, imagefolder=kind == "hf-imagefolder")
    if ".tar" in spec and (("{" in spec and "}" in spec) or spec.endswith(".tar")):
        return TarShardSource(spec)
    path = Path(spec)
    if path.suffix.lower() in LIST_SUFFIXES:
        if not path.is_file():
            raise InputError(f"image list {spec!r} not found")
        return FileListSource(path)
    if path.is_dir() and ((path / "state.json").is_file() or
                          (path / "dataset_dict.json").is_file()):
        return HFDatasetSource(str(path))
    return None


def expand_braces(pattern: str) -> list[str]:
    """``a{000..002}.tar`` -> ``a000.tar a001.tar a002.tar`` (zero padding kept),
    ``{x,y}`` -> both; several groups expand as a product, left to right."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    head, tail = pattern[:match.start()], pattern[match.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        if int(hi) < int(lo):
            raise InputError(f"brace range {{{body}}} in {pattern!r} runs backwards")
        width = len(lo) if lo.startswith("0") else 0
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        raise InputError(f"cannot expand {{{body}}} in {pattern!r}: give a range "
                         "{000..099} or a list {a,b}")
    return [out for item in items for out in expand_braces(head + item + tail)]


_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)


def _class_index(labels: Sequence[str]) -> tuple[list[int], list[str]]:
    """Class names (integer ones -- ASCII digits with an optional minus -- in numeric
    order, then the others) and each label's index (-1: none)."""
    names = sorted({lab for lab in labels if lab != ""},
                   key=lambda x: (0, int(x), "") if _INTEGER.fullmatch(x) else (1, 0, x))
    index = {name: i for i, name in enumerate(names)}
    return [index.get(lab, -1) for lab in labels], names


def _decode_bytes(data: bytes, name: str) -> torch.Tensor:
    """The bytes of an image file, decoded by :func:`depthflow.data.images.read_image` (the one
    decoder: pixel limit, bit depth, mode, orientation and errors as for a folder)."""
    return read_image(data, name)


# --------------------------------------------------------------------------- file lists
class FileListSource(FolderSource):
    """Images listed in a text/CSV file, one ``path[,label]`` per line (decoded exactly as
    a folder's images are)."""

    kind = "file list"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import csv

        self.list_path = Path(path)
        self.root = self.list_path.parent
        check_regular_file(self.list_path, str(self.list_path), what="image list")
        try:                    # UTF-8 with or without a byte-order mark; CSV quoting
            with open(self.list_path, newline="", encoding="utf-8-sig") as handle:
                rows = [r for r in csv.reader(handle, skipinitialspace=True)
                        if r and any(c.strip() for c in r)]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"cannot read image list {str(path)!r}: "
                             f"{str(exc).splitlines()[0] if str(exc) else exc}") from exc
        if rows and [c.strip().lower() for c in rows[0][:2]] in (["path", "label"], ["path"]):
            rows = rows[1:]
        if not rows:
            raise InputError(f"image list {str(path)!r} lists no images")
        bad = [i + 1 for i, r in enumerate(rows) if len(r) > 2]
        if bad:
            raise InputError(f"image list {str(path)!r}: line {bad[0]} has more than two "
                             "fields (expected path[,label])")
        files = [Path(self._path_field(r[0])) for r in rows]
        self.files = [f if f.is_absolute() else self.root / f for f in files]
        labels, classes = _class_index([r[1].strip() if len(r) > 1 else "" for r in rows])
        ImageSource.__init__(self, np.array(labels), [str(f) for f in files],
                             class_names=classes)

    def _path_field(self, text: str) -> str:
        """The path as written: leading spaces of an unquoted field are dropped by the CSV
        reader (a quoted field keeps them); trailing spaces are dropped unless a file of
        that exact name exists."""
        if text != text.rstrip() and not os.path.lexists(self.root / text):
            text = text.rstrip()
        if not text:
            raise InputError(f"image list {str(self.list_path)!r} has an empty path")
        return text

    def input_paths(self) -> list[Path]:
        return [self.list_path, *self.files]

    def describe(self) -> str:
        return (f"image list {str(self.list_path)!r}, {len(self)} images, "
                f"{len(self.class_names)} classes")


# --------------------------------------------------------------------------- tar shards
def webdataset_key(member: str) -> tuple[str, str]:
    """The WebDataset sample key and field of a tar member: the key is the path up to the
    first dot of the file name, the field everything after it, lowercased
    (``d/s1.seg.png`` -> ``("d/s1", "seg.png")``); a name without a dot has no field."""
    folder, _, base = member.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot:
        return member, ""
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


@dataclasses.dataclass(frozen=True)
class _Member:
    shard: int
    offset: int
    size: int
    name: str


class TarShardSource(ImageSource):
    """WebDataset-style tar shards read in place: ``<key>.<image ext>`` (+ ``<key>.cls``)."""

    kind = "tar shards"

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.shards = [Path(p) for p in expand_braces(pattern)]
        missing = [str(p) for p in self.shards if not p.is_file()]
        if missing:
            raise InputError(f"tar shard {missing[0]!r} not found"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        members: list[_Member] = []
        labels: list[str] = []
        for i, shard in enumerate(self.shards):
            got_m, got_l = self._index(i, shard)
            members += got_m
            labels += got_l
        if not members:
            raise InputError(f"tar shards {pattern!r} hold no images "
                             f"(looked for {', '.join(IMAGE_SUFFIXES)})")
        self.members = members
        index, classes = _class_index(labels)
        super().__init__(np.array(index), [m.name for m in members], class_names=classes)
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    @staticmethod
    def _index(i: int, shard: Path) -> tuple[list[_Member], list[str]]:
        images: dict[str, _Member] = {}
        classes: dict[str, str] = {}
        order: list[str] = []
        try:
            with tarfile.open(shard, "r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    key, ext = webdataset_key(info.name)
                    if not ext:
                        continue
                    if "." + ext in IMAGE_SUFFIXES and key not in images:
                        images[key] = _Member(i, info.offset_data, info.size,
                                              f"{shard.name}/{info.name}")
                        order.append(key)
                    elif ext == "cls":
                        data = tar.extractfile(info).read(64).decode("utf-8", "replace")
                        classes[key] = data.strip()
        except (tarfile.TarError, OSError) as exc:
            raise InputError(f"cannot read tar shard {str(shard)!r}: {exc}") from exc
        bad = [classes[k] for k in order if k in classes
               and not (_INTEGER.fullmatch(classes[k]) and int(classes[k]) >= -1)]
        if bad:
            raise InputError(f"tar shard {str(shard)!r}: class entry {bad[0]!r} is not an "
                             "integer >= -1 (ASCII digits; -1 = unknown)")
        for k in order:                     # -1: unlabelled, as an empty entry
            if classes.get(k) == "-1":
                classes[k] = ""
        return [images[k] for k in order], [classes.get(k, "") for k in order]

    def __getstate__(self) -> dict:          # worker processes open their own files
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _handle(self, shard: int):
        if self._pid != os.getpid():         # forked: never share a file position
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            if len(self._handles) >= 8:
                for h in self._handles.values():
                    h.close()
                self._handles = {}
            self._handles[shard] = open(self.shards[shard], "rb")
        return self._handles[shard]

    def input_paths(self) -> list[Path]:
        return list(self.shards)

    def describe(self) -> str:
        return (f"tar shards {self.pattern!r} ({len(self.shards)} shards), {len(self)} images, "
                f"{len(self.class_names)} classes")

    def _read(self, start: int, stop: int) -> list[torch.Tensor]:
        out = []
        for m in self.members[start:stop]:
            handle = self._handle(m.shard)
            try:
                handle.seek(m.offset)
                data = handle.read(m.size)
            except OSError as exc:
                raise InputError(f"cannot read {m.name!r}: {exc}") from exc
            out.append(_decode_bytes(data, m.name))
        return out


# --------------------------------------------------------------------------- HF datasets
class HFDatasetSource(ImageSource):
    """A Hugging Face ``datasets`` image dataset on disk (``save_to_disk`` output, or an
    ``imagefolder`` directory), read in place (Arrow, memory-mapped)."""

    kind = "hf dataset"

    def __init__(self, spec: str, *, imagefolder: bool = False) -> None:
        try:
            import datasets
        except ImportError as exc:
            raise InputError("Hugging Face datasets need the optional 'datasets' package: "
                             "pip install 'depthflow[collections]'") from exc
        path, _, split = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
        self.spec = spec
        try:
            if imagefolder:
                ds = datasets.load_dataset("imagefolder", data_dir=path, split=split or "train")
            else:
                ds = datasets.load_from_disk(path)
        except FileNotFoundError as exc:
            raise InputError(f"Hugging Face dataset {path!r} not found: {exc}") from exc
        except Exception as exc:          # noqa: BLE001 - datasets raises many kinds
            raise InputError(f"cannot open Hugging Face dataset {path!r}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                             ) from exc
        if isinstance(ds, datasets.DatasetDict):
            if not split:
                split = "train" if "train" in ds else sorted(ds)[0]
            if split not in ds:
                raise InputError(f"Hugging Face dataset {path!r} has no split {split!r} "
                                 f"(has {', '.join(sorted(ds))})")
            ds = ds[split]
        features = ds.features
        images = [k for k, f in features.items() if isinstance(f, datasets.Image)]
        if not images:
            raise InputError(f"Hugging Face dataset {path!r} has no image column "
                             f"(columns: {', '.join(features)})")
        self.image_column = images[0]
        labels = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
        self.label_column = labels[0] if labels else None
        if self.label_column:
            y = np.asarray(ds[self.label_column], dtype=np.int64)   # one Arrow column
            classes = list(features[self.label_column].names)
        else:
            y, classes = np.full(len(ds), -1), []
        self.dataset = ds.cast_column(self.image_column, datasets.Image(decode=False))
        self.path = Path(path)
        self.split = split
        super().__init__(y, [f"{Path(path).name}[{i}]" for i in range(len(ds))],
                         class_names=classes)

    def describe(self) -> str:
        return (f"Hugging Face dataset {self.spec!r}"
                f"{f' split {self.split}' if self.split else ''}, {len(self)} images, "
                f"{len(self.class_names)} classes")

    def input_paths(self) -> list[Path]:
        return [self.path]

    def _read(self, start: int, stop: int) -> list[torch.Tensor]:
        rows = self.dataset.select_columns([self.image_column])[start:stop][self.image_column]
        out = []
        for i, cell in enumerate(rows):           # undecoded: {"bytes": ..., "path": ...}
            name = self.names[start + i]
            data = cell.get("bytes") if isinstance(cell, dict) else None
            where = cell.get("path") if isinstance(cell, dict) else None
            if data is not None:
                out.append(read_image(data, name))
            elif where:
                out.append(read_image(where, name))
            else:
                raise InputError(f"image {name!r} of the Hugging Face dataset is empty")
        return out


register_collection(open_collection)
