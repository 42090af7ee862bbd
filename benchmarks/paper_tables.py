"""The paper's Tables 1 and 2 and its ablations: every method or arm on the same data, with the same budget, in one run.

    python benchmarks/paper_tables.py --table table1 --settings small
    python benchmarks/paper_tables.py --table table2 --settings small --seeds 0 1 2
    python benchmarks/paper_tables.py --table table1 --settings paper --device cuda
    python benchmarks/paper_tables.py --table table4 --settings small --threads 1

The ablations (``--table table4|table6|theorem2|figure1|window``, see
:data:`xrimpute.bench.ABLATIONS`) print each arm with its peer and the ratio;
``--steps`` overrides the training steps of the settings.

Prints one markdown table per metric (mean ± std over seeds) and writes
``<out>/<table>-<settings>.json`` and ``.png`` (truth, observations and every
method). ``--append-results benchmarks/RESULTS.md`` appends a section with the
device, date, command and tables. See :mod:`xrimpute.bench` for the data,
split, methods and scores. The ERA5 rows of table 1 need the sample in the
xrimpute cache: ``--era5-file`` copies a local copy of
``era5-2mt-2019-03-uk.grib`` there first (offline machines).
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from xrimpute import bench
from xrimpute.datasets import cache_dir
from xrimpute.datasets.era5 import SAMPLE_FILE


def _names(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def place_era5(path: str) -> None:
    """Copy the ERA5 sample into the xrimpute cache (atomically) unless it is there already."""
    source, target = Path(path), cache_dir() / SAMPLE_FILE
    if not source.is_file():
        raise FileNotFoundError(f"no ERA5 sample at {source}")
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def append_section(path: str, report: bench.Report, command: str, steps: dict | None = None) -> None:
    """Append the run's tables to a markdown file under a heading of its own (written atomically)."""
    settings = asdict(bench.SETTINGS[report.settings]) if report.settings in bench.SETTINGS else {}
    settings.update(steps or {})
    budget = ", ".join(f"{k}={settings[k]}" for k in ("steps", "batch_size", "preset", "window", "K", "rounds",
                                                      "members", "sample_steps") if k in settings)
    seeds = sorted({row["seed"] for row in report.rows})
    section = "\n".join([
        f"## Paper {report.table.replace('table', 'Table ')}"
        f"{' (ablation)' if report.table in bench.ABLATIONS else ''}, {report.settings} settings",
        "",
        f"- command: `{command}`",
        f"- device: {report.device}",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- seeds: {seeds}; budget of every learned method: {budget}",
        "",
        report.markdown(),
        "",
    ])
    target = Path(path)
    old = target.read_text() if target.exists() else "# Benchmark results\n"
    partial = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    partial.write_text(old.rstrip("\n") + "\n\n" + section)
    os.replace(partial, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="table1", choices=sorted(bench.TABLES) + sorted(bench.ABLATIONS))
    parser.add_argument("--settings", default="small", choices=sorted(bench.SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", type=_names, default=None, metavar="A,B", help="subset of the methods")
    parser.add_argument("--datasets", type=_names, default=None, metavar="A,B",
                        help="subset of the data sets (navier_stokes, era5, shallow_water, advection)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON rows and the figure")
    parser.add_argument("--device", default=None, help="where networks train (default: GPU if any)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is best on a busy machine)")
    parser.add_argument("--era5-file", default=None, metavar="FILE.grib", help="local copy of the ERA5 sample")
    parser.add_argument("--append-results", default=None, metavar="RESULTS.md", help="append a section here")
    parser.add_argument("--no-figure", action="store_true", help="skip the figure")
    parser.add_argument("--steps", type=int, default=None, help="training steps instead of the settings' own")
    args = parser.parse_args(argv)
    if args.era5_file:
        place_era5(args.era5_file)
    changed = {} if args.steps is None else {"steps": args.steps}
    settings = replace(bench.SETTINGS[args.settings], **changed) if changed else args.settings
    if args.table in bench.ABLATIONS:
        report = bench.ablation(args.table, settings, seed=args.seeds[0], device=args.device, threads=args.threads)
    else:
        report = bench.run(args.table, settings, seeds=tuple(args.seeds), methods=args.methods,
                           datasets=args.datasets, out=args.out, device=args.device, threads=args.threads,
                           figure=not args.no_figure)
    report.settings = args.settings
    print(report.markdown())
    if report.files:
        print("\nwrote " + ", ".join(report.files))
    if args.append_results:
        command = "python benchmarks/paper_tables.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        append_section(args.append_results, report, command, changed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
