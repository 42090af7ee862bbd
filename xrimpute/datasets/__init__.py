"""Sample data: the ERA5 sample (pooch-managed) and generated PDE samples, all in one cache."""
from ._cache import cache_dir
from .era5 import era5_sample, open_era5
from .generated import advection, navier_stokes, shallow_water

__all__ = ["advection", "cache_dir", "era5_sample", "navier_stokes", "open_era5", "shallow_water"]
