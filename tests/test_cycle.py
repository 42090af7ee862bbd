"""Each cell's daily or annual cycle as a baseline of the first guess: read from dates, fitted, chosen, every path."""
import re
import time
import tracemalloc
import weakref

import dask
import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr
from dask import is_dask_collection

import xrimpute
from test_lazy import imputed_alike_on_every_path
from xrimpute import cube
from xrimpute.cycle import NEIGHBOURHOODS, cycle_at, departures_totals, fit_cycle, without_cycle
from xrimpute.engine import ModelMismatch, offers_cycle
from xrimpute.passes import compute_pass
from xrimpute.samplers import ChunkedWindows, training_windows
from xrimpute.windows import series_totals

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hourly(days=8, h=12, w=16, seed=0, swing=False):
    """An hourly field whose day swings by a different amount and at a different hour in every cell (neighbours
    tell little of it), over weather that drifts slowly and smoothly; with ``swing``, also the day's swing."""
    rng = np.random.default_rng(seed)
    t = days * 24
    hour = np.arange(t) % 24
    amplitude, lag = rng.uniform(1, 4, (h, w)), rng.uniform(0, 2 * np.pi, (h, w))
    day = amplitude * np.cos(2 * np.pi * hour[:, None, None] / 24 - lag) + 0.3 * amplitude * np.cos(
        4 * np.pi * hour[:, None, None] / 24)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    drift = np.cumsum(rng.standard_normal((t, 3)) * 0.15, axis=0)
    weather = np.einsum("tk,khw->thw", drift, np.stack([np.ones_like(y), y, x]))
    field = (day + weather + 0.05 * rng.standard_normal((t, h, w))).astype(np.float32)
    times = np.datetime64("2021-06-01") + np.arange(t) * np.timedelta64(1, "h")
    coords = {"time": times, "latitude": ("latitude", np.linspace(50, 60, h), {"units": "degrees_north"}),
              "longitude": ("longitude", np.linspace(-10, 5, w), {"units": "degrees_east"})}
    data = xr.Dataset({"t2m": (("time", "latitude", "longitude"), field)}, coords=coords)
    return (data, day) if swing else data


def gap_nmse(filled: xr.Dataset, truth: xr.Dataset, observed: xr.Dataset) -> float:
    gaps = observed.t2m.isnull().values
    return float(((filled.t2m.values - truth.t2m.values)[gaps] ** 2).mean() / truth.t2m.values[gaps].var())


def test_the_phase_of_each_step_comes_from_its_date_in_any_calendar():
    truth = hourly(days=4)
    kind, phase = cube.cycle_phase(truth, cube.layout_of(truth))
    assert kind == "daily"
    np.testing.assert_allclose(phase[:25], np.r_[np.arange(24) / 24, 0.0])
    assert cube.cycle_phase(truth.isel(time=slice(0, 48)), cube.layout_of(truth)) is None  # two days: too short
    monthly = xr.Dataset({"sst": (("time", "lat", "lon"), np.zeros((36, 2, 2)))},
                         coords={"time": xr.date_range("2000-01-01", periods=36, freq="MS", calendar="360_day",
                                                       use_cftime=True), "lat": [0.0, 1.0], "lon": [0.0, 1.0]})
    kind, phase = cube.cycle_phase(monthly, cube.layout_of(monthly))
    assert kind == "annual"
    np.testing.assert_allclose(phase[:13], np.r_[np.arange(12) / 12, 0.0])
    yearly = monthly.isel(time=slice(0, 36, 12))
    assert cube.cycle_phase(yearly, cube.layout_of(yearly)) is None  # one step a year: no cycle to see
    assert cube.cycle_phase(yearly, cube.layout_of(yearly), "annual")[1].tolist() == [0.0, 0.0, 0.0]
    numbered = monthly.assign_coords(time=np.arange(36.0))
    assert cube.cycle_phase(numbered, cube.layout_of(numbered)) is None


