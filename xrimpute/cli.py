"""The ``xrimpute`` command: a thin layer over the Python API, one sub-command per task.

Every sub-command parses its arguments, calls one public function and prints
what a user needs next. Mistakes (a missing file, a bad option, data that does
not fit the model) end with exit status 2 and a one-line message.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
import zipfile
from collections.abc import Sequence
from pathlib import Path

from .errors import ArgumentError, XrimputeError

USAGE_ERROR = 2
FAILED = 1  # the input was fine, the work failed (a region on a worker, a non-finite loss): the message says what next
PRESETS = ("auto", "narrow", "lite", "tiny", "small", "base")  # the network's (cli must not import torch for --help)
AUTO_ON_OFF = {"auto": None, "on": True, "off": False}  # --history and --nearby: None lets the fit decide
DATASETS = {
    "era5": "ERA5 2 m temperature over the UK, hourly, March 2019 (2.5 MB download, then cached)",
    "advection": "tracers advected by random uniform winds on a periodic square (generated, cached)",
    "shallow_water": "rotating shallow water on a periodic square (generated, cached)",
    "navier_stokes": "2-D Kolmogorov-forced turbulence, vorticity (generated, cached)",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr, like every other error of the command."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Deferred(Sequence):
    """Choices read from a module on first use: the modules that know them import torch, which
    'xrimpute --help' does without."""

    def __init__(self, read):
        self._read, self._items = read, None

    def _all(self) -> tuple:
        if self._items is None:
            self._items = tuple(self._read())
        return self._items

    def __getitem__(self, index):
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._all())


def _parser(sub, name: str, summary: str, description: str, example: str) -> argparse.ArgumentParser:
    """A sub-command with a one-line summary (in ``xrimpute --help``), a paragraph and an example."""
    epilog = "example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  ")
    parser = sub.add_parser(name, help=summary, description=textwrap.fill(textwrap.dedent(description).strip(), 79),
                            epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")
    return parser


def _size(text: str) -> tuple[int, int]:
    """``"128"`` or ``"128x256"`` as ``(rows, cols)``."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a tile size such as 128 or 128x256") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a tile size such as 128 or 128x256")
    return (parts[0], parts[-1])


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give comma-separated names such as t2m,msl")
    return names


def _at_least(low: int):
    """An argparse type: a whole number of at least ``low``."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small; give a whole number of at least {low}")
        return value

    whole.__name__ = f"whole number >= {low}"
    return whole


POSITIVE = _at_least(1)


def _integers(text: str) -> list[int]:
    try:
        return [int(x) for x in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers such as 0,1,2") from None


def _add_device(parser) -> None:
    parser.add_argument("--device", default=None,
                        help="where the network runs: auto (GPU if any), cpu, cuda, cuda:1 (default: auto)")


def _add_ensemble(parser) -> None:
    parser.add_argument("--K", type=POSITIVE, default=10, help="contexts averaged per gap (default: 10)")
    parser.add_argument("--std", action="store_true", help="also write the ensemble spread as <variable>_std")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


# --- sub-commands --------------------------------------------------------------------------------


def _check_device(device: str | None) -> None:
    if device is not None:
        from .options import check_device_available

        check_device_available(device, what="--device")


def _check_torch_file(path: str, option: str, kind: str, advice: str) -> None:
    """A file that exists but is not a torch file (a zip archive) fails here, in one line, not deep in torch."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise ArgumentError(f"{option} {path!r} is not {kind}; {advice}")


MODEL_FILE = ("an xrimpute model file (written by 'xrimpute fit')", "pass the .xri file that 'xrimpute fit' wrote")


def _check_model_target(path: str, overwrite: bool) -> None:
    """Fail before training, not after, when the model file cannot be written."""
    target = Path(path)
    if target.suffix != ".xri":
        raise ArgumentError(f"--out {path!r}: name the model file *.xri")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{path!r} exists; choose another name or pass --overwrite")
    folder = next(p for p in target.absolute().parents if p.exists())  # the nearest folder that exists
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write {path!r}: {str(folder)!r} is not writable")


