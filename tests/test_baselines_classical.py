import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xrimpute import baselines
from xrimpute.baselines import (
    METHODS,
    akima_array,
    dineof_array,
    fill,
    interpolate_array,
    ns_inpaint_array,
    telea_array,
    temporal_array,
)

CLASSICAL = ["interpolate", "akima", "telea", "ns_inpaint", "temporal", "dineof"]


def smooth_field(n_steps=12, height=16, width=20):
    t = np.arange(n_steps)[:, None, None]
    y, x = np.mgrid[0:height, 0:width]
    return np.sin(x / 5.0 + 0.2 * t) * np.cos(y / 6.0) + 0.3 * np.cos((x + y) / 7.0)


def with_gaps(field, rng, observed_fraction=0.6):
    """Random gaps, one cell never observed and one frame without any observation."""
    observed = rng.random(field.shape) < observed_fraction
    observed[..., 3, 4] = False
    observed[..., 5, :, :] = False
    return np.where(observed, field, np.nan)


@pytest.fixture
def cube():
    """Two variables with a sample dim and a shuffled dim order; sample 1 of ``chl`` is all NaN."""
    rng = np.random.default_rng(0)
    base = np.stack([with_gaps(smooth_field() + k, rng) for k in range(2)])  # (sample, t, lat, lon)
    chl = with_gaps(np.stack([2 * smooth_field() ** 2, smooth_field()]), rng)
    chl[1] = np.nan
    order = ("lon", "sample", "time", "lat")
    source = ("sample", "time", "lat", "lon")

    def var(data, units):
        return xr.DataArray(data, dims=source).transpose(*order).assign_attrs(units=units)

    return xr.Dataset(
        {"sst": var(base, "K"), "chl": var(chl.astype(np.float32), "mg m-3")},
        coords={
            "time": pd.date_range("2020-01-01", periods=12, freq="D"),
            "lat": np.linspace(-40, 40, 16),
            "lon": np.linspace(0, 95, 20),
            "sample": [10, 20],
        },
        attrs={"title": "test"},
    )


@pytest.mark.parametrize("method", CLASSICAL)
def test_fill_dataset_fills_every_gap_and_keeps_observations(cube, method):
    filled = fill(cube, method)
    assert list(filled.data_vars) == ["sst", "chl"] and filled.attrs == cube.attrs
    for name in ("sst", "chl"):
        before, after = cube[name], filled[name]
        assert after.dims == before.dims and after.dtype == before.dtype
        assert after.attrs == before.attrs
        xr.testing.assert_identical(after.coords.to_dataset(), before.coords.to_dataset())
        observed = before.notnull()
        np.testing.assert_array_equal(after.values[observed.values], before.values[observed.values])
    assert filled["sst"].notnull().all()
    # a field without a single observation has nothing to be filled from
    assert filled["chl"].sel(sample=10).notnull().all()
    assert filled["chl"].sel(sample=20).isnull().all()


@pytest.mark.parametrize("method", CLASSICAL)
def test_fill_dataarray_in_any_dim_order(method):
    rng = np.random.default_rng(1)
    data = xr.DataArray(with_gaps(smooth_field(), rng), dims=("time", "lat", "lon"), name="u")
    shuffled = data.transpose("lat", "time", "lon")
    filled = fill(shuffled, method)
    assert isinstance(filled, xr.DataArray) and filled.dims == ("lat", "time", "lon") and filled.name == "u"
    assert filled.notnull().all()
    expected = getattr(baselines, method)(data)
    xr.testing.assert_allclose(filled.transpose(*data.dims), expected)


def test_unknown_method_lists_the_known_ones(cube):
    with pytest.raises(ValueError, match="unknown gap-filling method 'splines'.*'dineof'.*'telea'"):
        fill(cube, "splines")


def test_registered_method_is_used_and_observations_are_kept(cube, monkeypatch):
    seen = {}

    def constant(values, times):
        seen["shape"], seen["times"] = values.shape, times
        return np.full_like(values, -1.0)

    monkeypatch.setitem(METHODS, "constant", constant)
    filled = fill(cube, "constant")
    assert seen["shape"] == (2, 2, 12, 16, 20)
    np.testing.assert_array_equal(seen["times"], np.arange(12) * 86400.0)
    gaps = cube["sst"].isnull()
    assert (filled["sst"].where(gaps) == -1).sum() == gaps.sum()
    xr.testing.assert_identical(filled["sst"].where(~gaps), cube["sst"])


