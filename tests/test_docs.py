"""The documentation builds without a single warning, and the API reference reaches the accessor."""
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"

for module in ("sphinx", "myst_nb", "numpydoc", "sphinx_autosummary_accessors", "pydata_sphinx_theme"):
    pytest.importorskip(module, reason=f'{module} is missing: the docs tools come with pip install "xrimpute[docs]"')


def test_docs_build_with_warnings_as_errors(tmp_path):
    html = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"), str(DOCS),
         str(html)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    accessor = (html / "generated" / "xarray.Dataset.ctxdiff.fit.html").read_text(encoding="utf-8")
    assert "Train on this cube" in accessor
    cli = (html / "cli.html").read_text(encoding="utf-8")
    assert "xrimpute fit" in cli and "--max-time" in cli  # the parser's own help, rendered
    for page in ("index", "install", "quickstart", "method", "api"):
        assert (html / f"{page}.html").exists(), page