def _fit(args) -> None:
    from .io import open_cube
    from .model import CtxDiffModel

    _check_model_target(args.out, args.overwrite)
    _check_device(args.device)
    if args.checkpoint is not None:
        _check_torch_file(args.checkpoint, "--checkpoint",
                          "a training state file (written by 'xrimpute fit --checkpoint')",
                          "pass another path, or delete it to start afresh")
    ds = open_cube(args.source, args.variables)
    model = CtxDiffModel.fit(ds, mask=args.mask, window=args.window, preset=args.preset, steps=args.steps,
                             batch_size=args.batch_size, max_time=args.max_time, seed=args.seed, device=args.device,
                             checkpoint=args.checkpoint, tile=args.tile or "auto", verbose=not args.quiet,
                             history=AUTO_ON_OFF[args.history], nearby=AUTO_ON_OFF[args.nearby])
    model.save(args.out)
    print(model)
    print(f"saved to {args.out}; fill gaps with: xrimpute impute {args.source} --model {args.out} --out filled.nc")


def _impute(args) -> None:
    from .io import check_target, open_cube, write_cube
    from .model import load

    check_target(args.out, args.overwrite)
    _check_device(args.device)
    _check_torch_file(args.model, "--model", *MODEL_FILE)
    model = load(args.model)
    ds = open_cube(args.source, model.info["variables"])
    filled = model.impute(ds, K=args.K, return_std=args.std, seed=args.seed, device=args.device)
    write_cube(filled, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}")


def _reconstruct(args) -> None:
    if not args.target.rstrip("/").endswith(".zarr"):
        raise ArgumentError(f"TARGET {args.target!r}: name the zarr store *.zarr")
    if not Path(args.model).exists():
        raise FileNotFoundError(f"no model file at {args.model!r}")
    _check_torch_file(args.model, "MODEL", *MODEL_FILE)
    _check_device(args.device)
    from distributed import Client, LocalCluster

    from .reconstruct import reconstruct

    if args.scheduler_address is not None:
        client = Client(args.scheduler_address)
    else:
        # the dashboard on a free port: a cluster already running (a notebook's) holds the default one
        client = Client(LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0"))
    with client:
        reconstruct(args.source, args.model, args.target, client=client, K=args.K, seed=args.seed,
                    return_std=args.std, device=args.device or "auto", overwrite=args.overwrite,
                    progress=not args.quiet)
    print(f"wrote {args.target}")


def _bench(args) -> None:
    from .bench import run

    _check_device(args.device)
    report = run(args.table, settings=args.settings, seeds=args.seeds, methods=args.methods, datasets=args.datasets,
                 out=args.out, device=args.device, threads=args.threads, progress=not args.quiet)
    print(f"{args.table} ({args.settings} settings) on {report.device}\n")
    print(report.markdown())
    for path in report.files:
        print(f"wrote {path}")


def _check(args) -> int:
    from .check import check
    from .io import open_cube

    ds = open_cube(args.source, args.variables)
    coverage = check(ds, mask=args.mask, window=args.window, seed=args.seed)
    print(coverage.attrs["summary"])  # the observing system read from the NaN pattern, the coverage, a verdict
    if args.plot is not None:
        from .plot import coverage as coverage_figure

        coverage_figure(coverage).savefig(args.plot, dpi=120)
        print(f"coverage map: {args.plot}")
    return 1 if coverage.attrs["zero_coverage_share"] > 0.01 else 0


def _quickstart(args) -> None:
    from .quickstart import main as quickstart

    quickstart(args.quickstart_args)


def _datasets(args) -> None:
    if args.action == "fetch" and args.name is None:
        raise ArgumentError(f"name the dataset to fetch, one of {', '.join(DATASETS)}")
    if args.action == "list" or args.name is None:
        from .pde import PRESETS as PDE_PRESETS

        for name, about in DATASETS.items():
            presets = f" [presets: {', '.join(PDE_PRESETS[name])}]" if name in PDE_PRESETS else ""
            print(f"{name:<14} {about}{presets}")
        return
    if args.out is not None:
        from .io import check_target

        check_target(args.out, args.overwrite)
    if args.name == "era5":
        from .datasets import cache_dir, era5_sample
        from .datasets.era5 import SAMPLE_FILE

        ds = era5_sample(progressbar=not args.quiet)
        path = cache_dir() / Path(SAMPLE_FILE).with_suffix(".nc").name  # era5_sample's netCDF copy
    else:
        from .datasets import generated

        ds = generated.cached(args.name, args.preset, args.seed)
        path = generated.cache_path(args.name, args.preset, args.seed)
    sizes = ", ".join(f"{dim} {size}" for dim, size in ds.sizes.items())
    print(f"{args.name}: variables {', '.join(map(str, ds.data_vars))}; {sizes}")
    if args.out is not None:
        from .io import write_cube

        path = write_cube(ds, args.out, overwrite=args.overwrite)
    print(path)


def _versions(args) -> None:
    from .options import show_versions

    show_versions()


def _mask_names() -> tuple[str, ...]:
    from .masks import ALIASES, SPECS

    return ("auto", "infer", *sorted(set(SPECS) - {"combined"} | set(ALIASES) - {"auto"}))


MASK_NAMES = _Deferred(_mask_names)


# --- parsers, in the order of 'xrimpute --help' ---------------------------------------------------


def _quickstart_parser(sub) -> None:
    # no options of its own: main() hands everything after the command word to the quickstart, --help included
    p = sub.add_parser("quickstart", add_help=False, help="a few minutes' tour: fit, impute, score, reconstruct")
    p.set_defaults(run=_quickstart, quiet=False)


def _datasets_parser(sub) -> None:
    p = _parser(sub, "datasets", "list or fetch the sample data sets", """
        'list' (the default) shows the sample data sets; 'fetch NAME' downloads (era5) or generates (the PDE samples)
        one into the xrimpute cache ($XRIMPUTE_DATA_DIR, else the OS cache folder) and prints the path of a netCDF file
        that the other commands can read. --out writes a copy elsewhere. The PDE samples come in presets: tiny (tests),
        small (benchmarks) and paper (paper-sized, slow to generate on a CPU).""", """
        xrimpute datasets
        xrimpute datasets fetch era5
        xrimpute datasets fetch shallow_water --preset small --out sw.nc""")
    p.add_argument("action", nargs="?", default="list", choices=("list", "fetch"),
                   help="list the data sets (default), or fetch one")
    p.add_argument("name", nargs="?", choices=tuple(DATASETS), help="data set to fetch")
    p.add_argument("--preset", default="tiny", choices=("tiny", "small", "paper"),
                   help="size of a PDE sample (default: tiny)")
    p.add_argument("--seed", type=int, default=0, help="seed of a PDE sample (default: 0)")
    p.add_argument("--out", default=None, metavar="FILE.nc|FILE.zarr", help="also write a copy here")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_datasets)


