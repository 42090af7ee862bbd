"""Dask-backed cubes: lazy imputation equal to in-memory, halos and tiles, chunk-wise training that never loads all."""
import tracemalloc
from contextlib import contextmanager

import dask
import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr
from dask.callbacks import Callback

import xrimpute
from xrimpute.nets.prior import NEARBY_SPAN
from xrimpute import samplers
from xrimpute.masks import Pixel
from xrimpute.windows import Piece, Tiling, impute_series, plan

FIT = dict(mask="pixel", steps=30, batch_size=4, progress=False, verbose=False, seed=0)


def archive(t: int = 24, n: int = 24, seed: int = 0, missing: float = 0.6) -> xr.Dataset:
    """Hourly global cube of two variables on an ``n x n`` lat/lon grid, ``missing`` of the cells NaN."""
    rng = np.random.default_rng(seed)
    lat, lon = np.linspace(-86.25, 86.25, n), np.arange(n) * 360.0 / n
    steps = np.arange(t)[:, None, None]
    la, lo = np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
    fields = {"t2m": 280 + 10 * np.cos(la) + 3 * np.sin(lo + 0.3 * steps),
              "u10": 5 * np.sin(2 * lo - 0.2 * steps) * np.cos(la)}
    data = {name: (("time", "latitude", "longitude"),
                   np.where(rng.random((t, n, n)) < missing, np.nan, f + rng.normal(0, 0.3, (t, n, n))).astype("f4"),
                   {"units": "1"}) for name, f in fields.items()}
    coords = {"time": np.datetime64("2020-01-01") + np.arange(t) * np.timedelta64(1, "h"),
              "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
              "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"})}
    return xr.Dataset(data, coords=coords, attrs={"title": "test archive"})


def imputed_alike_on_every_path(root, data: xr.Dataset, model, client) -> tuple[xr.Dataset, dict]:
    """``model`` (saved as ``root / "model.xri"``) imputes ``data`` (saved as ``root / "source.zarr"``) in memory,
    lazily and with :func:`xrimpute.reconstruct` on ``client`` alike; the in-memory result and the options used."""
    from xrimpute.reconstruct import reconstruct

    # one window per batch: float32 convolutions differ in the last bits with the batch's size (any model), and
    # the blocks batch other windows together than the whole series does
    same = dict(K=3, seed=2, batch_size=1)
    reference = model.impute(data, progress=False, **same)
    lazy = model.impute(data.chunk(time=5, latitude=10), progress=False, **same).compute()
    xr.testing.assert_allclose(lazy, reference, rtol=1e-6, atol=1e-5)
    rebuilt = reconstruct(root / "source.zarr", root / "model.xri", root / "target.zarr", client=client, progress=False,
                          **same)
    xr.testing.assert_allclose(rebuilt[list(data.data_vars)].load(), reference, rtol=1e-6, atol=1e-5)
    return reference, same


@contextmanager
def raise_if_dask_computes():
    """Fail if anything is computed with dask inside the block."""

    def scheduler(dsk, keys, **kwargs):
        raise AssertionError("dask computed something that should have stayed lazy")

    with dask.config.set(scheduler=scheduler):
        yield


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return archive()


@pytest.fixture(scope="module")
def model(data):
    return xrimpute.fit(data, **FIT)


@pytest.fixture(scope="module")
def tiled(data):
    return xrimpute.fit(data, tile=(16, 16), **FIT)


