"""The first guess under the series' own space-time covariance: estimated, solved, chosen, kept."""
import numpy as np
import pytest
import torch
import xarray as xr

import xrimpute
from test_lazy import imputed_alike_on_every_path
from xrimpute.engine import Engine, ImputeConfig
from xrimpute.nets.prior import (COVARIANCE_STEPS, SETTLED_COVARIANCE_STEPS, FirstGuess, covariance_guess,
                                 field_covariance)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_series_covariance_is_the_mean_product_of_observed_cells_at_each_offset():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(2, 1, 12, 9, 11, generator=gen)
    observed = torch.rand(2, 1, 12, 9, 11, generator=gen) > 0.3
    values[~observed] = 1e6  # what the gaps hold must not matter
    lags, radius = 2, 4
    covariance = field_covariance(values, observed, lags=lags, radius=radius)
    assert covariance.shape == (1, 2 * lags + 1, 2 * radius + 1, 2 * radius + 1)
    x, seen = values.numpy()[:, 0].astype(np.float64), observed.numpy()[:, 0]
    for dt, dy, dx in [(0, 0, 0), (1, 0, 0), (1, 2, -3), (-1, 2, -3), (-2, -1, 4), (0, 3, 1), (2, -4, -4)]:
        a = slice(max(0, -dt), 12 - max(0, dt)), slice(max(0, -dy), 9 - max(0, dy)), slice(max(0, -dx), 11 - max(0, dx))
        b = tuple(slice(s.start + d, s.stop + d) for s, d in zip(a, (dt, dy, dx)))
        both = seen[(slice(None), *a)] & seen[(slice(None), *b)]
        expected = (x[(slice(None), *a)] * x[(slice(None), *b)])[both].mean()
        assert covariance[0, lags + dt, radius + dy, radius + dx] == pytest.approx(expected, rel=1e-4, abs=1e-6)



def test_a_covariance_that_wraps_round_pairs_cells_across_the_seam():
    gen = torch.Generator().manual_seed(2)
    values = torch.randn(2, 1, 10, 9, 9, generator=gen)
    observed = torch.rand(2, 1, 10, 9, 9, generator=gen) > 0.3
    lags, radius = 1, 8
    covariance = field_covariance(values, observed, lags=lags, radius=radius, periodic=True)
    x, seen = values.numpy()[:, 0].astype(np.float64), observed.numpy()[:, 0]
    for dt, dy, dx in [(0, 0, 3), (1, 2, -4), (-1, -3, 7), (0, 1, -8)]:
        a = slice(max(0, -dt), 10 - max(0, dt)), slice(max(0, -dy), 9 - max(0, dy))
        b = tuple(slice(s.start + d, s.stop + d) for s, d in zip(a, (dt, dy)))
        first, second = x[(slice(None), *a)], np.roll(x[(slice(None), *b)], -dx, axis=-1)  # column j with j + dx
        both = seen[(slice(None), *a)] & np.roll(seen[(slice(None), *b)], -dx, axis=-1)
        expected = (first * second)[both].mean()
        assert covariance[0, lags + dt, radius + dy, radius + dx] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        # d columns one way round are 9 - d the other
        other = dx - 9 if dx > 0 else dx + 9
        assert covariance[0, lags + dt, radius + dy, radius + other] == pytest.approx(expected, rel=1e-4, abs=1e-6)

def gaussian_covariance(lags: int, radius: int, width: float) -> torch.Tensor:
    dt, dy, dx = torch.meshgrid(*(torch.arange(-r, r + 1.0) for r in (lags, radius, radius)), indexing="ij")
    return torch.exp(-(dt**2 + dy**2 + dx**2) / width)[None]


