"""Coverage maps for docs/masks.md: one observed frame, pixel context, the inferred context.

    python docs/figures/make_coverage_figures.py     # writes docs/figures/coverage_*.png

Each figure shows a generated observing system on a small lat/lon cube, the
query coverage of pixel contexts on it, and that of the spec ``infer`` picks.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from xrimpute import masks, observe  # noqa: E402
from xrimpute.check import check, infer, plot_coverage  # noqa: E402

HERE = Path(__file__).parent


def cube(samples=6, steps=24, freq="6h"):
    lat, lon = np.linspace(30.0, 60.0, 32), np.linspace(-10.0, 30.0, 40)
    coords = {"time": pd.date_range("2020-01-01", periods=steps, freq=freq),
              "lat": ("lat", lat, {"units": "degrees_north", "long_name": "latitude"}),
              "lon": ("lon", lon, {"units": "degrees_east", "long_name": "longitude"})}
    return xr.DataArray(np.ones((samples, steps, lat.size, lon.size), np.float32),
                        dims=("sample", "time", "lat", "lon"), coords=coords, name="t2m")


def land_clouds():
    seen = observe(cube(), "clouds", coverage=0.5, length_scale=3, seed=0)
    return seen.where(~((seen.lon > 18) & (seen.lat < 42)))  # a block of land: never observed


SYSTEMS = {
    "block": lambda: observe(cube(), "block", grid=(3, 3), observed=5, seed=0),
    "swath": lambda: observe(cube(), "swath", swath_width_km=1200, seed=0),
    "clouds": land_clouds,
    "station": lambda: observe(cube(samples=1, steps=96, freq="h"), "station", n=40, outage=0.3, seed=0),
}


def figure(name: str, seen: xr.DataArray) -> Path:
    inferred = infer(seen).spec
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.0), constrained_layout=True)
    first = seen.isel(sample=0) if "sample" in seen.dims else seen
    observed = first.notnull()
    counts = observed.sum(("lat", "lon")).values
    frame = observed.isel(time=int(np.argsort(counts)[len(counts) // 2]))  # a typical step
    frame.plot(ax=axes[0], cmap="Greys_r", add_colorbar=False)
    axes[0].set_title(f"{name}: one observed step (white)", fontsize=9)
    for ax, spec in zip(axes[1:], (masks.Pixel(), inferred)):
        plot_coverage(check(seen, mask=spec, n_draws=128), ax=ax)
    path = HERE / f"coverage_{name}.png"
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


if __name__ == "__main__":
    for name, make in SYSTEMS.items():
        path = figure(name, make())
        print(f"{path} ({path.stat().st_size / 1024:.0f} KB)")
