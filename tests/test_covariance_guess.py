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
    tapered = field_covariance(values, observed, lags=lags, radius=radius, tapered=True)
    assert covariance.shape == tapered.shape == (1, 2 * lags + 1, 2 * radius + 1, 2 * radius + 1)
    x, seen = values.numpy()[:, 0].astype(np.float64), observed.numpy()[:, 0]
    for dt, dy, dx in [(0, 0, 0), (1, 0, 0), (1, 2, -3), (-1, 2, -3), (-2, -1, 4), (0, 3, 1), (2, -4, -4)]:
        a = slice(max(0, -dt), 12 - max(0, dt)), slice(max(0, -dy), 9 - max(0, dy)), slice(max(0, -dx), 11 - max(0, dx))
        b = tuple(slice(s.start + d, s.stop + d) for s, d in zip(a, (dt, dy, dx)))
        both = seen[(slice(None), *a)] & seen[(slice(None), *b)]
        expected = (x[(slice(None), *a)] * x[(slice(None), *b)])[both].mean()
        assert covariance[0, lags + dt, radius + dy, radius + dx] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        # tapered: the same sum over the pairs at no offset in space at that lag
        steps = slice(max(0, -dt), 12 - max(0, dt)), slice(max(0, dt), 12 - max(0, -dt))
        pairs = (seen[:, steps[0]] & seen[:, steps[1]]).sum()
        assert tapered[0, lags + dt, radius + dy, radius + dx] == pytest.approx(
            (x[(slice(None), *a)] * x[(slice(None), *b)])[both].sum() / pairs, rel=1e-4, abs=1e-6)


def test_the_tapered_covariance_of_blocks_that_never_move_is_positive_semi_definite():
    gen = torch.Generator().manual_seed(4)
    values = torch.randn(3, 1, 8, 12, 12, generator=gen).cumsum(-1)  # smooth along the columns
    observed = torch.ones_like(values, dtype=torch.bool)
    observed[..., 0:6, 6:12] = False  # a block that never moves
    observed[..., 6:12, 0:3] = False
    for tapered in (False, True):
        covariance = field_covariance(values, observed, lags=0, radius=11, periodic=(True, True), tapered=tapered)
        # the offsets round both circles once, each at its place in a 12 x 12 circular kernel
        offsets = covariance[0, 0, 11 - 5 : 11 + 7, 11 - 5 : 11 + 7].roll((-5, -5), dims=(0, 1))
        spectrum = torch.fft.fft2(offsets.double()).real
        if tapered:  # the mean product over the pairs of the zero-filled field: its spectrum is |FFT|^2 / N
            assert float(spectrum.min()) > -1e-5 * float(spectrum.max())
        else:  # the offsets between the blocks rest on fewer pairs, and the mean has directions of negative variance
            assert float(spectrum.min()) < -1e-3 * float(spectrum.max())



@pytest.mark.parametrize("rows_wrap", [False, True])
def test_a_covariance_that_wraps_round_pairs_cells_across_the_seam(rows_wrap):
    gen = torch.Generator().manual_seed(2)
    values = torch.randn(2, 1, 10, 9, 9, generator=gen)
    observed = torch.rand(2, 1, 10, 9, 9, generator=gen) > 0.3
    lags, radius = 1, 8
    covariance = field_covariance(values, observed, lags=lags, radius=radius, periodic=(rows_wrap, True))
    x, seen = values.numpy()[:, 0].astype(np.float64), observed.numpy()[:, 0]

    def moved(a, dt, dy, dx):  # cell (step, row, column) with (step + dt, row + dy, column + dx), round what wraps
        steps = slice(max(0, -dt), 10 - max(0, dt)), slice(max(0, dt), 10 - max(0, -dt))
        if rows_wrap:
            return a[:, steps[0]], np.roll(a[:, steps[1]], (-dy, -dx), axis=(-2, -1))
        rows = slice(max(0, -dy), 9 - max(0, dy)), slice(max(0, dy), 9 - max(0, -dy))
        return a[:, steps[0], rows[0]], np.roll(a[:, steps[1], rows[1]], -dx, axis=-1)

    for dt, dy, dx in [(0, 0, 3), (1, 2, -4), (-1, -3, 7), (0, 1, -8), (1, 6, 2)]:
        (first, second), (seen_first, seen_second) = moved(x, dt, dy, dx), moved(seen, dt, dy, dx)
        both = seen_first & seen_second
        expected = (first * second)[both].mean()
        assert covariance[0, lags + dt, radius + dy, radius + dx] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        # d columns one way round are 9 - d the other, and so are rows where they wrap
        other = dx - 9 if dx > 0 else dx + 9
        assert covariance[0, lags + dt, radius + dy, radius + other] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        if rows_wrap and dy:
            other = dy - 9 if dy > 0 else dy + 9
            assert covariance[0, lags + dt, radius + other, radius + dx] == pytest.approx(expected, rel=1e-4,
                                                                                          abs=1e-6)

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


