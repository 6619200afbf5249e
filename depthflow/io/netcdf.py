"""NetCDF output that plain xarray reads: the root with ``xr.open_dataset(path)``, a group
with ``xr.open_dataset(path, group="phases")``, everything with ``xr.open_datatree(path)``.

:class:`StreamingWriter` appends per-sample variables batch by batch along an unlimited
``sample`` dimension (memory independent of the number of images) into a temporary file
that is renamed into place only when :meth:`StreamingWriter.commit` succeeds; analyses add
their results as groups (:meth:`StreamingWriter.add_tree`). :func:`write_dataset` writes an
in-memory ``xr.Dataset`` the same atomic way.

The temporary file is named after the host and process
(:func:`depthflow.io.files.temp_name`); a later run removes those whose process is gone.

Attributes are made NetCDF-safe: ``None`` -> ``""``, bools -> ``0/1``, dicts and lists of
mixed types -> JSON strings.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from depthflow.errors import OutputError
from depthflow.io.files import atomic_path

ENGINE = "netcdf4"
CHUNK_BYTES = 1 << 20
VARIABLES_ATTR = "depthflow_variables"    # {group path: [variable names]} (JSON)


def safe_attr(value: Any) -> Any:
    """Convert a value into something NetCDF attributes can hold."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.size and \
            value.dtype.kind in "iuf":
        return value                       # e.g. flag_values, in the variable's own type
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return np.asarray(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return json.dumps(list(value))
    return json.dumps(value, sort_keys=True, default=str)


def safe_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): safe_attr(v) for k, v in attrs.items()}


def write_dataset(ds, path: str | os.PathLike[str], *, overwrite: bool = False,
                  compress: Sequence[str] = ()) -> Path:
    """Write an ``xr.Dataset`` atomically (temp file + rename) with safe attributes."""
    ds = ds.copy()
    ds.attrs = safe_attrs(ds.attrs)
    for name in ds.variables:
        ds[name].attrs = safe_attrs(ds[name].attrs)
    encoding = {name: {"zlib": True, "complevel": 4} for name in compress}
    with atomic_path(path, overwrite=overwrite) as tmp:
        try:
            ds.to_netcdf(tmp, engine=ENGINE, encoding=encoding)
        except OSError as exc:
            raise OutputError(f"cannot write {str(path)!r}: {exc}") from exc
    return Path(path)


