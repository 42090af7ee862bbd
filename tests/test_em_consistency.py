"""EM + consistency baseline: absorbing process, stop-gradient consistency, categories, end to end."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

from synthetic import blobs
from xrimpute.baselines import METHODS, fill
from xrimpute.baselines.em_consistency import (
    CategoricalDenoiser,
    absorb,
    absorb_further,
    categories_of,
    consistency_loss,
    consistency_term,
    em_consistency,
    fit_em_consistency,
    masked_diffusion_loss,
    masked_fraction,
    predict,
    unmask,
)
from xrimpute.diffusion import VPSchedule, context_query_loss
from xrimpute.masks import Pixel
from xrimpute.nets import Denoiser

TINY = dict(steps=12, rounds=1, unmask_steps=3, batch_size=4, progress=False, device="cpu")


def small_net(n_classes=(2, 3), window=2):
    torch.manual_seed(0)
    return CategoricalDenoiser(list(n_classes), window, preset="tiny")


def random_codes(shape, n_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, k, shape[:1] + shape[2:], generator=g) for k in n_classes], dim=1)


def test_absorbing_process_masks_at_rate_t_and_always_masks_unobserved():
    g = torch.Generator().manual_seed(0)
    observed = torch.rand((3, 1, 4, 100, 100), generator=g) < 0.7
    t = torch.tensor([0.1, 0.5, 0.9])
    visible = absorb(observed, t, g)
    assert not (visible & ~observed).any()
    kept = (visible.flatten(1).sum(1) / observed.flatten(1).sum(1)).numpy()
    np.testing.assert_allclose(kept, 1 - t.numpy(), atol=0.01)  # ~28k observed cells per sample: sd < 0.003
    later = absorb_further(visible, t, 0.05, g)
    assert not (later & ~visible).any()  # nested: masked at t stays masked at t + dt
    kept = (later.flatten(1).sum(1) / observed.flatten(1).sum(1)).numpy()
    np.testing.assert_allclose(kept, 1 - t.numpy() - 0.05, atol=0.01)
    np.testing.assert_allclose(masked_fraction(visible).numpy(), 1 - 0.7 * (1 - t.numpy()), atol=0.01)


@pytest.mark.parametrize("order,sample", [("confidence", False), ("random", True)])
def test_unmasking_fills_every_gap_within_each_channels_classes_and_keeps_observed_cells(order, sample):
    net = small_net().eval()
    shape = (2, 2, 2, 8, 8)
    codes = random_codes(shape, (2, 3))
    observed = torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.3
    filled, decided = unmask(net, codes, observed, steps=4, order=order, sample=sample,
                             generator=torch.Generator().manual_seed(2))
    assert torch.equal(filled[observed], codes[observed])
    assert filled[:, 0].max() <= 1 and filled[:, 1].max() <= 2 and filled.min() >= 0
    torch.testing.assert_close(decided.sum(-1), torch.ones(shape))  # every cell was decided, once
    assert torch.equal(decided[observed].argmax(-1), codes[observed])
    assert float(decided[..., 2][:, 0].max()) < 1e-6  # channel 0 has no class 2
    marginal = predict(net, codes, observed)
    assert torch.equal(marginal[observed], F.one_hot(codes[observed], 3).float())


def test_consistency_term_gives_the_teacher_no_gradient():
    net, teacher = small_net(), small_net()
    shape = (2, 2, 2, 8, 8)
    codes = random_codes(shape, (2, 3))
    observed = torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.5
    t = torch.tensor([0.2, 0.6])
    visible = absorb(observed, t, torch.Generator().manual_seed(3))
    teacher_logits = teacher(codes, visible, masked_fraction(visible))  # built with autograd on
    consistency_term(net, codes, visible, teacher_logits, t, 0.1, torch.Generator().manual_seed(4)).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0


def test_consistency_gradient_is_that_of_the_student_term_alone():
    net = small_net()
    shape = (2, 2, 2, 8, 8)
    codes = random_codes(shape, (2, 3))
    observed = torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.5
    t = torch.tensor([0.2, 0.6])
    visible = absorb(observed, t, torch.Generator().manual_seed(3))
    teacher_logits = net(codes, visible, masked_fraction(visible))  # the same network as teacher
    consistency_term(net, codes, visible, teacher_logits, t, 0.1, torch.Generator().manual_seed(4)).backward()
    through_term = [p.grad.clone() for p in net.parameters()]

    net.zero_grad()
    target = teacher_logits.detach().argmax(-1)
    student_visible = absorb_further(visible, t, 0.1, torch.Generator().manual_seed(4))
    student = net(codes, student_visible, masked_fraction(student_visible))
    F.cross_entropy(student[~visible], target[~visible]).backward()
    for a, p in zip(through_term, net.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_masked_diffusion_loss_is_finite_and_the_consistency_weight_adds_a_term():
    net = small_net()
    shape = (2, 2, 2, 8, 8)
    codes = random_codes(shape, (2, 3))
    observed = torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.3
    with torch.no_grad():
        plain = masked_diffusion_loss(net, codes, observed, 0.0, 0.1, torch.Generator().manual_seed(5))
        both = masked_diffusion_loss(net, codes, observed, 1.0, 0.1, torch.Generator().manual_seed(5))
    assert 0.3 < float(plain) < 3.0 and float(both) > float(plain) + 0.3  # an untrained net: CE ~ log 2..log 3


def test_continuous_consistency_loss_with_weight_zero_is_the_context_query_loss():
    torch.manual_seed(0)
    net = Denoiser(1, 2, preset="tiny")
    x = torch.randn(2, 1, 2, 8, 8)
    observed = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    x = x * observed
    args = (net, x, observed, Pixel(), VPSchedule())
    with torch.no_grad():
        ours = consistency_loss(0.0)(*args, torch.Generator().manual_seed(6))
        torch.testing.assert_close(ours, context_query_loss(*args, torch.Generator().manual_seed(6)))
        assert float(consistency_loss(1.0)(*args, torch.Generator().manual_seed(6))) > float(ours)


def flags(seed=0, size=12, steps=6):
    """A (time, y, x) land-cover-like DataArray with flag attributes, 70% of cells hidden."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    field = np.stack([(xx + s) // 4 % 3 for s in range(steps)]).astype(float)  # bands drifting right
    codes = np.array([10, 20, 30])[field.astype(int)].astype(float)
    codes[rng.random(codes.shape) < 0.7] = np.nan
    return xr.DataArray(codes, dims=("time", "y", "x"), name="cover",
                        coords={"time": np.arange(steps), "y": np.arange(size), "x": np.arange(size)},
                        attrs={"flag_values": np.array([10, 20, 30]), "flag_meanings": "water land ice"})