def test_each_cells_cycle_is_fitted_from_its_own_observations_and_carried_to_cells_with_too_few():
    truth, day = hourly(swing=True)
    values = torch.as_tensor(truth.t2m.values[None, None])
    observed = torch.as_tensor(np.random.default_rng(1).random(values.shape) < 0.5)
    observed[..., 3, 4] = False
    observed[..., :5, 3, 4] = True  # five observations: too few for a cycle of its own
    phase = cube.cycle_phase(truth, cube.layout_of(truth))[1]
    [cycle] = fit_cycle(torch.where(observed, values, 1e6), observed, phase)  # unobserved values never read
    assert cycle.shape == (4, 1, 12, 16)
    swing = cycle_at(cycle, phase)[0]
    np.testing.assert_allclose(swing[:24, 1:3], day[:24, 1:3], atol=0.1 * np.abs(day).max())  # each cell's own
    neighbours = cycle[:, 0, 2:5, 3:6].reshape(4, -1)[:, [0, 1, 2, 3, 5, 6, 7, 8]]
    # the neighbours' (normalised convolution), not nothing: its five observations see hours 0-4 only, the cells round
    # it every hour
    assert torch.allclose(cycle[:, 0, 3, 4], neighbours.mean(1), atol=0.15 * float(neighbours.abs().max()))
    assert float(np.abs(swing.mean(0)).max()) < 0.05  # the cycle has no mean: the guess finds each cell's level


def sparse_monthly(seed=0):
    """Five years of a monthly field whose annual cycle changes smoothly across the grid, over year-to-year change
    as large, and its pixels at 12 % (seven observations a cell): the true cycle and the observed cube."""
    rng = np.random.default_rng(seed)
    t, h, w = 60, 24, 32
    phase = (np.arange(t) % 12) / 12
    y, x = np.mgrid[0:h, 0:w]
    amplitude = 1.0 + 0.5 * np.sin(y / h * np.pi) + 0.3 * x / w
    season = amplitude * np.cos(2 * np.pi * (phase[:, None, None] - 0.1))
    years = np.cumsum(rng.standard_normal((t, 1, 1)), 0) * 0.3 + rng.standard_normal((t, h, w))
    field = (season + years + 3 * y / h).astype(np.float32)
    coords = {"time": xr.date_range("2000-01-01", periods=t, freq="MS"),
              "latitude": ("latitude", np.linspace(30, 53, h), {"units": "degrees_north"}),
              "longitude": ("longitude", np.linspace(0, 31, w), {"units": "degrees_east"})}
    truth = xr.Dataset({"sst": (("time", "latitude", "longitude"), field)}, coords=coords)
    return season, truth.where(rng.random(field.shape) < 0.12)


def test_cells_observed_a_few_times_each_share_their_neighbours_cycle(monkeypatch):
    """Sparse pixels of a monthly series: each cell's own few observations would add their noise to the cycle;
    pooled over its neighbours the cycle is what they share, and a fit keeps that one."""
    # whether to keep a cycle at all is the margin's (tests/test_modes.py); here the cycle's lead is too small for it:
    # imputed after fit(steps=1), the guess on the pooled cycle fills this cube's gaps 2-4 % better than none
    # (seeds 0-3, benchmarks/RESULTS.md)
    monkeypatch.setattr(xrimpute.engine, "BASELINE_MARGIN", 1.0)
    season, observed = sparse_monthly()
    values = torch.as_tensor(observed.sst.values[None, None])
    phase = cube.cycle_phase(observed, cube.layout_of(observed))[1]
    own, shared = (cycle_at(cycle, phase)[0] for cycle in fit_cycle(torch.nan_to_num(values), values.isfinite(),
                                                                     phase, neighbourhoods=NEIGHBOURHOODS))
    error = float(((shared - season) ** 2).mean())
    assert error < 0.05 * (season**2).mean()  # the shared cycle, nearly exact
    assert error < 0.1 * float(((own - season) ** 2).mean())  # where each cell's own fit is mostly noise
    model = observed.ctxdiff.fit(mask="pixel", steps=2, batch_size=2, progress=False, verbose=False, seed=0,
                                 compare_classical=False)
    assert model.info["cycle"] == "annual", model.validation["first_guess_nmse"]
    assert model.validation["first_guess"].endswith(" + annual cycle (pooled over 8 cells)")
    guesses = model.validation["first_guess_nmse"]  # both candidates scored, and said so
    assert any(label.endswith(" + annual cycle (each cell's own)") for label in guesses), guesses
    kept = cycle_at(model.engine.cycle, phase, model.engine.std)  # the pooled one (the held-back cells hidden)
    assert float(((kept[0] - season) ** 2).mean()) < 0.05 * (season**2).mean()


