"""Package-wide options (set_options) reach fit and impute; show_versions reports the environment."""
import io
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import xrimpute
from synthetic import blobs
from xrimpute import engine as model_module
from xrimpute.engine import train_config
from xrimpute.options import OPTIONS, cpu_threads, get_options, torch_threads


@pytest.fixture(autouse=True)
def _restore_options():
    saved = dict(OPTIONS)
    yield
    OPTIONS.clear()
    OPTIONS.update(saved)


@pytest.fixture(scope="module")
def observed():
    truth = blobs(n=2, t=8, size=12, seed=0)
    return truth.where(np.random.default_rng(0).random(truth.shape) < 0.5)


TINY = dict(mask="pixel", steps=3, batch_size=2, preset="tiny", verbose=False, val_fraction=0.0)


def test_context_manager_sets_and_restores_while_a_plain_call_sets_for_good():
    assert get_options() == {"device": "auto", "progress": True, "dtype": "bfloat16", "threads": "auto"}
    with xrimpute.set_options(progress=False, dtype="float32") as options:
        assert isinstance(options, xrimpute.set_options)
        assert OPTIONS["progress"] is False and OPTIONS["dtype"] == "float32"
    assert OPTIONS["progress"] is True and OPTIONS["dtype"] == "bfloat16"
    xrimpute.set_options(device="cpu")
    assert OPTIONS["device"] == "cpu"


def test_options_are_restored_when_the_block_raises():
    with pytest.raises(RuntimeError, match="boom"), xrimpute.set_options(device="cpu"):
        raise RuntimeError("boom")
    assert OPTIONS["device"] == "auto"


@pytest.mark.parametrize(
    "options, message",
    [({"colour": "red"}, "unknown option"), ({"device": "gpu-ish"}, "not a device"),
     ({"progress": "yes"}, "True or False"), ({"dtype": "float16"}, "dtype must be one of")],
)
def test_bad_options_are_refused_and_change_nothing(options, message):
    before = get_options()
    with pytest.raises(ValueError, match=message):
        xrimpute.set_options(**options)
    assert get_options() == before


def test_fit_and_impute_read_device_and_progress_from_the_options(observed, monkeypatch, capsys):
    devices = []
    real = model_module.resolve_device
    monkeypatch.setattr(model_module, "resolve_device", lambda d: devices.append(d) or real(d))

    with xrimpute.set_options(device="cpu", progress=False):
        model = xrimpute.fit(observed, **TINY)
        filled = model.impute(observed, K=2)
    assert devices == ["cpu", "cpu", "cpu"]  # fit (its tile, its training), impute: the option, not "auto"
    assert "training" not in capsys.readouterr().err  # no progress bar

    model.impute(observed, K=2, device="cpu")
    assert "imputing" in capsys.readouterr().err  # progress is back on after the block
    never_observed = observed.isnull().all(["sample", "time"])  # left NaN by design
    assert filled.isnull().equals(never_observed.broadcast_like(filled).transpose(*filled.dims))


def test_an_explicit_argument_wins_over_the_option(observed, monkeypatch, capsys):
    devices = []
    real = model_module.resolve_device
    monkeypatch.setattr(model_module, "resolve_device", lambda d: devices.append(d) or real(d))
    with xrimpute.set_options(device="cuda", progress=False):
        xrimpute.fit(observed, device="cpu", progress=True, **TINY)
    assert devices == ["cpu", "cpu"]  # its tile, its training: the argument, not the option
    assert "training" in capsys.readouterr().err


def test_float32_option_turns_bf16_training_off_and_the_cpu_never_trains_in_bf16(observed):
    assert train_config().bf16 is True  # bfloat16 on a GPU by default
    with xrimpute.set_options(dtype="float32", progress=False):
        assert train_config().bf16 is False
        model = xrimpute.fit(observed, **TINY, device="cpu")
    assert model.info["train"]["bf16"] is False
    assert xrimpute.fit(observed, progress=False, device="cpu", **TINY).info["train"]["bf16"] is False  # as it ran


def test_show_versions_lists_the_stack():
    out = io.StringIO()
    xrimpute.show_versions(file=out)
    text = out.getvalue()
    for name in ("xrimpute", "python", "torch", "CUDA available", "xarray", "dask", "zarr", "numpy", "cfgrib"):
        assert f"\n{name}:" in f"\n{text}", name
    assert f"xrimpute: {xrimpute.__version__}".replace(" ", "") in text.replace(" ", "")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "many"])
def test_threads_must_be_auto_or_a_positive_whole_number(threads):
    with pytest.raises(ValueError, match="threads must be 'auto' or a whole number of at least 1"):
        xrimpute.set_options(threads=threads)
    assert OPTIONS["threads"] == "auto"


def test_auto_threads_follow_omp_num_threads_at_start_and_a_number_wins():
    code = ("import xrimpute\nfrom xrimpute.options import cpu_threads\nprint(cpu_threads())\n"
            "with xrimpute.set_options(threads=2):\n    print(cpu_threads())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "2"]


def test_torch_threads_sets_the_count_inside_the_block_only():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other) as used:
        assert used == other and torch.get_num_threads() == other
    assert torch.get_num_threads() == before


def test_auto_threads_leave_the_cores_of_local_dask_workers_free(monkeypatch):
    from distributed import Client, LocalCluster

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # restored afterwards: a LocalCluster sets it here too
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with torch_threads(2):
        assert cpu_threads() == 2
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster):
            assert cpu_threads() == max(1, min(2, cores - 1))
        assert cpu_threads() == 2  # the cluster is gone


def test_auto_threads_inside_a_dask_worker_are_its_share_of_the_cores(monkeypatch):
    from distributed import Client, LocalCluster

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with torch_threads(4), LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                        dashboard_address=None) as cluster, Client(cluster) as client:
        assert client.submit(cpu_threads, pure=False).result() == max(1, min(4, cores // 2))


def test_fit_and_impute_run_with_the_threads_option_and_restore_torchs_setting(observed, caplog):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    with caplog.at_level(logging.DEBUG, logger="xrimpute"), xrimpute.set_options(threads=wanted, progress=False):
        model = observed.ctxdiff.fit(**TINY, device="cpu")
        model.impute(observed, K=1, device="cpu")
    notes = [r.getMessage() for r in caplog.records if r.name == "xrimpute"]
    assert notes.count(f"torch CPU threads: {wanted} (was {before})") == 2  # the fit, then the impute
    assert torch.get_num_threads() == before
