"""The README's Python quickstart runs exactly as written."""
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_quickstart() -> str:
    text = README.read_text()
    section = text.split("## Quickstart in Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_quickstart_runs_as_written_and_fills_every_gap(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_quickstart(), str(README), "exec"), namespace)
    filled, obs, truth = namespace["filled"], namespace["obs"], namespace["truth"]
    assert int(filled["tracer"].isnull().sum()) == 0
    assert (tmp_path / "tracer.xri").exists()
    gap = obs["tracer"].isnull()
    ours = float(((filled["tracer"] - truth["tracer"]) ** 2).where(gap).mean())
    mean_fill = float(((float(obs["tracer"].mean()) - truth["tracer"]) ** 2).where(gap).mean())
    assert np.isfinite(ours) and ours < 0.3 * mean_fill
    assert namespace["model"].validation["skill"] > 0.5
