"""Bad and unusual input, one case per row: a clear error of the package's own class, a warning, or the right result.

The rows follow issue 15 (reliability). Errors are matched by their exact
class and a fragment of the message that names the problem; every class is
an :class:`xrimpute.errors.XrimputeError`.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from synthetic import latlon_cube
from samples import ERA5_SAMPLE, needs_era5
from test_datasets_era5 import server  # noqa: F401  (the loopback data host fixture)
from xrimpute import arguments, cube, robust
from xrimpute.datasets import advection, generated
from xrimpute.datasets.era5 import SAMPLE_FILE, era5_sample
from xrimpute.errors import ArgumentError, ArgumentTypeError, DataWarning, XrimputeError


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
]


@pytest.mark.parametrize(("given", "error", "fragment"), BAD_ARGUMENTS, ids=lambda v: repr(v)[:40])
def test_argument_check_refuses_the_value_and_names_it(given, error, fragment):
    with pytest.raises(error) as info:
        arguments.check(**given)
    assert fragment in str(info.value)
    assert isinstance(info.value, XrimputeError)


def test_argument_check_passes_usual_values_and_numpy_integers():
    arguments.check(K=np.int64(10), steps=2000, window=3, batch_size=16, stride=1, tile=(64, 64), seed=0, n=16,
                    observed_rate=0.3, max_time=60.0, workers=2, lr=2e-3, val_fraction=0.05, overlap=0)
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