def _check_parser(sub) -> None:
    p = _parser(sub, "check", "how the gaps are structured, and can every gap be learned?", """
        Read the observing system from the NaN pattern of SOURCE (pixels, blocks, swaths, stations, whole time
        steps, clouds) and say which mask specification copies it. Then map, for the mask given by --mask, the
        probability that each gap cell is queried in training: a cell at zero is never learned and its imputation
        is arbitrary. Exit status 1 when more than 1% of the observed cells are at zero, so that scripts can stop
        before a long fit.""", """
        xrimpute check observations.nc
        xrimpute check observations.nc --mask pixel --plot coverage.png""")
    p.add_argument("source", metavar="SOURCE", help="netCDF/GRIB file, glob or zarr store with gaps (NaN)")
    p.add_argument("--mask", default="infer", choices=MASK_NAMES, metavar="MASK",
                   help="the mask specification to check, one of %(choices)s (default: infer, the one read from the "
                        "NaN pattern)")
    p.add_argument("--window", type=POSITIVE, default=None,
                   help="time steps per training window (default: the one 'xrimpute fit' chooses, 5 to 17)")
    p.add_argument("--variables", type=_names, default=None, metavar="A,B",
                   help="comma-separated variables to look at (default: all with time/lat/lon dims)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="save the coverage map (needs matplotlib)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(run=_check)


def _fit_parser(sub) -> None:
    p = _parser(sub, "fit", "train a model on an incomplete cube and save it", """
        Train a context-query diffusion model on SOURCE, a netCDF/GRIB file, a glob of files or a zarr store with
        time, latitude and longitude dims (any order) where NaN marks unobserved cells. No complete sample is
        needed. --mask says how the observations are structured (auto reads it from the NaN pattern); training
        contexts copy that structure, so that every gap gets learned. The model (weights, normalisation, mask
        and validation skill on held-back observations) goes to one .xri file.""", """
        xrimpute fit era5-2019.nc --out t2m.xri --mask auto --variables t2m --max-time 600
        xrimpute fit "archive/*.nc" --out model.xri --preset small --steps 20000 --device cuda""")
    p.add_argument("source", metavar="SOURCE", help="netCDF/GRIB file, glob ('data/*.nc') or zarr store")
    p.add_argument("--out", required=True, metavar="MODEL.xri", help="model file to write")
    p.add_argument("--mask", default="auto", choices=MASK_NAMES, metavar="MASK",
                   help="structure of the observations, one of %(choices)s (default: auto, read from the NaN pattern)")
    p.add_argument("--window", type=POSITIVE, default=None,
                   help="time steps the network sees at once (default: 5, or up to 17 where many gaps see no "
                        "observation within 5 steps)")
    p.add_argument("--steps", type=POSITIVE, default=None,
                   help="training steps (default: as many as --max-time allows on the CPU, 2000 on a GPU)")
    p.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                   help="the fit's time budget: training stops so that the fit ends within about this long "
                        "(default on the CPU: 300)")
    p.add_argument("--preset", default="auto", choices=PRESETS,
                   help="network size (default: auto, base on a GPU; narrow on the CPU, or lite where the "
                        "gaps lie far in time from observations of their own cell)")
    p.add_argument("--batch-size", type=POSITIVE, default=None,
                   help="windows per training step (default: 16, or as many whole windows as hold 16 tiles' cells "
                        "where the CPU trains a doubly periodic grid whole)")
    p.add_argument("--variables", type=_names, default=None, metavar="A,B",
                   help="comma-separated variables to model (default: all with time/lat/lon dims)")
    p.add_argument("--tile", type=_size, default=None, metavar="ROWSxCOLS",
                   help="train on random spatial tiles, e.g. 128x128 (default: 128x128 tiles on a grid of "
                        "more than twice their cells, the whole grid otherwise)")
    p.add_argument("--history", default="auto", choices=tuple(AUTO_ON_OFF),
                   help="whether the first guess leans on each cell's observations outside the window (default: "
                        "auto, on where the window is longer than 5 steps, as under swaths that leave hours empty)")
    p.add_argument("--nearby", default="auto", choices=tuple(AUTO_ON_OFF),
                   help="whether the first guess starts from a curve through each cell's observations just before "
                        "and after the window (default: auto, where most gaps have such observations and that "
                        "fills the held-back cells better, as for gaps that move every step)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="training state file, written as training goes and resumed if it exists")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace MODEL.xri if it exists")
    _add_device(p)
    p.set_defaults(run=_fit)


