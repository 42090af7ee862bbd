"""Each cell's history outside the window: what reaches the first guess, the totals on every path, when a fit uses it."""
import dask.array as da
import numpy as np
import pytest
import torch

import xrimpute
from test_lazy import FIT, archive, imputed_alike_on_every_path
from xrimpute.diffusion import VPSchedule, context_query_loss
from xrimpute import cube
from xrimpute.errors import ArgumentError
from xrimpute.engine import Engine, ImputeConfig, WINDOWS, needs_history
from xrimpute.masks import Pixel, Station
from xrimpute.nets import Denoiser
from xrimpute.nets.prior import history_baseline
from xrimpute.samplers import training_windows
from xrimpute.windows import Piece, outside_window, series_totals, window_sums

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smooth_series(t=12, h=16, w=16, seed=0) -> np.ndarray:
    """``(1, 1, t, h, w)``: a field drifting slowly in time, with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / 8.0
    steps = np.arange(t)[:, None, None]
    return (np.sin(x + 0.1 * steps) + np.cos(y) + 0.1 * rng.standard_normal((t, h, w)))[None, None].astype(np.float32)


def test_a_query_value_in_the_window_never_reaches_the_input_but_an_observation_outside_it_does():
    torch.manual_seed(0)
    net = Denoiser(1, 4, preset="lite", first_guess=True, history=True)
    series = torch.as_tensor(smooth_series())
    observed = torch.rand(series.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    start, spec = 4, Pixel(0.5)
    seen = []

    def inputs_of(values):  # the window's loss, recording what the network and its first guess get
        totals = series_totals(np.where(observed.numpy(), values.numpy(), np.nan), np.zeros(1), np.ones(1))
        x, m = values[:, :, start : start + 4], observed[:, :, start : start + 4]
        history = outside_window(totals, x, m)

        def recording(v, mask, t):
            seen.append((v.clone(), mask.clone(), history.clone(), *net.guess(v, mask, history)))
            return net(v, mask, t, history=history)

        context_query_loss(recording, x, m, spec, VPSchedule(), torch.Generator().manual_seed(3))
        return seen[-1]

    before = inputs_of(series)
    query = spec.query(observed[:, :, start : start + 4], before[1]) & ~before[1]
    assert query.any()
    inside = series.clone()
    inside[:, :, start : start + 4] = torch.where(query, inside[:, :, start : start + 4] + 100.0,
                                                  inside[:, :, start : start + 4])
    for a, b in zip(before, inputs_of(inside)):
        assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())  # the sums lose a few ulps of 100
    outside = series.clone()
    outside[:, :, 0] += 5.0 * observed[:, :, 0]  # observations before the window
    after = inputs_of(outside)
    assert not torch.allclose(before[3], after[3], atol=0.1)  # the guess leans on them


def test_the_baseline_is_each_cells_mean_shrunk_towards_its_neighbours_and_zero_without_history():
    sums, counts = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    counts[..., 2, 3], sums[..., 2, 3] = 64.0, 64.0 * 2.0  # one cell seen 64 times, mean 2
    baseline = history_baseline(torch.cat([sums, counts], 1))
    assert baseline[0, 0, 2, 3] == pytest.approx(2.0, rel=1e-5)  # its neighbours' fill is its own mean
    assert 0 < float(baseline[0, 0, 2, 5]) < 2.0 + 1e-5  # never observed: the spatial fill of it
    assert torch.equal(history_baseline(torch.zeros(1, 2, 8, 8)), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="pass history="):
        Denoiser(1, 3, preset="lite", first_guess=True, history=True)(torch.zeros(1, 1, 3, 8, 8),
                                                                      torch.ones(1, 1, 3, 8, 8, dtype=bool),
                                                                      torch.full((1,), 1e-3))


def test_numpy_and_dask_totals_agree_and_leave_out_withheld_cells():
    values = np.concatenate([smooth_series(seed=0), smooth_series(seed=1)])
    values[np.random.default_rng(2).random(values.shape) < 0.4] = np.nan
    mean, std = np.array([0.5]), np.array([2.0])
    eager = series_totals(values, mean, std)
    lazy = series_totals(da.from_array(values, chunks=(1, 1, 5, 8, 16)), mean, std)
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(np.asarray(lazy), eager, rtol=1e-12)
    assert eager[:, 1].sum() == np.isfinite(values).sum()
    np.testing.assert_allclose(eager[1, 0], np.nansum((values[1, 0] - 0.5) / 2.0, axis=0), rtol=1e-5)
    withheld = np.zeros((2, 16, 16), bool)
    withheld[1, 3, 4] = True  # one series' cell
    totals = series_totals(values, mean, std, withheld)
    assert not totals[1, :, 3, 4].any() and totals[0, 1, 3, 4] == np.isfinite(values[0, 0, :, 3, 4]).sum()


def test_training_history_leaves_out_held_back_cells_and_in_an_archive_the_reserved_windows():
    values = np.concatenate([smooth_series(t=24, seed=s) for s in range(2)])
    values[np.random.default_rng(3).random(values.shape) < 0.5] = np.nan
    mean, std = np.zeros(1, np.float32), np.ones(1, np.float32)
    spec = Pixel(0.5)
    windows = training_windows(values, spec, mean, std, window=4, val_fraction=0.2, seed=0, history=True)
    xs, ms, hs, inputs = windows.validation
    totals = series_totals(np.where(windows.observed.numpy(), values, np.nan), mean, std)
    for b, (i, s, _, _) in enumerate(windows.validation_jobs):
        expected = totals[i] - window_sums(xs[b : b + 1], ms[b : b + 1]).numpy()[0]
        np.testing.assert_allclose(inputs["history"][b].numpy(), expected, rtol=1e-5, atol=1e-4)
    x, m, batch = windows.sample(3, torch.Generator().manual_seed(0))
    assert batch["history"].shape == (3, 2, 16, 16) and float(batch["history"][:, 1].max()) > 0

    archive_values = da.from_array(values, chunks=(1, 1, 8, 16, 16))
    chunked = training_windows(archive_values, spec, mean, std, window=4, val_fraction=0.2, seed=0, history=True)
    try:
        reserved = chunked.validation_jobs
        assert reserved
        expected = series_totals(values, mean, std)
        for i, s, _, _ in reserved:  # training never sees a reserved window, so its observations leave the totals
            expected[i] -= series_totals(values[i : i + 1, :, s : s + 4], mean, std)[0]
        np.testing.assert_allclose(chunked.totals, expected, atol=1e-9)
        np.testing.assert_allclose(chunked.validation[3]["history"].numpy(),
                                   np.stack([expected[i] for i, *_ in reserved]), rtol=1e-6)
        _, _, drawn = chunked.sample(4, torch.Generator().manual_seed(0))
        assert drawn["history"].shape == (4, 2, 16, 16)
    finally:
        chunked.close()


def test_stations_withheld_from_training_an_archive_are_in_no_totals():
    rng = np.random.default_rng(4)
    cells = np.zeros((16, 16), bool)
    cells[rng.integers(0, 16, 20), rng.integers(0, 16, 20)] = True
    values = np.where(cells, smooth_series(t=24), np.nan).astype(np.float32)
    valid = np.isfinite(values).any(axis=(0, 2))
    windows = training_windows(da.from_array(values, chunks=(1, 1, 8, 16, 16)), Station(), np.zeros(1),
                               np.ones(1), window=4, val_fraction=0.2, seed=0, valid=valid, history=True)
    try:
        assert windows.withheld.any() and windows.validation_jobs
        counts = windows.totals[:, 1]
        assert counts.min() >= 0 and not counts[windows.withheld].any()
        cuts = np.stack([windows.withheld[i] for i, *_ in windows.validation_jobs])
        assert not windows.validation[3]["history"][:, 1][torch.as_tensor(cuts)].any()
    finally:
        windows.close()


def test_a_swath_that_leaves_frames_empty_for_hours_gets_history_and_pixels_do_not():
    rng = np.random.default_rng(0)
    pixels = rng.random((1, 1, 32, 24, 24)) < 0.2
    swath = np.zeros((1, 1, 32, 24, 24), bool)
    swath[:, :, ::8] = rng.random((1, 1, 4, 24, 24)) < 0.9  # one pass every 8 steps
    assert not needs_history(pixels, 32) and needs_history(swath, 32)
    values = np.where(swath, smooth_series(t=32, h=24, w=24), np.nan).astype(np.float32)
    fit = dict(steps=2, batch_size=2, progress=False, verbose=False)
    auto = Engine.fit_array(values, "pixel", **fit)
    assert auto.window > WINDOWS[0] and auto.config.history and auto.denoiser.uses_history
    with pytest.raises(ArgumentError, match="history must be True, False or None"):
        Engine.fit_array(values, "pixel", history="yes", **fit)
    off = Engine.fit_array(values, "pixel", history=False, **fit)
    assert not off.config.history and not off.denoiser.uses_history
    filled, _ = auto.fill(values)
    assert np.isfinite(filled).all()
    with pytest.raises(ValueError, match="totals="):
        auto.fill(values, piece=Piece.whole(values.shape))


@pytest.fixture(scope="module")
def remembering(tmp_path_factory):
    """A model of the test archive whose guess leans on history, saved beside the archive as zarr."""
    root = tmp_path_factory.mktemp("history")
    data = archive()
    data.chunk(time=4).to_zarr(root / "source.zarr", consolidated=False)
    model = xrimpute.fit(data, history=True, tile=(16, 16), **FIT)  # tiles wrapping round the globe
    model.save(root / "model.xri")
    return root, data, model


@pytest.mark.slow
def test_a_history_model_imputes_lazily_and_on_a_cluster_as_in_memory_and_survives_saving(remembering, cluster):
    root, data, model = remembering
    assert model.engine.denoiser.uses_history and xrimpute.load(root / "model.xri").engine.denoiser.uses_history
    assert "history outside the window" in repr(model) and model.info["tile"] == [16, 16]
    reference, same = imputed_alike_on_every_path(root, data, model, cluster)
    values, _ = cube.to_array(data)
    blind, _ = model.engine.fill(values, ImputeConfig(progress=False, **same),
                                 totals=np.zeros_like(model.engine.totals(values)))  # as if nothing were outside
    assert np.abs(blind - cube.to_array(reference)[0]).max() > 1e-2  # the history reaches the imputation
    with pytest.warns(UserWarning, match="small noise levels"):  # a CPU fit's; sampling still runs
        draws = model.sample(data.isel(time=slice(0, 10)), n=2, steps=2, K=2)
    assert int(draws.to_array().isnull().sum()) == 0
