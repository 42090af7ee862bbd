"""The .ctxdiff accessor shows the model's full signatures and numpydoc docstrings (generated, not copied)."""
import inspect
import pydoc
import re

import numpy as np
import pytest
import xarray as xr

import xrimpute
from synthetic import blobs
from xrimpute import CtxDiffModel


def numpydoc_sections(text: str) -> dict[str, list[str]]:
    """Section title -> entry names (``name : type`` lines at the section's indentation) of a rendered docstring."""
    lines = text.splitlines()
    sections: dict[str, list[str]] = {}
    for k in range(len(lines) - 1):
        title, rule = lines[k].strip(), lines[k + 1].strip()
        if title and rule and set(rule) == {"-"} and len(rule) == len(title):
            indent = len(lines[k]) - len(lines[k].lstrip())
            entries, j = [], k + 2
            while j < len(lines) and not (j + 1 < len(lines) and lines[j + 1].strip().startswith("---")):
                line = lines[j]
                if line.strip() and len(line) - len(line.lstrip()) == indent:
                    entries.append(line.strip())
                j += 1
            sections[title] = entries
    return sections


def parameter_names(entries: list[str]) -> list[str]:
    names = []
    for entry in entries:
        head = entry.split(" : ")[0]
        assert re.fullmatch(r"\*{0,2}\w+", head), f"not one parameter per entry: {entry!r}"
        names.append(head.lstrip("*"))
    return names


@pytest.mark.parametrize("kind", [xr.Dataset, xr.DataArray])
@pytest.mark.parametrize("name, extra", [("fit", set()), ("impute", {"model"}), ("sample", {"model"})])
def test_rendered_accessor_help_lists_every_parameter_of_the_model_method(kind, name, extra):
    obj = kind(np.zeros((2, 2))) if kind is xr.DataArray else xr.Dataset()
    method, source = getattr(obj.ctxdiff, name), getattr(CtxDiffModel, name)
    expected = [p for p in inspect.signature(source).parameters if p not in ("self", "obj")]

    assert list(inspect.signature(method).parameters) == expected + sorted(extra)
    rendered = pydoc.render_doc(method, renderer=pydoc.plaintext)  # what help() and Jupyter's ? show
    sections = numpydoc_sections(rendered)
    documented = parameter_names(sections["Parameters"])
    assert documented == expected + sorted(extra)
    assert sections["Returns"], "no Returns section"
    assert f"xrimpute.CtxDiffModel.{name}" in " ".join(sections["See Also"])


def test_model_docstrings_follow_numpydoc_one_parameter_per_entry():
    for name in ("fit", "impute", "sample"):
        method = getattr(CtxDiffModel, name)
        sections = numpydoc_sections(inspect.getdoc(method))
        documented = parameter_names(sections["Parameters"])
        assert documented == [p for p in inspect.signature(method).parameters if p != "self"], name
        assert sections["Returns"], name
        for entry in sections["Parameters"]:  # the type slot holds a type, not the start of a sentence
            kind = entry.partition(" : ")[2]
            assert len(kind) < 60 and not kind.endswith("."), entry


def test_accessor_check_shows_the_signature_and_every_parameter_of_check():
    expected = [p for p in inspect.signature(xrimpute.check.check).parameters if p != "obj"]
    method = xr.Dataset().ctxdiff.check
    assert list(inspect.signature(method).parameters) == expected
    sections = numpydoc_sections(pydoc.render_doc(method, renderer=pydoc.plaintext))
    assert parameter_names(sections["Parameters"]) == expected


def test_accessor_without_a_fitted_model_says_how_to_get_one():
    with pytest.raises(ValueError, match=r"pass model="):
        xr.Dataset().ctxdiff.impute()


def test_model_summary_says_what_skill_measures(one_torch_thread):
    truth = blobs(n=2, t=8, size=12, seed=0)
    observed = truth.where(np.random.default_rng(0).random(truth.shape) < 0.5)
    model = observed.ctxdiff.fit(mask="pixel", steps=3, batch_size=2, preset="tiny", device="cpu", progress=False,
                                 compare_classical=False)
    assert f"skill {model.validation['skill']:.3f} = 1 - MSE / MSE of the mean fill" in repr(model)
    guess, scored = model.validation["first_guess"], model.validation["first_guess_nmse"]
    summary = repr(model)
    assert f"first guess {guess}, chosen among {len(scored)}" in summary
    assert f"(skill alone {1 - scored[guess]:.3f})" in summary
