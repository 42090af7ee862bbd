"""The stations' correlation over time: a first guess that a station network measures for itself.

A station network observes the same cells at every step, so how the field at
two stations varies together is measured over the whole series rather than
guessed from one frame's few values. :func:`station_statistics` fits, per
variable, each station's mean and spread over time
(:func:`~xrimpute.nets.prior.station_correlation` draws them between stations
by the thin plate), and a correlation of the standardised departures that
falls with distance, ``exp(-(d / range) ** shape)`` with a nugget on the
diagonal, its range, shape and nugget those that best predict each station
from the others at every step (leaving it out). :func:`correlation_guess`
kriges a window's frames with it: the standardised departures (simple
kriging), the mean and spread put back.

The guess is a function of the context alone (the fit's training series gives
the statistics, as it gives the covariance of ``optimal interpolation``), so
the context-query loss is untouched.
"""
from __future__ import annotations

import itertools

import torch

from ..errors import ArgumentError

RANGES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0)
"""The correlation's ranges tried, in the grid's larger side (as :func:`~xrimpute.nets.prior.spline` scales)."""
SHAPES = (1.0, 2.0)
"""The correlation's shapes tried: exponential (1) and Gaussian (2)."""
NUGGETS = (1e-3, 1e-2, 0.05, 0.1, 0.3)
"""The nuggets tried: the share of a station's variance its neighbours cannot tell, at any distance."""
FEWEST_STATIONS = 4
"""Stations a variable needs for its correlation to be fitted (fewer: no guess from it)."""
FITTED_MASKS = 16
"""The most frequent sets of reporting stations whose frames the correlation is fitted on (outages make more)."""
FEWEST_REPORTS = 2
"""Steps a cell must be observed at to count as a station (its mean and spread)."""
PARAMETERS = 3
"""The correlation's parameters of each variable, in this order: range, shape, nugget."""
CHUNK_ENTRIES = 2**22
"""Entries of the correlation between the context and the grid's cells that :func:`correlation_guess` makes at once
(32 MiB in double precision): 256 stations on a grid of 200 x 400 cells would take 160 MiB at once."""


