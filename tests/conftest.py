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
