"""Context that copies the observing system vs pixel context, with the same training budget.

    python benchmarks/bench_masks.py                  # CPU, a few minutes on 2 cores
    python benchmarks/bench_masks.py --steps 3000 --device cuda

A generated field (Gaussian blobs drifting on a periodic square) is observed
in 3x3 blocks (5 of 9 kept, the same for all steps of a sample, as in the
paper's block experiments), and by a polar orbiter's swath. For each,
one model trains with contexts that copy the structure (block / swath
contexts) and one with pixel contexts, for the same number of steps; both fill
the gaps of held-out samples observed the same way. Prints a markdown table:
gap MSE of each, the ratio (the paper reports about 2x for block vs pixel
context on Navier-Stokes with 8 of 9 blocks), the share of observed cells the
pixel context leaves with zero query probability (never learned), and, for
scale, the gap MSE of filling each sample's gaps with its observed mean.
``--threads 1`` avoids spinning thread pools on a shared CPU.
"""
from __future__ import annotations

import argparse
import platform
import time
import warnings
from datetime import date

import numpy as np
import torch
import xarray as xr

import xrimpute
from xrimpute import masks


def blobs(n: int, t: int, size: int, seed: int) -> xr.DataArray:
    """``(sample, time, lat, lon)`` field of Gaussian blobs drifting on a periodic square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    out = np.zeros((n, t, size, size), np.float32)
    for i in range(n):
        for _ in range(4):  # blobs about as wide as a block: a missing block can be inferred from around it
            start, velocity = rng.uniform(0, size, 2), rng.uniform(-1, 1, 2)
            amplitude, width = rng.uniform(0.5, 1.5) * rng.choice([-1, 1]), rng.uniform(0.15, 0.3) * size
            for k in range(t):
                dy, dx = ((np.stack([yy, xx]) - ((start + velocity * k) % size)[:, None, None] + size / 2)
                          % size - size / 2)
                out[i, k] += amplitude * np.exp(-(dy**2 + dx**2) / (2 * width**2))
    coords = {"lat": ("lat", np.linspace(30.0, 60.0, size), {"units": "degrees_north"}),
              "lon": ("lon", np.linspace(-10.0, 30.0, size), {"units": "degrees_east"}),
              "time": np.datetime64("2020-01-01T00") + np.arange(t) * np.timedelta64(6, "h")}
    return xr.DataArray(out, dims=("sample", "time", "lat", "lon"), coords=coords, name="u")


def gap_mse(filled: xr.DataArray, truth: xr.DataArray, seen: xr.DataArray) -> float:
    return float(((filled - truth) ** 2).where(seen.isnull()).mean())


def mean_fill(seen: xr.DataArray) -> xr.DataArray:
    """Each gap filled with the observed mean of its sample: the scale a model has to beat."""
    return seen.fillna(seen.mean(("time", "lat", "lon")))


def compare(train, test, kind, options, fit, seed):
    """Gap MSE with the context that copies ``kind`` and with pixel context, and pixel's zero-coverage share."""
    seen_train = xrimpute.observe(train, kind, seed=seed, **options)
    seen_test = xrimpute.observe(test, kind, seed=seed + 1, **options)
    structured = masks.resolve(kind, np.isfinite(seen_train.values)[:, None])
    zero = masks.learnability(masks.Pixel(), np.isfinite(seen_train.values)[:, None], fit["window"],
                              observing=structured).zero_share
    scores = {}
    for spec in (structured, masks.Pixel()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the pixel context's learnability warning is the point
            model = seen_train.ctxdiff.fit(mask=spec, **fit)
        filled = model.impute(seen_test, K=8, progress=False)
        scores[spec.kind] = gap_mse(filled, test, seen_test)
    scores["mean fill"] = gap_mse(mean_fill(seen_test), test, seen_test)
    return structured, scores, zero, float(seen_train.notnull().mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps per model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", nargs="+", default=["block", "swath"], choices=["block", "swath"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = blobs(args.samples, args.frames, args.size, args.seed)
    test = blobs(max(2, args.samples // 2), args.frames, args.size, args.seed + 100)
    fit = dict(window=3, steps=args.steps, batch_size=args.batch, preset="tiny", device=args.device, seed=args.seed,
               val_fraction=0.0, progress=False, verbose=False)
    systems = {"block": ("block", dict(grid=(3, 3), observed=5, static=True), "block 5/9, fixed per sample"),
               "swath": ("swath", dict(swath_width_km=1200, orbits_per_day=14.2), "swath, 6-hourly")}
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    print(f"# bench_masks: {name}, torch {torch.__version__}, {date.today()}, {args.samples} x {args.frames} steps of "
          f"{args.size}x{args.size}, {args.steps} training steps of batch {args.batch} per model, K=8, "
          f"{torch.get_num_threads()} threads\n")
    print("| observations (observed share) | context | gap MSE | peer context | peer gap MSE | ratio peer/ours "
          "| peer zero-coverage share | mean-fill gap MSE |")
    print("|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for kind, options, label in (systems[name] for name in args.systems):
        spec, scores, zero, share = compare(train, test, kind, options, fit, args.seed)
        print(f"| {label} ({share:.0%}) | {spec!r} | {scores[spec.kind]:.4f} | pixel | {scores['pixel']:.4f} | "
              f"{scores['pixel'] / scores[spec.kind]:.2f} | {zero:.0%} | {scores['mean fill']:.4f} |")
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
