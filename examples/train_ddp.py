"""Train one model on several GPUs (or CPU processes) with DistributedDataParallel.

Run it under torchrun, one process per GPU::

    torchrun --nproc-per-node 4 examples/train_ddp.py era5-2020.zarr era5-2020.xri \\
        --variables 2m_temperature 10m_u_component_of_wind --tile 128 128 --steps 20000 --batch-size 32

Every rank opens the archive lazily and reads its own random windows from it
(the normalisation, drawn from the same chunks on every rank, is identical);
gradients are averaged, so the weights and their EMA stay the same on all
ranks. Rank 0 validates, shows progress, writes the checkpoint and saves the
model. ``--batch-size`` is per rank. Without GPUs the processes use the gloo
backend on the CPU (``torchrun --nproc-per-node 2 ...``).
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

import xrimpute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="archive: zarr store (path or URL), netCDF/GRIB file or glob")
    parser.add_argument("output", help="model file to write")
    parser.add_argument("--variables", nargs="+", default=None, help="variables to learn (default: all)")
    parser.add_argument("--time", default=None, help='period to train on, e.g. "2020"')
    parser.add_argument("--chunk", type=int, default=24, help="time steps per dask chunk when opening")
    parser.add_argument("--mask", default="auto", help="mask spec: auto, pixel, block, ...")
    parser.add_argument("--tile", type=int, nargs=2, default=None, metavar=("ROWS", "COLS"), help="spatial tiles")
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--preset", default="auto")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=16, help="windows per step on every rank")
    parser.add_argument("--max-time", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--checkpoint", default=None, help="training state file, resumed if it exists")
    args = parser.parse_args()

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    try:
        ds = xrimpute.datasets.open_era5(args.source, variables=args.variables, time=args.time,
                                         chunks={"time": args.chunk})
        model = xrimpute.fit(ds, mask=args.mask, tile=args.tile, window=args.window, preset=args.preset,
                             steps=args.steps, batch_size=args.batch_size, max_time=args.max_time,
                             checkpoint=args.checkpoint, progress=rank == 0, verbose=rank == 0)
        if rank == 0:
            model.save(args.output)
            print(model)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
