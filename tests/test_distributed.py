"""Reconstruction of a zarr archive on a dask cluster (resume, killed workers, GPU resources) and DDP training."""
import json
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import xarray as xr
from distributed import Client, LocalCluster, Scheduler, SpecCluster, Worker

import xrimpute
from test_lazy import FIT, archive
from xrimpute.reconstruct import reconstruct, record_folder
from xrimpute.masks import Pixel
from xrimpute.nets import Denoiser
from xrimpute.training import TrainConfig, train
from xrimpute.samplers import ArrayWindows

# one window per batch: float32 convolutions round differently with the batch's size on some CPUs (AVX2), and
# regions batch other windows together than the whole series does
IMPUTE = dict(K=3, seed=2, batch_size=1)
REGIONS = 6  # 24 steps in chunks of 4; the model is untiled, so a region is one time chunk of the whole grid
FAILING = {2, 4}


def fail_on_some_regions(index):
    """Injected failure: these regions raise before anything is written."""
    if index in FAILING:
        raise RuntimeError(f"injected failure in region {index}")


def pause(index):
    """Slow regions down so that a worker can be killed while the run is under way."""
    time.sleep(1.0)


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A zarr archive on disk, a saved model, and the in-memory imputation to compare with."""
    root = tmp_path_factory.mktemp("archive")
    data = archive()
    data.chunk(time=4).to_zarr(root / "source.zarr", consolidated=False)
    model = xrimpute.fit(data, **FIT)
    model.save(root / "model.xri")
    reference = model.impute(data, progress=False, **IMPUTE)
    return root, model, reference


@pytest.fixture(scope="module")
def processes():
    """A local cluster of two worker processes."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


def records(target):
    folder = record_folder(target) / "regions"
    return {int(p.stem): json.loads(p.read_text()) for p in folder.glob("*.json")}


def chunk_files(target):
    """Modification time of every chunk file of the imputed variables."""
    return {str(p.relative_to(target)): p.stat().st_mtime_ns for name in ("t2m", "u10")
            for p in (target / name / "c").rglob("*") if p.is_file()}


def test_reconstruct_on_the_default_local_cluster_equals_in_memory_imputation(case):
    root, model, reference = case
    target = root / "default.zarr"
    result = reconstruct(root / "source.zarr", root / "model.xri", target, progress=False, **IMPUTE)
    xr.testing.assert_allclose(result[["t2m", "u10"]].load(), reference, rtol=1e-6, atol=1e-5)
    assert result["t2m"].encoding["chunks"] == (4, 24, 24)
    assert sorted(records(target)) == list(range(REGIONS))
    again = reconstruct(root / "source.zarr", root / "model.xri", target, progress=False, **IMPUTE)  # all done
    xr.testing.assert_identical(again.load(), result.load())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the finished store has consolidated metadata: a plain open is quiet
        xr.testing.assert_identical(xr.open_zarr(target).load(), result.load())
    with pytest.raises(ValueError, match="other settings"):
        reconstruct(root / "source.zarr", root / "model.xri", target, progress=False, K=5, seed=2)


def test_a_failed_run_resumes_writing_every_region_once(case, processes):
    root, model, reference = case
    target = root / "resumed.zarr"
    with pytest.raises(RuntimeError, match="2 of 6 regions failed"):
        reconstruct(root / "source.zarr", model, target, client=processes, progress=False,
                    before_region=fail_on_some_regions, **IMPUTE)
    first = records(target)
    assert sorted(first) == sorted(set(range(REGIONS)) - FAILING)
    written = chunk_files(target)
    assert len(written) == 2 * (REGIONS - len(FAILING))  # two variables, one chunk per region

    result = reconstruct(root / "source.zarr", model, target, client=processes, progress=False, **IMPUTE)
    second = records(target)
    assert sorted(second) == list(range(REGIONS))
    assert {i: second[i] for i in first} == first  # finished regions were not redone ...
    assert {k: v for k, v in chunk_files(target).items() if k in written} == written  # ... nor rewritten
    assert {second[i]["run"] for i in FAILING} != {first[i]["run"] for i in first}  # the rerun did the rest
    xr.testing.assert_allclose(result[["t2m", "u10"]].load(), reference, rtol=1e-6, atol=1e-5)


