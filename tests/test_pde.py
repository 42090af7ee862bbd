"""PDE sample generators: accuracy, conservation, determinism, CF metadata and the disk cache."""
import functools
import time

import cf_xarray  # noqa: F401  (registers .cf)
import numpy as np
import pytest
import torch

import xrimpute
from xrimpute import pde
from xrimpute.cube import find_axes
from xrimpute.datasets import generated
from xrimpute.engine import wraps_round
from xrimpute.errors import ArgumentTypeError
from xrimpute.pde import (advect_fd, advection, advection_exact, integrate_vorticity, navier_stokes,
                          shallow_water, shallow_water_residual)
from xrimpute.pde._common import sample_rngs
from xrimpute.pde.navier_stokes import random_vorticity

NAMES = ("advection", "shallow_water", "navier_stokes")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These problems are tiny: extra threads only add synchronisation, which stalls badly on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wave(size, shift_x=0.0, shift_y=0.0):
    """A band-limited periodic field on [0, 1)^2, translated by (shift_x, shift_y)."""
    x = np.arange(size) / size
    y, x = np.meshgrid(x, x, indexing="ij")
    return np.sin(2 * np.pi * (x - shift_x)) * np.cos(4 * np.pi * (y - shift_y)) + 0.5 * np.cos(
        2 * np.pi * (3 * (x - shift_x) - (y - shift_y)))


@pytest.fixture(scope="module")
def tiny():
    return {name: pde.generate(name, "tiny", dtype="float64") for name in NAMES}


# --- advection -------------------------------------------------------------------------------

def test_spectral_shift_is_exact():
    velocity = np.array([0.7, -0.4])
    shifted = advection_exact(_wave(32), velocity, 0.3, dx=1 / 32)
    np.testing.assert_allclose(shifted, _wave(32, 0.21, -0.12), atol=1e-13)
    whole_cells = advection_exact(_wave(32), np.array([3 / 32, 5 / 32]), [0.0, 1.0, 2.0], dx=1 / 32)
    assert whole_cells.shape == (3, 32, 32)
    np.testing.assert_allclose(whole_cells[2], np.roll(_wave(32), (10, 6), axis=(0, 1)), atol=1e-13)


def test_fd_integrator_converges_to_exact_solution():
    velocity = np.array([0.7, -0.4])
    errors = []
    for size in (32, 64, 128):
        numeric = advect_fd(_wave(size), velocity, 1 / size, 0.1, 10)
        exact = advection_exact(_wave(size), velocity, 0.1 * np.arange(11), 1 / size)
        assert numeric.shape == exact.shape == (11, size, size)
        errors.append(np.abs(numeric - exact).max())
    assert errors[-1] < 5e-3  # the field's amplitude is 1.5
    assert errors[0] / errors[1] > 6 and errors[1] / errors[2] > 6  # third order: ratios near 8


def test_fd_integrator_follows_generated_trajectories(tiny):
    ds = tiny["advection"]
    velocity = np.stack([ds.velocity_x, ds.velocity_y], axis=-1)
    steps = ds.sizes["time"] - 1
    numeric = advect_fd(ds.tracer.values[:, 0], velocity, ds.attrs["grid_spacing"], ds.attrs["dt"], steps)
    error = np.sqrt(((numeric - ds.tracer.values) ** 2).mean()) / ds.tracer.values.std()
    assert error < 0.1
    still = np.sqrt(((ds.tracer.values[:, :1] - ds.tracer.values) ** 2).mean()) / ds.tracer.values.std()
    assert still > 5 * error  # the tracer really moves


def test_generated_advection_is_the_exact_solution(tiny):
    ds = tiny["advection"]
    velocity = np.stack([ds.velocity_x, ds.velocity_y], axis=-1)
    exact = advection_exact(ds.tracer.values[:, 0], velocity, ds.time.values, ds.attrs["grid_spacing"])
    np.testing.assert_allclose(exact, ds.tracer.values, atol=1e-12)


# --- shallow water ---------------------------------------------------------------------------

def test_shallow_water_conserves_mass_to_round_off(tiny):
    mass = tiny["shallow_water"].h.sum(("x", "y")).values
    assert np.abs(mass / mass[:, :1] - 1).max() < 1e-12


def test_shallow_water_energy_is_nearly_conserved(tiny):
    ds = tiny["shallow_water"]
    h, u, v = ds.h.values, ds.u.values, ds.v.values
    mean_depth = h.mean(axis=(-2, -1), keepdims=True)  # conserved: differs from the total energy by a constant
    energy = (0.5 * h * (u**2 + v**2) + 0.5 * ds.attrs["gravity"] * (h - mean_depth) ** 2).sum((-2, -1))
    ratio = energy / energy[:, :1]
    assert 0.98 < ratio.min() and ratio.max() < 1.01
    assert np.abs(u).max() > 0.01  # bumps did release waves


