"""A compact 2-D U-Net over space; the time steps of a window are channels.

Built from a few small blocks in the spirit of EDM2's network file: a
residual block with noise-level modulation, self-attention at coarse levels,
and constructor arguments that read like a table of hyperparameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArgumentError

PRESETS = {
    # channels, per-level multipliers, residual blocks per level, levels with attention
    "tiny": dict(channels=32, mults=(1, 2, 2), blocks=1, attention=()),
    "small": dict(channels=64, mults=(1, 2, 2), blocks=2, attention=(2,)),
    "base": dict(channels=128, mults=(1, 2, 2, 2), blocks=2, attention=(2, 3)),
    # the body runs at half resolution; only the stem and the head see every cell
    "lite": dict(channels=32, mults=(1, 2, 2), blocks=1, attention=(), stem_stride=2),
    # the CPU default: lite at half the width, a quarter of its FLOPs; at a budget of minutes the steps count
    # for more than the width
    "narrow": dict(channels=16, mults=(1, 2, 2), blocks=1, attention=(), stem_stride=2),
}


def _groups(channels: int) -> int:
    return math.gcd(32, channels // 4) or 1


class Conv3x3(nn.Module):
    """3x3 convolution; ``periodic`` wraps the last (x / longitude) axis instead of zero padding, and a call with
    ``wrap_rows`` the rows too."""

    def __init__(self, cin: int, cout: int, periodic: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=(1, 0) if periodic else 1)
        self.periodic = periodic

    def forward(self, x, wrap_rows: bool = False):
        # wrap round; a concatenation keeps a channels-last input so (a circular F.pad does not)
        if self.periodic:
            x = torch.cat([x[..., -1:], x, x[..., :1]], dim=-1)
        if wrap_rows:
            x = torch.cat([x[..., -1:, :], x, x[..., :1, :]], dim=-2)
            return F.conv2d(x, self.conv.weight, self.conv.bias, padding=(0, 0 if self.periodic else 1))
        return self.conv(x)


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of the diffusion time followed by a small MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("freqs", torch.exp(-math.log(10_000) * torch.arange(dim // 2) / (dim // 2)))
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        angles = 1000 * t.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class ResBlock(nn.Module):
    """Norm -> SiLU -> conv, modulated by the noise embedding, twice, with a skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0, periodic: bool = False):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = Conv3x3(cin, cout, periodic)
        self.modulation = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv3x3(cout, cout, periodic)
        nn.init.zeros_(self.conv2.conv.weight)
        nn.init.zeros_(self.conv2.conv.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb, wrap_rows: bool = False):
        h = self.conv1(F.silu(self.norm1(x)), wrap_rows)
        scale, shift = self.modulation(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(self.dropout(h), wrap_rows)


class Attention(nn.Module):
    """Multi-head self-attention over all grid points of a (coarse) level."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.heads = heads

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upsampling of ``x`` to the grid of ``like``: twice the size it halved, less the cell a
    rounded-up halving of an odd size added."""
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


class Double(nn.Module):
    """A U-Net level's upsampling back to the size of its skip connection (:func:`upsample_to`)."""

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return upsample_to(x, like)


class UNet(nn.Module):
    """U-Net mapping ``(B, in_channels, H, W)`` and a noise time ``(B,)`` to ``(B, out_channels, H, W)``.

    ``H`` and ``W`` must be multiples of :attr:`multiple`: ``2 ** (len(mults) - 1)`` times ``stem_stride``,
    or, with ``exact_grid``, any size: each halving rounds up and each doubling returns to the size it halved,
    so no cell is spent on padding (a 33 x 49 grid padded to 40 x 56 cost 1.4 times the work). On multiples
    both give the same numbers. ``periodic`` wraps the columns round; ``row_period`` (rows, 0: none) wraps the rows
    round wherever the input has that many, the whole grid of a doubly periodic domain.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int = 64,
        mults: tuple[int, ...] = (1, 2, 2),
        blocks: int = 2,
        attention: tuple[int, ...] = (),
        dropout: float = 0.0,
        periodic: bool = False,
        row_period: int = 0,
        stem_stride: int = 1,
        zero_head: bool = False,
        exact_grid: bool = False,
    ):
        super().__init__()
        if stem_stride not in (1, 2):
            raise ArgumentError(f"stem_stride must be 1 (full resolution) or 2 (half), not {stem_stride}")
        emb_dim = 4 * channels
        self.embed = NoiseEmbedding(emb_dim)
        self.stem = Conv3x3(in_channels, channels, periodic)
        # stem_stride 2: pool after the stem, upsample before the head, which also sees the stem's full-resolution
        # features; the body's FLOPs fall about 4x
        self.stem_stride = stem_stride
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        widths, width = [channels], channels
        for level, mult in enumerate(mults):
            for _ in range(blocks):
                self.down.append(self._stage(width, channels * mult, emb_dim, level in attention, dropout, periodic))
                width = channels * mult
                widths.append(width)
            if level < len(mults) - 1:
                self.down.append(nn.AvgPool2d(2, ceil_mode=True))
                widths.append(width)
        self.middle = self._stage(width, width, emb_dim, True, dropout, periodic)
        for level, mult in reversed(list(enumerate(mults))):
            for _ in range(blocks + 1):
                self.up.append(self._stage(width + widths.pop(), channels * mult, emb_dim, level in attention, dropout, periodic))
                width = channels * mult
            if level > 0:
                self.up.append(Double())
        head_width = width + (channels if stem_stride > 1 else 0)
        self.head = nn.Sequential(nn.GroupNorm(_groups(head_width), head_width), nn.SiLU(),
                                  Conv3x3(head_width, out_channels, periodic))
        if zero_head:  # the output starts at zero: a network predicting a correction starts from what it corrects
            nn.init.zeros_(self.head[-1].conv.weight)
            nn.init.zeros_(self.head[-1].conv.bias)
        self.row_period = row_period
        self.multiple = 1 if exact_grid else 2 ** (len(mults) - 1) * stem_stride

    @staticmethod
    def _stage(cin, cout, emb_dim, attend, dropout, periodic):
        layers = [ResBlock(cin, cout, emb_dim, dropout, periodic)]
        if attend:
            layers.append(Attention(cout))
        return nn.ModuleList(layers)

    @staticmethod
    def _run(stage, x, emb, wrap_rows):
        for layer in stage:
            x = layer(x, emb, wrap_rows) if isinstance(layer, ResBlock) else layer(x)
        return x

    def forward(self, x, t):
        # oneDNN's convolutions prefer channels-last inputs: a training step a tenth to a sixth faster on the CPU
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        emb = self.embed(t)
        # the rows wrap round where the input spans the grid's (a tile of fewer rows ends at its edges); the
        # coarser levels span them too
        wrap_rows = x.shape[-2] == self.row_period
        x = full = self.stem(x, wrap_rows)
        if self.stem_stride > 1:
            x = F.avg_pool2d(x, self.stem_stride, ceil_mode=True)
        skips = [x]
        for stage in self.down:
            x = stage(x) if isinstance(stage, nn.AvgPool2d) else self._run(stage, x, emb, wrap_rows)
            skips.append(x)
        x = self._run(self.middle, x, emb, wrap_rows)
        for stage in self.up:
            if isinstance(stage, Double):
                x = stage(x, skips[-1])
            else:
                x = self._run(stage, torch.cat([x, skips.pop()], dim=1), emb, wrap_rows)
        if self.stem_stride > 1:
            x = torch.cat([upsample_to(x, full), full], dim=1)
        norm, act, conv = self.head
        return conv(act(norm(x)), wrap_rows)
