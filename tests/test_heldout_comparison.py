"""fit scores the package's classical fillers on the very cells its validation holds back, reports them next to
the network's skill, and warns once, with the call to run it, when one of them is better."""
import re
import warnings

import dask.array
import numpy as np
import pytest

import xrimpute
from synthetic import blobs
from xrimpute import masks
from xrimpute.baselines.heldout import Filler, score
from xrimpute.errors import SkillWarning
from xrimpute.samplers import training_windows

TINY = dict(mask="pixel", steps=3, batch_size=2, progress=False, seed=0)


def constant_in_time(chunked: bool = False):
    """Two samples of a field that never changes in time, half of its cells observed: time interpolation is exact."""
    field = blobs(n=2, t=1, size=16, seed=0)
    cube = field.isel(time=[0] * 24).assign_coords(time=np.arange(24))
    observed = cube.where(np.random.default_rng(0).random(cube.shape) < 0.5)
    return observed.chunk({"time": 8}) if chunked else observed


def skill_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, SkillWarning)]


@pytest.fixture(scope="module")
def fitted():
    observed = constant_in_time()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = observed.ctxdiff.fit(**TINY)
    return model, skill_warnings(record)


def test_time_interpolation_is_exact_on_a_field_constant_in_time_and_one_warning_names_it(fitted):
    model, messages = fitted
    v = model.validation
    assert v["classical"]["interpolate"] < 1e-10 and v["classical"]["temporal"] < 1e-10
    assert v["classical"]["akima"] < 1e-10  # a spline through a constant series is that constant
    assert v["best_classical"] in ("temporal", "interpolate", "akima") and v["nmse"] > 1e-6
    assert {"telea", "ns_inpaint", "normalised_convolution"} <= set(v["classical"]) | set(v["classical_skipped"])
    (message,) = messages
    best = v["best_classical"]
    assert f'xrimpute.baselines.fill(ds, method="{best}")' in message
    assert f"skill {1 - v['classical'][best]:.3f}" in message and f"ctxdiff {v['skill']:.3f}" in message
    assert "max_time=" in message and "steps=" in message


def test_the_repr_shows_the_best_classical_filler_next_to_the_skill_also_after_loading(fitted, tmp_path):
    model, _ = fitted
    best = model.validation["best_classical"]
    for shown in (model, xrimpute.load(model.save(tmp_path / "m.xri"))):
        text = repr(shown)
        assert f"best classical filler {best} 1.000" in text
        assert "ctxdiff's MSE" not in text  # the filler is exact here: no ratio to its error of 0
        assert "classical:" in text and "telea" in text.split("classical:")[-1]


def test_the_repr_gives_the_error_ratio_to_the_best_classical_filler():
    observed = xrimpute.observe(blobs(n=2, t=12, size=16, seed=1), "pixel", rate=0.3, seed=0)
    model = observed.ctxdiff.fit(**TINY)
    v = model.validation
    assert v["classical"][v["best_classical"]] > 0
    from xrimpute.baselines.heldout import ratio_text
    quoted = re.fullmatch(r"ctxdiff's MSE ([\d.e+-]+) times its", ratio_text(v))
    assert quoted and float(quoted.group(1)) == pytest.approx(v["nmse"] / v["classical"][v["best_classical"]], rel=0.05)
    assert ratio_text(v) in repr(model)


def test_compare_classical_false_skips_the_comparison_and_verbose_false_only_the_warning():
    observed = constant_in_time()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        off = observed.ctxdiff.fit(**TINY, compare_classical=False)
        quiet = observed.ctxdiff.fit(**TINY, verbose=False)
    assert "classical" not in off.validation and "classical:" not in repr(off)
    assert quiet.validation["classical"]["interpolate"] < 1e-10
    assert skill_warnings(record) == []


def test_an_archive_is_compared_on_its_reserved_windows_with_the_steps_around_them():
    model = constant_in_time(chunked=True).ctxdiff.fit(**TINY, verbose=False)
    v = model.validation
    assert "archive input" in v["classical_context"]
    assert v["classical"]["temporal"] < 1e-10 and v["cells"] > 10