def write_tree(tree, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write an ``xr.DataTree`` atomically (temp file + rename), one NetCDF group per node,
    with safe attributes."""
    import xarray as xr

    nodes = {}
    for node in tree.subtree:
        ds = node.to_dataset().copy()
        ds.attrs = safe_attrs(ds.attrs)
        for name in ds.variables:
            ds[name].attrs = safe_attrs(ds[name].attrs)
        nodes["/" + node.relative_to(tree) if node is not tree else "/"] = ds
    clean = xr.DataTree.from_dict({k.replace("/.", "/"): v for k, v in nodes.items()})
    with atomic_path(path, overwrite=overwrite) as tmp:
        try:
            clean.to_netcdf(tmp, engine=ENGINE)
        except OSError as exc:
            raise OutputError(f"cannot write {str(path)!r}: {exc}") from exc
    return Path(path)


class StreamingWriter:
    """Write a NetCDF file incrementally along an unlimited ``sample`` dimension.

    Use as a context manager: ``commit()`` renames the temporary file onto the target;
    leaving the block without ``commit()`` (or by an exception) deletes it.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False,
                 sample_dim: str = "sample", sample_coords: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.sample_dim = sample_dim
        self.sample_coords = tuple(sample_coords)   # non-index coordinates on sample_dim
        self._ctx = atomic_path(self.path, overwrite=overwrite)
        self._tmp: Path | None = None
        self._nc = None
        self._committed = False
        self.n = 0

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> StreamingWriter:
        import netCDF4

        self._tmp = self._ctx.__enter__()
        try:
            self._nc = netCDF4.Dataset(self._tmp, "w", format="NETCDF4")
        except OSError as exc:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise OutputError(f"cannot create {str(self.path)!r}: {exc}") from exc
        self._nc.createDimension(self.sample_dim, None)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._nc is not None and self._nc.isopen():
            with contextlib.suppress(Exception):
                self._nc.close()
        if exc_type is None and not self._committed:
            error = OutputError(f"{str(self.path)!r} was not committed; nothing was written")
            self._ctx.__exit__(OutputError, error, None)
            raise error
        if exc_type is None:
            return bool(self._ctx.__exit__(None, None, None))
        self._ctx.__exit__(exc_type, exc, tb)
        return False

    @property
    def temporary(self) -> Path:
        """The temporary file being written (renamed onto ``path`` when the block exits)."""
        if self._tmp is None:
            raise OutputError(f"{str(self.path)!r} is not open")
        return self._tmp

    def commit(self) -> Path:
        with self._writing():
            self._nc.setncattr(VARIABLES_ATTR, json.dumps(self.manifest(), sort_keys=True))
            self._nc.close()
        self._committed = True
        return self.path

    def manifest(self) -> dict[str, list[str]]:
        """Every group of the file (``/`` = root) with the variables it holds: written as
        the ``depthflow_variables`` attribute, so that a reader can tell a damaged file."""
        found: dict[str, list[str]] = {}
        todo = [("/", self._nc)]
        while todo:
            path, node = todo.pop()
            found[path] = sorted(node.variables)
            todo += [(f"{path.rstrip('/')}/{name}", child) for name, child in
                     node.groups.items()]
        return found

    @contextlib.contextmanager
    def _writing(self):
        """HDF5 reports a full disk or a vanished file as RuntimeError: make it OutputError."""
        try:
            yield
        except (RuntimeError, OSError) as exc:
            raise OutputError(f"cannot write {str(self.path)!r}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                              ) from exc

    # -------------------------------------------------------------- schema
    def dimension(self, name: str, size: int) -> None:
        self._nc.createDimension(name, size)

    def variable(self, name: str, dims: Sequence[str], dtype: Any, *, attrs: Mapping[str, Any],
                 data: Any = None, compress: bool = False, chunks: Sequence[int] | None = None,
                 fill: Any = None) -> None:
        """Define a variable (``dtype=str`` for strings); ``data`` fills a fixed one."""
        kwargs: dict[str, Any] = {}
        if compress:
            # level 1: fast, and float data barely compresses better at higher levels
            kwargs.update(zlib=True, complevel=1, shuffle=True)
        if chunks is None and dims and dims[0] == self.sample_dim:
            chunks = self._sample_chunks(dims, dtype)
        if chunks is not None:
            kwargs["chunksizes"] = tuple(chunks)
        if fill is not None:
            kwargs["fill_value"] = fill
        var = self._nc.createVariable(name, dtype, tuple(dims), **kwargs)
        attrs = dict(attrs)
        if dims and dims[0] == self.sample_dim and name not in (
                self.sample_dim, *self.sample_coords) and self.sample_coords:
            attrs.setdefault("coordinates", " ".join(self.sample_coords))
        var.setncatts(safe_attrs(attrs))
        if data is not None:
            arr = np.asarray(data, dtype=object if dtype is str else None)
            var[...] = arr

    def _sample_chunks(self, dims: Sequence[str], dtype: Any) -> list[int]:
        """About 1 MiB chunks along the sample axis (netCDF's default is one sample)."""
        rest = [len(self._nc.dimensions[d]) for d in dims[1:]]
        itemsize = 16 if dtype is str else np.dtype(dtype).itemsize
        per_sample = itemsize * int(np.prod(rest, dtype=np.int64)) if rest else itemsize
        return [int(max(1, min(4096, CHUNK_BYTES // max(per_sample, 1)))), *rest]

    def attrs(self, attrs: Mapping[str, Any]) -> None:
        self._nc.setncatts(safe_attrs(attrs))

    # -------------------------------------------------------------- data
    def append(self, values: Mapping[str, Any]) -> None:
        """Append one batch: every array's first axis is the sample axis."""
        sizes = {len(v) for v in values.values()}
        if len(sizes) != 1:
            raise ValueError(f"batch arrays disagree on the sample count: {sizes}")
        (count,) = sizes
        start, stop = self.n, self.n + count
        with self._writing():
            for name, value in values.items():
                var = self._nc.variables[name]
                if var.dtype is str:
                    var[start:stop] = np.array([str(item) for item in value], dtype=object)
                else:
                    var[start:stop] = np.asarray(value)
        self.n = stop

    def write(self, name: str, value: Any) -> None:
        self._nc.variables[name][...] = np.asarray(value)

    def add_tree(self, result, *, group: str, compress: bool = False) -> None:
        """Write an ``xr.Dataset`` as group ``group``, or an ``xr.DataTree`` as ``group``
        and its descendants (``group/child/...``)."""
        import xarray as xr

        if isinstance(result, xr.Dataset):
            self.add_dataset(result, group=group, compress=compress)
            return
        for node in result.subtree:
            path = "/".join(p for p in (group, node.relative_to(result)) if p not in ("", "."))
            self.add_dataset(node.to_dataset(), group=path, compress=compress)

    def add_dataset(self, ds, *, group: str | None = None, compress: bool = False) -> None:
        """Add every variable of an ``xr.Dataset`` (coordinates included) to the file, at
        the root or in ``group`` (a ``/``-separated path, created with its parents).

        In the root, dimensions already in the file must have the same size (``sample``:
        the number of samples appended so far), a coordinate already there must hold the
        same values, and any other name clash is an error. A group defines its own
        dimensions. Non-index coordinates are recorded in the CF ``coordinates`` attribute
        of the variables they label, so xarray reads them back as coordinates.
        ``ds.attrs`` become the group's attributes.
        """
        target = self._nc if not group else self._group(group)
        with self._writing():
            for dim, size in ds.sizes.items():
                have = self._dim_size(target, dim)
                if have is None:
                    target.createDimension(dim, size)
                elif have != size:
                    raise ValueError(f"dimension {dim!r} has size {have} in "
                                     f"{group or 'the root'} and {size} in the added dataset")
            labels = [c for c in ds.coords if c not in ds.dims]
            for name, var in ds.variables.items():
                self._add_variable(target, name, var, ds, labels, compress=compress)
            target.setncatts(safe_attrs(ds.attrs))

    def _group(self, path: str):
        node = self._nc
        for part in path.strip("/").split("/"):
            node = node.groups[part] if part in node.groups else node.createGroup(part)
        return node

    def _dim_size(self, target, dim: str) -> int | None:
        """Size of ``dim`` in ``target`` or, for a group, in its nearest ancestor that has
        it (a group's dimension must match its ancestors': xarray aligns them)."""
        node = target
        while node is not None:
            if dim in node.dimensions:
                size = self.n if (node is self._nc and dim == self.sample_dim) else \
                    len(node.dimensions[dim])
                if node is not target:
                    target.createDimension(dim, size)
                return size
            node = node.parent
        return None

    def _add_variable(self, target, name: str, var, ds, labels: list[str], *,
                      compress: bool) -> None:
        values = np.asarray(var.values)
        if name in target.variables:
            if name in ds.coords and np.array_equal(np.asarray(target.variables[name][...]),
                                                    values):
                return
            raise ValueError(f"variable {name!r} is already in the file")
        if values.dtype.kind in "UO":
            dtype: Any = str
            values = values.astype(str).astype(object)
        elif values.dtype.kind == "b":
            dtype, values = "i1", values.astype(np.int8)
        else:
            dtype = values.dtype
        attrs = dict(var.attrs)
        mine = [c for c in labels if c != name and set(ds[c].dims) <= set(var.dims)]
        if mine and name not in ds.coords:
            attrs["coordinates"] = " ".join(mine)
        kwargs: dict[str, Any] = {}
        if compress and values.size > 4096:
            kwargs.update(zlib=True, complevel=1, shuffle=True)
        fill = var.encoding.get("_FillValue")
        if fill is not None:
            kwargs["fill_value"] = fill
        nc_var = target.createVariable(name, dtype, tuple(var.dims), **kwargs)
        nc_var.setncatts(safe_attrs(attrs))
        if values.ndim == 0:
            nc_var.assignValue(values.item() if dtype is not str else str(values))
        else:
            nc_var[...] = values