def test_cells_never_observed_take_the_guess_of_the_networks_own_pass_alike_in_memory_and_lazily():
    holes = np.zeros((24, 24), bool)
    holes[5, 5] = holes[12, 17] = holes[20, 3] = True  # never observed, between observations: filled by the guess
    data = archive(seed=3).where(~xr.DataArray(holes, dims=("latitude", "longitude")))
    model = xrimpute.fit(data, **FIT)
    assert (~model.engine.valid).sum() == 2 * holes.sum()
    same = dict(K=3, seed=5, batch_size=1, context="observed", return_std=True)
    reference = model.impute(data, progress=False, **same)
    lazy = model.impute(data.chunk(time=5, latitude=10, longitude=7), progress=False, **same).compute()
    xr.testing.assert_allclose(lazy, reference, rtol=1e-6, atol=1e-5)
    spread = reference["u10_std"].isel(latitude=5, longitude=5)
    assert float(spread.min()) > 0 and not reference["u10"].isnull().any()


def test_impute_on_dask_input_stays_lazy_until_computed(data, model):
    chunked = data.chunk(time=8)
    with raise_if_dask_computes():
        filled = model.impute(chunked, K=2, progress=False)
        both = model.impute(chunked, K=2, return_std=True, observed_rate=0.4, progress=False)
    assert all(isinstance(v.data, da.Array) for v in (filled["t2m"], both["u10"], both["u10_std"]))
    assert filled.chunks == chunked.chunks
    assert int(filled.to_array().isnull().sum()) == 0


def test_lazy_imputation_equals_in_memory_with_halos_across_time_chunks(data, model):
    # one window per batch: float32 convolutions round differently with the batch's size on some CPUs (AVX2), and
    # the blocks batch other windows together than the whole series does; sampled contexts, whose draws each window
    # seeds for itself
    same = dict(K=3, seed=5, batch_size=1, context="sampled")
    reference = model.impute(data, progress=False, **same)
    for chunks in ({"time": 8}, {"time": 5}, {"time": 5, "latitude": 10, "longitude": 7}):
        lazy = model.impute(data.chunk(chunks), progress=False, **same).compute()
        xr.testing.assert_allclose(lazy, reference, rtol=1e-6, atol=1e-5)
    other_seed = model.impute(data, progress=False, **{**same, "seed": 6})
    assert float(abs(other_seed - reference).to_array().max()) > 1e-2  # the tolerance above is not loose


def test_tiled_model_imputes_spatial_chunks_equal_to_in_memory(data, tiled):
    assert tiled.info["tile"] == [16, 16] and tiled.tiling().periodic  # global grid: tiles wrap round the seam
    reference = tiled.impute(data, K=3, progress=False)
    lazy = tiled.impute(data.chunk(time=8, latitude=12, longitude=12), K=3, progress=False).compute()
    xr.testing.assert_allclose(lazy, reference, rtol=1e-6, atol=1e-5)
    assert int(reference.to_array().isnull().sum()) == 0
    xr.testing.assert_identical(reference.where(data.notnull()), data)


def test_plan_halo_is_window_minus_one_steps_and_tiles_wrap_over_the_seam():
    tiling = Tiling((16, 16), (4, 4), periodic=True)
    rows, cols = tiling.origins(24, 24)
    assert rows == [0, 8] and cols == [0, 12]  # the tile at column 12 covers 12..27, i.e. 12..23 and 0..3
    jobs, cut = plan((24, 24, 24), ((8, 16), (0, 24), (20, 24)), window=3, stride=1, tiling=tiling)
    assert cut[0] == (6, 18)  # windows starting at 6..15 touch steps 8..15
    assert cut[2] == (12, 16)  # columns 12..23 then 0..3: one run across the seam
    assert {c for _, _, c in jobs} == {12}
    assert plan((24, 24, 24), ((0, 24), (0, 24), (0, 4)), 3, 1, tiling)[1][2] == (0, 24)  # both tiles: all columns


