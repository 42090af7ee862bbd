"""Bad and unusual input, one case per row: a clear error of the package's own class, a warning, or the right result.

The rows follow issue 15 (reliability). Errors are matched by their exact
class and a fragment of the message that names the problem; every class is
an :class:`xrimpute.errors.XrimputeError`.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from distributed import Client, LocalCluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xrimpute
from synthetic import latlon_cube
from samples import ERA5_SAMPLE, needs_era5
from test_datasets_era5 import server  # noqa: F401  (the loopback data host fixture)
from xrimpute import arguments, cube, masks, robust, samplers
from xrimpute.datasets import advection, generated
from xrimpute.datasets.era5 import SAMPLE_FILE, era5_sample
from xrimpute.errors import (ArgumentError, ArgumentTypeError, DataWarning, ModelFileError, NonFiniteLossError,
                             WorkFailedError, XrimputeError)
from xrimpute.model import ModelMismatch
from xrimpute.reconstruct import ResumeError
from xrimpute.training import CheckpointMismatch


def record_warnings(call, *args, **kwargs):
    """``(result, [messages of DataWarnings])``: every DataWarning ``call`` gives, none filtered out."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = call(*args, **kwargs)
    return result, [str(w.message) for w in seen if issubclass(w.category, DataWarning)]


# -- numeric arguments ----------------------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (dict(K=0), ArgumentError, "K must be >= 1, got 0"),
    (dict(K=-3), ArgumentError, "K must be >= 1, got -3"),
    (dict(K=2.5), ArgumentTypeError, "K must be a whole number"),
    (dict(K=True), ArgumentTypeError, "K must be a whole number"),
    (dict(steps=0), ArgumentError, "steps must be >= 1, got 0"),
    (dict(steps=-5), ArgumentError, "steps must be >= 1, got -5"),
    (dict(window=0), ArgumentError, "window must be >= 1"),
    (dict(batch_size=0), ArgumentError, "batch_size must be >= 1"),
    (dict(stride=0), ArgumentError, "stride must be >= 1"),
    (dict(tile=(0, 0)), ArgumentError, "tile sizes must be >= 1"),
    (dict(tile=64), ArgumentTypeError, "tile must be a pair"),
    (dict(seed=-1), ArgumentError, "seed must be >= 0"),
    (dict(seed=2**64), ArgumentError, "seed must be below 2**63"),
    (dict(n=0), ArgumentError, "n must be >= 1"),
    (dict(observed_rate=5), ArgumentError, "observed_rate is a share of observed cells and must lie in (0, 1]"),
    (dict(observed_rate=-1), ArgumentError, "must lie in (0, 1], got -1"),
    (dict(observed_rate=0), ArgumentError, "must lie in (0, 1], got 0"),
    (dict(max_time=0), ArgumentError, "max_time must be > 0"),
    (dict(max_time=float("nan")), ArgumentError, "max_time must be finite"),
    (dict(workers=0), ArgumentError, "workers must be >= 1"),
    (dict(lr="fast"), ArgumentTypeError, "lr must be a number"),
    (dict(val_fraction=1.0), ArgumentError, "val_fraction must lie in [0, 1)"),
    (dict(patience=-1), ArgumentError, "patience must be >= 0"),
]


@pytest.mark.parametrize(("given", "error", "fragment"), BAD_ARGUMENTS, ids=lambda v: repr(v)[:40])
def test_argument_check_refuses_the_value_and_names_it(given, error, fragment):
    with pytest.raises(error) as info:
        arguments.check(**given)
    assert fragment in str(info.value)
    assert isinstance(info.value, XrimputeError)


def test_argument_check_passes_usual_values_and_numpy_integers():
    arguments.check(K=np.int64(10), steps=2000, window=3, batch_size=16, stride=1, tile=(64, 64), seed=0, n=16,
                    observed_rate=0.3, max_time=60.0, workers=2, lr=2e-3, val_fraction=0.05, overlap=0,
                    patience=0)
    arguments.check(tile=None, observed_rate=None, max_time=None, overlap=None)


def test_stride_beyond_the_window_would_leave_steps_unfilled():
    arguments.check_stride(3, 3)
    with pytest.raises(ArgumentError, match="stride=4 is larger than the model's window of 3 steps: 1 step"):
        arguments.check_stride(4, 3)


