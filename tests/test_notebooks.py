"""Every example notebook runs from top to bottom (small settings, CPU)."""
import shutil
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="running notebooks needs nbformat, nbclient and ipykernel")
nbclient = pytest.importorskip("nbclient", reason="running notebooks needs nbformat, nbclient and ipykernel")
pytest.importorskip("ipykernel", reason="running notebooks needs nbformat, nbclient and ipykernel")

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
from make_notebooks import NOTEBOOKS  # noqa: E402
from samples import ERA5_MISSING, ERA5_SAMPLE  # noqa: E402

EXAMPLES = Path(__file__).parents[1] / "examples"
SAMPLE = "era5-2mt-2019-03-uk.grib"
NEEDS_ERA5 = {"quickstart", "satellite_swath", "station_network", "distributed_reconstruction"}


@pytest.fixture(scope="module")
def era5_cache(tmp_path_factory):
    """A data cache holding the ERA5 sample, so that era5_sample() finds it (hash-checked) without downloading."""
    if ERA5_SAMPLE is None:
        pytest.skip(ERA5_MISSING)
    cache = tmp_path_factory.mktemp("notebook-cache")
    shutil.copy(ERA5_SAMPLE, cache / SAMPLE)
    return cache


def test_the_committed_notebooks_are_what_the_generator_writes():
    for name, cells in NOTEBOOKS.items():
        notebook = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
        stale = [c.source for c in notebook.cells] != [c.source for c in cells]
        assert not stale, f"{name}.ipynb differs from examples/make_notebooks.py: rerun it"
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), f"{name} has outputs"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_runs(name, tmp_path, monkeypatch, request):
    if name in NEEDS_ERA5:
        monkeypatch.setenv("XRIMPUTE_DATA_DIR", str(request.getfixturevalue("era5_cache")))
    monkeypatch.setenv("XRIMPUTE_DATA_URL", "http://127.0.0.1:9/")  # never the network: the cache has the file
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one torch thread per kernel: steady on a busy 2-core machine
    notebook = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
