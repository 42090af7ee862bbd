"""The README figure: truth, observed and imputed tracer from a quickstart run.

    python -m xrimpute quickstart --out quickstart && python docs/figures/make_readme_figure.py quickstart
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import xarray as xr  # noqa: E402

import xrimpute  # noqa: E402

run = Path(sys.argv[1] if len(sys.argv) > 1 else "quickstart")
truth = xrimpute.datasets.advection("tiny")["tracer"]
observed = xr.open_zarr(run / "observed.zarr")["tracer"]
filled = xr.open_zarr(run / "filled.zarr")["tracer"]
fig = xrimpute.plot.compare(truth, observed, filled, time=8, sample=0, names=["ctxdiff"])
fig.savefig(Path(__file__).with_name("readme.png"), dpi=80, bbox_inches="tight")
