"""End to end on CPU: fit on incomplete data only, impute, beat simple fillers, save and load."""
import numpy as np
import pytest
import torch
import xarray as xr

import xrimpute
from synthetic import blobs, latlon_cube
from test_nearby import blocks_anew, slow_waves
from xrimpute.cube import CubeError
from xrimpute.engine import Engine, choose_preset, offers_flow, offers_nearby
from xrimpute.masks import MaskSpecError
from xrimpute.model import ModelMismatch

# 120 steps: the thin-plate guess alone already passes the accuracy assertions on these blobs (benchmarks/RESULTS.md)
FIT = dict(steps=120, batch_size=16, progress=False, verbose=False, seed=0)


@pytest.fixture(scope="module")
def case():
    truth = blobs(n=6, t=16, size=24, seed=0)
    rng = np.random.default_rng(1)
    observed = truth.where(rng.random(truth.shape) < 0.2)
    model = observed.ctxdiff.fit(mask="pixel", **FIT)
    return truth, observed, model


def gap_mse(filled, truth, observed):
    return float(((filled - truth) ** 2).where(observed.isnull()).mean())


@pytest.mark.slow
def test_imputation_beats_observed_mean_and_linear_interpolation_in_time(case):
    truth, observed, model = case
    filled = observed.ctxdiff.impute(model=model, K=10, progress=False)
    assert int(filled.isnull().sum()) == 0
    ours = gap_mse(filled, truth, observed)
    linear = gap_mse(observed.interpolate_na("time", fill_value="extrapolate").fillna(float(observed.mean())),
                     truth, observed)
    mean_fill = gap_mse(observed.fillna(float(observed.mean())), truth, observed)
    assert ours < 0.6 * linear, (ours, linear)
    assert ours < 0.2 * mean_fill, (ours, mean_fill)


def test_observed_values_are_kept_exactly_and_layout_is_unchanged(case):
    _, observed, model = case
    shuffled = observed.transpose("x", "time", "sample", "y")
    filled = shuffled.ctxdiff.impute(model=model, K=2, progress=False)
    assert filled.dims == shuffled.dims and filled.attrs == shuffled.attrs and filled.name == "u"
    xr.testing.assert_identical(filled.where(shuffled.notnull()), shuffled)


def test_validation_skill_is_reported_from_held_back_observations(case):
    model = case[2]
    v = model.validation
    assert v["cells"] > 100 and v["skill"] > 0.5
    assert "skill" in repr(model) and "<table>" in model._repr_html_()


def test_the_cpu_default_network_is_the_narrow_preset(case):
    assert case[2].denoiser.config["preset"] == "narrow" and case[2].info["train"]["preset"] == "narrow"


def test_the_cpu_network_is_wider_where_the_gaps_lie_far_in_time_from_their_own_cells_observations():
    moving = np.isfinite(blocks_anew(np.zeros((2, 1, 30, 16, 20), np.float32)))
    still = np.ones((2, 1, 30, 16, 20), bool)
    still[0, :, :, :8, :10] = False  # blocks that never move, each observed in the other trajectory
    still[1, :, :, 8:, 10:] = False
    cpu = torch.device("cpu")
    assert choose_preset(cpu, offers_nearby(moving)) == "narrow" and choose_preset(cpu, offers_nearby(still)) == "lite"
    assert choose_preset(torch.device("cuda"), offers_nearby(still)) == "base"
    sparse = np.random.default_rng(0).random((2, 1, 30, 16, 20)) < 0.01  # far in time too, but drawn anew
    assert not offers_nearby(sparse) and choose_preset(cpu, False, stay_put=offers_flow(sparse)) == "narrow"
    values = np.where(still, np.concatenate([slow_waves(t=30)] * 2), np.nan).astype(np.float32)
    fit = dict(mask="block", steps=1, batch_size=2, progress=False, verbose=False)
    wide = Engine.fit_array(values, **fit)
    assert wide.denoiser.config["preset"] == "lite"
    pixels = np.where(moving, np.concatenate([slow_waves(t=30)] * 2), np.nan).astype(np.float32)
    assert Engine.fit_array(pixels, init=wide, **fit).denoiser.config["preset"] == "lite"  # an init keeps its own
    with pytest.raises(ModelMismatch, match="preset"):
        Engine.fit_array(pixels, init=wide, preset="narrow", **fit)


def test_fit_remembers_the_model_on_the_same_accessor(case):
    _, observed, model = case
    small = observed.isel(sample=[0])
    with pytest.raises(ValueError, match="call obj.ctxdiff.fit"):
        small.ctxdiff.impute()
    assert observed.ctxdiff.impute(K=1, progress=False).shape == observed.shape  # remembered by fit


def test_spread_is_returned_and_zero_on_observed_cells(case):
    _, observed, model = case
    filled, spread = model.impute(observed.isel(sample=[0]), K=6, return_std=True, progress=False)
    assert spread.name == "u_std"
    assert float(spread.where(observed.isel(sample=[0]).notnull()).max()) == 0
    assert float(spread.where(observed.isel(sample=[0]).isnull()).mean()) > 0