@pytest.mark.parametrize(("device", "fragment"), [
    ("tpu", "device='tpu' is not a torch device"),
    ("xla", "xrimpute runs on 'cpu', 'cuda' or 'mps'"),
    pytest.param("cuda", "this torch has no usable CUDA GPU", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="a GPU is there")),
    pytest.param("cuda:99", "CUDA device(s) are visible", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a GPU")),
])
def test_device_that_is_not_here_is_refused_before_use(device, fragment):
    with pytest.raises(ArgumentError) as info:
        arguments.check_device(device)
    assert fragment in str(info.value)


def test_device_check_passes_cpu_and_auto():
    assert arguments.check_device("cpu") == torch.device("cpu")
    assert arguments.check_device("auto") == "auto"


def test_huge_K_is_refused_from_a_memory_estimate_before_allocating():
    shape = dict(channels=1, window=3, rows=16, cols=16, width=16)
    arguments.check_memory(10, 8, device="cpu", **shape)
    with pytest.raises(ArgumentError, match=r"K=1000000000 contexts .* need at least .* GiB, more than"):
        arguments.check_memory(10**9, 8, device="cpu", **shape)


# -- values that are not observations -------------------------------------------------------------------------------


def cube_with(variable: str = "t2m", dtype: str = "f4", **cells) -> xr.Dataset:
    """The test cube with some cells of ``variable`` set: ``cells`` maps a label to ``((t, y, x), value)``."""
    ds = latlon_cube()
    ds[variable] = ds[variable].astype(dtype)
    for (t, y, x), value in cells.values():
        ds[variable][t, y, x] = value
    return ds


UNUSABLE = [  # (cube, kind named in the warning, cells that must become gaps)
    (cube_with(a=((0, 0, 0), np.inf), b=((1, 2, 3), -np.inf)), "2 infinite", [(0, 0, 0), (1, 2, 3)]),
    (cube_with(dtype="f8", a=((0, 1, 1), 1e300)), "1 beyond the float32 range", [(0, 1, 1)]),
    (cube_with(a=((2, 2, 2), 1e30)), "1 at fill-value magnitude", [(2, 2, 2)]),
    (cube_with(a=((2, 2, 2), 9.96921e36), b=((3, 3, 3), -9.96921e36)), "2 at fill-value magnitude",
     [(2, 2, 2), (3, 3, 3)]),
]


@pytest.mark.parametrize(("ds", "kind", "cells"), UNUSABLE, ids=["inf", "beyond-float32", "1e30", "netcdf-fill"])
def test_non_finite_and_fill_values_become_gaps_with_one_warning_giving_their_count(ds, kind, cells):
    (values, layout), messages = record_warnings(cube.to_array, ds)
    assert len(messages) == 1 and kind in messages[0] and "'t2m'" in messages[0]
    t2m = values[0, layout.variables.index("t2m")]
    assert all(np.isnan(t2m[c]) for c in cells)
    assert np.isfinite(values).sum() == values.size - len(cells)


def test_undecoded_fill_value_attribute_marks_gaps_in_integer_data():
    ds = latlon_cube()[["t2m"]]
    packed = (ds["t2m"] * 10).astype("int16")
    packed[0, :2, :2] = -32767
    packed.attrs["_FillValue"] = -32767  # as a file opened with mask_and_scale=False has it
    (values, _), messages = record_warnings(cube.to_array, packed.to_dataset())
    assert any("4 equal to the _FillValue / missing_value attribute" in m for m in messages)
    assert np.isnan(values[0, 0, 0, :2, :2]).all() and np.isfinite(values).sum() == values.size - 4


def test_a_cube_of_netcdf_default_fill_values_has_nothing_observed():
    ds = latlon_cube()[["t2m"]]
    ds["t2m"][:] = np.float32(9.96921e36)
    (values, layout), messages = record_warnings(cube.to_array, ds)
    assert f"{ds['t2m'].size} at fill-value magnitude" in messages[0]
    with pytest.raises(cube.CubeError, match="all NaN"):
        cube.check_observed(values, layout)


def test_dask_input_masks_non_finite_values_lazily():
    ds = cube_with(a=((0, 0, 0), np.inf), b=((1, 0, 0), 9.96921e36)).chunk({"time": 2})
    values, _ = cube.to_array(ds, lazy=True)
    assert not isinstance(values, np.ndarray)
    assert np.isnan(values[0, 0, :2, 0, 0].compute()).all()


