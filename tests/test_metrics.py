import math

import numpy as np
import pytest
import xarray as xr
from scipy.stats import norm

from xrimpute import metrics

PRED = np.array([1.0, 2.0, 3.0, 4.0])
TRUTH = np.array([1.0, 2.0, 5.0, 8.0])  # errors 0, 0, -2, -4; mean 4, variance 7.5


def test_deterministic_scores_by_hand():
    assert metrics.mse(PRED, TRUTH) == 5.0
    assert metrics.rmse(PRED, TRUTH) == math.sqrt(5.0)
    assert metrics.nmse(PRED, TRUTH) == pytest.approx(5.0 / 7.5)
    assert metrics.mse(PRED, TRUTH, where=[True, True, False, True]) == pytest.approx(16 / 3)
    observed = np.array([1.0, np.nan, 3.0, np.nan])  # gaps at 2 and 8: errors 0 and -4
    assert metrics.mse_gaps(PRED, TRUTH, observed) == 8.0


def test_nan_in_truth_is_skipped_but_nan_in_prediction_is_not():
    truth = np.array([1.0, np.nan, 5.0])
    assert metrics.mse(np.array([2.0, 100.0, 5.0]), truth) == 0.5
    assert math.isnan(metrics.mse(np.array([2.0, 0.0, np.nan]), truth))


def cube(values, dims=("time", "lat", "lon")):
    shape = dict(zip(dims, np.shape(values)))
    coords = {"time": np.arange(shape["time"]), "lat": np.linspace(-60, 60, shape["lat"]),
              "lon": np.arange(shape["lon"]) * 10.0}
    return xr.DataArray(values, dims=dims, coords={d: coords[d] for d in dims})


def test_xarray_inputs_match_by_dim_name():
    rng = np.random.default_rng(0)
    truth = cube(rng.normal(size=(3, 4, 5)))
    pred = truth + 0.5
    assert metrics.mse(pred.transpose("lon", "time", "lat"), truth) == pytest.approx(0.25)
    land = xr.DataArray([True, False, False, True], dims="lat", coords={"lat": truth.lat})
    shifted = pred.where(land, truth + 2.0)  # error 0.5 on land, 2 elsewhere
    assert metrics.mse(shifted, truth, where=land) == pytest.approx(0.25)
    assert metrics.mse(shifted, truth) == pytest.approx((0.25 + 4.0) / 2)
    with pytest.raises(ValueError):
        metrics.mse(pred.assign_coords(lat=pred.lat + 1), truth)


def test_dataset_gives_a_float_per_cube_variable():
    rng = np.random.default_rng(1)
    truth = xr.Dataset({"a": cube(rng.normal(size=(3, 4, 5))), "b": cube(rng.normal(size=(3, 4, 5)))})
    truth["station_height"] = ("lat", np.arange(4.0))  # not a cube variable
    pred = truth.copy()
    pred["a"] = truth["a"] + 1.0
    pred["b"] = truth["b"] - 3.0
    observed = truth.where(truth.lat > 0)
    assert metrics.rmse(pred, truth) == {"a": 1.0, "b": 3.0}
    assert metrics.mse_gaps(pred, truth, observed) == {"a": 1.0, "b": 9.0}
    scores = metrics.nmse(pred, truth)
    assert set(scores) == {"a", "b"} and scores["b"] == pytest.approx(9.0 / float(truth["b"].var()))


# ---------------------------------------------------------------- latitude weighting


def test_latitude_weights_count_area():
    weights = metrics.latitude_weights([0.0, 60.0])
    np.testing.assert_allclose(weights, [4 / 3, 2 / 3])  # cos 60 = 1/2, mean 1
    assert metrics.latitude_weights([-90.0, 0.0, 90.0])[0] == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="degrees"):
        metrics.latitude_weights([0.0, 1e5])


