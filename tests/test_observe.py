"""Observing-system simulators: coverage, structure, geometry, determinism and xarray handling."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xrimpute.cube import CubeError
from xrimpute.geometry import (
    EARTH_RADIUS_KM,
    SIDEREAL_DAY_S,
    ground_track,
    orbital_period_s,
    station_cells,
    swath_mask,
)
from xrimpute.observe import observe

KIND_OPTIONS = {
    "pixel": {"rate": 0.3},
    "block": {"grid": (3, 4)},
    "swath": {"swath_width_km": 2000},
    "station": {"n": 15, "outage": 0.2},
    "clouds": {"coverage": 0.4},
}


def make_cube(steps=24, lat=np.arange(-80.0, 81.0, 4.0), lon=np.arange(0.0, 360.0, 4.0), freq="h"):
    """A complete DataArray (values 1..N, so every cell is distinguishable) on a lat/lon/time grid."""
    coords = {
        "time": pd.date_range("2020-01-01", periods=steps, freq=freq),
        "lat": ("lat", lat, {"units": "degrees_north"}),
        "lon": ("lon", lon, {"units": "degrees_east"}),
    }
    data = np.arange(steps * lat.size * lon.size, dtype=float).reshape(steps, lat.size, lon.size) + 1
    return xr.DataArray(data, dims=("time", "lat", "lon"), coords=coords, name="t2m", attrs={"units": "K"})


def seen(out):
    """Observed cells as a (time, lat, lon) numpy bool array."""
    return out.notnull().transpose("time", "lat", "lon").values


def record(out):
    return json.loads(out.attrs["xrimpute_observation"])


def neighbour_agreement(mask):
    """Fraction of horizontally and vertically adjacent cell pairs with the same observed state."""
    pairs = [(mask[:, 1:] == mask[:, :-1]).ravel(), (mask[..., 1:] == mask[..., :-1]).ravel()]
    return np.mean(np.concatenate(pairs))


# --- errors -------------------------------------------------------------------------------------


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(ValueError, match="known kinds: pixel, block, swath, station, clouds"):
        observe(make_cube(steps=2), "radar")


@pytest.mark.parametrize(
    "kind, options, error, message",
    [
        ("pixel", {}, TypeError, r"needs option\(s\) \['rate'\]"),
        ("pixel", {"rate": 0.3, "coverage": 0.2}, TypeError, r"unknown option\(s\) \['coverage'\].*'rate'"),
        ("pixel", {"rate": 1.5}, ValueError, "rate must be a fraction"),
        ("clouds", {"coverage": -0.1}, ValueError, "coverage must be a fraction"),
        ("block", {"grid": (50, 3)}, ValueError, "does not fit the 41 x 90 field"),
        ("block", {"grid": (2, 2), "observed": 5}, ValueError, "between 0 and the 4 blocks"),
        ("station", {"n": 5000}, ValueError, "between 1 and the 3690 grid cells"),
        ("station", {"outage": 0.8, "outage_length": 2}, ValueError, "cannot be reached.*raise outage_length"),
        ("station", {"stations": [(0.0, 10.0), (85.0, 10.0)]}, ValueError, r"\[\[85.0, 10.0\]\] lie outside"),
        ("swath", {"altitude_km": 700, "orbits_per_day": 14}, ValueError, "either orbits_per_day or altitude_km"),
    ],
)
def test_bad_options_are_explained(kind, options, error, message):
    with pytest.raises(error, match=message):
        observe(make_cube(steps=3), kind, **options)


def test_plain_grid_needs_bbox_for_geography():
    cube = make_cube(steps=4, lat=np.arange(10.0), lon=np.arange(20.0)).rename(lat="y", lon="x")
    for name in ("y", "x"):
        cube[name].attrs = {"units": "km"}
    with pytest.raises(CubeError, match=r"pass bbox=\(lat0, lat1, lon0, lon1\)"):
        observe(cube, "swath")
    out = observe(cube, "swath", bbox=(40.0, 60.0, -10.0, 20.0), swath_width_km=3000, hours_per_step=6)
    assert out.dims == ("time", "y", "x") and 0 < out.notnull().mean() < 1
    # random stations need no geography at all
    assert int(observe(cube, "station", n=7).notnull().isel(time=0).sum()) == 7


# --- pixel and block ----------------------------------------------------------------------------


def test_pixel_rate_and_static():
    cube = make_cube(steps=10)
    per_frame = seen(observe(cube, "pixel", rate=0.3))
    assert abs(per_frame.mean() - 0.3) < 0.015  # 36,900 cells: five standard deviations
    assert not (per_frame[1:] == per_frame[0]).all()
    fixed = seen(observe(cube, "pixel", rate=0.3, static=True))
    assert (fixed == fixed[0]).all() and abs(fixed.mean() - 0.3) < 0.03


def block_slices(height, width, rows, cols):
    return [
        (r, c)
        for r in np.array_split(np.arange(height), rows)
        for c in np.array_split(np.arange(width), cols)
    ]


@pytest.mark.parametrize("static", [False, True])
def test_blocks_are_whole_and_counted(static):
    cube = make_cube(steps=12, lat=np.linspace(40, 60, 20), lon=np.linspace(-10, 20, 31))
    mask = seen(observe(cube, "block", grid=(3, 4), observed=5, static=static))
    for frame in mask:
        states = [frame[np.ix_(r, c)] for r, c in block_slices(20, 31, 3, 4)]
        assert all(state.all() or not state.any() for state in states)
        assert sum(state.all() for state in states) == 5
    assert (mask == mask[0]).all() == static


# --- stations -----------------------------------------------------------------------------------


def test_station_cells_nearest_with_longitude_wrap():
    lat, lon = np.arange(40.0, 61.0, 1.0), np.arange(0.0, 360.0, 2.0)
    rows, cols = station_cells(lat, lon, [(51.4, -0.9), (40.2, 3.1), (59.6, 358.6)])
    assert rows.tolist() == [11, 0, 20]
    assert cols.tolist() == [0, 2, 179]  # -0.9 E is nearest to 0; 358.6 E to 358


def test_stations_report_every_step_without_outage():
    cube = make_cube(steps=30)
    mask = seen(observe(cube, "station", n=25))
    assert (mask == mask[0]).all() and mask[0].sum() == 25
    given = [(0.0, 0.0), (41.0, 181.0), (-79.0, -4.0)]
    out = observe(cube, "station", stations=given)
    lat_idx, lon_idx = np.nonzero(seen(out)[0])
    observed = set(zip(cube.lat.values[lat_idx], cube.lon.values[lon_idx]))
    assert observed == {(0.0, 0.0), (40.0, 180.0), (-80.0, 356.0)}
    assert record(out)["realised"]["cells"] == [[20, 0], [30, 45], [0, 89]]


def test_station_outages_come_in_runs_of_the_requested_length():
    cube = make_cube(steps=600, lat=np.linspace(40, 60, 8), lon=np.linspace(0, 10, 8))
    mask = seen(observe(cube, "station", n=40, outage=0.2, outage_length=6, seed=3))
    cells = np.nonzero(mask.any(axis=0))
    up = mask[:, cells[0], cells[1]]  # (time, station)
    assert up.shape[1] == 40
    assert abs(1 - up.mean() - 0.2) < 0.05
    down = np.diff(np.pad(~up, ((1, 1), (0, 0))).astype(int), axis=0)
    run_lengths = np.nonzero(down.T == -1)[1] - np.nonzero(down.T == 1)[1]
    assert 4.5 < run_lengths.mean() < 7.5  # iid outages would give runs of about 1.25


# --- swath geometry -----------------------------------------------------------------------------


def haversine_km(lat1, lon1, lat2, lon2):
    lat1, lon1, lat2, lon2 = map(np.deg2rad, (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(a))


def test_orbit_period_and_ground_track():
    assert 98.5 < orbital_period_s(705) / 60 < 99.1  # a typical sun-synchronous orbiter: about 98.8 min
    period_h = 24 / 14.2
    hours = np.linspace(0, period_h, 2001)
    lat, lon = ground_track(hours, inclination=98.7, orbits_per_day=14.2)
    assert abs(lat.max() - (180 - 98.7)) < 0.05 and abs(lat.min() + (180 - 98.7)) < 0.05
    assert abs(lat[0]) < 1e-9 and abs(lat[-1]) < 1e-6  # back at the ascending node after one orbit
    westward = period_h * 3600 / SIDEREAL_DAY_S * 360  # the Earth turns under the orbit
    assert abs(lon[-1] - (-westward)) < 1e-6
    by_altitude = ground_track(hours, altitude_km=705)
    assert not np.allclose(by_altitude[0], lat)


def test_swath_covers_exactly_the_cells_near_the_track():
    lat, lon = np.arange(-88.0, 89.0, 2.0), np.arange(-180.0, 180.0, 2.0)
    hours = np.arange(4.0)
    orbit = dict(inclination=98.7, orbits_per_day=14.2, node_longitude=30.0, phase=45.0)
    mask = swath_mask(lat, lon, hours, swath_width_km=1200, **orbit)
    assert mask.shape == (4, lat.size, lon.size)
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    for step in range(4):
        track_lat, track_lon = ground_track(np.linspace(step, step + 1, 361), **orbit)  # every 10 s
        distance = np.min(
            [haversine_km(lat2, lon2, a, b) for a, b in zip(track_lat, track_lon)], axis=0
        )
        assert mask[step][distance < 600 * 0.97].all()
        assert not mask[step][distance > 600 * 1.03].any()
        assert 0.02 < mask[step].mean() < 0.2
    assert (mask[1:] != mask[:-1]).mean(axis=(1, 2)).min() > 0.05  # the stripe moves on


def test_swath_step_length_from_dates_or_hours_per_step():
    hourly = make_cube(steps=12)
    by_dates = seen(observe(hourly, "swath", seed=4))
    per_step = by_dates.mean(axis=(1, 2))
    assert (per_step > 0.02).all() and (per_step < 0.2).all()
    plain_time = hourly.assign_coords(time=np.arange(12))
    np.testing.assert_array_equal(seen(observe(plain_time, "swath", seed=4)), by_dates)
    six_hourly = seen(observe(make_cube(steps=12, freq="6h"), "swath", seed=4))
    np.testing.assert_array_equal(seen(observe(plain_time, "swath", seed=4, hours_per_step=6)), six_hourly)
    assert six_hourly.mean() > 3 * by_dates.mean()  # six hours of orbit cover far more ground than one
    realised = record(observe(hourly, "swath", altitude_km=705))["realised"]
    assert 14.5 < realised["orbits_per_day"] < 14.7


# --- clouds -------------------------------------------------------------------------------------


def test_clouds_coverage_correlation_and_motion():
    cube = make_cube(steps=40, lat=np.linspace(30, 70, 48), lon=np.linspace(-30, 30, 64))
    mask = seen(observe(cube, "clouds", coverage=0.4, length_scale=4, speed=1.0, persistence=0.9))
    per_frame = mask.mean(axis=(1, 2))
    assert np.abs(per_frame - 0.4).max() <= 1 / (48 * 64)
    iid = seen(observe(cube, "pixel", rate=0.4))
    assert neighbour_agreement(iid) < 0.55
    assert neighbour_agreement(mask) > 0.85
    next_step = np.mean(mask[1:] == mask[:-1])
    far_apart = np.mean(mask[20:] == mask[:-20])
    assert next_step > 0.8 and far_apart < next_step - 0.15
    frozen = seen(observe(cube, "clouds", coverage=0.4, speed=0.0, persistence=1.0))
    assert (frozen == frozen[0]).all()


# --- determinism and xarray handling ------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KIND_OPTIONS))
def test_same_seed_same_mask_other_seed_differs(kind):
    cube = make_cube(steps=8)
    first = seen(observe(cube, kind, seed=1, **KIND_OPTIONS[kind]))
    np.testing.assert_array_equal(first, seen(observe(cube, kind, seed=1, **KIND_OPTIONS[kind])))
    assert (first != seen(observe(cube, kind, seed=2, **KIND_OPTIONS[kind]))).any()


@pytest.mark.parametrize("kind", list(KIND_OPTIONS))
def test_dim_order_does_not_matter(kind):
    cube = make_cube(steps=6)
    shuffled = cube.transpose("lon", "time", "lat")
    out = observe(shuffled, kind, seed=5, **KIND_OPTIONS[kind])
    assert out.dims == ("lon", "time", "lat")
    np.testing.assert_array_equal(seen(out), seen(observe(cube, kind, seed=5, **KIND_OPTIONS[kind])))


def test_dataset_variables_share_the_mask_and_keep_metadata():
    cube = make_cube(steps=6)
    ds = xr.Dataset(
        {"t2m": cube, "u10": (cube * 0 + 3).transpose("lat", "lon", "time"), "elevation": cube.isel(time=0) * 0},
        attrs={"title": "truth"},
    ).chunk({"time": 3})
    out = observe(ds, "clouds", coverage=0.5)
    assert isinstance(out, xr.Dataset) and out["t2m"].chunks is not None  # still lazy
    np.testing.assert_array_equal(seen(out["t2m"]), seen(out["u10"]))
    assert 0.45 < seen(out["t2m"]).mean() < 0.55
    xr.testing.assert_identical(out["elevation"], ds["elevation"])  # no time dim: untouched
    assert out["u10"].dims == ("lat", "lon", "time")
    assert out.attrs["title"] == "truth" and out["t2m"].attrs["units"] == "K"
    assert record(out)["coverage"] == 0.5 and record(out["t2m"]) == record(out)
    observed = seen(out["t2m"])
    np.testing.assert_array_equal(out["t2m"].values[observed], cube.values[observed])  # the truth, unchanged
    assert "xrimpute_observation" not in ds.attrs  # the input is not modified


def test_dataarray_keeps_coords_and_attrs():
    cube = make_cube(steps=5)
    out = observe(cube, "block", grid=(2, 2), observed=3)
    assert isinstance(out, xr.DataArray) and out.name == "t2m"
    xr.testing.assert_identical(out.coords.to_dataset(), cube.coords.to_dataset())
    assert out.attrs["units"] == "K"
    assert record(out) == {"kind": "block", "seed": 0, "grid": [2, 2], "observed": 3, "static": False,
                           "observed_fraction": pytest.approx(seen(out).mean(), abs=1e-6)}


def test_samples_get_independent_masks():
    cube = make_cube(steps=6).expand_dims(sample=3).transpose("time", "sample", "lat", "lon")
    out = observe(cube, "swath", seed=2)
    masks = out.notnull().transpose("sample", "time", "lat", "lon").values
    assert not (masks[0] == masks[1]).all() and not (masks[1] == masks[2]).all()
    assert len(record(out)["realised"]) == 3
    blocks = observe(cube, "block", grid=(2, 3), observed=1, static=True)
    per_sample = blocks.notnull().transpose("sample", "time", "lat", "lon").values
    for mask in per_sample:
        assert (mask == mask[0]).all()  # static within a trajectory
    assert len({mask[0].tobytes() for mask in per_sample}) > 1