def test_filled_output_replaces_infinite_input_and_keeps_observations_bit_for_bit():
    ds = cube_with(dtype="f8", a=((0, 0, 0), np.inf))
    ds["t2m"][1, 0, 0] = np.nan
    values, layout = record_warnings(cube.to_array, ds)[0]
    fills = cube.from_array(np.where(np.isnan(values), -1.0, values), ds, layout)
    out = cube.merge_filled(ds, fills, layout)
    assert float(out["t2m"][0, 0, 0]) == -1.0 and float(out["t2m"][1, 0, 0]) == -1.0
    kept = np.isfinite(ds["t2m"].values)
    np.testing.assert_array_equal(out["t2m"].values[kept], ds["t2m"].values[kept])
    assert out["t2m"].dtype == np.float64 and out["t2m"].attrs == ds["t2m"].attrs
    xr.testing.assert_identical(out["lsm"], ds["lsm"])


def test_filled_output_of_a_dataarray_keeps_its_name_and_stays_lazy_for_dask():
    da = latlon_cube()["t2m"].chunk({"time": 4})
    values, layout = cube.to_array(da, lazy=True)
    out = cube.merge_filled(da, cube.from_array(np.zeros(values.shape, np.float32), da, layout), layout)
    assert out.name == "t2m" and out.chunks is not None
    xr.testing.assert_identical(out.compute(), da.compute())


# -- normalisation statistics ----------------------------------------------------------------------------------------


def test_one_huge_outlier_is_left_out_of_the_statistics():
    values = np.random.default_rng(0).normal(280, 5, 3072)
    values[17] = 1e20
    keep = robust.inliers(values)
    assert not keep[17] and keep.sum() == values.size - 1
    assert 4 < values[keep].std() < 6


def test_gaussian_and_mostly_zero_fields_keep_every_value_in_the_statistics():
    rng = np.random.default_rng(1)
    assert robust.inliers(rng.normal(0, 1, 100_000)).all()
    rain = np.where(rng.random(10_000) < 0.9, 0.0, rng.exponential(2e-3, 10_000))  # median and MAD are 0
    assert robust.inliers(rain).all()
    assert robust.inliers(np.random.default_rng(2).exponential(1.0, 100_000)).all()
    assert robust.inliers(np.zeros(50)).all() and robust.fence(np.array([])) == (-np.inf, np.inf)


# -- time axis -------------------------------------------------------------------------------------------------------


def test_duplicated_time_stamps_are_warned_with_the_fix():
    ds = latlon_cube().isel(time=[0, 1, 2, 2, 3, 4])
    _, messages = record_warnings(cube.layout_of, ds)
    assert len(messages) == 1 and "1 time stamp(s) along 'time' are duplicated" in messages[0]
    assert "drop_duplicates('time')" in messages[0]


def test_irregular_time_steps_are_warned():
    ds = latlon_cube().isel(time=[0, 1, 2, 4, 5, 6, 7])  # one step missing
    _, messages = record_warnings(cube.layout_of, ds)
    assert len(messages) == 1 and "unevenly spaced: 1 of 6 steps" in messages[0]


@pytest.mark.parametrize("times", [
    pd.date_range("2000-01-01", periods=8, freq="MS"),  # 28 to 31 days
    pd.date_range("2000-01-01", periods=8, freq="YS"),  # 365 and 366 days
    xr.date_range("2000-01-01", periods=8, freq="D", calendar="noleap", use_cftime=True),
    xr.date_range("2000-01-01", periods=8, freq="MS", calendar="360_day", use_cftime=True),
], ids=["months", "years", "cftime-noleap-days", "cftime-360day-months"])
def test_calendar_months_years_and_cftime_axes_count_as_regular(times):
    ds = latlon_cube().assign_coords(time=times)
    _, messages = record_warnings(cube.layout_of, ds)
    assert messages == []


# -- Dataset variables that are not modelled -----------------------------------------------------------------------


def test_variable_on_another_grid_is_named_as_passed_through_with_the_reason():
    ds = latlon_cube()
    ds["sst"] = (("time", "lat2", "lon2"), np.zeros((8, 3, 4), "f4"))
    layout, messages = record_warnings(cube.layout_of, ds)
    assert layout.variables == ["t2m", "sp"] and set(layout.passed) == {"lsm", "sst"}
    assert len(messages) == 1
    assert "modelling ['t2m', 'sp']" in messages[0] and "'sst' lacks the dim(s) ['lat', 'lon']" in messages[0]
    assert "lsm" not in messages[0]  # a static field is plainly not a cube: no need to say so


def test_a_coordinates_cf_bounds_pass_through_without_a_warning():
    ds = latlon_cube()
    ds["time_bnds"] = (("time", "bnds"), np.stack([ds.time.values, ds.time.values + np.timedelta64(1, "D")], 1))
    ds.time.attrs["bounds"] = "time_bnds"
    layout, messages = record_warnings(cube.layout_of, ds)
    assert messages == [] and "time_bnds" in layout.passed
    del ds.time.attrs["bounds"]  # the same variable, no longer a coordinate's bounds: it looks like data again
    assert len(record_warnings(cube.layout_of, ds)[1]) == 1