def test_overlapping_tiles_blend_without_seams():
    """A network that answers a different constant on every tile: blending must ramp, not jump, between tiles."""

    def per_tile_constant(values, mask, t, static):  # the tile's mean of the first static field
        return static[:, :1, None].mean(dim=(-2, -1), keepdim=True).expand_as(values)

    h = w = 32
    rows = np.linspace(0, 1, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    cols = np.linspace(0, 1, w, dtype=np.float32)[None, :] * np.ones((h, 1), np.float32)
    static = np.stack([rows + cols, rows])
    values = np.zeros((1, 1, 3, h, w), np.float32)
    observed = np.zeros_like(values, dtype=bool)

    def jumps(overlap):
        mean, _ = impute_series(per_tile_constant, values, observed, Pixel(), 3,
                                K=1, progress=False, tiling=Tiling((16, 16), (overlap, overlap)), static=static)
        return np.abs(np.diff(mean[0, 0, 0], axis=1)).max()

    hard, blended = jumps(0), jumps(6)
    assert hard > 0.2  # side by side, neighbouring tiles differ by about half a tile's mean
    assert blended < hard / 4


def test_a_spread_far_below_the_value_survives_the_blending():
    """A network whose answer shifts slightly with its context: the spread (1e-4 on values near 1) must
    come out as the standard deviation of its K answers, not be rounded away."""
    answers = []

    def shifted_by_context(values, mask, t):
        share = mask.float().mean(dim=(1, 2, 3, 4), keepdim=True)
        answers.append((1 + 1e-2 * share).flatten())
        return (1 + 1e-2 * share).expand_as(values)

    observed = np.random.default_rng(0).random((1, 1, 3, 8, 8)) < 0.5
    values = np.zeros(observed.shape, np.float32)
    _, std = impute_series(shifted_by_context, values, observed, Pixel(), 3,
                           K=2, progress=False)  # one window: the spread is that of its K answers
    expected = np.std(answers[0].numpy().astype(np.float64))
    assert expected > 1e-5
    np.testing.assert_allclose(std[~observed], expected, rtol=1e-3)
    assert np.all(std[observed] == 0)


def test_piece_of_a_series_returns_its_box_only():
    piece = Piece((10, 4, 6), (0, 2, 1, 4), ((3, 5), (1, 3), (0, 2)))
    cut = np.arange(1 * 1 * 6 * 3 * 4).reshape(1, 1, 6, 3, 4)  # steps 2..7, rows 1..3, columns 4, 5, 0, 1
    assert piece.inside(cut).shape == (1, 1, 2, 2, 2)
    np.testing.assert_array_equal(piece.inside(cut)[0, 0, 0], cut[0, 0, 1, :2, 2:4])


class Largest(Callback):
    """Records the largest result (in bytes) of any dask task."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        self.most = max(self.most, getattr(result, "nbytes", 0))


def test_fit_on_dask_input_reads_chunks_never_the_whole_archive(tmp_path):
    archive(t=96, seed=1).chunk(time=4).to_zarr(tmp_path / "big.zarr")
    big = xr.open_zarr(tmp_path / "big.zarr")
    whole = sum(v.nbytes for v in big.data_vars.values())
    with Largest() as largest:
        model = xrimpute.fit(big, tile=(16, 16), nearby=False, **dict(FIT, steps=12))
    # a time chunk (plus the window's steps after it), not the archive; or, where the fit tries each cell's daily
    # cycle, a chunk's sums of each cell's normal equations (the mean and 4 harmonics: 15 distinct doubles a cell)
    sums = 2 * 24 * 24 * 15 * 8
    assert "daily cycle" in " ".join(model.validation["first_guess_nmse"])
    assert 0 < largest.most <= max(whole / 8, sums) < whole
    with Largest() as largest:  # a first guess from nearby steps reads them too: 24 steps either side
        near = xrimpute.fit(big, tile=(16, 16), nearby=True, **dict(FIT, steps=12))
    assert 0 < largest.most <= whole * (4 + near.window - 1 + 2 * NEARBY_SPAN) / 96 < whole
    assert model.info["statistics_chunks"] == [8, 24]  # normalisation from 8 of the 24 chunks
    assert model.validation["cells"] > 0  # validated on windows kept out of training
    assert np.allclose(model.mean, [big["t2m"].mean().compute(), big["u10"].mean().compute()], atol=0.5)


def counted_archive() -> tuple[da.Array, list]:
    """400 steps of an 8 x 8 grid at 70 % in chunks of 20 steps, and the list of the chunks read so far."""
    reads = []

    def counted(block, block_info=None):
        reads.append(block_info[0]["chunk-location"])
        return block

    rng = np.random.default_rng(0)
    data = np.where(rng.random((1, 1, 400, 8, 8)) < 0.7, rng.random((1, 1, 400, 8, 8)), np.nan).astype(np.float32)
    return da.from_array(data, chunks=(1, 1, 20, 8, 8)).map_blocks(counted, dtype=np.float32), reads


def test_the_windows_kept_for_validation_and_their_nearby_steps_read_each_chunk_once():
    values, reads = counted_archive()
    with dask.config.set(scheduler="synchronous"):
        windows = samplers.training_windows(values, Pixel(), np.zeros(1), np.ones(1), window=5, val_fraction=0.2,
                                            nearby_span=NEARBY_SPAN)
    windows.close()
    assert len(windows.validation_jobs) == 16 and windows.validation[3]["nearby"].shape[0] == 16
    # 16 windows of 5 steps with 24 steps either side reach every chunk; each is read once, not once for each window
    # and stretch that holds it
    assert len(reads) == len(set(reads)) == 20, sorted(reads)


def test_the_steps_round_an_archives_validation_windows_serve_their_imputation_without_a_second_read():
    values, reads = counted_archive()
    pad = 5 - 1 + NEARBY_SPAN  # the steps the held-back cells are imputed from, as imputation fills them
    with dask.config.set(scheduler="synchronous"):
        windows = samplers.training_windows(values, Pixel(), np.zeros(1), np.ones(1), window=5, val_fraction=0.05,
                                            nearby_span=NEARBY_SPAN)
        windows.close()
        read = len(reads)
        kept = windows.validation_context(pad)
        assert len(reads) == read  # from the stretches read for the windows
        wider = windows.validation_context(pad + 10)
        assert len(reads) > read  # more steps than were read: read now
        windows.reserved_stretches = ()
        again = windows.validation_context(pad)
    for (series, first, places), (other, first_again, places_again) in zip(kept, again, strict=True):
        np.testing.assert_array_equal(series, other)
        assert first == first_again and places == places_again
    assert all(series.shape[2] > other.shape[2] for (series, *_), (other, *_) in zip(wider, kept))


def test_statistics_judge_the_mask_structure_on_consecutive_steps_whatever_the_chunking():
    data = np.random.default_rng(0).random((1, 1, 40, 4, 4)).astype(np.float32)
    for chunks in [(2, 8, 30), (4,) * 10, (40,)]:
        stats = samplers.statistics(da.from_array(data, chunks=(1, 1, chunks, 4, 4)), max_chunks=3)
        assert stats.observed.shape == (1, 1, max(samplers.STRUCTURE_STEPS, max(chunks)), 4, 4)
    short = samplers.statistics(da.from_array(data[:, :, :12], chunks=(1, 1, 2, 4, 4)), max_chunks=3)
    assert short.observed.shape == (1, 1, 12, 4, 4) and short.chunks == (3, 6)


def test_windows_of_a_cube_in_memory_hold_one_normalised_copy_and_make_no_more_than_one_more():
    rng = np.random.default_rng(0)
    shape = (1, 1, 200, 80, 80)
    values = np.where(rng.random(shape) < 0.5, rng.random(shape), np.nan).astype(np.float32)
    tracemalloc.start()
    try:
        windows = samplers.training_windows(values, Pixel(), np.zeros(1, np.float32), np.ones(1, np.float32),
                                            window=5, val_fraction=0.05)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    windows.close()
    # the normalised copy and the masks (a quarter each) stay; normalising makes one copy, not three, and the masks
    # none of their own (2.0 times the cube at the peak, against 3.5 and then 2.5)
    assert held < 1.4 * values.nbytes and peak < 2.25 * values.nbytes, (held / values.nbytes, peak / values.nbytes)


def test_windows_of_an_array_made_for_them_normalise_it_in_place():
    """The departures from a cycle are made for the windows alone: they become the normalised copy themselves."""
    rng = np.random.default_rng(0)
    shape = (1, 1, 200, 80, 80)
    values = np.where(rng.random(shape) < 0.5, rng.random(shape), np.nan).astype(np.float32)
    build = dict(spec=Pixel(), mean=np.full(1, 0.5, np.float32), std=np.full(1, 0.25, np.float32), window=5,
                 val_fraction=0.05)
    copied = samplers.training_windows(values, **build)
    mine = values.copy()
    tracemalloc.start()
    try:
        windows = samplers.training_windows(mine, **build, overwrite=True)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        assert np.shares_memory(windows.values.numpy(), mine)
        assert held < 0.4 * values.nbytes and peak < 1.25 * values.nbytes, (held / values.nbytes, peak / values.nbytes)
        torch.testing.assert_close(windows.values, copied.values, rtol=0, atol=0)
        torch.testing.assert_close(windows.observed, copied.observed)
        # without overwrite the caller's array is left as it was (its gaps still NaN)
        assert np.isnan(values).any() and not torch.isnan(windows.values).any()
    finally:
        windows.close()
        copied.close()


def test_the_steps_round_the_validation_windows_are_copied_alone_not_the_whole_series():
    rng = np.random.default_rng(0)
    shape = (1, 1, 800, 40, 40)
    values = np.where(rng.random(shape) < 0.5, rng.random(shape), np.nan).astype(np.float32)
    windows = samplers.training_windows(values, Pixel(), np.zeros(1, np.float32), np.ones(1, np.float32), window=5,
                                        val_fraction=0.05)
    [(whole, _, _)] = windows.validation_context()  # the whole series, as the classical fillers read it
    tracemalloc.start()
    try:
        around = windows.validation_context(4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(around) == 16
    for series, first, [(_, cut)] in around:
        np.testing.assert_array_equal(series, whole[:, :, first : first + series.shape[2]])
        assert np.isnan(series[cut]).any() and np.isfinite(series[cut]).any()
    assert peak < 0.4 * values.nbytes, peak / values.nbytes  # 16 windows of 13 steps of the 800


def test_chunked_sampler_memory_is_pieces_not_the_archive():
    def peak_while_sampling(steps):
        values = (da.zeros((1, 2, steps, 24, 24), chunks=(1, 2, 8, 24, 24), dtype=np.float32)  # nothing exists yet
                  + da.arange(steps, chunks=8, dtype=np.float32)[None, None, :, None, None])
        tracemalloc.start()
        sampler = samplers.ChunkedWindows(values, 3, np.zeros(2), np.ones(2), tile=(8, 8),
                                        static=np.zeros((3, 24, 24)), pool=3, prefetch=2, reuse=1, seed=0)
        try:
            generator = torch.Generator().manual_seed(0)
            batches = [sampler.sample(4, generator) for _ in range(12)]
        finally:
            sampler.close()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak, batches

    per_step = 2 * 24 * 24 * 4  # bytes of one time step
    small, _ = peak_while_sampling(10**4)
    large, batches = peak_while_sampling(10**5)  # 460 MB if it were loaded
    x, observed, inputs = batches[-1]
    assert x.shape == (4, 2, 3, 8, 8) and inputs["static"].shape == (4, 3, 8, 8) and bool(observed.all())
    assert large < 10**5 * per_step / 100, large  # under 1% of the archive
    assert large - small < 0.01 * 9 * 10**4 * per_step, (small, large)  # growth: chunk bookkeeping, no data
    assert len({float(b[0][:, 0, 0, 0, 0].max()) for b in batches}) > 3  # windows from many places in time
