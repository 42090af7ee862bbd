"""Write the example notebooks from the cells below: ``python examples/make_notebooks.py``.

The notebooks are generated so that they stay valid JSON and carry no outputs;
edit them here, not in Jupyter. Each runs in a minute or two on a laptop CPU
with deliberately small settings (a crop of the data, a few dozen training
steps); the text says what to raise for real use. tests/test_notebooks.py runs
every one of them.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

ERA5_CROP = '''\
import xrimpute

ds = xrimpute.datasets.era5_sample()  # downloaded once (2.5 MB), then read from the cache
# three days over 6 x 8 degrees keep this example quick; drop the isel to use the whole month
ds = ds.isel(time=slice(0, 72), latitude=slice(0, 24), longitude=slice(8, 40))
ds'''

QUICKSTART = [
    new_markdown_cell("""\
# Quickstart: fill cloud gaps in ERA5 2 m temperature

A month of hourly ERA5 2 m temperature over the UK comes with xrimpute as a
sample. It is complete; we hide most of it the way clouds would hide the
surface from a satellite, train on what is left, and score the filled gaps
against the hidden truth.

The settings are small so that the notebook runs in a minute on a laptop CPU:
raise `steps` (or pass `max_time=` in seconds) for a useful model."""),
    new_code_cell(ERA5_CROP),
    new_markdown_cell("""\
## Simulate the observations

`xrimpute.observe` masks a complete cube like an observing system. Drifting
clouds leave 30 % of each frame visible; the result has the same dims, coords
and attrs, with NaN where the sky was cloudy."""),
    new_code_cell('''\
obs = xrimpute.observe(ds, "clouds", coverage=0.3, length_scale=6, seed=0)
float(obs["t2m"].notnull().mean())'''),
    new_markdown_cell("""\
## Train on the incomplete cube only

`mask="auto"` reads the structure of the gaps from the NaN pattern and prints
what it chose. Training contexts copy that structure, so that every gap can be
learned (see the documentation page *The method in plain words*)."""),
    new_code_cell('''\
model = obs.ctxdiff.fit(mask="auto", steps=60, batch_size=8, seed=0)
model'''),
    new_markdown_cell("""\
The summary ends with the *validation skill*: observed cells held back from
training (in cloud-shaped patches, like the real gaps) filled by the model and
scored against their observed values; 1 is perfect, 0 no better than the mean.

## Fill the gaps

Each gap is the average of `K` predictions from different random contexts;
`return_std=True` adds their spread as `t2m_std`. Observed values are kept
exactly."""),
    new_code_cell('''\
filled = obs.ctxdiff.impute(K=4, return_std=True)
filled'''),
    new_code_cell('''\
import xrimpute.baselines
from xrimpute import metrics

interpolated = xrimpute.baselines.fill(obs, "interpolate")
{"ctxdiff": metrics.mse_gaps(filled[["t2m"]], ds, obs)["t2m"],
 "linear interpolation": metrics.mse_gaps(interpolated, ds, obs)["t2m"]}'''),
    new_markdown_cell("""\
With 60 training steps the model has barely started and may lose to
interpolation. With `steps=1500` (a few minutes on a laptop CPU) its error on
the gaps of this crop comes out about 20 % below interpolation's, and its
validation skill above 0.9. The figures show one hour: the truth, what the
clouds let through, and both fillings on one
colour scale, then the ensemble spread and the training curves."""),
    new_code_cell('''\
xrimpute.plot.compare(ds, obs, filled[["t2m"]], interpolated, names=["ctxdiff", "interpolation"], time=30);'''),
    new_code_cell('''\
xrimpute.plot.spread(filled["t2m_std"], time=30);'''),
    new_code_cell('''\
xrimpute.plot.training_curves(model);'''),
    new_markdown_cell("""\
## Keep the model

A saved model fills any data with the same variable on the same grid. On an
object other than the one fitted, pass `model=`."""),
    new_code_cell('''\
model.save("t2m.xri")
model = xrimpute.load("t2m.xri")
next_clouds = xrimpute.observe(ds, "clouds", coverage=0.3, length_scale=6, seed=1)
next_clouds.ctxdiff.impute(model=model, K=4)'''),
]

SWATH = [
    new_markdown_cell("""\
# Satellite swaths: why the context must look like an observation

A polar-orbiting satellite sees the region in a few wide stripes a day. The
gaps between swaths are large and coherent, and that structure decides what
can be learned. This notebook checks, before any training, which mask
specification lets every gap be learned, then trains with it."""),
    new_code_cell(ERA5_CROP),
    new_code_cell('''\
obs = xrimpute.observe(ds, "swath", swath_width_km=1500, seed=0)
print(f"{float(obs['t2m'].notnull().mean()):.0%} of the cells observed")
xrimpute.plot.compare(ds, obs, time=int(obs["t2m"].notnull().sum(["latitude", "longitude"]).argmax()));'''),
    new_markdown_cell("""\
## What structure do the gaps have?

