"""A newcomer's waits: the quickstart command, and the Python blocks of the docs' quickstart page.

    python benchmarks/bench_newcomer.py                 # both
    python benchmarks/bench_newcomer.py --only quickstart
    python benchmarks/bench_newcomer.py --only docs

'quickstart' times ``python -m xrimpute quickstart`` with its defaults in a fresh
process. 'docs' runs the Python blocks of ``docs/quickstart.md`` one after the other,
as written (the ERA5 sample must be in the xrimpute cache, or downloadable), and times
each. Threads are left as a user would have them. Prints a markdown table with the
machine's load, for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> list[tuple[str, float]]:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "xrimpute", "quickstart"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return [("python -m xrimpute quickstart (defaults)", time.perf_counter() - started)]


def docs_page() -> list[tuple[str, float]]:
    import matplotlib

    matplotlib.use("Agg")
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "quickstart.md").read_text(), re.S)
    namespace: dict = {}
    rows = []
    os.chdir(ROOT / "benchmarks")  # the page saves t2m.xri in the working folder
    try:
        for block in blocks:
            started = time.perf_counter()
            exec(compile(block, "docs/quickstart.md", "exec"), namespace)
            first = next(line for line in block.splitlines() if line.strip() and not line.startswith("import"))
            rows.append((f"docs/quickstart.md: `{first.split('#')[0].strip()}` ...", time.perf_counter() - started))
    finally:
        Path("t2m.xri").unlink(missing_ok=True)
    rows.append(("docs/quickstart.md, the whole page", sum(seconds for _, seconds in rows)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("quickstart", "docs"), default=None)
    args = parser.parse_args()
    rows = []
    if args.only in (None, "quickstart"):
        rows += quickstart()
    if args.only in (None, "docs"):
        rows += docs_page()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0]
    print(f"{cores}-core {platform.machine()} CPU, load average {load:.1f} after the run; {date.today()}\n")
    print("| what | seconds | minutes |")
    print("|---|---|---|")
    for what, seconds in rows:
        print(f"| {what} | {seconds:.0f} | {seconds / 60:.1f} |")


if __name__ == "__main__":
    main()
