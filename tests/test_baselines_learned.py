"""Learned baselines (MissDiff, AmbientDiff, DiffPuter) on the ctxdiff network and trainer."""
import warnings

import numpy as np
import pytest
import xarray as xr

from synthetic import blobs
from xrimpute import masks
from xrimpute.baselines import METHODS, fill
from xrimpute.baselines.learned import ambient, diffputer, fit_ambient, fit_diffputer, fit_missdiff, missdiff

TINY = dict(steps=16, batch_size=4, window=3, progress=False, verbose=False, val_fraction=0.0)
E_STEP = dict(members=2, sample_steps=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def observed():
    truth = blobs(n=2, t=6, size=12, seed=0)
    return truth.where(np.random.default_rng(1).random(truth.shape) < 0.4)


def assert_filled(filled, observed):
    """Every gap filled, every observed value kept bit for bit, layout unchanged."""
    assert type(filled) is type(observed) and dict(filled.sizes) == dict(observed.sizes)
    assert not filled.isnull().any().to_array().any() if isinstance(filled, xr.Dataset) else filled.notnull().all()
    xr.testing.assert_identical(filled.where(observed.notnull()), observed)


@pytest.mark.parametrize("method", ["missdiff", "ambient"])
def test_single_step_baselines_fill_dataarray_and_dataset(observed, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MissDiff's contexts leave gaps unlearnable, as it should
        filled = fill(observed, method, **TINY)
        assert_filled(filled, observed)
        ds = observed.to_dataset(name="u")
        ds["v"] = -2 * observed
        filled_ds = {"missdiff": missdiff, "ambient": ambient}[method](ds, **TINY)
    assert_filled(filled_ds, ds)
    assert set(filled_ds.data_vars) == {"u", "v"}


def test_missdiff_sees_the_whole_observed_mask_in_training_and_at_inference(observed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        learned = fit_missdiff(observed, mask="pixel", **TINY)
    assert learned.model.spec == masks.Pixel(context_ratio=1.0)
    assert learned.impute_options == dict(K=1, adapt=False)
    a, b = learned.impute(observed, seed=0), learned.impute(observed, seed=1)
    # one pass with context = observed: only the tiny noise at t = 1e-3 differs between seeds
    assert float(np.abs(a - b).max()) < 0.05 * float(np.abs(a).max())


def test_ambient_trains_on_a_further_corruption_and_imputes_from_one_further_corrupted_mask(observed):
    learned = fit_ambient(observed, corruption=0.25, **TINY)
    assert learned.model.spec == masks.Pixel(context_ratio=0.75)
    # Daras et al.'s fixed-mask sampler: a subset of the observed cells at the training corruption, one pass
    assert learned.impute_options["spec"] == masks.Pixel(context_ratio=0.75) and learned.impute_options["K"] == 1
    a, b = learned.impute(observed, seed=0), learned.impute(observed, seed=1)
    assert float(np.abs(a - b).max()) > 0.05 * float(np.abs(a).max())  # another corrupted mask per seed
    with pytest.raises(ValueError, match="corruption must be in"):
        fit_ambient(observed, corruption=1.0, **TINY)


def test_missdiff_and_ambient_impute_by_multistep_sampling_on_request(observed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        learned = fit_missdiff(observed, mask="pixel", sample_steps=3, members=2, **TINY)
    assert learned.sampler_options == dict(members=2, steps=3, eta=1.0)
    assert_filled(learned.impute(observed, seed=0), observed)
    assert fit_ambient(observed, sample_steps=3, members=2, **TINY).sampler_options["steps"] == 3


def test_diffputer_runs_em_rounds_on_the_completion(observed):
    learned = fit_diffputer(observed, rounds=2, seed=0, **E_STEP, **TINY)
    model = learned.model
    assert model.spec == masks.Pixel(context_ratio=1.0)  # M-step: every cell is context and query
    assert model.info["train_rate"] == 1.0  # trained on the completed data
    assert model.history.step[-1] == TINY["steps"] // 2  # the budget is split over the rounds
    assert_filled(learned.completion, observed)
    # the E-step fills new data with the final model; Dataset in, Dataset out
    ds = observed.isel(sample=[1]).to_dataset(name="u")
    assert_filled(learned.impute(ds), ds)
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        fit_diffputer(observed, rounds=0, **TINY)


def test_diffputer_warm_start_changes_the_second_round(observed):
    options = dict(rounds=2, seed=0, **E_STEP, **TINY)
    warm = diffputer(observed, warm_start=True, **options)
    cold = diffputer(observed, warm_start=False, **options)
    assert_filled(warm, observed) and assert_filled(cold, observed)
    gaps = observed.isnull()
    assert float(np.abs(warm - cold).where(gaps).max()) > 0


def test_learned_methods_are_registered_and_fill_through_arrays(observed):
    assert {"ctxdiff", "missdiff", "ambient", "diffputer"} <= set(METHODS)
    values = observed.transpose("sample", "time", "y", "x").values[:, None]
    filled = METHODS["ambient"](values, **TINY)
    assert filled.shape == values.shape and np.isfinite(filled).all()
    seen = np.isfinite(values)
    np.testing.assert_array_equal(filled[seen], values[seen])
    with pytest.raises(ValueError, match=r"\(N, C, T, H, W\)"):
        METHODS["missdiff"](values[0])


@pytest.mark.filterwarnings("ignore::UserWarning")  # one short training sample: a few cells stay unlearnable
def test_a_model_fitted_on_training_data_fills_other_data(observed):
    truth = blobs(n=1, t=6, size=12, seed=5)
    train = truth.where(np.random.default_rng(2).random(truth.shape) < 0.8)  # every cell observed at some step
    test = observed.isel(sample=[1])
    filled = ambient(test, train=train, **TINY)
    assert_filled(filled, test)


def test_benchmark_table_runs_every_kind_of_method_and_writes_its_files(tmp_path):
    from dataclasses import replace

    from xrimpute import bench

    settings = replace(bench.SETTINGS["small"], size=12, frames=6, n_train=2, n_test=1, steps=4, batch_size=2, K=2)
    report = bench.run("table2", settings, methods=["ctxdiff", "ctxdiff-pixel", "em_consistency", "temporal"],
                       datasets=["advection"], out=tmp_path, progress=False)
    assert {(r["condition"], r["method"], r["metric"]) for r in report.rows} == {
        (c, m, k) for c in ("Adv 8/9", "Adv 5/9") for m in ("ctxdiff", "ctxdiff-pixel", "em_consistency", "temporal")
        for k in ("gap_mse", "forecast_mse")}
    assert all(np.isfinite(r["value"]) and r["value"] >= 0 for r in report.rows)
    text = report.markdown()
    assert "| method | Adv 8/9 | Adv 5/9 | seconds |" in text and "**forecast_mse**" in text
    assert sorted(p.rsplit("/", 1)[-1] for p in report.files) == ["table2-custom.json", "table2-custom.png"]
    with pytest.raises(ValueError, match="unknown methods"):
        bench.run("table1", settings, methods=["ctxdiff-pixel"], out=None)
