"""The README's Python quickstart runs exactly as written."""
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_quickstart() -> str:
    text = README.read_text()
    section = text.split("## Quickstart in Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
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


def test_every_time_the_readme_and_the_docs_quickstart_quote_is_recorded_in_results():
    results = (README.parent / "benchmarks" / "RESULTS.md").read_text()
    waits = results.split("## A newcomer's waits", 1)[1].split("\n## ", 1)[0]
    quoted = []
    for page in (README, README.parent / "docs" / "quickstart.md"):
        text = " ".join(page.read_text().split())
        quoted += re.findall(r"(\d+(?:\.\d+)?(?:-\d+)?) minutes", text) + re.findall(r"\b\d+:\d\d\b", text)
    assert len(quoted) >= 5, quoted
    missing = [figure for figure in quoted if not re.search(rf"(?<![\d.]){re.escape(figure)}(?![\d.])", waits)]
    assert not missing, f"quoted without a measurement in benchmarks/RESULTS.md: {missing}"