def test_static_variables_alone_pass_through_without_a_warning():
    layout, messages = record_warnings(cube.layout_of, latlon_cube())
    assert messages == [] and layout.passed == {"lsm": "lacks the dim(s) ['time'] (has ('lat', 'lon'))"}


# -- spread outputs -------------------------------------------------------------------------------------------------


def test_spread_variables_get_their_own_cf_metadata_and_are_linked_from_the_parent():
    ds = latlon_cube()
    ds["t2m"].attrs.update(standard_name="air_temperature", cell_methods="time: point")
    values, layout = cube.to_array(ds)
    spread = cube.from_array(values, ds, layout, suffix="_std")
    attrs = spread["t2m_std"].attrs
    assert "standard_name" not in attrs and attrs["units"] == "K"
    assert attrs["long_name"] == "ensemble spread of 2 m temperature"
    assert attrs["cell_methods"] == "time: point realization: standard_deviation"
    both = cube.with_spread(ds, spread, layout)
    assert both["t2m"].attrs["ancillary_variables"] == "t2m_std" and both["sp"].attrs["ancillary_variables"] == "sp_std"
    assert both.cf["air_temperature"].name == "t2m"  # one candidate only


def test_spread_name_already_taken_is_refused_before_computing():
    ds = latlon_cube()
    ds["t2m_std"] = ds["t2m"]
    layout = record_warnings(cube.layout_of, ds[["t2m", "sp"]])[0]
    with pytest.raises(cube.CubeError, match=r"already has \['t2m_std'\]"):
        cube.check_spread_names(ds, layout)


# -- sample-data cache -----------------------------------------------------------------------------------------------


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_generated_cache_files_get_the_umask_default_permissions(umask_022):
    advection("tiny")
    path = generated.cache_path("advection", "tiny", 0)
    assert path.stat().st_mode & 0o777 == 0o644
    assert Path(str(path) + ".sha256").stat().st_mode & 0o777 == 0o644
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left


@needs_era5
def test_era5_sample_cache_files_get_the_umask_default_permissions(server, umask_022):  # noqa: F811
    shutil.copy(ERA5_SAMPLE, server.root / SAMPLE_FILE)
    era5_sample(progressbar=False)
    for path in (server.cache / SAMPLE_FILE, (server.cache / SAMPLE_FILE).with_suffix(".nc")):
        assert path.stat().st_mode & 0o777 == 0o644, path


@needs_era5
def test_corrupt_grib_in_the_cache_is_removed_when_no_good_copy_comes(server):  # noqa: F811
    corrupted = bytearray(ERA5_SAMPLE.read_bytes())
    corrupted[1000:1010] = b"\x00" * 10
    server.cache.mkdir()
    (server.cache / SAMPLE_FILE).write_bytes(bytes(corrupted))  # a cache spoiled earlier
    (server.root / SAMPLE_FILE).write_bytes(bytes(corrupted))  # and a mirror serving the same bad file
    with pytest.raises(ValueError, match="nothing was kept in the cache"):
        era5_sample(progressbar=False)
    assert not list(server.cache.iterdir())


# -- random small cubes: fit + impute either refuse with a package error or fill every gap ----------------------------

CALENDARS = ["numpy", "noleap", "360_day", "integer"]
FILL16 = -32767


