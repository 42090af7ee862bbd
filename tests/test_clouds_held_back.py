"""Where the gaps are clouds, a fit reports its score on cells held back as the clouds of other steps: patches among
observations, which the choices are made on, say far less of how well the gaps are filled."""
import numpy as np
import pytest
import torch

import xrimpute
from synthetic import blobs
from xrimpute import cube, masks
from xrimpute.baselines.classical import normalised_convolution_array
from xrimpute.baselines.heldout import FILLERS, score
from xrimpute.samplers import reported, training_windows

WINDOW = 5


STEPS = 160  # room for runs of steps that lose clouds beside the 16 windows the choices are scored on


def clouded(seed: int = 0):
    """Drifting blobs seen through drifting clouds over 60 % of the grid."""
    return xrimpute.observe(blobs(n=2, t=STEPS, size=24, seed=1), "clouds", coverage=0.4, seed=seed)


def sampler(observed, spec=masks.Patches()):
    values, _ = cube.to_array(observed)
    mean, std = np.nanmean(values, axis=(0, 2, 3, 4)), np.nanstd(values, axis=(0, 2, 3, 4))
    return values, training_windows(values, spec, mean, std, window=WINDOW, val_fraction=0.05, seed=0)


def test_each_run_loses_the_cells_another_run_does_not_observe_until_the_share_is_held_back():
    seen = torch.rand(3, 1, 40, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.5
    keep = masks.other_clouds_keep(seen.numpy(), 0.2, torch.Generator().manual_seed(1), run=10)
    held = seen[:, 0] & ~keep[:, 0]
    assert keep.shape == (3, 1, 40, 8, 8) and keep[:, 0][~seen[:, 0]].all()  # only observed cells are held back
    assert 0.2 <= held.sum() / seen.sum() < 0.2 + 10 * 64 / seen.sum()  # a run's cells past the share at most
    steps = held.any(dim=(2, 3)).numpy()  # (series, step): the steps that hold cells back
    for row in steps:  # in whole runs of steps, as a gap lies among clouds before and after
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
        assert (edges[1::2] - edges[::2] >= 10).all()
    # a held step loses another step's gaps: about half its cells here, where a patch would take a few
    lost = held.sum(dim=(2, 3))[torch.as_tensor(steps)] / seen[:, 0].sum(dim=(2, 3))[torch.as_tensor(steps)]
    assert 0.35 < float(lost.mean()) < 0.65
    assert masks.other_clouds_keep(seen[:1, :, :10].numpy(), 0.2, run=10) is None  # one run: nothing to trade


def test_runs_that_lose_clouds_keep_to_the_allowed_steps_cut_to_their_longest_stretch():
    seen = torch.rand(2, 1, 40, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.5
    allowed = np.zeros((2, 40), bool)
    allowed[0, 5:12] = allowed[1, 20:40] = True
    keep = masks.other_clouds_keep(seen.numpy(), 0.3, torch.Generator().manual_seed(1), run=29, allowed=allowed)
    held = (seen[:, 0] & ~keep[:, 0]).any(dim=(2, 3)).numpy()
    assert not (held & ~allowed).any()
    assert held[1].sum() == 20 and not held[0].any()  # one run of the longest stretch: 7 steps hold none of 20
    assert masks.other_clouds_keep(seen.numpy(), 0.3, run=29, allowed=allowed, shortest=21) is None


def test_the_choices_are_scored_on_the_windows_and_cells_a_fit_would_score_them_on_without_the_reported_ones(
        monkeypatch):
    observed = clouded()
    _, windows = sampler(observed)
    with monkeypatch.context() as patch:
        patch.setattr(masks, "clouded", lambda spec: False)
        _, alone = sampler(observed)
    assert alone.reported_validation is None and windows.reported_validation is not None
    assert windows.validation_jobs == alone.validation_jobs
    for ours, theirs in zip(windows.validation + windows.guess_validation[:3], alone.validation
                            + alone.guess_validation[:3]):
        if isinstance(ours, torch.Tensor):
            assert torch.equal(ours, theirs)  # held-back cells, and every context they are guessed from
    held_steps = {(i, s + k) for (i, s, _, _), h in zip(reported(windows).validation_jobs,
                                                          reported(windows).validation[2])
                  for k in range(WINDOW) if h[:, k].any()}
    scored_steps = {(i, s + k) for i, s, _, _ in windows.validation_jobs for k in range(1 - WINDOW, 2 * WINDOW - 1)}
    assert held_steps and not held_steps & scored_steps  # clear of the scored windows and those overlapping them


def test_the_reported_cells_are_withheld_from_training_and_apart_from_those_the_choices_are_made_on():
    _, windows = sampler(clouded())
    report = reported(windows)
    assert report is not windows and report.validation is not None and windows.validation is not None
    for sampled in (windows, report):
        (_, ms, hs, _), jobs = sampled.validation, sampled.validation_jobs
        th, tw = hs.shape[-2:]
        for (i, s, r, c), held in zip(jobs, hs):
            assert not (windows.observed[i, :, s : s + WINDOW, r : r + th, c : c + tw] & held).any()
        assert hs.any() and not (ms & hs).any()
    assert report.guess_validation is None and windows.guess_validation is not None


def test_other_masks_report_on_the_cells_they_choose_on():
    values, windows = sampler(xrimpute.observe(blobs(n=2, t=STEPS, size=24, seed=1), "pixel", rate=0.4, seed=0),
                              masks.Pixel())
    assert reported(windows) is windows and windows.reported_validation is None


def nmse_on_gaps(filled, truth, gaps, mean, std):
    """As :func:`xrimpute.baselines.heldout.score` scores held-back cells: MSE over that of the mean fill."""
    f, t = (filled - mean) / std, (truth - mean) / std
    return float(((f - t) ** 2)[gaps].sum() / (t**2)[gaps].sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_a_filler_scores_on_the_reported_cells_far_nearer_its_gaps_than_on_patches(seed):
    """Runs of 7 steps fit between this short cube's scored windows (29 on the ERA5 sample's month): its clouds'
    cells score the filler 1.9 and 3.2 times better than the gaps, the patches 6.6 and 9.1 times."""
    truth, observed = blobs(n=2, t=STEPS, size=24, seed=1), clouded(seed)
    values, windows = sampler(observed)
    fillers = {"normalised_convolution": FILLERS["normalised_convolution"]}
    on_patches = score(windows, 60.0, fillers=fillers)["classical"]["normalised_convolution"]
    on_clouds = score(reported(windows), 60.0, fillers=fillers)["classical"]["normalised_convolution"]
    truth_array = truth.values[:, None]
    gaps = ~np.isfinite(values)
    mean, std = np.nanmean(values), np.nanstd(values)
    on_gaps = nmse_on_gaps(normalised_convolution_array(values), truth_array, gaps, mean, std)
    assert on_gaps / 3.5 < on_clouds < 1.2 * on_gaps and on_clouds > 2 * on_patches


def test_a_fit_reports_the_clouds_score_and_where_it_chose_in_its_validation_and_repr(tmp_path):
    model = clouded().ctxdiff.fit(steps=3, batch_size=2, progress=False, seed=0, verbose=False)
    v = model.validation
    assert v["chosen_on"]["cells"] > 0 and v["cells"] > 0 and v["nmse"] > v["chosen_on"]["nmse"]
    for shown in (model, xrimpute.load(model.save(tmp_path / "m.xri"))):
        text = repr(shown)
        assert f"on {v['cells']} held-back cells under other steps' clouds" in text
        assert f"chosen on:  the first guess, contexts and network on {v['chosen_on']['cells']} more" in text


def test_a_fit_that_reports_on_patches_under_clouds_says_they_flatter_the_gaps():
    """An archive, or a series too short for a run beside the scored windows, keeps the patches' score."""
    archive = clouded().chunk({"time": 40})
    model = archive.ctxdiff.fit(steps=3, batch_size=2, progress=False, seed=0, verbose=False)
    assert "chosen_on" not in model.validation
    assert "held-back cells, patches among observations, which flatter clouds' gaps" in repr(model)
    pixels = xrimpute.observe(blobs(n=2, t=STEPS, size=24, seed=1), "pixel", rate=0.4, seed=0)
    assert "flatter" not in repr(pixels.ctxdiff.fit(steps=3, batch_size=2, progress=False, seed=0, verbose=False))