def test_the_covariance_guess_is_the_best_linear_estimate_from_the_context_alone():
    lags, radius, (t, h, w) = 1, 3, (3, 6, 7)
    covariance = gaussian_covariance(lags, radius, 1.5)
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(1, 1, t, h, w, generator=gen)
    mask = torch.rand(1, 1, t, h, w, generator=gen) > 0.6
    guess = covariance_guess(values, mask, covariance, 400, nugget=0.01)
    # the dense solve: every two cells' covariance at their offset (tapered along time), the context's system
    cells = [(a, i, j) for a in range(t) for i in range(h) for j in range(w)]
    dense = np.zeros((len(cells), len(cells)))
    for p, (a, i, j) in enumerate(cells):
        for q, (b, k, m) in enumerate(cells):
            d = (b - a, k - i, m - j)
            if abs(d[0]) <= lags and max(abs(d[1]), abs(d[2])) <= radius:
                dense[p, q] = float(covariance[0, d[0] + lags, d[1] + radius, d[2] + radius]) * (1 - abs(d[0]) / (lags + 1))
    seen, y = mask.numpy().ravel(), values.numpy().ravel()
    weights = np.linalg.solve(dense[np.ix_(seen, seen)] + 0.01 * np.eye(seen.sum()), y[seen])
    expected = np.where(seen, y, dense[:, seen] @ weights)
    np.testing.assert_allclose(guess.numpy().ravel(), expected, atol=1e-4)
    changed = torch.where(mask, values, torch.randn(values.shape, generator=gen))  # other values off the context
    torch.testing.assert_close(covariance_guess(changed, mask, covariance, 400, nugget=0.01), guess)
    with pytest.raises(ValueError, match="come together"):
        FirstGuess(covariance_steps=COVARIANCE_STEPS)


def test_the_covariance_guess_settles_further_outside_training():
    """A training step solves :data:`COVARIANCE_STEPS` steps; held-back scores and imputation (``eval()``), which
    run it once a window, solve :data:`SETTLED_COVARIANCE_STEPS`, nearer the converged guess."""
    lags, radius, (t, h, w) = 1, 7, (3, 16, 16)
    covariance = gaussian_covariance(lags, radius, 20.0)  # smooth and far-reaching: slow to converge
    gen = torch.Generator().manual_seed(2)
    values = torch.randn(1, 1, t, h, w, generator=gen)
    mask = torch.zeros(1, 1, t, h, w, dtype=torch.bool)
    mask[..., :, :6] = mask[..., 10:, 8:] = True  # blocks that never move
    guess = FirstGuess(covariance_steps=COVARIANCE_STEPS, covariance=covariance)
    values = values * mask
    trained, _ = guess(values, mask)
    settled, _ = guess.eval()(values, mask)
    torch.testing.assert_close(trained, covariance_guess(values, mask, covariance, COVARIANCE_STEPS))
    torch.testing.assert_close(settled, covariance_guess(values, mask, covariance, SETTLED_COVARIANCE_STEPS))
    converged = covariance_guess(values, mask, covariance, 2000)
    assert (settled - converged).norm() < 0.5 * (trained - converged).norm()


def test_the_covariance_guess_round_a_circle_is_the_best_linear_estimate_with_offsets_the_short_way_round():
    lags, radius, (t, h, w) = 1, 4, (3, 5, 8)
    dt, dy, dx = torch.meshgrid(*(torch.arange(-r, r + 1.0) for r in (lags, radius, radius)), indexing="ij")
    # a covariance of a field that wraps round the 8 columns, as large 4 columns away one way round as the other
    covariance = (torch.exp(-(dt**2 + dy**2) / 1.5) * (1 + 0.5 * torch.cos(2 * torch.pi * dx / w)))[None]
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(1, 1, t, h, w, generator=gen)
    mask = torch.rand(1, 1, t, h, w, generator=gen) > 0.6
    guess = covariance_guess(values, mask, covariance, 400, periodic=True, nugget=0.01)
    cells = [(a, i, j) for a in range(t) for i in range(h) for j in range(w)]
    dense = np.zeros((len(cells), len(cells)))
    for p, (a, i, j) in enumerate(cells):
        for q, (b, k, m) in enumerate(cells):
            across = (m - j) % w
            across = across - w if across > w // 2 else across  # -3 to 4 of 8 columns: each offset once
            if abs(b - a) <= lags and abs(k - i) <= radius:
                dense[p, q] = (float(covariance[0, b - a + lags, k - i + radius, across + radius])
                               * (1 - abs(b - a) / (lags + 1)))
    seen, y = mask.numpy().ravel(), values.numpy().ravel()
    nugget = 0.01 * float(covariance[0, lags, radius, radius])  # a share of the variance
    weights = np.linalg.solve(dense[np.ix_(seen, seen)] + nugget * np.eye(seen.sum()), y[seen])
    np.testing.assert_allclose(guess.numpy().ravel(), np.where(seen, y, dense[:, seen] @ weights), atol=1e-4)

