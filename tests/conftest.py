import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/synthetic.py
# subprocesses (the CLI, notebook kernels, dask workers) import this checkout, not whatever xrimpute is installed
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
torch.set_num_threads(min(2, torch.get_num_threads()))


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
