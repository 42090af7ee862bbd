"""A prototype, not package code: each cell's history outside the window as a first-guess input.

    OMP_NUM_THREADS=1 python benchmarks/prototype_history.py subtract era5-swath 0 --steps 500 \
        --era5-file ../shared/data/era5-2mt-2019-03-uk.grib
    OMP_NUM_THREADS=1 python benchmarks/prototype_history.py drop era5-pixel1 1 --max-time 150

Patches the package at run time (written against commit 5345ea9; it reaches into
``engine.training_windows``, ``ArrayWindows.get``, the validation windows, ``Denoiser`` and
``windows.impute_series``): numpy cubes, no tiles, no archives. For window (sample i, steps
s..s+w), ``S`` and ``n`` are the sum and count of sample i's training observations outside the
window; ``b = (S + 16 F) / (n + 16)`` with ``F`` the raw means ``S / n`` filled over space by
normalised convolution at 1-16 cells. Forms: ``plain`` (the package as it is), ``subtract``
(the guess is ``b + G((values - b) on the context)``), ``both`` (today's guess and output, the
history guess as extra inputs), ``drop`` ("both", history zeroed for a random half of the
training windows with a flag channel; scored with history on and off). The raw ``S`` and ``n``
never reach the U-Net. Prints one JSON line: gap NMSE and held-back NMSE. The figures are in
benchmarks/RESULTS.md, "History outside the window, second look"; a package feature would
rebuild this on every path rather than patch.
"""
import argparse
import inspect
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import xrimpute
import xrimpute.engine as engine
import xrimpute.windows as windows
from xrimpute import cube
from xrimpute.nets import Denoiser
from xrimpute.nets.prior import FirstGuess

sys.path.insert(0, str(Path(__file__).parent))
import bench_accuracy  # noqa: E402  the cases and the gap NMSE

FORM = "plain"
SHRINK = 16.0  # observations a cell needs before its own mean outweighs its neighbours'
SPATIAL = FirstGuess(  # the raw means filled over space, 0 steps
    levels=((1, 0), (2, 0), (4, 0), (8, 0), (16, 0)))
STATE = {}


def per_window(values, observed, jobs, window):
    """(B, 2C, H, W): sum and count of each sample's observations outside window (i, s)."""
    if STATE.get("series") is not values:  # the series itself is kept, so a later array cannot pass for it
        v = np.asarray(values, np.float64) * np.asarray(observed)
        STATE.update(series=values, tot=v.sum(2), cnt=np.asarray(observed).sum(2), v=v)
    tot, cnt, v = STATE["tot"], STATE["cnt"], STATE["v"]
    ob = np.asarray(observed)
    out = [np.concatenate([tot[i] - v[i, :, s:s + window].sum(1), cnt[i] - ob[i, :, s:s + window].sum(1)])
           for i, s in jobs]
    return torch.as_tensor(np.stack(out), dtype=torch.float32)


def baseline(S, n):
    """(B, C, H, W) shrunk per-cell mean towards its spatial fill."""
    seen = n > 0
    raw = torch.where(seen, S / n.clamp(min=1), torch.zeros_like(S))
    F, _ = SPATIAL(raw[:, :, None], seen[:, :, None])
    return (S + SHRINK * F[:, :, 0]) / (n + SHRINK)


class _Fixed(torch.nn.Module):
    """Stands in for the network's first guess: the history guess, with the plain guess's certainty."""

    def __init__(self, guess, fg):
        super().__init__()
        self.guess, self.fg = guess, [fg]

    def forward(self, v, mk):
        return self.guess, self.fg[0](v, mk)[1]


_orig_init, _orig_forward = Denoiser.__init__, Denoiser.forward


def init(self, n_channels, window, static=None, *args, **kw):
    if STATE.pop("extend", False):
        p = 0 if static is None else static.shape[0]
        h, w = STATE["grid"]
        # the history guess (and drop's flag) become inputs; the raw sums and counts never reach the U-Net
        extra = n_channels * window + (FORM == "drop") if FORM in ("both", "drop") else 0
        base = torch.zeros(0, h, w) if static is None else torch.as_tensor(static)
        static = torch.cat([base, torch.zeros(extra, h, w)])
        _orig_init(self, n_channels, window, static, *args, **kw)
        self._hist = dict(p=p, c=n_channels)
    else:
        _orig_init(self, n_channels, window, static, *args, **kw)


def forward(self, values, mask, t, static=None):
    info = getattr(self, "_hist", None)
    if info is None:
        return _orig_forward(self, values, mask, t, static)
    b_, c, w, h, wd = values.shape
    if static is None:  # no history given (e.g. the guess alone for never-observed cells): none outside
        static = torch.cat([self.static[:info["p"]].expand(b_, -1, h, wd), values.new_zeros(b_, 2 * c, h, wd)], 1)
    p = info["p"]
    S, n = static[:, p:p + c].float(), static[:, p + c:p + 2 * c].float()
    base = baseline(S, n)[:, :, None]  # (B, C, 1, H, W)
    m = mask.float()
    anomaly, _ = self.first_guess((values.float() - base) * m, mask)
    hist = anomaly + base
    if FORM == "subtract":
        fg = self.first_guess
        self._modules["first_guess"] = _Fixed(hist, fg)
        try:
            return _orig_forward(self, values, mask, t, static[:, :p])
        finally:
            self._modules["first_guess"] = fg
    extra = hist.reshape(b_, c * w, h, wd).to(static.dtype)
    if FORM == "drop":  # history given to a random half in training; at the end, on or off as STATE["mode"] says
        mode = STATE.get("mode")
        keep = (torch.rand(b_, device=extra.device) < 0.5) if mode is None else \
            torch.full((b_,), mode == "on", device=extra.device)
        keep = keep.to(extra.dtype)[:, None, None, None]
        extra = torch.cat([extra * keep, keep.expand(-1, 1, h, wd)], 1)
    return _orig_forward(self, values, mask, t, torch.cat([static[:, :p], extra], 1))