def test_a_cycle_fitted_in_memory_holds_a_block_of_steps_in_double_precision_at_a_time(monkeypatch):
    rng = np.random.default_rng(0)
    monkeypatch.setattr(xrimpute.cycle, "CELLS_AT_ONCE", 40 * 40 * 24)  # a day of steps at a time

    def peak(steps):  # bytes held at most beyond the series, and the cycle, blocked and at once
        values = torch.as_tensor(rng.random((1, 1, steps, 40, 40), dtype=np.float32))
        observed = torch.as_tensor(rng.random(values.shape) < 0.5)
        phase = (np.arange(steps) % 24) / 24
        tracemalloc.start()
        try:
            [blocked] = fit_cycle(values, observed, phase)
            most = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        with monkeypatch.context() as whole:
            whole.setattr(xrimpute.cycle, "CELLS_AT_ONCE", 2**30)
            torch.testing.assert_close(blocked, fit_cycle(values, observed, phase)[0])
        return most

    short, long = peak(240), peak(960)
    assert long < 1.2 * short, (short, long)  # the blocks' sums are summed as they come, not kept
    assert long < 0.4 * 960 * 40 * 40 * 4, long  # a block's doubles, well under the series' own bytes


def test_the_departures_in_memory_make_a_block_of_steps_of_the_cycle_at_a_time(monkeypatch):
    rng = np.random.default_rng(0)
    values = np.where(rng.random((1, 2, 480, 40, 40)) < 0.5, rng.random((1, 2, 480, 40, 40)), np.nan).astype(np.float32)
    amplitudes, phase = rng.standard_normal((4, 2, 40, 40)).astype(np.float32), (np.arange(480) % 24) / 24
    scale = np.array([2.0, 0.5], np.float32)
    monkeypatch.setattr(xrimpute.cycle, "CELLS_AT_ONCE", 2 * 40 * 40 * 24)  # a day of steps at a time
    tracemalloc.start()
    try:
        departures = without_cycle(values, amplitudes, phase, scale)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.2 * values.nbytes, peak / values.nbytes  # the result and a day of the cycle (3 times before)
    np.testing.assert_allclose(departures, values - cycle_at(amplitudes, phase, scale)[None], rtol=0, atol=1e-6)
    assert np.array_equal(np.isnan(departures), np.isnan(values))


def test_no_cycle_where_the_observations_see_only_some_hours_of_the_day():
    truth, day = hourly(swing=True)
    values = torch.as_tensor(truth.t2m.values[None, None])
    phase = cube.cycle_phase(truth, cube.layout_of(truth))[1]
    hour = np.round(phase * 24).astype(int)
    passes = torch.as_tensor(np.isin(hour, [10, 11, 12, 13, 21, 22, 23]))[None, None, :, None, None]
    # a swath near the same hours every day: the day's swing at the other hours is never seen
    assert not any(cycle.any() for cycle in fit_cycle(values, passes.expand(values.shape), phase,
                                                      neighbourhoods=NEIGHBOURHOODS))
    six_hourly = slice(0, None, 6)  # a series of 6-hourly steps never sees the day's second sine, nor needs it
    [cycle] = fit_cycle(values[:, :, six_hourly], torch.ones_like(values[:, :, six_hourly], dtype=bool),
                        phase[six_hourly])
    swing = cycle_at(cycle, phase[six_hourly])[0]
    truth_swing = day[six_hourly] - day[six_hourly].mean(0)  # at those hours, less its mean there
    np.testing.assert_allclose(swing - swing.mean(0), truth_swing, atol=0.15 * np.abs(day).max())


