"""Sample data: the ERA5 sample (pooch-managed) and generated PDE samples, all in one cache."""
from ._cache import cache_dir
from .era5 import era5_sample, open_era5

__all__ = ["cache_dir", "era5_sample", "open_era5"]