`xrimpute.check.infer` reads the observing system from the NaN pattern."""),
    new_code_cell('''\
found = xrimpute.check.infer(obs)
print(found.explanation)
found.spec'''),
    new_markdown_cell("""\
## Can every gap be learned?

A gap cell is learned only if, given a training context, it has a chance of
being a query. `xrimpute.check.check` maps that probability over the grid.
Contexts drawn pixel by pixel betray which cells were observed (a swath with a
few pixels dropped is still a swath), so the cells between swaths are never
queried; contexts that keep or drop whole swath segments reach them."""),
    new_code_cell('''\
from xrimpute.check import check

pixel = check(obs, mask="pixel", window=3)
swath = check(obs, mask=found.spec, window=3)
print(pixel.attrs["summary"], swath.attrs["summary"], sep="\\n\\n")'''),
    new_code_cell('''\
xrimpute.plot.coverage(pixel);
xrimpute.plot.coverage(swath);'''),
    new_markdown_cell("""\
## Train with the swath structure and fill the gaps

`mask="auto"` would choose the same specification. Small settings again:
raise `steps` for a useful model."""),
    new_code_cell('''\
model = obs.ctxdiff.fit(mask=found.spec, steps=60, batch_size=8, seed=0)
filled = obs.ctxdiff.impute(K=4)
model'''),
    new_code_cell('''\
xrimpute.plot.compare(ds, obs, filled, time=40);'''),
]

STATIONS = [
    new_markdown_cell("""\
# A station network with outages

Weather stations report at fixed places, and now and then a station goes
quiet for a few hours. Station data usually come as a CF *timeSeries* dataset:
`lat(station)`, `lon(station)` and data `(station, time)`. This notebook builds
such a dataset from the ERA5 sample (so that the truth is known), puts it on
the grid, trains on the station reports and fills the outages.

Only the outages can be filled: the field between stations is never observed,
so no context can teach it (it stays NaN)."""),
    new_code_cell(ERA5_CROP),
    new_markdown_cell("""\
## Station reports in CF timeSeries form

Forty stations at random places in the crop, each down for three runs of eight
hours."""),
    new_code_cell('''\
import numpy as np
import xarray as xr

rng = np.random.default_rng(0)
n = 40
lat = rng.uniform(float(ds.latitude.min()), float(ds.latitude.max()), n)
lon = rng.uniform(float(ds.longitude.min()), float(ds.longitude.max()), n)
truth = ds["t2m"].sel(latitude=xr.DataArray(lat, dims="station"),
                      longitude=xr.DataArray(lon, dims="station"), method="nearest").transpose("station", "time")

down = np.zeros(truth.shape, bool)
for station in range(n):
    for start in rng.choice(truth.sizes["time"] - 8, size=3, replace=False):
        down[station, start : start + 8] = True

reports = xr.Dataset(
    {"t2m": (("station", "time"), np.where(down, np.nan, truth.values), ds["t2m"].attrs)},
    coords={"time": ds["time"],
            "lat": ("station", lat, {"standard_name": "latitude", "units": "degrees_north"}),
            "lon": ("station", lon, {"standard_name": "longitude", "units": "degrees_east"}),
            "station_id": ("station", [f"S{i:02d}" for i in range(n)], {"cf_role": "timeseries_id"})},
    attrs={"featureType": "timeSeries"},
)
print(f"{down.mean():.0%} of the reports missing")
reports'''),
    new_markdown_cell("""\
## On the grid

`grid_stations` puts each report in its grid cell and time step (stations that
share a cell are averaged); `station_spec` is the mask specification of the
network: training contexts keep a random subset of the stations."""),
    new_code_cell('''\
from xrimpute.stations import grid_stations, station_spec

gridded = grid_stations(reports, ds)
spec = station_spec(reports)
print(xrimpute.check.infer(gridded).explanation)'''),
    new_code_cell('''\
model = gridded.ctxdiff.fit(mask=spec, steps=60, batch_size=8, seed=0)
filled = gridded.ctxdiff.impute(K=4)
model'''),
    new_markdown_cell("""\
## Score the filled outages

Back at the stations, compare the filled outages with the truth, and with
linear interpolation in time of each station's own series."""),
    new_code_cell('''\
at_stations = dict(latitude=xr.DataArray(lat, dims="station"), longitude=xr.DataArray(lon, dims="station"),
                   method="nearest")
ours = filled["t2m"].sel(**at_stations).transpose("station", "time")
in_time = reports["t2m"].interpolate_na("time", fill_value="extrapolate")
{"ctxdiff": float(((ours - truth) ** 2).values[down].mean()),
 "interpolation in time": float(((in_time - truth) ** 2).values[down].mean())}'''),
    new_code_cell('''\
import matplotlib.pyplot as plt

station = int(down.sum(1).argmax())
fig, ax = plt.subplots(figsize=(8, 3))
truth.isel(station=station).plot(ax=ax, label="truth", color="0.6")
ours.isel(station=station).where(down[station]).plot(ax=ax, marker=".", linestyle="none", label="filled outage")
reports["t2m"].isel(station=station).plot(ax=ax, label="reported")
ax.legend();'''),
]