def test_an_archive_gives_the_cycle_of_the_cells_training_sees_in_one_pass_and_its_departures_chunk_by_chunk():
    truth = hourly()
    values = truth.t2m.values[None, None]
    observed = np.random.default_rng(1).random(values.shape) < 0.5
    data = np.where(observed, values, np.nan).astype(np.float32)
    phase = cube.cycle_phase(truth, cube.layout_of(truth))[1]
    mean, std = np.array([1.0], np.float32), np.array([2.0], np.float32)
    archive = da.from_array(data, chunks=(1, 1, 24, 6, 16))
    windows = ChunkedWindows(archive, 5, mean, std, reserved=[(0, 48, 0, 0), (0, 120, 0, 0)])
    try:
        lazy = windows.training_series()
        assert all(is_dask_collection(part) for part in lazy)
        seen = observed.copy()
        seen[:, :, 48:53] = seen[:, :, 120:125] = False  # the steps of the windows kept for validation
        cycles = fit_cycle(*lazy, phase, neighbourhoods=NEIGHBOURHOODS)
        for cycle, in_memory in zip(cycles, fit_cycle((data - 1) / 2, seen, phase, neighbourhoods=NEIGHBOURHOODS)):
            torch.testing.assert_close(cycle, in_memory)
        cycle = cycles[0]
        assert not torch.allclose(cycle, fit_cycle((data - 1) / 2, observed, phase)[0])
    finally:
        windows.close()
    departures = without_cycle(archive, cycle, phase, std)
    assert departures.chunks == archive.chunks
    np.testing.assert_allclose(departures.compute(), data - 2 * cycle_at(cycle, phase)[None], rtol=1e-6)


FIT = dict(mask="block", steps=2, batch_size=2, progress=False, verbose=False, seed=0, compare_classical=False)


@pytest.fixture(scope="module")
def blocks():
    """The hourly field, its moving blocks, and a model fitted to them."""
    truth = hourly()
    observed = xrimpute.observe(truth, "block", grid=(3, 3), observed=5, seed=0)
    return truth, observed, observed.ctxdiff.fit(**FIT)


def test_a_fit_fills_departures_from_the_daily_cycle_where_the_held_back_cells_say_so_and_keeps_it(blocks, tmp_path):
    truth, observed, model = blocks
    assert model.info["cycle"] == "daily", model.validation["first_guess_nmse"]
    assert model.validation["first_guess"].endswith(" + daily cycle (each cell's own)")  # a month of hours each
    errors = model.validation["first_guess_nmse"]
    plain = min(error for label, error in errors.items() if " cycle (" not in label)
    assert errors[model.validation["first_guess"]] < 0.7 * plain, errors
    assert "departures from each cell's daily cycle" in repr(model)
    filled = model.impute(observed, K=2, progress=False)
    seen = observed.t2m.notnull().values
    np.testing.assert_array_equal(filled.t2m.values[seen], observed.t2m.values[seen])  # observations bit for bit
    undated = observed.assign_coords(time=np.arange(observed.sizes["time"]))
    without = undated.ctxdiff.fit(**FIT)  # no dates: no cycle to try
    assert without.info["cycle"] is None
    assert not any(" cycle (" in label for label in without.validation["first_guess_nmse"])
    assert gap_nmse(filled, truth, observed) < 0.7 * gap_nmse(without.impute(undated, K=2, progress=False), truth,
                                                              undated)
    with pytest.raises(ModelMismatch, match="needs dates"):
        model.impute(undated, progress=False)
    again = xrimpute.load(model.save(tmp_path / "model.xri"))
    assert again.info["cycle"] == "daily"
    xr.testing.assert_equal(again.impute(observed, K=2, progress=False), filled)
    with pytest.warns(UserWarning, match="low_noise"):  # samples of a model trained for single steps
        members = model.sample(observed, n=1, steps=2, K=2, progress=False)
    gaps = observed.t2m.isnull().values
    assert np.isfinite(members.t2m.values).all()
    assert float(np.abs(members.t2m.values[0][gaps] - truth.t2m.values[gaps]).mean()) < 2.0  # on the day's swing