def _impute_parser(sub) -> None:
    p = _parser(sub, "impute", "fill the gaps of a cube with a trained model", """
        Fill the NaN gaps of SOURCE with the model in MODEL.xri and write the result to OUT (.nc or .zarr). Each
        gap is the average of K predictions from different random contexts; observed values are kept exactly.
        --std also writes the spread of those predictions as <variable>_std. SOURCE needs the model's variables
        on the model's grid. The output is written to a temporary name and renamed when complete.""", """
        xrimpute impute era5-2019.nc --model t2m.xri --out filled.nc --K 16 --std""")
    p.add_argument("source", metavar="SOURCE", help="netCDF/GRIB file, glob or zarr store with gaps (NaN)")
    p.add_argument("--model", required=True, metavar="MODEL.xri", help="model file written by 'xrimpute fit'")
    p.add_argument("--out", required=True, metavar="OUT.nc|OUT.zarr", help="where to write the filled cube")
    _add_ensemble(p)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _add_device(p)
    p.set_defaults(run=_impute)


def _reconstruct_parser(sub) -> None:
    p = _parser(sub, "reconstruct", "fill a whole archive into a zarr store on a dask cluster", """
        Fill the gaps of SOURCE (a zarr store or netCDF file, possibly larger than memory) with MODEL and write
        TARGET, a zarr store, region by region on a dask cluster: a local one of --workers processes, or the
        running cluster whose scheduler is at --scheduler-address. Every finished region is recorded in TARGET, so
        running the same command again after an interruption resumes where it stopped; --overwrite starts
        afresh.""", """
        xrimpute reconstruct era5-2020.zarr t2m.xri era5-2020-filled.zarr --K 10 --workers 4
        xrimpute reconstruct gs://bucket/era5.zarr t2m.xri /shared/out.zarr --scheduler-address tcp://10.0.0.5:8786""")
    p.add_argument("source", metavar="SOURCE", help="zarr store (path or URL) or netCDF file with gaps (NaN)")
    p.add_argument("model", metavar="MODEL", help="model file written by 'xrimpute fit' (readable by every worker)")
    p.add_argument("target", metavar="TARGET.zarr", help="zarr store to write (on storage every worker shares)")
    _add_ensemble(p)
    p.add_argument("--workers", type=POSITIVE, default=2, help="worker processes of the local cluster (default: 2)")
    p.add_argument("--scheduler-address", default=None, metavar="ADDR",
                   help="use a running dask cluster instead, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if TARGET exists")
    _add_device(p)
    p.set_defaults(run=_reconstruct)


