"""The quickstart: an incomplete cube in, a filled cube out, and the skill printed.

Takes 3 to 6 minutes on two CPU cores (benchmarks/RESULTS.md), with generated data (no download):

1. generate advected tracer fields (a PDE sample) and hide 80% of the cells;
2. fit a context-query diffusion model on the incomplete cube only;
3. fill the gaps and score them against the hidden truth and linear interpolation;
4. save the model and the observed cube (zarr), in --out or a temporary folder;
5. reconstruct the same cube from that zarr store on a local dask cluster, as one
   would for a year-long archive.

A temporary folder is removed at the end, dask's scratch space included; with
--out DIR the model and the zarr stores stay in DIR.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import warnings
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="xrimpute quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: xrimpute quickstart --steps 1500 --out ./quickstart")
    parser.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    parser.add_argument("--max-time", type=float, default=120, help="the fit's time budget in seconds (default 120)")
    parser.add_argument("--observed", type=float, default=0.2, help="fraction of cells observed (default 0.2)")
    parser.add_argument("--workers", type=int, default=2,
                        help="dask workers (threads of this process) for the reconstruction (default 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder to keep the model and zarr stores in "
                             "(default: a temporary folder, removed at the end)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import xrimpute
    from xrimpute.baselines import interpolate
    from xrimpute.datasets import advection
    from xrimpute.errors import SkillWarning
    from xrimpute.metrics import mse_gaps

    truth = advection("tiny", seed=args.seed)[["tracer"]]
    observed = xrimpute.observe(truth, "pixel", rate=args.observed, seed=args.seed)
    print(f"1. {truth.tracer.shape} advected tracer fields (sample, time, y, x), "
          f"{args.observed:.0%} of the cells observed")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the square wraps round both ways, as its coordinates declare: the fit wraps the grid round them
        model = observed.ctxdiff.fit(mask="auto", steps=args.steps, max_time=args.max_time, seed=args.seed)
    print(f"2. {model!r}")
    for caught_warning in caught:  # a classical filler beating the network is part of this report: said here
        if issubclass(caught_warning.category, SkillWarning):
            print(f"   note: {caught_warning.message}")
        else:
            warnings.warn_explicit(caught_warning.message, caught_warning.category, caught_warning.filename,
                                   caught_warning.lineno)

    filled = observed.ctxdiff.impute(K=10)
    ours = mse_gaps(filled, truth, observed)["tracer"]
    linear = mse_gaps(interpolate(observed), truth, observed)["tracer"]
    print(f"3. MSE on the hidden cells: ctxdiff {ours:.4g}, linear interpolation {linear:.4g} "
          f"({linear / ours:.1f}x larger); validation skill on held-back observations "
          f"{model.validation['skill']:.3f}")

    import dask
    from distributed import Client, LocalCluster

    from xrimpute.io import write_cube

    with contextlib.ExitStack() as stack:
        if args.out is None:
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="xrimpute-quickstart-")))
        else:
            out = args.out
            out.mkdir(parents=True, exist_ok=True)
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="xrimpute-dask-"))
        stack.enter_context(dask.config.set({"temporary-directory": scratch}))  # dask's scratch space goes too
        model_path = model.save(out / "tracer.xri")
        store = write_cube(observed, out / "observed.zarr", overwrite=True)
        print(f"4. saved the model to {model_path} and the observed cube to {store}")
        # worker threads in this process: a tour has no worker processes to start, nor to wait for at the end;
        # the dashboard on a free port, so that a cluster already running elsewhere is no bother
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=False,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            rebuilt = xrimpute.reconstruct(store, model_path, out / "filled.zarr", client=client, K=10,
                                           overwrite=True)["tracer"].load()
        rebuilt_mse = float(((rebuilt - truth.tracer) ** 2).where(observed.tracer.isnull()).mean())
        print(f"5. reconstructed {out / 'filled.zarr'} on a local dask cluster of {args.workers} worker threads: "
              f"MSE on the hidden cells {rebuilt_mse:.4g}")
    if args.out is None:
        print(f"removed the temporary folder {out}; pass --out DIR to keep these files")
    return dict(mse=ours, linear_mse=linear, skill=model.validation["skill"], reconstruct_mse=rebuilt_mse,
                out=str(out) if args.out is not None else None, finite=bool(np.isfinite(rebuilt.values).all()))


if __name__ == "__main__":
    main()
