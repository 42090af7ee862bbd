"""xrimpute: learn complete dynamics from incomplete geophysical cubes and fill their gaps.

Importing xrimpute registers the ``.ctxdiff`` accessor on xarray objects.
"""
from . import accessor as _accessor  # noqa: F401  (registers .ctxdiff)
from . import datasets, masks, plot
from .distributed import reconstruct
from .model import CtxDiffModel, fit, load
from .observe import observe
from .options import set_options, show_versions
from .stations import grid_stations

__version__ = "0.1.0"
__all__ = ["CtxDiffModel", "datasets", "fit", "grid_stations", "load", "masks", "observe", "plot", "reconstruct", "set_options", "show_versions",
           "__version__"]
