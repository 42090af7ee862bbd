import collections
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/synthetic.py
# subprocesses (the CLI, notebook kernels, dask workers) import this checkout, not whatever xrimpute is installed
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
# under pytest-xdist each worker is a process of its own: one torch thread each, so that workers do not fight
# over the cores (a spinning thread pool on a shared core slows down many times over)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(items):
    """Files holding the most slow tests first, each file's tests in their order: pytest-xdist hands out whole
    files in this order (``--dist loadfile``), so the long ones start early instead of keeping one worker busy at
    the end."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    """No test writes into the user's real cache."""
    if "XRIMPUTE_DATA_DIR" not in os.environ:
        monkeypatch.setenv("XRIMPUTE_DATA_DIR", str(tmp_path_factory.getbasetemp() / "xrimpute-cache"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny networks: faster, and far faster on a busy machine or beside
    dask workers running blocks side by side (spinning thread pools slow a shared CPU badly)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cluster():
    """One dask client on two worker processes for every test that reconstructs on a cluster: each worker
    imports torch and the package once, not once per test (``reconstruct``'s own cluster, made when no client is
    given, is tested in ``tests/test_distributed.py``)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local, \
            Client(local, set_as_default=False) as client:  # other tests keep dask's own scheduler
        yield client