def test_missing_opencv_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r'pip install "xrimpute\[classical\]"'):
        telea_array(np.zeros((2, 4, 4)))


def test_cores_accept_a_whole_cube_array():
    rng = np.random.default_rng(2)
    values = np.stack([with_gaps(smooth_field(), rng) for _ in range(6)]).reshape(2, 3, 12, 16, 20)
    for core in (interpolate_array, temporal_array, telea_array, ns_inpaint_array):
        filled = core(values)
        assert filled.shape == values.shape and not np.isnan(filled).any()
        np.testing.assert_array_equal(filled[1, 2], core(values[1, 2]))
    with pytest.raises(ValueError, match=r"\(T, H, W\) or \(N, C, T, H, W\)"):
        interpolate_array(values[0])


# ---------------------------------------------------------------- interpolate


def linear_field():
    """Linear in time at each cell, and linear in space in every frame."""
    y, x = np.mgrid[0:10, 0:12]
    offset, slope = 1.0 + 0.3 * x - 0.2 * y, 0.5 + 0.05 * x + 0.1 * y
    return lambda times: offset + slope * np.asarray(times, dtype=float)[:, None, None]


def test_interpolate_is_exact_on_a_field_linear_in_time_and_space():
    times = np.arange(15)
    field = linear_field()(times)
    rng = np.random.default_rng(3)
    observed = rng.random(field.shape) < 0.3
    observed[[0, -1]] = True  # both ends observed: no extrapolation
    observed[:, 4, 5] = observed[:, 6, 2] = False  # interior cells never observed
    filled = interpolate_array(np.where(observed, field, np.nan))
    np.testing.assert_allclose(filled, field, rtol=0, atol=1e-12)


@pytest.mark.parametrize("descending", [False, True])
def test_interpolate_uses_the_time_coordinate(descending):
    days = np.array([0, 1, 2, 7, 8, 20, 21, 22])  # irregular steps
    field = linear_field()(days)
    observed = np.zeros(field.shape, bool)
    observed[[0, 3, 7]] = True  # the linear fit needs the true spacing between these
    time = pd.Timestamp("2021-03-01") + pd.to_timedelta(days, "D")
    data = xr.DataArray(np.where(observed, field, np.nan), dims=("time", "lat", "lon"), coords={"time": time})
    if descending:
        data = data.isel(time=slice(None, None, -1))
    filled = baselines.interpolate(data).sortby("time")
    np.testing.assert_allclose(filled.values, field, rtol=0, atol=1e-5)  # the cube holds float32


def test_interpolate_extrapolates_with_the_nearest_observation():
    series = np.array([np.nan, np.nan, 2.0, np.nan, 4.0, np.nan])[:, None, None]
    np.testing.assert_array_equal(interpolate_array(series).ravel(), [2, 2, 2, 3, 4, 4])


# ---------------------------------------------------------------- akima