def test_killing_a_worker_mid_run_still_completes_correctly(case, processes):
    root, model, reference = case
    target = root / "killed.zarr"
    before = processes.run(os.getpid)
    outcome = {}

    def run():
        try:
            outcome["result"] = reconstruct(root / "source.zarr", root / "model.xri", target, client=processes,
                                            progress=False, before_region=pause, **IMPUTE)
        except BaseException as err:  # reported by the assertion below
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline and not (record_folder(target) / "regions").is_dir():
        time.sleep(0.1)
    busy = []
    while time.time() < deadline and not busy:
        busy = [address for address, keys in processes.processing().items() if keys]
        time.sleep(0.05)
    os.kill(before[busy[0]], signal.SIGKILL)
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert before[busy[0]] not in processes.run(os.getpid).values()  # that worker is gone
    assert sorted(records(target)) == list(range(REGIONS))
    xr.testing.assert_allclose(outcome["result"][["t2m", "u10"]].load(), reference, rtol=1e-6, atol=1e-5)


def test_regions_go_to_workers_that_declare_a_gpu_and_spread_is_written(case):
    root, model, reference = case
    workers = {"gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
               "cpu": {"cls": Worker, "options": {"nthreads": 1}}}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    with SpecCluster(scheduler=scheduler, workers=workers) as cluster, Client(cluster) as client:
        gpu_worker = next(a for a, w in client.scheduler_info()["workers"].items() if w["resources"])
        target = root / "gpu.zarr"
        source = xr.open_zarr(root / "source.zarr", consolidated=False)  # a Dataset goes to the workers once
        result = reconstruct(source, root / "model.xri", target, client=client, device="cpu", return_std=True,
                             progress=False, **IMPUTE)
    assert {r["worker"] for r in records(target).values()} == {gpu_worker}
    xr.testing.assert_allclose(result[["t2m", "u10"]].load(), reference, rtol=1e-6, atol=1e-5)
    spread, seen = result["t2m_std"].load(), source["t2m"].notnull()
    assert float(spread.where(seen).max()) == 0 and float(spread.where(~seen).min()) > 0


# -- DistributedDataParallel ----------------------------------------------------------
class RecordingWindows(ArrayWindows):
    """The real sampler, remembering what each batch held."""

    def sample(self, batch_size, generator):
        batch = super().sample(batch_size, generator)
        self.drawn = getattr(self, "drawn", []) + [float(batch[0].sum())]
        return batch


def _ddp_rank(rank, world, rendezvous, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        values = np.random.default_rng(0).standard_normal((2, 1, 12, 16, 16)).astype(np.float32)
        windows = RecordingWindows(values, np.ones(values.shape, bool), window=3)
        torch.manual_seed(rank)  # each rank starts from other weights: DDP must broadcast rank 0's
        denoiser = Denoiser(1, 3, preset="tiny")
        config = TrainConfig(steps=6, batch_size=2, warmup=1, log_every=2, checkpoint_every=3)
        ema, history = train(denoiser, windows, Pixel(), config, checkpoint=os.path.join(out, "checkpoint.pt"),
                             progress=False)
        torch.save(dict(net=denoiser.state_dict(), ema=ema.state_dict(), drawn=windows.drawn, loss=history.loss),
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_draw_their_own_windows_and_stay_in_sync(tmp_path):
    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["drawn"] != ranks[1]["drawn"]  # every rank its own windows
    for key in ("net", "ema"):
        for name, tensor in ranks[0][key].items():
            torch.testing.assert_close(tensor, ranks[1][key][name], rtol=0, atol=0)
    assert ranks[0]["loss"] == ranks[1]["loss"]  # the logged loss is the mean over ranks
    torch.manual_seed(0)
    start = Denoiser(1, 3, preset="tiny").state_dict()
    assert any(not torch.equal(start[k], v) for k, v in ranks[0]["net"].items())  # training moved the weights
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 6 and len(checkpoint["picks"]) == 2  # one random stream per rank, to resume each
