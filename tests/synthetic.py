"""Small generated cubes for tests: advected Gaussian blobs on a periodic square."""
import numpy as np
import xarray as xr


def blobs(n: int = 4, t: int = 16, size: int = 24, seed: int = 0) -> xr.DataArray:
    """``(sample, time, y, x)`` field of four Gaussian blobs per sample drifting at constant speed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    out = np.zeros((n, t, size, size), np.float32)
    for i in range(n):
        for _ in range(4):
            start, velocity = rng.uniform(0, size, 2), rng.uniform(-1, 1, 2)
            amplitude, width = rng.uniform(0.5, 1.5) * rng.choice([-1, 1]), rng.uniform(3, 6)
            for k in range(t):
                cy, cx = (start + velocity * k) % size
                dy = (yy - cy + size / 2) % size - size / 2
                dx = (xx - cx + size / 2) % size - size / 2
                out[i, k] += amplitude * np.exp(-(dy**2 + dx**2) / (2 * width**2))
    coords = {"x": ("x", np.arange(size, dtype=float), {"axis": "X"}),
              "y": ("y", np.arange(size, dtype=float), {"axis": "Y"}),
              "time": np.arange(t)}
    return xr.DataArray(out, dims=("sample", "time", "y", "x"), coords=coords, name="u",
                        attrs={"units": "1", "long_name": "tracer"})


def latlon_cube(t: int = 8, nlat: int = 10, nlon: int = 12, seed: int = 0) -> xr.Dataset:
    """A two-variable Dataset on a lat/lon grid with a static land mask variable."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(40, 60, nlat)
    lon = np.linspace(-10, 12, nlon)
    base = np.sin(np.arange(t))[:, None, None] + np.cos(np.deg2rad(lat))[None, :, None] + lon[None, None, :] / 20
    ds = xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), (280 + 5 * base + rng.normal(0, 0.1, (t, nlat, nlon))).astype("f4"),
                    {"units": "K", "long_name": "2 m temperature"}),
            "sp": (("time", "lat", "lon"), (1e5 + 300 * base).astype("f4"), {"units": "Pa"}),
            "lsm": (("lat", "lon"), (rng.random((nlat, nlon)) > 0.5).astype("f4")),
        },
        coords={"time": np.datetime64("2019-03-01T00") + np.arange(t) * np.timedelta64(1, "h"),
                "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
                "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"})},
        attrs={"title": "test cube"},
    )
    return ds
