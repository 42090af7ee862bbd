"""Mask specifications: how observations are structured, and contexts that copy it.

Every tensor here is a boolean observation mask ``(N, C, T, H, W)`` (True =
observed) on the unpadded grid. A :class:`MaskSpec` does three things:

* ``context(observed)`` draws a context mask inside ``observed`` with the
  *same structure* as the observing system (Principle 1 of the method: keep
  whole blocks for block data, random pixels for pixel data, ...);
* ``query(observed, context)`` says which cells enter the loss (default: all
  observed cells);
* ``cell_log_likelihood`` and ``units`` let :func:`query_coverage` compute, for
  every cell, the probability of being queried given a context (Theorem 1).
  A cell with zero probability is never learned.

Specs: :class:`Pixel`, :class:`Block`, :class:`Station`, :class:`Swath`,
:class:`TimeGap`, :class:`Patches` (alias :data:`Clouds`) and
:class:`Combined`. :func:`infer` reads the structure of a NaN pattern and
picks a spec; :func:`learnability` maps the query coverage of a spec over the
grid and :func:`warn_if_unlearnable` warns when gaps would never be learned.
Cells never observed (land, outside a station network) are never queried;
:mod:`.reach` tells those beyond the observing system's reach (kept NaN by
default) from gaps left by chance (filled).

The package holds three concepts, each in its own module, importing downward
only: :mod:`.specs` (the specs, their context samplers and the hold-out),
:mod:`.infer` (the structure of a NaN pattern, and :func:`resolve`) and
:mod:`.coverage` (query coverage and learnability); :mod:`.spatial` holds the
spatial statistics that specs and inference share. Like the rest of the
numeric core it knows no xarray and takes boolean masks; :func:`xrimpute.check.infer`
and :func:`xrimpute.check.check` read them from a cube.
"""
from ..geometry import block_index
from .coverage import (ZERO_COVERAGE, Learnability, QueryDraws, learnability, query_coverage, query_probability,
                       warn_if_unlearnable)
from .infer import Inference, find_block_grid, infer, infer_pixel_or_block, resolve
from .reach import (Reach, context_near_gaps, gaps_in_reach, gaps_near_in_time, gaps_only_where_never_observed,
                    observations_persist, observed_run, reach, unreachable)
from .specs import (
    ALIASES,
    NOT_SAVED,
    SPECS,
    Block,
    Clouds,
    Combined,
    MaskSpec,
    MaskSpecError,
    Patches,
    Pixel,
    Station,
    Swath,
    TimeGap,
    clouded,
    holdout_keep,
    lasting,
    of_stations,
    other_clouds_keep,
)

__all__ = [
    "ALIASES", "NOT_SAVED", "SPECS", "ZERO_COVERAGE", "Block", "Clouds", "Combined", "Inference", "Learnability",
    "MaskSpec", "MaskSpecError", "Patches", "Pixel", "QueryDraws", "Station", "Swath", "TimeGap", "block_index",
    "clouded", "find_block_grid", "holdout_keep", "infer", "infer_pixel_or_block", "lasting", "learnability",
    "of_stations", "query_coverage", "query_probability", "resolve", "warn_if_unlearnable",
    "Reach", "context_near_gaps", "gaps_in_reach", "gaps_near_in_time", "gaps_only_where_never_observed",
    "observations_persist", "observed_run", "other_clouds_keep", "reach", "unreachable",
]