def test_an_init_continues_on_the_departures_from_its_own_cycle(blocks):
    truth, observed, model = blocks
    assessed = {**FIT, "compare_classical": True}
    continued = observed.ctxdiff.fit(init=model, **assessed)
    assert continued.info["cycle"] == "daily"
    np.testing.assert_array_equal(continued.engine.cycle, model.engine.cycle)
    # the classical fillers are scored on the values, as in a fresh fit (the same held-back cells), not on departures
    fresh = observed.ctxdiff.fit(**assessed).validation["classical"]
    scored = continued.validation["classical"]
    assert "interpolate" in scored and scored.keys() <= fresh.keys(), (scored, fresh)
    for method, nmse in scored.items():
        assert nmse == pytest.approx(fresh[method], rel=1e-5), method
    filled = continued.impute(observed, K=2, progress=False)
    assert gap_nmse(filled, truth, observed) < 1.2 * gap_nmse(model.impute(observed, K=2, progress=False), truth,
                                                              observed)


def test_a_fit_from_an_archive_or_on_tiles_tries_the_cycle_too_and_an_init_continues_from_an_archive(blocks):
    truth, observed, model = blocks
    archive = observed.chunk(time=48)
    lazy = archive.ctxdiff.fit(**FIT)
    assert lazy.info["cycle"] == "daily", lazy.validation["first_guess_nmse"]
    # the same cycle but for the cells each holds back (in an archive, whole windows)
    np.testing.assert_allclose(lazy.engine.cycle, model.engine.cycle, atol=0.1 * np.abs(model.engine.cycle).max())
    continued = archive.ctxdiff.fit(init=lazy, **FIT)
    assert continued.info["cycle"] == "daily"
    filled = continued.impute(archive, K=2, progress=False)
    assert is_dask_collection(filled.t2m.data)
    in_memory = gap_nmse(model.impute(observed, K=2, progress=False), truth, observed)
    assert gap_nmse(filled.compute(), truth, observed) < 1.5 * in_memory
    tiled = observed.ctxdiff.fit(tile=(8, 8), **FIT)
    assert tiled.info["cycle"] == "daily", tiled.validation["first_guess_nmse"]


def test_the_candidate_cycles_of_an_archive_take_their_validation_windows_from_the_values_read_not_a_new_read(
        blocks, monkeypatch):
    _, observed, _ = blocks
    reads, compared, trying = [], [], []

    def counted(block, block_info=None):
        reads.append(block_info[0]["chunk-location"])
        return block

    archive = observed.chunk(time=48)
    archive["t2m"] = archive.t2m.copy(data=archive.t2m.data.map_blocks(counted, dtype=np.float32))

    def compared_with_a_read(values, **kwargs):
        windows = training_windows(values, **kwargs)
        if kwargs.get("reserved_stretches"):  # the same windows as a read of the departures from the archive gives
            before = len(reads)
            read = training_windows(values, **{**kwargs, "reserved_stretches": None})
            read.close()
            del reads[before:]  # this comparison's reads are not the fit's
            (*derived, inputs), (*fresh, fresh_inputs) = windows.validation, read.validation
            assert inputs.keys() == fresh_inputs.keys() and "nearby" in inputs
            for mine, theirs in zip([*derived, *inputs.values()], [*fresh, *fresh_inputs.values()]):
                torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
            compared.append(kwargs["reserved_stretches"])
        return windows

    def counted_try(*args, **kwargs):
        before = len(reads)
        try:
            return try_cycle(*args, **kwargs)
        finally:
            trying.append(reads[before:])

    try_cycle = xrimpute.engine._try_cycle
    monkeypatch.setattr(xrimpute.engine, "training_windows", compared_with_a_read)
    monkeypatch.setattr(xrimpute.engine, "_try_cycle", counted_try)
    with dask.config.set(scheduler="synchronous"):
        model = archive.ctxdiff.fit(**FIT)
    assert model.info["cycle"] == "daily" and "each cell's own" in model.validation["first_guess"]
    # each candidate cycle's windows from the values' stretches, and the winner's made again (it was not the last)
    assert len(compared) == len(NEIGHBOURHOODS) + 1
    # trying the cycles reads each chunk once, for the cycle's pass, and no validation window again
    [chunks] = trying
    assert len(chunks) == len(set(chunks)) == archive.t2m.data.npartitions, chunks


