"""Normalisation statistics that a few wild values cannot blow up. No xarray here.

A single 1e20 among temperatures would make the plain standard deviation
1e18 and every normalised value 0. The statistics are taken instead over
the values within a *fence* around the median, ``FENCE`` robust spreads
wide: so wide that a Gaussian field, or a skewed one such as rain, keeps
every value (or all but a few in a million), and its statistics are the
plain ones.
"""
from __future__ import annotations

import numpy as np

FENCE = 20.0  # robust spreads each side of the median: wide enough for skewed fields (rain, wind) to keep their tails
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation of a Gaussian
RANGE_TO_SIGMA = 4.6527  # width of the central 98 % -> standard deviation of a Gaussian
MOST = 1_000_000  # values the median and spread are taken on (evenly strided), enough for a fence


def fence(values: np.ndarray, width: float = FENCE) -> tuple[float, float]:
    """``(low, high)``: the range of values counted in the statistics of the finite ``values``.

    The spread is the median absolute deviation, or where more than half the
    values are equal (e.g. a dry region's zero rain) the central 98 % range;
    where that too is 0, there is no fence (``(-inf, inf)``). A 1-D array of
    any length; empty gives no fence.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return -np.inf, np.inf
    values = values[:: max(1, values.size // MOST)]
    centre = float(np.median(values))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(values - centre)))
    if spread == 0:
        low, high = np.quantile(values, [0.01, 0.99])
        spread = float(high - low) / RANGE_TO_SIGMA
    if spread == 0 or not np.isfinite(spread):
        return -np.inf, np.inf
    return centre - width * spread, centre + width * spread


def inliers(values: np.ndarray, width: float = FENCE) -> np.ndarray:
    """Mask of the finite ``values`` inside their :func:`fence` (the ones to take statistics over)."""
    values = np.asarray(values)
    low, high = fence(values, width)
    return np.isfinite(values) & (values >= low) & (values <= high)


__all__ = ["FENCE", "fence", "inliers"]
