"""Mask specs beyond pixel and block: structure of their contexts, inference from NaN patterns,
query coverage on their own kind of data, specs from metadata, test-time adaptation."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from synthetic import latlon_cube
from xrimpute import masks, observe
from xrimpute.check import infer, permanent_mask
from xrimpute.cube import CubeError
from xrimpute.masks import (Block, Clouds, Combined, MaskSpec, MaskSpecError, Patches, Pixel, Station, Swath,
                            TimeGap, learnability)
from xrimpute.observe import ground_track, swath_mask
from xrimpute.stations import grid_stations, station_spec


def cube(steps=16, samples=None, lat=np.linspace(30.0, 60.0, 24), lon=np.linspace(0.0, 30.0, 24), freq="h"):
    """A complete (sample,) time, lat, lon DataArray on a lat/lon grid in degrees."""
    coords = {"time": pd.date_range("2020-01-01", periods=steps, freq=freq),
              "lat": ("lat", lat, {"units": "degrees_north"}), "lon": ("lon", lon, {"units": "degrees_east"})}
    dims, shape = ("time", "lat", "lon"), (steps, lat.size, lon.size)
    if samples:
        dims, shape = ("sample", *dims), (samples, *shape)
    return xr.DataArray(np.ones(shape, np.float32), dims=dims, coords=coords, name="t2m")


def mask_of(da):
    """Boolean (N, C, T, H, W) observation mask of a (sample,) time, lat, lon DataArray."""
    seen = da.notnull().values
    return (seen if "sample" in da.dims else seen[None])[:, None]


def observed(kind, seed=0, **options):
    return mask_of(observe(cube(samples=4), kind, seed=seed, **options))


def with_gaps_in_time(mask, share, seed=0):
    """The mask with a ``share`` of its time steps missing entirely."""
    mask = mask.copy()
    rng = np.random.default_rng(seed)
    frames = mask.shape[0] * mask.shape[2]
    for flat in rng.choice(frames, round(share * frames), replace=False):
        mask[flat // mask.shape[2], :, flat % mask.shape[2]] = False
    return mask


GENERATED = {
    "pixel": lambda: observed("pixel", rate=0.3),
    "block": lambda: observed("block", grid=(3, 3), observed=5),
    "swath": lambda: observed("swath", swath_width_km=600),
    "station": lambda: mask_of(observe(cube(steps=48), "station", n=15, outage=0.2)),
    "patches": lambda: observed("clouds", coverage=0.5, length_scale=3),
    "timegap": lambda: with_gaps_in_time(np.ones((3, 1, 16, 20, 20), bool), 0.25),
    "pixel+timegap": lambda: with_gaps_in_time(observed("pixel", rate=0.4), 0.2),
}


# --- inference from NaN patterns -----------------------------------------------------------------


@pytest.mark.parametrize("kind", list(GENERATED))
def test_infer_recovers_the_observing_system(kind):
    found = infer(GENERATED[kind]())
    assert found.kind == kind, found.explanation
    assert found.explanation.startswith(f"The NaN pattern looks like {kind} observations")
    assert isinstance(found.evidence["persistence"], float) and 0 <= found.evidence["never_observed"] < 1


def test_infer_reads_the_stripes_and_the_patch_size():
    swath = infer(mask_of(observe(cube(steps=8, lat=np.arange(-80.0, 81, 4), lon=np.arange(0.0, 360, 4), freq="6h"),
                                  "swath", seed=1, swath_width_km=2000)))
    assert swath.kind == "swath" and 60 < swath.spec.orientation < 120  # polar orbit: roughly north-south
    small, large = (infer(observed("clouds", coverage=0.5, length_scale=s, seed=2)).spec.length for s in (1.5, 4))
    assert 1.5 * small < large


def test_infer_reports_land_as_a_permanent_mask_and_keeps_the_structure():
    ds = latlon_cube(t=24, nlat=24, nlon=24)
    clouds = observe(ds, "clouds", coverage=0.5, length_scale=3, seed=1)
    clouds["lsm"] = ds["lsm"].where(ds.lon < 5, 1.0).where(ds.lon >= 5, 0.0)  # land east of 5 E
    masked = permanent_mask(clouds, "lsm")
    assert "lsm" not in masked and bool(masked["t2m"].where(ds.lon >= 5).isnull().all())
    found = infer(masked)
    land = float((ds.lon >= 5).mean())
    assert found.kind == "patches" and abs(found.evidence["never_observed"] - land) < 0.03
    assert "never observed" in found.explanation and "beyond their reach" in found.explanation


@settings(max_examples=12, deadline=None)
@given(rate=st.floats(0.08, 0.9), size=st.integers(12, 28), steps=st.integers(6, 16), seed=st.integers(0, 2**16))
def test_infer_calls_independent_pixels_pixel(rate, size, steps, seed):
    grid = np.linspace(30.0, 60.0, size)
    found = infer(observe(cube(steps=steps, samples=2, lat=grid, lon=grid), "pixel", rate=rate, seed=seed))
    assert found.kind == "pixel" and not found.spec.static, found.explanation


@pytest.mark.parametrize("rows, cols", [(1, 16), (12, 1)])
def test_a_section_of_one_row_or_column_is_inferred_fitted_and_filled(rows, cols):
    rng = np.random.default_rng(0)
    steps = 40
    truth = np.sin(0.4 * np.arange(cols)[None, None, :] + 0.3 * np.arange(rows)[None, :, None]
                   + 0.2 * np.arange(steps)[:, None, None])
    values = np.where(rng.random(truth.shape) < 0.5, truth, np.nan)
    section = xr.DataArray(values, dims=("time", "lat", "lon"), coords={
        "time": np.arange(steps), "lat": np.linspace(40, 51, rows), "lon": np.linspace(0, 15, cols)})
    assert infer(section).kind == "pixel"  # a transect along one latitude or longitude
    section.ctxdiff.fit(steps=2, progress=False, seed=0)
    filled = section.ctxdiff.impute(progress=False).values
    assert np.isfinite(filled).all() and np.array_equal(filled[np.isfinite(values)], values[np.isfinite(values)])


@settings(max_examples=12, deadline=None)
@given(rows=st.integers(2, 4), cols=st.integers(2, 4), data=st.data(), static=st.booleans(),
       seed=st.integers(0, 2**16))
def test_infer_finds_the_block_grid(rows, cols, data, static, seed):
    kept = data.draw(st.integers(2, rows * cols - 1))  # one block alone may leave a coarser grid as true
    observed = observe(cube(samples=8, steps=6), "block", grid=(rows, cols), observed=kept, static=static, seed=seed)
    # each block's state at its centre, (N, T, rows, cols): a boundary no sample or step crosses with a change is
    # not in the data (static blocks kept as whole columns in all eight samples: a grid of one row is the truth)
    h, w = observed.shape[-2:]
    states = np.isfinite(observed.values)[..., (np.arange(rows) * h + h // 2) // rows, :][
        ..., (np.arange(cols) * w + w // 2) // cols]
    assume((states[..., 1:, :] != states[..., :-1, :]).any() and (states[..., 1:] != states[..., :-1]).any())
    found = infer(observed)
    assert found.kind == "block" and found.spec.grid == (rows, cols) and found.spec.static == static


def test_blocks_are_blocks_though_a_few_cells_drop_out_and_cells_that_flicker_make_no_block():
    grid = dict(lat=np.linspace(30.0, 60.0, 90), lon=np.linspace(0.0, 30.0, 90))  # blocks of 900 cells
    observed = observe(cube(samples=2, steps=12, **grid), "block", grid=(3, 3), observed=5, seed=0)
    h, w = observed.shape[-2:]
    dropped = np.zeros(observed.shape, bool)
    rng = np.random.default_rng(0)
    dropped[..., rng.integers(0, h, 3), rng.integers(0, w, 3)] = rng.random(observed.shape[:-2] + (3,)) < 0.5
    found = infer(observed.where(~dropped))  # three cells missing on half the steps, as coastal cells of an archive
    assert found.spec == Block(grid=(3, 3), static=False), found.explanation
    fixed = observe(cube(samples=2, steps=12, **grid), "block", grid=(3, 3), observed=5, static=True, seed=0)
    found = infer(fixed.where(~dropped))  # the dropped cells move no block
    assert found.spec == Block(grid=(3, 3), static=True), found.explanation
    found = infer(fixed[:1].where(~dropped[:1]))  # one series: the hidden blocks are land, as far as the data say
    assert found.kind != "block", found.explanation


def test_blocks_that_never_move_stay_fixed_over_time_through_whole_missing_steps():
    observed = observe(cube(samples=8, steps=12), "block", grid=(3, 3), observed=5, static=True, seed=0)
    missing = xr.DataArray(np.isin(np.arange(12), [2, 7]), dims="time")
    found = infer(observed.where(~missing))
    assert found.spec == Combined(Block(grid=(3, 3), static=True), TimeGap()), found.explanation


def test_a_station_network_with_whole_missing_steps_is_a_station_network():
    observed = observe(cube(samples=1, steps=40), "station", n=20, seed=0)
    for steps, expected in (([3], Station()), ([3, 9, 17, 25], Combined(Station(), TimeGap()))):
        found = infer(observed.where(~xr.DataArray(np.isin(np.arange(40), steps), dims="time")))
        assert found.spec == expected, found.explanation


def test_infer_handles_data_without_gaps_and_refuses_empty_masks():
    assert infer(np.ones((1, 1, 4, 6, 6), bool)).kind == "pixel"
    with pytest.raises(MaskSpecError, match="no cell is ever observed"):
        infer(np.zeros((1, 1, 4, 6, 6), bool))
    with pytest.raises(MaskSpecError, match=r"\(N, C, T, H, W\)"):
        infer(np.ones((4, 6, 6), bool))


def test_resolve_names_aliases_and_estimates():
    mask = GENERATED["swath"]()
    spec = masks.resolve("swath", mask)
    assert isinstance(spec, Swath) and spec == infer(mask).spec
    assert masks.resolve("clouds") == Patches() and Clouds is Patches
    assert masks.resolve("infer", mask, verbose=False) == masks.resolve("auto", mask, verbose=False) == spec
    with pytest.raises(MaskSpecError, match="'timegap'"):
        masks.resolve("timegaps")


# --- contexts copy the structure -----------------------------------------------------------------


def test_swath_context_keeps_or_drops_whole_segments():
    mask = torch.as_tensor(GENERATED["swath"]())
    spec = Swath(context_ratio=0.5)
    context = spec.context(mask, torch.Generator().manual_seed(0))
    assert not (context & ~mask).any() and 0 < context.sum() < mask.sum()
    assert torch.isfinite(spec.cell_log_likelihood(context, mask)[mask]).all()  # whole segments only
    labels, count = masks.spatial.label_segments(context[:, 0].numpy())
    largest = np.bincount(labels.ravel(), minlength=count + 1)[1:].argmax() + 1
    cut = context.clone()
    n, t, row, col = np.argwhere(labels == largest)[0]
    cut[n, 0, t, row, col] = False  # one cell less: a kept segment cut short
    assert torch.isinf(spec.cell_log_likelihood(cut, mask)).any()


def test_timegap_context_keeps_whole_steps_and_patches_keep_coherent_patches():
    ones = torch.ones((6, 1, 4, 40, 40), dtype=torch.bool)
    steps = TimeGap(context_ratio=0.6).context(ones, torch.Generator().manual_seed(0))
    per_step = steps.float().mean(dim=(1, 3, 4))
    assert ((per_step == 0) | (per_step == 1)).all() and abs(float(per_step.mean()) - 0.6) < 0.2
    for length in (2.0, 5.0):
        keep = Patches(length=length, context_ratio=0.6).context(ones, torch.Generator().manual_seed(1)).float()
        assert abs(float(keep.mean()) - 0.6) < 0.01
        stats = masks.spatial.spatial_statistics(keep[:, 0].reshape(-1, 40, 40).numpy().astype(bool),
                                                 np.ones((40, 40), bool))
        measured = np.sqrt(stats["major"] * stats["minor"])  # the half-lag infer reads from data
        assert 0.75 * length < measured < 1.25 * length


def test_combined_context_is_the_intersection_and_keeps_the_product():
    spec = Combined(Pixel(context_ratio=0.8), TimeGap(context_ratio=0.75))
    assert spec.context_ratio == pytest.approx(0.6) and spec.label == "pixel+timegap"
    ones = torch.ones((8, 1, 6, 16, 16), dtype=torch.bool)
    context = spec.context(ones, torch.Generator().manual_seed(0))
    assert abs(float(context.float().mean()) - 0.6) < 0.05
    assert (context.float().mean(dim=(1, 3, 4)) < 0.95).all()  # pixels thinned inside kept steps
    scaled = Combined(Pixel(context_ratio=0.8), TimeGap(context_ratio=0.75), context_ratio=0.3)
    assert scaled.context_ratio == pytest.approx(0.3) and scaled.parts[0].context_ratio > scaled.parts[1].context_ratio
    with pytest.raises(MaskSpecError, match="two or more"):
        Combined(Pixel())


@pytest.mark.parametrize("spec", [
    Station(context_ratio=0.6, positions=[(50.0, 3.5), (41.0, -2.0)]),
    Swath(orientation=75.0, width=6.5), TimeGap(context_ratio=0.8), Patches(length=3.5),
    Combined(Swath(), Patches(length=2.0)), Combined(Block(grid=(2, 3)), TimeGap(), context_ratio=0.5),
])
def test_specs_round_trip_through_json(spec):
    assert MaskSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_holdout_follows_the_spec_and_changes_over_time():
    shape = (1, 1, 80, 20, 20)
    for spec in (Station(), Combined(Station(), TimeGap()), Swath(width=3.0), Patches(length=2.0)):
        held = ~masks.holdout_keep(spec, shape, 0.2, torch.Generator().manual_seed(0)).expand(shape)
        assert 0.1 < float(held.float().mean()) < 0.3, spec
        assert held.any(dim=2).all(), spec  # no cell is held back for good


# --- learnability: each spec covers its own kind of data -----------------------------------------


@pytest.mark.parametrize("kind", ["pixel", "swath", "station", "patches", "timegap", "pixel+timegap"])
def test_each_spec_covers_every_gap_of_its_own_kind_of_data(kind):
    mask = GENERATED[kind]()
    spec = infer(mask).spec
    report = learnability(spec, mask, window=3, observing=spec)
    assert report.zero_share == 0 and np.nanmin(report.coverage) > masks.ZERO_COVERAGE, kind


def test_pixel_context_never_learns_missing_time_steps():
    mask = GENERATED["timegap"]()
    assert learnability(Pixel(), mask, window=3, observing=TimeGap()).zero_share == 1.0
    assert learnability(TimeGap(), mask, window=3, observing=TimeGap()).zero_share == 0.0


def test_coverage_of_swath_context_beats_pixel_context_on_swaths():
    mask = GENERATED["swath"]()
    truth = infer(mask).spec
    swath, pixel = (float(np.nanmean(learnability(s, mask, 3, observing=truth).coverage)) for s in (truth, Pixel()))
    assert swath > 1.5 * pixel


# --- specs from metadata reproduce the observing systems ---------------------------------------------


STATIONS = [(42.0, -5.6), (50.5, 2.2), (58.0, 10.0), (50.9, 1.6)]  # the second and the last share a cell


def cf_stations(steps=8, outage=None, positions=STATIONS):
    ds = latlon_cube(t=steps)
    values = np.arange(len(positions) * steps, dtype=float).reshape(len(positions), steps)
    if outage is not None:
        values[outage] = np.nan
    lat, lon = np.array(positions).T
    return xr.Dataset(
        {"t2m": (("station", "time"), values, {"units": "K"})},
        coords={"station_id": ("station", [f"s{i}" for i in range(len(positions))], {"cf_role": "timeseries_id"}),
                "lat": ("station", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("station", lon, {"standard_name": "longitude", "units": "degrees_east"}),
                "time": ds.time.values},
        attrs={"featureType": "timeSeries", "title": "stations"},
    )


def test_station_spec_from_cf_reproduces_the_observe_mask():
    ds, stations = latlon_cube(t=8), cf_stations()
    spec = station_spec(stations, context_ratio=0.5)
    assert spec.positions == tuple(STATIONS) and spec.context_ratio == 0.5 and spec.static
    simulated = observe(ds["t2m"], "station", stations=STATIONS).notnull().values
    np.testing.assert_array_equal(np.broadcast_to(spec.cells(ds.lat, ds.lon), simulated.shape), simulated)
    gridded = grid_stations(stations, like=ds)
    np.testing.assert_array_equal(gridded["t2m"].notnull().values, simulated)


def test_grid_stations_averages_co_located_stations_and_keeps_outages():
    ds = latlon_cube(t=8)
    stations = cf_stations(outage=(0, slice(2, 5)))
    gridded = grid_stations(stations, like=ds)
    assert gridded["t2m"].dims == ("time", "lat", "lon") and gridded["t2m"].attrs["units"] == "K"
    xr.testing.assert_identical(gridded.lat, ds.lat)
    at = gridded["t2m"].sel(lat=50.5, lon=2.2, method="nearest")
    np.testing.assert_allclose(at.values, (stations.t2m[1] + stations.t2m[3]).values / 2)
    first = gridded["t2m"].sel(lat=42.0, lon=-5.6, method="nearest")
    assert first.isnull().values.tolist() == [False, False, True, True, True, False, False, False]
    assert "featureType" not in gridded.attrs


def test_station_data_errors_and_outside_stations():
    ds = latlon_cube(t=8)
    plain = cf_stations()
    plain.attrs = {}
    with pytest.raises(CubeError, match="featureType"):
        station_spec(plain)
    with pytest.warns(UserWarning, match="1 of 5 stations lie outside"):
        gridded = grid_stations(cf_stations(positions=[*STATIONS, (10.0, 0.0)]), like=ds)
    assert int(gridded["t2m"].isel(time=0).notnull().sum()) == 3
    with pytest.raises(MaskSpecError, match="no positions"):
        Station().cells(ds.lat, ds.lon)


def global_cube(steps=12):
    return cube(steps=steps, lat=np.arange(-80.0, 81.0, 4.0), lon=np.arange(0.0, 360.0, 4.0))


def test_swath_spec_from_orbit_reproduces_the_observe_mask():
    da = global_cube()
    seen = observe(da, "swath", seed=3, swath_width_km=1500, altitude_km=705)
    orbit = json.loads(seen.attrs["xrimpute_observation"])["realised"]
    spec = Swath.from_orbit(da.lat, da.lon, da.time.values, swath_width_km=1500, **orbit)
    np.testing.assert_array_equal(spec.footprint, seen.notnull().values)
    assert 60 < spec.orientation < 120 and "footprint" not in spec.to_dict()
    same = Swath.from_orbit(da.lat, da.lon, np.arange(12.0), swath_width_km=1500, **orbit)  # hours
    np.testing.assert_array_equal(same.footprint, spec.footprint)


def level2_granules(hours, width_km, pixels=15, lines_per_hour=240):
    """Swath footprints as a Level-2 product has them: pixel centres (scan lines x pixels) per granule."""
    lats, lons, times = [], [], []
    for start in hours:
        t = start + np.arange(lines_per_hour + 1) / lines_per_hour
        lat, lon = ground_track(t, orbits_per_day=14.2)
        la, lo = np.deg2rad(lat), np.deg2rad(lon)
        centre = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], -1)
        along = np.gradient(centre, axis=0)
        across = np.cross(centre, along)
        across /= np.linalg.norm(across, axis=-1, keepdims=True)
        angle = np.linspace(-0.5, 0.5, pixels) * width_km / 6371.0
        points = (np.cos(angle)[None, :, None] * centre[:, None] + np.sin(angle)[None, :, None] * across[:, None])
        lats.append(np.rad2deg(np.arcsin(points[..., 2])))
        lons.append(np.rad2deg(np.arctan2(points[..., 1], points[..., 0])))
        times.append(start + 0.5)
    return lats, lons, np.array(times)


def test_swath_spec_from_level2_footprints_matches_the_orbit_mask():
    da = global_cube(steps=6)
    hours = np.arange(6.0)
    lat2d, lon2d, times = level2_granules(hours, 1500)
    outside = [lat2d[0]], [lon2d[0]], [100.0]  # a granule after the grid's last step is skipped
    spec = Swath.from_footprints(lat2d + outside[0], lon2d + outside[1], np.r_[times, outside[2]],
                                 lat=da.lat, lon=da.lon, grid_time=hours)
    orbit = swath_mask(da.lat, da.lon, hours, swath_width_km=1500, orbits_per_day=14.2)
    marked, truth = spec.footprint, orbit
    assert marked.shape == truth.shape == (6, da.lat.size, da.lon.size)
    # granules end flat where the orbit mask has round ends, which belong to the neighbouring steps' granules
    assert (truth & ~marked).sum() <= 0.08 * truth.sum()
    assert (truth.any(0) & ~marked.any(0)).sum() <= 0.015 * truth.any(0).sum()  # all steps: the swath is found
    assert (marked & ~truth).sum() <= 0.12 * truth.sum()  # and little beyond its edges (half a pixel)
    with pytest.raises(MaskSpecError, match="both as datetimes or both as hours"):
        Swath.from_footprints(lat2d, lon2d, times, lat=da.lat, lon=da.lon, grid_time=da.time.values)


# --- test-time adaptation (paper G.3) ------------------------------------------------------------


@pytest.mark.parametrize("spec", [Station(context_ratio=0.4), Swath(context_ratio=0.4), TimeGap(context_ratio=0.4),
                                  Patches(context_ratio=0.4, length=2.0),
                                  Combined(Pixel(context_ratio=0.8), TimeGap(context_ratio=0.5))])
def test_adapted_keeps_the_effective_input_fraction(spec):
    train_rate, test_rate = 0.5, 0.25
    adapted = spec.adapted(train_rate, test_rate)
    assert adapted.context_ratio == pytest.approx(min(1.0, spec.context_ratio * 2))
    assert type(adapted) is type(spec) and spec.adapted(0.2, 0.9).context_ratio < spec.context_ratio
    # measured on data: kept share of the observed cells times the rate stays what training saw
    gen = torch.Generator().manual_seed(0)
    shape = (200, 1, 6, 10, 10)
    if isinstance(spec, Swath):  # one swath segment a step, seen at the rate
        test, train = ((torch.rand(shape[:3] + (1, 1), generator=gen) < rate).expand(shape)
                       for rate in (test_rate, train_rate))
    else:
        test = train = torch.ones(shape, dtype=torch.bool)
    kept = lambda s, m: float(s.context(m, torch.Generator().manual_seed(1)).sum() / m.sum())  # noqa: E731
    assert kept(adapted, test) * test_rate == pytest.approx(kept(spec, train) * train_rate, rel=0.12)


def test_impute_adapts_a_combined_spec(monkeypatch):
    truth = cube(steps=6, samples=2, lat=np.linspace(30.0, 60.0, 12), lon=np.linspace(0.0, 30.0, 12))
    data = truth * xr.DataArray(np.random.default_rng(0).normal(size=truth.shape), dims=truth.dims)
    kept = with_gaps_in_time(mask_of(observe(data, "pixel", rate=0.6, seed=0)), 0.2)[:, 0]
    train = data.where(xr.DataArray(kept, dims=data.dims))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the spec covers its data: no learnability warning
        model = train.ctxdiff.fit(mask="infer", window=3, steps=2, batch_size=2, progress=False, verbose=False)
    assert isinstance(model.spec, Combined)
    seen = []
    original = Combined.adapted
    monkeypatch.setattr(Combined, "adapted", lambda self, a, b: seen.append((a, b)) or original(self, a, b))
    sparse = data.where(observe(data, "pixel", rate=0.3, seed=1).notnull())
    model.impute(sparse, K=2, progress=False)
    assert seen and seen[0][1] < seen[0][0]  # the test data is observed less than the training data
