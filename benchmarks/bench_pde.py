"""Time the PDE sample generators and print a markdown table.

By default: every ``small`` preset, measured, and the ``paper`` Navier-Stokes preset
extrapolated from one batch of trajectories over a few frames (cost is linear in
trajectories and in solver steps). ``--preset paper`` generates the paper presets for
real (minutes on 2 CPU cores; pass ``--device cuda`` on a GPU).

    python benchmarks/bench_pde.py [--preset small|paper|tiny] [--only NAME ...] [--device DEV]
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from xrimpute import pde

PROBE_FRAMES = 6  # frames in the extrapolation probe; the first costs no solver steps


def cube_values(ds) -> int:
    return sum(var.size for var in cube_variables(ds))


def measure(name: str, preset: str, device) -> tuple[str, float, int]:
    start = time.perf_counter()
    ds = pde.generate(name, preset, progress=False, device=device)
    seconds = time.perf_counter() - start
    return shape_of(ds), seconds, cube_values(ds)


def cube_variables(ds) -> list:
    return [var for var in ds.data_vars.values() if var.dims == ("sample", "time", "y", "x")]


def shape_of(ds) -> str:
    """``variables x sample x time x y x x``."""
    variables = cube_variables(ds)
    return " x ".join(str(n) for n in (len(variables), *variables[0].shape))


def extrapolate_paper_navier_stokes(device) -> tuple[str, float, int]:
    """Time one batch over a few frames, then scale to the paper preset's trajectories and steps."""
    params = {**pde.PRESETS["navier_stokes"]["paper"], "progress": False, "device": device}
    batch = params.get("batch_size") or pde.navier_stokes.__kwdefaults__["batch_size"]
    start = time.perf_counter()
    pde.navier_stokes(**{**params, "n_samples": batch, "frames": PROBE_FRAMES, "spinup": 0.0})
    probe = time.perf_counter() - start
    intervals = params["frames"] - 1 + math.ceil(params["spinup"] / params["dt"])
    seconds = probe * (params["n_samples"] / batch) * intervals / (PROBE_FRAMES - 1)
    shape = (params["n_samples"], params["frames"], params["size"], params["size"])
    return " x ".join(map(str, (1, *shape))), seconds, math.prod(shape)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "paper"])
    parser.add_argument("--only", nargs="+", choices=sorted(pde.PRESETS), default=sorted(pde.PRESETS))
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    args = parser.parse_args(argv)

    rows = [(name, args.preset, *measure(name, args.preset, args.device), "measured") for name in args.only]
    if args.preset != "paper" and "navier_stokes" in args.only:
        rows.append(("navier_stokes", "paper", *extrapolate_paper_navier_stokes(args.device), "extrapolated"))
    print(f"\ndevice: {args.device or 'cpu'}, torch threads: {torch.get_num_threads()}\n")
    print("| dataset | preset | shape (var x sample x time x y x x) | seconds | values/s | how |")
    print("|---|---|---|---:|---:|---|")
    for name, preset, shape, seconds, values, how in rows:
        print(f"| {name} | {preset} | {shape} | {seconds:.1f} | {values / seconds:.3g} | {how} |")


if __name__ == "__main__":
    main()