def test_shallow_water_residual_separates_solutions_from_noise(tiny):
    ds = tiny["shallow_water"]
    fields = [ds[name].values for name in ("h", "u", "v")]
    args = (ds.attrs["grid_spacing"], ds.attrs["dt"], ds.coriolis.values)
    true = shallow_water_residual(*fields, *args, g=ds.attrs["gravity"])
    assert all(r.shape == (8, ds.sizes["time"] - 4, 32, 32) for r in true)
    rng = np.random.default_rng(0)
    noisy = [a + 0.01 * a.std() * rng.standard_normal(a.shape) for a in fields]
    perturbed = shallow_water_residual(*noisy, *args, g=ds.attrs["gravity"])
    for clean, dirty in zip(true, perturbed):
        assert np.sqrt((dirty**2).mean()) > 10 * np.sqrt((clean**2).mean())


# --- Navier-Stokes ---------------------------------------------------------------------------

def test_decaying_turbulence_loses_enstrophy_monotonically():
    ds = navier_stokes(n_samples=4, size=32, frames=12, forcing="none", dtype="float64", progress=False)
    enstrophy = (ds.vorticity**2).mean(("x", "y")).values
    assert (np.diff(enstrophy, axis=1) < 0).all()
    assert (enstrophy[:, -1] < 0.97 * enstrophy[:, 0]).all()


@pytest.mark.parametrize("forcing", ["none", "kolmogorov"])
def test_navier_stokes_time_stepping_is_fourth_order(forcing):
    w0 = random_vorticity(sample_rngs(3, 2), 32, 4.0, 1.0)
    runs = [integrate_vorticity(w0, 0.05 / 2**j, 20 * 2**j, forcing=forcing, drag=0.1) for j in range(3)]
    coarse, fine = np.abs(runs[0] - runs[1]).max(), np.abs(runs[1] - runs[2]).max()
    assert 10 < coarse / fine < 25  # 16 for a fourth-order scheme
    assert fine < 1e-3 * np.abs(runs[2]).max()


def test_decaying_turbulence_builds_an_enstrophy_cascade_spectrum():
    w0 = random_vorticity(sample_rngs(0, 2), 64, 4.0, 1.0)
    k = np.fft.fftfreq(64, 1 / 64)
    wavenumber = np.hypot(*np.meshgrid(k, k, indexing="ij"))
    shells = np.arange(6, 17)  # between the energy peak and the dissipation range

    def slope(w):
        energy = np.abs(np.fft.fft2(w)) ** 2 / np.where(wavenumber > 0, wavenumber, 1) ** 2
        spectrum = [energy[:, np.abs(wavenumber - s) < 0.5].sum() for s in shells]
        return np.polyfit(np.log(shells), np.log(spectrum), 1)[0]

    assert slope(w0) < -10  # the initial spectrum falls off exponentially
    assert -4.5 < slope(integrate_vorticity(w0, 0.01, 300)) < -2.8  # k^-3, steeper with coherent vortices


def test_forced_turbulence_stays_forced(tiny):
    ds = tiny["navier_stokes"]
    assert ds.attrs["forcing"] == "kolmogorov" and ds.attrs["drag"] == 0.1
    rms = np.sqrt((ds.vorticity**2).mean(("x", "y")).values)
    assert np.isfinite(rms).all() and rms.min() > 0.5 * rms.max()


# --- shared behaviour ------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_cf_metadata(tiny, name):
    ds = tiny[name]
    assert ds.cf.axes == {"X": ["x"], "Y": ["y"], "T": ["time"]}
    for coord in ("x", "y", "time"):
        assert {"units", "axis", "long_name"} <= set(ds[coord].attrs)
    for var in ds.data_vars.values():
        assert {"units", "long_name"} <= set(var.attrs)
    assert {"title", "equation", "seed", "dt", "length"} <= set(ds.attrs)
    assert ds.x.attrs["period"] == ds.y.attrs["period"] == pytest.approx(ds.attrs["length"])  # the square wraps
    cube_vars = [v for v in ds.data_vars.values() if v.dims == ("sample", "time", "y", "x")]
    assert cube_vars and all(v.dtype == np.float64 for v in cube_vars)
    axes = find_axes(ds)
    assert (axes.time, axes.lat, axes.lon, axes.sample) == ("time", "y", "x", "sample")


