"""A fit scores its final network on the held-back cells as imputation fills them: overlapping windows blended."""
import numpy as np
import torch

import dask.array as da
from synthetic import blobs
from xrimpute.engine import Engine, HeldBack, ImputedHeldBack
from xrimpute.masks import Block, Combined, Pixel, TimeGap
from xrimpute.samplers import training_windows
from xrimpute.windows import NEARBY_DEPTH

WINDOW, STEPS = 4, 30


def window_position(values, mask, t, **inputs):
    """A stand-in network whose estimate at every cell is the cell's step within its window."""
    return torch.arange(values.shape[2], dtype=values.dtype).view(1, 1, -1, 1, 1).expand_as(values)


def sampler(**options):
    values = blobs(n=2, t=STEPS, size=12, seed=3).values[:, None].astype(np.float32)
    values = np.where(np.random.default_rng(0).random(values.shape) < 0.5, values, np.nan)
    mean, std = np.nanmean(values, keepdims=True)[0, 0], np.nanstd(values, keepdims=True)[0, 0]
    return training_windows(values, Pixel(0.7), mean.ravel(), std.ravel(), window=WINDOW, val_fraction=0.2,
                            seed=0, **options)


def blended_position(step: int) -> float:
    """The mean step within its window of ``step`` over every window of the series that holds it (stride 1)."""
    starts = range(max(0, step - WINDOW + 1), min(step, STEPS - WINDOW) + 1)
    return float(np.mean([step - start for start in starts]))


def test_each_held_back_cell_takes_the_mean_of_every_window_holding_it_where_one_window_gives_its_own_guess():
    windows = sampler()
    held_back = HeldBack(*windows.validation, Pixel(0.7), torch.device("cpu"), seed=0)
    imputed = ImputedHeldBack(held_back, windows)
    single, blended = held_back.estimate(window_position, "sampled"), imputed.estimate(window_position, "sampled")
    hs = held_back.hs.bool()
    assert hs.any() and len(windows.validation_jobs) > 2
    for b, (_, start, _, _) in enumerate(windows.validation_jobs):
        for k in range(WINDOW):
            cells = hs[b, :, k]
            if cells.any():
                assert torch.all(single[b, :, k][cells] == k)
                np.testing.assert_allclose(blended[b, :, k][cells].numpy(), blended_position(start + k), rtol=1e-6)
    middle = [b for b, (_, start, _, _) in enumerate(windows.validation_jobs) if WINDOW <= start <= STEPS - 2 * WINDOW]
    assert middle and torch.all(blended[middle][hs[middle]] == (WINDOW - 1) / 2)  # the edges of a window no worse
    assert torch.equal(held_back.xs, imputed.xs) and torch.equal(held_back.hs, imputed.hs)  # the same cells


def test_tiles_history_and_nearby_steps_reach_the_network_as_imputation_cuts_them():
    values = blobs(n=1, t=24, size=16, seed=1).values[:, None].astype(np.float32)
    values = np.where(np.random.default_rng(2).random(values.shape) < 0.3, values, np.nan)
    engine = Engine.fit_array(values, mask="pixel", window=4, tile=(8, 8), history=True, nearby=True, steps=2,
                              batch_size=2, progress=False, verbose=False)
    v = engine.config.validation
    assert engine.denoiser.uses_history and engine.denoiser.nearby_span and engine.config.tile == [8, 8]
    assert 0 < v["context_nmse"]["sampled"] < 10 and 0 < v["context_nmse"]["observed"] < 10


def test_a_series_whose_gaps_stay_put_holds_its_cells_back_at_every_step_around_its_windows():
    values = blobs(n=2, t=STEPS, size=12, seed=3).values[:, None].astype(np.float32)
    archive = da.from_array(values, chunks=(1, 1, 10, 12, 12))  # every cell observed: held back is all there is
    for source, still in [(s, still) for s in (archive, values) for still in (False, True)]:
        windows = training_windows(source, Block(0.7, grid=(3, 3)), np.zeros(1), np.ones(1), window=WINDOW,
                                   val_fraction=0.2, seed=0, nearby_span=3, still=still)
        xs, ms, hs, inputs = windows.validation
        held_somewhere = hs.any(2, keepdim=True)
        assert hs.any()
        # drawn anew every step, or held back at every step of the window
        assert torch.equal(hs, held_somewhere.expand_as(hs)) == still
        series = windows.validation_context(WINDOW - 1 + 3)
        for (part, _, places), hidden in zip(series, held_somewhere.numpy()):
            for b, (sample, _, steps, *box) in places:
                cut = part[sample][(slice(None), slice(None), *box)]
                assert np.isnan(cut[np.broadcast_to(hidden, cut.shape)]).all() == still  # and at the steps around
        # nearby observations never find a held-back cell: blocks of values and of steps away, before and after
        steps_away = inputs["nearby"].unflatten(1, (4, NEARBY_DEPTH))[:, 1::2]  # (B, 2, depth, h, w); 0: none
        found = (steps_away > 0).any(1).any(1)[:, None, None]
        assert (found & held_somewhere).any() != still
        windows.close()


