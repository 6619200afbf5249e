"""The dynamics plugin of ``depthflow analyze`` on a tiny ViT: variables, attrs, NetCDF, figures."""

import types

import numpy as np
import pytest
import torch
import xarray as xr

from depthflow.dynamics.analysis import DynamicsAnalysis, DynamicsConfig
from depthflow.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = ["cls", "register", "register", "patch", "patch", "patch", "patch"]


def _ctx(model):
    return types.SimpleNamespace(
        loaded=types.SimpleNamespace(model=model), source=types.SimpleNamespace(
            class_names=[str(i) for i in range(10)]), preprocessing=None,
        device=torch.device("cpu"), dtype="float32", batch_size=3, progress=False, seed=0,
        token_kinds=KINDS, kinds=["cls", "register", "patch"], groups=None)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from _models import tiny_vit

    model = tiny_vit(0, depth=3, embed_dim=16)          # float32, as streamed
    images = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        states = model.trajectory(images)                 # (5, 4, T=7, 16)
    config = DynamicsConfig(samples=4, k=3, lyapunov_steps=4, lyapunov_transient=2,
                            fixed_point_max_iter=5, basin_steps=10, basin_starts=2,
                            recovery_depths=(1,), recovery_angles=(0.1,), recovery_draws=1,
                            token_blocks=True, spectra_samples=2)
    plugin = DynamicsAnalysis(config)
    ctx = _ctx(model)
    for start in (0, 3):                                  # two streamed batches
        tb = types.SimpleNamespace(states=states[start:start + 3], logits=None,
                                   batch=types.SimpleNamespace(
                                       labels=torch.tensor([1, 2, 1, 3, 3])[start:start + 3]))
        plugin.update(tb, ctx)
    ds = plugin.finish(ctx)
    return plugin, ds, model, tmp_path_factory.mktemp("dyn")


def test_every_variable_is_labelled_and_prefixed(result):
    _, ds, model, _ = result
    assert ds.sizes["dyn_sample"] == 4
    for name, var in ds.data_vars.items():
        assert name.startswith("dyn_"), name
        assert "long_name" in var.attrs and "units" in var.attrs, name
    for name in ("dyn_eig_real", "dyn_eig_imag", "dyn_lyap_exponent_depth",
                 "dyn_lyap_frozen_exponent", "dyn_fp_status", "dyn_basin_fraction",
                 "dyn_recovery_ratio", "dyn_token_block_radius"):
        assert name in ds, name
    for name in ("dyn_lyap_status_depth", "dyn_basin_status", "dyn_eig_status"):
        assert "flag_values" in ds[name].attrs and "flag_meanings" in ds[name].attrs
    assert float(ds["dyn_basin_fraction"].sum()) == pytest.approx(1.0)
    # the real trajectory is an orbit of the sphere maps: injected angle at l0, finite after
    rec = ds["dyn_recovery_angle"].sel(depth=1)
    assert np.allclose(rec.values, 0.1, atol=1e-6)
    # the model is handed back as it came (dtype)
    assert next(model.parameters()).dtype == torch.float32


def test_netcdf_round_trip_and_figures(result):
    plugin, ds, _, tmp = result
    path = tmp / "dyn.nc"
    ds.to_netcdf(path)
    with xr.open_dataset(path) as back:
        xr.testing.assert_allclose(back["dyn_lyap_exponent_depth"],
                                   ds["dyn_lyap_exponent_depth"])
        for value in back.attrs.values():
            assert isinstance(value, (str, int, float, np.integer, np.floating))
    figs = plugin.plot(ds, tmp / "figs")
    assert {p.name for p in figs} == {"dynamics_spectra.png", "dynamics_exponents.png",
                                      "dynamics_basins.png", "dynamics_recovery.png"}
    assert all(p.stat().st_size > 1000 for p in figs)


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown dynamics analyses"):
        DynamicsConfig(analyses=("lyapunov", "chaos")).validate()
    with pytest.raises(ConfigError, match="samples"):
        DynamicsConfig(samples=0).validate()


def test_status_flags_are_cf_integer_attributes(tmp_path):
    from depthflow.dynamics.fixed_points import FixedPointStatus
    from depthflow.io.netcdf import write_dataset

    ds = xr.Dataset({"s": (("i",), np.array([0, 2], np.int8), {
        "long_name": "status", "units": "",
        "flag_values": np.array([int(s) for s in FixedPointStatus], np.int8),
        "flag_meanings": " ".join(s.name.lower() for s in FixedPointStatus)})})
    write_dataset(ds, tmp_path / "f.nc")
    with xr.open_dataset(tmp_path / "f.nc") as back:
        assert list(back["s"].attrs["flag_values"]) == [int(s) for s in FixedPointStatus]
        assert len(back["s"].attrs["flag_meanings"].split()) == len(FixedPointStatus)
