"""Each cell's nearest observations before and after the window: the input, the baseline, the choice, every path."""
import dask.array as da
import numpy as np
import pytest
import torch

import xrimpute
from test_lazy import archive, imputed_alike_on_every_path
from xrimpute import cube
from xrimpute.engine import Engine, ImputeConfig, ModelMismatch, offers_nearby
from xrimpute.masks import gaps_near_in_time
from xrimpute.errors import ArgumentError
from xrimpute.masks import Pixel
from xrimpute.model import CtxDiffModel
from xrimpute.nets import Denoiser
from xrimpute.nets.prior import (BASELINE_MARGIN, NEARBY_LABEL, NEARBY_SPAN, OWN_CURVE_LABEL, OWN_CURVE_SHARE,
                                 FirstGuess, candidate_label, choose_guess, nearby_baseline, nearby_guess, own_curve)
from xrimpute.samplers import training_windows
from xrimpute.windows import nearby_observations, plan, Tiling

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blocks_anew(values: np.ndarray, seed: int = 0, size=(8, 10)) -> np.ndarray:
    """``values`` ``(N, C, T, H, W)`` with a block of ``size`` cells missing at a new place every step."""
    rng = np.random.default_rng(seed)
    out = values.copy()
    n, _, t, h, w = values.shape
    for i in range(n):
        for s in range(t):
            r, c = rng.integers(0, h - size[0] + 1), rng.integers(0, w - size[1] + 1)
            out[i, :, s, r : r + size[0], c : c + size[1]] = np.nan
    return out


def slow_waves(t=40, h=16, w=20) -> np.ndarray:
    """``(1, 1, t, h, w)``: smooth in time (hourly-like), rough enough in space that neighbours are a poor guess."""
    rng = np.random.default_rng(1)
    steps = np.arange(t)[:, None, None]
    rough = rng.standard_normal((1, h, w))
    return (np.sin(0.2 * steps + 3 * rough) + 0.3 * np.cos(0.1 * steps))[None, None].astype(np.float32)


def test_the_nearest_observations_either_side_and_their_distances_from_a_stretch_as_from_the_series():
    values = np.arange(12, dtype=np.float32).reshape(1, 12, 1, 1) * np.ones((1, 1, 2, 1), np.float32)
    observed = np.zeros(values.shape, bool)
    observed[0, [1, 3, 9], 0] = True  # cell 0: before and after
    observed[0, [10], 1] = True  # cell 1: after only, 5 steps beyond the window's last step
    out = nearby_observations(values, observed, 4, 2, span=24, depth=1)  # the window holds steps 4 and 5
    assert out.shape == (4, 2, 1)
    np.testing.assert_array_equal(out[:, 0, 0], [3, 1, 9, 4])  # value 3 one step before step 4; 9 four after 5
    np.testing.assert_array_equal(out[:, 1, 0], [0, 0, 10, 5])
    np.testing.assert_array_equal(nearby_observations(values, observed, 4, 2, 3, depth=1)[:, 0, 0], [3, 1, 0, 0])
    np.testing.assert_array_equal(nearby_observations(values, observed, 0, 2, 24, depth=1)[:2, 0, 0], [0, 0])
    deep = nearby_observations(values, observed, 4, 2, span=24)  # three either side, the nearest first
    assert deep.shape == (12, 2, 1)
    np.testing.assert_array_equal(deep[:, 0, 0], [3, 1, 0, 1, 3, 0, 9, 0, 0, 4, 0, 0])
    np.testing.assert_array_equal(deep[:, 1, 0], [0, 0, 0, 0, 0, 0, 10, 0, 0, 5, 0, 0])
    stretch = slice(1, 12)  # a cut holding the span either side gives the same
    np.testing.assert_array_equal(nearby_observations(values[:, stretch], observed[:, stretch], 3, 2, 24), deep)
    inside = values.copy()
    inside[:, 4:6] += 100.0  # the window's own cells (every query cell) never reach it
    steps = [3, 4, 5, 9, 10, 11]
    np.testing.assert_array_equal(nearby_observations(inside, observed | True, 4, 2, 24)[steps],
                                  nearby_observations(values, observed | True, 4, 2, 24)[steps])
    np.testing.assert_array_equal(nearby_observations(inside, observed, 4, 2, 24), deep)


