"""Observations carried by the flow: each cell's nearest observations along a trajectory, not in place.

Where gaps stay put while the field moves through them (a static block over
an advected tracer, a cloud bank over a drifting front), the cells of a gap
were observed upstream some steps before and downstream some steps after.
:func:`displacement` estimates one displacement per step for a stretch of a
series (and a tile of its grid: a region) by block matching between its
observed frames, coarse to fine in the lag, and :func:`co_moving` reads the
stretch along it. :func:`xrimpute.windows.along_flow` builds on both: the
counterpart of :func:`xrimpute.windows.nearby_observations` along a
trajectory: each cell's nearest observations before and after a window, which
:func:`xrimpute.nets.prior.nearby_baseline` joins by a line.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

LAGS = (1, 2, 4, 8, 16)
"""Steps between the frames matched, coarse to fine: a displacement found at one lag is refined at the next."""
SEARCH = 2
"""Cells a step searched either way at the first lag (the fastest flow followed)."""
FRAME_PAIRS = 8
"""Frame pairs matched per lag, spread over the stretch (a cost bound: the result barely moves with more)."""
MIN_OVERLAP = 0.05
"""Share of a frame's cells that a shift must leave observed in both frames of a pair for its match to count."""
STRIDE = 2
"""Every second row and column enters the match (a smooth field's match needs no more; a quarter of the cost)."""


def displacement(values, observed) -> tuple[float, float]:
    """``(rows, cols)`` per step: the shift that best maps each observed frame of ``values`` ``(C, T, H, W)``
    (``observed`` boolean, same shape) onto the frame a lag later, by mean squared mismatch on the cells observed in
    both. ``(0, 0)`` where no shift leaves :data:`MIN_OVERLAP` of the cells to compare (sparse stations) or the
    stretch holds one step."""
    x = torch.as_tensor(np.asarray(values), dtype=torch.float32)[..., ::STRIDE, ::STRIDE].contiguous()
    seen = torch.as_tensor(np.asarray(observed))[..., ::STRIDE, ::STRIDE].contiguous()
    steps, cells = x.shape[1], x.shape[-2] * x.shape[-1]
    velocity = None
    for lag in LAGS:
        if lag >= steps:
            break
        firsts = torch.linspace(0, steps - 1 - lag, min(FRAME_PAIRS, steps - lag)).round().long().unique()
        a, b, ma, mb = x[:, firsts], x[:, firsts + lag], seen[:, firsts], seen[:, firsts + lag]
        if velocity is None:
            centre, radius = (0, 0), -(-SEARCH // STRIDE)
        else:
            centre, radius = (round(velocity[0] * lag / STRIDE), round(velocity[1] * lag / STRIDE)), 1
        shifts = [(centre[0] + dy, centre[1] + dx) for dy in range(-radius, radius + 1)
                  for dx in range(-radius, radius + 1)]
        shifts.sort(key=lambda s: abs(s[0] - centre[0]) + abs(s[1] - centre[1]))  # a tie keeps the smaller move
        best, least = None, None
        for dy, dx in shifts:
            cost, count = _mismatch(a, ma, b, mb, dy, dx)
            if count >= MIN_OVERLAP * cells * len(firsts) * a.shape[0] and (least is None or cost < least):
                best, least = (dy, dx), cost
        if best is None:
            break
        velocity = (best[0] * STRIDE / lag, best[1] * STRIDE / lag)
    return velocity or (0.0, 0.0)


def _mismatch(a, ma, b, mb, dy: int, dx: int) -> tuple[float, int]:
    """Mean squared difference between ``b`` at each cell and ``a`` ``(dy, dx)`` cells before it, on the cells
    observed in both, and how many."""
    h, w = a.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return float("inf"), 0
    to = (slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
    source = (slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0)))
    both = mb[..., to[0], to[1]] & ma[..., source[0], source[1]]
    count = int(both.sum())
    if count == 0:
        return float("inf"), 0
    diff = (b[..., to[0], to[1]] - a[..., source[0], source[1]]) * both
    return float(diff.square().sum()) / count, count


def co_moving(values, observed, origin: float, velocity: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``values``, ``observed`` ``(C, T, H, W)`` read along the flow: step ``t`` at every cell plus
    ``(t - origin) * velocity`` cells (bilinearly, observed where observed cells hold at least half of the weight,
    nothing beyond the grid's edges), so that a trajectory through a cell at step ``origin`` stays in that cell."""
    x = torch.as_tensor(np.asarray(values), dtype=torch.float32)
    seen = torch.as_tensor(np.asarray(observed)).to(torch.float32)
    lags = torch.arange(x.shape[1], dtype=torch.float32) - origin
    num, den = shifted(torch.cat([x * seen, seen]).transpose(0, 1), lags * velocity[0],
                       lags * velocity[1]).transpose(0, 1).chunk(2)
    kept = den >= 0.5
    return torch.where(kept, num / den.clamp(min=1e-6), 0.0).numpy(), kept.numpy()


def shifted(frames: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Each of ``frames`` ``(N, K, H, W)`` read at every cell plus ``(dy[n], dx[n])`` cells, bilinearly, zero beyond
    the edges."""
    n, _, h, w = frames.shape
    cols = (torch.arange(w, dtype=torch.float32)[None, :] + dx.to(torch.float32)[:, None]) * (2 / max(w - 1, 1)) - 1
    rows = (torch.arange(h, dtype=torch.float32)[None, :] + dy.to(torch.float32)[:, None]) * (2 / max(h - 1, 1)) - 1
    grid = torch.stack([cols[:, None, :].expand(n, h, w), rows[:, :, None].expand(n, h, w)], -1)  # (x, y) in [-1, 1]
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
