"""Between-station skill with and without position inputs, beside the interpolators station users know.

A fixed station network over advected Gaussian blobs; the model trains with
whole stations held out as queries (``mask="station"``) and validates on whole
stations it never trains on. Skill is ``1 - MSE / MSE of the mean fill`` on
every cell off the network, against the truth.

    python benchmarks/bench_station_positions.py [--steps 400] [--seeds 0 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the generated test cubes
from synthetic import blobs  # noqa: E402

import xrimpute  # noqa: E402


def station_cube(seed: int, share: float, size: int, frames: int, samples: int):
    truth = blobs(n=samples, t=frames, size=size, seed=seed)
    cells = xr.DataArray(np.random.default_rng(seed).random((size, size)) < share, dims=("y", "x"))
    return truth, truth.where(cells), cells


def skill(filled: np.ndarray, truth: np.ndarray, observed: np.ndarray, off: np.ndarray) -> float:
    reference = np.nanmean(np.where(observed, truth, np.nan))
    error = ((filled - truth) ** 2)[..., off].mean()
    return float(1 - error / ((reference - truth) ** 2)[..., off].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--share", type=float, default=0.06)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        truth, observed, cells = station_cube(seed, args.share, args.size, frames=24, samples=4)
        off = ~cells.values
        for positions in (True, False):
            started = time.perf_counter()
            model = xrimpute.fit(observed, mask="station", positions=positions, steps=args.steps, batch_size=8,
                                 val_fraction=0.2, seed=seed, device="cpu", progress=False, verbose=False)
            filled = model.impute(observed, K=8, progress=False, fill_never_observed=True)
            rows.append((seed, f"ctxdiff positions={positions}", model.validation.get("skill", float("nan")),
                         skill(filled.values, truth.values, observed.notnull().values, off),
                         time.perf_counter() - started))
        for method in ("rbf", "normalised_convolution", "kriging"):
            started = time.perf_counter()
            try:
                filled = xrimpute.baselines.fill(observed, method=method)
            except ImportError:
                continue
            rows.append((seed, method, float("nan"), skill(filled.values, truth.values, observed.notnull().values,
                                                           off), time.perf_counter() - started))
        for row in rows[-5:]:
            print("seed %d  %-26s  held-out-station skill %6.3f  off-network skill %6.3f  (%.0f s)" % row, flush=True)
    print("\nmean over seeds (off-network skill):")
    for name in dict.fromkeys(r[1] for r in rows):
        values = [r[3] for r in rows if r[1] == name]
        print(f"  {name:<26} {np.mean(values):6.3f}")


if __name__ == "__main__":
    main()