@pytest.mark.parametrize("rows_wrap", [False, True])
def test_the_covariance_guess_round_a_circle_is_the_best_linear_estimate_with_offsets_the_short_way_round(
        rows_wrap):
    lags, radius, (t, h, w) = 1, 4, (3, 5, 8)
    dt, dy, dx = torch.meshgrid(*(torch.arange(-r, r + 1.0) for r in (lags, radius, radius)), indexing="ij")
    # a covariance of a field that wraps round the 8 columns, as large 4 columns away one way round as the other
    # (and round the 5 rows too where they wrap)
    along_rows = 1 + 0.5 * torch.cos(2 * torch.pi * dy / h) if rows_wrap else torch.exp(-dy**2 / 1.5)
    covariance = (torch.exp(-dt**2 / 1.5) * along_rows * (1 + 0.5 * torch.cos(2 * torch.pi * dx / w)))[None]
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(1, 1, t, h, w, generator=gen)
    mask = torch.rand(1, 1, t, h, w, generator=gen) > 0.6
    guess = covariance_guess(values, mask, covariance, 400, periodic=(rows_wrap, True), nugget=0.01)

    def short_way(d, n):  # -3 to 4 of 8 columns (-2 to 2 of 5 rows): each offset once
        d %= n
        return d - n if d > n // 2 else d

    cells = [(a, i, j) for a in range(t) for i in range(h) for j in range(w)]
    dense = np.zeros((len(cells), len(cells)))
    for p, (a, i, j) in enumerate(cells):
        for q, (b, k, m) in enumerate(cells):
            across, down = short_way(m - j, w), short_way(k - i, h) if rows_wrap else k - i
            if abs(b - a) <= lags and abs(down) <= radius:
                dense[p, q] = (float(covariance[0, b - a + lags, down + radius, across + radius])
                               * (1 - abs(b - a) / (lags + 1)))
    seen, y = mask.numpy().ravel(), values.numpy().ravel()
    nugget = 0.01 * float(covariance[0, lags, radius, radius])  # a share of the variance
    weights = np.linalg.solve(dense[np.ix_(seen, seen)] + nugget * np.eye(seen.sum()), y[seen])
    np.testing.assert_allclose(guess.numpy().ravel(), np.where(seen, y, dense[:, seen] @ weights), atol=1e-4)

