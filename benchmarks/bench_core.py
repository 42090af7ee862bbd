"""Core speed: training steps/s and imputation values/s for the network presets.

    python benchmarks/bench_core.py                 # CPU, tiny, lite and small presets
    python benchmarks/bench_core.py --device cuda --presets tiny base

Prints a markdown table: each figure next to its peer measured in the same run,
and the ratio. Imputation is measured with K=10 against K=1 (the ensemble runs
as one batched pass, so K=10 should cost far less than 10x) and against
xarray's ``interpolate_na`` on the same cube.
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


def train_rate(preset, device, size, window, batch, steps):
    net = Denoiser(1, window, torch.zeros(3, size, size), preset=preset, first_guess=True).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, window, size, size, device=device)
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


def impute_rate(net, device, size, window, frames, K):
    values = np.random.default_rng(0).standard_normal((1, 1, frames, size, size)).astype(np.float32)
    observed = np.random.default_rng(1).random(values.shape) < 0.3
    values = np.where(observed, values, 0.0).astype(np.float32)
    t0 = time.perf_counter()
    impute_series(net.eval(), values, observed, Pixel(), VPSchedule(), window, K=K, stride=window,
                  batch_size=16, device=device, autocast=device.type == "cuda", progress=False)
    return values.size / (time.perf_counter() - t0)


def interpolate_rate(size, frames):
    da = xr.DataArray(np.random.default_rng(0).standard_normal((frames, size, size)), dims=("time", "y", "x"))
    da = da.where(np.random.default_rng(1).random(da.shape) < 0.3)
    t0 = time.perf_counter()
    da.interpolate_na("time").values
    return da.size / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", nargs="+", default=["tiny", "lite", "small"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, default=48)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# bench_core: {name}, torch {torch.__version__}, {date.today()}, {args.size}x{args.size} grid, "
          f"window {args.window}, batch {args.batch}\n")
    print("| figure | value | peer | peer value | ratio |")
    print("|---|---|---|---|---|")
    interp = interpolate_rate(args.size, args.frames)
    first = None
    for preset in args.presets:
        rate, gflop, net = train_rate(preset, device, args.size, args.window, args.batch, args.steps)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        if first is None:
            first = (preset, rate, gflop)
        print(f"| train steps/s, {preset} ({params:.1f} M) | {rate:.2f} | {first[0]} | {first[1]:.2f} | "
              f"{rate / first[1]:.2f} |")
        print(f"| train GFLOP/step, {preset} | {gflop:.1f} | {first[0]} | {first[2]:.1f} | {gflop / first[2]:.2f} |")
        k1 = impute_rate(net, device, args.size, args.window, args.frames, K=1)
        k10 = impute_rate(net, device, args.size, args.window, args.frames, K=10)
        print(f"| impute values/s K=10, {preset} | {k10:.3g} | K=1 | {k1:.3g} | {k10 / k1:.2f} |")
        print(f"| impute values/s K=10, {preset} | {k10:.3g} | interpolate_na (time) | {interp:.3g} | "
              f"{k10 / interp:.3g} |")


if __name__ == "__main__":
    main()
