"""Discrete fields: EM + consistency vs plain masked diffusion vs nearest-neighbour fill.

    python benchmarks/bench_discrete.py                  # CPU, a few minutes on an idle 2-core machine
    python benchmarks/bench_discrete.py --threads 1      # a busy machine: one torch thread is faster
    python benchmarks/bench_discrete.py --steps 1500 --device cuda

A generated binary cloud mask: spatially smooth noise (FFT-filtered), advected
and slowly renewed over time, thresholded to a cloud fraction; 90% of the
cells hidden at random. Every model gets the same number of optimiser steps
(``--steps`` in all, split evenly over the EM rounds); training seconds are
printed beside the scores. Prints a markdown table: accuracy on the hidden
cells, each figure next to its peer from the same run, and the ratio.
"""
from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import numpy as np
import torch
import xarray as xr
from scipy.ndimage import distance_transform_edt

from xrimpute.baselines.em_consistency import em_consistency


def cloud_mask(n: int = 4, t: int = 24, size: int = 32, scale: float = 3.0, speed: float = 1.0,
               memory: float = 0.95, cover: float = 0.5, seed: int = 0) -> np.ndarray:
    """``(n, t, size, size)`` booleans: smooth noise advected at ``speed`` cells per step in a random
    direction per sample, renewed with AR(1) ``memory`` in spectral space, thresholded to ``cover``."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    spectrum = np.exp(-0.5 * (2 * np.pi * scale) ** 2 * (kx**2 + ky**2))
    out = np.empty((n, t, size, size), bool)
    for i in range(n):
        angle = rng.uniform(0, 2 * np.pi)
        shift = np.exp(-2j * np.pi * speed * (ky * np.sin(angle) + kx * np.cos(angle)))
        state = spectrum * np.fft.fft2(rng.standard_normal((size, size)))
        for step in range(t):
            field = np.fft.ifft2(state).real
            out[i, step] = field > np.quantile(field, 1 - cover)
            fresh = spectrum * np.fft.fft2(rng.standard_normal((size, size)))
            state = memory * state * shift + np.sqrt(1 - memory**2) * fresh
    return out


def nearest_fill(values: np.ndarray, sampling) -> np.ndarray:
    """Each gap takes the value of the nearest observed cell (Euclidean, per sample) over the last
    ``len(sampling)`` axes, whose spacings ``sampling`` gives (``np.inf`` keeps an axis apart)."""
    out = values.copy()
    for i in range(values.shape[0]):
        gaps = ~np.isfinite(values[i])
        if len(sampling) == 2:  # frame by frame
            for s in range(values.shape[1]):
                index = distance_transform_edt(gaps[s], sampling=sampling, return_distances=False,
                                               return_indices=True)
                out[i, s] = values[i, s][tuple(index)]
        else:
            index = distance_transform_edt(gaps, sampling=sampling, return_distances=False, return_indices=True)
            out[i] = values[i][tuple(index)]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per model, all rounds together")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--hidden", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--e-step", choices=["argmax", "both"], default="argmax",
                        help="both: also EM + consistency with a sampled E-step (random order, classes drawn)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()

    truth = cloud_mask(seed=args.seed)
    observed = np.random.default_rng(args.seed + 1).random(truth.shape) >= args.hidden
    values = np.where(observed, truth, np.nan).astype(np.float32)
    da = xr.DataArray(values, dims=("sample", "time", "y", "x"), name="cloud",
                      attrs={"flag_values": np.array([0, 1]), "flag_meanings": "clear cloudy"})
    hidden = ~observed

    def accuracy(filled):
        return float((np.asarray(filled)[hidden] == truth[hidden]).mean())

    common = dict(window=args.window, device=args.device, progress=False, seed=args.seed)
    runs = {
        "EM + consistency": dict(rounds=args.rounds, consistency_weight=0.5),
        "EM only": dict(rounds=args.rounds, consistency_weight=0.0),
        "consistency only": dict(rounds=0, consistency_weight=0.5),
        "plain masked diffusion": dict(rounds=0, consistency_weight=0.0),
    }
    if args.e_step == "both":
        runs["EM + consistency, sampled E-step"] = dict(rounds=args.rounds, consistency_weight=0.5, order="random",
                                                        sample=True)
    scores, seconds = {}, {}
    for label, options in runs.items():
        t0 = time.perf_counter()
        labels, _ = em_consistency(da, steps=args.steps, **options, **common)
        seconds[label] = time.perf_counter() - t0
        scores[label] = accuracy(labels)
    scores["nearest cell, space-time"] = accuracy(nearest_fill(values, (1.0, 1.0, 1.0)))
    scores["nearest cell, space"] = accuracy(nearest_fill(values, (1.0, 1.0)))

    print(f"# bench_discrete: {name}, torch {torch.__version__}, {date.today()}, {truth.shape[0]} samples x "
          f"{truth.shape[1]} steps of {truth.shape[2]}x{truth.shape[3]}, {args.hidden:.0%} hidden, cloud cover "
          f"{truth.mean():.2f}, {args.steps} steps per model, window {args.window}, {torch.get_num_threads()} "
          f"torch thread(s); EM: {args.rounds} rounds, E-step by confidence-ordered argmax unmasking; "
          f"consistency weight 0.5\n")
    print("| figure | value | peer | peer value | ratio |")
    print("|---|---|---|---|---|")
    pairs = [("EM + consistency", "plain masked diffusion"), ("EM + consistency", "EM only"),
             ("EM + consistency", "consistency only"), ("EM + consistency", "nearest cell, space-time"),
             ("plain masked diffusion", "nearest cell, space-time"),
             ("nearest cell, space-time", "nearest cell, space")]
    if args.e_step == "both":
        pairs.insert(0, ("EM + consistency", "EM + consistency, sampled E-step"))
    for ours, peer in pairs:
        print(f"| accuracy on hidden cells, {ours} | {scores[ours]:.4f} | {peer} | {scores[peer]:.4f} | "
              f"{scores[ours] / scores[peer]:.3f} |")
    for ours, peer in pairs:
        print(f"| error rate on hidden cells, {ours} | {1 - scores[ours]:.4f} | {peer} | {1 - scores[peer]:.4f} | "
              f"{(1 - scores[ours]) / (1 - scores[peer]):.3f} |")
    for ours, peer in pairs[:3]:
        print(f"| seconds, {ours} | {seconds[ours]:.0f} | {peer} | {seconds[peer]:.0f} | "
              f"{seconds[ours] / seconds[peer]:.2f} |")


if __name__ == "__main__":
    main()