def test_categories_come_from_cf_flag_attributes():
    da = flags()
    values, meanings = categories_of(da)
    assert values.tolist() == [10, 20, 30] and meanings == ["water", "land", "ice"]
    plain = da.where(da != 30)
    plain.attrs = {}
    values, meanings = categories_of(plain)  # no flag attributes: the sorted observed values
    assert values.tolist() == [10.0, 20.0] and meanings is None
    with pytest.raises(ValueError, match="flag_meanings"):
        categories_of(da.assign_attrs(flag_meanings="water land"))
    with pytest.raises(ValueError, match="not among its categories"):
        em_consistency(da.assign_attrs(flag_values=np.array([10, 20]), flag_meanings="water land"), **TINY)
    with pytest.raises(ValueError, match="em_consistency_continuous"):
        em_consistency(blobs(n=1, t=4, size=8), **TINY)


def test_dataarray_gives_labels_and_probabilities_with_observed_cells_kept():
    da = xr.concat([flags(seed=0), flags(seed=1)], "sample").transpose("time", "sample", "y", "x")
    labels, prob = em_consistency(da, window=2, **TINY)
    observed = da.notnull()
    assert labels.dims == da.dims and labels.name == "cover" and labels.attrs == da.attrs
    assert int(labels.isnull().sum()) == 0 and set(np.unique(labels.values)) <= {10.0, 20.0, 30.0}
    xr.testing.assert_equal(labels.where(observed), da)
    assert prob.name == "cover_prob" and prob.dims == (*da.dims, "category")
    assert prob["category"].values.tolist() == [10, 20, 30]
    assert prob.attrs["flag_meanings"] == prob["category"].attrs["flag_meanings"] == "water land ice"
    np.testing.assert_allclose(prob.sum("category"), 1.0, atol=1e-5)
    on_observed = prob.sel(category=da.fillna(10)).where(observed)  # probability of the observed class
    assert float(on_observed.min()) == 1.0
    np.testing.assert_array_equal(labels.values, prob["category"].values[prob.values.argmax(-1)])


