"""Core speed: training steps/s and imputation values/s for the network presets.

    python benchmarks/bench_core.py                 # CPU, tiny, lite, narrow and small presets
    python benchmarks/bench_core.py --device cuda --presets tiny base
    python benchmarks/bench_core.py --grid 33x49 --presets lite --padded   # against padding to a multiple of 8

Prints a markdown table: each figure next to its peer measured in the same run,
and the ratio. Imputation is measured with K=10 against K=1 (the ensemble runs
as one batched pass, so K=10 should cost far less than 10x) and against
xarray's ``interpolate_na`` on the same cube. Networks are built as fits build
them (``exact_grid``: no padding); ``--padded`` also measures each preset padded
to its multiple, as networks were built before.
"""
from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import numpy as np
import torch
import xarray as xr
from torch.utils.flop_counter import FlopCounterMode

from xrimpute.diffusion import VPSchedule, context_query_loss
from xrimpute.masks import Pixel
from xrimpute.nets import Denoiser
from xrimpute.windows import impute_series


def train_rate(preset, device, grid, window, batch, steps, exact_grid=True):
    net = Denoiser(1, window, torch.zeros(3, *grid), preset=preset, first_guess=True, exact_grid=exact_grid).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, window, *grid, device=device)
    observed = torch.rand(x.shape, device=device) < 0.3
    autocast = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = context_query_loss(net, x, observed, Pixel(), VPSchedule())
        opt.zero_grad()
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:  # also the warm-up step
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0), counter.get_total_flops() / 1e9, net


def impute_rate(net, device, grid, window, frames, K):
    values = np.random.default_rng(0).standard_normal((1, 1, frames, *grid)).astype(np.float32)
    observed = np.random.default_rng(1).random(values.shape) < 0.3
    values = np.where(observed, values, 0.0).astype(np.float32)
    t0 = time.perf_counter()
    impute_series(net.eval(), values, observed, Pixel(), window, K=K, stride=window,
                  batch_size=16, device=device, autocast=device.type == "cuda", progress=False)
    return values.size / (time.perf_counter() - t0)


def interpolate_rate(grid, frames):
    da = xr.DataArray(np.random.default_rng(0).standard_normal((frames, *grid)), dims=("time", "y", "x"))
    da = da.where(np.random.default_rng(1).random(da.shape) < 0.3)
    t0 = time.perf_counter()
    da.interpolate_na("time").values
    return da.size / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", nargs="+", default=["tiny", "lite", "narrow", "small"])
    parser.add_argument("--size", type=int, default=64, help="a square grid of this many cells a side")
    parser.add_argument("--grid", default=None, metavar="ROWSxCOLS", help="another grid, e.g. 33x49")
    parser.add_argument("--padded", action="store_true", help="also measure each preset padded to its multiple")
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, default=48)
    args = parser.parse_args()
    device = torch.device(args.device)
    grid = tuple(int(n) for n in args.grid.split("x")) if args.grid else (args.size, args.size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# bench_core: {name}, torch {torch.__version__}, {date.today()}, {grid[0]}x{grid[1]} grid, "
          f"window {args.window}, batch {args.batch}\n")
    print("| figure | value | peer | peer value | ratio |")
    print("|---|---|---|---|---|")
    interp = interpolate_rate(grid, args.frames)
    first = None
    for preset in args.presets:
        rate, gflop, net = train_rate(preset, device, grid, args.window, args.batch, args.steps)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        if first is None:
            first = (preset, rate, gflop)
        print(f"| train steps/s, {preset} ({params:.1f} M) | {rate:.2f} | {first[0]} | {first[1]:.2f} | "
              f"{rate / first[1]:.2f} |")
        print(f"| train GFLOP/step, {preset} | {gflop:.1f} | {first[0]} | {first[2]:.1f} | {gflop / first[2]:.2f} |")
        if args.padded:
            padded, padded_gflop, _ = train_rate(preset, device, grid, args.window, args.batch, args.steps, False)
            print(f"| train steps/s, {preset} | {rate:.2f} | {preset} padded | {padded:.2f} | {rate / padded:.2f} |")
            print(f"| train GFLOP/step, {preset} | {gflop:.1f} | {preset} padded | {padded_gflop:.1f} | "
                  f"{gflop / padded_gflop:.2f} |")
        k1 = impute_rate(net, device, grid, args.window, args.frames, K=1)
        k10 = impute_rate(net, device, grid, args.window, args.frames, K=10)
        print(f"| impute values/s K=10, {preset} | {k10:.3g} | K=1 | {k1:.3g} | {k10 / k1:.2f} |")
        print(f"| impute values/s K=10, {preset} | {k10:.3g} | interpolate_na (time) | {interp:.3g} | "
              f"{k10 / interp:.3g} |")


if __name__ == "__main__":
    main()