def test_save_load_gives_identical_imputations(case, tmp_path):
    _, observed, model = case
    path = model.save(tmp_path / "m.xri")
    loaded = xrimpute.load(path)
    one = observed.isel(sample=[1])
    a = model.impute(one, K=4, seed=3, progress=False)
    b = one.ctxdiff.impute(model=loaded, K=4, seed=3)
    xr.testing.assert_identical(a, b)
    assert loaded.spec == model.spec and loaded.channels == model.channels


def test_the_seed_fixes_the_fit_and_leaves_the_global_stream_alone(case):
    _, observed, _ = case
    small = observed.isel(sample=[0, 1])
    options = dict(FIT, steps=3, batch_size=4, val_fraction=0)

    def weights(seed):
        torch.manual_seed(123)
        model = small.ctxdiff.fit(mask="pixel", **{**options, "seed": seed})
        return torch.cat([p.flatten() for p in model.denoiser.parameters()]), torch.rand(1)

    first, after_first = weights(0)
    again, after_again = weights(0)
    other, _ = weights(1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(123)
    assert torch.equal(after_first, torch.rand(1)) and torch.equal(after_again, after_first)


def test_model_refuses_other_variables_and_grids(case):
    _, observed, model = case
    with pytest.raises(ModelMismatch, match="channels"):
        model.impute(observed.rename("v"), progress=False)
    with pytest.raises(ModelMismatch, match="grid"):
        model.impute(observed.isel(x=slice(0, 20)), progress=False)


def test_block_data_dataset_with_land_mask_end_to_end(tmp_path):
    """A two-variable Dataset with permanent land: never-observed cells stay NaN, others are filled."""
    ds = latlon_cube(t=12, nlat=12, nlon=12)
    rng = np.random.default_rng(0)
    keep = np.ones((12, 12, 12), bool)
    for k in range(12):  # 3x3 blocks, two missing per step
        blocks = np.ones(9, bool)
        blocks[rng.choice(9, 2, replace=False)] = False
        keep[k] = np.kron(blocks.reshape(3, 3), np.ones((4, 4))).astype(bool)
    keep[:, :, :2] = False  # land, never observed
    obs = ds.where(xr.DataArray(keep, dims=("time", "lat", "lon")))
    obs["lsm"] = ds["lsm"]
    model = obs.ctxdiff.fit(mask="auto", **{**FIT, "steps": 30})
    assert isinstance(model.spec, xrimpute.masks.Block) and model.spec.grid == (3, 3)
    filled = obs.ctxdiff.impute(K=2, progress=False)
    assert set(filled.data_vars) == {"t2m", "sp", "lsm"} and filled.attrs == ds.attrs
    assert filled["t2m"].attrs == ds["t2m"].attrs
    assert bool(filled["t2m"].isel(lon=slice(0, 2)).isnull().all())
    assert int(filled["t2m"].isel(lon=slice(2, None)).isnull().sum()) == 0
    everywhere = obs.ctxdiff.impute(K=2, fill_never_observed=True, progress=False)
    assert int(everywhere["t2m"].isnull().sum()) == 0


def test_checkpoint_resumes_and_refuses_another_model(tmp_path):
    obs = blobs(n=2, t=6, size=16).where(np.random.default_rng(0).random((2, 6, 16, 16)) < 0.5)
    ckpt = tmp_path / "state.pt"
    first = obs.ctxdiff.fit(mask="pixel", checkpoint=ckpt, **{**FIT, "steps": 20})
    assert ckpt.exists() and first.history.step[-1] == 20
    resumed = obs.ctxdiff.fit(mask="pixel", checkpoint=ckpt, **{**FIT, "steps": 40})
    assert resumed.history.step[:1] == first.history.step[:1] and resumed.history.step[-1] == 40
    with pytest.raises(Exception, match="was written for"):
        obs.ctxdiff.fit(mask="pixel", window=2, checkpoint=ckpt, **{**FIT, "steps": 40})


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: xr.DataArray(np.full((4, 5, 6), np.nan), dims=("time", "lat", "lon")), CubeError, "all NaN"),
        (lambda: xr.DataArray(np.ones((4, 5, 6)), dims=("t0", "row", "col")), CubeError, "could not find"),
    ],
)
def test_bad_input_gets_a_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        make().ctxdiff.fit(**FIT)


def test_a_window_longer_than_the_series_is_refused():
    with pytest.raises(CubeError, match="fewer than window"):
        xr.DataArray(np.ones((2, 5, 6)), dims=("time", "lat", "lon")).ctxdiff.fit(window=3, **FIT)


def test_the_default_window_shrinks_to_a_short_series():
    obs = blobs(n=1, t=3, size=8)
    model = obs.ctxdiff.fit(**{**FIT, "steps": 2})
    assert model.window == 3


def test_unknown_mask_is_refused_before_training():
    obs = blobs(n=1, t=4, size=8)
    with pytest.raises(MaskSpecError, match="unknown mask 'blox'"):
        obs.ctxdiff.fit(mask="blox", **FIT)