def waves(t=40, h=24, w=24, seed=0, periodic=False, rows=False) -> np.ndarray:
    """``(1, 1, t, h, w)``: a few plane waves with amplitudes that drift from step to step: a stationary field whose
    covariance reaches across the grid, which a smooth surface through a block's rim cannot continue; ``periodic``:
    whole waves along the columns, so that the field wraps round them; ``rows``: along the rows too."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    field = np.zeros((t, h, w))
    for k in range(4):
        ky, kx = rng.uniform(-0.9, 0.9, 2)
        if periodic:
            kx = 2 * np.pi * rng.choice([-3, -2, -1, 1, 2, 3]) / w
        if rows:
            ky = 2 * np.pi * rng.choice([-3, -2, -1, 1, 2, 3]) / h
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
    chosen = engine.config.validation["first_guess"]
    assert chosen.startswith("optimal interpolation"), errors
    # held back through their sample as the gaps are (two blocks here), scored 1.8 times better than the best bending
    assert errors[chosen] < 0.6 * min(e for label, e in errors.items() if "bending" in label), errors
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
    assert not any(label.startswith("optimal interpolation") for label in drawn_anew.config.validation[
        "first_guess_nmse"])



def test_a_fit_on_a_grid_that_wraps_round_estimates_the_covariance_round_it():
    truth = np.concatenate([waves(seed=4, periodic=True), waves(seed=5, periodic=True)])
    values = truth.copy()
    values[0, ..., 8:16, 18:24] = np.nan  # blocks that never move, one against the seam
    values[0, ..., 8:16, 0:4] = np.nan
    values[1, ..., 0:8, 6:16] = np.nan
    engine = Engine.fit_array(values, mask="block", periodic=True, steps=2, batch_size=2, progress=False,
                              verbose=False)
    assert engine.config.validation["first_guess"].startswith("optimal interpolation"), engine.config.validation
    covariance = engine.denoiser.first_guess.covariance
    middle = (covariance.shape[-1] - 1) // 2
    for columns in (3, 9, 14):  # one way round, and the other
        torch.testing.assert_close(covariance[..., middle + columns], covariance[..., middle + columns - 24])
    filled, _ = engine.fill(values, ImputeConfig(K=2, seed=1, batch_size=4, progress=False))
    gaps = np.isnan(values)
    assert float(((filled - truth)[gaps] ** 2).mean() / truth[gaps].var()) < 0.3

def test_a_fit_on_a_doubly_periodic_grid_fills_blocks_across_the_row_seam_from_both_sides():
    truth = np.concatenate([waves(seed=6, periodic=True, rows=True), waves(seed=7, periodic=True, rows=True)])
    values = truth.copy()
    values[0, ..., 20:24, 8:16] = np.nan  # a block that never moves, cut by the seam between the last row and the first
    values[0, ..., 0:4, 8:16] = np.nan
    values[1, ..., 8:16, 16:24] = np.nan
    fit = dict(mask="block", steps=2, batch_size=2, progress=False, verbose=False)
    both = Engine.fit_array(values, periodic=(True, True), **fit)
    assert both.config.periodic_rows and both.denoiser.row_period == 24
    covariance = both.denoiser.first_guess.covariance
    middle = (covariance.shape[-2] - 1) // 2
    for rows in (3, 9, 14):  # one way round the rows, and the other
        torch.testing.assert_close(covariance[..., middle + rows, :], covariance[..., middle + rows - 24, :])
    gaps = np.isnan(values)

    def error(engine):
        filled, _ = engine.fill(values, ImputeConfig(K=2, seed=1, batch_size=4, progress=False))
        return float(((filled - truth)[gaps] ** 2).mean() / truth[gaps].var())

    columns_only = Engine.fit_array(values, periodic=True, **fit)
    assert columns_only.denoiser.row_period == 0
    assert error(both) < 0.5 * error(columns_only) and error(both) < 0.2


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
    assert model.validation["first_guess"].startswith("optimal interpolation"), model.validation["first_guess_nmse"]
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
    assert model.validation["first_guess"].startswith("optimal interpolation"), model.validation["first_guess_nmse"]
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
    chosen = model.validation["first_guess"]
    assert chosen.startswith("optimal interpolation"), errors
    # held back at every step around their windows, the blocks lean on no observation of their own cells
    assert errors[chosen] < 0.5 * min(e for label, e in errors.items()
                                      if not label.startswith("optimal interpolation")), errors


def test_the_mean_covariance_is_chosen_over_the_tapered_only_where_it_clearly_beats_it():
    from xrimpute.nets.prior import BASELINE_MARGIN, CANDIDATES, choose_guess

    gen = torch.Generator().manual_seed(0)
    # one rough pattern whose amplitude changes each step: the covariance carries it, smoothing cannot
    pattern = torch.randn(1, 1, 1, 12, 12, generator=gen)
    values = pattern * torch.randn(2, 1, 5, 1, 1, generator=gen)
    observed = torch.rand(values.shape, generator=gen) > 0.4
    held = observed & (torch.rand(values.shape, generator=gen) > 0.7)
    covariance = field_covariance(values, observed, lags=2, radius=11)
    white = torch.zeros_like(covariance)  # no offset but none: a guess of the mean away from the context
    white[:, 2, 11, 11] = covariance[:, 2, 11, 11]
    names = ["space", "optimal interpolation", "optimal interpolation, tapered"]
    candidates = {name: CANDIDATES[name] for name in names}

    def chosen(mean, tapered):
        return choose_guess(values, observed & ~held, held, candidates, covariances={names[1]: mean, names[2]: tapered})

    # a tie, or a mean estimate not clearly better: the tapered one, positive semi-definite
    label, errors = chosen(covariance, covariance)
    assert errors[names[1]] == errors[names[2]] < BASELINE_MARGIN * errors["space"] and label == names[2]
    label, errors = chosen(covariance, white)
    assert errors[names[1]] < BASELINE_MARGIN * errors[names[2]] and label == names[1]
    label, errors = chosen(white, covariance)
    assert label == names[2]
