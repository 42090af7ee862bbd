"""Query coverage (Theorem 1 of the method): where a spec leaves gaps that are never learned.

:func:`query_coverage` is the probability that a cell is queried given a
context; :func:`learnability` maps it over the grid and
:func:`warn_if_unlearnable` warns when gaps would never be learned.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..geometry import evenly_spaced
from .infer import infer, observation_mask
from .specs import MaskSpec

ZERO_COVERAGE = 1e-3  # queried in under one context in a thousand: in effect never learned


def query_coverage(
    spec: MaskSpec,
    observed: torch.Tensor | np.ndarray,
    observing: MaskSpec | None = None,
    n_draws: int = 256,
    seed: int = 0,
    return_gaps: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Probability that each cell is queried given a context drawn by ``spec`` (Theorem 1).

    ``observed`` holds observation masks ``(N, C, T, H, W)`` of training windows;
    ``observing`` describes how observations arise (its ``units`` are the
    independent pieces of the observing system; default: ``spec`` itself).
    For a context drawn from a random window, a cell outside the context is a
    query exactly when its unit was observed; by Bayes with the unit's
    observation frequency ``q`` and the context's likelihood ``L`` of leaving
    the whole unit out, that probability is ``q L / (q L + 1 - q)``.

    A gap cell in a unit that the context does reach is weighed the same way
    at the cell level: its frequency of being observed when its unit is,
    against the spec's likelihood of leaving that one cell out (zero for a
    block context, which keeps whole blocks).

    Returns ``(T, H, W)``: the mean of that probability (times how often the
    cell is observed when its unit is) over draws in which the cell is a gap of
    the window the context came from, which is the situation of imputation.
    Zero means the gap is never learned; cells never in a gap get 1. With
    ``return_gaps``, also the number of draws in which each cell was a gap.
    """
    observing = observing or spec
    observed = torch.as_tensor(np.asarray(observed)).bool() if not torch.is_tensor(observed) else observed.bool()
    n, c, t, h, w = observed.shape
    frames = observed.reshape(n * c, 1, t, h, w)
    labels = observing.units((t, h, w)).reshape(-1)
    n_units = int(labels.max()) + 1

    def unit_sum(x):  # (B, U) sums of per-cell values over units
        return torch.zeros(x.shape[0], n_units, dtype=x.dtype).index_add_(1, labels, x.reshape(x.shape[0], -1))

    unit_seen = unit_sum(frames.float()) > 0
    unit_rate = unit_seen.float().mean(0)  # q: how often each unit is observed
    cell_rate = frames.float().sum(0).reshape(-1) / unit_seen.float().sum(0).clamp(min=1)[labels]
    ever = frames.any(0, keepdim=True)  # what a unit looks like when it is observed

    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n * c, (n_draws,), generator=generator)
    context = spec.context(frames[picks], generator)
    unit_in_context = unit_sum(context.float()) > 0
    possible = ever.expand_as(context)

    def posterior(rate, loglik):  # P(observed | left out of the context), by Bayes
        odds = torch.where(rate < 1, rate / (1 - rate).clamp(min=1e-300), math.inf)
        return torch.sigmoid(torch.log(odds) + loglik).nan_to_num(0.0)

    # units left out: the log-likelihood of leaving the whole unit out, had it been observed
    unit_posterior = posterior(unit_rate.double(), spec.leave_out_log_likelihood(context, possible, labels, n_units))
    # gap cells of units the context reaches (so observed): the same, one cell at a time
    cells = torch.arange(t * h * w)
    cell_posterior = posterior(cell_rate.double(), spec.leave_out_log_likelihood(context, possible, cells, t * h * w))
    per_cell = torch.where(unit_in_context[:, labels], cell_posterior,
                           unit_posterior[:, labels] * cell_rate.double())
    gap = ~frames[picks].reshape(n_draws, -1)
    coverage = (per_cell * gap).sum(0) / gap.sum(0).clamp(min=1)
    coverage = torch.where(gap.any(0), coverage, 1.0).reshape(t, h, w).float()
    return (coverage, gap.sum(0).reshape(t, h, w)) if return_gaps else coverage


def _windows(observed: np.ndarray, window: int, most: int) -> np.ndarray:
    """Up to ``most`` non-overlapping windows ``(M, 1, window, H, W)`` of the series, variables merged."""
    merged = observed.any(1)
    n, t = merged.shape[:2]
    window = min(window, t)
    starts = [(i, s) for i in range(n) for s in range(0, t - window + 1, window)]
    return np.stack([merged[i, s : s + window] for i, s in (starts[p] for p in evenly_spaced(len(starts), most))])[:, None]