_orig_tw = engine.training_windows


def training_windows(values, spec, mean, std, *, window, tile=None, static=None, **kw):
    wins = _orig_tw(values, spec, mean, std, window=window, tile=tile, static=static, **kw)
    assert tile is None and isinstance(wins, engine.ArrayWindows), "prototype: numpy cubes, no tiles"
    STATE["extend"] = True
    STATE["grid"] = values.shape[-2:]
    pos = torch.as_tensor(static)
    x, ob = wins.values.numpy(), wins.observed.numpy()
    get = wins.get

    def get_with(picks, origins=None):
        xb, mb = get(picks, origins)[:2]
        jobs = [wins.index[int(k)] for k in picks]
        hist = per_window(x, ob, jobs, window)
        return xb, mb, torch.cat([pos.expand(len(jobs), -1, -1, -1), hist], 1)

    wins.get = get_with
    if wins.validation is not None:
        xs, ms, hs, _ = wins.validation
        jobs = [(i, s) for i, s, _, _ in wins.validation_jobs]
        hist = per_window(x, ob, jobs, window)
        wins.validation = (xs, ms, hs, torch.cat([pos.expand(len(jobs), -1, -1, -1), hist], 1))
    return wins


def impute_series_with_history():
    """``windows.impute_series`` rebuilt from its source, each batch carrying positions and its windows' history
    as per-sample static fields (the untiled path passes none); a prototype's shortcut, not a way to build it."""
    history_of_batch = ("torch.cat([denoiser.static[:denoiser._hist['p']].cpu().expand(len(batch), -1, -1, -1), "
                        "_PER_WINDOW(values, observed, [(i, s) for i, (s, _, _) in batch], window)], 1)"
                        ".to(generator_device)")
    src = inspect.getsource(windows.impute_series).replace("@torch.no_grad()\n", "")
    src = src.replace("        tiles = None\n",
                      f"        tiles = None if getattr(denoiser, '_hist', None) is None else {history_of_batch}\n")
    assert "_PER_WINDOW" in src, "windows.impute_series changed: update the prototype"
    namespace = dict(vars(windows), _PER_WINDOW=per_window)
    exec(compile(src, windows.__file__, "exec"), namespace)
    return torch.no_grad()(namespace["impute_series"])


def install(form: str) -> None:
    global FORM
    FORM = form
    if form == "plain":
        return
    Denoiser.__init__, Denoiser.forward = init, forward
    engine.training_windows = training_windows
    engine.impute_series = impute_series_with_history()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("form", choices=("plain", "subtract", "both", "drop"))
    parser.add_argument("case", choices=sorted(bench_accuracy.CASES) + ["era5-swath1500"])
    parser.add_argument("seed", type=int)
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int)
    budget.add_argument("--max-time", type=float)
    parser.add_argument("--era5-file", default=None, help="a local copy of the ERA5 sample (offline machines)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    install(args.form)
    held = {}
    scores = engine._context_scores

    def scored_both_ways(net, validate, history):  # drop: the held-back cells with history on and off
        for mode in ("off", "on"):
            STATE["mode"] = mode
            held[mode] = {c: validate(net, context=c)["nmse"] for c in ("sampled", "observed")}
        STATE["mode"] = None
        return scores(net, validate, history)

    if args.form == "drop":
        engine._context_scores = scored_both_ways
    name, kind, options = (("era5", "swath", dict(swath_width_km=1500)) if args.case == "era5-swath1500"
                           else bench_accuracy.CASES[args.case])
    truth = bench_accuracy.truth_of(name, args.era5_file)
    observed = xrimpute.observe(truth, kind, seed=args.seed, **options)
    true_values, _ = cube.to_array(truth)
    values, _ = cube.to_array(observed)
    gaps = ~np.isfinite(values)
    start = time.time()
    progress = sys.stderr.isatty()  # a bar on a terminal, none in the logs of runs side by side
    model = observed.ctxdiff.fit(seed=args.seed, progress=progress, steps=args.steps, max_time=args.max_time)
    row = dict(form=args.form, case=args.case, seed=args.seed, steps=model.history.step[-1],
               context=model.validation["context"], first_guess=model.validation["first_guess"])
    for mode in ("off", "on") if args.form == "drop" else (None,):
        STATE["mode"] = mode
        filled, _ = cube.to_array(observed.ctxdiff.impute(progress=progress))
        suffix = "" if mode is None else "_" + mode
        row["nmse" + suffix] = round(bench_accuracy.gap_nmse(filled, true_values, gaps)[0], 4)
        row["heldout" + suffix] = round(model.validation["nmse"] if mode is None else held[mode][row["context"]], 4)
    row["seconds"] = round(time.time() - start)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
