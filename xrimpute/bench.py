"""The paper's benchmark tables: every method on the same data with the same budget, in one run.

* ``table1``: pixel observations. Navier-Stokes with 80 / 60 / 20 % of the cells
  observed, and the ERA5 sample (2 m temperature over the UK, March 2019) with
  20 / 10 / 1 %.
* ``table2``: block observations. 8 and 5 of 9 blocks of a 3 x 3 grid, drawn once
  per trajectory (a missing block stays missing in every frame, so nothing can be
  copied from neighbouring times), on shallow water, advection and Navier-Stokes,
  with the context ablation ``ctxdiff-pixel``: the same method with pixel contexts
  on block data.

The trajectories of a data set are split into training and test samples (ERA5:
the first days and the last hours of the month). Learned methods train on the
observed training cube only (no complete sample) with the same network, steps,
batch and seed, then fill the observed test cube; classical methods fill the
test cube directly. Scores on the test cube:

* ``gap_mse``: mean squared error on the gaps, in units of the training truth's
  standard deviation (per variable, then averaged): the paper's normalised MSE;
* ``residual`` (shallow water): RMS residual of the shallow-water equations of
  the reconstruction (mean of the mass and two momentum equations), from
  :func:`xrimpute.metrics.pde_residual_shallow_water`; the truth scores the
  discretisation floor (row ``truth``);
* ``forecast_mse`` (advection): the reconstructed first frame and the true one
  integrated 50 steps by finite differences
  (:func:`xrimpute.metrics.advection_forecast_mse`), normalised like ``gap_mse``.

``run(...)`` returns a :class:`Report` (``.markdown()``) and writes the rows as
JSON and a figure of truth, observations and every method per condition.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from . import cube, metrics
from .baselines import fill
from .baselines.em_consistency import fit_em_consistency
from .baselines.learned import fit_ambient, fit_ctxdiff, fit_diffputer, fit_missdiff
from .atomic import atomic_write
from .errors import ArgumentError
from .observe import observe

LEARNED = ("ctxdiff", "missdiff", "ambient", "diffputer", "em_consistency")
CLASSICAL = ("interpolate", "telea", "ns_inpaint", "temporal", "dineof")
ABLATION = "ctxdiff-pixel"  # table 2: pixel contexts on block data
MULTISTEP = ("missdiff-multistep", "ambient-multistep")  # on request: the baselines with multi-step inference
TABLES = {
    "table1": [("navier_stokes", "pixel", rate) for rate in (0.8, 0.6, 0.2)]
    + [("era5", "pixel", rate) for rate in (0.2, 0.1, 0.01)],
    "table2": [(name, "block", kept) for name in ("shallow_water", "advection", "navier_stokes") for kept in (8, 5)],
}
SHORT = {"navier_stokes": "NS", "era5": "ERA5", "shallow_water": "SW", "advection": "Adv"}


@dataclass(frozen=True)
class Settings:
    """Sizes and budgets of one benchmark run (``SETTINGS`` names two)."""

    data_preset: str  # preset of xrimpute.pde.generate whose sizes the fields below replace
    size: int  # grid cells per side of the PDE data
    frames: int
    n_train: int  # trajectories to train on
    n_test: int  # trajectories to fill and score
    era5_train_days: int
    era5_test_hours: int
    steps: int  # training steps of every learned method (EM methods: over all rounds)
    batch_size: int
    preset: str  # network size
    window: int
    K: int  # contexts of the single-step ensemble (ctxdiff)
    rounds: int  # EM rounds of DiffPuter and EM + consistency
    members: int  # DiffPuter conditional samples averaged per E-step
    sample_steps: int  # DiffPuter denoising steps per sample
    static_pixels: bool = False  # pixel observations fixed over a trajectory (the paper's NS Table 1), and contexts


SETTINGS = {
    # a few minutes per condition on 2 CPU cores: 32 x 32 grids, the tiny U-Net, 300 steps
    "small": Settings(data_preset="tiny", size=32, frames=16, n_train=12, n_test=4, era5_train_days=14,
                      era5_test_hours=48, steps=300, batch_size=8, preset="tiny", window=3, K=8, rounds=2,
                      members=2, sample_steps=10),
    # paper-sized data and networks, for a GPU: static NS pixel masks and the whole trajectory as one window
    "paper": Settings(data_preset="paper", size=64, frames=50, n_train=1024, n_test=128, era5_train_days=24,
                      era5_test_hours=168, steps=50_000, batch_size=32, preset="base", window=50, K=10, rounds=4,
                      members=4, sample_steps=50, static_pixels=True),
}


@dataclass
class Report:
    """Rows of one run (one per condition, method, seed and metric), the machine, and what the run could not do."""

    table: str
    settings: str
    device: str = ""
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # markdown tables of an ablation, with each arm's peer

    def summary(self) -> dict:
        """``{metric: {method: {condition: (mean, std, seeds)}}}`` over seeds."""
        grouped: dict = {}
        for row in self.rows:
            grouped.setdefault(row["metric"], {}).setdefault(row["method"], {}).setdefault(
                row["condition"], []).append(row["value"])
        return {metric: {method: {cond: (float(np.mean(v)), float(np.std(v)), len(v)) for cond, v in by.items()}
                         for method, by in methods.items()} for metric, methods in grouped.items()}

    def markdown(self) -> str:
        """One markdown table per metric: methods by conditions, ``mean ± std`` over seeds (an ablation: its tables)."""
        if self.tables:
            return "\n\n".join(self.tables + [f"Note: {note}" for note in self.notes])
        conditions = list(dict.fromkeys(row["condition"] for row in self.rows))
        seconds: dict = {}
        for row in self.rows:
            if row["metric"] == "gap_mse":
                seconds.setdefault(row["method"], []).append(row["seconds"])
        parts = []
        for metric, methods in self.summary().items():
            columns = [c for c in conditions if any(c in by for by in methods.values())]
            timed = metric == "gap_mse"
            head = "| method | " + " | ".join(columns) + (" | seconds |" if timed else " |")
            lines = [f"**{metric}** (lower is better)", "", head, "|" + "---|" * (len(columns) + 1 + timed)]
            for method, by in methods.items():
                cells = [_cell(*by[c]) if c in by else "" for c in columns]
                if timed:
                    cells.append(f"{np.mean(seconds[method]):.0f}" if method in seconds else "")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            parts.append("\n".join(lines))
        parts += [f"Note: {note}" for note in self.notes]
        return "\n\n".join(parts)


def _cell(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3g}" if n == 1 else f"{mean:.3g} ± {std:.2g}"


def condition_name(dataset: str, kind: str, amount) -> str:
    return f"{SHORT[dataset]} {amount:.0%}" if kind == "pixel" else f"{SHORT[dataset]} {amount}/9"


# -- data ---------------------------------------------------------------------------


def _pde_split(name: str, settings: Settings, seed: int) -> tuple[xr.Dataset, xr.Dataset]:
    from .pde import generate

    total = settings.n_train + settings.n_test
    ds = generate(name, settings.data_preset, seed=seed, n_samples=total, size=settings.size,
                  frames=settings.frames, progress=False)
    return ds.isel(sample=slice(0, settings.n_train)), ds.isel(sample=slice(settings.n_train, total))


def _era5_split(settings: Settings) -> tuple[xr.Dataset, xr.Dataset]:
    from .datasets import era5_sample

    ds = era5_sample(progressbar=False)
    return ds.isel(time=slice(0, 24 * settings.era5_train_days)), ds.isel(time=slice(-settings.era5_test_hours, None))


def _observe(ds: xr.Dataset, kind: str, amount, seed: int, settings: Settings) -> xr.Dataset:
    if kind == "pixel":
        static = settings.static_pixels and "sample" in ds.dims  # PDE trajectories, not the ERA5 month
        return observe(ds, "pixel", rate=amount, static=static, seed=seed)
    return observe(ds, "block", grid=(3, 3), observed=amount, static=True, seed=seed)


# -- methods ------------------------------------------------------------------------


def _fit(method: str, train: xr.Dataset, kind: str, settings: Settings, seed: int, device):
    from . import masks

    static = kind == "pixel" and settings.static_pixels and "sample" in train.dims
    mask = masks.Pixel(static=True) if static else kind
    options = dict(steps=settings.steps, batch_size=settings.batch_size, preset=settings.preset,
                   window=settings.window, seed=seed, device=device, val_fraction=0.0, progress=False,
                   verbose=False)
    if method == "ctxdiff":
        return fit_ctxdiff(train, mask=mask, K=settings.K, **options)
    if method == ABLATION:
        return fit_ctxdiff(train, mask="pixel", K=settings.K, **options)
    multistep = dict(sample_steps=settings.sample_steps, members=settings.members) if method in MULTISTEP else {}
    if method.startswith("missdiff"):
        return fit_missdiff(train, mask=mask, **multistep, **options)
    if method.startswith("ambient"):
        return fit_ambient(train, **multistep, **options)
    if method == "diffputer":
        return fit_diffputer(train, rounds=settings.rounds, members=settings.members,
                             sample_steps=settings.sample_steps, **options)
    if method == "em_consistency":  # continuous form: EM rounds around ctxdiff, consistency loss in the M-steps
        return fit_em_consistency(train, mask=mask, rounds=settings.rounds, K=settings.K, **options)
    raise ArgumentError(f"unknown method {method!r}; known: {LEARNED + (ABLATION,) + CLASSICAL}")


def _fill(method: str, train_seen, test_seen, kind: str, settings: Settings, seed: int, device):
    if method in CLASSICAL:
        return fill(test_seen, method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MissDiff and the ablation leave gaps unlearnable, by design
        learned = _fit(method, train_seen, kind, settings, seed, device)
    # a cell that no training frame observed (sparse pixels) still gets the network's value, as elsewhere
    return learned.impute(test_seen, seed=seed, fill_never_observed=True)


# -- scores -------------------------------------------------------------------------


def _scores(dataset: str, filled: xr.Dataset, truth: xr.Dataset, seen: xr.Dataset, scale: xr.Dataset) -> dict:
    names = list(scale.data_vars)
    gaps = metrics.mse_gaps(filled[names] / scale, truth[names] / scale, seen[names])
    out = {"gap_mse": float(np.mean(list(gaps.values())))}
    if dataset == "shallow_water":
        out["residual"] = float(np.mean(list(metrics.pde_residual_shallow_water(filled).values())))
    if dataset == "advection":
        velocity = np.stack([truth["velocity_x"].values, truth["velocity_y"].values], -1)
        forecast = metrics.advection_forecast_mse(filled["tracer"], truth["tracer"], velocity, steps=50,
                                                  dt=float(truth.attrs["dt"]))
        out["forecast_mse"] = forecast / float(scale["tracer"]) ** 2
    return out


# -- the run ------------------------------------------------------------------------


def run(table: str = "table1", settings: str | Settings = "small", seeds=(0,), methods=None, datasets=None,
        out: str | os.PathLike | None = "benchmarks/results", device: str | None = None,
        threads: int | None = None, figure: bool = True, progress: bool = True) -> Report:
    """Run one of the paper's tables and return its :class:`Report`.

    Parameters
    ----------
    table : ``"table1"`` (pixel observations) or ``"table2"`` (block observations).
    settings : ``"small"`` (minutes per condition on 2 CPU cores), ``"paper"`` (a GPU)
        or a :class:`Settings`.
    seeds : one run per seed (data, observations and training all follow it);
        the tables show mean ± std over seeds.
    methods : subset of the methods (default: all learned and classical ones, and on
        table 2 the ablation ``ctxdiff-pixel``); ``missdiff-multistep`` and
        ``ambient-multistep`` (the baselines with multi-step inference: the mean of
        ``members`` conditional samples of ``sample_steps`` steps) on request.
    datasets : subset of the table's data sets (e.g. ``["navier_stokes"]``).
    out : folder for ``<table>-<settings>.json`` and ``.png`` (None: write nothing).
    device : where networks train (default: :func:`xrimpute.set_options`).
    threads : torch CPU threads during the run (one is fastest for tiny networks on a
        busy machine).
    figure : also save the figure (needs matplotlib).

    ERA5 rows need the sample (:func:`xrimpute.datasets.era5_sample`: the cache, a
    mirror in ``$XRIMPUTE_DATA_URL`` or the internet); without it they are skipped
    with a note in the report.
    """
    if table not in TABLES:
        raise ArgumentError(f"unknown table {table!r}; choose one of {sorted(TABLES)}")
    name = settings if isinstance(settings, str) else "custom"
    if isinstance(settings, str):
        if settings not in SETTINGS:
            raise ArgumentError(f"unknown settings {settings!r}; choose one of {sorted(SETTINGS)} or pass a Settings")
        settings = SETTINGS[settings]
    default = LEARNED + ((ABLATION,) if table == "table2" else ()) + CLASSICAL
    everything = default + MULTISTEP
    methods = list(default if methods is None else methods)
    unknown = sorted(set(methods) - set(everything))
    if unknown:
        raise ArgumentError(f"unknown methods {unknown} for {table}; choose from {list(everything)}")
    conditions = [c for c in TABLES[table] if datasets is None or c[0] in datasets]
    if not conditions:
        raise ArgumentError(f"no condition of {table} uses the data sets {datasets}")
    report = Report(table, name)
    panels = []
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    report.device = describe_device(device)
    try:
        jobs = [(seed, condition) for seed in seeds for condition in conditions]
        bar = tqdm(total=len(jobs) * len(methods), desc=f"{table} ({name})", disable=not progress)
        splits: dict = {}
        for seed, (dataset, kind, amount) in jobs:
            label = condition_name(dataset, kind, amount)
            key = (dataset, seed)
            if key not in splits:
                try:
                    splits[key] = _era5_split(settings) if dataset == "era5" else _pde_split(dataset, settings, seed)
                except (OSError, ValueError, ImportError) as err:
                    splits[key] = None
                    report.notes.append(f"{dataset} rows skipped (seed {seed}): the data could not be loaded ({err})")
            if splits[key] is None:
                bar.update(len(methods))
                continue
            train, test = splits[key]
            names = cube.layout_of(train).variables
            scale = train[names].std()
            train_seen = _observe(train, kind, amount, seed, settings)
            test_seen = _observe(test, kind, amount, seed + 10_000, settings)
            results = {}
            if dataset == "shallow_water":
                report.rows.append(dict(condition=label, method="truth", seed=seed, metric="residual",
                                        value=_scores(dataset, test, test, test_seen, scale)["residual"],
                                        seconds=0.0))
            for method in methods:
                bar.set_postfix_str(f"{label}: {method}")
                start = time.perf_counter()
                filled = _fill(method, train_seen, test_seen, kind, settings, seed, device)
                seconds = time.perf_counter() - start
                for metric, value in _scores(dataset, filled, test, test_seen, scale).items():
                    report.rows.append(dict(condition=label, method=method, seed=seed, metric=metric,
                                            value=value, seconds=seconds))
                results[method] = filled
                bar.update(1)
            if seed == seeds[0]:
                panels.append((label, test, test_seen, results, names[0]))
        bar.close()
    finally:
        torch.set_num_threads(previous_threads)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{table}-{name}"
        record = dict(table=table, settings=asdict(settings), settings_name=name, seeds=list(seeds),
                      rows=report.rows, notes=report.notes, device=report.device,
                      date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with atomic_write(stem.with_suffix(".json")) as partial:
            partial.write_text(json.dumps(record, indent=1))
        report.files.append(str(stem.with_suffix(".json")))
        if figure and panels:
            report.files.append(str(plot_panels(panels, stem.with_suffix(".png"))))
    return report


def plot_panels(panels, path: str | os.PathLike) -> Path:
    """Save a figure: per condition, truth, observations and every method's fill of one frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(2 + len(results) for _, _, _, results, _ in panels)
    fig, axes = plt.subplots(len(panels), columns, figsize=(1.6 * columns, 1.7 * len(panels)), squeeze=False)
    for row, (label, truth, seen, results, var) in zip(axes, panels):
        axes_ = cube.find_axes(truth[var])
        frame = {axes_.time: truth.sizes[axes_.time] // 2}
        if axes_.sample:
            frame[axes_.sample] = 0
        fields = {"truth": truth[var], "observed": seen[var], **{m: f[var] for m, f in results.items()}}
        shown = {k: v.isel(frame).transpose(axes_.lat, axes_.lon).values for k, v in fields.items()}
        low, high = np.nanpercentile(shown["truth"], [1, 99])
        for ax, (title, image) in zip(row, shown.items()):
            ax.imshow(image, origin="lower", vmin=low, vmax=high, cmap="RdBu_r", interpolation="nearest")
            ax.set_title(title, fontsize=7)
        row[0].set_ylabel(label, fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[len(shown):]:
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as partial:
        fig.savefig(partial, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def describe_device(device: str | None = None) -> str:
    """The machine in words: GPU name, or CPU model and the threads torch uses."""
    from .options import or_option
    from .training import resolve_device

    resolved = resolve_device(or_option("device", device))
    if resolved.type == "cuda":
        return torch.cuda.get_device_name(resolved)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads " \
           f"{torch.get_num_threads()})"



# -- the paper's ablations ------------------------------------------------------------

ABLATIONS = {
    "table4": "K-context ensemble against one pass with the whole observed mask as context (same model)",
    "table6": "context ratio 0.3-1.0 (1.0 is MissDiff's input) and query ratio 0.7 against 1.0, on NS 5/9 blocks",
    "theorem2": "variance of the single-step estimator over draws of K contexts, K = 1..32, and its log-log slope",
    "figure1": "block contexts against pixel contexts on NS with static 3 x 3 blocks (5 of 9 observed)",
    "window": "windows of 3 frames against the whole trajectory as one window, on NS 5/9 blocks",
}
NS_BLOCKS = ("navier_stokes", "block", 5)
NS_PIXELS = ("navier_stokes", "pixel", 0.2)


def _spec(kind: str, settings: Settings, **fields):
    from . import masks

    if kind == "block":
        return masks.Block(grid=(3, 3), static=True, **fields)
    return masks.Pixel(static=settings.static_pixels, **fields)


def _ablation_fit(train, spec, settings: Settings, seed: int, device, window: int | None = None):
    from .model import CtxDiffModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pixel contexts on block data leave gaps unlearnable, by design
        return CtxDiffModel.fit(train, mask=spec, steps=settings.steps, batch_size=settings.batch_size,
                                preset=settings.preset, window=window or settings.window, seed=seed, device=device,
                                val_fraction=0.0, progress=False, verbose=False)


def _gap_mse(filled, test, test_seen, scale) -> float:
    return _scores("navier_stokes", filled, test, test_seen, scale)["gap_mse"]


def _peer_table(title: str, rows: list[tuple[str, str, float, float]], note: str = "") -> str:
    """A markdown table: condition, method, gap MSE, and the ratio to the condition's peer."""
    lines = [f"**{title}** (gap MSE in units of the truth's std², lower is better; ratio = row / peer)", "",
             "| condition | method | gap_mse | ratio to peer |", "|---|---|---|---|"]
    lines += [f"| {cond} | {method} | {value:.4g} | {ratio:.3f} |" for cond, method, value, ratio in rows]
    return "\n".join(lines + ([f"\n{note}"] if note else []))


def ablation(name: str, settings: str | Settings = "small", seed: int = 0, device: str | None = None,
             threads: int | None = None, progress: bool = True) -> Report:
    """Run one of the paper's ablations (:data:`ABLATIONS`) on Navier-Stokes and return its :class:`Report`.

    Every arm of an ablation trains on the same observed training cube with the
    same budget (``settings``) and fills the same observed test cube; the
    report holds one row per arm and a markdown table with the ratio of each
    arm to its peer (``Report.tables``).
    """
    if name not in ABLATIONS:
        raise ArgumentError(f"unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}")
    label = settings if isinstance(settings, str) else "custom"
    settings = SETTINGS[settings] if isinstance(settings, str) else settings
    report = Report(name, label)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    report.device = describe_device(device)
    try:
        train, test = _pde_split("navier_stokes", settings, seed)
        scale = train[cube.layout_of(train).variables].std()
        seen = {}

        def observed(condition):
            if condition not in seen:
                _, kind, amount = condition
                seen[condition] = (_observe(train, kind, amount, seed, settings),
                                   _observe(test, kind, amount, seed + 10_000, settings))
            return seen[condition]

        def record(condition, method, value, start):
            report.rows.append(dict(condition=condition_name(*condition), method=method, seed=seed,
                                    metric="gap_mse", value=value, seconds=time.perf_counter() - start))
            if progress:  # each arm as it ends: a long run that is stopped still leaves its arms
                tqdm.write(f"{name}: {condition_name(*condition)} | {method} | {value:.4g} | "
                           f"{time.perf_counter() - start:.0f} s")
            return value

        bar = tqdm(desc=f"{name} ({label})", disable=not progress)
        table = []
        if name == "table4":
            for condition in (NS_PIXELS, NS_BLOCKS):
                train_seen, test_seen = observed(condition)
                start = time.perf_counter()
                model = _ablation_fit(train_seen, _spec(condition[1], settings), settings, seed, device)
                ensemble = record(condition, f"ensemble K={settings.K}",
                                  _gap_mse(model.impute(test_seen, K=settings.K, seed=seed, progress=False,
                                                        fill_never_observed=True), test, test_seen, scale), start)
                start = time.perf_counter()
                full = record(condition, "whole observed mask, one pass",
                              _gap_mse(model.impute(test_seen, K=1, seed=seed, adapt=False, progress=False,
                                                    spec=_spec(condition[1], settings, context_ratio=1.0),
                                                    fill_never_observed=True), test, test_seen, scale), start)
                table += [(condition_name(*condition), f"ensemble K={settings.K}", ensemble, ensemble / full),
                          (condition_name(*condition), "whole observed mask, K=1 (peer)", full, 1.0)]
                bar.update(1)
            report.tables.append(_peer_table("Table 4: ensemble of K contexts vs the whole observed mask", table))
        elif name == "table6":
            train_seen, test_seen = observed(NS_BLOCKS)
            arms = [(f"context {r}", dict(context_ratio=r)) for r in (0.3, 0.5, 0.7, 0.9, 1.0)]
            arms.append(("context 0.7, query 0.7", dict(context_ratio=0.7, query_ratio=0.7)))
            values = {}
            for arm, fields in arms:
                start = time.perf_counter()
                model = _ablation_fit(train_seen, _spec("block", settings, **fields), settings, seed, device)
                K = 1 if fields["context_ratio"] == 1.0 else settings.K  # one context is the whole mask
                values[arm] = record(NS_BLOCKS, arm, _gap_mse(model.impute(test_seen, K=K, seed=seed,
                                                                            progress=False, fill_never_observed=True),
                                                               test, test_seen, scale), start)
                bar.update(1)
            peer = values["context 0.7"]
            table = [(condition_name(*NS_BLOCKS), arm + (" (peer)" if arm == "context 0.7" else ""), v, v / peer)
                     for arm, v in values.items()]
            report.tables.append(_peer_table("Table 6: context ratio and query ratio (block contexts)", table))
        elif name == "theorem2":
            train_seen, test_seen = observed(NS_PIXELS)
            model = _ablation_fit(train_seen, _spec("pixel", settings), settings, seed, device)
            one = test_seen.isel(sample=slice(0, 1))
            gaps = one.isnull()
            names = list(scale.data_vars)
            variances, ks = [], (1, 2, 4, 8, 16, 32)
            draws = 8
            for K in ks:
                start = time.perf_counter()
                fills = [model.impute(one, K=K, seed=s, stride=settings.window, progress=False,
                                      fill_never_observed=True) for s in range(draws)]
                stacked = {v: np.stack([(f[v] / scale[v]).values for f in fills]) for v in names}
                variance = float(np.mean([stacked[v].var(0, ddof=1)[gaps[v].values].mean() for v in names]))
                variances.append(record(NS_PIXELS, f"K={K}", variance, start))
                bar.update(1)
            slope, _ = np.polyfit(np.log(ks), np.log(variances), 1)
            lines = ["**Theorem 2: variance of the single-step estimate over independent draws of K contexts** "
                     f"(gap cells of one NS 20% test trajectory, {draws} draws per K, in units of the truth's "
                     "variance; ratio = K=1 variance / K's, 1/K law: ratio = K)", "",
                     "| K | variance | K=1 / K ratio |", "|---|---|---|"]
            lines += [f"| {K} | {v:.4g} | {variances[0] / v:.2f} |" for K, v in zip(ks, variances)]
            lines += ["", f"log-log slope: {slope:.3f} (Theorem 2: -1)"]
            report.tables.append("\n".join(lines))
            report.notes.append(f"theorem2 slope {slope:.3f}")
        else:
            train_seen, test_seen = observed(NS_BLOCKS)
            if name == "figure1":
                arms = [("block contexts", _spec("block", settings), None),
                        ("pixel contexts (peer)", _spec("pixel", settings), None)]
            else:
                arms = [(f"window {settings.frames} (whole trajectory)", _spec("block", settings), settings.frames),
                        ("window 3 (peer)", _spec("block", settings), 3)]
            values = []
            for arm, spec, window in arms:
                start = time.perf_counter()
                model = _ablation_fit(train_seen, spec, settings, seed, device, window=window)
                values.append(record(NS_BLOCKS, arm, _gap_mse(model.impute(test_seen, K=settings.K, seed=seed,
                                                                          progress=False, fill_never_observed=True),
                                                             test, test_seen, scale), start))
                bar.update(1)
            table = [(condition_name(*NS_BLOCKS), arm, v, v / values[-1]) for (arm, _, _), v in zip(arms, values)]
            title = ("Figure 1: block vs pixel contexts on static 3x3 blocks" if name == "figure1"
                     else "Window length: whole trajectory vs 3 frames")
            report.tables.append(_peer_table(title, table))
        bar.close()
    finally:
        torch.set_num_threads(previous_threads)
    return report