def test_a_fit_wraps_a_generated_cube_round_the_period_its_grid_declares(tiny, caplog):
    observed = xrimpute.observe(tiny["advection"].isel(sample=slice(2)), "pixel", rate=0.5, seed=0)
    fit = functools.partial(xrimpute.fit, mask="pixel", steps=1, batch_size=2, progress=False, verbose=False,
                            compare_classical=False)
    with caplog.at_level("INFO", logger="xrimpute"):
        model = fit(observed, verbose=True)
    engine = model.engine
    assert engine.config.periodic and engine.config.periodic_rows  # the square wraps both ways
    assert "32 x 32, window 5, wrapping round its rows and columns" in repr(model)
    assert engine.denoiser.row_period == engine.denoiser.first_guess.row_period == engine.denoiser.unet.row_period == 32
    # trained on tiles of fewer rows, the network has learned rows that end at their edges: only the guess wraps them
    tiled = fit(observed, tile=(16, 32)).engine.denoiser
    assert tiled.first_guess.row_period == 32 and tiled.unet.row_period == 0
    for axis in "xy":  # said once each, and why
        assert f"the grid wraps round along {axis!r}: its 32 cells span the period of 1" in caplog.text
    # a subdomain of the square (its cells do not span the period) does not wrap
    assert not fit(observed.isel(x=slice(24))).engine.config.periodic
    strip = fit(observed.isel(y=slice(24))).engine
    assert strip.config.periodic and not strip.config.periodic_rows and strip.denoiser.row_period == 0
    # a pair says which axes wrap, whatever the coordinates declare; anything else is refused before any work
    assert not fit(observed, periodic=(False, True)).engine.config.periodic_rows
    with pytest.raises(ArgumentTypeError, match=r"periodic must be True or False .* or a pair \(rows, columns\)"):
        fit(observed, periodic="both")
    assert wraps_round(np.arange(0.0, 360.0, 2.5), degrees=True)  # longitudes once round the globe
    assert wraps_round(np.arange(0.0, 360.0, 2.5), degrees=True, period=180.0)  # whatever else they declare
    assert not wraps_round(np.arange(0.0, 2 * np.pi, 0.1), degrees=False)  # no period declared


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_by_seed_and_independent_of_batching(name):
    first = pde.generate(name, seed=5)
    assert first.identical(pde.generate(name, seed=5))
    assert not np.allclose(first.to_array().values, pde.generate(name, seed=6).to_array().values)
    batched = pde.generate(name, seed=5, batch_size=3)
    for var in first.data_vars:
        np.testing.assert_allclose(batched[var].values, first[var].values, rtol=0, atol=1e-5)
    head = pde.generate(name, seed=5, n_samples=2)
    np.testing.assert_allclose(head.isel(sample=slice(None, 2)).to_array().values,
                               first.isel(sample=slice(None, 2)).to_array().values, rtol=0, atol=1e-5)


def test_presets_and_bad_arguments():
    assert set(pde.PRESETS) == set(NAMES)
    assert all(set(sizes) == {"tiny", "small", "paper"} for sizes in pde.PRESETS.values())
    paper = pde.PRESETS["navier_stokes"]["paper"]
    assert (paper["n_samples"], paper["size"], paper["frames"]) == (1152, 64, 100)
    assert pde.generate("advection", frames=3).sizes == {"sample": 8, "time": 3, "y": 32, "x": 32}
    with pytest.raises(ValueError, match="unknown dataset"):
        pde.generate("burgers")
    with pytest.raises(ValueError, match="unknown preset"):
        pde.generate("advection", "huge")
    with pytest.raises(ValueError, match="modes"):
        advection(size=8, modes=4)
    with pytest.raises(ValueError, match="dtype"):
        shallow_water(dtype="float16")
    with pytest.raises(ValueError, match="forcing"):
        navier_stokes(forcing="random")
    with pytest.raises(ValueError, match="velocity"):
        advect_fd(_wave(8), np.zeros(3), 1 / 8, 0.1, 2)
    with pytest.raises(ValueError, match="steps"):
        advect_fd(_wave(8), np.zeros(2), 1 / 8, 0.1, -1)
    with pytest.raises(ValueError, match="depth must stay positive"):
        shallow_water(amplitude_range=(0.2, 0.5))


# --- disk cache ------------------------------------------------------------------------------

def test_cache_reads_back_fast_and_regenerates_corrupt_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XRIMPUTE_DATA_DIR", str(tmp_path))
    start = time.perf_counter()
    made = generated.shallow_water(frames=6)
    first_call = time.perf_counter() - start
    path = generated.cache_path("shallow_water", "tiny", 0, frames=6)
    checksum = path.with_name(path.name + ".sha256")
    assert path.parent == tmp_path / "generated" and path.exists() and checksum.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, checksum.name]  # no temp files left
    np.testing.assert_array_equal(made.h.values, pde.generate("shallow_water", frames=6).h.values)

    def no_generation(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(generated, "generate", no_generation)
        start = time.perf_counter()
        again = generated.shallow_water(frames=6)
        assert time.perf_counter() - start < max(0.5, first_call / 2)
    assert again.identical(made)

    assert generated.cache_path("shallow_water", "tiny", 1, frames=6) != path
    assert generated.cache_path("shallow_water", "tiny", 0, frames=7) != path
    assert generated.cache_path("shallow_water", "tiny", 0, frames=6, progress=True) == path

    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    with pytest.warns(RuntimeWarning, match="checksum"):
        repaired = generated.shallow_water(frames=6)
    assert repaired.identical(made)
    checksum.unlink()  # a file without its checksum is not trusted either
    with pytest.warns(RuntimeWarning, match="checksum"):
        generated.shallow_water(frames=6)
    assert checksum.exists()
