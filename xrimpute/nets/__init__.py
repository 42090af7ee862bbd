"""Networks: the denoiser wrapper and the U-Net behind it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArgumentError
from .prior import (DEFAULT_LEVELS, FirstGuess, cpu_chunk, flow_closeness, history_baseline, modes_baseline,
                    nearby_guess)
from .unet import PRESETS, UNet


class Denoiser(nn.Module):
    """Predicts the clean window ``x0`` from context values and the context mask.

    Takes ``(B, C, T, H, W)`` values and mask and the diffusion time ``(B,)``;
    the time steps of the window are stacked as channels of a 2-D U-Net, the
    mask is an input channel, and static fields ``(S, H, W)`` (e.g. position)
    are appended: the full-grid fields kept as a buffer, or per-sample fields
    cut for tiles of the grid and passed to :meth:`forward`. The grid is
    padded to the U-Net's multiple with cells that are never observed, and
    cropped back (not at all with ``exact_grid=True``, which every fit now
    builds: see :class:`~xrimpute.nets.unet.UNet`).

    With ``first_guess`` the network starts from a classical estimate made
    from the context alone (:class:`~xrimpute.nets.prior.FirstGuess`): the
    guess and its certainty are extra input channels, and the U-Net, whose
    last layer starts at zero, predicts the correction to the guess.
    ``periodic`` wraps the columns round, and ``row_period`` (rows, 0: none)
    the rows of a window that has that many, the whole grid of a doubly
    periodic domain, in the guess, and with ``network_wraps_rows`` in the
    U-Net too: a U-Net trained on tiles of fewer rows has learned rows that
    end at their edges, and wrapping them only at imputation filled the
    advected pixels worse (``benchmarks/RESULTS.md``).
    ``guess``: the :class:`~xrimpute.nets.prior.FirstGuess` options (default
    its defaults), e.g. one of :data:`~xrimpute.nets.prior.CANDIDATES`.
    With ``history`` the guess leans on each cell's observations outside the
    window (:func:`~xrimpute.nets.prior.history_baseline`), which every call
    then passes as ``history`` ``(B, 2C, H, W)``: their sums and counts.
    With ``nearby`` (a span of steps) the guess leans on each cell's nearest
    observations before and after the window
    (:func:`~xrimpute.nets.prior.nearby_guess`), which every call then
    passes as ``nearby`` ``(B, 4 depth C, H, W)``
    (:func:`xrimpute.windows.nearby_observations`), with ``curve`` through the
    ``depth`` nearest either side, else the nearest, and ``own_curve`` of
    each cell's own curve through the window (:func:`~xrimpute.nets.prior.own_curve`); with ``flow`` too, the
    nearest observations along the flow instead of in place, ``(B, 4C, T, H, W)``
    (``nearby_observations(..., flow=True)``), and how far the flow carried
    each cell's (:func:`~xrimpute.nets.prior.flow_closeness`) is one more
    input channel.
    With ``modes`` ``(1 + K, C, H, W)`` (:func:`~xrimpute.nets.prior.spatial_modes` of the training series) the
    guess interpolates each frame's departures from the modes that best fit its context
    (:func:`~xrimpute.nets.prior.modes_baseline`), on the grid the modes cover. ``covariance``
    (:func:`~xrimpute.nets.prior.field_covariance` of the training series) goes with a ``guess`` whose
    ``covariance_steps`` ask for it (the candidate "optimal interpolation"), and ``station_correlation``
    (:func:`~xrimpute.nets.prior.station_correlation`) with one whose ``correlation`` does ("kriging over time").
    """

    def __init__(self, n_channels: int, window: int, static: torch.Tensor | None = None,
                 preset: str = "tiny", periodic: bool = False, row_period: int = 0, network_wraps_rows: bool = False,
                 first_guess: bool = False,
                 guess: dict | None = None, history: bool = False, nearby: int = 0, flow: bool = False,
                 curve: bool = False, own_curve: float = 0.0, modes: torch.Tensor | None = None,
                 covariance: torch.Tensor | None = None,
                 station_correlation: tuple[torch.Tensor, torch.Tensor] | None = None, **overrides):
        super().__init__()
        if preset not in PRESETS:
            raise ArgumentError(f"unknown network preset {preset!r}; choose one of {sorted(PRESETS)}")
        if (history or nearby) and not first_guess:
            raise ArgumentError("history= and nearby= shape the first guess; build the network with first_guess=True")
        if modes is not None and (history or nearby or not first_guess):
            raise ArgumentError("modes= is a baseline of the first guess of its own: build the network with "
                                "first_guess=True and without history= or nearby=")
        if flow and not nearby:
            raise ArgumentError("flow= says where the nearby steps come from; pass nearby= (a span of steps) too")
        self.config = dict(n_channels=n_channels, window=window, preset=preset, periodic=periodic,
                           first_guess=first_guess, **overrides)
        if row_period:  # saved only when the rows wrap, so older model files rebuild as they were
            self.config["row_period"] = int(row_period)
        if network_wraps_rows:
            self.config["network_wraps_rows"] = True
        if guess is not None:  # likewise
            guess = dict(guess, levels=[list(map(float, level)) for level in guess.get("levels", DEFAULT_LEVELS)])
            self.config["guess"] = guess
        if history:  # likewise
            self.config["history"] = True
        if nearby:
            self.config["nearby"] = int(nearby)
        if flow:
            self.config["flow"] = True
        if curve:
            self.config["curve"] = True
        if own_curve:
            self.config["own_curve"] = float(own_curve)
        if modes is not None:
            self.config["modes"] = len(modes) - 1
            self.register_buffer("modes", torch.as_tensor(modes, dtype=torch.float32))
        else:
            self.modes = None
        static = torch.zeros(0, 1, 1) if static is None else torch.as_tensor(static, dtype=torch.float32)
        self.register_buffer("static", static)
        cw = n_channels * window
        self.first_guess = FirstGuess(**(guess or {}), periodic=periodic, row_period=row_period,
                                      covariance=covariance,
                                      station_correlation=station_correlation) if first_guess else None
        inputs = (4 if first_guess else 2) * cw + (cw if flow else 0) + static.shape[0]
        self.unet = UNet(inputs, cw, periodic=periodic, row_period=row_period if network_wraps_rows else 0,
                         zero_head=first_guess,
                         **{**PRESETS[preset], **overrides})

    @property
    def row_period(self) -> int:
        """The rows of a grid whose rows wrap round (0: they do not): a window of that many wraps them."""
        return self.config.get("row_period", 0)

    @property
    def uses_history(self) -> bool:
        """Whether every call needs the windows' ``history``."""
        return self.config.get("history", False)

    @property
    def nearby_span(self) -> int:
        """Steps either side of a window whose observations every call passes as ``nearby`` (0: none)."""
        return self.config.get("nearby", 0)

    @property
    def station_correlation(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stations' correlation its first guess kriges under (fields and parameters), or None."""
        guess = self.first_guess
        return None if guess is None or not guess.correlation else (guess.station_fields, guess.station_parameters)

    @property
    def flows(self) -> bool:
        """Whether the ``nearby`` observations every call passes are those along the flow (one set per step)."""
        return self.config.get("flow", False)

    def guess(self, values: torch.Tensor, mask: torch.Tensor, history: torch.Tensor | None = None,
              nearby: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first guess and its certainty ``(B, C, T, H, W)`` from the context (and the windows' history and
        nearby observations)."""
        if self.uses_history and history is None:
            raise ArgumentError("this network's first guess leans on each window's history; pass history= (the sums "
                                "and counts of each cell's observations outside the window, windows.outside_window)")
        if self.nearby_span and nearby is None:
            raise ArgumentError("this network's first guess leans on each cell's observations near the window; pass "
                                "nearby= (windows.nearby_observations)")
        baseline = history_baseline(history, self.config["periodic"], self.row_period) if self.uses_history else None
        if self.nearby_span and (nearby.dim() == 5) != self.flows:
            where = "along the flow" if self.flows else "in place"
            raise ArgumentError(f"this network's first guess leans on the nearby steps {where}; pass "
                                f"nearby=windows.nearby_observations(..., flow={self.flows})")
        if self.nearby_span:
            return nearby_guess(self.first_guess, values, mask, nearby, self.nearby_span, baseline,
                                self.config.get("curve", False), self.config.get("own_curve", 0.0))
        if self.modes is not None:
            if tuple(self.modes.shape[-2:]) != tuple(values.shape[-2:]):
                raise ArgumentError(f"this network's first guess leans on modes of a {tuple(self.modes.shape[-2:])} "
                                    f"grid; pass windows of that whole grid, not {tuple(values.shape[-2:])}")
            baseline = modes_baseline(values, mask, self.modes)
        return self.first_guess(values, mask, baseline)

    def forward(self, values: torch.Tensor, mask: torch.Tensor, t: torch.Tensor,
                static: torch.Tensor | None = None, history: torch.Tensor | None = None,
                nearby: torch.Tensor | None = None, share: torch.Tensor | None = None) -> torch.Tensor:
        """``static`` ``(B, S, H, W)``: per-sample static fields (for tiles of a larger grid);
        by default the full-grid fields given at construction, which must match the grid. ``history``, ``nearby``:
        see the class. ``share`` ``(B, C, 1, H, W)``: per cell, the share of the U-Net's correction to the first
        guess that the output keeps (default all of it; 0: the guess alone), so that a kept share costs no second
        pass of the guess."""
        b, c, w, h, wd = values.shape
        m = self.unet.multiple
        pad = (0, -wd % m, 0, -h % m)
        inputs = [values.reshape(b, c * w, h, wd), mask.to(values.dtype).reshape(b, c * w, h, wd)]
        if self.first_guess is not None:
            guess, certainty = (v.to(values.dtype).reshape(b, c * w, h, wd)
                                for v in self.guess(values, mask, history, nearby))
            inputs += [guess, certainty]
        if self.flows:
            inputs.append(flow_closeness(nearby).to(values.dtype).reshape(b, c * w, h, wd))
        if self.static.shape[0]:
            if static is None:
                if any(n not in (1, size) for n, size in zip(self.static.shape[1:], (h, wd))):
                    raise ArgumentError(f"the network's static fields cover a {tuple(self.static.shape[1:])} grid, not "
                                        f"{(h, wd)}; pass static= with per-sample fields (B, S, H, W) for tiles")
                static = self.static.expand(b, -1, h, wd)
            inputs.append(static.to(values.dtype))
        x = F.pad(torch.cat(inputs, dim=1), pad)
        chunk = cpu_chunk(values)  # a large grid's batch a chunk at a time on a CPU
        out = self.unet(x, t) if chunk >= b else torch.cat(
            [self.unet(x[i : i + chunk], t[i : i + chunk]) for i in range(0, b, chunk)])
        out = out[..., :h, :wd]
        if self.first_guess is None:
            return out.reshape(b, c, w, h, wd)
        if share is not None:
            out = (out.reshape(b, c, w, h, wd) * share.to(out.dtype)).reshape(b, c * w, h, wd)
        return (out + guess).reshape(b, c, w, h, wd)


__all__ = ["Denoiser", "UNet", "PRESETS"]