def _distances(first: torch.Tensor, second: torch.Tensor, shape: tuple[int, int], periodic: bool,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(len(first), len(second))``: the distance between flat cells of a grid of ``shape``, in its larger side,
    round the columns where they wrap."""
    h, w = shape
    rows = (first[:, None] // w - second[None, :] // w).to(dtype)
    cols = (first[:, None] % w - second[None, :] % w).abs().to(dtype)
    if periodic:
        cols = torch.minimum(cols, w - cols)
    return torch.sqrt(rows**2 + cols**2) / max(h, w)


def _correlation(distance: torch.Tensor, length, shape) -> torch.Tensor:
    """The correlation at ``distance`` of the range ``length`` and ``shape`` (:data:`PARAMETERS`; numbers, or
    tensors that broadcast against it), without the nugget."""
    return torch.exp(-((distance / length) ** shape))


def station_statistics(values: torch.Tensor, observed: torch.Tensor, periodic: bool = False,
                       most: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(cells, statistics, parameters)`` of one variable of a station network's series ``(..., H, W)`` of frames
    (normalised, any value where not ``observed``): the flat indices of its stations (cells observed at
    :data:`FEWEST_REPORTS` steps), their mean and the logarithm of their spread over time ``(2, n)``, and the
    correlation ``(3,)`` (:data:`PARAMETERS`) whose simple kriging best predicts each station's standardised
    departures from the others', frame by frame (leaving one out, over the :data:`FITTED_MASKS` most frequent sets of
    reporting stations). None where there are fewer than :data:`FEWEST_STATIONS` stations, or more than ``most``,
    or no frame reports from as many. Only the stations' series are copied. ``periodic``: the columns wrap round."""
    values, observed = torch.as_tensor(values), torch.as_tensor(observed)
    h, w = values.shape[-2:]
    cells = torch.nonzero(observed.flatten(0, -3).sum(0).flatten() >= FEWEST_REPORTS)[:, 0]
    if len(cells) < FEWEST_STATIONS or (most is not None and len(cells) > most):
        return None
    rows, cols = cells // w, cells % w
    reports = observed[..., rows, cols].reshape(-1, len(cells))
    series = torch.where(reports, values[..., rows, cols].reshape(-1, len(cells)).double(), 0.0)
    count = reports.sum(0).double()
    mean = series.sum(0) / count
    spread = torch.sqrt((((series - mean) ** 2) * reports).sum(0) / count).clamp(min=1e-6)
    standardised = torch.where(reports, (series - mean) / spread, 0.0)
    parameters = _fitted(standardised, reports, _distances(cells, cells, (h, w), periodic))
    return None if parameters is None else (cells, torch.stack([mean, spread.log()]).float(), parameters)


def _fitted(standardised: torch.Tensor, reports: torch.Tensor, distance: torch.Tensor) -> torch.Tensor | None:
    """``(3,)``: the range, shape and nugget among :data:`RANGES`, :data:`SHAPES` and :data:`NUGGETS` whose simple
    kriging of each reporting station from the others' ``standardised`` departures ``(F, n)`` misses least; None
    where no frame reports from :data:`FEWEST_STATIONS` stations."""
    sets, inverse, counts = torch.unique(reports, dim=0, return_inverse=True, return_counts=True)
    grid = torch.tensor(list(itertools.product(RANGES, SHAPES, NUGGETS)), dtype=torch.float64)
    misses, fitted = torch.zeros(len(grid), dtype=torch.float64), False
    for k in counts.argsort(descending=True)[:FITTED_MASKS].tolist():
        present = torch.nonzero(sets[k])[:, 0]
        if len(present) < FEWEST_STATIONS:
            continue
        system = _correlation(distance[present][:, present], grid[:, 0, None, None], grid[:, 1, None, None])
        system = system + grid[:, 2, None, None] * torch.eye(len(present), dtype=torch.float64)
        inverse_system = torch.linalg.inv(system)  # (P, m, m)
        z = standardised[inverse == k][:, present]  # (f, m)
        # leaving station i out, simple kriging misses it by (K^-1 z)_i / (K^-1)_ii
        left_out = torch.einsum("fm,pmk->pfk", z, inverse_system) / torch.diagonal(inverse_system, dim1=1, dim2=2)[
            :, None]
        misses += (left_out**2).sum(dim=(1, 2))
        fitted = True
    return grid[int(misses.argmin())].float() if fitted else None


def correlation_guess(values: torch.Tensor, mask: torch.Tensor, fields: torch.Tensor, parameters: torch.Tensor,
                      fewest: int, periodic: bool = False) -> torch.Tensor:
    """Each frame of ``(B, C, T, H, W)`` windows with at least ``fewest`` context cells (NaN elsewhere) kriged from
    them: the simple kriging of their standardised departures from each cell's mean under the correlation
    ``parameters`` ``(C, 3)``, the mean and spread of ``fields`` ``(C, 2, H, W)`` (:func:`station_statistics`) put
    back. Frames with the same context cells share one solve, in double precision where the device has it; the
    correlation of the cells any frame holds to every cell is made once, :data:`CHUNK_ENTRIES` at a time."""
    b, c, t, h, w = values.shape
    if tuple(fields.shape[-2:]) != (h, w):
        raise ArgumentError(f"the stations' correlation covers a grid of {tuple(fields.shape[-2:])} cells, the "
                            f"windows hold {(h, w)}: it guesses whole-grid windows only; impute the grid it was "
                            "fitted on, whole")
    precise = torch.float32 if values.device.type == "mps" else torch.float64
    out = torch.full((b, c, t, h * w), float("nan"), device=values.device, dtype=precise)
    every = torch.arange(h * w, device=values.device)
    for channel in range(c):
        frames = values[:, channel].reshape(b * t, h * w).to(precise)
        seen = mask[:, channel].reshape(b * t, h * w)
        mean, spread = fields[channel, 0].flatten().to(precise), fields[channel, 1].flatten().exp().to(precise)
        correlation = parameters[channel].to(precise)
        guess = torch.full((b * t, h * w), float("nan"), device=values.device, dtype=precise)
        # every frame's weights on the cells any frame holds, then one product with their correlation to every cell
        reporting = torch.nonzero(seen.any(0))[:, 0]
        position = torch.zeros(h * w, dtype=torch.long, device=values.device)
        position[reporting] = torch.arange(len(reporting), device=values.device)
        weights = torch.zeros(len(reporting), b * t, device=values.device, dtype=precise)
        kriged = torch.zeros(b * t, dtype=torch.bool, device=values.device)
        sets, inverse = torch.unique(seen, dim=0, return_inverse=True)
        for k in range(len(sets)):
            cells = torch.nonzero(sets[k])[:, 0]
            if len(cells) < fewest:
                continue
            system = _correlation(_distances(cells, cells, (h, w), periodic, precise), *correlation[:2])
            system = system + correlation[2] * torch.eye(len(cells), device=values.device, dtype=precise)
            which = torch.nonzero(inverse == k)[:, 0]
            standardised = (frames[which][:, cells] - mean[cells]) / spread[cells]
            weights[position[cells][:, None], which[None, :]] = torch.linalg.solve(system, standardised.T)
            kriged[which] = True
        if not bool(kriged.any()):
            continue
        frames_kriged = weights[:, kriged].T  # (frames, reporting cells)
        departures = torch.empty(len(frames_kriged), h * w, device=values.device, dtype=precise)
        for part in every.split(max(1, CHUNK_ENTRIES // len(reporting))):
            departures[:, part] = frames_kriged @ _correlation(_distances(reporting, part, (h, w), periodic, precise),
                                                               *correlation[:2])
        guess[kriged] = mean + spread * departures
        out[:, channel] = guess.view(b, t, h * w)
    return out.view(b, c, t, h, w)