def test_a_fit_in_memory_holds_the_windows_of_one_candidate_cycle_at_a_time(blocks, monkeypatch):
    """Each candidate's windows hold a copy of the cube: the values' and one candidate's are alive at once, the
    winner's made again when it was not the last scored."""
    _, observed, model = blocks
    made, alive, most = [], [], [0]

    def counted(*args, **kwargs):
        windows = training_windows(*args, **kwargs)
        made.append([windows.values.clone(), *windows.validation[:3]])
        alive.append(weakref.ref(windows))
        most[0] = max(most[0], sum(ref() is not None for ref in alive))
        return windows

    monkeypatch.setattr(xrimpute.engine, "training_windows", counted)
    again = observed.ctxdiff.fit(**FIT)
    assert again.info["cycle"] == "daily" and "each cell's own" in again.validation["first_guess"]
    assert len(made) == 4 and most[0] == 2, (len(made), most)  # the values, two candidates, the first again
    for first, remade in zip(made[1], made[3]):
        torch.testing.assert_close(remade, first, rtol=0, atol=0)
    assert not torch.equal(made[1][0], made[2][0])
    assert again.validation["first_guess_nmse"] == model.validation["first_guess_nmse"]


def test_the_passes_over_an_archive_before_training_show_a_progress_bar(blocks, capsys):
    _, observed, _ = blocks
    archive = observed.chunk(time=48)
    quiet = dict(FIT, steps=1, history=True)
    model = archive.ctxdiff.fit(**dict(quiet, progress=True))
    assert model.info["cycle"] == "daily"
    shown = capsys.readouterr().err
    assert "each cell's cycle: reading the archive" in shown
    # once: the history of the departures from every candidate cycle comes from the values' and the cycle's pass
    assert shown.count("each cell's history: reading the archive:   0%") == 1, shown
    archive.ctxdiff.fit(**quiet)  # progress=False
    assert "reading the archive" not in capsys.readouterr().err


def test_the_passes_show_their_bar_on_a_distributed_cluster_too(blocks, cluster, capsys):
    """Dask's local callbacks never fire on a cluster: the bar follows the scheduler's count of the pass's tasks,
    and leaves nothing behind on it."""
    def slow(block):
        time.sleep(0.05)
        return block * 2

    values = da.ones((40, 30), chunks=(5, 30)).map_blocks(slow)
    with dask.config.set(scheduler=cluster):
        total, mean = compute_pass(values.sum(), values.mean(), desc="summing the test's archive")
        assert (total, mean) == (2400.0, 2.0)
        shown = capsys.readouterr().err
        assert re.search(r"summing the test's archive: +100%.*\| (\d+)/\1 ", shown), shown
        _, observed, _ = blocks
        model = observed.chunk(time=48).ctxdiff.fit(**dict(FIT, steps=1, progress=True))
        assert model.info["cycle"] == "daily"
        assert "each cell's cycle: reading the archive" in capsys.readouterr().err
    assert cluster.run_on_scheduler(lambda dask_scheduler: [name for name in dask_scheduler.plugins
                                                            if name.startswith("xrimpute")]) == []