def test_lat_weighted_rmse_by_hand():
    truth = xr.DataArray(np.zeros((2, 2, 3)), dims=("latitude", "valid_time", "lon"),
                         coords={"latitude": [0.0, 60.0]})
    equator_error = truth + xr.DataArray([1.0, 0.0], dims="latitude", coords={"latitude": [0.0, 60.0]})
    high_error = truth + xr.DataArray([0.0, 1.0], dims="latitude", coords={"latitude": [0.0, 60.0]})
    # weights 4/3 and 2/3 over equally many cells: weighted MSE 2/3 and 1/3
    assert metrics.lat_weighted_rmse(equator_error, truth) == pytest.approx(math.sqrt(2 / 3))
    assert metrics.lat_weighted_rmse(high_error, truth) == pytest.approx(math.sqrt(1 / 3))
    assert metrics.lat_weighted_rmse(truth + 2.0, truth) == pytest.approx(2.0)
    # only the equator scored: the weights cancel
    assert metrics.lat_weighted_rmse(high_error + 0.5, truth, where=truth.latitude == 0) == pytest.approx(0.5)
    # a field without a time dim, in a Dataset
    frame = xr.Dataset({"t2m": truth.isel(valid_time=0)})
    assert metrics.lat_weighted_rmse(frame + high_error.isel(valid_time=0), frame) == {
        "t2m": pytest.approx(math.sqrt(1 / 3))
    }


def test_lat_weighted_rmse_needs_degrees():
    truth = xr.DataArray(np.zeros((2, 3, 3)), dims=("time", "y", "x"), coords={"y": [0.0, 5e5, 1e6]})
    with pytest.raises(ValueError, match="degrees"):
        metrics.lat_weighted_rmse(truth, truth)
    with pytest.raises(TypeError, match="xarray"):
        metrics.lat_weighted_rmse(PRED, TRUTH)


# ---------------------------------------------------------------- ensembles


def crps_pairs(members, y, fair):
    """CRPS from its definition, all O(m^2) pairs."""
    m = len(members)
    pairs = np.abs(members[:, None] - members[None, :]).sum()
    return np.abs(members - y).mean() - pairs / (2 * (m * (m - 1) if fair else m * m))


def test_crps_by_hand_and_against_the_pairwise_definition():
    members, y = np.array([0.0, 2.0, 4.0])[:, None], np.array([1.0])
    # E|X - y| = 5/3; the pairs |0-2|, |0-4|, |2-4| sum to 8 each way
    assert metrics.crps_ensemble(members, y, fair=False) == pytest.approx(5 / 3 - 16 / 18)
    assert metrics.crps_ensemble(members, y) == pytest.approx(5 / 3 - 16 / 12)
    rng = np.random.default_rng(2)
    members, truth = rng.normal(size=(7, 30)), rng.normal(size=30)
    for fair in (True, False):
        expected = np.mean([crps_pairs(members[:, i], truth[i], fair) for i in range(30)])
        assert metrics.crps_ensemble(members, truth, fair=fair) == pytest.approx(expected, rel=1e-12)


def test_crps_of_identical_members_is_the_absolute_error():
    rng = np.random.default_rng(3)
    truth, forecast = rng.normal(size=50), rng.normal(size=50)
    mae = np.mean(np.abs(forecast - truth))
    for fair in (True, False):
        assert metrics.crps_ensemble(np.repeat(forecast[None], 5, axis=0), truth, fair=fair) == pytest.approx(mae)
        assert metrics.crps_ensemble(forecast[None], truth, fair=fair) == pytest.approx(mae)


def test_crps_of_a_large_ensemble_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(4)
    mu, sigma = 0.5, 2.0
    truth = rng.normal(size=40)
    members = rng.normal(mu, sigma, size=(20000, 40))
    z = (truth - mu) / sigma
    closed = sigma * np.mean(z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))
    assert metrics.crps_ensemble(members, truth) == pytest.approx(closed, rel=0.01)


def test_crps_on_xarray_with_the_members_anywhere():
    rng = np.random.default_rng(5)
    members = rng.normal(size=(6, 3, 4, 5))
    ensemble = xr.DataArray(members, dims=("member", "time", "lat", "lon")).transpose("lat", "member", "lon", "time")
    truth = xr.DataArray(rng.normal(size=(3, 4, 5)), dims=("time", "lat", "lon"))
    expected = metrics.crps_ensemble(members, truth.values)
    assert metrics.crps_ensemble(ensemble, truth, member_dim="member") == pytest.approx(expected)
    scores = metrics.crps_ensemble(ensemble.to_dataset(name="sst"), truth.to_dataset(name="sst"), member_dim="member")
    assert scores == {"sst": pytest.approx(expected)}
    with pytest.raises(ValueError, match="no dim 'sample'"):
        metrics.crps_ensemble(ensemble, truth)


def test_spread_skill_by_hand():
    members = np.array([[0.0, 1.0], [2.0, 1.0]])  # cell 1: variance 2, mean error 1; cell 2: exact
    truth = np.array([0.0, 1.0])
    # sqrt(3/2) * sqrt(mean(2, 0)) / sqrt(mean(1, 0)) = sqrt(3)
    assert metrics.spread_skill(members, truth) == pytest.approx(math.sqrt(3))