@dataclass(frozen=True)
class Learnability:
    """Query coverage of a spec over the grid (see :func:`learnability`)."""

    coverage: np.ndarray  # (H, W): mean query probability of gap cells over a window's steps; NaN never observed
    spec: MaskSpec
    observing: MaskSpec
    zero_share: float  # share of the cells ever observed with (near) zero coverage: never learned
    low_share: float  # ... with coverage below ``low``: learned slowly
    never_share: float  # share of the grid never observed (permanent mask)
    low: float

    def worst_regions(self, count: int = 3) -> list[dict]:
        """The largest connected regions of coverage below ``low``: index ranges, size and mean coverage."""
        poor = np.nan_to_num(self.coverage, nan=1.0) < self.low
        labels, found = ndimage.label(poor)
        regions = []
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            inside = labels[box] == index
            regions.append(dict(rows=(box[0].start, box[0].stop - 1), cols=(box[1].start, box[1].stop - 1),
                                cells=int(inside.sum()), coverage=float(self.coverage[box][inside].mean())))
        return sorted(regions, key=lambda r: (-r["cells"], r["coverage"]))[:count]


def learnability(spec: MaskSpec, observed, window: int, *, observing: MaskSpec | None = None, low: float = 0.05,
                 max_windows: int = 256, n_draws: int = 256, seed: int = 0) -> Learnability:
    """Map over the grid the probability that a gap is queried given a context (Theorem 1).

    Parameters
    ----------
    spec : MaskSpec
        The context sampler to check.
    observed : array_like
        Boolean ``(N, C, T, H, W)`` mask (variables merged); :func:`xrimpute.check.check`
        maps the coverage of an xarray cube.
    window : int
        Time steps per training window.
    observing : MaskSpec, optional
        How observations arise (its units are the observing system's pieces);
        default: what :func:`infer` reads from ``observed``.
    low : float
        Coverage under which a cell counts as poorly covered (learned slowly).
    max_windows, n_draws, seed
        Windows of the series looked at (non-overlapping, spread out) and
        contexts drawn (see :func:`query_coverage`).

    Returns
    -------
    Learnability
        ``coverage`` ``(H, W)``: the mean over a window's steps of
        :func:`query_coverage`, each step weighed by how often the cell is a
        gap there (NaN where never observed, 1 where never a gap), and the
        shares of cells at zero coverage (below :data:`ZERO_COVERAGE`, 1e-3:
        queried in under one context in a thousand), below ``low`` and never observed.
    """
    observed = observation_mask(observed)
    observing = observing or infer(observed).spec
    windows = _windows(observed, window, max_windows)
    per_step, gaps = query_coverage(spec, windows, observing=observing, n_draws=n_draws, seed=seed,
                                    return_gaps=True)
    gaps = gaps.double()  # weigh each step of the window by how often the cell is a gap there
    coverage = ((per_step * gaps).sum(0) / gaps.sum(0).clamp(min=1)).numpy()
    coverage = np.where(gaps.sum(0).numpy() > 0, coverage, 1.0)  # never a gap: nothing to learn
    valid = windows.any(axis=(0, 1, 2))  # observed in the windows looked at
    coverage = np.where(valid, coverage, np.nan)
    share = (lambda cells: float(cells[valid].mean())) if valid.any() else (lambda cells: 0.0)
    return Learnability(coverage=coverage.astype(np.float32), spec=spec, observing=observing,
                        zero_share=share(coverage < ZERO_COVERAGE), low_share=share(coverage < low),
                        never_share=float(1 - observed.any(axis=(0, 1, 2)).mean()), low=low)


def warn_if_unlearnable(spec: MaskSpec, observed, window: int, *, max_windows: int = 32, n_draws: int = 32,
                        seed: int = 0) -> Learnability:
    """Warn (UserWarning) when ``spec`` leaves gap cells with zero query probability, and say which spec fixes it.

    A quick version of :func:`learnability` on a few windows, run by
    :meth:`xrimpute.CtxDiffModel.fit`; the observing system is what
    :func:`infer` reads from ``observed``.
    """
    observed = observation_mask(observed)
    found = infer(observed)
    options = dict(max_windows=max_windows, n_draws=n_draws, seed=seed)
    report = learnability(spec, observed, window, observing=found.spec, **options)
    if report.zero_share > 0.01:
        fix = (" No other mask spec does better: the observations are too sparse or too regular there.")
        if found.spec != spec:
            better = learnability(found.spec, observed, window, observing=found.spec, **options)
            if better.zero_share < report.zero_share:
                fix = (f" The NaN pattern looks like {found.kind} observations: mask={found.spec!r} (or mask='infer') "
                       f"leaves {better.zero_share:.0%} at zero.")
        warnings.warn(
            f"mask {spec!r} gives {report.zero_share:.0%} of the observed grid cells zero probability of being "
            f"queried where they are gaps: the model never learns to fill them (contexts must copy the structure "
            f"of the observations).{fix} See xrimpute.check.check(obj, mask=...) for a coverage map.",
            UserWarning, stacklevel=3,
        )
    return report