def test_akima_draws_scipys_spline_through_each_cell_and_the_nearest_beyond_the_ends():
    from scipy.interpolate import Akima1DInterpolator

    rng = np.random.default_rng(5)
    times = np.sort(rng.uniform(0, 50, 40))  # irregular steps
    field = np.sin(times / 3)[:, None, None] * rng.normal(size=(1, 4, 5)) + rng.normal(size=(40, 4, 5))
    observed = rng.random(field.shape) < rng.uniform(0.1, 0.9, (1, 4, 5))  # cells from sparse to dense
    observed[[0, -1], 0, 0] = False  # ends to extrapolate
    observed[:, 1, 1] = False
    observed[[7, 20], 1, 1] = True  # two observations: a straight line
    filled = akima_array(np.where(observed, field, np.nan), times=times)
    for i, j in np.ndindex(4, 5):
        steps = np.flatnonzero(observed[:, i, j])
        inner = slice(steps[0], steps[-1] + 1)
        if len(steps) >= 3:
            expected = Akima1DInterpolator(times[steps], field[steps, i, j])(times[inner])
        else:
            expected = np.interp(times[inner], times[steps], field[steps, i, j])
        np.testing.assert_allclose(filled[inner, i, j], expected, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(filled[: steps[0], i, j], field[steps[0], i, j])
        np.testing.assert_array_equal(filled[steps[-1] + 1 :, i, j], field[steps[-1], i, j])


def test_akima_follows_a_curve_that_straight_lines_cut_across():
    times = np.arange(48.0)
    daily = np.sin(2 * np.pi * times / 24)[:, None, None] * np.ones((1, 3, 3))
    observed = np.zeros(daily.shape, bool)
    observed[::3] = True  # every third hour, the last at hour 45
    values = np.where(observed, daily, np.nan)
    gaps = ~observed
    gaps[46:] = False  # beyond the last observation both take it
    error = {name: np.sqrt(np.mean((core(values) - daily)[gaps] ** 2)) for name, core in
             (("akima", akima_array), ("interpolate", interpolate_array))}
    assert error["akima"] < 0.5 * error["interpolate"], error  # measured 0.020 against 0.049


# ---------------------------------------------------------------- temporal


def test_temporal_takes_the_nearest_observation_in_time():
    field = np.full((7, 2, 3), np.nan)
    field[:, 0, 0] = [np.nan, 1, np.nan, np.nan, 4, np.nan, 6]
    field[:, 1, 2] = [7, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan]
    filled = temporal_array(field)
    # step 3 is nearer 4 than 1; step 5 ties between 4 and 6 and takes the earlier step
    np.testing.assert_array_equal(filled[:, 0, 0], [1, 1, 1, 4, 4, 4, 6])
    # never-observed cells take the series of the nearest observed cell
    np.testing.assert_array_equal(filled[:, 0, 1], filled[:, 0, 0])
    np.testing.assert_array_equal(filled[:, 1, 1], np.full(7, 7.0))


def test_temporal_measures_distance_in_time_not_steps():
    series = np.array([1.0, np.nan, np.nan, 3.0])[:, None, None]
    assert temporal_array(series)[1, 0, 0] == 1.0
    assert temporal_array(series, times=[0.0, 4.0, 5.0, 6.0])[1, 0, 0] == 3.0


# ---------------------------------------------------------------- inpainting


@pytest.mark.parametrize("core", [telea_array, ns_inpaint_array])
@pytest.mark.parametrize("scale, offset", [(1.0, 0.0), (1e-3, 0.5), (1e4, -3.0)])
def test_inpainting_fills_a_smooth_field_closely_at_any_scale(core, scale, offset):
    field = smooth_field(n_steps=4, height=32, width=32)
    rng = np.random.default_rng(4)
    observed = rng.random(field.shape) < 0.8
    observed[:, 10:14, 12:17] = False  # a 4 x 5 hole
    filled = core(np.where(observed, scale * field + offset, np.nan))
    error = (filled - offset) / scale - field
    # filling with the mean would give a relative RMSE of about 1
    assert np.sqrt(np.mean(error[~observed] ** 2)) < 0.15 * field.std()


def test_inpainting_frames_without_observations_take_the_nearest_frame():
    field = smooth_field(n_steps=3)
    field[1] = np.nan
    filled = telea_array(field)
    np.testing.assert_array_equal(filled[1], field[0])


# ---------------------------------------------------------------- DINEOF


def rank3_field(rng, n_steps=60, size=20):
    """Three smooth spatial modes times random series; the uniform mode absorbs the mean,
    so the field stays rank 3 once DINEOF removes its mean."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    modes = np.stack(
        [np.ones_like(x), np.sin(np.pi * x) * np.cos(np.pi * y), np.exp(-((x - 0.3) ** 2 + (y - 0.6) ** 2) / 0.05)]
    )
    series = rng.normal(size=(n_steps, 3)) * [1.0, 2.0, 1.0]
    return 5.0 + np.einsum("tk,khw->thw", series, modes)


def test_dineof_recovers_a_rank_3_field_from_30_percent():
    rng = np.random.default_rng(5)
    field = rank3_field(rng)
    observed = rng.random(field.shape) < 0.3
    result = dineof_array(np.where(observed, field, np.nan), tol=1e-7)
    assert result.rank == 3
    gaps = ~observed
    relative_rmse = np.sqrt(np.mean((result.filled - field)[gaps] ** 2)) / field[gaps].std()
    assert relative_rmse < 1e-4
    assert result.cv_error < 1e-4 * field.std()
    np.testing.assert_array_equal(result.filled[observed], field[observed])


def test_dineof_stops_at_the_noise():
    rng = np.random.default_rng(6)
    field = rank3_field(rng)
    noisy = field + 0.1 * rng.normal(size=field.shape)
    observed = rng.random(field.shape) < 0.3
    result = dineof_array(np.where(observed, noisy, np.nan))
    assert result.rank == 3
    assert 0.05 < result.cv_error < 0.15  # the held-back cells carry the noise (0.1)
    assert np.sqrt(np.mean((result.filled - field)[~observed] ** 2)) < 0.1


def test_dineof_multivariate_fits_the_channels_together():
    rng = np.random.default_rng(7)
    field = rank3_field(rng)
    a = np.where(rng.random(field.shape) < 0.3, field, np.nan)
    b = np.where(rng.random(field.shape) < 0.3, 10 * field - 4, np.nan)
    values = np.stack([a, b])[None]
    result = dineof_array(values, multivariate=True, tol=1e-7)
    assert result.rank[0, 0] == result.rank[0, 1] and result.cv_error[0, 0] == result.cv_error[0, 1]
    np.testing.assert_allclose(result.filled[0, 0], field, atol=1e-3)
    np.testing.assert_allclose(result.filled[0, 1], 10 * field - 4, atol=1e-2)


def test_dineof_of_complete_station_series_warns_of_no_empty_mean():
    rng = np.random.default_rng(9)
    field = rank3_field(rng)
    stations = rng.random(field.shape[1:]) < 0.3  # observed at every step, the rest never
    values = np.where(stations, field, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "Mean of empty slice" when nothing was left to fill
        result = dineof_array(values)
    np.testing.assert_array_equal(result.filled[:, stations], field[:, stations])


def test_dineof_fixed_rank_and_too_few_observations():
    rng = np.random.default_rng(8)
    field = rank3_field(rng, n_steps=10, size=6)
    sparse = np.where(rng.random(field.shape) < 0.1, field, np.nan)  # ~36 observations
    with pytest.raises(ValueError, match="pass rank=k"):
        dineof_array(sparse)
    result = dineof_array(sparse, rank=2)
    assert result.rank == 2 and np.isnan(result.cv_error) and not np.isnan(result.filled).any()


def test_dineof_wrapper_reports_rank_per_sample_and_channel():
    rng = np.random.default_rng(9)
    fields = np.stack([rank3_field(rng, n_steps=40), rank3_field(rng, n_steps=40)])
    observed = rng.random(fields.shape) < 0.4
    data = xr.DataArray(
        np.where(observed, fields, np.nan),
        dims=("trajectory", "time", "lat", "lon"),
        coords={"trajectory": ["a", "b"]},
        name="h",
    ).transpose("lat", "trajectory", "lon", "time")
    filled, info = baselines.dineof(data, return_info=True)
    assert filled.dims == data.dims
    assert info["rank"].dims == ("trajectory", "channel") and list(info["trajectory"].values) == ["a", "b"]
    np.testing.assert_array_equal(info["rank"].values, [[3], [3]])
    assert list(info["channel"].values) == ["h"]
    truth = xr.DataArray(fields, dims=("trajectory", "time", "lat", "lon"))
    assert float(np.sqrt(((filled - truth) ** 2).mean())) < 1e-3 * fields.std()


def test_rbf_fills_frames_whose_observations_lie_on_one_line():
    from xrimpute.baselines.classical import rbf_array

    values = np.full((3, 8, 9), np.nan)
    values[0, 3] = np.arange(9.0)  # a row: a swath's edge, a transect of stations
    values[1, np.arange(8), np.arange(8)] = 2.0 * np.arange(8)  # a diagonal
    values[2, 2:5, 2:6] = 1.0  # an area, as before
    values[2, 2, 2] = 3.0
    filled = rbf_array(values)
    assert np.isfinite(filled).all()
    np.testing.assert_allclose(filled[0, 3], np.arange(9.0))  # the observations kept
    assert np.all(np.diff(filled[0, 2]) > 0)  # beside the row, the fill follows it
    np.testing.assert_allclose(np.diagonal(filled[1]), 2.0 * np.arange(8))


def test_a_fit_on_a_transect_of_stations_scores_every_filler_and_fills_between_them():
    import xarray as xr

    rng = np.random.default_rng(0)
    t, h, w = 40, 12, 16
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    truth = np.stack([np.sin(0.4 * xx + 0.2 * k) + 0.1 * yy for k in range(t)]) + 0.05 * rng.standard_normal((t, h, w))
    values = np.full_like(truth, np.nan)
    values[:, 6, ::2] = truth[:, 6, ::2]  # eight stations along one row, every step
    da = xr.DataArray(values, dims=("time", "lat", "lon"),
                      coords={"time": np.arange(t), "lat": np.linspace(40, 51, h), "lon": np.linspace(0, 15, w)})
    model = da.ctxdiff.fit(mask="station", progress=False, seed=0)
    assert np.isfinite(model.validation["classical"]["rbf"])
    filled = da.ctxdiff.impute(progress=False)
    assert np.isfinite(filled.values[:, 5:8]).all()
