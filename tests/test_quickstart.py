"""The one end-to-end run of 'xrimpute quickstart': quiet, says where its files went, and cleans up."""
import os
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quickstart_runs_without_warnings_prints_its_paths_and_leaves_no_temporary_folder(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"}  # everything temporary lands in temp
    result = subprocess.run([sys.executable, "-m", "xrimpute", "quickstart", "--steps", "40", "--max-time", "30",
                             "--workers", "1"], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    progress = re.compile(r"\[\d\d:\d\d")  # a tqdm bar's elapsed time, e.g. "training: 40/40 [00:21<00:00"
    notes = [line for line in re.split(r"[\r\n]+", result.stderr) if line.strip() and not progress.search(line)]
    assert not [line for line in notes if re.search(r"warn", line, re.I)], notes
    assert all(line.startswith("xrimpute: ") for line in notes), notes  # the package's notes, nothing else
    out = result.stdout
    saved = re.search(r"saved the model to (\S+tracer\.xri) and the observed cube to (\S+observed\.zarr)", out)
    assert saved and saved.group(1).startswith(str(temp)), out
    assert "5. reconstructed" in out and "removed the temporary folder" in out
    # model, zarr stores and dask's scratch space are gone; torch's optimiser keeps its compile cache there for good
    assert [name for name in os.listdir(temp) if not name.startswith("torchinductor_")] == []
