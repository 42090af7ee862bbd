"""ERA5 sample through pooch (against a loopback server) and the lazy ERA5 opener."""
from __future__ import annotations

import http.server
import shutil
import sys
import threading
from types import SimpleNamespace

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from samples import ERA5_SAMPLE, needs_era5
from xrimpute.datasets.era5 import SAMPLE_FILE, era5_sample, open_era5


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A loopback HTTP server standing in for the data host; it counts the requests it serves."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}/"
    monkeypatch.setenv("XRIMPUTE_DATA_URL", url)
    monkeypatch.setenv("XRIMPUTE_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a proxy configured on the machine must not see loopback
    yield SimpleNamespace(root=root, cache=tmp_path / "cache", requests=requests)
    httpd.shutdown()
    httpd.server_close()


def block_cfgrib(monkeypatch):
    monkeypatch.setitem(sys.modules, "cfgrib", None)  # makes `import cfgrib` raise ImportError


@needs_era5
def test_sample_downloads_checks_hash_and_reads(server):
    shutil.copy(ERA5_SAMPLE, server.root / SAMPLE_FILE)
    ds = era5_sample(progressbar=False)
    assert server.requests == [f"/{SAMPLE_FILE}"]
    assert (server.cache / SAMPLE_FILE).exists()
    t2m = ds["t2m"]
    assert t2m.dims == ("time", "latitude", "longitude")
    assert t2m.shape == (744, 33, 49)
    assert t2m.attrs["units"] == "K"
    assert set(ds.coords) == {"time", "latitude", "longitude"}
    assert 250 < float(t2m.min()) and float(t2m.max()) < 300 and 270 < float(t2m.mean()) < 285
    assert np.all(np.diff(ds["latitude"].values) > 0)
    assert (ds["latitude"].values[[0, -1]] == [50.0, 58.0]).all()
    assert (ds["longitude"].values[[0, -1]] == [-10.0, 2.0]).all()
    assert ds["time"].values[0] == np.datetime64("2019-03-01T00:00")
    assert (np.diff(ds["time"].values) == np.timedelta64(1, "h")).all()
    # the same field as the raw GRIB, only flipped to south-to-north
    with xr.open_dataset(ERA5_SAMPLE, engine="cfgrib", backend_kwargs={"indexpath": ""}) as raw:
        np.testing.assert_array_equal(t2m.values[5], raw["t2m"].values[5, ::-1])


@needs_era5
def test_second_call_hits_cache_and_reads_netcdf_without_cfgrib(server, monkeypatch):
    shutil.copy(ERA5_SAMPLE, server.root / SAMPLE_FILE)
    first = era5_sample(progressbar=False)
    assert (server.cache / SAMPLE_FILE).with_suffix(".nc").exists()
    assert not list(server.cache.glob("*.part"))
    block_cfgrib(monkeypatch)
    second = era5_sample(progressbar=False)
    assert len(server.requests) == 1
    xr.testing.assert_identical(first, second)


@needs_era5
def test_missing_cfgrib_gives_install_hint(server, monkeypatch):
    server.cache.mkdir()
    shutil.copy(ERA5_SAMPLE, server.cache / SAMPLE_FILE)  # a cache filled earlier: no download needed
    block_cfgrib(monkeypatch)
    with pytest.raises(ImportError, match=r'pip install "xrimpute\[grib\]"'):
        era5_sample(progressbar=False)
    assert server.requests == []
    assert not (server.cache / SAMPLE_FILE).with_suffix(".nc").exists()


@needs_era5
def test_hash_mismatch_is_reported_and_nothing_corrupt_is_kept(server):
    corrupted = bytearray(ERA5_SAMPLE.read_bytes())
    corrupted[1000:1010] = b"\x00" * 10
    (server.root / SAMPLE_FILE).write_bytes(bytes(corrupted))
    with pytest.raises(ValueError, match="(?i)hash.*XRIMPUTE_DATA_URL"):
        era5_sample(progressbar=False)
    assert len(server.requests) == 3  # the first try and two retries
    assert not server.cache.exists() or not list(server.cache.iterdir())


def test_unreachable_file_says_how_to_work_offline(server):
    with pytest.raises(ConnectionError, match=f"Offline\\? Copy {SAMPLE_FILE} into .*XRIMPUTE_DATA_URL"):
        era5_sample(progressbar=False)  # the server has no such file: 404
    assert len(server.requests) == 3


# --- open_era5 on small generated archives ----------------------------------------------------


def cube(times=48, lat_descending=True):
    """A toy ERA5-like dataset as CDS writes it: dims valid_time/lat/lon, latitude north to south."""
    rng = np.random.default_rng(0)
    lat = np.linspace(60.0, 50.0, 6) if lat_descending else np.linspace(50.0, 60.0, 6)
    coords = {
        "valid_time": pd.date_range("2020-01-01", periods=times, freq="h"),
        "lat": ("lat", lat, {"units": "degrees_north"}),
        "lon": ("lon", np.arange(0.0, 8.0), {"units": "degrees_east"}),
    }
    data = 280 + rng.standard_normal((times, 6, 8)).astype("float32")
    return xr.Dataset(
        {
            "t2m": (("valid_time", "lat", "lon"), data, {"units": "K"}),
            "u10": (("valid_time", "lat", "lon"), data - 280, {"units": "m s-1"}),
        },
        coords=coords,
    )


def shuffled(ds):
    return ds.transpose("lon", "valid_time", "lat")


def test_open_netcdf_normalises_names_order_and_latitude(tmp_path):
    source = cube()
    shuffled(source).to_netcdf(tmp_path / "era5.nc")
    ds = open_era5(tmp_path / "era5.nc")
    assert set(ds.data_vars) == {"t2m", "u10"}
    for var in ds.data_vars.values():
        assert var.dims == ("time", "latitude", "longitude")
        assert isinstance(var.data, da.Array)  # still lazy
    assert np.all(np.diff(ds["latitude"].values) > 0)
    assert ds["latitude"].attrs["units"] == "degrees_north"
    expected = source["t2m"].values[:, ::-1, :]
    np.testing.assert_array_equal(ds["t2m"].values, expected)


def test_open_selects_variables_and_time(tmp_path):
    cube().to_netcdf(tmp_path / "era5.nc")
    ds = open_era5(str(tmp_path / "era5.nc"), variables="t2m", time="2020-01-02")
    assert list(ds.data_vars) == ["t2m"]
    assert ds.sizes["time"] == 24 and str(ds["time"].values[0])[:10] == "2020-01-02"
    one = open_era5(tmp_path / "era5.nc", time="2020-01-01T05:00")
    assert one.sizes["time"] == 1
    window = open_era5(tmp_path / "era5.nc", variables=["u10"], time=slice("2020-01-01T06", "2020-01-01T11"))
    assert window.sizes["time"] == 6


def test_open_glob_and_list_of_files(tmp_path):
    source = cube()
    for day, part in source.groupby("valid_time.day"):
        shuffled(part).to_netcdf(tmp_path / f"era5-{day:02d}.nc")
    from_glob = open_era5(str(tmp_path / "era5-*.nc"))
    from_list = open_era5(sorted(tmp_path.glob("era5-*.nc")))
    for ds in (from_glob, from_list):
        assert ds["t2m"].dims == ("time", "latitude", "longitude")
        assert ds.sizes["time"] == 48
        np.testing.assert_array_equal(ds["u10"].values, source["u10"].values[:, ::-1, :])


def test_open_zarr_with_weatherbench_layout_and_cf_only_names(tmp_path):
    # WeatherBench2 layout: (time, level, longitude, latitude); here the names are unusual and only
    # the CF units tell latitude from longitude
    source = cube(times=8, lat_descending=False).rename(valid_time="t", lat="grid_y", lon="grid_x")
    source = source.expand_dims(level=[500, 850]).transpose("t", "level", "grid_x", "grid_y")
    source.to_zarr(tmp_path / "era5.zarr", zarr_format=2)  # the format WeatherBench2 serves
    ds = open_era5(tmp_path / "era5.zarr", variables=["t2m"])
    assert ds["t2m"].dims == ("time", "level", "latitude", "longitude")
    assert isinstance(ds["t2m"].data, da.Array)
    np.testing.assert_array_equal(
        ds["t2m"].sel(level=850).values, source["t2m"].sel(level=850).transpose("t", "grid_y", "grid_x").values
    )


@needs_era5
def test_open_grib_archive():
    ds = open_era5(ERA5_SAMPLE, time="2019-03-31")
    assert ds["t2m"].dims == ("time", "latitude", "longitude")
    assert ds["t2m"].shape == (24, 33, 49)
    assert isinstance(ds["t2m"].data, da.Array)


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_era5(tmp_path / "missing.nc")
    with pytest.raises(FileNotFoundError, match="no files match"):
        open_era5(str(tmp_path / "none-*.nc"))
    cube().to_netcdf(tmp_path / "era5.nc")
    with pytest.raises(ValueError, match=r"unknown variable\(s\) \['sst'\].*\['t2m', 'u10'\]"):
        open_era5(tmp_path / "era5.nc", variables=["t2m", "sst"])
    with pytest.raises(ValueError, match="selects no time step.*2020-01-01"):
        open_era5(tmp_path / "era5.nc", time="2021")