def _bench_names(name: str) -> _Deferred:
    def read():
        from . import bench

        return getattr(bench, name)

    return _Deferred(read)


def _bench_parser(sub) -> None:
    p = _parser(sub, "bench", "run the benchmark tables: every method, same data, same budget", """
        Run one of the paper's tables: table1 (pixel observations: Navier-Stokes and the ERA5 sample) or table2
        (block observations: shallow water, advection and Navier-Stokes, with pixel-shaped contexts as an
        ablation). Learned methods (ctxdiff and the baselines MissDiff, AmbientDiff, DiffPuter) train on the
        observed training cube only, with the same network, steps and seed; classical gap fillers fill the test
        cube directly. Prints one markdown table per metric (mean and spread over seeds) and writes the rows as
        JSON and a figure to --out. Settings 'small' take minutes per condition on a laptop CPU; 'paper' needs a
        GPU.""", """
        xrimpute bench table2 --settings small --seeds 0,1,2
        xrimpute bench table1 --datasets navier_stokes --methods ctxdiff,missdiff,interpolate""")
    p.add_argument("table", nargs="?", default="table1", choices=_bench_names("TABLES"),
                   metavar="TABLE", help="which table: table1 or table2 (default: table1)")
    p.add_argument("--settings", default="small", choices=_bench_names("SETTINGS"), metavar="SETTINGS",
                   help="sizes and budgets: small or paper (default: small)")
    p.add_argument("--seeds", type=_integers, default=[0], metavar="0,1,2",
                   help="comma-separated seeds, one run each (default: 0)")
    p.add_argument("--methods", type=_names, default=None, metavar="A,B",
                   help="subset of the methods, e.g. ctxdiff,missdiff,interpolate (default: all)")
    p.add_argument("--datasets", type=_names, default=None, metavar="A,B",
                   help="subset of the table's data sets, e.g. navier_stokes (default: all)")
    p.add_argument("--out", default="benchmarks/results", metavar="DIR",
                   help="folder for the JSON rows and the figure (default: benchmarks/results)")
    p.add_argument("--threads", type=POSITIVE, default=None, help="torch CPU threads during the run")
    _add_device(p)
    p.set_defaults(run=_bench)


def _versions_parser(sub) -> None:
    p = _parser(sub, "versions", "print versions of xrimpute and its dependencies", """
        Print the versions of xrimpute, Python, torch (and whether CUDA is available), xarray, dask, zarr, numpy
        and the optional libraries: paste this into bug reports.""", """
        xrimpute versions""")
    p.set_defaults(run=_versions)


COMMANDS = (_quickstart_parser, _datasets_parser, _check_parser, _fit_parser, _impute_parser, _reconstruct_parser,
            _bench_parser, _versions_parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``xrimpute`` command (also rendered in the documentation)."""
    from . import __version__

    parser = _Parser(
        prog="xrimpute",
        description=textwrap.fill("Learn complete dynamics from incomplete geophysical cubes (time x latitude x "
                                  "longitude, NaN = unobserved) and fill their gaps. Run 'xrimpute COMMAND --help' "
                                  "for each command.", 79),
        epilog="example:\n  xrimpute quickstart\n  xrimpute check observations.nc\n"
               "  xrimpute fit observations.nc --out t2m.xri --max-time 600\n"
               "  xrimpute impute observations.nc --model t2m.xri --out filled.nc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"xrimpute {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``xrimpute`` command with ``argv`` (default: the process arguments); returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "quickstart":
        args.quickstart_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from .options import set_options

    try:
        with set_options(progress=not args.quiet):
            status = args.run(args)
    except (OSError, ValueError, ImportError, XrimputeError) as err:  # say what is wrong, no traceback
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"xrimpute {args.command}: error: {message}", file=sys.stderr)
        return USAGE_ERROR if isinstance(err, (OSError, ValueError, TypeError, ImportError)) else FAILED
    except KeyboardInterrupt:
        print(f"xrimpute {args.command}: interrupted", file=sys.stderr)
        return 130
    return status or 0


__all__ = ["build_parser", "main"]