def test_the_baseline_is_the_line_between_the_two_or_a_lone_one_nearby_and_the_plain_guess_is_kept_elsewhere():
    # (value before, steps before the window, value after, steps after), window of 3 steps
    cells = torch.tensor([[0.0, 1, 4.0, 1],  # both, 4 steps apart: a line
                          [2.0, 1, 0.0, 0],  # before only: constant, 1-3 steps away
                          [2.0, 20, 0.0, 0],  # before only, beyond half the span: none
                          [1.0, 15, 5.0, 15]])  # both, 32 steps apart: neither bridged nor near
    nearby = cells.T.reshape(1, 4, 4, 1)  # (B, 4C, H, W) with C = 1 and the cells along H
    base, known = nearby_baseline(nearby, window=3, span=24)
    np.testing.assert_allclose(base[0, 0, :, 0, 0], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(base[0, 0, :, 1, 0], [2.0, 2.0, 2.0])
    assert known[0, 0, :, :2].all() and not known[0, 0, :, 2:].any() and not base[0, 0, :, 2:].any()

    first_guess = FirstGuess(levels=((1.0, 1.0),))
    values = torch.full((1, 1, 3, 4, 1), 9.0)
    mask = torch.zeros_like(values, dtype=torch.bool)
    mask[0, 0, 1, 3] = True  # one context cell, far from the nearby lines
    guess, certainty = nearby_guess(first_guess, values * mask, mask, nearby, span=24)
    plain, plain_certainty = first_guess(values * mask, mask)
    assert torch.equal(guess[0, 0, :, 2:], plain[0, 0, :, 2:]) and torch.equal(certainty, plain_certainty)
    assert not torch.allclose(guess[0, 0, :, 0], plain[0, 0, :, 0])  # the line, moved by the context's departure
    far, far_mask = values[:, :, :, 2:] * mask[:, :, :, 2:], mask[:, :, :, 2:]  # no cell with a line: the plain guess
    assert torch.equal(nearby_guess(first_guess, far, far_mask, nearby[:, :, 2:], 24)[0],
                       first_guess(far, far_mask)[0])


def test_the_curved_baseline_is_the_akima_spline_through_three_observations_either_side_or_the_line_through_two():
    from scipy.interpolate import Akima1DInterpolator

    rng = np.random.default_rng(4)
    values = rng.standard_normal((2, 50, 6, 7)).cumsum(1).astype(np.float32)
    observed = rng.random(values.shape) < 0.3
    start, window = 22, 5
    observed[:, start : start + window] = False
    observed[0, :, 0, 0] = False
    observed[0, [20, 29], 0, 0] = True  # one observation either side: the straight line
    nearby = torch.as_tensor(nearby_observations(values, observed, start, window, NEARBY_SPAN))[None]
    curve, known = nearby_baseline(nearby, window, NEARBY_SPAN, depth=3, curve=True)
    line, _ = nearby_baseline(nearby, window, NEARBY_SPAN, depth=3)
    steps, checked = np.arange(start, start + window), 0
    for c, y, x in np.ndindex(2, 6, 7):
        before = [s for s in range(start - 1, start - NEARBY_SPAN - 1, -1) if s >= 0 and observed[c, s, y, x]][:3]
        after = [s for s in range(start + window, start + window + NEARBY_SPAN) if s < 50 and observed[c, s, y, x]]
        if not before or not after[:1] or after[0] - before[0] > NEARBY_SPAN:
            continue
        knots = sorted(before) + after[:3]
        expected = (np.interp(steps, knots, values[c, knots, y, x]) if len(knots) == 2 else
                    Akima1DInterpolator(np.array(knots, float), values[c, knots, y, x].astype(float))(steps))
        assert known[0, c, :, y, x].all()
        np.testing.assert_allclose(curve[0, c, :, y, x], expected, rtol=1e-5, atol=1e-5)
        checked += 1
    assert checked > 40
    np.testing.assert_allclose(curve[0, 0, :, 0, 0], line[0, 0, :, 0, 0], rtol=1e-6)
    assert (known & ~torch.isclose(curve, line)).any()  # the curve bends where three observations either side say so
    nearest = torch.as_tensor(nearby_observations(values, observed, start, window, NEARBY_SPAN, depth=1))[None]
    np.testing.assert_array_equal(line, nearby_baseline(nearest, window, NEARBY_SPAN)[0])  # the nearest alone


def random_walk_window(seed: int, shape: tuple, rate: float, start: int, window: int):
    """A series ``(C, T, H, W)`` of random walks observed at ``rate``, and the window of ``window`` steps at ``start``:
    ``(values, observed, nearby, inside, mask)``, the last three as a network's guess takes them."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape).cumsum(1).astype(np.float32)
    observed = rng.random(values.shape) < rate
    nearby = torch.as_tensor(nearby_observations(values, observed, start, window, NEARBY_SPAN))[None]
    inside, mask = (torch.as_tensor(a[:, start : start + window])[None] for a in (values, observed))
    return values, observed, nearby, inside, mask


def test_each_cells_own_curve_runs_through_its_context_in_the_window_and_beyond_and_no_query_cell_reaches_it():
    from scipy.interpolate import Akima1DInterpolator

    start, window = 26, 7
    values, observed, nearby, inside, mask = random_walk_window(5, (2, 60, 6, 7), 0.25, start, window)
    curve, known = own_curve(inside * mask, mask, nearby, NEARBY_SPAN, depth=3)
    bent = 0
    for c, k, y, x in np.ndindex(2, window, 6, 7):
        s, seen = start + k, observed[c, :, y, x]
        if seen[s]:
            assert known[0, c, k, y, x] and curve[0, c, k, y, x] == values[c, s, y, x]
            continue
        before = [j for j in range(s - 1, max(start - NEARBY_SPAN, 0) - 1, -1) if seen[j]][:3]
        after = [j for j in range(s + 1, min(start + window + NEARBY_SPAN, 60)) if seen[j]][:3]
        if before and after and after[0] - before[0] <= NEARBY_SPAN:
            knots = sorted(before) + after
            expected = (np.interp(s, knots, values[c, knots, y, x]) if len(knots) == 2 else
                        Akima1DInterpolator(np.array(knots, float), values[c, knots, y, x].astype(float))(s))
            bent += len(knots) > 2
        elif before and s - before[0] <= NEARBY_SPAN / 2 and not (after and after[0] - s < s - before[0]):
            expected = values[c, before[0], y, x]
        elif after and after[0] - s <= NEARBY_SPAN / 2:
            expected = values[c, after[0], y, x]
        else:
            assert not known[0, c, k, y, x]
            continue
        assert known[0, c, k, y, x]
        np.testing.assert_allclose(curve[0, c, k, y, x], expected, rtol=1e-4, atol=1e-4)
    assert bent > 100
    query = inside + 100.0 * ~mask  # the window's cells outside the context never reach it
    for got, expected in zip(own_curve(query, mask, nearby, NEARBY_SPAN, depth=3), (curve, known)):
        assert torch.equal(got, expected)


def test_the_own_curve_takes_its_share_of_the_baseline_where_the_nearby_steps_reach():
    window = 5
    _, _, nearby, inside, mask = random_walk_window(6, (1, 40, 8, 9), 0.3, 15, window)
    first_guess = FirstGuess(levels=((1.0, 1.0),))
    line, known = nearby_baseline(nearby, window, NEARBY_SPAN, depth=3, curve=True)
    curve, _ = own_curve(inside * mask, mask, nearby, NEARBY_SPAN, depth=3)
    mixed, _ = nearby_guess(first_guess, inside * mask, mask, nearby, NEARBY_SPAN, curve=True, own=OWN_CURVE_SHARE)
    plain, _ = nearby_guess(first_guess, inside * mask, mask, nearby, NEARBY_SPAN, curve=True)
    # the guess is linear in its baseline: the mix of the guesses from each baseline
    from_curve, _ = first_guess(inside * mask, mask, torch.where(known, curve, line))
    np.testing.assert_allclose(mixed, torch.lerp(plain, torch.where(known, from_curve, plain), OWN_CURVE_SHARE),
                               rtol=1e-4, atol=1e-4)
    assert not torch.allclose(mixed[known], plain[known])


def test_a_fit_keeps_the_own_curve_unless_the_held_back_cells_clearly_say_otherwise_and_old_files_do_without(tmp_path):
    values = blocks_anew(slow_waves(t=30))
    engine = Engine.fit_array(values, mask="block", nearby=True, steps=1, batch_size=2, progress=False,
                              verbose=False)
    label, errors = engine.config.validation["first_guess"], engine.config.validation["first_guess_nmse"]
    without = label.removesuffix(OWN_CURVE_LABEL)
    assert label.endswith(NEARBY_LABEL + OWN_CURVE_LABEL) and errors[without] >= BASELINE_MARGIN * errors[label], errors
    assert Engine.load(engine.save(tmp_path / "own.xri")).denoiser.config["own_curve"] == OWN_CURVE_SHARE
    assert "25% of it each cell's own curve through the window" in repr(CtxDiffModel(engine))
    options = ImputeConfig(K=1, context="observed", progress=False)
    gaps = np.isnan(values)
    own, _ = engine.fill(values, options)
    del engine.denoiser.config["own_curve"]  # as a file written before the own curve reads
    older = Engine.load(engine.save(tmp_path / "older.xri"))
    assert "own_curve" not in older.denoiser.config
    assert not np.allclose(older.fill(values, options)[0][gaps], own[gaps])


def test_a_new_fit_curves_the_baseline_and_a_model_file_without_the_curve_keeps_its_straight_line(tmp_path):
    values = blocks_anew(slow_waves(t=30))
    engine = Engine.fit_array(values, mask="block", nearby=True, steps=1, batch_size=2, progress=False,
                              verbose=False)
    assert engine.denoiser.config["curve"] and not engine.denoiser.flows
    assert Engine.load(engine.save(tmp_path / "curved.xri")).denoiser.config["curve"]
    options = ImputeConfig(K=1, context="observed", progress=False)
    curved, _ = engine.fill(values, options)
    del engine.denoiser.config["curve"]  # as a file written before the curve reads
    straight = Engine.load(engine.save(tmp_path / "straight.xri"))
    assert "curve" not in straight.denoiser.config
    gaps = np.isnan(values)
    assert not np.allclose(straight.fill(values, options)[0][gaps], curved[gaps])
    np.testing.assert_array_equal(straight.fill(values, options)[0], engine.fill(values, options)[0])


def test_the_nearby_guess_wins_on_blocks_drawn_anew_each_step_and_not_on_pixels_of_a_field_white_in_time():
    truth = torch.as_tensor(slow_waves())
    window, start = 5, 12
    rng = np.random.default_rng(2)
    for observed_np, wins in ((np.isfinite(blocks_anew(slow_waves(), size=(10, 14))), True),
                              (rng.random(truth.shape) < 0.4, False)):
        values = truth if wins else truth[:, :, torch.randperm(40, generator=torch.Generator().manual_seed(0))]
        observed = torch.as_tensor(observed_np)
        held = observed[:, :, start : start + window] & torch.as_tensor(rng.random((1, 1, window, 16, 20)) < 0.3)
        context = observed[:, :, start : start + window] & ~held
        nearby = torch.as_tensor(nearby_observations(values[0].numpy(), observed[0].numpy(), start, window,
                                                     NEARBY_SPAN))[None]
        label, errors = choose_guess(values[:, :, start : start + window], context, held, nearby=nearby)
        assert candidate_label(label)[1] == wins, errors
        assert len(errors) == 2 * sum(name + NEARBY_LABEL in errors for name in errors if NEARBY_LABEL not in name)


def test_training_windows_carry_nearby_steps_without_held_back_cells_or_an_archives_reserved_windows():
    values = blocks_anew(np.concatenate([slow_waves(t=30), slow_waves(t=30) + 1]))
    mean, std = np.zeros(1, np.float32), np.ones(1, np.float32)
    windows = training_windows(values, Pixel(0.5), mean, std, window=4, val_fraction=0.2, seed=0, nearby_span=6)
    train_observed = windows.observed.numpy()
    assert train_observed.sum() < np.isfinite(values).sum()  # cells were held back
    x = np.nan_to_num(values)
    for b, (i, s, _, _) in enumerate(windows.validation_jobs):
        expected = nearby_observations(x[i], train_observed[i], s, 4, 6)
        np.testing.assert_array_equal(windows.validation[3]["nearby"][b].numpy(), expected)
    _, _, batch = windows.sample(3, torch.Generator().manual_seed(0))
    assert batch["nearby"].shape == (3, 12, 16, 20) and float(batch["nearby"][:, 3].max()) > 0

    chunked = training_windows(da.from_array(values, chunks=(1, 1, 8, 16, 20)), Pixel(0.5), mean, std, window=4,
                               val_fraction=0.2, seed=0, nearby_span=6)
    try:
        reserved = chunked.validation_jobs
        assert reserved
        outside = np.isfinite(values)
        for i, s, _, _ in reserved:  # nearby steps never come from a reserved window
            outside[i, :, s : s + 4] = False
        for b, (i, s, _, _) in enumerate(reserved):
            np.testing.assert_array_equal(chunked.validation[3]["nearby"][b].numpy(),
                                          nearby_observations(x[i], outside[i], s, 4, 6))
        for _ in range(3):  # pieces carry the span beyond their chunk: as from the whole series
            x_b, m_b, drawn = chunked.sample(4, torch.Generator().manual_seed(1))
            assert drawn["nearby"].shape == (4, 12, 16, 20)
            for b in range(4):  # the drawn window is found by its values; one of its places gives its input
                places = [(k, s) for k in range(2) for s in range(27) if np.array_equal(x[k, :, s : s + 4],
                                                                                      x_b[b].numpy())]
                assert places and any(np.array_equal(drawn["nearby"][b].numpy(),
                                                     nearby_observations(x[k], outside[k], s, 4, 6))
                                      for k, s in places)
    finally:
        chunked.close()


def test_a_cut_for_a_network_with_nearby_steps_holds_the_span_either_side_inside_the_series():
    full, tiling = (100, 8, 8), Tiling((8, 8))
    _, plain = plan(full, ((40, 50), (0, 8), (0, 8)), 5, 1, tiling)
    _, wide = plan(full, ((40, 50), (0, 8), (0, 8)), 5, 1, tiling, halo=24)
    assert plain[0] == (36, 54) and wide[0] == (12, 78)
    assert plan(full, ((0, 10), (0, 8), (0, 8)), 5, 1, tiling, halo=24)[1][0] == (0, 38)
    assert plan(full, ((95, 100), (0, 8), (0, 8)), 5, 1, tiling, halo=24)[1][0] == (67, 100)


def test_a_network_with_nearby_steps_asks_for_them():
    net = Denoiser(1, 3, preset="lite", first_guess=True, nearby=NEARBY_SPAN)
    assert net.nearby_span == NEARBY_SPAN and net.config["nearby"] == NEARBY_SPAN
    assert "nearby" not in Denoiser(1, 3, preset="lite", first_guess=True).config  # older files rebuild as they were
    with pytest.raises(ValueError, match="pass nearby="):
        net(torch.zeros(1, 1, 3, 8, 8), torch.ones(1, 1, 3, 8, 8, dtype=torch.bool), torch.full((1,), 0.1))
    with pytest.raises(ValueError, match="first_guess=True"):
        Denoiser(1, 3, preset="lite", nearby=NEARBY_SPAN)


@pytest.fixture(scope="module")
def nearby_model(tmp_path_factory):
    """A model of an archive whose blocks move every step, with the nearby guess, saved beside it (named: on these
    smooth waves a guess bent across the window's steps fills the moving blocks about as well without)."""
    root = tmp_path_factory.mktemp("nearby")
    data = archive(t=30, missing=0.0)
    for name in data.data_vars:
        values = blocks_anew(data[name].values[None, None], seed=len(name), size=(12, 12))[0, 0]
        data[name] = data[name].copy(data=values)
    data.chunk(time=4).to_zarr(root / "source.zarr", consolidated=False)
    model = xrimpute.fit(data, mask="block", steps=20, batch_size=4, progress=False, verbose=False, seed=0,
                         nearby=True)
    model.save(root / "model.xri")
    return root, data, model


@pytest.mark.slow
def test_a_nearby_model_imputes_lazily_and_on_a_cluster_as_in_memory_and_survives_saving(nearby_model, cluster):
    root, data, model = nearby_model
    assert candidate_label(model.validation["first_guess"])[1], model.validation["first_guess_nmse"]
    assert model.engine.denoiser.nearby_span == NEARBY_SPAN
    assert xrimpute.load(root / "model.xri").engine.denoiser.nearby_span == NEARBY_SPAN
    assert f"up to {NEARBY_SPAN} steps before and after" in repr(model)
    reference, _ = imputed_alike_on_every_path(root, data, model, cluster)
    values, _ = cube.to_array(data)
    truth = cube.to_array(archive(t=30, missing=0.0))[0]
    gaps = np.isnan(values)
    filled = cube.to_array(reference)[0]
    guess_error = float(np.mean((filled - truth)[gaps] ** 2))
    spread = float(np.var(truth[gaps]))
    assert guess_error < 0.2 * spread  # the line between a cell's observations either side fills the moving blocks
    with pytest.warns(UserWarning, match="small noise levels"):  # a CPU fit's; sampling still runs
        draws = model.sample(data.isel(time=slice(0, 10)), n=2, steps=2, K=2)
    assert int(draws.to_array().isnull().sum()) == 0


def test_an_engine_fit_with_nearby_steps_fills_and_a_cut_needs_no_more_than_the_plan(tmp_path):
    values = blocks_anew(slow_waves())
    values[:, :, :, 3, 4] = np.nan  # a cell never observed, filled by its first guess alone
    engine = Engine.fit_array(values, mask="block", steps=2, batch_size=2, progress=False, verbose=False)
    assert engine.denoiser.nearby_span == NEARBY_SPAN, engine.config.validation["first_guess_nmse"]
    options = ImputeConfig(K=2, seed=1, batch_size=1, progress=False)
    whole, _ = engine.fill(values, options)
    assert np.isfinite(whole).all() and not engine.valid[0, 3, 4]
    from xrimpute.lazy import cut
    box = ((10, 20), (0, 16), (0, 20))
    times, rows, cols, piece = cut(values.shape[2:], box, engine, options)
    part, _ = engine.fill(values[:, :, times, rows][..., cols], options, piece=piece)
    np.testing.assert_allclose(part, whole[:, :, 10:20], rtol=1e-5, atol=1e-5)
    again = Engine.load(engine.save(tmp_path / "m.xri"))
    np.testing.assert_array_equal(again.fill(values, options)[0], whole)


def test_nearby_true_or_false_decides_it_and_an_init_keeps_its_own():
    values = blocks_anew(slow_waves(t=24))
    fit = dict(mask="block", steps=1, batch_size=2, progress=False, verbose=False)
    off = Engine.fit_array(values, nearby=False, **fit)
    assert not off.denoiser.nearby_span and off.config.nearby is False
    assert not any(candidate_label(label)[1] for label in off.config.validation["first_guess_nmse"])
    pixels = np.where(np.random.default_rng(0).random(values.shape) < 0.5, slow_waves(t=24)[:, :, ::-1], np.nan)
    on = Engine.fit_array(pixels.astype(np.float32), nearby=True, **fit)
    assert on.denoiser.nearby_span == NEARBY_SPAN and candidate_label(on.config.validation["first_guess"])[1]
    with pytest.raises(ArgumentError, match="nearby must be True, False or None"):
        Engine.fit_array(values, nearby="yes", **fit)
    with pytest.raises(ModelMismatch, match="without nearby steps"):
        Engine.fit_array(values, nearby=True, init=off, **fit)
    assert Engine.fit_array(values, init=on, **fit).denoiser.nearby_span == NEARBY_SPAN


def test_a_fit_considers_nearby_steps_only_where_most_gaps_have_them():
    moving = np.isfinite(blocks_anew(np.zeros((2, 1, 30, 16, 20), np.float32)))
    still = np.ones((2, 1, 30, 16, 20), bool)
    still[0, :, :, :8, :10] = False  # a block that never moves in the first trajectory, observed in the second
    still[1, :, :, 8:, 10:] = False
    land = still.copy()
    land[:, :, :, 8:, 10:] = False  # never observed anywhere: no gap
    assert gaps_near_in_time(moving, 12) > 0.99 and gaps_near_in_time(still, 12) == 0.0
    assert gaps_near_in_time(land, 12) == 0.0 and gaps_near_in_time(np.ones((1, 1, 4, 2, 2), bool), 12) == 1.0
    sparse = np.zeros((1, 1, 60, 4, 4), bool)
    sparse[:, :, ::30] = True  # steps 0 and 30: steps 1-12, 18-29 and 31-42 of the 58 gaps lie within 12
    assert gaps_near_in_time(sparse, 12) == pytest.approx(36 / 58)
    assert offers_nearby(moving) and not offers_nearby(still)
    values = np.where(still, np.concatenate([slow_waves(t=30)] * 2), np.nan).astype(np.float32)
    fit = Engine.fit_array(values, mask="block", steps=1, batch_size=2, progress=False, verbose=False)
    assert not fit.denoiser.nearby_span  # nor along the flow, which these waves do not move (tests/test_flow.py)
    assert not any(label.endswith(NEARBY_LABEL) for label in fit.config.validation["first_guess_nmse"])