DISTRIBUTED = [
    new_markdown_cell("""\
# Reconstructing an archive on a dask cluster

A model trained once fills an archive of any length. `reconstruct` writes the
filled archive to a zarr store region by region on a dask cluster; every
finished region is recorded, so a run that is killed resumes where it stopped.
Here the cluster is two local worker processes and the archive a small zarr
store; the same call runs on a GPU cluster (dask-cuda) or an HPC queue
(dask-jobqueue) through their `Client`."""),
    new_code_cell(ERA5_CROP),
    new_code_cell('''\
from pathlib import Path
import shutil

obs = xrimpute.observe(ds, "clouds", coverage=0.3, length_scale=6, seed=0)
shutil.rmtree("observed.zarr", ignore_errors=True)
obs.chunk({"time": 24}).to_zarr("observed.zarr", mode="w")  # the "archive": three daily chunks
model = obs.ctxdiff.fit(mask="auto", steps=40, batch_size=8, seed=0)
model.save("t2m.xri")'''),
    new_markdown_cell("""\
## Start a cluster and reconstruct

Workers read their own region (plus the few time steps either side that the
model's window needs) from the source, and load the model once each."""),
    new_code_cell('''\
from dask.distributed import Client, LocalCluster

from xrimpute.reconstruct import reconstruct

client = Client(LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None))
filled = reconstruct("observed.zarr", "t2m.xri", "filled.zarr", client=client, K=4, overwrite=True)
filled'''),
    new_markdown_cell("""\
The regions equal the in-memory imputation: every window draws its randomness
from its own seed, wherever it runs."""),
    new_code_cell('''\
import numpy as np

in_memory = obs.ctxdiff.impute(model=model, K=4)
np.testing.assert_allclose(filled["t2m"].values, in_memory["t2m"].values, rtol=1e-5, atol=1e-4)
print("same values as in memory")'''),
    new_markdown_cell("""\
## Resume

Running the same call again finds every region recorded and returns at once;
after an interruption it computes only the missing regions."""),
    new_code_cell('''\
again = reconstruct("observed.zarr", "t2m.xri", "filled.zarr", client=client, K=4)
client.close()
sorted(p.name for p in Path("filled.zarr.xrimpute/regions").iterdir())'''),
]

PDE_BENCHMARK = [
    new_markdown_cell("""\
# A PDE benchmark: blocks of missing data

Generated PDE data come with a known truth, which makes them a clean test bed.
Here tracers advected by random winds are observed in 5 of 9 blocks of a 3 x 3
grid, the same blocks in every frame of a trajectory: a missing block stays
missing, so nothing can be copied from other times. This is the setting of the
paper's Table 2, where the shape of the training contexts decides what can be
learned."""),
    new_code_cell('''\
import xrimpute

truth = xrimpute.datasets.advection("tiny", seed=0)  # 8 trajectories of 16 frames on a 32 x 32 grid, cached
obs = xrimpute.observe(truth, "block", grid=(3, 3), observed=5, static=True, seed=0)
xrimpute.plot.compare(truth, obs, time=8, sample=1);'''),
    new_markdown_cell("""\
## Pixel contexts cannot learn missing blocks

A gap cell is learned only if, given a training context, it may be a query.
With contexts drawn pixel by pixel, every observed block keeps some pixels in
the context, so a block with no pixel in the context was never observed: its
cells are never queried. Contexts that keep or drop whole blocks reach them."""),
    new_code_cell('''\
from xrimpute.check import check

for mask in ("pixel", "block"):
    print(check(obs, mask=mask).attrs["summary"], end="\\n\\n")'''),
    new_markdown_cell("""\
## The benchmark table

`xrimpute.bench.run` trains every learned method on the observed training
trajectories only and scores every method on the gaps of held-out test
trajectories, in units of the truth's standard deviation. The settings below
are tiny so that this cell takes a minute on a laptop CPU; at 40 training steps
the learned rows say little. For real numbers run
`xrimpute bench table2 --settings small --seeds 0,1,2` (300 steps, minutes per
condition on a CPU) or `--settings paper` on a GPU."""),
    new_code_cell('''\
from dataclasses import replace

from IPython.display import Markdown

from xrimpute import bench

tiny = replace(bench.SETTINGS["small"], steps=40, n_train=4, n_test=2, K=4)
report = bench.run("table2", settings=tiny, datasets=["advection"], methods=["ctxdiff", "interpolate", "temporal"],
                   out=None)
Markdown(report.markdown())'''),
]

NOTEBOOKS = {
    "quickstart": QUICKSTART,
    "satellite_swath": SWATH,
    "station_network": STATIONS,
    "pde_benchmark": PDE_BENCHMARK,
    "distributed_reconstruction": DISTRIBUTED,
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        notebook = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        })
        nbformat.validate(notebook)
        nbformat.write(notebook, HERE / f"{name}.ipynb")
        print(HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
