"""NetCDF writing: round trips, streaming appends, atomicity, attribute encoding."""

import json

import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from depthflow.errors import OutputError
from depthflow.io.netcdf import StreamingWriter, safe_attr, write_dataset

values = arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 4)),
                elements=st.floats(-1e6, 1e6, width=32))


@given(values)
def test_write_read_round_trip_is_identical(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("rt") / "x.nc"
    ds = xr.Dataset({"v": (("sample", "depth"), data, {"long_name": "v", "units": "1"})},
                    coords={"depth": np.arange(data.shape[1])},
                    attrs={"config": {"a": 1}, "flag": True, "none": None})
    write_dataset(ds, path)
    with xr.open_dataset(path) as back:
        np.testing.assert_array_equal(back["v"].values, data)
        assert back["v"].attrs["long_name"] == "v"
        assert json.loads(back.attrs["config"]) == {"a": 1}
        assert back.attrs["flag"] == 1 and back.attrs["none"] == ""


def test_safe_attr():
    assert safe_attr(None) == "" and safe_attr(False) == 0
    assert json.loads(safe_attr({"b": [1, "x"]})) == {"b": [1, "x"]}
    np.testing.assert_array_equal(safe_attr([1, 2.5]), [1.0, 2.5])
    assert json.loads(safe_attr(["a", "b"])) == ["a", "b"]
    flags = safe_attr(np.arange(3, dtype=np.int8))        # CF flag_values keep their type
    assert flags.dtype == np.int8 and list(flags) == [0, 1, 2]


def _schema(w):
    w.dimension("feature", 3)
    w.variable("x", ["sample", "feature"], "f4", attrs={"long_name": "x", "units": "1"},
               compress=True)
    w.variable("name", ["sample"], str, attrs={"long_name": "name", "units": ""})


def test_streaming_appends_equal_one_write(tmp_path):
    data = np.arange(21, dtype=np.float32).reshape(7, 3)
    with StreamingWriter(tmp_path / "s.nc") as w:
        _schema(w)
        for start in range(0, 7, 3):
            w.append({"x": data[start:start + 3],
                      "name": [f"n{i}" for i in range(start, min(start + 3, 7))]})
        w.attrs({"config": {"k": None}})
        w.commit()
    with xr.open_dataset(tmp_path / "s.nc") as ds:
        np.testing.assert_array_equal(ds["x"].values, data)
        assert list(ds["name"].values) == [f"n{i}" for i in range(7)]
        assert ds.sizes["sample"] == 7


def test_failure_leaves_nothing_and_keeps_existing(tmp_path):
    target = tmp_path / "s.nc"
    with pytest.raises(RuntimeError):
        with StreamingWriter(target) as w:
            _schema(w)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"previous result")
    with pytest.raises(OutputError, match="exists"):
        StreamingWriter(target).__enter__()
    with pytest.raises(OutputError, match="not committed"):
        with StreamingWriter(target, overwrite=True) as w:
            _schema(w)
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.nc"]


def test_missing_directory(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        StreamingWriter(tmp_path / "nope" / "s.nc").__enter__()


def test_write_failure_becomes_output_error_and_leaves_nothing(tmp_path):
    """A failing HDF5 write (e.g. a full disk) is an OutputError; no file is left."""
    with pytest.raises(OutputError, match="cannot write"):
        with StreamingWriter(tmp_path / "s.nc") as w:
            _schema(w)
            w._nc.close()                   # the handle dies under the writer
            w.append({"x": np.zeros((2, 3), np.float32), "name": ["a", "b"]})
    assert list(tmp_path.iterdir()) == []
