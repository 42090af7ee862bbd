"""Spatial structure of boolean frames: connected segments and the autocorrelation of the observed indicator.

Shared by the specs (a swath context keeps whole segments; :meth:`Swath.from_mask`
reads the stripes' geometry) and by :func:`xrimpute.masks.infer`.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..geometry import evenly_spaced


def label_segments(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected pieces (8-neighbours) of the True cells of each ``(H, W)`` frame, labelled 1.. across all frames."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # neighbours within a frame only
    labels, count = ndimage.label(frames.reshape(-1, *frames.shape[-2:]), structure=structure)
    return labels.reshape(frames.shape), count


def _autocorrelation(frames: np.ndarray, valid: np.ndarray, max_lag: int) -> np.ndarray:
    """Autocorrelation ``(2L + 1, 2L + 1)`` over lags of the observed indicator, over valid cells only; 0 at lags
    that no two valid cells lie apart by (beyond a grid of one row or column, say)."""
    h, w = valid.shape
    shape = (2 * max(h, max_lag + 1), 2 * max(w, max_lag + 1))  # zero padding: no wrap-around
    v = valid.astype(float)
    pairs = np.fft.irfft2(np.abs(np.fft.rfft2(v, s=shape)) ** 2, s=shape)
    numerator, variance = np.zeros(shape), 0.0
    for frame in frames:
        z = (frame - frame[valid].mean()) * v
        numerator += np.fft.irfft2(np.abs(np.fft.rfft2(z, s=shape)) ** 2, s=shape)
        variance += (z * z).sum() / v.sum()
    rho = np.where(pairs > 0.5, numerator / np.maximum(variance * pairs, 1e-12), 0.0)
    rho = np.fft.fftshift(rho)
    rows, cols = shape[0] // 2, shape[1] // 2  # lag 0
    return rho[rows - max_lag : rows + max_lag + 1, cols - max_lag : cols + max_lag + 1]


def spatial_statistics(frames: np.ndarray, valid: np.ndarray, most: int = 48) -> dict:
    """Neighbour correlation, correlation lengths, orientation and segments of frames ``(F, H, W)`` with gaps.

    The correlation lengths are the half-axes of the region around lag 0 where
    the indicator's autocorrelation stays above 1/2 (from its second moments):
    the half-width of a stripe across it, half its length along it.
    """
    counts = frames[:, valid].sum(1)
    frames = frames[(counts > 0) & (counts < valid.sum())]
    if not len(frames):
        return dict(neighbour_correlation=math.nan, major=0.0, minor=0.0, orientation=90.0, anisotropy=1.0,
                    segments=0.0)
    h, w = valid.shape
    most = max(4, min(most, int(2e7 // (h * w))))  # bounded work on large grids
    frames = frames[evenly_spaced(len(frames), most)]
    max_lag = max(1, min(min(h, w) // 2, 64))
    rho = _autocorrelation(frames, valid, max_lag)
    centre = max_lag
    # the neighbours the grid has: a grid of one row or column has none across it
    neighbours = ([rho[centre, centre + 1]] * (w > 1) + [rho[centre + 1, centre]] * (h > 1)
                  + [rho[centre + 1, centre + 1], rho[centre + 1, centre - 1]] * (h > 1 and w > 1))
    lobe, _ = ndimage.label(rho >= 0.5)
    dy, dx = np.nonzero(lobe == lobe[centre, centre])
    dy, dx = dy - centre, dx - centre
    moments = np.array([[np.mean(dx * dx), np.mean(dx * dy)], [np.mean(dx * dy), np.mean(dy * dy)]])
    eigenvalues, eigenvectors = np.linalg.eigh(moments)
    # a uniformly filled ellipse with half-axes a > b has second moments a^2/4 and b^2/4
    major, minor = 2 * np.sqrt(np.maximum(eigenvalues[::-1], 0.0))
    orientation = float(np.degrees(np.arctan2(eigenvectors[1, 1], eigenvectors[0, 1])) % 180)
    labels, _ = label_segments(frames)
    segments = [len(np.unique(f)) - 1 for f in labels]
    return dict(neighbour_correlation=float(np.mean(neighbours)), major=float(major), minor=float(minor),
                orientation=orientation, anisotropy=float(major / max(minor, 0.5)),
                segments=float(np.median(segments)))


def swath_geometry(stats: dict) -> dict:
    """Swath fields from spatial statistics: a stripe of width w has a half-lag of w / 2 across it."""
    return dict(orientation=round(stats["orientation"], 1), width=round(max(1.0, 2 * stats["minor"]), 1))
