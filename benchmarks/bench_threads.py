"""Threads: a fit beside a busy dask worker, with the package's thread setting and with torch's default.

    python benchmarks/bench_threads.py                   # 10 training steps per fit, one busy worker beside it
    python benchmarks/bench_threads.py --steps 40 --peers 2

This process starts a dask ``LocalCluster`` whose ``--peers`` worker processes spin on
numpy work, as a user's dask computation beside a notebook fit would. The same seeded
fit then runs twice: under ``set_options(threads="auto")`` (the package's rule: the
cores that the local workers leave free) and with torch's default thread count (every
core). Prints a markdown table: the fit's seconds under each setting, the busy
workers' work rate meanwhile, and the ratios. ``$OMP_NUM_THREADS`` is ignored here
(it would decide both settings).
"""
from __future__ import annotations

import os

os.environ.pop("OMP_NUM_THREADS", None)  # before torch is imported: torch's default is then every core

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from distributed import Client, Event, LocalCluster  # noqa: E402

import xrimpute  # noqa: E402
from xrimpute.options import cpu_threads  # noqa: E402


def spin(stop: str) -> tuple[int, float]:
    """Numpy work until the event ``stop`` is set: ``(rounds done, seconds)``."""
    event, a = Event(stop), np.random.default_rng(0).standard_normal((160, 160))
    rounds, started = 0, time.perf_counter()
    while True:
        for _ in range(20):
            a = np.tanh(a @ a.T / 160)
        rounds += 20
        if event.is_set():
            return rounds, time.perf_counter() - started


def timed_fit(client, workers, observed, threads, steps: int, name: str) -> tuple[float, float, int]:
    """Fit seconds, the busy workers' rounds/s during the fit, and the torch threads the fit ran with."""
    futures = [client.submit(spin, name, pure=False, workers=[w]) for w in workers]
    time.sleep(2.0)  # the workers are busy before the fit starts
    with xrimpute.set_options(threads=threads, progress=False, device="cpu"):
        used = cpu_threads()
        started = time.perf_counter()
        xrimpute.fit(observed, mask="pixel", steps=steps, batch_size=16, preset="tiny", max_time=3600, seed=0,
                     val_fraction=0.0, verbose=False)
        seconds = time.perf_counter() - started
    Event(name, client=client).set()
    results = client.gather(futures)
    return seconds, sum(r / s for r, s in results), used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="training steps per fit (default 10)")
    parser.add_argument("--peers", type=int, default=1, help="busy dask worker processes beside the fit (default 1)")
    args = parser.parse_args()

    default = torch.get_num_threads()
    truth = xrimpute.datasets.advection("tiny")[["tracer"]]
    observed = xrimpute.observe(truth, "pixel", rate=0.2, seed=0)
    xrimpute.fit(observed, mask="pixel", steps=1, batch_size=16, preset="tiny", device="cpu", progress=False,
                 val_fraction=0.0, verbose=False)  # warm-up: imports, allocator, caches
    with LocalCluster(n_workers=args.peers, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        workers = list(client.scheduler_info()["workers"])
        auto = timed_fit(client, workers, observed, "auto", args.steps, "stop-auto")
        torch_default = timed_fit(client, workers, observed, default, args.steps, "stop-default")
    load = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cores}-core {platform.machine()} CPU, load average {load:.1f} after the run; {date.today()}; "
          f"fit of {args.steps} steps (tiny preset, batch 16, no validation, {dict(observed.sizes)}) beside {args.peers} busy "
          f"dask worker process(es)\n")
    print("| figure | value | peer | peer value | ratio |")
    print("|---|---|---|---|---|")
    print(f"| fit seconds, threads='auto' ({auto[2]} threads) | {auto[0]:.1f} | torch default ({torch_default[2]} "
          f"threads) | {torch_default[0]:.1f} | {torch_default[0] / auto[0]:.2f} |")
    print(f"| busy workers' rounds/s during the fit, threads='auto' | {auto[1]:.1f} | during the torch-default fit | "
          f"{torch_default[1]:.1f} | {auto[1] / torch_default[1]:.2f} |")


if __name__ == "__main__":
    main()
