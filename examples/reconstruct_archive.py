"""Reconstruct a multi-year archive on a local dask cluster, then plot a filled day.

Generates two "years" of a daily global temperature-like field (seasons,
travelling waves, weather noise) seen through drifting clouds, stores it as a
zarr archive chunked by month, fits a model on spatial tiles without loading
the archive, reconstructs it on two local worker processes and plots one day.
Running it again resumes (here: finds every region done). A couple of minutes
on a laptop CPU::

    python examples/reconstruct_archive.py --out reconstruct-demo
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from dask.distributed import Client, LocalCluster  # noqa: E402

import xrimpute  # noqa: E402
from xrimpute.reconstruct import reconstruct  # noqa: E402


def truth(years: int = 2, nlat: int = 32, nlon: int = 64, seed: int = 0) -> xr.Dataset:
    """Daily field on a global grid: seasonal cycle, eastward waves and smooth weather noise."""
    rng = np.random.default_rng(seed)
    days = np.arange(365 * years)
    lat = np.linspace(-87.1875, 87.1875, nlat)
    lon = np.arange(nlon) * 360.0 / nlon
    d, la, lo = days[:, None, None], np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
    season = 12 * np.sin(la) * np.cos(2 * np.pi * (d - 15) / 365)
    waves = 4 * np.cos(la) * np.sin(3 * lo - 0.35 * d) + 2 * np.cos(la) ** 2 * np.sin(5 * lo + 0.2 * d)
    noise = np.cumsum(rng.normal(0, 0.4, (days.size, 1, nlon)), axis=0) * np.cos(la) * 0.3
    field = 288 - 30 * np.sin(la) ** 2 + season + waves + noise
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), field.astype("f4"), {"units": "K", "long_name": "temperature"})},
        coords={"time": np.datetime64("2001-01-01") + days * np.timedelta64(1, "D"),
                "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
                "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"})},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="reconstruct-demo", help="folder for the archive, model, result and figure")
    parser.add_argument("--years", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    complete = truth(args.years)
    observed = xrimpute.observe(complete, "clouds", coverage=0.3, length_scale=4, seed=0)
    observed.chunk(time=30).to_zarr(out / "archive.zarr", mode="w", consolidated=False)
    archive = xr.open_zarr(out / "archive.zarr", consolidated=False)  # lazy: nothing read yet
    print(f"archive: {archive.sizes['time']} days on a {archive.sizes['latitude']} x {archive.sizes['longitude']} "
          f"grid, {float(observed['t2m'].notnull().mean()):.0%} observed, chunks of 30 days")

    # trains on random 32 x 32 tiles read chunk by chunk; position is an input, so one model serves the globe
    model = xrimpute.fit(archive, mask="auto", tile=(32, 32), steps=args.steps, batch_size=16, seed=0)
    model.save(out / "model.xri")
    print(model)

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        start = time.perf_counter()
        filled = reconstruct(out / "archive.zarr", out / "model.xri", out / "filled.zarr", client=client, K=4)
        print(f"reconstructed in {time.perf_counter() - start:.0f} s into {out / 'filled.zarr'}")
        start = time.perf_counter()
        reconstruct(out / "archive.zarr", out / "model.xri", out / "filled.zarr", client=client, K=4)
        print(f"second call: every region recorded, done in {time.perf_counter() - start:.1f} s")

    gaps = observed["t2m"].isnull()
    error = float(np.sqrt(((filled["t2m"] - complete["t2m"]) ** 2).where(gaps).mean()))
    daily_mean = observed["t2m"].mean(("latitude", "longitude"))
    baseline = float(np.sqrt(((daily_mean - complete["t2m"]) ** 2).where(gaps).mean()))
    print(f"RMSE in the gaps: {error:.2f} K (each day's observed mean: {baseline:.2f} K)")

    day = filled.time.values[400]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), constrained_layout=True)
    style = dict(vmin=float(complete["t2m"].min()), vmax=float(complete["t2m"].max()), cmap="RdYlBu_r")
    for ax, (title, data) in zip(axes, [("truth", complete), ("observed", observed), ("reconstructed", filled)]):
        data["t2m"].sel(time=day).plot(ax=ax, **style)
        ax.set_title(f"{title}, {str(day)[:10]}")
    fig.savefig(out / "filled-day.png", dpi=100)
    print(f"figure: {out / 'filled-day.png'}")


if __name__ == "__main__":
    main()
