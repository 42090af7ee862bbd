"""`import xrimpute` is light: torch and dask.distributed load only when a name that needs them is first used."""
import subprocess
import sys

import pytest

import xrimpute

CODE = """
import sys, types
import xarray as xr
import xrimpute
light = [m for m in ("torch", "distributed") if m in sys.modules]
assert hasattr(xr.Dataset(), "ctxdiff")                              # the accessor is registered
modules = [xrimpute.baselines, xrimpute.metrics, xrimpute.bench, xrimpute.io, xrimpute.masks, xrimpute.plot]
assert all(isinstance(m, types.ModuleType) for m in modules)
import xrimpute.reconstruct, xrimpute.observe                        # the modules named like their functions
assert callable(xrimpute.reconstruct) and xrimpute.reconstruct.__name__ == "reconstruct"
assert callable(xrimpute.observe) and xrimpute.observe.__module__ == "xrimpute.observe"
from xrimpute import CtxDiffModel, fit, load, set_options
print(light)
"""


def test_import_leaves_torch_and_distributed_for_later_and_every_public_name_loads_on_first_use():
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        xrimpute.no_such_name  # noqa: B018