@pytest.mark.parametrize("lazy", [False, True])
def test_the_history_of_the_departures_is_what_a_pass_over_them_sums(blocks, lazy):
    _, observed, _ = blocks
    values, layout = cube.to_array(observed)
    phase = cube.cycle_phase(observed, layout)[1]
    values = da.from_array(values, chunks=(1, 1, 48, 12, 16)) if lazy else values
    mean, std = np.array([280.0], np.float32), np.array([3.0], np.float32)
    build = dict(spec=xrimpute.masks.resolve("block", np.isfinite(np.asarray(values)), verbose=False),
                 mean=mean, std=std, window=5, history=True, seed=0)
    plain = training_windows(values, **build)
    try:
        cycles, sums = fit_cycle(*plain.training_series(), phase, neighbourhoods=NEIGHBOURHOODS, return_sums=True)
        for cycle in cycles:
            departures = without_cycle(values, cycle, phase, std)
            derived = training_windows(departures, **build,
                                       training_totals=departures_totals(plain.totals, sums, cycle))
            summed = training_windows(departures, **build)
            try:
                np.testing.assert_allclose(np.asarray(derived.totals), np.asarray(summed.totals), atol=1e-3)
                assert not np.allclose(np.asarray(derived.totals), np.asarray(plain.totals), atol=1)
                np.testing.assert_allclose(derived.validation[3]["history"], summed.validation[3]["history"],
                                           atol=1e-3)
                torch.testing.assert_close(derived.validation[0], summed.validation[0])
            finally:
                derived.close()
                summed.close()
    finally:
        plain.close()


def test_a_fit_leaning_on_history_tries_the_cycle_and_sums_the_history_of_its_departures(blocks):
    truth, observed, _ = blocks
    model = observed.ctxdiff.fit(history=True, **FIT)
    engine = model.engine
    assert engine.denoiser.uses_history and model.info["cycle"] == "daily", model.validation["first_guess_nmse"]
    values, layout = cube.to_array(observed)
    phase = cube.cycle_phase(observed, layout)[1]
    departures = values - engine.cycle_shift(values.shape, phase)
    np.testing.assert_allclose(engine.totals(values, phase), series_totals(departures, engine.mean, engine.std))
    with pytest.raises(xrimpute.errors.ArgumentError, match="needs phase="):
        engine.totals(values)
    same = dict(K=2, seed=1, batch_size=1, progress=False)
    filled = model.impute(observed, **same)
    xr.testing.assert_allclose(model.impute(observed.chunk(time=48), **same).compute(), filled, rtol=1e-6, atol=1e-5)
    undated = observed.assign_coords(time=np.arange(observed.sizes["time"]))
    without = undated.ctxdiff.fit(history=True, **FIT)
    assert gap_nmse(filled, truth, observed) < 0.7 * gap_nmse(without.impute(undated, **same), truth, undated)


def test_a_cycle_is_tried_only_where_few_cells_imputation_fills_were_never_observed():
    everywhere = np.ones((1, 33, 49), bool)
    assert offers_cycle(everywhere, ~everywhere)
    stations = np.zeros_like(everywhere)
    stations[0, ::6, ::7] = True  # 42 stations: the cells between them take their neighbours' cycle
    assert not offers_cycle(stations, ~everywhere)
    assert offers_cycle(stations, ~stations)  # the rest beyond reach (land): left NaN, no cycle needed there
    sea = everywhere.copy()
    sea[0, 10:20, 10:20] = False  # an island of 100 cells never observed, a few of them within reach
    reach = sea.copy()
    reach[0, 10:20, 10:12] = True
    assert offers_cycle(sea, ~reach)


@pytest.mark.slow
def test_a_cycle_model_imputes_lazily_and_on_a_cluster_as_in_memory(tmp_path, cluster):
    truth = hourly(days=5, h=12, w=12)
    observed = xrimpute.observe(truth, "block", grid=(3, 3), observed=5, seed=0)
    observed.chunk(time=24).to_zarr(tmp_path / "source.zarr", consolidated=False)
    model = xrimpute.fit(observed, mask="block", steps=2, batch_size=2, progress=False, verbose=False, seed=0)
    assert model.info["cycle"] == "daily", model.validation["first_guess_nmse"]
    model.save(tmp_path / "model.xri")
    reference, _ = imputed_alike_on_every_path(tmp_path, observed, model, cluster)
    assert int(reference.to_array().isnull().sum()) == 0
