"""Wrote the fixtures of tests/test_same_imputations.py with the code before the engine restructuring (issue 13).

It ran once, on commit 0b98ddf (``python tests/data/make_before_move.py``; its imports are updated since);
the files it wrote are the reference that later code must reproduce bit for bit from the same model file
and seed. The fitted network is swapped for a narrow one (8 channels) trained briefly, so that the model
files stay small. Rerunning it now writes new fixtures, not the ones from before the move.

``python tests/data/make_before_move.py --references`` redraws only the imputed references, from the
stored model files and input, after a deliberate change of what imputation returns (the changes are
listed in tests/test_same_imputations.py).
"""
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import xrimpute
from xrimpute.nets import Denoiser
from xrimpute.training import TrainConfig, seeded, train
from xrimpute.samplers import ArrayWindows

HERE = Path(__file__).parent


def cube(t: int = 8, n: int = 12, seed: int = 0) -> xr.Dataset:
    """A small global cube of two variables, 40 % of the cells missing."""
    rng = np.random.default_rng(seed)
    lat, lon = np.linspace(-82.5, 82.5, n), np.arange(n) * 360.0 / n
    steps = np.arange(t)[:, None, None]
    la, lo = np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
    fields = {"t2m": 280 + 10 * np.cos(la) + 3 * np.sin(lo + 0.3 * steps),
              "u10": 5 * np.sin(2 * lo - 0.2 * steps) * np.cos(la)}
    data = {name: (("time", "latitude", "longitude"),
                   np.where(rng.random((t, n, n)) < 0.4, np.nan, f + rng.normal(0, 0.3, (t, n, n))).astype("f4"),
                   {"units": "1"}) for name, f in fields.items()}
    coords = {"time": np.datetime64("2020-01-01") + np.arange(t) * np.timedelta64(1, "h"),
              "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
              "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"})}
    return xr.Dataset(data, coords=coords)


def narrow(model, data) -> Denoiser:
    """A narrow network for ``model``, trained for 20 steps on ``data``."""
    config = model.denoiser.config
    with seeded(1):
        net = Denoiser(config["n_channels"], config["window"], model.denoiser.static, preset="tiny",
                       periodic=config["periodic"], channels=8, mults=(1, 2))
    values = np.stack([data[v].values for v in model.channels])[None]
    x = np.nan_to_num((values - model.mean[None, :, None, None, None]) / model.std[None, :, None, None, None])
    tile = model.info["tile"] and tuple(model.info["tile"])
    windows = ArrayWindows(x, np.isfinite(values), model.window, tile=tile, static=net.static.numpy())
    ema, _ = train(net, windows, model.spec, TrainConfig(steps=20, batch_size=4, warmup=2), progress=False)
    return ema.eval()


def write_references(name: str, model) -> None:
    """The imputations, lazy imputations and (for ``whole``) draws of ``model`` that the test compares with."""
    data = xr.load_dataset(HERE / "before_move_input.nc")
    out = model.impute(data, K=3, seed=5, stride=2, return_std=True, progress=False)
    lazy = model.impute(data.chunk(time=3, latitude=6, longitude=6), K=3, seed=5, stride=2, return_std=True,
                        progress=False).compute()
    out = out.merge(lazy.rename({v: f"{v}_lazy" for v in lazy.data_vars}))
    if name == "whole":
        members = model.sample(data, n=2, steps=3, K=2, seed=7, progress=False)
        out = out.merge({f"{v}_members": members[v] for v in members.data_vars})
    out.to_netcdf(HERE / f"before_move_{name}_imputed.nc")


def main():
    torch.set_num_threads(1)
    data = cube()
    data.to_netcdf(HERE / "before_move_input.nc")
    options = dict(mask="pixel", steps=20, batch_size=4, progress=False, verbose=False, seed=0, val_fraction=0.1)
    for name, extra in (("whole", {}), ("tiled", dict(tile=(8, 8)))):
        model = xrimpute.fit(data, **options, **extra)
        model.engine.denoiser = narrow(model, data)
        model.save(HERE / f"before_move_{name}.xri")
        write_references(name, xrimpute.load(HERE / f"before_move_{name}.xri"))


def redraw_references():
    """The references from the stored model files, contexts drawn as the test draws them (one for all variables)."""
    torch.set_num_threads(1)
    for name in ("whole", "tiled"):
        model = xrimpute.load(HERE / f"before_move_{name}.xri")
        model.engine.spec = replace(model.spec, shared=True)
        write_references(name, model)


if __name__ == "__main__":
    redraw_references() if "--references" in sys.argv[1:] else main()