def _windows(chunked: bool):
    values = constant_in_time().values[:, None]  # (N, C, T, H, W)
    values = values + np.random.default_rng(1).normal(size=values.shape).astype(np.float32)  # nothing exact
    if chunked:
        values = dask.array.from_array(values, chunks=(1, 1, 8, 16, 16))
    return training_windows(values, masks.Pixel(), np.array([0.1], np.float32), np.array([2.0], np.float32),
                            window=3, val_fraction=0.2, seed=0)


@pytest.mark.parametrize("chunked", [False, True], ids=["memory", "archive"])
def test_the_fillers_never_see_the_held_back_cells_and_are_scored_on_exactly_the_validation_cells(chunked):
    windows = _windows(chunked)
    try:
        xs, _, hs, _ = windows.validation
        reference = float((xs.double() ** 2 * hs).sum())
        ones = float(((1 - xs.double()) ** 2 * hs).sum()) / reference  # every hidden cell filled with 1
        fillers = {  # leaving the gaps empty scores as the mean fill: 1 exactly, unless a held-back cell is seen
            f"empty, reach {reach}": Filler(lambda v: v, reach, lambda series: 0.0) for reach in (None, 0, 4)}
        fillers["ones"] = Filler(lambda v: np.where(np.isnan(v), 1.0, v), None, lambda series: 0.0)
        result = score(windows, budget=60.0, fillers=fillers)
    finally:
        windows.close()
    assert hs.sum() > 20
    for reach in (None, 0, 4):
        assert result["classical"][f"empty, reach {reach}"] == pytest.approx(1.0, abs=1e-12)
    assert result["classical"]["ones"] == pytest.approx(ones, rel=1e-9) and abs(ones - 1) > 0.1


def test_a_filler_over_the_time_budget_or_without_its_optional_dependency_is_skipped_with_the_reason():
    def needs_opencv(values):
        raise ImportError('the "telea" and "ns_inpaint" baselines need OpenCV: pip install "xrimpute[classical]"')

    windows = _windows(False)
    fillers = {"slow": Filler(lambda v: v, None, lambda series: 1e6), "opencv": Filler(needs_opencv, 0, lambda s: 0.0),
               "quick": Filler(lambda v: np.nan_to_num(v), 0, lambda series: 0.0)}
    result = score(windows, budget=5.0, fillers=fillers)
    assert set(result["classical"]) == {"quick"} and result["best_classical"] == "quick"
    assert "more than the" in result["classical_skipped"]["slow"] and "of 5 s" in result["classical_skipped"]["slow"]
    assert "pip install" in result["classical_skipped"]["opencv"]


def test_a_fit_that_trained_no_step_names_the_better_filler_without_telling_to_train_longer():
    from xrimpute.baselines.heldout import warn_if_beaten

    validation = dict(best_classical="rbf", classical={"rbf": 0.1}, nmse=0.2, skill=0.8, cells=12)
    for trained, advice in ((True, True), (False, False)):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            warn_if_beaten(validation, trained=trained)
        (message,) = [str(w.message) for w in record if issubclass(w.category, SkillWarning)]
        assert 'method="rbf"' in message and ("train longer" in message) == advice
        assert "ctxdiff's MSE 2 times its" in message  # near a skill of 1 the skills alone hide how far apart
    with warnings.catch_warnings(record=True) as record:  # the same fill to the printed ratio: a tie
        warnings.simplefilter("always")
        warn_if_beaten(dict(validation, nmse=0.10002), trained=False)
    assert not [w for w in record if issubclass(w.category, SkillWarning)]


def test_the_error_ratio_is_left_out_where_the_classical_filler_is_exact():
    from xrimpute.baselines.heldout import ratio_text

    assert ratio_text(dict(best_classical="rbf", classical={"rbf": 0.05}, nmse=0.04)) == "ctxdiff's MSE 0.8 times its"
    near_one = dict(best_classical="rbf", classical={"rbf": 0.05}, nmse=0.0502)
    assert ratio_text(near_one) == "ctxdiff's MSE 1.004 times its"
    assert ratio_text(dict(best_classical="rbf", classical={"rbf": 0.0}, nmse=0.04)) == ""
    assert ratio_text(dict(best_classical=None, classical={}, nmse=0.04)) == ""
