"""Chance or structure: gaps between scattered observations are filled by default, land stays NaN; flags say which."""
import numpy as np
import pytest
import torch
import xarray as xr

import xrimpute
from xrimpute.engine import FLAGS
from xrimpute.masks import gaps_only_where_never_observed, reach

from synthetic import blobs

TINY = dict(steps=4, batch_size=2, window=3, progress=False, verbose=False, device="cpu")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Fits here are a few steps; one thread keeps them from crowding the machine."""


def test_scattered_pixels_leave_no_unreachable_cell():
    rng = np.random.default_rng(0)
    seen = (rng.random((40, 32, 32)) < 0.01).any(0)
    found = reach(seen)
    assert (~seen).sum() > 400 and found.unreachable.sum() == 0  # two thirds of the grid never observed, all by chance


def test_a_land_block_among_dense_observations_is_unreachable_whole():
    seen = np.ones((24, 24), bool)
    seen[6:14, 8:18] = False
    found = reach(seen)
    assert found.threshold == pytest.approx(1.5) and np.array_equal(found.unreachable, ~seen)


def test_the_region_outside_a_station_network_is_unreachable_but_not_the_field_between_stations():
    rng = np.random.default_rng(1)
    stations = rng.random((64, 64)) < 0.03
    stations[:, 40:] = False
    found = reach(stations)
    assert found.unreachable[:, 50:].all() and not found.unreachable[:, :30].any()


def test_a_land_mask_given_leaves_no_region_growing_out_of_the_coast_into_sea_missed_by_chance():
    rng = np.random.default_rng(2)
    land = np.zeros((64, 64), bool)
    land[:, :20] = True
    seen = ~land & (rng.random(land.shape) < 0.3)  # most of the sea never observed, as sparse pixels leave it
    seen[:, 52:] = False  # and a region beyond every observation's reach
    sea = ~land & ~seen
    from_data = reach(seen)
    assert from_data.unreachable[land].all() and from_data.unreachable[:, 20:40][sea[:, 20:40]].sum() > 20  # coastal
    given = reach(seen, known=land)
    assert not given.unreachable[land].any()  # the mask itself is the user's, not the rule's
    assert not given.unreachable[:, 20:48].any() and given.unreachable[:, 56:].all()
    assert given.threshold == from_data.threshold


def pixel_cube(rate: float, frames: int = 40, size: int = 24, seed: int = 0) -> xr.DataArray:
    truth = blobs(n=1, t=frames, size=size, seed=seed)
    keep = np.random.default_rng(seed).random(truth.shape) < rate
    return truth.where(keep)


def test_one_percent_random_pixels_over_40_frames_come_back_without_nan():
    observed = pixel_cube(0.01)
    never = observed.isnull().all(["sample", "time"])
    assert int(never.sum()) > 200  # most of the grid was never observed, by chance
    model = xrimpute.fit(observed, **TINY)
    filled = model.impute(observed, K=2, progress=False)
    assert not filled.isnull().any()


def land_cube() -> tuple[xr.DataArray, xr.DataArray]:
    observed = pixel_cube(0.5, frames=8)
    land = xr.zeros_like(observed.isel(sample=0, time=0, drop=True), dtype=bool)
    land[6:14, 8:18] = True
    return observed.where(~land), land


def test_a_static_land_block_stays_nan_by_default_and_is_filled_on_request():
    observed, land = land_cube()
    model = xrimpute.fit(observed, mask="pixel", **TINY)
    filled = model.impute(observed, K=2, progress=False)
    assert filled.isnull().all(["sample", "time"]).equals(land)  # exactly the block, nothing else
    everywhere = model.impute(observed, K=2, progress=False, fill_never_observed=True)
    assert not everywhere.isnull().any()


def test_old_behaviour_leaves_every_never_observed_cell_nan():
    observed = pixel_cube(0.01)
    model = xrimpute.fit(observed, mask="pixel", **TINY)
    filled = model.impute(observed, K=2, progress=False, fill_never_observed=False)
    never = observed.isnull().all(["sample", "time"])
    assert filled.isnull().all(["sample", "time"]).equals(never)


def test_a_permanent_mask_given_to_fit_stays_nan_and_is_saved(tmp_path):
    observed = pixel_cube(0.5, frames=8)
    coast = xr.zeros_like(observed.isel(sample=0, time=0, drop=True), dtype=bool)
    coast[:, :2] = True  # a strip too narrow for the rule, observed at times: only the user can call it land
    model = xrimpute.fit(observed, mask="pixel", permanent_mask=coast, **TINY)
    loaded = xrimpute.load(model.save(tmp_path / "m.xri"))
    assert np.array_equal(loaded.permanent[0], coast.values)
    filled = loaded.impute(observed, K=2, progress=False)
    gaps = observed.isnull()
    assert filled.isnull().equals(gaps & coast)  # gaps on the coast stay NaN, all others are filled


def test_a_land_mask_given_to_fit_leaves_the_sea_beside_it_to_be_filled():
    observed = pixel_cube(0.01, size=32)
    land = xr.zeros_like(observed.isel(sample=0, time=0, drop=True), dtype=bool)
    land[:, :12] = True
    observed = observed.where(~land)
    from_data = xrimpute.fit(observed, mask="pixel", **TINY)
    given = xrimpute.fit(observed, mask="pixel", permanent_mask=land, **TINY)
    assert (from_data.permanent[0] & ~land.values).any()  # the rule alone takes sea beside the coast for land
    assert np.array_equal(given.permanent[0], land.values)


def test_a_model_file_without_permanent_mask_loads_with_every_never_observed_cell_permanent(tmp_path):
    observed, land = land_cube()
    observed = observed.where(~(observed.x == 0))  # one never-observed column the rule would fill
    model = xrimpute.fit(observed, mask="pixel", **TINY)
    path = model.save(tmp_path / "m.xri")
    payload = torch.load(path, weights_only=True)
    del payload["permanent"]
    torch.save(payload, path)
    old = xrimpute.load(path)
    assert np.array_equal(old.permanent, ~old.valid)
    never = observed.isnull().all(["sample", "time"])
    assert old.impute(observed, K=2, progress=False).isnull().all(["sample", "time"]).equals(never)


def test_flags_mark_observed_imputed_unsignalled_and_permanent_cells():
    observed, land = land_cube()
    observed = observed.where(~(observed.x == 0))  # never observed, but filled: no training signal
    model = xrimpute.fit(observed, mask="pixel", **TINY)
    filled, flags = model.impute(observed, K=2, progress=False, return_flags=True)
    assert flags.name == "u_flag" and flags.dtype == np.int8
    assert list(flags.attrs["flag_values"]) == [0, 1, 2, 3]
    assert flags.attrs["flag_meanings"] == "observed imputed imputed_without_training_signal permanent_mask"
    assert (flags == FLAGS["observed"]).equals(observed.notnull())
    assert ((flags == FLAGS["permanent_mask"]) == filled.isnull()).all()
    column = (observed.x == 0) & ~land
    assert bool((flags == FLAGS["imputed_without_training_signal"]).equals(column.broadcast_like(flags)))
    assert int((flags == FLAGS["imputed"]).sum()) > 1000


def test_flags_of_a_dataset_are_variables_linked_from_their_parent():
    observed, _ = land_cube()
    ds = observed.to_dataset()
    model = xrimpute.fit(ds, mask="pixel", **TINY)
    out = model.impute(ds.chunk({"time": 4}), K=2, progress=False, return_flags=True)
    assert out["u"].attrs["ancillary_variables"] == "u_flag" and out["u_flag"].chunks is not None
    assert int((out["u_flag"] == FLAGS["permanent_mask"]).sum()) == int(out["u"].isnull().sum())


def station_cube(size: int = 24, frames: int = 12, share: float = 0.05, seed: int = 0) -> xr.DataArray:
    truth = blobs(n=1, t=frames, size=size, seed=seed)
    stations = xr.DataArray(np.random.default_rng(seed).random((size, size)) < share, dims=("y", "x"))
    return truth.where(stations)


def test_a_station_cube_comes_back_filled_everywhere_with_the_off_station_cells_flagged():
    observed = station_cube()
    stations = observed.notnull().any(["sample", "time"])
    model = xrimpute.fit(observed, mask="station", **TINY)
    filled, flags = model.impute(observed, K=2, progress=False, return_flags=True)
    assert not filled.isnull().any()
    assert (flags == FLAGS["observed"]).all(["sample", "time"]).equals(stations)
    assert (flags == FLAGS["imputed_without_training_signal"]).all(["sample", "time"]).equals(~stations)


def test_station_validation_holds_out_whole_stations_for_every_step():
    from xrimpute.samplers import training_windows

    values = station_cube(share=0.1).values[:, None]  # (N, C, T, H, W)
    missing = values.copy()
    missing[:, :, [2, 7]] = np.nan  # whole steps missing: a station network still
    masks = xrimpute.masks
    for values, spec in ((values, masks.Station()), (missing, masks.Combined(masks.Station(), masks.TimeGap()))):
        windows = training_windows(values, spec, np.zeros(1, np.float32), np.ones(1, np.float32), window=3,
                                   val_fraction=0.2)
        held_cells = np.isfinite(values).any((0, 1, 2)) & ~windows.observed.numpy().any((0, 1, 2))
        stations = int(np.isfinite(values).any((0, 1, 2)).sum())
        assert 0.1 * stations < held_cells.sum() < 0.3 * stations  # about a fifth of the stations, whole
        held = windows.validation[2].numpy()
        assert held.any() and np.array_equal(held.any((0, 1, 2)), held_cells & held.any((0, 1, 2)))
        assert not (windows.observed.numpy()[:, :, :, held_cells]).any()  # never in training, at any step


def test_reconstruct_always_writes_the_flags_of_the_in_memory_imputation(tmp_path, cluster):
    from xrimpute.reconstruct import reconstruct

    observed, land = land_cube()
    ds = observed.isel(sample=0, drop=True).to_dataset()
    ds.chunk(time=4).to_zarr(tmp_path / "source.zarr", consolidated=False)
    model = xrimpute.fit(ds, mask="pixel", **TINY)
    model.save(tmp_path / "model.xri")
    reference = model.impute(ds, K=2, progress=False, return_flags=True)
    result = reconstruct(tmp_path / "source.zarr", tmp_path / "model.xri", tmp_path / "out.zarr", K=2,
                         client=cluster, progress=False).load()
    assert result["u_flag"].dtype == np.int8 and result["u"].attrs["ancillary_variables"] == "u_flag"
    assert result["u_flag"].attrs["flag_meanings"] == reference["u_flag"].attrs["flag_meanings"]
    np.testing.assert_array_equal(result["u_flag"].values, reference["u_flag"].values)
    assert (result["u_flag"] == FLAGS["permanent_mask"]).all("time").equals(land)


def test_check_reports_which_never_observed_cells_are_filled_and_which_stay_nan():
    from xrimpute import check

    observed, land = land_cube()
    observed = observed.where(~(observed.x == 0))  # never observed by chance: a column beside observed ones
    never = observed.isnull().all(["sample", "time"])
    found = check.reach(observed)
    assert (found == 2).equals(land) and ((found == 1) == (never & ~land)).all()
    assert int((never & ~land).sum()) >= 24 - 8  # the column, off the block
    coverage = check.check(observed, mask="pixel", max_windows=8, n_draws=16)
    assert coverage.attrs["never_observed_left_nan_share"] == pytest.approx(float(land.mean()), abs=1e-4)
    assert coverage.attrs["never_observed_filled_share"] == pytest.approx(float((never & ~land).mean()), abs=1e-4)
    assert "beyond the observations' reach (left NaN)" in coverage.attrs["summary"]


def test_station_models_see_no_position_by_default_and_keep_it_through_save_and_load(tmp_path):
    observed = station_cube()
    model = xrimpute.fit(observed, mask="station", **TINY)
    assert model.info["positions"] is False and model.denoiser.static.shape[0] == 0
    loaded = xrimpute.load(model.save(tmp_path / "m.xri"))
    xr.testing.assert_identical(loaded.impute(observed, K=2, progress=False),
                                model.impute(observed, K=2, progress=False))
    missing = xr.DataArray(np.isin(np.arange(12), [2, 7]), dims="time")  # whole steps missing: stations still
    assert xrimpute.fit(observed.where(~missing), mask="auto", **TINY).info["positions"] is False
    pixels = xrimpute.fit(pixel_cube(0.5, frames=8), mask="pixel", **TINY)
    assert pixels.info["positions"] is True and pixels.denoiser.static.shape[0] == 3


def test_station_validation_of_an_archive_holds_out_whole_stations_that_training_never_sees():
    import dask.array as da

    from xrimpute.samplers import training_windows

    values = station_cube(share=0.1, frames=24).values[:, None]  # (N, C, T, H, W)
    valid = np.isfinite(values).any((0, 2))
    windows = training_windows(da.from_array(values, chunks=(1, 1, 4, 24, 24)), xrimpute.masks.Station(),
                               np.zeros(1, np.float32), np.ones(1, np.float32), window=3, val_fraction=0.2,
                               valid=valid)
    try:
        held = windows.validation[2].numpy().any((0, 1, 2))
        assert held.any() and not windows.validation[1].numpy()[..., held].any()  # whole stations, every step
        seen = np.zeros_like(held)
        for _ in range(8):
            seen |= windows.sample(4, torch.Generator().manual_seed(0))[1].numpy().any((0, 1, 2))
        assert seen.any() and not (seen & held).any()  # training never sees a held-out station
    finally:
        windows.close()


def test_the_model_says_how_many_never_observed_cells_it_fills_and_leaves_nan():
    observed, land = land_cube()
    model = xrimpute.fit(observed, mask="pixel", **TINY)
    never = int(observed.isnull().all(["sample", "time"]).sum())
    assert f"{never - int(land.sum())} of {never} never-observed cells filled by default; {int(land.sum())} in " \
           "the permanent mask stay NaN" in repr(model)


def test_gaps_only_where_never_observed_tells_complete_station_series_from_outages_pixels_and_land():
    def cube(a):  # (sample, time, y, x) as (N, C, T, H, W)
        return np.asarray(a)[:, None]

    values = cube(station_cube())
    station = tuple(np.argwhere(np.isfinite(values).any(axis=(0, 1, 2)))[0])
    nothing = np.zeros((1, *values.shape[-2:]), bool)
    assert gaps_only_where_never_observed(values, nothing)
    assert gaps_only_where_never_observed(values, nothing, steps=5)  # read a few steps at a time
    outage = values.copy()
    outage[0, 0, -1, station[0], station[1]] = np.nan  # one station misses the last step
    assert not gaps_only_where_never_observed(outage, nothing, steps=5)
    assert not gaps_only_where_never_observed(cube(pixel_cube(0.5, frames=8)), nothing)
    _, land = land_cube()
    complete = cube(blobs(n=1, t=8, size=24, seed=0).where(~land))
    assert gaps_only_where_never_observed(complete, nothing)  # land not known as such: gaps there only
    assert not gaps_only_where_never_observed(complete, land.values[None])  # known: no gap to fill
    assert not gaps_only_where_never_observed(cube(blobs(n=1, t=8, size=24, seed=0)), nothing)


def test_a_default_fit_of_complete_station_series_trains_nothing_and_fills_as_a_trained_one(caplog, monkeypatch):
    import logging

    monkeypatch.setattr("xrimpute.training.CPU_BUDGET", 3.0)  # the default budget, short for the test
    observed = station_cube()
    options = dict(mask="station", batch_size=2, window=3, progress=False, device="cpu", seed=0)
    with caplog.at_level(logging.INFO, logger="xrimpute"):
        model = xrimpute.fit(observed, **options)
    assert model.history.step == [] and "the default time budget is not spent" in caplog.text
    assert "training:   none: every gap lies in a cell never observed" in repr(model)
    assert "correction_weight" not in model.validation  # an untrained network corrects nothing
    assert model.validation["first_guess_folds"] == 5 and "on every station (5 shares held back" in repr(model)
    trained = xrimpute.fit(observed, steps=4, verbose=False, **options)  # an explicit budget trains
    assert trained.history.step[-1] == 4
    filled, again = (m.impute(observed, K=2, progress=False, context="observed") for m in (model, trained))
    assert not filled.isnull().any()
    xr.testing.assert_allclose(filled, again, atol=1e-5)
    outage = observed.copy()
    outage[0, 0] = np.nan  # every station misses one step: gaps a network learns to fill
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xrimpute"):
        model = xrimpute.fit(outage, **options)
    assert "not spent" not in caplog.text and model.history.step


def test_imputation_runs_no_network_where_every_gap_lies_where_the_guess_fills_alone(monkeypatch):
    from xrimpute.nets import UNet

    observed = station_cube()
    options = dict(mask="station", batch_size=2, window=3, progress=False, device="cpu", seed=0, verbose=False)
    model = xrimpute.fit(observed, steps=2, **options)  # trained, yet its correction never reaches a gap
    passes = []
    forward = UNet.forward
    monkeypatch.setattr(UNet, "forward", lambda self, *args: passes.append(1) or forward(self, *args))
    filled, spread = model.impute(observed, K=3, progress=False, return_std=True, context="sampled")
    assert not passes  # the guess alone: a station network's fill in a fraction of the time
    seen = observed.notnull()
    assert filled.notnull().all() and filled.where(seen).equals(observed)
    assert (spread.where(seen) == 0).sum() == seen.sum()  # observations keep their values, with no spread
    assert float(spread.where(~seen).mean()) > 0  # the sampled contexts' spread of the guess
    alone, around = model.impute(observed, K=3, progress=False, return_std=True, context="observed")
    assert float(around.where(~seen).min()) > 0  # how far sampled contexts land from it: no cell claims certainty
    xr.testing.assert_equal(alone, model.impute(observed, K=3, progress=False, context="observed"))
    assert not passes
    outage = observed.copy()
    outage[0, 0] = np.nan  # gaps in observed cells, which the network corrects
    model.impute(outage, K=1, progress=False)
    assert passes


def test_every_context_station_scores_the_first_guesses_once_and_none_leans_on_what_knows_its_values():
    from xrimpute.engine import _first_guess, _with_station_folds
    from xrimpute.nets.prior import spatial_modes

    rng = np.random.default_rng(0)
    cells = rng.permutation(10 * 12)
    stations, withheld = np.zeros(120, bool), np.zeros(120, bool)
    stations[cells[:15]], withheld[cells[15:17]] = True, True
    xs = torch.as_tensor(rng.normal(size=(2, 1, 3, 10, 12)), dtype=torch.float32)
    ms = torch.as_tensor(stations.reshape(10, 12)).expand(2, 1, 3, 10, 12)
    hs = torch.as_tensor(withheld.reshape(10, 12)).expand(2, 1, 3, 10, 12)
    values, contexts, held = _with_station_folds(xs, ms, hs, folds=5, seed=0)
    assert len(values) == 12 and torch.equal(contexts[:2], ms) and torch.equal(held[:2], hs)
    shares, seen = held[2:].view(5, 2, 1, 3, 10, 12), contexts[2:].view(5, 2, 1, 3, 10, 12)
    assert torch.equal(shares.sum(0), ms.int())  # every context station held back in exactly one share
    assert torch.equal(seen | shares, ms.expand_as(seen)) and not (seen & shares).any()
    assert shares.any(dim=(1, 2, 3)).flatten(1).sum(1).tolist() == [3, 3, 3, 3, 3]
    # modes fitted to every training station know the values of the stations a share holds back: not scored there
    modes = spatial_modes(xs, ms)
    label, errors = _first_guess((xs, ms, hs, {}), {}, None, modes=modes, station_folds=5)
    assert errors and not any(name.endswith("modes") for name in errors)
    _, without = _first_guess((xs, ms, hs, {}), {}, None, modes=modes)
    assert any(name.endswith("modes") for name in without)
