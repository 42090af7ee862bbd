"""Throughput of archive reconstruction, and what it means for a year of ERA5.

CPU (default): values imputed per second by ``xrimpute.reconstruct`` on a
local cluster of 1 and of 2 worker processes (1 thread each; target: 2
workers >= 1.8x one), and the peak memory of a worker as the archive grows
4x (target: flat, since a worker holds one region at a time). The speed-up is
also compared with the machine's own ceiling: 2 processes of pure torch compute
against 1 (virtual cores rarely give a full 2x)::

    python benchmarks/bench_reconstruct.py

GPU (``--device cuda``): bf16 single-step imputation with K=10 on an ERA5-sized
grid (721 x 1440, 9 variables, tiles of 128 x 128), zarr read and write rates,
and the time one GPU would take for one year of hourly 0.25 deg ERA5::

    python benchmarks/bench_reconstruct.py --device cuda

(``--mode throughput --device cpu`` with a small ``--grid`` runs that path on a CPU.)

The network is untrained (speed does not depend on the weights); archives are
generated in a temporary folder. Figures are printed as a markdown table.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from distributed import Client, LocalCluster

import xrimpute
from xrimpute.reconstruct import reconstruct

ERA5_YEAR = 8760 * 721 * 1440 * 9  # hourly values of 9 variables on the 0.25 deg grid


def archive(steps: int, height: int, width: int, variables: int, seed: int = 0, missing: float = 0.6) -> xr.Dataset:
    """A global hourly cube with ``missing`` of its cells NaN."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(-90, 90, height)
    lon = np.arange(width) * 360.0 / width
    data = {}
    for k in range(variables):
        values = rng.standard_normal((steps, height, width), dtype=np.float32)
        data[f"v{k}"] = (("time", "latitude", "longitude"), np.where(rng.random(values.shape) < missing, np.nan, values))
    coords = {"time": np.datetime64("2020-01-01") + np.arange(steps) * np.timedelta64(1, "h"),
              "latitude": ("latitude", lat, {"units": "degrees_north"}),
              "longitude": ("longitude", lon, {"units": "degrees_east"})}
    return xr.Dataset(data, coords=coords)


def write(ds: xr.Dataset, path: Path, chunk: int) -> Path:
    ds.chunk(time=chunk).to_zarr(path, mode="w", consolidated=False)
    return path