def waves(t=40, h=24, w=24, seed=0, periodic=False) -> np.ndarray:
    """``(1, 1, t, h, w)``: a few plane waves with amplitudes that drift from step to step: a stationary field whose
    covariance reaches across the grid, which a smooth surface through a block's rim cannot continue; ``periodic``:
    whole waves along the columns, so that the field wraps round them."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    field = np.zeros((t, h, w))
    for k in range(4):
        ky, kx = rng.uniform(-0.9, 0.9, 2)
        if periodic:
            kx = 2 * np.pi * rng.choice([-3, -2, -1, 1, 2, 3]) / w
        drift = np.cumsum(rng.standard_normal(t)) * 0.2 + rng.standard_normal()
        field += np.cos(ky * y + kx * x + rng.uniform(0, 2 * np.pi))[None] * drift[:, None, None]
        field += np.sin(ky * y + kx * x)[None] * np.roll(drift, 5)[:, None, None]
    return field[None, None].astype(np.float32)


def test_a_fit_on_blocks_that_never_move_fills_them_under_the_series_covariance_and_keeps_it(tmp_path):
    truth = np.concatenate([waves(t=24, seed=0), waves(t=24, seed=1)])
    values = truth.copy()
    values[0, ..., 8:16, 8:16] = np.nan  # blocks that never move: their cells are observed in the other sample
    values[0, ..., 0:8, 16:24] = np.nan
    values[1, ..., 16:24, 0:16] = np.nan
    fit = dict(mask="block", steps=2, batch_size=2, progress=False, verbose=False)
    engine = Engine.fit_array(values, **fit)
    errors = engine.config.validation["first_guess_nmse"]
    assert engine.config.validation["first_guess"] == "optimal interpolation", errors
    assert errors["optimal interpolation"] < 0.5 * min(e for label, e in errors.items() if "bending" in label), errors
    options = ImputeConfig(K=2, seed=1, batch_size=4, progress=False)
    filled, _ = engine.fill(values, options)
    gaps = np.isnan(values)
    assert float(((filled - truth)[gaps] ** 2).mean() / truth[gaps].var()) < 0.3
    again = Engine.load(engine.save(tmp_path / "m.xri"))
    assert torch.equal(again.denoiser.first_guess.covariance, engine.denoiser.first_guess.covariance)
    np.testing.assert_array_equal(again.fill(values, options)[0], filled)
    continued = Engine.fit_array(values, init=again, **fit)  # an init keeps its covariance
    assert torch.equal(continued.denoiser.first_guess.covariance, engine.denoiser.first_guess.covariance)
    pixels = np.where(np.random.default_rng(2).random(truth.shape) < 0.3, truth, np.nan).astype(np.float32)
    drawn_anew = Engine.fit_array(pixels, **{**fit, "mask": "pixel"})  # gaps near their cells' observations
    assert "optimal interpolation" not in drawn_anew.config.validation["first_guess_nmse"]



def test_a_fit_on_a_grid_that_wraps_round_estimates_the_covariance_round_it():
    truth = np.concatenate([waves(seed=4, periodic=True), waves(seed=5, periodic=True)])
    values = truth.copy()
    values[0, ..., 8:16, 18:24] = np.nan  # blocks that never move, one against the seam
    values[0, ..., 8:16, 0:4] = np.nan
    values[1, ..., 0:8, 6:16] = np.nan
    engine = Engine.fit_array(values, mask="block", periodic=True, steps=2, batch_size=2, progress=False,
                              verbose=False)
    assert engine.config.validation["first_guess"] == "optimal interpolation", engine.config.validation
    covariance = engine.denoiser.first_guess.covariance
    middle = (covariance.shape[-1] - 1) // 2
    for columns in (3, 9, 14):  # one way round, and the other
        torch.testing.assert_close(covariance[..., middle + columns], covariance[..., middle + columns - 24])
    filled, _ = engine.fill(values, ImputeConfig(K=2, seed=1, batch_size=4, progress=False))
    gaps = np.isnan(values)
    assert float(((filled - truth)[gaps] ** 2).mean() / truth[gaps].var()) < 0.3

def test_a_covariance_model_imputes_lazily_and_on_a_cluster_as_in_memory(tmp_path, cluster):
    truth = waves(t=30, seed=3)[0, 0]
    values = truth.copy()
    values[:26, 8:16, 8:16] = np.nan  # an outage that lasts most of the series: far from its cells' observations
    values[4:, 0:8, 16:24] = np.nan
    times = np.datetime64("2020-01-01") + np.arange(30) * np.timedelta64(1, "D")
    coords = {"time": times, "latitude": ("latitude", np.linspace(-30, 30, 24), {"units": "degrees_north"}),
              "longitude": ("longitude", np.linspace(0, 60, 24), {"units": "degrees_east"})}
    data = xr.Dataset({"sst": (("time", "latitude", "longitude"), values)}, coords=coords)
    data.chunk(time=5).to_zarr(tmp_path / "source.zarr", consolidated=False)
    model = xrimpute.fit(data, mask="block", steps=3, batch_size=2, progress=False, verbose=False, seed=0)
    assert model.validation["first_guess"] == "optimal interpolation", model.validation["first_guess_nmse"]
    model.save(tmp_path / "model.xri")
    reference, _ = imputed_alike_on_every_path(tmp_path, data, model, cluster)
    gaps = np.isnan(values)
    filled = reference["sst"].values
    assert float(((filled - truth)[gaps] ** 2).mean() / truth[gaps].var()) < 0.3


def test_a_fit_from_an_archive_reads_the_series_covariance_from_it(tmp_path):
    truth = waves(t=30, seed=6)[0, 0]
    values = truth.copy()
    values[:26, 8:16, 8:16] = np.nan  # outages that last most of the series: far from their cells' observations
    values[4:, 0:8, 16:24] = np.nan
    times = np.datetime64("2020-01-01") + np.arange(30) * np.timedelta64(1, "D")
    coords = {"time": times, "latitude": ("latitude", np.linspace(-30, 30, 24), {"units": "degrees_north"}),
              "longitude": ("longitude", np.linspace(0, 60, 24), {"units": "degrees_east"})}
    xr.Dataset({"sst": (("time", "latitude", "longitude"), values)}, coords=coords).chunk(time=5).to_zarr(
        tmp_path / "source.zarr", consolidated=False)
    archive = xr.open_zarr(tmp_path / "source.zarr", consolidated=False)
    model = xrimpute.fit(archive, mask="block", steps=3, batch_size=2, progress=False, verbose=False, seed=0)
    assert model.validation["first_guess"] == "optimal interpolation", model.validation["first_guess_nmse"]
    filled = model.impute(archive, progress=False)["sst"].values
    gaps = np.isnan(values)
    assert float(((filled - truth)[gaps] ** 2).mean() / truth[gaps].var()) < 0.3


def test_a_fit_from_an_archive_of_blocks_that_never_move_holds_its_cells_back_as_still_and_takes_the_covariance(
        tmp_path):
    truth = np.concatenate([waves(t=24, seed=0), waves(t=24, seed=1)])[:, 0]
    values = truth.copy()
    values[0, :, 8:16, 8:16] = np.nan  # blocks that never move: their cells are observed in the other sample
    values[0, :, 0:8, 16:24] = np.nan
    values[1, :, 16:24, 0:16] = np.nan
    dims = ("sample", "time", "y", "x")
    xr.Dataset({"w": (dims, values)}, coords={"y": np.arange(24.0), "x": np.arange(24.0)}).chunk(
        time=10).to_zarr(tmp_path / "source.zarr", consolidated=False)
    archive = xr.open_zarr(tmp_path / "source.zarr", consolidated=False)
    model = xrimpute.fit(archive, mask="block", steps=2, batch_size=2, progress=False, verbose=False, seed=0)
    errors = model.validation["first_guess_nmse"]
    assert model.validation["first_guess"] == "optimal interpolation", errors
    # held back at every step around their windows, the blocks lean on no observation of their own cells
    assert errors["optimal interpolation"] < 0.5 * min(e for label, e in errors.items()
                                                       if label != "optimal interpolation"), errors
