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
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A 1-D Gaussian of ``sigma`` cells, cut at 2.5 sigma, summing to one."""
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


class FirstGuess(nn.Module):
    """``(values, mask) -> (guess, certainty)`` on ``(B, C, T, H, W)``; no trainable parameters.

    ``values`` are 0 outside the mask. ``scales``: spatial Gaussian widths in
    cells; ``time_scale``: the width along time in steps (0: each step alone);
    ``periodic`` wraps the last axis (longitude) instead of treating beyond
    the edge as unobserved. Cells with no context within reach of the
    coarsest scale get a guess of 0 (the normalised mean).
    """

    def __init__(self, scales: tuple[float, ...] = (1.0, 2.0, 4.0), time_scale: float = 1.0,
                 threshold: float = 0.01, periodic: bool = False):
        super().__init__()
        self.scales = tuple(sorted(scales, reverse=True))  # coarse to fine
        self.threshold, self.periodic = threshold, periodic
        for i, sigma in enumerate(self.scales):
            self.register_buffer(f"space{i}", gaussian_kernel(sigma), persistent=False)
        self.register_buffer("time", gaussian_kernel(time_scale) if time_scale > 0 else torch.ones(1),
                             persistent=False)

    def _smooth(self, x: torch.Tensor, space: torch.Tensor) -> torch.Tensor:
        """Separable smoothing of ``(N, 1, T, H, W)`` along time, then rows, then columns."""
        rt, rs = self.time.numel() // 2, space.numel() // 2
        if rt:
            x = F.conv3d(F.pad(x, (0, 0, 0, 0, rt, rt)), self.time.view(1, 1, -1, 1, 1))
        x = F.conv3d(F.pad(x, (0, 0, rs, rs, 0, 0)), space.view(1, 1, 1, -1, 1))
        if self.periodic:  # wrap round, as often as a kernel wider than the grid needs
            width = x.shape[-1]
            x = x.index_select(-1, torch.arange(-rs, width + rs, device=x.device) % width)
        else:
            x = F.pad(x, (rs, rs, 0, 0, 0, 0))
        return F.conv3d(x, space.view(1, 1, 1, 1, -1))

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, t, h, w = values.shape
        weight = mask.to(torch.float32).reshape(b * c, 1, t, h, w)
        signal = values.to(torch.float32).reshape(b * c, 1, t, h, w) * weight
        guess = certainty = None
        for i in range(len(self.scales)):
            space = getattr(self, f"space{i}")
            both = self._smooth(torch.cat([signal, weight]), space)  # one pass for values and mask
            num, den = both[: b * c], both[b * c :]
            estimate = num / den.clamp(min=1e-6)
            if guess is None:
                guess = torch.where(den > 1e-6, estimate, torch.zeros_like(estimate))
            else:
                trust = (den / self.threshold).clamp(max=1.0)
                guess = trust * estimate + (1 - trust) * guess
            certainty = den
        return guess.reshape(b, c, t, h, w), certainty.reshape(b, c, t, h, w)
