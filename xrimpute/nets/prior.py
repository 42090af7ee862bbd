"""A first guess from the context alone: multi-scale space-time normalised convolution.

Normalised convolution (Knutsson & Westin) smooths the context values and the
context mask with the same kernel and divides: at every cell, a weighted mean
of the context cells near it, in space and time. Fine scales keep detail where
the context is dense; coarse ones reach into large gaps. The scales are
blended coarse to fine, each finer one taking over where its own share of
context cells is at least ``threshold``.

The guess and its certainty (the finest scale's local share of context cells)
go into the network as extra input channels, and the network predicts the
correction to the guess. The guess is a function of the context only, so the
context-query loss and Theorem 1 are untouched: a query cell outside the
context never reaches the network's input.

Which reach suits a cube depends on it (an hourly field is best filled from
the same cell an hour away, a turbulent one from its neighbours now), so a fit
chooses the levels among :data:`CANDIDATES` by their error on its held-back
cells (:func:`choose_guess`), before training, as imputation fills them (the mean over the overlapping windows
holding each cell, :func:`blend_runs`); it costs a pass per candidate, and the finalists another over those
windows.

Where gaps lie far in time from any window's context (swaths that leave
frames empty for hours), the guess can also lean on each cell's history: the
observations of its series *outside* the window (:func:`history_baseline`).
The guess then interpolates anomalies from that baseline. Observations outside
the window are never query cells of the window's loss, so Theorem 1 holds.

Where a cell is observed a few steps before and after the window (gaps drawn
anew every step), a curve through those observations is a better baseline
than any mean: :func:`nearby_baseline`, from each window's
``nearby`` input (:func:`xrimpute.windows.nearby_observations`), used at the
cells that have one (:func:`nearby_guess`). Those cells too lie outside the
window. A fit scores every candidate with and without it and keeps the best.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..errors import ArgumentError, ArgumentTypeError
from .correlation import PARAMETERS, correlation_guess, station_statistics


Levels = tuple[tuple[float, float], ...]
DEFAULT_LEVELS: Levels = ((1.0, 1.0), (2.0, 1.0), (4.0, 1.0))
"""(space, time) Gaussian widths in cells and steps, one per level: three spatial scales, one step in time."""
WIDE_LEVEL = (8.0, 4.0)
"""The widest level of the "wide" candidates: 8 cells and 4 steps (4 steps, not 2, took 13-16 % off the swath's
gap error)."""
ACROSS_STEPS = 40
"""Conjugate-gradient steps of the guesses bent across a window's steps (more cells to settle than a frame's)."""
COVARIANCE_LAGS = 3
"""Steps either side over which the covariance guess's space-time covariance reaches, tapered to 0 beyond: on the
Navier-Stokes static blocks 3 filled better than 6, 12 or the whole series (``benchmarks/RESULTS.md``)."""
COVARIANCE_RADIUS = 64
"""Cells either side over which the covariance guess's covariance reaches (at most the window's size less one): on
the shallow-water static blocks 24 cells filled 0.339 of the mean fill's error, the whole grid (63) 0.231
(``benchmarks/RESULTS.md``)."""
COVARIANCE_STEPS = 50
"""Conjugate-gradient steps of the covariance guess (:func:`covariance_guess`) in a training step."""
SETTLED_COVARIANCE_STEPS = 100
"""Conjugate-gradient steps of the covariance guess outside training (a network in ``eval()`` mode: held-back
scores, imputation), where it runs once a window rather than every training step: on a whole grid the 50-step guess
is some way from the converged one (the shallow-water static blocks' gap error 0.1795 at 50 steps, 0.1685 at 100,
0.1628 at 400), and the trained static blocks filled 1.4-14 % better at 100 steps and as well at 150, imputing in
1.4-1.9 and 2-2.5 times the time (``benchmarks/RESULTS.md``)."""
COVARIANCE_NUGGET = 0.01
"""The share of the field's variance the covariance guess allows each context cell to miss by: it keeps the solve
well posed where the estimated covariance is nearly singular."""
MOST_COVARIANCE_CELLS = 2**24
"""Frames times cells that :func:`field_covariance` reads at most: runs of steps spread over a longer series."""


CANDIDATES: dict[str, dict] = {
    "space": dict(levels=DEFAULT_LEVELS),
    "time first": dict(levels=((0.0, 1.0), *DEFAULT_LEVELS)),  # the same cell at nearby steps before any neighbour
    # a last level reaching far in space and time, for gaps hours from any context (swaths)
    "space, wide": dict(levels=(*DEFAULT_LEVELS, WIDE_LEVEL)),
    "time first, wide": dict(levels=((0.0, 1.0), *DEFAULT_LEVELS, WIDE_LEVEL)),
    "thin plate": dict(levels=DEFAULT_LEVELS, thin_plate=True),
    "kriging": dict(levels=DEFAULT_LEVELS, kriging=True),
    "bending": dict(levels=DEFAULT_LEVELS, bending=30),  # the smoothest surface through the context, roughly
    # the smoothest surface through the window's context in space and time, a step counting as 0.5, 1 or 2 cells
    **{f"bending across steps {across:g}": dict(levels=DEFAULT_LEVELS, bending=ACROSS_STEPS, across=across)
       for across in (0.5, 1.0, 2.0)},
    # the mean of a spline through each frame's context and the bending across the window's steps, where the two
    # fill about as well: their errors differ in kind, and the mean fills better than either (scored only for a fit
    # that trains no step, choose_guess)
    **{f"{spline} & bending across steps 0.5": dict(levels=DEFAULT_LEVELS, **{option: True}, bending=ACROSS_STEPS,
                                                    across=0.5, averaged=True)
       for spline, option in (("thin plate", "thin_plate"), ("kriging", "kriging"))},
    # the best linear estimate under the series' own space-time covariance (only with that covariance given)
    "optimal interpolation": dict(levels=DEFAULT_LEVELS, covariance_steps=COVARIANCE_STEPS),
    # the same under the tapered estimate of that covariance (field_covariance), which offsets few pairs share
    # weigh less
    "optimal interpolation, tapered": dict(levels=DEFAULT_LEVELS, covariance_steps=COVARIANCE_STEPS, tapered=True),
    # the departures from each cell's mean kriged under the correlation a station network measures over its series
    # (station_correlation; only with it given)
    "kriging over time": dict(levels=DEFAULT_LEVELS, correlation=True),
}
"""The first guesses a fit chooses among (:func:`choose_guess`, in this order on a tie): :class:`FirstGuess` options."""
SPLINE_RIDGES = {torch.float64: 1e-9, torch.float32: 1e-6}
"""The ridge that keeps :func:`spline`'s solve regular, by the precision it is solved in: 1e-6 in double precision
smoothed where context cells lie a cell apart and put the thin plate through 40 stations 1e-4 off the exact spline
of the RBF filler (the heights' stations 1.00018 of its error, 1.0000005 at 1e-9; the pixel guesses as good or a
hair better, ``benchmarks/RESULTS.md``); single precision (Apple's GPUs) keeps 1e-6."""
FEWEST_SPLINE_CELLS = 3
"""Mask cells a frame needs for :func:`spline` to draw its surface, under either kernel (three, as a plane needs)."""
MAX_SPLINE_POINTS = 256
"""The thin-plate and kriging guesses are candidates only where no frame holds more context cells (a dense solve
per frame)."""
SPLINE_CHUNK_ENTRIES = 2**17
"""Entries of the systems a CPU builds and solves at once in :func:`spline` (1 MiB in float64, a core's cache, not
fresh pages): 300 frames of 520 cells each took 1.6-1.7 s at 2^16-2^18 and 4.5 s all at once, 2000 frames of 40
stations 0.20-0.26 s and 0.55 s (``benchmarks/RESULTS.md``)."""
MOST_SPLINE_POINTS = 4 * MAX_SPLINE_POINTS
"""Context cells of a frame beyond which :func:`spline` solves it in overlapping pieces: a model that trained on tiles
(whose frames hold at most :data:`MAX_SPLINE_POINTS`) may impute a whole grid, whose frames hold many more, and one
dense solve costs the cube of a frame's cells (a 96 x 192 grid of 10 % pixels, 1800 cells a frame: 98 % of a 137 s
imputation). Below this one solve is as fast as the pieces (``benchmarks/RESULTS.md``)."""
CPU_CHUNK_CELLS = 2**20
"""Window cells (steps x rows x columns, each variable counted) that a CPU smooths, or runs through the network, at
once: imputation's batches of a large grid outgrow the caches (80 windows of 5 steps of 96 x 192 cells took a sixth
less time in chunks of about ten windows, ``benchmarks/RESULTS.md``); training's batches of tiles hold fewer."""


def cpu_chunk(x: torch.Tensor) -> int:
    """How many of the leading items of ``x`` (windows, or a window's variables) to process at once: all of them, but
    on a CPU no more than :data:`CPU_CHUNK_CELLS` cells' worth."""
    if x.device.type != "cpu" or x.numel() <= CPU_CHUNK_CELLS:
        return len(x)
    return max(1, CPU_CHUNK_CELLS * len(x) // x.numel())


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A 1-D Gaussian of ``sigma`` cells, cut at 2.5 sigma, summing to one (``[1]`` for ``sigma`` 0)."""
    if sigma <= 0:
        return torch.ones(1)
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


class FirstGuess(nn.Module):
    """``(values, mask) -> (guess, certainty)`` on ``(B, C, T, H, W)``; no trainable parameters.

    ``values`` are 0 outside the mask. ``levels``: ``(space, time)``
    Gaussian widths in cells and steps (0: that axis alone), blended from the
    widest reach to the narrowest; ``periodic`` wraps the last axis
    (longitude) instead of treating beyond the edge as unobserved, and
    ``row_period`` (rows; 0: none) the rows of a window with that many (the
    whole grid of a doubly periodic domain; a tile of fewer rows ends at its
    edges). Cells with
    no context within reach of the widest level get a guess of 0 (the
    normalised mean). ``thin_plate``: in every frame with at least three
    context cells, the guess is instead the thin-plate spline through them
    (:func:`spline`), which suits scattered pixels of a smooth field; the
    certainty stays that of the finest level. ``kriging``: instead the
    ordinary kriging through them, which suits sparse stations of a field
    that is not smooth at their spacing. Under either, a frame of fewer
    context cells (a whole missing step) takes the straight line in time
    between the splines of the window's frames either side
    (:func:`across_unsplined_frames`). ``bending``: that many steps
    bending the guess towards the smoothest surface through the context
    (:func:`bend`), which suits smooth fields observed too densely for the
    thin plate's solve; frame by frame, or with ``across`` (the cells one
    step counts as) over the window's steps at once. ``averaged`` (with a
    spline and ``bending``): the mean of the spline and of the bending from
    the smoothed start, two guesses whose errors differ in kind (one frame's
    context against the window's). ``covariance_steps``:
    instead the best linear estimate under ``covariance`` (the series' own,
    :func:`field_covariance`), that many steps solving for it in training
    (:func:`covariance_guess`), at least :data:`SETTLED_COVARIANCE_STEPS`
    outside it (``eval()``); ``tapered`` says which estimate ``covariance``
    is (:func:`field_covariance`), a fact of the model that changes no sum.
    ``correlation``: instead each frame's departures from each cell's mean
    kriged under ``station_correlation`` (:func:`station_correlation` of a
    station network's series, :func:`~xrimpute.nets.correlation.correlation_guess`),
    frames of fewer context cells as under the splines.
    """

    def __init__(self, levels: Levels = DEFAULT_LEVELS, threshold: float = 0.01, periodic: bool = False,
                 row_period: int = 0, thin_plate: bool = False, bending: int = 0, across: float = 0.0,
                 kriging: bool = False, covariance_steps: int = 0, covariance: torch.Tensor | None = None,
                 tapered: bool = False, correlation: bool = False,
                 station_correlation: tuple[torch.Tensor, torch.Tensor] | None = None, averaged: bool = False):
        super().__init__()
        if thin_plate and kriging:
            raise ArgumentError("a first guess draws one spline through the context: pass thin_plate=True or "
                                "kriging=True, not both")
        if averaged and not ((thin_plate or kriging) and bending):
            raise ArgumentError("averaged=True takes the mean of a spline and a bending: pass thin_plate=True or "
                                "kriging=True, and bending= (steps)")
        if bool(covariance_steps) != (covariance is not None):
            raise ArgumentError("covariance_steps= and covariance= come together: the guess under the series' own "
                                "covariance needs both (xrimpute.nets.prior.field_covariance gives the covariance)")
        self.levels = tuple(sorted((float(s), float(t)) for s, t in levels))[::-1]  # widest to narrowest
        self.threshold, self.periodic, self.thin_plate, self.bending = threshold, periodic, thin_plate, bending
        self.row_period, self.averaged = row_period, averaged
        self.across, self.kriging, self.covariance_steps = across, kriging, covariance_steps
        self.tapered = tapered
        if correlation != (station_correlation is not None):
            raise ArgumentError("correlation= and station_correlation= come together: kriging under a station "
                                "network's correlation needs it (xrimpute.nets.prior.station_correlation gives it)")
        self.correlation = correlation
        for name, buffer in zip(("station_fields", "station_parameters"), station_correlation or (None, None)):
            self.register_buffer(name, None if buffer is None else torch.as_tensor(buffer, dtype=torch.float32))
        if covariance is not None:
            self.register_buffer("covariance", torch.as_tensor(covariance, dtype=torch.float32))
        else:
            self.covariance = None
        for i, (space, time) in enumerate(self.levels):
            self.register_buffer(f"space{i}", gaussian_kernel(space), persistent=False)
            self.register_buffer(f"time{i}", gaussian_kernel(time), persistent=False)
        self._bands = {}  # (level, T, H, W, device): the band matrices of _smooth

    def _smooth(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Separable smoothing of ``(N, T, H, W)`` at ``level`` along time, rows and columns, each a product with a
        band matrix (on the CPU ten times faster than convolutions with one channel); zero beyond the edges, but
        round the axes that wrap (:meth:`wraps`). The matrices are made once per level and window shape."""
        _, t, h, w = x.shape
        key = (level, t, h, w, x.device)
        if key not in self._bands:
            space, time = getattr(self, f"space{level}"), getattr(self, f"time{level}")
            rows, columns = self.wraps(h)
            self._bands[key] = (smoothing_matrix(time, t), smoothing_matrix(space, h, rows),
                                smoothing_matrix(space, w, columns))
        along_time, along_rows, along_columns = self._bands[key]
        x = torch.einsum("st,nthw->nshw", along_time, x)
        x = torch.einsum("gh,nshw->nsgw", along_rows, x)
        return torch.einsum("nsgw,vw->nsgv", x, along_columns)

    def wraps(self, rows: int) -> tuple[bool, bool]:
        """Whether the rows and the columns of a window of ``rows`` rows wrap round."""
        return rows == self.row_period, self.periodic

    def forward(self, values: torch.Tensor, mask: torch.Tensor,
                baseline: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``baseline`` ``(B, C, H, W)`` or per step ``(B, C, T, H, W)``: interpolate the departures from it
        instead of the values, and fall back to it (not to 0) beyond every level's reach (:func:`history_baseline`,
        :func:`nearby_baseline`)."""
        b, c, t, h, w = values.shape
        values = values.to(torch.float32)
        if baseline is not None:
            baseline = baseline.to(torch.float32)
            baseline = baseline[:, :, None] if baseline.dim() == 4 else baseline
            values = values - baseline
        weight = mask.to(torch.float32).reshape(b * c, t, h, w)
        signal = values.reshape(b * c, t, h, w) * weight
        with torch.autocast(values.device.type, enabled=False):  # sums of many cells: float32 even under bf16
            guess, certainty = self._blend(signal, weight)
        guess = smoothed = guess.reshape(b, c, t, h, w)
        if self.thin_plate or self.kriging:
            guess = spline(values, mask, guess, "exponential" if self.kriging else "thin plate")
            guess = across_unsplined_frames(guess, mask)
        if self.bending and self.averaged:
            guess = 0.5 * (guess + bend(values, mask, smoothed, self.bending, self.wraps(h), self.across))
        elif self.bending:
            guess = bend(values, mask, guess, self.bending, self.wraps(h), self.across)
        if self.covariance is not None:
            steps = self.covariance_steps if self.training else max(self.covariance_steps, SETTLED_COVARIANCE_STEPS)
            guess = covariance_guess(values, mask, self.covariance, steps, self.wraps(h))
        if self.correlation:
            kriged = correlation_guess(values, mask, self.station_fields, self.station_parameters,
                                       FEWEST_SPLINE_CELLS, self.periodic)
            guess = across_unsplined_frames(torch.where(torch.isnan(kriged), guess, kriged.to(guess.dtype)), mask)
            guess = torch.where(mask, values, guess)
        if baseline is not None:
            guess = guess + baseline
        return guess, certainty.reshape(b, c, t, h, w)

    def _blend(self, signal: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The levels' estimates from ``(N, T, H, W)`` context values and weights, blended widest to narrowest,
        and the narrowest level's share of context cells; on a CPU :data:`CPU_CHUNK_CELLS` at a time."""
        chunk = cpu_chunk(signal)
        if chunk < len(signal):
            parts = [self._blend(s, w) for s, w in zip(signal.split(chunk), weight.split(chunk))]
            return torch.cat([guess for guess, _ in parts]), torch.cat([certainty for _, certainty in parts])
        n, signal_and_weight = signal.shape[0], torch.cat([signal, weight])
        guess = certainty = None
        for i in range(len(self.levels)):
            both = self._smooth(signal_and_weight, i)
            num, den = both[:n], both[n:]
            estimate = num / den.clamp(min=1e-6)
            if guess is None:
                guess = torch.where(den > 1e-6, estimate, torch.zeros_like(estimate))
            else:
                trust = (den / self.threshold).clamp(max=1.0)
                guess = trust * estimate + (1 - trust) * guess
            certainty = den
        return guess, certainty


Wrap = bool | tuple[bool, bool]
"""Which axes of a grid wrap round: the columns (x / longitude) alone, or ``(rows, columns)``."""


def wrapping(periodic: Wrap) -> tuple[bool, bool]:
    """``(rows, columns)``: whether each axis wraps round, from a flag for the columns or a pair."""
    pair = tuple(periodic) if isinstance(periodic, (tuple, list)) else (False, periodic)
    if len(pair) != 2 or not all(isinstance(flag, (bool, np.bool_)) for flag in pair):
        raise ArgumentTypeError(f"periodic must be True or False (the columns: x / longitude) or a pair (rows, "
                                f"columns) of them, got {periodic!r}; pass e.g. periodic=(True, True) for a doubly "
                                "periodic domain")
    return bool(pair[0]), bool(pair[1])


def smoothing_matrix(kernel: torch.Tensor, size: int, periodic: bool = False) -> torch.Tensor:
    """``(size, size)``: row ``i`` weighs cell ``j`` by ``kernel`` at offset ``j - i`` (centred), so that a product
    with it convolves an axis of ``size`` cells with zeros beyond the edges, or ``periodic``, wrapping round (as
    often as a kernel longer than the axis needs)."""
    radius = kernel.numel() // 2
    rows = torch.arange(size).repeat_interleave(kernel.numel())
    cols = (torch.arange(size)[:, None] + torch.arange(-radius, radius + 1)[None, :]).flatten()
    weights = kernel.repeat(size)
    if periodic:
        cols = cols % size
    else:
        inside = (cols >= 0) & (cols < size)
        rows, cols, weights = rows[inside], cols[inside], weights[inside]
    matrix = torch.zeros(size, size, device=kernel.device)
    return matrix.index_put_((rows.to(kernel.device), cols.to(kernel.device)), weights, accumulate=True)


def spline(values: torch.Tensor, mask: torch.Tensor, fallback: torch.Tensor, kernel: str = "thin plate",
           ridge: float | None = None) -> torch.Tensor:
    """The spline of ``kernel`` (:data:`SPLINE_KERNELS`) through the mask's cells, frame by frame, on ``(..., H, W)``.

    Coordinates are cell indices scaled by the larger side; ``ridge`` keeps
    the solve regular (default by its precision, :data:`SPLINE_RIDGES`).
    Frames with fewer than :data:`FEWEST_SPLINE_CELLS` cells keep ``fallback``.
    Frames with the same number of cells are solved together, so a frame's
    spline does not depend on the frames batched with it, and frames of the
    same cells and values are solved once (windows overlapping in time hold
    the same frame under the same context: at imputation, stride 1, each
    step in every window). The spline is
    evaluated everywhere as one FFT convolution of its weights with the
    kernel, not a sum over cells per cell, and solved in double precision
    where the device has it (float32 on MPS).
    """
    if kernel not in SPLINE_KERNELS:
        raise ArgumentError(f"kernel must be one of {sorted(SPLINE_KERNELS)}, not {kernel!r}")
    *lead, h, w = values.shape
    values, mask, fallback = (x.reshape(-1, h, w) for x in (values, mask, fallback))
    seen = mask.flatten(1)
    keys = torch.cat([torch.where(seen, values.flatten(1), 0.0), seen.to(values.dtype)], 1)  # values and cells
    # on Apple's GPUs (MPS) the rows are compared on the CPU: their unique over rows came late and has disagreed with it
    unique, inverse = torch.unique(keys.cpu() if keys.device.type == "mps" else keys, dim=0, return_inverse=True)
    inverse = inverse.to(values.device)
    order = torch.arange(len(keys), device=values.device)
    first = torch.full((len(unique),), len(keys), device=values.device).scatter_reduce(0, inverse, order, "amin")
    # NaN where too few cells decide a frame: each frame then keeps its own fallback, whichever alike was solved
    out = _spline_frames(values[first], mask[first], kernel, ridge)[inverse]
    return torch.where(torch.isnan(out), fallback, out).to(fallback.dtype).reshape(*lead, h, w)


def across_unsplined_frames(guess: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``guess`` ``(B, C, T, H, W)`` of :func:`spline`, its frames of fewer than :data:`FEWEST_SPLINE_CELLS` mask
    cells (whole missing steps) replaced by the straight line in time between the nearest splined frames either side
    in the window, the nearer one beyond the last: a station network's kriging an hour before and after says more of
    a missing step than the fallback's smoothing of the window's stations does (``benchmarks/RESULTS.md``). A
    window with no splined frame keeps ``guess``."""
    splined = mask.flatten(3).sum(3) >= FEWEST_SPLINE_CELLS  # (B, C, T)
    if bool(splined.all()):
        return guess
    frames = splined[..., None, None].expand_as(guess)
    keep = frames | ~splined.any(2)[..., None, None, None]
    return torch.where(keep, guess, _along_time(guess, frames))


def _spline_frames(values: torch.Tensor, mask: torch.Tensor, kernel: str, ridge: float | None) -> torch.Tensor:
    """:func:`spline` of frames ``(F, H, W)``, NaN where too few cells decide it: in pieces where a frame holds more
    than :data:`MOST_SPLINE_POINTS` cells, as many as its own cells ask for (:func:`_spline_in_pieces`), so that its
    spline does not depend on the frames batched with it."""
    counts = mask.flatten(1).sum(1)
    if not bool((counts > MOST_SPLINE_POINTS).any()):
        return _spline_solved(values, mask, kernel, ridge)
    layouts = [_layout(int(n), *values.shape[-2:]) if n > MOST_SPLINE_POINTS else None for n in counts.tolist()]
    out = torch.empty(values.shape, device=values.device)
    for layout in dict.fromkeys(layouts):  # frames of about as many cells share one: a few solves of many frames
        frames = torch.tensor([it == layout for it in layouts], device=values.device)
        out[frames] = (_spline_solved(values[frames], mask[frames], kernel, ridge) if layout is None
                       else _spline_in_pieces(values[frames], mask[frames], kernel, ridge, layout))
    return out


def _layout(cells: int, h: int, w: int) -> tuple[int, int]:
    """The rows and columns of pieces that :func:`_spline_in_pieces` cuts a frame of ``cells`` mask cells into: about
    a quarter of :data:`MAX_SPLINE_POINTS` cells a piece, of about equal area."""
    pieces = math.ceil(4 * cells / MAX_SPLINE_POINTS)
    rows = min(h, max(1, round(math.sqrt(pieces * h / w))))
    return rows, min(w, math.ceil(pieces / rows))


def _spline_solved(values: torch.Tensor, mask: torch.Tensor, kernel: str, ridge: float | None) -> torch.Tensor:
    """:func:`spline` by one dense solve per frame ``(..., H, W)``; NaN in frames of fewer than
    :data:`FEWEST_SPLINE_CELLS` cells."""
    *lead, h, w = values.shape
    device = values.device
    precise = torch.float32 if device.type == "mps" else torch.float64
    ridge = SPLINE_RIDGES[precise] if ridge is None else ridge
    flat, seen = values.reshape(-1, h * w), mask.reshape(-1, h * w)
    out = torch.full((flat.shape[0], h * w), float("nan"), device=device)
    counts = seen.sum(1)
    table = _kernel_table(h, w, device, precise, kernel)
    spectrum = torch.fft.rfft2(table)
    scale = 1.0 / max(h, w)
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    plane = torch.stack([torch.ones(h * w, device=device), rows * scale, cols * scale]).to(precise)  # (3, H*W)
    plane = plane[: SPLINE_KERNELS[kernel]]  # the trend: a plane, or a constant
    terms = plane.shape[0]
    for n in counts.unique().tolist():
        if n < FEWEST_SPLINE_CELLS:
            continue
        # frames at a time: images of a few million cells, and on a CPU systems of SPLINE_CHUNK_ENTRIES
        chunk = 2**24 // (4 * h * w)
        if device.type == "cpu":
            chunk = min(chunk, SPLINE_CHUNK_ENTRIES // (n + terms) ** 2)
        for frames in torch.nonzero(counts == n)[:, 0].split(max(1, chunk)):
            cells = torch.nonzero(seen[frames])[:, 1].view(len(frames), n)  # row-major, so each frame's n cells
            r, c = rows[cells], cols[cells]  # (F, n)
            trend = plane[:, cells].permute(1, 2, 0)  # (F, n, terms)
            system = torch.zeros(len(frames), n + terms, n + terms, device=device, dtype=precise)
            system[:, :n, :n] = table[r[:, :, None] - r[:, None, :], c[:, :, None] - c[:, None, :]]  # <0: wraps
            system[:, :n, :n] += ridge * torch.eye(n, device=device, dtype=precise)
            system[:, :n, n:], system[:, n:, :n] = trend, trend.transpose(1, 2)
            system[:, n:, n:] = -ridge * torch.eye(terms, device=device, dtype=precise)
            target = torch.zeros(len(frames), n + terms, device=device, dtype=precise)
            target[:, :n] = flat[frames].gather(1, cells)
            weights = _solve(system, target[..., None])[..., 0]
            image = torch.zeros(len(frames), 2 * h, 2 * w, device=device, dtype=precise)
            image[torch.arange(len(frames), device=device)[:, None], r, c] = weights[:, :n]
            surface = torch.fft.irfft2(torch.fft.rfft2(image) * spectrum, s=(2 * h, 2 * w))[:, :h, :w]
            out[frames] = (surface.reshape(len(frames), h * w) + weights[:, n:] @ plane).to(out.dtype)
    return out.reshape(*lead, h, w)


def _spline_in_pieces(values: torch.Tensor, mask: torch.Tensor, kernel: str, ridge: float | None,
                      layout: tuple[int, int]) -> torch.Tensor:
    """:func:`spline` of frames in pieces, ``layout`` (:func:`_layout`) rows and columns of them: the frame cut into
    cores of about equal area, each piece the spline through the cells of its core
    and of a margin as wide as the core either side, the pieces blended with weights of 1 in their core falling to 0
    across their margin; a piece of fewer than three cells adds nothing, and cells no piece reaches are NaN.
    Each piece holds its cells, so the blend does too. The cost grows with the frame's cells,
    not their cube: on 96 x 192 frames of 10 % pixels an imputation took 79 s instead of 133 and filled the gaps
    within 0.6 % of the whole frames' splines (``benchmarks/RESULTS.md``)."""
    *lead, h, w = values.shape
    device = values.device
    rows, cols = layout
    total = torch.zeros(values.shape, device=device)
    weight = torch.zeros(values.shape, device=device)
    for r0, r1 in _cores(h, rows):
        for c0, c1 in _cores(w, cols):
            (ra, rb, row_weights), (ca, cb, col_weights) = _margin(r0, r1, h, device), _margin(c0, c1, w, device)
            cut = (..., slice(ra, rb), slice(ca, cb))
            piece = _spline_solved(values[cut], mask[cut], kernel, ridge)
            blend = row_weights[:, None] * col_weights[None, :] * torch.isfinite(piece)  # none from fewer than 3
            total[cut] += torch.nan_to_num(piece) * blend
            weight[cut] += blend
    return total / weight  # 0 / 0 where no piece reaches: NaN


def _cores(size: int, count: int) -> list[tuple[int, int]]:
    """``count`` runs of about equal length covering ``size`` cells."""
    edges = [round(i * size / count) for i in range(count + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _margin(start: int, stop: int, size: int, device: torch.device) -> tuple[int, int, torch.Tensor]:
    """The run ``start:stop`` of an axis of ``size`` cells with a margin as long as the run either side (within the
    axis), and each cell's weight in the blend: 1 in the run, falling to 0 across the margin."""
    margin = stop - start
    a, b = max(0, start - margin), min(size, stop + margin)
    cells = torch.arange(a, b, dtype=torch.float32, device=device)
    outside = torch.clamp(torch.maximum(start - cells, cells - (stop - 1)), min=0)
    return a, b, 1 - outside / (margin + 1)


def bend(values: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, steps: int,
         periodic: Wrap = False, across: float = 0.0) -> torch.Tensor:
    """``start`` bent towards the smoothest surface through the mask's cells, frame by frame on ``(..., H, W)``,
    or with ``across`` over each window ``(..., T, H, W)`` at once.

    ``steps`` conjugate-gradient steps, from ``start`` with the mask's cells set
    to ``values``, on the grid's thin-plate bending energy (the sum of
    ``u_xx^2 + 2 u_xy^2 + u_yy^2`` over the cells, by finite differences; the
    axes end at the edges but those that wrap round, :func:`wrapping` of
    ``periodic``), the mask's cells
    held. Converged, this is the thin-plate spline's counterpart on the grid,
    whatever the number of mask cells: each step costs a few passes over the
    frame, not a dense solve. Stopped early from a smooth ``start`` it stays
    nearer to it in the middle of large gaps, where a converged spline
    overshoots (``benchmarks/RESULTS.md``). Frames (windows, when bending
    across steps) with fewer than three mask cells keep ``start``.

    ``across`` > 0: the energy of the space-time surface, one step counting as
    ``across`` cells (the terms with ``k`` derivatives along time weighed by
    ``across ** (2 k)``; steps end at the window's edges), so that a gap leans
    on the observations of its own and nearby cells at the steps either side:
    where the gaps move from step to step, a window holds several times the
    observations of one frame (``benchmarks/RESULTS.md``).
    """
    # a "frame" is what is bent as one: a window when bending across steps
    shape = (-1, *values.shape[-3:]) if across else (-1, *values.shape[-2:])
    weights = {-3: across, -2: 1.0, -1: 1.0} if across else {-2: 1.0, -1: 1.0}
    with torch.autocast(values.device.type, enabled=False):
        frames = mask.reshape(shape)
        enough = (frames.flatten(1).sum(1) >= 3).reshape(-1, *(1,) * (len(shape) - 1))
        x = torch.where(frames, values.reshape(shape), start.reshape(shape)).to(torch.float32)
        free = (~frames & enough).to(torch.float32)
        # on a CPU a few frames at a time, so that the solve's fields stay in the core's cache (SW windows:
        # 200 -> 111-160 ms a batch); on a GPU all at once
        chunk = max(1, BEND_CHUNK_CELLS // x.shape[1:].numel()) if x.device.type == "cpu" else max(1, len(x))
        for part, free_part in zip(x.split(chunk), free.split(chunk)):
            gradient = _BendingGradient(part, weights, periodic)
            residual = gradient(part).mul(free_part).neg_()  # its own tensor: the gradient's buffer is overwritten
            _conjugate_gradients(lambda u: gradient(u).mul_(free_part), part, residual, steps)
    return torch.where(enough, x, start.reshape(shape).to(torch.float32)).reshape(values.shape)


BEND_CHUNK_CELLS = 2**16
"""Cells a CPU bends at once: the solve's six fields, a quarter megabyte each, then stay in a core's cache. With
4 MiB of L2 a core, 2^16 and 2^17 were as fast and 2^18 up to 17 % slower (``benchmarks/RESULTS.md``); the smaller
suits the 1-2 MiB of many laptops' cores too."""


def _conjugate_gradients(operator, x: torch.Tensor, residual: torch.Tensor, steps: int) -> None:
    """``steps`` conjugate-gradient steps of the symmetric system ``operator`` from ``x``, whose residual is
    ``residual``, for every frame of ``(N, ...)`` at once; both updated in place (a fifth off a bending solve on the
    ERA5 grid, ``benchmarks/RESULTS.md``). A frame whose direction or residual vanishes stays where it is."""
    direction, norm = residual.clone(), _squared_norm(residual)
    for _ in range(steps):
        curve = operator(direction)
        along = _dot(direction, curve)
        alpha = torch.where(along > 0, norm / along, 0.0)  # the quotient by 0 lies in the branch not taken
        x.addcmul_(alpha, direction)
        residual.addcmul_(alpha, curve, value=-1)
        new = _squared_norm(residual)
        direction.mul_(torch.where(norm > 0, new / norm, 0.0)).add_(residual)
        norm = new


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N, 1, ...)``: the dot products of the frames of ``a`` and ``b`` ``(N, ...)``."""
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1)).reshape(-1, *(1,) * (a.dim() - 1))


def _squared_norm(a: torch.Tensor) -> torch.Tensor:
    """``(N, 1, ...)``: each frame's ``_dot`` with itself, in one read of ``a`` (half a product's time)."""
    return torch.linalg.vector_norm(a.flatten(1), dim=1).square().reshape(-1, *(1,) * (a.dim() - 1))


class _BendingGradient:
    """Half the gradient of the bending energy of :func:`bend` at fields shaped like ``like``: ``D'D u`` summed
    over the second differences ``D`` along and across the axes of ``weights`` (axis: weight of one of its steps
    against one cell), each pair of axes weighed by the product of their weights squared, twice over for two axes.

    Computed as ``M(M u)``, ``M`` the weighted Laplacian ``sum_a w_a^2 L_a`` (``L_a = D_a'D_a``, first differences
    ``D_a``), plus ``sum_a w_a^4 (P_a - L_a^2) u`` (``P_a`` of the second differences along ``a``), which differs
    from 0 only in the two cells at either end of an axis that does not wrap: about 14 passes over the fields
    instead of one per difference and adjoint of every pair (57), which had made the bending solve a third of a
    training step on the ERA5 sample. A call writes into buffers made once, cuts the slices of a field the first
    time it is called on it (the solve calls it on the same direction at every step), and takes the end cells'
    missing neighbours into ``M``'s diagonal and both ends of an axis into one slice: fresh outputs, slicing and
    the end cells' small operations had been a quarter to a third of the solve's time on the ERA5 windows
    (``benchmarks/RESULTS.md``). The result is overwritten by the next call."""

    def __init__(self, like: torch.Tensor, weights: dict[int, float], periodic: Wrap):
        self.weights, self.wrapped = weights, dict(zip((-2, -1), wrapping(periodic)))
        # M's diagonal: a cell's neighbours along each axis (one at an end that does not wrap), weighed
        self.centre = torch.zeros(like.shape[1:], dtype=like.dtype, device=like.device)
        for dim, w in weights.items():
            n = like.shape[dim]
            cells = torch.arange(n, device=like.device)
            neighbours = torch.full_like(cells, 2) if self._wraps(dim) else (cells > 0).long() + (cells < n - 1).long()
            self.centre += (w * w * neighbours.to(like)).reshape(n, *(1,) * (-dim - 1))
        self.inner, self.out = torch.empty_like(like), torch.empty_like(like)
        self._inner_steps = self._laplacian_steps(self.inner, self.out)
        self._field = None  # the field last called on, and its Laplacian's steps and edge terms

    def _wraps(self, dim: int) -> bool:
        return self.wrapped.get(dim, False)

    def _laplacian_steps(self, x: torch.Tensor, out: torch.Tensor) -> list:
        """``(into, subtracted, weight)`` of each neighbour term of ``M x`` once ``out`` holds its centre term."""
        steps = []
        for dim, w in self.weights.items():
            n, c = x.shape[dim], w * w
            steps += [(out.narrow(dim, 1, n - 1), x.narrow(dim, 0, n - 1), c),
                      (out.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1), c)]
            if self._wraps(dim):  # the end cells' neighbours across the seam
                steps += [(out.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1), c),
                          (out.narrow(dim, n - 1, 1), x.narrow(dim, 0, 1), c)]
        return steps

    def _edge_terms(self, u: torch.Tensor) -> list:
        """``(firsts, seconds, u_firsts, u_seconds, differences, weight)`` of the ends of each axis that does not
        wrap: ``P_a - L_a^2 = -D_a' E D_a``, ``E`` picking the first and last difference; both ends of an axis
        in one strided slice where their four cells differ."""
        terms = []
        for dim, w in self.weights.items():
            n = u.shape[dim]
            if self._wraps(dim) or n < 2:
                continue
            if n >= 4:
                ends = [(slice(0, n, n - 1), slice(1, n - 1, n - 3))]  # cells 0 and n-1, then 1 and n-2
            else:
                ends = [(slice(0, 1), slice(1, 2)), (slice(n - 1, n), slice(n - 2, n - 1))]
            for first, second in ends:
                cells = [t[(..., i) + (slice(None),) * (-dim - 1)] for t in (self.out, u) for i in (first, second)]
                terms.append((*cells, torch.empty_like(cells[0]), w**4))
        return terms

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        if u is not self._field:
            self._field, self._steps, self._edges = u, self._laplacian_steps(u, self.inner), self._edge_terms(u)
        torch.mul(u, self.centre, out=self.inner)
        for into, subtracted, c in self._steps:
            into.sub_(subtracted, alpha=c)
        torch.mul(self.inner, self.centre, out=self.out)
        for into, subtracted, c in self._inner_steps:
            into.sub_(subtracted, alpha=c)
        for first, second, u_first, u_second, difference, w4 in self._edges:
            torch.sub(u_second, u_first, out=difference)
            first.add_(difference, alpha=w4)
            second.sub_(difference, alpha=w4)
        return self.out


SPLINE_KERNELS = {"thin plate": 3, "exponential": 1}
"""The kernels :func:`spline` draws, and the terms of the trend each adds (3: a plane, 1: a constant): the thin
plate ``r^2 log r`` (as the classical RBF filler draws it), and the exponential covariance ``exp(-r)`` with a
range of the grid's larger side, ordinary kriging. Between the 40 stations of the ERA5 sample (seed 1) the fit
chose it and filled 7 % better than with the thin plate, which overshoots between them; on pixels of smooth
fields the held-back cells keep the thin plate or a bending guess (``benchmarks/RESULTS.md``)."""


def _kernel_table(h: int, w: int, device: torch.device, dtype: torch.dtype, kernel: str) -> torch.Tensor:
    """``(2H, 2W)``: ``kernel`` (:data:`SPLINE_KERNELS`) at every offset between two cells of an ``H x W`` grid,
    offset ``(i, j)`` at ``(i mod 2H, j mod 2W)``, so that a circular convolution of that size is the plain sum
    over cells (offsets never wrap onto one another)."""
    scale = 1.0 / max(h, w)
    di, dj = torch.arange(2 * h, device=device, dtype=dtype), torch.arange(2 * w, device=device, dtype=dtype)
    di, dj = torch.where(di < h, di, di - 2 * h) * scale, torch.where(dj < w, dj, dj - 2 * w) * scale
    r2 = di[:, None] ** 2 + dj[None, :] ** 2
    if kernel == "exponential":
        return torch.exp(-torch.sqrt(r2))
    return 0.5 * r2 * torch.log(r2.clamp(min=torch.finfo(dtype).tiny))


def _solve(system: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.solve`` on one thread: a batch of small solves hung for good with two CPU threads
    (torch 2.13, x86-64), and one thread is as fast for systems this small."""
    if system.device.type != "cpu":
        return torch.linalg.solve(system, target)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.solve(system, target)
    finally:
        torch.set_num_threads(threads)


HISTORY_LEVELS: Levels = ((1.0, 0.0), (2.0, 0.0), (4.0, 0.0), (8.0, 0.0), (16.0, 0.0))
"""The spatial scales that fill a history baseline where a cell has none of its own (no time axis: one field)."""
HISTORY_SHRINK = 16.0
"""Observations a cell needs before its own mean outweighs its neighbours' in a history baseline."""


def history_baseline(history: torch.Tensor, periodic: bool = False, row_period: int = 0) -> torch.Tensor:
    """``(B, C, H, W)``: each cell's mean over the observations of its series outside the window, from ``history``
    ``(B, 2C, H, W)`` = their sums and counts (normalised units; :func:`xrimpute.windows.outside_window`).

    A cell with few observations of its own leans on its neighbours': its raw mean, filled over space by
    normalised convolution at :data:`HISTORY_LEVELS` where it has none, is shrunk towards that fill by
    :data:`HISTORY_SHRINK` observations. A series without observations outside the window gives 0 (the mean).
    ``periodic``, ``row_period``: the axes that wrap round, as :class:`FirstGuess` has them.
    """
    sums, counts = history.to(torch.float32).chunk(2, dim=1)
    seen = counts > 0
    raw = torch.where(seen, sums / counts.clamp(min=1), torch.zeros_like(sums))
    guess = FirstGuess(HISTORY_LEVELS, periodic=periodic, row_period=row_period).to(history.device)
    filled, _ = guess(raw[:, :, None], seen[:, :, None])
    return (sums + HISTORY_SHRINK * filled[:, :, 0]) / (counts + HISTORY_SHRINK)


def widest_reach(candidates: dict[str, dict] = CANDIDATES) -> int:
    """Cells: how far in space the widest level of the ``candidates`` reaches (its kernel's radius)."""
    return max(gaussian_kernel(space).numel() // 2 for options in candidates.values() for space, _ in options["levels"])


NEARBY_SPAN = 24
"""Steps: the widest gap between a cell's observations before and after a window that :func:`nearby_baseline`
bridges; half of it, how far one observation alone reaches."""
NEARBY_LABEL = " + nearby steps"
"""Appended to a candidate's name (:func:`choose_guess`) when its guess leans on :func:`nearby_baseline`."""
FLOW_LABEL = " + flow"
"""Appended instead when those nearby steps lie along the flow (:func:`xrimpute.windows.along_flow`)."""


def nearby_baseline(nearby: torch.Tensor, window: int, span: int = NEARBY_SPAN, depth: int = 1,
                    curve: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(baseline, known)`` ``(B, C, T, H, W)``: each cell's baseline at every step of the window from its nearest
    observations outside it, and where it has one. ``nearby`` ``(B, 4 depth C, H, W)``
    (:func:`xrimpute.windows.nearby_observations`): the ``depth`` values before the window, nearest first, and how
    many steps before its first step each lies, then those after and how many steps after its last (0 steps:
    none within ``span``); or along the flow, ``(B, 4C, T, H, W)``, for every step of the window, the steps
    counted from that step.

    Between the nearest observation before and the nearest after, where they lie at most ``span`` steps apart:
    the straight line, or with ``curve`` the Akima spline through up to ``depth`` observations either side as
    ``scipy.interpolate.Akima1DInterpolator`` draws it through them (:func:`_akima_piece`). Else the nearer one
    within ``span / 2`` steps of the step (along the flow, ``span`` steps: a gap the flow carries observations
    into lies far from them in time; on the advected static blocks that reached 52 % of the gaps instead of 39 %
    and took the guess's error there from 0.50 to 0.40, ``benchmarks/RESULTS.md``); else none (``known``
    False, baseline 0).
    """
    groups, curved = nearby.to(torch.float32).chunk(4, dim=1), None
    if nearby.dim() == 5:  # along the flow: per step
        before, gap_before, after, gap_after = groups
        to_before, to_after, reach = gap_before, gap_after, span
    else:
        b, _, h, w = nearby.shape
        # (B, depth, C, 1, H, W), the nearest first
        before, gap_before, after, gap_after = (g.reshape(b, depth, -1, 1, h, w) for g in groups)
        k = torch.arange(window, device=nearby.device, dtype=torch.float32)[:, None, None]
        to_before = gap_before[:, 0] + k  # steps from each step of the window to the observation before
        to_after = gap_after[:, 0] + (window - 1 - k)
        reach = span / 2
        if curve and depth > 1:
            curved = _akima_piece((-gap_before, before, gap_before > 0),
                                  (window - 1 + gap_after, after, gap_after > 0), k)
        before, gap_before, after, gap_after = before[:, 0], gap_before[:, 0], after[:, 0], gap_after[:, 0]
    line = before + (after - before) * to_before / (to_before + to_after).clamp(min=1) if curved is None else curved
    baseline, known = _within_reach(line, before, after, (gap_before > 0).to(torch.float32),
                                    (gap_after > 0).to(torch.float32), to_before, to_after, span, reach)
    return baseline, known > 0


def _within_reach(line, before, after, has_before, has_after, to_before, to_after, span: float,
                  reach: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(baseline, known)``, ``known`` 0 or 1: ``line`` where a cell's observations ``before`` and ``after`` a step
    (``has_before``, ``has_after``: 0 or 1; ``to_before``, ``to_after`` steps away) lie at most ``span`` steps
    apart, else the nearer one within ``reach`` steps, else 0: the rule :func:`nearby_baseline` and
    :func:`own_curve` share."""
    bridged = has_before * has_after * (to_before + to_after <= span)
    near_before, near_after = has_before * (to_before <= reach), has_after * (to_after <= reach)
    nearer = _pick(near_before * ((1 - near_after) + (to_before <= to_after)).clamp(max=1), before, after)
    known = (bridged + near_before + near_after).clamp(max=1)
    return _pick(bridged, line, nearer * known), known


OWN_CURVE_SHARE = 0.25
"""Share of each cell's own curve (:func:`own_curve`) in the baseline of a guess leaning on the nearby steps in place
where a fit chooses it (the label :data:`OWN_CURVE_LABEL`): on moving blocks of the ERA5 sample and of daily sea
surface heights, a quarter took 1 to 9 % off the guess's gap error where the own curve alone lost on three of four
(``benchmarks/RESULTS.md``)."""
OWN_CURVE_LABEL = " + own curve"
"""Appended to a label leaning on the nearby steps in place when its baseline takes :data:`OWN_CURVE_SHARE` of each
cell's own curve."""


def own_curve(values: torch.Tensor, mask: torch.Tensor, nearby: torch.Tensor, span: int = NEARBY_SPAN,
              depth: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(curve, known)`` ``(B, C, T, H, W)``: each cell's own series through the window, its context value where it
    has one, else the Akima spline through its up to ``depth`` nearest context values either side, in the window
    ``(values, mask)`` or beyond it (``nearby`` ``(B, 4 depth C, H, W)`` in place, as :func:`nearby_baseline` takes
    it), bridged and reached as :func:`nearby_baseline` bridges and reaches. A function of the context alone: the
    window's query cells never reach it."""
    b, c, steps, h, w = values.shape
    mask = mask.to(torch.bool)
    before, gap_before, after, gap_after = (g.reshape(b, depth, c, h, w)
                                            for g in nearby.to(torch.float32).chunk(4, dim=1))
    values = values.to(torch.float32)
    # every knot a cell may have, in time order: those before the window (the farthest first), the window's, after
    inside = torch.arange(steps, device=values.device, dtype=torch.float32)[:, None, None, None].expand(
        b, steps, c, h, w)
    where = torch.cat([-gap_before.flip(1), inside, steps - 1 + gap_after], dim=1)  # (B, L, C, H, W)
    what = torch.cat([before.flip(1), values.transpose(1, 2), after], dim=1)
    seen = torch.cat([(gap_before > 0).flip(1), mask.transpose(1, 2), gap_after > 0], dim=1).to(torch.float32)

    def nearest(order):  # the ``depth`` nearest seen knots strictly before each window step in ``order``
        held = [torch.full_like(seen[:, 0], -1.0)] * depth  # their indices, -1: none
        at_steps = [None] * steps
        for i in order:
            if depth <= i < depth + steps:
                at_steps[i - depth] = held
            held = [_pick(seen[:, i], newer, index) for newer, index in zip([float(i)] + held[:-1], held)]
        # (B, depth, C, T, H, W) each, the nearest first
        found = torch.stack([torch.stack([at_steps[k][d] for k in range(steps)], 2) for d in range(depth)], 1)
        index = found.clamp(min=0).long().transpose(2, 3).flatten(1, 2)  # (B, depth T, C, H, W)
        return tuple(torch.gather(a, 1, index).unflatten(1, (depth, steps)).transpose(2, 3)
                     for a in (where, what)) + ((found >= 0).to(torch.float32),)

    sides = [nearest(range(len(seen[0]))), nearest(range(len(seen[0]) - 1, -1, -1))]
    (x_before, y_before, has_before), (x_after, y_after, has_after) = (
        (xs[:, 0], ys[:, 0], ss[:, 0]) for xs, ys, ss in sides)
    k = torch.arange(steps, device=values.device, dtype=torch.float32)[:, None, None]
    curve, known = _within_reach(_akima_piece(*sides, k), y_before, y_after, has_before, has_after, k - x_before,
                                 x_after - k, span, span / 2)
    own = mask.to(torch.float32)
    return _pick(own, values, curve), (own + known) > 0


def _pick(flag: torch.Tensor, a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    """``a`` where ``flag`` (float, 0 or 1) is 1, else ``b``: ``torch.where`` for finite values, exactly, at a third
    of its cost on the CPU (torch 2.13: about 4 ns a cell against 0.2-0.6 for a product or a sum)."""
    return a * flag + b * (1 - flag)


def _akima_piece(before: tuple[torch.Tensor, ...], after: tuple[torch.Tensor, ...], at: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, H, W)``: the piece of the Akima spline through a cell's observations either side of a gap that
    spans the gap, at the steps ``at`` ``(T, 1, 1)``. ``before``, ``after``: ``(steps, values, seen)`` of up to
    ``D`` observations ``(B, D, C, 1, H, W)`` (or ``(B, D, C, T, H, W)``, a set per step), the nearest to the gap
    first, finite. The slopes at the two beside the gap lean on the secants either side of them, those missing
    extrapolated as scipy does at the ends of a series (Akima 1970); with one observation either side the piece is
    the straight line."""
    (xb, yb, sb), (xa, ya, sa) = before, after
    sb, sa = sb.to(xb.dtype), sa.to(xa.dtype)
    depth = xb.shape[1]

    def secant(x0, y0, x1, y1, seen):
        return (y1 - y0) / _pick(seen, x1 - x0, 1.0) * seen

    def side(x, y, seen, j):  # the secant between observations j - 1 and j of one side, and whether j exists
        if j >= depth:
            return torch.zeros_like(y[:, 0]), torch.zeros_like(seen[:, 0])
        return secant(x[:, j], y[:, j], x[:, j - 1], y[:, j - 1], seen[:, j]), seen[:, j]

    middle = secant(xb[:, 0], yb[:, 0], xa[:, 0], ya[:, 0], sb[:, 0] * sa[:, 0])
    (left2, has_left2), (left3, has_left3) = side(xb, yb, sb, 1), side(xb, yb, sb, 2)
    (right2, has_right2), (right3, has_right3) = side(xa, ya, sa, 1), side(xa, ya, sa, 2)
    right2 = _pick(has_right2, right2, 2 * middle - left2)
    left2 = _pick(has_left2, left2, 2 * middle - right2)
    right3 = _pick(has_right3, right3, 2 * right2 - middle)
    left3 = _pick(has_left3, left3, 2 * left2 - middle)

    def slope(m0, m1, m2, m3):  # at the knot between secants m1 and m2
        f1, f2 = (m3 - m2).abs(), (m1 - m0).abs()
        return f1, f2, f1 * m1 + f2 * m2, 0.5 * (m3 + m0)

    slopes = [slope(left3, left2, middle, right2), slope(left2, middle, right2, right3)]
    tiny = 1e-9 * torch.maximum(*(f1 + f2 for f1, f2, _, _ in slopes))
    d0, d1 = (_pick((f1 + f2 > tiny).to(f1.dtype), weighted / (f1 + f2).clamp(min=1e-30), fallback)
              for f1, f2, weighted, fallback in slopes)
    straight = (1 - has_left2) * (1 - has_right2)  # two observations: the line
    d0, d1 = _pick(straight, middle, d0), _pick(straight, middle, d1)
    x0, x1, y0, y1 = xb[:, 0], xa[:, 0], yb[:, 0], ya[:, 0]
    width = _pick(sb[:, 0] * sa[:, 0], x1 - x0, 1.0)
    t = (at - x0) / width
    return ((2 * t**3 - 3 * t**2 + 1) * y0 + (t**3 - 2 * t**2 + t) * width * d0
            + (3 * t**2 - 2 * t**3) * y1 + (t**3 - t**2) * width * d1)


def flow_closeness(nearby: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, H, W)``: one over the steps from each cell to its nearer observation along the flow (0: none),
    from ``nearby`` ``(B, 4C, T, H, W)`` (``xrimpute.windows.nearby_observations(..., flow=True)``): how far the
    flow carried the baseline, which the guess itself does not show."""
    _, before, _, after = nearby.to(torch.float32).chunk(4, dim=1)
    nearer = torch.minimum(torch.where(before > 0, before, math.inf), torch.where(after > 0, after, math.inf))
    return 1.0 / nearer


def nearby_guess(first_guess: FirstGuess, values: torch.Tensor, mask: torch.Tensor, nearby: torch.Tensor,
                 span: int = NEARBY_SPAN, baseline: torch.Tensor | None = None,
                 curve: bool = False, own: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``first_guess`` of ``(values, mask)`` interpolating departures from :func:`nearby_baseline` (with
    ``curve``, curved) at the cells that have one, and the plain guess (from ``baseline`` ``(B, C, H, W)``, e.g.
    :func:`history_baseline`, or none) at the others: a gap no observation comes near in time (a block that never
    moves) keeps what its neighbours now say, which extrapolating their baselines into it did worse
    (``benchmarks/RESULTS.md``). ``own`` (in place): that share of each cell's :func:`own_curve` in the baseline,
    which then passes through the cell's own context values in the window too."""
    depth = nearby.shape[1] // (4 * values.shape[1]) if nearby.dim() == 4 else 1
    line, known = nearby_baseline(nearby, values.shape[2], span, depth, curve)
    if own and nearby.dim() == 4:
        curve_of_own, own_known = own_curve(values, mask, nearby, span, depth)
        line = torch.where(known & own_known, torch.lerp(line, curve_of_own, own), line)
    if not known.any():
        return first_guess(values, mask, baseline)
    rest = torch.zeros_like(line) if baseline is None else baseline.to(torch.float32)[:, :, None].expand_as(line)
    guided, certainty = first_guess(values, mask, torch.where(known, line, rest))  # the certainty: the mask's alone
    if known.all():  # gaps drawn anew every step: no plain guess to compute
        return guided, certainty
    plain, _ = first_guess(values, mask, baseline)
    return torch.where(known, guided, plain), certainty


MODES = 4
"""Spatial modes of :func:`spatial_modes` beyond the cells' means: on the annual cube's 10 % pixels the first guess
filled best with 4 or 5, worse with 8, 10 or 20 (``benchmarks/RESULTS.md``)."""
MODES_RIDGE = 2.0
"""How strongly :func:`modes_baseline` pulls the modes' amplitudes towards 0, against a frame's share of cells
(there 1 and 3 filled alike)."""
BASELINE_MARGIN = 0.95
"""A first guess on the departures from a baseline found in the whole series (its spatial modes, each cell's cycle)
is chosen only where it fills the held-back cells better than this share of the best guess without it: on the ERA5
sample's 10 % pixels the modes won by 3 % (seed 1) and then filled the gaps worse; where they carry, they win by 9 to
74 % (``benchmarks/RESULTS.md``). A fit in memory asks it on every window with held-back cells too
(``xrimpute.samplers.WIDE_VALIDATION_CELLS``)."""
MODES_LABEL = " + modes"
"""Appended to a candidate's name (:func:`choose_guess`) when its guess leans on :func:`modes_baseline`."""
MOST_MODE_CELLS = 20_000_000
"""Frames times cells that :func:`spatial_modes` reads at most (80 MB in float32): every second, third, ... step of
a longer series."""


def spatial_modes(values: torch.Tensor, observed: torch.Tensor, count: int = MODES) -> torch.Tensor:
    """``(1 + count, C, H, W)``: each cell's mean, then the leading ``count`` spatial modes (unit length over all
    channels and cells) of the departures from it, from the frames of ``values`` ``(N, C, T, H, W)`` (normalised,
    any value where not ``observed``), the gaps filled by a straight line along time between their cell's
    observations (0 in cells never observed). They hold what the whole series says of the field's large-scale
    patterns, which a window alone cannot, as DINEOF's modes do (Beckers & Rixen 2003): on the pixels of the annual
    cube they took the first guess's error from 0.0083 to 0.0027-0.0028; refilling the gaps from the modes and
    finding them again, as DINEOF does, made that no better (``benchmarks/RESULTS.md``)."""
    step = max(1, math.ceil(values.numel() / MOST_MODE_CELLS))
    values, observed = values[:, :, ::step], observed[:, :, ::step]
    n, c, t, h, w = values.shape

    def frames(x):  # (frames, cells of every channel)
        return x.permute(0, 2, 1, 3, 4).reshape(n * t, c * h * w)

    filled = frames(_along_time(values.to(torch.float32), observed))
    counts = frames(observed).sum(0)
    rank = min(count, *filled.shape)
    mean = filled.mean(0)
    departures = (filled - mean).double()
    # the leading eigenvectors of the Gram matrix of the shorter side: exact and the same on every run
    short = len(departures) < departures.shape[1]
    strengths, vectors = torch.linalg.eigh(departures @ departures.T if short else departures.T @ departures)
    vectors = vectors[:, -rank:].flip(1)
    leading = departures.T @ vectors if short else vectors
    leading = leading / leading.norm(dim=0).clamp(min=1e-30)
    # a series of fewer patterns than count: no mode where there is nothing left to explain
    leading[:, strengths[-rank:].flip(0) <= 1e-9 * strengths[-1].clamp(min=1e-30)] = 0
    modes = torch.zeros(1 + count, c * h * w, device=values.device)
    modes[0], modes[1 : 1 + rank] = mean, leading.T.float()
    modes[:, counts == 0] = 0  # cells never observed: no mode reaches them
    return modes.reshape(1 + count, c, h, w)


def field_covariance(values: torch.Tensor, observed: torch.Tensor, lags: int = COVARIANCE_LAGS,
                     radius: int = COVARIANCE_RADIUS, periodic: Wrap = False, tapered: bool = False) -> torch.Tensor:
    """``(C, 2 lags + 1, 2 Ry + 1, 2 Rx + 1)``: the mean product of the values of every two observed cells at each
    offset in steps and cells (``Ry``, ``Rx``: ``radius``, at most the grid's size less one), from ``values``
    ``(N, C, T, H, W)`` (normalised, any value where not ``observed``): the series' own space-time covariance, as a
    stationary field has it, which :func:`covariance_guess` interpolates with. Offsets that no two observed cells
    share get 0. ``tapered``: the products' sum at each offset over the count of pairs at no offset in space (at
    that lag) instead, so that an offset few pairs share weighs less, as the classical biased estimate of an
    autocovariance, which is positive semi-definite where the mean is not: where the observations come in static
    blocks, the offsets between blocks rest on few pairs (``benchmarks/RESULTS.md``). ``periodic``
    (:func:`wrapping`): the axes that wrap round, and so do the pairs along them (an offset of ``d`` columns is one
    of ``d - W``), as :func:`covariance_guess` wrapping round reads them: estimated without the pairs across the
    seam, the offsets past half the circle were cut there, and on the generated cubes' static blocks the guess
    filled 5-20 % worse wrapping than not (``benchmarks/RESULTS.md``). Sums the products run of steps by run of
    steps, a spectrum per frame (a run of a 721 x 1440 grid holds about 360 MB of spectra per variable); on a series
    of more than :data:`MOST_COVARIANCE_CELLS` frames times cells, over runs spread through it; ``values`` and
    ``observed`` may be tensors, or dask arrays of an archive (each run read once)."""
    return _covariance_estimates(values, observed, lags, radius, periodic)[tapered]


def field_covariances(values: torch.Tensor, observed: torch.Tensor, periodic: Wrap = False,
                      candidates: dict[str, dict] = CANDIDATES) -> dict[str, torch.Tensor]:
    """The covariance (:func:`field_covariance`) each of the ``candidates`` that solves under one takes, by name,
    every estimate from one pass over the series."""
    estimates = _covariance_estimates(values, observed, COVARIANCE_LAGS, COVARIANCE_RADIUS, periodic)
    return {name: estimates[bool(options.get("tapered"))] for name, options in candidates.items()
            if options.get("covariance_steps")}


def station_correlation(values: torch.Tensor, observed: torch.Tensor,
                        periodic: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(fields, parameters)`` of a station network's series ``(N, C, T, H, W)`` (normalised, any value where not
    ``observed``) for the guess ``kriging over time``: ``fields`` ``(C, 2, H, W)``, each cell's mean and the
    logarithm of its spread over time, the stations' own and the thin plate between them, and ``parameters``
    ``(C, 3)``, each variable's correlation (:func:`~xrimpute.nets.correlation.station_statistics`). None where a
    variable has fewer than :data:`~xrimpute.nets.correlation.FEWEST_STATIONS` stations reporting together or more
    than :data:`MAX_SPLINE_POINTS`. ``periodic``: the columns wrap round."""
    values, observed = torch.as_tensor(values), torch.as_tensor(observed)
    _, c, _, h, w = values.shape
    fields, parameters = torch.zeros(c, 2, h, w), torch.zeros(c, PARAMETERS)
    for channel in range(c):
        found = station_statistics(values[:, channel], observed[:, channel], periodic, MAX_SPLINE_POINTS)
        if found is None:
            return None
        cells, statistics, parameters[channel] = found
        at_stations = torch.zeros(2, h * w, dtype=torch.bool)
        at_stations[:, cells] = True
        drawn = torch.zeros(2, h * w)
        drawn[:, cells] = statistics
        fields[channel] = spline(drawn.view(2, h, w), at_stations.view(2, h, w), torch.zeros(2, h, w))
    return fields, parameters


def _covariance_estimates(values, observed, lags: int, radius: int, periodic: Wrap) -> tuple[torch.Tensor, ...]:
    """:func:`field_covariance`'s mean and tapered estimates, in that order."""
    n, c, t, h, w = values.shape
    lags, ry, rx = min(lags, t - 1), min(radius, h - 1), min(radius, w - 1)
    wraps = wrapping(periodic)
    size = (h if wraps[0] else h + ry, w if wraps[1] else w + rx)  # zeros beyond the edges but round those that wrap
    run = min(t, max(4 * (lags + 1), 16))
    starts = [(i, s) for i in range(n) for s in range(0, t - lags, run)]
    keep = max(1, math.ceil(len(starts) * run * h * w / MOST_COVARIANCE_CELLS))
    sums = torch.zeros(2, c, lags + 1, *size, dtype=torch.float64)
    for i, s in starts[::keep]:
        stop = min(t, s + run + lags)
        seen = observed[i, :, s:stop]  # np.where and np.stack keep an archive's dask arrays lazy: one read a run
        both = torch.from_numpy(np.asarray(np.stack([np.where(seen, values[i, :, s:stop], 0.0), seen]), np.float64))
        spectra = torch.fft.rfft2(both, s=size)  # (2, C, steps, ., .)
        for lag in range(lags + 1):
            first = min(run, stop - s - lag)  # every pair of steps that far apart, each run's once
            products = spectra[:, :, :first].conj() * spectra[:, :, lag : lag + first]
            sums[:, :, lag] += torch.fft.irfft2(products.sum(2), s=size)
    counts = sums[1].round()  # (C, lags + 1, H + ry, W + rx), offset 0 at [0, 0]
    mean = torch.where(counts > 0, sums[0] / counts.clamp(min=1), 0.0)
    tapered = sums[0] / counts[..., :1, :1].clamp(min=1)
    rows = torch.arange(-ry, ry + 1) % size[0]
    cols = torch.arange(-rx, rx + 1) % size[1]

    def offsets(covariance):
        ahead = covariance[:, :, rows][:, :, :, cols]  # offsets -r..r at steps 0..lags
        behind = ahead.flip(1, 2, 3)[:, :-1]  # a stationary covariance: (-dt, -d) as (dt, d)
        return torch.cat([behind, ahead], dim=1).float()

    return offsets(mean), offsets(tapered)


def covariance_guess(values: torch.Tensor, mask: torch.Tensor, covariance: torch.Tensor, steps: int,
                     periodic: Wrap = False, nugget: float = COVARIANCE_NUGGET) -> torch.Tensor:
    """The mask's cells' best linear estimate of every cell of ``(B, C, T, H, W)`` windows under ``covariance``
    (:func:`field_covariance`, per channel): simple kriging in space and time with the series' own covariance
    (optimal interpolation), ``steps`` conjugate-gradient steps on the context cells' system, each one FFT
    convolution each way. Offsets beyond the window's size are dropped and those along time tapered to 0 past the
    covariance's lags; ``periodic`` (:func:`wrapping`): the axes that wrap round, each offset round the circle taken
    once (estimate the covariance wrapping too). The convolution's spectrum is kept non-negative, so the system stays
    positive definite. Where the gaps stay put and never see their own cells observed (static blocks), the field's
    covariance carries what the context says into them far better than the smoothest surface does
    (``benchmarks/RESULTS.md``). The mask's cells keep their values; a window without context gets 0 (the mean)."""
    b, c, t, h, w = values.shape
    lags = (covariance.shape[1] - 1) // 2
    middle_y, middle_x = (covariance.shape[2] - 1) // 2, (covariance.shape[3] - 1) // 2
    ry, rx = min(middle_y, h - 1), min(middle_x, w - 1)
    reach = min(lags, t - 1)
    # offsets from -before to after: round a circle of w columns (or h rows), each once (-31 to 32 of 64)
    wraps = wrapping(periodic)
    before = (reach, *(min(r, (n - 1) // 2) if wrap else r for r, n, wrap in zip((ry, rx), (h, w), wraps)))
    after = (reach, *(min(r, n // 2) if wrap else r for r, n, wrap in zip((ry, rx), (h, w), wraps)))
    size = (_fast_size(t + reach), *(n if wrap else _fast_size(n + r) for r, n, wrap in zip((ry, rx), (h, w), wraps)))
    with torch.autocast(values.device.type, enabled=False):
        taper = 1 - torch.arange(-reach, reach + 1, device=values.device).abs() / (lags + 1)
        table = covariance[:, lags - reach : lags + reach + 1, middle_y - before[1] : middle_y + after[1] + 1,
                           middle_x - before[2] : middle_x + after[2] + 1] * taper[:, None, None]
        kernel = torch.zeros(c, *size, device=values.device)
        index = [torch.arange(-b, a + 1, device=values.device) % n for b, a, n in zip(before, after, size)]
        kernel[:, index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]] = table
        spectrum = torch.fft.rfftn(kernel, dim=(1, 2, 3)).real.clamp(min=0)

        def convolve(u):
            return _padded_convolution(u, spectrum, size)

        seen = mask.to(torch.float32).flatten(0, 1)  # a frame per window and variable, as the solve takes them
        noise = nugget * covariance[:, lags, middle_y, middle_x].clamp(min=0).repeat(b).view(-1, 1, 1, 1)
        residual = values.to(torch.float32).flatten(0, 1) * seen
        x = torch.zeros_like(residual)
        _conjugate_gradients(lambda u: (convolve(u.view(b, c, t, h, w)).flatten(0, 1) + noise * u) * seen, x,
                             residual, steps)
        return torch.where(mask, values.to(torch.float32), convolve(x.view(b, c, t, h, w)))


def _padded_convolution(u: torch.Tensor, spectrum: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """``u`` ``(..., T, H, W)`` zero-padded to ``size``, multiplied by ``spectrum`` (an ``rfftn`` over ``size``) and
    cropped back to ``(T, H, W)``: one axis at a time, each transform over the rows that hold data (the padding's
    zeros go in last and the cropped cells come out first). On a CPU half the time of ``rfftn`` and ``irfftn`` of
    the padded block, whose inverse alone took two thirds (``benchmarks/RESULTS.md``)."""
    t, h, w = u.shape[-3:]
    waves = torch.fft.fft(torch.fft.fft(torch.fft.rfft(u, n=size[2]), n=size[1], dim=-2), n=size[0], dim=-3)
    rows = torch.fft.ifft(torch.fft.ifft(waves * spectrum, dim=-3)[..., :t, :, :], dim=-2)[..., :h, :]
    return torch.fft.irfft(rows, n=size[2])[..., :w]


def _fast_size(n: int) -> int:
    """The least length of at least ``n`` whose only prime factors are 2, 3 and 5: a fast FFT's."""
    while True:
        rest = n
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return n
        n += 1


def _along_time(values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """``values`` ``(N, C, T, H, W)`` filled along time: the straight line between each cell's observations either
    side, the nearest beyond its first and last, 0 in a cell never observed (the classical ``interpolate`` filler's
    line in time, in torch: ``xrimpute.baselines`` sits above the networks and cannot be imported here)."""
    t = values.shape[2]
    step = torch.arange(t, device=values.device).reshape(1, 1, t, 1, 1).expand_as(values)
    before = torch.where(observed, step, -1).cummax(2).values
    after = torch.where(observed, step, t).flip(2).cummin(2).values.flip(2)
    v0 = values.gather(2, before.clamp(min=0))
    v1 = values.gather(2, after.clamp(max=t - 1))
    share = (step - before) / (after - before).clamp(min=1)
    line = v0 + (v1 - v0) * share
    return torch.where(before < 0, torch.where(after < t, v1, 0.0), torch.where(after < t, line, v0))


def modes_baseline(values: torch.Tensor, mask: torch.Tensor, modes: torch.Tensor,
                   ridge: float = MODES_RIDGE) -> torch.Tensor:
    """``(B, C, T, H, W)``: in every frame of ``values``, the cells' means plus the modes (:func:`spatial_modes`)
    whose amplitudes best fit the mask's cells, pulled towards 0 by ``ridge`` times the frame's share of cells
    (a frame without any keeps the means)."""
    b, c, t, h, w = values.shape
    mean, basis = modes[0].reshape(-1).float(), modes[1:].reshape(len(modes) - 1, -1).float()
    weight = mask.permute(0, 2, 1, 3, 4).reshape(b, t, -1).to(torch.float32)
    departure = (values.permute(0, 2, 1, 3, 4).reshape(b, t, -1).to(torch.float32) - mean) * weight
    with torch.autocast(values.device.type, enabled=False):
        gram = torch.einsum("kp,btp,lp->btkl", basis, weight, basis)
        share = weight.mean(-1)[..., None, None]
        gram = gram + (ridge * share + 1e-6) * torch.eye(len(basis), device=values.device)
        amplitude = _solve(gram, torch.einsum("kp,btp->btk", basis, departure)[..., None])[..., 0]
        fitted = mean + amplitude @ basis
    return fitted.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def candidate_label(label: str) -> tuple[str, bool, bool]:
    """``(name in CANDIDATES, whether the guess leans on nearby steps, whether along the flow)`` of a label
    :func:`choose_guess` gives (whether it leans on the modes: ``label.endswith(MODES_LABEL)``; on each cell's own
    curve too: ``label.endswith(OWN_CURVE_LABEL)``)."""
    label = label.removesuffix(OWN_CURVE_LABEL)
    for suffix, flow in ((NEARBY_LABEL, False), (FLOW_LABEL, True)):
        if label.endswith(suffix):
            return label[: -len(suffix)], True, flow
    return label.removesuffix(MODES_LABEL), False, False


WIDE_MARGIN = 0.95
"""The share of its wide twin's held-back error (:func:`wide_twin`) that a guess without the wide level must score
below for :func:`choose_guess` to keep it. The wide level changes a guess only beyond the narrower levels' reach of
the context, where held-back cells, observed among observations, seldom lie and the gaps of a swath mostly do: on
the ERA5 sample's swath the held-back cells of four draws put a guess and its wide twin within 0-3 % where the gaps
put "time first" 38-63 % behind "time first, wide" (``benchmarks/RESULTS.md``)."""


FAR_GAPS = 0.2
"""The share of the gaps beyond the narrower levels' reach (:func:`narrow_reach`) above which :func:`choose_guess`
takes the wide twin of the guess it chose whatever the held-back cells say: there the wide level fills most of what
it changes, and the held-back cells, observed among observations, lie within that reach. Half the ERA5 sample's
swath gaps lie beyond it, at most 3.4 % of any other case of the benchmark's cubes; on the swath two fits of
sixteen took a guess the held-back cells put 20 % ahead of its wide twin and the gaps 58 % behind it
(``benchmarks/RESULTS.md``)."""


def narrow_reach(levels: Levels = DEFAULT_LEVELS) -> tuple[int, int]:
    """``(steps, cells)``: how far the levels without the wide one reach from an observation, as
    :func:`xrimpute.masks.gaps_in_reach` takes it (steps centred on a cell, cells either way in space)."""
    return (max(gaussian_kernel(time).numel() for _, time in levels),
            max(gaussian_kernel(space).numel() // 2 for space, _ in levels))


def wide_twin(label: str, candidates: dict[str, dict] = CANDIDATES) -> str | None:
    """The label of :func:`choose_guess` whose candidate is ``label``'s with the wide level (:data:`WIDE_LEVEL`)
    added, ``"time first, wide + nearby steps"`` for ``"time first + nearby steps"``; None where there is none."""
    name = candidate_label(label)[0]
    twin = f"{name}, wide"
    return twin + label[len(name):] if twin in candidates else None


def costly(label: str, candidates: dict[str, dict] = CANDIDATES) -> bool:
    """Whether the guess ``label`` (of :func:`choose_guess`) leans on a series-wide baseline or solves under the
    series' covariance: chosen only where it beats the best guess without either by :data:`BASELINE_MARGIN`."""
    return label.endswith(MODES_LABEL) or bool(candidates.get(label, {}).get("covariance_steps"))


AVERAGED_MARGIN = 0.9
"""The share of the best single guess's held-back error below which :func:`choose_guess` takes an averaged one
(:class:`FirstGuess`'s ``averaged``): of nine fits of five cubes that chose one, the four that won by more than 10 %
filled the gaps 5-19 % better (the guess alone); of the five within it, three filled them 7-9 % better, one 0.6 %
worse and one 42 % worse (the annual cube's 1 % pixels, under 20 context cells a frame, where the held-back cells
misjudge the thin plate) (``benchmarks/RESULTS.md``)."""
FINALISTS = 4
"""The candidates best on the scored windows alone that :func:`choose_guess` scores again as imputation blends them
(with the best without a series-wide baseline or covariance, the best leaning on nearby steps and the best leaning
on neither): on the six cases measured the choice came out as with every candidate re-scored, at a fraction of its
cost; the guesses leaning on nearby steps can win the windows alone and lose blended, where without the best of the
others among them a swath of the ERA5 sample took one that filled its gaps 38 % worse (``benchmarks/RESULTS.md``)."""


def blend_runs(guess: torch.Tensor, runs: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """``guess`` ``(B, C, T, H, W)`` of windows at stride 1 round some scored ones (``runs``: the scored window of
    each and its start less that one's) as imputation blends them: each scored window's steps the mean over the
    windows holding them; ``guess`` itself without ``runs``."""
    if runs is None:
        return guess
    owner, offsets = runs
    steps = guess.shape[2]
    total = guess.new_zeros((int(owner.max()) + 1, *guess.shape[1:]))
    count = guess.new_zeros((len(total), 1, steps, 1, 1))
    for k, (j, offset) in enumerate(zip(owner.tolist(), offsets.tolist())):
        first, stop = max(0, offset), min(steps, offset + steps)
        total[j, :, first:stop] += guess[k, :, first - offset : stop - offset]
        count[j, :, first:stop] += 1
    return total / count


@torch.no_grad()
def choose_guess(values: torch.Tensor, mask: torch.Tensor, held: torch.Tensor,
                 candidates: dict[str, dict] = CANDIDATES, periodic: bool = False, row_period: int = 0,
                 history: torch.Tensor | None = None, nearby: torch.Tensor | None = None,
                 span: int = NEARBY_SPAN, curve: bool = False, own: float = 0.0,
                 modes: torch.Tensor | None = None, covariances: dict[str, torch.Tensor] | None = None,
                 runs: tuple[torch.Tensor, torch.Tensor] | None = None,
                 with_averaged: bool = False, far: bool = False) -> tuple[str, dict[str, float]]:
    """The candidate whose guess from ``(values, mask)`` best fills the held-back cells ``held``, and every
    candidate's error there relative to the mean fill (``(B, C, T, H, W)``; ``values`` normalised, so that the
    mean fill is 0). A tie keeps the first candidate; the averaged ones (:class:`FirstGuess`'s ``averaged``) run only
    ``with_averaged`` (a fit that trains no step, whose guess is its fill: trained, they filled worse, each step
    computing two guesses) and are chosen only where one beats every single one by :data:`AVERAGED_MARGIN`; the
    thin-plate and kriging ones run only where no frame holds more than :data:`MAX_SPLINE_POINTS` context cells,
    and the bending frame by frame, the spline's stand-in, only where one does: stopped early from a smooth start, it
    won the held-back cells of sparse frames and then filled their gaps worse than the spline
    (``benchmarks/RESULTS.md``). The bending ones run only without ``history``: frames left empty for hours hold a
    strip of context, which a surface bent through it overshoots far from it, where the held-back cells beside the
    strip cannot tell (the swath). ``history``: the windows' history (:func:`history_baseline`), for a network that
    leans on it. ``nearby``: the windows' nearest
    observations outside them; then every candidate is also scored through :func:`nearby_guess` (labelled with
    :data:`NEARBY_LABEL`, or :data:`FLOW_LABEL` for those along the flow, ``(B, 4C, T, H, W)``;
    :func:`candidate_label`), in place with the curved baseline where ``curve``, and with ``own`` those in place
    also with that share of each cell's own curve (labelled with :data:`OWN_CURVE_LABEL` too). ``modes``
    (:func:`spatial_modes`, without ``history``): every candidate is also scored on the departures from
    :func:`modes_baseline` (labelled with :data:`MODES_LABEL`), chosen only where one beats the best without them by
    :data:`BASELINE_MARGIN`.
    ``covariances`` (:func:`field_covariances` of the series): the guesses under them are scored too, on the values
    alone (no history, nearby steps or modes: the covariance is theirs), and chosen only where one beats the best of the
    others by :data:`BASELINE_MARGIN`, since each of its steps costs several of the bending's; the mean estimate of
    the covariance only where it beats the tapered one by that margin too (the tapered is positive semi-definite,
    and on whole-grid windows the two scored within 1 % where the tapered filled the gaps better). ``runs``: ``values``,
    ``mask`` and the inputs are windows at stride 1 round the scored ones, ``(scored window, start less its start)``
    each, and a guess scores as imputation blends it (:func:`blend_runs`) on the scored windows' ``held``.
    ``periodic``, ``row_period``: the axes that wrap round, as :class:`FirstGuess` has them. The chosen guess gives
    way to its wide twin (:func:`wide_twin`) unless it beats it by :data:`WIDE_MARGIN`, and whatever it scores where
    ``far`` (more than :data:`FAR_GAPS` of the gaps beyond the narrower levels' reach)."""
    finalists = None
    if runs is not None:  # every candidate on the scored windows alone, the best few again as imputation blends them
        alone = runs[1] == 0
        cut = (lambda t: None if t is None else t[alone])
        _, first = choose_guess(values[alone], mask[alone], held, candidates, periodic, row_period, cut(history),
                                cut(nearby), span, curve, own, modes, covariances, with_averaged=with_averaged)
        ranked = sorted(first, key=first.get)
        finalists = set(ranked[:FINALISTS])
        finalists.add(next(label for label in ranked if not costly(label, candidates)))
        # the best leaning on nearby steps, and the best leaning on neither them nor the series
        finalists.update([label for label in ranked if candidate_label(label)[1]][:1])
        finalists.update([label for label in ranked
                          if not candidate_label(label)[1] and not costly(label, candidates)][:1])
    scored = values if runs is None else values[alone]
    errors, reference = {}, float((scored**2 * held).sum().clamp(min=1e-12))
    dense = int(mask.flatten(-2).sum(-1).max()) > MAX_SPLINE_POINTS
    baseline = None if history is None else history_baseline(history, periodic, row_period)
    leaning = FLOW_LABEL if nearby is not None and nearby.dim() == 5 else NEARBY_LABEL
    leaning_on_modes = None if modes is None or history is not None else modes_baseline(values * mask, mask, modes)
    labels = (("",) + (() if nearby is None else (leaning,)) + (() if leaning_on_modes is None else (MODES_LABEL,))
              + ((NEARBY_LABEL + OWN_CURVE_LABEL,) if own and leaning == NEARBY_LABEL and curve else ()))
    for label in labels:  # on a tie, a guess without the nearby steps or the modes
        for name, options in candidates.items():
            solved = options.get("thin_plate") or options.get("kriging")
            frame_by_frame = options.get("bending") and not options.get("across")  # the spline's stand-in
            under_covariance = bool(options.get("covariance_steps"))
            if (finalists is not None and name + label not in finalists) or options.get("correlation"):
                continue  # the stations' correlation is scored by the fit, fitted anew without the stations scored
            if options.get("averaged") and not with_averaged:
                continue
            if (solved and dense) or (frame_by_frame and not dense) or (
                    options.get("bending") and history is not None) or (
                    under_covariance and (name not in (covariances or {}) or label or history is not None)):
                continue
            first_guess = FirstGuess(**options, periodic=periodic, row_period=row_period,
                                     covariance=covariances[name] if under_covariance else None)
            if label == MODES_LABEL:
                guess, _ = first_guess(values * mask, mask, leaning_on_modes)
            elif label:
                guess, _ = nearby_guess(first_guess, values * mask, mask, nearby, span, baseline, curve,
                                        own if label.endswith(OWN_CURVE_LABEL) else 0.0)
            else:
                guess, _ = first_guess(values * mask, mask, baseline)
            errors[name + label] = float(((blend_runs(guess, runs) - scored) ** 2 * held).sum()) / reference
    if finalists is not None:  # the others keep their error on the scored windows alone
        errors = {label: errors.get(label, error) for label, error in first.items()}
    pool = list(errors) if finalists is None else [label for label in errors if label in finalists]
    order = list(errors)

    def best(labels):
        return min(labels, key=lambda label: (errors[label], order.index(label)))

    chosen = best(pool)
    wide = wide_twin(chosen, candidates)
    if wide in (errors if far else pool) and (far or not errors[chosen] < WIDE_MARGIN * errors[wide]):
        chosen = wide  # the held-back cells cannot tell the two

    def averaged(label):
        return candidates.get(candidate_label(label)[0], {}).get("averaged", False)

    if averaged(chosen):  # a mean of two guesses only where it clearly beats every single one
        single = best([label for label in pool if not averaged(label)])
        chosen = chosen if errors[chosen] < AVERAGED_MARGIN * errors[single] else single
    tapered = [label for label in pool if candidates.get(label, {}).get("tapered")]
    if tapered and candidates.get(chosen, {}).get("covariance_steps") and chosen not in tapered:
        # the mean estimate, not positive semi-definite, only where it clearly beats the tapered one
        chosen = chosen if errors[chosen] < BASELINE_MARGIN * errors[tapered[0]] else tapered[0]
    if costly(chosen, candidates):
        plain = best([label for label in pool if not costly(label, candidates)])
        chosen = chosen if errors[chosen] < BASELINE_MARGIN * errors[plain] else plain
    return chosen, errors
