"""The paper's ablations run in one call each, with every arm beside its peer; the paper settings follow the paper."""
from dataclasses import replace

import pytest
import torch

from xrimpute import bench
from xrimpute.masks import Block, MaskSpec, MaskSpecError, Pixel

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = replace(bench.SETTINGS["small"], size=32, frames=8, n_train=2, n_test=1, steps=5, batch_size=2, K=2)


def test_table4_ablation_prints_the_ensemble_beside_the_whole_mask_with_their_ratio():
    report = bench.ablation("table4", TINY, progress=False)
    text = report.markdown()
    assert text.count("(peer) | ") == 2 and "ensemble K=2" in text
    by = {(row["condition"], row["method"]): row["value"] for row in report.rows}
    ratio = by[("NS 20%", "ensemble K=2")] / by[("NS 20%", "whole observed mask, one pass")]
    assert f"{ratio:.3f}" in text


def test_unknown_ablation_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="table6"):
        bench.ablation("table5", TINY)


def test_query_ratio_puts_that_share_of_the_observed_cells_in_the_loss():
    observed = torch.rand(8, 1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    torch.manual_seed(1)  # not 0: the global generator would repeat the draws of the mask
    query = Block(query_ratio=0.7).query(observed, observed)
    assert bool((query <= observed).all()) and 0.65 < float(query.sum() / observed.sum()) < 0.75
    assert bool((Block().query(observed, observed) == observed).all())
    assert MaskSpec.from_dict(Pixel(query_ratio=0.7).to_dict()) == Pixel(query_ratio=0.7)
    assert "query_ratio" not in Pixel().to_dict()
    with pytest.raises(MaskSpecError, match="query_ratio"):
        Pixel(query_ratio=0.0)


def test_paper_settings_use_static_pixel_masks_and_the_whole_trajectory_as_window():
    paper = bench.SETTINGS["paper"]
    assert paper.static_pixels and paper.window == paper.frames
    train, _ = bench._pde_split("navier_stokes", replace(TINY, frames=4), seed=0)
    seen = bench._observe(train, "pixel", 0.5, 0, paper)
    gaps = seen[list(seen.data_vars)[0]].isnull().values  # (sample, time, y, x)
    assert bool((gaps == gaps[:, :1]).all()) and 0.3 < gaps.mean() < 0.7
