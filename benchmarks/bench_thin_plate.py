"""The thin-plate first guess: the package's batched spline against SciPy's, frame by frame, on the same cells.

    OMP_NUM_THREADS=1 python benchmarks/bench_thin_plate.py
    OMP_NUM_THREADS=1 python benchmarks/bench_thin_plate.py --frames 80 --repeats 5

Each case is a batch of frames shaped like one training step's windows (16 windows of 5 steps by default) with
context cells drawn at a rate; :func:`xrimpute.nets.prior.spline` fills every frame, and
``scipy.interpolate.RBFInterpolator(kernel="thin_plate_spline")`` fills the same frames one at a time on the same
coordinates. The table gives both times, their ratio and the largest difference between the two fills (the field
has unit variance); frames of more than :data:`~xrimpute.nets.prior.MOST_SPLINE_POINTS` context cells are splined
in overlapping pieces, so there the difference is the pieces' from the whole frame's spline. One torch thread
(``torch.set_num_threads(1)``; set ``OMP_NUM_THREADS=1`` too, so that SciPy's BLAS runs on one thread as well).
"""
from __future__ import annotations

import argparse
import platform
import time
from datetime import datetime, timezone

import numpy as np
import torch
from scipy.interpolate import RBFInterpolator

from xrimpute.nets.prior import spline

CASES = {  # name: (rows, columns, share of cells in the context)
    "ERA5 stations 33 x 49, 2.5 %": (33, 49, 0.025),
    "ERA5 pixels 33 x 49, 10 %": (33, 49, 0.10),
    "sparse pixels 24 x 24, 20 %": (24, 24, 0.20),
    "tile 64 x 128, 2 %": (64, 128, 0.02),
    # a model trained on tiles imputing a whole grid: frames denser than one solve allows, splined in pieces
    "whole grid 96 x 192, 10 %": (96, 192, 0.10),
}


def smooth_frames(frames: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``(frames, h, w)`` smooth random fields of unit variance (a few random waves each)."""
    rows, cols = np.meshgrid(np.arange(h) / max(h, w), np.arange(w) / max(h, w), indexing="ij")
    k = rng.normal(scale=6.0, size=(frames, 4, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(frames, 4))
    waves = np.sin(k[..., 0, None, None] * rows + k[..., 1, None, None] * cols + phase[..., None, None])
    field = waves.sum(1)
    return ((field - field.mean()) / field.std()).astype(np.float32)


def timed(run, repeats: int) -> tuple[float, object]:
    """The best of ``repeats`` wall times of ``run()`` (seconds) and its result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def scipy_fill(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Every frame with at least three cells: SciPy's thin-plate spline through them on the package's coordinates."""
    frames, h, w = values.shape
    everywhere = np.argwhere(np.ones((h, w))) / max(h, w)
    out = np.zeros_like(values)
    for f in range(frames):
        cells = np.argwhere(mask[f])
        if len(cells) >= 3:
            rbf = RBFInterpolator(cells / max(h, w), values[f][mask[f]], kernel="thin_plate_spline")
            out[f] = rbf(everywhere).reshape(h, w)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=80, help="frames per batch (16 windows of 5 steps)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per method; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    lines = ["| case | context cells per frame | xrimpute spline ms | SciPy RBFInterpolator ms | ratio | "
             "largest difference |", "|---|---:|---:|---:|---:|---:|"]
    for name, (h, w, rate) in CASES.items():
        values = smooth_frames(args.frames, h, w, rng)
        mask = rng.random(values.shape) < rate
        tensor, seen = torch.from_numpy(values * mask), torch.from_numpy(mask)
        ours_s, ours = timed(lambda: spline(tensor, seen, torch.zeros_like(tensor)), args.repeats)
        peer_s, peer = timed(lambda: scipy_fill(values, mask), args.repeats)
        difference = float(np.abs(ours.numpy() - peer).max())
        lines.append(f"| {name} | {mask.sum((1, 2)).mean():.0f} | {1e3 * ours_s:.0f} | {1e3 * peer_s:.0f} | "
                     f"{ours_s / peer_s:.2f} | {difference:.1e} |")
    print(f"- command: `python benchmarks/bench_thin_plate.py --frames {args.frames} --repeats {args.repeats}`")
    print(f"- machine: {platform.machine()} {platform.processor() or ''} ({torch.get_num_threads()} torch thread); "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}")
    print(f"- {args.frames} frames per batch, best of {args.repeats}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
