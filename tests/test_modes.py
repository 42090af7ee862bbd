"""The series' spatial modes as a baseline of the first guess: found, fitted to a context alone, chosen, every path."""
import numpy as np
import pytest
import torch
import xarray as xr

import xrimpute
from test_lazy import imputed_alike_on_every_path
from xrimpute import cube, samplers
from xrimpute.engine import Engine, ImputeConfig, _first_guess, _on_every_window
from xrimpute.nets import Denoiser
from xrimpute.nets.prior import (BASELINE_MARGIN, MODES, MODES_LABEL, NEARBY_SPAN, choose_guess, modes_baseline,
                                 spatial_modes)
from xrimpute.samplers import VALIDATION_WINDOWS, training_windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def patterns(t=60, h=16, w=20, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """``(1, 1, t, h, w)`` float32: a fixed rough field plus three rough spatial patterns whose amplitudes swing
    with periods of 7 to 11 steps (neighbours tell little, and a cell's observations ten steps apart little more),
    and the patterns."""
    rng = np.random.default_rng(seed)
    shapes = rng.standard_normal((4, h, w))
    swings = np.sin(2 * np.pi * np.arange(t)[:, None] / [7.0, 9.0, 11.0] + rng.uniform(0, 2 * np.pi, 3))
    amplitudes = np.c_[np.ones(t), swings * [3.0, 2.0, 1.0]]
    field = np.einsum("tk,khw->thw", amplitudes, shapes)
    return field[None, None].astype(np.float32), shapes


def pixels(values: np.ndarray, share: float, seed: int = 1) -> np.ndarray:
    return np.where(np.random.default_rng(seed).random(values.shape) < share, values, np.nan).astype(np.float32)


def test_the_modes_span_the_patterns_of_the_series_from_its_observed_cells_alone():
    truth, shapes = patterns()
    observed = np.isfinite(pixels(truth, 0.5))  # sparser, the line along time blurs the weakest pattern away
    # what the modes must not see: any value where a cell is not observed
    values = torch.as_tensor(np.where(observed, truth, 1e6))
    modes = spatial_modes(values, torch.as_tensor(observed), count=3)
    assert modes.shape == (4, 1, 16, 20)
    basis = modes[1:].reshape(3, -1).double()
    np.testing.assert_allclose((basis @ basis.T).numpy(), np.eye(3), atol=1e-5)  # unit length, orthogonal
    varying = torch.as_tensor(shapes[1:].reshape(3, -1))
    kept = (varying @ basis.T) @ basis
    assert torch.all((kept.norm(dim=1) / varying.norm(dim=1)) ** 2 > 0.75)  # the modes hold most of each pattern
    np.testing.assert_array_equal(spatial_modes(values, torch.as_tensor(observed), count=3), modes)  # repeatable
    never = observed.copy()
    never[..., 2, 3] = False
    assert torch.all(spatial_modes(values, torch.as_tensor(never), count=3)[:, 0, 2, 3] == 0)  # no mode reaches it
    flat = spatial_modes(torch.full((1, 1, 20, 5, 6), 2.0), torch.ones(1, 1, 20, 5, 6, dtype=torch.bool))
    assert torch.all(flat[0] == 2.0) and torch.all(flat[1:] == 0)  # nothing varies: no mode beyond the means


def test_the_baseline_is_a_function_of_the_context_alone_and_fills_a_frames_gaps_from_its_few_cells():
    truth, _ = patterns()
    observed = np.isfinite(pixels(truth, 0.5))
    modes = spatial_modes(torch.as_tensor(np.where(observed, truth, 0)), torch.as_tensor(observed))
    window = torch.as_tensor(truth[:, :, 10:15])
    mask = torch.as_tensor(np.random.default_rng(3).random(window.shape) < 0.15)
    baseline = modes_baseline(window, mask, modes)
    changed = torch.where(mask, window, window + 100.0)  # a query cell's value changes: the baseline does not
    torch.testing.assert_close(modes_baseline(changed, mask, modes), baseline)
    means = modes[0][None, :, None].expand_as(window)
    torch.testing.assert_close(modes_baseline(window, torch.zeros_like(mask), modes), means)  # no context: means

    def error(estimate):
        return float(((estimate - window)[~mask] ** 2).mean() / window[~mask].var())

    assert error(modes_baseline(window, mask, modes, ridge=0.0)) < 0.15  # 15 % of the cells fix the amplitudes
    assert error(modes_baseline(window, mask, modes, ridge=0.0)) < error(baseline) < error(means)  # pulled to 0


def test_a_network_with_modes_keeps_them_asks_for_their_grid_and_stands_alone_from_the_nearby_steps():
    modes = torch.randn(1 + MODES, 1, 8, 8)
    net = Denoiser(1, 3, preset="narrow", first_guess=True, modes=modes)
    assert net.config["modes"] == MODES and torch.equal(net.modes, modes)
    assert "modes" not in Denoiser(1, 3, preset="narrow", first_guess=True).config  # older files rebuild as they were
    with pytest.raises(ValueError, match="modes of a \\(8, 8\\) grid"):
        net(torch.zeros(1, 1, 3, 8, 16), torch.ones(1, 1, 3, 8, 16, dtype=torch.bool), torch.full((1,), 0.1))
    with pytest.raises(ValueError, match="without history= or nearby="):
        Denoiser(1, 3, preset="narrow", first_guess=True, nearby=NEARBY_SPAN, modes=modes)


def test_a_fit_leans_on_the_modes_where_they_fill_the_held_back_cells_best_and_the_model_file_keeps_them(tmp_path):
    truth, _ = patterns()
    values = pixels(truth, 0.5)
    fit = dict(mask="pixel", steps=2, batch_size=2, progress=False, verbose=False)
    engine = Engine.fit_array(values, **fit)
    chosen = engine.config.validation["first_guess"]
    errors = engine.config.validation["first_guess_nmse"]
    assert chosen.endswith(MODES_LABEL), errors
    plain = min(error for label, error in errors.items() if not label.endswith(MODES_LABEL))
    assert errors[chosen] < 0.7 * plain, errors
    assert engine.denoiser.modes is not None
    options = ImputeConfig(K=2, seed=1, batch_size=1, progress=False)
    filled, _ = engine.fill(values, options)
    gaps = np.isnan(values)
    assert float(((filled - truth)[gaps] ** 2).mean() / truth[gaps].var()) < 0.5
    again = Engine.load(engine.save(tmp_path / "m.xri"))
    assert torch.equal(again.denoiser.modes, engine.denoiser.modes)
    np.testing.assert_array_equal(again.fill(values, options)[0], filled)
    continued = Engine.fit_array(values, init=again, **fit)  # an init keeps its modes
    assert torch.equal(continued.denoiser.modes, engine.denoiser.modes)
    tiled = Engine.fit_array(values, tile=(8, 10), **fit)
    assert tiled.denoiser.modes is None  # the modes cover the whole grid: no tiles
    assert not any(label.endswith(MODES_LABEL) for label in tiled.config.validation["first_guess_nmse"])
    block = truth.copy()
    block[:, :, :50, 4:12, 5:15] = np.nan  # a block that stays put for 50 steps: far from its cells' observations
    kept_out = Engine.fit_array(block, **{**fit, "mask": "block"})
    assert not any(label.endswith(MODES_LABEL) for label in kept_out.config.validation["first_guess_nmse"])


@pytest.mark.slow
def test_a_modes_model_imputes_lazily_and_on_a_cluster_as_in_memory(tmp_path, cluster):
    truth, _ = patterns(t=30, h=24, w=24)
    times = np.datetime64("2020-01-01") + np.arange(30) * np.timedelta64(1, "h")
    coords = {"time": times, "latitude": ("latitude", np.linspace(-60, 60, 24), {"units": "degrees_north"}),
              "longitude": ("longitude", np.arange(24) * 15.0, {"units": "degrees_east"})}
    data = xr.Dataset({"t2m": (("time", "latitude", "longitude"), pixels(truth, 0.5)[0, 0])}, coords=coords)
    data.chunk(time=4).to_zarr(tmp_path / "source.zarr", consolidated=False)
    model = xrimpute.fit(data, mask="pixel", steps=4, batch_size=4, progress=False, verbose=False, seed=0)
    assert model.engine.denoiser.modes is not None, model.validation["first_guess_nmse"]
    assert "leaning on the series' 4 leading spatial modes" in repr(model)
    model.save(tmp_path / "model.xri")
    reference, _ = imputed_alike_on_every_path(tmp_path, data, model, cluster)
    assert int(reference.to_array().isnull().sum()) == 0
    filled = cube.to_array(reference)[0]
    gaps = np.isnan(cube.to_array(data)[0])
    assert float(((filled - truth)[gaps] ** 2).mean() / truth[gaps].var()) < 0.5


def test_a_guess_leans_on_the_modes_only_where_they_fill_the_held_back_cells_clearly_better():
    rng = np.random.default_rng(0)
    level = torch.as_tensor(rng.standard_normal((16, 20)) * 2, dtype=torch.float32)  # each cell's own level
    values = level + 0.3 * torch.as_tensor(rng.standard_normal((2, 1, 5, 16, 20)), dtype=torch.float32)
    mask = torch.as_tensor(rng.random(values.shape) < 0.3)
    held = torch.as_tensor(rng.random(values.shape) < 0.1) & ~mask
    for share, leans in ((0.02, False), (0.2, True)):  # modes whose means hold a little, or more, of each level
        modes = torch.zeros(1 + MODES, 1, 16, 20)
        modes[0, 0] = share * level
        chosen, errors = choose_guess(values, mask, held, modes=modes)
        plain = min(error for label, error in errors.items() if not label.endswith(MODES_LABEL))
        better = min(error for label, error in errors.items() if label.endswith(MODES_LABEL)) / plain
        assert better < 1 and (better < BASELINE_MARGIN) == leans, errors  # the modes win on both
        assert chosen.endswith(MODES_LABEL) == leans, errors


def test_a_guess_leaning_on_the_modes_must_win_by_the_margin_on_every_window_with_held_back_cells_too():
    rng = np.random.default_rng(0)
    level, elsewhere = (torch.as_tensor(rng.standard_normal((16, 20)) * 2, dtype=torch.float32) for _ in range(2))
    modes = torch.zeros(1 + MODES, 1, 16, 20)
    modes[0, 0] = 0.2 * level  # their means hold a share of each cell's level, as in the test above

    def windows(field, seed):
        rng = np.random.default_rng(seed)
        values = field + 0.3 * torch.as_tensor(rng.standard_normal((2, 1, 5, 16, 20)), dtype=torch.float32)
        mask = torch.as_tensor(rng.random(values.shape) < 0.3)
        return values, mask, torch.as_tensor(rng.random(values.shape) < 0.1) & ~mask, {}

    validation = windows(level, 1)
    label, errors = _first_guess(validation, {}, None, modes=modes)
    assert label.endswith(MODES_LABEL), errors
    assert _first_guess(validation, {}, None, modes=modes, wide=lambda: windows(level, 2))[0] == label
    # windows where the modes' means are no cell's level: they fill worse there, and the best without them is kept
    plain, errors = _first_guess(validation, {}, None, modes=modes, wide=lambda: windows(elsewhere, 2))
    assert plain == min((name for name in errors if not name.endswith(MODES_LABEL)), key=errors.get)


def test_a_guess_on_departures_is_weighed_on_every_window_against_the_values_mean_fill():
    """The cycle's margin: a guess on the departures from a cycle against guesses on the values, both as shares of
    the values' mean fill on the same held-back cells."""
    rng = np.random.default_rng(0)
    values = torch.as_tensor(rng.standard_normal((3, 1, 5, 12, 14)), dtype=torch.float32)
    mask = torch.as_tensor(rng.random(values.shape) < 0.4)
    held = torch.as_tensor(rng.random(values.shape) < 0.1) & ~mask
    plain = (values, mask, held, {})
    own, theirs = _on_every_window(plain, {}, None, "space", ["space", "time first"])
    _, errors = choose_guess(values, mask, held)
    assert (own, theirs) == pytest.approx((errors["space"], min(errors["space"], errors["time first"])))
    halved = (values / 2, mask, held, {})  # departures half the values: a linear guess errs a quarter as much
    own, theirs = _on_every_window(halved, {}, None, "space", ["space"], plain)
    assert own == pytest.approx(theirs / 4, rel=1e-4)


def test_a_fit_in_memory_keeps_every_window_with_held_back_cells_where_more_than_it_scores_hold_some(monkeypatch):
    truth, _ = patterns(t=60, h=8, w=10)
    spec = xrimpute.masks.Pixel(0.5)
    mean, std = np.zeros(1, dtype=np.float32), np.ones(1, dtype=np.float32)
    long = training_windows(pixels(truth, 0.5), spec, mean, std, window=3, seed=0)
    held = long.validation[2]
    assert len(held) == VALIDATION_WINDOWS and len(long.wide_validation[2]) == 20  # 60 steps: 20 windows of 3
    assert int(long.wide_validation[2].sum()) > 1.2 * int(held.sum())
    short = training_windows(pixels(truth[:, :, :30], 0.5), spec, mean, std, window=3, seed=0)
    assert short.wide_validation is None and len(short.validation[2]) == 10  # every window scored already
    just = training_windows(pixels(truth[:, :, :48], 0.5), spec, mean, std, window=3, seed=0)
    assert just.wide_validation is None and len(just.validation[2]) == VALIDATION_WINDOWS  # all 16, not twice
    monkeypatch.setattr(samplers, "WIDE_VALIDATION_CELLS", VALIDATION_WINDOWS * 3 * 8 * 10)  # room for 16 windows
    assert training_windows(pixels(truth, 0.5), spec, mean, std, window=3, seed=0).wide_validation is None
