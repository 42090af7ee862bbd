"""Kriging over time: the correlation a station network measures over its series, fitted, solved, chosen, kept; a
station fit scored on every station."""
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import xrimpute
from xrimpute.errors import ArgumentError, SkillWarning
from test_lazy import imputed_alike_on_every_path
from xrimpute.engine import Engine, ImputeConfig, _station_correlations
from xrimpute.nets.correlation import NUGGETS, RANGES, correlation_guess, station_statistics
from xrimpute.nets.prior import FirstGuess, station_correlation
from xrimpute.samplers import station_shares

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def correlated_frames(steps: int, size: int, length: float, seed: int, shape: float = 1.0) -> np.ndarray:
    """``(steps, size, size)`` frames of a Gaussian field whose correlation is ``exp(-(d / length) ** shape)``,
    ``d`` in the grid's side."""
    rows, cols = np.divmod(np.arange(size * size), size)
    distance = np.hypot(rows[:, None] - rows[None], cols[:, None] - cols[None]) / size
    root = np.linalg.cholesky(np.exp(-((distance / length) ** shape)) + 1e-6 * np.eye(size * size))
    return (np.random.default_rng(seed).standard_normal((steps, size * size)) @ root.T).reshape(steps, size, size)


def station_cube(steps: int = 96, size: int = 20, stations: int = 30, seed: int = 0):
    """``(truth, values)`` ``(1, 1, T, H, W)``: each cell's own mean, a steep ridge and a slope, its own spread,
    thirty times as large on one side as on the other, and smooth departures correlated over a third of the grid;
    NaN away from ``stations`` cells that report at every step."""
    rows, cols = np.mgrid[0:size, 0:size] / size
    mean = 3 * np.exp(-((cols - 0.5) / 0.08) ** 2) + 2 * rows
    spread = 0.1 + 2.9 * cols
    truth = mean + spread * correlated_frames(steps, size, 0.3, seed, shape=2.0)
    cells = np.random.default_rng(seed + 1).permutation(size * size)[:stations]
    values = np.full_like(truth, np.nan)
    values.reshape(steps, -1)[:, cells] = truth.reshape(steps, -1)[:, cells]
    return truth[None, None].astype(np.float32), values[None, None].astype(np.float32)