def test_dataset_keeps_integer_and_boolean_dtypes_and_gets_a_prob_variable_per_variable():
    da = flags(seed=1)
    rng = np.random.default_rng(2)
    ice = xr.DataArray(rng.random(da.shape) < 0.3, dims=da.dims)  # booleans: fully observed
    codes = da.fillna(-1).astype(np.int16).assign_attrs(_FillValue=-1)  # gaps as an integer fill value
    ds = xr.Dataset({"cover": codes, "ice": ice, "note": ("x", np.arange(12.0))}, coords=da.coords)
    out = em_consistency(ds, window=2, **TINY)
    assert out["cover"].dtype == np.int16 and out["ice"].dtype == bool
    assert set(np.unique(out["cover"].values)) <= {10, 20, 30}
    np.testing.assert_array_equal(out["cover"].values[da.notnull().values], da.values[da.notnull().values])
    np.testing.assert_array_equal(out["ice"].values, ice.values)
    assert out["cover_prob"].dims == (*da.dims, "cover_category") and out["ice_prob"].sizes["ice_category"] == 2
    xr.testing.assert_identical(out["note"], ds["note"])


def gappy_blobs():
    truth = blobs(n=1, t=6, size=8)
    gappy = truth.where(np.random.default_rng(0).random(truth.shape) < 0.6)
    assert gappy.notnull().any("time").all()  # every cell observed once: none stays NaN
    return gappy


@pytest.mark.filterwarnings("ignore:mask Pixel")  # a tiny cube: a few cells are hard to query
def test_registry_fills_binary_and_continuous_arrays():
    assert "em_consistency" in METHODS
    binary = flags().isel(y=slice(0, 8), x=slice(0, 8))
    binary = (binary > 15).where(binary.notnull())
    filled = fill(binary, method="em_consistency", window=2, **TINY)
    assert set(np.unique(filled.values)) <= {0.0, 1.0}
    xr.testing.assert_equal(filled.where(binary.notnull()), binary)

    gappy = gappy_blobs()
    filled = fill(gappy, method="em_consistency", rounds=1, steps=6, K=2, window=2, progress=False, device="cpu")
    assert int(filled.isnull().sum()) == 0
    xr.testing.assert_equal(filled.where(gappy.notnull()), gappy)


@pytest.mark.filterwarnings("ignore:mask Pixel")  # a tiny cube: a few cells are hard to query
def test_continuous_em_records_its_rounds_and_keeps_observed_values():
    gappy = gappy_blobs()
    learned = fit_em_consistency(gappy, rounds=1, steps=12, K=2, window=2, progress=False, device="cpu")
    assert learned.model.info["em"]["rounds"] == 1 and "validation" not in learned.model.info
    filled = learned.impute(gappy)
    assert int(filled.isnull().sum()) == 0
    xr.testing.assert_equal(filled.where(gappy.notnull()), gappy)