@st.composite
def small_cubes(draw):
    """Small DataArrays: random dim order, an optional sample dim, dtype (integers with an undecoded _FillValue),
    gaps, non-finite and fill values, and the time axis's calendar."""
    t, h, w = draw(st.integers(2, 6)), draw(st.integers(3, 7)), draw(st.integers(3, 7))
    samples = draw(st.sampled_from([0, 2]))
    dtype = draw(st.sampled_from(["float32", "float64", "float16", "int16"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = ((samples,) if samples else ()) + (t, h, w)
    values = 280 + 5 * rng.standard_normal(shape)
    values[rng.random(shape) < draw(st.floats(0.0, 0.95))] = np.nan
    for bad in draw(st.lists(st.sampled_from([np.inf, -np.inf, 9.96921e36, 1e30, np.nan]), max_size=4)):
        values[tuple(rng.integers(0, n) for n in shape)] = bad
    attrs = {"units": "K"}
    if dtype == "int16":  # as a packed file opened without decoding: gaps hold the fill value
        values = np.where(np.isfinite(values) & (np.abs(values) < 1e4), values, FILL16).astype(dtype)
        attrs["_FillValue"] = FILL16
    calendar = draw(st.sampled_from(CALENDARS))
    if calendar == "numpy":
        times = pd.date_range("2019-03-01", periods=t, freq="6h")
    elif calendar == "integer":
        times = np.arange(t)
    else:
        times = xr.date_range("2000-02-27", periods=t, freq="D", calendar=calendar, use_cftime=True)
    dims = (("sample",) if samples else ()) + ("time", "lat", "lon")
    with np.errstate(over="ignore"):  # 1e30 in float16 is inf: one more non-finite value
        values = values.astype(dtype)
    da = xr.DataArray(values, dims=dims, name="t2m", attrs=attrs,
                      coords={"time": times, "lat": np.linspace(40, 50, h), "lon": np.linspace(0, 12, w)})
    return da.transpose(*draw(st.permutations(dims)))


TINY_FIT = dict(window=2, steps=2, batch_size=2, preset="tiny", progress=False, verbose=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_cubes())
def test_fit_and_impute_refuse_with_a_package_error_or_fill_every_gap_and_keep_observations(one_torch_thread, da):
    before = da.copy(deep=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warnings themselves are tested above
        try:
            model = xrimpute.fit(da, **TINY_FIT)
            filled = model.impute(da, K=2, progress=False, fill_never_observed=True)
        except XrimputeError:
            xr.testing.assert_identical(da, before)
            return
    xr.testing.assert_identical(da, before)  # the input is never modified
    assert filled.dims == da.dims and filled.shape == da.shape
    assert np.isfinite(filled.values).all()
    raw = da.values.astype(np.float64)
    observed = np.isfinite(raw) & (np.abs(raw) < cube.FILL_MAGNITUDE) & (raw != da.attrs.get("_FillValue", np.nan))
    np.testing.assert_array_equal(filled.values[observed], da.values[observed])


# -- fit, impute, sample, reconstruct: every bad argument refused before any work -----------------------------------

SMALL_FIT = dict(steps=3, batch_size=2, progress=False, verbose=False, val_fraction=0.0)


@pytest.fixture(scope="module")
def small(tmp_path_factory, one_torch_thread):
    """A gappy cube, a model of it (3 training steps: only the checks matter) and the model's file."""
    root = tmp_path_factory.mktemp("bad-input")
    data = latlon_cube()[["t2m", "sp"]]
    data = data.where(np.random.default_rng(0).random(data["t2m"].shape) < 0.7)
    model = xrimpute.fit(data, mask="pixel", **SMALL_FIT)
    return data, model, model.save(root / "model.xri")


FIT_ARGUMENTS = [
    (dict(steps=0), ArgumentError, "steps must be >= 1, got 0"),
    (dict(steps=-5), ArgumentError, "steps must be >= 1, got -5"),
    (dict(window=0), ArgumentError, "window must be >= 1"),
    (dict(batch_size=0), ArgumentError, "batch_size must be >= 1"),
    (dict(tile=(0, 0)), ArgumentError, "tile sizes must be >= 1"),
    (dict(seed=-1), ArgumentError, "seed must be >= 0"),
    (dict(max_time=-1.0), ArgumentError, "max_time must be > 0"),
    (dict(lr=0.0), ArgumentError, "lr must be > 0"),
    (dict(device="tpu"), ArgumentError, "device='tpu' is not a torch device"),
    (dict(preset="narow"), ArgumentError, "unknown network preset 'narow'; choose 'auto'"),
    pytest.param(dict(device="cuda"), ArgumentError, "no usable CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")),
]


@pytest.mark.parametrize(("given", "error", "fragment"), FIT_ARGUMENTS, ids=lambda v: repr(v)[:40])
def test_fit_refuses_a_bad_argument_before_training(small, given, error, fragment):
    data = small[0]
    with pytest.raises(error) as info:
        xrimpute.fit(data, mask="pixel", **{**SMALL_FIT, **given})
    assert fragment in str(info.value)


def test_a_period_attribute_that_is_not_a_number_is_refused_before_training(small):
    data = small[0]
    lon = cube.find_axes(data).lon
    with pytest.raises(cube.CubeError, match="'period' attribute is '2 pi', not a number"):
        xrimpute.fit(data.assign_coords({lon: data[lon].assign_attrs(period="2 pi")}), mask="pixel", **SMALL_FIT)


IMPUTE_ARGUMENTS = [
    (dict(K=0), ArgumentError, "K must be >= 1, got 0"),
    (dict(K=-3), ArgumentError, "K must be >= 1, got -3"),
    (dict(K=2.5), ArgumentTypeError, "K must be a whole number"),
    (dict(K=10**9), ArgumentError, "K=1000000000 contexts"),
    (dict(stride=9), ArgumentError, "stride=9 is larger than the model's window of"),  # the window is at most 8
    (dict(stride=0), ArgumentError, "stride must be >= 1"),
    (dict(seed=-1), ArgumentError, "seed must be >= 0"),
    (dict(batch_size=0), ArgumentError, "batch_size must be >= 1"),
    (dict(observed_rate=5), ArgumentError, "observed_rate is a share of observed cells"),
    (dict(observed_rate=-1), ArgumentError, "observed_rate is a share of observed cells"),
    (dict(overlap=-1), ArgumentError, "overlap must be >= 0"),
    (dict(device="tpu"), ArgumentError, "device='tpu' is not a torch device"),
]


@pytest.mark.parametrize(("given", "error", "fragment"), IMPUTE_ARGUMENTS, ids=lambda v: repr(v)[:40])
def test_impute_refuses_a_bad_argument_before_imputing(small, given, error, fragment):
    data, model, _ = small
    with pytest.raises(error) as info:
        model.impute(data, **{"progress": False, **given})
    assert fragment in str(info.value)


@pytest.mark.parametrize(("given", "fragment"), [(dict(n=0), "n must be >= 1"), (dict(steps=0), "steps must be >= 1"),
                                                (dict(K=0), "K must be >= 1"), (dict(eta=2.0), "eta must lie in [0, 1]")])
def test_sample_refuses_a_bad_argument_before_sampling(small, given, fragment):
    data, model, _ = small
    with pytest.raises(ArgumentError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        model.sample(data, **{"progress": False, **given})


def test_reconstruct_refuses_K_0_before_writing_anything(small, tmp_path):
    data, _, path = small
    data.chunk(time=4).to_zarr(tmp_path / "source.zarr", consolidated=False)
    with pytest.raises(ArgumentError, match="K must be >= 1, got 0"):
        xrimpute.reconstruct(tmp_path / "source.zarr", path, tmp_path / "target.zarr", K=0, progress=False)
    assert not (tmp_path / "target.zarr").exists()


def test_impute_with_spread_refuses_a_taken_name_before_computing(small):
    data, model, _ = small
    with pytest.raises(cube.CubeError, match=r"already has \['t2m_std'\]"):
        model.impute(data.assign(t2m_std=data["t2m"].isel(time=0, drop=True)), K=2, return_std=True, progress=False)


def test_impute_sample_and_reconstruct_refuse_fewer_steps_than_the_window_before_any_work(small, tmp_path):
    data, model, path = small
    short = data.isel(time=slice(0, model.window - 1))
    fragment = f"{model.window - 1} time steps, fewer than this model's window of {model.window}"
    for run in (model.impute, model.sample):
        with pytest.raises(ModelMismatch, match=fragment):
            run(short, progress=False)
    short.to_zarr(tmp_path / "short.zarr", consolidated=False)
    with pytest.raises(ModelMismatch, match=fragment):
        xrimpute.reconstruct(tmp_path / "short.zarr", path, tmp_path / "target.zarr", progress=False)
    assert not (tmp_path / "target.zarr").exists()


# -- values that are not observations, end to end -------------------------------------------------------------------


def test_infinite_value_at_impute_time_is_filled_not_kept(small):
    data, model, _ = small
    spoiled = data.copy(deep=True)
    spoiled["t2m"][0, 0, 0] = np.inf
    filled = record_warnings(model.impute, spoiled, K=2, progress=False)[0]
    assert np.isfinite(filled["t2m"].values).all()
    assert 250 < float(filled["t2m"][0, 0, 0]) < 320


def test_fit_on_a_cube_of_netcdf_fill_values_says_nothing_is_observed():
    ds = latlon_cube()[["t2m"]]
    ds["t2m"][:] = np.float32(9.96921e36)
    with pytest.raises(cube.CubeError, match="all NaN"):
        record_warnings(xrimpute.fit, ds, mask="pixel", **SMALL_FIT)


def test_one_outlier_does_not_blow_up_the_normalisation(one_torch_thread):
    ds = latlon_cube()[["t2m"]]
    ds["t2m"][3, 4, 5] = 1e6  # a gross error well below fill magnitude
    model, messages = record_warnings(xrimpute.fit, ds, mask="pixel", **SMALL_FIT)
    assert 3 < float(model.std[0]) < 10  # the spread of the 280 K field, not of the outlier
    assert any("1 value(s) of 't2m'" in m and "left out of the normalisation" in m for m in messages)


def test_non_finite_loss_stops_the_fit_with_a_clear_error(one_torch_thread):
    ds = latlon_cube()[["t2m"]]
    ds["t2m"][:, 4, 5] = 1e25  # below fill magnitude, far beyond float32 once squared
    with pytest.raises(NonFiniteLossError, match="loss became non-finite at step"):
        record_warnings(xrimpute.fit, ds, mask="pixel", **{**SMALL_FIT, "steps": 5})


# -- model files and checkpoints --------------------------------------------------------------------------------------


class Payload:
    """What pickling this runs: a crafted model file must never get that far."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def rewritten(path: Path, target: Path, change) -> Path:
    """A copy of the model file at ``path`` with ``change(payload)`` applied to its contents."""
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, target)
    return target


def with_config(edit):
    def change(payload):
        config = json.loads(payload["config"])
        edit(config)
        payload["config"] = json.dumps(config)
    return change


def random_bytes(model: Path, target: Path) -> Path:
    target.write_bytes(np.random.default_rng(0).bytes(4096))
    return target


def empty(model: Path, target: Path) -> Path:
    target.write_bytes(b"")
    return target


BROKEN_FILES = {  # how to spoil a good model file, and what the error must say
    "random bytes": (random_bytes, "is not an xrimpute model file"),
    "empty": (empty, "is empty"),
    "no format_version": (lambda p, t: rewritten(p, t, lambda d: d.pop("format_version")), "format_version"),
    "text format_version": (lambda p, t: rewritten(p, t, lambda d: d.update(format_version="1")), "format_version"),
    "config without grid": (lambda p, t: rewritten(p, t, with_config(lambda c: c["info"].pop("grid"))), "grid"),
    "window not the network's": (lambda p, t: rewritten(p, t, with_config(lambda c: c["info"].update(window=9))),
                                 "says window 9"),  # the model's window is at most 8
    "NaN normalisation": (lambda p, t: rewritten(p, t, lambda d: d["std"].fill_(float("nan"))), "normalisation"),
}


@pytest.mark.parametrize("case", list(BROKEN_FILES))
def test_broken_model_file_is_refused_with_what_is_wrong(small, tmp_path, case):
    make, fragment = BROKEN_FILES[case]
    path = make(small[2], tmp_path / "broken.xri")
    with pytest.raises(ModelFileError) as info:
        xrimpute.load(path)
    assert fragment in str(info.value) and "weights_only=False" not in str(info.value)


def test_crafted_pickle_is_refused_without_running_its_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "xrimpute-model", "payload": Payload()}, tmp_path / "evil.xri")
    with pytest.raises(ModelFileError, match="is not an xrimpute model file"):
        xrimpute.load(tmp_path / "evil.xri")
    assert not (tmp_path / "pwned").exists()


def test_save_onto_a_directory_is_refused_and_leaves_nothing_behind(small, tmp_path):
    (tmp_path / "dir.xri").mkdir()
    with pytest.raises(ArgumentError, match="is a directory"):
        small[1].save(tmp_path / "dir.xri")
    assert [p.name for p in tmp_path.iterdir()] == ["dir.xri"] and not any((tmp_path / "dir.xri").iterdir())


def test_checkpoint_pointing_at_a_model_file_is_refused(small):
    data, _, path = small
    with pytest.raises(CheckpointMismatch, match="is a model file"):
        xrimpute.fit(data, mask="pixel", checkpoint=path, **SMALL_FIT)


def test_checkpoint_of_another_grid_is_refused(small, tmp_path):
    data = small[0]
    xrimpute.fit(data, mask="pixel", checkpoint=tmp_path / "state.pt", **SMALL_FIT)
    moved = data.assign_coords(lat=data["lat"] + 1.0)  # the same size, other coordinates
    with pytest.raises(CheckpointMismatch, match="was written for"):
        record_warnings(xrimpute.fit, moved, mask="pixel", checkpoint=tmp_path / "state.pt", **SMALL_FIT)
    smaller = data.isel(lat=slice(0, 8))
    with pytest.raises(CheckpointMismatch, match="was written for"):
        xrimpute.fit(smaller, mask="pixel", checkpoint=tmp_path / "state.pt", **SMALL_FIT)


def test_checkpoint_past_steps_is_refused(small, tmp_path):
    data = small[0]
    xrimpute.fit(data, mask="pixel", checkpoint=tmp_path / "state.pt", **{**SMALL_FIT, "steps": 6})
    with pytest.raises(CheckpointMismatch, match="at step 6, past steps=3"):
        xrimpute.fit(data, mask="pixel", checkpoint=tmp_path / "state.pt", **SMALL_FIT)


def fail_on_region_1(index):
    """Injected failure: region 1 stops the run before it is written."""
    if index == 1:
        raise RuntimeError("injected failure")


def test_reconstruct_refuses_to_resume_after_the_source_changed(small, tmp_path):
    data, _, path = small
    source, target = tmp_path / "source.zarr", tmp_path / "target.zarr"
    data.chunk(time=4).to_zarr(source, consolidated=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        with pytest.raises(WorkFailedError, match="1 of 2 regions failed"):
            xrimpute.reconstruct(source, path, target, client=client, K=2, progress=False,
                                 before_region=fail_on_region_1)
        (data + 1).chunk(time=4).to_zarr(source, mode="w", consolidated=False)
        with pytest.raises(ResumeError, match="the source has changed since the run"):
            xrimpute.reconstruct(source, path, target, client=client, K=2, progress=False)
        finished = xrimpute.reconstruct(source, path, target, client=client, K=2, progress=False, overwrite=True)
    observed = data["t2m"].notnull().values
    np.testing.assert_array_equal(finished["t2m"].values[observed], data["t2m"].values[observed] + 1)  # the new data


def test_learnability_warning_does_not_depend_on_dask_chunking():
    rng = np.random.default_rng(0)
    da = xr.DataArray(rng.normal(size=(12, 16, 16)).astype("f4"), dims=("time", "lat", "lon"), name="x",
                      coords={"lat": np.linspace(0, 10, 16), "lon": np.linspace(0, 10, 16)})
    da = da.where(rng.random(da.shape) < 0.5)
    shares = []
    for chunked in (da, da.chunk(time=5), da.chunk(time=2)):
        stats = samplers.statistics(cube.to_array(chunked, lazy=True)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # the false alarm was a UserWarning
            shares.append(masks.warn_if_unlearnable(masks.Pixel(), stats.observed, 3).zero_share)
    assert shares == [shares[0]] * 3 and shares[0] < 0.01


@pytest.mark.parametrize("name", ["baselines", "metrics", "bench", "io", "datasets", "masks"])
def test_submodules_the_docs_use_are_reachable_from_the_package(name):
    assert getattr(xrimpute, name).__name__ == f"xrimpute.{name}"


def test_accessor_takes_the_path_of_a_saved_model(small):
    data, model, path = small
    by_path = data.ctxdiff.impute(model=str(path), K=2, progress=False)
    xr.testing.assert_identical(by_path, model.impute(data, K=2, progress=False))
    with pytest.raises(ArgumentError, match="no model: call obj.ctxdiff.fit"):
        data.ctxdiff.impute(K=2)


def test_every_error_class_of_the_package_derives_from_xrimpute_error():
    from xrimpute.cube import CubeError
    from xrimpute.engine import ModelMismatch
    from xrimpute.masks import MaskSpecError
    from xrimpute.reconstruct import TargetError

    for error in (CubeError, ModelMismatch, MaskSpecError, TargetError, ResumeError, CheckpointMismatch,
                  ArgumentError, ArgumentTypeError, ModelFileError, NonFiniteLossError, WorkFailedError):
        assert issubclass(error, XrimputeError), error
    with pytest.raises(XrimputeError, match="unknown mask 'blox'"):
        xrimpute.fit(latlon_cube()[["t2m"]], mask="blox", **SMALL_FIT)


def test_no_module_raises_a_bare_builtin_error():
    """Every ``raise`` of a bad value or type names a class of the package (still a ValueError or TypeError to
    ``except``), so that ``except XrimputeError`` catches all that xrimpute refuses."""
    import ast

    builtins = {"ValueError", "TypeError", "KeyError", "IndexError", "RuntimeError", "Exception"}
    bare = []
    for path in sorted(Path(xrimpute.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                called = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(called, ast.Name) and called.id in builtins:
                    bare.append(f"{path.name}:{node.lineno} {called.id}")
    assert not bare, bare


def test_observe_names_the_options_of_each_kind():
    cube_ = latlon_cube()[["t2m"]]
    with pytest.raises(ArgumentTypeError, match=r"unknown option\(s\) \['rate'\] for kind 'clouds'"):
        xrimpute.observe(cube_, "clouds", rate=0.3)
    with pytest.raises(ArgumentError, match="unknown observing system kind='cloud'"):
        xrimpute.observe(cube_, "cloud", coverage=0.3)