def test_the_correlation_fitted_over_time_is_the_one_the_stations_share():
    steps, size = 200, 16
    frames = torch.as_tensor(correlated_frames(steps, size, 0.3, seed=3) * 2.0 + 5.0)
    observed = torch.zeros(steps, size, size, dtype=torch.bool)
    observed.view(steps, -1)[:, torch.randperm(size * size, generator=torch.Generator().manual_seed(0))[:40]] = True
    cells, statistics, parameters = station_statistics(frames, observed)
    assert len(cells) == 40
    series = frames.view(steps, -1)[:, cells].double()
    torch.testing.assert_close(statistics[0].double(), series.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(statistics[1].double(), series.std(0, unbiased=False).log(), rtol=1e-4, atol=1e-4)
    length, shape, nugget = parameters.tolist()
    assert shape == 1.0 and nugget <= NUGGETS[1], parameters  # the exponential, observed without error
    assert min(RANGES, key=lambda r: abs(r - length)) == pytest.approx(0.3), parameters  # the range it has
    assert station_statistics(frames, observed, most=39) is None  # more stations than a dense solve takes
    few = torch.zeros_like(observed)
    few[:, :1, :3] = True
    assert station_statistics(frames, few) is None
    apart = torch.zeros_like(observed)  # six stations, never more than three reporting at once
    apart[0::2, 0, :3] = True
    apart[1::2, 5, :3] = True
    assert station_statistics(frames, apart) is None


def test_the_guess_kriges_each_frames_departures_from_the_context_alone():
    gen = torch.Generator().manual_seed(1)
    b, t, h, w = 2, 3, 7, 9
    fields = torch.stack([torch.randn(h, w, generator=gen), 0.3 * torch.randn(h, w, generator=gen)])[None]
    parameters = torch.tensor([[0.4, 1.0, 0.05]])
    values = torch.randn(b, 1, t, h, w, generator=gen)
    mask = torch.rand(b, 1, t, h, w, generator=gen) < 0.2
    mask[0, 0, 1] = False
    mask[0, 0, 1, 0, :2] = True  # two context cells: too few
    guess = correlation_guess(values * mask, mask, fields, parameters, fewest=3)
    assert torch.isnan(guess[0, 0, 1]).all()
    # one frame by hand: simple kriging of the standardised departures, the nugget on the diagonal
    frame, seen = values[1, 0, 2].double().flatten(), mask[1, 0, 2].flatten()
    mean, spread = fields[0, 0].double().flatten(), fields[0, 1].double().exp().flatten()
    rows, cols = np.divmod(np.arange(h * w), w)
    distance = torch.as_tensor(np.hypot(rows[:, None] - rows[None], cols[:, None] - cols[None]) / max(h, w))
    correlation = torch.exp(-distance / 0.4)
    system = correlation[seen][:, seen] + 0.05 * torch.eye(int(seen.sum()), dtype=torch.float64)
    weights = torch.linalg.solve(system, correlation[seen])
    expected = mean + spread * (((frame[seen] - mean[seen]) / spread[seen]) @ weights)
    torch.testing.assert_close(guess[1, 0, 2].flatten(), expected, rtol=1e-6, atol=1e-6)
    # a query cell's value never reaches the guess
    changed = values.clone()
    changed[~mask] = 1e6
    torch.testing.assert_close(correlation_guess(changed * mask, mask, fields, parameters, fewest=3), guess,
                               equal_nan=True)
    # through the first guess: the context keeps its values, a frame of too few cells takes the frames either side
    net_guess, _ = FirstGuess(correlation=True, station_correlation=(fields, parameters))(values * mask, mask)
    torch.testing.assert_close(net_guess[mask], values[mask])
    torch.testing.assert_close(net_guess[0, 0, 1][~mask[0, 0, 1]],
                               (0.5 * (guess[0, 0, 0] + guess[0, 0, 2]))[~mask[0, 0, 1]].float())
    # several variables: each kriged under its own correlation, as alone
    other = torch.tensor([[0.2, 2.0, 0.01]])
    both = correlation_guess(torch.cat([values, 2 * values], 1), torch.cat([mask, mask], 1),
                             torch.cat([fields, fields.flip(1)]), torch.cat([parameters, other]), fewest=3)
    torch.testing.assert_close(both[:, :1], guess, equal_nan=True)
    torch.testing.assert_close(both[:, 1:], correlation_guess(2 * values * mask, mask, fields.flip(1), other, fewest=3),
                               equal_nan=True)
    with pytest.raises(ArgumentError, match="whole-grid windows"):
        correlation_guess(values[..., :5], mask[..., :5], fields, parameters, fewest=3)


def test_each_share_of_stations_scored_is_left_out_of_the_correlation_it_is_scored_under():
    _, values = station_cube()
    seen = np.isfinite(values)
    normalised = torch.as_tensor(np.where(seen, (values - np.nanmean(values)) / np.nanstd(values), 0.0))

    class Training:  # the series and validation windows a fit scores the guesses on
        values, observed = normalised, torch.as_tensor(seen)
        validation = (normalised[:, :, :5], torch.as_tensor(seen[:, :, :5]), None, {})

        def training_series(self):
            return self.values, self.observed

    whole, *folds = _station_correlations(Training(), 5, seed=0, periodic=False)
    stations = seen[0, 0].any(0)
    for fields, _ in folds:
        # a station of the share scored: its mean drawn from the others', not its own
        own = np.isclose(fields[0, 0].numpy(), whole[0][0, 0].numpy(), atol=1e-5) & stations
        assert 0 < (~own & stations).sum() <= 7
    torch.testing.assert_close(whole[0], station_correlation(normalised, torch.as_tensor(seen))[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_a_station_fit_kriges_the_departures_where_stations_keep_their_own_mean_and_spread(tmp_path, seed):
    truth, values = station_cube(seed=seed)
    fit = dict(mask="station", tile=None, steps=1, batch_size=2, progress=False, verbose=False)
    engine = Engine.fit_array(values, **fit)
    validation = engine.config.validation
    assert validation["first_guess_folds"] == 5
    errors = validation["first_guess_nmse"]
    assert validation["first_guess"] == "kriging over time", errors
    assert errors["kriging over time"] < 0.95 * min(e for name, e in errors.items() if name != "kriging over time")
    options = ImputeConfig(K=1, progress=False)
    filled, _ = engine.fill(values, options)
    gaps = np.isnan(values)
    thin_plate = FirstGuess(thin_plate=True)(torch.as_tensor(np.nan_to_num(values)), torch.as_tensor(~gaps))[0]
    error = float(((filled - truth)[gaps] ** 2).mean())
    assert error < 0.9 * float(((thin_plate.numpy() - truth)[gaps] ** 2).mean())
    again = Engine.load(engine.save(tmp_path / "m.xri"))
    for kept, made in zip(again.denoiser.station_correlation, engine.denoiser.station_correlation):
        assert torch.equal(kept, made)
    np.testing.assert_array_equal(again.fill(values, options)[0], filled)
    continued = Engine.fit_array(values, init=again, **fit)  # an init keeps its correlation
    assert torch.equal(continued.denoiser.station_correlation[1], engine.denoiser.station_correlation[1])


def test_a_kriging_over_time_model_imputes_lazily_and_on_a_cluster_as_in_memory(tmp_path, cluster):
    truth, values = station_cube(steps=30)
    times = np.datetime64("2020-01-01") + np.arange(30) * np.timedelta64(1, "D")
    coords = {"time": times, "latitude": ("latitude", np.linspace(40, 59, 20), {"units": "degrees_north"}),
              "longitude": ("longitude", np.linspace(0, 19, 20), {"units": "degrees_east"})}
    data = xr.Dataset({"t2m": (("time", "latitude", "longitude"), values[0, 0])}, coords=coords)
    data.chunk(time=5).to_zarr(tmp_path / "source.zarr", consolidated=False)
    model = xrimpute.fit(data, mask="station", steps=1, batch_size=2, progress=False, verbose=False, seed=0)
    assert model.validation["first_guess"] == "kriging over time", model.validation["first_guess_nmse"]
    assert not any("&" in label for label in model.validation["first_guess_nmse"])  # it trains: no averaged guess
    model.save(tmp_path / "model.xri")
    reference, _ = imputed_alike_on_every_path(tmp_path, data, model, cluster)
    gaps = np.isnan(values[0, 0])
    filled = reference["t2m"].values
    assert float(((filled - truth[0, 0])[gaps] ** 2).mean() / truth[0, 0][gaps].var()) < 0.5


def test_a_station_fit_reports_on_every_station_and_scores_the_classical_fillers_there():
    truth, values = station_cube(steps=48, seed=2)
    times = np.datetime64("2020-01-01") + np.arange(48) * np.timedelta64(1, "D")
    coords = {"time": times, "latitude": ("latitude", np.linspace(40, 59, 20), {"units": "degrees_north"}),
              "longitude": ("longitude", np.linspace(0, 19, 20), {"units": "degrees_east"})}
    data = xr.Dataset({"t2m": (("time", "latitude", "longitude"), values[0, 0])}, coords=coords)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = xrimpute.fit(data, mask="station", progress=False, verbose=False, seed=0)
    validation = model.validation
    assert not model.engine.history.step  # complete station series: the guess is the fill
    # the stations held back from training, then five shares of the others in turn: all 30 score the fill, at each
    # step of the 10 validation windows of 5 steps
    assert validation["first_guess_folds"] == 5 and validation["cells"] == 30 * 10 * 5
    assert "thin plate & bending across steps 0.5" in validation["first_guess_nmse"]  # no step: the averaged too
    chosen = validation["first_guess"]
    assert validation["nmse"] == pytest.approx(validation["first_guess_nmse"][chosen], rel=1e-5)
    # on those same cells the RBF filler is the thin plate through the stations
    assert validation["classical"]["rbf"] == pytest.approx(validation["first_guess_nmse"]["thin plate"], rel=1e-3)
    assert "shares" in validation["classical_context"] and validation["every_station"]
    assert "1500 held-back cells, every station's, each share of them held back in turn" in repr(model)
    assert validation["nmse"] < validation["classical"]["rbf"]  # so no filler is recommended over it
    assert not [w for w in record if issubclass(w.category, SkillWarning)]


def test_the_shares_of_stations_scored_split_every_cluster():
    context = torch.zeros(1, 2, 3, 30, 40, dtype=torch.bool)
    for row, col in [(2, 3), (2, 4), (3, 3), (3, 4), (20, 30), (21, 31), (22, 30), (10, 10), (25, 5), (5, 35)]:
        context[0, :, :, row, col] = True  # two variables, each its own stations
    shares = station_shares(context, 5, seed=3)
    counts = torch.stack(shares).sum(0)
    torch.testing.assert_close(counts, context[0, :, 0].long())  # every station in one share
    for share in shares:
        for cluster in (share[:, 2:4, 3:5], share[:, 20:23, 30:32]):  # no share holds two of a cluster's stations
            assert int(cluster.sum(dim=(1, 2)).max()) <= 1
        assert int(share.sum()) == 4  # 20 stations dealt in turn
    assert all(torch.equal(a, b) for a, b in zip(shares, station_shares(context, 5, seed=3)))