def test_spread_skill_of_a_calibrated_ensemble_is_one_for_any_size():
    rng = np.random.default_rng(6)
    truth = rng.normal(size=100_000)
    for m in (2, 5):
        calibrated = rng.normal(size=(m, truth.size))  # members and truth exchangeable
        assert metrics.spread_skill(calibrated, truth) == pytest.approx(1.0, abs=0.02)
    narrow = 0.5 * rng.normal(size=(5, truth.size))
    assert metrics.spread_skill(narrow, truth) < 0.6


# ---------------------------------------------------------------- physical consistency


@pytest.fixture(scope="module")
def shallow():
    from xrimpute.pde import shallow_water

    return shallow_water(n_samples=2, size=16, frames=10, dt=0.1, dtype="float64", progress=False)


def test_shallow_water_residual_is_small_on_a_trajectory_and_large_on_noise(shallow):
    clean = metrics.pde_residual_shallow_water(shallow)
    assert set(clean) == {"mass", "momentum_x", "momentum_y"}
    rng = np.random.default_rng(7)
    noisy = shallow.copy()
    for name in ("h", "u", "v"):
        noisy[name] = shallow[name] + 0.01 * rng.normal(size=shallow[name].shape)
    noisy = metrics.pde_residual_shallow_water(noisy)
    for equation in clean:
        assert noisy[equation] > 20 * clean[equation]
    assert metrics.pde_residual_shallow_water(shallow.transpose("x", "time", "sample", "y")) == pytest.approx(clean)


def test_shallow_water_residual_takes_its_parameters_from_the_dataset(shallow):
    from xrimpute.pde.shallow_water import shallow_water_residual

    residuals = shallow_water_residual(shallow.h.values, shallow.u.values, shallow.v.values,
                                       dx=shallow.attrs["grid_spacing"], dt=0.1, f=shallow.coriolis.values)
    expected = [math.sqrt(np.mean(r**2)) for r in residuals]
    assert list(metrics.pde_residual_shallow_water(shallow).values()) == pytest.approx(expected)
    # a fluid at rest with a flat surface satisfies the equations exactly
    rest = xr.Dataset({name: (("time", "y", "x"), np.full((6, 8, 8), value)) for name, value in
                       (("h", 1.0), ("u", 0.0), ("v", 0.0))}, coords={"x": np.arange(8.0), "time": np.arange(6.0)})
    assert metrics.pde_residual_shallow_water(rest, f=1.0) == {"mass": 0.0, "momentum_x": 0.0, "momentum_y": 0.0}
    with pytest.raises(ValueError, match="pass f="):
        metrics.pde_residual_shallow_water(rest)


def test_advection_forecast_mse():
    size, length = 32, 1.0
    x = np.arange(size) * length / size
    rng = np.random.default_rng(8)
    truth = xr.DataArray(np.sin(2 * np.pi * (x[None, :, None] + rng.random((2, 1, 1))))
                         * np.cos(2 * np.pi * x[None, None, :]),
                         dims=("sample", "y", "x"), coords={"x": x, "y": x})
    velocity = [[0.6, -0.3], [-1.0, 0.2]]
    assert metrics.advection_forecast_mse(truth, truth, velocity, steps=10, dt=0.05) == 0.0
    # a constant offset is carried unchanged
    assert metrics.advection_forecast_mse(truth + 0.1, truth, velocity, steps=10, dt=0.05) == pytest.approx(0.01)
    # a smooth wave keeps its amplitude: mean square 0.1^2 / 2
    wave = 0.1 * xr.DataArray(np.sin(2 * np.pi * x / length), dims="x", coords={"x": x})
    assert metrics.advection_forecast_mse(truth + wave, truth, velocity, steps=10, dt=0.05) == pytest.approx(
        0.005, rel=0.03
    )
    # arrays need the spacing; a cube's first frame is used
    assert metrics.advection_forecast_mse(truth.values + 0.1, truth.values, velocity, steps=3, dt=0.05,
                                          dx=length / size) == pytest.approx(0.01)
    frames = truth.expand_dims(time=[0.0, 1.0]).to_dataset(name="tracer")
    assert metrics.advection_forecast_mse(frames + 0.2, frames, velocity, steps=3, dt=0.05) == {
        "tracer": pytest.approx(0.04)
    }