def untrained_model(ds: xr.Dataset, folder: Path, **options) -> Path:
    """A model of the right shape after one training step (speed does not depend on the weights)."""
    model = xrimpute.fit(ds, mask="pixel", steps=1, batch_size=2, val_fraction=0, progress=False, verbose=False,
                         **options)
    return model.save(folder / "model.xri")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reconstruct_rate(source: Path, model: Path, folder: Path, workers: int, K: int,
                     chunk: int) -> tuple[float, float, float]:
    """Values per second and per worker CPU second, and the largest peak RSS of a worker (MB), on a fresh
    local cluster of ``workers`` processes."""
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        regions = max(workers, -(-xrimpute.load(model).engine.window // chunk))  # a region per worker, a window
        warm = write(xr.open_zarr(source, consolidated=False).isel(time=slice(0, chunk * regions)).load(),
                     folder / f"warm-{workers}.zarr", chunk)
        reconstruct(warm, model, folder / f"warm-{workers}-out.zarr", client=client, K=K, overwrite=True,
                    progress=False)  # workers import xrimpute and load the model before the clock starts
        ds = xr.open_zarr(source, consolidated=False)
        busy = sum(client.run(cpu_seconds).values())
        start = time.perf_counter()
        reconstruct(source, model, folder / f"out-{workers}-{ds.sizes['time']}.zarr", client=client, K=K,
                    overwrite=True, progress=False)
        seconds = time.perf_counter() - start
        busy = sum(client.run(cpu_seconds).values()) - busy
        peak = max(client.run(peak_rss_mb).values())
    values = ds.sizes["time"] * ds.sizes["latitude"] * ds.sizes["longitude"] * len(ds.data_vars)
    return values / seconds, values / busy, peak


def _convolutions_per_second(seconds: float) -> float:
    """One torch thread running a small convolution stack for ``seconds``: pure compute, no I/O."""
    torch.set_num_threads(1)
    net = torch.nn.Sequential(*[torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(4)])
    x = torch.randn(8, 32, 48, 48)
    with torch.no_grad():
        net(x)
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            net(x)
            calls += 1
    return calls / (time.perf_counter() - start)


def machine_ceiling(seconds: float = 15.0) -> float:
    """Speed-up of 2 processes of pure compute over 1 on this machine: the most 2 workers can reach here
    (virtual cores that share a physical core or memory bandwidth give less than 2)."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        one = pool.apply(_convolutions_per_second, (seconds,))
        two = sum(pool.map(_convolutions_per_second, [seconds, seconds]))
    return two / one


def cpu(args) -> list[tuple]:
    ceiling = machine_ceiling()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        short = archive(args.steps, args.size, args.size, args.variables)
        long = archive(4 * args.steps, args.size, args.size, args.variables, seed=1)
        model = untrained_model(short, folder, preset="tiny")
        sources = {n: write(ds, folder / f"source-{n}.zarr", args.chunk) for n, ds in ((1, short), (4, long))}
        one, one_cpu, _ = reconstruct_rate(sources[1], model, folder, 1, args.K, args.chunk)
        two, two_cpu, peak_two = reconstruct_rate(sources[1], model, folder, 2, args.K, args.chunk)
        _, _, peak_long = reconstruct_rate(sources[4], model, folder, 2, args.K, args.chunk)
    size = f"{args.size}x{args.size}, {args.variables} variables, chunks of {args.chunk} steps, K={args.K}"
    return [
        (f"values/s, 1 worker ({size})", f"{one:,.0f}", "", ""),
        ("values/s, 2 workers", f"{two:,.0f}", "1 worker", f"{two / one:.2f}x (target >= 1.8)"),
        ("speed-up of 2 processes of pure compute (this machine's ceiling)", f"{ceiling:.2f}x", "2-worker speed-up",
         f"{two / one / ceiling:.2f} of the ceiling"),
        ("values per worker CPU second, 2 workers", f"{two_cpu:,.0f}", "1 worker",
         f"{two_cpu / one_cpu:.2f}x (1 = no parallel overhead)"),
        (f"peak RSS per worker, {args.steps} steps", f"{peak_two:,.0f} MB", "", ""),
        (f"peak RSS per worker, {4 * args.steps} steps (4x)", f"{peak_long:,.0f} MB", f"{args.steps} steps",
         f"{peak_long / peak_two:.2f}x (target ~1)"),
    ]


def accelerator(args) -> list[tuple]:
    device = torch.device(args.device)
    height, width = args.grid
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ds = archive(args.steps, height, width, args.variables)
        model = xrimpute.load(untrained_model(ds.isel(time=slice(0, 4)), folder, preset=args.preset,
                                              tile=(args.tile, args.tile), device=args.device))
        values = ds.sizes["time"] * height * width * args.variables

        start = time.perf_counter()
        write(ds, folder / "source.zarr", args.steps)
        written = values / (time.perf_counter() - start)
        start = time.perf_counter()
        slab = xr.open_zarr(folder / "source.zarr", consolidated=False).load()[model.info["variables"]]
        read = values / (time.perf_counter() - start)

        options = dict(K=args.K, batch_size=args.batch_size, device=args.device, progress=False)
        model.impute(slab.isel(time=slice(0, model.window)), **options)  # warm up kernels and allocator
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model.impute(slab, **options)  # bf16 autocast on CUDA
        imputed = values / (time.perf_counter() - start)
    # one worker runs read, imputation and write one after the other; halos add window - 1 steps either side of
    # each chunk read, and a model with nearby steps its span more
    halo = 1 + 2 * (model.window - 1 + model.engine.denoiser.nearby_span) / args.steps
    per_value = halo / read + 1 / imputed + 1 / written
    hours = ERA5_YEAR * per_value / 3600
    where = f"{height}x{width}, {args.variables} variables, tiles {args.tile}, {args.preset}, K={args.K}"
    return [
        (f"imputation values/s on {device} ({where})", f"{imputed:,.0f}", "", ""),
        ("zarr read values/s", f"{read:,.0f}", "imputation", f"{read / imputed:.1f}x"),
        ("zarr write values/s", f"{written:,.0f}", "imputation", f"{written / imputed:.1f}x"),
        (f"one year of hourly 0.25 deg ERA5, 9 variables, one {device.type} worker", f"{hours:,.1f} h", "", ""),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", choices=("scaling", "throughput"), default=None,
                        help="scaling: 1 vs 2 CPU workers and memory; throughput: imputation and zarr rates, ERA5 "
                             "estimate (default: scaling on the CPU, throughput on an accelerator)")
    parser.add_argument("--steps", type=int, default=None, help="time steps of the (shorter) archive")
    parser.add_argument("--chunk", type=int, default=4, help="time steps per chunk (CPU mode)")
    parser.add_argument("--size", type=int, default=48, help="grid side (CPU mode)")
    parser.add_argument("--grid", type=int, nargs=2, default=(721, 1440), help="grid rows and columns (GPU mode)")
    parser.add_argument("--variables", type=int, default=None)
    parser.add_argument("--tile", type=int, default=128, help="tile side (GPU mode)")
    parser.add_argument("--preset", default="base", help="network size (GPU mode)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass, times K (GPU mode)")
    parser.add_argument("--K", type=int, default=10)
    args = parser.parse_args()
    if (args.mode or ("scaling" if args.device == "cpu" else "throughput")) == "scaling":
        args.steps, args.variables = args.steps or 48, args.variables or 2
        rows = cpu(args)
    else:
        args.steps, args.variables = args.steps or 24, args.variables or 9
        rows = accelerator(args)
    print("| figure | value | peer | ratio |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