def test_where_the_gaps_stay_put_training_never_sees_a_held_back_cell_at_any_step_of_its_sample():
    values = blobs(n=2, t=STEPS, size=12, seed=3).values[:, None].astype(np.float32)  # observed throughout
    for still in (False, True):
        windows = training_windows(values, Block(0.7, grid=(3, 3)), np.zeros(1), np.ones(1), window=WINDOW,
                                   val_fraction=0.2, seed=0, still=still)
        _, _, hs, _ = windows.validation
        assert hs.any()
        trained = [windows.observed[i, :, :, r : r + 12, q : q + 12].any(1)
                   for i, _, r, q in windows.validation_jobs]  # (C, h, w): trained on at some step of the sample
        seen = torch.stack(trained)[:, :, None] & hs.any(2, keepdim=True)
        # a cell trained on at the steps round those it was held back at would be filled from memory
        assert seen.any() != still


def test_where_the_gaps_stay_put_an_archive_never_trains_on_a_held_back_cell_at_any_step_of_its_series():
    values = blobs(n=2, t=STEPS, size=12, seed=3).values[:, None].astype(np.float32)  # observed throughout
    archive = da.from_array(values, chunks=(1, 1, 8, 12, 12))
    for still in (False, True):
        windows = training_windows(archive, Block(0.7, grid=(3, 3)), np.zeros(1), np.ones(1), window=WINDOW,
                                   val_fraction=0.2, seed=0, still=still, history=True)
        try:
            _, _, hs, _ = windows.validation
            assert hs.any()
            if still:  # nor does the history lean on them
                assert windows.withheld.any() and not windows.totals[:, 1][windows.withheld].any()
            # each series as the training pieces read it, and as the covariance estimate sees it
            pieces = [windows._read(i, 0, STEPS, 0, 0, (12, 12), [0], withhold=True).observed
                      for i, *_ in windows.validation_jobs]
            series = np.asarray(windows.training_series()[1])
            for piece, (i, *_), held in zip(pieces, windows.validation_jobs, hs.any(2)):
                trained = piece.any(1)  # (C, h, w): trained on at some step of the series
                assert (trained & held).any() != still
                assert (series[i].any(1) & held.numpy()).any() != still
        finally:
            windows.close()


def test_a_step_held_back_whole_where_the_gaps_stay_put_stays_a_single_step_and_a_block_holds_for_the_window():
    from xrimpute.samplers import _held_still

    observed = torch.ones(1, 1, 4, 3, 3, dtype=torch.bool)
    held = torch.zeros_like(observed)
    held[:, :, 1] = True  # a missing step
    held[:, :, 2, 0, 0] = True  # a block's cell at one step
    seen, out, hidden = _held_still(observed, held)
    expected = held.clone()
    expected[:, :, :, 0, 0] = True
    assert torch.equal(out, expected) and torch.equal(seen, ~expected)
    assert torch.equal(hidden[0, 0, 0], expected[0, 0, 0])  # hidden at the steps round: the block's cell alone
    everything = torch.ones_like(observed)  # every cell held at every step: held throughout, as before
    assert torch.equal(_held_still(observed, everything)[1], everything)


def test_an_archive_with_missing_steps_withholds_blocks_where_the_gaps_stay_put_and_never_a_whole_series():
    values = blobs(n=2, t=STEPS, size=12, seed=3).values[:, None].astype(np.float32)
    values[:, :, [3, 11, 19]] = np.nan  # whole missing steps on top of blocks
    archive = da.from_array(values, chunks=(1, 1, 8, 12, 12))
    spec = Combined(Block(0.7, grid=(3, 3)), TimeGap())
    for seed in range(10):
        windows = training_windows(archive, spec, np.zeros(1), np.ones(1), window=WINDOW, val_fraction=0.2,
                                   seed=seed, still=True)
        windows.close()
        withheld = windows.withheld[[i for i, *_ in windows.validation_jobs]]
        # whole missing steps are held back a step at a time, never as a whole series
        assert withheld.any() and withheld.mean(axis=(1, 2)).max() < 0.5


def test_a_series_of_few_units_that_stay_put_draws_its_held_back_cells_again_until_some_are_held_back(monkeypatch):
    from xrimpute import samplers

    values = blobs(n=1, t=12, size=12, seed=3).values[:, None].astype(np.float32)  # nine blocks, one run each

    def validated(seed):
        windows = training_windows(values, Block(0.7, grid=(3, 3)), np.zeros(1), np.ones(1), window=WINDOW,
                                   val_fraction=0.05, seed=seed, still=True)
        return windows.validation is not None

    assert all(validated(seed) for seed in range(10))
    monkeypatch.setattr(samplers, "HOLDOUT_DRAWS", 1)  # a single draw holds back none of the nine most times
    assert not all(validated(seed) for seed in range(10))
