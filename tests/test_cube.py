import numpy as np
import pytest
import xarray as xr

from synthetic import latlon_cube
from xrimpute import cube


def test_dataarray_round_trip_keeps_dims_coords_attrs_with_shuffled_order():
    da = latlon_cube()["t2m"].transpose("lon", "time", "lat")
    values, layout = cube.to_array(da)
    assert values.shape == (1, 1, 8, 10, 12)
    xr.testing.assert_identical(cube.from_array(values, da, layout), da)


def test_dataset_round_trip_keeps_static_variables_and_attrs():
    ds = latlon_cube()
    ds["sp"] = ds["sp"].transpose("lat", "time", "lon")
    values, layout = cube.to_array(ds)
    assert layout.variables == ["t2m", "sp"] and "lsm" not in layout.variables
    assert values.shape == (1, 2, 8, 10, 12)
    xr.testing.assert_identical(cube.from_array(values, ds, layout), ds)


def test_extra_dims_become_channels_and_sample_dim_is_a_batch():
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"t": (("level", "sample", "lat", "time", "lon"), rng.random((3, 2, 5, 4, 6)).astype("f4"))},
        coords={"level": [500, 700, 850], "lat": np.linspace(0, 10, 5), "lon": np.linspace(0, 10, 6)},
    )
    values, layout = cube.to_array(ds)
    assert values.shape == (2, 3, 4, 5, 6)
    assert layout.channels == ["t[level=500]", "t[level=700]", "t[level=850]"]
    np.testing.assert_array_equal(values[1, 2, 3], ds["t"].isel(level=2, sample=1, time=3).values)
    xr.testing.assert_identical(cube.from_array(values, ds, layout), ds)


def test_cf_attributes_find_axes_whatever_the_names():
    da = xr.DataArray(np.zeros((2, 3, 4), "f4"), dims=("a", "b", "c"),
                      coords={"a": ("a", [0, 1], {"axis": "T"}),
                              "b": ("b", [1.0, 2, 3], {"standard_name": "latitude", "units": "degrees_north"}),
                              "c": ("c", [1.0, 2, 3, 4], {"standard_name": "longitude", "units": "degrees_east"})})
    assert cube.find_axes(da).core == ("a", "b", "c")


def test_missing_axis_error_names_the_dims_seen():
    da = xr.DataArray(np.zeros((2, 3, 4)), dims=("time", "row", "col"))
    with pytest.raises(cube.CubeError, match=r"latitude|lat.*\('time', 'row', 'col'\)"):
        cube.find_axes(da)


def test_non_monotonic_coordinate_is_refused_with_a_fix():
    da = latlon_cube()["t2m"].isel(lat=[0, 2, 1, 3])
    with pytest.raises(cube.CubeError, match="sortby"):
        cube.to_array(da)


def test_integer_data_is_cast_with_a_warning():
    da = (latlon_cube()["t2m"] * 10).astype("int32")
    with pytest.warns(UserWarning, match="cast to float32"):
        values, _ = cube.to_array(da)
    assert values.dtype == np.float32


def test_all_nan_and_empty_channel_errors():
    ds = latlon_cube()[["t2m", "sp"]]
    values, layout = cube.to_array(ds * np.nan)
    with pytest.raises(cube.CubeError, match="all NaN"):
        cube.check_observed(values, layout)
    ds["sp"] = ds["sp"] * np.nan
    values, layout = cube.to_array(ds)
    with pytest.raises(cube.CubeError, match=r"\['sp'\] have no observed value"):
        cube.check_observed(values, layout)
